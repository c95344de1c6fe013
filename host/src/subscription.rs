//! Catch-up then live: a cursor over the log that reads batches from a position and, at the head,
//! waits for the next commit notice.
//!
//! Live events are read from the log like old ones (they are in the page cache), so there is no
//! per-subscriber buffer at all: the switch from catch-up to live cannot gap or duplicate, and a
//! subscriber that falls behind costs nothing but its own reads.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::{AllSlice, Filter, RecordedEvent, Store, StoreError};
use crate::upcast::UpcastError;

/// Work done on each batch as part of reading it, on the reader's thread: a projection's
/// upcasting, then its encoding for the guest. A batch read ahead is prepared ahead too, while
/// the last one is handled. What it makes of the batch (`P`) is handed over with it.
pub type Prepare<P> = Arc<dyn Fn(&mut Vec<RecordedEvent>) -> Result<P, UpcastError> + Send + Sync>;

/// A batch and what `Prepare` made of it: `None` when the subscription prepares nothing, or
/// when the batch was read ahead for more events than were asked and cut to fit (what was made
/// of the longer batch does not hold for the cut one).
pub struct Batch<P> {
    pub events: Vec<RecordedEvent>,
    pub prepared: Option<P>,
}

/// Why a batch could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `Prepare` failed on one of the batch's events.
    #[error(transparent)]
    Upcast(#[from] UpcastError),
}

/// A subscription to the global log, from a position on, filtered; each batch prepared into a
/// `P` as it is read (`preparing`).
pub struct Subscription<P = ()> {
    store: Store,
    filter: Filter,
    next_position: u64,
    head: watch::Receiver<u64>,
    /// A batch's vector handed back (`recycle`), filled again by the next read.
    spare: Vec<RecordedEvent>,
    /// The next batch, being read while the last one is handled (`read_ahead`).
    ahead: Option<Ahead<P>>,
    /// Applied to every batch as it is read (`preparing`).
    prepare: Option<Prepare<P>>,
}

/// A read started early: from `from`, up to `limit` events, on the blocking pool.
struct Ahead<P> {
    from: u64,
    limit: usize,
    read: JoinHandle<Result<Read<P>, ReadError>>,
}

/// One read: the slice, and what `prepare` made of its events.
struct Read<P> {
    slice: AllSlice,
    prepared: Option<P>,
}

/// One read of up to `limit` events from `from`, then `prepare` over them. Blocking.
fn read<P>(
    store: &Store,
    filter: &Filter,
    from: u64,
    limit: usize,
    spare: Vec<RecordedEvent>,
    prepare: Option<&Prepare<P>>,
) -> Result<Read<P>, ReadError> {
    let mut slice = store.read_all_into(from, limit, filter, spare)?;
    let prepared = match prepare {
        Some(prepare) => Some(prepare(&mut slice.events)?),
        None => None,
    };
    Ok(Read { slice, prepared })
}

impl Subscription {
    /// Starts at `from` (inclusive; positions start at 1).
    pub fn from_position(store: Store, from: u64, filter: Filter) -> Self {
        let head = store.watch_head();
        Subscription {
            store,
            filter,
            next_position: from.max(1),
            head,
            spare: Vec::new(),
            ahead: None,
            prepare: None,
        }
    }

    /// Starts after everything committed so far: only new events.
    pub fn from_now(store: Store, filter: Filter) -> Self {
        let from = store.head() + 1;
        Self::from_position(store, from, filter)
    }

    /// Every batch passes through `prepare` as it is read, on the blocking pool; `poll_prepared`
    /// hands over what it made. Before the first read.
    pub fn preparing<P>(self, prepare: Prepare<P>) -> Subscription<P> {
        Subscription {
            store: self.store,
            filter: self.filter,
            next_position: self.next_position,
            head: self.head,
            spare: self.spare,
            ahead: None,
            prepare: Some(prepare),
        }
    }
}

