//! Threading and cache blocking for [`super::matmul_t`]: splits the weight rows (`n`) across the
//! pool, walks each thread's rows in L2-sized blocks, and drives the per-ISA micro-kernel over
//! `mr × nr` tiles. It never splits `k`, so the per-element reduction order stays canonical.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::OnceLock;

use super::packed::{Layout, PANEL, Packed, padded_k, unpack_rows};
use super::{Backend, MAX_MR, MAX_PANEL_MR, RowMap, STRIP_ROWS, WeightRef};

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

/// Bytes of weights per cache block (f32 rows, or panels in their dtype): half of the core's
/// L2, leaving room for the `x` tiles streaming past it. Every `x` tile re-reads the whole block, so a block that spills out
/// of L2 is read from L3 once per tile (a Zen 3 core has 512 KiB of L2, the Sapphire Rapids
/// core the 1 MiB blocks were chosen on 2 MiB). Not measured apart: on Zen 3 the prefill
/// matmul did not move with this alone while its tiles spilled (docs/BENCHMARKS.md).
fn block_bytes() -> usize {
    static BYTES: OnceLock<usize> = OnceLock::new();
    *BYTES.get_or_init(|| l2_bytes().unwrap_or(DEFAULT_L2) / 2)
}

/// The L2 assumed where the machine does not say (a common size of server cores).
const DEFAULT_L2: usize = 2 << 20;

/// The first CPU's unified L2 per core, as Linux reports it.
fn l2_bytes() -> Option<usize> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    (0..8).find_map(|index| {
        let read = |name: &str| std::fs::read_to_string(dir.join(format!("index{index}/{name}")));
        let level = read("level").ok()?;
        let kind = read("type").ok()?;
        if level.trim() != "2" || kind.trim() == "Instruction" {
            return None;
        }
        parse_cache_size(&read("size").ok()?)
    })
}

/// `"512K"`, `"2048K"`, `"2M"` or a plain byte count, as in sysfs' `cache/index*/size`.
fn parse_cache_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let value: usize = digits.parse().ok()?;
    let scale = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        _ => return None,
    };
    (value > 0).then(|| value * scale)
}

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

    /// Writes `values` (plus `bias` of their columns, where there is one) to `row` from
    /// column `col` on: one contiguous copy instead of a write per element.
    ///
    /// # Safety
    /// `row < m`, `col + values.len() ≤ n`, and no other thread writes those elements
    /// concurrently.
    #[inline]
    unsafe fn write_row(self, row: usize, col: usize, values: &[f32], bias: Option<&[f32]>) {
        debug_assert!(row < self.m && col + values.len() <= self.n);
        // SAFETY: in bounds by the caller's contract; the buffer holds m*n elements, and no
        // other thread touches these elements while the slice lives.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(self.ptr.add(row * self.n + col), values.len())
        };
        match bias {
            Some(b) => {
                for ((d, &v), &b) in dst.iter_mut().zip(values).zip(&b[col..]) {
                    *d = v + b;
                }
            }
            None => dst.copy_from_slice(values),
        }
    }
}

/// Elements from one widened row to the next in [`compute_blocks`]' scratch block: `k`
/// rounded up to whole cache lines, and to an odd number of them, so that the rows of a tile
/// (and of the strip) start in different L1 sets. With rows a multiple of 4 KiB apart (`k =
/// 1024`) a tile's 3 weight rows and its 4 rows of `x` could all share one set of the 8-way
/// L1: how far apart the two buffers happened to lie moved the f16 prefill matmul of that
/// shape between 64 and 77 GFLOP/s on Zen 4.
fn scratch_stride(k: usize) -> usize {
    const PER_LINE: usize = 64 / size_of::<f32>();
    let lines = k.div_ceil(PER_LINE);
    (lines | 1) * PER_LINE
}

/// Rows of `w` per cache block for reduction length `k`.
fn block_rows(k: usize) -> usize {
    let rows = block_bytes() / (4 * k.max(1));
    (rows / ROW_ALIGN).max(1) * ROW_ALIGN
}

/// Rows per cache block of panels of `element`-byte weights ([`compute_panel_blocks`]): whole
/// panels, as many as fit the block bytes. The panel kernel has no `nr` to align to, and for
/// long rows the coarser [`ROW_ALIGN`] wastes much of the block (`k = 2816` in f32: 24 rows,
/// 264 KiB, against 40 rows, 440 KiB, so each tile of `x` is fetched for 5 panels instead of
/// 3; the prefill matmul of that shape ran 1.03–1.10× faster on Zen 5).
fn panel_block_rows(k: usize, element: usize) -> usize {
    let rows = block_bytes() / (element.max(1) * padded_k(k));
    (rows / PANEL).max(1) * PANEL
}

