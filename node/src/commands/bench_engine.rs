//! `helixflow bench-engine`: decode and prefill throughput of the engine on this machine,
//! stated against the memory-bandwidth ceiling and the GEMM throughput measured in the same run.
//!
//! Decode is bandwidth-bound: every step reads every weight once, so the ceiling for one
//! sequence is `bandwidth / weight bytes per step` tokens/s. Prefill is compute-bound and is
//! compared with the CPU backend's own matmul on the model's largest projection at the same `m`,
//! and with the cores' multiply-add peak (FMA chains on registers, the hardware's limit).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use half::{bf16, f16};
use helixflow_kernels::backend::Backend;
use helixflow_kernels::backend::cpu::{CpuBackend, linalg};
use helixflow_kernels::dtype::DType;
use helixflow_kernels::engine::{Engine, EngineConfig, SeqEvent, SequenceRequest};
use helixflow_kernels::model::Model;
use helixflow_kernels::sampler::SamplingParams;
use serde_json::json;

use crate::cli::BenchEngineArgs;

/// One decode repetition: its tokens/s and the bandwidth probed right before and after it.
struct DecodeRun {
    rate: f64,
    bandwidth: f64,
}

pub fn run(args: BenchEngineArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.decode_context >= 1,
        "--decode-context must be at least 1 (a sequence needs a prompt)"
    );
    let mut results = Vec::new();
    println!(
        "| threads | measurement | tokens/s | fraction of ceiling | notes |\n|---|---|---|---|---|"
    );
    for &threads in &args.threads {
        let backend = CpuBackend::new(threads).context("thread pool")?;
        let loading = Instant::now();
        let model = Model::load(&args.model, backend)?;
        let load_seconds = loading.elapsed().as_secs_f64();
        let model_bytes = model.weight_bytes();
        let step_bytes = model.decode_bytes_per_step() as f64;
        let dtype = model.weight_dtype();
        let kv_dtype = args.kv_cache_dtype.resolve(dtype);
        let gemm = gemm_peak(&model, args.prompt_tokens, args.repeat);
        let fma = linalg::measure_fma_peak(model.backend().pool(), 100, 5);
        // Attention reads every cached position's keys and values once per step: at long
        // contexts these bytes join the weights'.
        let kv_per_position = model.kv_bytes_per_token(kv_dtype) as f64;
        let mut engine = Engine::new(model, engine_config(&args))?;
        // The machine's bandwidth drifts by several percent from minute to minute (other
        // tenants), so every decode repetition is paired with the better of the probes taken
        // right before and right after it, and its fraction is taken against that; the
        // reported fraction is the median over the repetitions. The fraction against the best
        // probe of the whole run (never flattering: it compares windows minutes apart) is
        // printed beside it.
        let reader =
            linalg::ReadProbe::new(engine.model().backend().pool(), args.bandwidth_mib << 20);
        let probe =
            |engine: &Engine<CpuBackend>| reader.measure(engine.model().backend().pool(), 2);
        let patterns = reader
            .measure_patterns(engine.model().backend().pool(), 2)
            .into_iter()
            .map(|(name, bandwidth)| format!("{name} {:.2}", bandwidth / 1e9))
            .collect::<Vec<_>>()
            .join(", ");
        let mut decoded = Vec::new();
        for &batch in &args.batch {
            let runs = decode_runs(&mut engine, batch, &args, probe)?;
            decoded.push((batch, runs));
        }
        let best_probe = decoded
            .iter()
            .flat_map(|(_, runs)| runs.iter().map(|r| r.bandwidth))
            .fold(0.0f64, f64::max);
        println!(
            "| {threads} | memory read bandwidth | | | {:.2} GB/s (best of {} probes); {:.1} MB of {dtype} weights per decode step, loaded in {load_seconds:.2} s; read patterns (GB/s, first probe): {patterns}; matmul peak {:.1} GFLOP/s at m={}; FMA peak {:.1} GFLOP/s; kernels: {}; KV cache {kv_dtype} |",
            best_probe / 1e9,
            decoded
                .iter()
                .map(|(_, runs)| runs.len() + 1)
                .sum::<usize>(),
            step_bytes / 1e6,
            gemm / 1e9,
            args.prompt_tokens,
            fma / 1e9,
            linalg::kernels_in_use()
        );
        results.push(
            json!({"threads": threads, "kind": "load", "seconds": load_seconds,
            "weight_bytes": model_bytes}),
        );
        for (batch, runs) in decoded {
            let steps = |rate: f64| rate / batch as f64;
            // A timed step's input sits at position decode_context + 1 + s (the prompt, the
            // prefill's token, the settling step's) and attends to one more position than that.
            let positions =
                args.decode_context as f64 + 2.0 + (args.decode_steps as f64 - 1.0) / 2.0;
            let kv_bytes = batch as f64 * positions * kv_per_position;
            let median = |bytes: f64| {
                let mut fractions: Vec<f64> = runs
                    .iter()
                    .map(|r| steps(r.rate) * bytes / r.bandwidth)
                    .collect();
                fractions.sort_by(f64::total_cmp);
                (fractions[fractions.len() / 2], fractions)
            };
            let (fraction, fractions) = median(step_bytes);
            let (with_kv, _) = median(step_bytes + kv_bytes);
            let rate = runs.iter().map(|r| r.rate).fold(0.0, f64::max);
            let against_best = steps(rate) * step_bytes / best_probe;
            println!(
                "| {threads} | decode batch {batch} | {rate:.1} | {fraction:.3} | {:.2} GB/s effective weight reads at the best rate; {against_best:.3} of the best probe of the run; {with_kv:.3} counting the KV cache's reads too ({:.1} MB per step); per repetition {} |",
                step_bytes * steps(rate) / 1e9,
                kv_bytes / 1e6,
                fractions
                    .iter()
                    .map(|f| format!("{f:.3}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
            results.push(json!({"threads": threads, "kind": "decode", "batch": batch,
                "context": args.decode_context, "kv_cache_dtype": kv_dtype.to_string(),
                "tokens_per_s": rate,
                "bandwidth_fraction": fraction, "bandwidth_fraction_vs_best_probe": against_best,
                "bandwidth_fraction_with_kv": with_kv, "kv_bytes_per_step": kv_bytes,
                "bandwidth_bytes_per_s": best_probe, "step_bytes": step_bytes}));
        }
        let (rate, flops) = prefill_rate(&mut engine, args.prompt_tokens, args.repeat)?;
        println!(
            "| {threads} | prefill {} tokens | {rate:.1} | {:.3} | {:.1} GFLOP/s vs matmul peak {:.1}; {:.3} of the FMA peak ({:.1}); the matmul peak is {:.3} of it |",
            args.prompt_tokens,
            flops / gemm,
            flops / 1e9,
            gemm / 1e9,
            flops / fma,
            fma / 1e9,
            gemm / fma
        );
        results.push(
            json!({"threads": threads, "kind": "prefill", "prompt_tokens": args.prompt_tokens,
            "tokens_per_s": rate, "gflops": flops / 1e9, "matmul_peak_gflops": gemm / 1e9,
            "fma_peak_gflops": fma / 1e9}),
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(())
}

fn engine_config(args: &BenchEngineArgs) -> EngineConfig {
    let max_batch = args.batch.iter().copied().max().unwrap_or(1);
    // Every decode sequence's context prefills in one chunk, all in one step.
    EngineConfig {
        max_batch_tokens: args.prompt_tokens.max(max_batch * args.decode_context),
        max_prefill_chunk: args.prompt_tokens.max(args.decode_context),
        max_running: max_batch,
        kv_cache_bytes: 1 << 30,
        kv_cache_dtype: args.kv_cache_dtype,
        ..EngineConfig::default()
    }
}

/// Distinct prompts so that the prefix cache cannot short-cut anything.
fn prompt(seed: usize, len: usize, vocab: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((seed * 7919 + i * 104_729 + 13) % (vocab - 3)) as u32)
        .collect()
}

/// `args.repeat` timed runs of `args.decode_steps` steps with `batch` sequences running,
/// each with the better of the bandwidth probes taken right before and right after it.
fn decode_runs(
    engine: &mut Engine<CpuBackend>,
    batch: usize,
    args: &BenchEngineArgs,
    probe: impl Fn(&Engine<CpuBackend>) -> f64,
) -> anyhow::Result<Vec<DecodeRun>> {
    let vocab = engine.model().config().vocab_size;
    let steps = args.decode_steps;
    let mut runs = Vec::new();
    let mut before = probe(engine);
    for r in 0..args.repeat.max(1) {
        let ids: Vec<u64> = (0..batch)
            .map(|s| {
                // Seeds unique across batch sizes too: a prompt seen before would come from the
                // prefix cache and start decoding while the others still prefill.
                let p = prompt(batch * 100_000 + r * 1000 + s, args.decode_context, vocab);
                engine.add(SequenceRequest::generate(
                    p,
                    SamplingParams::greedy(),
                    steps + 2,
                ))
            })
            .collect::<Result<_, _>>()?;
        // Prefill every sequence (and take one decode step to settle) before timing. A
        // sequence counts once it has its first token: counting tokens instead let one that
        // started early (its prompt cached) end the wait while the others still prefilled, and
        // the timed steps carried their prefill (batch 4 from a 512-token context read 19
        // tokens/s with 16-token chunks, 125 with whole prompts).
        let mut started = HashSet::new();
        while started.len() < batch {
            for event in engine.step() {
                if let SeqEvent::Token { request, .. } = event {
                    started.insert(request);
                }
            }
        }
        engine.step();
        let t = Instant::now();
        for _ in 0..steps {
            engine.step();
        }
        let elapsed = t.elapsed();
        for id in ids {
            engine.cancel(id);
        }
        let after = probe(engine);
        runs.push(DecodeRun {
            rate: (batch * steps) as f64 / elapsed.as_secs_f64(),
            bandwidth: before.max(after),
        });
        before = after;
    }
    Ok(runs)
}

/// Prefill tokens/s and FLOP/s for one `len`-token prompt processed in one step.
fn prefill_rate(
    engine: &mut Engine<CpuBackend>,
    len: usize,
    repeat: usize,
) -> anyhow::Result<(f64, f64)> {
    let c = engine.model().config().clone();
    let vocab = c.vocab_size;
    let mut best = Duration::MAX;
    for r in 0..repeat.max(1) {
        let id = engine.add(SequenceRequest::generate(
            prompt(50_000 + r, len, vocab),
            SamplingParams::greedy(),
            1,
        ))?;
        let t = Instant::now();
        engine.step();
        best = best.min(t.elapsed());
        engine.cancel(id);
    }
    // Matmul FLOPs (2 per multiply-add) of every projection for `len` rows, plus attention's
    // two causal products, plus the output projection of the last row.
    let kv = c.num_kv_heads * c.head_dim;
    let per_token = c.num_layers
        * (c.hidden_size * (c.num_heads * c.head_dim + 2 * kv)
            + c.num_heads * c.head_dim * c.hidden_size
            + 3 * c.hidden_size * c.intermediate_size);
    let attention = c.num_layers * c.num_heads * c.head_dim * len * (len + 1);
    let flops = 2.0 * (per_token * len + attention) as f64 + 2.0 * (vocab * c.hidden_size) as f64;
    let secs = best.as_secs_f64();
    Ok((len as f64 / secs, flops / secs))
}

/// FLOP/s of the backend's matmul on the model's largest projection, the fused gate/up
/// `[m, hidden] × [2·intermediate, hidden]ᵀ`, with weights in the model's dtype laid out as the
/// model lays them out (packed where this CPU packs): the matmul prefill runs.
fn gemm_peak(model: &Model<CpuBackend>, m: usize, repeat: usize) -> f64 {
    let c = model.config();
    let (k, n) = (c.hidden_size, 2 * c.intermediate_size);
    // The weights on huge pages, as the model's are (`linalg::Arena`).
    let arena = linalg::Arena::with_region_bytes(0);
    match model.weight_dtype() {
        DType::F32 => {
            let w = filled(&arena, n * k, |v| v);
            time_matmul(model, m, k, linalg::WeightRef::F32(&w), n, repeat)
        }
        DType::F16 => {
            let w = filled(&arena, n * k, f16::from_f32);
            time_matmul(model, m, k, linalg::WeightRef::F16(&w), n, repeat)
        }
        DType::BF16 => {
            let w = filled(&arena, n * k, bf16::from_f32);
            time_matmul(model, m, k, linalg::WeightRef::BF16(&w), n, repeat)
        }
    }
}

/// `len` weights in `arena`, small values of a fixed pattern converted by `from`.
fn filled<T: linalg::Element>(
    arena: &linalg::Arena,
    len: usize,
    from: impl Fn(f32) -> T,
) -> linalg::Slab<T> {
    let mut w = arena.alloc::<T>(len);
    for (i, v) in w.iter_mut().enumerate() {
        *v = from(((i % 13) as f32 - 6.0) * 0.01);
    }
    w
}

/// FLOP/s of the best of `repeat` (at least 5) products of `m` rows with `w` (`[n, k]`),
/// packed as the model packs its weights.
fn time_matmul(
    model: &Model<CpuBackend>,
    m: usize,
    k: usize,
    w: linalg::WeightRef<'_>,
    n: usize,
    repeat: usize,
) -> f64 {
    let x: Vec<f32> = (0..m * k).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect();
    let packed = linalg::Packed::new(w, n, k);
    let mut out = vec![0.0; m * n];
    let pool = model.backend().pool();
    let mut best = Duration::MAX;
    for _ in 0..repeat.max(5) {
        let t = Instant::now();
        // Inside a pass, as the engine's matmuls run (see `Backend::run`).
        model.backend().run(|| match &packed {
            Some(p) => linalg::matmul_t_packed(pool, &x, m, p, None, &mut out),
            None => linalg::matmul_t(pool, &x, m, k, w, n, None, &mut out),
        });
        best = best.min(t.elapsed());
    }
    2.0 * (m * k * n) as f64 / best.as_secs_f64()
}
