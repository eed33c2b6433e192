//! AVX-512 kernels (16 f32 lanes): the register micro-kernel and the panel kernel behind every
//! `matmul_t` shape. Attention's helpers, the lane sums, the element-wise helpers, the stream
//! kernel (and which layout a CPU packs in), the widening kernels and the machine probes live
//! in the submodules. Weights are widened to f32 in registers (`vcvtph2ps` for f16, a 16-bit
//! shift for bf16); partial chunks use masked loads, which read zeros past the end.

mod attention;
mod probe;
mod streams;
mod sums;
mod vector;
mod widen;

use std::arch::x86_64::*;

use half::{bf16, f16};

use std::ops::Range;

use super::packed::{Layout, PANEL, assert_panel_operands, layout_override, padded_k, put_results};
use super::x86_cpu::Cpu;
use super::{MAX_MR, MAX_NR, Tile, WeightRef};
use attention::{scaled_dots_kernel, weighted_rows_kernel};
pub(super) use probe::FMA_CHAINS;
use probe::{fma_chains_kernel, read_rows_kernel, read_sum_kernel};
use streams::{default_layout, streams_typed};
use sums::{hsum, hsum_panel_tile, hsum_rows};
use vector::{axpy_kernel, axpy_rows_kernel, exp_sum_kernel, silu_mul_kernel, softmax_kernel};
use widen::{convert_typed, interleave_typed, unpack_typed};

/// f32 lanes per vector: the `L` of the canonical order on this instruction set.
pub(super) const LANES: usize = 16;

/// `nr` per `mr` such that `mr·nr` accumulators, `mr` x vectors and one weight vector fit in
/// the 32 vector registers.
pub(super) const NR_FOR_MR: [usize; 4] = [8, 8, 7, 6];

/// Rows of `x` the panel kernel takes at once: `mr·PANEL` accumulators, `mr` x vectors and a
/// weight vector fit in the 32 registers up to 3.
pub(super) const PANEL_MR: usize = 3;

/// Proof that the CPU has AVX-512 F, BW and VL (only [`Avx512::detect`] makes one), and how
/// its decode kernels read.
#[derive(Clone, Copy, Debug)]
pub(super) struct Avx512 {
    /// How the panel kernel prefetches ahead of its stream when decoding (by CPU vendor).
    panel_prefetch: Prefetch,
    /// The layout weights are packed in for this CPU ([`default_layout`], or the
    /// `packed::LAYOUT_ENV` override).
    layout: Layout,
}

/// Software prefetch of the panel kernel ahead of its stream ([`prefetch_ahead`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Prefetch {
    /// None: the panels are in cache (a block of prefill).
    Off,
    /// `prefetcht0` 4 KiB and `prefetcht1` 32 KiB ahead of every line: measured best on
    /// Intel (Sapphire Rapids).
    Intel,
    /// `prefetcht0` 4 KiB ahead of every line, for 16-bit panels: on Zen 5 batch-1 f16
    /// decode read 1.02–1.04× faster with it than with none, and the [`Prefetch::Intel`] pair
    /// slower than none (f32 panels read best with none; docs/BENCHMARKS.md). It was written
    /// and first measured as `prefetchw` (`_MM_HINT_ET0`), but without the `prfchw` target
    /// feature (unstable in Rust) LLVM emits `prefetcht0` for that hint; a real `prefetchw`
    /// (inline assembly) measured the same as `prefetcht0`.
    Amd,
}

impl Prefetch {
    /// The policy for f32 panels. On AMD they read best with none: 0.96–0.98 of the ceiling
    /// against 0.89–0.92 with [`Prefetch::Amd`]'s (Zen 5); an f32 FMA takes its weights from memory
    /// itself, so the out-of-order window already covers twice the bytes per instruction of
    /// f16.
    fn for_f32(self) -> Prefetch {
        match self {
            Prefetch::Amd => Prefetch::Off,
            other => other,
        }
    }

    /// Every policy, for tests.
    #[cfg(test)]
    pub(super) const ALL: [Prefetch; 3] = [Prefetch::Off, Prefetch::Intel, Prefetch::Amd];
}

impl Avx512 {
    pub(super) fn detect() -> Option<Self> {
        let ok = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl");
        ok.then(|| {
            let amd = Cpu::this().amd;
            Avx512 {
                panel_prefetch: if amd { Prefetch::Amd } else { Prefetch::Intel },
                layout: layout_override().unwrap_or_else(|| default_layout(amd)),
            }
        })
    }

