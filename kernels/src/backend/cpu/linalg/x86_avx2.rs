//! AVX2 + FMA + F16C kernels (8 f32 lanes), for x86-64 CPUs without AVX-512. The same register
//! micro-kernel as `x86_avx512.rs`; partial chunks are copied into a zeroed stack buffer. The
//! panel kernel and the layout choice live in `panels`; attention's helpers, the element-wise
//! helpers (`vector`) and the machine probes in their submodules.

mod attention;
mod panels;
mod probe;
mod vector;

use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::ops::Range;

use half::{bf16, f16};

use super::packed::{Layout, PANEL, assert_stream_operands, layout_override};
use super::x86_cpu::Cpu;
use super::{MAX_MR, MAX_NR, RowMap, STRIP_ROWS, Tile, WeightRef};
use attention::{scaled_dots_kernel, weighted_rows_kernel};
use panels::{default_layouts, panels_typed, unpack_typed};
pub(super) use probe::FMA_CHAINS;
use probe::{fma_chains_kernel, read_rows_kernel, read_sum_kernel};
use vector::{axpy_kernel, axpy_rows_kernel, exp_sum_kernel, silu_mul_kernel, softmax_kernel};

/// f32 lanes per vector: the `L` of the canonical order on this instruction set.
pub(super) const LANES: usize = 8;

/// `nr` per `mr` (`mr ≤ 4`, the tallest tile) such that the accumulators and the vectors of
/// the shorter side, plus one vector of the other, fit in 16 registers (see [`kernel`]). A
/// 4×3 tile that held its 4 x vectors needed 17 and spilled: prefill ran at half the speed
/// (docs/BENCHMARKS.md). Taller tiles (6×2) measured slower than 4×3 and 3×4.
pub(super) const NR_FOR_MR: [usize; 4] = [8, 5, 4, 3];

/// Rows of `x` a packed-weight tile takes at once, in either layout: a panel's 8 weight rows go
/// as a 1×8 tile, or for two rows of x as 2×5 and 2×3 ([`Avx2::streams`]) or two 2×4 tiles
/// over blocks of the panel ([`Avx2::panels`], see `panels::pair_kernel`), each weight read
/// once for both rows. Three rows measured slower than 2 + 1 in both layouts, four than 2 + 2
/// on panels (docs/BENCHMARKS.md).
pub(super) const PANEL_MR: usize = 2;

/// The most rows of `x` a product on 16-bit packed weights runs on the decode kernels (panel
/// or stream) over L2-sized blocks of the weights in place (two rows at a time, widening in
/// registers); taller ones widen each block into f32 rows once and run the 4×3 row tiles
/// over them. Measured (f16, docs/BENCHMARKS.md) on Zen 4's panels: batch-16 decode ran
/// 231–235 tokens/s on 1 thread against 178 widened (writing the widened rows into L2 took a
/// fifth of the time), batch 8 213 against 137, batch 64 249–252 against 232, and prefill of
/// 32 and 64 tokens on 2 threads 1.08–1.16× and 1.05–1.11× faster; from 128 rows on, 2
/// threads ran 3–6% slower on the panels (1 thread level or faster). On Zen 3's streams
/// (512 KiB of L2): batch 8 220–230 against 127–150, batch 32 224–236 against 205–216,
/// batch 48 level, batch 64 2–8% slower on 1 thread in five of six rounds (2 threads level
/// within the noise).
pub(super) const CACHED_PANEL_ROWS: usize = 64;

/// Proof that the CPU has AVX2, FMA and F16C (only [`Avx2::detect`] makes one), and the layouts
/// its weights are packed in.
#[derive(Clone, Copy, Debug)]
pub(super) struct Avx2 {
    /// [`default_layouts`] for this CPU (16-bit weights, f32 ones), or the
    /// `packed::LAYOUT_ENV` override for both.
    layouts: (Layout, Layout),
}

impl Avx2 {
    pub(super) fn detect() -> Option<Self> {
        let ok = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        ok.then(|| Avx2 {
            layouts: layout_override()
                .map_or_else(|| default_layouts(Cpu::this()), |layout| (layout, layout)),
        })
    }

    /// The layout this CPU's weights of `element_bytes` (2 or 4) are packed in.
    pub(super) fn layout(self, element_bytes: usize) -> Layout {
        if element_bytes == 4 {
            self.layouts.1
        } else {
            self.layouts.0
        }
    }

