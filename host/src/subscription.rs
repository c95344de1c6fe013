//! Catch-up then live: a cursor over the log that reads batches from a position and, at the head,
//! waits for the next commit notice.
//!
//! Live events are read from the log like old ones (they are in the page cache), so there is no
//! per-subscriber buffer at all: the switch from catch-up to live cannot gap or duplicate, and a
//! subscriber that falls behind costs nothing but its own reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::{EventRef, Filter, RecordedEvent, Store, StoreError};
use crate::upcast::UpcastError;

/// What a subscription reads the log into, batch after batch: the events themselves
/// (`Vec<RecordedEvent>`), or what a reader makes of them as they are read, on the reader's
/// thread (a projection's batch, encoded for its guest as it is read: a batch read ahead is made
/// while the last one is handled).
pub trait Batch: Send + 'static {
    /// An empty batch of the same kind (a second one, to read ahead into).
    fn fresh(&self) -> Self;
    /// Empties it for the next read, keeping its allocations.
    fn clear(&mut self);
    /// Takes one event as it is read; `false` if it has no room for it: the batch ends before
    /// it, and the next one starts with it.
    fn take(&mut self, event: &EventRef<'_>) -> bool;
    /// Work on the whole batch once it is read (a projection's upcasting).
    fn finish(&mut self) -> Result<(), UpcastError> {
        Ok(())
    }
    /// How many events it took.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Batch for Vec<RecordedEvent> {
    fn fresh(&self) -> Self {
        Vec::new()
    }

    fn clear(&mut self) {
        Vec::clear(self);
    }

    fn take(&mut self, event: &EventRef<'_>) -> bool {
        self.push(event.to_event());
        true
    }

    fn len(&self) -> usize {
        Vec::len(self)
    }
}

/// Why a batch could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `Batch::finish` failed on one of the batch's events.
    #[error(transparent)]
    Upcast(#[from] UpcastError),
}

/// A subscription to the global log, from a position on, filtered, read into batches of `B`.
pub struct Subscription<B: Batch = Vec<RecordedEvent>> {
    store: Store,
    filter: Filter,
    next_position: u64,
    head: watch::Receiver<u64>,
    /// A batch handed back (`recycle`), filled again by the next read (a projection's batches
    /// hold up to 131k events: their memory is reused, not allocated again for each).
    spare: B,
    /// The next batch, being read while the last one is handled (`read_ahead`).
    ahead: Option<Ahead<B>>,
}

/// A read started early: from `from`, up to `limit` events, on the blocking pool.
struct Ahead<B> {
    from: u64,
    limit: usize,
    /// Set by `hurry`: the read ends once it holds half of `limit`.
    hurried: Arc<AtomicBool>,
    read: JoinHandle<Result<Read<B>, ReadError>>,
}

/// One read: the batch, and where the next starts.
struct Read<B> {
    batch: B,
    next_from: u64,
}

/// One read of up to `limit` events from `from` into `batch`; once `hurried` is set, it ends
/// before the next event if it holds at least half of `limit`. Blocking.
fn read<B: Batch>(
    store: &Store,
    filter: &Filter,
    from: u64,
    limit: usize,
    hurried: &AtomicBool,
    mut batch: B,
) -> Result<Read<B>, ReadError> {
    batch.clear();
    let end = store.scan_all(from, limit, filter, |event| {
        let enough = batch.len() >= limit.div_ceil(2) && hurried.load(Ordering::Relaxed);
        !enough && batch.take(event)
    })?;
    batch.finish()?;
    Ok(Read {
        batch,
        next_from: end.next_from,
    })
}

impl Subscription {
    /// Starts at `from` (inclusive; positions start at 1).
    pub fn from_position(store: Store, from: u64, filter: Filter) -> Self {
        Self::into_batches(store, from, filter, Vec::new())
    }

    /// Starts after everything committed so far: only new events.
    pub fn from_now(store: Store, filter: Filter) -> Self {
        let from = store.head() + 1;
        Self::from_position(store, from, filter)
    }
}

impl<B: Batch> Subscription<B> {
    /// Starts at `from`, reading into batches like `first` (the first read fills it).
    pub fn into_batches(store: Store, from: u64, filter: Filter, first: B) -> Self {
        let head = store.watch_head();
        Subscription {
            store,
            filter,
            next_position: from.max(1),
            head,
            spare: first,
            ahead: None,
        }
    }

    /// The position the next batch starts from.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    /// Hands back a batch once it is used: the next batch is read into it.
    pub fn recycle(&mut self, batch: B) {
        self.spare = batch;
    }

    /// A batch to read into: the one handed back, if any.
    fn take_spare(&mut self) -> B {
        let fresh = self.spare.fresh();
        std::mem::replace(&mut self.spare, fresh)
    }

    /// Reads from `position` again (a reader that took fewer events of a batch than it was
    /// given). Never moves forward.
    pub fn rewind(&mut self, position: u64) {
        self.next_position = self.next_position.min(position.max(1));
    }

