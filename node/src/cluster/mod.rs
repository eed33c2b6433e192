//! The node's side of the cluster: its Raft member (metadata in sled), its QUIC transport, the
//! reports it exchanges with peers, and request forwarding.
//!
//! ```text
//! Cluster
//! ├── raft          openraft member; log + state machine in the process's sled database
//! ├── transport     quinn endpoint with mutual TLS (absent in a one-node cluster)
//! ├── service       answers peers' streams: Raft RPCs, actor sessions, forwarded requests
//! ├── sessions      ractor_cluster NodeServer, sessions on ActorSession QUIC streams, and the
//! │                 ReportsActor that takes peers' reports (see `session`)
//! ├── reporter      sends this node's Report to every peer a few times a second
//! ├── monitor       on the leader: seeds the cluster file, marks silent nodes suspect/down,
//! │                 commits new placements
//! └── reconcile     follows committed metadata: keys into Quota, placed models into workers
//! ```
//!
//! Raft is never on the per-request path: requests are routed from local copies (the committed
//! state and the peers' reports), and keys are checked against Quota's local copy.

pub mod forward;
pub mod monitor;
pub mod network;
pub mod peers;
pub mod reconcile;
mod reports_actor;
pub mod routing;
pub mod rpc;
pub mod service;
pub mod session;
mod session_stream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use helixflow_actors::NodeHandle;
use helixflow_consensus::raft::{NodeId, PeerNode, Raft, Request, open_stores};
use helixflow_consensus::state::{ClusterState, Command, NodeRecord};
use helixflow_runtime::config::{ClusterConfig, NodeConfig, NodeId as ConfigNodeId};
use helixflow_runtime::frame::StreamKind;
use helixflow_runtime::transport::{NodeIdentity, Transport, TransportOptions};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::watch;

use peers::Peers;
use rpc::{Committed, RaftReply, RaftRpc, Report, WriteError};

/// Raft timing. openraft's followers start an election only after the leader lease (which it
/// sets to `ELECTION_MAX`) *plus* a random election timeout have passed without a heartbeat,
/// so a dead leader is replaced after 0.6–1.0 s plus one vote round trip. A heartbeat delayed
/// past that (a starved process) costs a needless election, not correctness.
const HEARTBEAT: Duration = Duration::from_millis(100);
const ELECTION_MIN: Duration = Duration::from_millis(300);
const ELECTION_MAX: Duration = Duration::from_millis(500);
/// How long a write may take to commit, leader changes included, before the caller gets 503.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// How long a write waits for live nodes to apply it before returning anyway.
const APPLY_DEADLINE: Duration = Duration::from_secs(3);
/// How long adding a node may take (it must catch up with the log first).
const JOIN_DEADLINE: Duration = Duration::from_secs(30);
/// How long the leader waits for a first report from a node asking to join: one that was just
/// started may still be opening its sessions (a few report periods, more if both sides dialled
/// at once and ractor_cluster dropped one session).
const JOIN_HEARD_DEADLINE: Duration = Duration::from_secs(10);

pub struct Cluster {
    pub me: NodeId,
    pub region: String,
    pub raft: Raft,
    state: watch::Receiver<Arc<ClusterState>>,
    /// The last applied index whose keys are in effect here (Quota has them): what this node
    /// reports as applied, so a write that waited for it is honoured by the next request.
    effective: watch::Sender<u64>,
    transport: Option<Transport>,
    pub peers: Peers,
    /// This node's latest report (what it sends its peers; the router reads it too).
    local: Mutex<Report>,
    pub node: NodeHandle,
    /// Peer QUIC addresses: the cluster file's, then the committed metadata's.
    config_addrs: BTreeMap<NodeId, SocketAddr>,
    pub draining: Arc<AtomicBool>,
    pub config: ClusterConfig,
}

