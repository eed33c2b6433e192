//! CPU linear algebra for the inference engine: the `x · wᵀ` product of every linear layer
//! ([`matmul_t`]), the vector primitives attention needs ([`dot`], [`axpy`]), and a memory
//! bandwidth probe ([`measure_read_bandwidth`]) that tells how close decode runs to the machine.
//!
//! This module owns the arithmetic and its threading; it does not own weight storage, dtype
//! policy or the thread pool (callers pass theirs in).
//!
//! # Canonical reduction order (batch invariance)
//!
//! Every output element `out[i, j] = Σ_l x[i, l]·w[j, l]` is computed in one fixed order that
//! depends only on `k` and the instruction set picked at start-up, never on `m`, on the other
//! rows of `x`, or on how the work was split across threads:
//!
//! 1. one accumulator of `L` lanes (`L` = 16 with AVX-512, 8 with AVX2 and the portable scalar
//!    code) starts at `+0`; lane `t` takes `acc[t] = fma(x[l], w[l], acc[t])` for
//!    `l = c·L + t`, walking the chunks `c` in order; the last partial chunk is zero-padded (the
//!    padded lanes do `fma(0, 0, acc)`);
//! 2. the lanes are summed by the halving tree `acc[t] += acc[t + L/2]`, then `L/4`, …, `1`;
//! 3. the bias, if any, is added last: `out = sum + bias[j]`.
//!
//! The decode GEMV, the small-batch kernels and the prefill GEMM all run the same register
//! micro-kernel (`mr` rows of `x` × `nr` rows of `w`, one `L`-lane accumulator per output,
//! walking `k` in order), so the order is shared by construction. Work is split across threads
//! along `n` only; `k` is never split. f16/bf16 → f32 conversion is exact, so converting a weight
//! panel ahead of time (prefill) or in registers (decode) gives the same bits.
//!
//! # Blocking
//!
//! Each thread owns a contiguous range of weight rows. It walks that range in blocks of rows
//! sized to half its L2 (converted to an f32 panel once per block when `m` spans several
//! register tiles and the weights are f16/bf16), and applies each block to all `m` rows of `x`,
//! `mr` rows at a time, so every weight byte comes from DRAM once per call whatever `m` is.

mod arena;
mod bandwidth;
mod driver;
mod isa;
mod packed;
mod scalar;
mod team;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;
#[cfg(target_arch = "x86_64")]
mod x86_cpu;

use std::ops::Range;

use half::{bf16, f16};

pub use arena::{Arena, Element, Slab, ZeroedPages};
pub use bandwidth::{ReadProbe, measure_fma_peak, measure_read_bandwidth};
pub use isa::kernels_in_use;
use isa::{Backend, backend};
use packed::PANEL;
pub use packed::Packed;
pub use team::{Workers, for_each_chunk, for_each_row_chunk, for_each_share, for_each_thread};

/// A weight matrix, row-major `[n, k]` (the HuggingFace `Linear` layout), in its stored dtype.
#[derive(Clone, Copy, Debug)]
pub enum WeightRef<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

