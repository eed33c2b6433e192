//! [`CounterRng`]: the sampler's random numbers, as a pure function of `(seed, stream, step)`.
//!
//! There is no hidden state to advance: the uniform for decode step `s` is a hash of the three
//! counters. So a sequence draws the same numbers whatever else shares its batch, however many
//! threads run, and after migrating to another node with only `(seed, stream, step)` in hand.
//! The hash is SplitMix64's finaliser applied in a keyed chain; it is not cryptographic and does
//! not need to be. This module does not pick seeds for unseeded requests beyond
//! [`CounterRng::entropy_seed`].

use std::hash::{BuildHasher, Hasher};

/// SplitMix64's increment (the golden ratio in 64 bits); separates the three inputs.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// Counter-based generator of uniforms for one random stream of one seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterRng {
    seed: u64,
    stream: u64,
}

impl CounterRng {
    /// The generator of stream `stream` under `seed`.
    pub const fn new(seed: u64, stream: u64) -> Self {
        CounterRng { seed, stream }
    }

    /// A seed from OS entropy (std's per-process random hasher keys) and the clock, for requests
    /// that did not send one.
    pub fn entropy_seed() -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(nanos);
        hasher.finish()
    }

    /// The seed.
    pub const fn seed(&self) -> u64 {
        self.seed
    }

    /// The stream.
    pub const fn stream(&self) -> u64 {
        self.stream
    }

    /// 64 random bits for `step`.
    pub const fn bits(&self, step: u64) -> u64 {
        let h = mix64(self.seed.wrapping_add(GOLDEN));
        let h = mix64(h ^ self.stream.wrapping_mul(GOLDEN).wrapping_add(GOLDEN));
        mix64(h ^ step.wrapping_add(GOLDEN.wrapping_mul(3)))
    }

    /// A uniform in `[0, 1)` for `step`, with 53 random bits.
    pub fn uniform(&self, step: u64) -> f64 {
        (self.bits(step) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// SplitMix64's output function: a bijection on `u64` with full avalanche.
const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