    /// The layout this CPU's weights are packed in.
    pub(super) fn layout(self) -> Layout {
        self.layout
    }

    /// The same proof with another panel prefetch (tests compare them).
    #[cfg(test)]
    pub(super) fn with_panel_prefetch(self, panel_prefetch: Prefetch) -> Self {
        Avx512 {
            panel_prefetch,
            ..self
        }
    }

    /// A tile whose weights are cached (a block that every x tile passes over, or data the
    /// caller just wrote): no prefetch.
    pub(super) fn tile(self, x: &[f32], k: usize, mr: usize, w: WeightRef<'_>, nr: usize) -> Tile {
        self.tile_prefetching::<{ TilePrefetch::Cached as u8 }>(x, k, mr, w, nr)
    }

    /// A tile whose weights come from memory once, the next tile's rows after them (decode on
    /// row-major weights): the rows of the next tile are prefetched into L2 as these are read.
    pub(super) fn tile_streamed(
        self,
        x: &[f32],
        k: usize,
        mr: usize,
        w: WeightRef<'_>,
        nr: usize,
    ) -> Tile {
        self.tile_prefetching::<{ TilePrefetch::NextTile as u8 }>(x, k, mr, w, nr)
    }

    /// [`Avx512::tile`] or [`Avx512::tile_streamed`] (`PREFETCH` a [`TilePrefetch`]).
    fn tile_prefetching<const PREFETCH: u8>(
        self,
        x: &[f32],
        k: usize,
        mr: usize,
        w: WeightRef<'_>,
        nr: usize,
    ) -> Tile {
        match w {
            WeightRef::F32(w) => tile_typed::<_, PREFETCH>(self, x, k, mr, w, nr),
            WeightRef::F16(w) => tile_typed::<_, PREFETCH>(self, x, k, mr, w, nr),
            WeightRef::BF16(w) => tile_typed::<_, PREFETCH>(self, x, k, mr, w, nr),
        }
    }

    /// Dot products of `mr` rows of `x` (stride `k`) with the rows of `count` consecutive
    /// packed panels (see `packed`), in the canonical order: row `i` of `x` against panel row
    /// `r` lands in `out[i * count * PANEL + r]`. `1 ≤ mr ≤ PANEL_MR`.
    pub(super) fn panels(
        self,
        x: &[f32],
        k: usize,
        mr: usize,
        panels: WeightRef<'_>,
        count: usize,
        out: &mut [f32],
    ) {
        self.panels_prefetching(x, k, mr, panels, count, out, self.panel_prefetch)
    }

    /// [`Avx512::panels`] on panels in cache (a block of prefill that every tile of `x` passes
    /// over): no prefetch. 16-bit panels are widened in registers, as in decode.
    pub(super) fn panels_cached(
        self,
        x: &[f32],
        k: usize,
        mr: usize,
        panels: WeightRef<'_>,
        count: usize,
        out: &mut [f32],
    ) {
        self.panels_prefetching(x, k, mr, panels, count, out, Prefetch::Off)
    }