    pub(super) fn tile(self, x: &[f32], k: usize, mr: usize, w: WeightRef<'_>, nr: usize) -> Tile {
        match w {
            WeightRef::F32(w) => tile_typed(self, x, k, mr, w, k, nr),
            WeightRef::F16(w) => tile_typed(self, x, k, mr, w, k, nr),
            WeightRef::BF16(w) => tile_typed(self, x, k, mr, w, k, nr),
        }
    }

    /// See `Backend::strip` (operands checked there and again in [`strip_typed`]).
    pub(super) fn strip(
        self,
        x: &[f32],
        k: usize,
        mr: usize,
        w: WeightRef<'_>,
        map: RowMap,
        out: &mut [f32],
    ) {
        match w {
            WeightRef::F32(w) => strip_typed(self, x, k, mr, w, map, out),
            WeightRef::F16(w) => strip_typed(self, x, k, mr, w, map, out),
            WeightRef::BF16(w) => strip_typed(self, x, k, mr, w, map, out),
        }
    }

    /// Dot products of `mr ≤ PANEL_MR` rows of `x` (stride `k`) with the rows of panels
    /// `panels` of a matrix packed in [`PANEL`] streams `stride` elements apart (see `packed`,
    /// the `Streams` layout), in the canonical order: row `i` of `x` against row `r` of panel
    /// `panels.start + q` lands in `out[(i * panels.len() + q) * PANEL + r]`.
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
    ) {
        match w {
            WeightRef::F32(w) => streams_typed(self, x, k, mr, w, stride, panels, out),
            WeightRef::F16(w) => streams_typed(self, x, k, mr, w, stride, panels, out),
            WeightRef::BF16(w) => streams_typed(self, x, k, mr, w, stride, panels, out),
        }
    }

    /// Dot products of `mr ≤ PANEL_MR` rows of `x` (stride `k`) with the rows of `count`
    /// consecutive panels of the `Panels` layout (see `packed`), in the canonical order: row
    /// `i` of `x` against panel row `r` lands in `out[i * count * PANEL + r]`.
    pub(super) fn panels(
        self,
        x: &[f32],
        k: usize,
        mr: usize,
        panels: WeightRef<'_>,
        count: usize,
        out: &mut [f32],
    ) {
        match panels {
            WeightRef::F32(p) => panels_typed(self, x, k, mr, p, count, out),
            WeightRef::F16(p) => panels_typed(self, x, k, mr, p, count, out),
            WeightRef::BF16(p) => panels_typed(self, x, k, mr, p, count, out),
        }
    }

    /// Widens `rows` whole rows of packed panels (`src` starts at a panel) into f32 rows of
    /// `dst`, `stride ≥ k` elements apart.
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

    pub(super) fn convert(self, src: WeightRef<'_>, dst: &mut [f32]) {
        match src {
            WeightRef::F32(s) => dst.copy_from_slice(s),
            WeightRef::F16(s) => convert_typed(self, s, dst),
            WeightRef::BF16(s) => convert_typed(self, s, dst),
        }
    }

    pub(super) fn axpy(self, alpha: f32, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), y.len(), "axpy: lengths differ");
        // SAFETY: `self` proves AVX2/FMA/F16C; the lengths are equal (checked above).
        unsafe { axpy_kernel(alpha, x, y) }
    }

    pub(super) fn axpy_rows(self, alphas: &[f32], v: &[f32], y: &mut [f32]) {
        assert!(v.len() >= alphas.len() * y.len(), "axpy_rows: v too short");
        // SAFETY: `self` proves AVX2/FMA/F16C; v holds alphas.len() rows of y.len().
        unsafe { axpy_rows_kernel(alphas, v, y) }
    }

    /// See [`super::scaled_dots`] (lengths checked there).
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
        // SAFETY: `self` proves AVX2/FMA/F16C; the lengths are checked above; each dtype's
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

    /// See [`super::weighted_rows`] (lengths checked there).
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
        // SAFETY: `self` proves AVX2/FMA/F16C; the lengths are checked above; each dtype's
        // kernel reads its elements as the slice holds them.
        unsafe {
            match v {
                WeightRef::F32(v) => weighted_rows_kernel(pp, stride, m, v.as_ptr(), n, k, op),
                WeightRef::F16(v) => weighted_rows_kernel(pp, stride, m, v.as_ptr(), n, k, op),
                WeightRef::BF16(v) => weighted_rows_kernel(pp, stride, m, v.as_ptr(), n, k, op),
            }
        }
    }

    pub(super) fn silu_mul(self, gate: &[f32], up: &[f32], out: &mut [f32]) {
        assert!(
            gate.len() == out.len() && up.len() == out.len(),
            "silu_mul: lengths differ"
        );
        // SAFETY: `self` proves AVX2/FMA/F16C; the lengths are equal (checked above).
        unsafe { silu_mul_kernel(gate, up, out) }
    }

    pub(super) fn exp_sum(self, v: &mut [f32], max: f32) -> f32 {
        // SAFETY: `self` proves AVX2/FMA/F16C.
        unsafe { exp_sum_kernel(v, max) }
    }

    pub(super) fn softmax(self, v: &mut [f32]) {
        // SAFETY: `self` proves AVX2/FMA/F16C.
        unsafe { softmax_kernel(v) }
    }

    pub(super) fn fma_chains(self, iters: usize, seed: f32) -> f32 {
        // SAFETY: `self` proves AVX2/FMA/F16C.
        unsafe { fma_chains_kernel(iters, seed) }
    }

    pub(super) fn read_rows(self, data: &[f32], row: usize) -> f32 {
        // SAFETY: `self` proves AVX2/FMA/F16C.
        unsafe { read_rows_kernel(data, row) }
    }

    pub(super) fn read_sum(self, data: &[f32], prefetch: bool) -> f32 {
        // SAFETY: `self` proves AVX2/FMA/F16C.
        unsafe {
            if prefetch {
                read_sum_kernel::<true>(data)
            } else {
                read_sum_kernel::<false>(data)
            }
        }
    }
}

