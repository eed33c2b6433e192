//! Tests of the side files (`config.json` round-trip through the engine's config parser, the
//! tokenizer and generation configs) and of spec validation.

use super::tests::{small, write};
use super::*;
use crate::config::{Architecture, ModelConfig, RopeScaling};
use crate::dtype::DType;

/// A change that makes a valid spec invalid.
type Mutation = Box<dyn Fn(&mut ModelSpec)>;

fn assert_config_round_trips(spec: &ModelSpec) {
    let dir = tempfile::tempdir().unwrap();
    write(spec, dir.path());
    let c = ModelConfig::from_dir(dir.path()).unwrap();
    assert_eq!(c.architecture, spec.architecture);
    assert_eq!(c.vocab_size, spec.vocab_size);
    assert_eq!(c.hidden_size, spec.hidden_size);
    assert_eq!(c.intermediate_size, spec.intermediate_size);
    assert_eq!(c.num_layers, spec.num_layers);
    assert_eq!(c.num_heads, spec.num_heads);
    assert_eq!(c.num_kv_heads, spec.num_kv_heads);
    assert_eq!(c.head_dim, spec.hidden_size / spec.num_heads);
    assert_eq!(c.max_position_embeddings, spec.max_position_embeddings);
    assert_eq!(c.rope_theta, spec.rope_theta);
    let scaling = match spec.rope_scaling {
        None => RopeScaling::Default,
        Some(RopeScalingSpec::Linear { factor }) => RopeScaling::Linear { factor },
        Some(RopeScalingSpec::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: original_max_position_embeddings as u32,
        },
    };
    assert_eq!(c.rope_scaling, scaling);
    assert_eq!(c.sliding_window, spec.sliding_window);
    assert_eq!(c.qkv_bias, spec.architecture == Architecture::Qwen2);
    assert!(!c.o_bias && !c.mlp_bias);
    assert_eq!(c.tie_word_embeddings, spec.tie_word_embeddings);
    assert_eq!(c.dtype, Some(spec.dtype));
    let v = spec.vocab_size as u32;
    assert_eq!(c.bos_token_id, Some(v - 3));
    assert_eq!(c.eos_token_ids, vec![v - 1]);
    // The transformers-4 spellings carry the same values as `rope_parameters`.
    let raw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(raw["rope_parameters"]["rope_theta"], raw["rope_theta"]);
    assert_eq!(raw["dtype"], raw["torch_dtype"]);
    let parameters_without_theta = raw["rope_parameters"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "rope_theta")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<serde_json::Map<_, _>>();
    if spec.rope_scaling.is_some() {
        assert_eq!(
            raw["rope_scaling"],
            serde_json::Value::Object(parameters_without_theta)
        );
    } else {
        assert!(raw["rope_scaling"].is_null());
    }
}

#[test]
fn config_round_trips_for_every_architecture_and_rope_scaling() {
    let mut llama3 = small(Architecture::Llama, DType::BF16);
    llama3.rope_theta = 500_000.0;
    llama3.max_position_embeddings = 16_384;
    llama3.rope_scaling = Some(RopeScalingSpec::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    });
    let mut linear = small(Architecture::Llama, DType::F32);
    linear.rope_scaling = Some(RopeScalingSpec::Linear { factor: 2.5 });
    let mut mistral = small(Architecture::Mistral, DType::F16);
    mistral.sliding_window = Some(128);
    let mut mistral_linear = small(Architecture::Mistral, DType::F32);
    mistral_linear.rope_scaling = Some(RopeScalingSpec::Linear { factor: 0.1 });
    let mut qwen2 = small(Architecture::Qwen2, DType::BF16);
    qwen2.rope_theta = 1_000_000.0;
    let mut qwen2_untied = small(Architecture::Qwen2, DType::F32);
    qwen2_untied.tie_word_embeddings = false;
    for spec in [llama3, linear, mistral, mistral_linear, qwen2, qwen2_untied] {
        assert_config_round_trips(&spec);
    }
}

