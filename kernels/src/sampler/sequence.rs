//! [`SequenceSampler`]: the sampling state of one sequence (parameters, token history, random
//! stream, decode step, scratch buffers) and the per-token pipeline
//! penalties → temperature → greedy or top-k → top-p → min-p → draw, plus the logprobs of the raw
//! logits. It does not batch, stop, or detokenize: the engine calls [`SequenceSampler::sample`]
//! once per sequence per decode step with that sequence's logits row.

use std::fmt;

use crate::sampler::SamplingParams;
use crate::sampler::logprobs::{LogSoftmax, top_logprobs};
use crate::sampler::penalties::{TokenHistory, sanitize};
use crate::sampler::rng::CounterRng;
use crate::sampler::truncation;

/// One sampled token.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    /// The chosen token id.
    pub token: u32,
    /// Its log-probability under the log-softmax of the raw logits (before penalties and
    /// temperature).
    pub logprob: f32,
    /// The `params.logprobs` most likely tokens under the same distribution, by log-probability
    /// descending then id ascending; they may include `token`. Empty when `params.logprobs` is
    /// `None` or `Some(0)`.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// The sampler of one sequence.
///
/// Randomness is counter-based: the draw of decode step `s` depends only on
/// `(seed, stream, s)` and the logits, so the output does not depend on what else is in the
/// batch, and a sequence moved to another node continues exactly when rebuilt there with
/// [`SequenceSampler::new`] (with `seed: Some(self.seed())`), [`SequenceSampler::observe`] of its
/// output so far, and [`SequenceSampler::with_step`].
///
/// Truncation runs top-k, then top-p, then min-p, as HF and vLLM V0 do (vLLM V1 applies min-p
/// first; the two orders differ only when both top-p and min-p are set). Temperature 0 is greedy
/// exactly; any positive temperature samples.
///
/// Each call to [`SequenceSampler::sample`] is one decode step (it advances [`step`](Self::step),
/// greedy or not); [`SequenceSampler::observe`] only records history for the penalties. Call both
/// for every generated token.
///
/// Logits that are NaN count as `-inf`, `+inf` as `f32::MAX`. If no logit is above `-inf` (or
/// the row is empty) the result is token 0 with logprob `-inf`: an error would cost a branch on
/// the hot path for what is a model bug, and callers can see it in the logprob.
///
/// The scratch buffers grow to about 12 bytes per vocabulary entry and are kept between steps;
/// [`SequenceSampler::release_scratch`] frees them for a sequence that is parked.
pub struct SequenceSampler {
    params: SamplingParams,
    history: TokenHistory,
    rng: CounterRng,
    step: u64,
    /// Sanitized, penalized logits of the current step.
    work: Vec<f32>,
    /// Candidate token ids of the current step; then the top-N selection.
    candidates: Vec<u32>,
    /// Unnormalized probabilities of the kept candidates.
    weights: Vec<f32>,
}

impl SequenceSampler {
    /// The sampler of a new sequence at step 0. `params` is used as given: run
    /// [`SamplingParams::validate`] on client input first. Out-of-range values do not panic
    /// but give no documented distribution. `stream` separates sequences sharing a seed (the
    /// choice index for `n > 1`). When `params.seed` is `None` a seed is drawn from OS entropy
    /// now; [`SequenceSampler::seed`] returns it.
    pub fn new(params: SamplingParams, prompt_tokens: &[u32], stream: u64) -> Self {
        let seed = params.seed.unwrap_or_else(CounterRng::entropy_seed);
        SequenceSampler {
            params,
            history: TokenHistory::new(prompt_tokens),
            rng: CounterRng::new(seed, stream),
            step: 0,
            work: Vec::new(),
            candidates: Vec::new(),
            weights: Vec::new(),
        }
    }

    /// The same sampler positioned at decode step `step`, to resume a migrated or restored
    /// sequence.
    pub fn with_step(mut self, step: u64) -> Self {
        self.step = step;
        self
    }

    /// Another sequence with the same parameters, seed, history and step but its own random
    /// stream: for the other choices of an `n > 1` request.
    pub fn fork(&self, stream: u64) -> SequenceSampler {
        SequenceSampler {
            params: self.params.clone(),
            history: self.history.clone(),
            rng: CounterRng::new(self.rng.seed(), stream),
            step: self.step,
            work: Vec::new(),
            candidates: Vec::new(),
            weights: Vec::new(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The seed in use: `params.seed`, or the one drawn at construction.
    pub fn seed(&self) -> u64 {
        self.rng.seed()
    }

    /// The random stream.
    pub fn stream(&self) -> u64 {
        self.rng.stream()
    }

    /// The decode step the next [`SequenceSampler::sample`] draws for.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Records an emitted token for the presence, frequency and repetition penalties.
    pub fn observe(&mut self, token: u32) {
        self.history.observe(token);
    }

    /// Frees the scratch buffers; the next [`SequenceSampler::sample`] reallocates them.
    pub fn release_scratch(&mut self) {
        self.work = Vec::new();
        self.candidates = Vec::new();
        self.weights = Vec::new();
    }

    /// Picks the next token from one row of logits (one per vocabulary entry, fewer than 2^32)
    /// and advances the step. O(V) for greedy, top-k and plain sampling; top-p sorts only as
    /// much of the distribution as its nucleus needs.
    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        let step = self.step;
        self.step = self.step.wrapping_add(1);

        self.work.clear();
        self.work.extend(logits.iter().map(|&x| sanitize(x)));
        self.history.apply(&self.params, &mut self.work);

        // Not just `t == 0`: an unvalidated negative or NaN temperature is greedy too, instead of
        // a division by it.
        let temperature = self.params.temperature;
        let token = if temperature.is_nan() || temperature <= 0.0 {
            truncation::argmax(&self.work).0
        } else {
            self.sample_random(self.rng.uniform(step))
        };

        let normalizer = LogSoftmax::of(logits);
        let logprob = logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&x| normalizer.logprob(x));
        let top_logprobs = match self.params.logprobs {
            Some(n) => top_logprobs(logits, n, &normalizer, &mut self.candidates),
            None => Vec::new(),
        };
        Sampled {
            token,
            logprob,
            top_logprobs,
        }
    }

    /// The random path on `self.work` with uniform `u`.
    fn sample_random(&mut self, u: f64) -> u32 {
        let SequenceSampler {
            params,
            work,
            candidates,
            weights,
            ..
        } = self;
        let (best, max) = truncation::argmax(work);
        if max == f32::NEG_INFINITY {
            return best;
        }
        let temperature = params.temperature;

        candidates.clear();
        candidates.extend(
            work.iter()
                .enumerate()
                .filter(|&(_, &x)| x > f32::NEG_INFINITY)
                .map(|(i, _)| i as u32),
        );
        let mut sorted = false;
        if params.top_k > 0 && params.top_k < candidates.len() {
            truncation::top_k(work, candidates, params.top_k);
            sorted = true;
        }
        if params.top_p < 1.0 {
            truncation::top_p(work, candidates, sorted, max, temperature, params.top_p);
        }
        if params.min_p > 0.0 {
            truncation::min_p(work, candidates, max, temperature, params.min_p);
        }
        // The argmax survives every truncation, so `candidates` is not empty; `best` covers the
        // impossible case without a panic.
        truncation::draw(work, candidates, weights, max, temperature, u).unwrap_or(best)
    }
}

impl fmt::Debug for SequenceSampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SequenceSampler")
            .field("params", &self.params)
            .field("seed", &self.rng.seed())
            .field("stream", &self.rng.stream())
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}