/// Rows of `w` per cache block, as [`compute_rows`] will walk them for `m` rows of `x`.
fn blocks_of(backend: Backend, m: usize, k: usize, w: Weights<'_>) -> usize {
    if !prefill_on_panels(backend, m, w) {
        return block_rows(k);
    }
    // Packed weights read in place are read in their dtype, others interleaved into f32
    // panels.
    let element = match w {
        Weights::Packed(p) if backend.packed_in_place(p) => p.element_bytes(),
        _ => size_of::<f32>(),
    };
    panel_block_rows(k, element)
}

/// Whether `m` rows of `x` run on the packed-weight kernels over cached blocks
/// ([`compute_panel_blocks`], see [`Backend::prefill_panels`]): on AVX-512 many rows of `x`
/// run on panels (a tile's weight rows stream from L2 as one sequence) whatever layout the
/// weights are stored in; on AVX2 up to 64 rows on 16-bit weights, panels or streams.
fn prefill_on_panels(backend: Backend, m: usize, w: Weights<'_>) -> bool {
    m > backend.tile_mr() && backend.prefill_panels(w, m)
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
    let split = Split::new(n, unit_rows(backend, m, k, w), threads);
    super::for_each_share(pool, split.units, &|units| {
        compute_rows(backend, x, m, k, w, bias, shared, split.cols(units));
    });
}

/// How [`matmul_t`] cuts the `n` weight rows into units of work: whole panels ([`PANEL`] rows),
/// at most `most` rows a unit, and where there are enough panels a number of units the threads
/// divide evenly, so that their shares differ by at most one panel. Prefill units are cache
/// blocks of ~100 rows taking ~1.7 ms each on Zen 4: the o projection's 1024 rows in 9 units of
/// 120 gave one thread 5 and the other 4; as 10 units, 2 threads ran that shape and the fused
/// q/k/v one 1.03–1.05× faster (docs/BENCHMARKS.md, "The engine against llama.cpp").
#[derive(Clone, Copy, Debug, PartialEq)]
struct Split {
    n: usize,
    panels: usize,
    units: usize,
}

impl Split {
    fn new(n: usize, most: usize, threads: usize) -> Split {
        let panels = n.div_ceil(PANEL);
        let per_unit = (most / PANEL).max(1);
        let units = panels
            .div_ceil(per_unit)
            .next_multiple_of(threads.max(1))
            .min(panels);
        Split { n, panels, units }
    }

    /// The weight rows of `units`: unit `u` holds panels `u·P/U..(u + 1)·P/U`.
    fn cols(&self, units: Range<usize>) -> Range<usize> {
        let row = |u: usize| (u * self.panels / self.units * PANEL).min(self.n);
        row(units.start)..row(units.end)
    }
}

/// Products with at most this many rows of `x` are decode: the weights stream once from
/// memory (as panels where they are packed), each unit of work a few KiB of them. Taller ones
/// work on L2-sized blocks: packed weights where they lie (AVX-512, and AVX2's 16-bit ones up
/// to 64 rows of `x`), otherwise rows widened to f32 once per block when the weights are
/// 16-bit.
const DECODE_ROWS: usize = 4;

/// Weight bytes per unit of work when decoding (`m ≤ DECODE_ROWS`): small enough that the threads
/// finish a product within a few µs of each other, large enough that claiming units costs
/// nothing measurable (threads claim many at a time; see `for_each_share`).
const DECODE_UNIT_BYTES: usize = 16 << 10;

/// Weight rows per unit of work handed to the threads: for decode about [`DECODE_UNIT_BYTES`]
/// (whole panels), for more rows of `x` one cache block.
fn unit_rows(backend: Backend, m: usize, k: usize, w: Weights<'_>) -> usize {
    if m > DECODE_ROWS {
        return blocks_of(backend, m, k, w);
    }
    let element = match w {
        Weights::Rows(w) => w.element_size(),
        Weights::Packed(w) => w.element_bytes(),
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
        Weights::Packed(w) if m <= DECODE_ROWS => {
            compute_panels(backend, x, m, k, w, bias, out, cols)
        }
        _ => compute_blocks(backend, x, m, k, w, bias, out, cols),
    }
}

