//! `helixflow up`: the one-command start. On first run it writes a demo model with `gen-model`, a
//! key and a single-node cluster config into the data directory (nothing is downloaded); every
//! run starts that node and prints the URL, the key and a request to paste.

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
    let key = match fs::read_to_string(&key_path) {
        Ok(key) => key.trim().to_owned(),
        Err(_) => {
            let key = keys::new_key()?;
            write_private(&key_path, &key)?;
            key
        }
    };
    let config_path = dir.join(CONFIG_FILE);
    let text = format!(
        r#"# Written by `helixflow up`. Edit freely; it is rewritten only if deleted.
[cluster]
name = "up"

[[nodes]]
id = 1
region = "local"
http_addr = "{addr}"
data_dir = "node-1"

[[models]]
id = "{MODEL_ID}"
path = "models/{MODEL_ID}"
aliases = ["demo"]
kv_cache_mib = 256

[[keys]]
name = "demo"
sha256 = "{hash}"
role = "admin"
"#,
        addr = args.http_addr,
        hash = KeyHash::of(&key),
    );
    if !config_path.is_file() {
        fs::write(&config_path, text)
            .with_context(|| format!("writing {}", config_path.display()))?;
    }
    let config = ClusterConfig::load(&config_path)?;
    let node_id = config.nodes[0].id;
    node::serve(config, node_id, |addr| {
        let url = format!("http://{addr}");
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "\nHelixFlow is serving `{MODEL_ID}` at {url}/v1 (config: {})\n\
             API key: {key}\n\n\
             Try it:\n  curl {url}/v1/chat/completions \\\n    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n    -d '{{\"model\": \"{MODEL_ID}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}], \"max_tokens\": 32}}'\n\n\
             (The demo model has random weights: expect fluent nonsense.) Ctrl-C stops it.\n",
            config_path.display()
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
