//! Token sampling: turns one row of logits into the next token of one sequence, with the
//! OpenAI/vLLM knobs (temperature, top-k, top-p, min-p, presence/frequency/repetition penalties,
//! seed, logprobs).
//!
//! This module owns the per-sequence sampler state ([`SequenceSampler`]), the request parameters
//! and their validation ([`SamplingParams`], [`SamplingError`]), and the counter-based random
//! numbers ([`CounterRng`]) that make a sequence's output a function of its seed, stream and step
//! only: independent of batch composition and thread count, and resumable on another node. It
//! does not own stopping criteria, detokenization, logit bias or grammar masks (apply those to
//! the logits before [`SequenceSampler::sample`]), nor batching: the engine calls one sampler per
//! sequence, in any order or in parallel.
//!
//! Layout: `params.rs` and `error.rs` (the request side), `sequence.rs` (the pipeline),
//! `penalties.rs`, `truncation.rs` and `logprobs.rs` (its stages), `rng.rs`.

mod error;
mod logprobs;
mod params;
mod penalties;
mod rng;
mod sequence;
mod truncation;

#[cfg(test)]
mod tests;

pub use error::SamplingError;
pub use params::{MAX_TOP_LOGPROBS, SamplingParams};
pub use rng::CounterRng;
pub use sequence::{Sampled, SequenceSampler};
