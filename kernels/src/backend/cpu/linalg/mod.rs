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
use std::sync::OnceLock;

use half::{bf16, f16};

pub use arena::{Arena, Element, Slab, ZeroedPages};
pub use bandwidth::{ReadProbe, measure_fma_peak, measure_read_bandwidth};
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
/// against `n` keys). Each value has the bits of [`dot`] times `scale`.
///
/// # Panics
/// If a slice is shorter than `m`, `n`, `k` and `stride` say.
#[allow(clippy::too_many_arguments)]
pub fn scaled_dots(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
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
/// sum of values for `m` query heads, with the bits of one [`axpy_rows`] per row of `out`.
///
/// # Panics
/// If a slice is shorter than `m`, `n` and `stride` say.
pub fn weighted_rows(p: &[f32], stride: usize, m: usize, v: &[f32], n: usize, out: &mut [f32]) {
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

/// The instruction set chosen for this process, carrying the proof that its features exist.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Scalar(scalar::Scalar),
    #[cfg(target_arch = "x86_64")]
    Avx2(x86_avx2::Avx2),
    #[cfg(target_arch = "x86_64")]
    Avx512(x86_avx512::Avx512),
}

/// The instruction set this process computes with and the layout it packs weights in (for
/// benchmark reports), e.g. `AVX-512, weights packed as streams`.
pub fn kernels_in_use() -> String {
    let isa = match backend() {
        Backend::Scalar(_) => "portable",
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2(_) => "AVX2",
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512(_) => "AVX-512",
    };
    let name = |layout| match layout {
        packed::Layout::Panels => "panels",
        packed::Layout::Streams => "streams",
    };
    let layouts = (backend().pack_layout(2), backend().pack_layout(4));
    match layouts {
        (Some(half), Some(full)) if half == full => {
            format!("{isa}, weights packed as {}", name(half))
        }
        (Some(half), Some(full)) => format!(
            "{isa}, 16-bit weights packed as {}, f32 ones as {}",
            name(half),
            name(full)
        ),
        _ => format!("{isa}, weights row-major"),
    }
}

/// Detects the best instruction set once per process.
fn backend() -> Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    *BACKEND.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(isa) = x86_avx512::Avx512::detect() {
                return Backend::Avx512(isa);
            }
            if let Some(isa) = x86_avx2::Avx2::detect() {
                return Backend::Avx2(isa);
            }
        }
        Backend::Scalar(scalar::Scalar)
    })
}

impl Backend {
    /// Rows of `x` per tile when more are left: the tallest micro-kernel of the instruction
    /// set (`≤ MAX_MR`).
    fn tile_mr(self) -> usize {
        match self {
            Backend::Scalar(_) => scalar::NR_FOR_MR.len(),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(_) => x86_avx2::NR_FOR_MR.len(),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(_) => x86_avx512::NR_FOR_MR.len(),
        }
    }

    /// The widest `nr` the `mr`-row micro-kernel keeps in registers (`1 ≤ mr ≤ tile_mr()`).
    fn nr_for(self, mr: usize) -> usize {
        match self {
            Backend::Scalar(_) => scalar::NR_FOR_MR[mr - 1],
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(_) => x86_avx2::NR_FOR_MR[mr - 1],
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(_) => x86_avx512::NR_FOR_MR[mr - 1],
        }
    }

    /// Dot products of `mr` rows of `x` (stride `k`) with `nr` rows of `w` (stride `k`), in the
    /// canonical order, without bias. `mr ≤ MAX_MR`, `nr ≤ MAX_NR`.
    fn tile(self, x: &[f32], k: usize, mr: usize, w: WeightRef<'_>, nr: usize) -> Tile {
        assert!(
            (1..=MAX_MR).contains(&mr) && (1..=MAX_NR).contains(&nr),
            "tile {mr}x{nr} out of range"
        );
        assert!(
            x.len() >= mr * k && w.len() >= nr * k,
            "tile operands too short"
        );
        match self {
            Backend::Scalar(isa) => isa.tile(x, k, mr, w, nr),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(isa) => isa.tile(x, k, mr, w, nr),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(isa) => isa.tile(x, k, mr, w, nr),
        }
    }

