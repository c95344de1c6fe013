//! A projection generation's read model: one redb file holding the state (key -> value bytes) and
//! the checkpoint, always written together in one transaction.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lantern_wire::WriteRange;
use redb::{Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use crate::wasm::ReadView;

const STATE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("state");
/// `"checkpoint"`: the last log position the state reflects.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// How long and over how many log positions progress may stay non-durable. A crash loses at most
/// this much progress, never consistency: redb reverts to its last durable commit, whose
/// checkpoint matches its state, and the projection replays the log from there. (A batch of
/// 65,536 events or more is made durable at once: an fsync costs little next to it.)
const DURABLE_EVERY: Duration = Duration::from_secs(1);
const DURABLE_EVERY_POSITIONS: u64 = 65_536;

/// The last durable commit: when it was made, how many non-durable ones followed it, and its
/// checkpoint.
struct Durable {
    at: Instant,
    commits_since: u32,
    checkpoint: u64,
}

impl Durable {
    fn now(checkpoint: u64) -> Self {
        Durable {
            at: Instant::now(),
            commits_since: 0,
            checkpoint,
        }
    }
}

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
    /// The database is being opened again after a storage error.
    #[error("read model storage: the file is being reopened after an error")]
    Closed,
    /// A commit would take the checkpoint back (commits out of order: a bug of the host's).
    #[error("read model: a commit to checkpoint {to} after one to {at} was refused")]
    Backwards { at: u64, to: u64 },
}

impl ReadModelError {
    /// True when it is not the module's doing: the file could not be read or written, or the
    /// host committed out of order.
    pub fn is_storage(&self) -> bool {
        matches!(
            self,
            ReadModelError::Storage(_) | ReadModelError::Closed | ReadModelError::Backwards { .. }
        )
    }
}

/// The checkpoint of a read model file, read without changing the file (for `lantern check`).
pub fn read_checkpoint(path: &Path) -> Result<u64, ReadModelError> {
    let db = redb::ReadOnlyDatabase::open(path).map_err(storage)?;
    let txn = db.begin_read().map_err(storage)?;
    let meta = txn.open_table(META).map_err(storage)?;
    Ok(meta
        .get("checkpoint")
        .map_err(storage)?
        .map_or(0, |v| v.value()))
}

/// Opens (or creates) the file and reads its checkpoint.
fn open_database(path: &Path) -> Result<(Database, u64), ReadModelError> {
    let db = crate::redb_file::create(path, 32 << 20).map_err(storage)?;
    let txn = db.begin_write().map_err(storage)?;
    let checkpoint = {
        txn.open_table(STATE).map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        meta.get("checkpoint")
            .map_err(storage)?
            .map_or(0, |v| v.value())
    };
    txn.commit().map_err(storage)?;
    Ok((db, checkpoint))
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
    path: std::path::PathBuf,
    /// `None` between closing a database that failed and opening it again.
    db: parking_lot::RwLock<Option<Arc<Database>>>,
    checkpoint: watch::Sender<u64>,
    durability: parking_lot::Mutex<Durable>,
}

impl ReadModel {
    /// Opens or creates the file.
    pub fn open(path: &Path) -> Result<ReadModel, ReadModelError> {
        let (db, checkpoint) = open_database(path)?;
        Ok(ReadModel {
            path: path.to_owned(),
            db: parking_lot::RwLock::new(Some(Arc::new(db))),
            checkpoint: watch::Sender::new(checkpoint),
            durability: parking_lot::Mutex::new(Durable::now(checkpoint)),
        })
    }

    fn db(&self) -> Result<Arc<Database>, ReadModelError> {
        self.db.read().clone().ok_or(ReadModelError::Closed)
    }

    /// After a storage error (redb then refuses every transaction until the file is opened
    /// again): closes the database and opens it anew. It comes back at its last durable commit,
    /// whose state matches its checkpoint, as after a crash; the runner replays from there.
    /// Blocking; fails while snapshots of the old database are still in use (try again later).
    pub fn reopen(&self) -> Result<(), ReadModelError> {
        // The same lock order as `apply` and `flush`: durability, then the database.
        let mut durability = self.durability.lock();
        let mut slot = self.db.write();
        *slot = None; // the old file handle closes once its last snapshot is dropped
        let (db, checkpoint) = open_database(&self.path)?;
        *durability = Durable::now(checkpoint);
        *slot = Some(Arc::new(db));
        self.checkpoint.send_replace(checkpoint);
        Ok(())
    }

