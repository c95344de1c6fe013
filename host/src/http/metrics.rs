//! `/metrics`: OpenMetrics text through `prometheus-client`.
//!
//! Each part of the server owns what it counts: the store its fsync latencies and group sizes
//! ([`crate::store::StoreStats`]), the projections their batches, faults and reads
//! ([`crate::projection::ProjectionStats`]), the wasm runtime its compile times, and this module
//! the HTTP requests and subscriptions. What a status already says (positions, lag, phase, rebuild
//! progress, sizes) is read at scrape time by [`Live`], never copied into a gauge that could
//! disagree with it.
//!
//! Label values are bounded: `route` is a route template of [`super::routes`] (or `unmatched`),
//! `method` one of the four the API uses (or `other`), `status` a class (`2xx` ..), `projection`
//! a deployed projection's name, `version` its serving version. Never a raw path, a stream, a key
//! or a token.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::{ApiError, AppState};
use crate::projection::{Phase, Projections};
use crate::store::{Filter, Store};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: &'static str,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    appends: Counter,
    append_failures: Counter,
    events: Counter,
    bytes: Counter,
    append_seconds: Histogram,
    subscribers: Gauge,
    events_sent: Counter,
    requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
    head: Gauge<u64, AtomicU64>,
    replication_lag_events: Gauge<u64, AtomicU64>,
    replication_lag_seconds: Gauge<f64, AtomicU64>,
}

impl Metrics {
    /// The metrics of a server made of `store` and `projections`.
    pub fn new(store: &Store, projections: &Projections) -> Self {
        let mut registry = Registry::with_prefix("lantern");
        let appends = Counter::default();
        let append_failures = Counter::default();
        let events = Counter::default();
        let bytes = Counter::default();
        // 50 µs .. ~1.6 s
        let append_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let subscribers = Gauge::default();
        let events_sent = Counter::default();
        fn request_histogram() -> Histogram {
            // 50 µs .. ~1.6 s
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        }
        let requests = Family::new_with_constructor(request_histogram as fn() -> Histogram);
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
        registry.register(
            "subscription_events_sent",
            "Events sent to subscribers",
            events_sent.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its answer's head (for a subscription: until it starts streaming), by route template, method and status class",
            Unit::Seconds,
            requests.clone(),
        );
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
            Unit::Seconds,
            replication_lag_seconds.clone(),
        );
        registry.register_with_unit(
            "store_fsync_duration",
            "Time each fsync of the log took",
            Unit::Seconds,
            store.stats().fsync_seconds.clone(),
        );
        registry.register(
            "store_group_commit_events",
            "Events written by each group commit (one write and one fsync)",
            store.stats().group_events.clone(),
        );
        registry.register_with_unit(
            "wasm_compile_duration",
            "Time to compile a module, or to load it from the compile cache",
            Unit::Seconds,
            projections.runtime().compile_seconds().clone(),
        );
        projections.stats().register(&mut registry);
        registry.register_collector(Box::new(Live {
            store: store.clone(),
            projections: projections.clone(),
        }));
        Metrics {
            registry,
            appends,
            append_failures,
            events,
            bytes,
            append_seconds,
            subscribers,
            events_sent,
            requests,
            head,
            replication_lag_events,
            replication_lag_seconds,
        }
    }

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

    /// The latency series of `route` (a template, or `unmatched`), `method` and `status`'s class.
    pub(super) fn request_series(
        &self,
        route: &'static str,
        method: &Method,
        status: StatusCode,
    ) -> Histogram {
        let method = match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::HEAD => "HEAD",
            _ => "other",
        };
        let status = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let labels = RequestLabels {
            route,
            method,
            status,
        };
        self.requests.get_or_create(&labels).clone()
    }

    /// Counts a subscriber for as long as the returned guard lives.
    pub fn subscriber(&self) -> SubscriberGuard {
        self.subscribers.inc();
        SubscriberGuard {
            open: self.subscribers.clone(),
            sent: self.events_sent.clone(),
        }
    }
}

/// Decrements the subscriber gauge when dropped; counts the events sent meanwhile.
pub struct SubscriberGuard {
    open: Gauge,
    sent: Counter,
}

