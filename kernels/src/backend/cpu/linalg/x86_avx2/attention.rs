//! The AVX2 kernels of attention's helpers (`linalg::scaled_dots`, `linalg::weighted_rows`):
//! scores as tiles of the matmul kernel written in place, values weighted for several query
//! heads at a time.

use std::arch::x86_64::*;

use super::super::Element;
use super::{LANES, Load8, hsum8, kernel, span};

/// `out[i·stride + j] = dot(x_i, w_j)·scale`: tiles of eight accumulators (4×2, 2×4 or 1×8,
/// one reduction each), each result stored where it belongs.
///
/// # Safety
/// AVX2/FMA/F16C present; `x` holds `m` rows and `w` `n` rows of `k`; `out` is valid for
/// `(m - 1)·stride + n` writes.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scaled_dots_kernel<W: Load8>(
    x: *const f32,
    m: usize,
    k: usize,
    w: *const W,
    n: usize,
    scale: f32,
    out: *mut f32,
    stride: usize,
) {
    let mut i = 0;
    while i < m {
        let mr = (m - i).min(4);
        let mut j = 0;
        while j < n {
            macro_rules! put {
                ($mr:literal, $nr:literal) => {{
                    // SAFETY: rows i..i + $mr of x and j..j + $nr of w exist; the writes land
                    // at (i + ii)·stride + j + jj < (m - 1)·stride + n.
                    unsafe {
                        let r = kernel::<W, $mr, $nr>(x.add(i * k), w.add(j * k), k, k);
                        for (ii, row) in r.iter().enumerate() {
                            for (jj, &v) in row.iter().enumerate() {
                                *out.add((i + ii) * stride + j + jj) = v * scale;
                            }
                        }
                    }
                    j += $nr;
                }};
            }
            macro_rules! put8 {
                ($mr:literal, $nr:literal) => {{
                    // SAFETY: as in `put`.
                    unsafe {
                        dots8::<W, $mr, $nr>(
                            x.add(i * k),
                            w.add(j * k),
                            k,
                            scale,
                            out.add(i * stride + j),
                            stride,
                        )
                    };
                    j += $nr;
                }};
            }
            match (mr, n - j) {
                (4, r) if r >= 2 => put8!(4, 2),
                (4, _) => put!(4, 1),
                (3, r) if r >= 2 => put!(3, 2),
                (3, _) => put!(3, 1),
                (2, r) if r >= 4 => put8!(2, 4),
                (2, _) => put!(2, 1),
                (_, r) if r >= 8 => put8!(1, 8),
                (_, r) if r >= 4 => put!(1, 4),
                _ => put!(1, 1),
            }
        }
        i += mr;
    }
}

/// One `MR × NR = 8` tile of [`scaled_dots_kernel`]: the [`kernel`]'s accumulators reduced
/// together ([`hsum8`], the lanes in the order `reduce` takes them), scaled as one vector and
/// stored `NR` lanes per row, without the round trip through an array of sums. The bits are
/// the `kernel`'s times `scale` (the same additions, then one rounding multiply each).
///
/// # Safety
/// AVX2/FMA/F16C present; `x` holds `MR` and `w` `NR` rows of `k`; `out` is valid for
/// `(MR - 1)·stride + NR` writes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dots8<W: Load8, const MR: usize, const NR: usize>(
    x: *const f32,
    w: *const W,
    k: usize,
    scale: f32,
    out: *mut f32,
    stride: usize,
) {
    const { assert!(MR * NR == LANES && matches!(NR, 2 | 4 | 8)) };
    let mut acc = [[_mm256_setzero_ps(); NR]; MR];
    // SAFETY: the rows span reads are this function's contract.
    unsafe { span(x, w, k, k, 0..k.div_ceil(LANES), &mut acc) };
    let group: [__m256; LANES] = std::array::from_fn(|g| acc[g / NR][g % NR]);
    let sums = _mm256_mul_ps(hsum8(group), _mm256_set1_ps(scale));
    // SAFETY (every store): row i's NR lanes land at i·stride .. i·stride + NR, inside `out`.
    unsafe {
        match NR {
            8 => _mm256_storeu_ps(out, sums),
            4 => {
                _mm_storeu_ps(out, _mm256_castps256_ps128(sums));
                _mm_storeu_ps(out.add(stride), _mm256_extractf128_ps::<1>(sums));
            }
            _ => {
                // NR = 2: rows 0 and 1 in the low half, 2 and 3 in the high one. Each pair goes
                // out as one 8-byte store (`movq`, no alignment asked).
                let (lo, hi) = (
                    _mm256_castps256_ps128(sums),
                    _mm256_extractf128_ps::<1>(sums),
                );
                let pair = |row: usize, v: __m128| {
                    _mm_storel_epi64(out.add(row * stride).cast(), _mm_castps_si128(v))
                };
                pair(0, lo);
                pair(1, _mm_movehl_ps(lo, lo));
                pair(2, hi);
                pair(3, _mm_movehl_ps(hi, hi));
            }
        }
    }
}

