//! The leader's side of replication (`docs/replication.md`): the log in its stored form, the
//! projections and tokens to copy, and module bytes. Admin only.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::extract::{Path, Query};
use super::{ApiError, AppState};
use crate::replication::{
    CONTENT_TYPE, LeaderState, Message, ReplicatedSnapshot, STORE_ID_HEADER, SnapshotChanges,
};
use crate::store::{LogReader, Store};

/// Bytes of records per message.
const BATCH_BYTES: usize = 1 << 20;
/// A heartbeat at least this often.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
pub(super) struct ReplicateParams {
    from: Option<u64>,
}

/// `GET /replicate?from=P`
pub(super) async fn replicate(
    State(state): State<Arc<AppState>>,
    Query(params): Query<ReplicateParams>,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let from = params.from.unwrap_or(1);
    let reader = tokio::task::spawn_blocking(move || store.log_reader(from))
        .await
        .map_err(ApiError::internal)??;
    let (messages, body) = mpsc::channel::<Bytes>(4);
    let shutdown = state.shutdown.clone();
    let store = state.store.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = send_log(store, reader, messages) => {}
        }
    });
    let body = futures::stream::poll_fn({
        let mut body = body;
        move |cx| body.poll_recv(cx)
    })
    .map(Ok::<_, Infallible>);
    Ok((
        [
            (header::CONTENT_TYPE, CONTENT_TYPE.to_owned()),
            (
                header::HeaderName::from_static(STORE_ID_HEADER),
                state.store.id().to_string(),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// Sends the log from the reader's position on, then each commit as it happens, with a
/// heartbeat after each batch and at least once a second; ends when the follower goes away.
/// Each follower has its own reader: the leader never waits for one.
async fn send_log(store: Store, mut reader: LogReader, messages: mpsc::Sender<Bytes>) {
    let mut head = store.watch_head();
    loop {
        head.borrow_and_update();
        let read = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                let records = reader.read(&store, BATCH_BYTES);
                (reader, records)
            })
            .await
        };
        let Ok((returned, records)) = read else {
            return;
        };
        reader = returned;
        let records = match records {
            Ok(records) => records,
            Err(error) => {
                tracing::error!(%error, "reading the log for a follower");
                return;
            }
        };
        let sent = if records.is_empty() {
            match tokio::time::timeout(HEARTBEAT_EVERY, head.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return,
                Err(_) => true,
            }
        } else {
            messages
                .send(Message::records_header(records.len()))
                .await
                .is_ok()
                && messages.send(records).await.is_ok()
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        if !sent
            || messages
                .send(Message::heartbeat(store.head(), now))
                .await
                .is_err()
        {
            return;
        }
    }
}

/// `GET /replicate/state`
pub(super) async fn state(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let tokens =
        serde_json::from_slice(&state.access.tokens.stored_bytes()).map_err(ApiError::internal)?;
    Ok(axum::Json(LeaderState {
        store_id: state.store.id(),
        head: state.store.head(),
        projections: state.projections.wanted().await,
        upcasters: state
            .projections
            .upcaster_statuses()
            .into_iter()
            .map(|u| (u.name, u.module_sha256))
            .collect(),
        tokens,
        snapshot_change: {
            let store = state.store.clone();
            tokio::task::spawn_blocking(move || store.last_snapshot_change())
                .await
                .map_err(ApiError::internal)??
        },
    })
    .into_response())
}

#[derive(Deserialize)]
pub(super) struct SnapshotParams {
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /replicate/snapshots?after=C&limit=N`: the stored snapshots changed after change `C`.
pub(super) async fn snapshots(
    State(state): State<Arc<AppState>>,
    Query(params): Query<SnapshotParams>,
) -> Result<Response, ApiError> {
    let limit = params.limit.unwrap_or(1000).clamp(1, 10_000);
    let store = state.store.clone();
    let changed = tokio::task::spawn_blocking(move || {
        store.snapshot_changes(params.after.unwrap_or(0), limit)
    })
    .await
    .map_err(ApiError::internal)??;
    let snapshots = changed
        .into_iter()
        .map(ReplicatedSnapshot::from_stored)
        .collect::<anyhow::Result<_>>()
        .map_err(ApiError::internal)?;
    Ok(axum::Json(SnapshotChanges { snapshots }).into_response())
}

/// `GET /replicate/modules/{sha256}`
pub(super) async fn module(
    State(state): State<Arc<AppState>>,
    Path(sha256): Path<String>,
) -> Result<Response, ApiError> {
    match state.projections.module_bytes(&sha256).await? {
        Some(bytes) => Ok(([(header::CONTENT_TYPE, "application/wasm")], bytes).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "module_not_found",
            format!("no deployed module has SHA-256 {sha256}"),
        )),
    }
}
