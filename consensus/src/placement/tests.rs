use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

const GB: u64 = 1 << 30;

fn node(id: u64, region: &str, zone: &str, memories: &[u64]) -> NodeInfo {
    NodeInfo {
        id: NodeId(id),
        region: region.into(),
        zone: zone.into(),
        status: NodeStatus::Up,
        devices: memories
            .iter()
            .enumerate()
            .map(|(i, &m)| DeviceInfo {
                ordinal: i as u32,
                memory_bytes: m,
            })
            .collect(),
    }
}

fn model(name: &str, bytes: u64, replicas: usize) -> ModelDemand {
    ModelDemand {
        model: name.into(),
        bytes,
        replicas,
    }
}

fn nodes_of(plan: &Plan, model: &str) -> Vec<u64> {
    plan.placements
        .iter()
        .filter(|p| p.model == model)
        .map(|p| p.node.0)
        .collect()
}

#[test]
fn replicas_spread_across_regions_then_zones() {
    let nodes = [
        node(1, "eu", "a", &[10 * GB]),
        node(2, "eu", "b", &[10 * GB]),
        node(3, "us", "a", &[10 * GB]),
        node(4, "ap", "a", &[10 * GB]),
    ];
    let plan = plan(&nodes, &[model("m", 4 * GB, 3)], &[], 1);
    let regions: BTreeSet<&str> = nodes_of(&plan, "m")
        .iter()
        .map(|&id| nodes.iter().find(|n| n.id.0 == id).unwrap().region.as_str())
        .collect();
    assert_eq!(regions.len(), 3, "{plan:?}");
    assert!(plan.unplaced.is_empty());
}

#[test]
fn a_down_nodes_replicas_move_and_nothing_else_does() {
    let mut nodes = vec![
        node(1, "eu", "a", &[10 * GB]),
        node(2, "eu", "b", &[10 * GB]),
        node(3, "us", "a", &[10 * GB]),
    ];
    let models = [model("big", 6 * GB, 2), model("small", GB, 2)];
    let first = plan(&nodes, &models, &[], 1);
    assert!(first.unplaced.is_empty(), "{first:?}");
    // Planning again changes nothing.
    assert_eq!(plan(&nodes, &models, &first.placements, 2), first);

    let lost = first.placements[0].node;
    nodes.iter_mut().find(|n| n.id == lost).unwrap().status = NodeStatus::Down;
    let second = plan(&nodes, &models, &first.placements, 2);
    for p in &first.placements {
        if p.node != lost {
            assert!(second.placements.contains(p), "{p:?} moved");
        }
    }
    assert!(second.placements.iter().all(|p| p.node != lost));
    assert!(second.placements.iter().filter(|p| p.epoch == 2).count() >= 1);

    // A suspect node keeps its replicas but gets no new ones.
    nodes.iter_mut().find(|n| n.id == lost).unwrap().status = NodeStatus::Suspect;
    let third = plan(&nodes, &models, &first.placements, 3);
    assert_eq!(third.placements, first.placements);
}

#[test]
fn what_does_not_fit_is_reported() {
    let nodes = [node(1, "eu", "a", &[4 * GB]), node(2, "eu", "a", &[4 * GB])];
    let plan = plan(
        &nodes,
        &[model("huge", 5 * GB, 1), model("m", 3 * GB, 3)],
        &[],
        1,
    );
    assert_eq!(
        plan.unplaced,
        vec![("huge".to_owned(), 1), ("m".to_owned(), 1)]
    );
    assert_eq!(nodes_of(&plan, "m").len(), 2);
}

#[test]
fn models_removed_from_the_catalog_free_their_devices() {
    let nodes = [node(1, "eu", "a", &[4 * GB])];
    let first = plan(&nodes, &[model("old", 3 * GB, 1)], &[], 1);
    let second = plan(&nodes, &[model("new", 3 * GB, 1)], &first.placements, 2);
    assert_eq!(nodes_of(&second, "new"), vec![1]);
    assert!(nodes_of(&second, "old").is_empty());
}

