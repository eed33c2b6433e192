//! Weights (f32, f16, bf16) repacked for decode, in one of two layouts, whichever the process's
//! decode kernel reads best (the CPU decides: `Backend::pack_layout`; docs/BENCHMARKS.md has
//! the figures):
//!
//! - **Panels** (AMD from Zen 4: every dtype with AVX-512, 16-bit weights with AVX2; Intel from
//!   Sapphire Rapids): panels of [`PANEL`] weight rows whose chunks `C` ([`CHUNK`]: one
//!   AVX-512 vector, two AVX2 ones) are interleaved, so the decode kernel reads one sequential stream per panel (AVX-512 with
//!   software prefetch ahead of it; AVX2 without, which a Zen 4 core reads faster). Prefill on
//!   AVX-512 runs the same kernel over an L2-sized block of panels where they lie, so a tile's
//!   weight rows are one stream from L2 there too; AVX2 widens each block back into f32 rows.
//!   A 16-bit weight is half the bytes of an f32 one but costs the same instructions per
//!   element, so with a row-major matrix the core's out-of-order window covers half as many
//!   bytes of the eight row streams, and the hardware prefetchers of a Sapphire Rapids core
//!   fell behind. `n` is padded with zero rows to a multiple of [`PANEL`], `k` with zeros to a
//!   multiple of `C` (`kp`); element `(j, l)` lives at
//!   `(j / PANEL) · PANEL · kp + ((l / C) · PANEL + j % PANEL) · C + l % C`.
//! - **Streams** (the rest of AVX2, and AVX-512 on Intel before Sapphire Rapids): [`PANEL`]
//!   streams, stream `r` holding rows `r, r + PANEL, r + 2·PANEL, …` whole, one after the
//!   other; element `(j, l)` lives at `(j % PANEL) · s + (j / PANEL) · k + l`, the stream
//!   stride `s` a little over `⌈n / PANEL⌉ · k` so that the streams do not start at one offset
//!   modulo 4 or 64 KiB (`stream_stride`). The decode kernel's 1×8 tile reads the eight rows
//!   of one panel side by side, and the next panel's rows continue each stream, so a core
//!   reads eight long sequential streams. A Zen 3 core reads that pattern ~25% faster than one
//!   stream (prefetched or not) and than eight rows that jump every tile (row-major), which is
//!   what its hardware prefetchers like; an Ice Lake core reads it ~1.3× faster than one
//!   stream (whose L2 streamer runs ahead of one stream a 4 KiB page at a time). Prefill on
//!   AVX-512 widens each L2-sized block of streams into f32 panels.
//!
//! The padding is never read as a result: padded rows are dropped, and padded columns meet the
//! zeros the kernels load for `x` past `k`, which is what the row-major kernels do with their
//! masked tails, so every output keeps the canonical order and its bits. A layout belongs to
//! the process that packed it.

use std::ops::Range;

use half::{bf16, f16};

use super::WeightRef;
use super::arena::{Arena, Element, Slab};
use crate::dtype::DType;

/// Weight rows per panel: the `nr` of the decode micro-kernel.
pub const PANEL: usize = 8;

/// Elements per interleaved chunk of the [`Layout::Panels`] layout: one AVX-512 vector.
pub const CHUNK: usize = 16;

/// The environment variable that overrides the layout weights are packed in, on CPUs whose
/// kernels read both: `panels` or `streams` (to measure both on one machine; `bench-engine`
/// prints which ran).
pub const LAYOUT_ENV: &str = "HELIXFLOW_PACK_LAYOUT";

/// The layout [`LAYOUT_ENV`] names, if it is set to one; any other value is ignored with a
/// warning.
pub(super) fn layout_override() -> Option<Layout> {
    let value = std::env::var(LAYOUT_ENV).ok()?;
    let layout = Layout::named(&value);
    if layout.is_none() {
        tracing::warn!(
            "{LAYOUT_ENV}={value:?} is neither \"panels\" nor \"streams\"; using this CPU's default"
        );
    }
    layout
}

