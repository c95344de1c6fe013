//! Tokens (`/tokens`) and the audit trail (`/audit`), and [`record`], which every admin action
//! calls to leave its entry in the trail before it is answered.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::extract::{Body, Path, Query};
use crate::access::{Action, AuditPage, CreatedToken, NewToken, Principal, TokenError, TokenList};

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        let message = error.to_string();
        match error {
            TokenError::Exists(_) => ApiError::new(StatusCode::CONFLICT, "token_exists", message),
            TokenError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "token_not_found", message)
            }
            TokenError::Invalid(_) => ApiError::invalid(message),
            other => ApiError::internal(other),
        }
    }
}

/// Records an admin action in the audit trail, durably, and passes its answer through. An action
/// whose record cannot be written is still answered (it happened), and the failure is logged.
pub(super) async fn record(
    state: &AppState,
    principal: &Principal,
    action: &'static str,
    target: &str,
    module_sha256: Option<String>,
    answer: Result<Response, ApiError>,
) -> Result<Response, ApiError> {
    let status = match &answer {
        Ok(response) => response.status(),
        Err(error) => error.status(),
    };
    let entry = Action {
        actor: principal.name().to_owned(),
        action,
        target: target.to_owned(),
        module_sha256,
        status: status.as_u16(),
    };
    let audit = state.access.audit.clone();
    match tokio::task::spawn_blocking(move || audit.record(entry)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::error!(%error, action, target, "could not write the audit trail")
        }
        Err(error) => tracing::error!(%error, action, target, "audit task failed"),
    }
    answer
}

/// `POST /tokens`
pub(super) async fn create_token(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let request: NewToken = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("bad token request: {e}")))?;
    let tokens = state.access.tokens.clone();
    let (name, role, projections) = (request.name.clone(), request.role, request.projections);
    let answer = tokio::task::spawn_blocking(move || tokens.create(&name, role, projections))
        .await
        .map_err(ApiError::internal)
        .and_then(|created| created.map_err(ApiError::from))
        .map(|(info, token)| {
            (
                StatusCode::CREATED,
                axum::Json(CreatedToken { info, token }),
            )
                .into_response()
        });
    record(
        &state,
        &principal,
        "token_create",
        &request.name,
        None,
        answer,
    )
    .await
}

/// `GET /tokens`
pub(super) async fn list_tokens(State(state): State<AppState>) -> axum::Json<TokenList> {
    axum::Json(TokenList {
        tokens: state.access.tokens.list(),
    })
}

/// `DELETE /tokens/{name}`
pub(super) async fn revoke_token(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let tokens = state.access.tokens.clone();
    let target = name.clone();
    let answer = tokio::task::spawn_blocking(move || tokens.revoke(&target))
        .await
        .map_err(ApiError::internal)
        .and_then(|revoked| revoked.map_err(ApiError::from))
        .map(|_| StatusCode::NO_CONTENT.into_response());
    record(&state, &principal, "token_revoke", &name, None, answer).await
}

#[derive(Deserialize)]
pub(super) struct AuditParams {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

/// `GET /audit?after=&limit=`
pub(super) async fn audit(
    State(state): State<AppState>,
    Query(params): Query<AuditParams>,
) -> Result<axum::Json<AuditPage>, ApiError> {
    let limit = match params.limit {
        None => 100,
        Some(0) => return Err(ApiError::invalid("limit must be at least 1")),
        Some(limit) => limit.min(state.limits.max_read_limit),
    };
    let audit = state.access.audit.clone();
    // One more than asked, to know whether there is a next page.
    let mut entries = tokio::task::spawn_blocking(move || audit.read(params.after, limit + 1))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let next = if entries.len() > limit {
        entries.truncate(limit);
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(axum::Json(AuditPage { entries, next }))
}
