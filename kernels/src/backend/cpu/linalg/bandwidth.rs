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

/// How a probe pass reads its share of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReadPattern {
    /// One sequential stream of plain loads.
    Sequential,
    /// One sequential stream with software prefetch ahead of the loads (the AVX-512 decode
    /// kernel's way of reading; ignored by the portable code).
    Prefetched,
    /// Blocks of 8 rows of this many floats, the 8 rows read side by side: 8 streams a row
    /// apart, as a GEMV tile of 8 row-major weight rows reads them.
    Rows(usize),
    /// Blocks of 8 streams of [`STREAM_ROW`] floats read side by side, as the decode kernels
    /// read a matrix packed in the `Streams` layout (streams a few hundred KiB long, 33 cache
    /// lines past a multiple of 64 apart), prefetched as the AVX-512 stream kernel does.
    Streams,
}

impl ReadPattern {
    fn name(&self) -> String {
        match self {
            ReadPattern::Sequential => "sequential".into(),
            ReadPattern::Prefetched => "prefetched".into(),
            ReadPattern::Rows(row) => format!("8 rows of {} KiB", row * 4 / 1024),
            ReadPattern::Streams => format!("8 streams of {} KiB", STREAM_ROW * 4 / 1024),
        }
    }

    /// Every pattern a probe tries.
    const ALL: [ReadPattern; 5] = [
        ReadPattern::Sequential,
        ReadPattern::Prefetched,
        ReadPattern::Rows(1024),
        ReadPattern::Rows(4096),
        ReadPattern::Streams,
    ];
}

/// Floats per stream of [`ReadPattern::Streams`]: 256 KiB and 33 cache lines, as long as the
/// streams of the bench model's smaller matrices (`n / 8 · k` weights: 256 KiB for the f16
/// `o` projection, 1.4 MiB for `gate_up`) and skewed as `packed` skews them.
pub(super) const STREAM_ROW: usize = (4096 + 33) * 16;

/// A buffer for measuring memory read bandwidth again and again (a benchmark pairs each of its
/// measurements with probes around it) without mapping and clearing a fresh one each time.
///
/// The buffer lives on huge pages like the weights (see `arena`), so the probe is never beaten
/// by the kernels it judges. It is written once (in parallel) so every page is mapped; each pass
/// then has every thread of the pool sum its own contiguous share with wide vector loads and
/// several accumulators. The time of a pass includes the pool dispatch, as a `matmul_t` call's
/// does. Every pass reads the buffer in each [`ReadPattern`] (one stream, one stream with
/// software prefetch ahead of it, eight streams a row apart, eight long streams), and the
/// fastest read counts: which one wins depends on the machine (a Zen 3 core reads eight streams
/// ~25% faster than one, and one stream slower with software prefetch than without; an Ice
/// Lake core eight long streams ~1.3× faster than one), and the ceiling must be the best the
/// machine does, not the decode kernel's own way of reading.
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

    /// Read bandwidth (bytes/s) with the threads of `pool`: the best of every pattern over
    /// `iters` passes each.
    pub fn measure(&self, pool: &rayon::ThreadPool, iters: usize) -> f64 {
        self.measure_patterns(pool, iters)
            .into_iter()
            .map(|(_, bandwidth)| bandwidth)
            .fold(0.0, f64::max)
    }

    /// The best read bandwidth (bytes/s) of each pattern a probe tries, over `iters` passes
    /// each (the patterns take turns within a pass), named.
    pub fn measure_patterns(&self, pool: &rayon::ThreadPool, iters: usize) -> Vec<(String, f64)> {
        let (buf, len) = (&self.buf[..], self.buf.len());
        let backend = backend();
        let mut best = [0.0f64; ReadPattern::ALL.len()];
        for _ in 0..iters.max(1) {
            for (pattern, best) in ReadPattern::ALL.into_iter().zip(&mut best) {
                let start = Instant::now();
                pool.broadcast(|ctx| {
                    let share = len.div_ceil(ctx.num_threads());
                    let lo = (share * ctx.index()).min(len);
                    let hi = (lo + share).min(len);
                    black_box(backend.read(&buf[lo..hi], pattern));
                });
                let seconds = start.elapsed().as_secs_f64();
                *best = best.max((len * 4) as f64 / seconds);
            }
        }
        ReadPattern::ALL
            .iter()
            .map(ReadPattern::name)
            .zip(best)
            .collect()
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
