//! Running a request anywhere in the cluster.
//!
//! [`Cluster::submit`] picks a replica ([`super::routing`]) and returns a [`Routed`] stream of
//! events, from the local scheduler or from another node over an `Inference` stream. A replica
//! that fails before the client saw anything — refused, unreachable, its worker or node died —
//! is replaced by the next candidate, transparently. A non-streaming request (`buffered`) is
//! held until it completes, so it can be retried from scratch at any point: a client waiting
//! for one JSON body never sees a host die. Dropping a [`Routed`] cancels the request wherever
//! it runs (the remote stream is reset; the host notices and cancels locally).

use std::collections::VecDeque;
use std::sync::Arc;

use helixflow_actors::scheduler::Rejection;
use helixflow_actors::{InferenceEvent, InferenceRequest, RequestFailure, RequestKind, Submission};
use helixflow_consensus::raft::NodeId;
use helixflow_runtime::config::NodeId as ConfigNodeId;
use helixflow_runtime::frame::StreamKind;
use helixflow_runtime::metric_names;
use helixflow_runtime::transport::{FrameReceiver, FrameSender};

use super::Cluster;
use super::routing::{self, NodeView};
use super::rpc::{Forward, HostMsg};

/// Reset code of an inference stream whose client went away.
const CANCELLED: u32 = 1;

/// Why a request could not be queued anywhere.
#[derive(Debug)]
pub enum SubmitError {
    /// Every candidate refused it; the first refusal (the best candidate's) says why.
    Rejected(Rejection),
    /// No node serves the model right now.
    NoReplica { model: String },
    /// This node's actors are gone (shutting down).
    Node(helixflow_actors::NodeError),
}

/// One attempt at running the request.
enum Attempt {
    Local(Submission),
    Remote(Remote),
}

/// A request running on another node.
struct Remote {
    peer: NodeId,
    send: FrameSender,
    recv: FrameReceiver,
    unfinished: usize,
}

impl Drop for Remote {
    fn drop(&mut self) {
        if self.unfinished > 0 {
            let _ = self.send.reset(CANCELLED);
        }
    }
}

/// How an attempt's next step went.
enum Step {
    Event(InferenceEvent),
    /// The attempt ended normally after its last event.
    Done,
    /// The replica failed; the request may run elsewhere.
    Lost(String),
}

impl Attempt {
    async fn next(&mut self) -> Step {
        match self {
            Attempt::Local(submission) => match submission.next().await {
                Some(InferenceEvent::Failed(
                    failure @ (RequestFailure::WorkerLost | RequestFailure::ShuttingDown),
                )) => Step::Lost(failure.to_string()),
                Some(event) => Step::Event(event),
                None => Step::Done,
            },
            Attempt::Remote(remote) => {
                if remote.unfinished == 0 {
                    return Step::Done;
                }
                match remote.recv.recv::<HostMsg>().await {
                    Ok(Some(HostMsg::Event(event))) => {
                        event.settle(&mut remote.unfinished);
                        match event {
                            InferenceEvent::Failed(
                                failure @ (RequestFailure::WorkerLost
                                | RequestFailure::ShuttingDown),
                            ) => Step::Lost(format!("node {}: {failure}", remote.peer)),
                            event => Step::Event(event),
                        }
                    }
                    Ok(Some(HostMsg::Rejected(rejection))) => {
                        remote.unfinished = 0;
                        Step::Lost(format!("node {} refused: {rejection}", remote.peer))
                    }
                    Ok(None) => {
                        remote.unfinished = 0;
                        Step::Lost(format!("node {} ended the stream early", remote.peer))
                    }
                    Err(e) => {
                        remote.unfinished = 0;
                        Step::Lost(format!("node {}: {e}", remote.peer))
                    }
                }
            }
        }
    }
}

/// A request's events, from whichever replica serves it.
pub struct Routed {
    cluster: Arc<Cluster>,
    request: InferenceRequest,
    key_limit: usize,
    buffered: bool,
    tried: Vec<NodeId>,
    attempt: Option<Attempt>,
    /// Whether the consumer has been given anything (then a streaming request cannot move).
    delivered: bool,
    /// Events held back (buffered mode) or ready to hand out.
    held: VecDeque<InferenceEvent>,
    ready: VecDeque<InferenceEvent>,
}

