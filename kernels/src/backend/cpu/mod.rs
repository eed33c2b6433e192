//! The CPU backend: the reference implementation of [`Backend`], multi-threaded on a rayon pool
//! and vectorised through [`linalg`].
//!
//! Weights stay in their storage dtype (f32, f16 or bf16) and are widened to `f32` inside the
//! kernels, so decode reads as few bytes as the checkpoint has. Activations are `f32`; the KV
//! store holds keys and values as f32 (the default), f16 or bf16, widened to `f32` as attention
//! reads them. Every reduction has one fixed order per output element, whatever the batch
//! holds, so a sequence's results do not depend on what it is batched with.

pub mod linalg;

use std::ops::Range;

use half::{bf16, f16};

use super::{AttentionBatch, Backend, HostMatrix, QkvLayout};
use crate::dtype::DType;
use linalg::{Slab, WeightRef};

/// Below this many multiply-adds an op runs inline: a dispatch costs more.
const PARALLEL_THRESHOLD: usize = 1 << 15;

thread_local! {
    /// Attention scratch kept per thread across calls: the scores of the heads being computed.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The CPU backend.
pub struct CpuBackend {
    workers: linalg::Workers,
    threads: usize,
    /// Weight memory, filled in upload order (see `linalg::Arena`).
    arena: linalg::Arena,
}

impl CpuBackend {
    /// A backend on `threads` worker threads (0 = one per available core).
    pub fn new(threads: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("helixflow-cpu-{i}"))
            .build()?;
        Ok(CpuBackend {
            workers: linalg::Workers::new(pool),
            threads,
            arena: linalg::Arena::new(),
        })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The worker pool (benchmarks measure memory bandwidth on it).
    pub fn pool(&self) -> &rayon::ThreadPool {
        self.workers.pool()
    }

    /// `f(row, out_row)` for every row of `out` (`width` wide), in parallel when the op is worth
    /// a dispatch (`work` multiply-adds or so).
    fn rows(
        &self,
        out: &mut [f32],
        width: usize,
        work: usize,
        f: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) {
        let rows = out.len() / width.max(1);
        if work < PARALLEL_THRESHOLD || rows <= 1 {
            out.chunks_exact_mut(width.max(1))
                .enumerate()
                .for_each(|(r, o)| f(r, o));
            return;
        }
        // Enough chunks per thread to even out unequal rows, few enough to keep claims cheap.
        let grain = rows.div_ceil(8 * self.threads).max(1);
        linalg::for_each_row_chunk(self.pool(), out, width, grain, &|first, part| {
            for (r, o) in part.chunks_exact_mut(width).enumerate() {
                f(first + r, o);
            }
        });
    }
}

/// Weight storage of a [`CpuMatrix`].
pub enum CpuWeights {
    F32(Slab<f32>),
    F16(Slab<f16>),
    BF16(Slab<bf16>),
    /// Repacked for the decode kernel (see `linalg::Packed`): every dtype where the CPU has a
    /// packed-weight kernel (AVX2, AVX-512).
    Packed(linalg::Packed),
}

/// A weight matrix `[rows, cols]` in host memory.
pub struct CpuMatrix {
    pub rows: usize,
    pub cols: usize,
    pub weights: CpuWeights,
}

impl CpuMatrix {
    /// Bytes of weight data.
    pub fn bytes(&self) -> usize {
        match &self.weights {
            CpuWeights::F32(w) => w.len() * 4,
            CpuWeights::F16(w) => w.len() * 2,
            CpuWeights::BF16(w) => w.len() * 2,
            CpuWeights::Packed(w) => w.bytes(),
        }
    }

    fn row_into(&self, row: usize, out: &mut [f32]) {
        let range = row * self.cols..(row + 1) * self.cols;
        match &self.weights {
            CpuWeights::F32(w) => out.copy_from_slice(&w[range]),
            CpuWeights::F16(w) => out
                .iter_mut()
                .zip(&w[range])
                .for_each(|(o, v)| *o = v.to_f32()),
            CpuWeights::BF16(w) => out
                .iter_mut()
                .zip(&w[range])
                .for_each(|(o, v)| *o = v.to_f32()),
            CpuWeights::Packed(w) => w.row_into(row, out),
        }
    }
}

/// One layer's K and V, each `[kv_head, slot, head_dim]` (a token slot is `block * block_size
/// + offset`): one head's keys (or values) in a block form a contiguous `[offset, head_dim]`
/// matrix, and so do those of consecutive blocks, which attention multiplies as one (a
/// sequence's blocks mostly follow each other in the store). Head-major instead of
/// `[block, kv_head, ...]`, where a head's positions came in 4 KiB runs 16 KiB apart.
pub struct CpuKvStore {
    head_dim: usize,
    kv_heads: usize,
    block_size: usize,
    /// Token slots per head (`num_blocks * block_size`).
    slots: usize,
    k: KvPages,
    v: KvPages,
}

impl CpuKvStore {
    /// Index of `slot`'s first element of KV head `head`.
    fn at(&self, slot: usize, head: usize) -> usize {
        (head * self.slots + slot) * self.head_dim
    }
}

/// Keys or values of one layer, in the store's dtype.
enum KvPages {
    F32(linalg::ZeroedPages<f32>),
    F16(linalg::ZeroedPages<f16>),
    BF16(linalg::ZeroedPages<bf16>),
}

impl KvPages {
    fn new(dtype: DType, len: usize) -> KvPages {
        match dtype {
            DType::F32 => KvPages::F32(linalg::ZeroedPages::new(len)),
            DType::F16 => KvPages::F16(linalg::ZeroedPages::new(len)),
            DType::BF16 => KvPages::BF16(linalg::ZeroedPages::new(len)),
        }
    }

    /// The elements `at..at + len`, as the attention helpers take them.
    fn rows(&self, at: usize, len: usize) -> WeightRef<'_> {
        match self {
            KvPages::F32(p) => WeightRef::F32(&p[at..at + len]),
            KvPages::F16(p) => WeightRef::F16(&p[at..at + len]),
            KvPages::BF16(p) => WeightRef::BF16(&p[at..at + len]),
        }
    }

    /// Stores `src` at `at`, each value rounded to the nearest element of the store's dtype.
    fn write(&mut self, at: usize, src: &[f32]) {
        fn round<T: linalg::Element>(dst: &mut [T], src: &[f32]) {
            dst.iter_mut()
                .zip(src)
                .for_each(|(d, &s)| *d = T::from_f32(s));
        }
        let end = at + src.len();
        match self {
            KvPages::F32(p) => p[at..end].copy_from_slice(src),
            KvPages::F16(p) => round(&mut p[at..end], src),
            KvPages::BF16(p) => round(&mut p[at..end], src),
        }
    }

    fn copy_within(&mut self, from: Range<usize>, to: usize) {
        match self {
            KvPages::F32(p) => p.copy_within(from, to),
            KvPages::F16(p) => p.copy_within(from, to),
            KvPages::BF16(p) => p.copy_within(from, to),
        }
    }
}

