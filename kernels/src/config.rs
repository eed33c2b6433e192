//! A model's `config.json`: parsed into [`RawModelConfig`] (serde, both the transformers 4 and 5
//! spellings), then validated once into [`ModelConfig`], whose errors name the field and value.
//!
//! This module owns the architecture-level facts (sizes, RoPE, sliding window, biases, tied
//! embeddings). It does not read weights: the shapes of tensors are checked against a validated
//! config in [`crate::weights`].

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::dtype::DType;

/// The Llama-family architectures the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// Llama 1/2/3 (`LlamaForCausalLM`).
    Llama,
    /// Mistral (`MistralForCausalLM`): Llama plus sliding-window attention.
    Mistral,
    /// Qwen2 (`Qwen2ForCausalLM`): biases on the q/k/v projections, often tied embeddings.
    Qwen2,
}

impl Architecture {
    /// The `model_type` HuggingFace writes for this architecture.
    pub const fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
        }
    }

    /// The class name HuggingFace writes in `architectures`.
    pub const fn class_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    fn from_model_type(s: &str) -> Option<Self> {
        [
            Architecture::Llama,
            Architecture::Mistral,
            Architecture::Qwen2,
        ]
        .into_iter()
        .find(|a| a.model_type() == s)
    }

    fn from_class_name(s: &str) -> Option<Self> {
        [
            Architecture::Llama,
            Architecture::Mistral,
            Architecture::Qwen2,
        ]
        .into_iter()
        .find(|a| a.class_name() == s)
    }
}

impl std::str::FromStr for Architecture {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Architecture::from_model_type(s)
            .ok_or_else(|| format!("unknown architecture `{s}` (expected llama, mistral or qwen2)"))
    }
}

/// How rotary position frequencies are scaled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE: `inv_freq[i] = theta^(-2i/d)`.
    Default,
    /// Positions divided by `factor` (equivalently every frequency).
    Linear { factor: f32 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: u32,
    },
}

/// A validated model configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    /// Attention only looks at the last `sliding_window` positions (Mistral).
    pub sliding_window: Option<usize>,
    /// Biases on the q, k and v projections (Qwen2, or Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Biases on the MLP projections (Llama with `mlp_bias`).
    pub mlp_bias: bool,
    /// The output projection is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// The dtype the checkpoint declares (weights carry their own dtype; this is informational).
    pub dtype: Option<DType>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// Why a `config.json` was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid model config: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: field `{field}` = {value}: {reason}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("{path}: required field `{field}` is missing")]
    Missing { path: PathBuf, field: &'static str },
}

/// `config.json` as HuggingFace writes it; only the fields the engine reads.
#[derive(Debug, Default, Deserialize)]
pub struct RawModelConfig {
    pub architectures: Option<Vec<String>>,
    pub model_type: Option<String>,
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub max_position_embeddings: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    pub rope_parameters: Option<serde_json::Value>,
    pub sliding_window: Option<serde_json::Value>,
    pub use_sliding_window: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub tie_word_embeddings: Option<bool>,
    pub hidden_act: Option<String>,
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
    pub bos_token_id: Option<serde_json::Value>,
    pub eos_token_id: Option<serde_json::Value>,
    pub pretraining_tp: Option<usize>,
}

impl ModelConfig {
    /// Reads and validates `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })?;
        let raw: RawModelConfig =
            serde_json::from_str(&text).map_err(|source| ConfigError::Json {
                path: path.clone(),
                source,
            })?;
        raw.validate(&path)
    }
}

