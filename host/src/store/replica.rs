//! What replication needs of the store: its id, a reader of the log's records in their stored form
//! (the leader's side), and writing the leader's records (the follower's side, through the writer).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::log::{self, ScanItem, Scanner};
use super::record::{self, FRAME_HEADER};
use super::writer::{Job, Replicated};
use super::{Store, StoreError};

/// The file that holds the store's id.
const ID_FILE: &str = "store-id";

/// Reads the store's id, or makes one for a store that has none.
pub(super) fn load_or_create_id(dir: &Path) -> Result<Uuid, StoreError> {
    let path = dir.join(ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Uuid::parse_str(text.trim()).map_err(|e| {
            StoreError::Corrupt(format!("{} does not hold a store id: {e}", path.display()))
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let id = Uuid::now_v7();
            crate::durable::replace(&path, format!("{id}\n").as_bytes())?;
            Ok(id)
        }
        Err(error) => Err(error.into()),
    }
}

impl Store {
    /// The store's id: made when the store was created, the same on its followers.
    pub fn id(&self) -> Uuid {
        *self.inner.id.lock()
    }

    /// Takes the leader's id: only a follower whose log is still empty may.
    pub fn adopt_id(&self, id: Uuid) -> Result<(), StoreError> {
        let mut current = self.inner.id.lock();
        if *current == id {
            return Ok(());
        }
        if self.head() != 0 {
            return Err(StoreError::Replication(format!(
                "this store ({current}) is not a copy of the leader's ({id}); start the follower on an empty data folder"
            )));
        }
        crate::durable::replace(&self.inner.dir.join(ID_FILE), format!("{id}\n").as_bytes())?;
        *current = id;
        Ok(())
    }

    /// A reader of the committed log's records, in their stored form, from `position` on
    /// (at most the head + 1: then it waits for the next append).
    pub fn log_reader(&self, position: u64) -> Result<LogReader, StoreError> {
        let position = position.max(1);
        let (start, committed) = self.inner.index.seek(position)?;
        let offset = match start {
            None if position == committed.head_position + 1 => committed.end_offset,
            None => {
                return Err(StoreError::InvalidRequest(format!(
                    "position {position} is past the head ({})",
                    committed.head_position
                )));
            }
            Some(start) => {
                let mut scanner =
                    Scanner::new(&self.inner.file, start.offset, committed.end_offset);
                loop {
                    match scanner.next_record()? {
                        Some(ScanItem::Record {
                            decoded, offset, ..
                        }) if decoded.event.position == position => break offset,
                        Some(ScanItem::Record { .. }) => {}
                        Some(ScanItem::Invalid { offset, why }) => {
                            return Err(StoreError::Corrupt(format!(
                                "committed log record at byte {offset}: {why}"
                            )));
                        }
                        None => {
                            return Err(StoreError::Corrupt(format!(
                                "the log holds no record for position {position}"
                            )));
                        }
                    }
                }
            }
        };
        Ok(LogReader {
            file: self.inner.file.clone(),
            position,
            offset,
        })
    }

    /// Checks that the first record of `frames` (the leader's record at this store's head, which
    /// a follower asks for first) is this store's own last record. `Ok(Some(len))`: it is, and it
    /// is `len` bytes long; `Ok(None)`: it is not all there yet; an error: the logs differ.
    pub fn verify_overlap(&self, frames: &Bytes) -> Result<Option<usize>, StoreError> {
        let (decoded, len) = match record::decode(frames) {
            Ok(decoded) => decoded,
            Err(record::FrameError::Incomplete) => return Ok(None),
            Err(record::FrameError::Corrupt(why)) => {
                return Err(StoreError::Replication(format!(
                    "the leader sent a damaged record: {why}"
                )));
            }
        };
        let position = decoded.event.position;
        let head = self.head();
        if position != head {
            return Err(StoreError::Replication(format!(
                "asked the leader for position {head}, it sent {position}"
            )));
        }
        let own = self.log_reader(position)?.read(self, len)?;
        if !record::same_record(&own, &frames[..len]) {
            return Err(StoreError::Replication(format!(
                "this store's log differs from the leader's at position {position}: they hold different events there (the two logs diverged, for example after a backup was restored on two machines that were both written to)"
            )));
        }
        Ok(Some(len))
    }

    /// Writes a batch of the leader's records (a follower's store only): the whole appends at its
    /// start, after checking every record. Answers after the fsync.
    pub async fn replicate(&self, frames: Bytes) -> Result<Replicated, StoreError> {
        if !self.inner.options.replica {
            return Err(StoreError::Replication(
                "this store is a leader; it takes no records from another".into(),
            ));
        }
        let (reply, answer) = oneshot::channel();
        self.send(Job::Replicate { frames, reply })?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer stopped".into()))?
    }
}

/// Reads the committed log's records in their stored form, in order, for a follower.
pub struct LogReader {
    file: Arc<File>,
    /// The position of the next record to read.
    position: u64,
    /// Its offset in the log.
    offset: u64,
}

impl LogReader {
    /// The position of the next record.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next whole records, about `max_bytes` of them (at least one whole record, however
    /// large), up to the committed end; empty when there is nothing new.
    pub fn read(&mut self, store: &Store, max_bytes: usize) -> Result<Bytes, StoreError> {
        let end = store.inner.index.committed().end_offset;
        if self.offset >= end {
            return Ok(Bytes::new());
        }
        let want = (end - self.offset).min(max_bytes.max(FRAME_HEADER) as u64) as usize;
        let mut buf = BytesMut::zeroed(want);
        let got = log::read_some(&self.file, &mut buf, self.offset)?;
        buf.truncate(got);
        // Whole frames only; a first frame larger than `max_bytes` is read whole.
        let (mut whole, mut records) = (0usize, 0u64);
        while let Some(len) = record::frame_len(&buf[whole..]) {
            if whole + len > buf.len() {
                if whole == 0 && self.offset + (len as u64) <= end {
                    let mut frame = BytesMut::zeroed(len);
                    if log::read_some(&self.file, &mut frame, self.offset)? == len {
                        buf = frame;
                        whole = len;
                        records = 1;
                    }
                }
                break;
            }
            whole += len;
            records += 1;
        }
        if whole == 0 {
            return Err(StoreError::Corrupt(format!(
                "the committed log has no whole record at byte {}",
                self.offset
            )));
        }
        buf.truncate(whole);
        self.offset += whole as u64;
        self.position += records;
        Ok(buf.freeze())
    }
}
