//! The JSON files next to the weights, as transformers 5.23 writes them: `config.json` (with the
//! transformers-4 spellings `rope_theta`, `rope_scaling` and `torch_dtype` alongside the
//! transformers-5 `rope_parameters` and `dtype`), `generation_config.json`,
//! `tokenizer_config.json` and `special_tokens_map.json`.
//!
//! This module only builds JSON values; [`super::write_model`] writes them.

use serde_json::{Value, json};

use crate::config::Architecture;

use super::spec::{ModelSpec, RopeScalingSpec};
use super::tokenizer::{BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, special_tokens};

/// The transformers version the files claim to come from (the fixtures' version).
pub(crate) const TRANSFORMERS_VERSION: &str = "5.23.0";

/// RMSNorm epsilon of every generated model.
pub(crate) const RMS_NORM_EPS: f64 = 1e-5;

/// The fixtures' ChatML template: no default system prompt, no BOS.
pub(crate) const CHAT_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// An `f32` as the `f64` with the same shortest decimal form, so `0.1f32` is written `0.1`
/// rather than `0.10000000149011612`.
fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// Token ids of `<|endoftext|>` (BOS and PAD) and `<|im_end|>` (EOS).
fn special_ids(spec: &ModelSpec) -> (usize, usize) {
    let v = spec.vocab_size;
    (v - 3, v - 1)
}

/// `rope_scaling` (transformers 4) and `rope_parameters` (transformers 5, with the theta).
fn rope_json(spec: &ModelSpec) -> (Value, Value) {
    let theta = decimal(spec.rope_theta);
    let scaling = match spec.rope_scaling {
        None => Value::Null,
        Some(RopeScalingSpec::Linear { factor }) => json!({
            "rope_type": "linear",
            "factor": decimal(factor),
        }),
        Some(RopeScalingSpec::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => json!({
            "rope_type": "llama3",
            "factor": decimal(factor),
            "low_freq_factor": decimal(low_freq_factor),
            "high_freq_factor": decimal(high_freq_factor),
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
    };
    let mut parameters = match &scaling {
        Value::Object(map) => map.clone(),
        _ => {
            let mut map = serde_json::Map::new();
            map.insert("rope_type".into(), json!("default"));
            map
        }
    };
    parameters.insert("rope_theta".into(), json!(theta));
    (scaling, Value::Object(parameters))
}

/// `config.json`.
pub(crate) fn config_json(spec: &ModelSpec) -> Value {
    let (bos, eos) = special_ids(spec);
    let (rope_scaling, rope_parameters) = rope_json(spec);
    let mut config = json!({
        "architectures": [spec.architecture.class_name()],
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "dtype": spec.dtype.hf_name(),
        "eos_token_id": eos,
        "head_dim": spec.head_dim(),
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "model_type": spec.architecture.model_type(),
        "num_attention_heads": spec.num_heads,
        "num_hidden_layers": spec.num_layers,
        "num_key_value_heads": spec.num_kv_heads,
        "pad_token_id": bos,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_parameters": rope_parameters,
        "rope_scaling": rope_scaling,
        "rope_theta": decimal(spec.rope_theta),
        "tie_word_embeddings": spec.tie_word_embeddings,
        "torch_dtype": spec.dtype.hf_name(),
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": true,
        "vocab_size": spec.vocab_size,
    });
    let extra = match spec.architecture {
        Architecture::Llama => json!({
            "attention_bias": false,
            "mlp_bias": false,
            "pretraining_tp": 1,
        }),
        Architecture::Mistral => json!({
            "attention_bias": false,
            "sliding_window": spec.sliding_window,
        }),
        // Qwen2 always has q/k/v biases; `attention_bias: false` would contradict the weights,
        // so it is left out, as transformers' Qwen2Config does.
        Architecture::Qwen2 => json!({
            "layer_types": vec!["full_attention"; spec.num_layers],
            "max_window_layers": spec.num_layers,
            "sliding_window": null,
            "use_sliding_window": false,
        }),
    };
    if let (Value::Object(config), Value::Object(extra)) = (&mut config, extra) {
        config.extend(extra);
    }
    config
}

/// `generation_config.json`: stops on `<|im_end|>` and `<|endoftext|>`.
pub(crate) fn generation_config_json(spec: &ModelSpec) -> Value {
    let (bos, eos) = special_ids(spec);
    json!({
        "bos_token_id": bos,
        "eos_token_id": [eos, bos],
        "pad_token_id": bos,
        "transformers_version": TRANSFORMERS_VERSION,
    })
}

/// `tokenizer_config.json`: nothing added automatically, ChatML template.
pub(crate) fn tokenizer_config_json(spec: &ModelSpec) -> Value {
    let decoder: serde_json::Map<String, Value> = special_tokens(spec.vocab_size)
        .into_iter()
        .map(|(id, content)| {
            (
                id.to_string(),
                json!({
                    "content": content,
                    "lstrip": false,
                    "normalized": false,
                    "rstrip": false,
                    "single_word": false,
                    "special": true,
                }),
            )
        })
        .collect();
    json!({
        "add_bos_token": false,
        "add_eos_token": false,
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
        "bos_token": BOS_TOKEN,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "eos_token": EOS_TOKEN,
        "model_max_length": spec.max_position_embeddings,
        "pad_token": PAD_TOKEN,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": null,
    })
}

/// `special_tokens_map.json`.
pub(crate) fn special_tokens_map_json() -> Value {
    json!({
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
    })
}
