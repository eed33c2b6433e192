//! The prefill matmul (`m = 512`) on the bench model's four shapes (fused q/k/v, o, fused
//! gate/up, down) with packed weights as the model holds them, f32 and f16: the best and the
//! median GFLOP/s of repeated calls in one process. Steadier than criterion's means on a noisy
//! VM, so it is what A/Bs of the prefill kernels quote (docs/BENCHMARKS.md):
//!
//! ```sh
//! cargo bench -p helixflow-benches --bench prefill_matmul -- --threads 1 --reps 9 --x-offset 0
//! ```
//!
//! `--shape NxK` measures that one shape instead (e.g. `--shape 4096x14336`, the shape llama.cpp's
//! `test-backend-ops perf -o MUL_MAT` times, for a comparison with its matmul).
//!
//! `--x-offset F` starts `x` F floats into its buffer: where the kernels' speed depends on how
//! the operands lie relative to each other (cache sets), shifting one shows it. The first
//! shape runs again at the end, to show what the first call's warm-up (page faults of the
//! scratch block) costs.

use std::time::Instant;

use half::f16;
use helixflow_benches::{pool, values};
use helixflow_kernels::backend::cpu::linalg::{Packed, WeightRef, matmul_t_packed};

/// (n, k) of one layer's linear maps, and the first again.
const SHAPES: [(usize, usize); 5] = [
    (1536, 1024),
    (1024, 1024),
    (5632, 1024),
    (1024, 2816),
    (1536, 1024),
];

/// The value after `--name` among the arguments, or `default`.
fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|at| args.get(at + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, not {v:?}"))
        })
        .unwrap_or(default)
}

/// `--shape NxK`, if given.
fn shape_arg() -> Option<(usize, usize)> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == "--shape")?;
    let value = args.get(at + 1).expect("--shape takes NxK");
    let (n, k) = value
        .split_once('x')
        .and_then(|(n, k)| Some((n.parse().ok()?, k.parse().ok()?)))
        .unwrap_or_else(|| panic!("--shape takes NxK, not {value:?}"));
    Some((n, k))
}

fn main() {
    let (threads, reps, offset) = (arg("--threads", 1), arg("--reps", 9), arg("--x-offset", 0));
    let pool = pool(threads);
    let m = 512;
    println!("m = {m}, {threads} thread(s), best / median of {reps} calls, x offset {offset}");
    let shapes = match shape_arg() {
        Some(shape) => vec![shape],
        None => SHAPES.to_vec(),
    };
    for (n, k) in shapes {
        let buffer = values(offset + m * k, 1);
        let x = &buffer[offset..];
        let w = values(n * k, 2);
        let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let mut out = vec![0.0f32; m * n];
        for (dtype, weights) in [("f32", WeightRef::F32(&w)), ("f16", WeightRef::F16(&w16))] {
            let Some(packed) = Packed::new(weights, n, k) else {
                println!("{dtype} {n}x{k}: weights are not packed on this CPU");
                continue;
            };
            let mut seconds: Vec<f64> = (0..reps.max(1))
                .map(|_| {
                    let start = Instant::now();
                    matmul_t_packed(&pool, x, m, &packed, None, &mut out);
                    start.elapsed().as_secs_f64()
                })
                .collect();
            seconds.sort_by(f64::total_cmp);
            let flops = 2.0 * (m * n * k) as f64;
            println!(
                "{dtype} {n}x{k}: best {:.1}, median {:.1} GFLOP/s",
                flops / seconds[0] / 1e9,
                flops / seconds[seconds.len() / 2] / 1e9
            );
        }
    }
}
