//! The event store: an append-only log with group commit, streams, and indexes derived from it.
//!
//! Appends go to one writer thread ([`writer`]) that checks, frames and writes every pending
//! append, fsyncs once for the whole group, and only then answers. Reads go straight to the log
//! file through the indexes ([`index`]), which a second thread derives from the log in large
//! batches. The store knows nothing of wasm or HTTP.

pub mod check;
mod damage;
mod index;
mod log;
mod record;
mod replica;
mod snapshots;
mod writer;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use parking_lot::Mutex;
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

pub use record::{EventRef, RecordedEvent, category_of};
pub use replica::LogReader;
pub use snapshots::{Saved, Snapshot};
pub use writer::Replicated;

pub use index::StreamSummary;
use index::{Committed, Index, Indexed, Location};
use log::{ScanItem, ScanRef, Scanner};

/// Longest stream name and event type, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Errors of the store. Each variant is something a caller can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream's revision was not what the append expected.
    #[error("expected revision {expected}, but the stream's revision is {}", .actual.map_or("none (no stream)".to_owned(), |r| r.to_string()))]
    WrongExpectedRevision {
        /// What the append asked for.
        expected: ExpectedRevision,
        /// The stream's last revision, `None` when the stream has no events.
        actual: Option<u64>,
    },
    /// An event id was used before in a way that is not a retry of the same append.
    #[error("event id {id} is already used by another event")]
    DuplicateEventId {
        /// The first reused id.
        id: Uuid,
    },
    /// The stream has no events.
    #[error("stream {0:?} has no events")]
    StreamNotFound(String),
    /// The append has more events than the store takes at once.
    #[error("an append holds at most {max} events, this one has {got}")]
    TooManyEvents {
        /// The configured limit.
        max: usize,
        /// The events in the append.
        got: usize,
    },
    /// The append or read request is malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// The log or index file is damaged beyond the torn tail that recovery cuts.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// The store is not taking appends (shutting down).
    #[error("store is unavailable for appends: {0}")]
    Unavailable(String),
    /// The disk holding the log is full: the append was not written. Appends resume by themselves
    /// once there is space again.
    #[error("the disk is full: {0}")]
    StorageFull(String),
    /// Writing or syncing the log failed with an I/O error: the append was not written, and no
    /// append is taken until the server is restarted on a healthy disk.
    #[error("the log's storage failed: {0}")]
    StorageUnavailable(String),
    /// An I/O error from the log file.
    #[error("log I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// An error from the index database.
    #[error("index error: {0}")]
    Index(#[from] redb::Error),
    /// This store is a follower's copy: appends go to the leader.
    #[error("this store is a follower's copy of the leader's; appends go to the leader")]
    NotLeader,
    /// A follower refused what its leader sent (a damaged record, a gap, another store's log).
    #[error("replication refused: {0}")]
    Replication(String),
}

/// The committed part of the log at one moment: read it as `events.log` of a backup.
pub struct LogSnapshot {
    /// The last position it holds.
    pub head: u64,
    /// Its length in bytes.
    pub len: u64,
    file: Arc<File>,
    offset: u64,
}

impl std::io::Read for LogSnapshot {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let left = self.len - self.offset;
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(left as usize);
        let got = self.file.read_at(&mut buf[..want], self.offset)?;
        if got == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the log is shorter than its committed end",
            ));
        }
        self.offset += got as u64;
        Ok(got)
    }
}

/// Something wrong with the store that an operator should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `storage_full`, `storage_unavailable`, `indexer_stopped` or `corrupt`.
    pub code: &'static str,
    /// What happened.
    pub message: String,
}

/// The store's problems, shared by the writer, the indexer and the readers.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Set by the writer while appends are refused.
    pub appends: Option<Problem>,
    /// Set when the indexer stopped.
    pub indexer: Option<Problem>,
    /// Set when a read found a damaged record in the committed log.
    pub corruption: Option<Problem>,
}

/// The optimistic-concurrency condition of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpectedRevision {
    /// No condition.
    #[default]
    Any,
    /// The stream must have no events.
    NoStream,
    /// The stream must have at least one event.
    Exists,
    /// The stream's last event must have this revision.
    Exact(u64),
}

