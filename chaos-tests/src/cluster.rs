//! A real multi-process cluster in a temporary directory: the cluster file (free 127.0.0.1
//! ports, the tiny-llama fixture, an admin key), certificates from `helixflow certs init`, and
//! one [`NodeProcess`] per node with its own data directory and log file.
//!
//! Dropping a [`Cluster`] kills every node. When the test is panicking it first prints the tail
//! of every node's log and the seed, and keeps the directory for a post-mortem.
//!
//! What the nodes promise (leaders, placements, keys) is the tests' business, not this module's;
//! it only offers ways to look (status, readiness) and to hurt (kill, terminate, pause).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::binary::helixflow_binary;
use crate::env;
use crate::http::{Client, ClusterStatus, MODEL, greedy_chat};
use crate::node::{Liveness, NodeProcess};
use crate::ports::{Protocol, free_port};
use crate::seed::ChaosRng;
use crate::wait::wait_for;

/// The admin key of every chaos cluster (it lives only as long as the test).
pub const ADMIN_KEY: &str = "hf-chaos-admin";
/// How long nodes get to become ready: model load, Raft election and first placement take a
/// few seconds; the rest is slack for a loaded two-core machine.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Log lines printed per node when a test fails.
const LOG_TAIL_LINES: usize = 60;

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Raft voters, started by [`Cluster::start`]: nodes `1..=voters`.
    pub voters: usize,
    /// Nodes listed in the cluster file as `voter = false` after the voters, not started.
    pub listed_non_voters: usize,
    /// Replicas of tiny-llama.
    pub replicas: usize,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            voters: 3,
            listed_non_voters: 0,
            replicas: 2,
        }
    }
}

/// What the cluster file says of one node.
#[derive(Clone, Debug)]
struct NodeSpec {
    id: u64,
    voter: bool,
    http_addr: SocketAddr,
    peer_addr: SocketAddr,
}

pub struct Cluster {
    test: String,
    seed: u64,
    /// `None` once kept for a post-mortem.
    dir: Option<TempDir>,
    root: PathBuf,
    binary: PathBuf,
    config: PathBuf,
    specs: Vec<NodeSpec>,
    options: ClusterOptions,
    nodes: Vec<NodeProcess>,
    pub client: Client,
}

impl Cluster {
    /// Writes the cluster file and certificates, starts the voters and waits until each
    /// serves (see [`Cluster::launch`]).
    pub async fn start(test: &str, rng: &ChaosRng, options: ClusterOptions) -> Cluster {
        let mut cluster = Cluster::prepare(test, rng, options);
        let voters: Vec<u64> = cluster
            .specs
            .iter()
            .filter(|s| s.voter)
            .map(|s| s.id)
            .collect();
        cluster.launch(&voters).await;
        cluster
    }

    /// Starts nodes `ids` and waits until each is ready (`GET /ready` answers 200) and serves
    /// tiny-llama.
    pub async fn launch(&mut self, ids: &[u64]) {
        for &id in ids {
            self.node_mut(id).start();
        }
        let ready = self.wait_ready(ids, READY_DEADLINE).await;
        // `/ready` says the node's own part is done; it may not have heard yet that the model
        // is up elsewhere (peers report every 200 ms) and answer 503 meanwhile. Tests start
        // from a cluster where every node serves.
        let serving = self.wait_serving(ids, READY_DEADLINE).await;
        eprintln!(
            "[chaos] {}: nodes {ids:?} ready in {ready:?}, all serving {serving:?} later ({})",
            self.test,
            self.root.display()
        );
    }

    /// Writes the cluster file and certificates; starts nothing.
    ///
    /// # Panics
    /// When the binary is missing, or the directory, file or certificates cannot be made.
    pub fn prepare(test: &str, rng: &ChaosRng, options: ClusterOptions) -> Cluster {
        let count = options.voters + options.listed_non_voters;
        let specs: Vec<NodeSpec> = (1..=count as u64)
            .map(|id| NodeSpec {
                id,
                voter: id <= options.voters as u64,
                http_addr: free_port(Protocol::Tcp),
                peer_addr: free_port(Protocol::Udp),
            })
            .collect();
        let cluster = Cluster::new(test, rng, options, specs, None, ADMIN_KEY);
        cluster.write_config(&cluster.config, "certs");
        cluster
    }

    /// [`Cluster::prepare_shipped`], then starts the file's voters and waits until each serves
    /// (see [`Cluster::launch`]).
    pub async fn start_shipped(
        test: &str,
        rng: &ChaosRng,
        file: &Path,
        admin_key: &str,
    ) -> Cluster {
        let mut cluster = Cluster::prepare_shipped(test, rng, file, admin_key);
        let voters: Vec<u64> = cluster
            .specs
            .iter()
            .filter(|s| s.voter)
            .map(|s| s.id)
            .collect();
        cluster.launch(&voters).await;
        cluster
    }

