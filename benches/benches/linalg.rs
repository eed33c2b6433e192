//! Criterion benches: prefill (m = 512) `matmul_t` on row-major and packed weights (as the
//! model holds them) against the `gemm` crate on the model's shapes, decode GEMV throughput in bytes/s (row-major f16, and the packed panels the CPU
//! backend uses, each matrix apart or all in one arena in forward order) next to
//! `measure_read_bandwidth`, and the cost of handing an op to the threads.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use half::f16;
use helixflow_benches::{pool, values};
use helixflow_kernels::backend::cpu::linalg::{
    Arena, Packed, WeightRef, Workers, for_each_thread, matmul_t, matmul_t_packed,
    measure_read_bandwidth,
};

/// (n, k) of one layer's linear maps: fused q/k/v, o, fused gate/up, down.
const LAYER: [(usize, usize); 4] = [(1536, 1024), (1024, 1024), (5632, 1024), (1024, 2816)];

fn gemm_peer(
    pool: &rayon::ThreadPool,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    out: &mut [f32],
) {
    pool.install(|| {
        // SAFETY: x is m×k (row stride k), w is n×k read as wᵀ (column stride k), out is m×n.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(pool.current_num_threads()),
            )
        }
    });
}

fn prefill(c: &mut Criterion) {
    let (pool, pool1) = (pool(2), pool(1));
    let m = 512;
    let mut group = c.benchmark_group("prefill_m512");
    group.sample_size(10);
    for &(n, k) in &LAYER {
        let x = values(m * k, 1);
        let w = values(n * k, 2);
        let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let mut out = vec![0.0f32; m * n];
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.bench_function(format!("matmul_t_f32/{n}x{k}"), |b| {
            b.iter(|| {
                matmul_t(
                    &pool,
                    &x,
                    m,
                    k,
                    WeightRef::F32(&w),
                    n,
                    None,
                    black_box(&mut out),
                )
            })
        });
        group.bench_function(format!("matmul_t_f16/{n}x{k}"), |b| {
            b.iter(|| {
                matmul_t(
                    &pool,
                    &x,
                    m,
                    k,
                    WeightRef::F16(&w16),
                    n,
                    None,
                    black_box(&mut out),
                )
            })
        });
        group.bench_function(format!("gemm_crate_f32/{n}x{k}"), |b| {
            b.iter(|| gemm_peer(&pool, &x, m, k, &w, n, black_box(&mut out)))
        });
        // As the model holds its weights: packed, where this CPU packs them.
        let packed = [
            ("f32", Packed::new(WeightRef::F32(&w), n, k)),
            ("f16", Packed::new(WeightRef::F16(&w16), n, k)),
        ];
        for (name, p) in &packed {
            let Some(p) = p else { continue };
            for (threads, pool) in [(2, &pool), (1, &pool1)] {
                group.bench_function(format!("{threads}t/packed_{name}/{n}x{k}"), |b| {
                    b.iter(|| matmul_t_packed(pool, &x, m, p, None, black_box(&mut out)))
                });
            }
        }
    }
    group.finish();
}

fn gemv(c: &mut Criterion) {
    // The 12 layers of the `bench-engine` model in f16 (≫ the cache of this VM's share of L3),
    // row-major and packed, so every pass streams from DRAM.
    let layers = 12;
    let stack: Vec<(Vec<f16>, usize, usize)> = (0..layers)
        .flat_map(|_| LAYER.iter().copied())
        .enumerate()
        .map(|(s, (n, k))| {
            (
                values(n * k, s).into_iter().map(f16::from_f32).collect(),
                n,
                k,
            )
        })
        .collect();
    let bytes: usize = stack.iter().map(|(w, _, _)| w.len() * 2).sum();
    // The layout the CPU backend loads f16 weights in (on CPUs with the panel kernel): one
    // arena, in forward order, so the prefetch runs on across matrix boundaries; and the same
    // panels with each matrix in memory of its own.
    let arena = Arena::new();
    let packed: Vec<Packed> = stack
        .iter()
        .filter_map(|(w, n, k)| Packed::new_in(&arena, WeightRef::F16(w), *n, *k))
        .collect();
    let apart: Vec<Packed> = stack
        .iter()
        .filter_map(|(w, n, k)| Packed::new(WeightRef::F16(w), *n, *k))
        .collect();
    let x = values(2816, 3);
    let mut out = vec![0.0f32; 5632];
    let mut group = c.benchmark_group("gemv_m1");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes as u64));
    for threads in [1, 2] {
        let workers = Workers::new(pool(threads));
        let pool = workers.pool();
        let bw = measure_read_bandwidth(pool, 1 << 30, 5);
        eprintln!(
            "measure_read_bandwidth ({threads} threads, 1 GiB, best of 5): {:.2} GB/s",
            bw / 1e9
        );
        // Each pass runs as one team pass, as the engine's forward pass does (`Backend::run`).
        group.bench_function(format!("{threads}t/f16_rows"), |b| {
            b.iter(|| {
                workers.run_pass(|| {
                    for (w, n, k) in &stack {
                        let (n, k) = (*n, *k);
                        matmul_t(
                            pool,
                            &x[..k],
                            1,
                            k,
                            WeightRef::F16(w),
                            n,
                            None,
                            &mut out[..n],
                        );
                    }
                });
                black_box(&out);
            })
        });
        for (name, packed) in [("f16_packed", &packed), ("f16_packed_apart", &apart)] {
            if packed.len() != stack.len() {
                continue;
            }
            group.bench_function(format!("{threads}t/{name}"), |b| {
                b.iter(|| {
                    workers.run_pass(|| {
                        for w in packed {
                            let (n, k) = (w.rows(), w.cols());
                            matmul_t_packed(pool, &x[..k], 1, w, None, &mut out[..n]);
                        }
                    });
                    black_box(&out);
                })
            });
        }
    }
    group.finish();
}

/// What one parallel op costs to hand to 2 threads: a rayon broadcast from outside the pool (a
/// caller thread that must wake the workers) and from inside it, and a call inside a team pass
/// (the engine's forward pass, see `Backend::run`).
fn dispatch(c: &mut Criterion) {
    let workers = Workers::new(pool(2));
    let pool = workers.pool();
    let mut group = c.benchmark_group("dispatch");
    group.bench_function("broadcast_from_outside_the_pool", |b| {
        b.iter(|| pool.broadcast(|ctx| black_box(ctx.index())))
    });
    group.bench_function("broadcast_from_inside_the_pool", |b| {
        b.iter_custom(|iters| {
            pool.install(|| {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    pool.broadcast(|ctx| black_box(ctx.index()));
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("team_call_inside_a_pass", |b| {
        b.iter_custom(|iters| {
            workers.run_pass(|| {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    for_each_thread(pool, &|index, _| {
                        black_box(index);
                    });
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, prefill, gemv, dispatch);
criterion_main!(benches);
