//! Which node serves a request: a pure function of what this node knows (its own load, its
//! peers' latest reports, the committed node statuses), tested without a cluster.
//!
//! A node is a candidate for a model when it has a worker up for it (its own report says so,
//! and the report is fresh), it is not draining, and the leader has not declared it down. The
//! order: this node first (no network hop), then nodes of the same region, then the least
//! loaded (requests waiting and running per worker), ties by node id.

use std::collections::BTreeMap;

use helixflow_consensus::placement::NodeStatus;
use helixflow_consensus::raft::NodeId;

use super::rpc::Report;

/// What the router knows of one node.
pub struct NodeView<'a> {
    pub id: NodeId,
    pub region: &'a str,
    /// Committed status (`None`: not in the metadata yet).
    pub status: Option<NodeStatus>,
    /// Its latest report, if it is fresh.
    pub report: Option<&'a Report>,
}

/// Candidates for `model`, best first, leaving out `tried`.
pub fn candidates(
    model: &str,
    me: NodeId,
    region: &str,
    nodes: &[NodeView<'_>],
    tried: &[NodeId],
) -> Vec<NodeId> {
    let mut ranked: BTreeMap<(bool, bool, u64, NodeId), NodeId> = BTreeMap::new();
    for node in nodes {
        if tried.contains(&node.id) || matches!(node.status, Some(NodeStatus::Down)) {
            continue;
        }
        let Some(report) = node.report else { continue };
        if report.draining {
            continue;
        }
        let Some(load) = report
            .models
            .iter()
            .find(|m| m.model == model && m.workers_up > 0)
        else {
            continue;
        };
        // Per-worker work, in thousandths, so a node with more workers takes more.
        let busy = ((load.queued + load.in_flight) as u64 * 1000) / load.workers_up as u64;
        ranked.insert(
            (node.id != me, node.region != region, busy, node.id),
            node.id,
        );
    }
    ranked.into_values().collect()
}

#[cfg(test)]
mod tests {
    use helixflow_actors::scheduler::ModelLoad;

    use super::*;

    fn report(node: NodeId, model: &str, busy: usize) -> Report {
        Report {
            node,
            applied: 0,
            models: vec![ModelLoad {
                model: model.into(),
                workers_up: 1,
                queued: busy,
                in_flight: 0,
                kv_blocks_used: 0,
                kv_blocks_total: 100,
            }],
            draining: false,
        }
    }

    #[test]
    fn local_first_then_same_region_then_least_loaded() {
        let reports: Vec<Report> = vec![
            report(1, "m", 9),
            report(2, "m", 5),
            report(3, "m", 0),
            report(4, "m", 1),
            report(5, "other", 0),
        ];
        let regions = ["eu", "us", "eu", "us", "eu"];
        let nodes: Vec<NodeView> = reports
            .iter()
            .zip(regions)
            .map(|(r, region)| NodeView {
                id: r.node,
                region,
                status: Some(NodeStatus::Up),
                report: Some(r),
            })
            .collect();
        assert_eq!(candidates("m", 1, "eu", &nodes, &[]), vec![1, 3, 4, 2]);
        assert_eq!(candidates("m", 1, "eu", &nodes, &[1, 3]), vec![4, 2]);
        // Seen from node 2 in the US: itself, then node 4, then Europe by load.
        assert_eq!(candidates("m", 2, "us", &nodes, &[]), vec![2, 4, 3, 1]);
        assert_eq!(
            candidates("unknown", 1, "eu", &nodes, &[]),
            Vec::<NodeId>::new()
        );
    }

    #[test]
    fn down_draining_silent_and_workerless_nodes_are_skipped() {
        let up = report(1, "m", 0);
        let mut draining = report(2, "m", 0);
        draining.draining = true;
        let down = report(3, "m", 0);
        let mut loading = report(4, "m", 0);
        loading.models[0].workers_up = 0;
        let nodes = [
            NodeView {
                id: 1,
                region: "eu",
                status: Some(NodeStatus::Up),
                report: Some(&up),
            },
            NodeView {
                id: 2,
                region: "eu",
                status: Some(NodeStatus::Up),
                report: Some(&draining),
            },
            NodeView {
                id: 3,
                region: "eu",
                status: Some(NodeStatus::Down),
                report: Some(&down),
            },
            NodeView {
                id: 4,
                region: "eu",
                status: Some(NodeStatus::Up),
                report: Some(&loading),
            },
            NodeView {
                id: 5,
                region: "eu",
                status: Some(NodeStatus::Up),
                report: None,
            },
        ];
        assert_eq!(candidates("m", 9, "eu", &nodes, &[]), vec![1]);
    }
}
