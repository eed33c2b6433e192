//! Tests of the linear-algebra kernels: batch invariance (bitwise), agreement with an f64
//! reference, and bitwise agreement of the SIMD kernels with the portable definition of the
//! canonical order.

use std::sync::OnceLock;

use half::{bf16, f16};
use proptest::prelude::*;

use super::*;
use crate::dtype::DType;
use packed::PackedData;

fn pool(threads: usize) -> &'static rayon::ThreadPool {
    static POOLS: OnceLock<[rayon::ThreadPool; 2]> = OnceLock::new();
    let pools = POOLS.get_or_init(|| {
        let make = |t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .expect("pool")
        };
        [make(1), make(2)]
    });
    &pools[threads - 1]
}

/// Deterministic values in [-1, 1) from a seed (xorshift64*).
fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            r as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Owned weights of one dtype.
enum Weights {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Weights {
    fn new(dtype: usize, v: &[f32]) -> Self {
        match dtype {
            0 => Weights::F32(v.to_vec()),
            1 => Weights::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
            _ => Weights::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
        }
    }
    fn view(&self) -> WeightRef<'_> {
        match self {
            Weights::F32(w) => WeightRef::F32(w),
            Weights::F16(w) => WeightRef::F16(w),
            Weights::BF16(w) => WeightRef::BF16(w),
        }
    }
    /// The little-endian bytes a safetensors file stores.
    fn le_bytes(&self) -> Vec<u8> {
        match self {
            Weights::F32(w) => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Weights::F16(w) => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Weights::BF16(w) => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
    fn dtype(&self) -> DType {
        match self {
            Weights::F32(_) => DType::F32,
            Weights::F16(_) => DType::F16,
            Weights::BF16(_) => DType::BF16,
        }
    }
    fn at(&self, i: usize) -> f32 {
        match self {
            Weights::F32(w) => w[i],
            Weights::F16(w) => w[i].to_f32(),
            Weights::BF16(w) => w[i].to_f32(),
        }
    }
}

fn run(
    threads: usize,
    x: &[f32],
    m: usize,
    k: usize,
    w: &Weights,
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![f32::NAN; m * n];
    matmul_t(pool(threads), x, m, k, w.view(), n, bias, &mut out);
    out
}

/// Checks batch invariance and accuracy of one random problem.
fn check(m: usize, k: usize, n: usize, dtype: usize, with_bias: bool, seed: u64) {
    let x = values(seed, m * k);
    let w = Weights::new(dtype, &values(seed ^ 0xABCD, n * k));
    let bias = with_bias.then(|| values(seed ^ 0x1234, n));
    let bias = bias.as_deref();
    let full = run(2, &x, m, k, &w, n, bias);
    assert_eq!(
        full,
        run(1, &x, m, k, &w, n, bias),
        "thread count changed the bits"
    );
    for i in 0..m {
        let row = &x[i * k..(i + 1) * k];
        for threads in [1, 2] {
            let single = run(threads, row, 1, k, &w, n, bias);
            let same = single
                .iter()
                .zip(&full[i * n..(i + 1) * n])
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "row {i} of m={m} differs from m=1 ({threads} threads), k={k} n={n}"
            );
        }
        for j in 0..n {
            let (mut exact, mut magnitude) = (0.0f64, 0.0f64);
            for (l, &xl) in row.iter().enumerate() {
                let p = f64::from(xl) * f64::from(w.at(j * k + l));
                exact += p;
                magnitude += p.abs();
            }
            if let Some(b) = bias {
                exact += f64::from(b[j]);
                magnitude += f64::from(b[j]).abs();
            }
            // The classical bound for a sum of this depth (chunks, the 8-lane tree, the bias).
            let depth = k.div_ceil(8) + 4;
            let bound = depth as f64 * f64::from(f32::EPSILON) * magnitude + 1e-30;
            let got = f64::from(full[i * n + j]);
            assert!(
                (got - exact).abs() <= bound,
                "({i},{j}) k={k}: {got} vs {exact} (bound {bound})"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn small_shapes_are_batch_invariant_and_accurate(
        m in 1usize..=13, k in 1usize..=80, n in 1usize..=40, dtype in 0usize..3,
        with_bias: bool, seed: u64,
    ) {
        check(m, k, n, dtype, with_bias, seed);
    }

    #[test]
    fn threaded_shapes_are_batch_invariant_and_accurate(
        m in 1usize..=10, k in 200usize..=700, n in 100usize..=520, dtype in 0usize..3,
        with_bias: bool, seed: u64,
    ) {
        check(m, k, n, dtype, with_bias, seed);
    }
}

#[test]
fn blocked_prefill_shape_matches_single_rows() {
    // Several cache blocks per thread, f16 packing, an n tail and an m tail; k past 1024, so
    // the panel kernel walks it in slices.
    check(7, 1030, 1100, 1, true, 7);
    check(6, 2200, 530, 2, false, 8);
}

/// Every SIMD kernel shape must equal the portable definition of the canonical order.
#[test]
fn simd_kernels_equal_the_canonical_definition() {
    let b = backend();
    for k in [1, 5, 8, 15, 16, 17, 31, 64, 100, 257] {
        for dtype in 0..3 {
            let x = values(k as u64, MAX_MR * k);
            let w = Weights::new(dtype, &values(k as u64 + 99, MAX_NR * k));
            for mr in 1..=b.tile_mr() {
                for nr in 1..=MAX_NR {
                    let tile = b.tile(&x, k, mr, w.view(), nr);
                    for (i, tile_row) in tile.iter().enumerate().take(mr) {
                        for (j, got) in tile_row.iter().enumerate().take(nr) {
                            let xi = &x[i * k..(i + 1) * k];
                            let want = match b {
                                Backend::Scalar(_) => scalar::dot_row::<8>(xi, w.view(), j),
                                #[cfg(target_arch = "x86_64")]
                                Backend::Avx2(_) => scalar::dot_row::<8>(xi, w.view(), j),
                                #[cfg(target_arch = "x86_64")]
                                Backend::Avx512(_) => scalar::dot_row::<16>(xi, w.view(), j),
                            };
                            assert_eq!(got.to_bits(), want.to_bits(), "k={k} {mr}x{nr} ({i},{j})");
                        }
                    }
                }
            }
        }
    }
}

/// Packed weights, in every layout this CPU's kernels read, give the bits of the row-major
/// product they were made from, for decode row counts (the panel and stream kernels) and
/// prefill ones (panels in place, or rows widened into panels or back to rows), with `n` and
/// `k` tails, on one and two threads.
#[test]
fn packed_weights_equal_row_major_bitwise() {
    if backend().pack_layout(2).is_none() {
        assert!(Packed::new(WeightRef::F16(&[f16::ZERO; 4]), 2, 2).is_none());
        return;
    }
    let layouts = backend().pack_layouts();
    for bytes in [2, 4] {
        assert!(layouts.contains(&backend().pack_layout(bytes).unwrap()));
    }
    for &layout in layouts {
        packed_layout_equals_row_major_bitwise(layout);
    }
}

/// Matrix shapes `(n, k)` the packing tests run: whole and partial panels and chunks, one row
/// and one column, and k past a 4 KiB row.
const PACK_SHAPES: [(usize, usize); 8] = [
    (1, 1),
    (7, 15),
    (8, 16),
    (9, 17),
    (30, 33),
    (100, 80),
    (530, 1030),
    (70, 2203),
];

fn packed_layout_equals_row_major_bitwise(layout: packed::Layout) {
    for (n, k) in PACK_SHAPES {
        for dtype in 0..3 {
            let w = Weights::new(dtype, &values((n * k) as u64, n * k));
            let packed = Packed::new_as(&Arena::with_region_bytes(0), w.view(), n, k, layout);
            assert_eq!((packed.rows(), packed.cols()), (n, k));
            let mut row = vec![0.0f32; k];
            for j in [0, n / 2, n - 1] {
                packed.row_into(j, &mut row);
                let want: Vec<f32> = (0..k).map(|l| w.at(j * k + l)).collect();
                assert_eq!(row, want, "row {j} of {n}x{k}");
            }
            let bias = values(n as u64, n);
            // 5 and 9 rows run AVX2's panel or stream kernel over cached blocks of 16-bit
            // weights, 65 (past its `CACHED_PANEL_ROWS`) the row tiles over blocks widened
            // into f32 rows.
            for m in [1, 2, 3, 4, 5, 9, 65] {
                let x = values((m * k) as u64 + 3, m * k);
                for threads in [1, 2] {
                    let want = run(threads, &x, m, k, &w, n, Some(&bias));
                    let mut got = vec![f32::NAN; m * n];
                    matmul_t_packed(pool(threads), &x, m, &packed, Some(&bias), &mut got);
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{m}x{k} by {layout:?} {n}x{k} (dtype {dtype}, {threads} threads)"
                    );
                }
            }
        }
    }
}

/// A model's matrices are packed straight from the file's bytes, in parts of whole rows (a
/// fused q/k/v projection): the same bits, in every layout this CPU reads, as packing typed
/// weights; and where nothing is packed, the arena's copy holds the same elements.
#[test]
fn packing_file_bytes_equals_packing_typed_weights() {
    for (n, k) in PACK_SHAPES {
        for dtype in 0..3 {
            let w = Weights::new(dtype, &values((n * k) as u64 + 1, n * k));
            let bytes = w.le_bytes();
            let row = bytes.len() / n;
            let (a, b) = (n / 3, n - n / 4);
            let parts = [
                &bytes[..a * row],
                &bytes[a * row..b * row],
                &bytes[b * row..],
            ];
            let arena = Arena::with_region_bytes(0);
            assert_eq!(
                Packed::from_le_in(&arena, w.dtype(), &parts, n, k).is_some(),
                Packed::new_in(&arena, w.view(), n, k).is_some()
            );
            for &layout in backend().pack_layouts() {
                let typed = Packed::new_as(&arena, w.view(), n, k, layout);
                let f = Packed::from_le_as(&arena, w.dtype(), &parts, n, k, layout);
                assert_eq!((f.rows(), f.cols(), f.layout), (n, k, layout));
                let same = match (&typed.data, &f.data) {
                    (PackedData::F32(t), PackedData::F32(f)) => same_bits(t, f, f32::to_bits),
                    (PackedData::F16(t), PackedData::F16(f)) => same_bits(t, f, f16::to_bits),
                    (PackedData::BF16(t), PackedData::BF16(f)) => same_bits(t, f, bf16::to_bits),
                    _ => false,
                };
                assert!(same, "{n}x{k} dtype {dtype} {layout:?}");
            }
            let want: Vec<f32> = (0..n * k).map(|i| w.at(i)).collect();
            let got: Vec<f32> = match w {
                Weights::F32(_) => arena.from_le::<f32>(&parts).to_vec(),
                Weights::F16(_) => arena
                    .from_le::<f16>(&parts)
                    .iter()
                    .map(|v| v.to_f32())
                    .collect(),
                Weights::BF16(_) => arena
                    .from_le::<bf16>(&parts)
                    .iter()
                    .map(|v| v.to_f32())
                    .collect(),
            };
            assert!(
                same_bits(&got, &want, f32::to_bits),
                "{n}x{k} dtype {dtype}"
            );
        }
    }
}

/// Whether `a` and `b` hold the same bit patterns.
fn same_bits<T: Copy, B: PartialEq>(a: &[T], b: &[T], bits: impl Fn(T) -> B) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| bits(*x) == bits(*y))
}

#[test]
#[should_panic(expected = "parts are not whole rows")]
fn packing_file_bytes_refuses_parts_that_split_a_row() {
    let bytes = [0u8; 2 * 6 * 4];
    let parts = [&bytes[..20], &bytes[20..]];
    Packed::from_le_in(&Arena::with_region_bytes(0), DType::F32, &parts, 2, 6);
}

/// f32 weights are packed wherever 16-bit ones are (each dtype in the layout the CPU reads it
/// fastest in): the layouts pay for the reads, not for the widening.
#[test]
fn f32_weights_are_packed_where_16_bit_ones_are() {
    let packed = Packed::new(WeightRef::F32(&[0.0; 4]), 2, 2);
    assert_eq!(packed.is_some(), backend().pack_layout(4).is_some());
    assert_eq!(
        packed.is_some(),
        Packed::new(WeightRef::F16(&[f16::ZERO; 4]), 2, 2).is_some()
    );
}

#[test]
fn dot_equals_a_one_by_one_matmul() {
    for len in [0, 1, 7, 16, 33, 128, 1000] {
        let a = values(len as u64, len);
        let b = values(len as u64 + 5, len);
        let mut out = [0.0f32];
        matmul_t(pool(1), &a, 1, len, WeightRef::F32(&b), 1, None, &mut out);
        assert_eq!(dot(&a, &b).to_bits(), out[0].to_bits(), "len {len}");
    }
}

#[test]
fn axpy_is_a_fused_multiply_add_at_every_position() {
    for len in [0, 1, 9, 16, 31, 100] {
        let x = values(1, len);
        let mut y = values(2, len);
        let want: Vec<f32> = y
            .iter()
            .zip(&x)
            .map(|(y, x)| 0.37f32.mul_add(*x, *y))
            .collect();
        axpy(0.37, &x, &mut y);
        assert_eq!(y, want, "len {len}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// The attention helpers have the bits of one `dot` (times the scale) / `axpy` call per element.
    #[test]
    fn attention_helpers_equal_dot_and_axpy_bitwise(
        m in 1usize..7, n in 0usize..20, k in 1usize..80, seed in 0u64..1000,
    ) {
        let (x, w) = (values(seed, m * k), values(seed + 1, n * k));
        // Scores land `stride` apart, the gaps untouched.
        let (scale, stride) = (0.125, n + 3);
        let mut out = vec![f32::NAN; m * stride];
        scaled_dots(&x, m, k, WeightRef::F32(&w), n, scale, &mut out, stride);
        for i in 0..m {
            for j in 0..stride {
                let got = out[i * stride + j];
                if j >= n {
                    prop_assert!(got.is_nan(), "({}, {}) written", i, j);
                    continue;
                }
                let expected = dot(&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]) * scale;
                prop_assert_eq!(got.to_bits(), expected.to_bits(), "({}, {})", i, j);
            }
        }
        let alphas = values(seed + 2, n);
        let mut y = values(seed + 3, k);
        let mut expected = y.clone();
        axpy_rows(&alphas, &w, &mut y);
        for (r, &a) in alphas.iter().enumerate() {
            axpy(a, &w[r * k..(r + 1) * k], &mut expected);
        }
        prop_assert_eq!(
            y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            expected.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        // m rows of weights `stride` apart against the same values: one axpy_rows per row.
        let p = values(seed + 4, m * stride);
        let mut rows = values(seed + 5, m * k);
        let mut expected = rows.clone();
        weighted_rows(&p, stride, m, WeightRef::F32(&w), n, &mut rows);
        for (i, row) in expected.chunks_exact_mut(k).enumerate() {
            axpy_rows(&p[i * stride..i * stride + n], &w, row);
        }
        prop_assert_eq!(
            rows.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            expected.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}

#[test]
fn convert_widens_exactly() {
    let v = values(3, 77);
    for dtype in 1..3 {
        let w = Weights::new(dtype, &v);
        let mut dst = vec![0.0; v.len()];
        backend().convert(w.view(), &mut dst);
        let want: Vec<f32> = (0..v.len()).map(|i| w.at(i)).collect();
        assert_eq!(dst, want);
    }
}

#[test]
fn bandwidth_is_positive() {
    let bw = measure_read_bandwidth(pool(2), 1 << 20, 2);
    assert!(bw.is_finite() && bw > 1e8, "bandwidth {bw}");
}

#[test]
fn fma_peak_is_positive() {
    let peak = measure_fma_peak(pool(2), 5, 2);
    assert!(peak.is_finite() && peak > 1e8, "FMA peak {peak}");
}

#[test]
#[should_panic(expected = "expected m*k")]
fn shape_mismatch_panics() {
    let w = [0.0f32; 4];
    let mut out = [0.0f32; 2];
    matmul_t(
        pool(1),
        &[0.0; 3],
        1,
        2,
        WeightRef::F32(&w),
        2,
        None,
        &mut out,
    );
}

/// Inputs for the activation tests: ordinary values, the clamp edges, huge and special values.
fn activation_inputs() -> Vec<f32> {
    let mut gates: Vec<f32> = values(7, 500).iter().map(|v| v * 20.0).collect();
    gates.extend(values(8, 100).iter().map(|v| v * 200.0));
    gates.extend([
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        87.0,
        -87.0,
        88.0,
        -88.0,
        87.5,
        -87.5,
        -86.0,
        88.72,
        -88.72,
        88.73,
        -88.73,
        89.0,
        -89.0,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    gates
}

/// The portable code and every SIMD instruction set this CPU has.
fn every_isa() -> Vec<Backend> {
    let mut isas = vec![Backend::Scalar(scalar::Scalar)];
    #[cfg(target_arch = "x86_64")]
    {
        isas.extend(x86_avx2::Avx2::detect().map(Backend::Avx2));
        isas.extend(x86_avx512::Avx512::detect().map(Backend::Avx512));
    }
    isas
}

/// Prefetching is a hint and nothing else: a streamed tile (next tile prefetched) has the bits
/// of a cached one, and the AVX-512 panel kernel the same bits with each prefetch policy (none,
/// Intel's, AMD's), for every dtype, tile shape and a `k` with a tail.
#[test]
fn prefetching_does_not_change_the_bits() {
    let bits = |t: &Tile| t.iter().flatten().map(|v| v.to_bits()).collect::<Vec<_>>();
    for isa in every_isa() {
        for dtype in 0..3 {
            for k in [16, 72] {
                for mr in 1..=isa.tile_mr() {
                    let nr = isa.nr_for(mr);
                    let x = values(11, mr * k);
                    let w = Weights::new(dtype, &values(12, (nr + 2) * k));
                    let (cached, streamed) = (
                        isa.tile(&x, k, mr, w.view(), nr),
                        isa.tile_streamed(&x, k, mr, w.view(), nr),
                    );
                    assert_eq!(
                        bits(&cached),
                        bits(&streamed),
                        "{isa:?} {dtype} {mr}x{nr}x{k}"
                    );
                }
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = x86_avx512::Avx512::detect() {
        let (n, k) = (24, 72);
        for dtype in 0..3 {
            let w = Weights::new(dtype, &values(13, n * k));
            let arena = Arena::with_region_bytes(0);
            let packed = Packed::new_as(&arena, w.view(), n, k, packed::Layout::Panels);
            for mr in 1..=x86_avx512::PANEL_MR {
                let x = values(14, mr * k);
                let [off, intel, amd] = x86_avx512::Prefetch::ALL.map(|prefetch| {
                    let mut out = vec![0.0f32; mr * n];
                    let isa = Backend::Avx512(isa.with_panel_prefetch(prefetch));
                    isa.panels(&x, k, mr, &packed, 0..n / packed::PANEL, &mut out);
                    out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                });
                assert_eq!(off, intel, "dtype {dtype}, {mr} rows");
                assert_eq!(off, amd, "dtype {dtype}, {mr} rows");
            }
        }
    }
}

/// Every instruction set this CPU has computes the SiLU activation with the bits of the
/// portable definition, at every length (vector bodies and tails).
#[test]
fn silu_mul_has_the_bits_of_the_definition_on_every_isa() {
    let gates = activation_inputs();
    let ups = values(9, gates.len());
    let want: Vec<u32> = gates
        .iter()
        .zip(&ups)
        .map(|(g, u)| scalar::silu_mul_one(*g, *u).to_bits())
        .collect();
    for isa in every_isa() {
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 33, gates.len()] {
            let mut out = vec![f32::NAN; len];
            match isa {
                Backend::Scalar(s) => s.silu_mul(&gates[..len], &ups[..len], &mut out),
                #[cfg(target_arch = "x86_64")]
                Backend::Avx2(s) => s.silu_mul(&gates[..len], &ups[..len], &mut out),
                #[cfg(target_arch = "x86_64")]
                Backend::Avx512(s) => s.silu_mul(&gates[..len], &ups[..len], &mut out),
            }
            let got: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want[..len], "{isa:?}, {len} elements");
        }
    }
}

/// Every instruction set computes attention's scores and weighted sums with the bits of its
/// own `tile` (times the scale) and one `axpy` per row and element, for query groups and key
/// counts that fill its tiles and leave tails; with keys and values stored as f16 or bf16 (a
/// 16-bit KV cache), with the bits of those on the values widened to f32.
#[test]
fn attention_helpers_have_the_bits_of_tile_and_axpy_on_every_isa() {
    for isa in every_isa() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (m, n, k) in [
                (1, 1, 1),
                (4, 16, 64),
                (3, 9, 17),
                (8, 5, 64),
                (2, 13, 72),
                (5, 3, 7),
                (1, 19, 64),
                (5, 17, 9),
            ] {
                let case = format!("{isa:?} {dtype} {m}x{n}x{k}");
                let x = values(7, m * k);
                // The keys (and values) as stored, and widened back: what the kernels must
                // compute on.
                let stored = values(8, n * k);
                let (halves, brains) = (
                    stored.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>(),
                    stored
                        .iter()
                        .map(|&v| bf16::from_f32(v))
                        .collect::<Vec<_>>(),
                );
                let (w, wide): (WeightRef<'_>, Vec<f32>) = match dtype {
                    DType::F32 => (WeightRef::F32(&stored), stored.clone()),
                    DType::F16 => (
                        WeightRef::F16(&halves),
                        halves.iter().map(|h| h.to_f32()).collect(),
                    ),
                    DType::BF16 => (
                        WeightRef::BF16(&brains),
                        brains.iter().map(|h| h.to_f32()).collect(),
                    ),
                };
                let (scale, stride) = (0.125, n + 2);
                let mut out = vec![f32::NAN; m * stride];
                isa.scaled_dots(&x, m, k, w, n, scale, &mut out, stride);
                for i in 0..m {
                    for j in 0..n {
                        let key = WeightRef::F32(&wide[j * k..(j + 1) * k]);
                        let want = isa.tile(&x[i * k..(i + 1) * k], k, 1, key, 1)[0][0] * scale;
                        let got = out[i * stride + j];
                        assert_eq!(got.to_bits(), want.to_bits(), "{case} ({i}, {j})");
                    }
                }
                let p = values(9, m * stride);
                let mut rows = values(10, m * k);
                let mut want = rows.clone();
                isa.weighted_rows(&p, stride, m, w, n, &mut rows);
                for (i, row) in want.chunks_exact_mut(k).enumerate() {
                    for t in 0..n {
                        isa.axpy(p[i * stride + t], &wide[t * k..(t + 1) * k], row);
                    }
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&rows), bits(&want), "{case}");
            }
        }
    }
}

/// The polynomial `exp` is within two ulp of `e^x` over the range it serves, and SiLU within a
/// few ulp of the f64 value (zero where the exact result underflows).
#[test]
fn exp_and_silu_are_accurate() {
    let mut x = -86.0f32;
    while x <= 88.7 {
        let exact = f64::from(x).exp();
        let got = f64::from(scalar::exp(x));
        assert!(
            ((got - exact) / exact).abs() <= 2.0 * f64::from(f32::EPSILON),
            "exp({x}) = {got}, want {exact}"
        );
        x += 0.0137;
    }
    for g in activation_inputs() {
        if !g.is_finite() {
            continue;
        }
        let g64 = f64::from(g);
        let exact = g64 / (1.0 + (-g64).exp());
        let got = f64::from(scalar::silu_mul_one(g, 1.0));
        let tolerance = 4.0 * f64::from(f32::EPSILON) * exact.abs() + 1e-35;
        assert!(
            (got - exact).abs() <= tolerance,
            "silu({g}) = {got}, want {exact}"
        );
    }
    assert!(scalar::exp(88.72).is_finite() && scalar::exp(88.73) == f32::INFINITY);
    assert!(scalar::silu_mul_one(f32::NAN, 1.0).is_nan());
}

/// `exp_sum` writes `exp(v - max)` and returns their canonical sum, with the bits of the
/// portable definition (for the ISA's lane count) on every instruction set this CPU has.
#[test]
fn exp_sum_has_the_bits_of_the_definition_on_every_isa() {
    let scores: Vec<f32> = values(11, 300).iter().map(|v| v * 30.0).collect();
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for isa in every_isa() {
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 33, scores.len()] {
            let mut want = scores[..len].to_vec();
            let want_sum = match isa {
                #[cfg(target_arch = "x86_64")]
                Backend::Avx512(_) => scalar::exp_sum_lanes::<16>(&mut want, max),
                _ => scalar::exp_sum_lanes::<8>(&mut want, max),
            };
            let mut got = scores[..len].to_vec();
            let sum = match isa {
                Backend::Scalar(s) => s.exp_sum(&mut got, max),
                #[cfg(target_arch = "x86_64")]
                Backend::Avx2(s) => s.exp_sum(&mut got, max),
                #[cfg(target_arch = "x86_64")]
                Backend::Avx512(s) => s.exp_sum(&mut got, max),
            };
            assert_eq!(sum.to_bits(), want_sum.to_bits(), "{isa:?}, {len} elements");
            for (l, (g, s)) in got.iter().zip(&scores).enumerate() {
                assert_eq!(g.to_bits(), scalar::exp(s - max).to_bits(), "{isa:?} [{l}]");
            }
        }
    }
}

/// `softmax` has the bits of the portable definition (for the ISA's lane count) on every
/// instruction set this CPU has, with the largest score at the start, in the middle and in a
/// tail, and with scores that tie `+0` against `-0`, are `-inf` (masked) or NaN.
#[test]
fn softmax_has_the_bits_of_the_definition_on_every_isa() {
    let scores: Vec<f32> = values(12, 300).iter().map(|v| v * 30.0).collect();
    let mut cases: Vec<Vec<f32>> = [0, 1, 7, 8, 9, 15, 16, 17, 33, 300]
        .iter()
        .map(|&len| scores[..len].to_vec())
        .collect();
    for at in [0, 150, 299] {
        let mut v = scores.clone();
        v[at] = 1e4;
        cases.push(v);
    }
    cases.push(vec![
        0.0, -0.0, -0.0, 0.0, -1.0, -0.0, 0.0, -2.0, -0.0, -0.0,
    ]);
    cases.push(vec![-0.0; 19]);
    let mut masked = scores[..40].to_vec();
    masked[3..29].fill(f32::NEG_INFINITY);
    cases.push(masked);
    let mut nan = scores[..21].to_vec();
    nan[20] = f32::NAN;
    cases.push(nan);
    for isa in every_isa() {
        for case in &cases {
            let mut want = case.clone();
            match isa {
                #[cfg(target_arch = "x86_64")]
                Backend::Avx512(_) => scalar::softmax_lanes::<16>(&mut want),
                _ => scalar::softmax_lanes::<8>(&mut want),
            }
            let mut got = case.clone();
            match isa {
                Backend::Scalar(s) => s.softmax(&mut got),
                #[cfg(target_arch = "x86_64")]
                Backend::Avx2(s) => s.softmax(&mut got),
                #[cfg(target_arch = "x86_64")]
                Backend::Avx512(s) => s.softmax(&mut got),
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{isa:?}, {} elements", case.len());
        }
    }
    // What it computes: a distribution.
    let mut v = scores.clone();
    softmax(&mut v);
    let total: f32 = v.iter().sum();
    assert!((total - 1.0).abs() < 1e-5 && v.iter().all(|&p| (0.0..=1.0).contains(&p)));
}

/// `HELIXFLOW_PACK_LAYOUT` names one of the two layouts; anything else is no override.
#[test]
fn layout_override_names_parse() {
    use packed::Layout;
    assert_eq!(Layout::named("streams"), Some(Layout::Streams));
    assert_eq!(Layout::named(" panels\n"), Some(Layout::Panels));
    for other in ["", "Panels", "rows", "streams,panels"] {
        assert_eq!(Layout::named(other), None, "{other:?}");
    }
}
