//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use helixflow_kernels::config::Architecture;
use helixflow_kernels::dtype::DType;
use helixflow_kernels::engine::KvCacheDtype;

use crate::commands;

/// HelixFlow: a distributed LLM-inference runtime.
#[derive(Debug, Parser)]
#[command(name = "helixflow", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a local node serving a demo model (written on first run; nothing is downloaded).
    Up(UpArgs),
    /// Run one node of a cluster config, serving the OpenAI API.
    Node(NodeArgs),
    /// API keys: make them offline, or create, list and revoke them on a running cluster.
    Keys(KeysArgs),
    /// The cluster's state as a running node sees it: leader, term, nodes, placements.
    Status(AdminArgs),
    /// Models of a running cluster and where they are placed.
    Models(ModelsArgs),
    /// The cluster CA and node certificates for mutual TLS between nodes.
    Certs(CertsArgs),
    /// Add a running node (not one of the config's voters) to the cluster: it joins as a learner
    /// and is promoted to voter once it has caught up.
    Join(JoinArgs),
    /// Load-test a running node over its OpenAI API: TTFT, inter-token latency, throughput.
    Bench(helixflow_benches::load::LoadArgs),
    /// Measure admin-write commit latency and throughput of a running cluster.
    BenchAdmin(helixflow_benches::admin::AdminBenchArgs),
    /// Generate text from a model directory, like llama-cli.
    Run(RunArgs),
    /// Write a random-weight model in the HuggingFace layout (no download needed).
    GenModel(GenModelArgs),
    /// Measure the engine: decode and prefill throughput against memory bandwidth.
    BenchEngine(BenchEngineArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// HuggingFace model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Raw prompt text (tokenized as is).
    #[arg(
        long,
        conflicts_with = "chat_json",
        required_unless_present = "chat_json"
    )]
    pub prompt: Option<String>,
    /// JSON file with chat messages (`[{"role": ..., "content": ...}]` or `{"messages": [...]}`),
    /// rendered with the model's chat template.
    #[arg(long)]
    pub chat_json: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print one JSON object (token ids, text, finish reason, per-step logprobs) instead of
    /// streaming text.
    #[arg(long)]
    pub json: bool,
    /// Compute threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// What the KV cache stores keys and values as: f32 (exact, the default), f16 or bf16 (half
    /// the memory, so twice the tokens in the same budget; each rounded once when written), or
    /// auto (the weights' dtype).
    #[arg(long, default_value_t = KvCacheDtype::default())]
    pub kv_cache_dtype: KvCacheDtype,
}

#[derive(Debug, Args)]
pub struct GenModelArgs {
    /// Output directory (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_parser = parse_arch)]
    pub arch: Architecture,
    #[arg(long)]
    pub hidden: usize,
    #[arg(long)]
    pub layers: usize,
    #[arg(long)]
    pub heads: usize,
    #[arg(long)]
    pub kv_heads: usize,
    #[arg(long)]
    pub intermediate: usize,
    #[arg(long)]
    pub vocab: usize,
    #[arg(long, value_parser = parse_dtype, default_value = "f32")]
    pub dtype: DType,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 4096)]
    pub max_position_embeddings: usize,
    #[arg(long, default_value_t = 10_000.0)]
    pub rope_theta: f32,
    /// `linear:FACTOR` or `llama3:FACTOR:LOW:HIGH:ORIGINAL_MAX_POSITIONS`.
    #[arg(long)]
    pub rope_scaling: Option<String>,
    /// Sliding attention window (mistral only).
    #[arg(long)]
    pub sliding_window: Option<usize>,
    /// Tie the output projection to the embeddings (default: qwen2 yes, others no).
    #[arg(long)]
    pub tie_embeddings: Option<bool>,
    /// Shard the weights into files of at most this many MB.
    #[arg(long)]
    pub shard_mb: Option<u64>,
}

