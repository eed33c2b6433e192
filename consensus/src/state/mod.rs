//! [`ClusterState`]: the metadata the Raft group replicates, and [`Command`], the one enum of
//! changes to it. [`ClusterState::apply`] is deterministic — no clock, no randomness, ordered
//! maps — so every replica that applies the same log reaches the same state; it is tested here
//! without Raft. The openraft state machine (with the cluster) stores this and calls `apply`.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use helixflow_runtime::config::NodeId;
use serde::{Deserialize, Serialize};

use crate::placement::{self, DeviceInfo, ModelDemand, NodeInfo, NodeStatus, Placement};

/// Audit entries kept (the oldest are dropped first).
pub const AUDIT_LEN: usize = 1000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub region: String,
    pub zone: String,
    /// Where peers reach it (QUIC) and where clients do (HTTP).
    pub peer_addr: String,
    pub http_addr: String,
    pub devices: Vec<DeviceInfo>,
    pub status: NodeStatus,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub id: String,
    pub aliases: Vec<String>,
    /// Where nodes load it from.
    pub source: String,
    /// Device memory one replica needs (weights and KV cache).
    pub bytes: u64,
    pub context_window: usize,
    pub replicas: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub name: String,
    /// SHA-256 of the key, hex.
    pub sha256: String,
    /// `"admin"` or `"user"`.
    pub role: String,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub token_budget: Option<u64>,
    pub revoked: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Raft log index of the change.
    pub index: u64,
    /// Who asked (an admin key's name, or `"leader"` for automatic changes).
    pub actor: String,
    pub action: String,
}

/// A change to the cluster's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Adds a node, or updates its addresses and devices (its status is kept).
    RegisterNode(NodeRecord),
    SetNodeStatus {
        node: NodeId,
        status: NodeStatus,
    },
    RemoveNode(NodeId),
    /// Adds or replaces a catalog entry.
    PutModel(CatalogEntry),
    RemoveModel(String),
    /// Replaces every placement; `epoch` must be the next one, which fences a stale leader's plan.
    CommitPlacements {
        epoch: u64,
        placements: Vec<Placement>,
    },
    /// Adds or replaces a key.
    PutKey(KeyRecord),
    RevokeKey(String),
    /// The cluster file's nodes, catalog and keys, committed once by the first leader. A seed
    /// after the first changes nothing (and is not an error): the file only bootstraps; later
    /// changes go through the admin API.
    Seed {
        nodes: Vec<NodeRecord>,
        models: Vec<CatalogEntry>,
        keys: Vec<KeyRecord>,
    },
}

/// Why a command changed nothing. A rejected command is still a committed log entry: every
/// replica rejects it the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejected {
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    #[error("unknown model `{0}`")]
    UnknownModel(String),
    #[error("unknown key `{0}`")]
    UnknownKey(String),
    #[error("`{name}` already names model `{model}`")]
    NameTaken { name: String, model: String },
    #[error("placement epoch {got} is stale: the next epoch is {expected}")]
    StaleEpoch { expected: u64, got: u64 },
    #[error("placement of `{model}` on {node} device {device}: {reason}")]
    BadPlacement {
        model: String,
        node: NodeId,
        device: u32,
        reason: String,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub models: BTreeMap<String, CatalogEntry>,
    pub placements: Vec<Placement>,
    /// Epoch of the current placements (0: none committed yet).
    pub placement_epoch: u64,
    pub keys: BTreeMap<String, KeyRecord>,
    /// Whether the cluster file's seed was committed.
    pub seeded: bool,
    pub audit: Vec<AuditEntry>,
    /// Index of the last applied log entry.
    pub applied: u64,
}

impl ClusterState {
    /// Applies the command at log `index`, on behalf of `actor`.
    pub fn apply(&mut self, index: u64, actor: &str, command: Command) -> Result<(), Rejected> {
        self.applied = index;
        let action = describe(&command);
        self.change(command)?;
        self.audit.push(AuditEntry {
            index,
            actor: actor.to_owned(),
            action,
        });
        if self.audit.len() > AUDIT_LEN {
            let excess = self.audit.len() - AUDIT_LEN;
            self.audit.drain(..excess);
        }
        Ok(())
    }