    /// Dot products of `mr ≤ PANEL_MR` rows of `x` (stride `k`) with the rows of panels
    /// `panels` of a matrix packed in [`PANEL`] streams `stride` elements apart (see `packed`,
    /// the `Streams` layout), in the canonical order: row `i` of `x` against row `r` of panel
    /// `panels.start + q` lands in `out[(i * panels.len() + q) * PANEL + r]`. Each stream is
    /// prefetched [`STREAM_PREFETCH`] bytes ahead, unless the panels are `cached` (a block of
    /// prefill that every tile of `x` passes over).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn streams(
        self,
        x: &[f32],
        k: usize,
        mr: usize,
        w: WeightRef<'_>,
        stride: usize,
        panels: Range<usize>,
        out: &mut [f32],
        cached: bool,
    ) {
        match w {
            WeightRef::F32(w) => streams_typed(self, x, k, mr, w, stride, panels, out, cached),
            WeightRef::F16(w) => streams_typed(self, x, k, mr, w, stride, panels, out, cached),
            WeightRef::BF16(w) => streams_typed(self, x, k, mr, w, stride, panels, out, cached),
        }
    }

    /// [`Avx512::panels`] with the prefetch policy `prefetch` for 16-bit panels
    /// ([`Prefetch::for_f32`] of it for f32 ones).
    #[allow(clippy::too_many_arguments)]
    fn panels_prefetching(
        self,
        x: &[f32],
        k: usize,
        mr: usize,
        panels: WeightRef<'_>,
        count: usize,
        out: &mut [f32],
        prefetch: Prefetch,
    ) {
        match panels {
            WeightRef::F32(p) => panels_typed(self, x, k, mr, p, count, out, prefetch.for_f32()),
            WeightRef::F16(p) => panels_typed(self, x, k, mr, p, count, out, prefetch),
            WeightRef::BF16(p) => panels_typed(self, x, k, mr, p, count, out, prefetch),
        }
    }

    /// Widens `rows` whole rows of packed panels (`src` starts at a panel) into row-major f32
    /// `dst` (`rows · k` elements).
    pub(super) fn unpack(
        self,
        src: WeightRef<'_>,
        k: usize,
        rows: usize,
        dst: &mut [f32],
        stride: usize,
    ) {
        match src {
            WeightRef::F32(s) => unpack_typed(self, s, k, rows, dst, stride),
            WeightRef::F16(s) => unpack_typed(self, s, k, rows, dst, stride),
            WeightRef::BF16(s) => unpack_typed(self, s, k, rows, dst, stride),
        }
    }

    /// Lays out up to [`PANEL`] rows (`k` elements each; `None` a row of zeros) as one f32
    /// panel in `dst` (`PANEL · padded_k(k)` elements, zeros past `k`), widened exactly. Every
    /// present row has the dtype of the first.
    pub(super) fn interleave_panel(
        self,
        rows: &[Option<WeightRef<'_>>; PANEL],
        k: usize,
        dst: &mut [f32],
    ) {
        match rows.iter().flatten().next() {
            None => dst[..PANEL * padded_k(k)].fill(0.0),
            Some(WeightRef::F32(_)) => {
                interleave_typed(self, rows.map(|r| r.map(WeightRef::as_f32)), k, dst)
            }
            Some(WeightRef::F16(_)) => {
                interleave_typed(self, rows.map(|r| r.map(WeightRef::as_f16)), k, dst)
            }
            Some(WeightRef::BF16(_)) => {
                interleave_typed(self, rows.map(|r| r.map(WeightRef::as_bf16)), k, dst)
            }
        }
    }

    pub(super) fn convert(self, src: WeightRef<'_>, dst: &mut [f32]) {
        match src {
            WeightRef::F32(s) => dst.copy_from_slice(s),
            WeightRef::F16(s) => convert_typed(self, s, dst),
            WeightRef::BF16(s) => convert_typed(self, s, dst),
        }
    }

    pub(super) fn axpy(self, alpha: f32, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), y.len(), "axpy: lengths differ");
        // SAFETY: `self` proves AVX-512 F/BW/VL; the lengths are equal (checked above).
        unsafe { axpy_kernel(alpha, x, y) }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn scaled_dots(
        self,
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
                && (m == 0 || n == 0 || out.len() >= (m - 1) * stride + n),
            "scaled_dots: operands too short"
        );
        let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
        // SAFETY: `self` proves AVX-512 F/BW/VL; the lengths are checked above; each dtype's
        // kernel reads its elements as the slice holds them.
        unsafe {
            match w {
                WeightRef::F32(w) => scaled_dots_kernel(xp, m, k, w.as_ptr(), n, scale, op, stride),
                WeightRef::F16(w) => scaled_dots_kernel(xp, m, k, w.as_ptr(), n, scale, op, stride),
                WeightRef::BF16(w) => {
                    scaled_dots_kernel(xp, m, k, w.as_ptr(), n, scale, op, stride)
                }
            }
        }
    }

    pub(super) fn weighted_rows(
        self,
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
                && (m == 0 || n == 0 || p.len() >= (m - 1) * stride + n),
            "weighted_rows: operands too short"
        );
        let (pp, op) = (p.as_ptr(), out.as_mut_ptr());
        // SAFETY: `self` proves AVX-512 F/BW/VL; the lengths are checked above; each dtype's
        // kernel reads its elements as the slice holds them.
        unsafe {
            match v {
                WeightRef::F32(v) => weighted_rows_kernel(pp, stride, m, v.as_ptr(), n, k, op),
                WeightRef::F16(v) => weighted_rows_kernel(pp, stride, m, v.as_ptr(), n, k, op),
                WeightRef::BF16(v) => weighted_rows_kernel(pp, stride, m, v.as_ptr(), n, k, op),
            }
        }
    }

    pub(super) fn axpy_rows(self, alphas: &[f32], v: &[f32], y: &mut [f32]) {
        assert!(v.len() >= alphas.len() * y.len(), "axpy_rows: v too short");
        // SAFETY: `self` proves AVX-512 F/BW/VL; v holds alphas.len() rows of y.len().
        unsafe { axpy_rows_kernel(alphas, v, y) }
    }

    pub(super) fn silu_mul(self, gate: &[f32], up: &[f32], out: &mut [f32]) {
        assert!(
            gate.len() == out.len() && up.len() == out.len(),
            "silu_mul: lengths differ"
        );
        // SAFETY: `self` proves AVX-512 F/BW/VL; the lengths are equal (checked above).
        unsafe { silu_mul_kernel(gate, up, out) }
    }

    pub(super) fn exp_sum(self, v: &mut [f32], max: f32) -> f32 {
        // SAFETY: `self` proves AVX-512 F/BW/VL.
        unsafe { exp_sum_kernel(v, max) }
    }

    pub(super) fn softmax(self, v: &mut [f32]) {
        // SAFETY: `self` proves AVX-512 F/BW/VL.
        unsafe { softmax_kernel(v) }
    }

    pub(super) fn fma_chains(self, iters: usize, seed: f32) -> f32 {
        // SAFETY: `self` proves AVX-512 F/BW/VL.
        unsafe { fma_chains_kernel(iters, seed) }
    }

    /// Blocks of 8 rows of `row` floats read side by side; with `prefetch`, as the stream
    /// kernel prefetches.
    pub(super) fn read_rows(self, data: &[f32], row: usize, prefetch: bool) -> f32 {
        // SAFETY: `self` proves AVX-512 F/BW/VL.
        unsafe {
            if prefetch {
                read_rows_kernel::<true>(data, row)
            } else {
                read_rows_kernel::<false>(data, row)
            }
        }
    }

    pub(super) fn read_sum(self, data: &[f32], prefetch: bool) -> f32 {
        // SAFETY: `self` proves AVX-512 F/BW/VL.
        unsafe {
            if prefetch {
                read_sum_kernel::<true>(data)
            } else {
                read_sum_kernel::<false>(data)
            }
        }
    }
}