/// A weight element type that can be loaded as 8 f32 lanes.
trait Load8: Copy {
    const ZERO: Self;
    /// # Safety
    /// `p` is valid for reading 8 elements; the CPU has AVX2/FMA/F16C.
    unsafe fn load(p: *const Self) -> __m256;
}

impl Load8 for f32 {
    const ZERO: f32 = 0.0;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: guaranteed by the caller.
        unsafe { _mm256_loadu_ps(p) }
    }
}

impl Load8 for f16 {
    const ZERO: f16 = f16::ZERO;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(p: *const f16) -> __m256 {
        // SAFETY: guaranteed by the caller (8 halves = 16 bytes).
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
    }
}

impl Load8 for bf16 {
    const ZERO: bf16 = bf16::ZERO;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(p: *const bf16) -> __m256 {
        // SAFETY: guaranteed by the caller (8 bf16 = 16 bytes).
        let raw = unsafe { _mm_loadu_si128(p.cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)))
    }
}

/// Loads the first `rem < 8` elements at `p`, zeros in the other lanes.
///
/// # Safety
/// `p` is valid for reading `rem` elements; the CPU has AVX2/FMA/F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_partial<W: Load8>(p: *const W, rem: usize) -> __m256 {
    debug_assert!(rem <= LANES, "load_partial of {rem} elements");
    let mut buf = [W::ZERO; LANES];
    // SAFETY: p holds rem ≤ 8 elements and buf 8; the regions are distinct.
    unsafe {
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), rem);
        W::load(buf.as_ptr())
    }
}

/// The `mr × nr` tile of `x` (stride `k`) against `nr` rows of `w` `ws` elements apart.
fn tile_typed<W: Load8>(
    _isa: Avx2,
    x: &[f32],
    k: usize,
    mr: usize,
    w: &[W],
    ws: usize,
    nr: usize,
) -> Tile {
    assert!(
        (1..=NR_FOR_MR.len()).contains(&mr) && (1..=MAX_NR).contains(&nr),
        "tile {mr}x{nr}"
    );
    assert!(
        x.len() >= mr * k && ws >= k && w.len() >= (nr - 1) * ws + k,
        "tile operands too short"
    );
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    if nr == NR_FOR_MR[mr - 1] {
        // SAFETY: `_isa` proves the features; x holds mr rows of k elements and w nr rows of
        // k elements ws apart (asserted above), which is all each kernel reads.
        return unsafe {
            match mr {
                1 => spread(&kernel::<W, 1, 8>(xp, wp, k, ws)),
                2 => spread(&kernel::<W, 2, 5>(xp, wp, k, ws)),
                3 => spread(&kernel::<W, 3, 4>(xp, wp, k, ws)),
                _ => spread(&kernel::<W, 4, 3>(xp, wp, k, ws)),
            }
        };
    }
    let mut tile = [[0.0; MAX_NR]; MAX_MR];
    // Index loops: `j` addresses a column across the rows of `tile`.
    #[allow(clippy::needless_range_loop)]
    for j in 0..nr {
        // SAFETY: as above; row j < nr of w starts at j*ws and has k elements.
        let col: Tile = unsafe {
            match mr {
                1 => spread(&kernel::<W, 1, 1>(xp, wp.add(j * ws), k, ws)),
                2 => spread(&kernel::<W, 2, 1>(xp, wp.add(j * ws), k, ws)),
                3 => spread(&kernel::<W, 3, 1>(xp, wp.add(j * ws), k, ws)),
                _ => spread(&kernel::<W, 4, 1>(xp, wp.add(j * ws), k, ws)),
            }
        };
        for i in 0..mr {
            tile[i][j] = col[i][0];
        }
    }
    tile
}