#[derive(Debug, Args)]
pub struct BenchEngineArgs {
    /// Model directory (make one with `helixflow gen-model`).
    #[arg(long)]
    pub model: PathBuf,
    /// Thread counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Decode batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub batch: Vec<usize>,
    /// Prompt length of the prefill measurement.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Timed decode steps per batch size.
    #[arg(long, default_value_t = 32)]
    pub decode_steps: usize,
    /// Prompt tokens of each decode sequence: the context decode starts from.
    #[arg(long, default_value_t = 16)]
    pub decode_context: usize,
    /// Repetitions of each measurement (decode: the median fraction of the ceiling and the best
    /// tokens/s are reported; prefill: the best).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// MiB read per bandwidth measurement pass.
    #[arg(long, default_value_t = 1024)]
    pub bandwidth_mib: usize,
    /// What the KV cache stores keys and values as: f32 (exact, the default), f16 or bf16 (half
    /// the memory, so twice the tokens in the same budget; each rounded once when written), or
    /// auto (the weights' dtype).
    #[arg(long, default_value_t = KvCacheDtype::default())]
    pub kv_cache_dtype: KvCacheDtype,
    /// Also print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the demo model, key, config and ledger live.
    #[arg(long, default_value = ".helixflow/up")]
    pub data_dir: PathBuf,
    /// Address to serve on (written into the config on first run). With `--nodes N`, node `i`
    /// serves on 127.0.0.i at this port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_addr: std::net::SocketAddr,
    /// Start a local cluster of this many nodes (child processes on 127.0.0.1 … 127.0.0.N,
    /// talking QUIC with mutual TLS).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
}

/// Where a running node is and the admin key to use.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Any node of the cluster.
    #[arg(long, env = "HELIXFLOW_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An admin key.
    #[arg(long, env = "HELIXFLOW_API_KEY", hide_env_values = true)]
    pub key: String,
    /// Print the JSON the node answered instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// The joining node's cluster config (its [[nodes]] entry gives the addresses).
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long)]
    pub id: u64,
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// The catalog, with each model's replicas and where they are placed.
    List(AdminArgs),
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write a new cluster CA and a certificate for every node of a cluster config into the
    /// config's `certs_dir` (refuses to replace an existing CA).
    Init {
        #[arg(long)]
        config: PathBuf,
        /// Write here instead of the config's certs_dir.
        #[arg(long)]
        certs_dir: Option<PathBuf>,
    },
    /// Issue a certificate for one more node with the existing CA (a node joining later).
    Issue {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        id: u64,
        /// IP addresses the certificate is valid for (besides the name node-<id>).
        #[arg(long, value_delimiter = ',')]
        ip: Vec<std::net::IpAddr>,
    },
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Cluster config (see cluster-configs/).
    #[arg(long)]
    pub config: PathBuf,
    /// Which of the config's nodes this is (needed when it lists several).
    #[arg(long = "id", visible_alias = "node-id")]
    pub node_id: Option<u64>,
    /// Serve on this address instead of the config's (port 0 picks a free port).
    #[arg(long)]
    pub http_addr: Option<std::net::SocketAddr>,
    /// Keep state here instead of the config's data_dir.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Read the CA and node certificates from here instead of the config's certs_dir.
    #[arg(long)]
    pub certs_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new random key and the [[keys]] entry that admits it.
    New {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "user", value_parser = ["user", "admin"])]
        role: String,
    },
    /// Print the SHA-256 of a key, as the config's `sha256` field wants it.
    Hash { key: String },
    /// Create a key on a running cluster (committed through Raft); prints the key once.
    Create {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "user", value_parser = ["user", "admin"])]
        role: String,
        #[arg(long)]
        requests_per_minute: Option<u64>,
        #[arg(long)]
        tokens_per_minute: Option<u64>,
        #[arg(long)]
        token_budget: Option<u64>,
    },
    /// List a running cluster's keys (names, roles, limits; never the keys).
    List(AdminArgs),
    /// Revoke a key on a running cluster: refused by every node once this returns.
    Revoke {
        #[command(flatten)]
        admin: AdminArgs,
        name: String,
    },
}

fn parse_arch(s: &str) -> Result<Architecture, String> {
    s.parse()
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    s.parse()
}

/// Runs a parsed command line.
pub fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => commands::up::run(args),
        Command::Node(args) => commands::node::run(args),
        Command::Keys(args) => commands::keys::run(args),
        Command::Status(args) => commands::admin::status(args),
        Command::Models(args) => match args.command {
            ModelsCommand::List(admin) => commands::admin::models(admin),
        },
        Command::Certs(args) => commands::certs::run(args),
        Command::Join(args) => commands::admin::join(args),
        Command::Bench(args) => helixflow_benches::load::run(args),
        Command::BenchAdmin(args) => helixflow_benches::admin::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::GenModel(args) => commands::gen_model::run(args),
        Command::BenchEngine(args) => commands::bench_engine::run(args),
    }
}
