//! [`ApiError`]: every error the HTTP API returns, in the OpenAI shape
//! (`{"error":{"message","type","param","code"}}`), and the one place where internal errors are
//! mapped to a status and an `error.type`.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use helixflow_actors::quota::QuotaRejection;
use helixflow_actors::scheduler::Rejection;
use helixflow_actors::{NodeError, RequestFailure};

use crate::cluster::forward::SubmitError;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<Duration>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
pub struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400: a parameter is wrong; `param` names it.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param.into()),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// 400 without a single parameter to blame (e.g. malformed JSON).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400: prompt (plus completion) longer than the model's context window.
    pub fn context_length(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(param, message)
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError {
            code: Some("invalid_api_key"),
            ..ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
        }
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "permission_error", message)
    }

    pub fn model_not_found(model: &str) -> ApiError {
        ApiError {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{model}` does not exist or you do not have access to it."),
            )
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    pub fn payload_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than this node's limit of {limit} bytes"),
        )
    }

    /// 503 (the node cannot take it now); `retry_after` is sent as `Retry-After`.
    pub fn unavailable(message: impl Into<String>, retry_after: Option<Duration>) -> ApiError {
        ApiError {
            retry_after,
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                message,
            )
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The JSON object of the error, for SSE streams that fail after they started.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&Body {
            error: ErrorObject {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.to_json(),
        )
            .into_response();
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl From<QuotaRejection> for ApiError {
    fn from(rejection: QuotaRejection) -> ApiError {
        let message = rejection.to_string();
        match rejection {
            QuotaRejection::RateLimited { retry_after, .. } => ApiError {
                code: Some("rate_limit_exceeded"),
                retry_after: Some(retry_after),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "requests", message)
            },
            QuotaRejection::TooLarge { .. } => ApiError {
                code: Some("rate_limit_exceeded"),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "tokens", message)
            },
            QuotaRejection::BudgetExhausted { .. } => ApiError {
                code: Some("insufficient_quota"),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", message)
            },
            QuotaRejection::UnknownKey { .. } => ApiError::unauthorized(message),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> ApiError {
        let message = rejection.to_string();
        match rejection {
            Rejection::KeyQueueFull { .. } => ApiError {
                code: Some("rate_limit_exceeded"),
                retry_after: Some(Duration::from_secs(1)),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "requests", message)
            },
            Rejection::Overloaded { .. } => {
                ApiError::unavailable(message, Some(Duration::from_secs(1)))
            }
            Rejection::NoWorker { .. } => {
                ApiError::unavailable(message, Some(Duration::from_secs(5)))
            }
            Rejection::TooLarge { .. } => ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid("messages", message)
            },
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> ApiError {
        match error {
            SubmitError::Rejected(rejection) => rejection.into(),
            SubmitError::NoReplica { model } => ApiError::unavailable(
                format!("no node of the cluster serves model `{model}` right now; retry shortly"),
                Some(Duration::from_secs(2)),
            ),
            SubmitError::Node(e) => e.into(),
        }
    }
}

impl From<RequestFailure> for ApiError {
    fn from(failure: RequestFailure) -> ApiError {
        let message = failure.to_string();
        match failure {
            RequestFailure::Invalid(_) => ApiError::bad_request(message),
            RequestFailure::WorkerLost => {
                ApiError::unavailable(message, Some(Duration::from_secs(1)))
            }
            RequestFailure::ShuttingDown => {
                ApiError::unavailable(message, Some(Duration::from_secs(5)))
            }
            RequestFailure::Unavailable(_) => {
                ApiError::unavailable(message, Some(Duration::from_secs(1)))
            }
        }
    }
}

impl From<NodeError> for ApiError {
    fn from(error: NodeError) -> ApiError {
        match error {
            NodeError::Unavailable { .. } => {
                ApiError::unavailable(error.to_string(), Some(Duration::from_secs(5)))
            }
            NodeError::Ledger(_) => ApiError::internal(error.to_string()),
        }
    }
}