impl Cluster {
    /// Opens the Raft member in `db`, binds the transport (multi-node clusters) and, on a
    /// voter's first start, initialises the Raft group with the cluster file's voters. Nothing
    /// runs until [`Cluster::spawn_tasks`].
    pub async fn open(
        config: &ClusterConfig,
        me: &NodeConfig,
        db: &sled::Db,
        node: NodeHandle,
        draining: Arc<AtomicBool>,
    ) -> anyhow::Result<(
        Arc<Cluster>,
        Option<tokio::sync::mpsc::Receiver<helixflow_runtime::transport::Inbound>>,
    )> {
        let (log, sm) = open_stores(db).context("opening the Raft store")?;
        let state = sm.subscribe();
        let (transport, inbound) = match me.peer_addr {
            None => (None, None),
            Some(addr) => {
                let dir = config
                    .certs_dir
                    .as_ref()
                    .context("the cluster file names no certs_dir")?;
                let identity = NodeIdentity::load(dir, me.id)
                    .with_context(|| format!("loading {}'s certificate", me.id))?;
                let (transport, inbound) =
                    Transport::bind(addr, me.id, identity, TransportOptions::default())
                        .with_context(|| format!("binding the peer transport on {addr}"))?;
                (Some(transport), Some(inbound))
            }
        };
        let raft_config = openraft::Config {
            cluster_name: config.name.clone(),
            heartbeat_interval: HEARTBEAT.as_millis() as u64,
            election_timeout_min: ELECTION_MIN.as_millis() as u64,
            election_timeout_max: ELECTION_MAX.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().context("Raft configuration")?);
        let network = network::Network {
            transport: transport.clone(),
        };
        let raft = Raft::new(me.id.0, raft_config, network, log, sm)
            .await
            .context("starting Raft")?;
        if me.voter && !raft.is_initialized().await.context("reading Raft state")? {
            // Every voter initialises with the same membership (safe, per openraft), so the
            // group forms whichever voters come up first.
            let voters: BTreeMap<NodeId, PeerNode> = config
                .nodes
                .iter()
                .filter(|n| n.voter)
                .map(|n| (n.id.0, peer_node(n)))
                .collect();
            if let Err(e) = raft.initialize(voters).await {
                tracing::debug!(error = %e, "Raft initialise (another voter may have done it)");
            }
        }
        let config_addrs = config
            .nodes
            .iter()
            .filter_map(|n| Some((n.id.0, n.peer_addr?)))
            .collect();
        let cluster = Arc::new(Cluster {
            me: me.id.0,
            region: me.region.clone(),
            raft,
            state,
            effective: watch::Sender::new(0),
            transport,
            peers: Peers::default(),
            local: Mutex::new(Report {
                node: me.id.0,
                ..Report::default()
            }),
            node,
            config_addrs,
            draining,
            config: config.clone(),
        });
        Ok((cluster, inbound))
    }

    /// Starts the background tasks; they end when the returned guard is dropped.
    pub fn spawn_tasks(
        self: &Arc<Self>,
        inbound: Option<tokio::sync::mpsc::Receiver<helixflow_runtime::transport::Inbound>>,
        me: &NodeConfig,
    ) -> Tasks {
        let mut handles = vec![
            tokio::spawn(peers::report_loop(self.clone())),
            tokio::spawn(monitor::run(self.clone(), me.clone())),
            tokio::spawn(reconcile::run(self.clone())),
        ];
        if let Some(inbound) = inbound {
            let link = session::Link::new(self.me);
            handles.push(tokio::spawn(session::run(self.clone(), link.clone())));
            handles.push(tokio::spawn(service::run(self.clone(), inbound, link)));
        }
        Tasks(handles)
    }

    /// The committed metadata as this node last applied it.
    pub fn state(&self) -> Arc<ClusterState> {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.clone()
    }

    pub fn transport(&self) -> Option<&Transport> {
        self.transport.as_ref()
    }

    pub fn local_report(&self) -> Report {
        self.local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_local_report(&self, report: Report) {
        *self.local.lock().unwrap_or_else(PoisonError::into_inner) = report;
    }

    /// Where peer `node` listens for QUIC.
    pub fn peer_addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.state()
            .nodes
            .get(&ConfigNodeId(node))
            .and_then(|n| n.peer_addr.parse().ok())
            .or_else(|| self.config_addrs.get(&node).copied())
    }

