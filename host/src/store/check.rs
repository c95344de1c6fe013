//! Offline verification and repair of a store folder (`lantern check`, `lantern repair`): the
//! server must not be running. Checking never writes; repair is the only code that ever cuts
//! acknowledged events, and only when an operator asks for it.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::Path;

use redb::{ReadOnlyDatabase, ReadableDatabase, ReadableTable};

use super::StoreError;
use super::damage::{self, Tail};
use super::index::{IDS, META, POSITIONS, STREAMS};
use super::log::{ScanItem, Scanner, read_at};

/// What checking a store found.
#[derive(Debug, Default)]
pub struct StoreCheck {
    /// Valid events in the log.
    pub events: u64,
    /// Complete appends in the log.
    pub appends: u64,
    /// Streams with at least one event.
    pub streams: usize,
    /// Bytes of the log.
    pub log_bytes: u64,
    /// Index entries verified against the log.
    pub index_entries: u64,
    /// Snapshots verified against the log.
    pub snapshots: u64,
    /// Things that are wrong: the store is damaged.
    pub problems: Vec<String>,
    /// Things worth knowing that are not damage (a torn tail the next start cuts).
    pub notes: Vec<String>,
}

/// Where a valid append starts and what lies after it, for a repair.
#[derive(Debug)]
pub struct Truncation {
    /// The first position discarded (the start of an append).
    pub from_position: u64,
    /// Its byte offset: the log's new length.
    pub offset: u64,
    /// Valid events discarded before the damage (or the end).
    pub events: u64,
    /// Valid records found past the damage, which go too: (count, first and last position).
    pub later_records: Option<(u64, u64, u64)>,
    /// Bytes discarded (valid or not).
    pub bytes: u64,
    /// Streams that lose events.
    pub streams: Vec<String>,
    /// Snapshots of revisions that go (stream, revision): they go too.
    pub snapshots: Vec<(String, u64)>,
}

struct Scan {
    /// Byte offset of each valid position (index 0 is position 1).
    offsets: Vec<u64>,
    /// Byte offset where each complete append starts, by its first position.
    append_starts: Vec<(u64, u64)>,
    /// End of the last complete append.
    valid_end: u64,
    /// Stream of each valid position, for repairs (only filled when asked).
    streams_by_position: Vec<u32>,
    stream_names: Vec<String>,
}

fn scan(file: &File, report: &mut StoreCheck, keep_streams: bool) -> Result<Scan, StoreError> {
    let len = file.metadata()?.len();
    report.log_bytes = len;
    let mut scan = Scan {
        offsets: Vec::new(),
        append_starts: Vec::new(),
        valid_end: 0,
        streams_by_position: Vec::new(),
        stream_names: Vec::new(),
    };
    let mut revisions: HashMap<String, u64> = HashMap::new();
    let mut stream_ids: HashMap<String, u32> = HashMap::new();
    let mut ids: HashSet<u128> = HashSet::new();
    let mut append_start: Option<(u64, u64)> = None;
    let mut scanner = Scanner::new(file, 0, len);
    let mut stop = None;
    while let Some(item) = scanner.next_record()? {
        let (decoded, offset, size) = match item {
            ScanItem::Record {
                decoded,
                offset,
                len,
            } => (decoded, offset, len),
            ScanItem::Invalid { offset, why } => {
                stop = Some((offset, why.to_owned()));
                break;
            }
        };
        let event = decoded.event;
        let expected = scan.offsets.len() as u64 + 1;
        if event.position != expected {
            stop = Some((
                offset,
                format!("position {} where {expected} belongs", event.position),
            ));
            break;
        }
        let next_revision = revisions.get(&event.stream).copied().unwrap_or(0);
        if event.revision != next_revision {
            report.problems.push(format!(
                "position {}: revision {} of {:?}, expected {next_revision}",
                event.position, event.revision, event.stream
            ));
        }
        revisions.insert(event.stream.clone(), event.revision + 1);
        if !ids.insert(event.id.as_u128()) {
            report.problems.push(format!(
                "position {}: event id {} is used twice",
                event.position, event.id
            ));
        }
        if keep_streams {
            let next_id = stream_ids.len() as u32;
            let id = *stream_ids.entry(event.stream.clone()).or_insert_with(|| {
                scan.stream_names.push(event.stream.clone());
                next_id
            });
            scan.streams_by_position.push(id);
        }
        scan.offsets.push(offset);
        append_start.get_or_insert((event.position, offset));
        if decoded.end_of_append {
            scan.append_starts.extend(append_start.take());
            scan.valid_end = offset + size as u64;
            report.appends += 1;
        }
    }
    // Events of a partial append at the end are not valid events.
    if let Some((first, _)) = append_start {
        scan.offsets.truncate(first as usize - 1);
        if keep_streams {
            scan.streams_by_position.truncate(first as usize - 1);
        }
    }
    report.events = scan.offsets.len() as u64;
    report.streams = revisions.len();
    if scan.valid_end < len {
        let (bad, why) = stop.unwrap_or((scan.valid_end, "partial append".to_owned()));
        let position = report.events + 1;
        match damage::classify(file, bad, len)? {
            Tail::Torn => report.notes.push(format!(
                "a torn tail of {} bytes from byte {} (position {position} on, {why}): what a crash leaves; the next start cuts it",
                len - scan.valid_end,
                scan.valid_end
            )),
            Tail::Corrupt {
                later_offset,
                later_position,
                why: proof,
            } => report.problems.push(format!(
                "the log is damaged at byte {bad} ({why}), where position {position} should be; a valid record (position {later_position}) follows at byte {later_offset}, and {proof}"
            )),
        }
    }
    Ok(scan)
}

