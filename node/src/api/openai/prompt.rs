//! Prompts given as text, a list of texts, token ids or lists of token ids — the `prompt` of
//! completions and the `input` of embeddings — tokenized (on a blocking thread) and checked
//! once: between 1 and `max` of them, none empty, every id inside the vocabulary.

use helixflow_kernels::tokenizer::Tokenizer;
use serde::Deserialize;

use super::params::check_token_ids;
use crate::api::error::ApiError;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptSpec {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// One tokenized prompt; `text` is what the client sent when it sent text.
pub struct Prompt {
    pub ids: Vec<u32>,
    pub text: Option<String>,
}

/// Tokenizes `spec` (with the tokenizer's special tokens, as the API does for text prompts);
/// errors name `param`.
pub async fn tokenize(
    tokenizer: Tokenizer,
    spec: PromptSpec,
    param: &'static str,
    max: usize,
) -> Result<Vec<Prompt>, ApiError> {
    let vocab = tokenizer.vocab_size();
    let prompts = tokio::task::spawn_blocking(move || -> Result<Vec<Prompt>, ApiError> {
        let text = |text: String| -> Result<Prompt, ApiError> {
            let ids = tokenizer
                .encode(&text, true)
                .map_err(|e| ApiError::invalid(param, e.to_string()))?;
            Ok(Prompt {
                ids,
                text: Some(text),
            })
        };
        let ids = |ids: Vec<u32>| Prompt { ids, text: None };
        match spec {
            PromptSpec::Text(t) => Ok(vec![text(t)?]),
            PromptSpec::Texts(texts) => texts.into_iter().map(text).collect(),
            PromptSpec::Tokens(list) => Ok(vec![ids(list)]),
            PromptSpec::TokenLists(lists) => Ok(lists.into_iter().map(ids).collect()),
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))??;
    if prompts.is_empty() || prompts.len() > max {
        return Err(ApiError::invalid(
            param,
            format!(
                "Invalid value for '{param}': expected 1 to {max} {param}s, got {}.",
                prompts.len()
            ),
        ));
    }
    for (at, prompt) in prompts.iter().enumerate() {
        if prompt.ids.is_empty() {
            return Err(ApiError::invalid(
                param,
                format!("Invalid value for '{param}': {param} {at} is empty."),
            ));
        }
        check_token_ids(param, &prompt.ids, vocab)?;
    }
    Ok(prompts)
}