    fn change(&mut self, command: Command) -> Result<(), Rejected> {
        match command {
            Command::RegisterNode(mut record) => {
                if let Some(old) = self.nodes.get(&record.id) {
                    record.status = old.status;
                }
                self.nodes.insert(record.id, record);
            }
            Command::SetNodeStatus { node, status } => {
                self.nodes
                    .get_mut(&node)
                    .ok_or(Rejected::UnknownNode(node))?
                    .status = status;
            }
            Command::RemoveNode(node) => {
                self.nodes
                    .remove(&node)
                    .ok_or(Rejected::UnknownNode(node))?;
                self.placements.retain(|p| p.node != node);
            }
            Command::PutModel(entry) => {
                for name in std::iter::once(&entry.id).chain(&entry.aliases) {
                    if let Some(owner) = self.model_named(name)
                        && owner != entry.id
                    {
                        return Err(Rejected::NameTaken {
                            name: name.clone(),
                            model: owner.to_owned(),
                        });
                    }
                }
                self.models.insert(entry.id.clone(), entry);
            }
            Command::RemoveModel(id) => {
                self.models
                    .remove(&id)
                    .ok_or_else(|| Rejected::UnknownModel(id.clone()))?;
                self.placements.retain(|p| p.model != id);
            }
            Command::CommitPlacements { epoch, placements } => {
                let expected = self.placement_epoch + 1;
                if epoch != expected {
                    return Err(Rejected::StaleEpoch {
                        expected,
                        got: epoch,
                    });
                }
                self.check_placements(&placements)?;
                self.placements = placements;
                self.placement_epoch = epoch;
            }
            Command::PutKey(record) => {
                self.keys.insert(record.name.clone(), record);
            }
            Command::RevokeKey(name) => {
                self.keys
                    .get_mut(&name)
                    .ok_or_else(|| Rejected::UnknownKey(name.clone()))?
                    .revoked = true;
            }
            Command::Seed {
                nodes,
                models,
                keys,
            } => {
                if self.seeded {
                    return Ok(());
                }
                self.seeded = true;
                for node in nodes {
                    self.nodes.entry(node.id).or_insert(node);
                }
                for model in models {
                    self.models.entry(model.id.clone()).or_insert(model);
                }
                for key in keys {
                    self.keys.entry(key.name.clone()).or_insert(key);
                }
            }
        }
        Ok(())
    }

    fn check_placements(&self, placements: &[Placement]) -> Result<(), Rejected> {
        let mut used: BTreeMap<(NodeId, u32), u64> = BTreeMap::new();
        for p in placements {
            let bad = |reason: &str| Rejected::BadPlacement {
                model: p.model.clone(),
                node: p.node,
                device: p.device,
                reason: reason.to_owned(),
            };
            let model = self
                .models
                .get(&p.model)
                .ok_or_else(|| bad("unknown model"))?;
            let node = self.nodes.get(&p.node).ok_or_else(|| bad("unknown node"))?;
            let device = node
                .devices
                .iter()
                .find(|d| d.ordinal == p.device)
                .ok_or_else(|| bad("unknown device"))?;
            let total = used.entry((p.node, p.device)).or_default();
            *total += model.bytes;
            if *total > device.memory_bytes {
                return Err(bad("over-commits the device"));
            }
        }
        Ok(())
    }

    /// The canonical model id of `name` (an id or an alias).
    pub fn model_named(&self, name: &str) -> Option<&str> {
        self.models
            .values()
            .find(|m| m.id == name || m.aliases.iter().any(|a| a == name))
            .map(|m| m.id.as_str())
    }

    /// The command a leader commits to bring placements up to date (next epoch).
    pub fn replan(&self) -> Command {
        let nodes: Vec<NodeInfo> = self
            .nodes
            .values()
            .map(|n| NodeInfo {
                id: n.id,
                region: n.region.clone(),
                zone: n.zone.clone(),
                status: n.status,
                devices: n.devices.clone(),
            })
            .collect();
        let models: Vec<ModelDemand> = self
            .models
            .values()
            .map(|m| ModelDemand {
                model: m.id.clone(),
                bytes: m.bytes,
                replicas: m.replicas,
            })
            .collect();
        let epoch = self.placement_epoch + 1;
        let plan = placement::plan(&nodes, &models, &self.placements, epoch);
        Command::CommitPlacements {
            epoch,
            placements: plan.placements,
        }
    }

    /// Whether a key is known and not revoked.
    pub fn key_active(&self, name: &str) -> bool {
        self.keys.get(name).is_some_and(|k| !k.revoked)
    }
}

fn describe(command: &Command) -> String {
    match command {
        Command::RegisterNode(n) => format!("register {}", n.id),
        Command::SetNodeStatus { node, status } => format!("{node} is {status:?}"),
        Command::RemoveNode(node) => format!("remove {node}"),
        Command::PutModel(m) => format!("put model {}", m.id),
        Command::RemoveModel(id) => format!("remove model {id}"),
        Command::CommitPlacements { epoch, placements } => {
            format!("placements epoch {epoch} ({} replicas)", placements.len())
        }
        Command::PutKey(k) => format!("put key {}", k.name),
        Command::RevokeKey(name) => format!("revoke key {name}"),
        Command::Seed {
            nodes,
            models,
            keys,
        } => format!(
            "seed from the cluster file ({} nodes, {} models, {} keys)",
            nodes.len(),
            models.len(),
            keys.len()
        ),
    }
}
