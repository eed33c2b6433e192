//! Widening 16-bit weights to f32 on AVX-512: whole slices, packed panels back to rows, and
//! rows into f32 panels (the blocks prefill runs the panel kernel on).

use std::arch::x86_64::*;

use super::super::packed::{PANEL, assert_unpack_operands, padded_k};
use super::{Avx512, LANES, Load16, lanes_mask};

pub(super) fn interleave_typed<W: Load16>(
    _isa: Avx512,
    rows: [Option<&[W]>; PANEL],
    k: usize,
    dst: &mut [f32],
) {
    let kp = padded_k(k);
    assert!(
        dst.len() >= PANEL * kp && rows.iter().flatten().all(|r| r.len() >= k),
        "interleave: a panel of {k} columns"
    );
    let ptrs = rows.map(|r| r.map(<[W]>::as_ptr));
    // SAFETY: the token proves the features; every present row holds k elements and `dst` a
    // whole panel (asserted above).
    unsafe { interleave_kernel(ptrs, k, dst.as_mut_ptr()) }
}

/// # Safety
/// AVX-512 F/BW/VL present; each present row valid for `k` reads, `d` for
/// `PANEL · padded_k(k)` writes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn interleave_kernel<W: Load16>(rows: [Option<*const W>; PANEL], k: usize, d: *mut f32) {
    for c in 0..k.div_ceil(LANES) {
        let (off, mask) = (c * LANES, lanes_mask(k - c * LANES));
        for (r, row) in rows.iter().enumerate() {
            let v = match row {
                // SAFETY: the mask selects only the elements of row r left from `off`.
                Some(p) => unsafe { W::load_masked(p.add(off), mask) },
                None => _mm512_setzero_ps(),
            };
            // SAFETY: chunk c of panel row r is inside the panel (caller contract).
            unsafe { _mm512_storeu_ps(d.add((c * PANEL + r) * LANES), v) };
        }
    }
}

pub(super) fn convert_typed<W: Load16>(_isa: Avx512, src: &[W], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "convert: lengths differ");
    let full = src.len() / LANES;
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    // SAFETY: the Avx512 token proves the features; every chunk c < full lies inside both slices and
    // the masked tail touches only the remaining elements.
    unsafe { convert_kernel(s, d, full, src.len() % LANES) }
}

/// # Safety
/// AVX-512 F/BW/VL present; `s` and `d` valid for `full*16 + rem` elements, `rem < 16`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn convert_kernel<W: Load16>(s: *const W, d: *mut f32, full: usize, rem: usize) {
    for c in 0..full {
        // SAFETY: chunk c is inside both buffers (caller contract).
        unsafe { _mm512_storeu_ps(d.add(c * LANES), W::load(s.add(c * LANES))) };
    }
    if rem != 0 {
        let mask = lanes_mask(rem);
        let off = full * LANES;
        // SAFETY: the mask selects only the rem elements left in both buffers.
        unsafe { _mm512_mask_storeu_ps(d.add(off), mask, W::load_masked(s.add(off), mask)) };
    }
}

pub(super) fn unpack_typed<W: Load16>(
    _isa: Avx512,
    src: &[W],
    k: usize,
    rows: usize,
    dst: &mut [f32],
    stride: usize,
) {
    assert_unpack_operands(src.len(), k, rows, dst.len(), stride);
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    // SAFETY: the Avx512 token proves the features; the lengths are asserted above.
    unsafe { unpack_kernel(s, d, k, rows, stride) }
}

/// # Safety
/// AVX-512 F/BW/VL present; `s` valid for the panels holding `rows` rows of `padded_k(k)`,
/// `d` for `rows` rows of `k` elements `stride ≥ k` apart.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn unpack_kernel<W: Load16>(s: *const W, d: *mut f32, k: usize, rows: usize, stride: usize) {
    let kp = padded_k(k);
    let (full, rem) = (k / LANES, k % LANES);
    for r in 0..rows {
        let panel = s.wrapping_add((r / PANEL) * PANEL * kp + (r % PANEL) * LANES);
        let out = d.wrapping_add(r * stride);
        for c in 0..full {
            // SAFETY: chunk c of row r is inside the panel; its output inside row r of d.
            unsafe {
                let v = W::load(panel.add(c * PANEL * LANES));
                _mm512_storeu_ps(out.add(c * LANES), v);
            }
        }
        if rem != 0 {
            let mask = lanes_mask(rem);
            // SAFETY: the mask selects only the rem elements left in row r of d; the panel holds
            // the whole (padded) chunk.
            unsafe {
                let v = W::load(panel.add(full * PANEL * LANES));
                _mm512_mask_storeu_ps(out.add(full * LANES), mask, v);
            }
        }
    }
}
