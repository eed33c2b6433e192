//! Operations endpoints: liveness, readiness, Prometheus metrics and the usage ledger.

use std::sync::atomic::Ordering;

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

/// Every model has a worker and the node is not draining.
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let stats = state.node.scheduler_stats().await.unwrap_or_default();
    let models = state.catalog.models().len();
    let draining = state.draining.load(Ordering::Acquire);
    let ready = !draining && stats.workers_up >= models;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "ready": ready,
            "draining": draining,
            "workers_up": stats.workers_up,
            "models": models,
            "queued": stats.queued,
            "in_flight": stats.in_flight,
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
