//! The compute backend trait: exactly the operations a Llama-family forward pass needs.
//!
//! A backend owns device memory (weights, activations, the paged KV store) and runs the kernels;
//! it does not decide anything (batch composition, block allocation and sampling live in
//! [`crate::engine`], [`crate::kv_cache`] and [`crate::sampler`]). The CPU backend is always
//! compiled and is the reference every other backend is tested against.

pub mod cpu;

use std::ops::Range;

use crate::dtype::DType;

/// A weight matrix `[rows, cols]` in host memory, in its storage dtype, possibly the row-wise
/// concatenation of several checkpoint tensors (q/k/v and gate/up are fused at load time).
#[derive(Clone, Copy, Debug)]
pub struct HostMatrix<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    /// Little-endian element bytes of each part, concatenated along rows in order.
    pub parts: &'a [&'a [u8]],
}

/// Where q, k and v sit inside one fused projection row: `[q heads | k heads | v heads]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QkvLayout {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl QkvLayout {
    /// Width of a fused row.
    pub const fn width(&self) -> usize {
        (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
    }
    /// Width of the attention output (all query heads).
    pub const fn q_width(&self) -> usize {
        self.num_heads * self.head_dim
    }
    /// Width of one token's keys (or values).
    pub const fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

/// One sequence's part of an attention batch.
#[derive(Clone, Debug)]
pub struct AttentionSeq<'a> {
    /// Rows of the batch that hold this sequence's new tokens.
    pub rows: Range<usize>,
    /// Position of the first of those tokens; earlier positions are already in the KV store.
    pub first_position: usize,
    /// Block ids holding positions `0..first_position + rows.len()`.
    pub block_table: &'a [u32],
}

/// Everything attention needs besides the tensors.
#[derive(Clone, Debug)]
pub struct AttentionBatch<'a> {
    pub seqs: &'a [AttentionSeq<'a>],
    pub block_size: usize,
    /// Keys older than this many positions are masked (Mistral); `None` = full causal attention.
    pub sliding_window: Option<usize>,
    pub layout: QkvLayout,
}

/// The operations of a forward pass. Buffers hold `f32`; matrices keep their storage dtype.
///
/// Buffers are resized by the ops that write them, so callers keep one workspace and reuse it.
pub trait Backend: Send + Sync + 'static {
    /// A weight matrix `[rows, cols]` on the device.
    type Matrix: Send + Sync;
    /// An `f32` buffer on the device (activations, norm weights, biases).
    type Buffer: Send + Sync + Default;
    /// One layer's paged K and V storage.
    type KvStore: Send + Sync;

    /// Human-readable description (device, threads, ISA).
    fn describe(&self) -> String;

    /// Uploads a weight matrix.
    fn matrix(&self, host: HostMatrix<'_>) -> Self::Matrix;
    /// Uploads an `f32` vector.
    fn vector(&self, data: &[f32]) -> Self::Buffer;
    /// Copies a buffer back to the host.
    fn read(&self, src: &Self::Buffer, dst: &mut Vec<f32>);
    /// Allocates one layer's KV store with `num_blocks * block_size` token slots, holding keys
    /// and values as `dtype` (written rounded to nearest from the f32 projections, read
    /// widened back to f32).
    fn kv_store(
        &self,
        num_blocks: usize,
        block_size: usize,
        layout: QkvLayout,
        dtype: DType,
    ) -> Self::KvStore;

    /// `out[r] = table[tokens[r]]` (rows of width `table.cols`).
    fn embed(&self, table: &Self::Matrix, tokens: &[u32], out: &mut Self::Buffer);
    /// Row-wise RMSNorm: `out = weight * x / sqrt(mean(x²) + eps)`.
    fn rms_norm(&self, x: &Self::Buffer, weight: &Self::Buffer, eps: f32, out: &mut Self::Buffer);
    /// `out[rows, w.rows] = x[rows, w.cols] · wᵀ (+ bias)`.
    fn matmul(
        &self,
        x: &Self::Buffer,
        rows: usize,
        w: &Self::Matrix,
        bias: Option<&Self::Buffer>,
        out: &mut Self::Buffer,
    );
    /// Rotates q and k of every row in place ("rotate_half" layout); `cos`/`sin` are
    /// `[rows, head_dim / 2]`.
    fn rope(
        &self,
        qkv: &mut Self::Buffer,
        layout: QkvLayout,
        cos: &Self::Buffer,
        sin: &Self::Buffer,
    );
    /// Writes every row's k and v into the store at `slots[r]` (`block * block_size + offset`).
    fn write_kv(
        &self,
        store: &mut Self::KvStore,
        qkv: &Self::Buffer,
        layout: QkvLayout,
        slots: &[u32],
    );
    /// Causal (optionally sliding-window) attention with GQA over the paged store.
    fn attention(
        &self,
        qkv: &Self::Buffer,
        store: &Self::KvStore,
        batch: &AttentionBatch<'_>,
        out: &mut Self::Buffer,
    );
    /// `out[r] = silu(gate_up[r][..w]) * gate_up[r][w..]` where `w = width`.
    fn silu_mul(&self, gate_up: &Self::Buffer, width: usize, out: &mut Self::Buffer);
    /// `x += y`.
    fn add(&self, x: &mut Self::Buffer, y: &Self::Buffer);
    /// `out` = the listed rows of `x` (row width `width`).
    fn gather_rows(&self, x: &Self::Buffer, width: usize, rows: &[usize], out: &mut Self::Buffer);
    /// Copies one KV block (copy-on-write after a fork).
    fn copy_block(&self, store: &mut Self::KvStore, src: u32, dst: u32);

    /// Runs a whole forward pass. The CPU backend runs it as one team pass: its other worker
    /// threads spin for the length of the pass, so the ~50 parallel ops of a step reach threads
    /// that are awake instead of waking them one op at a time.
    fn run<R: Send>(&self, pass: impl FnOnce() -> R + Send) -> R {
        pass()
    }
}
