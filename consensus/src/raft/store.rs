//! The sled storage behind openraft (storage-v2): [`LogStore`] holds the Raft log and the vote,
//! [`StateMachineStore`] holds the applied [`ClusterState`] and the current snapshot. Both live
//! in the `sled::Db` the node opened ([`open_stores`]), each in its own trees:
//!
//! - `raft_log`: one entry per key, the key the big-endian `u64` index (so sled's byte order is
//!   log order), the value the bincode of the `Entry`.
//! - `raft_meta`: `vote`, `last_purged` and `committed`.
//! - `raft_sm`: `snapshot` (the current snapshot's meta and bytes: the applied [`ClusterState`]
//!   with its last applied log id and membership).
//!
//! Values are bincode (serde, standard config); a value that does not decode is an error
//! ([`StoreError::Decode`], or openraft's `StorageError`, which stops the Raft node), never a
//! panic.
//!
//! Durability: an appended entry and a saved vote are flushed before openraft hears of them.
//! The applied state is persisted only as snapshots (every `snapshot_policy` entries): a restart
//! starts from the current snapshot and openraft re-applies the committed entries after it,
//! which the log still holds (it is purged only up to the snapshot). Applying is therefore
//! memory-only, and its cost does not grow with the size of the state. Re-applying an entry at
//! or below the last applied index is a no-op. Truncation, purging and the committed id are written without their own
//! flush: sled flushes its whole log at the next append or vote, and losing one of them in a
//! crash only leaves entries openraft is prepared to see again.
//!
//! sled reads and writes are in-memory page-cache operations and run on the calling task;
//! flushes (`flush_async`) run on sled's own thread pool.
//!
//! Not here: the network, the Raft node itself, and what the commands mean
//! ([`ClusterState::apply`]).

use std::fmt;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

use helixflow_runtime::metric_names;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{NodeId, PeerNode, Response, TypeConfig};
use crate::state::ClusterState;

const LOG_TREE: &str = "raft_log";
const META_TREE: &str = "raft_meta";
const SM_TREE: &str = "raft_sm";

const VOTE_KEY: &str = "vote";
const PURGED_KEY: &str = "last_purged";
const COMMITTED_KEY: &str = "committed";
const SNAPSHOT_KEY: &str = "snapshot";

/// What failed in the Raft storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled failed on tree `{tree}`: {source}")]
    Sled {
        tree: &'static str,
        #[source]
        source: sled::Error,
    },
    #[error("cannot decode `{key}` in tree `{tree}`: {source}")]
    Decode {
        tree: &'static str,
        key: String,
        #[source]
        source: bincode::error::DecodeError,
    },
    #[error("cannot encode `{key}` for tree `{tree}`: {source}")]
    Encode {
        tree: &'static str,
        key: String,
        #[source]
        source: bincode::error::EncodeError,
    },
    /// A snapshot received from the leader that does not decode.
    #[error("cannot decode snapshot `{snapshot_id}`: {source}")]
    DecodeSnapshot {
        snapshot_id: String,
        #[source]
        source: bincode::error::DecodeError,
    },
    /// An installed snapshot whose bytes say a different last log id than its meta.
    #[error("snapshot `{snapshot_id}` holds state up to {data:?} but its meta says {meta:?}")]
    SnapshotMismatch {
        snapshot_id: String,
        meta: Option<LogId<NodeId>>,
        data: Option<LogId<NodeId>>,
    },
    /// A panic elsewhere left the state machine's lock poisoned.
    #[error("the state machine lock is poisoned")]
    Poisoned,
}

impl StoreError {
    /// Wraps the error for openraft, which stops the node on any storage error.
    fn into_storage(self, subject: ErrorSubject<NodeId>, verb: ErrorVerb) -> StorageError<NodeId> {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

fn sled_error(tree: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
    move |source| StoreError::Sled { tree, source }
}

fn encode<T: Serialize>(
    tree: &'static str,
    key: impl fmt::Display,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|source| {
        StoreError::Encode {
            tree,
            key: key.to_string(),
            source,
        }
    })
}

fn decode<T: DeserializeOwned>(
    tree: &'static str,
    key: impl fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|source| StoreError::Decode {
            tree,
            key: key.to_string(),
            source,
        })
}

