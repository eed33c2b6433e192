//! Llama-family decoder models (Llama, Mistral, Qwen2) on any [`Backend`].
//!
//! [`Model::load`] reads a HuggingFace directory (config + safetensors), checks every tensor's
//! shape against the config, fuses q/k/v and gate/up into single matrices and uploads them.
//! [`Model::forward`] runs one batch of token rows from any number of sequences through the
//! decoder, reading and writing the paged KV store; which rows a sequence contributes and where
//! its KV lives is decided by the engine.

pub mod rope;

use std::path::{Path, PathBuf};

use crate::backend::{AttentionBatch, AttentionSeq, Backend, HostMatrix, QkvLayout};
use crate::config::{ConfigError, ModelConfig};
use crate::dtype::DType;
use crate::weights::{HostTensor, WeightError, WeightFiles};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(
        "{path}: tensors `{first}` ({first_dtype}) and `{second}` ({second_dtype}) must share a dtype to be fused"
    )]
    MixedDtypes {
        path: PathBuf,
        first: String,
        first_dtype: DType,
        second: String,
        second_dtype: DType,
    },
}

struct Layer<B: Backend> {
    input_norm: B::Buffer,
    qkv: B::Matrix,
    qkv_bias: Option<B::Buffer>,
    o: B::Matrix,
    o_bias: Option<B::Buffer>,
    post_norm: B::Buffer,
    gate_up: B::Matrix,
    gate_up_bias: Option<B::Buffer>,
    down: B::Matrix,
    down_bias: Option<B::Buffer>,
}

/// A loaded model.
pub struct Model<B: Backend> {
    config: ModelConfig,
    backend: B,
    layout: QkvLayout,
    embed: B::Matrix,
    layers: Vec<Layer<B>>,
    norm: B::Buffer,
    /// `None` when the output projection is tied to `embed`.
    lm_head: Option<B::Matrix>,
    inv_freq: Vec<f32>,
    weight_dtype: DType,
    weight_bytes: usize,
}

/// What a sequence wants back from a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Nothing (a prefill chunk that does not reach the end of the prompt).
    None,
    /// Logits of the last row.
    LastLogits,
    /// Logits of every row.
    AllLogits,
    /// Final-norm hidden states of every row (embeddings).
    AllHidden,
}