fn index_error(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Index(error.into())
}

fn check_index(
    dir: &Path,
    file: &File,
    scan: &Scan,
    report: &mut StoreCheck,
) -> Result<(), StoreError> {
    let path = dir.join("index.redb");
    if !path.exists() {
        report
            .notes
            .push("no index.redb: the next start builds it from the log".into());
        return Ok(());
    }
    let db = ReadOnlyDatabase::open(&path).map_err(index_error)?;
    let txn = db.begin_read().map_err(index_error)?;
    let offset_of = |position: u64| -> Option<u64> {
        position
            .checked_sub(1)
            .and_then(|i| scan.offsets.get(i as usize).copied())
    };
    let mut problems = Vec::new();
    let meta = txn.open_table(META).map_err(index_error)?;
    let indexed = meta
        .get("indexed_position")
        .map_err(index_error)?
        .map_or(0, |v| v.value());
    let indexed_offset = meta
        .get("indexed_offset")
        .map_err(index_error)?
        .map_or(0, |v| v.value());
    if indexed > 0 && offset_of(indexed) != Some(indexed_offset) {
        problems.push(format!(
            "the index says it holds positions up to {indexed} ending at byte {indexed_offset}; the log disagrees"
        ));
    }
    let streams = txn.open_table(STREAMS).map_err(index_error)?;
    for row in streams.iter().map_err(index_error)? {
        let (key, value) = row.map_err(index_error)?;
        let (stream, first_revision) = key.value();
        let (position, offset, count) = value.value();
        report.index_entries += 1;
        for i in [0, count.saturating_sub(1)] {
            let at = position + i;
            let ok = match offset_of(at) {
                Some(log_offset) if i > 0 || log_offset == offset => {
                    let record = read_at(file, log_offset)?.event;
                    record.stream == stream && record.revision == first_revision + i
                }
                _ => false,
            };
            if !ok {
                problems.push(format!(
                    "index run {stream:?}@{first_revision} (+{count}) does not match the log at position {at}"
                ));
                break;
            }
        }
    }
    let ids = txn.open_table(IDS).map_err(index_error)?;
    let mut id_entries = 0u64;
    for row in ids.iter().map_err(index_error)? {
        let (key, value) = row.map_err(index_error)?;
        let (position, offset) = value.value();
        id_entries += 1;
        let ok = offset_of(position) == Some(offset)
            && read_at(file, offset)?.event.id.as_u128() == key.value();
        if !ok {
            problems.push(format!(
                "index entry for event id {} points at position {position}, which the log does not hold",
                uuid::Uuid::from_u128(key.value())
            ));
        }
    }
    report.index_entries += id_entries;
    if id_entries != indexed {
        problems.push(format!(
            "the index holds {id_entries} event ids for {indexed} indexed positions"
        ));
    }
    let positions = txn.open_table(POSITIONS).map_err(index_error)?;
    for row in positions.iter().map_err(index_error)? {
        let (key, value) = row.map_err(index_error)?;
        report.index_entries += 1;
        if offset_of(key.value()) != Some(value.value()) {
            problems.push(format!(
                "index entry for position {} points at byte {}, which is not where the log has it",
                key.value(),
                value.value()
            ));
        }
    }
    let shown = problems.len().min(20);
    let more = problems.len() - shown;
    report.problems.extend(problems.into_iter().take(shown));
    if more > 0 {
        report
            .problems
            .push(format!("... and {more} more index problems"));
    }
    Ok(())
}