    /// Starts reading the next batch now, up to `limit` events, if the log has more: a reader
    /// that handles a batch while the next is read (a projection catching up) waits for the log
    /// only once. `poll_batch` takes it up.
    pub fn read_ahead(&mut self, limit: usize) {
        self.read_ahead_after(limit, None);
    }

    /// `read_ahead`, with `first` run on the reader's thread before it reads (or alone on the
    /// blocking pool, if no read starts): work that would otherwise take a thread of its own
    /// beside the reader and the caller (a projection's commit of its last batch).
    pub fn read_ahead_after(&mut self, limit: usize, first: Option<Box<dyn FnOnce() + Send>>) {
        if !self.can_read_ahead() {
            if let Some(first) = first {
                tokio::task::spawn_blocking(first);
            }
            return;
        }
        let (store, filter, from) = (self.store.clone(), self.filter.clone(), self.next_position);
        let batch = self.take_spare();
        let hurried = Arc::new(AtomicBool::new(false));
        let read = {
            let hurried = hurried.clone();
            tokio::task::spawn_blocking(move || {
                if let Some(first) = first {
                    first();
                }
                read(&store, &filter, from, limit, &hurried, batch)
            })
        };
        self.ahead = Some(Ahead {
            from,
            limit,
            hurried,
            read,
        });
    }

    /// Whether `read_ahead` would start a read now: none is under way and the log has more. Once
    /// true, it stays true until `read_ahead` or `poll_batch` is called (the head only moves on).
    pub fn can_read_ahead(&self) -> bool {
        self.ahead.is_none() && self.next_position <= *self.head.borrow()
    }

    /// The batch being read ahead is wanted now: it ends before its next event once it holds
    /// half the events it was asked for (a reader that would otherwise wait for the rest, as a
    /// projection's guest does while its batches grow, takes what is there; the rest comes with
    /// the next batch). A batch so ended is shorter than was asked for, like one at the head.
    pub fn hurry(&self) {
        if let Some(ahead) = &self.ahead {
            ahead.hurried.store(true, Ordering::Relaxed);
        }
    }

    /// The size of the batch being read ahead, if one is (the log had more when it was asked
    /// for).
    pub fn reading_ahead(&self) -> Option<usize> {
        self.ahead.as_ref().map(|ahead| ahead.limit)
    }

    /// The read started by `read_ahead`, if it starts where this subscription is (not after a
    /// `rewind`) and asked for no more than `limit` events (what was made of a longer batch does
    /// not hold for a shorter one, and a failure may lie past `limit`). Another is dropped,
    /// finishes on its own, and the batch is read again. Cancel-safe: the read stays in place
    /// until it is taken.
    async fn take_ahead(&mut self, limit: usize) -> Option<Result<Read<B>, ReadError>> {
        let ahead = self.ahead.as_mut()?;
        if ahead.from != self.next_position || ahead.limit > limit {
            self.ahead = None;
            return None;
        }
        let read = (&mut ahead.read).await;
        self.ahead = None;
        Some(
            read.map_err(|e| StoreError::Unavailable(format!("reader task failed: {e}")).into())
                .and_then(|r| r),
        )
    }

    /// The next matching events that are already committed, at most `limit`; empty at the head.
    /// Runs the log read on the blocking pool.
    pub async fn poll_batch(&mut self, limit: usize) -> Result<B, ReadError> {
        loop {
            if let Some(read) = self.take_ahead(limit).await {
                let Read { batch, next_from } = read?;
                self.next_position = next_from;
                if !batch.is_empty() {
                    return Ok(batch);
                }
                self.spare = batch;
            }
            // Seen before reading, so a commit that lands during the read wakes `wait` later.
            let head = *self.head.borrow_and_update();
            if self.next_position > head {
                return Ok(self.spare.fresh());
            }
            let (store, filter, from) =
                (self.store.clone(), self.filter.clone(), self.next_position);
            let batch = self.take_spare();
            let Read { batch, next_from } = tokio::task::spawn_blocking(move || {
                read(&store, &filter, from, limit, &AtomicBool::new(false), batch)
            })
            .await
            .map_err(|e| StoreError::Unavailable(format!("reader task failed: {e}")))??;
            self.next_position = next_from;
            if !batch.is_empty() {
                return Ok(batch);
            }
            self.spare = batch;
            // Nothing matched in what was examined: keep going while there is more log.
        }
    }

    /// Waits until something was committed past what this subscription has read. Cancel-safe.
    /// Returns `false` when the store closed and nothing more will come.
    pub async fn wait(&mut self) -> bool {
        while *self.head.borrow_and_update() < self.next_position {
            if self.head.changed().await.is_err() {
                return false;
            }
        }
        true
    }

    /// The next non-empty batch, waiting at the head for new commits.
    pub async fn next_batch(&mut self, limit: usize) -> Result<B, ReadError> {
        loop {
            let batch = self.poll_batch(limit).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            if !self.wait().await {
                return Err(StoreError::Unavailable("the store closed".into()).into());
            }
        }
    }
}