    /// A cluster of a cluster file as it is shipped (say `cluster-configs/local-3node.toml`):
    /// its addresses, models, keys and limits as written. Only what a second copy must not
    /// share moves into the temporary directory, with the node's own overrides: `--data-dir`
    /// (`node-<id>`) and `--certs-dir` (`certs`, made by `helixflow certs init --config FILE
    /// --certs-dir …`). `admin_key` is a key the file admits as admin. Starts nothing.
    ///
    /// The file's addresses are fixed: two clusters of one file cannot run at once.
    ///
    /// # Panics
    /// When the file cannot be read or lists no nodes, or the certificates cannot be made.
    pub fn prepare_shipped(test: &str, rng: &ChaosRng, file: &Path, admin_key: &str) -> Cluster {
        let specs = shipped_nodes(file);
        let voters = specs.iter().filter(|s| s.voter).count();
        let options = ClusterOptions {
            voters,
            listed_non_voters: specs.len() - voters,
            // The file's own; not written anywhere.
            replicas: 0,
        };
        let mut cluster = Cluster::new(test, rng, options, specs, Some(file), admin_key);
        let certs = cluster.root.join("certs");
        certs_init(&cluster.binary, file, Some(&certs));
        for node in &mut cluster.nodes {
            let data = cluster.root.join(format!("node-{}", node.id));
            node.set_extra_args([
                "--data-dir".into(),
                data.into_os_string(),
                "--certs-dir".into(),
                certs.clone().into_os_string(),
            ]);
        }
        cluster
    }

    /// The cluster in a new temporary directory, its nodes made but not started. `file`: the
    /// cluster file to start from; `None` for `cluster.toml` in the directory (written by
    /// the caller).
    fn new(
        test: &str,
        rng: &ChaosRng,
        options: ClusterOptions,
        specs: Vec<NodeSpec>,
        file: Option<&Path>,
        admin_key: &str,
    ) -> Cluster {
        let binary = helixflow_binary();
        let dir = tempfile::Builder::new()
            .prefix(&format!("helixflow-chaos-{test}-"))
            .tempdir()
            .expect("creating a temporary directory");
        let root = dir.path().to_owned();
        let config = file.map_or_else(|| root.join("cluster.toml"), Path::to_owned);
        let nodes = specs
            .iter()
            .map(|s| {
                NodeProcess::new(
                    s.id,
                    s.http_addr,
                    s.peer_addr,
                    &binary,
                    &config,
                    root.join(format!("node-{}.log", s.id)),
                )
            })
            .collect();
        Cluster {
            test: test.to_owned(),
            seed: rng.seed(),
            dir: Some(dir),
            root,
            binary,
            config,
            specs,
            options,
            nodes,
            client: Client::new(admin_key),
        }
    }

    /// Writes a copy of the cluster file that differs only in `certs_dir`, and makes a new CA
    /// and node certificates there with `helixflow certs init`: what an outsider with the same
    /// node ids but its own CA would have. Returns the file's path.
    pub fn write_config_with_own_ca(&self, file_name: &str, certs_dir: &str) -> PathBuf {
        let path = self.root.join(file_name);
        self.write_config(&path, certs_dir);
        path
    }

    fn write_config(&self, path: &Path, certs_dir: &str) {
        std::fs::write(path, self.config_text(certs_dir))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        certs_init(&self.binary, path, None);
    }

    fn config_text(&self, certs_dir: &str) -> String {
        let mut text = format!(
            "# Written by the chaos harness for `{test}` (seed {seed}).\n\
             [cluster]\nname = \"chaos\"\ncerts_dir = {certs}\n",
            test = self.test,
            seed = self.seed,
            certs = toml_string(certs_dir),
        );
        for spec in &self.specs {
            let _ = write!(
                text,
                "\n[[nodes]]\nid = {id}\nregion = \"local\"\nzone = \"local-{id}\"\n\
                 http_addr = \"{http}\"\npeer_addr = \"{peer}\"\nvoter = {voter}\n\
                 data_dir = \"node-{id}\"\ndevices = [{{ kind = \"cpu\", threads = 1 }}]\n",
                id = spec.id,
                http = spec.http_addr,
                peer = spec.peer_addr,
                voter = spec.voter,
            );
        }
        let _ = write!(
            text,
            "\n[[models]]\nid = \"{MODEL}\"\npath = {path}\nreplicas = {replicas}\n\
             kv_cache_mib = 16\nmax_running = 16\n\
             \n[[keys]]\nname = \"chaos-admin\"\nsha256 = \"{admin}\"\nrole = \"admin\"\n\
             \n[limits]\nshutdown_grace_secs = 5\n",
            path = toml_string(&fixture_dir().display().to_string()),
            replicas = self.options.replicas,
            admin = sha256_hex(ADMIN_KEY),
        );
        text
    }

    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The cluster file the nodes start from.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The `helixflow` binary the nodes run.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Every node id the cluster file lists, ascending.
    pub fn ids(&self) -> Vec<u64> {
        self.specs.iter().map(|s| s.id).collect()
    }

