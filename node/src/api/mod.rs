//! The HTTP API: the OpenAI endpoints under `/v1`, and `/health`, `/ready`, `/metrics`.
//!
//! Wire types stay in this module: handlers parse a request into an
//! [`InferenceRequest`](helixflow_actors::InferenceRequest) and hand it to the node's actors
//! through a [`NodeHandle`]. Every error leaves through [`error::ApiError`].

pub mod admin;
pub mod catalog;
pub mod cluster;
pub mod error;
pub mod extract;
pub mod openai;
pub mod ops;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use helixflow_actors::NodeHandle;
use metrics_exporter_prometheus::PrometheusHandle;

use catalog::Catalog;

use crate::cluster::Cluster;
use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub node: NodeHandle,
    pub cluster: Arc<Cluster>,
    pub catalog: Arc<Catalog>,
    pub metrics: PrometheusHandle,
    pub max_body_bytes: usize,
    /// Set when shutdown begins: `/ready` fails and new requests get 503.
    pub draining: Arc<AtomicBool>,
    /// Whether `POST /admin/v1/fault` is enabled (config `limits.fault_injection`).
    pub fault_injection: bool,
}

pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/v1/models", get(openai::models::list))
        .route("/v1/models/{*id}", get(openai::models::retrieve))
        .route("/v1/chat/completions", post(openai::chat::create))
        .route("/v1/completions", post(openai::completions::create))
        .route("/v1/embeddings", post(openai::embeddings::create))
        .route("/v1/usage", get(ops::usage))
        .route("/admin/v1/fault", post(admin::fault))
        .route("/admin/v1/cluster", get(cluster::status))
        .route("/admin/v1/nodes", post(cluster::add_node))
        .route(
            "/admin/v1/keys",
            get(cluster::list_keys).post(cluster::create_key),
        )
        .route("/admin/v1/keys/{name}", delete(cluster::revoke_key))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("Unknown request URL: {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
        ..ApiError::bad_request(format!("{method} is not allowed on {}", uri.path()))
    }
}
