//! The one error type of the tokenizer module.
//!
//! Load-time variants name the file and, where one is at fault, the field and its value; they are
//! fatal for the model. Request-time variants (`Encode`, `Decode`, the template ones and
//! `UnsupportedContent`) concern one request and say nothing about the model files. This module
//! does not map errors to HTTP statuses: the API layer does that, in one place.

use std::path::PathBuf;

/// Everything that can go wrong loading a tokenizer or turning text into ids and back.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read (missing, unreadable).
    #[error("cannot read {path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file is not valid JSON, or not the shape its reader expects (for `tokenizer.json`: not
    /// a tokenizer the `tokenizers` crate accepts). `field` is the offending top-level field when
    /// one can be singled out.
    #[error("{path}{}: {source}", field.as_ref().map(|f| format!(" (field `{f}`)")).unwrap_or_default())]
    Json {
        path: PathBuf,
        field: Option<String>,
        #[source]
        source: serde_json::Error,
    },

    /// A field parsed as JSON but holds a value this module cannot use.
    #[error("{path}: field `{field}` = {value}: expected {expected}")]
    Field {
        path: PathBuf,
        field: String,
        value: String,
        expected: &'static str,
    },

    /// The chat template does not compile.
    #[error("chat template from {origin} does not compile: {source}")]
    TemplateSyntax {
        /// Where the template came from (a file, or `<inline>` for one given in code).
        origin: String,
        #[source]
        source: minijinja::Error,
    },

    /// The chat template failed while rendering (type error, unknown filter, ...).
    #[error("chat template rendering failed: {source}")]
    Template {
        #[source]
        source: minijinja::Error,
    },

    /// The template called `raise_exception(message)`: the conversation is one the model's
    /// template refuses (e.g. roles that do not alternate). The message is the template's own.
    #[error("{message}")]
    TemplateRaised { message: String },

    /// `apply_chat_template` was called on a model without a chat template.
    #[error("the model has no chat template")]
    NoChatTemplate,

    /// A message's content part cannot be rendered by a template that expects string content.
    #[error("message {index} ({role}): content part of type `{part_type}` is not supported")]
    UnsupportedContent {
        index: usize,
        role: String,
        part_type: String,
    },

    /// The `tokenizers` crate failed to encode.
    #[error("encoding failed: {source}")]
    Encode {
        #[source]
        source: tokenizers::Error,
    },

    /// The `tokenizers` crate failed to decode (e.g. an id outside the vocabulary).
    #[error("decoding failed: {source}")]
    Decode {
        #[source]
        source: tokenizers::Error,
    },
}