    /// The listed nodes whose process runs (not paused, killed or terminated).
    pub fn running_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.liveness() == Liveness::Running)
            .map(|n| n.id)
            .collect()
    }

    /// # Panics
    /// When the cluster file lists no node `id`.
    pub fn node(&self, id: u64) -> &NodeProcess {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("the cluster has no node {id}"))
    }

    /// # Panics
    /// When the cluster file lists no node `id`.
    pub fn node_mut(&mut self, id: u64) -> &mut NodeProcess {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("the cluster has no node {id}"))
    }

    pub fn url(&self, id: u64) -> String {
        self.node(id).url()
    }

    /// Waits until every node of `ids` answers `GET /ready` with 200; returns how long it took.
    ///
    /// # Panics
    /// When one exits meanwhile, or `deadline` passes.
    pub async fn wait_ready(&mut self, ids: &[u64], deadline: Duration) -> Duration {
        let ((), took) = wait_for(deadline, &format!("nodes {ids:?} to be ready"), || {
            let exited: Vec<String> = ids
                .iter()
                .filter_map(|&id| {
                    let status = self.node_mut(id).exited()?;
                    Some(format!("node-{id} exited with {status}"))
                })
                .collect();
            assert!(exited.is_empty(), "{}", exited.join("; "));
            let client = self.client.clone();
            let urls: Vec<(u64, String)> = ids.iter().map(|&id| (id, self.url(id))).collect();
            async move {
                for (id, url) in urls {
                    if !client.ready(&url, Duration::from_secs(2)).await {
                        return Err(format!("node-{id} not ready"));
                    }
                }
                Ok(())
            }
        })
        .await;
        took
    }

    /// Waits until every node of `ids` answers a one-token chat request with 200 (served
    /// locally or forwarded); returns how long it took.
    ///
    /// # Panics
    /// When `deadline` passes first.
    pub async fn wait_serving(&self, ids: &[u64], deadline: Duration) -> Duration {
        let urls: Vec<(u64, String)> = ids.iter().map(|&id| (id, self.url(id))).collect();
        let ((), took) = wait_for(deadline, &format!("nodes {ids:?} to serve {MODEL}"), || {
            let (client, urls) = (self.client.clone(), urls.clone());
            async move {
                for (id, url) in urls {
                    let reply = client
                        .chat(&url, client.admin_key(), &greedy_chat("ping", 1))
                        .await
                        .map_err(|e| format!("node-{id}: {e:#}"))?;
                    if reply.status != 200 {
                        return Err(format!("node-{id}: HTTP {}: {}", reply.status, reply.body));
                    }
                }
                Ok(())
            }
        })
        .await;
        took
    }

    /// Node `id`'s view of the cluster.
    ///
    /// # Panics
    /// When it does not answer 200.
    pub async fn status(&self, id: u64) -> ClusterStatus {
        self.client
            .cluster_status(&self.url(id))
            .await
            .unwrap_or_else(|e| panic!("GET /admin/v1/cluster on node-{id}: {e:#}"))
    }

    /// Waits until every node of `ids` names the same leader, and returns it with its term.
    ///
    /// # Panics
    /// When they do not agree within `deadline`.
    pub async fn agreed_leader(&self, ids: &[u64], deadline: Duration) -> (u64, u64) {
        let (leader, _) = wait_for(
            deadline,
            &format!("nodes {ids:?} to agree on a leader"),
            || {
                let client = self.client.clone();
                let urls: Vec<(u64, String)> = ids.iter().map(|&id| (id, self.url(id))).collect();
                async move {
                    let mut agreed: Option<(u64, u64)> = None;
                    for (id, url) in urls {
                        let status = client
                            .cluster_status_within(&url, Duration::from_secs(2))
                            .await
                            .map_err(|e| format!("node-{id}: {e:#}"))?;
                        let leader = status
                            .leader
                            .ok_or_else(|| format!("node-{id} knows no leader"))?;
                        match agreed {
                            None => agreed = Some((leader, status.term)),
                            Some((l, _)) if l == leader => {}
                            Some((l, _)) => {
                                return Err(format!("node-{id} says {leader}, another says {l}"));
                            }
                        }
                    }
                    agreed.ok_or_else(|| "no nodes asked".to_owned())
                }
            },
        )
        .await;
        leader
    }

    /// Why one of `members` counts node `id` in — lists it `up` or has placed a replica on
    /// it — or `None` when none does; `Err` when a member does not answer.
    pub async fn counted_in(&self, members: &[u64], id: u64) -> Result<Option<String>, String> {
        for &member in members {
            let status = self
                .client
                .cluster_status_within(&self.url(member), Duration::from_secs(2))
                .await
                .map_err(|e| format!("node-{member}: {e:#}"))?;
            if status.status_of(id) == Some("up") {
                return Ok(Some(format!(
                    "node-{member} lists node-{id} as up: {status:?}"
                )));
            }
            if status.hosts_of(MODEL).contains(&id) {
                return Ok(Some(format!(
                    "node-{member} placed a replica on node-{id}: {status:?}"
                )));
            }
        }
        Ok(None)
    }

    /// kill -9 node `id`.
    pub fn kill(&mut self, id: u64) {
        eprintln!("[chaos] {}: kill -9 node-{id}", self.test);
        self.node_mut(id).kill();
    }

    /// SIGTERM to node `id`; waits up to `deadline` for it to drain and exit.
    ///
    /// # Panics
    /// When it is not running or does not exit in time.
    pub fn terminate(&mut self, id: u64, deadline: Duration) -> ExitStatus {
        eprintln!("[chaos] {}: SIGTERM node-{id}", self.test);
        self.node_mut(id).terminate(deadline)
    }

    /// Starts node `id` (again) on its data directory.
    pub fn start_node(&mut self, id: u64) {
        eprintln!("[chaos] {}: starting node-{id}", self.test);
        self.node_mut(id).start();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for node in &mut self.nodes {
            node.kill();
        }
        let keep = failed || std::env::var_os(env::KEEP_DIR).is_some();
        if failed {
            let mut report = format!(
                "\n[chaos] {} failed (seed {}; replay with {}={})\n",
                self.test,
                self.seed,
                env::SEED,
                self.seed
            );
            for node in &self.nodes {
                let _ = write!(
                    report,
                    "----- node-{} log ({}), last {LOG_TAIL_LINES} lines -----\n{}\n",
                    node.id,
                    node.log_path().display(),
                    node.log_tail(LOG_TAIL_LINES)
                );
            }
            eprintln!("{report}");
        }
        if keep && let Some(dir) = self.dir.take() {
            eprintln!(
                "[chaos] {}: kept {} (configs, certificates, data, logs)",
                self.test,
                dir.keep().display()
            );
        }
    }
}

