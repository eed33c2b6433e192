//! The cluster file as written: serde types that mirror the TOML one to one and reject unknown
//! fields. Nothing here is trusted; [`super::ClusterConfig::from_raw`] checks it all once.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub cluster: RawCluster,
    #[serde(default)]
    pub nodes: Vec<RawNode>,
    #[serde(default)]
    pub models: Vec<RawModel>,
    #[serde(default)]
    pub keys: Vec<RawKey>,
    #[serde(default)]
    pub limits: RawLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: String,
    #[serde(default)]
    pub certs_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub id: u64,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    pub http_addr: String,
    #[serde(default)]
    pub peer_addr: Option<String>,
    #[serde(default)]
    pub voter: Option<bool>,
    pub data_dir: String,
    #[serde(default)]
    pub devices: Vec<RawDevice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    pub kind: String,
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub id: String,
    pub path: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub context_window: Option<usize>,
    #[serde(default)]
    pub kv_cache_mib: Option<usize>,
    #[serde(default)]
    pub kv_cache_dtype: Option<String>,
    #[serde(default)]
    pub max_batch_tokens: Option<usize>,
    #[serde(default)]
    pub max_prefill_chunk: Option<usize>,
    #[serde(default)]
    pub max_running: Option<usize>,
    #[serde(default)]
    pub replicas: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub name: String,
    pub sha256: String,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    #[serde(default)]
    pub token_budget: Option<u64>,
    #[serde(default)]
    pub max_queued: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default)]
    pub max_queue: Option<usize>,
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    #[serde(default)]
    pub shutdown_grace_secs: Option<u64>,
    #[serde(default)]
    pub stall_timeout_secs: Option<u64>,
    #[serde(default)]
    pub fault_injection: Option<bool>,
}
