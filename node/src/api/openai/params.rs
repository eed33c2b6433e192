//! The generation parameters chat and completions share, checked once into engine settings.
//! Each error names its parameter.

use helixflow_kernels::sampler::{MAX_TOP_LOGPROBS, SamplingParams};
use serde::Deserialize;

use crate::api::error::ApiError;

/// Most stop strings per request (the OpenAI limit).
pub const MAX_STOP_STRINGS: usize = 4;
/// Most choices per request.
pub const MAX_N: u64 = 128;

/// `stop`: one string or a list.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
    #[serde(default)]
    pub continuous_usage_stats: Option<bool>,
}

/// The shared fields, as sent.
#[derive(Debug, Default)]
pub struct CommonParams {
    pub max_tokens: Option<u64>,
    /// Which field `max_tokens` came from, for error messages.
    pub max_tokens_field: &'static str,
    pub n: Option<u64>,
    pub stop: Option<StopSpec>,
    pub seed: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub ignore_eos: Option<bool>,
    pub stop_token_ids: Option<Vec<u32>>,
    /// Alternatives per token, when logprobs are wanted at all.
    pub logprobs: Option<usize>,
    /// Which field the number of alternatives came from, for error messages.
    pub logprobs_field: &'static str,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
}

/// The shared fields, checked.
#[derive(Clone, Debug)]
pub struct Generation {
    pub sampling: SamplingParams,
    pub max_tokens: Option<usize>,
    pub max_tokens_field: &'static str,
    pub n: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub logprobs: bool,
    pub stream: bool,
    pub include_usage: bool,
}

fn range(param: &str, value: Option<f32>, lo: f32, hi: f32, default: f32) -> Result<f32, ApiError> {
    match value {
        None => Ok(default),
        Some(v) if v.is_finite() && (lo..=hi).contains(&v) => Ok(v),
        Some(v) => Err(ApiError::invalid(
            param,
            format!("Invalid value for '{param}': {v} is not between {lo} and {hi}."),
        )),
    }
}

impl CommonParams {
    pub fn validate(self) -> Result<Generation, ApiError> {
        let temperature = range("temperature", self.temperature, 0.0, 2.0, 1.0)?;
        let top_p = range("top_p", self.top_p, 0.0, 1.0, 1.0)?;
        if top_p == 0.0 {
            return Err(ApiError::invalid(
                "top_p",
                "Invalid value for 'top_p': must be greater than 0.",
            ));
        }
        let presence_penalty = range("presence_penalty", self.presence_penalty, -2.0, 2.0, 0.0)?;
        let frequency_penalty = range("frequency_penalty", self.frequency_penalty, -2.0, 2.0, 0.0)?;
        let min_p = range("min_p", self.min_p, 0.0, 1.0, 0.0)?;
        let repetition_penalty = match self.repetition_penalty {
            None => 1.0,
            Some(v) if v.is_finite() && v > 0.0 => v,
            Some(v) => {
                return Err(ApiError::invalid(
                    "repetition_penalty",
                    format!("Invalid value for 'repetition_penalty': {v} must be greater than 0."),
                ));
            }
        };
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => {
                return Err(ApiError::invalid(
                    "top_k",
                    format!("Invalid value for 'top_k': {k}; use -1 or 0 for no limit."),
                ));
            }
        };
        let n = match self.n {
            None => 1,
            Some(n) if (1..=MAX_N).contains(&n) => n as usize,
            Some(n) => {
                return Err(ApiError::invalid(
                    "n",
                    format!("Invalid value for 'n': {n} is not between 1 and {MAX_N}."),
                ));
            }
        };
        let max_tokens = match self.max_tokens {
            None => None,
            Some(0) => {
                return Err(ApiError::invalid(
                    self.max_tokens_field,
                    format!(
                        "Invalid value for '{}': must be at least 1.",
                        self.max_tokens_field
                    ),
                ));
            }
            Some(m) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
        };
        let stop = match self.stop {
            None => Vec::new(),
            Some(StopSpec::One(s)) => vec![s],
            Some(StopSpec::Many(list)) => list,
        };
        if stop.len() > MAX_STOP_STRINGS {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "Invalid value for 'stop': at most {MAX_STOP_STRINGS} stop sequences are allowed, got {}.",
                    stop.len()
                ),
            ));
        }
        if let Some(k) = self.logprobs
            && k > MAX_TOP_LOGPROBS
        {
            let field = self.logprobs_field;
            return Err(ApiError::invalid(
                field,
                format!(
                    "Invalid value for '{field}': {k} is not between 0 and {MAX_TOP_LOGPROBS}."
                ),
            ));
        }
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::invalid(
                "stream_options",
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            ));
        }
        Ok(Generation {
            sampling: SamplingParams {
                temperature,
                top_k,
                top_p,
                min_p,
                presence_penalty,
                frequency_penalty,
                repetition_penalty,
                // Negative seeds are valid in the OpenAI API; the bits are the seed.
                seed: self.seed.map(|s| s as u64),
                logprobs: self.logprobs,
            },
            max_tokens,
            max_tokens_field: self.max_tokens_field,
            n,
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            stop_token_ids: self.stop_token_ids.unwrap_or_default(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            logprobs: self.logprobs.is_some(),
            stream,
            include_usage: self
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        })
    }
}

/// Rejects a field this server does not implement, when it is set to something other than its
/// neutral value.
pub fn unsupported(param: &str, value: &Option<serde_json::Value>) -> Result<(), ApiError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(serde_json::Value::Array(a)) if a.is_empty() => Ok(()),
        Some(serde_json::Value::Object(o)) if o.is_empty() => Ok(()),
        Some(_) => Err(ApiError::invalid(
            param,
            format!("'{param}' is not supported by this server."),
        )),
    }
}

/// Tokens a generation may produce: what was asked (if the context window has room for it) or
/// whatever room is left. `prompt_param` names the prompt field in errors.
pub fn completion_budget(
    prompt_tokens: usize,
    context_window: usize,
    requested: Option<usize>,
    default: Option<usize>,
    prompt_param: &str,
) -> Result<usize, ApiError> {
    if prompt_tokens >= context_window {
        return Err(ApiError::context_length(
            prompt_param,
            format!(
                "This model's maximum context length is {context_window} tokens. However, your {prompt_param} resulted in {prompt_tokens} tokens. Please reduce the length of the {prompt_param}."
            ),
        ));
    }
    let room = context_window - prompt_tokens;
    match requested {
        Some(asked) if asked > room => Err(ApiError::context_length(
            prompt_param,
            format!(
                "This model's maximum context length is {context_window} tokens. However, you requested {} tokens ({prompt_tokens} in the {prompt_param}, {asked} in the completion). Please reduce the length of the {prompt_param} or completion.",
                prompt_tokens.saturating_add(asked)
            ),
        )),
        Some(asked) => Ok(asked),
        None => Ok(default.map_or(room, |d| d.min(room))),
    }
}

/// Checks client-given token ids against the vocabulary.
pub fn check_token_ids(param: &str, ids: &[u32], vocab_size: usize) -> Result<(), ApiError> {
    match ids.iter().find(|&&id| id as usize >= vocab_size) {
        Some(id) => Err(ApiError::invalid(
            param,
            format!(
                "Invalid value for '{param}': token id {id} is outside the vocabulary (size {vocab_size})."
            ),
        )),
        None => Ok(()),
    }
}
