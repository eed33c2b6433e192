//! The sled storage against openraft's own storage suite, across a restart, and under a real
//! three-node group (with an in-memory network) that snapshots, purges and catches up a late
//! learner.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    AnyError, CommittedLeaderId, Config, Entry, EntryPayload, LogId, Membership, RaftLogReader,
    RaftNetwork, RaftNetworkFactory, RaftSnapshotBuilder, SnapshotPolicy, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use tempfile::TempDir;
use tokio::sync::watch;

use super::*;
use crate::state::{CatalogEntry, ClusterState, Command, KeyRecord, Rejected};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const DEADLINE: Duration = Duration::from_secs(10);

fn key(name: &str) -> KeyRecord {
    KeyRecord {
        name: name.into(),
        sha256: "00".repeat(32),
        role: "user".into(),
        requests_per_minute: Some(60),
        tokens_per_minute: None,
        token_budget: None,
        revoked: false,
    }
}

fn model(id: &str) -> CatalogEntry {
    CatalogEntry {
        id: id.into(),
        aliases: vec![],
        source: format!("/models/{id}"),
        bytes: 1 << 30,
        context_window: 4096,
        replicas: 1,
    }
}

fn peer(id: NodeId) -> PeerNode {
    PeerNode {
        peer_addr: format!("127.0.0.{id}:7000"),
        http_addr: format!("127.0.0.{id}:8080"),
    }
}

fn request(command: Command) -> Request {
    Request {
        actor: "admin".into(),
        command,
    }
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn normal(term: u64, index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(request(command)),
    }
}

/// Runs `future` to completion, or fails naming what it was waiting for.
async fn within<T>(reason: &str, future: impl Future<Output = T>) -> TestResult<T> {
    tokio::time::timeout(DEADLINE, future)
        .await
        .map_err(|_| format!("timed out after {DEADLINE:?} waiting for {reason}").into())
}

/// Waits until the published state satisfies `done`.
async fn wait_for_state(
    states: &mut watch::Receiver<Arc<ClusterState>>,
    reason: &str,
    done: impl FnMut(&Arc<ClusterState>) -> bool,
) -> TestResult {
    within(reason, states.wait_for(done)).await??;
    Ok(())
}

fn open(dir: &TempDir) -> TestResult<(sled::Db, LogStore, StateMachineStore)> {
    let db = sled::open(dir.path())?;
    let (log, sm) = open_stores(&db)?;
    Ok((db, log, sm))
}