/// A weight element type that can be loaded as 16 f32 lanes.
trait Load16: Copy {
    /// # Safety
    /// `p` is valid for reading 16 elements; the CPU has AVX-512 F/BW/VL.
    unsafe fn load(p: *const Self) -> __m512;
    /// Loads the elements whose `mask` bit is set, zeros elsewhere; masked-off elements are not
    /// read.
    ///
    /// # Safety
    /// `p` is valid for reading the masked elements; the CPU has AVX-512 F/BW/VL.
    unsafe fn load_masked(p: *const Self, mask: __mmask16) -> __m512;
}

impl Load16 for f32 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: guaranteed by the caller.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load_masked(p: *const f32, mask: __mmask16) -> __m512 {
        // SAFETY: guaranteed by the caller; masked-off lanes are not accessed.
        unsafe { _mm512_maskz_loadu_ps(mask, p) }
    }
}

impl Load16 for f16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load(p: *const f16) -> __m512 {
        // SAFETY: guaranteed by the caller (16 halves = 32 bytes).
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p.cast()) })
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load_masked(p: *const f16, mask: __mmask16) -> __m512 {
        // SAFETY: guaranteed by the caller; masked-off lanes are not accessed.
        _mm512_cvtph_ps(unsafe { _mm256_maskz_loadu_epi16(mask, p.cast()) })
    }
}

