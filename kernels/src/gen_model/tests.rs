//! Tests of the written weights: tensor names, shapes, dtypes and scales, sharding,
//! determinism and progress. Config files and spec validation: `spec_tests.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::*;
use crate::config::Architecture;
use crate::dtype::DType;

const ARCHS: [Architecture; 3] = [
    Architecture::Llama,
    Architecture::Mistral,
    Architecture::Qwen2,
];
const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

pub(super) fn small(architecture: Architecture, dtype: DType) -> ModelSpec {
    let mut spec = ModelSpec::new(architecture, 32, 2, 4, 2, 48, 300, dtype);
    spec.seed = 42;
    spec
}

pub(super) fn write(spec: &ModelSpec, dir: &Path) -> Vec<(u64, u64)> {
    let mut calls = Vec::new();
    write_model(spec, dir, &mut |done, total| calls.push((done, total))).unwrap();
    calls
}

/// The names and shapes HuggingFace's modeling code expects, spelled out independently of
/// `tensors.rs`.
fn expected_tensors(spec: &ModelSpec) -> BTreeMap<String, Vec<usize>> {
    let (h, v, i) = (spec.hidden_size, spec.vocab_size, spec.intermediate_size);
    let hd = h / spec.num_heads;
    let (q, kv) = (spec.num_heads * hd, spec.num_kv_heads * hd);
    let mut m = BTreeMap::new();
    m.insert("model.embed_tokens.weight".to_string(), vec![v, h]);
    m.insert("model.norm.weight".to_string(), vec![h]);
    if !spec.tie_word_embeddings {
        m.insert("lm_head.weight".to_string(), vec![v, h]);
    }
    for l in 0..spec.num_layers {
        let p = format!("model.layers.{l}");
        let mut add = |n: &str, s: Vec<usize>| m.insert(format!("{p}.{n}"), s);
        add("input_layernorm.weight", vec![h]);
        add("post_attention_layernorm.weight", vec![h]);
        add("self_attn.q_proj.weight", vec![q, h]);
        add("self_attn.k_proj.weight", vec![kv, h]);
        add("self_attn.v_proj.weight", vec![kv, h]);
        add("self_attn.o_proj.weight", vec![h, q]);
        add("mlp.gate_proj.weight", vec![i, h]);
        add("mlp.up_proj.weight", vec![i, h]);
        add("mlp.down_proj.weight", vec![h, i]);
        if spec.architecture == Architecture::Qwen2 {
            add("self_attn.q_proj.bias", vec![q]);
            add("self_attn.k_proj.bias", vec![kv]);
            add("self_attn.v_proj.bias", vec![kv]);
        }
    }
    m
}

fn safetensors_dtype(dtype: DType) -> Dtype {
    match dtype {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
    }
}

/// Every tensor of a directory (single file or shards) as name -> (dtype, shape, bytes).
fn read_tensors(dir: &Path) -> BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    let mut out = BTreeMap::new();
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        let format = metadata.metadata().as_ref().and_then(|m| m.get("format"));
        assert_eq!(format.map(String::as_str), Some("pt"), "{file:?}");
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            let entry = (view.dtype(), view.shape().to_vec(), view.data().to_vec());
            assert!(out.insert(name.clone(), entry).is_none(), "{name} twice");
        }
    }
    out
}

fn as_f32(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => panic!("unexpected dtype {other:?}"),
    }
}