/// A fresh sled database in a temporary directory, which the guard removes.
struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let fail = |e: &dyn std::error::Error| StorageIOError::write(AnyError::error(e));
        let dir = tempfile::tempdir().map_err(|e| fail(&e))?;
        let db = sled::open(dir.path()).map_err(|e| fail(&e))?;
        let (log, sm) = open_stores(&db).map_err(|e| fail(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn passes_openraft_storage_suite() -> TestResult {
    Suite::test_all(SledBuilder)?;
    Ok(())
}

#[tokio::test]
async fn restart_recovers_vote_log_state_and_snapshot() -> TestResult {
    let dir = tempfile::tempdir()?;
    let voters: BTreeSet<NodeId> = [1, 2, 3].into();
    let nodes: BTreeMap<NodeId, PeerNode> = voters.iter().map(|&id| (id, peer(id))).collect();
    let membership = Membership::new(vec![voters], nodes);
    let entries = vec![
        Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Membership(membership.clone()),
        },
        normal(1, 2, Command::PutModel(model("llama"))),
        normal(1, 3, Command::PutKey(key("alice"))),
        normal(2, 4, Command::RevokeKey("nobody".into())),
    ];
    let vote = Vote::new_committed(2, 1);

    let (before, snapshot) = {
        let (_db, mut log, mut sm) = open(&dir)?;
        log.save_vote(&vote).await?;
        log.blocking_append(entries.clone()).await?;
        log.save_committed(Some(log_id(2, 4))).await?;
        let responses = sm.apply(entries.clone()).await?;
        assert_eq!(
            responses,
            [
                Response(Ok(())),
                Response(Ok(())),
                Response(Ok(())),
                Response(Err(Rejected::UnknownKey("nobody".into()))),
            ]
        );
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await?;
        (sm.state(), snapshot)
    };
    assert!(before.key_active("alice"));
    assert!(before.models.contains_key("llama"));

    let (_db, mut log, mut sm) = open(&dir)?;
    assert_eq!(log.read_vote().await?, Some(vote));
    assert_eq!(log.read_committed().await?, Some(log_id(2, 4)));
    assert_eq!(log.try_get_log_entries(..).await?, entries);
    assert_eq!(log.get_log_state().await?.last_log_id, Some(log_id(2, 4)));
    assert_eq!(
        sm.applied_state().await?,
        (
            Some(log_id(2, 4)),
            StoredMembership::new(Some(log_id(1, 1)), membership)
        )
    );
    assert_eq!(sm.state(), before);
    assert_eq!(*sm.subscribe().borrow(), before);

    let current = sm
        .get_current_snapshot()
        .await?
        .ok_or("no current snapshot after restart")?;
    assert_eq!(current.meta, snapshot.meta);
    assert_eq!(current.snapshot.get_ref(), snapshot.snapshot.get_ref());

    // Entries the state already holds are not applied twice.
    sm.apply(entries[1..].to_vec()).await?;
    assert_eq!(sm.state(), before);

    // A snapshot taken after the restart gets a new id.
    let again = sm.get_snapshot_builder().await.build_snapshot().await?;
    assert_eq!(again.meta.last_log_id, snapshot.meta.last_log_id);
    assert_ne!(again.meta.snapshot_id, snapshot.meta.snapshot_id);
    Ok(())
}

#[tokio::test]
async fn bad_bytes_are_errors_not_panics() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let (_db, _log, mut sm) = open(&dir)?;
        let garbage = Box::new(Cursor::new(vec![0xff; 5]));
        let meta = openraft::SnapshotMeta {
            last_log_id: Some(log_id(1, 9)),
            last_membership: StoredMembership::default(),
            snapshot_id: "1-9-0".into(),
        };
        assert!(sm.install_snapshot(&meta, garbage).await.is_err());
        assert_eq!(
            sm.applied_state().await?.0,
            None,
            "a failed install changes nothing"
        );
    }
    {
        let db = sled::open(dir.path())?;
        db.open_tree("raft_sm")?
            .insert("snapshot", &[0xff, 0xff][..])?;
        db.open_tree("raft_log")?
            .insert(7u64.to_be_bytes(), &[0xff][..])?;
    }
    let db = sled::open(dir.path())?;
    assert!(matches!(
        open_stores(&db),
        Err(StoreError::Decode {
            tree: "raft_sm",
            ..
        })
    ));
    db.open_tree("raft_sm")?.remove("snapshot")?;
    let (mut log, _sm) = open_stores(&db)?;
    assert!(log.try_get_log_entries(..).await.is_err());
    assert!(log.get_log_state().await.is_err());
    Ok(())
}

/// Delivers RPCs by calling the target's `Raft` directly.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Raft>>>,
}

impl Router {
    fn add(&self, id: NodeId, raft: Raft) -> TestResult {
        self.nodes
            .lock()
            .map_err(|_| "router lock poisoned")?
            .insert(id, raft);
        Ok(())
    }

    fn raft(&self, id: NodeId) -> Option<Raft> {
        self.nodes.lock().ok()?.get(&id).cloned()
    }
}

struct Connection {
    target: NodeId,
    router: Router,
}

impl Connection {
    fn target(&self) -> Option<Raft> {
        self.router.raft(self.target)
    }
}

fn unreachable<E: std::error::Error>() -> RPCError<NodeId, PeerNode, E> {
    let down = std::io::Error::new(std::io::ErrorKind::NotConnected, "not running");
    RPCError::Unreachable(Unreachable::new(&down))
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &PeerNode) -> Connection {
        Connection {
            target,
            router: self.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        let raft = self.target().ok_or_else(unreachable)?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RemoteError::new(self.target, e).into())
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, PeerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let raft = self.target().ok_or_else(unreachable)?;
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RemoteError::new(self.target, e).into())
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        let raft = self.target().ok_or_else(unreachable)?;
        raft.vote(rpc)
            .await
            .map_err(|e| RemoteError::new(self.target, e).into())
    }
}

