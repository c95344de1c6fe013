//! One projection generation at work: a task that reads the log from the generation's checkpoint
//! in batches, calls the guest once per batch, and commits the writes with the new checkpoint in
//! one read-model transaction; then follows live commits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::registry::GenerationEntry;
use crate::readmodel::{Overlaid, ReadModel, ReadModelError, WriteSet};
use crate::store::{Filter, RecordedEvent, Store};
use crate::subscription::{Batch as _, ReadError, Subscription};
use crate::wasm::{self, GuestFailure};
use tracing::Instrument;

/// Events examined per batch: at most this many, fewer for a slow guest or large events (see
/// `BatchSize`). Large batches make catch-up cheaper: each batch reads and writes every key it
/// touches once (order-totals over 10,000 customers: 32k-event batches 0.24x the native fold,
/// 131k 0.30x).
const MAX_BATCH: usize = 131_072;
/// At most this many bytes of events per batch (at least one event): the guest holds the whole
/// encoded batch in its memory, whose cap is 64 MiB by default.
const MAX_BATCH_BYTES: usize = 16 << 20;
/// The fewest events a batch examines, however slow the guest.
const MIN_BATCH: usize = 256;
/// How long one batch should take: long enough that a batch's fixed costs (a read-model commit,
/// a read of every key the batch touches: for a JavaScript guest, whose host calls are slow, this
/// is most of the cost) stay small, short enough that a slow guest (a JavaScript module runs tens
/// of times slower than a Rust one) does not delay a stop or a swap for more than about a second.
/// Measured: order-totals-ts kept at 4,096-event batches by a 100 ms target ran at half its speed.
const BATCH_TARGET: Duration = Duration::from_millis(500);
/// First wait after a fault before a current generation tries again; doubles up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Events appended during one rebuild batch that make the rebuild yield to appends.
const BUSY_APPENDS: u64 = 1000;
/// How long a generation is idle at the head before its read model is made durable.
const IDLE_FLUSH: Duration = Duration::from_millis(100);

use crate::upcast::wire_view as view;

/// A fault of the module (a trap, an error it returned, malformed writes).
fn fault(message: String, position: u64) -> Fault {
    Fault {
        message,
        position,
        at: SystemTime::now(),
        cause: FaultCause::Module,
    }
}

/// A fault of the storage under the projection: the log or the read model could not be read
/// or written. No event is to blame; `position` is where the projection stopped.
fn storage_fault(message: String, position: u64) -> Fault {
    Fault {
        message,
        position,
        at: SystemTime::now(),
        cause: FaultCause::Storage,
    }
}

/// How many events the next batch examines: halved while a batch takes more than twice
/// `BATCH_TARGET`; after a full batch, doubled as often as the batch, at the speed it showed,
/// would still take less than twice the target (only a full batch says how fast the guest is: a
/// short one at the head is quick anyway). So a batch ends within about a second, and a quick
/// guest gets the largest batches after its first.
#[derive(Debug)]
struct BatchSize {
    events: usize,
    /// How long the last full batch took per event; `None` until one was timed.
    per_event: Option<Duration>,
}

impl Default for BatchSize {
    /// A quarter of the largest: a slow guest's first batch stays short.
    fn default() -> Self {
        BatchSize {
            events: MAX_BATCH / 4,
            per_event: None,
        }
    }
}

impl BatchSize {
    fn events(&self) -> usize {
        self.events
    }

    /// A batch of `events` was as many as fit in `MAX_BATCH_BYTES`: the next is no larger.
    fn fit(&mut self, events: usize) {
        self.events = self.events.min(events).max(MIN_BATCH);
    }

    /// The size after a full batch whose events took `per_event` each.
    fn after_full(&self, per_event: Duration) -> usize {
        let took = per_event.saturating_mul(u32::try_from(self.events).unwrap_or(u32::MAX));
        if took > 2 * BATCH_TARGET {
            return (self.events / 2).max(MIN_BATCH);
        }
        let (mut events, mut projected) = (self.events, took);
        // Doubled while the doubled batch stays under twice the target.
        while events < MAX_BATCH && projected < BATCH_TARGET {
            events *= 2;
            projected *= 2;
        }
        events.min(MAX_BATCH)
    }

