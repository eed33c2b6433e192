//! [`ModelSpec`]: the sizes and settings of a random-weight model, and their validation.
//!
//! This module owns what a spec may say and how big the result is. It does not decide tensor
//! names or initial values ([`super::tensors`]) nor write files ([`super::write_model`]).

use crate::config::Architecture;
use crate::dtype::DType;

use super::error::GenModelError;

/// The byte tokens plus the three special tokens every generated tokenizer has.
pub const MIN_VOCAB_SIZE: usize = 256 + 3;

/// How rotary position frequencies are scaled, as written to `config.json`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScalingSpec {
    /// Positions divided by `factor`.
    Linear { factor: f32 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
}

/// What to generate: a Llama-family model with random weights drawn from `seed`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub intermediate_size: usize,
    /// Total ids: 256 byte tokens, `vocab_size - 259` merges, 3 special tokens.
    pub vocab_size: usize,
    /// Element type of every stored weight.
    pub dtype: DType,
    pub seed: u64,
    /// Default 4096; also the tokenizer's `model_max_length`.
    pub max_position_embeddings: usize,
    /// Default 10 000.
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScalingSpec>,
    /// Mistral only.
    pub sliding_window: Option<usize>,
    /// Default true for Qwen2, false otherwise. When true there is no `lm_head.weight`.
    pub tie_word_embeddings: bool,
    /// Shard into `model-0000i-of-0000N.safetensors` plus `model.safetensors.index.json` when
    /// the weights exceed this many bytes; `None` writes one `model.safetensors`.
    pub max_shard_bytes: Option<u64>,
}