struct TestNode {
    raft: Raft,
    log: LogStore,
    sm: StateMachineStore,
    _db: sled::Db,
    _dir: TempDir,
}

async fn start(id: NodeId, config: &Arc<Config>, router: &Router) -> TestResult<TestNode> {
    let dir = tempfile::tempdir()?;
    let (db, log, sm) = open(&dir)?;
    let raft = Raft::new(id, config.clone(), router.clone(), log.clone(), sm.clone()).await?;
    router.add(id, raft.clone())?;
    Ok(TestNode {
        raft,
        log,
        sm,
        _db: db,
        _dir: dir,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_a_late_learner_catches_up_from_a_snapshot() -> TestResult {
    let config = Arc::new(
        Config {
            heartbeat_interval: 50,
            election_timeout_min: 300,
            election_timeout_max: 600,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(5),
            max_in_snapshot_log_to_keep: 0,
            purge_batch_size: 1,
            ..Config::default()
        }
        .validate()?,
    );
    let router = Router::default();
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(id, &config, &router).await?);
    }
    let members: BTreeMap<NodeId, PeerNode> = (1..=3).map(|id| (id, peer(id))).collect();
    nodes[&1].raft.initialize(members).await?;
    let metrics = nodes[&1]
        .raft
        .wait(Some(DEADLINE))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await?;
    let leader_id = metrics.current_leader.ok_or("no leader")?;
    let leader = nodes[&leader_id].raft.clone();

    let written = within(
        "the first write",
        leader.client_write(request(Command::PutKey(key("alice")))),
    )
    .await??;
    assert_eq!(written.data, Response(Ok(())));
    for (id, node) in &nodes {
        let reason = format!("node {id} to see alice");
        wait_for_state(&mut node.sm.subscribe(), &reason, |s| s.key_active("alice")).await?;
    }

    let rejected = within(
        "a rejected write",
        leader.client_write(request(Command::RevokeKey("nobody".into()))),
    )
    .await??;
    assert_eq!(
        rejected.data,
        Response(Err(Rejected::UnknownKey("nobody".into())))
    );

    // Enough entries for a snapshot (every 5 entries; `initialize` writes index 0), after which
    // the leader purges its log.
    let mut last = written.log_id;
    for i in 0..6 {
        let command = Command::PutKey(key(&format!("k{i}")));
        last = within("a write", leader.client_write(request(command)))
            .await??
            .log_id;
    }
    let metrics = leader
        .wait(Some(DEADLINE))
        .metrics(
            |m| m.snapshot.is_some() && m.purged.is_some() && m.last_applied >= Some(last),
            "a snapshot and a purge on the leader",
        )
        .await?;
    let purged = metrics.purged.ok_or("nothing purged")?;
    let mut leader_log = nodes[&leader_id].log.clone();
    assert!(
        leader_log
            .try_get_log_entries(..=purged.index)
            .await?
            .is_empty(),
        "the leader still holds entries up to {purged}"
    );

    // Node 4 joins after the purge: the entries it lacks are gone, so it needs the snapshot.
    nodes.insert(4, start(4, &config, &router).await?);
    within("node 4 to join", leader.add_learner(4, peer(4), true)).await??;
    let all_keys = |s: &Arc<ClusterState>| s.keys.len() == 7 && s.key_active("alice");
    for (id, node) in &nodes {
        let reason = format!("node {id} to see every key");
        wait_for_state(&mut node.sm.subscribe(), &reason, all_keys).await?;
    }
    let learner = &nodes[&4];
    let mut learner_sm = learner.sm.clone();
    let installed = learner_sm
        .get_current_snapshot()
        .await?
        .ok_or("node 4 has no snapshot")?;
    assert!(installed.meta.last_log_id >= Some(purged));
    let mut learner_log = learner.log.clone();
    assert!(
        learner_log
            .try_get_log_entries(..=purged.index)
            .await?
            .is_empty(),
        "node 4 got entries the leader had purged"
    );
    assert_eq!(learner.sm.state(), nodes[&leader_id].sm.state());

    for node in nodes.values() {
        node.raft.shutdown().await?;
    }
    Ok(())
}
