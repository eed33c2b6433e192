//! f16/bf16 weights repacked for decode: panels of [`PANEL`] weight rows whose chunks (one
//! vector of the instruction set: 16 elements with AVX-512, 8 with AVX2) are interleaved, so the decode kernel reads one sequential stream per panel instead of
//! eight rows at once.
//!
//! A 16-bit weight is half the bytes of an f32 one but costs the same instructions per element,
//! so with a row-major matrix the core's out-of-order window covers half as many bytes of the
//! eight row streams, and the hardware prefetchers, which track a few streams per page, fall
//! behind. One sequential stream with software prefetch ahead of it reads at the machine's
//! bandwidth (docs/BENCHMARKS.md has the figures).
//!
//! Layout: `n` rows are padded with zero rows to a multiple of [`PANEL`], `k` with zeros to a
//! multiple of the chunk `C` (`kp`). Element `(j, l)` lives at
//! `(j / PANEL) · PANEL · kp + ((l / C) · PANEL + j % PANEL) · C + l % C`. The layout belongs to
//! the process that packed it: `C` is the width of the vectors its CPU was found to have.
//! The padding is never read as a result: padded rows are dropped, and padded columns meet the
//! zeros the kernels load for `x` past `k`, which is what the row-major kernels do with their
//! masked tails, so every output keeps the canonical order and its bits.

use std::ops::Range;

use half::{bf16, f16};

use super::WeightRef;
use super::arena::{Arena, Element, Slab};

/// Weight rows per panel: the `nr` of the decode micro-kernel.
pub const PANEL: usize = 8;

/// Elements per interleaved chunk: one vector of the process's instruction set (its lanes).
fn chunk() -> usize {
    super::backend().lanes()
}

/// Packed 16-bit weights.
#[derive(Debug)]
pub(super) enum PackedData {
    F16(Slab<f16>),
    BF16(Slab<bf16>),
}

/// A weight matrix `[n, k]` in the panel layout of the module docs.
#[derive(Debug)]
pub struct Packed {
    pub(super) data: PackedData,
    pub(super) n: usize,
    pub(super) k: usize,
}

impl Packed {
    /// Repacks row-major f16/bf16 weights `[n, k]` into memory of their own; `None` for f32
    /// (the row-major kernels read f32 at the machine's bandwidth already) or when this CPU's
    /// kernels do not read panels.
    pub fn new(w: WeightRef<'_>, n: usize, k: usize) -> Option<Packed> {
        Packed::new_in(&Arena::with_region_bytes(0), w, n, k)
    }

    /// [`Packed::new`] into the next slab of `arena` (a model packs its matrices in the order
    /// its forward pass reads them; see `arena`).
    pub fn new_in(arena: &Arena, w: WeightRef<'_>, n: usize, k: usize) -> Option<Packed> {
        if !super::backend().reads_panels() {
            return None;
        }
        assert_eq!(w.len(), n * k, "Packed::new: w is not [n, k]");
        let data = match w {
            WeightRef::F32(_) => return None,
            WeightRef::F16(w) => PackedData::F16(pack(arena, w, n, k)),
            WeightRef::BF16(w) => PackedData::BF16(pack(arena, w, n, k)),
        };
        Some(Packed { data, n, k })
    }

    /// Rows (`n`) of the matrix, without padding.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Columns (`k`) of the matrix, without padding.
    pub fn cols(&self) -> usize {
        self.k
    }

    /// Bytes held, padding included (what a decode step reads).
    pub fn bytes(&self) -> usize {
        match &self.data {
            PackedData::F16(w) => w.len() * 2,
            PackedData::BF16(w) => w.len() * 2,
        }
    }

    /// Row `j`, widened to f32, into `out` (`k` elements).
    pub fn row_into(&self, j: usize, out: &mut [f32]) {
        assert!(j < self.n && out.len() == self.k, "Packed::row_into: {j}");
        let kp = padded_k(self.k);
        for (l, o) in out.iter_mut().enumerate() {
            let at = index(kp, j, l);
            *o = match &self.data {
                PackedData::F16(w) => w[at].to_f32(),
                PackedData::BF16(w) => w[at].to_f32(),
            };
        }
    }

    /// The packed elements of whole panels `panels`, in their dtype.
    pub(super) fn panels(&self, panels: Range<usize>) -> WeightRef<'_> {
        let per = PANEL * padded_k(self.k);
        let range = panels.start * per..panels.end * per;
        match &self.data {
            PackedData::F16(w) => WeightRef::F16(&w[range]),
            PackedData::BF16(w) => WeightRef::BF16(&w[range]),
        }
    }
}

/// `k` rounded up to whole chunks.
pub(super) fn padded_k(k: usize) -> usize {
    k.div_ceil(chunk()) * chunk()
}

/// Position of element `(j, l)` (see the module docs).
fn index(kp: usize, j: usize, l: usize) -> usize {
    let c = chunk();
    (j / PANEL) * PANEL * kp + ((l / c) * PANEL + j % PANEL) * c + l % c
}

fn pack<T: Element>(arena: &Arena, w: &[T], n: usize, k: usize) -> Slab<T> {
    let kp = padded_k(k);
    let mut out = arena.alloc(n.div_ceil(PANEL) * PANEL * kp);
    for (j, row) in w.chunks_exact(k.max(1)).take(n).enumerate() {
        let width = chunk();
        for (c, part) in row.chunks(width).enumerate() {
            let at = index(kp, j, c * width);
            out[at..at + part.len()].copy_from_slice(part);
        }
    }
    out
}

/// Widens the rows `rows` (starting at a panel; the last may end inside one) of `w` into
/// row-major f32 `dst` (`rows.len() · k` elements).
pub(super) fn unpack_rows(w: &Packed, rows: Range<usize>, dst: &mut [f32]) {
    assert!(
        rows.start.is_multiple_of(PANEL) && rows.end <= w.n && dst.len() == rows.len() * w.k,
        "unpack_rows: {rows:?} of {} rows",
        w.n
    );
    let panels = w.panels(rows.start / PANEL..rows.end.div_ceil(PANEL));
    super::backend().unpack(panels, w.k, rows.len(), dst);
}