/// Bytes of `x` one step of [`strip_kernel`] covers (`mr` rows of a slice of `k`): they stay
/// in L1 while every tile of the strip streams its weight rows past them from L2. Without
/// steps, rows longer than this (the down projection's `k = 2816`: 33 KiB for 3 rows) spill
/// out of a 32 KiB L1 and every tile re-reads them from L2 beside its weights.
const STEP_X_BYTES: usize = 16 << 10;

/// The most tiles in one strip: [`STRIP_ROWS`] rows as row-major tiles at least 3 wide (40),
/// or as rows packed as streams, whose tiles end at each panel (15 panels of 3 tiles for
/// `nr = 3`).
const STRIP_TILES: usize = 45;

/// `mr` rows of `x` against the weight rows `map` places in `w`: `out[i · map.count + j]`.
fn strip_typed<W: Load8>(
    _isa: Avx2,
    x: &[f32],
    k: usize,
    mr: usize,
    w: &[W],
    map: RowMap,
    out: &mut [f32],
) {
    map.assert_operands(mr, NR_FOR_MR.len(), x.len(), k, w.len(), out.len());
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    // SAFETY: `_isa` proves the features; x holds mr rows of k, w every row `map` places
    // (asserted above, each row k long and rows `map.stride ≥ k` apart within a run), out
    // mr · map.count results, and map.count ≤ STRIP_ROWS.
    unsafe {
        match mr {
            1 => strip_kernel::<W, 1, 8>(xp, k, wp, map, out),
            2 => strip_kernel::<W, 2, 5>(xp, k, wp, map, out),
            3 => strip_kernel::<W, 3, 4>(xp, k, wp, map, out),
            _ => strip_kernel::<W, 4, 3>(xp, k, wp, map, out),
        }
    }
}

