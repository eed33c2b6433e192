//! Rotary position embedding frequencies, as HuggingFace computes them (`rope_type` default,
//! `linear` and `llama3`), and the per-batch cos/sin tables.

use crate::config::RopeScaling;

/// `inv_freq[i]` for `i < head_dim / 2`, in `f32` exactly as transformers computes it
/// (`1 / theta^(2i/d)` in float32, then the scaling rule).
pub fn inverse_frequencies(head_dim: usize, theta: f32, scaling: RopeScaling) -> Vec<f32> {
    let base: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    match scaling {
        RopeScaling::Default => base,
        RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            // transformers' `_compute_llama3_parameters`: long wavelengths are divided by
            // `factor`, short ones kept, and the band between is interpolated smoothly.
            let old_context = original_max_position_embeddings as f32;
            let low_freq_wavelen = old_context / low_freq_factor;
            let high_freq_wavelen = old_context / high_freq_factor;
            base.into_iter()
                .map(|freq| {
                    let wavelen = 2.0 * std::f32::consts::PI / freq;
                    let scaled = if wavelen > low_freq_wavelen {
                        freq / factor
                    } else {
                        freq
                    };
                    let medium = (high_freq_wavelen..=low_freq_wavelen).contains(&wavelen);
                    if medium {
                        let smooth = (old_context / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect()
        }
    }
}

/// Fills `cos` and `sin` (`[positions.len(), inv_freq.len()]`) for the given positions.
/// The angle is the float32 product `position * inv_freq`, as in transformers.
pub fn cos_sin(positions: &[usize], inv_freq: &[f32], cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
    cos.clear();
    sin.clear();
    for &p in positions {
        for &f in inv_freq {
            let angle = f64::from(p as f32 * f);
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_frequencies_match_the_formula() {
        let f = inverse_frequencies(16, 10_000.0, RopeScaling::Default);
        assert_eq!(f.len(), 8);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 10_000f32.powf(-2.0 / 16.0)).abs() < 1e-9);
        assert!((f[7] - 10_000f32.powf(-14.0 / 16.0)).abs() < 1e-9);
    }

    #[test]
    fn linear_scaling_divides_every_frequency() {
        let base = inverse_frequencies(64, 10_000.0, RopeScaling::Default);
        let scaled = inverse_frequencies(64, 10_000.0, RopeScaling::Linear { factor: 4.0 });
        for (b, s) in base.iter().zip(&scaled) {
            assert_eq!(*s, b / 4.0);
        }
    }

    /// Hand-computed from Llama 3.1's published settings (theta 500000, factor 8, low 1,
    /// high 4, original context 8192) at head_dim 128: high frequencies (wavelength < 2048)
    /// unchanged, low ones (wavelength > 8192) divided by 8, the band between interpolated.
    #[test]
    fn llama3_scaling_bands() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let base = inverse_frequencies(128, 500_000.0, RopeScaling::Default);
        let scaled = inverse_frequencies(128, 500_000.0, scaling);
        let wavelen = |f: f32| 2.0 * std::f32::consts::PI / f;
        let (mut high, mut low, mut medium) = (0, 0, 0);
        for (b, s) in base.iter().zip(&scaled) {
            let w = wavelen(*b);
            if w < 2048.0 {
                assert_eq!(s, b);
                high += 1;
            } else if w > 8192.0 {
                assert_eq!(*s, b / 8.0);
                low += 1;
            } else {
                let smooth = (8192.0 / w - 1.0) / 3.0;
                let expected = (1.0 - smooth) * b / 8.0 + smooth * b;
                assert!(
                    (s - expected).abs() <= 1e-7 * expected.abs(),
                    "{s} vs {expected}"
                );
                assert!(*s < *b && *s > b / 8.0);
                medium += 1;
            }
        }
        // i = 0..=28 have wavelength < 2048, i = 35..=63 exceed 8192 at these settings.
        assert_eq!((high, medium, low), (29, 6, 29));
        // i = 31 sits in the interpolated band (wavelength ≈ 3.62e3): the same formula in f64.
        let b = 500_000f64.powf(-62.0 / 128.0);
        let w = 2.0 * std::f64::consts::PI / b;
        let smooth = (8192.0 / w - 1.0) / 3.0;
        let expected = (1.0 - smooth) * b / 8.0 + smooth * b;
        assert!(
            (f64::from(scaled[31]) - expected).abs() < 1e-8,
            "{} vs {expected}",
            scaled[31]
        );
    }
}
