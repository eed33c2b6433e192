//! `POST /v1/embeddings`: mean-pooled, L2-normalised final hidden states, one per input.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use futures_util::future::try_join_all;
use helixflow_actors::quota::UsageRecord;
use helixflow_actors::{InferenceEvent, InferenceRequest, RequestKind};
use helixflow_kernels::sampler::SamplingParams;
use helixflow_runtime::metric_names;
use serde::Deserialize;
use serde_json::{Value, json};

use super::params::completion_budget;
use super::prompt::{PromptSpec, tokenize};
use super::serving_model;
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::{Caller, ValidJson};

/// Most inputs in one request (the OpenAI limit).
const MAX_INPUTS: usize = 2048;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: PromptSpec,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<u64>,
    #[serde(default)]
    pub user: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ValidJson(body): ValidJson<EmbeddingRequest>,
) -> Result<Json<Value>, ApiError> {
    let arrived = Instant::now();
    let model = serving_model(&state, &body.model)?;
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!(
                    "Invalid value for 'encoding_format': {other:?}; expected \"float\" or \"base64\"."
                ),
            ));
        }
    };
    if let Some(d) = body.dimensions
        && d as usize != model.hidden_size
    {
        return Err(ApiError::invalid(
            "dimensions",
            format!(
                "Invalid value for 'dimensions': this model's embeddings have {} dimensions.",
                model.hidden_size
            ),
        ));
    }
    let inputs: Vec<Vec<u32>> = tokenize(model.tokenizer.clone(), body.input, "input", MAX_INPUTS)
        .await?
        .into_iter()
        .map(|p| p.ids)
        .collect();
    for ids in &inputs {
        // An embedding needs the whole input in the context window.
        completion_budget(
            ids.len().saturating_sub(1),
            model.context_window,
            None,
            None,
            "input",
        )?;
    }
    let prompt_tokens: usize = inputs.iter().map(Vec::len).sum();
    state
        .node
        .admit(&caller.name, prompt_tokens as u64)
        .await??;

    let embed = |prompt: Vec<u32>| {
        let state = state.clone();
        let request = InferenceRequest {
            ticket: state.node.next_ticket(),
            key: caller.name.clone(),
            model: model.id.clone(),
            kind: RequestKind::Embed,
            prompt,
            sampling: SamplingParams::default(),
            max_tokens: 0,
            n: 1,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: false,
            arrived,
        };
        let key_limit = caller.max_queued;
        async move {
            let mut submission = state.cluster.submit(request, key_limit, true).await?;
            while let Some(event) = submission.next().await {
                match event {
                    InferenceEvent::Embedding { vector, .. } => return Ok(vector),
                    InferenceEvent::Failed(failure) => return Err(ApiError::from(failure)),
                    _ => {}
                }
            }
            Err(ApiError::unavailable("the node is shutting down", None))
        }
    };
    let vectors = try_join_all(inputs.into_iter().map(embed)).await?;

    state
        .node
        .record(UsageRecord {
            key: caller.name.clone(),
            model: model.id.clone(),
            prompt_tokens: prompt_tokens as u64,
            completion_tokens: 0,
        })
        .await?;
    metrics::counter!(metric_names::PROMPT_TOKENS, "model" => model.id.clone())
        .increment(prompt_tokens as u64);
    metrics::counter!(metric_names::REQUESTS, "endpoint" => "embeddings", "status" => "ok")
        .increment(1);
    metrics::histogram!(metric_names::END_TO_END_LATENCY).record(arrived.elapsed().as_secs_f64());

    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                json!(base64_f32(&vector))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": model.id,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })))
}

/// Little-endian f32 bytes in standard base64, as the OpenAI SDK decodes them.
fn base64_f32(vector: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard_encoding() {
        // 1.0f32 = 00 00 80 3f; 2.0f32 = 00 00 00 40.
        assert_eq!(super::base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(super::base64_f32(&[1.0, 2.0]), "AACAPwAAAEA=");
        assert_eq!(super::base64_f32(&[]), "");
    }
}
