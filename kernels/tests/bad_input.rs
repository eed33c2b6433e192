//! Broken model directories are refused with an error naming the file and field, never a panic.

use std::fs;
use std::path::Path;

use helixflow_kernels::backend::cpu::CpuBackend;
use helixflow_kernels::config::Architecture;
use helixflow_kernels::dtype::DType;
use helixflow_kernels::gen_model::{ModelSpec, write_model};
use helixflow_kernels::model::Model;

fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spec = ModelSpec::new(Architecture::Llama, 32, 1, 2, 1, 64, 300, DType::F16);
    write_model(&spec, dir.path(), &mut |_, _| {}).unwrap();
    dir
}

fn load_error(dir: &Path) -> String {
    match Model::load(dir, CpuBackend::new(1).unwrap()) {
        Ok(_) => panic!("a broken model loaded"),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(path, v.to_string()).unwrap();
}

#[test]
fn missing_directory_names_the_config_file() {
    let err = load_error(Path::new("/nonexistent/model"));
    assert!(err.contains("/nonexistent/model/config.json"), "{err}");
}

#[test]
fn missing_weights_name_the_directory() {
    let dir = model_dir();
    fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("no model.safetensors"), "{err}");
}

#[test]
fn truncated_safetensors_is_refused() {
    let dir = model_dir();
    let path = dir.path().join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    for keep in [4, 100, bytes.len() / 2, bytes.len() - 1] {
        fs::write(&path, &bytes[..keep]).unwrap();
        let err = load_error(dir.path());
        assert!(
            err.contains("model.safetensors") && err.contains("truncated or corrupt"),
            "{keep}: {err}"
        );
    }
}

#[test]
fn unknown_architecture_is_named() {
    let dir = model_dir();
    edit_config(dir.path(), |v| {
        v["model_type"] = "gpt_neox".into();
        v["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
    });
    let err = load_error(dir.path());
    assert!(
        err.contains("config.json") && err.contains("model_type") && err.contains("gpt_neox"),
        "{err}"
    );
}

#[test]
fn inconsistent_shapes_name_the_tensor() {
    let dir = model_dir();
    edit_config(dir.path(), |v| v["intermediate_size"] = 96.into());
    let err = load_error(dir.path());
    assert!(
        err.contains("mlp.gate_proj.weight")
            && err.contains("[96, 32]")
            && err.contains("[64, 32]"),
        "{err}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = model_dir();
    edit_config(dir.path(), |v| v["num_hidden_layers"] = 2.into());
    let err = load_error(dir.path());
    assert!(
        err.contains("model.layers.1.input_layernorm.weight"),
        "{err}"
    );
}

#[test]
fn corrupt_shard_index_is_named() {
    let dir = model_dir();
    fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    fs::write(
        dir.path().join("model.safetensors.index.json"),
        "{\"weight_map\": 3}",
    )
    .unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains("model.safetensors.index.json") && err.contains("weight_map"),
        "{err}"
    );
}