/// The most panels per kernel call in [`compute_panels`]: their results fit a small stack
/// buffer. Fewer where that many would not stay in half the L2 for the next rows of `x`.
const PANELS_PER_CALL: usize = 16;

/// Decode with packed weights: the panels of `cols` against all `m ≤ DECODE_ROWS` rows of `x`.
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
    let panel_mr = backend.panel_mr();
    let per_call = (block_bytes() / w.panel_bytes().max(1)).clamp(1, PANELS_PER_CALL);
    let (first, end) = (cols.start / PANEL, cols.end.div_ceil(PANEL));
    let mut q = first;
    while q < end {
        let count = (end - q).min(per_call);
        let mut i = 0;
        while i < m {
            // Four rows go as two pairs: no panel kernel takes four at once.
            let mr = if m - i == 4 && panel_mr >= 2 {
                2
            } else {
                (m - i).min(panel_mr)
            };
            let width = count * PANEL;
            let xs = &x[i * k..(i + mr) * k];
            backend.panels(xs, k, mr, w, q..q + count, &mut results);
            let (col, valid) = (q * PANEL, width.min(cols.end - q * PANEL));
            for ii in 0..mr {
                let row = &results[ii * width..ii * width + valid];
                // SAFETY: i + ii < m and col + valid ≤ cols.end ≤ n; the columns lie in this
                // call's `cols`, which no other thread writes.
                unsafe { out.write_row(i + ii, col, row, bias) };
            }
            i += mr;
        }
        q += count;
    }
}

/// Row-major weights, or packed ones for more than [`DECODE_ROWS`] rows of `x`: L2-sized blocks of
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
    if prefill_on_panels(backend, m, w) {
        return compute_panel_blocks(backend, x, m, k, w, bias, out, cols);
    }
    if let Weights::Packed(p) = w
        && p.layout() == Layout::Streams
        && let WeightRef::F32(all) = p.all()
    {
        return compute_f32_streams(backend, x, m, k, p, all, bias, out, cols);
    }
    let nb = block_rows(k);
    // With several x tiles per block, widening f16/bf16 once into an f32 panel beats widening in
    // registers for every tile (the conversion is exact, so the bits do not change). Packed
    // weights are always widened (and laid out as rows) here.
    let pack = match w {
        Weights::Rows(w) => m > DECODE_ROWS && !matches!(w, WeightRef::F32(_)),
        Weights::Packed(_) => true,
    };
    // One pass of x tiles over each block (decode, weights as they are): the weights stream from
    // memory once; otherwise the block is cached for every x tile after the first.
    let streamed = !pack && m <= backend.tile_mr();
    // Widened rows lie `ks` apart, weights as they are `k` apart.
    let ks = if pack { scratch_stride(k) } else { k };
    let scratch = if pack { nb.min(cols.len()) * ks } else { 0 };
    let mut results = [0.0f32; MAX_MR * STRIP_ROWS];
    with_scratch(scratch, |panel| {
        let mut jb = cols.start;
        while jb < cols.end {
            let je = (jb + nb).min(cols.end);
            let rows = je - jb;
            let block = match w {
                Weights::Rows(w) if !pack => w.slice(jb * k..je * k),
                Weights::Rows(w) => {
                    let panel = &mut panel[..rows * ks];
                    for (j, dst) in (jb..je).zip(panel.chunks_exact_mut(ks)) {
                        backend.convert(w.slice(j * k..(j + 1) * k), &mut dst[..k]);
                    }
                    WeightRef::F32(panel)
                }
                Weights::Packed(w) => {
                    let panel = &mut panel[..rows * ks];
                    unpack_rows(w, jb..je, panel, ks);
                    WeightRef::F32(panel)
                }
            };
            let mut i = 0;
            while i < m {
                let mr = (m - i).min(backend.tile_mr());
                let xs = &x[i * k..(i + mr) * k];
                if streamed {
                    stream_tiles(backend, xs, k, mr, block, rows, bias, out, i, jb);
                } else {
                    // Whole tiles per strip (AVX-512's 7 and 6 do not divide STRIP_ROWS).
                    let strip = STRIP_ROWS / backend.nr_for(mr) * backend.nr_for(mr);
                    let mut j = 0;
                    while j < rows {
                        let count = (rows - j).min(strip);
                        let ws = block.slice(j * ks..(j + count) * ks);
                        backend.strip(xs, k, mr, ws, RowMap::rows(count, ks), &mut results);
                        put_strip(&results, mr, count, bias, out, i, jb + j);
                        j += count;
                    }
                }
                i += mr;
            }
            jb = je;
        }
    });
}

