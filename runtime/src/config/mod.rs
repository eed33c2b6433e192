//! The cluster file (`cluster-configs/*.toml`): parsed into [`raw::RawConfig`], then checked once
//! into a [`ClusterConfig`] whose values are known good. Relative paths in the file are relative
//! to the file's own folder, so a config works from any working directory.
//!
//! ```toml
//! [cluster]
//! name = "single"
//!
//! [[nodes]]
//! id = 1
//! region = "local"
//! http_addr = "127.0.0.1:8080"
//! data_dir = "data/node-1"
//! devices = [{ kind = "cpu", threads = 2 }]
//!
//! [[models]]
//! id = "tiny-llama"
//! path = "../tests/fixtures/tiny-llama"
//! aliases = ["tiny"]
//! kv_cache_mib = 512        # the KV cache's memory
//! kv_cache_dtype = "f32"    # or "f16", "bf16", "auto" (the weights' dtype): 16 bits hold 2x
//!
//! [[keys]]
//! name = "admin"
//! sha256 = "…"            # `helixflow keys new` prints a key and this line
//! role = "admin"
//! requests_per_minute = 600
//! tokens_per_minute = 1000000
//! ```

mod error;
pub mod raw;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::ConfigError;
use raw::{RawConfig, RawDevice, RawKey, RawLimits, RawModel, RawNode};

use crate::keys::KeyHash;

/// A node's id, unique in the cluster.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct NodeId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node-{}", self.0)
    }
}

/// A validated cluster file.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub name: String,
    /// Where the cluster CA and node certificates are (`helixflow certs init` writes them);
    /// needed when nodes talk to each other (any node has a `peer_addr`).
    pub certs_dir: Option<PathBuf>,
    pub nodes: Vec<NodeConfig>,
    pub models: Vec<ModelConfig>,
    pub keys: Vec<KeyConfig>,
    pub limits: Limits,
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub region: String,
    /// Failure domain inside the region (defaults to the region).
    pub zone: String,
    pub http_addr: SocketAddr,
    /// Where peers reach this node over QUIC; `None` only in a one-node cluster.
    pub peer_addr: Option<SocketAddr>,
    /// Whether the node is one of the Raft voters that bootstrap the cluster (default true);
    /// other nodes join as learners through the admin API.
    pub voter: bool,
    pub data_dir: PathBuf,
    pub devices: Vec<DeviceConfig>,
}

/// A compute device of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceConfig {
    /// The CPU, with this many compute threads and this much memory for models.
    Cpu { threads: usize, memory_bytes: u64 },
}

impl DeviceConfig {
    /// Memory the placement planner may fill with model replicas.
    pub fn memory_bytes(&self) -> u64 {
        match self {
            DeviceConfig::Cpu { memory_bytes, .. } => *memory_bytes,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// The name clients use (`"model": "…"`).
    pub id: String,
    /// Folder in the HuggingFace layout.
    pub path: PathBuf,
    /// Other names that resolve to this model.
    pub aliases: Vec<String>,
    /// Longest prompt + completion served; `None` = the model's own `max_position_embeddings`.
    pub context_window: Option<usize>,
    pub kv_cache_bytes: usize,
    /// What the KV cache stores keys and values as.
    pub kv_cache_dtype: KvCacheDtype,
    /// Tokens per engine step at most (decode rows + prefill chunks).
    pub max_batch_tokens: usize,
    /// Prompt tokens of one sequence per step at most: bounds how long a step that carries a
    /// new prompt takes, so running streams keep their pace while long prompts are read.
    pub max_prefill_chunk: usize,
    pub max_running: usize,
    /// Replicas the cluster keeps of this model (each on a different node).
    pub replicas: usize,
}

/// What a model's KV cache stores keys and values as (`kv_cache_dtype`, vLLM's
/// `--kv-cache-dtype`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvCacheDtype {
    /// Exactly what the projections computed (the default).
    #[default]
    F32,
    /// Half the memory, so twice the tokens in the same `kv_cache_mib`; each key and value
    /// rounded once, when written.
    F16,
    Bf16,
    /// The weights' dtype: 16 bits for a 16-bit checkpoint.
    Auto,
}

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Inference and the admin API.
    Admin,
    /// Inference only.
    User,
}

