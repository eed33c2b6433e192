//! The `Panels` layout on AVX2 (see `packed`): which layout a CPU packs its weights in, the
//! panel kernel that reads a panel's 8 rows as one sequential stream, and widening packed
//! panels back into rows (the blocks prefill runs the row tiles on).
//!
//! A panel's chunks are [`CHUNK`] = 16 elements (one AVX-512 vector); AVX2 reads each as two
//! 8-lane halves, which is the canonical order of 8 lanes (lane `t` of a row's accumulator
//! takes elements `t, t + 8, t + 16, …` in order), so one packing serves both instruction sets.

use super::super::packed::{
    CHUNK, Layout, PANEL, assert_panel_operands, assert_unpack_operands, padded_k, put_results,
};
use super::super::x86_cpu::Cpu;
use super::{Avx2, LANES, Load8, PANEL_MR, reduce};

use std::arch::x86_64::*;
use std::ops::Range;

/// The layouts an AVX2 CPU reads its decode weights fastest in, 16-bit ones and f32 ones, by
/// what was measured (see docs/BENCHMARKS.md): eight long streams (a Zen 3 core reads them
/// ~25% faster than one stream), except 16-bit weights on AMD from Zen 4 on, as panels (a
/// Genoa core whose hypervisor hides AVX-512 reads the panels of f16 weights at ~31–33 GB/s
/// and eight long streams at ~27–28 in `benches/probes/layouts.c`; batch-1 f16 decode
/// 1.05–1.15× faster). f32 weights stay streams there: as panels batch-1 decode was level
/// (57.0 against 56.1 tokens/s) and batch 4 and 16 ran 0.63× and 0.76× (the prefill tiles read
/// f32 streams in place, where panels are copied back into rows).
pub(super) fn default_layouts(cpu: Cpu) -> (Layout, Layout) {
    if cpu.amd_zen4_or_later() {
        (Layout::Panels, Layout::Streams)
    } else {
        (Layout::Streams, Layout::Streams)
    }
}

/// Dot products of `mr ≤ PANEL_MR` rows of `x` with the rows of `count` consecutive panels
/// (see [`Avx2::panels`](super::Avx2::panels)). No software prefetch: on Zen 4 a panel read
/// 31–33 GB/s without and 27–28 GB/s with `prefetcht0` 1 or 4 KiB ahead.
pub(super) fn panels_typed<W: Load8>(
    _isa: Avx2,
    x: &[f32],
    k: usize,
    mr: usize,
    panels: &[W],
    count: usize,
    out: &mut [f32],
) {
    assert!((1..=PANEL_MR).contains(&mr), "panel tile of {mr} rows");
    assert_panel_operands(x.len(), k, mr, panels.len(), count, out.len());
    let (xp, wp, op) = (x.as_ptr(), panels.as_ptr(), out.as_mut_ptr());
    // SAFETY: `_isa` proves the features; x holds mr rows of k elements, `panels` count panels
    // of PANEL rows of padded_k(k), `out` mr rows of count·PANEL results (asserted above).
    unsafe {
        match mr {
            1 => panels_kernel(xp, wp, k, count, op),
            _ => pair_kernel(xp, wp, k, count, op),
        }
    }
}

/// [`panel_kernel`] for one row of `x` over `count` consecutive panels in one call, so the
/// stream runs on without a call and a result copy between panels.
///
/// # Safety
/// AVX2/FMA/F16C present; `x` valid for `k` reads, `w` for `count*PANEL*padded_k(k)` reads,
/// `out` for `count*PANEL` writes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn panels_kernel<W: Load8>(
    x: *const f32,
    w: *const W,
    k: usize,
    count: usize,
    out: *mut f32,
) {
    let per_panel = PANEL * padded_k(k);
    for q in 0..count {
        // SAFETY: panel q is inside `w`, x holds k elements (caller contract).
        let tile = unsafe { panel_kernel(x, w.add(q * per_panel), k) };
        // SAFETY: `out` holds count·PANEL results (caller contract).
        unsafe { put_results(out, count, q * PANEL, &tile) };
    }
}