    /// The last log position the state reflects.
    pub fn checkpoint(&self) -> u64 {
        *self.checkpoint.borrow()
    }

    /// Follows the checkpoint (for read-your-writes waits).
    pub fn watch_checkpoint(&self) -> watch::Receiver<u64> {
        self.checkpoint.subscribe()
    }

    /// Applies a batch's writes and moves the checkpoint, in one transaction. It is visible as
    /// soon as it is committed; when `DURABLE_EVERY` or `DURABLE_EVERY_POSITIONS` is due, it is
    /// made durable after that (an fsync), so that a live event never waits for one to be seen.
    pub fn apply(&self, writes: &WriteSet, checkpoint: u64) -> Result<(), ReadModelError> {
        // Tests slow commits down here (`sleep`) for read models whose path says so, to be sure
        // the next batch is handled while this one is still being committed.
        fail::fail_point!(
            "readmodel-commit",
            self.path
                .to_string_lossy()
                .contains("failpoint-slow-commit"),
            |_| Err(ReadModelError::Closed)
        );
        // And fail them, for read models whose path says so.
        fail::fail_point!(
            "readmodel-commit-fails",
            self.path
                .to_string_lossy()
                .contains("failpoint-failing-commit"),
            |_| Err(ReadModelError::Storage(redb::Error::Io(
                std::io::Error::from_raw_os_error(5)
            )))
        );
        // The same order as `flush`: the durability lock, then the write transaction.
        let mut durability = self.durability.lock();
        // A catch-up commits a batch while the next is handled: commits must still land in order.
        let at = *self.checkpoint.borrow();
        if checkpoint < at {
            return Err(ReadModelError::Backwards { at, to: checkpoint });
        }
        let db = self.db()?;
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::None).map_err(storage)?;
        {
            let mut state = txn.open_table(STATE).map_err(storage)?;
            for (key, value) in writes.iter() {
                match value {
                    Some(value) => {
                        state.insert(key, value).map_err(storage)?;
                    }
                    None => {
                        state.remove(key).map_err(storage)?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert("checkpoint", checkpoint).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        durability.commits_since += 1;
        self.checkpoint.send_replace(checkpoint);
        if durability.at.elapsed() >= DURABLE_EVERY
            || checkpoint.saturating_sub(durability.checkpoint) >= DURABLE_EVERY_POSITIONS
        {
            self.make_durable(&db, &mut durability, checkpoint)?;
        }
        Ok(())
    }

    /// Whether commits since the last durable one would be lost by a crash.
    pub fn is_dirty(&self) -> bool {
        self.durability.lock().commits_since > 0
    }

    /// Makes everything committed so far durable (when idle, and at shutdown): an empty commit
    /// with the default, immediate durability persists the non-durable ones before it.
    pub fn flush(&self) -> Result<(), ReadModelError> {
        let mut durability = self.durability.lock();
        let db = self.db()?;
        self.make_durable(&db, &mut durability, self.checkpoint())
    }

    /// An empty commit with the default, immediate durability, under the durability lock:
    /// everything committed up to `checkpoint` is durable once it returns.
    fn make_durable(
        &self,
        db: &Database,
        durability: &mut Durable,
        checkpoint: u64,
    ) -> Result<(), ReadModelError> {
        // Tests hold it back (`pause`) for read models whose path says so, to see that a commit
        // is visible before it is durable.
        fail::fail_point!(
            "readmodel-durable",
            self.path
                .to_string_lossy()
                .contains("failpoint-slow-durable"),
            |_| Err(ReadModelError::Closed)
        );
        db.begin_write()
            .map_err(storage)?
            .commit()
            .map_err(storage)?;
        *durability = Durable::now(checkpoint);
        Ok(())
    }

    /// A consistent snapshot: its state and the checkpoint it reflects.
    pub fn snapshot(&self) -> Result<Snapshot, ReadModelError> {
        let txn = self.db()?.begin_read().map_err(storage)?;
        let position = txn
            .open_table(META)
            .map_err(storage)?
            .get("checkpoint")
            .map_err(storage)?
            .map_or(0, |v| v.value());
        let state = txn.open_table(STATE).map_err(storage)?;
        Ok(Snapshot { state, position })
    }
}

/// A batch's writes, decoded, in key order, one per key: what `apply` commits, and what the next
/// batch reads over an older snapshot while it is being committed ([`Overlaid`]).
pub struct WriteSet {
    bytes: Vec<u8>,
    writes: Vec<WriteRange>,
}

impl WriteSet {
    /// Decodes a guest's encoded writes. Guests send them in any order; in key order the B-tree's
    /// inserts stay local. Of two writes of one key, the later wins.
    pub fn decode(bytes: Vec<u8>) -> Result<WriteSet, ReadModelError> {
        let mut writes = lantern_wire::decode_write_ranges(&bytes)?;
        // Stable: the writes of one key stay in their order, and the last of them is kept.
        writes.sort_by(|a, b| bytes[a.key.clone()].cmp(&bytes[b.key.clone()]));
        let mut unique: Vec<WriteRange> = Vec::with_capacity(writes.len());
        for write in writes {
            match unique.last_mut() {
                Some(last) if bytes[last.key.clone()] == bytes[write.key.clone()] => *last = write,
                _ => unique.push(write),
            }
        }
        Ok(WriteSet {
            bytes,
            writes: unique,
        })
    }

    /// No writes at all.
    pub fn empty() -> WriteSet {
        WriteSet {
            bytes: Vec::new(),
            writes: Vec::new(),
        }
    }

    fn entry(&self, write: &WriteRange) -> (&str, Option<&[u8]>) {
        // (Checked to be UTF-8 when decoded: the default is never used.)
        let key = std::str::from_utf8(&self.bytes[write.key.clone()]).unwrap_or_default();
        (key, write.value.clone().map(|value| &self.bytes[value]))
    }

    /// Each key with its new value (`None`: deleted), in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.writes.iter().map(|write| self.entry(write))
    }

    /// The write of `key`: `Some(None)` when it was deleted, `None` when it was not written.
    fn find(&self, key: &str) -> Option<Option<&[u8]>> {
        let at = self
            .writes
            .binary_search_by(|write| self.bytes[write.key.clone()].cmp(key.as_bytes()))
            .ok()?;
        Some(self.entry(&self.writes[at]).1)
    }

    /// The writes of keys starting with `prefix` and greater than `after`, in key order.
    fn range<'s>(
        &'s self,
        prefix: &'s str,
        after: &str,
    ) -> impl Iterator<Item = (&'s str, Option<&'s [u8]>)> + use<'s> {
        let key = |write: &WriteRange| &self.bytes[write.key.clone()];
        let start = self
            .writes
            .partition_point(|w| key(w) <= after.as_bytes() || key(w) < prefix.as_bytes());
        self.writes[start..]
            .iter()
            .map(|write| self.entry(write))
            .take_while(move |(key, _)| key.starts_with(prefix))
    }
}