impl<P: Send + 'static> Subscription<P> {
    /// The position the next batch starts from.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    /// Hands back a batch's vector once its events are used: the next batch is read into it
    /// (a projection's batches hold up to 131k events: one allocation, not one per batch).
    pub fn recycle(&mut self, events: Vec<RecordedEvent>) {
        self.spare = events;
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
        if self.ahead.is_some() || self.next_position > *self.head.borrow() {
            return;
        }
        let (store, filter, from) = (self.store.clone(), self.filter.clone(), self.next_position);
        let (spare, prepare) = (std::mem::take(&mut self.spare), self.prepare.clone());
        let read = tokio::task::spawn_blocking(move || {
            read(&store, &filter, from, limit, spare, prepare.as_ref())
        });
        self.ahead = Some(Ahead { from, limit, read });
    }

    /// The size of the batch being read ahead, if one is (the log had more when it was asked
    /// for).
    pub fn reading_ahead(&self) -> Option<usize> {
        self.ahead.as_ref().map(|ahead| ahead.limit)
    }

    /// The read started by `read_ahead`, if it starts where this subscription is (not after a
    /// `rewind`: that one is dropped, and finishes on its own). One read ahead for more than
    /// `limit` events whose preparing failed is dropped too, and read again up to `limit`: the
    /// failing event may lie past what is asked for now. Cancel-safe: the read stays in place
    /// until it is taken.
    async fn take_ahead(&mut self, limit: usize) -> Option<Result<Read<P>, ReadError>> {
        let ahead = self.ahead.as_mut()?;
        if ahead.from != self.next_position {
            self.ahead = None;
            return None;
        }
        let read = (&mut ahead.read).await;
        let asked = ahead.limit;
        self.ahead = None;
        let read = read
            .map_err(|e| StoreError::Unavailable(format!("reader task failed: {e}")).into())
            .and_then(|r| r);
        if asked > limit && matches!(read, Err(ReadError::Upcast(_))) {
            return None;
        }
        Some(read)
    }

    /// The next matching events that are already committed, at most `limit`; empty at the head.
    /// Runs the log read on the blocking pool.
    pub async fn poll_batch(&mut self, limit: usize) -> Result<Vec<RecordedEvent>, ReadError> {
        Ok(self.poll_prepared(limit).await?.events)
    }

    /// `poll_batch`, with what `prepare` made of the batch.
    pub async fn poll_prepared(&mut self, limit: usize) -> Result<Batch<P>, ReadError> {
        loop {
            if let Some(read) = self.take_ahead(limit).await {
                let Read {
                    mut slice,
                    mut prepared,
                } = read?;
                if slice.events.len() > limit {
                    // Read ahead for a larger batch: the rest is read again.
                    slice.next_from = slice.events[limit].position;
                    slice.events.truncate(limit);
                    prepared = None;
                }
                self.next_position = slice.next_from;
                if !slice.events.is_empty() {
                    return Ok(Batch {
                        events: slice.events,
                        prepared,
                    });
                }
                self.spare = slice.events;
            }
            // Seen before reading, so a commit that lands during the read wakes `wait` later.
            let head = *self.head.borrow_and_update();
            if self.next_position > head {
                return Ok(Batch {
                    events: Vec::new(),
                    prepared: None,
                });
            }
            let (store, filter) = (self.store.clone(), self.filter.clone());
            let (from, prepare) = (self.next_position, self.prepare.clone());
            let spare = std::mem::take(&mut self.spare);
            let Read { slice, prepared } = tokio::task::spawn_blocking(move || {
                read(&store, &filter, from, limit, spare, prepare.as_ref())
            })
            .await
            .map_err(|e| StoreError::Unavailable(format!("reader task failed: {e}")))??;
            self.next_position = slice.next_from;
            if !slice.events.is_empty() {
                return Ok(Batch {
                    events: slice.events,
                    prepared,
                });
            }
            self.spare = slice.events;
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
    pub async fn next_batch(&mut self, limit: usize) -> Result<Vec<RecordedEvent>, ReadError> {
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