/// Chunks of a panel per step of [`pair_kernel`]: 4 KiB of 16-bit weights (8 KiB of f32),
/// which the second half of the panel's rows reads from L1.
const BLOCK_CHUNKS: usize = 16;

/// Two rows of `x` against `count` consecutive panels. Their 16 accumulators with all 8 rows
/// of a panel do not fit the 16 registers (with the x and weight vectors), so each panel is
/// walked in blocks of [`BLOCK_CHUNKS`] chunks, and within a block its rows go as two 2×4
/// tiles whose accumulators wait in memory between blocks (a store and a load change no bits:
/// each output still walks `k` in order). Every weight is read from memory once and widened
/// once for both rows of `x`.
///
/// Measured on Zen 4 (docs/BENCHMARKS.md): the panel in two halves from end to end instead
/// (rows 0–3 over all of `k`, then rows 4–7) read the second half back from L2 or memory once
/// a panel outgrew L1 (`benches/probes/widening.c`: 10.6 GB/s for two rows at `k = 2816`,
/// 19.6 at `k = 1024`), and batch-2 decode ran at 88–94 tokens/s against 123–139 blocked.
/// Tiles of three and four rows (3×3 and 4×2 over the same blocks, one-off builds) ran batch
/// 3 at 118–124 and batch 4 at 91–93 tokens/s, against 149–152 and 159–169 as 2 + 1 and
/// 2 + 2 rows.
///
/// # Safety
/// AVX2/FMA/F16C present; `x` valid for `2*k` reads, `w` for `count*PANEL*padded_k(k)` reads,
/// `out` for `2*count*PANEL` writes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pair_kernel<W: Load8>(x: *const f32, w: *const W, k: usize, count: usize, out: *mut f32) {
    const HALF: usize = PANEL / 2;
    let per_panel = PANEL * padded_k(k);
    let chunks = k.div_ceil(CHUNK);
    for q in 0..count {
        let panel = w.wrapping_add(q * per_panel);
        let mut acc = [[_mm256_setzero_ps(); PANEL]; 2];
        for c0 in (0..chunks).step_by(BLOCK_CHUNKS) {
            let block = c0..(c0 + BLOCK_CHUNKS).min(chunks);
            for r0 in [0, HALF] {
                // SAFETY: rows r0..r0 + 4 of the panel, chunks `block`, and 2 rows of x
                // (caller contract).
                unsafe { half_panel::<W, 2, HALF>(&mut acc, r0, x, panel, k, block.clone()) };
            }
        }
        // SAFETY: `out` holds 2 rows of count·PANEL results (caller contract).
        unsafe { put_results(out, count, q * PANEL, &reduce(&acc)) };
    }
}

/// Rows `r0..r0 + NR` of a panel (`w` at its start) over chunks `block` for `MR` rows of `x`:
/// the accumulators `acc[i][r0 + j]` in registers for the block, then back.
///
/// # Safety
/// AVX2/FMA/F16C present; `r0 + NR ≤ PANEL`; `x` valid for `MR*k` reads; `w` a whole panel of
/// `padded_k(k)` columns, `block` inside its chunks.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half_panel<W: Load8, const MR: usize, const NR: usize>(
    acc: &mut [[__m256; PANEL]; MR],
    r0: usize,
    x: *const f32,
    w: *const W,
    k: usize,
    block: Range<usize>,
) {
    let mut tile = [[_mm256_setzero_ps(); NR]; MR];
    for i in 0..MR {
        for j in 0..NR {
            tile[i][j] = acc[i][r0 + j];
        }
    }
    // SAFETY: rows r0..r0 + NR of the panel over chunks `block` (caller contract).
    unsafe { walk(&mut tile, x, w.wrapping_add(r0 * CHUNK), k, block) };
    for i in 0..MR {
        for j in 0..NR {
            acc[i][r0 + j] = tile[i][j];
        }
    }
}

