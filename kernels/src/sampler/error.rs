//! The one error type of the sampler: a [`SamplingParams`](crate::sampler::SamplingParams) value a
//! client sent that the sampler refuses. Every variant names the offending parameter with its
//! OpenAI spelling, so the HTTP layer can fill `error.param` without string matching.

/// A sampling parameter out of its documented range. A per-request error: the request is refused,
/// the engine carries on.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SamplingError {
    /// A float parameter that is NaN or infinite.
    #[error("`{parameter}` must be a finite number, got {value}")]
    NotFinite {
        /// OpenAI name of the parameter (`temperature`, `top_p`, ...).
        parameter: &'static str,
        /// The value received.
        value: f32,
    },
    /// A finite float parameter outside its range.
    #[error("`{parameter}` must be in {range}, got {value}")]
    OutOfRange {
        /// OpenAI name of the parameter (`temperature`, `top_p`, ...).
        parameter: &'static str,
        /// The value received.
        value: f32,
        /// The accepted range in interval notation, e.g. `[0, 2]` or `(0, 1]`.
        range: &'static str,
    },
    /// More top alternatives requested than the sampler returns.
    #[error("`top_logprobs` must be at most {max}, got {value}")]
    TooManyLogprobs {
        /// The number requested.
        value: usize,
        /// The largest number accepted.
        max: usize,
    },
}

impl SamplingError {
    /// OpenAI name of the offending parameter, for the `param` field of an error response.
    pub fn parameter(&self) -> &'static str {
        match self {
            SamplingError::NotFinite { parameter, .. }
            | SamplingError::OutOfRange { parameter, .. } => parameter,
            SamplingError::TooManyLogprobs { .. } => "top_logprobs",
        }
    }
}