impl<'a> WeightRef<'a> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            WeightRef::F32(w) => w.len(),
            WeightRef::F16(w) => w.len(),
            WeightRef::BF16(w) => w.len(),
        }
    }

    /// Whether the matrix has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per element.
    pub fn element_size(&self) -> usize {
        match self {
            WeightRef::F32(_) => 4,
            WeightRef::F16(_) | WeightRef::BF16(_) => 2,
        }
    }

    /// The f32 elements; panics on another dtype (for callers that matched the dtype of a
    /// sibling already).
    fn as_f32(self) -> &'a [f32] {
        match self {
            WeightRef::F32(w) => w,
            other => panic!(
                "weights of {} bytes where f32 was expected",
                other.element_size()
            ),
        }
    }

    /// The f16 elements; panics on another dtype (see [`WeightRef::as_f32`]).
    fn as_f16(self) -> &'a [f16] {
        match self {
            WeightRef::F16(w) => w,
            _ => panic!("weights that are not f16 where f16 was expected"),
        }
    }

    /// The bf16 elements; panics on another dtype (see [`WeightRef::as_f32`]).
    fn as_bf16(self) -> &'a [bf16] {
        match self {
            WeightRef::BF16(w) => w,
            _ => panic!("weights that are not bf16 where bf16 was expected"),
        }
    }

    /// The elements in `range`, in the same dtype.
    fn slice(&self, range: Range<usize>) -> WeightRef<'a> {
        match *self {
            WeightRef::F32(w) => WeightRef::F32(&w[range]),
            WeightRef::F16(w) => WeightRef::F16(&w[range]),
            WeightRef::BF16(w) => WeightRef::BF16(&w[range]),
        }
    }
}

/// `out[i*n + j] = Σ_l x[i*k + l] · w[j*k + l] (+ bias[j])` for `i < m`, `j < n`.
///
/// `w` is row-major `[n, k]`. The value of each output element is bitwise independent of `m`, of
/// the other rows of `x` and of the pool's thread count (see the module docs). Work is split
/// across the pool's threads along `n`; tiny products run inline on the calling thread.
///
/// # Panics
/// If a slice length does not match `m`, `k` and `n`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_t(
    pool: &rayon::ThreadPool,
    x: &[f32],
    m: usize,
    k: usize,
    w: WeightRef<'_>,
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    assert_eq!(
        x.len(),
        m * k,
        "matmul_t: x has {} elements, expected m*k = {m}*{k}",
        x.len()
    );
    assert_eq!(
        w.len(),
        n * k,
        "matmul_t: w has {} elements, expected n*k = {n}*{k}",
        w.len()
    );
    assert_eq!(
        out.len(),
        m * n,
        "matmul_t: out has {} elements, expected m*n = {m}*{n}",
        out.len()
    );
    if let Some(b) = bias {
        assert_eq!(
            b.len(),
            n,
            "matmul_t: bias has {} elements, expected n = {n}",
            b.len()
        );
    }
    driver::matmul_t(
        backend(),
        pool,
        x,
        m,
        k,
        driver::Weights::Rows(w),
        n,
        bias,
        out,
    );
}

/// [`matmul_t`] with packed weights (see [`Packed`]): the same bits as `matmul_t` on the
/// row-major weights the pack was made from.
///
/// # Panics
/// If a slice length does not match `m`, `w.cols()` and `w.rows()`.
pub fn matmul_t_packed(
    pool: &rayon::ThreadPool,
    x: &[f32],
    m: usize,
    w: &Packed,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (n, k) = (w.rows(), w.cols());
    assert_eq!(
        x.len(),
        m * k,
        "matmul_t_packed: x is not [m, k] = [{m}, {k}]"
    );
    assert_eq!(
        out.len(),
        m * n,
        "matmul_t_packed: out is not [m, n] = [{m}, {n}]"
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "matmul_t_packed: bias is not [n] = [{n}]");
    }
    driver::matmul_t(
        backend(),
        pool,
        x,
        m,
        k,
        driver::Weights::Packed(w),
        n,
        bias,
        out,
    );
}

/// `Σ a[l]·b[l]` in the canonical order of the module docs, so `dot(x, w_row)` equals the
/// corresponding `matmul_t` output bit for bit.
///
/// # Panics
/// If the lengths differ.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(
        a.len(),
        b.len(),
        "dot: lengths {} and {} differ",
        a.len(),
        b.len()
    );
    backend().tile(a, a.len(), 1, WeightRef::F32(b), 1)[0][0]
}

/// `y[l] = fma(alpha, x[l], y[l])` for every `l` (fused, the same for every position).
///
/// # Panics
/// If the lengths differ.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(
        x.len(),
        y.len(),
        "axpy: lengths {} and {} differ",
        x.len(),
        y.len()
    );
    backend().axpy(alpha, x, y);
}

