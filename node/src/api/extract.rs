//! Request extractors that fail with [`ApiError`]s: [`ValidJson`] (a body too large is 413,
//! malformed JSON or a wrong field is 400 naming the field) and [`Caller`] (the Bearer key,
//! checked by the Quota actor: 401 when missing or unknown).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use helixflow_actors::quota::Principal;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;

/// A JSON body parsed into `T`.
pub struct ValidJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = match Bytes::from_request(req, state).await {
            Ok(bytes) => bytes,
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::payload_too_large(state.max_body_bytes));
            }
            Err(rejection) => return Err(ApiError::bad_request(rejection.body_text())),
        };
        parse_json(&bytes).map(ValidJson)
    }
}

/// Parses `bytes` as `T`; errors name the offending field as `param`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; expected a JSON object",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let error = match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Ok(value) => return Ok(value),
        Err(error) => error,
    };
    let path = error.path().to_string();
    let inner = error.into_inner();
    if inner.is_syntax() || inner.is_eof() || inner.is_io() {
        return Err(ApiError::bad_request(format!(
            "We could not parse the JSON body of your request: {inner}"
        )));
    }
    let message = inner.to_string();
    let join = |field: &str| {
        if path == "." || path.is_empty() {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        }
    };
    if let Some(field) = quoted_after(&message, "unknown field `") {
        // The path already ends at the unknown field.
        let param = if path.ends_with(field) {
            path.clone()
        } else {
            join(field)
        };
        return Err(ApiError::invalid(
            param,
            format!("Unrecognized request argument supplied: {field}"),
        ));
    }
    if let Some(field) = quoted_after(&message, "missing field `") {
        let param = join(field);
        return Err(ApiError::invalid(
            param.clone(),
            format!("Missing required parameter: '{param}'."),
        ));
    }
    let param = if path == "." { String::new() } else { path };
    let message = strip_position(&message);
    Err(ApiError::invalid(
        param.clone(),
        format!("Invalid value for '{param}': {message}"),
    ))
}

fn quoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split('`').next()
}

/// serde_json appends " at line L column C"; the param name says more.
fn strip_position(message: &str) -> &str {
    message
        .rfind(" at line ")
        .map_or(message, |at| &message[..at])
}

/// The authenticated caller.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "You didn't provide an API key. Provide it in the Authorization header as `Bearer YOUR_KEY`.",
            ));
        };
        let secret = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("The Authorization header must be `Bearer YOUR_KEY`.")
            })?;
        match state.node.authenticate(secret).await? {
            Some(principal) => Ok(Caller(principal)),
            None => Err(ApiError::unauthorized("Incorrect API key provided.")),
        }
    }
}
