//! Projections over HTTP: deploy, status, delete, rebuild, and queries of their read models.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{Body, Path, Query};
use super::{AppState, admin};
use crate::access::Principal;
use crate::projection::{
    Deployed, Fault, FaultCause, MinPosition, Phase, ProjectionError, RebuildStatus, Status,
    module_sha256,
};

/// Longest a read-your-writes request may wait.
const MAX_WAIT: Duration = Duration::from_secs(30);
const DEFAULT_WAIT: Duration = Duration::from_secs(5);

impl From<ProjectionError> for ApiError {
    fn from(error: ProjectionError) -> Self {
        let message = error.to_string();
        match error {
            ProjectionError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "projection_not_found", message)
            }
            ProjectionError::UpcasterNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "upcaster_not_found", message)
            }
            ProjectionError::InvalidName(_) => ApiError::invalid(message),
            ProjectionError::InvalidModule(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_module", message)
            }
            ProjectionError::TooLarge(_) => ApiError::too_large(message),
            ProjectionError::KeyNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "key_not_found", message)
            }
            ProjectionError::QueryNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "query_not_found", message)
            }
            ProjectionError::QueryFailed(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "query_failed", message)
            }
            ProjectionError::Storage(_) => {
                tracing::error!(%message, "a read model could not be read");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    message,
                )
            }
            ProjectionError::StorageFull(_) => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "storage_full", message)
            }
            ProjectionError::Unavailable { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "projection_unavailable",
                message,
            ),
            ProjectionError::NotCaughtUp { position, .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_caught_up", message)
                    .with("position", json!(position))
            }
            other => ApiError::internal(other),
        }
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::CatchingUp => "catching_up",
        Phase::Running => "running",
        Phase::Faulted => "faulted",
    }
}

fn fault_json(fault: &Option<Fault>) -> Value {
    match fault {
        None => Value::Null,
        Some(fault) => json!({
            "message": fault.message,
            "position": fault.position,
            "at": humantime::format_rfc3339_millis(fault.at).to_string(),
            "cause": match fault.cause {
                FaultCause::Module => "module",
                FaultCause::Storage => "storage",
                FaultCause::Upcaster => "upcaster",
            },
        }),
    }
}

fn rebuild_json(rebuild: &RebuildStatus, head: u64) -> Value {
    let progress = if head == 0 {
        1.0
    } else {
        (rebuild.position as f64 / head as f64).min(1.0)
    };
    let rate = rebuild.state.events_per_second;
    let remaining = head.saturating_sub(rebuild.position);
    let eta_seconds = (rate > 0.0).then(|| (remaining as f64 / rate * 10.0).round() / 10.0);
    json!({
        "version": rebuild.version,
        "reason": rebuild.reason,
        "position": rebuild.position,
        "head": head,
        "progress": (progress * 10_000.0).round() / 10_000.0,
        "status": phase_name(rebuild.state.phase),
        "events_per_second": (rate * 10.0).round() / 10.0,
        "eta_seconds": eta_seconds,
        "error": fault_json(&rebuild.state.fault),
    })
}

/// The contract's Status object.
pub(super) fn status_json(status: &Status) -> Value {
    json!({
        "name": status.name,
        "version": status.version,
        "module_sha256": status.module_sha256,
        "status": phase_name(status.state.phase),
        "position": status.position,
        "head": status.head,
        "lag": status.head.saturating_sub(status.position),
        "events_per_second": (status.state.events_per_second * 10.0).round() / 10.0,
        "subscription": {
            "categories": status.subscription.categories,
            "streams": status.subscription.streams,
            "types": status.subscription.types,
        },
        "upcasters": status.upcasters,
        "error": fault_json(&status.state.fault),
        "rebuild": status.rebuild.as_ref().map(|r| rebuild_json(r, status.head)),
    })
}

/// `PUT /projections/{name}`
pub(super) async fn deploy(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let sha = module_sha256(&body);
    let answer = deploy_module(&state, &name, body.to_vec()).await;
    admin::record(&state, &principal, "deploy", &name, Some(sha), answer).await
}

async fn deploy_module(state: &AppState, name: &str, body: Vec<u8>) -> Result<Response, ApiError> {
    let deployed = state.projections.deploy(name, body).await?;
    let status = state.projections.status(name)?;
    let (code, version, phase) = match deployed {
        Deployed::Created => (StatusCode::CREATED, status.version, "catching_up"),
        Deployed::Rebuilding => (
            StatusCode::ACCEPTED,
            status
                .rebuild
                .as_ref()
                .map_or(status.version, |r| r.version),
            "rebuilding",
        ),
        Deployed::Unchanged => (
            StatusCode::OK,
            status.version,
            phase_name(status.state.phase),
        ),
    };
    Ok((
        code,
        axum::Json(json!({"name": name, "version": version, "status": phase})),
    )
        .into_response())
}

