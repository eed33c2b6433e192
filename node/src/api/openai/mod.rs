//! The OpenAI-compatible endpoints. `params` turns the fields chat and completions share into
//! engine settings; `generate` runs a generation and shapes its answer (one JSON object or an SSE
//! stream); the endpoint files hold their wire types and handlers.

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod generate;
pub mod models;
pub mod params;
pub mod prompt;

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::api::AppState;
use crate::api::catalog::CatalogModel;
use crate::api::error::ApiError;

/// The start of every inference request: refused while the node drains (503), then the model
/// the client names, by id or alias (404 if none).
pub fn serving_model<'a>(state: &'a AppState, name: &str) -> Result<&'a CatalogModel, ApiError> {
    if state.draining.load(Ordering::Acquire) {
        return Err(ApiError::unavailable("the node is shutting down", None));
    }
    state
        .catalog
        .resolve(name)
        .ok_or_else(|| ApiError::model_not_found(name))
}

/// Seconds since the Unix epoch, for `created` fields.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `prefix-<hex>`: a response id unique on this node.
pub fn response_id(prefix: &str, ticket: u64) -> String {
    format!("{prefix}-{:x}{:08x}", unix_now(), ticket)
}
