//! The AVX-512 kernels of the element-wise helpers (`linalg::axpy`, `axpy_rows`, `silu_mul`,
//! `exp_sum`): the scalar definitions on 16 lanes, tails through masked loads and stores.

use std::arch::x86_64::*;

use super::{LANES, hsum, lanes_mask};

/// # Safety
/// AVX-512 F/BW/VL present; `x.len() == y.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn axpy_kernel(alpha: f32, x: &[f32], y: &mut [f32]) {
    let a = _mm512_set1_ps(alpha);
    let full = x.len() / LANES;
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    for c in 0..full {
        let off = c * LANES;
        // SAFETY: off + 16 ≤ len for both slices.
        unsafe {
            let v = _mm512_fmadd_ps(
                a,
                _mm512_loadu_ps(xp.add(off)),
                _mm512_loadu_ps(yp.add(off)),
            );
            _mm512_storeu_ps(yp.add(off), v);
        }
    }
    let rem = x.len() % LANES;
    if rem != 0 {
        let off = full * LANES;
        let mask = lanes_mask(rem);
        // SAFETY: the mask selects only the rem elements left in both slices.
        unsafe {
            let xv = _mm512_maskz_loadu_ps(mask, xp.add(off));
            let yv = _mm512_maskz_loadu_ps(mask, yp.add(off));
            _mm512_mask_storeu_ps(yp.add(off), mask, _mm512_fmadd_ps(a, xv, yv));
        }
    }
}

/// [`axpy_kernel`] once per row of `v`, with each 16-lane chunk of `y` held in a register
/// across the rows: the same fused multiply-adds in the same order.
///
/// # Safety
/// AVX-512 F/BW/VL present; `v` holds `alphas.len()` rows of `y.len()` elements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn axpy_rows_kernel(alphas: &[f32], v: &[f32], y: &mut [f32]) {
    let k = y.len();
    let (vp, yp) = (v.as_ptr(), y.as_mut_ptr());
    let mut off = 0;
    while off < k {
        let mask = lanes_mask(k - off);
        // SAFETY: the mask selects only elements inside y and inside each row of v.
        unsafe {
            let mut acc = _mm512_maskz_loadu_ps(mask, yp.add(off));
            for (r, &a) in alphas.iter().enumerate() {
                let x = _mm512_maskz_loadu_ps(mask, vp.add(r * k + off));
                acc = _mm512_fmadd_ps(_mm512_set1_ps(a), x, acc);
            }
            _mm512_mask_storeu_ps(yp.add(off), mask, acc);
        }
        off += LANES;
    }
}

/// `scalar::exp` on 16 lanes: the same operations, so the same bits.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn exp16(x: __m512) -> __m512 {
    use super::super::scalar::exp_coefficients::*;
    let t = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(LO)), _mm512_set1_ps(HI));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(t, _mm512_set1_ps(LOG2E)),
    );
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), t);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), r);
    let mut y = _mm512_set1_ps(P[0]);
    for p in &P[1..] {
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(*p));
    }
    let y = _mm512_add_ps(
        _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r),
        _mm512_set1_ps(1.0),
    );
    let biased = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(126));
    let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased));
    _mm512_mul_ps(_mm512_mul_ps(y, _mm512_set1_ps(2.0)), scale)
}

/// `scalar::silu_mul_one` on every element; the tail through masked loads and stores.
///
/// # Safety
/// AVX-512 F/BW/VL present; the three slices have one length.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn silu_mul_kernel(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let len = out.len();
    let (gp, up, op) = (gate.as_ptr(), up.as_ptr(), out.as_mut_ptr());
    let one = _mm512_set1_ps(1.0);
    let mut off = 0;
    while off < len {
        let mask = lanes_mask(len - off);
        // SAFETY: the mask selects only elements inside the three slices.
        unsafe {
            let g = _mm512_maskz_loadu_ps(mask, gp.add(off));
            let u = _mm512_maskz_loadu_ps(mask, up.add(off));
            let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
            let v = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u);
            _mm512_mask_storeu_ps(op.add(off), mask, v);
        }
        off += LANES;
    }
}

/// `scalar::exp_sum_lanes::<16>`: the tail's masked-off lanes leave their sums alone.
///
/// # Safety
/// AVX-512 F/BW/VL present.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn exp_sum_kernel(v: &mut [f32], max: f32) -> f32 {
    let (len, p) = (v.len(), v.as_mut_ptr());
    let max = _mm512_set1_ps(max);
    let mut acc = _mm512_setzero_ps();
    let mut off = 0;
    while off < len {
        let mask = lanes_mask(len - off);
        // SAFETY: the mask selects only elements inside `v`.
        unsafe {
            let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, p.add(off)), max));
            _mm512_mask_storeu_ps(p.add(off), mask, e);
            acc = _mm512_mask_add_ps(acc, mask, acc, e);
        }
        off += LANES;
    }
    hsum(acc)
}

/// `scalar::softmax_lanes::<16>`: the maximum folded sixteen lanes at a time (the tail's
/// masked-off lanes read as `-inf`; `maxps` returns its second operand where the first is NaN,
/// so NaNs are skipped as `f32::max` skips them), [`exp_sum_kernel`], then one division per
/// element.
///
/// # Safety
/// AVX-512 F/BW/VL present.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn softmax_kernel(v: &mut [f32]) {
    let (len, p) = (v.len(), v.as_mut_ptr());
    let none = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut acc = none;
    let mut off = 0;
    while off < len {
        let mask = lanes_mask(len - off);
        // SAFETY: the mask selects only elements inside `v`.
        acc = _mm512_max_ps(unsafe { _mm512_mask_loadu_ps(none, mask, p.add(off)) }, acc);
        off += LANES;
    }
    let max = _mm512_reduce_max_ps(acc);
    // SAFETY: AVX-512 F/BW/VL present (this function's contract).
    let sum = _mm512_set1_ps(unsafe { exp_sum_kernel(v, max) });
    let p = v.as_mut_ptr();
    let mut off = 0;
    while off < len {
        let mask = lanes_mask(len - off);
        // SAFETY: the mask selects only elements inside `v`.
        unsafe {
            let x = _mm512_maskz_loadu_ps(mask, p.add(off));
            _mm512_mask_storeu_ps(p.add(off), mask, _mm512_div_ps(x, sum));
        }
        off += LANES;
    }
}
