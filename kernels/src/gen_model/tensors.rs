//! Which tensors a model has (HuggingFace names and shapes) and how each one's values are drawn.
//!
//! Scales keep activations O(1) through deep stacks: embeddings N(0, 1); projections that read
//! the (normalized) residual stream N(0, 1/fan_in); projections that write back into it
//! (`o_proj`, `down_proj`) additionally divided by sqrt(2 · num_layers), GPT-2 style, so the
//! residual stream's variance stays bounded as layers are added; `lm_head` N(0, 1/hidden) so
//! logits have unit scale; RMSNorm weights 1 + 0.1·N(0, 1) (deliberately not ones, so an engine
//! that ignores them is caught); biases 0.1·N(0, 1).

use half::{bf16, f16};

use crate::config::Architecture;
use crate::dtype::DType;

use super::ModelSpec;
use super::rng::{Rng, chunk_seed, name_hash};

/// Elements generated from one random stream; the unit of parallel work.
pub(crate) const CHUNK_ELEMENTS: usize = 1 << 16;

/// How a tensor's values are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Init {
    /// `std · N(0, 1)`.
    Normal { std: f64 },
    /// `1 + 0.1 · N(0, 1)`.
    NormWeight,
}

/// One tensor of the checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorSpec {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) init: Init,
}

impl TensorSpec {
    pub(crate) fn elements(&self) -> u64 {
        self.shape
            .iter()
            .fold(1u64, |n, &d| n.saturating_mul(d as u64))
    }
}

/// Every tensor, in the order HuggingFace's state dict lists them: embeddings, layers in order,
/// final norm, `lm_head` unless tied.
pub(crate) fn tensor_list(spec: &ModelSpec) -> Vec<TensorSpec> {
    let h = spec.hidden_size;
    let hd = spec.head_dim();
    let q = spec.num_heads * hd;
    let kv = spec.num_kv_heads * hd;
    let i = spec.intermediate_size;
    let v = spec.vocab_size;
    let reads = |fan_in: usize| Init::Normal {
        std: 1.0 / (fan_in.max(1) as f64).sqrt(),
    };
    let writes = |fan_in: usize| Init::Normal {
        std: 1.0 / ((fan_in.max(1) * 2 * spec.num_layers.max(1)) as f64).sqrt(),
    };
    let bias = Init::Normal { std: 0.1 };
    let t = |name: String, shape: Vec<usize>, init: Init| TensorSpec { name, shape, init };

    let mut list = vec![t(
        "model.embed_tokens.weight".into(),
        vec![v, h],
        Init::Normal { std: 1.0 },
    )];
    for layer in 0..spec.num_layers {
        let p = format!("model.layers.{layer}");
        list.push(t(
            format!("{p}.input_layernorm.weight"),
            vec![h],
            Init::NormWeight,
        ));
        list.push(t(
            format!("{p}.self_attn.q_proj.weight"),
            vec![q, h],
            reads(h),
        ));
        if spec.architecture == Architecture::Qwen2 {
            list.push(t(format!("{p}.self_attn.q_proj.bias"), vec![q], bias));
        }
        list.push(t(
            format!("{p}.self_attn.k_proj.weight"),
            vec![kv, h],
            reads(h),
        ));
        if spec.architecture == Architecture::Qwen2 {
            list.push(t(format!("{p}.self_attn.k_proj.bias"), vec![kv], bias));
        }
        list.push(t(
            format!("{p}.self_attn.v_proj.weight"),
            vec![kv, h],
            reads(h),
        ));
        if spec.architecture == Architecture::Qwen2 {
            list.push(t(format!("{p}.self_attn.v_proj.bias"), vec![kv], bias));
        }
        list.push(t(
            format!("{p}.self_attn.o_proj.weight"),
            vec![h, q],
            writes(q),
        ));
        list.push(t(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            Init::NormWeight,
        ));
        list.push(t(format!("{p}.mlp.gate_proj.weight"), vec![i, h], reads(h)));
        list.push(t(format!("{p}.mlp.up_proj.weight"), vec![i, h], reads(h)));
        list.push(t(
            format!("{p}.mlp.down_proj.weight"),
            vec![h, i],
            writes(i),
        ));
    }
    list.push(t("model.norm.weight".into(), vec![h], Init::NormWeight));
    if !spec.tie_word_embeddings {
        list.push(t("lm_head.weight".into(), vec![v, h], reads(h)));
    }
    list
}

/// The stored bytes (little-endian `dtype`) of chunk `chunk` of `tensor`: elements
/// `chunk · CHUNK_ELEMENTS ..` up to the chunk size or the tensor's end.
pub(crate) fn chunk_bytes(seed: u64, dtype: DType, tensor: &TensorSpec, chunk: u64) -> Vec<u8> {
    let start = chunk.saturating_mul(CHUNK_ELEMENTS as u64);
    let len = tensor
        .elements()
        .saturating_sub(start)
        .min(CHUNK_ELEMENTS as u64) as usize;
    let mut rng = Rng::new(chunk_seed(seed, name_hash(&tensor.name), chunk));
    let mut out = Vec::with_capacity(len * dtype.size());
    for _ in 0..len {
        let x = match tensor.init {
            Init::Normal { std } => std * rng.normal(),
            Init::NormWeight => 1.0 + 0.1 * rng.normal(),
        } as f32;
        match dtype {
            DType::F32 => out.extend_from_slice(&x.to_le_bytes()),
            DType::F16 => out.extend_from_slice(&f16::from_f32(x).to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&bf16::from_f32(x).to_le_bytes()),
        }
    }
    out
}

/// Number of chunks `tensor` is generated in.
pub(crate) fn chunk_count(tensor: &TensorSpec) -> u64 {
    tensor.elements().div_ceil(CHUNK_ELEMENTS as u64)
}