impl Load16 for bf16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load(p: *const bf16) -> __m512 {
        // SAFETY: guaranteed by the caller (16 bf16 = 32 bytes).
        let raw = unsafe { _mm256_loadu_si256(p.cast()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load_masked(p: *const bf16, mask: __mmask16) -> __m512 {
        // SAFETY: guaranteed by the caller; masked-off lanes are not accessed.
        let raw = unsafe { _mm256_maskz_loadu_epi16(mask, p.cast()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
    }
}

fn tile_typed<W: Load16, const PREFETCH: u8>(
    _isa: Avx512,
    x: &[f32],
    k: usize,
    mr: usize,
    w: &[W],
    nr: usize,
) -> Tile {
    assert!(
        (1..=NR_FOR_MR.len()).contains(&mr) && (1..=MAX_NR).contains(&nr),
        "tile {mr}x{nr}"
    );
    assert!(
        x.len() >= mr * k && w.len() >= nr * k,
        "tile operands too short"
    );
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    if nr == NR_FOR_MR[mr - 1] {
        // SAFETY: `_isa` proves the features; x holds mr rows and w holds nr rows of
        // k elements (asserted above), which is all each kernel reads.
        return unsafe {
            match mr {
                1 => spread(&kernel::<W, 1, 8, PREFETCH>(xp, wp, k, k)),
                2 => spread(&kernel::<W, 2, 8, PREFETCH>(xp, wp, k, k)),
                3 => spread(&kernel::<W, 3, 7, PREFETCH>(xp, wp, k, k)),
                _ => spread(&kernel::<W, 4, 6, PREFETCH>(xp, wp, k, k)),
            }
        };
    }
    let mut tile = [[0.0; MAX_NR]; MAX_MR];
    // Index loops: `j` addresses a column across the rows of `tile`.
    #[allow(clippy::needless_range_loop)]
    for j in 0..nr {
        // SAFETY: as above; row j < nr of w starts at j*k and has k elements.
        let col: Tile = unsafe {
            match mr {
                1 => spread(&kernel::<W, 1, 1, PREFETCH>(xp, wp.add(j * k), k, k)),
                2 => spread(&kernel::<W, 2, 1, PREFETCH>(xp, wp.add(j * k), k, k)),
                3 => spread(&kernel::<W, 3, 1, PREFETCH>(xp, wp.add(j * k), k, k)),
                _ => spread(&kernel::<W, 4, 1, PREFETCH>(xp, wp.add(j * k), k, k)),
            }
        };
        for i in 0..mr {
            tile[i][j] = col[i][0];
        }
    }
    tile
}

#[allow(clippy::too_many_arguments)]
fn panels_typed<W: Load16>(
    _isa: Avx512,
    x: &[f32],
    k: usize,
    mr: usize,
    panels: &[W],
    count: usize,
    out: &mut [f32],
    prefetch: Prefetch,
) {
    assert!((1..=PANEL_MR).contains(&mr), "panel tile of {mr} rows");
    assert_panel_operands(x.len(), k, mr, panels.len(), count, out.len());
    let (xp, wp, op) = (x.as_ptr(), panels.as_ptr(), out.as_mut_ptr());
    // SAFETY: `_isa` proves the features; x holds mr rows of k elements, `panels` count panels
    // of PANEL rows of padded_k(k), `out` mr rows of count·PANEL results (asserted above).
    unsafe {
        const OFF: u8 = Prefetch::Off as u8;
        const INTEL: u8 = Prefetch::Intel as u8;
        const AMD: u8 = Prefetch::Amd as u8;
        match (mr, prefetch) {
            (1, Prefetch::Off) => panels_kernel::<W, 1, OFF>(xp, wp, k, count, op),
            (2, Prefetch::Off) => panels_kernel::<W, 2, OFF>(xp, wp, k, count, op),
            (_, Prefetch::Off) => panels_kernel::<W, 3, OFF>(xp, wp, k, count, op),
            (1, Prefetch::Intel) => panels_kernel::<W, 1, INTEL>(xp, wp, k, count, op),
            (2, Prefetch::Intel) => panels_kernel::<W, 2, INTEL>(xp, wp, k, count, op),
            (_, Prefetch::Intel) => panels_kernel::<W, 3, INTEL>(xp, wp, k, count, op),
            (1, Prefetch::Amd) => panels_kernel::<W, 1, AMD>(xp, wp, k, count, op),
            (2, Prefetch::Amd) => panels_kernel::<W, 2, AMD>(xp, wp, k, count, op),
            (_, Prefetch::Amd) => panels_kernel::<W, 3, AMD>(xp, wp, k, count, op),
        }
    }
}

/// [`panel_kernel`] over `count` consecutive panels in one call, so the stream (and its
/// prefetch) runs on without a call and a result copy between panels.
///
/// # Safety
/// AVX-512 F/BW/VL present; `x` valid for `MR*k` reads, `w` for `count*PANEL*padded_k(k)` reads,
/// `out` for `MR*count*PANEL` writes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn panels_kernel<W: Load16, const MR: usize, const PREFETCH: u8>(
    x: *const f32,
    w: *const W,
    k: usize,
    count: usize,
    out: *mut f32,
) {
    let per_panel = PANEL * padded_k(k);
    for q in 0..count {
        // SAFETY: panel q is inside `w` (caller contract).
        let tile = unsafe { panel_kernel::<W, MR, PREFETCH>(x, w.add(q * per_panel), k) };
        // SAFETY: `out` holds MR rows of count·PANEL results (caller contract).
        unsafe { put_results(out, count, q * PANEL, &tile) };
    }
}

/// Bytes ahead of the read position prefetched into L1 and into L2 by the panel kernel on
/// Intel ([`Prefetch::Intel`]): far enough to cover the memory latency at full bandwidth,
/// measured best on Sapphire Rapids.
const PANEL_PREFETCH_L1: usize = 4096;
const PANEL_PREFETCH_L2: usize = 32768;

/// Bytes ahead of the read position prefetched into L1 on AMD ([`Prefetch::Amd`]): measured
/// best on Zen 5 (2 KiB and 8 KiB no better).
const PANEL_PREFETCH_AMD: usize = 4096;

/// Prefetches the `bytes` (a multiple of a cache line) starting at `at` as the decode stream
/// will read them, by policy `P` (a [`Prefetch`] as `u8`): [`Prefetch::Intel`]
/// [`PANEL_PREFETCH_L1`] ahead into L1 and [`PANEL_PREFETCH_L2`] ahead into L2,
/// [`Prefetch::Amd`] [`PANEL_PREFETCH_AMD`] ahead into L1, [`Prefetch::Off`] nothing. A
/// prefetch never faults, so running past the end of the data is harmless.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn prefetch_ahead<const P: u8>(at: *const i8, bytes: usize) {
    for line in (0..bytes).step_by(64) {
        if P == Prefetch::Intel as u8 {
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PANEL_PREFETCH_L1 + line));
            _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(PANEL_PREFETCH_L2 + line));
        } else if P == Prefetch::Amd as u8 {
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PANEL_PREFETCH_AMD + line));
        }
    }
}