/// One row of `x` against the 8 rows of one panel: the accumulators, lanes and chunk order of
/// the row-major [`kernel`](super::kernel).
///
/// # Safety
/// AVX2/FMA/F16C present; `x` valid for `k` reads, `w` for a whole panel (`PANEL ·
/// padded_k(k)` elements).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn panel_kernel<W: Load8>(x: *const f32, w: *const W, k: usize) -> [[f32; PANEL]; 1] {
    let mut acc = [[_mm256_setzero_ps(); PANEL]; 1];
    // SAFETY: all rows of the panel over all its chunks (caller contract).
    unsafe { walk(&mut acc, x, w, k, 0..k.div_ceil(CHUNK)) };
    reduce(&acc)
}

/// `MR` rows of `x` against `NR` consecutive rows of a panel (`w` at the first of them) over
/// chunks `block`, into `acc`: each 16-element chunk of a row read as two 8-lane halves (a
/// half wholly past `k` is skipped, as the row-major kernel has no chunk there). Whole chunks
/// run in the loop, a chunk that ends past `k` after it, so the loop holds no branch (nor the
/// masked loads) that would cost a register.
///
/// # Safety
/// AVX2/FMA/F16C present; `x` valid for `MR*k` reads; `w` the rows of a panel of
/// `padded_k(k)` columns, `block` inside its chunks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn walk<W: Load8, const MR: usize, const NR: usize>(
    acc: &mut [[__m256; NR]; MR],
    x: *const f32,
    w: *const W,
    k: usize,
    block: Range<usize>,
) {
    let whole = block.end.min(k / CHUNK);
    for c in block.start..whole {
        let p = w.wrapping_add(c * PANEL * CHUNK);
        for half in 0..CHUNK / LANES {
            // SAFETY: the half chunk lies inside the panel, and its 8 elements inside the rows
            // of x (c < k / CHUNK).
            unsafe {
                half_chunk::<W, MR, NR, false>(
                    acc,
                    x,
                    k,
                    c * CHUNK + half * LANES,
                    p.add(half * LANES),
                )
            }
        }
    }
    if whole < block.end {
        let p = w.wrapping_add(whole * PANEL * CHUNK);
        for half in 0..CHUNK / LANES {
            let off = whole * CHUNK + half * LANES;
            // SAFETY: as above; a whole vector of x where 8 elements are left, else the rest
            // (the panel's padding is zeros, which meet the zeros loaded for x past k).
            unsafe {
                if off + LANES <= k {
                    half_chunk::<W, MR, NR, false>(acc, x, k, off, p.add(half * LANES))
                } else if off < k {
                    half_chunk::<W, MR, NR, true>(acc, x, k, off, p.add(half * LANES))
                }
            }
        }
    }
}