/// The sled key of log index `index`: big-endian, so byte order is index order.
fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// A log key for error messages: its index, or its raw bytes if it is not one.
fn describe_log_key(key: &[u8]) -> String {
    match <[u8; 8]>::try_from(key) {
        Ok(bytes) => u64::from_be_bytes(bytes).to_string(),
        Err(_) => format!("{key:?}"),
    }
}

/// Opens the Raft log store and state machine in `db`, in their own trees (`raft_log`,
/// `raft_meta`, `raft_sm`); the node may keep other trees in the same `db`. The state machine
/// starts from its last persisted state.
pub fn open_stores(db: &sled::Db) -> Result<(LogStore, StateMachineStore), StoreError> {
    let log_store = LogStore {
        log: db.open_tree(LOG_TREE).map_err(sled_error(LOG_TREE))?,
        meta: db.open_tree(META_TREE).map_err(sled_error(META_TREE))?,
    };
    let tree = db.open_tree(SM_TREE).map_err(sled_error(SM_TREE))?;
    let applied = match tree.get(SNAPSHOT_KEY).map_err(sled_error(SM_TREE))? {
        Some(bytes) => {
            let snapshot: StoredSnapshot = decode(SM_TREE, SNAPSHOT_KEY, &bytes)?;
            Applied::from_snapshot(&snapshot.meta, &snapshot.data)?
        }
        None => Applied::default(),
    };
    let (published, _) = watch::channel(applied.state.clone());
    let state_machine = StateMachineStore {
        shared: Arc::new(Shared {
            db: db.clone(),
            tree,
            applied: Mutex::new(applied),
            published,
        }),
    };
    Ok((log_store, state_machine))
}

/// The Raft log and vote in sled. Clones share the same trees (sled trees are `Arc`s), which
/// is how it serves as its own log reader.
#[derive(Clone, Debug)]
pub struct LogStore {
    log: sled::Tree,
    meta: sled::Tree,
}

