//! What the projections measure of themselves, for `/metrics`. Counters live here, owned by
//! [`Projections`](super::Projections) and fed by the runners and the read paths; what a status
//! already says (position, lag, phase, rebuild progress) is read from the status at scrape time,
//! never copied.
//!
//! Label values are bounded: `projection` is the name of a deployed projection (an admin's
//! choice; its series are removed when it is deleted, and read paths record nothing for a name
//! that is not deployed), `role` is one of two and `kind` one of three. Never a key, a stream, an
//! event type or a query name.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Which generation did the work: the one serving queries, or one rebuilding beside it.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Role {
    /// The serving generation.
    serving,
    /// A rebuild.
    rebuild,
}

/// How a read model was read.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum ReadKind {
    /// `GET /projections/{name}/state/{key}`
    key,
    /// `GET /projections/{name}/state?prefix=`
    prefix,
    /// `GET /projections/{name}/query/{query}`
    query,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    projection: String,
    role: Role,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadLabels {
    projection: String,
    kind: ReadKind,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// One projection's run series for one role.
pub(crate) struct RunSeries {
    events: Counter,
    batches: Counter,
    batch_seconds: Histogram,
    faults: Counter,
}

impl RunSeries {
    /// One committed batch of `handled` events.
    pub(crate) fn batch(&self, handled: u64, took: Duration) {
        self.events.inc_by(handled);
        self.batches.inc();
        self.batch_seconds.observe(took.as_secs_f64());
    }

    /// One fault.
    pub(crate) fn fault(&self) {
        self.faults.inc();
    }
}

/// The projections' counters and histograms.
pub struct ProjectionStats {
    events: Family<RunLabels, Counter>,
    batches: Family<RunLabels, Counter>,
    batch_seconds: Histograms<RunLabels>,
    faults: Family<RunLabels, Counter>,
    reads: Histograms<ReadLabels>,
}

impl Default for ProjectionStats {
    fn default() -> Self {
        fn batch() -> Histogram {
            // 100 µs .. ~6.5 s (a call may run 5 s)
            Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
        }
        fn read() -> Histogram {
            // 10 µs .. ~0.3 s
            Histogram::new(exponential_buckets(0.000_01, 2.0, 16))
        }
        ProjectionStats {
            events: Family::default(),
            batches: Family::default(),
            batch_seconds: Family::new_with_constructor(batch),
            faults: Family::default(),
            reads: Family::new_with_constructor(read),
        }
    }
}

fn role(serving: bool) -> Role {
    if serving {
        Role::serving
    } else {
        Role::rebuild
    }
}

impl ProjectionStats {
    /// Adds these metrics to `registry` (whose prefix is `lantern`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "projection_events_handled",
            "Events handed to a projection's module",
            self.events.clone(),
        );
        registry.register(
            "projection_batches",
            "Batches a projection committed",
            self.batches.clone(),
        );
        registry.register_with_unit(
            "projection_batch_duration",
            "Time to fold one batch and commit it with its checkpoint",
            Unit::Seconds,
            self.batch_seconds.clone(),
        );
        registry.register(
            "projection_faults",
            "Faults of a projection (a module's error or trap, or its storage)",
            self.faults.clone(),
        );
        registry.register_with_unit(
            "projection_read_duration",
            "Time to answer a read of a read model: by key, by prefix, or a module query",
            Unit::Seconds,
            self.reads.clone(),
        );
    }

    /// The series a generation of `projection` feeds while it has this role: looked up once,
    /// then counted without a lookup.
    pub(crate) fn run_series(&self, projection: &str, serving: bool) -> RunSeries {
        let labels = RunLabels {
            projection: projection.to_owned(),
            role: role(serving),
        };
        RunSeries {
            events: self.events.get_or_create(&labels).clone(),
            batches: self.batches.get_or_create(&labels).clone(),
            batch_seconds: self.batch_seconds.get_or_create(&labels).clone(),
            faults: self.faults.get_or_create(&labels).clone(),
        }
    }

    /// The read latency series of `projection`, by [`ReadKind`] (index `kind as usize`): looked up
    /// once per generation, then observed without a lookup.
    pub(crate) fn read_series(&self, projection: &str) -> [Histogram; 3] {
        [ReadKind::key, ReadKind::prefix, ReadKind::query].map(|kind| {
            let labels = ReadLabels {
                projection: projection.to_owned(),
                kind,
            };
            self.reads.get_or_create(&labels).clone()
        })
    }

    /// Drops every series of a deleted projection.
    pub(crate) fn forget(&self, projection: &str) {
        for role in [Role::serving, Role::rebuild] {
            let labels = RunLabels {
                projection: projection.to_owned(),
                role,
            };
            self.events.remove(&labels);
            self.batches.remove(&labels);
            self.batch_seconds.remove(&labels);
            self.faults.remove(&labels);
        }
        for kind in [ReadKind::key, ReadKind::prefix, ReadKind::query] {
            self.reads.remove(&ReadLabels {
                projection: projection.to_owned(),
                kind,
            });
        }
    }
}
