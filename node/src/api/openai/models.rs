//! `GET /v1/models` and `GET /v1/models/{id}`.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::catalog::CatalogModel;
use crate::api::error::ApiError;
use crate::api::extract::Caller;

fn model_object(model: &CatalogModel) -> Value {
    json!({
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": "helixflow",
        "aliases": model.aliases,
        "context_window": model.context_window,
    })
}

pub async fn list(State(state): State<AppState>, _caller: Caller) -> Json<Value> {
    let data: Vec<Value> = state.catalog.models().iter().map(model_object).collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn retrieve(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .catalog
        .resolve(&id)
        .map(|m| Json(model_object(m)))
        .ok_or_else(|| ApiError::model_not_found(&id))
}