/// Packed weights, in their dtype.
#[derive(Debug)]
pub(super) enum PackedData {
    F32(Slab<f32>),
    F16(Slab<f16>),
    BF16(Slab<bf16>),
}

/// Where the elements of a [`Packed`] matrix lie (the module docs have both layouts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    /// Panels of [`PANEL`] rows, their chunks interleaved: one stream per panel.
    Panels,
    /// [`PANEL`] streams: stream `r` holds rows `r, r + PANEL, r + 2·PANEL, …` one after the
    /// other.
    Streams,
}

impl Layout {
    /// The layout called `name` (`panels` or `streams`, surrounding whitespace ignored).
    pub(super) fn named(name: &str) -> Option<Layout> {
        match name.trim() {
            "panels" => Some(Layout::Panels),
            "streams" => Some(Layout::Streams),
            _ => None,
        }
    }
}

/// A weight matrix `[n, k]` in one of the layouts of the module docs.
#[derive(Debug)]
pub struct Packed {
    pub(super) data: PackedData,
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) layout: Layout,
}

impl Packed {
    /// Repacks row-major weights `[n, k]` (any dtype) into memory of their own, in the layout
    /// this CPU's decode kernel reads weights of their dtype fastest; `None` when its kernels
    /// do not read packed weights (the portable code).
    pub fn new(w: WeightRef<'_>, n: usize, k: usize) -> Option<Packed> {
        Packed::new_in(&Arena::with_region_bytes(0), w, n, k)
    }

    /// [`Packed::new`] into the next slab of `arena` (a model packs its matrices in the order
    /// its forward pass reads them; see `arena`).
    pub fn new_in(arena: &Arena, w: WeightRef<'_>, n: usize, k: usize) -> Option<Packed> {
        let layout = super::backend().pack_layout(w.element_size())?;
        Some(Packed::new_as(arena, w, n, k, layout))
    }

    /// [`Packed::new_in`] in `layout`, which this CPU's kernels must read
    /// ([`Backend::pack_layouts`](super::Backend::pack_layouts)).
    pub(super) fn new_as(
        arena: &Arena,
        w: WeightRef<'_>,
        n: usize,
        k: usize,
        layout: Layout,
    ) -> Packed {
        assert_eq!(w.len(), n * k, "Packed::new: w is not [n, k]");
        assert!(
            super::backend().pack_layouts().contains(&layout),
            "Packed::new: this CPU's kernels do not read {layout:?}"
        );
        let data = match w {
            WeightRef::F32(w) => PackedData::F32(pack(arena, layout, n, k, typed_rows(w, k))),
            WeightRef::F16(w) => PackedData::F16(pack(arena, layout, n, k, typed_rows(w, k))),
            WeightRef::BF16(w) => PackedData::BF16(pack(arena, layout, n, k, typed_rows(w, k))),
        };
        Packed { data, n, k, layout }
    }

    /// [`Packed::new_in`] from the bytes a file stores (a model's weights, memory-mapped):
    /// the little-endian `dtype` elements of `[n, k]` in `parts` of whole rows, concatenated
    /// along rows (q, k and v of a fused projection). Each row is widened from its bytes
    /// straight into the layout, so loading makes no typed copy of the matrix first. Checks
    /// that the parts hold whole rows of `[n, k]` whether it packs or not.
    pub fn from_le_in(
        arena: &Arena,
        dtype: DType,
        parts: &[&[u8]],
        n: usize,
        k: usize,
    ) -> Option<Packed> {
        let row_bytes = k * dtype.size();
        assert!(
            parts.iter().map(|p| p.len()).sum::<usize>() == n * row_bytes
                && parts.iter().all(|p| p.len() % row_bytes.max(1) == 0),
            "Packed::from_le_in: parts are not whole rows of [{n}, {k}]"
        );
        let layout = super::backend().pack_layout(dtype.size())?;
        Some(Packed::from_le_as(arena, dtype, parts, n, k, layout))
    }

