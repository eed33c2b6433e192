//! Admin endpoints (`/admin/v1/…`, admin keys only).
//!
//! `POST /admin/v1/fault` makes a model's worker fail on purpose — its engine thread panics, or
//! stalls for a while — so that tests and chaos runs can watch the supervision tree recover. It
//! exists only when the config sets `limits.fault_injection = true`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use helixflow_actors::gpu_worker::Fault;
use helixflow_runtime::config::Role;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{Caller, ValidJson};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    pub model: String,
    /// `"panic"` or `"stall"`.
    pub fault: String,
    /// How long a stall lasts.
    #[serde(default)]
    pub seconds: Option<f64>,
}

pub async fn fault(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ValidJson(body): ValidJson<FaultRequest>,
) -> Result<Json<Value>, ApiError> {
    if !state.fault_injection {
        return Err(ApiError::not_found("Unknown request URL: /admin/v1/fault"));
    }
    if caller.role != Role::Admin {
        return Err(ApiError::forbidden("this endpoint needs an admin key"));
    }
    let model = state
        .catalog
        .resolve(&body.model)
        .ok_or_else(|| ApiError::model_not_found(&body.model))?;
    let fault = match (body.fault.as_str(), body.seconds) {
        ("panic", _) => Fault::Panic,
        ("stall", Some(s)) if s.is_finite() && s > 0.0 && s <= 3600.0 => {
            Fault::Stall(Duration::from_secs_f64(s))
        }
        ("stall", _) => {
            return Err(ApiError::invalid(
                "seconds",
                "a stall needs 'seconds' in (0, 3600]",
            ));
        }
        (other, _) => {
            return Err(ApiError::invalid(
                "fault",
                format!("unknown fault {other:?}; expected \"panic\" or \"stall\""),
            ));
        }
    };
    if !state.node.inject_fault(&model.id, fault).await? {
        return Err(ApiError::unavailable(
            format!("no worker serves `{}` right now", model.id),
            None,
        ));
    }
    Ok(Json(json!({"model": model.id, "fault": body.fault})))
}
