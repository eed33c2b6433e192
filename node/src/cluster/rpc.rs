//! The messages nodes exchange, per stream kind. Every stream starts with its kind tag (written
//! by the transport); these are the frames after it.
//!
//! - **Raft** (`StreamKind::Raft`): one [`RaftRpc`] and one [`RaftReply`] per stream. openraft's
//!   own RPCs, and writes forwarded to the leader.
//! - **ActorSession** (`StreamKind::ActorSession`): one ractor_cluster session per pair of nodes
//!   (`session.rs`); each node's [`Report`] reaches its peers' `ReportsActor` a few times a
//!   second as one versioned frame; the failure detector and the router read them.
//! - **Inference** (`StreamKind::Inference`): one request per stream. The ingress node sends one
//!   [`Forward`]; the host answers with [`HostMsg`]s until the request ends. The ingress node
//!   cancels by dropping the stream; the host notices (its sender is stopped) and cancels locally.

use helixflow_actors::scheduler::{ModelLoad, Rejection};
use helixflow_actors::{InferenceEvent, InferenceRequest};
use helixflow_consensus::raft::{NodeId, Request, Response, TypeConfig};
use helixflow_consensus::state::NodeRecord;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A metadata write sent to the node believed to lead.
    Write(Request),
    /// Add a node: as a learner, then (once it caught up) as a voter. Leader only.
    Join(NodeRecord),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Write(Result<Committed, WriteError>),
    Join(Result<Committed, WriteError>),
}

/// A committed write: its log index and what applying it answered.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Committed {
    pub index: u64,
    pub response: Response,
}

/// Why a metadata write did not commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WriteError {
    /// The node asked is not the leader; `leader` is who it believes leads.
    #[error("not the leader (the leader is {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// No leader could be reached (no quorum, an election in progress, the leader unreachable).
    #[error("no Raft leader is reachable: {0}")]
    NoLeader(String),
    #[error("the Raft group failed: {0}")]
    Fatal(String),
    /// The change is refused (the message says why); retrying will not help.
    #[error("{0}")]
    Refused(String),
}

/// A node's state as its peers see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub node: NodeId,
    /// Index of the last metadata entry the node applied: a write is effective on the node once
    /// this reaches the write's index.
    pub applied: u64,
    /// Load per model served (only models with a worker up are routable).
    pub models: Vec<ModelLoad>,
    /// The node is shutting down: route nothing new to it.
    pub draining: bool,
}

/// The first frame of an inference stream.
#[derive(Debug, Serialize, Deserialize)]
pub struct Forward {
    pub request: InferenceRequest,
    /// Requests of the caller's key that may wait at the host.
    pub key_limit: usize,
}

/// What the host sends back on an inference stream.
#[derive(Debug, Serialize, Deserialize)]
pub enum HostMsg {
    /// The host's scheduler refused the request (nothing ran).
    Rejected(Rejection),
    Event(InferenceEvent),
}
