//! The AVX-512 kernels of attention's helpers (`linalg::scaled_dots`, `linalg::weighted_rows`):
//! scores as 2×8 tiles of the matmul kernel (their lane sums transposed) written in place,
//! values weighted for several query heads at a time.

use std::arch::x86_64::*;

use super::super::Element;
use super::{LANES, Load16, TilePrefetch, kernel};

/// `out[i·stride + j] = dot(x_i, w_j)·scale`: tiles of two query rows × eight keys (one
/// transposed lane sum per row), narrower ones for the last keys, each result stored where it
/// belongs.
///
/// # Safety
/// AVX-512 F/BW/VL present; `x` holds `m` rows and `w` `n` rows of `k`; `out` is valid for
/// `(m - 1)·stride + n` writes.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn scaled_dots_kernel<W: Load16>(
    x: *const f32,
    m: usize,
    k: usize,
    w: *const W,
    n: usize,
    scale: f32,
    out: *mut f32,
    stride: usize,
) {
    const CACHED: u8 = TilePrefetch::Cached as u8;
    let mut i = 0;
    while i < m {
        let mr = (m - i).min(2);
        let mut j = 0;
        while j < n {
            macro_rules! put {
                ($mr:literal, $nr:literal) => {{
                    // SAFETY: rows i..i + $mr of x and j..j + $nr of w exist; the writes land
                    // at (i + ii)·stride + j + jj < (m - 1)·stride + n.
                    unsafe {
                        let r = kernel::<W, $mr, $nr, CACHED>(x.add(i * k), w.add(j * k), k, k);
                        for (ii, row) in r.iter().enumerate() {
                            for (jj, &v) in row.iter().enumerate() {
                                *out.add((i + ii) * stride + j + jj) = v * scale;
                            }
                        }
                    }
                    j += $nr;
                }};
            }
            match (mr, n - j) {
                (2, r) if r >= 8 => put!(2, 8),
                (2, r) if r >= 4 => put!(2, 4),
                (2, _) => put!(2, 1),
                (_, r) if r >= 8 => put!(1, 8),
                (_, r) if r >= 4 => put!(1, 4),
                _ => put!(1, 1),
            }
        }
        i += mr;
    }
}

/// `out_i = fma(p[i·stride + t], v_t, out_i)` for `t` in order, per row `i`: the bits of
/// `axpy_rows_kernel` on each row, with every row of `v` loaded once for up to four rows of
/// `out` (tiles of 4 rows × 64 lanes in registers: sixteen independent chains where one row
/// at a time had one).
///
/// # Safety
/// AVX-512 F/BW/VL present; `p` is valid for `(m - 1)·stride + n` reads, `v` holds `n` rows and
/// `out` `m` rows of `k`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn weighted_rows_kernel<W: Load16 + Element>(
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
            let chunks = (full - c).min(4);
            macro_rules! tile {
                ($mr:literal) => {
                    match chunks {
                        4 => weighted_tile::<W, $mr, 4>(pi, stride, v, n, k, oi, off),
                        3 => weighted_tile::<W, $mr, 3>(pi, stride, v, n, k, oi, off),
                        2 => weighted_tile::<W, $mr, 2>(pi, stride, v, n, k, oi, off),
                        _ => weighted_tile::<W, $mr, 1>(pi, stride, v, n, k, oi, off),
                    }
                };
            }
            // SAFETY: rows i..i + mr of out and p, chunks c..c + chunks of every row of v and
            // out: all inside the operands.
            unsafe {
                match mr {
                    4 => tile!(4),
                    3 => tile!(3),
                    2 => tile!(2),
                    _ => tile!(1),
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
/// As [`weighted_rows_kernel`], with `off + 16·C ≤ k` and `MR` rows of `p` and `out` at the
/// pointers given.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn weighted_tile<W: Load16, const MR: usize, const C: usize>(
    p: *const f32,
    stride: usize,
    v: *const W,
    n: usize,
    k: usize,
    out: *mut f32,
    off: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); C]; MR];
    // SAFETY (every access): inside the rows and chunks the caller vouches for.
    unsafe {
        for (i, row) in acc.iter_mut().enumerate() {
            for (c, a) in row.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(out.add(i * k + off + c * LANES));
            }
        }
        for t in 0..n {
            let mut vv = [_mm512_setzero_ps(); C];
            for (c, x) in vv.iter_mut().enumerate() {
                *x = W::load(v.add(t * k + off + c * LANES));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*p.add(i * stride + t));
                for (c, acc) in row.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(a, vv[c], *acc);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                _mm512_storeu_ps(out.add(i * k + off + c * LANES), *a);
            }
        }
    }
}
