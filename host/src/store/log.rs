//! The log file: CRC-framed records appended at the end, read anywhere with `pread`.

use std::fs::File;
use std::os::unix::fs::FileExt;

use bytes::{Bytes, BytesMut};

use super::StoreError;
use super::record::{self, Decoded, EventRef, FRAME_HEADER, FrameError};

/// How much a sequential reader fetches at a time.
const READ_BLOCK: usize = 1 << 20;

/// Reads the single record whose frame starts at `offset`.
pub(crate) fn read_at(file: &File, offset: u64) -> Result<Decoded, StoreError> {
    // Most records fit in one small read; a large one costs a second read.
    let mut buf = BytesMut::zeroed(4096);
    let got = read_some(file, &mut buf, offset)?;
    buf.truncate(got);
    let needed = record::frame_len(&buf).ok_or_else(|| corrupt(offset, "short frame header"))?;
    if needed > buf.len() {
        let mut full = BytesMut::zeroed(needed);
        file.read_exact_at(&mut full, offset)?;
        buf = full;
    }
    match record::decode(&buf.freeze()) {
        Ok((decoded, _)) => Ok(decoded),
        Err(FrameError::Incomplete) => Err(corrupt(offset, "record cut short")),
        Err(FrameError::Corrupt(why)) => Err(corrupt(offset, why)),
    }
}

fn corrupt(offset: u64, why: &str) -> StoreError {
    StoreError::Corrupt(format!("log record at byte {offset}: {why}"))
}

/// Reads as many bytes as the file has at `offset`, up to `buf.len()`.
pub(crate) fn read_some(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Reads consecutive records from an offset up to a fixed end, a block at a time.
pub(crate) struct Scanner<'a> {
    file: &'a File,
    /// File offset of `block[0]`.
    block_offset: u64,
    block: Bytes,
    /// Read position inside `block`.
    cursor: usize,
    end_offset: u64,
    block_size: usize,
}

/// What a scan stopped on.
pub(crate) enum ScanItem {
    Record {
        decoded: Decoded,
        offset: u64,
        len: usize,
    },
    /// The bytes at `offset` are not a whole valid record (only possible past the committed end,
    /// that is during recovery).
    Invalid { offset: u64, why: &'static str },
}

/// What a scan stopped on, read in place.
pub(crate) enum ScanRef<'b> {
    Record {
        event: EventRef<'b>,
    },
    /// As `ScanItem::Invalid`.
    Invalid {
        offset: u64,
        why: &'static str,
    },
}

impl<'a> Scanner<'a> {
    /// Reads `[from_offset, end_offset)` in blocks of 1 MiB.
    pub(crate) fn new(file: &'a File, from_offset: u64, end_offset: u64) -> Self {
        Self::with_block(file, from_offset, end_offset, READ_BLOCK)
    }

    /// Reads `[from_offset, end_offset)` in blocks of about `block_size` bytes: small for a
    /// short run of records, so a stream read does not fetch a megabyte for a few events.
    pub(crate) fn with_block(
        file: &'a File,
        from_offset: u64,
        end_offset: u64,
        block_size: usize,
    ) -> Self {
        Scanner {
            file,
            block_offset: from_offset,
            block: Bytes::new(),
            cursor: 0,
            end_offset,
            block_size: block_size.max(4096),
        }
    }

    /// The offset of the next record.
    pub(crate) fn offset(&self) -> u64 {
        self.block_offset + self.cursor as u64
    }

    fn refill(&mut self, at_least: usize) -> Result<(), StoreError> {
        let offset = self.offset();
        let want = (self.end_offset - offset).min(self.block_size.max(at_least) as u64) as usize;
        let mut buf = BytesMut::zeroed(want);
        let got = read_some(self.file, &mut buf, offset)?;
        buf.truncate(got);
        self.block = buf.freeze();
        self.block_offset = offset;
        self.cursor = 0;
        Ok(())
    }

    /// The next record, `None` at the end.
    pub(crate) fn next_record(&mut self) -> Result<Option<ScanItem>, StoreError> {
        let offset = self.offset();
        Ok(self.next_ref()?.map(|item| match item {
            ScanRef::Record { event } => ScanItem::Record {
                decoded: event.to_decoded(),
                offset,
                len: event.len(),
            },
            ScanRef::Invalid { offset, why } => ScanItem::Invalid { offset, why },
        }))
    }

    /// The next record read in place (valid until the next call), `None` at the end.
    pub(crate) fn next_ref(&mut self) -> Result<Option<ScanRef<'_>>, StoreError> {
        let offset = self.offset();
        if offset >= self.end_offset {
            return Ok(None);
        }
        let mut available = self.block.len() - self.cursor;
        let needed = record::frame_len(&self.block[self.cursor..]).unwrap_or(FRAME_HEADER);
        if available < needed {
            self.refill(needed)?;
            available = self.block.len();
            // The header may only now be in the block, naming a frame larger than the block.
            let needed = record::frame_len(&self.block).unwrap_or(FRAME_HEADER);
            if available < needed {
                self.refill(needed)?;
                available = self.block.len();
            }
        }
        let item = match EventRef::read(&self.block, self.cursor) {
            Ok(event) => {
                self.cursor += event.len();
                ScanRef::Record { event }
            }
            Err(FrameError::Incomplete) => ScanRef::Invalid {
                offset,
                why: if available < FRAME_HEADER {
                    "torn frame header"
                } else {
                    "torn record"
                },
            },
            Err(FrameError::Corrupt(why)) => ScanRef::Invalid { offset, why },
        };
        Ok(Some(item))
    }
}