/// A committed snapshot seen through the writes of a batch that is still being committed: the
/// next batch reads this, so the guest never waits for the commit before it.
pub struct Overlaid {
    /// Reflects every commit before `writes`' (and perhaps theirs: they win either way).
    pub snapshot: Snapshot,
    pub writes: Arc<WriteSet>,
}

impl ReadView for Overlaid {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self.writes.find(key) {
            Some(written) => Ok(written.map(<[u8]>::to_vec)),
            None => self.snapshot.get(key),
        }
    }

    fn scan(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut out = Vec::new();
        let mut cursor = after.to_owned();
        while out.len() < limit {
            let page = self
                .snapshot
                .page(prefix, &cursor, limit)
                .map_err(|e| e.to_string())?;
            // The committed keys are complete up to the page's last one when it has more.
            let bound = page.next;
            let mut committed = page.items.into_iter().peekable();
            let mut written = self
                .writes
                .range(prefix, &cursor)
                .take_while(|(key, _)| bound.as_deref().is_none_or(|bound| *key <= bound))
                .peekable();
            while out.len() < limit {
                let next_written = written.peek().map(|(key, _)| *key);
                let next_committed = committed.peek().map(|(key, _)| key.as_str());
                match (next_written, next_committed) {
                    (None, None) => break,
                    (Some(w), c) if c.is_none_or(|c| w <= c) => {
                        if c == Some(w) {
                            committed.next();
                        }
                        if let Some((key, Some(value))) = written.next() {
                            out.push((key.to_owned(), value.to_vec()));
                        }
                    }
                    _ => out.extend(committed.next()),
                }
            }
            match bound {
                Some(bound) => cursor = bound,
                None => break,
            }
        }
        Ok(out)
    }
}