fn resize(buf: &mut Vec<f32>, len: usize) {
    // Every op overwrites all of `out`, so stale values never leak through.
    buf.resize(len, 0.0);
}

impl Backend for CpuBackend {
    type Matrix = CpuMatrix;
    type Buffer = Vec<f32>;
    type KvStore = CpuKvStore;

    fn describe(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }

    fn matrix(&self, host: HostMatrix<'_>) -> CpuMatrix {
        let (n, k) = (host.rows, host.cols);
        let arena = &self.arena;
        let (dtype, parts) = (host.dtype, host.parts);
        // Packed straight from the file's bytes where the kernels read packed weights;
        // otherwise copied as they are (widened from little-endian) for the portable code.
        // `from_le_in` checks that the parts hold whole rows of [n, k] either way.
        let weights = match linalg::Packed::from_le_in(arena, dtype, parts, n, k) {
            Some(p) => CpuWeights::Packed(p),
            None => match dtype {
                DType::F32 => CpuWeights::F32(arena.from_le(parts)),
                DType::F16 => CpuWeights::F16(arena.from_le(parts)),
                DType::BF16 => CpuWeights::BF16(arena.from_le(parts)),
            },
        };
        CpuMatrix {
            rows: n,
            cols: k,
            weights,
        }
    }

    fn vector(&self, data: &[f32]) -> Vec<f32> {
        data.to_vec()
    }

