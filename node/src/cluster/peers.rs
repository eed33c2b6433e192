//! Reports between nodes: each node sends its [`Report`] (applied index, load per model,
//! draining) to every peer on a long-lived `Control` stream, every [`REPORT_EVERY`] and at once
//! when its metadata changes. What a node last heard from each peer, and when, is the input of
//! the router (only fresh peers get requests) and of the leader's failure detector.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use helixflow_consensus::raft::NodeId;
use helixflow_runtime::config::NodeId as ConfigNodeId;
use helixflow_runtime::frame::StreamKind;
use helixflow_runtime::metric_names;
use helixflow_runtime::transport::FrameReceiver;

use super::Cluster;
use super::rpc::Report;

pub const REPORT_EVERY: Duration = Duration::from_millis(200);
/// A peer not heard from for this long gets no new requests (and the leader suspects it).
pub const FRESH_FOR: Duration = Duration::from_millis(1000);

#[derive(Default)]
pub struct Peers {
    heard: Mutex<HashMap<NodeId, (Instant, Report)>>,
    /// Woken by every report (writes wait on it for peers to apply them).
    news: tokio::sync::Notify,
}

impl Peers {
    pub fn heard(&self, report: Report) {
        self.heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(report.node, (Instant::now(), report));
        self.news.notify_waiters();
    }

    /// Resolves at the next report from any peer.
    pub fn news(&self) -> tokio::sync::futures::Notified<'_> {
        self.news.notified()
    }

    /// The peer's latest report, if it came within [`FRESH_FOR`].
    pub fn fresh(&self, node: NodeId) -> Option<Report> {
        let heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        heard
            .get(&node)
            .filter(|(at, _)| at.elapsed() < FRESH_FOR)
            .map(|(_, report)| report.clone())
    }

    /// How long ago the peer was last heard from.
    pub fn silence(&self, node: NodeId) -> Option<Duration> {
        let heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        heard.get(&node).map(|(at, _)| at.elapsed())
    }
}

/// Refreshes this node's report from its scheduler and sends it to every peer.
pub async fn report_loop(cluster: Arc<Cluster>) {
    let mut senders: HashMap<NodeId, tokio::sync::mpsc::Sender<Report>> = HashMap::new();
    let mut effective = cluster.subscribe_effective();
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = effective.changed() => if changed.is_err() { return },
        }
        let models = match cluster.node.scheduler_stats().await {
            Ok(stats) => stats.models,
            Err(_) => return,
        };
        let report = Report {
            node: cluster.me,
            applied: cluster.effective_index(),
            models,
            draining: cluster.is_draining(),
        };
        cluster.set_local_report(report.clone());
        let Some(transport) = cluster.transport() else {
            continue;
        };
        for (peer, rtt) in transport.peer_rtts() {
            metrics::gauge!(metric_names::QUIC_PEER_RTT, "peer" => peer.0.to_string())
                .set(rtt.as_secs_f64());
        }
        for peer in cluster.peer_ids() {
            let sender = senders.entry(peer).or_insert_with(|| {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tokio::spawn(send_reports(cluster.clone(), peer, rx));
                tx
            });
            // A peer that cannot keep up just misses a report: the next one supersedes it.
            let _ = sender.try_send(report.clone());
        }
    }
}

/// Keeps a `Control` stream open to `peer` and sends it every report; reconnects (the
/// transport backs off) when the stream breaks.
async fn send_reports(
    cluster: Arc<Cluster>,
    peer: NodeId,
    mut reports: tokio::sync::mpsc::Receiver<Report>,
) {
    let Some(transport) = cluster.transport().cloned() else {
        return;
    };
    let mut stream = None;
    while let Some(report) = reports.recv().await {
        if stream.is_none() {
            let Some(addr) = cluster.peer_addr(peer) else {
                continue;
            };
            match transport
                .open(ConfigNodeId(peer), addr, StreamKind::Control)
                .await
            {
                Ok((send, _recv)) => stream = Some(send),
                Err(e) => {
                    tracing::trace!(peer, error = %e, "control stream");
                    continue;
                }
            }
        }
        if let Some(send) = stream.as_mut()
            && let Err(e) = send.send(&report).await
        {
            tracing::debug!(peer, error = %e, "control stream broke; reopening");
            stream = None;
        }
    }
}

/// Reads a peer's reports from its `Control` stream until it ends.
pub async fn receive_reports(cluster: Arc<Cluster>, peer: NodeId, mut recv: FrameReceiver) {
    loop {
        match recv.recv::<Report>().await {
            Ok(Some(report)) if report.node == peer => cluster.peers.heard(report),
            Ok(Some(report)) => {
                tracing::warn!(
                    peer,
                    claimed = report.node,
                    "a peer sent a report for another node; closing its stream"
                );
                return;
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(peer, error = %e, "control stream ended");
                return;
            }
        }
    }
}