/// Verifies the log (CRCs, positions, revisions, unique ids, append boundaries) and the index
/// against it. Reads only.
pub fn check(dir: &Path) -> Result<StoreCheck, StoreError> {
    let file = File::open(dir.join("events.log"))?;
    let mut report = StoreCheck::default();
    let scan = scan(&file, &mut report, false)?;
    check_index(dir, &file, &scan, &mut report)?;
    check_snapshots(dir, &file, &scan, &mut report)?;
    Ok(report)
}

/// Each snapshot must be of an event the log has: its position holds its stream's revision.
fn check_snapshots(
    dir: &Path,
    file: &File,
    scan: &Scan,
    report: &mut StoreCheck,
) -> Result<(), StoreError> {
    let path = dir.join("snapshots.redb");
    if !path.exists() {
        return Ok(());
    }
    let snapshots = match super::snapshots::read_file(&path) {
        Ok(snapshots) => snapshots,
        Err(error) => {
            report
                .problems
                .push(format!("snapshots.redb cannot be read: {error}"));
            return Ok(());
        }
    };
    report.snapshots = snapshots.len() as u64;
    for snapshot in snapshots {
        let offset = (snapshot.position as usize)
            .checked_sub(1)
            .and_then(|i| scan.offsets.get(i));
        let found = match offset {
            Some(&offset) => Some(super::log::read_at(file, offset)?.event),
            None => None,
        };
        let fits = found
            .as_ref()
            .is_some_and(|e| e.stream == snapshot.stream && e.revision == snapshot.revision);
        if !fits {
            report.problems.push(format!(
                "the snapshot of {:?} at revision {} names position {}, where the log {}",
                snapshot.stream,
                snapshot.revision,
                snapshot.position,
                match found {
                    Some(e) => format!("has {:?}@{}", e.stream, e.revision),
                    None => "has no event".to_owned(),
                }
            ));
        }
    }
    Ok(())
}

/// What cutting the log from `position` on would discard; nothing is changed.
pub fn plan_truncation(dir: &Path, position: u64) -> Result<Truncation, StoreError> {
    let file = File::open(dir.join("events.log"))?;
    let mut report = StoreCheck::default();
    let scan = scan(&file, &mut report, true)?;
    let invalid = |message: String| StoreError::InvalidRequest(message);
    if position == 0 {
        return Err(invalid("positions start at 1".into()));
    }
    // The append that holds `position` starts at or before it: the cut is at its start, so no
    // append is ever left in part. The end of the valid log counts as a start too.
    let end = (report.events + 1, scan.valid_end);
    let (from_position, offset) = scan
        .append_starts
        .iter()
        .copied()
        .chain(std::iter::once(end))
        .rev()
        .find(|(first, _)| *first <= position)
        .ok_or_else(|| invalid(format!("no append holds position {position}")))?;
    if position > end.0 {
        return Err(invalid(format!(
            "the log's valid events end at position {}; cut at {} or before",
            report.events, end.0
        )));
    }
    let later = damage::valid_records_after(&file, scan.valid_end, report.log_bytes)?;
    let mut streams: Vec<String> = scan.streams_by_position[(from_position - 1) as usize..]
        .iter()
        .map(|&id| scan.stream_names[id as usize].clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    streams.sort();
    let snapshots_path = dir.join("snapshots.redb");
    let snapshots = if snapshots_path.exists() {
        super::snapshots::read_file(&snapshots_path)?
            .into_iter()
            .filter(|s| s.position >= from_position)
            .map(|s| (s.stream, s.revision))
            .collect()
    } else {
        Vec::new()
    };
    Ok(Truncation {
        from_position,
        offset,
        events: report.events + 1 - from_position,
        later_records: later,
        bytes: report.log_bytes - offset,
        streams,
        snapshots,
    })
}

/// Cuts the log as `plan` says, durably, and removes the index (the next start rebuilds it from
/// the log). The only code that ever discards acknowledged events.
pub fn truncate(dir: &Path, plan: &Truncation) -> Result<(), StoreError> {
    let file = OpenOptions::new()
        .write(true)
        .open(dir.join("events.log"))?;
    file.set_len(plan.offset)?;
    file.sync_all()?;
    if !plan.snapshots.is_empty() {
        super::snapshots::remove_from(&dir.join("snapshots.redb"), plan.from_position)?;
    }
    match std::fs::remove_file(dir.join("index.redb")) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error.into()),
    }
    File::open(dir)?.sync_all()?;
    Ok(())
}