impl RawModelConfig {
    /// Validates into a [`ModelConfig`]; `path` names the file in errors.
    pub fn validate(self, path: &Path) -> Result<ModelConfig, ConfigError> {
        let invalid = |field: &'static str, value: String, reason: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            value,
            reason: reason.to_string(),
        };
        let missing = |field: &'static str| ConfigError::Missing {
            path: path.to_path_buf(),
            field,
        };

        let architecture = match (&self.model_type, &self.architectures) {
            (Some(t), _) => Architecture::from_model_type(t).ok_or_else(|| {
                invalid(
                    "model_type",
                    format!("{t:?}"),
                    "unsupported architecture (supported: llama, mistral, qwen2)",
                )
            })?,
            (None, Some(classes)) if !classes.is_empty() => {
                Architecture::from_class_name(&classes[0]).ok_or_else(|| {
                    invalid(
                        "architectures",
                        format!("{classes:?}"),
                        "unsupported architecture (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)",
                    )
                })?
            }
            _ => return Err(missing("model_type")),
        };
        if let Some(classes) = &self.architectures
            && let Some(first) = classes.first()
            && Architecture::from_class_name(first) != Some(architecture)
        {
            return Err(invalid(
                "architectures",
                format!("{classes:?}"),
                &format!(
                    "does not match model_type `{}` (expected {})",
                    architecture.model_type(),
                    architecture.class_name()
                ),
            ));
        }

        let positive = |field: &'static str, v: Option<usize>| -> Result<usize, ConfigError> {
            match v {
                None => Err(missing(field)),
                Some(0) => Err(invalid(field, "0".into(), "must be positive")),
                Some(v) => Ok(v),
            }
        };
        let vocab_size = positive("vocab_size", self.vocab_size)?;
        let hidden_size = positive("hidden_size", self.hidden_size)?;
        let intermediate_size = positive("intermediate_size", self.intermediate_size)?;
        let num_layers = positive("num_hidden_layers", self.num_hidden_layers)?;
        let num_heads = positive("num_attention_heads", self.num_attention_heads)?;
        let num_kv_heads = positive(
            "num_key_value_heads",
            self.num_key_value_heads.or(Some(num_heads)),
        )?;
        if num_heads % num_kv_heads != 0 {
            return Err(invalid(
                "num_key_value_heads",
                num_kv_heads.to_string(),
                &format!("must divide num_attention_heads ({num_heads})"),
            ));
        }
        let head_dim = match self.head_dim {
            Some(d) => positive("head_dim", Some(d))?,
            None => {
                if hidden_size % num_heads != 0 {
                    return Err(invalid(
                        "hidden_size",
                        hidden_size.to_string(),
                        &format!(
                            "must be a multiple of num_attention_heads ({num_heads}) when head_dim is absent"
                        ),
                    ));
                }
                hidden_size / num_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(invalid(
                "head_dim",
                head_dim.to_string(),
                "must be even for rotary embeddings",
            ));
        }
        let max_position_embeddings =
            positive("max_position_embeddings", self.max_position_embeddings)?;

        let rms_norm_eps = self.rms_norm_eps.ok_or_else(|| missing("rms_norm_eps"))?;
        if !(rms_norm_eps > 0.0 && rms_norm_eps.is_finite()) {
            return Err(invalid(
                "rms_norm_eps",
                rms_norm_eps.to_string(),
                "must be a positive number",
            ));
        }

        if let Some(act) = &self.hidden_act
            && act != "silu"
            && act != "swish"
        {
            return Err(invalid(
                "hidden_act",
                format!("{act:?}"),
                "only silu is supported",
            ));
        }
        if let Some(tp) = self.pretraining_tp
            && tp != 1
        {
            return Err(invalid(
                "pretraining_tp",
                tp.to_string(),
                "only 1 is supported",
            ));
        }

        // transformers 5 keeps theta and scaling together in `rope_parameters`; transformers 4
        // has `rope_theta` and `rope_scaling`. Prefer the newer spelling when both are present.
        let (rope_theta, rope_scaling) =
            rope_settings(&self.rope_parameters, self.rope_theta, &self.rope_scaling)
                .map_err(|(field, value, reason)| invalid(field, value, &reason))?;

        let sliding_window = match (architecture, &self.sliding_window) {
            (_, None) | (_, Some(serde_json::Value::Null)) => None,
            (Architecture::Qwen2, Some(_)) if self.use_sliding_window != Some(true) => None,
            (Architecture::Qwen2, Some(v)) => {
                return Err(invalid(
                    "use_sliding_window",
                    format!("true (sliding_window = {v})"),
                    "Qwen2's per-layer sliding window is not supported",
                ));
            }
            (Architecture::Llama, Some(v)) => {
                return Err(invalid(
                    "sliding_window",
                    v.to_string(),
                    "Llama models have no sliding window",
                ));
            }
            (Architecture::Mistral, Some(v)) => match v.as_u64() {
                Some(w) if w > 0 => Some(w as usize),
                _ => {
                    return Err(invalid(
                        "sliding_window",
                        v.to_string(),
                        "must be a positive integer or null",
                    ));
                }
            },
        };

        let attention_bias = self.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match architecture {
            Architecture::Qwen2 => (true, false),
            _ => (attention_bias, attention_bias),
        };
        let mlp_bias = self.mlp_bias.unwrap_or(false);

        let dtype_name = self.dtype.as_ref().or(self.torch_dtype.as_ref());
        let dtype = match dtype_name {
            None => None,
            Some(name) => Some(DType::from_hf_name(name).ok_or_else(|| {
                invalid(
                    "torch_dtype",
                    format!("{name:?}"),
                    "expected float32, float16 or bfloat16",
                )
            })?),
        };

        let token_ids =
            |field: &'static str, v: &Option<serde_json::Value>| -> Result<Vec<u32>, ConfigError> {
                let bad = |v: &serde_json::Value| {
                    invalid(
                        field,
                        v.to_string(),
                        "must be a token id or a list of token ids",
                    )
                };
                match v {
                    None | Some(serde_json::Value::Null) => Ok(Vec::new()),
                    Some(serde_json::Value::Array(items)) => items
                        .iter()
                        .map(|i| i.as_u64().map(|i| i as u32).ok_or_else(|| bad(i)))
                        .collect(),
                    Some(other) => other
                        .as_u64()
                        .map(|i| vec![i as u32])
                        .ok_or_else(|| bad(other)),
                }
            };
        let bos_token_id = token_ids("bos_token_id", &self.bos_token_id)?
            .first()
            .copied();
        let eos_token_ids = token_ids("eos_token_id", &self.eos_token_id)?;

        Ok(ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps: rms_norm_eps as f32,
            rope_theta,
            rope_scaling,
            sliding_window,
            qkv_bias,
            o_bias,
            mlp_bias,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            dtype,
            bos_token_id,
            eos_token_ids,
        })
    }
}