/// `GET /projections`
pub(super) async fn list(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let statuses: Vec<Value> = state.projections.list().iter().map(status_json).collect();
    axum::Json(json!({ "projections": statuses }))
}

/// `GET /projections/{name}`
pub(super) async fn status(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let status = state.projections.status(&name)?;
    Ok(axum::Json(status_json(&status)).into_response())
}

/// `DELETE /projections/{name}`
pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let sha = state
        .projections
        .status(&name)
        .ok()
        .map(|s| s.module_sha256);
    let answer = state
        .projections
        .delete(&name)
        .await
        .map(|()| StatusCode::NO_CONTENT.into_response())
        .map_err(ApiError::from);
    admin::record(&state, &principal, "delete", &name, sha, answer).await
}

/// `POST /projections/{name}/rebuild`
pub(super) async fn rebuild(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let sha = state
        .projections
        .status(&name)
        .ok()
        .map(|s| s.module_sha256);
    let answer = start_rebuild(&state, &name).await;
    admin::record(&state, &principal, "rebuild", &name, sha, answer).await
}

async fn start_rebuild(state: &AppState, name: &str) -> Result<Response, ApiError> {
    state.projections.rebuild(name).await?;
    let status = state.projections.status(name)?;
    let version = status
        .rebuild
        .as_ref()
        .map_or(status.version, |r| r.version);
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"name": name, "version": version, "status": "rebuilding"})),
    )
        .into_response())
}

/// Parses `min_position` and `wait_ms` out of the query parameters (removing them).
fn take_min_position(
    params: &mut BTreeMap<String, String>,
) -> Result<Option<MinPosition>, ApiError> {
    let number = |name: &str, raw: String| {
        raw.parse::<u64>()
            .map_err(|_| ApiError::invalid(format!("{name} must be a whole number, not {raw:?}")))
    };
    let wait = match params.remove("wait_ms") {
        None => DEFAULT_WAIT,
        Some(raw) => Duration::from_millis(number("wait_ms", raw)?).min(MAX_WAIT),
    };
    match params.remove("min_position") {
        None => Ok(None),
        Some(raw) => Ok(Some(MinPosition {
            position: number("min_position", raw)?,
            wait,
        })),
    }
}

fn with_position(mut response: Response, position: u64) -> Response {
    response.headers_mut().insert(
        "lantern-position",
        HeaderValue::from_str(&position.to_string()).expect("digits are a valid header"),
    );
    response
}

/// `GET /projections/{name}/state/{key}`
pub(super) async fn get_key(
    State(state): State<Arc<AppState>>,
    Path((name, key)): Path<(String, String)>,
    Query(mut params): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let min = take_min_position(&mut params)?;
    let (value, position) = state.projections.get(&name, &key, min).await?;
    let content_type = if serde_json::from_slice::<serde::de::IgnoredAny>(&value).is_ok() {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let response = ([(header::CONTENT_TYPE, content_type)], value).into_response();
    Ok(with_position(response, position))
}

#[derive(Deserialize)]
pub(super) struct PageParams {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    after: String,
    limit: Option<usize>,
    min_position: Option<u64>,
    wait_ms: Option<u64>,
}

/// `GET /projections/{name}/state?prefix=&after=&limit=`
pub(super) async fn page(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(params): Query<PageParams>,
) -> Result<Response, ApiError> {
    let limit = match params.limit {
        None => 100,
        Some(0) => return Err(ApiError::invalid("limit must be at least 1")),
        Some(limit) => limit.min(state.limits.max_read_limit),
    };
    let min = params.min_position.map(|position| MinPosition {
        position,
        wait: params
            .wait_ms
            .map_or(DEFAULT_WAIT, Duration::from_millis)
            .min(MAX_WAIT),
    });
    let page = state
        .projections
        .page(&name, &params.prefix, &params.after, limit, min)
        .await?;
    let items: Vec<Value> = page
        .items
        .into_iter()
        .map(|(key, value)| {
            let value = serde_json::from_slice(&value).unwrap_or_else(|_| {
                // Not JSON: the bytes as a string where they are UTF-8, else an array of bytes.
                String::from_utf8(value.clone()).map_or_else(|_| json!(value), Value::String)
            });
            json!({"key": key, "value": value})
        })
        .collect();
    let body = json!({"items": items, "next": page.next, "position": page.position});
    Ok(with_position(
        axum::Json(body).into_response(),
        page.position,
    ))
}

/// `GET /projections/{name}/query/{query}?...`
pub(super) async fn query(
    State(state): State<Arc<AppState>>,
    Path((name, query)): Path<(String, String)>,
    Query(mut params): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let min = take_min_position(&mut params)?;
    let params_json = serde_json::to_string(&params).map_err(ApiError::internal)?;
    let (answer, position) = state
        .projections
        .query(&name, &query, params_json, min)
        .await?;
    let response = ([(header::CONTENT_TYPE, "application/json")], answer).into_response();
    Ok(with_position(response, position))
}