/// `out[i·stride + j] = dot(x_i, w_j) · scale` for the `m` rows of `x` and the `n` rows of `w`
/// (both of stride `k`), on the calling thread: the scores of attention (`m` query heads
/// against `n` keys). Each value has the bits of [`dot`] times `scale`, with `w`'s elements
/// widened to f32 where it holds f16 or bf16 (a KV cache stored at 16 bits): the same bits as
/// this call on the widened copy.
///
/// # Panics
/// If a slice is shorter than `m`, `n`, `k` and `stride` say.
#[allow(clippy::too_many_arguments)]
pub fn scaled_dots(
    x: &[f32],
    m: usize,
    k: usize,
    w: WeightRef<'_>,
    n: usize,
    scale: f32,
    out: &mut [f32],
    stride: usize,
) {
    assert!(
        x.len() >= m * k
            && w.len() >= n * k
            && stride >= n
            && (m == 0 || n == 0 || out.len() >= (m - 1) * stride + n),
        "scaled_dots: operands shorter than m = {m}, n = {n}, k = {k}, stride = {stride}"
    );
    backend().scaled_dots(x, m, k, w, n, scale, out, stride);
}

/// `out_i = fma(p[i·stride + t], v_t, out_i)` for each row `v_t` of `v` in order, for the `m`
/// rows `out_i` of `out` (each `out.len() / m` long, the stride of `v`): attention's weighted
/// sum of values for `m` query heads, with the bits of one [`axpy_rows`] per row of `out`
/// (`v`'s elements widened to f32 where it holds f16 or bf16, as in [`scaled_dots`]).
///
/// # Panics
/// If a slice is shorter than `m`, `n` and `stride` say.
pub fn weighted_rows(
    p: &[f32],
    stride: usize,
    m: usize,
    v: WeightRef<'_>,
    n: usize,
    out: &mut [f32],
) {
    let k = out.len() / m.max(1);
    assert!(
        out.len() == m * k
            && v.len() >= n * k
            && stride >= n
            && (m == 0 || n == 0 || p.len() >= (m - 1) * stride + n),
        "weighted_rows: operands shorter than m = {m}, n = {n}, stride = {stride}"
    );
    backend().weighted_rows(p, stride, m, v, n, out);
}

/// `y = fma(alphas[r], v_r, y)` for each row `v_r` of `v` (stride `y.len()`) in order: the
/// bits of one [`axpy`] per row, without a call per row.
///
/// # Panics
/// If `v` is shorter than `alphas.len()` rows.
pub fn axpy_rows(alphas: &[f32], v: &[f32], y: &mut [f32]) {
    assert!(
        v.len() >= alphas.len() * y.len(),
        "axpy_rows: {} rows of {} expected",
        alphas.len(),
        y.len()
    );
    match backend() {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512(isa) => isa.axpy_rows(alphas, v, y),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2(isa) => isa.axpy_rows(alphas, v, y),
        other => {
            let k = y.len();
            for (r, &a) in alphas.iter().enumerate() {
                other.axpy(a, &v[r * k..(r + 1) * k], y);
            }
        }
    }
}

/// `out[l] = silu(gate[l]) · up[l]` with `silu(g) = g / (1 + e^-g)`: the gated activation of
/// the MLP. `e^x` is a fixed polynomial (about one ulp; inputs below -86 clamped, which changes
/// no result of `silu`) that every instruction set evaluates with the same operations,
/// so the bits do not depend on the ISA, on the element's position or on the batch.
///
/// # Panics
/// If the lengths differ.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == out.len() && up.len() == out.len(),
        "silu_mul: lengths {}, {} and {} differ",
        gate.len(),
        up.len(),
        out.len()
    );
    match backend() {
        Backend::Scalar(isa) => isa.silu_mul(gate, up, out),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2(isa) => isa.silu_mul(gate, up, out),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512(isa) => isa.silu_mul(gate, up, out),
    }
}

