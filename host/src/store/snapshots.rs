//! Snapshots of aggregates (`snapshots.redb`): per stream, the newest state a client saved at one of
//! the stream's revisions. Not derived data (only the client can make a state), so the file is
//! durable (each save is fsync'd before it is answered), goes into backups and is copied to
//! followers.
//!
//! Tables: `snapshots` (stream -> revision, position of that revision's event, recorded time,
//! change number, state) and `changes` (change number -> stream). Change numbers grow with every
//! save; a stream's older change is removed when it is replaced, so `changes` lists each stored
//! snapshot once, in the order a follower must copy them, and its last key is the newest change.
//! A follower keeps its leader's change numbers: its own last change is where it resumes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::RwLock;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::StoreError;

const SNAPSHOTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("snapshots");
const CHANGES: TableDefinition<'_, u64, &str> = TableDefinition::new("changes");
/// revision, position, recorded_at_micros, change: four little-endian u64 before the state.
const HEADER: usize = 32;

/// One stream's stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream it belongs to.
    pub stream: String,
    /// The revision whose state it is.
    pub revision: u64,
    /// The log position of that revision's event.
    pub position: u64,
    /// When it was saved (on the leader), microseconds since the Unix epoch.
    pub recorded_at_micros: u64,
    /// Its change number (see the module's documentation).
    pub change: u64,
    /// JSON text, exactly as sent.
    pub state: Bytes,
}

impl Snapshot {
    /// When it was saved.
    pub fn recorded_at(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_micros(self.recorded_at_micros)
    }

    fn encode(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(HEADER + self.state.len());
        for field in [
            self.revision,
            self.position,
            self.recorded_at_micros,
            self.change,
        ] {
            value.extend_from_slice(&field.to_le_bytes());
        }
        value.extend_from_slice(&self.state);
        value
    }

    fn decode(stream: &str, value: &[u8]) -> Result<Snapshot, StoreError> {
        if value.len() < HEADER {
            return Err(StoreError::Corrupt(format!(
                "the snapshot of {stream:?} is {} bytes, shorter than its header",
                value.len()
            )));
        }
        let field = |i: usize| u64::from_le_bytes(value[i * 8..i * 8 + 8].try_into().unwrap());
        Ok(Snapshot {
            stream: stream.to_owned(),
            revision: field(0),
            position: field(1),
            recorded_at_micros: field(2),
            change: field(3),
            state: Bytes::copy_from_slice(&value[HEADER..]),
        })
    }
}

/// What a save did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// False when the stored snapshot is at a later revision (it is kept).
    pub stored: bool,
    /// The revision of the snapshot the stream has now.
    pub current_revision: u64,
}

/// The snapshots file.
pub(super) struct Snapshots {
    path: PathBuf,
    /// `None` after a storage error: redb refuses all work on that handle, so the next call opens
    /// the file again (it comes back at its last commit).
    db: RwLock<Option<Arc<Database>>>,
}

/// A redb error as the store's: a full disk is `StorageFull` (saves resume once there is
/// space), any other I/O error `StorageUnavailable`.
fn storage(error: impl Into<redb::Error>) -> StoreError {
    let error: redb::Error = error.into();
    if let redb::Error::Io(io) = &error
        && io.raw_os_error() == Some(28)
    {
        return StoreError::StorageFull(format!("saving the snapshot: {io}"));
    }
    StoreError::StorageUnavailable(format!("the snapshots file: {error}"))
}

impl Snapshots {
    pub(super) fn open(path: &Path) -> Result<Snapshots, StoreError> {
        let snapshots = Snapshots {
            path: path.to_owned(),
            db: RwLock::new(None),
        };
        snapshots.db()?;
        Ok(snapshots)
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = self.db.read().clone() {
            return Ok(db);
        }
        let mut slot = self.db.write();
        if let Some(db) = slot.clone() {
            return Ok(db);
        }
        let db = crate::redb_file::create(&self.path, 4 << 20).map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(SNAPSHOTS).map_err(storage)?;
        txn.open_table(CHANGES).map_err(storage)?;
        txn.commit().map_err(storage)?;
        let db = Arc::new(db);
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Runs `work` on the database; after a storage error, the handle is dropped so that the next
    /// call opens the file again.
    fn with<T>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.db()?;
        let result = work(&db);
        if matches!(
            result,
            Err(StoreError::StorageFull(_) | StoreError::StorageUnavailable(_))
        ) {
            let mut slot = self.db.write();
            if slot
                .as_ref()
                .is_some_and(|current| Arc::ptr_eq(current, &db))
            {
                *slot = None;
            }
        }
        result
    }

