//! Runs a generation for chat and completions alike: charges the key, queues the request(s),
//! then either collects every choice into one response or streams chunks over SSE. The caller's
//! usage is written to the ledger before the response completes (before `data: [DONE]` when
//! streaming); a client that goes away cancels its generation and is charged for what was
//! generated until then.

use std::convert::Infallible;
use std::time::Instant;

use axum::Json;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, StreamExt};
use helixflow_actors::quota::{Principal, UsageRecord};
use helixflow_actors::{FinishReason, InferenceEvent, InferenceRequest, TokenLogprob};
use helixflow_runtime::metric_names;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::cluster::forward::Routed;

/// Which API the answer is shaped for.
#[derive(Clone, Debug)]
pub enum Shape {
    Chat,
    /// Legacy completions; `echo` is prepended to each choice's text.
    Completion {
        echo: Vec<String>,
    },
}

/// A validated generation, ready to run.
pub struct Job {
    pub shape: Shape,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub caller: Principal,
    /// One per prompt; choice `i` of prompt `p` is answer `p * n + i`.
    pub requests: Vec<InferenceRequest>,
    pub n: usize,
    pub logprobs: bool,
    pub stream: bool,
    pub include_usage: bool,
    pub arrived: Instant,
}

#[derive(Default)]
struct Choice {
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish: Option<FinishReason>,
    tokens: usize,
    /// Characters of text before the next token (completions' `text_offset`).
    offset: usize,
}

/// Latency metrics of one request.
struct Timing {
    arrived: Instant,
    first_token: bool,
    last_token: Option<Instant>,
}

impl Timing {
    fn token(&mut self, answer: usize) {
        let now = Instant::now();
        if !self.first_token {
            self.first_token = true;
            metrics::histogram!(metric_names::TIME_TO_FIRST_TOKEN)
                .record(now.duration_since(self.arrived).as_secs_f64());
        }
        // Inter-token latency is measured on the first answer; the others are sampled in the
        // same steps.
        if answer == 0 {
            if let Some(last) = self.last_token {
                metrics::histogram!(metric_names::INTER_TOKEN_LATENCY)
                    .record(now.duration_since(last).as_secs_f64());
            }
            self.last_token = Some(now);
        }
    }
}

type Events = BoxStream<'static, (usize, InferenceEvent)>;

/// Charges the key, queues every prompt and returns the answer.
pub async fn run(state: AppState, job: Job) -> Result<Response, ApiError> {
    let prompt_tokens: usize = job.requests.iter().map(|r| r.prompt.len()).sum();
    state
        .node
        .admit(&job.caller.name, prompt_tokens as u64)
        .await??;
    let mut submissions = Vec::with_capacity(job.requests.len());
    for request in &job.requests {
        submissions.push(
            state
                .cluster
                .submit(request.clone(), job.caller.max_queued, !job.stream)
                .await?,
        );
    }
    let events = merge(submissions, job.n);
    if job.stream {
        Ok(stream_response(state, job, events, prompt_tokens).into_response())
    } else {
        collect(state, job, events, prompt_tokens).await
    }
}

/// One stream of `(answer index, event)` over several submissions.
fn merge(submissions: Vec<Routed>, n: usize) -> Events {
    let streams = submissions.into_iter().enumerate().map(|(p, submission)| {
        stream::unfold(
            submission,
            |mut s| async move { s.next().await.map(|e| (e, s)) },
        )
        .map(move |event| {
            let index = match &event {
                InferenceEvent::Delta { choice, .. } | InferenceEvent::Finished { choice, .. } => {
                    p * n + choice
                }
                _ => p * n,
            };
            (index, event)
        })
        .boxed()
    });
    stream::select_all(streams).boxed()
}

async fn record(
    state: &AppState,
    job: &Job,
    prompt_tokens: usize,
    completion_tokens: usize,
    status: &'static str,
) -> Result<(), ApiError> {
    let model = [("model", job.model.clone())];
    metrics::counter!(metric_names::PROMPT_TOKENS, &model).increment(prompt_tokens as u64);
    metrics::counter!(metric_names::COMPLETION_TOKENS, &model).increment(completion_tokens as u64);
    metrics::histogram!(metric_names::END_TO_END_LATENCY)
        .record(job.arrived.elapsed().as_secs_f64());
    let endpoint = match job.shape {
        Shape::Chat => "chat",
        Shape::Completion { .. } => "completions",
    };
    metrics::counter!(metric_names::REQUESTS, "endpoint" => endpoint, "status" => status)
        .increment(1);
    state
        .node
        .record(UsageRecord {
            key: job.caller.name.clone(),
            model: job.model.clone(),
            prompt_tokens: prompt_tokens as u64,
            completion_tokens: completion_tokens as u64,
        })
        .await
        .map_err(ApiError::from)
}

