//! The kernels of the random path: argmax, top-k, top-p and min-p truncation of a candidate set,
//! and the inverse-CDF draw. They work on sanitized, penalized logits (`values`: no NaN, no
//! `+inf`) and on a candidate list of token ids into them; none allocates beyond the scratch
//! buffers passed in.
//!
//! Nothing here sorts the whole vocabulary unless top-p really needs most of it: top-k is a
//! selection (O(V)), top-p selects and sorts a growing prefix until it holds the nucleus, and the
//! draw walks the kept candidates once. Probabilities are `exp((x - max) / T)` left unnormalized,
//! which is why min-p compares against 1 (the weight of the most likely token) and why no logit
//! is ever divided by a tiny temperature.

use std::cmp::Ordering;

/// First prefix length top-p tries; grown 8× while the nucleus is larger.
const TOP_P_FIRST_PREFIX: usize = 64;

/// Orders token ids by logit descending, then id ascending: the order of every selection and
/// sort here, so that ties always resolve to the lowest id, as in greedy.
pub(crate) fn descending(values: &[f32]) -> impl Fn(&u32, &u32) -> Ordering + '_ {
    |&a, &b| {
        values[b as usize]
            .total_cmp(&values[a as usize])
            .then(a.cmp(&b))
    }
}

/// The largest value and its lowest index; `(0, -inf)` when `values` is empty or all `-inf`.
pub(crate) fn argmax(values: &[f32]) -> (u32, f32) {
    let mut best = (0u32, f32::NEG_INFINITY);
    for (i, &x) in values.iter().enumerate() {
        // Strictly greater: the first (lowest) id of an exact tie wins, as in `torch.argmax`.
        if x > best.1 {
            best = (i as u32, x);
        }
    }
    best
}

/// The unnormalized probability of logit `x` given the largest logit and the temperature.
#[inline]
pub(crate) fn weight(x: f32, max: f32, temperature: f32) -> f32 {
    ((x - max) / temperature).exp()
}

/// Keeps the `k` highest candidates (`0 < k < candidates.len()`), sorted by [`descending`].
pub(crate) fn top_k(values: &[f32], candidates: &mut Vec<u32>, k: usize) {
    let order = descending(values);
    if k > 0 && k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, &order);
        candidates.truncate(k);
    }
    candidates.sort_unstable_by(&order);
}

/// Keeps the nucleus: in [`descending`] order, every candidate whose predecessors' probability
/// mass is below `top_p` (HF/vLLM's rule; the first candidate is always kept). Leaves the kept
/// candidates sorted by [`descending`]. `sorted` says they already are.
pub(crate) fn top_p(
    values: &[f32],
    candidates: &mut Vec<u32>,
    sorted: bool,
    max: f32,
    temperature: f32,
    top_p: f32,
) {
    let w = |i: u32| weight(values[i as usize], max, temperature) as f64;
    let total: f64 = candidates.iter().map(|&i| w(i)).sum();
    let target = f64::from(top_p) * total;
    let order = descending(values);
    let n = candidates.len();
    let mut prefix = if sorted { n } else { TOP_P_FIRST_PREFIX.min(n) };
    loop {
        if !sorted {
            if prefix < n {
                candidates.select_nth_unstable_by(prefix - 1, &order);
            }
            candidates[..prefix].sort_unstable_by(&order);
        }
        let mut before = 0.0;
        for j in 0..prefix {
            if j > 0 && before >= target {
                candidates.truncate(j);
                return;
            }
            before += w(candidates[j]);
        }
        if prefix == n {
            return;
        }
        prefix = prefix.saturating_mul(8).min(n);
    }
}

/// Drops candidates less likely than `min_p` times the most likely token. The most likely token
/// has weight exactly 1 (`exp(0)`), so it always survives.
pub(crate) fn min_p(
    values: &[f32],
    candidates: &mut Vec<u32>,
    max: f32,
    temperature: f32,
    min_p: f32,
) {
    let threshold = min_p.min(1.0);
    candidates.retain(|&i| weight(values[i as usize], max, temperature) >= threshold);
}

/// Inverse-CDF draw of one candidate with uniform `u ∈ [0, 1)`, walking `candidates` in their
/// current order. `weights` is scratch. Zero-probability candidates are never returned; if
/// `candidates` is empty the result is `None`.
pub(crate) fn draw(
    values: &[f32],
    candidates: &[u32],
    weights: &mut Vec<f32>,
    max: f32,
    temperature: f32,
    u: f64,
) -> Option<u32> {
    weights.clear();
    weights.extend(
        candidates
            .iter()
            .map(|&i| weight(values[i as usize], max, temperature)),
    );
    let total: f64 = weights.iter().map(|&p| f64::from(p)).sum();
    let target = u * total;
    let mut cumulative = 0.0;
    let mut last_possible = None;
    for (&token, &p) in candidates.iter().zip(weights.iter()) {
        if p > 0.0 {
            last_possible = Some(token);
        }
        cumulative += f64::from(p);
        if cumulative > target && p > 0.0 {
            return Some(token);
        }
    }
    // Rounding left `target` at or past the running total: the draw belongs to the last
    // candidate that has any probability.
    last_possible.or(candidates.first().copied())
}
