//! The machine's limits that the kernels are judged by: sustained memory read bandwidth (decode
//! GEMV) and the cores' multiply-add throughput (prefill GEMM).

use std::hint::black_box;
use std::time::Instant;

use rayon::prelude::*;

use super::arena::{Arena, Slab};
use super::backend;

/// Measures sustained multi-threaded memory read bandwidth (bytes/s) over a buffer of `bytes`
/// (choose it ≫ the last-level cache), best of `iters` passes. See [`ReadProbe`].
pub fn measure_read_bandwidth(pool: &rayon::ThreadPool, bytes: usize, iters: usize) -> f64 {
    ReadProbe::new(pool, bytes).measure(pool, iters)
}

/// A buffer for measuring memory read bandwidth again and again (a benchmark pairs each of its
/// measurements with probes around it) without mapping and clearing a fresh one each time.
///
/// The buffer lives on huge pages like the weights (see `arena`), so the probe is never beaten
/// by the kernels it judges. It is written once (in parallel) so every page is mapped; each pass
/// then has every thread of the pool sum its own contiguous share with wide vector loads and
/// several accumulators. The time of a pass includes the pool dispatch, as a `matmul_t` call's
/// does. Every pass reads the buffer twice, once as plain loads and once with the decode
/// kernel's software prefetch ahead of them, and the faster read counts: which one wins depends
/// on the machine (the hardware prefetchers of a Sapphire Rapids core fall behind a 16-bit
/// decode stream, a Zen 3 core's streams a plain read faster than with any software prefetch),
/// and the ceiling must be the best the machine does, not the kernel's own way of reading.
pub struct ReadProbe {
    buf: Slab<f32>,
}

impl ReadProbe {
    /// Maps and fills a buffer of `bytes` (at least 4 KiB) on the threads of `pool`.
    pub fn new(pool: &rayon::ThreadPool, bytes: usize) -> ReadProbe {
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
        ReadProbe { buf }
    }

    /// Read bandwidth (bytes/s) with the threads of `pool`, best of `iters` passes.
    pub fn measure(&self, pool: &rayon::ThreadPool, iters: usize) -> f64 {
        let (buf, len) = (&self.buf[..], self.buf.len());
        let backend = backend();
        let mut best = 0.0f64;
        for _ in 0..iters.max(1) {
            for prefetch in [false, true] {
                let start = Instant::now();
                pool.broadcast(|ctx| {
                    let share = len.div_ceil(ctx.num_threads());
                    let lo = (share * ctx.index()).min(len);
                    let hi = (lo + share).min(len);
                    black_box(backend.read_sum(&buf[lo..hi], prefetch));
                });
                let seconds = start.elapsed().as_secs_f64();
                best = best.max((len * 4) as f64 / seconds);
            }
        }
        best
    }
}

/// The pool's peak f32 multiply-add throughput (FLOP/s, 2 per FMA): every thread runs
/// independent FMA chains on registers, nothing else, for about `millis` ms; best of `iters`
/// passes. What no matrix product on these threads can beat.
pub fn measure_fma_peak(pool: &rayon::ThreadPool, millis: u64, iters: usize) -> f64 {
    let backend = backend();
    // Size a pass from a short calibration run on this thread.
    let calibrate = 1 << 16;
    let start = Instant::now();
    let (sum, flops_per_round) = backend.fma_chains(calibrate, black_box(1.0));
    black_box(sum);
    let per_round = start.elapsed().as_secs_f64() / calibrate as f64;
    let rounds = ((millis as f64 / 1e3) / per_round.max(1e-12)).clamp(1.0, 1e12) as usize;
    let threads = pool.current_num_threads().max(1);
    let mut best = 0.0f64;
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        pool.broadcast(|ctx| black_box(backend.fma_chains(rounds, black_box(ctx.index() as f32))));
        let seconds = start.elapsed().as_secs_f64();
        best = best.max((threads * rounds * flops_per_round) as f64 / seconds);
    }
    best
}