#[derive(Clone, Debug)]
pub struct KeyConfig {
    /// Shown in usage records and metrics; never the key itself.
    pub name: String,
    pub hash: KeyHash,
    pub role: Role,
    /// `None` = unlimited.
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    /// Prompt + completion tokens this key may use in all, ever (the ledger keeps count).
    pub token_budget: Option<u64>,
    /// Requests of this key waiting for a worker at most before new ones get 429.
    pub max_queued: usize,
}

/// Node-wide admission and lifecycle limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Requests waiting for a worker at most before new ones get 503.
    pub max_queue: usize,
    /// Largest HTTP request body; larger gets 413.
    pub max_body_bytes: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// A worker with queued work and no step for this long is restarted.
    pub stall_timeout: Duration,
    /// Admins may make workers fail on purpose (`POST /admin/v1/fault`), for chaos tests.
    pub fault_injection: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_queue: 1024,
            max_body_bytes: 4 << 20,
            shutdown_grace: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            fault_injection: false,
        }
    }
}

pub const DEFAULT_KV_CACHE_MIB: usize = 512;
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 512;
pub const DEFAULT_MAX_PREFILL_CHUNK: usize = 256;
pub const DEFAULT_MAX_RUNNING: usize = 256;
pub const DEFAULT_MAX_QUEUED_PER_KEY: usize = 256;