    /// The size to read ahead while a batch is handled: what the next batch will be if this one
    /// is as quick per event as the last full one (the largest before any was timed), so a guest
    /// whose batches grow does not wait for the rest of its next batch to be read. A read ahead
    /// larger than the next batch is dropped, and the batch read again.
    fn ahead(&self, full: bool) -> usize {
        match (full, self.per_event) {
            (false, _) => self.events,
            (true, None) => MAX_BATCH,
            (true, Some(per_event)) => self.after_full(per_event),
        }
    }

    /// A batch of `events` took `took`; `full` if it got all it asked for.
    fn observe(&mut self, events: usize, full: bool, took: Duration) {
        if full {
            let per_event = took / u32::try_from(events.max(1)).unwrap_or(u32::MAX);
            self.per_event = Some(per_event);
            self.events = self.after_full(per_event);
        } else if took > 2 * BATCH_TARGET {
            self.events = (self.events / 2).max(MIN_BATCH);
        }
    }
}

/// A fault of an upcaster, on the event it failed.
fn upcast_fault(error: &crate::upcast::UpcastError) -> Fault {
    Fault {
        message: error.to_string(),
        position: error.position,
        at: SystemTime::now(),
        cause: FaultCause::Upcaster,
    }
}

/// A batch as its guest is given it, made as the log is read (on the reader's thread: while
/// catching up, ahead of the guest, which handles the last one meanwhile). It examines every
/// event, and encodes those the module subscribes to, up to `MAX_BATCH_BYTES` of them; with
/// upcasters, it keeps the events, and upcasts and encodes them once the read is done.
struct GuestBatch {
    module: Arc<wasm::Module>,
    chain: Arc<crate::upcast::Chain>,
    encoder: lantern_wire::BatchEncoder,
    /// The events read, while the projection has upcasters.
    events: Vec<RecordedEvent>,
    examined: usize,
    /// What the wire encoding holds of the events examined, about: the fixed fields, the
    /// names, data and metadata (before upcasting).
    bytes: usize,
    /// Ended at the byte budget, not at the events asked for or the head.
    cut: bool,
    first_delivered: Option<u64>,
}

impl GuestBatch {
    fn new(module: Arc<wasm::Module>, chain: Arc<crate::upcast::Chain>) -> Self {
        GuestBatch {
            encoder: module.batch_encoder(),
            module,
            chain,
            events: Vec::new(),
            examined: 0,
            bytes: 0,
            cut: false,
            first_delivered: None,
        }
    }

    fn deliver(&mut self, event: &lantern_wire::EventView<'_>) {
        if self
            .module
            .subscription()
            .matches(event.stream, event.event_type)
        {
            self.first_delivered.get_or_insert(event.position);
            self.encoder.push(event);
        }
    }

    /// How many events the guest is given.
    fn delivered(&self) -> u64 {
        self.encoder.len() as u64
    }
}

impl crate::subscription::Batch for GuestBatch {
    fn fresh(&self) -> Self {
        GuestBatch::new(self.module.clone(), self.chain.clone())
    }

    fn clear(&mut self) {
        self.encoder.clear();
        self.events.clear();
        (self.examined, self.bytes, self.cut) = (0, 0, false);
        self.first_delivered = None;
    }

    fn take(&mut self, event: &crate::store::EventRef<'_>) -> bool {
        let bytes = 64
            + event.stream().len()
            + event.event_type().len()
            + event.data().len()
            + event.metadata().map_or(0, <[u8]>::len);
        if self.examined > 0 && self.bytes + bytes > MAX_BATCH_BYTES {
            self.cut = true;
            return false;
        }
        self.bytes += bytes;
        self.examined += 1;
        if self.chain.is_empty() {
            self.deliver(&crate::upcast::wire_view_in_place(event));
        } else {
            self.events.push(event.to_event());
        }
        true
    }

    /// Upcasts only the events the guest may be given, in their current shape (the others stay
    /// as they are: they only advance the checkpoint).
    fn finish(&mut self) -> Result<(), crate::upcast::UpcastError> {
        if self.events.is_empty() {
            return Ok(());
        }
        let spec = self.module.subscription();
        self.chain
            .apply(&mut self.events, |e| spec.wants_stream(&e.stream))?;
        let events = std::mem::take(&mut self.events);
        for event in &events {
            self.deliver(&view(event));
        }
        self.events = events;
        Ok(())
    }

