//! Liveness and readiness. `GET /health` is cheap and always 200 while the process answers
//! (`status` says `degraded` and why); `GET /health/ready` is 200 only while this server should
//! get traffic: not while it is starting (opening the store, recovering the log's unindexed tail,
//! loading modules), not while the store is degraded, and not while a projection the operator
//! requires (`--require-projection`) is behind or faulted.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

use super::AppState;
use super::error::ApiError;
use crate::projection::Phase;

/// `GET /health`: `ok`, or `degraded` with the store's problems (a full disk, a failed write, a
/// stopped indexer, damaged data found by a read). Always 200: the process is alive.
pub(super) async fn health(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut problems = problems(&state);
    problems.extend(upcaster_problems(&state));
    let mut health = json!({
        "status": if problems.is_empty() { "ok" } else { "degraded" },
        "head": state.store.head(),
        "version": env!("CARGO_PKG_VERSION"),
        "problems": problems,
        "role": role(&state),
    });
    if let Some(follower) = &state.follower {
        health["leader"] = Value::from(follower.leader());
        health["lag"] = Value::from(follower.lag());
    }
    axum::Json(health)
}

/// The store's problems and a follower's, as `{"code", "message"}`.
fn problems(state: &AppState) -> Vec<Value> {
    state
        .store
        .problems()
        .into_iter()
        .chain(state.follower.as_ref().and_then(|f| f.problem()))
        .map(|p| json!({"code": p.code, "message": p.message}))
        .collect()
}

/// Upcasters that failed, as `{"code": "upcaster_failed", "message"}`. They make the server
/// degraded, not unready: every node has the same upcasters, so taking this one out of a load
/// balancer would help nothing, and the reads that do not need the failing events go on.
fn upcaster_problems(state: &AppState) -> Vec<Value> {
    let mut problems = Vec::new();
    // An upcaster that failed fails the same events again (they never change): reads and
    // projections that need them answer errors until it is replaced or deleted.
    for upcaster in state.projections.upcaster_statuses() {
        let why = match (&upcaster.unloadable, &upcaster.fault) {
            (Some(why), _) => format!("its module could not be loaded: {why}"),
            (None, Some(fault)) => format!(
                "it failed on the event at position {}: {}",
                fault.position, fault.message
            ),
            (None, None) => continue,
        };
        problems.push(json!({
            "code": "upcaster_failed",
            "message": format!("upcaster {}: {why}; reads and projections that need the events it fails on answer errors until it is replaced or deleted", upcaster.name),
        }));
    }
    problems
}

fn role(state: &AppState) -> &'static str {
    if state.follower.is_some() {
        "follower"
    } else {
        "leader"
    }
}

/// The answer of `/health/ready`: 200 with no reasons, or 503 with them (and the contract's error
/// object, as every 5xx has).
fn readiness(reasons: Vec<Value>) -> Response {
    if reasons.is_empty() {
        return axum::Json(json!({"ready": true, "reasons": []})).into_response();
    }
    let message = reasons
        .iter()
        .filter_map(|r| r["message"].as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let body = json!({
        "ready": false,
        "reasons": reasons,
        "error": {"code": "not_ready", "message": message},
    });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// `GET /health/ready`
pub(super) async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let mut reasons = problems(&state);
    for name in state.required_projections.iter() {
        let why = match state.projections.status(name) {
            Err(_) => Some(format!("required projection {name:?} is not deployed")),
            Ok(status) => match status.state.phase {
                Phase::Running => None,
                Phase::CatchingUp => Some(format!(
                    "required projection {name:?} is catching up ({} of {})",
                    status.position, status.head
                )),
                Phase::Faulted => Some(format!("required projection {name:?} is faulted")),
            },
        };
        if let Some(message) = why {
            reasons.push(
                json!({"code": "projection_not_ready", "projection": name, "message": message}),
            );
        }
    }
    readiness(reasons)
}

/// What a server answers while it starts: `/health` (alive, degraded: starting), `/health/ready`
/// (503), and 503 `starting` with `Retry-After: 1` for everything else.
pub fn starting_app(follower: bool) -> Router {
    const WHY: &str = "the server is starting: opening the store (recovering the log's unindexed tail) and loading the projections";
    let problem = json!({"code": "starting", "message": WHY});
    let health = json!({
        "status": "degraded",
        "head": 0,
        "version": env!("CARGO_PKG_VERSION"),
        "problems": [problem.clone()],
        "role": if follower { "follower" } else { "leader" },
    });
    Router::new()
        .route(
            "/health",
            axum::routing::get(move || {
                let health = health.clone();
                async move { axum::Json(health) }
            }),
        )
        .route(
            "/health/ready",
            axum::routing::get(move || {
                let problem = problem.clone();
                async move { readiness(vec![problem]) }
            }),
        )
        .fallback(|| async {
            let mut response =
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "starting", WHY).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        })
}
