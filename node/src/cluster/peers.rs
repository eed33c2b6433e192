//! Reports between nodes: each node sends its [`Report`] (applied index, load per model,
//! draining) to every peer over their actor sessions (see [`super::session`] and
//! `reports_actor`), every [`REPORT_EVERY`] and at once when its metadata changes. What a node
//! last heard from each peer, and when, is the input of the router (only fresh peers get
//! requests) and of the leader's failure detector.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use helixflow_consensus::raft::NodeId;
use helixflow_runtime::metric_names;

use super::rpc::Report;
use super::{Cluster, reports_actor};

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

/// Refreshes this node's report from its scheduler and casts it to every peer's reports actor.
/// A peer without a session (or one that cannot keep up) misses reports; the next one
/// supersedes them. What a slow peer has not read queues in its session, until the QUIC idle
/// timeout ends a session whose peer stopped answering.
pub async fn report_loop(cluster: Arc<Cluster>) {
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
        reports_actor::broadcast(&report);
    }
}
