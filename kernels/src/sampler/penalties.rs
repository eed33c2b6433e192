//! [`TokenHistory`]: which tokens a sequence has seen (prompt) and emitted (output, with counts),
//! and the repetition, presence and frequency penalties computed from them, with vLLM's formulas.
//!
//! Penalties touch only tokens in the history, so applying them costs O(distinct tokens), not
//! O(vocabulary). Temperature and truncation are not this module's business.

use std::collections::HashMap;

use crate::sampler::SamplingParams;

/// The tokens a sequence's penalties depend on.
#[derive(Clone, Debug, Default)]
pub(crate) struct TokenHistory {
    /// Distinct prompt tokens, sorted, for the repetition penalty.
    prompt: Vec<u32>,
    /// How many times each output token was emitted.
    output_counts: HashMap<u32, u32>,
}

impl TokenHistory {
    pub(crate) fn new(prompt_tokens: &[u32]) -> Self {
        let mut prompt = prompt_tokens.to_vec();
        prompt.sort_unstable();
        prompt.dedup();
        TokenHistory {
            prompt,
            output_counts: HashMap::new(),
        }
    }

    pub(crate) fn observe(&mut self, token: u32) {
        *self.output_counts.entry(token).or_insert(0) += 1;
    }

    /// Applies the penalties of `params` to `logits` in place, in vLLM's order: repetition on
    /// prompt ∪ output, then `logit -= frequency * count + presence * [count > 0]` on output
    /// tokens. Tokens outside `logits` (ids past the vocabulary) are ignored. Results that
    /// overflow are clamped back to finite values; NaN becomes `-inf`.
    pub(crate) fn apply(&self, params: &SamplingParams, logits: &mut [f32]) {
        let repetition = params.repetition_penalty;
        if repetition != 1.0 {
            let output_only = self
                .output_counts
                .keys()
                .copied()
                .filter(|t| self.prompt.binary_search(t).is_err());
            for token in self.prompt.iter().copied().chain(output_only) {
                if let Some(logit) = logits.get_mut(token as usize) {
                    *logit = sanitize(if *logit > 0.0 {
                        *logit / repetition
                    } else {
                        *logit * repetition
                    });
                }
            }
        }
        let (presence, frequency) = (params.presence_penalty, params.frequency_penalty);
        if presence != 0.0 || frequency != 0.0 {
            for (&token, &count) in &self.output_counts {
                if let Some(logit) = logits.get_mut(token as usize) {
                    *logit = sanitize(*logit - frequency * count as f32 - presence);
                }
            }
        }
    }
}

/// Maps a logit to the values the sampler works with: NaN → `-inf` (never chosen while any other
/// token is possible), `+inf` → `f32::MAX` (so softmax stays defined; such tokens win).
pub(crate) fn sanitize(logit: f32) -> f32 {
    if logit.is_nan() {
        f32::NEG_INFINITY
    } else if logit == f32::INFINITY {
        f32::MAX
    } else {
        logit
    }
}
