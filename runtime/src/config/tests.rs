use std::path::Path;

use super::*;

const KEY_HASH: &str = "b7aa8ae787177aafcbfaf610cab2f3674b74e34332270931fbf9121733887f8d";

fn minimal(extra: &str) -> String {
    format!(
        r#"
[cluster]
name = "t"

[[nodes]]
id = 1
http_addr = "127.0.0.1:0"
data_dir = "data"

[[models]]
id = "m"
path = "models/m"
aliases = ["alias"]

[[keys]]
name = "k"
sha256 = "{KEY_HASH}"
role = "admin"
requests_per_minute = 5
{extra}
"#
    )
}

fn error_of(text: &str) -> String {
    ClusterConfig::parse(text, Path::new("/etc/hf/c.toml"))
        .unwrap_err()
        .to_string()
}

#[test]
fn minimal_config_gets_defaults_and_resolves_paths_against_the_file() {
    let config = ClusterConfig::parse(&minimal(""), Path::new("/etc/hf/c.toml")).unwrap();
    assert_eq!(config.nodes[0].data_dir, Path::new("/etc/hf/data"));
    assert_eq!(config.models[0].path, Path::new("/etc/hf/models/m"));
    assert_eq!(config.models[0].kv_cache_bytes, 512 << 20);
    assert_eq!(config.models[0].kv_cache_dtype, KvCacheDtype::F32);
    assert_eq!(config.keys[0].role, Role::Admin);
    assert_eq!(config.keys[0].requests_per_minute, Some(5));
    assert_eq!(config.keys[0].tokens_per_minute, None);
    assert!(
        matches!(config.nodes[0].devices[0], DeviceConfig::Cpu { threads, .. } if threads >= 1)
    );
    assert_eq!(config.limits.max_queue, Limits::default().max_queue);
}

#[test]
fn errors_name_the_file_field_and_value() {
    let bad_hash = minimal("").replace(KEY_HASH, "xyz");
    let message = error_of(&bad_hash);
    assert!(message.contains("/etc/hf/c.toml"), "{message}");
    assert!(message.contains("keys[0].sha256"), "{message}");
    assert!(message.contains("\"xyz\""), "{message}");

    let message = error_of(&minimal("").replace("127.0.0.1:0", "localhost"));
    assert!(
        message.contains("nodes[0].http_addr") && message.contains("localhost"),
        "{message}"
    );

    let message = error_of(&minimal("").replace("\"admin\"", "\"root\""));
    assert!(
        message.contains("keys[0].role") && message.contains("root"),
        "{message}"
    );

    let message =
        error_of(&minimal("").replace("requests_per_minute = 5", "requests_per_minute = 0"));
    assert!(message.contains("keys[0].requests_per_minute"), "{message}");

    let message = error_of(&minimal("").replace(
        "aliases = [\"alias\"]",
        "aliases = [\"alias\"]\nkv_cache_dtype = \"fp8\"",
    ));
    assert!(
        message.contains("models[0].kv_cache_dtype") && message.contains("fp8"),
        "{message}"
    );

    let message = error_of(&minimal("tokens_per_mnute = 3"));
    assert!(message.contains("tokens_per_mnute"), "{message}");

    let dup_alias = minimal("").replace("aliases = [\"alias\"]", "aliases = [\"m\"]");
    let message = error_of(&dup_alias);
    assert!(
        message.contains("models[0].aliases") && message.contains("already names"),
        "{message}"
    );

    let message = error_of(&minimal("[limits]\nmax_queue = 0"));
    assert!(message.contains("limits.max_queue"), "{message}");

    let gpu = minimal("").replace(
        "data_dir = \"data\"",
        "data_dir = \"data\"\ndevices = [{ kind = \"tpu\" }]",
    );
    let message = error_of(&gpu);
    assert!(
        message.contains("nodes[0].devices[0].kind") && message.contains("tpu"),
        "{message}"
    );
}

#[test]
fn shipped_cluster_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = ClusterConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            for model in &config.models {
                assert!(
                    model.path.join("config.json").is_file(),
                    "{}: {}",
                    path.display(),
                    model.path.display()
                );
            }
            seen += 1;
        }
    }
    assert!(seen >= 1, "no configs in {}", dir.display());
}

#[test]
fn kv_cache_dtype_takes_each_spelling() {
    for (text, want) in [
        ("f32", KvCacheDtype::F32),
        ("f16", KvCacheDtype::F16),
        ("bf16", KvCacheDtype::Bf16),
        ("auto", KvCacheDtype::Auto),
    ] {
        let config = minimal("").replace(
            "aliases = [\"alias\"]",
            &format!("aliases = [\"alias\"]\nkv_cache_dtype = \"{text}\""),
        );
        let config = ClusterConfig::parse(&config, Path::new("/etc/hf/c.toml")).unwrap();
        assert_eq!(config.models[0].kv_cache_dtype, want, "{text}");
    }
}
