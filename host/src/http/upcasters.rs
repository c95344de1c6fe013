//! Upcasters over HTTP (api.md v2, "Upcasters"): deploy, list, delete; admin only, each action
//! in the audit trail.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

use super::extract::{Body, Path};
use super::{AppState, admin, error::ApiError};
use crate::access::Principal;
use crate::projection::{Deployed, UpcasterStatus, module_sha256};

fn status_json(status: &UpcasterStatus) -> Value {
    json!({
        "name": status.name,
        "version": status.version,
        "module_sha256": status.module_sha256,
        "takes": status.takes,
        "gives": status.gives,
        "events": status.events,
        "faults": status.faults,
        "error": status.fault.as_ref().map(|f| json!({
            "message": f.message,
            "position": f.position,
            "at": humantime::format_rfc3339_millis(f.at).to_string(),
        })).or_else(|| status.unloadable.as_ref().map(|why| json!({
            "message": format!("its module could not be loaded: {why}"),
            "position": 0,
            "at": Value::Null,
        }))),
    })
}

/// `GET /upcasters`: every upcaster, in the order they run.
pub(super) async fn list(State(state): State<Arc<AppState>>) -> Response {
    let upcasters: Vec<Value> = state
        .projections
        .upcaster_statuses()
        .iter()
        .map(status_json)
        .collect();
    axum::Json(json!({ "upcasters": upcasters })).into_response()
}

/// `GET /upcasters/{name}`
pub(super) async fn status(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let status = state
        .projections
        .upcaster_statuses()
        .into_iter()
        .find(|s| s.name == name)
        .ok_or(crate::projection::ProjectionError::UpcasterNotFound(name))?;
    Ok(axum::Json(status_json(&status)).into_response())
}

/// `PUT /upcasters/{name}`: 201 for a new upcaster, 200 for a new version or the same module;
/// the answer names the projections that rebuild because of it.
pub(super) async fn deploy(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let sha = module_sha256(&body);
    let answer = async {
        let change = state
            .projections
            .deploy_upcaster(&name, body.to_vec())
            .await?;
        let code = match change.deployed {
            Deployed::Created => StatusCode::CREATED,
            _ => StatusCode::OK,
        };
        Ok((
            code,
            axum::Json(json!({
                "name": name,
                "version": change.version,
                "unchanged": change.deployed == Deployed::Unchanged,
                "rebuilding": change.rebuilding,
            })),
        )
            .into_response())
    }
    .await;
    admin::record(
        &state,
        &principal,
        "deploy_upcaster",
        &name,
        Some(sha),
        answer,
    )
    .await
}

/// `DELETE /upcasters/{name}`: 204; the projections it affected rebuild.
pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let sha = state
        .projections
        .upcaster_statuses()
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.module_sha256);
    let answer = state
        .projections
        .delete_upcaster(&name)
        .await
        .map(|_| StatusCode::NO_CONTENT.into_response())
        .map_err(ApiError::from);
    admin::record(&state, &principal, "delete_upcaster", &name, sha, answer).await
}