/// [`compute_blocks`] for many rows of `x` on the panel kernel: every `x` tile of up to
/// `panel_mr()` rows runs over each L2-sized block of `cols` in the `Panels` layout (8 rows,
/// their 16-element chunks interleaved, `k` zero-padded to whole chunks), so a tile's 8 weight
/// rows are one sequential stream instead of 8 rows a row apart. Weights packed as panels are
/// read where they are, 16-bit ones widened in registers: widening a block into f32 panels once
/// would save the conversions but double the bytes every tile reads from L2, and L2 is what the
/// kernel waits on (Zen 5: the f16 prefill matmul 1.05–1.14× faster in place, 1.3–1.45× for
/// 16 rows of `x`; docs/BENCHMARKS.md). Row-major weights are interleaved into f32 panels
/// first, and so are weights packed as streams unless [`Backend::packed_in_place`]: then the
/// stream tile reads them where they lie (AVX-512's f32 streams, where a copy only costs:
/// batch-16 decode on Ice Lake, 1 thread, 142–160 tokens/s copying against 175–179 in place;
/// AVX2's 16-bit streams, widened in registers: f16 decode on Zen 3, 1 and 2 threads, batch 8
/// 1.34–1.73× and batch 16 1.08–1.36× faster than widening each block into f32 rows first).
/// The bits are the row-major tile's (the kernels keep the canonical order, and widening is
/// exact).
#[allow(clippy::too_many_arguments)]
fn compute_panel_blocks(
    backend: Backend,
    x: &[f32],
    m: usize,
    k: usize,
    w: Weights<'_>,
    bias: Option<&[f32]>,
    out: SharedOut,
    cols: Range<usize>,
) {
    debug_assert!(cols.start.is_multiple_of(PANEL), "blocks start on a panel");
    let (nb, kp) = (blocks_of(backend, m, k, w), padded_k(k));
    let per_panel = PANEL * kp;
    let mut results = [0.0f32; MAX_PANEL_MR * PANELS_PER_CALL * PANEL];
    // Panels are read where they lie, and so are streams where the backend says so (the
    // stream tile reads the 8 rows of a panel a stream stride apart, from L2 after the first
    // tile); everything else is interleaved into f32 panels per block.
    let in_place = match w {
        Weights::Packed(p) => backend.packed_in_place(p),
        Weights::Rows(_) => false,
    };
    let most = if in_place {
        0
    } else {
        nb.min(cols.len()).div_ceil(PANEL) * per_panel
    };
    with_scratch(most, |scratch| {
        let mut jb = cols.start;
        while jb < cols.end {
            let je = (jb + nb).min(cols.end);
            let count = (je - jb).div_ceil(PANEL);
            let first = jb / PANEL;
            let block = match w {
                Weights::Packed(p) if p.layout() == Layout::Panels => {
                    Block::Panels(p.panels(first..first + count))
                }
                Weights::Packed(p) if in_place => Block::Streams(p),
                Weights::Packed(p) => {
                    let scratch = &mut scratch[..count * per_panel];
                    interleave_rows(backend, |j| p.row(j), k, jb..je, scratch);
                    Block::Panels(WeightRef::F32(scratch))
                }
                Weights::Rows(w) => {
                    let scratch = &mut scratch[..count * per_panel];
                    let row_of = |j: usize| w.slice(j * k..(j + 1) * k);
                    interleave_rows(backend, row_of, k, jb..je, scratch);
                    Block::Panels(WeightRef::F32(scratch))
                }
            };
            let mut i = 0;
            while i < m {
                let mr = (m - i).min(backend.panel_mr());
                let xs = &x[i * k..(i + mr) * k];
                let mut q = 0;
                while q < count {
                    let c = (count - q).min(PANELS_PER_CALL);
                    let width = c * PANEL;
                    match block {
                        Block::Panels(panels) => {
                            let ws = panels.slice(q * per_panel..(q + c) * per_panel);
                            backend.panels_cached(xs, k, mr, ws, c, &mut results);
                        }
                        Block::Streams(p) => {
                            let at = first + q;
                            backend.streams_cached(xs, k, mr, p, at..at + c, &mut results);
                        }
                    }
                    let col = jb + q * PANEL;
                    let valid = width.min(je - col);
                    for ii in 0..mr {
                        let row = &results[ii * width..ii * width + valid];
                        // SAFETY: i + ii < m and col + valid ≤ je ≤ n; the columns lie in
                        // this call's `cols`, which no other thread writes.
                        unsafe { out.write_row(i + ii, col, row, bias) };
                    }
                    q += c;
                }
                i += mr;
            }
            jb = je;
        }
    });
}