/// `out_i = fma(p[i·stride + t], v_t, out_i)` for `t` in order, per row `i`: the bits of
/// [`axpy_rows_kernel`](super::vector::axpy_rows_kernel) on each row, with every row of `v` loaded once for up to four rows of
/// `out` (tiles of 4 rows × 16 lanes in registers).
///
/// # Safety
/// AVX2/FMA/F16C present; `p` is valid for `(m - 1)·stride + n` reads, `v` holds `n` rows and
/// `out` `m` rows of `k`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn weighted_rows_kernel<W: Load8 + Element>(
    p: *const f32,
    stride: usize,
    m: usize,
    v: *const W,
    n: usize,
    k: usize,
    out: *mut f32,
) {
    let full = k / LANES;
    let mut i = 0;
    while i < m {
        let mr = (m - i).min(4);
        let (pi, oi) = (p.wrapping_add(i * stride), out.wrapping_add(i * k));
        let mut c = 0;
        while c < full {
            let off = c * LANES;
            let chunks = (full - c).min(2);
            // SAFETY: rows i..i + mr of out and p, chunks c..c + chunks of every row of v and
            // out: all inside the operands.
            unsafe {
                match (mr, chunks) {
                    (4, 2) => weighted_tile::<W, 4, 2>(pi, stride, v, n, k, oi, off),
                    (4, _) => weighted_tile::<W, 4, 1>(pi, stride, v, n, k, oi, off),
                    (3, 2) => weighted_tile::<W, 3, 2>(pi, stride, v, n, k, oi, off),
                    (3, _) => weighted_tile::<W, 3, 1>(pi, stride, v, n, k, oi, off),
                    (2, 2) => weighted_tile::<W, 2, 2>(pi, stride, v, n, k, oi, off),
                    (2, _) => weighted_tile::<W, 2, 1>(pi, stride, v, n, k, oi, off),
                    (_, 2) => weighted_tile::<W, 1, 2>(pi, stride, v, n, k, oi, off),
                    _ => weighted_tile::<W, 1, 1>(pi, stride, v, n, k, oi, off),
                }
            }
            c += chunks;
        }
        for ii in 0..mr {
            for l in full * LANES..k {
                // SAFETY: as above, element l < k of row i + ii.
                unsafe {
                    let y = &mut *oi.add(ii * k + l);
                    for t in 0..n {
                        *y = (*pi.add(ii * stride + t)).mul_add((*v.add(t * k + l)).to_f32(), *y);
                    }
                }
            }
        }
        i += mr;
    }
}

/// `MR` rows of `out`, `C` vectors from `off`, through all `n` rows of `v`.
///
/// # Safety
/// As [`weighted_rows_kernel`], with `off + 8·C ≤ k` and `MR` rows of `p` and `out` at the
/// pointers given.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted_tile<W: Load8, const MR: usize, const C: usize>(
    p: *const f32,
    stride: usize,
    v: *const W,
    n: usize,
    k: usize,
    out: *mut f32,
    off: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); C]; MR];
    // SAFETY (every access): inside the rows and chunks the caller vouches for.
    unsafe {
        for (i, row) in acc.iter_mut().enumerate() {
            for (c, a) in row.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(out.add(i * k + off + c * LANES));
            }
        }
        for t in 0..n {
            let mut vv = [_mm256_setzero_ps(); C];
            for (c, x) in vv.iter_mut().enumerate() {
                *x = W::load(v.add(t * k + off + c * LANES));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let a = _mm256_broadcast_ss(&*p.add(i * stride + t));
                for (c, acc) in row.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(a, vv[c], *acc);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                _mm256_storeu_ps(out.add(i * k + off + c * LANES), *a);
            }
        }
    }
}