    /// [`Packed::from_le_in`] in `layout`, which this CPU's kernels must read (`parts` whole
    /// rows, as `from_le_in` checks).
    pub(super) fn from_le_as(
        arena: &Arena,
        dtype: DType,
        parts: &[&[u8]],
        n: usize,
        k: usize,
        layout: Layout,
    ) -> Packed {
        assert!(
            super::backend().pack_layouts().contains(&layout),
            "Packed::from_le_as: this CPU's kernels do not read {layout:?}"
        );
        let rows = || {
            parts
                .iter()
                .flat_map(|p| p.chunks_exact((k * dtype.size()).max(1)))
        };
        let data = match dtype {
            DType::F32 => PackedData::F32(pack(arena, layout, n, k, le_rows(rows()))),
            DType::F16 => PackedData::F16(pack(arena, layout, n, k, le_rows(rows()))),
            DType::BF16 => PackedData::BF16(pack(arena, layout, n, k, le_rows(rows()))),
        };
        Packed { data, n, k, layout }
    }

    /// Rows (`n`) of the matrix, without padding.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Columns (`k`) of the matrix, without padding.
    pub fn cols(&self) -> usize {
        self.k
    }

    /// Bytes per weight.
    pub(super) fn element_bytes(&self) -> usize {
        match &self.data {
            PackedData::F32(_) => 4,
            PackedData::F16(_) | PackedData::BF16(_) => 2,
        }
    }

    /// Bytes held, padding included (what a decode step reads).
    pub fn bytes(&self) -> usize {
        match &self.data {
            PackedData::F32(w) => w.len() * 4,
            PackedData::F16(w) => w.len() * 2,
            PackedData::BF16(w) => w.len() * 2,
        }
    }

    /// Row `j`, widened to f32, into `out` (`k` elements).
    pub fn row_into(&self, j: usize, out: &mut [f32]) {
        assert!(j < self.n && out.len() == self.k, "Packed::row_into: {j}");
        for (l, o) in out.iter_mut().enumerate() {
            let at = index(self.layout, self.n, self.k, self.element_bytes(), j, l);
            *o = match &self.data {
                PackedData::F32(w) => w[at],
                PackedData::F16(w) => w[at].to_f32(),
                PackedData::BF16(w) => w[at].to_f32(),
            };
        }
    }

    /// All the packed elements, in their dtype.
    pub(super) fn all(&self) -> WeightRef<'_> {
        match &self.data {
            PackedData::F32(w) => WeightRef::F32(w),
            PackedData::F16(w) => WeightRef::F16(w),
            PackedData::BF16(w) => WeightRef::BF16(w),
        }
    }

    /// The layout the elements lie in.
    pub(super) fn layout(&self) -> Layout {
        self.layout
    }

    /// Row `j` (`k` elements in their dtype; the [`Layout::Streams`] layout, where a row lies
    /// whole).
    pub(super) fn row(&self, j: usize) -> WeightRef<'_> {
        assert!(
            self.layout == Layout::Streams && j < self.n,
            "Packed::row {j} of {:?}",
            self.layout
        );
        let at = index(self.layout, self.n, self.k, self.element_bytes(), j, 0);
        self.all().slice(at..at + self.k)
    }

    /// Elements from the start of one stream to the next (the [`Layout::Streams`] layout).
    pub(super) fn stream_stride(&self) -> usize {
        debug_assert_eq!(self.layout, Layout::Streams);
        stream_stride(self.n, self.k, self.element_bytes())
    }

    /// Bytes of one panel ([`PANEL`] rows, padding included) in either layout.
    pub(super) fn panel_bytes(&self) -> usize {
        self.bytes() / self.n.div_ceil(PANEL).max(1)
    }

    /// The packed elements of whole panels `panels`, in their dtype ([`Layout::Panels`]).
    pub(super) fn panels(&self, panels: Range<usize>) -> WeightRef<'_> {
        assert_eq!(
            self.layout,
            Layout::Panels,
            "Packed::panels of {:?}",
            self.layout
        );
        let per = PANEL * padded_k(self.k);
        let range = panels.start * per..panels.end * per;
        match &self.data {
            PackedData::F32(w) => WeightRef::F32(&w[range]),
            PackedData::F16(w) => WeightRef::F16(&w[range]),
            PackedData::BF16(w) => WeightRef::BF16(&w[range]),
        }
    }
}