    fn len(&self) -> usize {
        self.examined
    }
}

/// Why one batch failed.
enum BatchError {
    /// The module failed (replayed one event at a time to find the event).
    Guest(GuestFailure),
    /// The read model could not be read or written.
    Storage(String),
}

impl From<crate::readmodel::ReadModelError> for BatchError {
    fn from(error: crate::readmodel::ReadModelError) -> Self {
        if error.is_storage() {
            BatchError::Storage(error.to_string())
        } else {
            BatchError::Guest(GuestFailure::Error(error.to_string()))
        }
    }
}

impl From<GuestFailure> for BatchError {
    fn from(failure: GuestFailure) -> Self {
        match failure {
            GuestFailure::Storage(message) => BatchError::Storage(message),
            other => BatchError::Guest(other),
        }
    }
}

/// A batch's writes, committed while the next batch is handled: by the thread that reads the
/// batch after that, before it reads (`Subscription::read_ahead_after`), so that a catch-up keeps
/// two threads busy (the guest's, the reader's), not three: on two cores, a commit of its own
/// beside the reader took a share of the guest's core, a tenth of each batch's time.
struct Committing {
    /// What the next batch reads over its snapshot, which may not have them yet.
    writes: Arc<WriteSet>,
    /// The batch's first position: a failed commit's fault is there.
    from: u64,
    /// The commit, until it is handed to a thread.
    job: Option<Box<dyn FnOnce() + Send>>,
    result: oneshot::Receiver<Result<(), ReadModelError>>,
}

impl Committing {
    /// The commit of `writes` up to `checkpoint`, not yet started.
    fn new(read_model: &Arc<ReadModel>, writes: WriteSet, from: u64, checkpoint: u64) -> Self {
        let writes = Arc::new(writes);
        let (read_model, committed) = (read_model.clone(), writes.clone());
        let span = tracing::Span::current();
        let (sender, result) = oneshot::channel();
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _in_projection = span.enter();
            let _ = sender.send(read_model.apply(&committed, checkpoint));
        });
        Committing {
            writes,
            from,
            job: Some(job),
            result,
        }
    }

    /// The commit, to run on a blocking thread; `None` once taken.
    fn take_job(&mut self) -> Option<Box<dyn FnOnce() + Send>> {
        self.job.take()
    }

    /// Waits until the commit is done, first starting it if nobody took it.
    async fn done(mut self) -> Result<(), Fault> {
        if let Some(job) = self.take_job() {
            tokio::task::spawn_blocking(job);
        }
        self.result
            .await
            .map_err(|_| fault("runner task failed: a commit was dropped".into(), self.from))?
            .map_err(|e| storage_fault(e.to_string(), self.from))
    }
}

/// Whose doing a fault is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultCause {
    /// The module's: it trapped, returned an error, or wrote something malformed.
    Module,
    /// The storage's: the log or the read model could not be read or written. Retried with
    /// backoff by every generation, rebuilds included; no event is blamed.
    Storage,
    /// An upcaster's: it failed on the event at the fault's position, which the projection
    /// therefore cannot be given in its current shape.
    Upcaster,
}

/// Where a generation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading history.
    CatchingUp,
    /// At the head, following live commits.
    Running,
    /// Stopped by a fault (a current generation retries with backoff).
    Faulted,
}

/// Why a generation stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What went wrong.
    pub message: String,
    /// The first position of the batch that failed.
    pub position: u64,
    /// When.
    pub at: SystemTime,
    /// Whose doing it is.
    pub cause: FaultCause,
}

/// What the status endpoint shows of a generation.
#[derive(Debug, Clone)]
pub struct RunState {
    /// Where it is.
    pub phase: Phase,
    /// The last fault, until a batch succeeds again.
    pub fault: Option<Fault>,
    /// Log events processed per second, recently.
    pub events_per_second: f64,
}

