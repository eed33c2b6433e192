//! The leader's duties, checked a few times a second: commit the cluster file's seed once,
//! keep node statuses true to what peers report (up → suspect → down, and back up), and
//! commit a new placement plan whenever statuses or the catalog change it. Also exports the
//! Raft gauges on every node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use helixflow_consensus::placement::{DeviceInfo, NodeStatus};
use helixflow_consensus::raft::Request;
use helixflow_consensus::state::{CatalogEntry, ClusterState, Command, KeyRecord, NodeRecord};
use helixflow_runtime::config::{ClusterConfig, KeyConfig, ModelConfig, NodeConfig, Role};
use helixflow_runtime::metric_names;
use openraft::ServerState;

use super::Cluster;
use super::peers::FRESH_FOR;

const CHECK_EVERY: Duration = Duration::from_millis(200);
/// Silence after which the leader declares a suspect node down and re-places its models.
pub const DOWN_AFTER: Duration = Duration::from_secs(3);

pub async fn run(cluster: Arc<Cluster>, me: NodeConfig) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading_since: Option<Instant> = None;
    loop {
        tick.tick().await;
        let metrics = cluster.raft.metrics().borrow().clone();
        export(&metrics, &cluster.state());
        if metrics.state != ServerState::Leader {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(Instant::now);
        if let Err(e) = lead(&cluster, &me, since).await {
            tracing::debug!(error = %e, "leader duties: will retry");
        }
    }
}

async fn lead(cluster: &Cluster, me: &NodeConfig, since: Instant) -> Result<(), String> {
    let state = cluster.state();
    if !state.seeded {
        let command = seed(&cluster.config);
        tracing::info!("committing the cluster file's nodes, models and keys");
        return commit(cluster, command).await;
    }
    if !state.nodes.contains_key(&me.id) {
        commit(cluster, Command::RegisterNode(node_record(me))).await?;
    }
    for (id, record) in &state.nodes {
        // `None`: never heard from. Such a node is not brought up; it is suspected (then
        // declared down) counting from when this node began to lead.
        let heard = if id.0 == cluster.me {
            Some(Duration::ZERO)
        } else {
            cluster.peers.silence(id.0)
        };
        let silence = heard.unwrap_or_else(|| since.elapsed());
        let recently_heard = heard.is_some_and(|s| s < FRESH_FOR);
        let status = match record.status {
            NodeStatus::Up | NodeStatus::Joining if silence >= FRESH_FOR => NodeStatus::Suspect,
            NodeStatus::Suspect if silence >= DOWN_AFTER => NodeStatus::Down,
            NodeStatus::Suspect | NodeStatus::Down | NodeStatus::Joining if recently_heard => {
                NodeStatus::Up
            }
            unchanged => unchanged,
        };
        if status != record.status {
            tracing::info!(node = %id, from = ?record.status, to = ?status, ?silence, "node status");
            commit(cluster, Command::SetNodeStatus { node: *id, status }).await?;
        }
    }
    let state = cluster.state();
    if let Command::CommitPlacements { epoch, placements } = state.replan()
        && placements != state.placements
    {
        tracing::info!(
            epoch,
            replicas = placements.len(),
            "committing new placements"
        );
        commit(cluster, Command::CommitPlacements { epoch, placements }).await?;
    }
    Ok(())
}

async fn commit(cluster: &Cluster, command: Command) -> Result<(), String> {
    let committed = cluster
        .commit_here(Request {
            actor: "leader".into(),
            command,
        })
        .await
        .map_err(|e| e.to_string())?;
    committed.response.0.map_err(|e| e.to_string())
}

fn export(
    metrics: &openraft::RaftMetrics<u64, helixflow_consensus::raft::PeerNode>,
    state: &ClusterState,
) {
    metrics::gauge!(metric_names::RAFT_TERM).set(metrics.current_term as f64);
    metrics::gauge!(metric_names::RAFT_LEADER).set(metrics.current_leader.unwrap_or(0) as f64);
    metrics::gauge!(metric_names::RAFT_IS_LEADER).set(if metrics.state == ServerState::Leader {
        1.0
    } else {
        0.0
    });
    metrics::gauge!(metric_names::RAFT_LAST_LOG_INDEX)
        .set(metrics.last_log_index.unwrap_or(0) as f64);
    metrics::gauge!(metric_names::RAFT_APPLIED_INDEX).set(state.applied as f64);
    for status in [
        NodeStatus::Joining,
        NodeStatus::Up,
        NodeStatus::Suspect,
        NodeStatus::Down,
        NodeStatus::Draining,
    ] {
        let count = state.nodes.values().filter(|n| n.status == status).count();
        metrics::gauge!(metric_names::CLUSTER_NODES, "status" => format!("{status:?}").to_lowercase())
            .set(count as f64);
    }
}

/// The cluster file as metadata. Only the voters are registered: other nodes of the file join
/// through the admin API (`helixflow join`), which registers them once they are members.
pub fn seed(config: &ClusterConfig) -> Command {
    Command::Seed {
        nodes: config
            .nodes
            .iter()
            .filter(|n| n.voter)
            .map(node_record)
            .collect(),
        models: config.models.iter().map(catalog_entry).collect(),
        keys: config.keys.iter().map(key_record).collect(),
    }
}

pub fn node_record(node: &NodeConfig) -> NodeRecord {
    NodeRecord {
        id: node.id,
        region: node.region.clone(),
        zone: node.zone.clone(),
        peer_addr: node.peer_addr.map(|a| a.to_string()).unwrap_or_default(),
        http_addr: node.http_addr.to_string(),
        devices: node
            .devices
            .iter()
            .enumerate()
            .map(|(ordinal, device)| DeviceInfo {
                ordinal: ordinal as u32,
                memory_bytes: device.memory_bytes(),
            })
            .collect(),
        status: NodeStatus::Joining,
    }
}

/// A model's catalog entry: its weights' size plus its KV cache is what a replica needs.
pub fn catalog_entry(model: &ModelConfig) -> CatalogEntry {
    let weights: u64 = std::fs::read_dir(&model.path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    CatalogEntry {
        id: model.id.clone(),
        aliases: model.aliases.clone(),
        source: model.path.display().to_string(),
        bytes: weights + model.kv_cache_bytes as u64,
        context_window: model.context_window.unwrap_or(0),
        replicas: model.replicas,
    }
}

pub fn key_record(key: &KeyConfig) -> KeyRecord {
    KeyRecord {
        name: key.name.clone(),
        sha256: key.hash.to_string(),
        role: match key.role {
            Role::Admin => "admin".into(),
            Role::User => "user".into(),
        },
        requests_per_minute: key.requests_per_minute,
        tokens_per_minute: key.tokens_per_minute,
        token_budget: key.token_budget,
        revoked: false,
    }
}
