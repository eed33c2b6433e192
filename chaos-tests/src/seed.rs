//! The seed of a chaos run and the random choices drawn from it.
//!
//! Every random choice of a test (which node to kill, which node takes a write, the order of
//! requests) comes from a [`ChaosRng`] made by [`ChaosRng::from_env`], which prints the seed
//! first: `CHAOS_SEED=<seed>` replays the same choices. Timing is not replayed (the nodes are
//! real processes), only the decisions.
//!
//! The generator is SplitMix64: tiny, fast, and good enough for picking nodes; nothing here is
//! cryptographic.

use crate::env;

#[derive(Clone, Debug)]
pub struct ChaosRng {
    seed: u64,
    state: u64,
}

impl ChaosRng {
    /// The seed from `CHAOS_SEED`, or a fresh random one; prints it with how to replay it.
    ///
    /// # Panics
    /// When `CHAOS_SEED` is set but is no number.
    pub fn from_env(test: &str) -> ChaosRng {
        let seed = match std::env::var(env::SEED) {
            Ok(text) => parse_seed(&text).unwrap_or_else(|| {
                panic!(
                    "{}={text:?} is no seed: use a decimal or 0x-prefixed hex u64",
                    env::SEED
                )
            }),
            Err(_) => fresh_seed(),
        };
        eprintln!(
            "[chaos] {test}: seed {seed} (replay with {}={seed})",
            env::SEED
        );
        ChaosRng::with_seed(seed)
    }

    pub fn with_seed(seed: u64) -> ChaosRng {
        ChaosRng { seed, state: seed }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    ///
    /// # Panics
    /// When `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "a choice among nothing");
        // The modulo bias is at most n / 2^64: irrelevant for picking among a few nodes.
        (self.next_u64() % n as u64) as usize
    }

    /// One of `items`, by value.
    ///
    /// # Panics
    /// When `items` is empty.
    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    /// An independent generator for a concurrent task: derived from this one, so the whole run
    /// still follows from the one seed.
    pub fn fork(&mut self) -> ChaosRng {
        ChaosRng::with_seed(self.next_u64())
    }
}

fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn fresh_seed() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        // No OS randomness: the clock still differs from run to run, which is all a seed needs.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_choices() {
        let mut a = ChaosRng::with_seed(42);
        let mut b = ChaosRng::with_seed(42);
        let picks_a: Vec<usize> = (0..32).map(|_| a.below(3)).collect();
        let picks_b: Vec<usize> = (0..32).map(|_| b.below(3)).collect();
        assert_eq!(picks_a, picks_b);
        // Every value of a small range comes up: the generator is not stuck.
        assert!((0..3).all(|v| picks_a.contains(&v)), "{picks_a:?}");
        assert_ne!(
            ChaosRng::with_seed(43).next_u64(),
            ChaosRng::with_seed(42).next_u64()
        );
    }

    #[test]
    fn shuffle_permutes() {
        let mut rng = ChaosRng::with_seed(7);
        let mut items: Vec<u32> = (0..10).collect();
        rng.shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(items, sorted, "seed 7 shuffles 10 items into another order");
    }

    #[test]
    fn seeds_parse_in_decimal_and_hex() {
        assert_eq!(parse_seed("12345"), Some(12345));
        assert_eq!(parse_seed(" 0xff "), Some(255));
        assert_eq!(parse_seed("banana"), None);
    }
}
