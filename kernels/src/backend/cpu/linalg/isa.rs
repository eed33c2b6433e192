//! The instruction set this process computes with ([`Backend`], detected once by [`backend`]),
//! and what each of its operations dispatches to: the kernels of `x86_avx512`, `x86_avx2` or
//! `scalar`, and the facts about them the driver plans with (tile shapes, layouts, which
//! packed weights are read in place).

use std::ops::Range;
use std::sync::OnceLock;

use super::{
    MAX_MR, MAX_NR, PANEL, Packed, RowMap, Tile, WeightRef, bandwidth, driver, packed, scalar,
};
#[cfg(target_arch = "x86_64")]
use super::{x86_avx2, x86_avx512};

/// The instruction set chosen for this process, carrying the proof that its features exist.
#[derive(Clone, Copy, Debug)]
pub(super) enum Backend {
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
pub(super) fn backend() -> Backend {
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
    pub(super) fn tile_mr(self) -> usize {
        match self {
            Backend::Scalar(_) => scalar::NR_FOR_MR.len(),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(_) => x86_avx2::NR_FOR_MR.len(),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(_) => x86_avx512::NR_FOR_MR.len(),
        }
    }

    /// The widest `nr` the `mr`-row micro-kernel keeps in registers (`1 ≤ mr ≤ tile_mr()`).
    pub(super) fn nr_for(self, mr: usize) -> usize {
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
    pub(super) fn tile(self, x: &[f32], k: usize, mr: usize, w: WeightRef<'_>, nr: usize) -> Tile {
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
    pub(super) fn tile_streamed(
        self,
        x: &[f32],
        k: usize,
        mr: usize,
        w: WeightRef<'_>,
        nr: usize,
    ) -> Tile {
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
    pub(super) fn strip(
        self,
        x: &[f32],
        k: usize,
        mr: usize,
        w: WeightRef<'_>,
        map: RowMap,
        out: &mut [f32],
    ) {
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

    /// [`super::scaled_dots`] on this instruction set (operands checked by the caller).
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
                let keys = w.slice(j * k..(j + nr) * k);
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

    /// [`super::weighted_rows`] on this instruction set (operands checked by the caller).
    pub(super) fn weighted_rows(
        self,
        p: &[f32],
        stride: usize,
        m: usize,
        v: WeightRef<'_>,
        n: usize,
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        match self {
            Backend::Avx2(isa) => return isa.weighted_rows(p, stride, m, v, n, out),
            Backend::Avx512(isa) => return isa.weighted_rows(p, stride, m, v, n, out),
            Backend::Scalar(_) => {}
        }
        // One `axpy` per row of `v` (widened to f32 once) and row of `out`.
        let k = out.len() / m.max(1);
        let mut widened = Vec::new();
        for t in 0..n {
            let row = match v {
                WeightRef::F32(v) => &v[t * k..(t + 1) * k],
                _ => {
                    widened.resize(k, 0.0);
                    self.convert(v.slice(t * k..(t + 1) * k), &mut widened);
                    &widened[..]
                }
            };
            for (i, y) in out.chunks_exact_mut(k.max(1)).enumerate() {
                self.axpy(p[i * stride + t], row, y);
            }
        }
    }

    /// The layout this CPU's decode kernel reads weights of `element_bytes` (2 or 4) fastest in
    /// (see `packed`); `None` without such a kernel.
    pub(super) fn pack_layout(self, element_bytes: usize) -> Option<packed::Layout> {
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
    pub(super) fn pack_layouts(self) -> &'static [packed::Layout] {
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
    pub(super) fn prefill_panels(self, w: driver::Weights<'_>, m: usize) -> bool {
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

    /// Whether `driver::compute_panel_blocks` reads `w` where it lies, in its dtype, rather
    /// than interleaving each block into f32 panels: panels always ([`Backend::panels_cached`]);
    /// streams ([`Backend::streams_cached`]) where they are f32 on AVX-512 (nothing to widen)
    /// and every stream AVX2 runs there (16-bit ones, widened in registers as decode widens
    /// them).
    pub(super) fn packed_in_place(self, w: &Packed) -> bool {
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
    pub(super) fn panel_mr(self) -> usize {
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
    pub(super) fn panels(
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
    pub(super) fn panels_cached(
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
    pub(super) fn streams_cached(
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
    pub(super) fn unpack(
        self,
        src: WeightRef<'_>,
        k: usize,
        rows: usize,
        dst: &mut [f32],
        stride: usize,
    ) {
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
    pub(super) fn interleave_panel(
        self,
        rows: &[Option<WeightRef<'_>>; PANEL],
        k: usize,
        dst: &mut [f32],
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(isa) => isa.interleave_panel(rows, k, dst),
            _ => unreachable!("no panel kernel for {self:?}"),
        }
    }

    /// Converts f16/bf16 weights to f32 (exactly); `dst.len() == src.len()`.
    pub(super) fn convert(self, src: WeightRef<'_>, dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "convert: lengths differ");
        match self {
            Backend::Scalar(isa) => isa.convert(src, dst),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(isa) => isa.convert(src, dst),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512(isa) => isa.convert(src, dst),
        }
    }

    pub(super) fn axpy(self, alpha: f32, x: &[f32], y: &mut [f32]) {
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
    pub(super) fn fma_chains(self, iters: usize, seed: f32) -> (f32, usize) {
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
    pub(super) fn read(self, data: &[f32], pattern: bandwidth::ReadPattern) -> f32 {
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
