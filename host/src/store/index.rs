//! Indexes derived from the log: redb tables written in large batches by a background thread,
//! plus the tail not yet indexed, held in memory, so every lookup is complete and exact.
//!
//! A lookup takes the tail's read lock and then opens a redb read transaction: chunks leave the
//! tail only after their redb commit, so the two together always cover the whole log up to the
//! committed head. A chunk whose events the transaction already holds is skipped.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};

use parking_lot::RwLock;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use uuid::Uuid;

use super::StoreError;

/// `(stream, first revision) -> (position, offset, count)`: a run of `count` events of the stream
/// at consecutive revisions and consecutive positions, so their records follow each other in the
/// log. One entry per run (at most `MAX_RUN` events) instead of one per event: a batched append of
/// 1000 events costs 16 inserts, not 1000.
pub(crate) const STREAMS: TableDefinition<'_, (&str, u64), (u64, u64, u64)> =
    TableDefinition::new("streams");
/// `event id -> (position, offset)`.
pub(crate) const IDS: TableDefinition<'_, u128, (u64, u64)> = TableDefinition::new("ids");
/// `position -> offset`, for every position `p` with `p % POSITION_STRIDE == 1`: reading the log
/// from anywhere starts at most `POSITION_STRIDE - 1` records early and skips forward.
pub(crate) const POSITIONS: TableDefinition<'_, u64, u64> = TableDefinition::new("positions");
/// `"indexed_position"` (the last position in the tables) and `"indexed_offset"` (where the log
/// continues after it).
pub(crate) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

pub(crate) const POSITION_STRIDE: u64 = 64;
/// Longest run of one stream entry: a read scans at most this many records to reach its event.
const MAX_RUN: u64 = 64;

/// A stream's name and where its last event is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    /// The stream's name.
    pub name: String,
    /// Revision of its last event.
    pub last_revision: u64,
    /// Position of its last event.
    pub last_position: u64,
}

/// Where an event lives: its position and the byte offset of its frame in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub position: u64,
    pub offset: u64,
}

/// One event of a stream, as the in-memory tail keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamEntry {
    revision: u64,
    location: Location,
}

/// Events of a stream at consecutive revisions and positions, whose records are contiguous in
/// the log starting at `location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamRun {
    /// Revision of the first event.
    pub revision: u64,
    /// Where the first event lives.
    pub location: Location,
    /// Events in the run, at least 1.
    pub count: u64,
}

impl StreamRun {
    fn last_revision(&self) -> u64 {
        self.revision + self.count - 1
    }
}

impl From<StreamEntry> for StreamRun {
    fn from(entry: StreamEntry) -> Self {
        StreamRun {
            revision: entry.revision,
            location: entry.location,
            count: 1,
        }
    }
}

/// Consecutive events, by position, not yet in redb.
#[derive(Default)]
pub(crate) struct Chunk {
    first_position: u64,
    offsets: Vec<u64>,
    streams: HashMap<String, Vec<StreamEntry>>,
    ids: HashMap<Uuid, Location>,
}

impl Chunk {
    fn new(first_position: u64) -> Self {
        Chunk {
            first_position,
            ..Chunk::default()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.offsets.len()
    }

    fn last_position(&self) -> u64 {
        self.first_position + self.offsets.len() as u64 - 1
    }

    fn offset_of(&self, position: u64) -> Option<u64> {
        let index = position.checked_sub(self.first_position)?;
        self.offsets.get(index as usize).copied()
    }
}

/// What the writer hands over for each event it committed.
pub(crate) struct Indexed<'a> {
    pub stream: &'a str,
    pub revision: u64,
    pub id: Uuid,
    pub location: Location,
}

/// The committed end of the log: readers never look past it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Committed {
    pub head_position: u64,
    pub end_offset: u64,
}

struct Tail {
    /// Sealed chunks waiting for (or being written by) the indexer, oldest first.
    sealed: VecDeque<Arc<Chunk>>,
    /// The chunk the writer is filling.
    open: Chunk,
    committed: Committed,
}

