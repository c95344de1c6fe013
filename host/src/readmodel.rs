//! A projection generation's read model: one redb file holding the state (key -> value bytes) and
//! the checkpoint, always written together in one transaction.

use std::path::Path;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use crate::wasm::ReadView;

const STATE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("state");
/// `"checkpoint"`: the last log position the state reflects.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// How long, and for how many commits, progress may stay non-durable. A crash loses at most
/// this much progress, never consistency: redb reverts to its last durable commit, whose
/// checkpoint matches its state, and the projection replays the log from there.
const DURABLE_EVERY: Duration = Duration::from_secs(1);
const DURABLE_EVERY_COMMITS: u32 = 4;

/// Errors of the read model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadModelError {
    /// From redb.
    #[error("read model storage: {0}")]
    Storage(#[from] redb::Error),
    /// The writes a guest returned are malformed.
    #[error("malformed writes: {0}")]
    Writes(#[from] lantern_wire::DecodeError),
}

fn storage<E: Into<redb::Error>>(error: E) -> ReadModelError {
    ReadModelError::Storage(error.into())
}

/// One page of a prefix scan.
pub struct Page {
    /// Keys and values in key order.
    pub items: Vec<(String, Vec<u8>)>,
    /// The key to pass as `after` for the next page, `None` at the end.
    pub next: Option<String>,
    /// The checkpoint the page reflects.
    pub position: u64,
}

/// A read model file.
pub struct ReadModel {
    db: Database,
    checkpoint: watch::Sender<u64>,
    /// When the last durable commit was made, and how many non-durable ones followed it.
    durability: parking_lot::Mutex<(Instant, u32)>,
}

impl ReadModel {
    /// Opens or creates the file.
    pub fn open(path: &Path) -> Result<ReadModel, ReadModelError> {
        let db = Database::builder()
            .set_cache_size(32 << 20)
            .create(path)
            .map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        let checkpoint = {
            txn.open_table(STATE).map_err(storage)?;
            let meta = txn.open_table(META).map_err(storage)?;
            meta.get("checkpoint")
                .map_err(storage)?
                .map_or(0, |v| v.value())
        };
        txn.commit().map_err(storage)?;
        Ok(ReadModel {
            db,
            checkpoint: watch::Sender::new(checkpoint),
            durability: parking_lot::Mutex::new((Instant::now(), 0)),
        })
    }

    /// The last log position the state reflects.
    pub fn checkpoint(&self) -> u64 {
        *self.checkpoint.borrow()
    }

    /// Follows the checkpoint (for read-your-writes waits).
    pub fn watch_checkpoint(&self) -> watch::Receiver<u64> {
        self.checkpoint.subscribe()
    }

    /// Applies a batch's encoded writes and moves the checkpoint, in one transaction.
    pub fn apply(&self, writes: &[u8], checkpoint: u64) -> Result<(), ReadModelError> {
        let writes = lantern_wire::decode_writes(writes)?;
        let mut txn = self.db.begin_write().map_err(storage)?;
        let mut durability = self.durability.lock();
        let durable =
            durability.0.elapsed() >= DURABLE_EVERY || durability.1 + 1 >= DURABLE_EVERY_COMMITS;
        if !durable {
            txn.set_durability(Durability::None).map_err(storage)?;
        }
        {
            let mut state = txn.open_table(STATE).map_err(storage)?;
            for write in writes {
                match write {
                    lantern_wire::WriteView::Put(key, value) => {
                        state.insert(key, value).map_err(storage)?;
                    }
                    lantern_wire::WriteView::Delete(key) => {
                        state.remove(key).map_err(storage)?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert("checkpoint", checkpoint).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        *durability = if durable {
            (Instant::now(), 0)
        } else {
            (durability.0, durability.1 + 1)
        };
        self.checkpoint.send_replace(checkpoint);
        Ok(())
    }

    /// Whether commits since the last durable one would be lost by a crash.
    pub fn is_dirty(&self) -> bool {
        self.durability.lock().1 > 0
    }

    /// Makes everything committed so far durable (when idle, and at shutdown): an empty commit
    /// with the default, immediate durability persists the non-durable ones before it.
    pub fn flush(&self) -> Result<(), ReadModelError> {
        let mut durability = self.durability.lock();
        let txn = self.db.begin_write().map_err(storage)?;
        txn.commit().map_err(storage)?;
        *durability = (Instant::now(), 0);
        Ok(())
    }

    /// A consistent snapshot: its state and the checkpoint it reflects.
    pub fn snapshot(&self) -> Result<Snapshot, ReadModelError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let position = txn
            .open_table(META)
            .map_err(storage)?
            .get("checkpoint")
            .map_err(storage)?
            .map_or(0, |v| v.value());
        let state = txn.open_table(STATE).map_err(storage)?;
        Ok(Snapshot {
            state,
            position,
            failure: parking_lot::Mutex::new(None),
        })
    }
}

/// A read-only view of one committed state.
pub struct Snapshot {
    state: ReadOnlyTable<&'static str, &'static [u8]>,
    position: u64,
    /// The first read that failed during a guest call: the call's result must not be used.
    failure: parking_lot::Mutex<Option<String>>,
}

impl Snapshot {
    /// The checkpoint this snapshot reflects.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The value under `key`.
    pub fn value(&self, key: &str) -> Result<Option<Vec<u8>>, ReadModelError> {
        Ok(self
            .state
            .get(key)
            .map_err(storage)?
            .map(|v| v.value().to_vec()))
    }

    /// Up to `limit` entries with keys starting with `prefix` and greater than `after`.
    pub fn page(&self, prefix: &str, after: &str, limit: usize) -> Result<Page, ReadModelError> {
        let mut items = Vec::new();
        let range = if after >= prefix {
            self.state.range::<&str>(after..)
        } else {
            self.state.range::<&str>(prefix..)
        }
        .map_err(storage)?;
        let mut more = false;
        for entry in range {
            let (key, value) = entry.map_err(storage)?;
            let key = key.value();
            if key == after {
                continue;
            }
            if !key.starts_with(prefix) {
                break;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push((key.to_owned(), value.value().to_vec()));
        }
        let next = if more {
            items.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        Ok(Page {
            items,
            next,
            position: self.position,
        })
    }
}

impl Snapshot {
    fn record_failure(&self, error: ReadModelError) {
        let mut failure = self.failure.lock();
        failure.get_or_insert_with(|| error.to_string());
    }
}

impl ReadView for Snapshot {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.value(key).unwrap_or_else(|error| {
            self.record_failure(error);
            None
        })
    }

    fn scan(&self, prefix: &str, after: &str, limit: usize) -> Vec<(String, Vec<u8>)> {
        match self.page(prefix, after, limit) {
            Ok(page) => page.items,
            Err(error) => {
                self.record_failure(error);
                Vec::new()
            }
        }
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }
}