impl ModelSpec {
    /// A spec with the given sizes and defaults for everything else (seed 0, 4096 positions,
    /// RoPE theta 10 000 unscaled, no sliding window, tied embeddings for Qwen2 only, one file).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        architecture: Architecture,
        hidden_size: usize,
        num_layers: usize,
        num_heads: usize,
        num_kv_heads: usize,
        intermediate_size: usize,
        vocab_size: usize,
        dtype: DType,
    ) -> Self {
        ModelSpec {
            architecture,
            hidden_size,
            num_layers,
            num_heads,
            num_kv_heads,
            intermediate_size,
            vocab_size,
            dtype,
            seed: 0,
            max_position_embeddings: 4096,
            rope_theta: 10_000.0,
            rope_scaling: None,
            sliding_window: None,
            tie_word_embeddings: architecture == Architecture::Qwen2,
            max_shard_bytes: None,
        }
    }

    /// Dimension of one attention head. Meaningful once [`ModelSpec::validate`] passed.
    pub fn head_dim(&self) -> usize {
        self.hidden_size.checked_div(self.num_heads).unwrap_or(0)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), GenModelError> {
        let positive = |field: &'static str, value: usize| {
            if value == 0 {
                Err(GenModelError::invalid(field, value, "must be positive"))
            } else {
                Ok(())
            }
        };
        positive("hidden_size", self.hidden_size)?;
        positive("num_layers", self.num_layers)?;
        positive("num_heads", self.num_heads)?;
        positive("num_kv_heads", self.num_kv_heads)?;
        positive("intermediate_size", self.intermediate_size)?;
        positive("max_position_embeddings", self.max_position_embeddings)?;
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(GenModelError::invalid(
                "hidden_size",
                self.hidden_size,
                format!("must be a multiple of num_heads ({})", self.num_heads),
            ));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(GenModelError::invalid(
                "num_kv_heads",
                self.num_kv_heads,
                format!("must divide num_heads ({})", self.num_heads),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(GenModelError::invalid(
                "hidden_size",
                self.hidden_size,
                format!(
                    "head_dim = hidden_size / num_heads = {} must be even for rotary embeddings",
                    self.head_dim()
                ),
            ));
        }
        if self.vocab_size < MIN_VOCAB_SIZE {
            return Err(GenModelError::invalid(
                "vocab_size",
                self.vocab_size,
                format!("must be at least {MIN_VOCAB_SIZE} (256 byte tokens + 3 special tokens)"),
            ));
        }
        if u32::try_from(self.vocab_size).is_err() {
            return Err(GenModelError::invalid(
                "vocab_size",
                self.vocab_size,
                "token ids must fit in u32",
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(GenModelError::invalid(
                "rope_theta",
                self.rope_theta,
                "must be a positive number",
            ));
        }
        self.validate_rope_scaling()?;
        match (self.architecture, self.sliding_window) {
            (_, None) => {}
            (Architecture::Mistral, Some(0)) => {
                return Err(GenModelError::invalid(
                    "sliding_window",
                    0,
                    "must be positive",
                ));
            }
            (Architecture::Mistral, Some(_)) => {}
            (other, Some(w)) => {
                return Err(GenModelError::invalid(
                    "sliding_window",
                    w,
                    format!(
                        "only Mistral has a sliding window, not {}",
                        other.model_type()
                    ),
                ));
            }
        }
        if self.max_shard_bytes == Some(0) {
            return Err(GenModelError::invalid(
                "max_shard_bytes",
                0,
                "must be positive",
            ));
        }
        let bytes = self.exact_parameter_count() * self.dtype.size() as u128;
        if bytes > u128::from(u64::MAX / 2) {
            return Err(GenModelError::invalid(
                "num_layers",
                self.num_layers,
                format!("the model would hold {bytes} bytes of weights"),
            ));
        }
        Ok(())
    }

    fn validate_rope_scaling(&self) -> Result<(), GenModelError> {
        let positive = |name: &str, v: f32| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(GenModelError::invalid(
                    "rope_scaling",
                    format!("{:?}", self.rope_scaling),
                    format!("`{name}` must be a positive number"),
                ))
            }
        };
        match self.rope_scaling {
            None => Ok(()),
            Some(RopeScalingSpec::Linear { factor }) => positive("factor", factor),
            Some(RopeScalingSpec::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                positive("factor", factor)?;
                positive("low_freq_factor", low_freq_factor)?;
                positive("high_freq_factor", high_freq_factor)?;
                let refuse = |reason: String| {
                    Err(GenModelError::invalid(
                        "rope_scaling",
                        format!("{:?}", self.rope_scaling),
                        reason,
                    ))
                };
                if high_freq_factor <= low_freq_factor {
                    return refuse("high_freq_factor must exceed low_freq_factor".into());
                }
                // transformers warns unless the original context is shorter than the new one.
                if original_max_position_embeddings == 0
                    || original_max_position_embeddings >= self.max_position_embeddings
                {
                    return refuse(format!(
                        "original_max_position_embeddings must be in 1..max_position_embeddings ({})",
                        self.max_position_embeddings
                    ));
                }
                Ok(())
            }
        }
    }

    /// Number of weights, biases included (saturating for specs that fail validation).
    pub fn parameter_count(&self) -> u64 {
        u64::try_from(self.exact_parameter_count()).unwrap_or(u64::MAX)
    }

    /// The parameter count in u128, computed from the sizes alone so that an absurd spec is
    /// refused without listing its tensors. Equal to the sum over [`super::tensors::tensor_list`]
    /// (checked by the tests against the written files).
    fn exact_parameter_count(&self) -> u128 {
        let [h, layers, v, i] = [
            self.hidden_size,
            self.num_layers,
            self.vocab_size,
            self.intermediate_size,
        ]
        .map(|n| n as u128);
        let hd = self.head_dim() as u128;
        let q = self.num_heads as u128 * hd;
        let kv = self.num_kv_heads as u128 * hd;
        let biases = if self.architecture == Architecture::Qwen2 {
            q + 2 * kv
        } else {
            0
        };
        let per_layer = 2 * h + 2 * q * h + 2 * kv * h + 3 * h * i + biases;
        let embeddings = if self.tie_word_embeddings { 1 } else { 2 } * v * h;
        embeddings + layers * per_layer + h
    }

    /// Bytes of tensor data in the safetensors files (headers excluded): what `progress`
    /// counts up to.
    pub fn weight_bytes(&self) -> u64 {
        self.parameter_count()
            .saturating_mul(self.dtype.size() as u64)
    }
}