impl LogStore {
    fn read_meta<T: DeserializeOwned>(&self, key: &'static str) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self.meta.get(key).map_err(sled_error(META_TREE))? else {
            return Ok(None);
        };
        decode(META_TREE, key, &bytes).map(Some)
    }

    fn write_meta<T: Serialize>(&self, key: &'static str, value: &T) -> Result<(), StoreError> {
        let bytes = encode(META_TREE, key, value)?;
        self.meta
            .insert(key, bytes)
            .map_err(sled_error(META_TREE))?;
        Ok(())
    }

    /// Makes every write so far durable (sled flushes the whole database).
    async fn flush(&self) -> Result<(), StoreError> {
        self.log.flush_async().await.map_err(sled_error(LOG_TREE))?;
        Ok(())
    }

    fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let start = range.start_bound().map(|&index| log_key(index));
        let end = range.end_bound().map(|&index| log_key(index));
        self.log
            .range::<[u8; 8], _>((start, end))
            .map(|item| {
                let (key, value) = item.map_err(sled_error(LOG_TREE))?;
                decode(LOG_TREE, describe_log_key(&key), &value)
            })
            .collect()
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        let Some((key, value)) = self.log.last().map_err(sled_error(LOG_TREE))? else {
            return Ok(None);
        };
        let entry: Entry<TypeConfig> = decode(LOG_TREE, describe_log_key(&key), &value)?;
        Ok(Some(entry.log_id))
    }

    /// Removes the entries with an index in `range`, in one atomic batch.
    fn remove(&self, range: (Bound<u64>, Bound<u64>)) -> Result<(), StoreError> {
        let start = range.0.map(log_key);
        let end = range.1.map(log_key);
        let mut batch = sled::Batch::default();
        for key in self.log.range::<[u8; 8], _>((start, end)).keys() {
            batch.remove(key.map_err(sled_error(LOG_TREE))?);
        }
        self.log.apply_batch(batch).map_err(sled_error(LOG_TREE))
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_meta(PURGED_KEY)?;
        // Entries at or below the purge point can outlive a crash in the middle of `purge`.
        let last_log_id = match self.last_entry_id()? {
            Some(last) if last_purged_log_id.is_none_or(|purged| last.index > purged.index) => {
                Some(last)
            }
            _ => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        self.entries(range)
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        self.log_state()
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let saved = match self.write_meta(VOTE_KEY, vote) {
            Ok(()) => self.flush().await,
            Err(e) => Err(e),
        };
        saved.map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(VOTE_KEY)
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // openraft's metrics do not carry the commit index; this is where it is known.
        metrics::gauge!(metric_names::RAFT_COMMIT_INDEX)
            .set(committed.map_or(0, |c| c.index) as f64);
        self.write_meta(COMMITTED_KEY, &committed)
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.read_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY)
            .map(Option::flatten)
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Read))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let index = entry.log_id.index;
            let value = encode(LOG_TREE, index, &entry)
                .map_err(|e| e.into_storage(ErrorSubject::Log(entry.log_id), ErrorVerb::Write))?;
            batch.insert(&log_key(index), value);
        }
        let written = match self.log.apply_batch(batch).map_err(sled_error(LOG_TREE)) {
            Ok(()) => self.flush().await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e.into_storage(ErrorSubject::Logs, ErrorVerb::Write))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.remove((Bound::Included(log_id.index), Bound::Unbounded))
            .map_err(|e| e.into_storage(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // The purge point first: entries left below it by a crash are ignored, while a hole
        // between it and the first entry would not be.
        self.write_meta(PURGED_KEY, &log_id)
            .and_then(|()| self.remove((Bound::Unbounded, Bound::Included(log_id.index))))
            .map_err(|e| e.into_storage(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }
}

/// The applied state: what `raft_sm/state` holds and what a snapshot's bytes are.
#[derive(Debug, Default)]
struct Applied {
    state: Arc<ClusterState>,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, PeerNode>,
}

/// [`Applied`] as it is encoded (the same bytes as the tuple of its fields).
#[derive(Serialize)]
struct AppliedRef<'a> {
    state: &'a ClusterState,
    last_applied: &'a Option<LogId<NodeId>>,
    last_membership: &'a StoredMembership<NodeId, PeerNode>,
}

/// [`Applied`] as it is decoded.
#[derive(Deserialize)]
struct AppliedData {
    state: ClusterState,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, PeerNode>,
}

impl Applied {
    /// The state a snapshot holds; its bytes must name the same last log id as its meta.
    fn from_snapshot(
        meta: &SnapshotMeta<NodeId, PeerNode>,
        data: &[u8],
    ) -> Result<Applied, StoreError> {
        let (decoded, _): (AppliedData, _) =
            bincode::serde::decode_from_slice(data, bincode::config::standard()).map_err(
                |source| StoreError::DecodeSnapshot {
                    snapshot_id: meta.snapshot_id.clone(),
                    source,
                },
            )?;
        if decoded.last_applied != meta.last_log_id {
            return Err(StoreError::SnapshotMismatch {
                snapshot_id: meta.snapshot_id.clone(),
                meta: meta.last_log_id,
                data: decoded.last_applied,
            });
        }
        Ok(Applied {
            state: Arc::new(decoded.state),
            last_applied: decoded.last_applied,
            last_membership: decoded.last_membership,
        })
    }

    fn encode(&self, key: &'static str) -> Result<Vec<u8>, StoreError> {
        encode(
            SM_TREE,
            key,
            &AppliedRef {
                state: &self.state,
                last_applied: &self.last_applied,
                last_membership: &self.last_membership,
            },
        )
    }
}

/// The current snapshot as `raft_sm/snapshot` holds it.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, PeerNode>,
    data: Vec<u8>,
}

/// The state machine: the applied [`ClusterState`] with its last applied log id and
/// membership, and the current snapshot, in sled. Clones share one state machine (openraft
/// drives one, the node keeps another to [`subscribe`](Self::subscribe)); it is its own
/// snapshot builder.
#[derive(Clone, Debug)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// For snapshot ids that stay unique across restarts (`generate_id`).
    db: sled::Db,
    tree: sled::Tree,
    /// Held only between awaits: applying, installing and building read or replace it whole.
    applied: Mutex<Applied>,
    /// The state as of the last applied batch or installed snapshot.
    published: watch::Sender<Arc<ClusterState>>,
}