    /// The stream's snapshot.
    pub(super) fn get(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        self.with(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(SNAPSHOTS).map_err(storage)?;
            let value = table.get(stream).map_err(storage)?;
            value
                .map(|value| Snapshot::decode(stream, value.value()))
                .transpose()
        })
    }

    /// Saves a client's snapshot unless the stored one is at a later revision; durable when it
    /// returns.
    pub(super) fn save(
        &self,
        stream: &str,
        revision: u64,
        position: u64,
        state: Bytes,
    ) -> Result<Saved, StoreError> {
        self.with(|db| {
            let txn = db.begin_write().map_err(storage)?;
            let saved = {
                let mut snapshots = txn.open_table(SNAPSHOTS).map_err(storage)?;
                let mut changes = txn.open_table(CHANGES).map_err(storage)?;
                let old = snapshots
                    .get(stream)
                    .map_err(storage)?
                    .map(|v| Snapshot::decode(stream, v.value()))
                    .transpose()?;
                match old {
                    Some(old) if old.revision > revision => Saved {
                        stored: false,
                        current_revision: old.revision,
                    },
                    old => {
                        let change = changes
                            .last()
                            .map_err(storage)?
                            .map_or(1, |(k, _)| k.value() + 1);
                        let snapshot = Snapshot {
                            stream: stream.to_owned(),
                            revision,
                            position,
                            recorded_at_micros: now_micros(),
                            change,
                            state,
                        };
                        write(&mut snapshots, &mut changes, old, &snapshot)?;
                        Saved {
                            stored: true,
                            current_revision: revision,
                        }
                    }
                }
            };
            txn.commit().map_err(storage)?;
            Ok(saved)
        })
    }

    /// Stores a snapshot copied from the leader as it is (its change number and time included).
    pub(super) fn copy(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.with(|db| {
            let txn = db.begin_write().map_err(storage)?;
            {
                let mut snapshots = txn.open_table(SNAPSHOTS).map_err(storage)?;
                let mut changes = txn.open_table(CHANGES).map_err(storage)?;
                let old = snapshots
                    .get(snapshot.stream.as_str())
                    .map_err(storage)?
                    .map(|v| Snapshot::decode(&snapshot.stream, v.value()))
                    .transpose()?;
                write(&mut snapshots, &mut changes, old, snapshot)?;
            }
            txn.commit().map_err(storage)
        })
    }

    /// Up to `limit` stored snapshots with a change number after `after`, in change order.
    pub(super) fn changes_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Snapshot>, StoreError> {
        self.with(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let changes = txn.open_table(CHANGES).map_err(storage)?;
            let snapshots = txn.open_table(SNAPSHOTS).map_err(storage)?;
            let mut out = Vec::new();
            for entry in changes
                .range(after.saturating_add(1)..)
                .map_err(storage)?
                .take(limit)
            {
                let (change, stream) = entry.map_err(storage)?;
                let stream = stream.value();
                let value = snapshots.get(stream).map_err(storage)?.ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "snapshot change {} names {stream:?}, which has no snapshot",
                        change.value()
                    ))
                })?;
                out.push(Snapshot::decode(stream, value.value())?);
            }
            Ok(out)
        })
    }

    /// The newest change number (0 when there is none).
    pub(super) fn last_change(&self) -> Result<u64, StoreError> {
        self.with(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let changes = txn.open_table(CHANGES).map_err(storage)?;
            Ok(changes
                .last()
                .map_err(storage)?
                .map_or(0, |(k, _)| k.value()))
        })
    }

    /// Writes a new snapshots file at `path` holding every snapshot at a position up to
    /// `max_position`, read in one transaction (for a backup of the log up to that position).
    pub(super) fn copy_to(&self, path: &Path, max_position: u64) -> Result<u64, StoreError> {
        self.with(|db| {
            let source = db.begin_read().map_err(storage)?;
            let snapshots = source.open_table(SNAPSHOTS).map_err(storage)?;
            let target = Database::create(path).map_err(storage)?;
            let txn = target.begin_write().map_err(storage)?;
            let mut copied = 0;
            {
                let mut out_snapshots = txn.open_table(SNAPSHOTS).map_err(storage)?;
                let mut out_changes = txn.open_table(CHANGES).map_err(storage)?;
                for entry in snapshots.iter().map_err(storage)? {
                    let (stream, value) = entry.map_err(storage)?;
                    let snapshot = Snapshot::decode(stream.value(), value.value())?;
                    if snapshot.position <= max_position {
                        write(&mut out_snapshots, &mut out_changes, None, &snapshot)?;
                        copied += 1;
                    }
                }
            }
            txn.commit().map_err(storage)?;
            Ok(copied)
        })
    }
}