/// The indexes: redb plus the in-memory tail.
pub(crate) struct Index {
    db: Database,
    tail: RwLock<Tail>,
    chunk_events: usize,
}

impl Index {
    /// Opens (or creates) the index file and returns it with its `Committed` high-water mark.
    pub(crate) fn open(
        path: &Path,
        chunk_events: usize,
        cache_bytes: usize,
    ) -> Result<(Self, Committed), StoreError> {
        let db = crate::redb_file::create(path, cache_bytes).map_err(redb::Error::from)?;
        let txn = db.begin_write().map_err(redb::Error::from)?;
        let indexed = {
            // Create every table so read transactions never meet a missing one.
            txn.open_table(STREAMS).map_err(redb::Error::from)?;
            txn.open_table(IDS).map_err(redb::Error::from)?;
            txn.open_table(POSITIONS).map_err(redb::Error::from)?;
            let meta = txn.open_table(META).map_err(redb::Error::from)?;
            let get = |key| -> Result<u64, StoreError> {
                Ok(meta
                    .get(key)
                    .map_err(redb::Error::from)?
                    .map_or(0, |v| v.value()))
            };
            Committed {
                head_position: get("indexed_position")?,
                end_offset: get("indexed_offset")?,
            }
        };
        txn.commit().map_err(redb::Error::from)?;
        let tail = Tail {
            sealed: VecDeque::new(),
            open: Chunk::new(indexed.head_position + 1),
            committed: indexed,
        };
        Ok((
            Index {
                db,
                tail: RwLock::new(tail),
                chunk_events,
            },
            indexed,
        ))
    }