    fn read(&self, src: &Vec<f32>, dst: &mut Vec<f32>) {
        dst.clear();
        dst.extend_from_slice(src);
    }

    fn kv_store(
        &self,
        num_blocks: usize,
        block_size: usize,
        layout: QkvLayout,
        dtype: DType,
    ) -> CpuKvStore {
        let slots = num_blocks * block_size;
        let len = slots * layout.kv_width();
        CpuKvStore {
            head_dim: layout.head_dim,
            kv_heads: layout.num_kv_heads,
            block_size,
            slots,
            k: KvPages::new(dtype, len),
            v: KvPages::new(dtype, len),
        }
    }

    fn embed(&self, table: &CpuMatrix, tokens: &[u32], out: &mut Vec<f32>) {
        let width = table.cols;
        resize(out, tokens.len() * width);
        for (row, &token) in out.chunks_exact_mut(width).zip(tokens) {
            // Token ids are checked against the vocabulary when a sequence is added.
            table.row_into(token as usize, row);
        }
    }

    fn rms_norm(&self, x: &Vec<f32>, weight: &Vec<f32>, eps: f32, out: &mut Vec<f32>) {
        let width = weight.len();
        resize(out, x.len());
        self.rows(out, width, x.len(), &|r, o| {
            let x = &x[r * width..(r + 1) * width];
            let mean_square = linalg::dot(x, x) / width as f32;
            let inv = 1.0 / (mean_square + eps).sqrt();
            for ((o, x), w) in o.iter_mut().zip(x).zip(weight) {
                *o = w * (x * inv);
            }
        });
    }

    fn matmul(
        &self,
        x: &Vec<f32>,
        rows: usize,
        w: &CpuMatrix,
        bias: Option<&Vec<f32>>,
        out: &mut Vec<f32>,
    ) {
        assert_eq!(x.len(), rows * w.cols, "matmul: input is not [rows, cols]");
        resize(out, rows * w.rows);
        let bias = bias.map(Vec::as_slice);
        let (pool, k, n) = (self.pool(), w.cols, w.rows);
        match &w.weights {
            CpuWeights::F32(v) => {
                linalg::matmul_t(pool, x, rows, k, WeightRef::F32(v), n, bias, out)
            }
            CpuWeights::F16(v) => {
                linalg::matmul_t(pool, x, rows, k, WeightRef::F16(v), n, bias, out)
            }
            CpuWeights::BF16(v) => {
                linalg::matmul_t(pool, x, rows, k, WeightRef::BF16(v), n, bias, out)
            }
            CpuWeights::Packed(v) => linalg::matmul_t_packed(pool, x, rows, v, bias, out),
        }
    }

    fn rope(&self, qkv: &mut Vec<f32>, layout: QkvLayout, cos: &Vec<f32>, sin: &Vec<f32>) {
        let half = layout.head_dim / 2;
        let rotated_heads = layout.num_heads + layout.num_kv_heads;
        let rotate_row = |(row, (cos, sin)): (&mut [f32], (&[f32], &[f32]))| {
            for head in row[..rotated_heads * layout.head_dim].chunks_exact_mut(layout.head_dim) {
                let (a, b) = head.split_at_mut(half);
                for i in 0..half {
                    let (x1, x2) = (a[i], b[i]);
                    a[i] = x1 * cos[i] - x2 * sin[i];
                    b[i] = x2 * cos[i] + x1 * sin[i];
                }
            }
        };
        qkv.chunks_exact_mut(layout.width())
            .zip(cos.chunks_exact(half).zip(sin.chunks_exact(half)))
            .for_each(rotate_row);
    }

    fn write_kv(&self, store: &mut CpuKvStore, qkv: &Vec<f32>, layout: QkvLayout, slots: &[u32]) {
        let hd = layout.head_dim;
        let k_start = layout.q_width();
        let v_start = k_start + layout.kv_width();
        for (row, &slot) in qkv.chunks_exact(layout.width()).zip(slots) {
            for h in 0..layout.num_kv_heads {
                let at = store.at(slot as usize, h);
                store.k.write(at, &row[k_start + h * hd..][..hd]);
                store.v.write(at, &row[v_start + h * hd..][..hd]);
            }
        }
    }

