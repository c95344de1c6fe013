//! Appending to streams and reading streams and the global log.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Body, Path, Query};
use super::{AppState, json};
use crate::store::{
    Direction, ExpectedRevision, Filter, NewEvent, StoreError, validate_stream_name,
};

#[derive(Deserialize)]
struct AppendBody {
    #[serde(default)]
    expected_revision: Option<Value>,
    events: Vec<EventBody>,
}

#[derive(Deserialize)]
struct EventBody {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    metadata: Option<Box<RawValue>>,
    #[serde(default)]
    id: Option<String>,
}

fn parse_expected(value: Option<Value>) -> Result<ExpectedRevision, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(ExpectedRevision::Any),
        Some(Value::String(s)) => match s.as_str() {
            "any" => Ok(ExpectedRevision::Any),
            "no_stream" => Ok(ExpectedRevision::NoStream),
            "exists" => Ok(ExpectedRevision::Exists),
            other => Err(ApiError::invalid(format!(
                "expected_revision {other:?} is not \"any\", \"no_stream\", \"exists\" or a revision number"
            ))),
        },
        Some(Value::Number(n)) => n.as_u64().map(ExpectedRevision::Exact).ok_or_else(|| {
            ApiError::invalid(format!(
                "expected_revision {n} is not a revision (a whole number from 0)"
            ))
        }),
        Some(other) => Err(ApiError::invalid(format!(
            "expected_revision {other} is not \"any\", \"no_stream\", \"exists\" or a revision number"
        ))),
    }
}

fn parse_events(events: Vec<EventBody>) -> Result<Vec<NewEvent>, ApiError> {
    events
        .into_iter()
        .enumerate()
        .map(|(index, event)| {
            let id = match event.id {
                None => None,
                Some(id) => Some(Uuid::parse_str(&id).map_err(|e| {
                    ApiError::invalid(format!("event {index}: id {id:?} is not a UUID: {e}"))
                })?),
            };
            let raw =
                |value: Box<RawValue>| bytes::Bytes::from(String::from(Box::<str>::from(value)));
            Ok(NewEvent {
                id,
                event_type: event.event_type,
                data: event
                    .data
                    .map_or_else(|| bytes::Bytes::from_static(b"null"), raw),
                metadata: event.metadata.map(raw),
            })
        })
        .collect()
}

/// `POST /streams/{stream}`
pub(super) async fn append(
    State(state): State<Arc<AppState>>,
    Path(stream): Path<String>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = async {
        let body: AppendBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("the body is not a valid append: {e}")))?;
        let expected = parse_expected(body.expected_revision)?;
        let events = parse_events(body.events)?;
        let bytes: usize = events
            .iter()
            .map(|e| e.data.len() + e.metadata.as_ref().map_or(0, |m| m.len()))
            .sum();
        let outcome = state.store.append(&stream, expected, events).await?;
        Ok::<_, ApiError>((outcome, bytes))
    }
    .await;
    match result {
        Ok((outcome, bytes)) => {
            let events = outcome.last_position - outcome.first_position + 1;
            state
                .metrics
                .append_done(true, events, bytes as u64, started.elapsed());
            Ok(axum::Json(serde_json::json!({
                "stream": outcome.stream,
                "first_revision": outcome.first_revision,
                "last_revision": outcome.last_revision,
                "first_position": outcome.first_position,
                "last_position": outcome.last_position,
            }))
            .into_response())
        }
        Err(error) => {
            state.metrics.append_done(false, 0, 0, started.elapsed());
            Err(error)
        }
    }
}

#[derive(Deserialize)]
pub(super) struct ReadStreamParams {
    /// A revision, or `snapshot`: the stream's snapshot and the events after it.
    from: Option<String>,
    /// `true`: the events as stored, not through the upcasters.
    raw: Option<bool>,
    direction: Option<String>,
    limit: Option<usize>,
}

fn read_limit(state: &AppState, limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(100.min(state.limits.max_read_limit)),
        Some(0) => Err(ApiError::invalid("limit must be at least 1")),
        Some(limit) => Ok(limit.min(state.limits.max_read_limit)),
    }
}

fn json_response(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Runs a blocking store read off the async threads.
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    blocking_api(move || read().map_err(ApiError::from)).await
}