impl std::fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedRevision::Any => f.write_str("any"),
            ExpectedRevision::NoStream => f.write_str("no_stream"),
            ExpectedRevision::Exists => f.write_str("exists"),
            ExpectedRevision::Exact(revision) => write!(f, "{revision}"),
        }
    }
}

impl ExpectedRevision {
    fn check(self, actual: Option<u64>) -> bool {
        match self {
            ExpectedRevision::Any => true,
            ExpectedRevision::NoStream => actual.is_none(),
            ExpectedRevision::Exists => actual.is_some(),
            ExpectedRevision::Exact(revision) => actual == Some(revision),
        }
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The event's id; the store makes a UUIDv7 when `None`.
    pub id: Option<Uuid>,
    /// The event type.
    pub event_type: String,
    /// JSON text. The store does not parse it: callers hand it valid JSON.
    pub data: Bytes,
    /// JSON text, or `None`.
    pub metadata: Option<Bytes>,
}

/// Where an append landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The stream appended to.
    pub stream: String,
    /// Revision of the first event written.
    pub first_revision: u64,
    /// Revision of the last event written.
    pub last_revision: u64,
    /// Position of the first event written.
    pub first_position: u64,
    /// Position of the last event written.
    pub last_position: u64,
}

/// Reading direction within a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forward,
    /// Newest first.
    Backward,
}

/// A page of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSlice {
    /// The events, in the direction asked.
    pub events: Vec<RecordedEvent>,
    /// The revision to read from for the next page, `None` at the end.
    pub next: Option<u64>,
}

/// Which events of the global log a reader wants. Empty fields match everything; fields combine
/// with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this stream.
    pub stream: Option<String>,
    /// Only streams of this category.
    pub category: Option<String>,
    /// Only these event types (any of them).
    pub types: Vec<String>,
}

impl Filter {
    /// Whether the event passes the filter.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        self.matches_named(&event.stream, &event.event_type)
    }

    /// Whether an event of `stream` and `event_type` passes the filter.
    pub fn matches_named(&self, stream: &str, event_type: &str) -> bool {
        self.stream.as_ref().is_none_or(|s| s == stream)
            && self
                .category
                .as_ref()
                .is_none_or(|c| c == category_of(stream))
            && (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
    }
}

/// Where a scan of the global log ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanEnd {
    /// The position to continue reading from: one past the last event examined.
    pub next_from: u64,
    /// The last committed position when the log was read.
    pub head: u64,
}

/// A page of the global log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllSlice {
    /// Matching events in position order.
    pub events: Vec<RecordedEvent>,
    /// The position to continue reading from: one past the last event examined.
    pub next_from: u64,
    /// The last committed position when the page was read.
    pub head: u64,
}

/// Tuning and durability settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// fsync every group before answering. Turn off only on purpose (tests of other layers,
    /// throwaway data): an answered append may then be lost by a crash of the machine.
    pub sync: bool,
    /// Most events in one append.
    pub max_append_events: usize,
    /// Events per index chunk: the unit the indexer writes to redb in one transaction.
    pub chunk_events: usize,
    /// Sealed chunks that may wait for the indexer before appends wait too.
    pub max_pending_chunks: usize,
    /// Most events one `read_all` examines, so a selective filter cannot scan the whole log in
    /// one call (or its `limit`, if that is larger).
    pub scan_budget: usize,
    /// Bytes of the index's page cache (redb's; it fills as the index is read and written, then
    /// stays at this size).
    pub index_cache_bytes: usize,
    /// A follower's copy: appends are refused, records come from the leader
    /// ([`Store::replicate`]).
    pub replica: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync: true,
            max_append_events: 10_000,
            chunk_events: 65_536,
            max_pending_chunks: 8,
            scan_budget: 100_000,
            index_cache_bytes: 64 << 20,
            replica: false,
        }
    }
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// What the store measures of itself, for `/metrics`.
pub struct StoreStats {
    /// How long each fsync of the log took.
    pub fsync_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Events in each committed group.
    pub group_events: prometheus_client::metrics::histogram::Histogram,
}

