//! The AVX-512 kernels of the machine probes (`linalg::bandwidth`): memory read patterns and
//! the FMA peak. They measure the machine; the engine never calls them.

use std::arch::x86_64::*;

use super::{LANES, Prefetch, STREAM_PREFETCH, hsum, prefetch_ahead};

/// # Safety
/// AVX-512 F/BW/VL present.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn read_sum_kernel<const PREFETCH: bool>(data: &[f32]) -> f32 {
    const STEP: usize = 4 * LANES;
    let mut acc = [_mm512_setzero_ps(); 4];
    let p = data.as_ptr();
    let full = data.len() / STEP;
    for c in 0..full {
        if PREFETCH {
            // The decode kernel's prefetch on Intel (see `ReadProbe`).
            prefetch_ahead::<{ Prefetch::Intel as u8 }>(
                p.wrapping_add(c * STEP).cast(),
                STEP * size_of::<f32>(),
            );
        }
        for (u, a) in acc.iter_mut().enumerate() {
            // SAFETY: c*STEP + STEP ≤ len.
            *a = _mm512_add_ps(*a, unsafe { _mm512_loadu_ps(p.add(c * STEP + u * LANES)) });
        }
    }
    let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    hsum(v) + data[full * STEP..].iter().sum::<f32>()
}

/// Independent multiply-add chains per vector register: enough of them (16) to cover the FMA
/// latency on two FMA ports, nothing but FMAs in the loop.
pub(in super::super) const FMA_CHAINS: usize = 16;

/// `iters` rounds of one FMA on each of [`FMA_CHAINS`] accumulators (16 lanes each), summed.
///
/// # Safety
/// AVX-512 F/BW/VL present.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn fma_chains_kernel(iters: usize, seed: f32) -> f32 {
    let mut acc = [_mm512_set1_ps(seed); FMA_CHAINS];
    let (a, b) = (_mm512_set1_ps(0.999_9), _mm512_set1_ps(1e-4));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    acc.iter().map(|&v| hsum(v)).sum()
}

/// Blocks of 8 rows of `row` floats, the rows of a block read side by side (8 streams a row
/// apart, like the 1×8 GEMV tile); with `PREFETCH`, each row prefetched as the stream kernel
/// prefetches its rows ([`STREAM_PREFETCH`] ahead).
///
/// # Safety
/// AVX-512 F/BW/VL present.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn read_rows_kernel<const PREFETCH: bool>(data: &[f32], row: usize) -> f32 {
    const ROWS: usize = 8;
    let row = (row / LANES).max(1) * LANES;
    let blocks = data.len() / (ROWS * row);
    let mut acc = [_mm512_setzero_ps(); ROWS];
    let p = data.as_ptr();
    for b in 0..blocks {
        for off in (0..row).step_by(LANES) {
            for (r, a) in acc.iter_mut().enumerate() {
                let at = p.wrapping_add((b * ROWS + r) * row + off);
                if PREFETCH {
                    // A prefetch never faults, so running past the end is harmless.
                    _mm_prefetch::<_MM_HINT_T0>(at.cast::<i8>().wrapping_add(STREAM_PREFETCH));
                }
                // SAFETY: inside block b < blocks.
                *a = _mm512_add_ps(*a, unsafe { _mm512_loadu_ps(at) });
            }
        }
    }
    acc.iter().map(|&v| hsum(v)).sum::<f32>() + data[blocks * ROWS * row..].iter().sum::<f32>()
}