impl Cluster {
    /// Queues `request` on the best replica. `buffered`: the caller only uses the events once
    /// the request completes (non-streaming), so the request may be retried at any point.
    pub async fn submit(
        self: &Arc<Self>,
        request: InferenceRequest,
        key_limit: usize,
        buffered: bool,
    ) -> Result<Routed, SubmitError> {
        let mut routed = Routed {
            cluster: self.clone(),
            request,
            key_limit,
            buffered,
            tried: Vec::new(),
            attempt: None,
            delivered: false,
            held: VecDeque::new(),
            ready: VecDeque::new(),
        };
        let mut first_rejection = None;
        loop {
            match routed.start_next().await {
                Ok(true) => return Ok(routed),
                Ok(false) => {
                    return Err(match first_rejection {
                        Some(rejection) => SubmitError::Rejected(rejection),
                        None => SubmitError::NoReplica {
                            model: routed.request.model.clone(),
                        },
                    });
                }
                Err(Start::Rejected(rejection)) => {
                    first_rejection.get_or_insert(rejection);
                }
                Err(Start::Node(e)) => return Err(SubmitError::Node(e)),
                Err(Start::Lost(why)) => {
                    tracing::debug!(model = %routed.request.model, %why, "replica unavailable; trying the next");
                }
            }
        }
    }

    /// Every node's view for the router. This node's own load is read fresh from its
    /// scheduler (one local message), so a worker that just came up or died is seen at once.
    pub(super) async fn candidates(&self, model: &str, tried: &[NodeId]) -> Vec<NodeId> {
        let state = self.state();
        let mut local = self.local_report();
        if let Ok(stats) = self.node.scheduler_stats().await {
            local.models = stats.models;
        }
        local.draining = self.is_draining();
        let mut reports = vec![(self.me, Some(local))];
        for peer in self.peer_ids() {
            reports.push((peer, self.peers.fresh(peer)));
        }
        let views: Vec<NodeView<'_>> = reports
            .iter()
            .map(|(id, report)| {
                let record = state.nodes.get(&ConfigNodeId(*id));
                NodeView {
                    id: *id,
                    region: record.map_or("", |r| r.region.as_str()),
                    status: record.map(|r| r.status),
                    report: report.as_ref(),
                }
            })
            .collect();
        let region = state
            .nodes
            .get(&ConfigNodeId(self.me))
            .map_or(self.region.as_str(), |r| r.region.as_str());
        routing::candidates(model, self.me, region, &views, tried)
    }
}

/// Why one candidate did not take the request.
enum Start {
    Rejected(Rejection),
    Lost(String),
    Node(helixflow_actors::NodeError),
}

impl Routed {
    /// Starts the request on the next untried candidate: `Ok(false)` when none is left.
    async fn start_next(&mut self) -> Result<bool, Start> {
        let Some(&target) = self
            .cluster
            .candidates(&self.request.model, &self.tried)
            .await
            .first()
        else {
            return Ok(false);
        };
        self.tried.push(target);
        if target == self.cluster.me {
            let submission = self
                .cluster
                .node
                .submit(self.request.clone(), self.key_limit)
                .await
                .map_err(Start::Node)?
                .map_err(|rejection| match rejection {
                    // The worker went away since the last report: another node may have one.
                    Rejection::NoWorker { model } => {
                        Start::Lost(format!("no local worker for `{model}`"))
                    }
                    other => Start::Rejected(other),
                })?;
            self.attempt = Some(Attempt::Local(submission));
            return Ok(true);
        }
        let remote = self.open_remote(target).await.map_err(Start::Lost)?;
        self.attempt = Some(Attempt::Remote(remote));
        Ok(true)
    }