fn usage_json(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

fn finish_str(reason: Option<FinishReason>) -> Value {
    match reason {
        Some(FinishReason::Stop) => json!("stop"),
        Some(FinishReason::Length) => json!("length"),
        None => Value::Null,
    }
}

async fn collect(
    state: AppState,
    job: Job,
    mut events: Events,
    prompt_tokens: usize,
) -> Result<Response, ApiError> {
    let mut choices: Vec<Choice> = (0..job.requests.len() * job.n)
        .map(|_| Choice::default())
        .collect();
    let mut timing = Timing {
        arrived: job.arrived,
        first_token: false,
        last_token: None,
    };
    while let Some((index, event)) = events.next().await {
        let Some(choice) = choices.get_mut(index) else {
            continue;
        };
        match event {
            InferenceEvent::Delta {
                text,
                tokens,
                logprobs,
                ..
            } => {
                if tokens > 0 {
                    timing.token(index);
                }
                choice.tokens += tokens;
                choice.text.push_str(&text);
                choice.logprobs.extend(logprobs);
            }
            InferenceEvent::Finished {
                reason,
                completion_tokens,
                ..
            } => {
                choice.finish = Some(reason);
                choice.tokens = completion_tokens;
            }
            InferenceEvent::Failed(failure) => {
                drop(events);
                let generated = choices.iter().map(|c| c.tokens).sum();
                record(&state, &job, prompt_tokens, generated, "error").await?;
                return Err(failure.into());
            }
            InferenceEvent::Embedding { .. } => {}
        }
    }
    let completion_tokens: usize = choices.iter().map(|c| c.tokens).sum();
    record(&state, &job, prompt_tokens, completion_tokens, "ok").await?;
    let usage = usage_json(prompt_tokens, completion_tokens);
    let body = match &job.shape {
        Shape::Chat => json!({
            "id": job.id,
            "object": "chat.completion",
            "created": job.created,
            "model": job.model,
            "choices": choices.iter().enumerate().map(|(i, c)| json!({
                "index": i,
                "message": {"role": "assistant", "content": c.text, "refusal": Value::Null},
                "logprobs": if job.logprobs { json!({"content": chat_logprobs(&c.logprobs), "refusal": Value::Null}) } else { Value::Null },
                "finish_reason": finish_str(c.finish),
            })).collect::<Vec<_>>(),
            "usage": usage,
        }),
        Shape::Completion { echo } => json!({
            "id": job.id,
            "object": "text_completion",
            "created": job.created,
            "model": job.model,
            "choices": choices.iter_mut().enumerate().map(|(i, c)| {
                let prefix = echo.get(i / job.n).map(String::as_str).unwrap_or("");
                c.offset = prefix.len();
                let logprobs = if job.logprobs { completion_logprobs(&c.logprobs, &mut c.offset) } else { Value::Null };
                json!({
                    "index": i,
                    "text": format!("{prefix}{}", c.text),
                    "logprobs": logprobs,
                    "finish_reason": finish_str(c.finish),
                })
            }).collect::<Vec<_>>(),
            "usage": usage,
        }),
    };
    Ok(Json(body).into_response())
}

fn chat_logprobs(tokens: &[TokenLogprob]) -> Vec<Value> {
    tokens
        .iter()
        .map(|t| {
            json!({
                "token": t.token,
                "logprob": t.logprob,
                "bytes": t.bytes,
                "top_logprobs": t.top.iter().map(|a| json!({"token": a.token, "logprob": a.logprob, "bytes": a.bytes})).collect::<Vec<_>>(),
            })
        })
        .collect()
}

fn completion_logprobs(tokens: &[TokenLogprob], offset: &mut usize) -> Value {
    let mut text_offset = Vec::with_capacity(tokens.len());
    for t in tokens {
        text_offset.push(*offset);
        *offset += t.token.len();
    }
    json!({
        "tokens": tokens.iter().map(|t| t.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": tokens.iter().map(|t| {
            t.top.iter().map(|a| (a.token.clone(), json!(a.logprob))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}

fn stream_response(
    state: AppState,
    job: Job,
    events: Events,
    prompt_tokens: usize,
) -> impl IntoResponse {
    // Bounded: a slow client holds back its own generation's delivery, nothing else. The engine
    // side is unbounded per request (see `EventSink`), so the engine never waits for a client.
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(drive_stream(state, job, events, prompt_tokens, tx));
    let body = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(body).keep_alive(KeepAlive::default())
}

fn data(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

async fn drive_stream(
    state: AppState,
    job: Job,
    mut events: Events,
    prompt_tokens: usize,
    tx: mpsc::Sender<Event>,
) {
    let answers = job.requests.len() * job.n;
    let mut choices: Vec<Choice> = (0..answers).map(|_| Choice::default()).collect();
    let mut timing = Timing {
        arrived: job.arrived,
        first_token: false,
        last_token: None,
    };
    let chunk = |choices: Value| -> Value {
        match job.shape {
            Shape::Chat => json!({
                "id": job.id, "object": "chat.completion.chunk", "created": job.created,
                "model": job.model, "choices": choices,
            }),
            Shape::Completion { .. } => json!({
                "id": job.id, "object": "text_completion", "created": job.created,
                "model": job.model, "choices": choices,
            }),
        }
    };

    // Opening chunks: the assistant role (chat) or the echoed prompt (completions).
    for (i, choice) in choices.iter_mut().enumerate() {
        let opening = match &job.shape {
            Shape::Chat => {
                json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": Value::Null, "finish_reason": Value::Null}])
            }
            Shape::Completion { echo } => match echo.get(i / job.n) {
                Some(prefix) => {
                    choice.offset = prefix.len();
                    json!([{"index": i, "text": prefix, "logprobs": Value::Null, "finish_reason": Value::Null}])
                }
                None => continue,
            },
        };
        // Only the final chunk carries `usage` (the OpenAPI description has no null usage).
        let c = chunk(opening);
        if tx.send(data(&c)).await.is_err() {
            drop(events);
            let _ = record(&state, &job, prompt_tokens, 0, "cancelled").await;
            return;
        }
    }

    let mut outcome = "ok";
    loop {
        let next = tokio::select! {
            biased;
            () = tx.closed() => { outcome = "cancelled"; break; }
            next = events.next() => next,
        };
        let Some((index, event)) = next else {
            break;
        };
        let Some(choice) = choices.get_mut(index) else {
            continue;
        };
        let body = match event {
            InferenceEvent::Delta {
                text,
                tokens,
                logprobs,
                ..
            } => {
                if tokens > 0 {
                    timing.token(index);
                }
                choice.tokens += tokens;
                if text.is_empty() && logprobs.is_empty() {
                    continue;
                }
                let lp = if job.logprobs && !logprobs.is_empty() {
                    match job.shape {
                        Shape::Chat => {
                            json!({"content": chat_logprobs(&logprobs), "refusal": Value::Null})
                        }
                        Shape::Completion { .. } => {
                            completion_logprobs(&logprobs, &mut choice.offset)
                        }
                    }
                } else {
                    Value::Null
                };
                match job.shape {
                    Shape::Chat => {
                        json!([{"index": index, "delta": {"content": text}, "logprobs": lp, "finish_reason": Value::Null}])
                    }
                    Shape::Completion { .. } => {
                        json!([{"index": index, "text": text, "logprobs": lp, "finish_reason": Value::Null}])
                    }
                }
            }
            InferenceEvent::Finished {
                reason,
                completion_tokens,
                ..
            } => {
                choice.finish = Some(reason);
                choice.tokens = completion_tokens;
                match job.shape {
                    Shape::Chat => {
                        json!([{"index": index, "delta": {}, "logprobs": Value::Null, "finish_reason": finish_str(Some(reason))}])
                    }
                    Shape::Completion { .. } => {
                        json!([{"index": index, "text": "", "logprobs": Value::Null, "finish_reason": finish_str(Some(reason))}])
                    }
                }
            }
            InferenceEvent::Failed(failure) => {
                drop(events);
                let generated = choices.iter().map(|c| c.tokens).sum();
                let _ = record(&state, &job, prompt_tokens, generated, "error").await;
                let error = ApiError::from(failure);
                let _ = tx.send(Event::default().data(error.to_json())).await;
                return;
            }
            InferenceEvent::Embedding { .. } => continue,
        };
        let c = chunk(body);
        if tx.send(data(&c)).await.is_err() {
            outcome = "cancelled";
            break;
        }
    }
    // Stop the generation (if the client left) before waiting on the ledger.
    drop(events);
    let completion_tokens: usize = choices.iter().map(|c| c.tokens).sum();
    if let Err(error) = record(&state, &job, prompt_tokens, completion_tokens, outcome).await {
        let _ = tx.send(Event::default().data(error.to_json())).await;
        return;
    }
    if outcome != "ok" {
        return;
    }
    if job.include_usage {
        let mut c = chunk(json!([]));
        c["usage"] = usage_json(prompt_tokens, completion_tokens);
        if tx.send(data(&c)).await.is_err() {
            return;
        }
    }
    let _ = tx.send(Event::default().data("[DONE]")).await;
}