/// Bytes per cache line.
const LINE: usize = 64;

/// [`Packed::stream_stride`] of an `[n, k]` matrix of `element`-byte weights: the `⌈n / PANEL⌉ · k` elements of a stream,
/// rounded up to whole cache lines and then to 33 lines past a multiple of 4 KiB (a skew of up
/// to 63 unused lines after each stream). Eight streams read side by side then start at eight
/// different offsets modulo 4 KiB, and modulo 64 KiB (the stride in lines is odd). Without the
/// skew, every matrix of the `bench-engine` model has its streams a multiple of 64 KiB apart,
/// and eight streams at one offset modulo 64 KiB read at about half the speed on Zen 3: batch-1
/// decode went from 0.80–0.82 to 0.91–0.97 of the bandwidth ceiling (docs/BENCHMARKS.md).
fn stream_stride(n: usize, k: usize, element: usize) -> usize {
    let per_line = LINE / element;
    let lines = (n.div_ceil(PANEL) * k).div_ceil(per_line);
    let skew = (33 + 64 - lines % 64) % 64;
    (lines + skew) * per_line
}

/// `k` rounded up to whole chunks ([`Layout::Panels`]).
pub(super) fn padded_k(k: usize) -> usize {
    k.div_ceil(CHUNK) * CHUNK
}

/// Position of element `(j, l)` of an `[n, k]` matrix (see the module docs).
fn index(layout: Layout, n: usize, k: usize, element: usize, j: usize, l: usize) -> usize {
    match layout {
        Layout::Panels => {
            let (c, kp) = (CHUNK, padded_k(k));
            (j / PANEL) * PANEL * kp + ((l / c) * PANEL + j % PANEL) * c + l % c
        }
        Layout::Streams => (j % PANEL) * stream_stride(n, k, element) + (j / PANEL) * k + l,
    }
}

/// The operands of a panel kernel (`Backend::panels`, `panels_cached`): `mr` rows of `x` of
/// `k` elements, `count` whole panels of `padded_k(k)` columns, `mr` rows of `count · PANEL`
/// results. Panics where a slice is too short (the kernels read and write through pointers).
pub(super) fn assert_panel_operands(
    x: usize,
    k: usize,
    mr: usize,
    panels: usize,
    count: usize,
    out: usize,
) {
    assert!(
        x >= mr * k && panels >= count * PANEL * padded_k(k) && out >= mr * count * PANEL,
        "panel operands too short"
    );
}

/// The operands of a stream kernel (`Backend::panels` on the `Streams` layout): `mr` rows of
/// `x` of `k` elements, the rows of panels `panels` (`k` elements at `r · stride + q · k`,
/// `r < PANEL`) inside `w`, `mr` rows of `panels.len() · PANEL` results. Panics where a slice
/// is too short.
pub(super) fn assert_stream_operands(
    x: usize,
    k: usize,
    mr: usize,
    w: usize,
    stride: usize,
    panels: &Range<usize>,
    out: usize,
) {
    assert!(
        x >= mr * k
            && stride >= panels.end * k
            && w >= (PANEL - 1) * stride + panels.end * k
            && out >= mr * panels.len() * PANEL,
        "stream operands too short"
    );
}

