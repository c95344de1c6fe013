//! The one place where errors become status codes and the contract's error JSON.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::store::{ExpectedRevision, StoreError};

/// An error answered to an HTTP client: `{"error": {"code", "message", ...extra}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Map<String, Value>,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: Map::new(),
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 413 `payload_too_large`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 421 `not_leader`: this node is a follower; writes go to `leader`.
    pub fn not_leader(leader: &str) -> Self {
        ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "not_leader",
            format!("this node is a follower: send writes to the leader, {leader}"),
        )
        .with("leader", serde_json::Value::from(leader))
    }

    /// 500 `internal`: logs the cause, tells the client only that it happened.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error answering a request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to answer; see its log",
        )
    }

    /// Adds a field beside `code` and `message`.
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The answer's body: `{"error": {"code", "message", ...}}`.
    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), Value::from(self.code));
        error.insert("message".into(), Value::from(self.message.clone()));
        error.extend(self.extra.clone());
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // Every 401 names the scheme a client should answer with.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

fn expected_json(expected: ExpectedRevision) -> Value {
    match expected {
        ExpectedRevision::Exact(revision) => Value::from(revision),
        other => Value::from(other.to_string()),
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let message = error.to_string();
        match error {
            StoreError::WrongExpectedRevision { expected, actual } => {
                ApiError::new(StatusCode::CONFLICT, "wrong_expected_revision", message)
                    .with("expected", expected_json(expected))
                    .with("actual_revision", actual.map_or(Value::Null, Value::from))
            }
            StoreError::DuplicateEventId { id } => {
                ApiError::new(StatusCode::CONFLICT, "duplicate_event_id", message)
                    .with("id", Value::from(id.to_string()))
            }
            StoreError::StreamNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "stream_not_found", message)
            }
            StoreError::InvalidRequest(_) => ApiError::invalid(message),
            StoreError::TooManyEvents { .. } => ApiError::too_large(message),
            StoreError::StorageFull(_) => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "storage_full", message)
            }
            StoreError::StorageUnavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                message,
            ),
            StoreError::NotLeader => {
                ApiError::new(StatusCode::MISDIRECTED_REQUEST, "not_leader", message)
            }
            StoreError::Corrupt(_) => {
                tracing::error!(%message, "damaged data in the store");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt", message)
            }
            StoreError::Unavailable(_) => {
                tracing::error!(%message, "store unavailable");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::upcast::UpcastError> for ApiError {
    /// 500 `upcast_failed`: the event cannot be served in its current shape, and is not served
    /// in its stored one either (`?raw=true` reads that).
    fn from(error: crate::upcast::UpcastError) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "upcast_failed",
            error.to_string(),
        )
        .with("position", Value::from(error.position))
        .with("upcaster", Value::from(error.upcaster))
    }
}

/// 404 for unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// 405 for known routes with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// 500 for a handler that panicked (a bug): the contract's JSON, and the panic in the log.
pub fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    ApiError::internal(format_args!("a request handler panicked: {message}")).into_response()
}
