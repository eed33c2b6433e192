//! openraft's network over the QUIC transport: each RPC is one `Raft` stream carrying one
//! [`RaftRpc`] and its [`RaftReply`]. QUIC streams are cheap (no handshake: they share the
//! peer's connection), so RPCs never queue behind each other.

use std::net::SocketAddr;

use helixflow_consensus::raft::{NodeId, PeerNode, TypeConfig};
use helixflow_runtime::config::NodeId as ConfigNodeId;
use helixflow_runtime::frame::StreamKind;
use helixflow_runtime::transport::{Transport, TransportError};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::rpc::{RaftReply, RaftRpc};

/// Makes one [`PeerClient`] per Raft peer. `None` transport: a one-node cluster with no peers
/// (a client is never used there; if it were, every RPC reports the peer unreachable).
#[derive(Clone)]
pub struct Network {
    pub transport: Option<Transport>,
}

pub struct PeerClient {
    transport: Option<Transport>,
    target: NodeId,
    addr: Result<SocketAddr, String>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerClient {
        PeerClient {
            transport: self.transport.clone(),
            target,
            addr: node
                .peer_addr
                .parse()
                .map_err(|_| format!("bad peer address {:?}", node.peer_addr)),
        }
    }
}

/// Failures before the peer answered. Connect failures (and backoff) make openraft back off;
/// a stream that breaks midway is a network error.
fn transport_error<E: std::error::Error>(error: TransportError) -> RPCError<NodeId, PeerNode, E> {
    match error {
        TransportError::Connect { .. } | TransportError::Backoff { .. } => {
            RPCError::Unreachable(Unreachable::new(&error))
        }
        other => RPCError::Network(NetworkError::new(&other)),
    }
}

impl PeerClient {
    /// Sends `rpc` and waits for the reply (openraft applies its own timeouts around this).
    pub async fn call<E: std::error::Error>(
        &self,
        rpc: &RaftRpc,
    ) -> Result<RaftReply, RPCError<NodeId, PeerNode, E>> {
        let transport = self.transport.as_ref().ok_or_else(|| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                "this node has no peer transport",
            )))
        })?;
        let addr = self
            .addr
            .clone()
            .map_err(|why| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(why))))?;
        let (mut send, mut recv) = transport
            .open(ConfigNodeId(self.target), addr, StreamKind::Raft)
            .await
            .map_err(transport_error)?;
        send.send(rpc).await.map_err(transport_error)?;
        send.finish().map_err(transport_error)?;
        match recv.recv::<RaftReply>().await.map_err(transport_error)? {
            Some(reply) => Ok(reply),
            None => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other("the peer closed the stream without a reply"),
            ))),
        }
    }
}

fn unexpected<E: std::error::Error>(reply: &RaftReply) -> RPCError<NodeId, PeerNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
        "mismatched reply: {reply:?}"
    ))))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        match self.call(&RaftRpc::Append(rpc)).await? {
            RaftReply::Append(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, PeerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(&RaftRpc::Snapshot(rpc)).await? {
            RaftReply::Snapshot(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        match self.call(&RaftRpc::Vote(rpc)).await? {
            RaftReply::Vote(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(unexpected(&other)),
        }
    }
}
