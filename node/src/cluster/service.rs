//! Answers the streams peers open to this node, by kind: Raft RPCs, actor sessions (handed to
//! the NodeServer, see [`super::session`]) and forwarded requests.

use std::sync::Arc;

use helixflow_runtime::frame::StreamKind;
use helixflow_runtime::transport::{FrameReceiver, FrameSender, Inbound};
use tokio::sync::mpsc;

use super::rpc::{RaftReply, RaftRpc};
use super::session::{self, Link};
use super::{Cluster, forward};

pub async fn run(cluster: Arc<Cluster>, mut inbound: mpsc::Receiver<Inbound>, link: Arc<Link>) {
    while let Some(stream) = inbound.recv().await {
        let cluster = cluster.clone();
        let peer = stream.peer.0;
        match stream.kind {
            StreamKind::Raft => {
                tokio::spawn(raft_rpc(cluster, stream.send, stream.recv));
            }
            StreamKind::ActorSession => {
                tokio::spawn(session::accept(
                    link.clone(),
                    peer,
                    stream.send,
                    stream.recv,
                ));
            }
            StreamKind::Inference => {
                tokio::spawn(forward::host(cluster, peer, stream.send, stream.recv));
            }
            other => {
                tracing::warn!(peer, kind = ?other, "a peer opened a stream of a kind this node does not serve");
                let mut send = stream.send;
                let _ = send.reset(1);
            }
        }
    }
}

async fn raft_rpc(cluster: Arc<Cluster>, mut send: FrameSender, mut recv: FrameReceiver) {
    let rpc = match recv.recv::<RaftRpc>().await {
        Ok(Some(rpc)) => rpc,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(error = %e, "reading a Raft RPC");
            return;
        }
    };
    let reply = match rpc {
        RaftRpc::Append(request) => RaftReply::Append(cluster.raft.append_entries(request).await),
        RaftRpc::Vote(request) => RaftReply::Vote(cluster.raft.vote(request).await),
        RaftRpc::Snapshot(request) => {
            RaftReply::Snapshot(cluster.raft.install_snapshot(request).await)
        }
        // Forwarded once only: a node that does not lead answers who does.
        RaftRpc::Write(request) => RaftReply::Write(cluster.commit_here(request).await),
        RaftRpc::Join(record) => RaftReply::Join(cluster.join_here(record).await),
    };
    if let Err(e) = send.send(&reply).await {
        tracing::debug!(error = %e, "answering a Raft RPC");
        return;
    }
    let _ = send.finish();
}