/// Every snapshot in the file at `path`, read without changing it (for `lantern check`); also
/// checks that the change table lists each snapshot exactly once.
pub(super) fn read_file(path: &Path) -> Result<Vec<Snapshot>, StoreError> {
    let db = redb::ReadOnlyDatabase::open(path).map_err(storage)?;
    let txn = db.begin_read().map_err(storage)?;
    let snapshots_table = txn.open_table(SNAPSHOTS).map_err(storage)?;
    let changes = txn.open_table(CHANGES).map_err(storage)?;
    let mut snapshots = Vec::new();
    for entry in snapshots_table.iter().map_err(storage)? {
        let (stream, value) = entry.map_err(storage)?;
        let snapshot = Snapshot::decode(stream.value(), value.value())?;
        let listed = changes.get(snapshot.change).map_err(storage)?;
        if listed.as_ref().map(|s| s.value()) != Some(snapshot.stream.as_str()) {
            return Err(StoreError::Corrupt(format!(
                "the snapshot of {:?} has change {}, which the change table does not give it",
                snapshot.stream, snapshot.change
            )));
        }
        snapshots.push(snapshot);
    }
    let listed = changes.len().map_err(storage)?;
    if listed != snapshots.len() as u64 {
        return Err(StoreError::Corrupt(format!(
            "the change table lists {listed} snapshots, the file holds {}",
            snapshots.len()
        )));
    }
    Ok(snapshots)
}

/// Removes, durably, every snapshot at a position from `position` on (a repair that cuts the log
/// there); returns how many.
pub(super) fn remove_from(path: &Path, position: u64) -> Result<u64, StoreError> {
    let db = crate::redb_file::create(path, 1 << 20).map_err(storage)?;
    let txn = db.begin_write().map_err(storage)?;
    let mut removed = 0;
    {
        let mut snapshots = txn.open_table(SNAPSHOTS).map_err(storage)?;
        let mut changes = txn.open_table(CHANGES).map_err(storage)?;
        let mut gone = Vec::new();
        for entry in snapshots.iter().map_err(storage)? {
            let (stream, value) = entry.map_err(storage)?;
            let snapshot = Snapshot::decode(stream.value(), value.value())?;
            if snapshot.position >= position {
                gone.push(snapshot);
            }
        }
        for snapshot in gone {
            snapshots
                .remove(snapshot.stream.as_str())
                .map_err(storage)?;
            changes.remove(snapshot.change).map_err(storage)?;
            removed += 1;
        }
    }
    txn.commit().map_err(storage)?;
    Ok(removed)
}

fn write(
    snapshots: &mut redb::Table<'_, &str, &[u8]>,
    changes: &mut redb::Table<'_, u64, &str>,
    old: Option<Snapshot>,
    snapshot: &Snapshot,
) -> Result<(), StoreError> {
    if let Some(old) = old {
        changes.remove(old.change).map_err(storage)?;
    }
    snapshots
        .insert(snapshot.stream.as_str(), snapshot.encode().as_slice())
        .map_err(storage)?;
    changes
        .insert(snapshot.change, snapshot.stream.as_str())
        .map_err(storage)?;
    Ok(())
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