/// `MR` rows of `x` against one packed panel: the same accumulators, lanes and chunk order as
/// [`kernel`] (the canonical order), reading the panel as one sequential stream.
///
/// # Safety
/// AVX-512 F/BW/VL present; `x` valid for `MR*k` reads, `w` for `PANEL*padded_k(k)` reads.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn panel_kernel<W: Load16, const MR: usize, const PREFETCH: u8>(
    x: *const f32,
    w: *const W,
    k: usize,
) -> [[f32; PANEL]; MR] {
    let mut acc = [[_mm512_setzero_ps(); PANEL]; MR];
    let chunk_bytes = PANEL * LANES * size_of::<W>();
    for c in 0..k.div_ceil(LANES) {
        let off = c * LANES;
        let p = w.wrapping_add(c * PANEL * LANES);
        prefetch_ahead::<PREFETCH>(p.cast(), chunk_bytes);
        let mut xv = [_mm512_setzero_ps(); MR];
        if off + LANES <= k {
            for (i, v) in xv.iter_mut().enumerate() {
                // SAFETY: off + 16 ≤ k, so this reads inside row i of x.
                *v = unsafe { _mm512_loadu_ps(x.add(i * k + off)) };
            }
        } else {
            let mask = lanes_mask(k - off);
            for (i, v) in xv.iter_mut().enumerate() {
                // SAFETY: the mask selects only the elements left in row i.
                *v = unsafe { _mm512_maskz_loadu_ps(mask, x.add(i * k + off)) };
            }
        }
        for j in 0..PANEL {
            // SAFETY: chunk c of panel row j lies inside the panel (padded to whole chunks);
            // past k it holds zeros, as the masked loads of `kernel` would.
            let wv = unsafe { W::load(p.add(j * LANES)) };
            for i in 0..MR {
                acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
            }
        }
    }
    hsum_panel_tile(acc)
}

/// Copies an `MR×NR` result into the top-left corner of a [`Tile`].
#[inline]
fn spread<const MR: usize, const NR: usize>(r: &[[f32; NR]; MR]) -> Tile {
    let mut tile = [[0.0; MAX_NR]; MAX_MR];
    for (t, r) in tile.iter_mut().zip(r) {
        t[..NR].copy_from_slice(r);
    }
    tile
}

