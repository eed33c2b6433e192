//! The placement planner: which device of which node hosts each replica of each model.
//!
//! [`plan`] is a pure function — the same inputs give the same plan — so the Raft leader can run
//! it and commit the result, and tests can check it exhaustively. Its rules, in priority order:
//!
//! 1. **Never over-commit a device**: the bytes of the replicas on a device fit its memory.
//! 2. **Keep what is placed**: a replica on a node that is up (or merely suspect) stays where it
//!    is, with its epoch, unless its model left the catalog, it exceeds the model's replica
//!    count, or its device no longer has room; so a plan moves as little as possible.
//! 3. **Re-place what was lost**: replicas on down or draining nodes are dropped and placed anew.
//! 4. **Spread**: at most one replica of a model per node; a new replica goes to the region, then
//!    the zone, with the fewest replicas of that model, then to the device with the most free
//!    memory (ties broken by node id and device ordinal, for determinism).
//! 5. **Place everything placeable**: a replica is left unplaced only when no eligible device has
//!    room for it; the plan lists what is missing.
//!
//! New placements carry the `epoch` passed in, which fences owners of older assignments.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use helixflow_runtime::config::NodeId;
use serde::{Deserialize, Serialize};

/// A node's state as the failure detector sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    Joining,
    Up,
    /// Missed heartbeats, not yet declared down: its replicas stay, nothing new goes there.
    Suspect,
    Down,
    /// Being emptied on purpose.
    Draining,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub ordinal: u32,
    pub memory_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub region: String,
    pub zone: String,
    pub status: NodeStatus,
    pub devices: Vec<DeviceInfo>,
}

/// What the planner needs of a catalog entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDemand {
    pub model: String,
    /// Device memory one replica needs (weights and KV cache).
    pub bytes: u64,
    pub replicas: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Placement {
    pub model: String,
    pub node: NodeId,
    pub device: u32,
    /// The plan epoch that created this assignment.
    pub epoch: u64,
}

/// A plan: every placement, sorted, and the replicas that found no room.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub placements: Vec<Placement>,
    /// `(model, replicas missing)` for models with fewer replicas than asked.
    pub unplaced: Vec<(String, usize)>,
}

type DeviceKey = (NodeId, u32);

struct Capacity<'a> {
    nodes: BTreeMap<NodeId, &'a NodeInfo>,
    free: BTreeMap<DeviceKey, u64>,
}

impl<'a> Capacity<'a> {
    fn new(nodes: &'a [NodeInfo]) -> Capacity<'a> {
        let mut free = BTreeMap::new();
        let mut by_id = BTreeMap::new();
        for node in nodes {
            by_id.insert(node.id, node);
            for device in &node.devices {
                free.insert((node.id, device.ordinal), device.memory_bytes);
            }
        }
        Capacity { nodes: by_id, free }
    }

    fn take(&mut self, device: DeviceKey, bytes: u64) -> bool {
        match self.free.get_mut(&device) {
            Some(free) if *free >= bytes => {
                *free -= bytes;
                true
            }
            _ => false,
        }
    }
}

/// Places every model's replicas; see the module docs for the rules.
pub fn plan(nodes: &[NodeInfo], models: &[ModelDemand], current: &[Placement], epoch: u64) -> Plan {
    let mut capacity = Capacity::new(nodes);
    let demand: BTreeMap<&str, &ModelDemand> =
        models.iter().map(|m| (m.model.as_str(), m)).collect();
    let mut placements: Vec<Placement> = Vec::new();

    // Keep existing assignments that are still valid, oldest first so that when a device has
    // shrunk the longest-standing replicas win.
    let mut kept = current.to_vec();
    kept.sort_by(|a, b| {
        (a.epoch, &a.model, a.node, a.device).cmp(&(b.epoch, &b.model, b.node, b.device))
    });
    for p in kept {
        let Some(model) = demand.get(p.model.as_str()) else {
            continue;
        };
        let keeps_node = capacity
            .nodes
            .get(&p.node)
            .is_some_and(|n| matches!(n.status, NodeStatus::Up | NodeStatus::Suspect));
        let replicas = placements.iter().filter(|q| q.model == p.model).count();
        let same_node = placements
            .iter()
            .any(|q| q.model == p.model && q.node == p.node);
        if !keeps_node || replicas >= model.replicas || same_node {
            continue;
        }
        if capacity.take((p.node, p.device), model.bytes) {
            placements.push(p);
        }
    }

    // Then place what is missing: the largest models first, as bin packing prefers.
    let mut order: Vec<&ModelDemand> = models.iter().collect();
    order.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.model.cmp(&b.model)));
    let mut unplaced = Vec::new();
    for model in order {
        let mut have = placements.iter().filter(|p| p.model == model.model).count();
        while have < model.replicas {
            let Some(device) = best_device(&capacity, &placements, model) else {
                break;
            };
            let taken = capacity.take(device, model.bytes);
            debug_assert!(taken, "best_device only returns devices with room");
            placements.push(Placement {
                model: model.model.clone(),
                node: device.0,
                device: device.1,
                epoch,
            });
            have += 1;
        }
        if have < model.replicas {
            unplaced.push((model.model.clone(), model.replicas - have));
        }
    }
    placements.sort();
    unplaced.sort();
    Plan {
        placements,
        unplaced,
    }
}

/// The device for one more replica of `model`: on an up node without one, with room, in the
/// least-used region, then zone, then with the most free memory.
fn best_device(
    capacity: &Capacity<'_>,
    placements: &[Placement],
    model: &ModelDemand,
) -> Option<DeviceKey> {
    let mine: Vec<&Placement> = placements
        .iter()
        .filter(|p| p.model == model.model)
        .collect();
    let hosts: BTreeSet<NodeId> = mine.iter().map(|p| p.node).collect();
    let in_region = |region: &str| {
        mine.iter()
            .filter(|p| {
                capacity
                    .nodes
                    .get(&p.node)
                    .is_some_and(|n| n.region == region)
            })
            .count()
    };
    // Zones are named within their region.
    let in_zone = |node: &NodeInfo| {
        mine.iter()
            .filter(|p| {
                capacity
                    .nodes
                    .get(&p.node)
                    .is_some_and(|n| n.region == node.region && n.zone == node.zone)
            })
            .count()
    };
    capacity
        .free
        .iter()
        .filter(|&(&(node, _), &free)| {
            free >= model.bytes
                && !hosts.contains(&node)
                && capacity
                    .nodes
                    .get(&node)
                    .is_some_and(|n| n.status == NodeStatus::Up)
        })
        .min_by(
            |&(&(a_node, a_dev), &a_free), &(&(b_node, b_dev), &b_free)| {
                let (a, b) = (capacity.nodes[&a_node], capacity.nodes[&b_node]);
                in_region(&a.region)
                    .cmp(&in_region(&b.region))
                    .then_with(|| in_zone(a).cmp(&in_zone(b)))
                    .then_with(|| b_free.cmp(&a_free))
                    .then_with(|| (a_node, a_dev).cmp(&(b_node, b_dev)))
            },
        )
        .map(|(&key, _)| key)
}