impl ClusterConfig {
    /// Reads and validates the cluster file at `path`.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        ClusterConfig::parse(&text, path)
    }

    /// Validates `text` as if read from `path` (relative paths resolve against its folder).
    pub fn parse(text: &str, path: &Path) -> Result<ClusterConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Validator { path }.config(raw)
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn invalid(
        &self,
        field: impl Into<String>,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    fn resolve(&self, relative: &str) -> PathBuf {
        let base = self.path.parent().unwrap_or(Path::new("."));
        base.join(relative)
    }

    fn config(&self, raw: RawConfig) -> Result<ClusterConfig, ConfigError> {
        if raw.cluster.name.trim().is_empty() {
            return Err(self.invalid("cluster.name", "\"\"", "must not be empty"));
        }
        if raw.nodes.is_empty() {
            return Err(self.invalid("nodes", "[]", "at least one [[nodes]] entry is needed"));
        }
        let mut node_ids = BTreeSet::new();
        let mut nodes = Vec::new();
        for (i, node) in raw.nodes.into_iter().enumerate() {
            let node = self.node(i, node)?;
            if !node_ids.insert(node.id) {
                return Err(self.invalid(format!("nodes[{i}].id"), node.id.0, "used by two nodes"));
            }
            nodes.push(node);
        }
        if raw.models.is_empty() {
            return Err(self.invalid("models", "[]", "at least one [[models]] entry is needed"));
        }
        let mut names = BTreeMap::new();
        let mut models = Vec::new();
        for (i, model) in raw.models.into_iter().enumerate() {
            let model = self.model(i, model)?;
            for (field, name) in std::iter::once(("id", &model.id))
                .chain(model.aliases.iter().map(|a| ("aliases", a)))
            {
                if let Some(other) = names.insert(name.clone(), i) {
                    return Err(self.invalid(
                        format!("models[{i}].{field}"),
                        format!("{name:?}"),
                        format!("already names models[{other}]"),
                    ));
                }
            }
            models.push(model);
        }
        let mut key_names = BTreeSet::new();
        let mut keys = Vec::new();
        for (i, key) in raw.keys.into_iter().enumerate() {
            let key = self.key(i, key)?;
            if !key_names.insert(key.name.clone()) {
                return Err(self.invalid(
                    format!("keys[{i}].name"),
                    format!("{:?}", key.name),
                    "used by two keys",
                ));
            }
            if keys.iter().any(|k: &KeyConfig| k.hash == key.hash) {
                return Err(self.invalid(
                    format!("keys[{i}].sha256"),
                    key.hash,
                    "the same key is listed twice",
                ));
            }
            keys.push(key);
        }
        let peers = nodes.iter().filter(|n| n.peer_addr.is_some()).count();
        if nodes.len() > 1 && peers < nodes.len() {
            let i = nodes
                .iter()
                .position(|n| n.peer_addr.is_none())
                .unwrap_or(0);
            return Err(self.invalid(
                format!("nodes[{i}].peer_addr"),
                "(missing)",
                "every node of a multi-node cluster needs the QUIC address peers reach it at",
            ));
        }
        if !nodes.iter().any(|n| n.voter) {
            return Err(self.invalid("nodes", "(no voter)", "at least one node must be a voter"));
        }
        let certs_dir = raw.cluster.certs_dir.as_deref().map(|d| self.resolve(d));
        if peers > 0 && certs_dir.is_none() {
            return Err(self.invalid(
                "cluster.certs_dir",
                "(missing)",
                "nodes with a peer_addr talk over mutual TLS: name the folder `helixflow certs init` wrote",
            ));
        }
        Ok(ClusterConfig {
            name: raw.cluster.name,
            certs_dir,
            nodes,
            models,
            keys,
            limits: self.limits(raw.limits)?,
        })
    }

    fn node(&self, i: usize, raw: RawNode) -> Result<NodeConfig, ConfigError> {
        let field = |f: &str| format!("nodes[{i}].{f}");
        let http_addr = raw.http_addr.parse().map_err(|_| {
            self.invalid(
                field("http_addr"),
                format!("{:?}", raw.http_addr),
                "expected IP:PORT, e.g. \"127.0.0.1:8080\"",
            )
        })?;
        if raw.data_dir.trim().is_empty() {
            return Err(self.invalid(field("data_dir"), "\"\"", "must not be empty"));
        }
        let peer_addr = match &raw.peer_addr {
            None => None,
            Some(text) => Some(text.parse().map_err(|_| {
                self.invalid(
                    field("peer_addr"),
                    format!("{text:?}"),
                    "expected IP:PORT, e.g. \"127.0.0.1:7400\"",
                )
            })?),
        };
        let mut devices = Vec::new();
        for (d, device) in raw.devices.into_iter().enumerate() {
            devices.push(self.device(&format!("nodes[{i}].devices[{d}]"), device)?);
        }
        if devices.is_empty() {
            devices.push(DeviceConfig::Cpu {
                threads: default_threads(),
                memory_bytes: default_cpu_memory(),
            });
        }
        let region = raw.region.unwrap_or_else(|| "default".to_owned());
        Ok(NodeConfig {
            id: NodeId(raw.id),
            zone: raw.zone.unwrap_or_else(|| region.clone()),
            region,
            http_addr,
            peer_addr,
            voter: raw.voter.unwrap_or(true),
            data_dir: self.resolve(&raw.data_dir),
            devices,
        })
    }

    fn device(&self, field: &str, raw: RawDevice) -> Result<DeviceConfig, ConfigError> {
        match raw.kind.as_str() {
            "cpu" => {
                let threads = match raw.threads {
                    None => default_threads(),
                    Some(0) => {
                        return Err(self.invalid(
                            format!("{field}.threads"),
                            0,
                            "must be at least 1",
                        ));
                    }
                    Some(t) => t,
                };
                let memory_bytes = match raw.memory_mib {
                    None => default_cpu_memory(),
                    Some(0) => {
                        return Err(self.invalid(
                            format!("{field}.memory_mib"),
                            0,
                            "must be at least 1",
                        ));
                    }
                    Some(mib) => mib.saturating_mul(1 << 20),
                };
                Ok(DeviceConfig::Cpu {
                    threads,
                    memory_bytes,
                })
            }
            other => Err(self.invalid(
                format!("{field}.kind"),
                format!("{other:?}"),
                "this build serves \"cpu\" devices (CUDA and ROCm come with their backends)",
            )),
        }
    }

    fn model(&self, i: usize, raw: RawModel) -> Result<ModelConfig, ConfigError> {
        let field = |f: &str| format!("models[{i}].{f}");
        check_name(&raw.id)
            .map_err(|reason| self.invalid(field("id"), format!("{:?}", raw.id), reason))?;
        for alias in &raw.aliases {
            check_name(alias)
                .map_err(|reason| self.invalid(field("aliases"), format!("{alias:?}"), reason))?;
        }
        let positive = |name: &str, value: Option<usize>, default: usize| match value {
            Some(0) => Err(self.invalid(field(name), 0, "must be at least 1")),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        if raw.context_window == Some(0) {
            return Err(self.invalid(field("context_window"), 0, "must be at least 1"));
        }
        let kv_cache_mib = positive("kv_cache_mib", raw.kv_cache_mib, DEFAULT_KV_CACHE_MIB)?;
        let kv_cache_dtype = match raw.kv_cache_dtype.as_deref() {
            None | Some("f32") => KvCacheDtype::F32,
            Some("f16") => KvCacheDtype::F16,
            Some("bf16") => KvCacheDtype::Bf16,
            Some("auto") => KvCacheDtype::Auto,
            Some(other) => {
                return Err(self.invalid(
                    field("kv_cache_dtype"),
                    format!("{other:?}"),
                    "expected \"f32\", \"f16\", \"bf16\" or \"auto\"",
                ));
            }
        };
        Ok(ModelConfig {
            path: self.resolve(&raw.path),
            aliases: raw.aliases,
            context_window: raw.context_window,
            kv_cache_bytes: kv_cache_mib
                .checked_mul(1 << 20)
                .ok_or_else(|| self.invalid(field("kv_cache_mib"), kv_cache_mib, "too large"))?,
            kv_cache_dtype,
            max_batch_tokens: positive(
                "max_batch_tokens",
                raw.max_batch_tokens,
                DEFAULT_MAX_BATCH_TOKENS,
            )?,
            max_prefill_chunk: positive(
                "max_prefill_chunk",
                raw.max_prefill_chunk,
                DEFAULT_MAX_PREFILL_CHUNK,
            )?,
            max_running: positive("max_running", raw.max_running, DEFAULT_MAX_RUNNING)?,
            replicas: positive("replicas", raw.replicas, 1)?,
            id: raw.id,
        })
    }

    fn key(&self, i: usize, raw: RawKey) -> Result<KeyConfig, ConfigError> {
        let field = |f: &str| format!("keys[{i}].{f}");
        if raw.name.trim().is_empty() {
            return Err(self.invalid(field("name"), "\"\"", "must not be empty"));
        }
        let hash = KeyHash::from_hex(&raw.sha256).ok_or_else(|| {
            self.invalid(
                field("sha256"),
                format!("{:?}", raw.sha256),
                "expected the 64 hex digits of the key's SHA-256 (`helixflow keys new` prints one)",
            )
        })?;
        let role = match raw.role.as_deref() {
            None | Some("user") => Role::User,
            Some("admin") => Role::Admin,
            Some(other) => {
                return Err(self.invalid(
                    field("role"),
                    format!("{other:?}"),
                    "expected \"admin\" or \"user\"",
                ));
            }
        };
        for (name, value) in [
            ("requests_per_minute", raw.requests_per_minute),
            ("tokens_per_minute", raw.tokens_per_minute),
        ] {
            if value == Some(0) {
                return Err(self.invalid(
                    field(name),
                    0,
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
        }
        let max_queued = match raw.max_queued {
            Some(0) => return Err(self.invalid(field("max_queued"), 0, "must be at least 1")),
            Some(v) => v,
            None => DEFAULT_MAX_QUEUED_PER_KEY,
        };
        Ok(KeyConfig {
            name: raw.name,
            hash,
            role,
            requests_per_minute: raw.requests_per_minute,
            tokens_per_minute: raw.tokens_per_minute,
            token_budget: raw.token_budget,
            max_queued,
        })
    }

    fn limits(&self, raw: RawLimits) -> Result<Limits, ConfigError> {
        let defaults = Limits::default();
        let nonzero = |name: &str, value: Option<u64>| match value {
            Some(0) => Err(self.invalid(format!("limits.{name}"), 0, "must be at least 1")),
            other => Ok(other),
        };
        Ok(Limits {
            max_queue: nonzero("max_queue", raw.max_queue.map(|v| v as u64))?
                .map_or(defaults.max_queue, |v| v as usize),
            max_body_bytes: nonzero("max_body_bytes", raw.max_body_bytes.map(|v| v as u64))?
                .map_or(defaults.max_body_bytes, |v| v as usize),
            shutdown_grace: raw
                .shutdown_grace_secs
                .map_or(defaults.shutdown_grace, Duration::from_secs),
            stall_timeout: nonzero("stall_timeout_secs", raw.stall_timeout_secs)?
                .map_or(defaults.stall_timeout, Duration::from_secs),
            fault_injection: raw.fault_injection.unwrap_or(false),
        })
    }
}

/// Model ids and aliases go into URLs and JSON: printable, no spaces or slashes-only names.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 256 {
        return Err("must be 1 to 256 characters");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters");
    }
    Ok(())
}

/// The machine's memory (`MemTotal`), or 16 GiB where it cannot be read.
pub fn default_cpu_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(16 << 30)
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
