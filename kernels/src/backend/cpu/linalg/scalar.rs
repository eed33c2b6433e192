//! Portable kernels: the fallback on targets without AVX2, and the executable definition of the
//! canonical reduction order (`dot_lanes::<L>` is what the SIMD kernels must equal bit for bit).

use super::{MAX_NR, Tile, WeightRef};

/// Lane width of the portable kernels (the same as AVX2, so the two agree bitwise).
pub(super) const LANES: usize = 8;

/// Tile widths per `mr`; the portable code has no register limit, these just keep tiles small.
pub(super) const NR_FOR_MR: [usize; 4] = [MAX_NR, MAX_NR, MAX_NR, MAX_NR];

/// The portable instruction set (always available).
#[derive(Clone, Copy, Debug)]
pub(super) struct Scalar;

/// `Σ x[l]·w(l)` in the canonical order with `L` lanes: per-lane fused multiply-adds walking the
/// zero-padded chunks in order, then the halving tree.
pub(super) fn dot_lanes<const L: usize>(x: &[f32], w: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0.0f32; L];
    let chunks = x.len().div_ceil(L);
    for c in 0..chunks {
        for (t, a) in acc.iter_mut().enumerate() {
            let l = c * L + t;
            let (xv, wv) = if l < x.len() {
                (x[l], w(l))
            } else {
                (0.0, 0.0)
            };
            *a = xv.mul_add(wv, *a);
        }
    }
    let mut width = L / 2;
    while width >= 1 {
        for t in 0..width {
            acc[t] += acc[t + width];
        }
        width /= 2;
    }
    acc[0]
}

/// The canonical dot product of `x` with element `row*k + l` of `w`, with `L` lanes.
pub(super) fn dot_row<const L: usize>(x: &[f32], w: WeightRef<'_>, row: usize) -> f32 {
    let k = x.len();
    match w {
        WeightRef::F32(w) => dot_lanes::<L>(x, |l| w[row * k + l]),
        WeightRef::F16(w) => dot_lanes::<L>(x, |l| w[row * k + l].to_f32()),
        WeightRef::BF16(w) => dot_lanes::<L>(x, |l| w[row * k + l].to_f32()),
    }
}

impl Scalar {
    pub(super) fn tile(self, x: &[f32], k: usize, mr: usize, w: WeightRef<'_>, nr: usize) -> Tile {
        let mut tile = [[0.0; MAX_NR]; super::MAX_MR];
        for (i, row) in tile.iter_mut().enumerate().take(mr) {
            let xi = &x[i * k..(i + 1) * k];
            for (j, v) in row.iter_mut().enumerate().take(nr) {
                *v = dot_row::<LANES>(xi, w, j);
            }
        }
        tile
    }

    pub(super) fn convert(self, src: WeightRef<'_>, dst: &mut [f32]) {
        match src {
            WeightRef::F32(s) => dst.copy_from_slice(s),
            WeightRef::F16(s) => dst.iter_mut().zip(s).for_each(|(d, s)| *d = s.to_f32()),
            WeightRef::BF16(s) => dst.iter_mut().zip(s).for_each(|(d, s)| *d = s.to_f32()),
        }
    }

    pub(super) fn axpy(self, alpha: f32, x: &[f32], y: &mut [f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y = alpha.mul_add(*x, *y);
        }
    }

    pub(super) fn read_sum(self, data: &[f32]) -> f32 {
        let mut acc = [0.0f32; LANES];
        let mut chunks = data.chunks_exact(LANES);
        for c in &mut chunks {
            for (a, v) in acc.iter_mut().zip(c) {
                *a += v;
            }
        }
        acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
    }
}
