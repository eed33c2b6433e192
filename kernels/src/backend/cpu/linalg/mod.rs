//! Placeholder scalar kernels (replaced by the vectorised implementation).
use half::{bf16, f16};

pub enum WeightRef<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

#[allow(clippy::too_many_arguments)]
pub fn matmul_t(
    pool: &rayon::ThreadPool,
    x: &[f32],
    m: usize,
    k: usize,
    w: WeightRef<'_>,
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let _ = pool;
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for l in 0..k {
                let wv = match &w {
                    WeightRef::F32(w) => w[j * k + l],
                    WeightRef::F16(w) => w[j * k + l].to_f32(),
                    WeightRef::BF16(w) => w[j * k + l].to_f32(),
                };
                acc += x[i * k + l] * wv;
            }
            out[i * n + j] = acc + bias.map_or(0.0, |b| b[j]);
        }
    }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += alpha * x);
}

pub fn measure_read_bandwidth(_pool: &rayon::ThreadPool, _bytes: usize, _iters: usize) -> f64 {
    1.0
}