impl StateMachineStore {
    /// A receiver of the state after every applied batch and installed snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.shared.published.subscribe()
    }

    /// The state as last published.
    pub fn state(&self) -> Arc<ClusterState> {
        self.shared.published.borrow().clone()
    }

    fn applied(&self) -> Result<MutexGuard<'_, Applied>, StoreError> {
        self.shared.applied.lock().map_err(|_| StoreError::Poisoned)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.shared
            .tree
            .flush_async()
            .await
            .map_err(sled_error(SM_TREE))?;
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        let Some(bytes) = self
            .shared
            .tree
            .get(SNAPSHOT_KEY)
            .map_err(sled_error(SM_TREE))?
        else {
            return Ok(None);
        };
        decode(SM_TREE, SNAPSHOT_KEY, &bytes).map(Some)
    }

    /// Applies `entries` under the lock and writes the result; returns the responses and the
    /// state to publish once it is flushed.
    fn apply_batch(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> Result<(Vec<Response>, Arc<ClusterState>), StoreError> {
        let mut applied = self.applied()?;
        let Applied {
            state,
            last_applied,
            last_membership,
        } = &mut *applied;
        let mut responses = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            // openraft never re-applies, but a restart that replays committed entries the
            // state already holds must not apply them twice.
            if last_applied.is_some_and(|applied| log_id.index <= applied.index) {
                responses.push(Response::default());
                continue;
            }
            let response = match entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(request) => Response(Arc::make_mut(state).apply(
                    log_id.index,
                    &request.actor,
                    request.command,
                )),
                EntryPayload::Membership(membership) => {
                    *last_membership = StoredMembership::new(Some(log_id), membership);
                    Response::default()
                }
            };
            *last_applied = Some(log_id);
            responses.push(response);
        }
        Ok((responses, applied.state.clone()))
    }

    /// Encodes the applied state as a snapshot and keeps it as the current one unless a newer
    /// one (installed meanwhile) is already there.
    fn store_built_snapshot(&self) -> Result<StoredSnapshot, StoreError> {
        let applied = self.applied()?;
        let data = applied.encode(SNAPSHOT_KEY)?;
        let unique = self.shared.db.generate_id().map_err(sled_error(SM_TREE))?;
        let snapshot_id = match applied.last_applied {
            Some(last) => format!("{}-{}-{unique}", last.leader_id.term, last.index),
            None => format!("0-0-{unique}"),
        };
        let snapshot = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.last_membership.clone(),
                snapshot_id,
            },
            data,
        };
        let newer_present = self
            .current_snapshot()?
            .is_some_and(|current| current.meta.last_log_id > snapshot.meta.last_log_id);
        if !newer_present {
            let bytes = encode(SM_TREE, SNAPSHOT_KEY, &snapshot)?;
            self.shared
                .tree
                .insert(SNAPSHOT_KEY, bytes)
                .map_err(sled_error(SM_TREE))?;
        }
        Ok(snapshot)
    }

    /// Replaces the applied state and the current snapshot with `meta` and `data`, in one
    /// atomic batch; returns the state to publish once it is flushed.
    fn replace_with_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, PeerNode>,
        data: Vec<u8>,
    ) -> Result<Arc<ClusterState>, StoreError> {
        let replacement = Applied::from_snapshot(meta, &data)?;
        let snapshot_bytes = encode(
            SM_TREE,
            SNAPSHOT_KEY,
            &StoredSnapshot {
                meta: meta.clone(),
                data,
            },
        )?;
        let mut applied = self.applied()?;
        self.shared
            .tree
            .insert(SNAPSHOT_KEY, snapshot_bytes)
            .map_err(sled_error(SM_TREE))?;
        *applied = replacement;
        Ok(applied.state.clone())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let built = match self.store_built_snapshot() {
            Ok(snapshot) => self.flush().await.map(|()| snapshot),
            Err(e) => Err(e),
        };
        let snapshot =
            built.map_err(|e| e.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        Ok(Snapshot {
            meta: snapshot.meta,
            snapshot: Box::new(Cursor::new(snapshot.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, PeerNode>), StorageError<NodeId>>
    {
        let applied = self
            .applied()
            .map_err(|e| e.into_storage(ErrorSubject::StateMachine, ErrorVerb::Read))?;
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Memory only: the log holds what a restart re-applies after the current snapshot.
        let (responses, state) = self
            .apply_batch(entries)
            .map_err(|e| e.into_storage(ErrorSubject::StateMachine, ErrorVerb::Write))?;
        self.shared.published.send_replace(state);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, PeerNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let installed = match self.replace_with_snapshot(meta, snapshot.into_inner()) {
            Ok(state) => self.flush().await.map(|()| state),
            Err(e) => Err(e),
        };
        let state = installed.map_err(|e| {
            e.into_storage(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
            )
        })?;
        self.shared.published.send_replace(state);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let current = self
            .current_snapshot()
            .map_err(|e| e.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        Ok(current.map(|snapshot| Snapshot {
            meta: snapshot.meta,
            snapshot: Box::new(Cursor::new(snapshot.data)),
        }))
    }
}