/// `v[l] = exp(v[l] - max)` for every `l` (the exponential of [`silu_mul`]), returning their
/// sum in the canonical order of the module docs: the body of a softmax.
pub fn exp_sum(v: &mut [f32], max: f32) -> f32 {
    match backend() {
        Backend::Scalar(isa) => isa.exp_sum(v, max),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2(isa) => isa.exp_sum(v, max),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512(isa) => isa.exp_sum(v, max),
    }
}

/// `v[l] = exp(v[l] - max) / Σ_j exp(v[j] - max)` with `max` the largest element: a softmax
/// in place, its sum that of [`exp_sum`] (the canonical order), one division per element. The
/// bits depend on nothing but `v` on a given instruction set.
pub fn softmax(v: &mut [f32]) {
    match backend() {
        Backend::Scalar(isa) => isa.softmax(v),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2(isa) => isa.softmax(v),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512(isa) => isa.softmax(v),
    }
}

/// The largest tile the micro-kernels produce: `MAX_MR` rows of `x` × `MAX_NR` rows of `w`.
const MAX_MR: usize = 4;
const MAX_NR: usize = 8;
/// The most rows of `x` any packed-panel kernel takes at once (see [`Backend::panel_mr`]).
const MAX_PANEL_MR: usize = 3;

/// One micro-kernel result: `tile[i][j]` for the first `mr` rows and `nr` columns.
type Tile = [[f32; MAX_NR]; MAX_MR];

/// The most weight rows per [`Backend::strip`]: a multiple of [`PANEL`] (strips of packed
/// rows start on a panel) and of every AVX2 micro-kernel's `nr` (8, 5, 4, 3).
const STRIP_ROWS: usize = 120;

/// Where the weight rows of a [`Backend::strip`] lie in its slice: row `j` at
/// `(j % PANEL)·stride + (j / PANEL)·panel_stride`. Rows one after the other are
/// `panel_stride = PANEL·stride` (`stride = k`, or more where rows are padded); f32 rows packed as streams (`packed`, the `Streams` layout) lie
/// `stride = Packed::stream_stride()` apart within a panel, panels `k` apart.
#[derive(Clone, Copy, Debug)]
struct RowMap {
    count: usize,
    stride: usize,
    panel_stride: usize,
}

impl RowMap {
    /// `count` rows `stride` elements apart.
    fn rows(count: usize, stride: usize) -> RowMap {
        RowMap {
            count,
            stride,
            panel_stride: PANEL * stride,
        }
    }

    /// The offset of row `j`.
    fn at(self, j: usize) -> usize {
        (j % PANEL) * self.stride + (j / PANEL) * self.panel_stride
    }

    /// How many rows from `j` on lie `stride` apart (one micro-kernel can take them).
    fn run(self, j: usize) -> usize {
        let left = self.count - j;
        if self.panel_stride == PANEL * self.stride {
            left
        } else {
            left.min(PANEL - j % PANEL)
        }
    }

    /// The operands of a strip of `mr ≤ max_mr` rows of `x` over these rows
    /// ([`Backend::strip`]). Panics where one is too short or the strip too large.
    fn assert_operands(self, mr: usize, max_mr: usize, x: usize, k: usize, w: usize, out: usize) {
        assert!(
            (1..=max_mr).contains(&mr) && self.count <= STRIP_ROWS,
            "strip of {mr}x{}",
            self.count
        );
        assert!(
            x >= mr * k && self.stride >= k && w >= self.len(k) && out >= mr * self.count,
            "strip operands too short"
        );
    }

    /// The elements a slice must hold for rows of `k` elements.
    fn len(self, k: usize) -> usize {
        if self.count == 0 {
            0
        } else {
            self.at(self.count - 1) + k
        }
    }
}
