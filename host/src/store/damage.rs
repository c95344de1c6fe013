//! Telling a torn tail from corruption. Recovery found bytes at `bad` that are not a valid record;
//! it may cut them only if a crash during the last group's write can explain them, that is if no
//! record after them proves an acknowledged group.
//!
//! The writer writes a group (one `pwrite`, then one `fsync`) only after the previous group's fsync
//! returned, and marks each group's last record (`FLAG_END_OF_GROUP`). A crash can therefore leave
//! damage only inside the last group, of which any subset of pages may have reached the disk. So:
//! - a valid record after a valid end-of-group record that lies past `bad` means a later group was
//!   written, hence the damaged group was fsync'd and acknowledged: corruption;
//! - a valid record further past `bad` than one group can span: corruption;
//! - otherwise the damage is a torn tail.

use std::fs::File;

use bytes::Bytes;

use super::StoreError;
use super::log::read_some;
use super::record::{self, FRAME_HEADER};

/// A group's records never span more than this (the writer's 32 MiB group limit plus one append of
/// up to 16 MiB of bodies, with room to spare).
const MAX_GROUP_SPAN: u64 = 64 << 20;
/// The smallest frame a record can have.
const MIN_FRAME: usize = FRAME_HEADER + 51;
/// The largest frame the writer produces (bodies are at most 16 MiB; headroom for names).
const MAX_FRAME: usize = 17 << 20;
/// Bytes searched per read.
const BLOCK: usize = 8 << 20;

/// What the bytes from a bad record to the end of the file are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tail {
    /// What a crash during the last group's write leaves: safe to cut.
    Torn,
    /// Valid records that an acknowledged group wrote come after the damage.
    Corrupt {
        /// The first valid record found after the damage: its offset and position.
        later_offset: u64,
        later_position: u64,
        /// Why that record proves an acknowledged group.
        why: &'static str,
    },
}

/// Classifies `[bad, file_len)`.
pub(crate) fn classify(file: &File, bad: u64, file_len: u64) -> Result<Tail, StoreError> {
    let mut from = bad + 1;
    let mut first_later: Option<(u64, u64)> = None;
    let mut group_end_seen = false;
    while let Some((offset, decoded, len)) = next_valid_record(file, from, file_len)? {
        let position = decoded.event.position;
        let first = *first_later.get_or_insert((offset, position));
        let corrupt = |why| Tail::Corrupt {
            later_offset: first.0,
            later_position: first.1,
            why,
        };
        if group_end_seen {
            return Ok(corrupt(
                "a group after it was written, so its group was acknowledged",
            ));
        }
        if offset >= bad + MAX_GROUP_SPAN {
            return Ok(corrupt(
                "it lies further past the damage than one write can reach",
            ));
        }
        group_end_seen = decoded.end_of_group;
        from = offset + len as u64;
    }
    Ok(Tail::Torn)
}

/// Counts the valid records in `[from, file_len)` (after damage): how many, and the first and
/// last of their positions. `from` itself may be the start of one.
pub(crate) fn valid_records_after(
    file: &File,
    from: u64,
    file_len: u64,
) -> Result<Option<(u64, u64, u64)>, StoreError> {
    let mut found: Option<(u64, u64, u64)> = None;
    let mut at = from;
    while let Some((offset, decoded, len)) = next_valid_record(file, at, file_len)? {
        let position = decoded.event.position;
        found = Some(match found {
            None => (1, position, position),
            Some((count, first, _)) => (count + 1, first, position),
        });
        at = offset + len as u64;
    }
    Ok(found)
}

/// The first offset at or after `from` where a whole valid record starts, with it.
fn next_valid_record(
    file: &File,
    from: u64,
    file_len: u64,
) -> Result<Option<(u64, record::Decoded, usize)>, StoreError> {
    let mut block_start = from;
    while block_start + (MIN_FRAME as u64) <= file_len {
        let want = (file_len - block_start).min(BLOCK as u64) as usize;
        let mut block = vec![0u8; want];
        let got = read_some(file, &mut block, block_start)?;
        block.truncate(got);
        if block.len() < FRAME_HEADER {
            return Ok(None);
        }
        for at in 0..=block.len() - FRAME_HEADER {
            let offset = block_start + at as u64;
            let Some(len) = record::frame_len(&block[at..]) else {
                continue;
            };
            // Cheap checks first: most bytes are not the start of a plausible frame.
            if !(MIN_FRAME..=MAX_FRAME).contains(&len) || offset + len as u64 > file_len {
                continue;
            }
            let frame = if at + len <= block.len() {
                Bytes::copy_from_slice(&block[at..at + len])
            } else {
                let mut frame = vec![0u8; len];
                if read_some(file, &mut frame, offset)? < len {
                    continue;
                }
                Bytes::from(frame)
            };
            if let Ok((decoded, len)) = record::decode(&frame) {
                return Ok(Some((offset, decoded, len)));
            }
        }
        // The next block overlaps this one by a header, so no frame start is skipped.
        block_start += (block.len() - FRAME_HEADER + 1) as u64;
    }
    Ok(None)
}
