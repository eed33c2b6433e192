//! `POST /v1/chat/completions`.

use std::time::Instant;

use axum::extract::State;
use axum::response::Response;
use helixflow_actors::{InferenceRequest, RequestKind};
use helixflow_kernels::tokenizer::ChatMessage;
use serde::Deserialize;
use serde_json::Value;

use super::generate::{self, Job, Shape};
use super::params::{
    CommonParams, StopSpec, StreamOptions, check_token_ids, completion_budget, unsupported,
};
use super::{response_id, serving_model, unix_now};
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::{Caller, ValidJson};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
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
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u64>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    // Extensions (vLLM names).
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
    // Accepted and without effect here.
    #[serde(default)]
    pub store: Option<Value>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub service_tier: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<Value>,
    // Refused when set.
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub functions: Option<Value>,
    #[serde(default)]
    pub function_call: Option<Value>,
    #[serde(default)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub logit_bias: Option<Value>,
    #[serde(default)]
    pub audio: Option<Value>,
    #[serde(default)]
    pub modalities: Option<Value>,
    #[serde(default)]
    pub prediction: Option<Value>,
    #[serde(default)]
    pub reasoning_effort: Option<Value>,
}

pub async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ValidJson(body): ValidJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let model = serving_model(&state, &body.model)?;
    for (param, value) in [
        ("tools", &body.tools),
        ("tool_choice", &body.tool_choice),
        ("functions", &body.functions),
        ("function_call", &body.function_call),
        ("logit_bias", &body.logit_bias),
        ("audio", &body.audio),
        ("modalities", &body.modalities),
        ("prediction", &body.prediction),
        ("reasoning_effort", &body.reasoning_effort),
    ] {
        unsupported(param, value)?;
    }
    if let Some(format) = &body.response_format
        && format.get("type").and_then(Value::as_str) != Some("text")
    {
        return Err(ApiError::invalid(
            "response_format",
            "only {\"type\": \"text\"} is supported for 'response_format'.",
        ));
    }
    if body.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "Invalid value for 'messages': expected at least one message.",
        ));
    }
    if body.top_logprobs.is_some() && body.logprobs != Some(true) {
        return Err(ApiError::invalid(
            "top_logprobs",
            "'top_logprobs' requires 'logprobs' to be true.",
        ));
    }
    let (max_tokens, max_tokens_field) = match (body.max_completion_tokens, body.max_tokens) {
        (Some(m), _) => (Some(m), "max_completion_tokens"),
        (None, m) => (m, "max_tokens"),
    };
    let generation = CommonParams {
        max_tokens,
        max_tokens_field,
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
        logprobs: (body.logprobs == Some(true)).then_some(body.top_logprobs.unwrap_or(0) as usize),
        logprobs_field: "top_logprobs",
        stream: body.stream,
        stream_options: body.stream_options,
    }
    .validate()?;
    check_token_ids(
        "stop_token_ids",
        &generation.stop_token_ids,
        model.tokenizer.vocab_size(),
    )?;

    let tokenizer = model.tokenizer.clone();
    let messages = body.messages;
    let prompt = tokio::task::spawn_blocking(move || {
        let text = tokenizer.apply_chat_template(&messages, true)?;
        tokenizer.encode(&text, false)
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))?
    .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let max_tokens = completion_budget(
        prompt.len(),
        model.context_window,
        generation.max_tokens,
        None,
        "messages",
    )?;

    let ticket = state.node.next_ticket();
    if let Some(user) = &body.user {
        tracing::debug!(ticket, user, key = %caller.name, "chat completion");
    }
    let request = InferenceRequest {
        ticket,
        key: caller.name.clone(),
        model: model.id.clone(),
        kind: RequestKind::Generate,
        prompt,
        sampling: generation.sampling,
        max_tokens,
        n: generation.n,
        stop: generation.stop,
        stop_token_ids: generation.stop_token_ids,
        ignore_eos: generation.ignore_eos,
        logprobs: generation.logprobs,
        arrived,
    };
    let job = Job {
        shape: Shape::Chat,
        id: response_id("chatcmpl", ticket),
        created: unix_now(),
        model: model.id.clone(),
        caller,
        requests: vec![request],
        n: generation.n,
        logprobs: generation.logprobs,
        stream: generation.stream,
        include_usage: generation.include_usage,
        arrived,
    };
    generate::run(state, job).await
}