    /// Adds the events of one committed group and moves the high-water mark. Returns a chunk to
    /// hand to the indexer when the open one is full.
    pub(crate) fn publish<'a>(
        &self,
        events: impl IntoIterator<Item = Indexed<'a>>,
        committed: Committed,
    ) -> Option<Arc<Chunk>> {
        let mut tail = self.tail.write();
        for event in events {
            let chunk = &mut tail.open;
            debug_assert_eq!(
                chunk.first_position + chunk.offsets.len() as u64,
                event.location.position
            );
            chunk.offsets.push(event.location.offset);
            chunk.ids.insert(event.id, event.location);
            let entry = StreamEntry {
                revision: event.revision,
                location: event.location,
            };
            match chunk.streams.get_mut(event.stream) {
                Some(entries) => entries.push(entry),
                None => {
                    chunk.streams.insert(event.stream.to_owned(), vec![entry]);
                }
            }
        }
        tail.committed = committed;
        if tail.open.len() < self.chunk_events {
            return None;
        }
        let next = Chunk::new(committed.head_position + 1);
        let full = Arc::new(std::mem::replace(&mut tail.open, next));
        tail.sealed.push_back(full.clone());
        Some(full)
    }

    /// Seals the open chunk, however small, so a clean shutdown can index everything.
    pub(crate) fn seal_open(&self) -> Option<Arc<Chunk>> {
        let mut tail = self.tail.write();
        if tail.open.len() == 0 {
            return None;
        }
        let next = Chunk::new(tail.committed.head_position + 1);
        let full = Arc::new(std::mem::replace(&mut tail.open, next));
        tail.sealed.push_back(full.clone());
        Some(full)
    }

    /// Runs `lookup` over the tail chunks (newest first) that redb does not hold yet, with the
    /// read transaction that complements them.
    fn snapshot<T>(
        &self,
        lookup: impl FnOnce(&[&Chunk], &ReadTransaction, Committed) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tail = self.tail.read();
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let indexed_position = txn
            .open_table(META)
            .map_err(redb::Error::from)?
            .get("indexed_position")
            .map_err(redb::Error::from)?
            .map_or(0, |v| v.value());
        let mut chunks: Vec<&Chunk> = Vec::with_capacity(tail.sealed.len() + 1);
        if tail.open.len() > 0 {
            chunks.push(&tail.open);
        }
        chunks.extend(
            tail.sealed
                .iter()
                .rev()
                .map(|c| &**c)
                .filter(|c| c.first_position > indexed_position),
        );
        lookup(&chunks, &txn, tail.committed)
    }

    /// Events in the tail: committed, not yet in redb.
    pub(crate) fn unindexed_events(&self) -> u64 {
        let tail = self.tail.read();
        (tail.open.len() + tail.sealed.iter().map(|c| c.len()).sum::<usize>()) as u64
    }

    /// The committed end of the log now.
    pub(crate) fn committed(&self) -> Committed {
        self.tail.read().committed
    }

    /// The first answer `find` gives in the in-memory chunks, newest first, without a read
    /// transaction. Every chunk still in memory holds true entries (the ones redb has too
    /// are copies), and a newer chunk is asked first: the writer's lookups for the streams and
    /// ids it just wrote stop here.
    fn in_tail<T>(&self, find: impl Fn(&Chunk) -> Option<T>) -> Option<T> {
        let tail = self.tail.read();
        std::iter::once(&tail.open)
            .chain(tail.sealed.iter().rev().map(|c| &**c))
            .find_map(find)
    }

    /// The revision of the stream's last event, `None` for a stream with no events.
    pub(crate) fn stream_head(&self, stream: &str) -> Result<Option<u64>, StoreError> {
        let last_in = |chunk: &Chunk| chunk.streams.get(stream)?.last().map(|e| e.revision);
        if let Some(revision) = self.in_tail(last_in) {
            return Ok(Some(revision));
        }
        self.snapshot(|chunks, txn, _| {
            for chunk in chunks {
                if let Some(last) = chunk.streams.get(stream).and_then(|e| e.last()) {
                    return Ok(Some(last.revision));
                }
            }
            let table = txn.open_table(STREAMS).map_err(redb::Error::from)?;
            let last = table
                .range((stream, 0)..=(stream, u64::MAX))
                .map_err(redb::Error::from)?
                .next_back()
                .map(stream_run)
                .transpose()?;
            Ok(last.map(|run| run.last_revision()))
        })
    }

    /// Runs of `stream` holding at least `limit` events from revision `from` (inclusive) in the
    /// direction asked (fewer at the stream's end), in that direction. The first run may start
    /// before `from` (forward) or end after it (backward).
    pub(crate) fn stream_runs(
        &self,
        stream: &str,
        from: u64,
        backward: bool,
        limit: usize,
    ) -> Result<Vec<StreamRun>, StoreError> {
        self.snapshot(|chunks, txn, _| {
            // Oldest first: redb holds older revisions than the tail, chunks in position order.
            let tail_entries = chunks
                .iter()
                .rev()
                .filter_map(|c| c.streams.get(stream))
                .flatten();
            let table = txn.open_table(STREAMS).map_err(redb::Error::from)?;
            let limit = limit as u64;
            let mut out = Vec::new();
            let mut covered = 0u64;
            if backward {
                let newest: Vec<&StreamEntry> =
                    tail_entries.filter(|e| e.revision <= from).collect();
                for entry in newest.into_iter().rev().take(limit as usize) {
                    out.push(StreamRun::from(*entry));
                    covered += 1;
                }
                if covered < limit {
                    let range = table
                        .range((stream, 0)..=(stream, from))
                        .map_err(redb::Error::from)?;
                    for row in range.rev() {
                        let run = stream_run(row)?;
                        covered += run.last_revision().min(from) - run.revision + 1;
                        out.push(run);
                        if covered >= limit {
                            break;
                        }
                    }
                }
            } else {
                // The run holding `from` starts at or before it.
                let floor = table
                    .range((stream, 0)..=(stream, from))
                    .map_err(redb::Error::from)?
                    .next_back()
                    .map(stream_run)
                    .transpose()?
                    .filter(|run| run.last_revision() >= from);
                let after = table
                    .range((stream, from.saturating_add(1))..=(stream, u64::MAX))
                    .map_err(redb::Error::from)?;
                let mut redb_runs = floor.into_iter().map(Ok).chain(after.map(stream_run));
                while covered < limit {
                    let Some(run) = redb_runs.next().transpose()? else {
                        break;
                    };
                    covered += run.last_revision() - run.revision.max(from) + 1;
                    out.push(run);
                }
                let remaining = limit.saturating_sub(covered) as usize;
                out.extend(
                    tail_entries
                        .filter(|e| e.revision >= from)
                        .take(remaining)
                        .map(|e| StreamRun::from(*e)),
                );
            }
            Ok(out)
        })
    }

    /// Up to `limit` streams whose names start with `prefix` and sort strictly after `after`
    /// (byte order), each with its last revision and position.
    pub(crate) fn stream_list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamSummary>, StoreError> {
        let wanted = |name: &str| name.starts_with(prefix) && after.is_none_or(|a| name > a);
        self.snapshot(|chunks, txn, _| {
            // The tail's streams (their newest entry wins: chunks come newest first)...
            let mut found: std::collections::BTreeMap<String, StreamSummary> = Default::default();
            for chunk in chunks {
                for (name, entries) in &chunk.streams {
                    if let (true, Some(last)) = (wanted(name), entries.last()) {
                        found.entry(name.clone()).or_insert(StreamSummary {
                            name: name.clone(),
                            last_revision: last.revision,
                            last_position: last.location.position,
                        });
                    }
                }
            }
            // ...merged with the first `limit` of redb's, one seek per stream.
            use std::ops::Bound::{Excluded, Included, Unbounded};
            let table = txn.open_table(STREAMS).map_err(redb::Error::from)?;
            // Where the scan continues: after every row of `cursor`'s stream (revisions never
            // reach u64::MAX), or from the prefix's first row.
            let mut cursor: Option<String> = after.filter(|a| *a >= prefix).map(str::to_owned);
            for _ in 0..limit {
                let start = match &cursor {
                    Some(name) => Excluded((name.as_str(), u64::MAX)),
                    None => Included((prefix, 0)),
                };
                let next = table
                    .range::<(&str, u64)>((start, Unbounded))
                    .map_err(redb::Error::from)?
                    .next()
                    .transpose()
                    .map_err(redb::Error::from)?
                    .map(|(key, _)| key.value().0.to_owned());
                let Some(name) = next.filter(|name| name.starts_with(prefix)) else {
                    break;
                };
                let last = table
                    .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
                    .map_err(redb::Error::from)?
                    .next_back()
                    .map(stream_run)
                    .transpose()?;
                if let Some(last) = last {
                    found.entry(name.clone()).or_insert(StreamSummary {
                        name: name.clone(),
                        last_revision: last.last_revision(),
                        last_position: last.location.position + last.count - 1,
                    });
                }
                cursor = Some(name);
            }
            Ok(found.into_values().take(limit).collect())
        })
    }

    /// Where the event with this id lives, if it was written.
    pub(crate) fn id_location(&self, id: Uuid) -> Result<Option<Location>, StoreError> {
        if let Some(location) = self.in_tail(|chunk| chunk.ids.get(&id).copied()) {
            return Ok(Some(location));
        }
        self.snapshot(|chunks, txn, _| {
            for chunk in chunks {
                if let Some(location) = chunk.ids.get(&id) {
                    return Ok(Some(*location));
                }
            }
            let table = txn.open_table(IDS).map_err(redb::Error::from)?;
            let found = table.get(id.as_u128()).map_err(redb::Error::from)?;
            Ok(found.map(|v| {
                let (position, offset) = v.value();
                Location { position, offset }
            }))
        })
    }

    /// A place to start reading the log for `position` (at or before it), and the committed end.
    /// `None` when `position` is past the head.
    pub(crate) fn seek(&self, position: u64) -> Result<(Option<Location>, Committed), StoreError> {
        self.snapshot(|chunks, txn, committed| {
            if position > committed.head_position {
                return Ok((None, committed));
            }
            for chunk in chunks {
                if let Some(offset) = chunk.offset_of(position) {
                    return Ok((Some(Location { position, offset }), committed));
                }
            }
            let table = txn.open_table(POSITIONS).map_err(redb::Error::from)?;
            let floor = table
                .range(..=position)
                .map_err(redb::Error::from)?
                .next_back()
                .transpose()
                .map_err(redb::Error::from)?;
            let location = match floor {
                Some((key, value)) => Location {
                    position: key.value(),
                    offset: value.value(),
                },
                None => Location {
                    position: 1,
                    offset: 0,
                },
            };
            Ok((Some(location), committed))
        })
    }

    /// Writes one sealed chunk into redb in a single transaction, then drops it from the tail.
    fn index_chunk(&self, chunk: &Chunk) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut streams = txn.open_table(STREAMS).map_err(redb::Error::from)?;
            // Sorted keys keep the B-tree inserts local: each stream's leaf is touched once.
            let mut names: Vec<&String> = chunk.streams.keys().collect();
            names.sort_unstable();
            for name in names {
                for run in runs(&chunk.streams[name]) {
                    let location = run.location;
                    streams
                        .insert(
                            (name.as_str(), run.revision),
                            (location.position, location.offset, run.count),
                        )
                        .map_err(redb::Error::from)?;
                }
            }
            let mut ids = txn.open_table(IDS).map_err(redb::Error::from)?;
            let mut sorted_ids: Vec<(&Uuid, &Location)> = chunk.ids.iter().collect();
            sorted_ids.sort_unstable_by_key(|(id, _)| **id);
            for (id, location) in sorted_ids {
                ids.insert(id.as_u128(), (location.position, location.offset))
                    .map_err(redb::Error::from)?;
            }
            let mut positions = txn.open_table(POSITIONS).map_err(redb::Error::from)?;
            for (index, offset) in chunk.offsets.iter().enumerate() {
                let position = chunk.first_position + index as u64;
                if position % POSITION_STRIDE == 1 {
                    positions
                        .insert(position, *offset)
                        .map_err(redb::Error::from)?;
                }
            }
            let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
            let last_position = chunk.last_position();
            meta.insert("indexed_position", last_position)
                .map_err(redb::Error::from)?;
            // Recovery rescans the log from this record, skipping what is already indexed.
            let last_offset = *chunk.offsets.last().expect("sealed chunks are not empty");
            meta.insert("indexed_offset", last_offset)
                .map_err(redb::Error::from)?;
        }
        txn.commit().map_err(redb::Error::from)?;
        let mut tail = self.tail.write();
        if tail
            .sealed
            .front()
            .is_some_and(|c| c.first_position == chunk.first_position)
        {
            tail.sealed.pop_front();
        }
        Ok(())
    }

    /// The indexer thread's loop: one redb transaction per sealed chunk, in order.
    /// Indexes sealed chunks until the channel closes; an error stops it (the caller reports it).
    pub(crate) fn run_indexer(&self, chunks: Receiver<Arc<Chunk>>) -> Result<(), StoreError> {
        for chunk in chunks {
            self.index_chunk(&chunk)?;
        }
        Ok(())
    }
}

