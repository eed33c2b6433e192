use super::*;

const GB: u64 = 1 << 30;

fn node(id: u64, region: &str) -> NodeRecord {
    NodeRecord {
        id: NodeId(id),
        region: region.into(),
        zone: "a".into(),
        peer_addr: format!("127.0.0.{id}:7000"),
        http_addr: format!("127.0.0.{id}:8080"),
        devices: vec![DeviceInfo {
            ordinal: 0,
            memory_bytes: 8 * GB,
        }],
        status: NodeStatus::Up,
    }
}

fn model(id: &str, alias: &str, replicas: usize) -> CatalogEntry {
    CatalogEntry {
        id: id.into(),
        aliases: vec![alias.into()],
        source: format!("/models/{id}"),
        bytes: 3 * GB,
        context_window: 4096,
        replicas,
    }
}

fn key(name: &str) -> KeyRecord {
    KeyRecord {
        name: name.into(),
        sha256: "00".repeat(32),
        role: "user".into(),
        requests_per_minute: Some(60),
        tokens_per_minute: None,
        token_budget: None,
        revoked: false,
    }
}

/// A bootstrap log: three nodes, two models, a key, a plan.
fn bootstrap() -> Vec<Command> {
    let mut log = vec![
        Command::RegisterNode(node(1, "eu")),
        Command::RegisterNode(node(2, "us")),
        Command::RegisterNode(node(3, "ap")),
        Command::PutModel(model("llama", "l", 2)),
        Command::PutModel(model("qwen", "q", 1)),
        Command::PutKey(key("alice")),
    ];
    let mut state = ClusterState::default();
    for (i, c) in log.iter().enumerate() {
        state.apply(i as u64 + 1, "leader", c.clone()).unwrap();
    }
    log.push(state.replan());
    log
}

fn replay(log: &[Command]) -> (ClusterState, Vec<Result<(), Rejected>>) {
    let mut state = ClusterState::default();
    let results = log
        .iter()
        .enumerate()
        .map(|(i, c)| state.apply(i as u64 + 1, "leader", c.clone()))
        .collect();
    (state, results)
}

#[test]
fn replicas_applying_the_same_log_reach_the_same_state() {
    let log = bootstrap();
    let (a, results) = replay(&log);
    let (b, _) = replay(&log);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(a, b);
    assert_eq!(a.placements.len(), 3);
    assert_eq!(a.placement_epoch, 1);
    assert_eq!(a.applied, log.len() as u64);
    assert_eq!(a.model_named("l"), Some("llama"));
    // A snapshot round-trips.
    let snapshot = serde_json::to_vec(&a).unwrap();
    assert_eq!(
        serde_json::from_slice::<ClusterState>(&snapshot).unwrap(),
        a
    );
}

#[test]
fn a_down_node_is_replanned_and_a_stale_plan_is_fenced() {
    let (mut state, _) = replay(&bootstrap());
    let victim = state.placements[0].node;
    let stale = state.replan();
    let mut index = state.applied;
    let mut apply = |state: &mut ClusterState, c: Command| {
        index += 1;
        state.apply(index, "leader", c)
    };
    apply(
        &mut state,
        Command::SetNodeStatus {
            node: victim,
            status: NodeStatus::Down,
        },
    )
    .unwrap();
    let fresh = state.replan();
    apply(&mut state, fresh).unwrap();
    assert!(state.placements.iter().all(|p| p.node != victim));
    assert_eq!(state.placements.len(), 3);
    // The plan made before the node went down carries the same epoch as the one committed: it
    // is refused.
    assert_eq!(
        apply(&mut state, stale),
        Err(Rejected::StaleEpoch {
            expected: 3,
            got: 2
        })
    );
}

#[test]
fn invalid_commands_are_rejected_and_change_nothing() {
    let (mut state, _) = replay(&bootstrap());
    let before = state.clone();
    let mut index = state.applied;
    let mut reject = |c: Command| {
        index += 1;
        let result = state.apply(index, "admin", c);
        assert!(result.is_err());
        let mut expected = before.clone();
        expected.applied = index;
        assert_eq!(state, expected, "a rejected command changed the state");
        result.unwrap_err()
    };
    assert_eq!(
        reject(Command::SetNodeStatus {
            node: NodeId(9),
            status: NodeStatus::Up
        }),
        Rejected::UnknownNode(NodeId(9))
    );
    assert_eq!(
        reject(Command::RevokeKey("bob".into())),
        Rejected::UnknownKey("bob".into())
    );
    assert_eq!(
        reject(Command::PutModel(model("mistral", "l", 1))),
        Rejected::NameTaken {
            name: "l".into(),
            model: "llama".into()
        }
    );
    let over = Command::CommitPlacements {
        epoch: 2,
        placements: ["llama", "qwen", "llama"]
            .iter()
            .map(|m| Placement {
                model: (*m).into(),
                node: NodeId(1),
                device: 0,
                epoch: 2,
            })
            .collect(),
    };
    assert!(
        matches!(reject(over), Rejected::BadPlacement { reason, .. } if reason == "over-commits the device")
    );
}

#[test]
fn revoking_a_key_and_removing_models_and_nodes() {
    let (mut state, _) = replay(&bootstrap());
    let mut index = state.applied;
    let mut apply = |state: &mut ClusterState, c: Command| {
        index += 1;
        state.apply(index, "admin-key", c).unwrap();
    };
    assert!(state.key_active("alice"));
    apply(&mut state, Command::RevokeKey("alice".into()));
    assert!(!state.key_active("alice"));
    apply(&mut state, Command::RemoveModel("qwen".into()));
    assert!(state.placements.iter().all(|p| p.model != "qwen"));
    let host = state.placements[0].node;
    apply(&mut state, Command::RemoveNode(host));
    assert!(state.placements.iter().all(|p| p.node != host));
    // Re-registering keeps a node's status.
    apply(
        &mut state,
        Command::SetNodeStatus {
            node: NodeId(2),
            status: NodeStatus::Draining,
        },
    );
    apply(&mut state, Command::RegisterNode(node(2, "us")));
    assert_eq!(state.nodes[&NodeId(2)].status, NodeStatus::Draining);
    let last = state.audit.last().unwrap();
    assert_eq!(
        (last.actor.as_str(), last.action.as_str()),
        ("admin-key", "register node-2")
    );
}

#[test]
fn the_cluster_file_seeds_once() {
    let mut state = ClusterState::default();
    let seed = |keys: Vec<KeyRecord>| Command::Seed {
        nodes: vec![node(1, "eu")],
        models: vec![model("llama", "l", 1)],
        keys,
    };
    state.apply(1, "leader", seed(vec![key("alice")])).unwrap();
    assert!(state.seeded);
    assert!(state.key_active("alice"));
    state
        .apply(2, "admin", Command::RevokeKey("alice".into()))
        .unwrap();
    // A second seed (a new leader after a restart, say) must not undo the revoke or add keys.
    state
        .apply(3, "leader", seed(vec![key("alice"), key("bob")]))
        .unwrap();
    assert!(!state.key_active("alice"));
    assert!(!state.keys.contains_key("bob"));
    assert_eq!(state.nodes.len(), 1);
    assert_eq!(state.applied, 3);
}