/// The tiles of a strip, `MR × nr` each with `nr ≤ NR` (narrower ones where a run of rows
/// `stride` apart ends: at a panel's end, or the strip's). Where `MR` rows of `k` outgrow
/// [`STEP_X_BYTES`], `k` goes in steps: every tile runs [`span`] over one step of chunks, its
/// accumulators parked in memory until the next step (the same bits as one pass, see [`span`]),
/// so the step's `x` rows are read from L2 once and from L1 by every other tile. A narrower
/// tile runs as `nr` columns of `MR × 1`.
///
/// # Safety
/// AVX2/FMA/F16C present; `x` valid for `MR·k` reads (row stride `k`), `w` for `map.len(k)`
/// with `map.stride ≥ k`; `out` holds `MR · map.count`; `map.count ≤ STRIP_ROWS`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn strip_kernel<W: Load8, const MR: usize, const NR: usize>(
    x: *const f32,
    k: usize,
    w: *const W,
    map: RowMap,
    out: &mut [f32],
) {
    let count = map.count;
    // (first row, width) of each tile.
    let mut tiles = [(0usize, 0usize); STRIP_TILES];
    let (mut j, mut n) = (0, 0);
    while j < count {
        let nr = NR.min(map.run(j));
        assert!(
            n < STRIP_TILES,
            "strip of {count} rows needs more than {STRIP_TILES} tiles"
        );
        tiles[n] = (j, nr);
        n += 1;
        j += nr;
    }
    let tiles = &tiles[..n];
    let chunks = k.div_ceil(LANES);
    let most = (STEP_X_BYTES / (MR * LANES * size_of::<f32>())).max(1);
    let steps = chunks.div_ceil(most);
    if steps <= 1 {
        for &(j, nr) in tiles {
            // SAFETY: rows j..j + nr lie map.stride apart inside w (one run), k elements each.
            let wj = unsafe { w.add(map.at(j)) };
            if nr == NR {
                // SAFETY: as above.
                let r = unsafe { kernel::<W, MR, NR>(x, wj, k, map.stride) };
                put_tile(out, count, j, &r);
            } else {
                for c in 0..nr {
                    // SAFETY: as above; row j + c.
                    let r = unsafe { kernel::<W, MR, 1>(x, wj.add(c * map.stride), k, k) };
                    put_tile(out, count, j + c, &r);
                }
            }
        }
        return;
    }
    let per = chunks.div_ceil(steps);
    let zero = _mm256_setzero_ps();
    // Written at the first step, before any read (zeroing all of them up front would cost
    // 32 KiB of stores per strip).
    let mut wide = [const { MaybeUninit::<[[__m256; NR]; MR]>::uninit() }; STRIP_TILES];
    let mut narrow = [const { MaybeUninit::<[[__m256; 1]; MR]>::uninit() }; STRIP_ROWS];
    for step in 0..steps {
        let span_chunks = step * per..((step + 1) * per).min(chunks);
        for (t, &(j, nr)) in tiles.iter().enumerate() {
            // SAFETY: as above.
            let wj = unsafe { w.add(map.at(j)) };
            if nr == NR {
                if step == 0 {
                    wide[t].write([[zero; NR]; MR]);
                }
                // SAFETY: written at step 0 (above); as above for the operands, and
                // span_chunks ends at or before k.div_ceil(LANES).
                unsafe {
                    let acc = wide[t].assume_init_mut();
                    span(x, wj, k, map.stride, span_chunks.clone(), acc);
                }
            } else {
                for c in 0..nr {
                    if step == 0 {
                        narrow[j + c].write([[zero; 1]; MR]);
                    }
                    // SAFETY: as for the wide tiles; row j + c.
                    unsafe {
                        let acc = narrow[j + c].assume_init_mut();
                        span(x, wj.add(c * map.stride), k, k, span_chunks.clone(), acc);
                    }
                }
            }
        }
    }
    for (t, &(j, nr)) in tiles.iter().enumerate() {
        if nr == NR {
            // SAFETY: written at step 0.
            let r = reduce(unsafe { wide[t].assume_init_ref() });
            put_tile(out, count, j, &r);
        } else {
            for c in 0..nr {
                // SAFETY: written at step 0.
                let r = reduce(unsafe { narrow[j + c].assume_init_ref() });
                put_tile(out, count, j + c, &r);
            }
        }
    }
}

/// Writes an `MR × N` result to columns `j..j + N` of a strip's `out` (rows `count` apart).
#[inline]
fn put_tile<const MR: usize, const N: usize>(
    out: &mut [f32],
    count: usize,
    j: usize,
    r: &[[f32; N]; MR],
) {
    for (i, row) in r.iter().enumerate() {
        out[i * count + j..i * count + j + N].copy_from_slice(row);
    }
}

#[allow(clippy::too_many_arguments)]
fn streams_typed<W: Load8>(
    _isa: Avx2,
    x: &[f32],
    k: usize,
    mr: usize,
    w: &[W],
    stride: usize,
    panels: Range<usize>,
    out: &mut [f32],
) {
    let count = panels.len();
    assert!((1..=PANEL_MR).contains(&mr), "stream tile of {mr} rows");
    assert_stream_operands(x.len(), k, mr, w.len(), stride, &panels, out.len());
    let xp = x.as_ptr();
    for (qi, q) in panels.enumerate() {
        // Row r of panel q: k elements at r·stride + q·k.
        let rows = w.as_ptr().wrapping_add(q * k);
        let mut put = |r0: usize, tile: Tile, nr: usize| {
            for (i, tile_row) in tile.iter().enumerate().take(mr) {
                let at = i * count * PANEL + qi * PANEL + r0;
                out[at..at + nr].copy_from_slice(&tile_row[..nr]);
            }
        };
        // SAFETY: `_isa` proves the features; x holds mr rows of k elements, and every row
        // the tiles read (r < PANEL of panel q) lies inside `w` (asserted above).
        unsafe {
            match mr {
                1 => put(0, spread(&kernel::<W, 1, 8>(xp, rows, k, stride)), 8),
                // Each weight row is read once for both rows of x: the panel in two tiles.
                _ => {
                    put(0, spread(&kernel::<W, 2, 5>(xp, rows, k, stride)), 5);
                    let rest = rows.add(5 * stride);
                    put(5, spread(&kernel::<W, 2, 3>(xp, rest, k, stride)), 3);
                }
            }
        }
    }
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

/// The register micro-kernel: `MR` rows of `x` against `NR` rows of `w`, one 8-lane accumulator
/// per output, walking `k` in order (canonical order, see the module docs of `linalg`): [`span`]
/// over every chunk, then [`reduce`].
///
/// # Safety
/// AVX2/FMA/F16C present; `x` valid for `MR*k` reads (row stride `k`), `w` for `NR` rows of `k`
/// reads `ws` elements apart.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kernel<W: Load8, const MR: usize, const NR: usize>(
    x: *const f32,
    w: *const W,
    k: usize,
    ws: usize,
) -> [[f32; NR]; MR] {
    let mut acc = [[_mm256_setzero_ps(); NR]; MR];
    // SAFETY: as this function's contract.
    unsafe { span(x, w, k, ws, 0..k.div_ceil(LANES), &mut acc) };
    reduce(&acc)
}