impl Default for StoreStats {
    fn default() -> Self {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        StoreStats {
            // 20 µs .. ~0.65 s
            fsync_seconds: Histogram::new(exponential_buckets(0.000_02, 2.0, 16)),
            // 1 .. 16,384
            group_events: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
        }
    }
}

struct Inner {
    stats: Arc<StoreStats>,
    file: Arc<File>,
    health: Arc<Mutex<Health>>,
    index: Arc<Index>,
    options: StoreOptions,
    jobs: Mutex<Option<mpsc::Sender<writer::Job>>>,
    head: watch::Receiver<u64>,
    /// The store's id (`store-id`): the same on a leader and its followers.
    id: Mutex<Uuid>,
    dir: std::path::PathBuf,
    threads: Mutex<Vec<JoinHandle<()>>>,
    snapshots: snapshots::Snapshots,
}

impl Store {
    /// Opens the store in `dir` (created if missing), cutting any torn tail the last crash left.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)?;
        let log_path = dir.join("events.log");
        let created = !log_path.exists();
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&log_path)?,
        );
        if created {
            // The file's folder entry must be durable before any append in it is acknowledged.
            File::open(dir)?.sync_all()?;
        }
        let (index, indexed) = Index::open(
            &dir.join("index.redb"),
            options.chunk_events,
            options.index_cache_bytes,
        )?;
        let index = Arc::new(index);
        let health = Arc::new(Mutex::new(Health::default()));
        let (chunks_tx, chunks_rx) = mpsc::sync_channel(options.max_pending_chunks);
        let indexer = {
            let (index, health) = (index.clone(), health.clone());
            std::thread::Builder::new()
                .name("lantern-indexer".into())
                .spawn(move || {
                    if let Err(error) = index.run_indexer(chunks_rx) {
                        // The chunks stay in the in-memory tail, so reads stay complete; the
                        // next start-up indexes them from the log.
                        tracing::error!(%error, "indexing stopped; restart the server to index the log again");
                        health.lock().indexer = Some(Problem {
                            code: "indexer_stopped",
                            message: format!("indexing stopped ({error}); reads are complete but the unindexed tail grows in memory until a restart"),
                        });
                    }
                })?
        };
        let committed = recover(&file, &index, indexed, &chunks_tx)?;
        let id = replica::load_or_create_id(dir)?;
        let snapshots = snapshots::Snapshots::open(&dir.join("snapshots.redb"))?;
        let (head_tx, head_rx) = watch::channel(committed.head_position);
        let (jobs_tx, jobs_rx) = mpsc::channel();
        let stats = Arc::new(StoreStats::default());
        let writer = writer::Writer {
            stats: stats.clone(),
            path: log_path.clone(),
            health: health.clone(),
            failed_at: None,
            file: file.clone(),
            index: index.clone(),
            indexer: chunks_tx,
            committed,
            head: head_tx,
            sync: options.sync,
            failed: None,
        };
        let writer = std::thread::Builder::new()
            .name("lantern-writer".into())
            .spawn(move || writer.run(jobs_rx))?;
        Ok(Store {
            inner: Arc::new(Inner {
                stats,
                file,
                health,
                index,
                options,
                jobs: Mutex::new(Some(jobs_tx)),
                head: head_rx,
                id: Mutex::new(id),
                dir: dir.to_owned(),
                // Joined in this order: the writer hands its last chunk over, then the indexer drains.
                threads: Mutex::new(vec![writer, indexer]),
                snapshots,
            }),
        })
    }

    /// Appends `events` to `stream` atomically, once `expected` holds; answers after the fsync.
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        if self.inner.options.replica {
            return Err(StoreError::NotLeader);
        }
        validate_stream_name(stream).map_err(StoreError::InvalidRequest)?;
        self.validate_events(&events)?;
        let (reply, answer) = oneshot::channel();
        self.send(writer::Job::Append(writer::Append {
            stream: stream.to_owned(),
            expected,
            events,
            reply,
        }))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer stopped".into()))?
    }

    /// Hands a job to the writer.
    fn send(&self, job: writer::Job) -> Result<(), StoreError> {
        let sent = match &*self.inner.jobs.lock() {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(StoreError::Unavailable("the store is shutting down".into()))
        }
    }

    fn validate_events(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        let invalid = |message: String| Err(StoreError::InvalidRequest(message));
        if events.is_empty() {
            return invalid("an append needs at least one event".into());
        }
        let max = self.inner.options.max_append_events;
        if events.len() > max {
            return Err(StoreError::TooManyEvents {
                max,
                got: events.len(),
            });
        }
        let mut ids = HashSet::new();
        for (index, event) in events.iter().enumerate() {
            if let Err(why) = validate_event_type(&event.event_type) {
                return invalid(format!("event {index}: {why}"));
            }
            if let Some(id) = event.id
                && !ids.insert(id)
            {
                return Err(StoreError::DuplicateEventId { id });
            }
        }
        Ok(())
    }

    /// Reads up to `limit` events of `stream` from revision `from` (inclusive; by default the
    /// first revision forward and the last backward).
    pub fn read_stream(
        &self,
        stream: &str,
        from: Option<u64>,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice, StoreError> {
        self.noting(self.read_stream_unchecked(stream, from, direction, limit))
    }

    fn read_stream_unchecked(
        &self,
        stream: &str,
        from: Option<u64>,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice, StoreError> {
        validate_stream_name(stream).map_err(StoreError::InvalidRequest)?;
        let backward = direction == Direction::Backward;
        let from = from.unwrap_or(if backward { u64::MAX } else { 0 });
        // One event more than asked tells whether there is a next page.
        let wanted = limit.saturating_add(1);
        let runs = self
            .inner
            .index
            .stream_runs(stream, from, backward, wanted)?;
        if runs.is_empty() && self.inner.index.stream_head(stream)?.is_none() {
            return Err(StoreError::StreamNotFound(stream.to_owned()));
        }
        let mut events = Vec::with_capacity(wanted.min(1024));
        for run in runs {
            let mut run_events = self.run_events(run)?;
            if backward {
                run_events.retain(|e| e.revision <= from);
                run_events.reverse();
            } else {
                run_events.retain(|e| e.revision >= from);
            }
            events.extend(run_events.into_iter().take(wanted - events.len()));
        }
        let next = (events.len() > limit).then(|| events[limit].revision);
        events.truncate(limit);
        Ok(StreamSlice { events, next })
    }

    /// The events of one index run, read from their contiguous records.
    fn run_events(&self, run: index::StreamRun) -> Result<Vec<RecordedEvent>, StoreError> {
        let mismatch = |found: &RecordedEvent| {
            StoreError::Corrupt(format!(
                "the index puts revision {} of {:?} at position {}, the log has {:?}@{} there",
                run.revision, found.stream, run.location.position, found.stream, found.revision
            ))
        };
        let mut scanner = Scanner::with_block(
            &self.inner.file,
            run.location.offset,
            u64::MAX,
            (run.count as usize * 512).min(1 << 20),
        );
        let mut events = Vec::with_capacity(run.count as usize);
        for i in 0..run.count {
            let event = match scanner.next_record()? {
                Some(ScanItem::Record { decoded, .. }) => decoded.event,
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "the log ends inside an indexed run at position {}",
                        run.location.position + i
                    )));
                }
            };
            if event.position != run.location.position + i || event.revision != run.revision + i {
                return Err(mismatch(&event));
            }
            events.push(event);
        }
        Ok(events)
    }

    /// Saves a client's snapshot of `stream` at `revision` (an existing revision), unless the
    /// stored one is at a later revision; durable when it returns. Blocking.
    pub fn save_snapshot(
        &self,
        stream: &str,
        revision: u64,
        state: Bytes,
    ) -> Result<Saved, StoreError> {
        if self.inner.options.replica {
            return Err(StoreError::NotLeader);
        }
        let missing = || {
            StoreError::InvalidRequest(format!(
                "stream {stream:?} has no revision {revision}: a snapshot is of an existing revision"
            ))
        };
        let event = match self.read_stream(stream, Some(revision), Direction::Forward, 1) {
            Ok(slice) => slice.events.into_iter().next(),
            Err(StoreError::StreamNotFound(_)) => None,
            Err(other) => return Err(other),
        };
        let event = event
            .filter(|e| e.revision == revision)
            .ok_or_else(missing)?;
        self.inner
            .snapshots
            .save(stream, revision, event.position, state)
    }

    /// The stream's snapshot, if one was saved. Blocking.
    pub fn snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        validate_stream_name(stream).map_err(StoreError::InvalidRequest)?;
        self.noting(self.inner.snapshots.get(stream))
    }

    /// Up to `limit` snapshots saved or replaced after change `after`, in the order they were
    /// (for followers). Blocking.
    pub fn snapshot_changes(&self, after: u64, limit: usize) -> Result<Vec<Snapshot>, StoreError> {
        self.noting(self.inner.snapshots.changes_after(after, limit))
    }

    /// The newest snapshot change this store holds (a follower resumes after it). Blocking.
    pub fn last_snapshot_change(&self) -> Result<u64, StoreError> {
        self.inner.snapshots.last_change()
    }

    /// Stores a snapshot copied from the leader, once this store's log holds its revision.
    /// Blocking.
    pub fn copy_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        if snapshot.position > self.head() {
            return Err(StoreError::Replication(format!(
                "the snapshot of {:?} is at position {}, past this log's head {}",
                snapshot.stream,
                snapshot.position,
                self.head()
            )));
        }
        self.inner.snapshots.copy(snapshot)
    }

    /// Writes a snapshots file at `path` with every snapshot at a position up to `max_position`
    /// (a backup's), and returns how many it holds. Blocking.
    pub fn copy_snapshots_to(&self, path: &Path, max_position: u64) -> Result<u64, StoreError> {
        self.inner.snapshots.copy_to(path, max_position)
    }

    /// Up to `limit` streams whose names start with `prefix` and sort strictly after `after`,
    /// in byte order, and whether more follow.
    pub fn list_streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StreamSummary>, bool), StoreError> {
        let mut streams = self.noting(self.inner.index.stream_list(
            prefix,
            after,
            limit.saturating_add(1),
        ))?;
        let more = streams.len() > limit;
        streams.truncate(limit);
        Ok((streams, more))
    }

    /// Reads up to `limit` events matching `filter` from position `from` (inclusive).
    pub fn read_all(
        &self,
        from: u64,
        limit: usize,
        filter: &Filter,
    ) -> Result<AllSlice, StoreError> {
        self.read_all_into(from, limit, filter, Vec::new())
    }

    /// `read_all`, into `events` (cleared first; its capacity is kept): a reader that reads
    /// batch after batch reuses one allocation.
    pub fn read_all_into(
        &self,
        from: u64,
        limit: usize,
        filter: &Filter,
        events: Vec<RecordedEvent>,
    ) -> Result<AllSlice, StoreError> {
        self.noting(self.read_all_unchecked(from, limit, filter, events))
    }

    fn read_all_unchecked(
        &self,
        from: u64,
        limit: usize,
        filter: &Filter,
        mut events: Vec<RecordedEvent>,
    ) -> Result<AllSlice, StoreError> {
        events.clear();
        let end = self.scan_all_unchecked(from, limit, filter, |event| {
            events.push(event.to_event());
            true
        })?;
        Ok(AllSlice {
            events,
            next_from: end.next_from,
            head: end.head,
        })
    }

    /// `read_all_into`, in place: each matching event is handed to `take` as it lies in the log
    /// (nothing is copied unless `take` copies it), up to `limit` of them; `take` answering
    /// `false` ends the read before that event. Blocking.
    pub fn scan_all(
        &self,
        from: u64,
        limit: usize,
        filter: &Filter,
        take: impl FnMut(&EventRef<'_>) -> bool,
    ) -> Result<ScanEnd, StoreError> {
        self.noting(self.scan_all_unchecked(from, limit, filter, take))
    }

    fn scan_all_unchecked(
        &self,
        from: u64,
        limit: usize,
        filter: &Filter,
        mut take: impl FnMut(&EventRef<'_>) -> bool,
    ) -> Result<ScanEnd, StoreError> {
        let from = from.max(1);
        let (start, committed) = self.inner.index.seek(from)?;
        let mut end = ScanEnd {
            next_from: from,
            head: committed.head_position,
        };
        let Some(start) = start else {
            return Ok(end);
        };
        let mut scanner = Scanner::new(&self.inner.file, start.offset, committed.end_offset);
        let (mut examined, mut taken) = (0, 0);
        // (Never fewer than it may return: a projection's batch of 131k is not cut at 100k.)
        let budget = self.inner.options.scan_budget.max(limit);
        while taken < limit && examined < budget {
            let event = match scanner.next_ref()? {
                None => break,
                Some(ScanRef::Record { event }) => event,
                Some(ScanRef::Invalid { offset, why }) => {
                    return Err(StoreError::Corrupt(format!(
                        "committed log record at byte {offset}: {why}"
                    )));
                }
            };
            if event.position() < from {
                continue;
            }
            if filter.matches_named(event.stream(), event.event_type()) {
                if !take(&event) {
                    break;
                }
                taken += 1;
            }
            examined += 1;
            end.next_from = event.position() + 1;
        }
        Ok(end)
    }

    /// The committed log as of now, for an online backup: its head and a reader of exactly its
    /// bytes. The bytes never change (the log is append-only), so appends may go on meanwhile.
    pub fn log_snapshot(&self) -> Result<LogSnapshot, StoreError> {
        let (_, committed) = self.inner.index.seek(u64::MAX)?;
        Ok(LogSnapshot {
            head: committed.head_position,
            len: committed.end_offset,
            file: self.inner.file.clone(),
            offset: 0,
        })
    }

    /// What is wrong with the store now; empty when all is well.
    pub fn problems(&self) -> Vec<Problem> {
        let health = self.inner.health.lock();
        [&health.appends, &health.indexer, &health.corruption]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Notes a damaged record found by a read, so the store reports itself degraded.
    fn noting<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Corrupt(message)) = &result {
            tracing::error!(%message, "a read found damaged data in the committed log");
            self.inner.health.lock().corruption = Some(Problem {
                code: "corrupt",
                message: message.clone(),
            });
        }
        result
    }

    /// fsync latencies and group sizes.
    pub fn stats(&self) -> &StoreStats {
        &self.inner.stats
    }

    /// Committed events not yet in the index's redb tables (held in memory meanwhile).
    pub fn unindexed_events(&self) -> u64 {
        self.inner.index.unindexed_events()
    }

    /// Bytes of the committed log.
    pub fn log_bytes(&self) -> u64 {
        self.inner.index.committed().end_offset
    }

    /// Bytes free for this process on the file system holding the store.
    pub fn disk_free_bytes(&self) -> std::io::Result<u64> {
        let stat = rustix::fs::statvfs(&self.inner.dir)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// The last committed position, 0 for an empty store.
    pub fn head(&self) -> u64 {
        *self.inner.head.borrow()
    }

    /// Follows the committed head: changes after every committed group.
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.head.clone()
    }

    /// Stops the writer, indexes what is left so the next start is quick, and waits for both.
    /// Appends after this fail with [`StoreError::Unavailable`].
    pub fn close(&self) {
        self.inner.jobs.lock().take();
        let threads = std::mem::take(&mut *self.inner.threads.lock());
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.jobs.get_mut().take();
        for thread in self.threads.get_mut().drain(..) {
            let _ = thread.join();
        }
    }
}

