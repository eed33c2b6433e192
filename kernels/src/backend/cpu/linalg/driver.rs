//! Threading and cache blocking for [`super::matmul_t`]: splits the weight rows (`n`) across the
//! pool, walks each thread's rows in L2-sized blocks, and drives the per-ISA micro-kernel over
//! `mr × nr` tiles. It never splits `k`, so the per-element reduction order stays canonical.

use std::ops::Range;

use super::packed::{PANEL, Packed, unpack_rows};
use super::{Backend, MAX_MR, MAX_PANEL_MR, WeightRef};

/// The weights of one product.
#[derive(Clone, Copy)]
pub(super) enum Weights<'a> {
    /// Row-major `[n, k]`.
    Rows(WeightRef<'a>),
    /// Panels (see `packed`).
    Packed(&'a Packed),
}

/// Products with fewer multiply-adds than this run inline: dispatching to the pool costs more.
const INLINE_MACS: usize = 1 << 18;

/// Bytes of f32 weight rows per cache block: half of a 2 MiB L2, leaving room for `x` tiles.
const BLOCK_BYTES: usize = 1 << 20;

/// Cache blocks are multiples of this many rows (a multiple of the common micro-kernel widths,
/// so tiles narrower than `nr` are rare).
const ROW_ALIGN: usize = 24;

/// The output matrix, shared by threads that write disjoint column ranges.
#[derive(Clone, Copy)]
struct SharedOut {
    ptr: *mut f32,
    m: usize,
    n: usize,
}

// SAFETY: each thread writes only the columns of the ranges it claimed (`for_each_share` hands
// out disjoint ones), and the `&mut [f32]` the pointer came from outlives every use (`for_each_thread` joins
// before `matmul_t` returns).
unsafe impl Send for SharedOut {}
// SAFETY: see `Send`.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn new(out: &mut [f32], m: usize, n: usize) -> SharedOut {
        SharedOut {
            ptr: out.as_mut_ptr(),
            m,
            n,
        }
    }

    /// # Safety
    /// `row < m`, `col < n`, and no other thread writes `(row, col)` concurrently.
    #[inline]
    unsafe fn write(self, row: usize, col: usize, value: f32) {
        debug_assert!(row < self.m && col < self.n);
        // SAFETY: in bounds by the caller's contract; the buffer holds m*n elements.
        unsafe { *self.ptr.add(row * self.n + col) = value };
    }
}

/// Rows of `w` per cache block for reduction length `k`.
fn block_rows(k: usize) -> usize {
    let rows = BLOCK_BYTES / (4 * k.max(1));
    (rows / ROW_ALIGN).max(1) * ROW_ALIGN
}

#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_t(
    backend: Backend,
    pool: &rayon::ThreadPool,
    x: &[f32],
    m: usize,
    k: usize,
    w: Weights<'_>,
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    let threads = pool.current_num_threads();
    if threads <= 1 || m * n * k < INLINE_MACS {
        matmul_t_here(backend, x, m, k, w, n, bias, out);
        return;
    }
    let shared = SharedOut::new(out, m, n);
    let unit = unit_rows(m, k, w);
    super::for_each_share(pool, n.div_ceil(unit), &|units| {
        let cols = units.start * unit..(units.end * unit).min(n);
        compute_rows(backend, x, m, k, w, bias, shared, cols);
    });
}

/// Weight bytes per unit of work when decoding (`m ≤ MAX_MR`): small enough that the threads
/// finish a product within a few µs of each other, large enough that claiming units costs
/// nothing measurable (threads claim many at a time; see `for_each_share`).
const DECODE_UNIT_BYTES: usize = 16 << 10;

/// Weight rows per unit of work handed to the threads: for decode about [`DECODE_UNIT_BYTES`]
/// (whole panels), for more rows of `x` one cache block.
fn unit_rows(m: usize, k: usize, w: Weights<'_>) -> usize {
    if m > MAX_MR {
        return block_rows(k);
    }
    let element = match w {
        Weights::Rows(w) => w.element_size(),
        Weights::Packed(_) => 2,
    };
    let rows = DECODE_UNIT_BYTES / (element * k.max(1));
    rows.div_ceil(PANEL).max(1) * PANEL
}

/// [`matmul_t`] on the calling thread.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_t_here(
    backend: Backend,
    x: &[f32],
    m: usize,
    k: usize,
    w: Weights<'_>,
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    let shared = SharedOut::new(out, m, n);
    compute_rows(backend, x, m, k, w, bias, shared, 0..n);
}

/// Computes output columns `cols` (weight rows) for all `m` rows of `x`.
#[allow(clippy::too_many_arguments)]
fn compute_rows(
    backend: Backend,
    x: &[f32],
    m: usize,
    k: usize,
    w: Weights<'_>,
    bias: Option<&[f32]>,
    out: SharedOut,
    cols: Range<usize>,
) {
    if cols.is_empty() {
        return;
    }
    match w {
        Weights::Packed(w) if m <= MAX_MR => compute_panels(backend, x, m, k, w, bias, out, cols),
        _ => compute_blocks(backend, x, m, k, w, bias, out, cols),
    }
}

