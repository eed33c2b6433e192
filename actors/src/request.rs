//! What travels between the HTTP layer and the workers: a validated [`InferenceRequest`] (token
//! ids and engine knobs, no wire types), the [`InferenceEvent`]s that answer it, and the
//! [`EventSink`] the events go through.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use helixflow_kernels::sampler::SamplingParams;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Node-unique id of one client request, given by the [`NodeHandle`](crate::NodeHandle).
pub type Ticket = u64;

/// A request as the workers see it: validated, tokenized, with its model resolved.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InferenceRequest {
    pub ticket: Ticket,
    /// Name of the API key it is charged to.
    pub key: String,
    /// Canonical model id.
    pub model: String,
    pub kind: RequestKind,
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// Generated tokens per choice at most.
    pub max_tokens: usize,
    /// Choices sampled from the one prompt.
    pub n: usize,
    /// Strings that end a choice; never part of its text.
    pub stop: Vec<String>,
    /// Extra token ids that end a choice (as EOS does).
    pub stop_token_ids: Vec<u32>,
    /// Keep generating through EOS.
    pub ignore_eos: bool,
    /// Return the chosen token's logprob (and `sampling.logprobs` alternatives) per token.
    pub logprobs: bool,
    /// When the node received it: latency metrics start here. (Not sent between nodes: a
    /// forwarded request's clock starts when the serving node receives it.)
    #[serde(skip, default = "Instant::now")]
    pub arrived: Instant,
}

/// What the request wants computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestKind {
    Generate,
    Embed,
}

/// Why a choice ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// EOS, a stop token or a stop string.
    Stop,
    /// `max_tokens` or the context window.
    Length,
}

/// A generated token with its log-probability, as the API reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's own text (may be a partial character, shown with U+FFFD).
    pub token: String,
    /// The token's exact UTF-8 bytes when they are valid text on their own.
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// The most likely alternatives, best first.
    pub top: Vec<TopLogprob>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// One answer to a request. A request's events end with one `Finished` per choice, one
/// `Embedding`, or one `Failed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum InferenceEvent {
    /// New text of choice `choice` (possibly empty when the text is held back, e.g. while it
    /// could still become a stop string) and, when asked for, the logprobs of the tokens it
    /// came from.
    Delta {
        choice: usize,
        text: String,
        tokens: usize,
        logprobs: Vec<TokenLogprob>,
    },
    /// Choice `choice` is complete after `completion_tokens` tokens.
    Finished {
        choice: usize,
        reason: FinishReason,
        completion_tokens: usize,
    },
    /// The embedding of an embedding request.
    Embedding {
        vector: Vec<f32>,
        prompt_tokens: usize,
    },
    /// The request ended without an answer.
    Failed(RequestFailure),
}

impl InferenceEvent {
    /// Counts this event against a request's `unfinished` choices: a `Finished` ends one, an
    /// embedding or a failure ends them all.
    pub fn settle(&self, unfinished: &mut usize) {
        match self {
            InferenceEvent::Finished { .. } => *unfinished = unfinished.saturating_sub(1),
            InferenceEvent::Embedding { .. } | InferenceEvent::Failed(_) => *unfinished = 0,
            InferenceEvent::Delta { .. } => {}
        }
    }
}

/// Why a request ended without an answer.
#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum RequestFailure {
    /// The engine refused it (the client's fault: the message says why).
    #[error("{0}")]
    Invalid(String),
    /// The worker serving it died after it had produced tokens; sending it again may succeed.
    #[error("the worker serving this request failed after it had started; retry the request")]
    WorkerLost,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// No node of the cluster could run it (the message says why); retrying later may work.
    #[error("{0}")]
    Unavailable(String),
}

/// Where a worker sends a request's events. The scheduler can revoke it (a worker was declared
/// dead): from then on nothing the old worker sends arrives, so a request that is re-queued never
/// gets a stray token from a stalled engine that wakes up.
#[derive(Clone, Debug)]
pub struct EventSink {
    inner: Arc<Mutex<SinkState>>,
}

#[derive(Debug)]
struct SinkState {
    /// Unbounded: a request's events are bounded by `n × max_tokens` deltas plus one end event
    /// each, and the engine thread must never block on a slow client.
    tx: Option<mpsc::UnboundedSender<InferenceEvent>>,
    produced: bool,
}

impl EventSink {
    pub fn new(tx: mpsc::UnboundedSender<InferenceEvent>) -> EventSink {
        EventSink {
            inner: Arc::new(Mutex::new(SinkState {
                tx: Some(tx),
                produced: false,
            })),
        }
    }

    /// Delivers `event`; false when the sink was revoked or the client has gone.
    pub fn send(&self, event: InferenceEvent) -> bool {
        let mut state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(tx) = &state.tx else {
            return false;
        };
        let ok = tx.send(event).is_ok();
        state.produced = true;
        ok
    }

    /// Cuts this sink off from the request. Returns the request's channel and whether anything
    /// was delivered through this sink.
    pub fn revoke(&self) -> Option<(mpsc::UnboundedSender<InferenceEvent>, bool)> {
        let mut state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let produced = state.produced;
        state.tx.take().map(|tx| (tx, produced))
    }
}
