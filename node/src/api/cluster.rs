//! The cluster admin API (admin keys only): keys created and revoked through Raft, and the
//! cluster's state for `helixflow status`.
//!
//! - `GET /admin/v1/cluster`: leader, term, nodes (region, zone, status, devices, load) and
//!   placements, as this node sees them.
//! - `POST /admin/v1/nodes`: adds a running node as a learner, then promotes it to voter.
//! - `GET /admin/v1/keys`, `POST /admin/v1/keys`, `DELETE /admin/v1/keys/{name}`: a write
//!   returns once it is committed and applied by every node heard from recently, so a revoked
//!   key is refused everywhere once the `DELETE` returns. Any node takes writes; it forwards them
//!   to the leader.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use helixflow_consensus::placement::{DeviceInfo, NodeStatus};
use helixflow_consensus::state::{Command, KeyRecord, NodeRecord, Rejected};
use helixflow_runtime::config::{NodeId, Role};
use helixflow_runtime::keys::KeyHash;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{Caller, ValidJson};
use crate::cluster::rpc::WriteError;
use crate::commands::keys::new_key;

fn admin(caller: &helixflow_actors::quota::Principal) -> Result<(), ApiError> {
    if caller.role == Role::Admin {
        Ok(())
    } else {
        Err(ApiError::forbidden("this endpoint needs an admin key"))
    }
}

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> ApiError {
        match error {
            WriteError::Fatal(_) => ApiError::internal(error.to_string()),
            WriteError::Refused(message) => ApiError {
                status: StatusCode::CONFLICT,
                ..ApiError::bad_request(message)
            },
            _ => ApiError::unavailable(
                format!("the change could not be committed: {error}"),
                Some(std::time::Duration::from_secs(1)),
            ),
        }
    }
}