/// A module version with its own read model and runner task.
pub(crate) struct Generation {
    pub name: String,
    pub entry: GenerationEntry,
    pub module: Arc<wasm::Module>,
    /// The upcasters its input passes through (the ones `entry.upcasters` names).
    pub chain: Arc<crate::upcast::Chain>,
    pub read_model: Arc<ReadModel>,
    pub state: Mutex<RunState>,
    stop: Mutex<CancellationToken>,
    /// Serving generations retry faults with backoff; a rebuild stops at its first fault.
    serving: AtomicBool,
    /// Instances that answer queries, idle between them: a query takes one (or makes one), so
    /// queries of one projection run side by side. At most `query_instances_kept()` wait here; one
    /// that trapped, or whose memory grew past half its cap, is dropped.
    query_instances: Mutex<Vec<wasm::Instance>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stats: Arc<super::ProjectionStats>,
    /// Its projection's run series while serving and while rebuilding, made on first use (a
    /// projection that never rebuilds shows no rebuild series).
    runs: [std::sync::OnceLock<super::stats::RunSeries>; 2],
    /// Its projection's read latency series, by kind.
    reads: [prometheus_client::metrics::histogram::Histogram; 3],
}

impl Generation {
    pub fn new(
        name: &str,
        entry: GenerationEntry,
        module: Arc<wasm::Module>,
        chain: Arc<crate::upcast::Chain>,
        read_model: ReadModel,
        stats: Arc<super::ProjectionStats>,
    ) -> Arc<Self> {
        Arc::new(Generation {
            name: name.to_owned(),
            entry,
            module,
            chain,
            read_model: Arc::new(read_model),
            state: Mutex::new(RunState {
                phase: Phase::CatchingUp,
                fault: None,
                events_per_second: 0.0,
            }),
            stop: Mutex::new(CancellationToken::new()),
            serving: AtomicBool::new(false),
            query_instances: Mutex::new(Vec::new()),
            task: Mutex::new(None),
            reads: stats.read_series(name),
            runs: Default::default(),
            stats,
        })
    }

    /// The run series of its current role.
    fn run_series(&self) -> &super::stats::RunSeries {
        let serving = self.serving.load(Ordering::SeqCst);
        self.runs[usize::from(!serving)].get_or_init(|| self.stats.run_series(&self.name, serving))
    }

    /// One answered read of `kind`, `took` long (its read-your-writes wait included).
    pub(super) fn read_done(&self, kind: super::ReadKind, took: Duration) {
        self.reads[kind as usize].observe(took.as_secs_f64());
    }

    pub fn run_state(&self) -> RunState {
        self.state.lock().clone()
    }