    fn attention(
        &self,
        qkv: &Vec<f32>,
        store: &CpuKvStore,
        batch: &AttentionBatch<'_>,
        out: &mut Vec<f32>,
    ) {
        let layout = batch.layout;
        let (hd, bs) = (layout.head_dim, batch.block_size);
        let kv_heads = layout.num_kv_heads;
        let group = layout.num_heads / kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let total_rows: usize = batch.seqs.iter().map(|s| s.rows.len()).sum();
        resize(out, total_rows * layout.q_width());

        // (sequence, position) of every row.
        let mut row_info = vec![(0usize, 0usize); total_rows];
        for (s, seq) in batch.seqs.iter().enumerate() {
            for (i, r) in seq.rows.clone().enumerate() {
                row_info[r] = (s, seq.first_position + i);
            }
        }

        // One unit of work: a row's `group` query heads that share KV head `g`. Their queries
        // and outputs are contiguous `[group, hd]` slices, and the keys they read, a block at a
        // time, contiguous `[offset, hd]` matrices.
        let work: usize = row_info.iter().map(|&(_, p)| p + 1).sum::<usize>() * layout.q_width();
        self.rows(out, group * hd, work, &|unit, out| {
            let (row, g) = (unit / kv_heads, unit % kv_heads);
            let (s, pos) = row_info[row];
            let table = batch.seqs[s].block_table;
            let first = batch
                .sliding_window
                .map_or(0, |w| (pos + 1).saturating_sub(w));
            let span = pos + 1 - first;
            let q = &qkv[row * layout.width() + g * group * hd..][..group * hd];
            // Positions first..=pos, a run of blocks that follow each other in the store (or
            // the part of one inside the range) at a time: (index of the first position in the
            // span, positions, index of the first K/V element). Each score and each output
            // element gets the same operations in the same order however the run is cut.
            let pieces = || {
                let mut p = first;
                std::iter::from_fn(move || {
                    (p <= pos).then(|| {
                        let first_block = table[p / bs];
                        let (mut block, mut end) = (first_block, ((p / bs + 1) * bs).min(pos + 1));
                        while end <= pos && table[end / bs] == block + 1 {
                            block += 1;
                            end = (end + bs).min(pos + 1);
                        }
                        let slot = first_block as usize * bs + p % bs;
                        let piece = (p - first, end - p, store.at(slot, g));
                        p = end;
                        piece
                    })
                })
            };
            SCORES.with_borrow_mut(|scores| {
                // scores[i * span + t]: query head i against position first + t.
                resize(scores, group * span);
                for (t, n, at) in pieces() {
                    let keys = store.k.rows(at, n * hd);
                    linalg::scaled_dots(q, group, hd, keys, n, scale, &mut scores[t..], span);
                }
                for head in scores.chunks_exact_mut(span) {
                    linalg::softmax(head);
                }
                out.fill(0.0);
                for (t, n, at) in pieces() {
                    let values = store.v.rows(at, n * hd);
                    linalg::weighted_rows(&scores[t..], span, group, values, n, out);
                }
            });
        });
    }

    fn silu_mul(&self, gate_up: &Vec<f32>, width: usize, out: &mut Vec<f32>) {
        let rows = gate_up.len() / (2 * width);
        resize(out, rows * width);
        self.rows(out, width, gate_up.len(), &|r, o| {
            let (gate, up) = gate_up[2 * r * width..2 * (r + 1) * width].split_at(width);
            linalg::silu_mul(gate, up, o);
        });
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>) {
        x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
    }

    fn gather_rows(&self, x: &Vec<f32>, width: usize, rows: &[usize], out: &mut Vec<f32>) {
        out.clear();
        for &r in rows {
            out.extend_from_slice(&x[r * width..(r + 1) * width]);
        }
    }

    fn run<R: Send>(&self, pass: impl FnOnce() -> R + Send) -> R {
        self.workers.run_pass(pass)
    }

    fn copy_block(&self, store: &mut CpuKvStore, src: u32, dst: u32) {
        let (bs, len) = (store.block_size, store.block_size * store.head_dim);
        for h in 0..store.kv_heads {
            let (from, to) = (
                store.at(src as usize * bs, h),
                store.at(dst as usize * bs, h),
            );
            store.k.copy_within(from..from + len, to);
            store.v.copy_within(from..from + len, to);
        }
    }
}
