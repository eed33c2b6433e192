//! What goes into the engine (a [`SequenceRequest`]) and what comes out (a [`SeqEvent`] per
//! sequence per step), plus the per-request errors the engine refuses a request with.

use crate::sampler::{Sampled, SamplingError, SamplingParams};

/// Engine-assigned request id; each choice of an `n > 1` request shares it.
pub type RequestId = u64;

/// What a request wants computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Generate tokens after the prompt.
    Generate,
    /// Mean-pooled, L2-normalised final hidden state of the prompt (no generation).
    Embed,
}

/// A request as the engine sees it: token ids, not text.
#[derive(Clone, Debug)]
pub struct SequenceRequest {
    pub prompt: Vec<u32>,
    pub kind: RequestKind,
    pub sampling: SamplingParams,
    /// Generated tokens at most (the context window may cut earlier).
    pub max_tokens: usize,
    /// Tokens that end generation (EOS and any the client added); emitted with `Stop`.
    pub stop_token_ids: Vec<u32>,
    /// Number of choices sampled from one shared prompt (OpenAI `n`).
    pub n: usize,
    /// Also return the logits of every prompt position (prompt logprobs).
    pub prompt_logits: bool,
}

impl SequenceRequest {
    /// A generation request with default sampling.
    pub fn generate(prompt: Vec<u32>, sampling: SamplingParams, max_tokens: usize) -> Self {
        SequenceRequest {
            prompt,
            kind: RequestKind::Generate,
            sampling,
            max_tokens,
            stop_token_ids: Vec::new(),
            n: 1,
            prompt_logits: false,
        }
    }

    /// An embedding request.
    pub fn embed(prompt: Vec<u32>) -> Self {
        SequenceRequest {
            kind: RequestKind::Embed,
            max_tokens: 0,
            ..SequenceRequest::generate(prompt, SamplingParams::default(), 0)
        }
    }
}

/// Why a choice stopped generating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was sampled (it is the last token of the event that carries this).
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
}

/// Something a step produced for one choice of a request.
#[derive(Clone, Debug, PartialEq)]
pub enum SeqEvent {
    /// A new token of choice `choice`; `finish` is set on its last token.
    Token {
        request: RequestId,
        choice: usize,
        sampled: Sampled,
        finish: Option<FinishReason>,
    },
    /// Logits of prompt positions `first_position..first_position + rows` (row-major, vocab wide).
    PromptLogits {
        request: RequestId,
        first_position: usize,
        rows: usize,
        logits: Vec<f32>,
    },
    /// Choice `choice` ended without a new token (the KV cache cannot hold it any longer).
    Finished {
        request: RequestId,
        choice: usize,
        finish: FinishReason,
    },
    /// The request's embedding; the request is finished.
    Embedding {
        request: RequestId,
        embedding: Vec<f32>,
        prompt_tokens: usize,
    },
}

/// Why the engine refused a request. Each is the client's fault, never fatal to the engine.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {token} is outside the vocabulary (size {vocab_size})")]
    TokenOutOfVocabulary { token: u32, vocab_size: usize },
    #[error(
        "this model's maximum context length is {limit} tokens, but the prompt has {prompt_tokens} tokens"
    )]
    ContextExceeded { prompt_tokens: usize, limit: usize },
    #[error("the prompt needs {needed} KV-cache blocks but the cache holds only {capacity}")]
    CacheTooSmall { needed: usize, capacity: usize },
    #[error("`n` must be between 1 and {max}, got {n}")]
    InvalidN { n: usize, max: usize },
    #[error("`max_tokens` must be at least 1")]
    ZeroMaxTokens,
    #[error(transparent)]
    Sampling(#[from] SamplingError),
}