    async fn open_remote(&self, peer: NodeId) -> Result<Remote, String> {
        let transport = self
            .cluster
            .transport()
            .ok_or("this node has no peer transport")?;
        let addr = self
            .cluster
            .peer_addr(peer)
            .ok_or_else(|| format!("no address for node {peer}"))?;
        let (mut send, recv) = transport
            .open(ConfigNodeId(peer), addr, StreamKind::Inference)
            .await
            .map_err(|e| e.to_string())?;
        send.send(&Forward {
            request: self.request.clone(),
            key_limit: self.key_limit,
        })
        .await
        .map_err(|e| e.to_string())?;
        metrics::counter!(metric_names::FORWARDED_REQUESTS, "peer" => peer.to_string())
            .increment(1);
        Ok(Remote {
            peer,
            send,
            recv,
            unfinished: match self.request.kind {
                RequestKind::Generate => self.request.n,
                RequestKind::Embed => 1,
            },
        })
    }

    /// The next event; `None` after the last.
    pub async fn next(&mut self) -> Option<InferenceEvent> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let attempt = self.attempt.as_mut()?;
            match attempt.next().await {
                Step::Event(event) if self.buffered => self.held.push_back(event),
                Step::Event(event) => {
                    self.delivered = true;
                    return Some(event);
                }
                Step::Done => {
                    self.attempt = None;
                    self.ready.append(&mut self.held);
                }
                Step::Lost(why) if self.delivered => {
                    tracing::warn!(model = %self.request.model, %why, "replica lost mid-stream");
                    self.attempt = None;
                    return Some(InferenceEvent::Failed(RequestFailure::WorkerLost));
                }
                Step::Lost(why) => {
                    tracing::info!(model = %self.request.model, %why, "replica lost; retrying on another");
                    metrics::counter!(metric_names::REQUEST_RETRIES).increment(1);
                    self.attempt = None;
                    self.held.clear();
                    loop {
                        match self.start_next().await {
                            Ok(true) => break,
                            Ok(false) => {
                                return Some(InferenceEvent::Failed(RequestFailure::Unavailable(
                                    format!(
                                        "no replica of `{}` could finish the request (last: {why})",
                                        self.request.model
                                    ),
                                )));
                            }
                            Err(Start::Node(_)) => {
                                return Some(InferenceEvent::Failed(RequestFailure::ShuttingDown));
                            }
                            Err(Start::Rejected(_) | Start::Lost(_)) => continue,
                        }
                    }
                }
            }
        }
    }
}

/// Runs a request a peer forwarded here, streaming its events back until it ends or the peer
/// cancels (resets the stream, or its connection dies).
pub async fn host(
    cluster: Arc<Cluster>,
    peer: NodeId,
    mut send: FrameSender,
    mut recv: FrameReceiver,
) {
    let mut forward = match recv.recv::<Forward>().await {
        Ok(Some(forward)) => forward,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(peer, error = %e, "reading a forwarded request");
            return;
        }
    };
    // The ingress node's ticket means nothing here: this scheduler keys requests by its own.
    forward.request.ticket = cluster.node.next_ticket();
    let mut submission = match cluster
        .node
        .submit(forward.request, forward.key_limit)
        .await
    {
        Ok(Ok(submission)) => submission,
        Ok(Err(rejection)) => {
            let _ = send.send(&HostMsg::Rejected(rejection)).await;
            let _ = send.finish();
            return;
        }
        Err(_) => {
            let _ = send
                .send(&HostMsg::Event(InferenceEvent::Failed(
                    RequestFailure::ShuttingDown,
                )))
                .await;
            let _ = send.finish();
            return;
        }
    };
    let mut reading = true;
    loop {
        tokio::select! {
            event = submission.next() => match event {
                Some(event) => {
                    if send.send(&HostMsg::Event(event)).await.is_err() {
                        // The peer is gone: dropping the submission cancels the request.
                        return;
                    }
                }
                None => {
                    let _ = send.finish();
                    return;
                }
            },
            message = recv.recv::<()>(), if reading => match message {
                // The peer finished its side: nothing more to read.
                Ok(None) => reading = false,
                // Reset (the client left) or the connection died: cancel.
                _ => return,
            },
        }
    }
}

impl std::fmt::Debug for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field("model", &self.request.model)
            .field("tried", &self.tried)
            .finish()
    }
}
