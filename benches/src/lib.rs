//! Shared helpers for HelixFlow's criterion benches (`cargo bench -p helixflow-benches`), and
//! the HTTP load generators behind `helixflow bench` ([`load`]) and `helixflow bench-admin`
//! ([`admin`]). The end-to-end engine
//! measurement is `helixflow bench-engine`; the criterion benches isolate parts.

pub mod admin;
pub mod load;

/// Deterministic values in [-1, 1) for bench inputs.
pub fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 - 1000.0) * 1e-3)
        .collect()
}

/// A rayon pool of `threads` threads.
pub fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}