    /// From now on faults retry with backoff instead of ending the runner.
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::SeqCst);
    }

    fn stop_token(&self) -> CancellationToken {
        self.stop.lock().clone()
    }

    /// Starts the runner. A fault of a serving generation retries with backoff; a fault of any
    /// other ends the task and is sent on `faulted`. `caught_up` fires the first time the
    /// generation reaches the head.
    pub fn start(
        self: &Arc<Self>,
        store: Store,
        caught_up: Option<oneshot::Sender<()>>,
        faulted: Option<oneshot::Sender<Fault>>,
    ) {
        let generation = self.clone();
        let stop = self.stop_token();
        // Every line the runner logs (the guest's own lines included) names the projection and
        // its version; a root span, so it is not tied to the request that deployed it.
        let span = tracing::info_span!(
            parent: None,
            "projection",
            projection = %self.name,
            version = self.entry.version
        );
        let task = tokio::spawn(
            async move {
                if let Err(fault) = generation.run(store, stop, caught_up).await
                    && let Some(faulted) = faulted
                {
                    let _ = faulted.send(fault);
                }
            }
            .instrument(span),
        );
        *self.task.lock() = Some(task);
    }

    /// Starts a halted runner again (a swap that did not happen).
    pub fn restart(self: &Arc<Self>, store: Store) {
        *self.stop.lock() = CancellationToken::new();
        self.start(store, None, None);
    }

    /// Stops the runner and waits until its last batch is committed.
    pub async fn halt(&self) {
        self.stop_token().cancel();
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    fn set_fault(&self, fault: &Fault) {
        let mut state = self.state.lock();
        state.phase = Phase::Faulted;
        state.fault = Some(fault.clone());
        state.events_per_second = 0.0;
        self.run_series().fault();
        tracing::error!(
            projection = %self.name,
            version = self.entry.version,
            position = fault.position,
            "projection faulted: {}",
            fault.message
        );
    }

    async fn run(
        self: Arc<Self>,
        store: Store,
        stop: CancellationToken,
        mut caught_up: Option<oneshot::Sender<()>>,
    ) -> Result<(), Fault> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let fault = match self.follow(&store, &stop, &mut caught_up).await {
                Ok(()) => return Ok(()),
                Err(fault) => fault,
            };
            self.set_fault(&fault);
            // A rebuild stops at a fault of its module or of an upcaster (the serving version,
            // with its own upcasters, answers on); a storage fault is nobody's module's doing, so
            // it waits and tries again like a serving generation.
            if !self.serving.load(Ordering::SeqCst) && fault.cause != FaultCause::Storage {
                return Err(fault);
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return Ok(()),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            if fault.cause == FaultCause::Storage {
                // redb refuses every transaction after an I/O error until the file is opened
                // again; if that fails too, the next attempt fails and waits longer.
                let read_model = self.read_model.clone();
                match tokio::task::spawn_blocking(move || read_model.reopen()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(projection = %self.name, %error, "reopening the read model failed")
                    }
                    Err(error) => {
                        tracing::warn!(projection = %self.name, %error, "reopening the read model failed")
                    }
                }
            }
        }
    }

    /// Catches up and follows the log until stopped (`Ok`) or a fault. A batch's commit runs
    /// while the next batch is handled; on every way out it is waited for, so a halted runner has
    /// committed all it handled (a runner started after it begins at its checkpoint).
    async fn follow(
        self: &Arc<Self>,
        store: &Store,
        stop: &CancellationToken,
        caught_up: &mut Option<oneshot::Sender<()>>,
    ) -> Result<(), Fault> {
        let mut committing = None;
        let followed = self
            .follow_batches(store, stop, caught_up, &mut committing)
            .await;
        let committed = match committing {
            Some(commit) => commit.done().await,
            None => Ok(()),
        };
        followed.and(committed)
    }

    async fn follow_batches(
        self: &Arc<Self>,
        store: &Store,
        stop: &CancellationToken,
        caught_up: &mut Option<oneshot::Sender<()>>,
        committing: &mut Option<Committing>,
    ) -> Result<(), Fault> {
        let checkpoint = self.read_model.checkpoint();
        let mut instance = Some(
            self.module
                .instantiate()
                .map_err(|e| fault(e.to_string(), checkpoint + 1))?,
        );
        // Each batch is encoded as it is read; a batch handed back is read into again (up to
        // 16 MiB: not allocated, faulted in and freed again every time).
        let mut subscription = Subscription::into_batches(
            store.clone(),
            checkpoint + 1,
            Filter::default(),
            GuestBatch::new(self.module.clone(), self.chain.clone()),
        );
        let mut window = (Instant::now(), 0u64);
        let mut batch_size = BatchSize::default();
        loop {
            let from = subscription.next_position();
            // A batch read ahead was asked for at the size before the last batch could double it.
            let asked = subscription
                .reading_ahead()
                .map_or(batch_size.events(), |ahead| ahead.min(batch_size.events()));
            // The guest is free: rather than wait for the rest of a batch still being read, it
            // takes what is read if that is half of it (so the first large read ahead, which takes
            // longer than the small first batch, does not idle the guest).
            subscription.hurry();
            let read = tokio::select! {
                read = subscription.poll_batch(batch_size.events()) => read,
                () = stop.cancelled() => return Ok(()),
            };
            let batch = match read {
                Ok(batch) => batch,
                // The store is closing: stop quietly.
                Err(ReadError::Store(crate::store::StoreError::Unavailable(_))) => return Ok(()),
                Err(ReadError::Store(error)) => {
                    return Err(storage_fault(format!("reading the log: {error}"), from));
                }
                Err(ReadError::Upcast(error)) => return Err(upcast_fault(&error)),
            };
            // Only a batch that got all it asked for, uncut, says the guest could take more.
            let examined = batch.len();
            let full_batch = examined == asked && !batch.cut;
            if batch.cut {
                // Cut at the byte budget: the next batch is no larger.
                batch_size.fit(examined);
            }
            let (delivered, first_delivered) = (batch.delivered(), batch.first_delivered);
            let next_checkpoint = subscription.next_position() - 1;
            let ahead = batch_size.ahead(full_batch);
            if examined == 0 {
                if let Some(commit) = committing.take() {
                    commit.done().await?;
                }
                self.at_head(caught_up);
                if self.read_model.is_dirty() {
                    // Idle for a moment: make the read model durable, so a crash now does not
                    // take it back (it would stay consistent, but behind).
                    tokio::select! {
                        _ = subscription.wait() => continue,
                        () = tokio::time::sleep(IDLE_FLUSH) => {}
                        () = stop.cancelled() => return Ok(()),
                    }
                    let read_model = self.read_model.clone();
                    tokio::task::spawn_blocking(move || read_model.flush())
                        .await
                        .map_err(|e| fault(format!("runner task failed: {e}"), from))?
                        .map_err(|e| storage_fault(e.to_string(), from))?;
                }
                tokio::select! {
                    _ = subscription.wait() => {}
                    () = stop.cancelled() => return Ok(()),
                }
                continue;
            }
            let batch_started = Instant::now();
            let head_before = store.head();
            let read_model = self.read_model.clone();
            let guest = instance.take().expect("an instance between batches");
            let span = tracing::Span::current();
            // Catching up (the log has more: the next batch is read while this one is handled),
            // this batch is committed while the next is handled. Live, it is committed at once on
            // the same thread: one hand-over fewer before the event is visible.
            let commit_behind = subscription.can_read_ahead();
            if !commit_behind && let Some(commit) = committing.take() {
                commit.done().await?;
            }
            // The last batch's writes, if they are still being committed: read over the snapshot.
            let uncommitted = committing.as_ref().map(|commit| commit.writes.clone());
            let handling = tokio::task::spawn_blocking(move || {
                let _in_projection = span.enter();
                let (mut guest, mut batch) = (guest, batch);
                let handled = (|| -> Result<Option<WriteSet>, BatchError> {
                    let writes = if delivered == 0 {
                        WriteSet::empty()
                    } else {
                        let snapshot = read_model.snapshot()?;
                        let view: Box<dyn wasm::ReadView> = match uncommitted {
                            Some(writes) => Box::new(Overlaid { snapshot, writes }),
                            None => Box::new(snapshot),
                        };
                        WriteSet::decode(guest.handle(batch.encoder.bytes(), view)?)?
                    };
                    if commit_behind {
                        return Ok(Some(writes));
                    }
                    read_model.apply(&writes, next_checkpoint)?;
                    Ok(None)
                })();
                (guest, handled, batch)
            });
            // The next batch is read while this one is handled: started after the guest, the
            // pipeline's path, so that the guest's thread gets a core first (started before it,
            // the guest waited 1-6 ms per batch for one: a tenth of a catch-up's time).
            let commit = committing.as_mut().and_then(Committing::take_job);
            subscription.read_ahead_after(ahead, commit);
            let (guest, result, batch) = handling
                .await
                .map_err(|e| fault(format!("runner task failed: {e}"), from))?;
            subscription.recycle(batch);
            // The last batch's commit first: this one's writes follow it, and a failed batch is
            // replayed from it.
            if let Some(commit) = committing.take() {
                commit.done().await?;
            }
            // An instance whose batch failed, or whose writes were not committed, is never called
            // again (the WIT's promise: a module may keep the read model's values in memory
            // between batches; the TypeScript SDK does). Its next batch may be handled while this
            // one's writes are committed; if that commit fails, the instance is dropped with the
            // fault.
            let guest = match result {
                Ok(committed) => {
                    if let Some(writes) = committed {
                        *committing = Some(Committing::new(
                            &self.read_model,
                            writes,
                            from,
                            next_checkpoint,
                        ));
                    }
                    // A guest whose memory has grown past half its cap starts the next batch
                    // afresh (its state lives in the read model, not in the instance).
                    if guest.should_be_renewed() {
                        self.module
                            .instantiate()
                            .map_err(|e| fault(e.to_string(), next_checkpoint + 1))?
                    } else {
                        guest
                    }
                }
                Err(BatchError::Storage(message)) => {
                    return Err(storage_fault(message, from));
                }
                Err(_) if delivered > 1 => {
                    // Find the event that failed, keeping the progress of those before it:
                    // replay the batch one event at a time (a trap does not say which event,
                    // and a failed batch keeps none of its writes).
                    let (generation, store) = (self.clone(), store.clone());
                    let span = tracing::Span::current();
                    tokio::task::spawn_blocking(move || {
                        let _in_projection = span.enter();
                        generation.replay_singly(&store, from, next_checkpoint)
                    })
                    .await
                    .map_err(|e| fault(format!("runner task failed: {e}"), from))??
                }
                Err(BatchError::Guest(GuestFailure::Event { position, message })) => {
                    return Err(fault(message, position));
                }
                Err(BatchError::Guest(other)) => {
                    return Err(fault(other.to_string(), first_delivered.unwrap_or(from)));
                }
            };
            instance = Some(guest);
            self.run_series().batch(delivered, batch_started.elapsed());
            batch_size.observe(examined, full_batch, batch_started.elapsed());
            window.1 += next_checkpoint + 1 - from;
            self.progress(&mut window);
            // A rebuild is background work: while appends are busy, it takes at most half of
            // its core, leaving the rest to them. Alone, it runs at full speed.
            let busy = store.head().saturating_sub(head_before) >= BUSY_APPENDS;
            if busy && !self.serving.load(Ordering::SeqCst) {
                tokio::select! {
                    () = tokio::time::sleep(batch_started.elapsed()) => {}
                    () = stop.cancelled() => return Ok(()),
                }
            }
        }
    }

    /// Folds the events of a failed batch, `from..=next_checkpoint` (read again, upcast, those
    /// the module subscribes to), one per call on fresh instances, committing each, until one
    /// fails: that event is the fault's position. If none fails, commits up to
    /// `next_checkpoint` and hands back the instance. Blocking.
    fn replay_singly(
        &self,
        store: &Store,
        from: u64,
        next_checkpoint: u64,
    ) -> Result<wasm::Instance, Fault> {
        let count = usize::try_from(next_checkpoint + 1 - from).unwrap_or(usize::MAX);
        let mut events = store
            .read_all(from, count, &Filter::default())
            .map_err(|e| storage_fault(format!("reading the log: {e}"), from))?
            .events;
        let spec = self.module.subscription();
        self.chain
            .apply(&mut events, |e| spec.wants_stream(&e.stream))
            .map_err(|e| upcast_fault(&e))?;
        events.retain(|e| spec.matches(&e.stream, &e.event_type));
        let first = events.first().map_or(next_checkpoint, |e| e.position);
        let mut instance = self
            .module
            .instantiate()
            .map_err(|e| fault(e.to_string(), first))?;
        for event in &events {
            let mut batch = self.module.batch_encoder();
            batch.push(&view(event));
            let pinned = |error: BatchError| match error {
                BatchError::Storage(message) => storage_fault(message, event.position),
                BatchError::Guest(GuestFailure::Event { message, .. }) => {
                    fault(message, event.position)
                }
                BatchError::Guest(other) => fault(other.to_string(), event.position),
            };
            let snapshot = self.read_model.snapshot().map_err(|e| pinned(e.into()))?;
            let writes = instance
                .handle(&batch.finish(), Box::new(snapshot))
                .map_err(|e| pinned(e.into()))?;
            let writes = WriteSet::decode(writes).map_err(|e| pinned(e.into()))?;
            // Everything before this event is folded: the checkpoint may sit just before the
            // next one.
            self.read_model
                .apply(&writes, event.position)
                .map_err(|e| pinned(e.into()))?;
        }
        self.read_model
            .apply(&WriteSet::empty(), next_checkpoint)
            .map_err(|e| storage_fault(e.to_string(), next_checkpoint))?;
        Ok(instance)
    }

    fn at_head(&self, caught_up: &mut Option<oneshot::Sender<()>>) {
        {
            let mut state = self.state.lock();
            state.phase = Phase::Running;
            state.fault = None;
        }
        if let Some(caught_up) = caught_up.take() {
            let _ = caught_up.send(());
        }
    }

    fn progress(&self, window: &mut (Instant, u64)) {
        let elapsed = window.0.elapsed();
        let mut state = self.state.lock();
        state.fault = None;
        if state.phase == Phase::Faulted {
            state.phase = Phase::CatchingUp;
        }
        if elapsed >= Duration::from_millis(500) {
            state.events_per_second = window.1 as f64 / elapsed.as_secs_f64();
            *window = (Instant::now(), 0);
        }
    }

    /// Runs a query handler of the module against one snapshot. Blocking. `Err` says whose
    /// failure it was.
    pub fn query(
        &self,
        name: &str,
        params_json: &str,
    ) -> Result<(Result<String, wasm::QueryError>, u64), BatchFailure> {
        let snapshot = self
            .read_model
            .snapshot()
            .map_err(|e| BatchFailure::Storage(e.to_string()))?;
        let position = snapshot.position();
        let idle = self.query_instances.lock().pop();
        let mut instance = match idle {
            Some(instance) => instance,
            None => self
                .module
                .instantiate()
                .map_err(|e| BatchFailure::Module(e.to_string()))?,
        };
        match instance.query(name, params_json, Box::new(snapshot)) {
            Ok(answer) => {
                if !instance.should_be_renewed() {
                    let mut idle = self.query_instances.lock();
                    if idle.len() < query_instances_kept() {
                        idle.push(instance);
                    }
                }
                Ok((answer, position))
            }
            // A trapped instance is not used again.
            Err(GuestFailure::Storage(message)) => Err(BatchFailure::Storage(message)),
            Err(other) => Err(BatchFailure::Module(other.to_string())),
        }
    }
}