/// One sequence's rows in a forward batch.
#[derive(Clone, Debug)]
pub struct ForwardSeq<'a> {
    /// The new tokens.
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`; K/V of positions before it are already in the store.
    pub first_position: usize,
    /// Blocks covering positions `0..first_position + tokens.len()`.
    pub block_table: &'a [u32],
    pub output: Output,
}

/// The KV store of every layer, in blocks of `block_size` token slots.
pub struct KvStorage<B: Backend> {
    layers: Vec<B::KvStore>,
    block_size: usize,
    num_blocks: usize,
}

impl<B: Backend> KvStorage<B> {
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }
}

/// Reusable activation buffers, so steady-state decode allocates nothing.
pub struct Workspace<B: Backend> {
    hidden: B::Buffer,
    normed: B::Buffer,
    qkv: B::Buffer,
    attn: B::Buffer,
    proj: B::Buffer,
    gate_up: B::Buffer,
    act: B::Buffer,
    cos: B::Buffer,
    sin: B::Buffer,
    selected: B::Buffer,
    logits: B::Buffer,
    host: Vec<f32>,
}

impl<B: Backend> Default for Workspace<B> {
    fn default() -> Self {
        Workspace {
            hidden: B::Buffer::default(),
            normed: B::Buffer::default(),
            qkv: B::Buffer::default(),
            attn: B::Buffer::default(),
            proj: B::Buffer::default(),
            gate_up: B::Buffer::default(),
            act: B::Buffer::default(),
            cos: B::Buffer::default(),
            sin: B::Buffer::default(),
            selected: B::Buffer::default(),
            logits: B::Buffer::default(),
            host: Vec::new(),
        }
    }
}

/// A sequence's output of one forward pass: `rows × width` values, row-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeqOutput {
    pub rows: usize,
    pub values: Vec<f32>,
}

impl SeqOutput {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        let width = self.values.len() / self.rows.max(1);
        &self.values[i * width..(i + 1) * width]
    }
    /// The last row.
    pub fn last(&self) -> &[f32] {
        self.row(self.rows.saturating_sub(1))
    }
}

impl<B: Backend> Model<B> {
    /// Loads `dir` (config.json + safetensors) onto `backend`.
    pub fn load(dir: &Path, backend: B) -> Result<Self, ModelError> {
        let config = ModelConfig::from_dir(dir)?;
        let files = WeightFiles::open(dir)?;
        Self::from_weights(config, &files, backend)
    }

    /// Builds the model from an already-parsed config and mapped weights.
    pub fn from_weights(
        config: ModelConfig,
        files: &WeightFiles,
        backend: B,
    ) -> Result<Self, ModelError> {
        let c = &config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let q_rows = c.num_heads * hd;
        let kv_rows = c.num_kv_heads * hd;
        let layout = QkvLayout {
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: hd,
        };
        let vector = |name: &str, len: usize| -> Result<B::Buffer, ModelError> {
            Ok(backend.vector(&files.tensor(name, &[len])?.to_f32()))
        };
        let fused = |names: &[(String, usize)], cols: usize| -> Result<B::Matrix, ModelError> {
            let tensors: Vec<HostTensor<'_>> = names
                .iter()
                .map(|(n, rows)| files.tensor(n, &[*rows, cols]))
                .collect::<Result<_, _>>()?;
            let first = tensors[0];
            if let Some(other) = tensors.iter().find(|t| t.dtype != first.dtype) {
                return Err(ModelError::MixedDtypes {
                    path: other.path.to_path_buf(),
                    first: first.name.to_string(),
                    first_dtype: first.dtype,
                    second: other.name.to_string(),
                    second_dtype: other.dtype,
                });
            }
            let parts: Vec<&[u8]> = tensors.iter().map(|t| t.bytes).collect();
            Ok(backend.matrix(HostMatrix {
                dtype: first.dtype,
                rows: names.iter().map(|(_, r)| r).sum(),
                cols,
                parts: &parts,
            }))
        };
        let fused_bias =
            |names: &[(String, usize)], present: bool| -> Result<Option<B::Buffer>, ModelError> {
                if !present {
                    return Ok(None);
                }
                let mut all = Vec::new();
                for (n, len) in names {
                    all.extend(files.tensor(n, &[*len])?.to_f32());
                }
                Ok(Some(backend.vector(&all)))
            };

        let embed_name = "model.embed_tokens.weight".to_string();
        let embed = fused(&[(embed_name.clone(), c.vocab_size)], h)?;
        let weight_dtype = files.tensor(&embed_name, &[c.vocab_size, h])?.dtype;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let qkv_names = [
                (format!("{p}.self_attn.q_proj.weight"), q_rows),
                (format!("{p}.self_attn.k_proj.weight"), kv_rows),
                (format!("{p}.self_attn.v_proj.weight"), kv_rows),
            ];
            let qkv_bias_names = [
                (format!("{p}.self_attn.q_proj.bias"), q_rows),
                (format!("{p}.self_attn.k_proj.bias"), kv_rows),
                (format!("{p}.self_attn.v_proj.bias"), kv_rows),
            ];
            let gate_up_names = [
                (format!("{p}.mlp.gate_proj.weight"), c.intermediate_size),
                (format!("{p}.mlp.up_proj.weight"), c.intermediate_size),
            ];
            let gate_up_bias_names = [
                (format!("{p}.mlp.gate_proj.bias"), c.intermediate_size),
                (format!("{p}.mlp.up_proj.bias"), c.intermediate_size),
            ];
            layers.push(Layer {
                input_norm: vector(&format!("{p}.input_layernorm.weight"), h)?,
                qkv: fused(&qkv_names, h)?,
                qkv_bias: fused_bias(&qkv_bias_names, c.qkv_bias)?,
                o: fused(&[(format!("{p}.self_attn.o_proj.weight"), h)], q_rows)?,
                o_bias: fused_bias(&[(format!("{p}.self_attn.o_proj.bias"), h)], c.o_bias)?,
                post_norm: vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
                gate_up: fused(&gate_up_names, h)?,
                gate_up_bias: fused_bias(&gate_up_bias_names, c.mlp_bias)?,
                down: fused(
                    &[(format!("{p}.mlp.down_proj.weight"), h)],
                    c.intermediate_size,
                )?,
                down_bias: fused_bias(&[(format!("{p}.mlp.down_proj.bias"), h)], c.mlp_bias)?,
            });
        }
        let norm = vector("model.norm.weight", h)?;
        // Some tied checkpoints still ship `lm_head.weight` (a copy): use it when present.
        let lm_head = if files.contains("lm_head.weight") || !c.tie_word_embeddings {
            Some(fused(&[("lm_head.weight".to_string(), c.vocab_size)], h)?)
        } else {
            None
        };
        let inv_freq = rope::inverse_frequencies(hd, c.rope_theta, c.rope_scaling);
        Ok(Model {
            weight_bytes: files.total_bytes(),
            config,
            backend,
            layout,
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            weight_dtype,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Storage dtype of the weights.
    pub fn weight_dtype(&self) -> DType {
        self.weight_dtype
    }

    /// Bytes of weights in the checkpoint.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// Bytes of weights one decode step reads: every matrix once, plus one embedding row.
    pub fn decode_bytes_per_step(&self) -> usize {
        let c = &self.config;
        let elements = c.num_layers
            * (self.layout.width() * c.hidden_size
                + c.hidden_size * self.layout.q_width()
                + 3 * c.hidden_size * c.intermediate_size)
            + c.vocab_size * c.hidden_size
            + c.hidden_size;
        elements * self.weight_dtype.size()
    }

    /// KV-store bytes per token slot (all layers, K and V) with keys and values held as `dtype`.
    pub fn kv_bytes_per_token(&self, dtype: DType) -> usize {
        2 * self.config.num_layers * self.layout.kv_width() * dtype.size()
    }

    /// Allocates the KV store of every layer, keys and values held as `dtype`.
    pub fn kv_storage(&self, num_blocks: usize, block_size: usize, dtype: DType) -> KvStorage<B> {
        KvStorage {
            layers: (0..self.config.num_layers)
                .map(|_| {
                    self.backend
                        .kv_store(num_blocks, block_size, self.layout, dtype)
                })
                .collect(),
            block_size,
            num_blocks,
        }
    }

    /// Copies one block in every layer (copy-on-write after a fork).
    pub fn copy_block(&self, kv: &mut KvStorage<B>, src: u32, dst: u32) {
        for layer in &mut kv.layers {
            self.backend.copy_block(layer, src, dst);
        }
    }

    /// Runs one batch. Returns, per sequence, what its [`Output`] asked for.
    ///
    /// The caller guarantees that every token id is below `vocab_size` and that block tables
    /// cover the positions written (the engine checks both when sequences are added).
    pub fn forward(
        &self,
        kv: &mut KvStorage<B>,
        seqs: &[ForwardSeq<'_>],
        ws: &mut Workspace<B>,
    ) -> Vec<SeqOutput> {
        self.backend.run(|| self.forward_here(kv, seqs, ws))
    }

    fn forward_here(
        &self,
        kv: &mut KvStorage<B>,
        seqs: &[ForwardSeq<'_>],
        ws: &mut Workspace<B>,
    ) -> Vec<SeqOutput> {
        let b = &self.backend;
        let c = &self.config;
        let bs = kv.block_size;

        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut slots = Vec::new();
        let mut attn_seqs = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let start = tokens.len();
            tokens.extend_from_slice(seq.tokens);
            for p in seq.first_position..seq.first_position + seq.tokens.len() {
                positions.push(p);
                slots.push(seq.block_table[p / bs] * bs as u32 + (p % bs) as u32);
            }
            attn_seqs.push(AttentionSeq {
                rows: start..tokens.len(),
                first_position: seq.first_position,
                block_table: seq.block_table,
            });
        }
        let rows = tokens.len();
        let attention = AttentionBatch {
            seqs: &attn_seqs,
            block_size: bs,
            sliding_window: c.sliding_window,
            layout: self.layout,
        };

        let mut cos = Vec::new();
        let mut sin = Vec::new();
        rope::cos_sin(&positions, &self.inv_freq, &mut cos, &mut sin);
        ws.cos = b.vector(&cos);
        ws.sin = b.vector(&sin);

        b.embed(&self.embed, &tokens, &mut ws.hidden);
        for (layer, store) in self.layers.iter().zip(&mut kv.layers) {
            b.rms_norm(
                &ws.hidden,
                &layer.input_norm,
                c.rms_norm_eps,
                &mut ws.normed,
            );
            b.matmul(
                &ws.normed,
                rows,
                &layer.qkv,
                layer.qkv_bias.as_ref(),
                &mut ws.qkv,
            );
            b.rope(&mut ws.qkv, self.layout, &ws.cos, &ws.sin);
            b.write_kv(store, &ws.qkv, self.layout, &slots);
            b.attention(&ws.qkv, store, &attention, &mut ws.attn);
            b.matmul(
                &ws.attn,
                rows,
                &layer.o,
                layer.o_bias.as_ref(),
                &mut ws.proj,
            );
            b.add(&mut ws.hidden, &ws.proj);

            b.rms_norm(&ws.hidden, &layer.post_norm, c.rms_norm_eps, &mut ws.normed);
            b.matmul(
                &ws.normed,
                rows,
                &layer.gate_up,
                layer.gate_up_bias.as_ref(),
                &mut ws.gate_up,
            );
            b.silu_mul(&ws.gate_up, c.intermediate_size, &mut ws.act);
            b.matmul(
                &ws.act,
                rows,
                &layer.down,
                layer.down_bias.as_ref(),
                &mut ws.proj,
            );
            b.add(&mut ws.hidden, &ws.proj);
        }

        // Only the rows someone asked for go through the final norm and the output projection.
        let mut wanted = Vec::new();
        let mut hidden_rows = Vec::new();
        for (seq, a) in seqs.iter().zip(&attn_seqs) {
            match seq.output {
                Output::None => {}
                Output::LastLogits => wanted.push(a.rows.end - 1),
                Output::AllLogits => wanted.extend(a.rows.clone()),
                Output::AllHidden => hidden_rows.extend(a.rows.clone()),
            }
        }
        let mut results: Vec<SeqOutput> = vec![SeqOutput::default(); seqs.len()];
        if !wanted.is_empty() {
            b.gather_rows(&ws.hidden, c.hidden_size, &wanted, &mut ws.selected);
            b.rms_norm(&ws.selected, &self.norm, c.rms_norm_eps, &mut ws.normed);
            let head = self.lm_head.as_ref().unwrap_or(&self.embed);
            b.matmul(&ws.normed, wanted.len(), head, None, &mut ws.logits);
            b.read(&ws.logits, &mut ws.host);
            self.split_rows(seqs, &attn_seqs, &ws.host, c.vocab_size, true, &mut results);
        }
        if !hidden_rows.is_empty() {
            b.gather_rows(&ws.hidden, c.hidden_size, &hidden_rows, &mut ws.selected);
            b.rms_norm(&ws.selected, &self.norm, c.rms_norm_eps, &mut ws.normed);
            b.read(&ws.normed, &mut ws.host);
            self.split_rows(
                seqs,
                &attn_seqs,
                &ws.host,
                c.hidden_size,
                false,
                &mut results,
            );
        }
        results
    }

    fn split_rows(
        &self,
        seqs: &[ForwardSeq<'_>],
        attn: &[AttentionSeq<'_>],
        values: &[f32],
        width: usize,
        logits: bool,
        results: &mut [SeqOutput],
    ) {
        let mut offset = 0;
        for ((seq, a), out) in seqs.iter().zip(attn).zip(results.iter_mut()) {
            let rows = match (seq.output, logits) {
                (Output::LastLogits, true) => 1,
                (Output::AllLogits, true) | (Output::AllHidden, false) => a.rows.len(),
                _ => continue,
            };
            out.rows = rows;
            out.values = values[offset * width..(offset + rows) * width].to_vec();
            offset += rows;
        }
    }
}
