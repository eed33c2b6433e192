//! [`SamplingParams`]: the per-request knobs of the sampler with their OpenAI/vLLM meanings, and
//! the range check a request passes before it reaches the engine. This module only describes and
//! checks values; applying them is [`SequenceSampler`](crate::sampler::SequenceSampler)'s job.

use crate::sampler::SamplingError;

/// Largest `top_logprobs` accepted (the OpenAI limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// How one sequence picks its next token. The "off" value of each knob leaves the distribution
/// unchanged; [`Default`] is plain sampling at temperature 1 with everything else off.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature, `[0, 2]`. Exactly 0 means greedy (argmax, lowest id on ties), in which
    /// case `top_k`, `top_p` and `min_p` have no effect.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 (or anything ≥ the vocabulary) = off.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose probability reaches
    /// `top_p`, `(0, 1]`; 1 = off. At least one token is always kept.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the most likely token's, `[0, 1]`;
    /// 0 = off.
    pub min_p: f32,
    /// Subtracted once from the logit of every token already generated, `[-2, 2]`.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated, `[-2, 2]`.
    pub frequency_penalty: f32,
    /// HF/vLLM repetition penalty on tokens of the prompt or the output: positive logits are
    /// divided by it, others multiplied. `> 0`; 1 = off.
    pub repetition_penalty: f32,
    /// Seed of the random stream; `None` draws one from OS entropy when the sampler is built.
    pub seed: Option<u64>,
    /// Number of top alternatives to return with each token, `0..=20`; `None` = no alternatives.
    /// (The sampled token's own logprob is always returned.)
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            seed: None,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with every other knob off.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        }
    }

    /// Checks every parameter against its OpenAI range. Each error names the parameter and the
    /// value. `top_k` has no invalid value: 0 and anything at least the vocabulary size are off.
    pub fn validate(&self) -> Result<(), SamplingError> {
        check("temperature", self.temperature, "[0, 2]", |v| {
            (0.0..=2.0).contains(&v)
        })?;
        check("top_p", self.top_p, "(0, 1]", |v| v > 0.0 && v <= 1.0)?;
        check("min_p", self.min_p, "[0, 1]", |v| (0.0..=1.0).contains(&v))?;
        check("presence_penalty", self.presence_penalty, "[-2, 2]", |v| {
            (-2.0..=2.0).contains(&v)
        })?;
        check(
            "frequency_penalty",
            self.frequency_penalty,
            "[-2, 2]",
            |v| (-2.0..=2.0).contains(&v),
        )?;
        check(
            "repetition_penalty",
            self.repetition_penalty,
            "(0, inf)",
            |v| v > 0.0,
        )?;
        if let Some(n) = self.logprobs
            && n > MAX_TOP_LOGPROBS
        {
            return Err(SamplingError::TooManyLogprobs {
                value: n,
                max: MAX_TOP_LOGPROBS,
            });
        }
        Ok(())
    }
}

fn check(
    parameter: &'static str,
    value: f32,
    range: &'static str,
    in_range: impl Fn(f32) -> bool,
) -> Result<(), SamplingError> {
    if !value.is_finite() {
        return Err(SamplingError::NotFinite { parameter, value });
    }
    if !in_range(value) {
        return Err(SamplingError::OutOfRange {
            parameter,
            value,
            range,
        });
    }
    Ok(())
}