fn arb_cluster() -> impl Strategy<Value = (Vec<NodeInfo>, Vec<ModelDemand>)> {
    let one_node = (
        0..3usize,
        0..2usize,
        prop::collection::vec(1u64..=16, 1..=2),
        0..10u8,
    );
    let nodes = prop::collection::vec(one_node, 1..=6);
    let models = prop::collection::vec((1u64..=12, 1usize..=3), 1..=6);
    (nodes, models).prop_map(|(nodes, models)| {
        let nodes = nodes
            .into_iter()
            .enumerate()
            .map(|(i, (region, zone, memories, status))| NodeInfo {
                status: match status {
                    0 => NodeStatus::Down,
                    1 => NodeStatus::Suspect,
                    2 => NodeStatus::Draining,
                    _ => NodeStatus::Up,
                },
                ..node(
                    i as u64 + 1,
                    ["eu", "us", "ap"][region],
                    ["a", "b"][zone],
                    &memories.iter().map(|m| m * GB).collect::<Vec<_>>(),
                )
            })
            .collect();
        let models = models
            .into_iter()
            .enumerate()
            .map(|(i, (gb, replicas))| model(&format!("m{i}"), gb * GB, replicas))
            .collect();
        (nodes, models)
    })
}

/// The invariants every plan keeps.
fn check(nodes: &[NodeInfo], models: &[ModelDemand], plan: &Plan) -> Result<(), TestCaseError> {
    let by_id: BTreeMap<NodeId, &NodeInfo> = nodes.iter().map(|n| (n.id, n)).collect();
    let bytes: BTreeMap<&str, u64> = models.iter().map(|m| (m.model.as_str(), m.bytes)).collect();
    let mut used: BTreeMap<(NodeId, u32), u64> = BTreeMap::new();
    let mut hosts: BTreeSet<(&str, NodeId)> = BTreeSet::new();
    for p in &plan.placements {
        let node = by_id[&p.node];
        prop_assert!(
            matches!(node.status, NodeStatus::Up | NodeStatus::Suspect),
            "{p:?} on a {:?} node",
            node.status
        );
        prop_assert!(
            hosts.insert((p.model.as_str(), p.node)),
            "two replicas of {} on {:?}",
            p.model,
            p.node
        );
        *used.entry((p.node, p.device)).or_default() += bytes[p.model.as_str()];
    }
    // Never over-commits a device.
    for node in nodes {
        for d in &node.devices {
            prop_assert!(used.get(&(node.id, d.ordinal)).copied().unwrap_or(0) <= d.memory_bytes);
        }
    }
    for m in models {
        let have = plan
            .placements
            .iter()
            .filter(|p| p.model == m.model)
            .count();
        prop_assert!(have <= m.replicas);
        let missing = plan
            .unplaced
            .iter()
            .find(|(name, _)| *name == m.model)
            .map_or(0, |u| u.1);
        prop_assert_eq!(
            have + missing,
            m.replicas,
            "{} replicas accounted for",
            m.model
        );
        // Left unplaced only when no up node without it has a device with room.
        if missing > 0 {
            for node in nodes.iter().filter(|n| n.status == NodeStatus::Up) {
                if hosts.contains(&(m.model.as_str(), node.id)) {
                    continue;
                }
                for d in &node.devices {
                    let free =
                        d.memory_bytes - used.get(&(node.id, d.ordinal)).copied().unwrap_or(0);
                    prop_assert!(
                        free < m.bytes,
                        "{} left unplaced but {:?}/{} has room",
                        m.model,
                        node.id,
                        d.ordinal
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn plans_never_overcommit_place_what_fits_and_keep_what_stays((nodes, models) in arb_cluster(), down in 0usize..6) {
        let first = plan(&nodes, &models, &[], 1);
        check(&nodes, &models, &first)?;
        // Stable: planning again with nothing changed moves nothing.
        prop_assert_eq!(&plan(&nodes, &models, &first.placements, 2), &first);

        // One node goes down: only its replicas move.
        let mut after = nodes.clone();
        let victim = down % after.len();
        after[victim].status = NodeStatus::Down;
        let second = plan(&after, &models, &first.placements, 2);
        check(&after, &models, &second)?;
        for p in &first.placements {
            if p.node != after[victim].id {
                prop_assert!(second.placements.contains(p), "{:?} moved", p);
            }
        }
    }
}
