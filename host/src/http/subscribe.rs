//! `GET /subscribe`: catch-up then live, as Server-Sent Events or NDJSON.
//!
//! Each subscriber gets a task that reads the log through a [`Subscription`] and hands encoded
//! chunks to the response body through a channel of two chunks: a slow client stalls only its
//! own task, which resumes reading the log where it stopped, so nothing buffers without bound
//! and appends never wait for subscribers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::extract::Query;
use super::metrics::SubscriberGuard;
use super::streams::LogParams;
use super::{AppState, json};
use crate::access::Principal;
use crate::store::RecordedEvent;
use crate::subscription::Subscription;

/// An idle subscription gets a heartbeat this often (the contract asks for at least every 15 s).
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Events read from the log per batch.
const BATCH: usize = 1000;

#[derive(Clone, Copy)]
enum Format {
    Sse,
    Ndjson,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Sse => "text/event-stream",
            Format::Ndjson => "application/x-ndjson",
        }
    }

    fn heartbeat(self) -> Bytes {
        match self {
            Format::Sse => Bytes::from_static(b": keep-alive\n\n"),
            // An empty line: NDJSON readers skip it.
            Format::Ndjson => Bytes::from_static(b"\n"),
        }
    }

    fn encode(self, events: &[RecordedEvent]) -> Bytes {
        let mut out = Vec::with_capacity(events.len() * 300);
        for event in events {
            if let Format::Sse = self {
                out.extend_from_slice(b"id: ");
                out.extend_from_slice(event.position.to_string().as_bytes());
                out.extend_from_slice(b"\ndata: ");
            }
            let start = out.len();
            json::write_event(&mut out, event);
            // Line breaks in JSON text can only be whitespace between tokens (inside strings
            // they are escaped): blank them so one event stays one line.
            for byte in &mut out[start..] {
                if *byte == b'\n' || *byte == b'\r' {
                    *byte = b' ';
                }
            }
            out.extend_from_slice(match self {
                Format::Sse => b"\n\n",
                Format::Ndjson => b"\n",
            });
        }
        Bytes::from(out)
    }
}

/// `GET /subscribe`
pub(super) async fn subscribe(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Query(params): Query<LogParams>,
) -> Result<Response, ApiError> {
    let filter = params.filter()?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::invalid("Last-Event-ID must be a log position"))?,
        ),
    };
    let format = match headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        Some(accept) if accept.contains("application/x-ndjson") => Format::Ndjson,
        _ => Format::Sse,
    };
    let Ok(permit) = state.subscribers.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_subscribers",
            format!(
                "the server has {} open subscriptions, its limit; try again later",
                state.limits.max_subscribers
            ),
        ));
    };
    // Through the upcasters (unless `raw`): a types filter reads the types they take as well,
    // and checks each event's upcast type.
    let upcasting = (!params.raw()).then(|| Upcasting {
        projections: state.projections.clone(),
        filter: filter.clone(),
    });
    let filter = match &upcasting {
        Some(_) => state.projections.upcasters().widen(&filter),
        None => filter,
    };
    let store = state.store.clone();
    let subscription = match (last_event_id, params.from) {
        // The last position a u64 can name has nothing after it: the stream starts past it,
        // never wrapping around to a replay of the whole log.
        (Some(seen), _) => Subscription::from_position(store, seen.saturating_add(1), filter),
        (None, Some(from)) => Subscription::from_position(store, from, filter),
        (None, None) => Subscription::from_now(store, filter),
    };
    let (chunks, body) = mpsc::channel::<Bytes>(2);
    // The subscription ends when the server shuts down or the client's token is revoked.
    let end = CancellationToken::new();
    let (shutdown, revoked, ending) = (state.shutdown.clone(), principal.revoked, end.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => ending.cancel(),
            () = revoked.cancelled() => ending.cancel(),
            () = ending.cancelled() => {}
        }
    });
    tokio::spawn(pump(
        subscription,
        upcasting,
        chunks,
        format,
        end,
        (state.metrics.subscriber(), permit),
    ));
    let body = Body::from_stream(tokio_stream_from(body).map(Ok::<_, Infallible>));
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

fn tokio_stream_from(mut receiver: mpsc::Receiver<Bytes>) -> impl futures::Stream<Item = Bytes> {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

/// What a subscriber reads through: the server's current upcasters, and the filter it asked for.
struct Upcasting {
    projections: crate::projection::Projections,
    filter: crate::store::Filter,
}

impl Format {
    /// The last message of a subscription that cannot go on: an SSE `error` event, or an NDJSON
    /// line with the contract's error object.
    fn error(self, error: &crate::upcast::UpcastError) -> Bytes {
        let body = ApiError::from(error.clone()).body().to_string();
        Bytes::from(match self {
            Format::Sse => format!("event: error\ndata: {body}\n\n"),
            Format::Ndjson => format!("{body}\n"),
        })
    }
}

/// Reads the subscription and feeds the response body until the client leaves, the store
/// fails, an upcaster fails, or the server shuts down.
async fn pump(
    mut subscription: Subscription,
    upcasting: Option<Upcasting>,
    chunks: mpsc::Sender<Bytes>,
    format: Format,
    shutdown: CancellationToken,
    counted: (SubscriberGuard, OwnedSemaphorePermit),
) {
    let _end_watcher = shutdown.clone().drop_guard();
    loop {
        let batch = tokio::select! {
            batch = subscription.poll_batch(BATCH) => batch,
            () = shutdown.cancelled() => return,
        };
        let mut events = match batch {
            Ok(events) => events,
            Err(error) => {
                tracing::error!(%error, "subscription ended by a store error");
                return;
            }
        };
        let mut failure = None;
        if let Some(upcasting) = upcasting.as_ref().filter(|_| !events.is_empty()) {
            let (chain, filter) = (upcasting.projections.upcasters(), upcasting.filter.clone());
            let upcast =
                tokio::task::spawn_blocking(move || chain.apply_until_failure(events, &filter))
                    .await;
            (events, failure) = match upcast {
                Ok(upcast) => upcast,
                Err(error) => {
                    tracing::error!(%error, "subscription ended: upcasting panicked");
                    return;
                }
            };
            if events.is_empty() && failure.is_none() {
                continue;
            }
        }
        if events.is_empty()
            && let Some(error) = &failure
        {
            let _ = chunks.send(format.error(error)).await;
            return;
        }
        let sent = events.len() as u64;
        let chunk = if events.is_empty() {
            tokio::select! {
                alive = subscription.wait() => {
                    if !alive { return; }
                    continue;
                }
                () = tokio::time::sleep(HEARTBEAT) => format.heartbeat(),
                () = chunks.closed() => return,
                () = shutdown.cancelled() => return,
            }
        } else {
            format.encode(&events)
        };
        tokio::select! {
            result = chunks.send(chunk) => if result.is_err() { return },
            () = shutdown.cancelled() => return,
        }
        counted.0.sent(sent);
        if let Some(error) = failure {
            // Never an event in a shape it should not have: the subscription ends here.
            let _ = chunks.send(format.error(&error)).await;
            return;
        }
    }
}
