//! `POST /v1/completions` (the legacy text-completion API): a prompt given as text, a list of
//! texts, token ids or lists of token ids; each prompt gets `n` choices.

use std::time::Instant;

use axum::extract::State;
use axum::response::Response;
use helixflow_actors::{InferenceRequest, RequestKind};
use serde::Deserialize;
use serde_json::Value;

use super::generate::{self, Job, Shape};
use super::params::{
    CommonParams, StopSpec, StreamOptions, check_token_ids, completion_budget, unsupported,
};
use super::prompt::{Prompt, PromptSpec, tokenize};
use super::{response_id, serving_model, unix_now};
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::{Caller, ValidJson};

/// The OpenAI default of `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: usize = 16;
/// Most prompts in one request.
const MAX_PROMPTS: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptSpec,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub stop: Option<StopSpec>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub logprobs: Option<u64>,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub best_of: Option<u64>,
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub ignore_eos: Option<bool>,
    #[serde(default)]
    pub stop_token_ids: Option<Vec<u32>>,
    #[serde(default)]
    pub suffix: Option<Value>,
    #[serde(default)]
    pub logit_bias: Option<Value>,
}

pub async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ValidJson(body): ValidJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let model = serving_model(&state, &body.model)?;
    unsupported("suffix", &body.suffix)?;
    unsupported("logit_bias", &body.logit_bias)?;
    if let Some(best_of) = body.best_of
        && best_of != body.n.unwrap_or(1)
    {
        return Err(ApiError::invalid(
            "best_of",
            "'best_of' other than 'n' is not supported by this server.",
        ));
    }
    let echo = body.echo.unwrap_or(false);
    if echo && body.logprobs.is_some() {
        return Err(ApiError::invalid(
            "echo",
            "'echo' together with 'logprobs' is not supported by this server.",
        ));
    }
    let generation = CommonParams {
        max_tokens: body.max_tokens,
        max_tokens_field: "max_tokens",
        n: body.n,
        stop: body.stop,
        seed: body.seed,
        temperature: body.temperature,
        top_p: body.top_p,
        presence_penalty: body.presence_penalty,
        frequency_penalty: body.frequency_penalty,
        top_k: body.top_k,
        min_p: body.min_p,
        repetition_penalty: body.repetition_penalty,
        ignore_eos: body.ignore_eos,
        stop_token_ids: body.stop_token_ids,
        logprobs: body.logprobs.map(|k| k as usize),
        logprobs_field: "logprobs",
        stream: body.stream,
        stream_options: body.stream_options,
    }
    .validate()?;
    let vocab = model.tokenizer.vocab_size();
    check_token_ids("stop_token_ids", &generation.stop_token_ids, vocab)?;

    let prompts = tokenize(model.tokenizer.clone(), body.prompt, "prompt", MAX_PROMPTS).await?;

    let mut requests = Vec::with_capacity(prompts.len());
    let mut echoes = Vec::new();
    for Prompt { ids: prompt, text } in prompts {
        let max_tokens = completion_budget(
            prompt.len(),
            model.context_window,
            generation.max_tokens,
            Some(DEFAULT_MAX_TOKENS),
            "prompt",
        )?;
        if echo {
            let text = match text {
                Some(text) => text,
                None => model
                    .tokenizer
                    .decode(&prompt, false)
                    .map_err(|e| ApiError::invalid("prompt", e.to_string()))?,
            };
            echoes.push(text);
        }
        requests.push(InferenceRequest {
            ticket: state.node.next_ticket(),
            key: caller.name.clone(),
            model: model.id.clone(),
            kind: RequestKind::Generate,
            prompt,
            sampling: generation.sampling.clone(),
            max_tokens,
            n: generation.n,
            stop: generation.stop.clone(),
            stop_token_ids: generation.stop_token_ids.clone(),
            ignore_eos: generation.ignore_eos,
            logprobs: generation.logprobs,
            arrived,
        });
    }
    if let Some(user) = &body.user {
        tracing::debug!(user, key = %caller.name, "completion");
    }
    let job = Job {
        shape: Shape::Completion { echo: echoes },
        id: response_id("cmpl", requests[0].ticket),
        created: unix_now(),
        model: model.id.clone(),
        caller,
        requests,
        n: generation.n,
        logprobs: generation.logprobs,
        stream: generation.stream,
        include_usage: generation.include_usage,
        arrived,
    };
    generate::run(state, job).await
}