impl SubscriberGuard {
    /// `events` more were sent to this subscriber.
    pub fn sent(&self, events: u64) {
        if events > 0 {
            self.sent.inc_by(events);
        }
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// What is read at scrape time from its owners.
struct Live {
    store: Store,
    projections: Projections,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

/// One gauge family: `(labels, value)` per series.
fn gauges<V: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(Vec<(&str, String)>, V)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// A family of counters read at scrape time.
fn counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Vec<(&str, String)>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let store = &self.store;
        let head = store.head();
        let now_micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let statuses = self.projections.list();
        let one = |name: &str| vec![("projection", name.to_owned())];
        let mut position = Vec::new();
        let mut lag = Vec::new();
        let mut lag_seconds = Vec::new();
        let mut phase = Vec::new();
        let mut progress = Vec::new();
        let mut rate = Vec::new();
        for status in &statuses {
            let name = &status.name;
            position.push((one(name), status.position as i64));
            let behind = head.saturating_sub(status.position);
            lag.push((one(name), behind as i64));
            // The age of the oldest event it has not folded: the next one in the log.
            let age = if behind == 0 {
                0.0
            } else {
                store
                    .read_all(status.position + 1, 1, &Filter::default())
                    .ok()
                    .and_then(|slice| slice.events.first().map(|e| e.recorded_at_micros))
                    .map_or(0.0, |at| now_micros.saturating_sub(at) as f64 / 1e6)
            };
            lag_seconds.push((one(name), age));
            for (label, value) in [
                ("catching_up", Phase::CatchingUp),
                ("running", Phase::Running),
                ("faulted", Phase::Faulted),
            ] {
                let labels = vec![
                    ("projection", name.clone()),
                    ("version", status.version.to_string()),
                    ("status", label.to_owned()),
                ];
                phase.push((labels, i64::from(status.state.phase == value)));
            }
            if let Some(rebuild) = &status.rebuild {
                let labels = vec![
                    ("projection", name.clone()),
                    ("version", rebuild.version.to_string()),
                ];
                let done = if head == 0 {
                    1.0
                } else {
                    rebuild.position as f64 / head as f64
                };
                progress.push((labels.clone(), done.min(1.0)));
                rate.push((labels, rebuild.state.events_per_second));
            }
        }
        gauges(
            &mut encoder,
            "projection_position",
            "The last log position a projection's serving read model reflects (its checkpoint)",
            None,
            &position,
        )?;
        gauges(
            &mut encoder,
            "projection_lag_events",
            "Log events after a projection's checkpoint",
            None,
            &lag,
        )?;
        gauges(
            &mut encoder,
            "projection_lag",
            "Age of the oldest log event a projection has not folded yet (0 when caught up)",
            Some(&Unit::Seconds),
            &lag_seconds,
        )?;
        gauges(
            &mut encoder,
            "projection_status",
            "1 for a projection's current status (catching_up, running, faulted), 0 for the others",
            None,
            &phase,
        )?;
        gauges(
            &mut encoder,
            "projection_rebuild_progress_ratio",
            "Share of the log a rebuild has folded, 0 to 1 (only while one runs)",
            None,
            &progress,
        )?;
        gauges(
            &mut encoder,
            "projection_rebuild_events_per_second",
            "Log events a rebuild folds per second, recently (only while one runs)",
            None,
            &rate,
        )?;
        let memory: Vec<_> = self
            .projections
            .memory_high_water_bytes()
            .into_iter()
            .map(|(name, bytes)| (one(&name), bytes as i64))
            .collect();
        gauges(
            &mut encoder,
            "projection_memory_high_water",
            "Largest linear memory an instance of a projection's serving module grew to",
            Some(&Unit::Bytes),
            &memory,
        )?;
        // Upcasters are named by admins, a handful per store: bounded labels.
        let upcasters = self.projections.upcaster_statuses();
        let by_upcaster = |value: fn(&crate::projection::UpcasterStatus) -> u64| {
            upcasters
                .iter()
                .map(|u| (vec![("upcaster", u.name.clone())], value(u)))
                .collect::<Vec<_>>()
        };
        counters(
            &mut encoder,
            "upcaster_events",
            "Events an upcaster has upcast since the server started",
            &by_upcaster(|u| u.events),
        )?;
        counters(
            &mut encoder,
            "upcaster_faults",
            "Calls in which an upcaster failed (the reads and projections that needed them failed)",
            &by_upcaster(|u| u.faults),
        )?;
        let (hits, misses) = self.projections.runtime().cache_hits_and_misses();
        for (name, help, value) in [
            (
                "wasm_compile_cache_hits",
                "Modules loaded from the compile cache",
                hits,
            ),
            (
                "wasm_compile_cache_misses",
                "Modules compiled (not in the compile cache)",
                misses,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let problems: Vec<_> = store
            .problems()
            .into_iter()
            .map(|p| (vec![("code", p.code.to_owned())], 1i64))
            .collect();
        gauges(
            &mut encoder,
            "store_problem",
            "1 for each problem that makes the store degraded (the codes of /health: storage_full, storage_unavailable, indexer_stopped, corrupt)",
            None,
            &problems,
        )?;
        let mut single = |name: &str, help: &str, unit: Option<&Unit>, value: u64| {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, unit, gauge.metric_type())?)
        };
        single(
            "store_unindexed_events",
            "Committed events not yet in the index's tables (held in memory meanwhile)",
            None,
            store.unindexed_events(),
        )?;
        single(
            "store_log",
            "Size of the committed log",
            Some(&Unit::Bytes),
            store.log_bytes(),
        )?;
        if let Ok(free) = store.disk_free_bytes() {
            single(
                "store_disk_free",
                "Space left for Lantern on the file system holding the store",
                Some(&Unit::Bytes),
                free,
            )?;
        }
        Ok(())
    }
}

pub(super) async fn metrics(
    State(state): State<Arc<AppState>>,
) -> Result<impl IntoResponse, ApiError> {
    state.metrics.head.set(state.store.head());
    if let Some(follower) = &state.follower {
        state.metrics.replication_lag_events.set(follower.lag());
        state
            .metrics
            .replication_lag_seconds
            .set(follower.lag_seconds());
    }
    // The scrape reads the log (the oldest unfolded event of each lagging projection).
    let text = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        encode(&mut text, &state.metrics.registry).map(|()| text)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}
