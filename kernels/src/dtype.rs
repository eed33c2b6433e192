//! Storage element types of model weights.
//!
//! Activations, the KV cache and all arithmetic are `f32` on the CPU backend; weights keep the
//! element type they were stored with so that decode reads as few bytes as possible.

use std::fmt;

/// Element type of a weight tensor as stored on disk and in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The name HuggingFace uses in `config.json` (`torch_dtype` / `dtype`).
    pub const fn hf_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }

    /// Parses HuggingFace's `torch_dtype` spelling (`float32`, `float16`, `bfloat16`, and the
    /// short forms `f32`, `fp16`, ...).
    pub fn from_hf_name(name: &str) -> Option<DType> {
        match name {
            "float32" | "f32" | "fp32" => Some(DType::F32),
            "float16" | "f16" | "fp16" | "half" => Some(DType::F16),
            "bfloat16" | "bf16" => Some(DType::BF16),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        })
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DType::from_hf_name(s)
            .ok_or_else(|| format!("unknown dtype `{s}` (expected f32, f16 or bf16)"))
    }
}
