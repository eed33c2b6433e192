//! `helixflow gen-model`: writes a random-weight Llama, Mistral or Qwen2 model in exactly the
//! HuggingFace layout, so the engine can be exercised end to end where no real model can be
//! downloaded.
//!
//! A directory written by [`write_model`] holds `config.json`, `generation_config.json`,
//! `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` and either
//! `model.safetensors` or `model-0000i-of-0000N.safetensors` shards with
//! `model.safetensors.index.json`. transformers loads every file (checked by `hf_check.py` in this
//! folder). Everything is a pure function of the [`ModelSpec`]: the same spec, seed included,
//! gives byte-identical files whatever the thread count.
//!
//! Weights are generated chunk by chunk while they are written, so models of many gigabytes need
//! only a bounded amount of memory. This module does not load or run models.

mod corpus;
mod error;
mod hf_files;
mod rng;
mod safetensors_out;
mod spec;
mod tensors;
mod tokenizer;

#[cfg(test)]
mod spec_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tokenizer_tests;

use std::path::Path;

pub use error::GenModelError;
pub use spec::{MIN_VOCAB_SIZE, ModelSpec, RopeScalingSpec};

use safetensors_out::{INDEX_FILE, Progress, SINGLE_FILE};

/// Writes the model described by `spec` into `dir` (created if needed; weight files an earlier
/// run left there are replaced). `progress(written, total)` is called with the bytes of tensor
/// data written so far, first with 0 and last with `total` = [`ModelSpec::weight_bytes`].
pub fn write_model(
    spec: &ModelSpec,
    dir: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), GenModelError> {
    spec.validate()?;
    std::fs::create_dir_all(dir).map_err(GenModelError::io(dir))?;

    write_json(dir, "config.json", &hf_files::config_json(spec))?;
    write_json(
        dir,
        "generation_config.json",
        &hf_files::generation_config_json(spec),
    )?;
    write_json(
        dir,
        "tokenizer_config.json",
        &hf_files::tokenizer_config_json(spec),
    )?;
    write_json(
        dir,
        "special_tokens_map.json",
        &hf_files::special_tokens_map_json(),
    )?;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer_error = |source| GenModelError::Tokenizer {
        path: tokenizer_path.clone(),
        source,
    };
    tokenizer::build_tokenizer(spec.vocab_size)
        .map_err(tokenizer_error)?
        .save(&tokenizer_path, true)
        .map_err(tokenizer_error)?;

    safetensors_out::remove_stale_weights(dir)?;
    let tensors = tensors::tensor_list(spec);
    let shards = safetensors_out::plan_shards(&tensors, spec.dtype, spec.max_shard_bytes);
    let mut progress = Progress {
        written: 0,
        total: spec.weight_bytes(),
        report: progress,
    };
    (progress.report)(0, progress.total);
    if let [only] = shards.as_slice() {
        return safetensors_out::write_file(
            &dir.join(SINGLE_FILE),
            only,
            spec.seed,
            spec.dtype,
            &mut progress,
        );
    }
    for (i, shard) in shards.iter().enumerate() {
        let path = dir.join(safetensors_out::shard_name(i + 1, shards.len()));
        safetensors_out::write_file(&path, shard, spec.seed, spec.dtype, &mut progress)?;
    }
    write_json(
        dir,
        INDEX_FILE,
        &safetensors_out::index_json(&shards, spec.dtype),
    )
}

/// Writes `value` as pretty JSON with a final newline.
fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> Result<(), GenModelError> {
    let path = dir.join(name);
    let mut text = serde_json::to_string_pretty(value).map_err(|source| GenModelError::Json {
        path: path.clone(),
        source,
    })?;
    text.push('\n');
    std::fs::write(&path, text).map_err(GenModelError::io(&path))
}