fn mean_std(xs: &[f32]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn every_arch_and_dtype_has_exactly_the_hf_tensors() {
    for arch in ARCHS {
        for dtype in DTYPES {
            let spec = small(arch, dtype);
            let dir = tempfile::tempdir().unwrap();
            write(&spec, dir.path());
            let tensors = read_tensors(dir.path());
            let shapes: BTreeMap<String, Vec<usize>> = tensors
                .iter()
                .map(|(n, (_, s, _))| (n.clone(), s.clone()))
                .collect();
            assert_eq!(shapes, expected_tensors(&spec), "{arch:?} {dtype:?}");
            for (name, (dt, shape, data)) in &tensors {
                assert_eq!(*dt, safetensors_dtype(dtype), "{name}");
                let elements: usize = shape.iter().product();
                assert_eq!(data.len(), elements * dtype.size(), "{name}");
            }
            let count: usize = shapes.values().map(|s| s.iter().product::<usize>()).sum();
            assert_eq!(spec.parameter_count(), count as u64);
            assert_eq!(spec.weight_bytes(), (count * dtype.size()) as u64);
            assert!(!dir.path().join("model.safetensors.index.json").exists());
        }
    }
}

#[test]
fn weights_have_the_documented_scales() {
    let mut spec = ModelSpec::new(Architecture::Qwen2, 128, 4, 4, 2, 256, 600, DType::F32);
    spec.tie_word_embeddings = false;
    let dir = tempfile::tempdir().unwrap();
    write(&spec, dir.path());
    let tensors = read_tensors(dir.path());
    // Means within 5 standard errors, standard deviations within 15%.
    let close = |name: &str, mean: f64, std: f64| {
        let (dt, _, data) = &tensors[name];
        let values = as_f32(*dt, data);
        let (m, s) = mean_std(&values);
        let standard_error = std / (values.len() as f64).sqrt();
        assert!((m - mean).abs() < 5.0 * standard_error, "{name} mean {m}");
        assert!(
            (s / std - 1.0).abs() < 0.15,
            "{name} std {s}, expected {std}"
        );
    };
    close("model.embed_tokens.weight", 0.0, 1.0);
    close(
        "model.layers.0.self_attn.q_proj.weight",
        0.0,
        1.0 / 128f64.sqrt(),
    );
    close(
        "model.layers.1.mlp.gate_proj.weight",
        0.0,
        1.0 / 128f64.sqrt(),
    );
    close(
        "model.layers.1.mlp.down_proj.weight",
        0.0,
        1.0 / (256.0 * 8.0f64).sqrt(),
    );
    close(
        "model.layers.2.self_attn.o_proj.weight",
        0.0,
        1.0 / (128.0 * 8.0f64).sqrt(),
    );
    close("model.layers.3.input_layernorm.weight", 1.0, 0.1);
    close("model.layers.3.self_attn.q_proj.bias", 0.0, 0.1);
    close("lm_head.weight", 0.0, 1.0 / 128f64.sqrt());
}

#[test]
fn sharded_output_has_an_index_mapping_every_tensor() {
    let mut spec = small(Architecture::Llama, DType::BF16);
    let single = tempfile::tempdir().unwrap();
    write(&spec, single.path());

    spec.max_shard_bytes = Some(20_000);
    let sharded = tempfile::tempdir().unwrap();
    write(&spec, sharded.path());
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sharded.path().join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(index["metadata"]["total_size"], spec.weight_bytes());
    assert_eq!(
        index["metadata"]["total_parameters"],
        spec.parameter_count()
    );
    let weight_map = index["weight_map"].as_object().unwrap();
    let files: BTreeSet<&str> = weight_map.values().map(|v| v.as_str().unwrap()).collect();
    assert!(files.len() > 2, "{files:?}");
    let count = files.len();
    for (i, file) in files.iter().enumerate() {
        assert_eq!(
            *file,
            format!("model-{:05}-of-{count:05}.safetensors", i + 1)
        );
        let bytes = std::fs::read(sharded.path().join(file)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let inside: BTreeSet<String> = st.names().into_iter().map(str::to_string).collect();
        let mapped: BTreeSet<String> = weight_map
            .iter()
            .filter(|(_, f)| f.as_str() == Some(*file))
            .map(|(n, _)| n.clone())
            .collect();
        assert_eq!(inside, mapped, "{file}");
    }
    assert!(!sharded.path().join("model.safetensors").exists());
    let keys: BTreeSet<String> = weight_map.keys().cloned().collect();
    assert_eq!(keys, expected_tensors(&spec).into_keys().collect());
    // Sharding changes the files, not the values.
    assert_eq!(read_tensors(sharded.path()), read_tensors(single.path()));

    // Writing a single file over a sharded checkpoint leaves no stale shard or index behind.
    spec.max_shard_bytes = None;
    write(&spec, sharded.path());
    let mut names: Vec<String> = std::fs::read_dir(sharded.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
}

fn dir_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn same_seed_gives_identical_files_whatever_the_thread_count() {
    // Big enough that tensors span several chunks and batches run in parallel.
    let mut spec = ModelSpec::new(Architecture::Mistral, 256, 1, 4, 4, 512, 1024, DType::F16);
    spec.sliding_window = Some(64);
    spec.seed = 7;
    let in_pool = |spec: &ModelSpec, threads: usize| {
        let dir = tempfile::tempdir().unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| write(spec, dir.path()));
        dir_bytes(dir.path())
    };
    let one = in_pool(&spec, 1);
    let three = in_pool(&spec, 3);
    assert_eq!(one, three);

    spec.seed = 8;
    let other = in_pool(&spec, 2);
    assert_ne!(other["model.safetensors"], one["model.safetensors"]);
    assert_eq!(other["tokenizer.json"], one["tokenizer.json"]);
    assert_eq!(other["config.json"], one["config.json"]);
}

#[test]
fn progress_counts_up_to_the_weight_bytes() {
    let mut spec = ModelSpec::new(Architecture::Llama, 256, 2, 4, 2, 512, 4096, DType::F32);
    spec.max_shard_bytes = Some(3_000_000);
    let dir = tempfile::tempdir().unwrap();
    let calls = write(&spec, dir.path());
    let total = spec.weight_bytes();
    assert_eq!(calls.first(), Some(&(0, total)));
    assert_eq!(calls.last(), Some(&(total, total)));
    assert!(calls.len() > 3, "{calls:?}");
    assert!(
        calls
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[1].1 == total)
    );
}
