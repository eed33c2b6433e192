//! The `Streams` layout on AVX-512 (see `packed`): which layout a CPU packs its weights in,
//! and the stream kernel that reads a panel's 8 rows from 8 streams side by side.

use std::ops::Range;

use super::super::packed::{Layout, PANEL, assert_stream_operands, put_results};
use super::{Avx512, Load16, PANEL_MR, TilePrefetch, kernel};

/// The layout an AVX-512 CPU reads its decode weights fastest in, by what was measured (see
/// docs/BENCHMARKS.md): one stream per panel on AMD (Zen 5: 0.88–0.92 of the ceiling in f16,
/// 0.96 in f32) and on Intel cores with AVX512-FP16 (Sapphire Rapids: the panel kernel read
/// 0.97 of the probe); eight long streams on Intel cores before them (Ice Lake: a core reads
/// one stream at ~11 GB/s and eight page-apart streams at ~14–15; its L2 streamer follows
/// one stream per 4 KiB page, so it runs ahead of eight streams at once but of one stream
/// only a page at a time).
pub(super) fn default_layout(amd: bool) -> Layout {
    if !amd && !is_x86_feature_detected!("avx512fp16") {
        Layout::Streams
    } else {
        Layout::Panels
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn streams_typed<W: Load16>(
    _isa: Avx512,
    x: &[f32],
    k: usize,
    mr: usize,
    w: &[W],
    stride: usize,
    panels: Range<usize>,
    out: &mut [f32],
    cached: bool,
) {
    assert!((1..=PANEL_MR).contains(&mr), "stream tile of {mr} rows");
    assert_stream_operands(x.len(), k, mr, w.len(), stride, &panels, out.len());
    let (xp, wp, op) = (x.as_ptr(), w.as_ptr(), out.as_mut_ptr());
    // SAFETY: `_isa` proves the features; x holds mr rows of k elements, every row of the
    // panels (r < PANEL of panel q < panels.end: k elements at r·stride + q·k) lies inside `w`,
    // and `out` holds mr rows of panels.len()·PANEL results (asserted above).
    unsafe {
        const AHEAD: u8 = TilePrefetch::Ahead as u8;
        const CACHED: u8 = TilePrefetch::Cached as u8;
        match (mr, cached) {
            (1, false) => streams_kernel::<W, 1, AHEAD>(xp, wp, k, stride, panels, op),
            (2, false) => streams_kernel::<W, 2, AHEAD>(xp, wp, k, stride, panels, op),
            (_, false) => streams_kernel::<W, 3, AHEAD>(xp, wp, k, stride, panels, op),
            (1, true) => streams_kernel::<W, 1, CACHED>(xp, wp, k, stride, panels, op),
            (2, true) => streams_kernel::<W, 2, CACHED>(xp, wp, k, stride, panels, op),
            (_, true) => streams_kernel::<W, 3, CACHED>(xp, wp, k, stride, panels, op),
        }
    }
}

/// `MR` rows of `x` against panels `panels` of a matrix packed as streams: for each panel, the
/// micro-kernel over its [`PANEL`] rows (one per stream, read side by side), prefetching ahead.
///
/// # Safety
/// AVX-512 F/BW/VL present; `x` valid for `MR*k` reads, `w` for the rows of the panels
/// (`k` elements at `r·stride + q·k`), `out` for `MR*panels.len()*PANEL` writes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn streams_kernel<W: Load16, const MR: usize, const PREFETCH: u8>(
    x: *const f32,
    w: *const W,
    k: usize,
    stride: usize,
    panels: Range<usize>,
    out: *mut f32,
) {
    let count = panels.len();
    for (qi, q) in panels.enumerate() {
        // SAFETY: the rows of panel q are inside `w` (caller contract).
        let tile = unsafe { kernel::<W, MR, PANEL, PREFETCH>(x, w.add(q * k), k, stride) };
        // SAFETY: `out` holds MR rows of count·PANEL results (caller contract).
        unsafe { put_results(out, count, qi * PANEL, &tile) };
    }
}