/// What the register micro-kernel prefetches while it reads its weight rows (a const generic
/// `u8` of [`kernel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TilePrefetch {
    /// Nothing: the rows are in cache (a block every tile of `x` passes over).
    Cached,
    /// The next tile's rows, which follow these in memory (row-major weights streamed once),
    /// into L2 at the rate this tile reads its own.
    NextTile,
    /// Each row [`STREAM_PREFETCH`] bytes ahead of its read position, into L1 (the eight long
    /// streams of the `Streams` layout).
    Ahead,
}

/// Bytes ahead of its read position that each of the eight streams of a stream tile is
/// prefetched ([`TilePrefetch::Ahead`]).
const STREAM_PREFETCH: usize = 2048;

/// The register micro-kernel: `MR` rows of `x` against `NR` rows of `w` (`ws` elements apart),
/// one 16-lane accumulator per output, walking `k` in order (canonical order, see the module
/// docs of `linalg`). `PREFETCH` is a [`TilePrefetch`].
///
/// # Safety
/// AVX-512 F/BW/VL present; `x` valid for `MR*k` reads (row stride `k`) and `w` for `NR` rows of
/// `k` reads `ws` elements apart; with [`TilePrefetch::NextTile`], `ws == k`.
// Index loops keep the accumulator grid explicit; LLVM unrolls them into registers.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn kernel<W: Load16, const MR: usize, const NR: usize, const PREFETCH: u8>(
    x: *const f32,
    w: *const W,
    k: usize,
    ws: usize,
) -> [[f32; NR]; MR] {
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    let full = k / LANES;
    // With NextTile (row-major weights streamed from memory once): the rows of the next tile
    // follow these in memory; prefetching them into L2 linearly, at the rate this tile consumes
    // its own rows, keeps DRAM busy across short (2 KiB) rows that the hardware streamer would
    // otherwise have to re-detect for every tile (row-major f16 decode on Zen 5: 25.7 against
    // 17.5 GiB/s without). Over a cached block the same prefetches only take load slots: the
    // prefill matmul ran 1.11–1.19× faster without them there.
    let chunk_bytes = NR * LANES * size_of::<W>();
    let next_tile = w.cast::<i8>().wrapping_add(NR * k * size_of::<W>());
    for c in 0..full {
        let off = c * LANES;
        if PREFETCH == TilePrefetch::NextTile as u8 {
            let pf = next_tile.wrapping_add(c * chunk_bytes);
            for line in (0..chunk_bytes).step_by(64) {
                // A prefetch never faults, so running past the matrix end is harmless.
                _mm_prefetch::<_MM_HINT_T1>(pf.wrapping_add(line));
            }
        }
        // Once per 64 bytes of each row (every chunk of f32, every other of 16-bit weights).
        if PREFETCH == TilePrefetch::Ahead as u8 && (off * size_of::<W>()).is_multiple_of(64) {
            for j in 0..NR {
                let at = w.wrapping_add(j * ws + off).cast::<i8>();
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(STREAM_PREFETCH));
            }
        }
        let mut xv = [_mm512_setzero_ps(); MR];
        for (i, v) in xv.iter_mut().enumerate() {
            // SAFETY: off + 16 ≤ k, so this reads inside row i of x.
            *v = unsafe { _mm512_loadu_ps(x.add(i * k + off)) };
        }
        for j in 0..NR {
            // SAFETY: off + 16 ≤ k, so this reads inside row j of w.
            let wv = unsafe { W::load(w.add(j * ws + off)) };
            for i in 0..MR {
                acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
            }
        }
    }
    let rem = k % LANES;
    if rem != 0 {
        let off = full * LANES;
        let mask = lanes_mask(rem);
        let mut xv = [_mm512_setzero_ps(); MR];
        for (i, v) in xv.iter_mut().enumerate() {
            // SAFETY: the mask selects only the rem elements left in row i.
            *v = unsafe { _mm512_maskz_loadu_ps(mask, x.add(i * k + off)) };
        }
        for j in 0..NR {
            // SAFETY: the mask selects only the rem elements left in row j.
            let wv = unsafe { W::load_masked(w.add(j * ws + off), mask) };
            for i in 0..MR {
                acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
            }
        }
    }
    hsum_rows(acc)
}

/// The mask of the first `min(left, 16)` lanes: a whole vector, or the tail of a slice.
#[inline]
fn lanes_mask(left: usize) -> __mmask16 {
    if left >= LANES {
        0xffff
    } else {
        ((1u32 << left) - 1) as __mmask16
    }
}
