//! Engine-level benches on the tiny-llama fixture: one decode step at several batch sizes,
//! sampling over a 128k vocabulary, KV block bookkeeping, and the CPU backend's attention over
//! a 512-token context in the `bench-engine` model's shape.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use helixflow_kernels::backend::cpu::CpuBackend;
use helixflow_kernels::backend::{AttentionBatch, AttentionSeq, Backend, QkvLayout};
use helixflow_kernels::dtype::DType;
use helixflow_kernels::engine::{Engine, EngineConfig, SequenceRequest};
use helixflow_kernels::kv_cache::BlockManager;
use helixflow_kernels::model::Model;
use helixflow_kernels::sampler::{SamplingParams, SequenceSampler};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llama")
}

fn decode_step(c: &mut Criterion) {
    for batch in [1usize, 16] {
        let model = Model::load(&fixture(), CpuBackend::new(1).expect("pool")).expect("fixture");
        let mut engine = Engine::new(model, EngineConfig::default()).expect("engine");
        for s in 0..batch {
            let prompt: Vec<u32> = (0..16).map(|i| ((s * 31 + i * 7) % 500) as u32).collect();
            engine
                .add(SequenceRequest::generate(
                    prompt,
                    SamplingParams::greedy(),
                    400,
                ))
                .expect("request");
        }
        engine.step();
        c.bench_function(
            &format!("engine/decode_step/tiny-llama/batch{batch}"),
            |b| b.iter(|| black_box(engine.step())),
        );
    }
}

fn sampling(c: &mut Criterion) {
    let logits = helixflow_benches::values(128 * 1024, 3);
    let mut greedy = SequenceSampler::new(SamplingParams::greedy(), &[], 0);
    c.bench_function("sampler/greedy/128k", |b| {
        b.iter(|| black_box(greedy.sample(&logits)))
    });
    let params = SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        top_k: 50,
        seed: Some(1),
        logprobs: Some(5),
        ..SamplingParams::default()
    };
    let mut nucleus = SequenceSampler::new(params, &[], 0);
    c.bench_function("sampler/top_p_top_k_logprobs/128k", |b| {
        b.iter(|| black_box(nucleus.sample(&logits)))
    });
}

fn kv_blocks(c: &mut Criterion) {
    let prompt: Vec<u32> = (0..512).collect();
    c.bench_function("kv_cache/allocate_commit_free/512_tokens", |b| {
        let mut blocks = BlockManager::new(4096, 16).expect("manager");
        b.iter(|| {
            let (mut table, _) = blocks.allocate(&prompt).expect("room");
            blocks.commit(&mut table, &prompt);
            blocks.free(table);
        })
    });
}

/// Attention of one layer of the `bench-engine` model (16 query heads, 4 KV heads of 64) over a
/// 512-token context: prefill (all 512 rows, causal) and one decode row at the last position,
/// with the KV cache in f32 (the default), f16 and bf16.
fn attention(c: &mut Criterion) {
    let layout = QkvLayout {
        num_heads: 16,
        num_kv_heads: 4,
        head_dim: 64,
    };
    let (block_size, context) = (16, 512usize);
    let backend = CpuBackend::new(1).expect("pool");
    let qkv = backend.vector(&helixflow_benches::values(context * layout.width(), 5));
    let last = backend.vector(&helixflow_benches::values(layout.width(), 6));
    let slots: Vec<u32> = (0..context as u32).collect();
    let table: Vec<u32> = (0..(context / block_size) as u32).collect();
    let mut out = backend.vector(&[]);
    let mut group = c.benchmark_group("attention/1t/16x4x64");
    group.sample_size(20);
    for (dtype, suffix) in [
        (DType::F32, ""),
        (DType::F16, "/kv_f16"),
        (DType::BF16, "/kv_bf16"),
    ] {
        let mut store = backend.kv_store(context / block_size, block_size, layout, dtype);
        backend.write_kv(&mut store, &qkv, layout, &slots);
        let prefill = [AttentionSeq {
            rows: 0..context,
            first_position: 0,
            block_table: &table,
        }];
        let batch = AttentionBatch {
            seqs: &prefill,
            block_size,
            sliding_window: None,
            layout,
        };
        group.bench_function(format!("prefill_512{suffix}"), |b| {
            b.iter(|| backend.run(|| backend.attention(&qkv, &store, &batch, &mut out)))
        });
        let decode = [AttentionSeq {
            rows: 0..1,
            first_position: context - 1,
            block_table: &table,
        }];
        let batch = AttentionBatch {
            seqs: &decode,
            ..batch
        };
        group.bench_function(format!("decode_at_512{suffix}"), |b| {
            b.iter(|| backend.run(|| backend.attention(&last, &store, &batch, &mut out)))
        });
    }
    group.finish();
}

criterion_group!(benches, decode_step, sampling, kv_blocks, attention);
criterion_main!(benches);