#[test]
fn side_files_match_the_fixture_conventions() {
    let spec = small(Architecture::Qwen2, DType::F32);
    let dir = tempfile::tempdir().unwrap();
    write(&spec, dir.path());
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.path().join(name)).unwrap()).unwrap()
    };
    // The fixtures' tokenizer_config.json, spelled out (this file is also built in the engine
    // crate, where the fixtures live elsewhere).
    let chat_template = r#"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"#;
    let tc = read("tokenizer_config.json");
    assert_eq!(tc["chat_template"], chat_template);
    assert_eq!(tc["model_max_length"], 4096);
    assert_eq!(
        tc["added_tokens_decoder"]["297"]["content"],
        "<|endoftext|>"
    );
    assert_eq!(tc["added_tokens_decoder"]["298"]["content"], "<|im_start|>");
    assert_eq!(tc["added_tokens_decoder"]["299"]["content"], "<|im_end|>");
    assert_eq!(tc["bos_token"], "<|endoftext|>");
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert_eq!(tc["pad_token"], "<|endoftext|>");
    assert_eq!(tc["add_bos_token"], false);
    assert_eq!(tc["tokenizer_class"], "PreTrainedTokenizerFast");
    let generation = read("generation_config.json");
    assert_eq!(generation["eos_token_id"], serde_json::json!([299, 297]));
    let map = read("special_tokens_map.json");
    assert_eq!(map["eos_token"], "<|im_end|>");
    let config = read("config.json");
    assert_eq!(config["use_sliding_window"], false);
    assert_eq!(config["max_window_layers"], 2);
    assert!(config["sliding_window"].is_null());
    assert_eq!(config["transformers_version"], "5.23.0");
}

#[test]
fn invalid_specs_name_the_field() {
    let base = small(Architecture::Llama, DType::F32);
    let cases: Vec<(&str, Mutation)> = vec![
        ("hidden_size", Box::new(|s| s.hidden_size = 30)),
        ("hidden_size", Box::new(|s| s.hidden_size = 36)),
        ("hidden_size", Box::new(|s| s.hidden_size = 0)),
        ("num_kv_heads", Box::new(|s| s.num_kv_heads = 3)),
        ("num_heads", Box::new(|s| s.num_heads = 0)),
        ("num_layers", Box::new(|s| s.num_layers = 0)),
        ("intermediate_size", Box::new(|s| s.intermediate_size = 0)),
        ("vocab_size", Box::new(|s| s.vocab_size = 258)),
        ("sliding_window", Box::new(|s| s.sliding_window = Some(16))),
        (
            "max_position_embeddings",
            Box::new(|s| s.max_position_embeddings = 0),
        ),
        ("rope_theta", Box::new(|s| s.rope_theta = f32::NAN)),
        ("max_shard_bytes", Box::new(|s| s.max_shard_bytes = Some(0))),
        (
            "rope_scaling",
            Box::new(|s| s.rope_scaling = Some(RopeScalingSpec::Linear { factor: 0.0 })),
        ),
        (
            "rope_scaling",
            Box::new(|s| {
                s.rope_scaling = Some(RopeScalingSpec::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 4.0,
                    high_freq_factor: 1.0,
                    original_max_position_embeddings: 1024,
                })
            }),
        ),
        (
            "rope_scaling",
            Box::new(|s| {
                s.rope_scaling = Some(RopeScalingSpec::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                })
            }),
        ),
    ];
    for (field, mutate) in cases {
        let mut spec = base.clone();
        mutate(&mut spec);
        let err = spec.validate().unwrap_err();
        match &err {
            GenModelError::InvalidSpec { field: f, .. } => assert_eq!(*f, field, "{err}"),
            other => panic!("expected InvalidSpec for {field}, got {other}"),
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model");
        assert!(write_model(&spec, &out, &mut |_, _| {}).is_err());
        assert!(!out.exists(), "nothing is written for an invalid spec");
    }
    let mut qwen_window = small(Architecture::Qwen2, DType::F32);
    qwen_window.sliding_window = Some(8);
    assert!(
        qwen_window
            .validate()
            .unwrap_err()
            .to_string()
            .contains("sliding_window")
    );
    let mut mistral_window = small(Architecture::Mistral, DType::F32);
    mistral_window.sliding_window = Some(8);
    mistral_window.validate().unwrap();
}