/// Writes a tile of a panel or stream kernel's results: row `i` of `tile` (row `i` of `x`
/// against `NR` consecutive weight rows, from row `col` of the call's `count` panels) lands
/// at `out[i · count · PANEL + col..]`, as `Backend::panels` lays its results out.
///
/// # Safety
/// `out` is valid for `tile.len() · count · PANEL` writes and `col + NR ≤ count · PANEL`.
#[inline]
pub(super) unsafe fn put_results<const NR: usize>(
    out: *mut f32,
    count: usize,
    col: usize,
    tile: &[[f32; NR]],
) {
    for (i, row) in tile.iter().enumerate() {
        // SAFETY: row i's NR results lie inside `out` (caller contract).
        unsafe {
            std::ptr::copy_nonoverlapping(row.as_ptr(), out.add(i * count * PANEL + col), NR)
        };
    }
}

/// The operands of widening `rows` whole rows of packed panels back into f32 rows of `k`
/// elements, `stride ≥ k` apart (`Backend::unpack`). Panics where a slice is too short.
pub(super) fn assert_unpack_operands(src: usize, k: usize, rows: usize, dst: usize, stride: usize) {
    assert!(
        src >= rows.div_ceil(PANEL) * PANEL * padded_k(k)
            && stride >= k
            && dst >= rows.saturating_sub(1) * stride + k * usize::from(rows > 0),
        "unpack: {rows} rows of {k}, {stride} apart"
    );
}

fn pack<T: Element>(
    arena: &Arena,
    layout: Layout,
    n: usize,
    k: usize,
    mut next_row: impl FnMut(&mut [T]),
) -> Slab<T> {
    let len = match layout {
        Layout::Panels => n.div_ceil(PANEL) * PANEL * padded_k(k),
        Layout::Streams => PANEL * stream_stride(n, k, size_of::<T>()),
    };
    let mut out = arena.alloc(len);
    if k == 0 {
        return out;
    }
    // A run of consecutive elements of a row that stays consecutive in the layout.
    let run = match layout {
        Layout::Panels => CHUNK,
        Layout::Streams => k,
    };
    // Each row passes through this buffer, which stays in L1 or L2, on its way to the layout.
    let mut row = vec![T::default(); k];
    for j in 0..n {
        next_row(&mut row);
        for (c, part) in row.chunks(run).enumerate() {
            let at = index(layout, n, k, size_of::<T>(), j, c * run);
            out[at..at + part.len()].copy_from_slice(part);
        }
    }
    out
}

/// The rows of the row-major `[_, k]` matrix `w`, one per call, for [`pack`].
fn typed_rows<T: Element>(w: &[T], k: usize) -> impl FnMut(&mut [T]) {
    let mut rows = w.chunks_exact(k.max(1));
    move |row| row.copy_from_slice(rows.next().expect("pack reads n rows of w"))
}

/// Rows widened from their little-endian bytes, one per call, for [`pack`].
fn le_rows<'a, T: Element>(mut rows: impl Iterator<Item = &'a [u8]>) -> impl FnMut(&mut [T]) {
    move |row| T::from_le(rows.next().expect("pack reads n rows of bytes"), row)
}

/// Widens the rows `rows` (starting at a panel; the last may end inside one) of `w` into f32
/// rows `stride ≥ k` elements apart in `dst` (`rows.len() · stride` elements).
pub(super) fn unpack_rows(w: &Packed, rows: Range<usize>, dst: &mut [f32], stride: usize) {
    assert!(
        rows.start.is_multiple_of(PANEL)
            && rows.end <= w.n
            && stride >= w.k
            && dst.len() == rows.len() * stride,
        "unpack_rows: {rows:?} of {} rows",
        w.n
    );
    match w.layout {
        Layout::Panels => {
            let panels = w.panels(rows.start / PANEL..rows.end.div_ceil(PANEL));
            super::backend().unpack(panels, w.k, rows.len(), dst, stride);
        }
        Layout::Streams => {
            for (j, out) in rows.zip(dst.chunks_exact_mut(stride.max(1))) {
                super::backend().convert(w.row(j), &mut out[..w.k]);
            }
        }
    }
}