/// Groups a stream's entries (in revision order) into runs of contiguous records.
fn runs(entries: &[StreamEntry]) -> Vec<StreamRun> {
    let mut out: Vec<StreamRun> = Vec::new();
    for entry in entries {
        match out.last_mut() {
            Some(run)
                if run.count < MAX_RUN
                    && entry.revision == run.revision + run.count
                    && entry.location.position == run.location.position + run.count =>
            {
                run.count += 1;
            }
            _ => out.push(StreamRun::from(*entry)),
        }
    }
    out
}

type StreamRow<'a> = (
    redb::AccessGuard<'a, (&'static str, u64)>,
    redb::AccessGuard<'a, (u64, u64, u64)>,
);

fn stream_run(row: Result<StreamRow<'_>, redb::StorageError>) -> Result<StreamRun, StoreError> {
    let (key, value) = row.map_err(redb::Error::from)?;
    let (position, offset, count) = value.value();
    Ok(StreamRun {
        revision: key.value().1,
        location: Location { position, offset },
        count,
    })
}

/// Hands a sealed chunk to the indexer; blocks while too many wait, which bounds the memory the
/// tail can take.
pub(crate) fn hand_over(indexer: &SyncSender<Arc<Chunk>>, chunk: Arc<Chunk>) {
    // A closed indexer keeps the chunk in memory; reads stay complete.
    let _ = indexer.send(chunk);
}