/// Adds chunks `chunks` (of [`LANES`] elements; the last of `k` may be partial) of the products
/// of `MR` rows of `x` with `NR` rows of `w` into `acc`, in order: a run of spans over
/// consecutive chunks leaves the bits of one span over all of them (the accumulators are the
/// whole state, so parking them in memory between spans changes nothing). Each chunk keeps the
/// vectors of the shorter side in registers and streams the other side's past them, so
/// `MR·NR + min(MR, NR) + 1` registers are live.
///
/// # Safety
/// AVX2/FMA/F16C present; `chunks.end ≤ k.div_ceil(LANES)`; `x` valid for `MR*k` reads (row
/// stride `k`), `w` for `NR` rows of `k` reads `ws` elements apart.
// Index loops keep the accumulator grid explicit; LLVM unrolls them into registers.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn span<W: Load8, const MR: usize, const NR: usize>(
    x: *const f32,
    w: *const W,
    k: usize,
    ws: usize,
    chunks: Range<usize>,
    acc: &mut [[__m256; NR]; MR],
) {
    debug_assert!(chunks.end <= k.div_ceil(LANES), "{chunks:?} of k = {k}");
    // A local copy, so the accumulators live in registers through the loop.
    let mut a = *acc;
    let full = k / LANES;
    for c in chunks.start..chunks.end.min(full) {
        let off = c * LANES;
        if MR <= NR {
            // The x vectors stay in registers while the weight vectors stream past them.
            let mut xv = [_mm256_setzero_ps(); MR];
            for (i, v) in xv.iter_mut().enumerate() {
                // SAFETY: off + 8 ≤ k, so this reads inside row i of x.
                *v = unsafe { _mm256_loadu_ps(x.add(i * k + off)) };
            }
            for j in 0..NR {
                // SAFETY: off + 8 ≤ k, so this reads inside row j of w.
                let wv = unsafe { W::load(w.add(j * ws + off)) };
                for i in 0..MR {
                    a[i][j] = _mm256_fmadd_ps(xv[i], wv, a[i][j]);
                }
            }
        } else {
            // Taller than wide: the weight vectors stay, the x vectors stream.
            let mut wv = [_mm256_setzero_ps(); NR];
            for (j, v) in wv.iter_mut().enumerate() {
                // SAFETY: off + 8 ≤ k, so this reads inside row j of w.
                *v = unsafe { W::load(w.add(j * ws + off)) };
            }
            for i in 0..MR {
                // SAFETY: off + 8 ≤ k, so this reads inside row i of x.
                let xv = unsafe { _mm256_loadu_ps(x.add(i * k + off)) };
                for j in 0..NR {
                    a[i][j] = _mm256_fmadd_ps(xv, wv[j], a[i][j]);
                }
            }
        }
    }
    let rem = k % LANES;
    if rem != 0 && chunks.end > full {
        let off = full * LANES;
        let mut xv = [_mm256_setzero_ps(); MR];
        for (i, v) in xv.iter_mut().enumerate() {
            // SAFETY: row i has exactly rem elements left.
            *v = unsafe { load_partial(x.add(i * k + off), rem) };
        }
        for j in 0..NR {
            // SAFETY: row j has exactly rem elements left.
            let wv = unsafe { load_partial(w.add(j * ws + off), rem) };
            for i in 0..MR {
                a[i][j] = _mm256_fmadd_ps(xv[i], wv, a[i][j]);
            }
        }
    }
    *acc = a;
}

