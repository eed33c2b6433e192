//! The openraft binding of [`ClusterState`](crate::state::ClusterState): the type config
//! ([`TypeConfig`]), what a log entry carries ([`Request`]) and what applying it answers
//! ([`Response`]), and the durable storage in `store` — a sled log store ([`LogStore`]) and
//! state machine ([`StateMachineStore`]) sharing the one `sled::Db` the node opened.
//!
//! Why sled for both: one embedded store per process, already open for the node's other trees,
//! so the Raft log, the vote and the applied state need no second file format or directory.
//!
//! Invariants the rest of the node relies on:
//! - An entry reaches the state machine only once it is committed, and
//!   [`ClusterState::apply`](crate::state::ClusterState::apply) is deterministic, so every
//!   replica that applied up to index `i` holds the same state.
//! - A [`Response`] carries the command's [`Rejected`] reason: a rejected command is still a
//!   committed entry, not a Raft error.
//! - [`StateMachineStore::subscribe`] publishes after every applied batch and installed
//!   snapshot; what it shows has been written to sled and flushed.
//!
//! What this module does not own: the network between peers (the node's QUIC transport
//! implements `openraft::RaftNetworkFactory`), starting [`Raft`], and membership decisions.

mod store;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::state::{Command, Rejected};

pub use store::{LogStore, StateMachineStore, StoreError, open_stores};

/// A Raft node id: the `u64` inside `helixflow_runtime::config::NodeId`.
pub type NodeId = u64;

/// What peers need to reach a member: carried in membership entries, so every replica knows
/// every member's addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// Where peers reach it (QUIC).
    pub peer_addr: String,
    /// Where clients reach it (HTTP), for redirecting writes to the leader.
    pub http_addr: String,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (http {})", self.peer_addr, self.http_addr)
    }
}

/// The payload of a normal log entry: a command and who asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// An admin key's name, or `"leader"` for automatic changes (kept in the audit log).
    pub actor: String,
    pub command: Command,
}

/// What applying an entry answered. Blank and membership entries answer `Ok(())`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response(pub Result<(), Rejected>);

impl Default for Response {
    fn default() -> Self {
        Self(Ok(()))
    }
}

openraft::declare_raft_types!(
    /// HelixFlow's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running Raft node of HelixFlow's metadata group.
pub type Raft = openraft::Raft<TypeConfig>;
