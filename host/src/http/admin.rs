//! Tokens (`/tokens`), the audit trail (`/audit`), backups (`/backup`), and [`record`], which every admin action
//! calls to leave its entry in the trail before it is answered.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;

use super::AppState;
use super::error::ApiError;
use super::extract::{Body, Path, Query};
use crate::access::{Action, AuditPage, CreatedToken, NewToken, Principal, TokenError, TokenList};
use crate::backup::Backup;

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
    State(state): State<Arc<AppState>>,
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
pub(super) async fn list_tokens(State(state): State<Arc<AppState>>) -> axum::Json<TokenList> {
    axum::Json(TokenList {
        tokens: state.access.tokens.list(),
    })
}

/// `DELETE /tokens/{name}`
pub(super) async fn revoke_token(
    State(state): State<Arc<AppState>>,
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
    State(state): State<Arc<AppState>>,
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

/// `GET /backup`: a tar of the data folder's essentials, streamed while the server serves.
pub(super) async fn backup(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    let taken = Backup::take(&state.store, &state.projections, &state.access)
        .await
        .map_err(ApiError::internal);
    let backup = match taken {
        Ok(backup) => backup,
        Err(error) => return record(&state, &principal, "backup", "", None, Err(error)).await,
    };
    let position = backup.position;
    let (chunks, body) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter {
            chunks: chunks.clone(),
            buffer: Vec::with_capacity(CHUNK),
        };
        if let Err(error) = backup.write(writer) {
            tracing::warn!(%error, "a backup stream ended early");
            let _ = chunks.blocking_send(Err(std::io::Error::other(error.to_string())));
        }
    });
    let stream = futures::stream::poll_fn({
        let mut body = body;
        move |cx| body.poll_recv(cx)
    });
    let response = (
        [
            (header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"lantern-backup-{position}.tar\""),
            ),
            (
                HeaderName::from_static("lantern-position"),
                position.to_string(),
            ),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response();
    let target = format!("position {position}");
    record(&state, &principal, "backup", &target, None, Ok(response)).await
}

const CHUNK: usize = 256 << 10;

/// Hands what the tar builder writes to the response body, a chunk at a time; a client that
/// left makes the next write fail, which ends the backup.
struct ChannelWriter {
    chunks: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buffer: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK),
        ));
        self.chunks
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client left"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}