/// `GET /streams/{stream}`
pub(super) async fn read_stream(
    State(state): State<Arc<AppState>>,
    Path(stream): Path<String>,
    Query(params): Query<ReadStreamParams>,
) -> Result<Response, ApiError> {
    validate_stream_name(&stream).map_err(ApiError::invalid)?;
    let direction = match params.direction.as_deref() {
        None | Some("forward") => Direction::Forward,
        Some("backward") => Direction::Backward,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "direction {other:?} is not \"forward\" or \"backward\""
            )));
        }
    };
    let limit = read_limit(&state, params.limit)?;
    let from = match params.from.as_deref() {
        None => None,
        Some("snapshot") if direction == Direction::Backward => {
            return Err(ApiError::invalid(
                "from=snapshot reads forward: the snapshot, then the events after it",
            ));
        }
        Some("snapshot") => {
            return read_from_snapshot(state, stream, limit, params.raw.unwrap_or(false)).await;
        }
        Some(from) => Some(from.parse::<u64>().map_err(|_| {
            ApiError::invalid(format!(
                "from {from:?} is not a revision (a whole number from 0) or \"snapshot\""
            ))
        })?),
    };
    let store = state.store.clone();
    let chain = upcasters(&state, params.raw);
    let slice = blocking_api(move || {
        let mut slice = store.read_stream(&stream, from, direction, limit)?;
        chain.apply(&mut slice.events, |_| true)?;
        Ok(slice)
    })
    .await?;
    Ok(json_response(stream_page(None, slice)))
}

/// The upcasters a read passes its events through: the server's current ones, or none for
/// `raw=true`.
fn upcasters(state: &AppState, raw: Option<bool>) -> std::sync::Arc<crate::upcast::Chain> {
    if raw == Some(true) {
        std::sync::Arc::default()
    } else {
        state.projections.upcasters()
    }
}

/// Runs a blocking read (store reads, upcasters) off the async threads.
async fn blocking_api<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(ApiError::internal)?
}

/// `GET /streams/{stream}?from=snapshot`: the stream's snapshot (or `null`) and a page of the
/// events after its revision (from revision 0 without one).
async fn read_from_snapshot(
    state: Arc<AppState>,
    stream: String,
    limit: usize,
    raw: bool,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let chain = upcasters(&state, Some(raw));
    let (snapshot, slice) = blocking_api(move || {
        let snapshot = store.snapshot(&stream)?;
        let from = snapshot.as_ref().map_or(0, |s| s.revision + 1);
        let mut slice = store.read_stream(&stream, Some(from), Direction::Forward, limit)?;
        chain.apply(&mut slice.events, |_| true)?;
        Ok((snapshot, slice))
    })
    .await?;
    Ok(json_response(stream_page(Some(snapshot), slice)))
}

/// `{"snapshot": ..., "events": [...], "next": ...}`, the snapshot only when asked for.
fn stream_page(
    snapshot: Option<Option<crate::store::Snapshot>>,
    slice: crate::store::StreamSlice,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(256 * slice.events.len() + 32);
    body.push(b'{');
    if let Some(snapshot) = snapshot {
        body.extend_from_slice(b"\"snapshot\":");
        match &snapshot {
            Some(snapshot) => json::write_snapshot(&mut body, snapshot),
            None => body.extend_from_slice(b"null"),
        }
        body.push(b',');
    }
    body.extend_from_slice(b"\"events\":");
    json::write_events(&mut body, &slice.events);
    body.extend_from_slice(b",\"next\":");
    match slice.next {
        Some(next) => body.extend_from_slice(next.to_string().as_bytes()),
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
    body
}

#[derive(Deserialize)]
pub(super) struct SnapshotBody {
    revision: u64,
    state: Box<RawValue>,
}

/// `PUT /streams/{stream}/snapshot`
pub(super) async fn save_snapshot(
    State(state): State<Arc<AppState>>,
    Path(stream): Path<String>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    validate_stream_name(&stream).map_err(ApiError::invalid)?;
    let body: SnapshotBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(format!(
            "the body is not a snapshot ({{\"revision\": N, \"state\": any JSON}}): {e}"
        ))
    })?;
    let revision = body.revision;
    let snapshot = bytes::Bytes::from(String::from(Box::<str>::from(body.state)));
    let store = state.store.clone();
    let saved = {
        let stream = stream.clone();
        blocking(move || store.save_snapshot(&stream, revision, snapshot)).await?
    };
    Ok(axum::Json(serde_json::json!({
        "stream": stream,
        "revision": revision,
        "stored": saved.stored,
        "current_revision": saved.current_revision,
    }))
    .into_response())
}