    /// Every other node this one knows of.
    pub fn peer_ids(&self) -> Vec<NodeId> {
        let state = self.state();
        let mut ids: Vec<NodeId> = self
            .config_addrs
            .keys()
            .copied()
            .chain(state.nodes.keys().map(|n| n.0))
            .filter(|&n| n != self.me)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Commits `command` through the leader (forwarding it when this node does not lead) and
    /// returns once it is committed and applied by this node and every node heard from
    /// recently, so the change is in effect everywhere that serves.
    pub async fn write(&self, actor: &str, command: Command) -> Result<Committed, WriteError> {
        let request = Request {
            actor: actor.to_owned(),
            command,
        };
        let committed = tokio::time::timeout(WRITE_DEADLINE, self.commit(request))
            .await
            .map_err(|_| WriteError::NoLeader(format!("no commit within {WRITE_DEADLINE:?}")))??;
        self.wait_applied(committed.index).await;
        Ok(committed)
    }

    /// Commits on this node if it leads; otherwise asks the leader, retrying through
    /// elections.
    async fn commit(&self, request: Request) -> Result<Committed, WriteError> {
        loop {
            let error = match self.commit_here(request.clone()).await {
                Ok(committed) => return Ok(committed),
                Err(WriteError::NotLeader {
                    leader: Some(leader),
                }) if leader != self.me => match self.commit_at(leader, &request).await {
                    Ok(committed) => return Ok(committed),
                    Err(WriteError::Fatal(e)) => return Err(WriteError::Fatal(e)),
                    Err(e) => e,
                },
                Err(WriteError::Fatal(e)) => return Err(WriteError::Fatal(e)),
                Err(e) => e,
            };
            tracing::debug!(%error, "metadata write: retrying");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Commits on this node; `NotLeader` when another node leads.
    pub async fn commit_here(&self, request: Request) -> Result<Committed, WriteError> {
        let response = self.raft.client_write(request).await.map_err(write_error)?;
        Ok(Committed {
            index: response.log_id.index,
            response: response.data,
        })
    }

    async fn commit_at(&self, leader: NodeId, request: &Request) -> Result<Committed, WriteError> {
        match self
            .ask_leader(leader, &RaftRpc::Write(request.clone()))
            .await?
        {
            RaftReply::Write(result) => result,
            other => Err(WriteError::NoLeader(format!(
                "unexpected reply from node {leader}: {other:?}"
            ))),
        }
    }

    /// Sends one leader-only RPC to `leader` and returns its reply.
    async fn ask_leader(&self, leader: NodeId, rpc: &RaftRpc) -> Result<RaftReply, WriteError> {
        let transport = self
            .transport
            .as_ref()
            .ok_or_else(|| WriteError::NoLeader("this node has no peer transport".into()))?;
        let addr = self
            .peer_addr(leader)
            .ok_or_else(|| WriteError::NoLeader(format!("no address for node {leader}")))?;
        let (mut send, mut recv) = transport
            .open(ConfigNodeId(leader), addr, StreamKind::Raft)
            .await
            .map_err(|e| WriteError::NoLeader(e.to_string()))?;
        send.send(rpc)
            .await
            .map_err(|e| WriteError::NoLeader(e.to_string()))?;
        let _ = send.finish();
        match recv.recv::<RaftReply>().await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(WriteError::NoLeader(format!(
                "node {leader} closed the stream without a reply"
            ))),
            Err(e) => Err(WriteError::NoLeader(e.to_string())),
        }
    }

    /// Adds a node to the cluster: a learner first (this returns once it has caught up with the
    /// log), then a voter, then its record in the metadata. Runs on the leader; other nodes
    /// forward it there.
    pub async fn join(&self, record: NodeRecord) -> Result<Committed, WriteError> {
        let deadline = Instant::now() + JOIN_DEADLINE;
        loop {
            let error = match self.join_here(record.clone()).await {
                Ok(committed) => return Ok(committed),
                Err(WriteError::NotLeader {
                    leader: Some(leader),
                }) if leader != self.me => {
                    match self
                        .ask_leader(leader, &RaftRpc::Join(record.clone()))
                        .await
                    {
                        Ok(RaftReply::Join(Ok(committed))) => return Ok(committed),
                        Ok(RaftReply::Join(Err(
                            e @ (WriteError::Fatal(_) | WriteError::Refused(_)),
                        ))) => {
                            return Err(e);
                        }
                        Ok(RaftReply::Join(Err(e))) | Err(e) => e,
                        Ok(other) => WriteError::NoLeader(format!("unexpected reply {other:?}")),
                    }
                }
                Err(e @ (WriteError::Fatal(_) | WriteError::Refused(_))) => return Err(e),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(error);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until learner `id` has replicated the leader's whole log.
    async fn caught_up(&self, id: NodeId) -> Result<(), WriteError> {
        let mut metrics = self.raft.metrics();
        let wait = metrics.wait_for(|m| {
            let last = m.last_log_index;
            m.replication
                .as_ref()
                .and_then(|r| r.get(&id))
                .is_some_and(|matched| matched.map(|l| l.index) >= last)
        });
        match tokio::time::timeout(JOIN_DEADLINE, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(WriteError::Fatal("Raft stopped".into())),
            Err(_) => Err(WriteError::Refused(format!(
                "node {id} did not catch up with the log within {JOIN_DEADLINE:?}"
            ))),
        }
    }

    pub async fn join_here(&self, record: NodeRecord) -> Result<Committed, WriteError> {
        let id = record.id.0;
        let node = PeerNode {
            peer_addr: record.peer_addr.clone(),
            http_addr: record.http_addr.clone(),
        };
        let voters: Vec<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if !voters.contains(&id) {
            if self.raft.metrics().borrow().current_leader != Some(self.me) {
                let leader = self.raft.metrics().borrow().current_leader;
                return Err(WriteError::NotLeader { leader });
            }
            // A node that cannot reach us (not running, or its certificate is not from this
            // cluster's CA) must not become a voter: it would raise the quorum without adding a
            // working member. Its reports prove it reaches the leader with a valid identity.
            if !self.heard_within(id, JOIN_HEARD_DEADLINE).await {
                return Err(WriteError::Refused(format!(
                    "node {id} has not been heard from: start it first (with a certificate from this cluster's CA and the voters in its config)"
                )));
            }
            self.raft
                .add_learner(id, node, true)
                .await
                .map_err(write_error)?;
            self.caught_up(id).await?;
            let voter = std::collections::BTreeSet::from([id]);
            self.raft
                .change_membership(openraft::ChangeMembers::AddVoterIds(voter), false)
                .await
                .map_err(write_error)?;
            tracing::info!(node = id, "node joined as a voter");
        }
        self.commit_here(Request {
            actor: "leader".into(),
            command: Command::RegisterNode(record),
        })
        .await
    }

    /// Waits up to `deadline` for a fresh report from `id`.
    async fn heard_within(&self, id: NodeId, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        loop {
            // Registered before the check, so a report landing in between is not missed.
            let news = self.peers.news();
            if self.peers.fresh(id).is_some() {
                return true;
            }
            if tokio::time::timeout_at(until.into(), news).await.is_err() {
                return self.peers.fresh(id).is_some();
            }
        }
    }

    /// Waits (up to [`APPLY_DEADLINE`]) until this node and every peer heard from recently
    /// report having applied log `index`.
    async fn wait_applied(&self, index: u64) {
        let deadline = Instant::now() + APPLY_DEADLINE;
        let mut effective = self.effective.subscribe();
        let _ = tokio::time::timeout(APPLY_DEADLINE, effective.wait_for(|&i| i >= index)).await;
        loop {
            // Registered before the check, so a report landing in between is not missed.
            let news = self.peers.news();
            let lagging: Vec<NodeId> = self
                .peer_ids()
                .into_iter()
                .filter(|&p| {
                    self.peers
                        .fresh(p)
                        .is_some_and(|report| report.applied < index)
                })
                .collect();
            if lagging.is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline.into(), news)
                .await
                .is_err()
            {
                tracing::warn!(index, ?lagging, "nodes have not applied a write in time");
                return;
            }
        }
    }

    /// Whether this node serves: not draining, a Raft leader known, the metadata seeded,
    /// placements committed, every model placed here with a worker up, and every placed model
    /// routable from here.
    pub async fn readiness(&self) -> Readiness {
        let stats = self.node.scheduler_stats().await.unwrap_or_default();
        let leader = self.raft.metrics().borrow().current_leader;
        let metadata = self.state();
        let me = ConfigNodeId(self.me);
        let placed_here: Vec<String> = metadata
            .placements
            .iter()
            .filter(|p| p.node == me)
            .map(|p| p.model.clone())
            .collect();
        let loaded = placed_here.iter().all(|model| {
            stats
                .models
                .iter()
                .any(|m| m.model == *model && m.workers_up > 0)
        });
        // Every placed model must be routable from here (its host's report has arrived), so a
        // load balancer that trusts `/ready` never sees "no node serves this model".
        let mut models: Vec<&str> = metadata
            .placements
            .iter()
            .map(|p| p.model.as_str())
            .collect();
        models.sort_unstable();
        models.dedup();
        let mut routable = true;
        for model in models {
            if self.candidates(model, &[]).await.is_empty() {
                routable = false;
                break;
            }
        }
        let draining = self.is_draining();
        Readiness {
            // Placements are committed once the leader has seen the nodes up (epoch 0: not yet).
            ready: !draining
                && leader.is_some()
                && metadata.seeded
                && metadata.placement_epoch > 0
                && loaded
                && routable,
            draining,
            leader,
            seeded: metadata.seeded,
            placed_here,
            stats,
        }
    }

    /// See [`Cluster::effective`].
    pub fn effective_index(&self) -> u64 {
        *self.effective.borrow()
    }

    pub fn subscribe_effective(&self) -> watch::Receiver<u64> {
        self.effective.subscribe()
    }

    fn set_effective(&self, index: u64) {
        self.effective.send_replace(index);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

fn write_error(error: RaftError<NodeId, ClientWriteError<NodeId, PeerNode>>) -> WriteError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => WriteError::NotLeader {
            leader: forward.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            WriteError::NoLeader(e.to_string())
        }
        RaftError::Fatal(e) => WriteError::Fatal(e.to_string()),
    }
}

/// See [`Cluster::readiness`].
pub struct Readiness {
    pub ready: bool,
    pub draining: bool,
    pub leader: Option<NodeId>,
    pub seeded: bool,
    pub placed_here: Vec<String>,
    pub stats: helixflow_actors::scheduler::SchedulerStats,
}

/// Background tasks of a [`Cluster`]; dropping this stops them.
pub struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

pub fn peer_node(node: &NodeConfig) -> PeerNode {
    PeerNode {
        peer_addr: node.peer_addr.map(|a| a.to_string()).unwrap_or_default(),
        http_addr: node.http_addr.to_string(),
    }
}