/// Scans the log past what the index holds, cuts a torn or partial tail, and hands the rest to
/// the index's in-memory tail.
fn recover(
    file: &File,
    index: &Index,
    indexed: Committed,
    chunks: &mpsc::SyncSender<Arc<index::Chunk>>,
) -> Result<Committed, StoreError> {
    let file_len = file.metadata()?.len();
    if indexed.end_offset > file_len {
        return Err(StoreError::Corrupt(format!(
            "the index covers {} bytes of log but the log has {file_len}",
            indexed.end_offset
        )));
    }
    let mut scanner = Scanner::new(file, indexed.end_offset, file_len);
    let mut committed = Committed {
        head_position: indexed.head_position,
        end_offset: indexed.end_offset,
    };
    // Events of an append whose last record has not been seen yet.
    let mut pending: Vec<(String, u64, Uuid, Location)> = Vec::new();
    let mut stop_reason = None;
    while let Some(item) = scanner.next_record()? {
        let (decoded, offset, len) = match item {
            ScanItem::Record {
                decoded,
                offset,
                len,
            } => (decoded, offset, len),
            ScanItem::Invalid { offset, why } => {
                stop_reason = Some((offset, why));
                break;
            }
        };
        let event = decoded.event;
        if offset == indexed.end_offset && indexed.head_position > 0 {
            // The index's last record: already indexed, and an append boundary.
            if event.position != indexed.head_position || !decoded.end_of_append {
                return Err(StoreError::Corrupt(format!(
                    "the index ends at position {} but byte {offset} holds position {}",
                    indexed.head_position, event.position
                )));
            }
            committed.end_offset = offset + len as u64;
            continue;
        }
        let expected_position = committed.head_position + pending.len() as u64 + 1;
        if event.position != expected_position {
            stop_reason = Some((offset, "position out of sequence"));
            break;
        }
        pending.push((
            event.stream,
            event.revision,
            event.id,
            Location {
                position: event.position,
                offset,
            },
        ));
        if decoded.end_of_append {
            committed = Committed {
                head_position: event.position,
                end_offset: offset + len as u64,
            };
            let events = pending
                .iter()
                .map(|(stream, revision, id, location)| Indexed {
                    stream,
                    revision: *revision,
                    id: *id,
                    location: *location,
                });
            if let Some(chunk) = index.publish(events, committed) {
                index::hand_over(chunks, chunk);
            }
            pending.clear();
        }
    }
    if committed.end_offset < file_len {
        let (bad, why) = stop_reason.unwrap_or((committed.end_offset, "partial append"));
        let damaged_position = committed.head_position + pending.len() as u64 + 1;
        if let damage::Tail::Corrupt {
            later_offset,
            later_position,
            why: proof,
        } = damage::classify(file, bad, file_len)?
        {
            return Err(StoreError::Corrupt(format!(
                "events.log is damaged at byte {bad} ({why}), where position {damaged_position} should be; \
                 a valid record (position {later_position}) follows at byte {later_offset}, and {proof}: \
                 this is not what a crash leaves, so acknowledged events would be lost by cutting here. \
                 Nothing was changed. Restore the store from a backup, or, to give up everything from \
                 position {damaged_position} on, run `lantern repair --data DIR --truncate-at {damaged_position}`"
            )));
        }
        tracing::warn!(
            cut_at = committed.end_offset,
            bytes = file_len - committed.end_offset,
            first_bad_record = bad,
            why,
            "cutting the log's torn tail left by a crash"
        );
        file.set_len(committed.end_offset)?;
        file.sync_all()?;
    }
    // Readers stop at the committed end, which the index alone only knew up to its last record.
    if let Some(chunk) = index.publish(std::iter::empty(), committed) {
        index::hand_over(chunks, chunk);
    }
    Ok(committed)
}

/// Checks a stream name against the contract: 1..=256 bytes, no control characters, no `/`, not
/// starting with `$`.
pub fn validate_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "a stream name has 1 to {MAX_NAME_BYTES} bytes, this one has {}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("a stream name may not contain control characters".into());
    }
    if name.contains('/') {
        return Err("a stream name may not contain '/'".into());
    }
    if name.starts_with('$') {
        return Err("a stream name may not start with '$' (reserved)".into());
    }
    Ok(())
}

/// Checks an event type against the contract: 1..=256 bytes, no control characters.
pub fn validate_event_type(event_type: &str) -> Result<(), String> {
    if event_type.is_empty() || event_type.len() > MAX_NAME_BYTES {
        return Err(format!(
            "an event type has 1 to {MAX_NAME_BYTES} bytes, this one has {}",
            event_type.len()
        ));
    }
    if event_type.chars().any(char::is_control) {
        return Err("an event type may not contain control characters".into());
    }
    Ok(())
}