/// How many idle query instances a generation keeps: one per core (at most 8), so a projection's
/// queries use every core without making an instance per query. Queries beyond that many at
/// once make an instance each.
fn query_instances_kept() -> usize {
    static KEPT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *KEPT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(2, std::num::NonZero::get)
            .min(8)
    })
}

/// Why a call into the module failed, as the caller needs to know it.
#[derive(Debug)]
pub enum BatchFailure {
    /// The module's doing.
    Module(String),
    /// The read model could not be read.
    Storage(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_guest_gets_smaller_batches_and_a_fast_one_full_ones_again() {
        let mut size = BatchSize::default();
        assert_eq!(size.events(), 32_768);
        // Quick: the largest batches at once.
        size.observe(32_768, true, Duration::from_millis(1));
        assert_eq!(size.events(), MAX_BATCH);
        // Slow: halved each time, down to the floor and no further.
        let mut seen = vec![size.events()];
        for _ in 0..12 {
            size.observe(size.events(), true, 3 * BATCH_TARGET);
            seen.push(size.events());
        }
        assert_eq!(
            &seen[..11],
            &[
                131_072, 65_536, 32_768, 16_384, 8_192, 4_096, 2_048, 1_024, 512, 256, 256
            ]
        );
        // Within the band: unchanged.
        size.observe(MIN_BATCH, true, BATCH_TARGET);
        assert_eq!(size.events(), MIN_BATCH);
        // Quick but short (the head): says nothing about the guest.
        size.observe(1, false, Duration::from_millis(1));
        assert_eq!(size.events(), MIN_BATCH);
        // Full at a third of the target: doubled as often as the next batch stays under twice
        // the target (two doublings: 4/3 of it; a third would make 8/3).
        size.observe(MIN_BATCH, true, BATCH_TARGET / 3);
        assert_eq!(size.events(), 4 * MIN_BATCH);
        // Quick and full: up to the cap.
        size.observe(4 * MIN_BATCH, true, Duration::from_millis(1));
        assert_eq!(size.events(), MAX_BATCH);
        // Cut short by bytes: no larger than what fit, never below the floor.
        size.fit(1000);
        assert_eq!(size.events(), 1000);
        size.fit(10);
        assert_eq!(size.events(), MIN_BATCH);
    }

    #[test]
    fn a_full_batch_reads_ahead_what_the_next_will_be_at_the_last_speed() {
        let mut size = BatchSize::default();
        // Not yet timed: the largest (a quick guest's next batch).
        assert_eq!(size.ahead(true), MAX_BATCH);
        assert_eq!(size.ahead(false), 32_768);
        // 10 µs an event: 32,768 take 328 ms, so the next batch doubles once (655 ms), and at
        // that speed the one after stays that size.
        size.observe(32_768, true, 32_768 * Duration::from_micros(10));
        assert_eq!(size.events(), 65_536);
        assert_eq!(size.ahead(true), 65_536);
        // Faster: the next batch is read ahead at the size it will grow to.
        size.observe(65_536, true, 65_536 * Duration::from_micros(2));
        assert_eq!(size.events(), 131_072);
        // A short batch (the head, or cut by bytes): no larger.
        size.fit(1000);
        assert_eq!(size.ahead(false), 1000);
        // 1,000 events at 2 µs: the next full batch could double eight times, capped.
        assert_eq!(size.ahead(true), MAX_BATCH);
    }
}