/// A read-only view of one committed state.
pub struct Snapshot {
    state: ReadOnlyTable<&'static str, &'static [u8]>,
    position: u64,
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

impl ReadView for Snapshot {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.value(key).map_err(|e| e.to_string())
    }

    fn scan(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, String> {
        self.page(prefix, after, limit)
            .map(|page| page.items)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::ReadView;

    #[test]
    fn applies_and_flushes_from_two_threads_never_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        let model = std::sync::Arc::new(ReadModel::open(&dir.path().join("m.redb")).unwrap());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let applier = {
            let (model, done) = (model.clone(), done_tx.clone());
            std::thread::spawn(move || {
                let mut writes = lantern_wire::WritesEncoder::default();
                writes.push(lantern_wire::WriteView::Put("k", b"v"));
                let writes = WriteSet::decode(writes.finish()).unwrap();
                for checkpoint in 1..=3000 {
                    model.apply(&writes, checkpoint).unwrap();
                }
                done.send(()).unwrap();
            })
        };
        let flusher = {
            let model = model.clone();
            std::thread::spawn(move || {
                for _ in 0..3000 {
                    model.flush().unwrap();
                }
                done_tx.send(()).unwrap();
            })
        };
        for _ in 0..2 {
            done_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("apply and flush finish: no lock-order deadlock");
        }
        applier.join().unwrap();
        flusher.join().unwrap();
        assert_eq!(model.checkpoint(), 3000);
    }

    #[test]
    fn writes_in_any_order_apply_and_the_later_write_of_a_key_wins() {
        let dir = tempfile::tempdir().unwrap();
        let model = ReadModel::open(&dir.path().join("m.redb")).unwrap();
        let mut writes = lantern_wire::WritesEncoder::default();
        writes.push(lantern_wire::WriteView::Put("c", b"1"));
        writes.push(lantern_wire::WriteView::Put("b", b"1"));
        writes.push(lantern_wire::WriteView::Delete("c"));
        writes.push(lantern_wire::WriteView::Put("a", b"1"));
        writes.push(lantern_wire::WriteView::Put("b", b"2"));
        model
            .apply(&WriteSet::decode(writes.finish()).unwrap(), 1)
            .unwrap();
        let snapshot = model.snapshot().unwrap();
        assert_eq!(snapshot.get("a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(snapshot.get("b").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(snapshot.get("c").unwrap(), None);
    }

    #[test]
    fn a_commit_that_would_take_the_checkpoint_back_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let model = ReadModel::open(&dir.path().join("m.redb")).unwrap();
        let put = |value: &[u8]| {
            let mut writes = lantern_wire::WritesEncoder::default();
            writes.push(lantern_wire::WriteView::Put("k", value));
            WriteSet::decode(writes.finish()).unwrap()
        };
        model.apply(&put(b"5"), 5).unwrap();
        let refused = model.apply(&put(b"3"), 3).unwrap_err();
        assert!(refused.is_storage(), "not the module's doing: {refused}");
        assert_eq!(model.checkpoint(), 5);
        let snapshot = model.snapshot().unwrap();
        assert_eq!(snapshot.get("k").unwrap().as_deref(), Some(&b"5"[..]));
        model.apply(&put(b"6"), 6).unwrap();
        assert_eq!(model.checkpoint(), 6);
    }
}
