//! Tests of the tokenizer module against the transformers reference fixtures and real chat
//! templates.

mod fixtures;
mod streaming;
mod templates;
