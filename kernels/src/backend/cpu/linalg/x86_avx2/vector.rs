//! The AVX2 kernels of the element-wise helpers (`linalg::axpy`, `axpy_rows`, `silu_mul`,
//! `exp_sum`): the scalar definitions on 8 lanes, tails on the scalar path, as
//! `x86_avx512/vector.rs` has them on 16.

use std::arch::x86_64::*;

use super::LANES;

/// # Safety
/// AVX2/FMA/F16C present; `x.len() == y.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn axpy_kernel(alpha: f32, x: &[f32], y: &mut [f32]) {
    let a = _mm256_set1_ps(alpha);
    let full = x.len() / LANES;
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    for c in 0..full {
        let off = c * LANES;
        // SAFETY: off + 8 ≤ len for both slices.
        unsafe {
            let v = _mm256_fmadd_ps(
                a,
                _mm256_loadu_ps(xp.add(off)),
                _mm256_loadu_ps(yp.add(off)),
            );
            _mm256_storeu_ps(yp.add(off), v);
        }
    }
    // Fused like the vector lanes, so every position rounds the same way.
    for l in full * LANES..x.len() {
        y[l] = alpha.mul_add(x[l], y[l]);
    }
}

/// [`axpy_kernel`] once per row of `v`, with each 8-lane chunk of `y` held in a register
/// across the rows: the same fused multiply-adds in the same order.
///
/// # Safety
/// AVX2/FMA/F16C present; `v` holds `alphas.len()` rows of `y.len()` elements.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn axpy_rows_kernel(alphas: &[f32], v: &[f32], y: &mut [f32]) {
    let k = y.len();
    let full = k / LANES;
    let (vp, yp) = (v.as_ptr(), y.as_mut_ptr());
    for c in 0..full {
        let off = c * LANES;
        // SAFETY: off + 8 ≤ k, inside y and inside each row of v.
        unsafe {
            let mut acc = _mm256_loadu_ps(yp.add(off));
            for (r, &a) in alphas.iter().enumerate() {
                let x = _mm256_loadu_ps(vp.add(r * k + off));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(a), x, acc);
            }
            _mm256_storeu_ps(yp.add(off), acc);
        }
    }
    for l in full * LANES..k {
        for (r, &a) in alphas.iter().enumerate() {
            y[l] = a.mul_add(v[r * k + l], y[l]);
        }
    }
}

/// `scalar::exp` on 8 lanes: the same operations, so the same bits.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp8(x: __m256) -> __m256 {
    use super::super::scalar::exp_coefficients::*;
    let t = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(LO)), _mm256_set1_ps(HI));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        t,
        _mm256_set1_ps(LOG2E),
    ));
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), t);
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
    let mut y = _mm256_set1_ps(P[0]);
    for p in &P[1..] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(*p));
    }
    let y = _mm256_add_ps(
        _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r),
        _mm256_set1_ps(1.0),
    );
    let biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(126));
    let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased));
    _mm256_mul_ps(_mm256_mul_ps(y, _mm256_set1_ps(2.0)), scale)
}

/// `scalar::silu_mul_one` on every element: whole vectors here, the tail by the definition.
///
/// # Safety
/// AVX2/FMA/F16C present; the three slices have one length.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn silu_mul_kernel(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let full = out.len() / LANES;
    let (gp, upp, op) = (gate.as_ptr(), up.as_ptr(), out.as_mut_ptr());
    let one = _mm256_set1_ps(1.0);
    for c in 0..full {
        let off = c * LANES;
        // SAFETY: off + 8 ≤ len for the three slices.
        unsafe {
            let g = _mm256_loadu_ps(gp.add(off));
            let u = _mm256_loadu_ps(upp.add(off));
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let v = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u);
            _mm256_storeu_ps(op.add(off), v);
        }
    }
    let tail = full * LANES;
    for ((o, g), u) in out[tail..].iter_mut().zip(&gate[tail..]).zip(&up[tail..]) {
        *o = super::super::scalar::silu_mul_one(*g, *u);
    }
}

/// `scalar::exp_sum_lanes::<8>`: whole vectors here, the tail by the definition.
///
/// # Safety
/// AVX2/FMA/F16C present.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn exp_sum_kernel(v: &mut [f32], max: f32) -> f32 {
    let full = v.len() / LANES;
    let p = v.as_mut_ptr();
    let maxv = _mm256_set1_ps(max);
    let mut acc = _mm256_setzero_ps();
    for c in 0..full {
        // SAFETY: c*8 + 8 ≤ len.
        unsafe {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(c * LANES)), maxv));
            _mm256_storeu_ps(p.add(c * LANES), e);
            acc = _mm256_add_ps(acc, e);
        }
    }
    let mut lanes = [0.0f32; LANES];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    for (a, x) in lanes.iter_mut().zip(&mut v[full * LANES..]) {
        *x = super::super::scalar::exp(*x - max);
        *a += *x;
    }
    super::super::scalar::halving_sum(lanes)
}

/// `scalar::softmax_lanes::<8>`: the maximum folded eight lanes at a time (`maxps` returns its
/// second operand where the first is NaN, so NaNs are skipped as `f32::max` skips them), the
/// tail by the definition; [`exp_sum_kernel`]; then one division per element.
///
/// # Safety
/// AVX2/FMA/F16C present.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn softmax_kernel(v: &mut [f32]) {
    let full = v.len() / LANES;
    let p = v.as_mut_ptr();
    let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
    for c in 0..full {
        // SAFETY: c*8 + 8 ≤ len.
        acc = _mm256_max_ps(unsafe { _mm256_loadu_ps(p.add(c * LANES)) }, acc);
    }
    let mut lanes = [0.0f32; LANES];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    let max = lanes
        .iter()
        .chain(&v[full * LANES..])
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    // SAFETY: AVX2/FMA/F16C present (this function's contract).
    let sum = unsafe { exp_sum_kernel(v, max) };
    let (p, sums) = (v.as_mut_ptr(), _mm256_set1_ps(sum));
    for c in 0..full {
        // SAFETY: c*8 + 8 ≤ len.
        unsafe {
            let x = _mm256_loadu_ps(p.add(c * LANES));
            _mm256_storeu_ps(p.add(c * LANES), _mm256_div_ps(x, sums));
        }
    }
    for x in &mut v[full * LANES..] {
        *x /= sum;
    }
}