/// One 8-lane step of [`walk`]: elements `off..off + 8` of `MR`
/// rows of `x` (only the `k - off` left, zeros after them, where `PARTIAL`) against the same
/// elements of `NR` panel rows `CHUNK` apart from `w`.
///
/// # Safety
/// AVX2/FMA/F16C present; `off < k`, and `off + 8 ≤ k` exactly when not `PARTIAL`; `x` valid
/// for `MR*k` reads, `w` for 8 elements at each `j · CHUNK`, `j < NR`.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half_chunk<W: Load8, const MR: usize, const NR: usize, const PARTIAL: bool>(
    acc: &mut [[__m256; NR]; MR],
    x: *const f32,
    k: usize,
    off: usize,
    w: *const W,
) {
    // The lanes left in the rows of x: a masked load reads only those, zeros in the others
    // (no call to copy them into a buffer, which would spill the accumulators around it).
    let mask = _mm256_cmpgt_epi32(
        _mm256_set1_epi32((k - off).min(LANES) as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    );
    // SAFETY (both loads): inside row i of x (masked to its end), and 8 elements of panel row
    // j (caller contract).
    let load_x = |i: usize| unsafe {
        if PARTIAL {
            _mm256_maskload_ps(x.add(i * k + off), mask)
        } else {
            _mm256_loadu_ps(x.add(i * k + off))
        }
    };
    let load_w = |j: usize| unsafe { W::load(w.add(j * CHUNK)) };
    // The x vectors stay in registers while the weight vectors stream past them (the tiles
    // here are no taller than wide: `MR·NR + MR + 1` registers live).
    const { assert!(MR <= NR) };
    let xv: [__m256; MR] = std::array::from_fn(load_x);
    for j in 0..NR {
        let wv = load_w(j);
        for i in 0..MR {
            acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
        }
    }
}

/// Widens `rows` whole rows of packed panels (`src` starts at a panel) into f32 rows of
/// `dst`, `stride ≥ k` elements apart.
pub(super) fn unpack_typed<W: Load8>(
    _isa: Avx2,
    src: &[W],
    k: usize,
    rows: usize,
    dst: &mut [f32],
    stride: usize,
) {
    assert_unpack_operands(src.len(), k, rows, dst.len(), stride);
    // SAFETY: the token proves the features; the lengths are asserted above.
    unsafe { unpack_kernel(src.as_ptr(), dst, k, rows, stride) }
}

/// # Safety
/// AVX2/FMA/F16C present; `s` valid for the panels holding `rows` rows of `padded_k(k)`, and
/// `dst` holds `rows` rows of `k` elements `stride ≥ k` apart.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_kernel<W: Load8>(
    s: *const W,
    dst: &mut [f32],
    k: usize,
    rows: usize,
    stride: usize,
) {
    let kp = padded_k(k);
    let (full, rem) = (k / LANES, k % LANES);
    let d = dst.as_mut_ptr();
    const HALVES: usize = CHUNK / LANES;
    // Each panel in memory order: chunk c of rows 0..8 lies in one run of PANEL · CHUNK
    // elements, so the panel streams in from memory once. Row by row, each row read 32 bytes
    // of every 256: batch-16 f16 decode on Zen 4 spent a quarter of its time here, and ran
    // 146–170 tokens/s against 175–184 in memory order (1 thread; 307–334 against 327–350 on
    // 2). Software prefetch 0.5–2 KiB ahead measured +2–5% on 1 thread and noise on 2: not
    // kept.
    for p in 0..rows.div_ceil(PANEL) {
        let panel = s.wrapping_add(p * PANEL * kp);
        let present = (rows - p * PANEL).min(PANEL);
        for c in 0..kp / CHUNK {
            let run = panel.wrapping_add(c * PANEL * CHUNK);
            for r in 0..present {
                let out = d.wrapping_add((p * PANEL + r) * stride);
                for half in 0..HALVES {
                    let (h, src) = (
                        c * HALVES + half,
                        run.wrapping_add(r * CHUNK + half * LANES),
                    );
                    if h < full {
                        // SAFETY: half h of row p·PANEL + r lies inside the panel (caller
                        // contract); its 8 outputs lie inside that row of `dst` (h < k / 8).
                        unsafe { _mm256_storeu_ps(out.add(h * LANES), W::load(src)) };
                    } else if h == full && rem != 0 {
                        let mut buf = [0.0f32; LANES];
                        // SAFETY: the padded panel holds the whole half, `buf` 8 floats, and
                        // the row's last `rem` outputs lie inside `dst`.
                        unsafe {
                            _mm256_storeu_ps(buf.as_mut_ptr(), W::load(src));
                            std::ptr::copy_nonoverlapping(buf.as_ptr(), out.add(h * LANES), rem);
                        }
                    }
                }
            }
        }
    }
}
