//! Appending to streams and reading streams and the global log.

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
    State(state): State<AppState>,
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
    from: Option<u64>,
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
    tokio::task::spawn_blocking(read)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

/// `GET /streams/{stream}`
pub(super) async fn read_stream(
    State(state): State<AppState>,
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
    let store = state.store.clone();
    let slice = blocking(move || store.read_stream(&stream, params.from, direction, limit)).await?;
    let mut body = Vec::with_capacity(256 * slice.events.len() + 32);
    body.extend_from_slice(b"{\"events\":");
    json::write_events(&mut body, &slice.events);
    body.extend_from_slice(b",\"next\":");
    match slice.next {
        Some(next) => body.extend_from_slice(next.to_string().as_bytes()),
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
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
    State(state): State<AppState>,
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
}

impl LogParams {
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
    State(state): State<AppState>,
    Query(params): Query<LogParams>,
) -> Result<Response, ApiError> {
    let limit = read_limit(&state, params.limit)?;
    let filter = params.filter()?;
    let from = params.from.unwrap_or(1);
    let store = state.store.clone();
    let slice = blocking(move || store.read_all(from, limit, &filter)).await?;
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
