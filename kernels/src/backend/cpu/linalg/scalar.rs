//! Portable kernels: the fallback on targets without AVX2, and the executable definition of the
//! canonical reduction order (`dot_lanes::<L>` is what the SIMD kernels must equal bit for bit).

use super::{MAX_NR, Tile, WeightRef};

/// Lane width of the portable kernels (the same as AVX2, so the two agree bitwise).
pub(super) const LANES: usize = 8;

/// Independent multiply-add chains of [`Scalar::fma_chains`].
pub(super) const FMA_CHAINS: usize = 8;

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
    halving_sum(acc)
}

/// Coefficients of [`exp`]: `ln 2` split in two for an exact `n · ln 2`, and the Cephes `expf`
/// polynomial for `e^r` on `[-ln 2 / 2, ln 2 / 2]` (relative error about one ulp).
pub(super) mod exp_coefficients {
    /// Inputs are clamped to `[LO, HI]`: below `LO` the result is `e^LO` (≈ 4e-38, which `1 + e^x`
    /// rounds away); `e^HI` overflows to +inf, as `e^x` does from `ln(f32::MAX)` ≈ 88.72 on.
    /// In between `n ∈ [-124, 128]`, so `2^(n-1)` is a normal float.
    pub const LO: f32 = -86.0;
    pub const HI: f32 = 89.0;
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    /// 0.693359375 = 355/512 exactly, so `n · LN2_HI` is exact.
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    /// Highest degree first.
    pub const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ];
}

/// `e^x` for `x` clamped to `[LO, HI]` (see [`exp_coefficients`]), as a fixed sequence of IEEE
/// operations (fused multiply-adds included) that the SIMD kernels repeat lane by lane, so every
/// instruction set computes the same bits. `x = n·ln 2 + r` with `n` rounded to nearest even;
/// `e^x = (2·e^r) · 2^(n-1)`, which is `e^r · 2^n` exactly, or +inf where that overflows.
pub(super) fn exp(x: f32) -> f32 {
    use exp_coefficients::*;
    // Not `clamp`: `max` first turns a NaN into LO, as `maxps(x, LO)` does.
    #[allow(clippy::manual_clamp)]
    let t = x.max(LO).min(HI);
    let n = (t * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_HI, t);
    let r = n.mul_add(-LN2_LO, r);
    let mut y = P[0];
    for p in &P[1..] {
        y = y.mul_add(r, *p);
    }
    let y = y.mul_add(r * r, r) + 1.0;
    // n - 1 + 127 ∈ [2, 254]: a normal biased exponent.
    (2.0 * y) * f32::from_bits(((n as i32 + 126) as u32) << 23)
}

/// `silu(g) · u = g / (1 + e^-g) · u` with [`exp`]: the definition the SIMD kernels equal.
pub(super) fn silu_mul_one(g: f32, u: f32) -> f32 {
    g / (1.0 + exp(-g)) * u
}

/// `v[l] = exp(v[l] - max)` for every `l`, returning `Σ v[l]` in the canonical order with `L`
/// lanes (lane `t` adds the elements `c·L + t` in order, then the halving tree): the
/// definition the SIMD kernels equal.
pub(super) fn exp_sum_lanes<const L: usize>(v: &mut [f32], max: f32) -> f32 {
    let mut acc = [0.0f32; L];
    for chunk in v.chunks_mut(L) {
        for (a, x) in acc.iter_mut().zip(chunk) {
            *x = exp(*x - max);
            *a += *x;
        }
    }
    halving_sum(acc)
}

/// The largest element of `v`, NaNs skipped (as `f32::max` skips them), `-inf` for none: the
/// value the SIMD max folds find (in any order: the maximum is exact; where `+0` and `-0` tie,
/// either may come out, and `x - max` is then the same for every `x`).
pub(super) fn max_of(v: &[f32]) -> f32 {
    v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// `v[l] = exp(v[l] - max) / Σ` with `max` = [`max_of`] and `Σ` = [`exp_sum_lanes`]`::<L>`:
/// the softmax the SIMD kernels equal (a division per element, exactly rounded everywhere).
pub(super) fn softmax_lanes<const L: usize>(v: &mut [f32]) {
    let sum = exp_sum_lanes::<L>(v, max_of(v));
    for x in v.iter_mut() {
        *x /= sum;
    }
}

/// The canonical halving tree: `acc[t] += acc[t + L/2]`, then `L/4`, …, `1`.
pub(super) fn halving_sum<const L: usize>(mut acc: [f32; L]) -> f32 {
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

    pub(super) fn silu_mul(self, gate: &[f32], up: &[f32], out: &mut [f32]) {
        for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
            *o = silu_mul_one(*g, *u);
        }
    }

    pub(super) fn exp_sum(self, v: &mut [f32], max: f32) -> f32 {
        exp_sum_lanes::<LANES>(v, max)
    }

    pub(super) fn softmax(self, v: &mut [f32]) {
        softmax_lanes::<LANES>(v)
    }

    /// `iters` rounds of one fused multiply-add on each of [`FMA_CHAINS`] accumulators.
    pub(super) fn fma_chains(self, iters: usize, seed: f32) -> f32 {
        let mut acc = [seed; FMA_CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = v.mul_add(0.999_9, 1e-4);
            }
        }
        acc.iter().sum()
    }

    /// Blocks of 8 rows of `row` floats, the rows of a block read side by side.
    pub(super) fn read_rows(self, data: &[f32], row: usize) -> f32 {
        const ROWS: usize = 8;
        let row = row.max(1);
        let mut acc = [0.0f32; ROWS];
        let mut blocks = data.chunks_exact(ROWS * row);
        for block in &mut blocks {
            for off in 0..row {
                for (r, a) in acc.iter_mut().enumerate() {
                    *a += block[r * row + off];
                }
            }
        }
        acc.iter().sum::<f32>() + blocks.remainder().iter().sum::<f32>()
    }

    pub(super) fn read_sum(self, data: &[f32], _prefetch: bool) -> f32 {
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