pub async fn status(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<Value>, ApiError> {
    admin(&caller)?;
    let cluster = &state.cluster;
    let metrics = cluster.raft.metrics().borrow().clone();
    let metadata = cluster.state();
    let nodes: Vec<Value> = metadata
        .nodes
        .values()
        .map(|n| {
            let report = if n.id.0 == cluster.me {
                Some(cluster.local_report())
            } else {
                cluster.peers.fresh(n.id.0)
            };
            json!({
                "id": n.id.0,
                "region": n.region,
                "zone": n.zone,
                "status": format!("{:?}", n.status).to_lowercase(),
                "http_addr": n.http_addr,
                "peer_addr": n.peer_addr,
                "devices": n.devices.iter().map(|d| json!({"ordinal": d.ordinal, "memory_bytes": d.memory_bytes})).collect::<Vec<_>>(),
                "voter": metrics.membership_config.membership().voter_ids().any(|v| v == n.id.0),
                "load": report.map(|r| r.models),
                "silence_ms": if n.id.0 == cluster.me { Some(0) } else {
                    cluster.peers.silence(n.id.0).map(|d| d.as_millis() as u64)
                },
            })
        })
        .collect();
    Ok(Json(json!({
        "cluster": cluster.config.name,
        "node": cluster.me,
        "leader": metrics.current_leader,
        "term": metrics.current_term,
        "applied": metadata.applied,
        "placement_epoch": metadata.placement_epoch,
        "nodes": nodes,
        "models": metadata.models.values().map(|m| json!({
            "id": m.id, "aliases": m.aliases, "bytes": m.bytes, "replicas": m.replicas,
        })).collect::<Vec<_>>(),
        "placements": metadata.placements.iter().map(|p| json!({
            "model": p.model, "node": p.node.0, "device": p.device, "epoch": p.epoch,
        })).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddNode {
    pub id: u64,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    pub http_addr: String,
    pub peer_addr: String,
    /// Memory of each device, in bytes (one CPU device with this machine's memory when left
    /// out, as the cluster file does).
    #[serde(default)]
    pub device_memory_bytes: Vec<u64>,
}

/// `POST /admin/v1/nodes`: adds a node (already running, with a certificate from the cluster
/// CA) as a learner, promotes it to voter once it has caught up, and registers it.
pub async fn add_node(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ValidJson(body): ValidJson<AddNode>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&caller)?;
    for (field, value) in [
        ("http_addr", &body.http_addr),
        ("peer_addr", &body.peer_addr),
    ] {
        if value.parse::<std::net::SocketAddr>().is_err() {
            return Err(ApiError::invalid(
                field,
                format!("{field} {value:?} is not IP:PORT"),
            ));
        }
    }
    if body.id == 0 {
        return Err(ApiError::invalid("id", "node ids start at 1"));
    }
    let region = body.region.unwrap_or_else(|| "default".into());
    let memory = if body.device_memory_bytes.is_empty() {
        vec![helixflow_runtime::config::default_cpu_memory()]
    } else {
        body.device_memory_bytes
    };
    let record = NodeRecord {
        id: NodeId(body.id),
        zone: body.zone.unwrap_or_else(|| region.clone()),
        region,
        peer_addr: body.peer_addr,
        http_addr: body.http_addr,
        devices: memory
            .into_iter()
            .enumerate()
            .map(|(ordinal, memory_bytes)| DeviceInfo {
                ordinal: ordinal as u32,
                memory_bytes,
            })
            .collect(),
        status: NodeStatus::Joining,
    };
    let committed = state.cluster.join(record).await?;
    committed
        .response
        .0
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": body.id, "voter": true, "applied": committed.index})),
    ))
}

fn key_json(key: &KeyRecord) -> Value {
    json!({
        "name": key.name,
        "role": key.role,
        "requests_per_minute": key.requests_per_minute,
        "tokens_per_minute": key.tokens_per_minute,
        "token_budget": key.token_budget,
        "revoked": key.revoked,
    })
}

pub async fn list_keys(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<Value>, ApiError> {
    admin(&caller)?;
    let metadata = state.cluster.state();
    Ok(Json(json!({
        "object": "list",
        "data": metadata.keys.values().map(key_json).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    /// `"admin"` or `"user"` (default).
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    #[serde(default)]
    pub token_budget: Option<u64>,
}

pub async fn create_key(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ValidJson(body): ValidJson<CreateKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&caller)?;
    let name = body.name.trim();
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "a key name is 1 to 128 printable characters",
        ));
    }
    let role = match body.role.as_deref() {
        None | Some("user") => "user",
        Some("admin") => "admin",
        Some(other) => {
            return Err(ApiError::invalid(
                "role",
                format!("unknown role {other:?}; expected \"admin\" or \"user\""),
            ));
        }
    };
    for (field, value) in [
        ("requests_per_minute", body.requests_per_minute),
        ("tokens_per_minute", body.tokens_per_minute),
    ] {
        if value == Some(0) {
            return Err(ApiError::invalid(
                field,
                format!("{field} must be at least 1 (leave it out for no limit)"),
            ));
        }
    }
    if let Some(existing) = state.cluster.state().keys.get(name)
        && !existing.revoked
    {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            ..ApiError::invalid("name", format!("key `{name}` exists; revoke it first"))
        });
    }
    let secret = new_key().map_err(|e| ApiError::internal(e.to_string()))?;
    let record = KeyRecord {
        name: name.to_owned(),
        sha256: KeyHash::of(&secret).to_string(),
        role: role.to_owned(),
        requests_per_minute: body.requests_per_minute,
        tokens_per_minute: body.tokens_per_minute,
        token_budget: body.token_budget,
        revoked: false,
    };
    let committed = state
        .cluster
        .write(&caller.name, Command::PutKey(record.clone()))
        .await?;
    committed
        .response
        .0
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut body = key_json(&record);
    body["key"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn revoke_key(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&caller)?;
    let committed = state
        .cluster
        .write(&caller.name, Command::RevokeKey(name.clone()))
        .await?;
    match committed.response.0 {
        Ok(()) => Ok(Json(json!({"name": name, "revoked": true}))),
        Err(Rejected::UnknownKey(_)) => Err(ApiError::not_found(format!("no key named `{name}`"))),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}