/// `GET /streams/{stream}/snapshot`
pub(super) async fn read_snapshot(
    State(state): State<Arc<AppState>>,
    Path(stream): Path<String>,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let snapshot = {
        let stream = stream.clone();
        blocking(move || store.snapshot(&stream)).await?
    };
    let snapshot = snapshot.ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "snapshot_not_found",
            format!("stream {stream:?} has no snapshot"),
        )
    })?;
    let mut body = Vec::with_capacity(snapshot.state.len() + 80);
    json::write_snapshot(&mut body, &snapshot);
    Ok(json_response(body))
}

#[derive(Deserialize)]
pub(super) struct ListStreamsParams {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /streams`: stream names in byte order, for browsing.
pub(super) async fn list_streams(
    State(state): State<Arc<AppState>>,
    Query(params): Query<ListStreamsParams>,
) -> Result<Response, ApiError> {
    let limit = read_limit(&state, params.limit)?;
    let store = state.store.clone();
    let (streams, more) =
        blocking(move || store.list_streams(&params.prefix, params.after.as_deref(), limit))
            .await?;
    let next = more
        .then(|| streams.last().map(|s| s.name.clone()))
        .flatten();
    let streams: Vec<Value> = streams
        .into_iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "last_revision": s.last_revision,
                "last_position": s.last_position,
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({"streams": streams, "next": next})).into_response())
}

/// Parameters of `/all` and `/subscribe` (which ignores `limit`). One flat struct: serde's
/// `flatten` would stop numbers parsing from query strings.
#[derive(Deserialize)]
pub(super) struct LogParams {
    pub(super) from: Option<u64>,
    limit: Option<usize>,
    stream: Option<String>,
    category: Option<String>,
    types: Option<String>,
    /// `true`: the events as stored, not through the upcasters.
    raw: Option<bool>,
}

impl LogParams {
    /// Whether the reader asked for the events as stored.
    pub(super) fn raw(&self) -> bool {
        self.raw == Some(true)
    }

    pub(super) fn filter(&self) -> Result<Filter, ApiError> {
        if let Some(stream) = &self.stream {
            validate_stream_name(stream).map_err(ApiError::invalid)?;
        }
        let types = self
            .types
            .as_ref()
            .map(|t| {
                t.split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Filter {
            stream: self.stream.clone(),
            category: self.category.clone().filter(|c| !c.is_empty()),
            types,
        })
    }
}

/// `GET /all`
pub(super) async fn read_all(
    State(state): State<Arc<AppState>>,
    Query(params): Query<LogParams>,
) -> Result<Response, ApiError> {
    let limit = read_limit(&state, params.limit)?;
    let filter = params.filter()?;
    let from = params.from.unwrap_or(1);
    let store = state.store.clone();
    let chain = upcasters(&state, params.raw);
    let slice = blocking_api(move || {
        // A type an upcaster takes may become a wanted one: read those too, keep what fits.
        let mut slice = store.read_all(from, limit, &chain.widen(&filter))?;
        chain.apply_filtered(&mut slice.events, &filter)?;
        Ok(slice)
    })
    .await?;
    let mut body = Vec::with_capacity(256 * slice.events.len() + 48);
    body.extend_from_slice(b"{\"events\":");
    json::write_events(&mut body, &slice.events);
    body.extend_from_slice(b",\"next\":");
    if slice.next_from <= slice.head {
        body.extend_from_slice(slice.next_from.to_string().as_bytes());
    } else {
        body.extend_from_slice(b"null");
    }
    body.extend_from_slice(b",\"head\":");
    body.extend_from_slice(slice.head.to_string().as_bytes());
    body.push(b'}');
    Ok(json_response(body))
}
