//! Sustained memory read bandwidth of the machine, the ceiling that decode GEMV is judged by.

use std::hint::black_box;
use std::time::Instant;

use rayon::prelude::*;

use super::arena::Arena;
use super::backend;

/// Measures sustained multi-threaded memory read bandwidth (bytes/s) over a buffer of `bytes`
/// (choose it ≫ the last-level cache), best of `iters` passes.
///
/// The buffer lives on huge pages like the weights (see `arena`), so the probe is never beaten
/// by the kernels it judges. It is written first (in parallel) so every page is mapped; then each of the pool's
/// threads sums its own contiguous share with wide vector loads and several accumulators. The
/// time of a pass includes the pool dispatch, as a `matmul_t` call's does.
pub fn measure_read_bandwidth(pool: &rayon::ThreadPool, bytes: usize, iters: usize) -> f64 {
    let len = (bytes / 4).max(1024);
    let threads = pool.current_num_threads().max(1);
    let mut buf = Arena::with_region_bytes(0).alloc::<f32>(len);
    pool.install(|| {
        buf.par_chunks_mut(len.div_ceil(threads))
            .enumerate()
            .for_each(|(c, s)| {
                for (i, v) in s.iter_mut().enumerate() {
                    *v = ((c + i) % 7) as f32;
                }
            });
    });
    let backend = backend();
    let mut best = 0.0f64;
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        pool.broadcast(|ctx| {
            let share = len.div_ceil(ctx.num_threads());
            let lo = (share * ctx.index()).min(len);
            let hi = (lo + share).min(len);
            black_box(backend.read_sum(&buf[lo..hi]));
        });
        let seconds = start.elapsed().as_secs_f64();
        best = best.max((len * 4) as f64 / seconds);
    }
    best
}
