//! `helixflow up`: the one-command start. On first run it writes a demo model with `gen-model` and
//! a key into the data directory (nothing is downloaded), then a cluster config: one node, or
//! with `--nodes N` a local cluster of N nodes (see [`cluster`]). Every run starts it and prints
//! the URL, the key and a request to paste.

mod cluster;

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use helixflow_kernels::config::Architecture;
use helixflow_kernels::dtype::DType;
use helixflow_kernels::gen_model::{ModelSpec, write_model};
use helixflow_runtime::config::ClusterConfig;
use helixflow_runtime::keys::KeyHash;

use crate::cli::UpArgs;
use crate::commands::{keys, node};

const MODEL_ID: &str = "demo-llama";
const KEY_FILE: &str = "demo-key";
const CONFIG_FILE: &str = "cluster.toml";

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    let dir = &args.data_dir;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = demo_model_and_key(dir)?;
    if args.nodes > 1 {
        cluster::run(&args, &key)
    } else {
        single(&args, &key)
    }
}

/// Writes the demo model (first run) and the demo key; returns the key.
fn demo_model_and_key(dir: &Path) -> anyhow::Result<String> {
    let model_dir = dir.join("models").join(MODEL_ID);
    if !model_dir.join("config.json").is_file() {
        eprintln!(
            "first run: writing the demo model to {}",
            model_dir.display()
        );
        // A small Llama: 4 layers of width 512, f16 — quick to write and to serve on any CPU.
        let mut spec = ModelSpec::new(Architecture::Llama, 512, 4, 8, 4, 1408, 512, DType::F16);
        spec.max_position_embeddings = 4096;
        let mut progress = |_done: u64, _total: u64| {};
        write_model(&spec, &model_dir, &mut progress)?;
    }
    let key_path = dir.join(KEY_FILE);
    match fs::read_to_string(&key_path) {
        Ok(key) => Ok(key.trim().to_owned()),
        Err(_) => {
            let key = keys::new_key()?;
            write_private(&key_path, &key)?;
            Ok(key)
        }
    }
}

/// The model and key sections every generated config shares.
fn model_and_key_toml(key: &str, replicas: u64) -> String {
    format!(
        r#"
[[models]]
id = "{MODEL_ID}"
path = "models/{MODEL_ID}"
aliases = ["demo"]
kv_cache_mib = 256
replicas = {replicas}

[[keys]]
name = "demo"
sha256 = "{hash}"
role = "admin"
"#,
        hash = KeyHash::of(key),
    )
}

/// The banner printed once the cluster serves.
fn banner(url: &str, key: &str, config_path: &Path) -> String {
    format!(
        "\nHelixFlow is serving `{MODEL_ID}` at {url}/v1 (config: {})\n\
         API key: {key}\n\n\
         Try it:\n  curl {url}/v1/chat/completions \\\n    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n    -d '{{\"model\": \"{MODEL_ID}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}], \"max_tokens\": 32}}'\n\n\
         (The demo model has random weights: expect fluent nonsense.) Ctrl-C stops it.\n",
        config_path.display()
    )
}

fn single(args: &UpArgs, key: &str) -> anyhow::Result<()> {
    let config_path = args.data_dir.join(CONFIG_FILE);
    if !config_path.is_file() {
        let text = format!(
            r#"# Written by `helixflow up`. Edit freely; it is rewritten only if deleted.
[cluster]
name = "up"

[[nodes]]
id = 1
region = "local"
http_addr = "{addr}"
data_dir = "node-1"
{rest}"#,
            addr = args.http_addr,
            rest = model_and_key_toml(key, 1),
        );
        fs::write(&config_path, text)
            .with_context(|| format!("writing {}", config_path.display()))?;
    }
    let config = ClusterConfig::load(&config_path)?;
    let node_id = config.nodes[0].id;
    let key = key.to_owned();
    node::serve(config, node_id, move |addr| {
        let url = format!("http://{addr}");
        let _ = writeln!(
            std::io::stderr().lock(),
            "{}",
            banner(&url, &key, &config_path)
        );
    })
}

/// Writes `content` readable by the owner only.
fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(content.as_bytes())?;
    Ok(())
}