type FieldError = (&'static str, String, String);

fn rope_settings(
    parameters: &Option<serde_json::Value>,
    theta: Option<f64>,
    scaling: &Option<serde_json::Value>,
) -> Result<(f32, RopeScaling), FieldError> {
    let (field, source) = match (parameters, scaling) {
        (Some(p @ serde_json::Value::Object(_)), _) => ("rope_parameters", Some(p)),
        (_, Some(s @ serde_json::Value::Object(_))) => ("rope_scaling", Some(s)),
        _ => ("rope_scaling", None),
    };
    let theta_from_params = source
        .filter(|_| field == "rope_parameters")
        .and_then(|p| p.get("rope_theta"))
        .and_then(|t| t.as_f64());
    let theta = theta_from_params.or(theta).unwrap_or(10_000.0);
    if !(theta > 0.0 && theta.is_finite()) {
        return Err(("rope_theta", theta.to_string(), "must be positive".into()));
    }
    let Some(source) = source else {
        return Ok((theta as f32, RopeScaling::Default));
    };
    let kind = source
        .get("rope_type")
        .or_else(|| source.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let number = |key: &str| -> Result<f32, FieldError> {
        source
            .get(key)
            .and_then(|v| v.as_f64())
            .filter(|v| v.is_finite() && *v > 0.0)
            .map(|v| v as f32)
            .ok_or_else(|| {
                (
                    field,
                    source.to_string(),
                    format!("`{key}` must be a positive number for rope_type `{kind}`"),
                )
            })
    };
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: number("factor")?,
        },
        "llama3" => {
            let low = number("low_freq_factor")?;
            let high = number("high_freq_factor")?;
            if high <= low {
                return Err((
                    field,
                    source.to_string(),
                    "high_freq_factor must exceed low_freq_factor".into(),
                ));
            }
            RopeScaling::Llama3 {
                factor: number("factor")?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: number("original_max_position_embeddings")?
                    as u32,
            }
        }
        other => {
            return Err((
                field,
                source.to_string(),
                format!("unsupported rope_type `{other}` (supported: default, linear, llama3)"),
            ));
        }
    };
    Ok((theta as f32, scaling))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ModelConfig, ConfigError> {
        serde_json::from_str::<RawModelConfig>(json)
            .unwrap()
            .validate(Path::new("config.json"))
    }

    const BASE: &str = r#""vocab_size": 512, "hidden_size": 64, "intermediate_size": 176,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5"#;

    #[test]
    fn fixture_config_parses_both_spellings() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llama");
        let c = ModelConfig::from_dir(&dir).unwrap();
        assert_eq!(c.architecture, Architecture::Llama);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope_theta, 10_000.0);
        assert_eq!(c.rope_scaling, RopeScaling::Default);
        assert_eq!(c.dtype, Some(DType::F32));
        assert_eq!(c.eos_token_ids, vec![511]);
    }

    #[test]
    fn transformers4_rope_scaling_llama3() {
        let c = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_theta": 500000.0,
            "rope_scaling": {{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}}}"#
        ))
        .unwrap();
        assert_eq!(c.rope_theta, 500_000.0);
        assert_eq!(
            c.rope_scaling,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192
            }
        );
    }

    #[test]
    fn transformers5_rope_parameters_linear() {
        let c = parse(&format!(
            r#"{{"model_type": "llama", {BASE},
            "rope_parameters": {{"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0}}}}"#
        ))
        .unwrap();
        assert_eq!(c.rope_theta, 1000.0);
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
    }

    #[test]
    fn unknown_architecture_names_field_and_value() {
        let err = parse(&format!(r#"{{"model_type": "gpt2", {BASE}}}"#)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("model_type") && msg.contains("gpt2"), "{msg}");
    }

    #[test]
    fn unknown_rope_type_is_refused() {
        let err = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_scaling": {{"type": "yarn", "factor": 4.0}}}}"#
        ))
        .unwrap_err();
        assert!(err.to_string().contains("yarn"), "{err}");
    }

    #[test]
    fn inconsistent_heads_are_refused() {
        let err = parse(
            r#"{"model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 176,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 3,
            "max_position_embeddings": 512, "rms_norm_eps": 1e-5}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("num_key_value_heads"), "{err}");
        let err = parse(
            r#"{"model_type": "llama", "vocab_size": 512, "hidden_size": 66, "intermediate_size": 176,
            "num_hidden_layers": 2, "num_attention_heads": 4,
            "max_position_embeddings": 512, "rms_norm_eps": 1e-5}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("hidden_size"), "{err}");
    }

    #[test]
    fn mistral_sliding_window_and_qwen2_biases() {
        let m = parse(&format!(
            r#"{{"model_type": "mistral", {BASE}, "sliding_window": 16}}"#
        ))
        .unwrap();
        assert_eq!(m.sliding_window, Some(16));
        let q = parse(&format!(
            r#"{{"model_type": "qwen2", {BASE}, "sliding_window": 4096, "use_sliding_window": false, "tie_word_embeddings": true}}"#
        ))
        .unwrap();
        assert_eq!(q.sliding_window, None);
        assert!(q.qkv_bias && !q.o_bias && q.tie_word_embeddings);
    }

    #[test]
    fn missing_field_is_named() {
        let err = parse(r#"{"model_type": "llama"}"#).unwrap_err();
        assert!(err.to_string().contains("vocab_size"), "{err}");
    }
}