/// `helixflow certs init --config FILE [--certs-dir DIR]`.
///
/// # Panics
/// When it fails.
fn certs_init(binary: &Path, config: &Path, certs_dir: Option<&Path>) {
    let mut command = Command::new(binary);
    command.args(["certs", "init", "--config"]).arg(config);
    if let Some(dir) = certs_dir {
        command.arg("--certs-dir").arg(dir);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {} certs init: {e}", binary.display()));
    assert!(
        output.status.success(),
        "helixflow certs init --config {} failed ({}):\n{}{}",
        config.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The `[[nodes]]` of a cluster file: ids, addresses, voting.
///
/// # Panics
/// When the file cannot be read or parsed, or lists no nodes.
fn shipped_nodes(file: &Path) -> Vec<NodeSpec> {
    #[derive(Deserialize)]
    struct File {
        nodes: Vec<Node>,
    }
    #[derive(Deserialize)]
    struct Node {
        id: u64,
        http_addr: SocketAddr,
        peer_addr: SocketAddr,
        #[serde(default = "voter_by_default")]
        voter: bool,
    }
    fn voter_by_default() -> bool {
        true
    }
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let parsed: File =
        toml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()));
    assert!(
        !parsed.nodes.is_empty(),
        "{} lists no nodes",
        file.display()
    );
    parsed
        .nodes
        .into_iter()
        .map(|n| NodeSpec {
            id: n.id,
            voter: n.voter,
            http_addr: n.http_addr,
            peer_addr: n.peer_addr,
        })
        .collect()
}

/// A file of the repository, by its path from the repository root (say
/// `cluster-configs/local-3node.toml`).
///
/// # Panics
/// When there is no such file.
pub fn repo_file(path: &str) -> PathBuf {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    file.canonicalize()
        .unwrap_or_else(|e| panic!("{} in the repository: {e}", file.display()))
}

/// The tiny-llama fixture of the repository.
pub fn fixture_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llama");
    dir.canonicalize()
        .unwrap_or_else(|e| panic!("the tiny-llama fixture at {}: {e}", dir.display()))
}

/// The SHA-256 of `key` in lowercase hex, as the cluster file's `sha256` wants it.
pub fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(quoted, "\\u{:04X}", c as u32);
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_sha256_hex() {
        // The FIPS 180-2 test vector; `helixflow keys hash abc` prints the same.
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn toml_strings_escape() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
