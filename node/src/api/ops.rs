//! Operations endpoints: liveness, readiness, Prometheus metrics and the usage ledger.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use helixflow_runtime::config::Role;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::extract::Caller;

/// The process is up and its actors answer.
pub async fn health(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.node.scheduler_stats().await?;
    Ok(Json(json!({"status": "ok"})))
}

/// The node serves: it is not draining, it knows the Raft leader, the cluster's metadata is
/// seeded, placements are committed, and every model placed on it has a worker up.
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let r = state.cluster.readiness().await;
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "ready": r.ready,
            "draining": r.draining,
            "leader": r.leader,
            "seeded": r.seeded,
            "placed_here": r.placed_here,
            "workers_up": r.stats.workers_up,
            "queued": r.stats.queued,
            "in_flight": r.stats.in_flight,
        })),
    )
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// The usage ledger: every key's rows for admins, the caller's own rows otherwise.
pub async fn usage(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rows = state.node.usage().await?;
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| caller.role == Role::Admin || r.key == caller.name)
        .collect();
    Ok(Json(json!({"object": "list", "data": rows})))
}
