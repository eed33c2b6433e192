//! The generator's own random numbers: xoshiro256** seeded through SplitMix64, and standard
//! normals by Box–Muller.
//!
//! Owning the generator (rather than depending on `rand`) pins the weights of a given seed for
//! good: no dependency upgrade can change a generated model. Every chunk of every tensor gets its
//! own stream, derived from (seed, tensor name, chunk index), so the bytes do not depend on how
//! many threads generate them.

/// One SplitMix64 step: a bijective mixer of 64-bit values.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of a tensor name: the tensor's identity in the seed derivation, so that adding or
/// removing one tensor (e.g. tying embeddings) leaves the others' values unchanged.
pub(crate) fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// The seed of one chunk's stream.
pub(crate) fn chunk_seed(seed: u64, tensor: u64, chunk: u64) -> u64 {
    let mut state = seed;
    let a = splitmix64(&mut state);
    let mut state = a ^ tensor;
    let b = splitmix64(&mut state);
    let mut state = b ^ chunk;
    splitmix64(&mut state)
}

/// xoshiro256** (Blackman & Vigna), with a cached second Box–Muller normal.
pub(crate) struct Rng {
    s: [u64; 4],
    spare: Option<f64>,
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        let mut state = seed;
        let s = [
            splitmix64(&mut state),
            splitmix64(&mut state),
            splitmix64(&mut state),
            splitmix64(&mut state),
        ];
        Rng { s, spare: None }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal sample.
    pub(crate) fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_have_unit_variance() {
        let mut rng = Rng::new(7);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }

    #[test]
    fn streams_differ_by_seed_tensor_and_chunk() {
        let first = |s| Rng::new(s).next_u64();
        let base = chunk_seed(1, name_hash("a"), 0);
        assert_ne!(first(base), first(chunk_seed(2, name_hash("a"), 0)));
        assert_ne!(first(base), first(chunk_seed(1, name_hash("b"), 0)));
        assert_ne!(first(base), first(chunk_seed(1, name_hash("a"), 1)));
        assert_eq!(first(base), first(chunk_seed(1, name_hash("a"), 0)));
    }
}
