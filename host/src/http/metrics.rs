//! `/metrics`: Prometheus text (OpenMetrics) for appends, events, bytes, latency and subscribers.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::{ApiError, AppState};

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    appends: Counter,
    append_failures: Counter,
    events: Counter,
    bytes: Counter,
    append_seconds: Histogram,
    subscribers: Gauge,
    head: Gauge<u64, AtomicU64>,
    replication_lag_events: Gauge<u64, AtomicU64>,
    replication_lag_seconds: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("lantern");
        let appends = Counter::default();
        let append_failures = Counter::default();
        let events = Counter::default();
        let bytes = Counter::default();
        // 50 µs .. ~1.6 s
        let append_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let subscribers = Gauge::default();
        let head = Gauge::<u64, AtomicU64>::default();
        registry.register("appends", "Appends answered with success", appends.clone());
        registry.register(
            "append_failures",
            "Appends answered with an error",
            append_failures.clone(),
        );
        registry.register("events_appended", "Events written", events.clone());
        registry.register(
            "bytes_appended",
            "Bytes of event data and metadata written",
            bytes.clone(),
        );
        registry.register(
            "append_duration_seconds",
            "Time from receiving an append to answering it",
            append_seconds.clone(),
        );
        registry.register("subscribers", "Open subscriptions", subscribers.clone());
        registry.register("head_position", "Last committed position", head.clone());
        let replication_lag_events = Gauge::<u64, AtomicU64>::default();
        let replication_lag_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "replication_lag_events",
            "On a follower: events it lacks, as of the leader's last heartbeat (0 on a leader)",
            replication_lag_events.clone(),
        );
        registry.register_with_unit(
            "replication_lag",
            "On a follower: how long it has been behind the leader (0 when caught up, and on a leader)",
            prometheus_client::registry::Unit::Seconds,
            replication_lag_seconds.clone(),
        );
        Metrics {
            registry,
            appends,
            append_failures,
            events,
            bytes,
            append_seconds,
            subscribers,
            head,
            replication_lag_events,
            replication_lag_seconds,
        }
    }
}

impl Metrics {
    /// Records one answered append.
    pub fn append_done(&self, ok: bool, events: u64, bytes: u64, took: Duration) {
        if ok {
            self.appends.inc();
            self.events.inc_by(events);
            self.bytes.inc_by(bytes);
        } else {
            self.append_failures.inc();
        }
        self.append_seconds.observe(took.as_secs_f64());
    }

    /// Counts a subscriber for as long as the returned guard lives.
    pub fn subscriber(&self) -> SubscriberGuard {
        self.subscribers.inc();
        SubscriberGuard(self.subscribers.clone())
    }
}

/// Decrements the subscriber gauge when dropped.
pub struct SubscriberGuard(Gauge);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub(super) async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.metrics.head.set(state.store.head());
    if let Some(follower) = &state.follower {
        state.metrics.replication_lag_events.set(follower.lag());
        state
            .metrics
            .replication_lag_seconds
            .set(follower.lag_seconds());
    }
    let mut text = String::new();
    encode(&mut text, &state.metrics.registry).map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}