/// The canonical sums of an `MR×NR` grid of accumulators: eight at a time through [`hsum8`]
/// (a third of the instructions of eight [`hsum`]s, the same bits), the last one or two alone.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce<const MR: usize, const NR: usize>(acc: &[[__m256; NR]; MR]) -> [[f32; NR]; MR] {
    let mut out = [[0.0; NR]; MR];
    let total = MR * NR;
    let mut base = 0;
    while base < total {
        let len = (total - base).min(LANES);
        if len <= 2 {
            for idx in base..total {
                out[idx / NR][idx % NR] = hsum(acc[idx / NR][idx % NR]);
            }
            break;
        }
        let mut group = [_mm256_setzero_ps(); LANES];
        for (g, v) in group.iter_mut().enumerate().take(len) {
            *v = acc[(base + g) / NR][(base + g) % NR];
        }
        let mut sums = [0.0f32; LANES];
        // SAFETY: `sums` holds 8 floats.
        unsafe { _mm256_storeu_ps(sums.as_mut_ptr(), hsum8(group)) };
        for (g, &v) in sums.iter().enumerate().take(len) {
            out[(base + g) / NR][(base + g) % NR] = v;
        }
        base += LANES;
    }
    out
}

/// [`hsum`] of eight vectors at once, lane `j` of the result the sum of `v[j]`: the same
/// additions of the same operands (`t + 4`, then `t + 2`, then `t + 1`), done for all eight
/// side by side.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum8(v: [__m256; LANES]) -> __m256 {
    // [a, b] → [a_t + a_{t+4} | b_t + b_{t+4}] (t < 4).
    let halves = |a: __m256, b: __m256| {
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(a, b),
            _mm256_permute2f128_ps::<0x31>(a, b),
        )
    };
    // Per 128-bit lane [a0, a1, a2, a3], [b0, b1, b2, b3] → [a0 + a2, a1 + a3, b0 + b2, b1 + b3].
    let quarters = |a: __m256, b: __m256| {
        _mm256_add_ps(
            _mm256_shuffle_ps::<0b01_00_01_00>(a, b),
            _mm256_shuffle_ps::<0b11_10_11_10>(a, b),
        )
    };
    let c0123 = quarters(halves(v[0], v[1]), halves(v[2], v[3]));
    let c4567 = quarters(halves(v[4], v[5]), halves(v[6], v[7]));
    // Per 128-bit lane [a0 + a1, a2 + a3, b0 + b1, b2 + b3]: the sums of v0, v2, v4, v6 in the
    // low lane and of v1, v3, v5, v7 in the high one.
    let d = _mm256_add_ps(
        _mm256_shuffle_ps::<0b10_00_10_00>(c0123, c4567),
        _mm256_shuffle_ps::<0b11_01_11_01>(c0123, c4567),
    );
    _mm256_permutevar8x32_ps(d, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// The canonical halving tree: lanes `t + 4`, then `t + 2`, `t + 1` are added in.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let b = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    let d = _mm_add_ss(c, _mm_movehdup_ps(c));
    _mm_cvtss_f32(d)
}

fn convert_typed<W: Load8>(_isa: Avx2, src: &[W], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "convert: lengths differ");
    let full = src.len() / LANES;
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    // SAFETY: `_isa` proves the features; every chunk c < full lies inside both slices.
    unsafe { convert_kernel(s, d, full) };
    let tail = full * LANES;
    // SAFETY: the tail is shorter than one chunk and inside `src`.
    let v = unsafe { load_partial(s.add(tail), src.len() - tail) };
    let mut buf = [0.0f32; LANES];
    // SAFETY: `_isa` proves the features; buf holds 8 floats.
    unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), v) };
    dst[tail..].copy_from_slice(&buf[..src.len() - tail]);
}

/// # Safety
/// AVX2/FMA/F16C present; `s` and `d` valid for `full*8` elements.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn convert_kernel<W: Load8>(s: *const W, d: *mut f32, full: usize) {
    for c in 0..full {
        // SAFETY: chunk c is inside both buffers (caller contract).
        unsafe { _mm256_storeu_ps(d.add(c * LANES), W::load(s.add(c * LANES))) };
    }
}
