//! Log-probabilities as vLLM returns them by default: the log-softmax of the raw logits the model
//! produced, before penalties and temperature. Owns the normalizer and the top-N selection; does
//! not decide which token is sampled.

use crate::sampler::penalties::sanitize;

/// The log-softmax normalizer of one logits row.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LogSoftmax {
    /// Largest sanitized logit; `-inf` when there is no finite one.
    max: f32,
    /// `ln Σ exp(x - max)`.
    log_total: f64,
}

impl LogSoftmax {
    /// One pass for the maximum, one for the sum; NaN counts as `-inf`, `+inf` as `f32::MAX`.
    pub(crate) fn of(logits: &[f32]) -> Self {
        let max = logits
            .iter()
            .map(|&x| sanitize(x))
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return LogSoftmax {
                max,
                log_total: 0.0,
            };
        }
        let total: f64 = logits
            .iter()
            .map(|&x| f64::from((sanitize(x) - max).exp()))
            .sum();
        LogSoftmax {
            max,
            log_total: total.ln(),
        }
    }

    /// The log-probability of a raw logit of this row; `-inf` for every token when the row has
    /// no finite logit.
    pub(crate) fn logprob(&self, logit: f32) -> f32 {
        if self.max == f32::NEG_INFINITY {
            return f32::NEG_INFINITY;
        }
        ((f64::from(sanitize(logit)) - f64::from(self.max)) - self.log_total) as f32
    }
}

/// The `n` most likely tokens of `logits` with their log-probabilities, sorted by log-probability
/// descending then id ascending. `scratch` holds the id list during the O(V) selection.
pub(crate) fn top_logprobs(
    logits: &[f32],
    n: usize,
    normalizer: &LogSoftmax,
    scratch: &mut Vec<u32>,
) -> Vec<(u32, f32)> {
    let n = n.min(logits.len());
    if n == 0 {
        return Vec::new();
    }
    // Select on sanitized values so that NaN ranks with -inf, as it does everywhere else.
    scratch.clear();
    scratch.extend(0..logits.len() as u32);
    let sanitized = |i: u32| sanitize(logits[i as usize]);
    let order = |a: &u32, b: &u32| sanitized(*b).total_cmp(&sanitized(*a)).then(a.cmp(b));
    if n < scratch.len() {
        scratch.select_nth_unstable_by(n - 1, order);
    }
    let mut top: Vec<(u32, f32)> = scratch[..n]
        .iter()
        .map(|&i| (i, normalizer.logprob(logits[i as usize])))
        .collect();
    // Sort on the reported f32 values: distinct logits can round to the same logprob, and the
    // documented order is by what the client sees.
    top.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    top
}