    /// [`Backend::tile`] for weights read from memory once, the next tile's rows right after
    /// these (decode on row-major weights): where the kernel prefetches, it prefetches them.
    fn tile_streamed(self, x: &[f32], k: usize, mr: usize, w: WeightRef<'_>, nr: usize) -> Tile {
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(isa) => {
                assert!(
                    (1..=MAX_MR).contains(&mr) && (1..=MAX_NR).contains(&nr),
                    "tile {mr}x{nr} out of range"
                );
                isa.tile_streamed(x, k, mr, w, nr)
            }
            _ => self.tile(x, k, mr, w, nr),
        }
    }

    /// `mr ≤ tile_mr()` rows of `x` (stride `k`) against the `map.count ≤ STRIP_ROWS` weight
    /// rows `map` places in `w`, in the canonical order, without bias: row `i` of `x` against
    /// weight row `j` lands in `out[i · map.count + j]`. AVX2 walks long rows in steps whose
    /// `x` stays in L1 across the strip's tiles (`x86_avx2::strip_kernel`), and reads rows
    /// packed as streams; the others take row-major rows, tile by tile.
    fn strip(self, x: &[f32], k: usize, mr: usize, w: WeightRef<'_>, map: RowMap, out: &mut [f32]) {
        map.assert_operands(mr, self.tile_mr(), x.len(), k, w.len(), out.len());
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(isa) => isa.strip(x, k, mr, w, map, out),
            _ => {
                // Tiles over rows k apart; one row at a time otherwise (only the portable
                // kernel meets padded rows, and it computes each product on its own anyway).
                let (count, nr_full) = (map.count, self.nr_for(mr));
                let mut j = 0;
                while j < count {
                    let nr = if map.stride == k {
                        nr_full.min(map.run(j))
                    } else {
                        1
                    };
                    let at = map.at(j);
                    let tile = self.tile(x, k, mr, w.slice(at..at + nr * k), nr);
                    for (i, tile_row) in tile.iter().enumerate().take(mr) {
                        out[i * count + j..i * count + j + nr].copy_from_slice(&tile_row[..nr]);
                    }
                    j += nr;
                }
            }
        }
    }

    /// [`scaled_dots`] on this instruction set (operands checked by the caller).
    #[allow(clippy::too_many_arguments)]
    fn scaled_dots(
        self,
        x: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        n: usize,
        scale: f32,
        out: &mut [f32],
        stride: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        match self {
            Backend::Avx2(isa) => return isa.scaled_dots(x, m, k, w, n, scale, out, stride),
            Backend::Avx512(isa) => return isa.scaled_dots(x, m, k, w, n, scale, out, stride),
            Backend::Scalar(_) => {}
        }
        let mut i = 0;
        while i < m {
            let mr = (m - i).min(self.tile_mr());
            let mut j = 0;
            while j < n {
                let nr = (n - j).min(self.nr_for(mr));
                let keys = WeightRef::F32(&w[j * k..(j + nr) * k]);
                let tile = self.tile(&x[i * k..(i + mr) * k], k, mr, keys, nr);
                for (ii, row) in tile.iter().enumerate().take(mr) {
                    for (jj, &v) in row.iter().enumerate().take(nr) {
                        out[(i + ii) * stride + j + jj] = v * scale;
                    }
                }
                j += nr;
            }
            i += mr;
        }
    }

    /// [`weighted_rows`] on this instruction set (operands checked by the caller).
    fn weighted_rows(
        self,
        p: &[f32],
        stride: usize,
        m: usize,
        v: &[f32],
        n: usize,
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        match self {
            Backend::Avx2(isa) => return isa.weighted_rows(p, stride, m, v, n, out),
            Backend::Avx512(isa) => return isa.weighted_rows(p, stride, m, v, n, out),
            Backend::Scalar(_) => {}
        }
        // One `axpy` per row of `v` and row of `out`.
        let k = out.len() / m.max(1);
        for (i, row) in out.chunks_exact_mut(k.max(1)).enumerate() {
            let alphas = &p[i * stride..i * stride + n];
            for (t, &a) in alphas.iter().enumerate() {
                self.axpy(a, &v[t * k..(t + 1) * k], row);
            }
        }
    }

    /// The layout this CPU's decode kernel reads weights of `element_bytes` (2 or 4) fastest in
    /// (see `packed`); `None` without such a kernel.
    fn pack_layout(self, element_bytes: usize) -> Option<packed::Layout> {
        match self {
            Backend::Scalar(_) => None,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(isa) => Some(isa.layout(element_bytes)),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(isa) => Some(isa.layout()),
        }
    }

    /// Every layout this instruction set's kernels read ([`Backend::pack_layout`] is the one
    /// weights of a dtype are packed in).
    fn pack_layouts(self) -> &'static [packed::Layout] {
        match self {
            Backend::Scalar(_) => &[],
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(_) => &[packed::Layout::Panels, packed::Layout::Streams],
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(_) => &[packed::Layout::Panels, packed::Layout::Streams],
        }
    }

    /// Whether this instruction set runs `m` rows of `x` on L2-sized blocks of panels of `w`
    /// (the packed-weight kernels): AVX-512 for every weight (packed panels and f32 streams
    /// where they lie, other weights interleaved into f32 panels first); AVX2 for 16-bit
    /// weights packed either way, read where they lie, up to [`x86_avx2::CACHED_PANEL_ROWS`]
    /// rows of `x`. Taller products on AVX2, and its f32 streams, run the 4×3 row tiles
    /// (16-bit blocks widened into f32 rows once; see that constant).
    fn prefill_panels(self, w: driver::Weights<'_>, m: usize) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(_) => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(_) => {
                m <= x86_avx2::CACHED_PANEL_ROWS
                    && matches!(w, driver::Weights::Packed(p) if p.element_bytes() == 2)
            }
            _ => false,
        }
    }

    /// Whether [`driver::compute_panel_blocks`] reads `w` where it lies, in its dtype, rather
    /// than interleaving each block into f32 panels: panels always ([`Backend::panels_cached`]);
    /// streams ([`Backend::streams_cached`]) where they are f32 on AVX-512 (nothing to widen)
    /// and every stream AVX2 runs there (16-bit ones, widened in registers as decode widens
    /// them).
    fn packed_in_place(self, w: &Packed) -> bool {
        if w.layout() == packed::Layout::Panels {
            return true;
        }
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(_) => w.element_bytes() == 4,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(_) => true,
            _ => false,
        }
    }

    /// Rows of `x` the packed-weight kernel takes at once (`≤ MAX_PANEL_MR`).
    fn panel_mr(self) -> usize {
        match self {
            Backend::Scalar(_) => 0,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(_) => x86_avx2::PANEL_MR,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(_) => x86_avx512::PANEL_MR,
        }
    }

    /// Dot products of `mr` rows of `x` (stride `k`) with the rows of panels `panels` of `w`
    /// ([`PANEL`] rows each), in the canonical order, without bias, into `out`
    /// (row `i` at `i · panels.len() · PANEL`); `1 ≤ mr ≤ self.panel_mr()`.
    fn panels(
        self,
        x: &[f32],
        k: usize,
        mr: usize,
        w: &Packed,
        panels: Range<usize>,
        out: &mut [f32],
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(isa) => match w.layout() {
                packed::Layout::Panels => {
                    let count = panels.len();
                    isa.panels(x, k, mr, w.panels(panels), count, out)
                }
                packed::Layout::Streams => {
                    isa.streams(x, k, mr, w.all(), w.stream_stride(), panels, out, false)
                }
            },
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(isa) => match w.layout() {
                packed::Layout::Panels => {
                    let count = panels.len();
                    isa.panels(x, k, mr, w.panels(panels), count, out)
                }
                packed::Layout::Streams => {
                    isa.streams(x, k, mr, w.all(), w.stream_stride(), panels, out)
                }
            },
            _ => unreachable!("no packed-weight kernel for {self:?}: Packed::new refuses to pack"),
        }
    }

    /// [`Backend::panels`] on `count` panels (the `Panels` layout) in `panels`, in cache (a
    /// block of prefill: nothing is prefetched).
    #[allow(clippy::too_many_arguments)]
    fn panels_cached(
        self,
        x: &[f32],
        k: usize,
        mr: usize,
        panels: WeightRef<'_>,
        count: usize,
        out: &mut [f32],
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(isa) => isa.panels_cached(x, k, mr, panels, count, out),
            // AVX2's panel kernel has no software prefetch to turn off.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(isa) => isa.panels(x, k, mr, panels, count, out),
            _ => unreachable!("no cached panel kernel for {self:?}"),
        }
    }

    /// [`Backend::panels`] on a matrix packed as streams whose `panels` are in cache (a block
    /// of prefill: nothing is prefetched).
    #[allow(clippy::too_many_arguments)]
    fn streams_cached(
        self,
        x: &[f32],
        k: usize,
        mr: usize,
        w: &Packed,
        panels: Range<usize>,
        out: &mut [f32],
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(isa) => {
                isa.streams(x, k, mr, w.all(), w.stream_stride(), panels, out, true)
            }
            // AVX2's stream kernel has no software prefetch to turn off.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(isa) => isa.streams(x, k, mr, w.all(), w.stream_stride(), panels, out),
            _ => unreachable!("no cached stream kernel for {self:?}"),
        }
    }

    /// Widens `rows` rows of packed panels (`src` starts at a panel; the `Panels` layout) into
    /// f32 rows `stride ≥ k` elements apart.
    fn unpack(self, src: WeightRef<'_>, k: usize, rows: usize, dst: &mut [f32], stride: usize) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(isa) => isa.unpack(src, k, rows, dst, stride),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(isa) => isa.unpack(src, k, rows, dst, stride),
            _ => unreachable!("no panel kernel for {self:?}: Packed::new refuses to pack"),
        }
    }

    /// Lays out up to [`PANEL`] weight rows (`k` elements each, `None` for a
    /// row of zeros) as one f32 panel of the `Panels` layout in `dst` (`PANEL · padded_k(k)`
    /// elements; zeros past `k`), widening them exactly; only where the panel kernel runs
    /// prefill ([`Backend::prefill_panels`]).
    fn interleave_panel(self, rows: &[Option<WeightRef<'_>>; PANEL], k: usize, dst: &mut [f32]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(isa) => isa.interleave_panel(rows, k, dst),
            _ => unreachable!("no panel kernel for {self:?}"),
        }
    }

    /// Converts f16/bf16 weights to f32 (exactly); `dst.len() == src.len()`.
    fn convert(self, src: WeightRef<'_>, dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "convert: lengths differ");
        match self {
            Backend::Scalar(isa) => isa.convert(src, dst),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(isa) => isa.convert(src, dst),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(isa) => isa.convert(src, dst),
        }
    }

    fn axpy(self, alpha: f32, x: &[f32], y: &mut [f32]) {
        match self {
            Backend::Scalar(isa) => isa.axpy(alpha, x, y),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(isa) => isa.axpy(alpha, x, y),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(isa) => isa.axpy(alpha, x, y),
        }
    }

    /// `iters` rounds of one FMA on each of several independent vector accumulators (their sum
    /// is returned so nothing is optimised away), and the FLOPs one round does.
    fn fma_chains(self, iters: usize, seed: f32) -> (f32, usize) {
        match self {
            Backend::Scalar(isa) => (isa.fma_chains(iters, seed), 2 * scalar::FMA_CHAINS),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(isa) => (
                isa.fma_chains(iters, seed),
                2 * x86_avx2::LANES * x86_avx2::FMA_CHAINS,
            ),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(isa) => (
                isa.fma_chains(iters, seed),
                2 * x86_avx512::LANES * x86_avx512::FMA_CHAINS,
            ),
        }
    }

    /// Sum of `data` read in `pattern` with several independent vector accumulators.
    fn read(self, data: &[f32], pattern: bandwidth::ReadPattern) -> f32 {
        use bandwidth::ReadPattern::*;
        // Blocks of 8 rows of this many floats, or one stream (`None`).
        let rows = match pattern {
            Sequential | Prefetched => None,
            Rows(row) => Some(row),
            Streams => Some(bandwidth::STREAM_ROW),
        };
        match (self, rows) {
            (Backend::Scalar(isa), None) => isa.read_sum(data, false),
            (Backend::Scalar(isa), Some(row)) => isa.read_rows(data, row),
            #[cfg(target_arch = "x86_64")]
            (Backend::Avx2(isa), None) => isa.read_sum(data, pattern == Prefetched),
            #[cfg(target_arch = "x86_64")]
            (Backend::Avx2(isa), Some(row)) => isa.read_rows(data, row),
            #[cfg(target_arch = "x86_64")]
            (Backend::Avx512(isa), None) => isa.read_sum(data, pattern == Prefetched),
            #[cfg(target_arch = "x86_64")]
            (Backend::Avx512(isa), Some(row)) => isa.read_rows(data, row, pattern == Streams),
        }
    }
}