/// Where [`compute_panel_blocks`] reads a block's weight rows.
#[derive(Clone, Copy)]
enum Block<'a> {
    /// Whole panels of the `Panels` layout (packed, or interleaved into f32 ones).
    Panels(WeightRef<'a>),
    /// Weights packed as streams, read where they lie ([`Backend::packed_in_place`]).
    Streams(&'a Packed),
}

/// Lays out rows `rows` of a weight matrix (`row_of(j)`: row `j`, `k` elements) as f32
/// panels in `dst` (whole panels: rows past the end and `k` up to whole chunks are zeros),
/// one panel at a time.
fn interleave_rows<'w>(
    backend: Backend,
    row_of: impl Fn(usize) -> WeightRef<'w>,
    k: usize,
    rows: Range<usize>,
    dst: &mut [f32],
) {
    let per_panel = PANEL * padded_k(k);
    for (p, panel) in dst.chunks_exact_mut(per_panel).enumerate() {
        let first = rows.start + p * PANEL;
        let present = rows.end.saturating_sub(first).min(PANEL);
        let sources: [Option<WeightRef<'w>>; PANEL] =
            std::array::from_fn(|r| (r < present).then(|| row_of(first + r)));
        backend.interleave_panel(&sources, k, panel);
    }
}

/// [`compute_blocks`] for f32 weights packed as streams: no widening to do, so the tiles read
/// the packed rows where they are (a panel's rows lie [`Packed::stream_stride`] apart) instead
/// of a row-major copy. Tiles of 3 rows of `x` × 4 weight rows, two per panel.
#[allow(clippy::too_many_arguments)]
fn compute_f32_streams(
    backend: Backend,
    x: &[f32],
    m: usize,
    k: usize,
    w: &Packed,
    all: &[f32],
    bias: Option<&[f32]>,
    out: SharedOut,
    cols: Range<usize>,
) {
    debug_assert!(cols.start.is_multiple_of(PANEL), "blocks start on a panel");
    let (nb, ws) = (block_rows(k), w.stream_stride());
    let mut results = [0.0f32; MAX_MR * STRIP_ROWS];
    let mut jb = cols.start;
    while jb < cols.end {
        let je = (jb + nb).min(cols.end);
        let mut i = 0;
        while i < m {
            let mr = (m - i).min(3);
            let xs = &x[i * k..(i + mr) * k];
            let mut j = jb;
            while j < je {
                // Whole panels (blocks and strips start on one): panel j / PANEL on.
                let count = (je - j).min(STRIP_ROWS);
                let map = RowMap {
                    count,
                    stride: ws,
                    panel_stride: k,
                };
                let rows = &all[(j / PANEL) * k..];
                backend.strip(xs, k, mr, WeightRef::F32(rows), map, &mut results);
                put_strip(&results, mr, count, bias, out, i, j);
                j += count;
            }
            i += mr;
        }
        jb = je;
    }
}

/// Writes a strip's results (`mr` rows of `count`, see [`Backend::strip`]) to rows `i..` of
/// the output from column `col` on.
fn put_strip(
    results: &[f32],
    mr: usize,
    count: usize,
    bias: Option<&[f32]>,
    out: SharedOut,
    i: usize,
    col: usize,
) {
    for ii in 0..mr {
        let row = &results[ii * count..(ii + 1) * count];
        // SAFETY: callers pass i + ii < m and col + count ≤ the end of their `cols`, which no
        // other thread writes.
        unsafe { out.write_row(i + ii, col, row, bias) };
    }
}

/// Decode on row-major weights (`mr ≤ tile_mr()` rows of `x` against a block of `rows` rows
/// from column `jb`): tiles in order, each weight row read from memory once; where the kernel
/// prefetches, it prefetches the next tile's rows.
#[allow(clippy::too_many_arguments)]
fn stream_tiles(
    backend: Backend,
    xs: &[f32],
    k: usize,
    mr: usize,
    block: WeightRef<'_>,
    rows: usize,
    bias: Option<&[f32]>,
    out: SharedOut,
    i: usize,
    jb: usize,
) {
    let nr_full = backend.nr_for(mr);
    let mut j = 0;
    while j < rows {
        let nr = nr_full.min(rows - j);
        let tile = backend.tile_streamed(xs, k, mr, block.slice(j * k..(j + nr) * k), nr);
        for (ii, tile_row) in tile.iter().enumerate().take(mr) {
            // SAFETY: i + ii < m and jb + j + nr ≤ the block's end; the columns lie in the
            // caller's `cols`, which no other thread writes.
            unsafe { out.write_row(i + ii, jb + j, &tile_row[..nr], bias) };
        }
        j += nr;
    }
}

thread_local! {
    /// The f32 block [`compute_blocks`] and [`compute_panel_blocks`] widen weights into, kept
    /// per thread across calls: a fresh megabyte per call would be a fresh mapping, faulted in
    /// page by page. (On huge pages from an `Arena` it measured the same on Ice Lake.)
    static PANEL_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch block ([`PANEL_SCRATCH`]), `len` floats long.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    PANEL_SCRATCH.with_borrow_mut(|scratch| {
        if scratch.len() < len {
            scratch.resize(len, 0.0);
        }
        f(&mut scratch[..len])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_sizes_parse_as_sysfs_writes_them() {
        assert_eq!(parse_cache_size("512K\n"), Some(512 << 10));
        assert_eq!(parse_cache_size("2048K"), Some(2 << 20));
        assert_eq!(parse_cache_size("2M"), Some(2 << 20));
        assert_eq!(parse_cache_size("1048576"), Some(1 << 20));
        assert_eq!(parse_cache_size(""), None);
        assert_eq!(parse_cache_size("0K"), None);
        assert_eq!(parse_cache_size("12G"), None);
        assert_eq!(parse_cache_size("K"), None);
    }

    #[test]
    fn widened_rows_lie_an_odd_number_of_lines_apart() {
        for (k, want) in [
            (1, 16),
            (16, 16),
            (17, 48),
            (1024, 1040),
            (2816, 2832),
            (1040, 1040),
        ] {
            assert_eq!(scratch_stride(k), want, "k = {k}");
        }
    }

    #[test]
    fn split_units_are_whole_panels_and_threads_get_even_shares() {
        for (n, most, threads) in [
            (1024, 120, 2),
            (1536, 120, 2),
            (5632, 120, 2),
            (1024, 24, 2),
            (1024, 8, 2),
            (1000, 120, 3),
            (12, 120, 4),
            (7, 8, 2),
            (512, 120, 1),
        ] {
            let split = Split::new(n, most, threads);
            let case = format!("n {n}, most {most}, {threads} threads: {split:?}");
            let mut end = 0;
            for u in 0..split.units {
                let cols = split.cols(u..u + 1);
                assert_eq!(cols.start, end, "{case}: unit {u} follows the last");
                assert!(
                    cols.start.is_multiple_of(PANEL),
                    "{case}: unit {u} {cols:?}"
                );
                assert!(!cols.is_empty(), "{case}: unit {u} is empty");
                assert!(cols.len() <= most.max(PANEL), "{case}: unit {u} {cols:?}");
                end = cols.end;
            }
            assert_eq!(end, n, "{case}: the units cover every row");
            // The shares `for_each_share` starts the threads on.
            let shares: Vec<usize> = (0..threads)
                .map(|t| {
                    let units = split.units * t / threads..split.units * (t + 1) / threads;
                    split.cols(units).len()
                })
                .collect();
            let (least, most_rows) = (shares.iter().min(), shares.iter().max());
            if n.div_ceil(PANEL) >= threads {
                assert!(
                    most_rows.unwrap() - least.unwrap() <= PANEL,
                    "{case}: shares {shares:?}"
                );
            }
        }
        // The o projection's 1024 rows in blocks of at most 120 rows: 10 units, not 9.
        assert_eq!(Split::new(1024, 120, 2).units, 10);
    }

    #[test]
    fn blocks_are_whole_row_groups_and_panels_within_half_the_l2() {
        for k in [1, 64, 1024, 2816, 1 << 20] {
            let rows = block_rows(k);
            assert!(
                rows >= ROW_ALIGN && rows.is_multiple_of(ROW_ALIGN),
                "k = {k}: {rows}"
            );
            assert!(
                rows == ROW_ALIGN || rows * 4 * k <= block_bytes(),
                "k = {k}: {rows}"
            );
            let panel_rows = panel_block_rows(k, 4);
            assert!(
                panel_rows >= PANEL && panel_rows.is_multiple_of(PANEL),
                "k = {k}: {panel_rows}"
            );
            assert!(
                panel_rows == PANEL || panel_rows * 4 * padded_k(k) <= block_bytes(),
                "k = {k}: {panel_rows}"
            );
        }
    }
}