/// Panels per kernel call in [`compute_panels`]: their results fit a small stack buffer, and
/// the panels themselves (≤ 1.4 MiB at k = 2816 in f16) stay in L2 for the next rows of `x`.
const PANELS_PER_CALL: usize = 16;

/// Decode with packed weights: the panels of `cols` against all `m ≤ MAX_MR` rows of `x`.
#[allow(clippy::too_many_arguments)]
fn compute_panels(
    backend: Backend,
    x: &[f32],
    m: usize,
    k: usize,
    w: &Packed,
    bias: Option<&[f32]>,
    out: SharedOut,
    cols: Range<usize>,
) {
    debug_assert!(
        cols.start.is_multiple_of(PANEL),
        "thread ranges start on a panel"
    );
    let mut results = [0.0f32; MAX_PANEL_MR * PANELS_PER_CALL * PANEL];
    let (first, end) = (cols.start / PANEL, cols.end.div_ceil(PANEL));
    let mut q = first;
    while q < end {
        let count = (end - q).min(PANELS_PER_CALL);
        let panels = w.panels(q..q + count);
        let mut i = 0;
        while i < m {
            // Four rows go as two pairs: a 4-row panel tile does not fit in the registers.
            let mr = if m - i == 4 {
                2
            } else {
                (m - i).min(MAX_PANEL_MR)
            };
            let width = count * PANEL;
            backend.panels(&x[i * k..(i + mr) * k], k, mr, panels, count, &mut results);
            for ii in 0..mr {
                let row = &results[ii * width..(ii + 1) * width];
                for (c, &v) in row.iter().enumerate() {
                    let col = q * PANEL + c;
                    if col >= cols.end {
                        break;
                    }
                    // SAFETY: i + ii < m and col < cols.end ≤ n; col lies in this call's
                    // `cols`, which no other thread writes.
                    unsafe { out.write(i + ii, col, with_bias(v, bias, col)) };
                }
            }
            i += mr;
        }
        q += count;
    }
}

fn with_bias(v: f32, bias: Option<&[f32]>, col: usize) -> f32 {
    match bias {
        Some(b) => v + b[col],
        None => v,
    }
}

/// Row-major weights, or packed ones for more than [`MAX_MR`] rows of `x`: L2-sized blocks of
/// `cols`, each applied to all `m` rows of `x`, `mr` rows at a time.
#[allow(clippy::too_many_arguments)]
fn compute_blocks(
    backend: Backend,
    x: &[f32],
    m: usize,
    k: usize,
    w: Weights<'_>,
    bias: Option<&[f32]>,
    out: SharedOut,
    cols: Range<usize>,
) {
    let nb = block_rows(k);
    // With several x tiles per block, widening f16/bf16 once into an f32 panel beats widening in
    // registers for every tile (the conversion is exact, so the bits do not change). Packed
    // weights are always widened (and laid out as rows) here.
    let pack = match w {
        Weights::Rows(w) => m > MAX_MR && !matches!(w, WeightRef::F32(_)),
        Weights::Packed(_) => true,
    };
    PANEL_SCRATCH.with_borrow_mut(|panel| {
        if pack {
            panel.resize(nb.min(cols.len()) * k, 0.0);
        }
        let mut jb = cols.start;
        while jb < cols.end {
            let je = (jb + nb).min(cols.end);
            let rows = je - jb;
            let block = match w {
                Weights::Rows(w) if !pack => w.slice(jb * k..je * k),
                Weights::Rows(w) => {
                    let panel = &mut panel[..rows * k];
                    backend.convert(w.slice(jb * k..je * k), panel);
                    WeightRef::F32(panel)
                }
                Weights::Packed(w) => {
                    let panel = &mut panel[..rows * k];
                    unpack_rows(w, jb..je, panel);
                    WeightRef::F32(panel)
                }
            };
            let mut i = 0;
            while i < m {
                let mr = (m - i).min(MAX_MR);
                let nr_full = backend.nr_for(mr);
                let xs = &x[i * k..(i + mr) * k];
                let mut j = 0;
                while j < rows {
                    let nr = if rows - j >= nr_full {
                        nr_full
                    } else {
                        rows - j
                    };
                    let tile = backend.tile(xs, k, mr, block.slice(j * k..(j + nr) * k), nr);
                    for (ii, tile_row) in tile.iter().enumerate().take(mr) {
                        for (jj, &v) in tile_row.iter().enumerate().take(nr) {
                            let col = jb + j + jj;
                            // SAFETY: i + ii < m and col < n; col lies in this call's `cols`, which
                            // no other thread writes.
                            unsafe { out.write(i + ii, col, with_bias(v, bias, col)) };
                        }
                    }
                    j += nr;
                }
                i += mr;
            }
            jb = je;
        }
    });
}

thread_local! {
    /// The f32 panel [`compute_blocks`] widens weights into, kept per thread across calls: a
    /// fresh megabyte per call would be a fresh mapping, faulted in page by page.
    static PANEL_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}
