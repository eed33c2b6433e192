//! Lane sums of the AVX-512 accumulators: the canonical halving tree of one vector ([`hsum`]),
//! and the same tree over a panel tile's accumulators at once ([`hsum_panel_tile`]).

use std::arch::x86_64::*;

use super::super::packed::PANEL;

/// [`hsum`] of every accumulator of a tile.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) fn hsum_tile<const MR: usize, const NR: usize>(
    acc: [[__m512; NR]; MR],
) -> [[f32; NR]; MR] {
    let mut out = [[0.0; NR]; MR];
    for (o, a) in out.iter_mut().zip(&acc) {
        for (o, &a) in o.iter_mut().zip(a) {
            *o = hsum(a);
        }
    }
    out
}

/// The canonical halving tree: lanes `t + 8`, then `t + 4`, `t + 2`, `t + 1` are added in.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) fn hsum(v: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    let a = _mm256_add_ps(lo, hi);
    let b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
    let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    let d = _mm_add_ss(c, _mm_movehdup_ps(c));
    _mm_cvtss_f32(d)
}

/// [`hsum_tile`] of a panel tile, eight accumulators of a row at a time, transposed: the same
/// additions of the same lanes (the canonical halving tree of [`hsum`], so the same bits), but
/// each step adds the lanes of several accumulators in one vector instruction, and a row's
/// eight sums end in one vector: 26 vector instructions per row instead of eight trees of
/// seven. Prefill on panels ran 1.04–1.05× faster with it (Zen 5, docs/BENCHMARKS.md).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) fn hsum_panel_tile<const MR: usize>(acc: [[__m512; PANEL]; MR]) -> [[f32; PANEL]; MR] {
    const _: () = assert!(PANEL == 8, "the transposed tree is written for eight rows");
    // Lanes t and t + 8 (t < 8) of two accumulators: a's sums in lanes 0–7, b's in 8–15.
    let halves = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
        )
    };
    // Lanes t and t + 4 (t < 4) of the four accumulators in two `halves` results: accumulator
    // r's four sums in 128-bit block r.
    let quarters = |ab: __m512, cd: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(ab, cd),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(ab, cd),
        )
    };
    let mut out = [[0.0; PANEL]; MR];
    for (o, a) in out.iter_mut().zip(&acc) {
        let lo = quarters(halves(a[0], a[1]), halves(a[2], a[3]));
        let hi = quarters(halves(a[4], a[5]), halves(a[6], a[7]));
        // Lanes t and t + 2 (t < 2): in block r, accumulator r's two sums, then r + 4's.
        let pairs = _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(lo, hi),
            _mm512_shuffle_ps::<0b11_10_11_10>(lo, hi),
        );
        // Lanes 0 and 1: in block r, the sum of accumulator r in lane 0, of r + 4 in lane 1.
        let sums = _mm512_add_ps(
            _mm512_shuffle_ps::<0b10_00_10_00>(pairs, pairs),
            _mm512_shuffle_ps::<0b11_01_11_01>(pairs, pairs),
        );
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
        let sums = _mm512_castps512_ps256(_mm512_permutexvar_ps(order, sums));
        // SAFETY: `o` holds PANEL = 8 floats.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), sums) };
    }
    out
}

/// [`hsum_tile`], through [`hsum_panel_tile`] where a row holds [`PANEL`] accumulators (the
/// same bits either way).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) fn hsum_rows<const MR: usize, const NR: usize>(
    acc: [[__m512; NR]; MR],
) -> [[f32; NR]; MR] {
    if NR != PANEL {
        return hsum_tile(acc);
    }
    // SAFETY: NR == PANEL, so each pair of types is one type.
    unsafe {
        let rows: [[__m512; PANEL]; MR] = std::mem::transmute_copy(&acc);
        std::mem::transmute_copy(&hsum_panel_tile(rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transposed tree adds the lanes of [`hsum`] in its order: the bits agree, with
    /// values whose sums round differently in any other order.
    #[test]
    fn the_panel_tile_sums_are_the_halving_trees() {
        if !(is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl"))
        {
            return;
        }
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Magnitudes from 2^-20 to 2^20 and both signs, so the order of additions shows.
            let mantissa = (seed >> 40) as f32 / (1u64 << 24) as f32;
            let scale = 2f32.powi((seed % 41) as i32 - 20);
            if seed & (1 << 32) == 0 {
                mantissa * scale
            } else {
                -mantissa * scale
            }
        };
        for _ in 0..200 {
            let mut lanes = [[[0f32; 16]; PANEL]; 3];
            for v in lanes.iter_mut().flatten().flatten() {
                *v = next();
            }
            // SAFETY: the features were detected above; each array holds 16 floats.
            unsafe {
                let acc = lanes.map(|row| row.map(|v| _mm512_loadu_ps(v.as_ptr())));
                let got = hsum_panel_tile(acc);
                let want = hsum_tile(acc);
                for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                    assert_eq!(g.to_bits(), w.to_bits(), "{g} vs {w}");
                }
            }
        }
    }
}
