//! The on-disk record: one event framed by its length and a CRC (layout in `docs/storage.md`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use uuid::Uuid;

/// Frame header: body length (u32 LE) then CRC-32 of the body (u32 LE).
pub(crate) const FRAME_HEADER: usize = 8;
/// Fixed part of a body, before the variable-length fields.
const BODY_FIXED: usize = 8 + 8 + 8 + 16 + 1 + 2 + 2 + 4 + 4;

/// Set on the last record of an append: recovery never keeps a partial append.
pub(crate) const FLAG_END_OF_APPEND: u8 = 1;
const FLAG_HAS_METADATA: u8 = 2;
/// Set on the last record of a group (one write and one fsync). Nothing after a group is written
/// before its fsync returned, so a valid record found after the end of a group proves that group
/// durable: recovery uses it to tell corruption from a torn write.
pub(crate) const FLAG_END_OF_GROUP: u8 = 4;
/// Where the flags byte sits in a frame.
const FLAGS_AT: usize = FRAME_HEADER + 40;

/// An event as stored: its place in the log and in its stream, and what the writer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Position in the global log, from 1.
    pub position: u64,
    /// The stream it belongs to.
    pub stream: String,
    /// Revision within its stream, from 0.
    pub revision: u64,
    /// Unique in the whole store.
    pub id: Uuid,
    /// The event type.
    pub event_type: String,
    /// JSON text, exactly as written.
    pub data: Bytes,
    /// JSON text, exactly as written, or `None` when none was given.
    pub metadata: Option<Bytes>,
    /// Microseconds since the Unix epoch, taken by the writer.
    pub recorded_at_micros: u64,
}

impl RecordedEvent {
    /// When the event was recorded.
    pub fn recorded_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.recorded_at_micros)
    }

    /// The stream's category: the part of its name before the first `-`.
    pub fn category(&self) -> &str {
        category_of(&self.stream)
    }
}

/// `order-42` -> `order`; a name without `-` is its own category.
pub fn category_of(stream: &str) -> &str {
    stream
        .split_once('-')
        .map_or(stream, |(category, _)| category)
}

/// What the writer knows of an event before encoding it.
pub(crate) struct RecordFields<'a> {
    pub position: u64,
    pub stream: &'a str,
    pub revision: u64,
    pub id: Uuid,
    pub event_type: &'a str,
    pub data: &'a [u8],
    pub metadata: Option<&'a [u8]>,
    pub recorded_at_micros: u64,
    pub end_of_append: bool,
}

/// Appends one framed record to `out`.
pub(crate) fn encode(fields: &RecordFields<'_>, out: &mut Vec<u8>) {
    let metadata = fields.metadata.unwrap_or_default();
    let body_len = BODY_FIXED
        + fields.stream.len()
        + fields.event_type.len()
        + fields.data.len()
        + metadata.len();
    let frame_start = out.len();
    out.reserve(FRAME_HEADER + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled in below
    let body_start = out.len();
    out.extend_from_slice(&fields.position.to_le_bytes());
    out.extend_from_slice(&fields.revision.to_le_bytes());
    out.extend_from_slice(&fields.recorded_at_micros.to_le_bytes());
    out.extend_from_slice(fields.id.as_bytes());
    let mut flags = 0;
    if fields.end_of_append {
        flags |= FLAG_END_OF_APPEND;
    }
    if fields.metadata.is_some() {
        flags |= FLAG_HAS_METADATA;
    }
    out.push(flags);
    out.extend_from_slice(&(fields.stream.len() as u16).to_le_bytes());
    out.extend_from_slice(&(fields.event_type.len() as u16).to_le_bytes());
    out.extend_from_slice(&(fields.data.len() as u32).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u32).to_le_bytes());
    out.extend_from_slice(fields.stream.as_bytes());
    out.extend_from_slice(fields.event_type.as_bytes());
    out.extend_from_slice(fields.data);
    out.extend_from_slice(metadata);
    let crc = crc32fast::hash(&out[body_start..]);
    out[frame_start + 4..frame_start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Marks the record framed at `frame[0..]` as the last of its group or not, and re-seals its CRC.
pub(crate) fn set_end_of_group(frame: &mut [u8], end: bool) {
    if end {
        frame[FLAGS_AT] |= FLAG_END_OF_GROUP;
    } else {
        frame[FLAGS_AT] &= !FLAG_END_OF_GROUP;
    }
    let len = frame_len(frame).expect("a framed record");
    let crc = crc32fast::hash(&frame[FRAME_HEADER..len]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Whether two framed records are the same record: the same bytes but for the end-of-group flag,
/// which says where a node's writer fsynced, and the CRC that covers it.
pub(crate) fn same_record(a: &[u8], b: &[u8]) -> bool {
    let body = |frame: &[u8]| {
        let mut body = frame.get(FRAME_HEADER..)?.to_vec();
        *body.get_mut(FLAGS_AT - FRAME_HEADER)? &= !FLAG_END_OF_GROUP;
        Some((frame_len(frame)?, body))
    };
    match (body(a), body(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Why bytes at some offset are not a record. Recovery cuts the log at the first one.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The frame runs past the end of the bytes available.
    Incomplete,
    /// The frame is complete but its CRC or its layout is wrong.
    Corrupt(&'static str),
}

/// The length of the frame starting at `buf[0]`, if its header is there.
pub(crate) fn frame_len(buf: &[u8]) -> Option<usize> {
    let header = buf.get(..FRAME_HEADER)?;
    let body_len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    Some(FRAME_HEADER + body_len)
}

/// A decoded record plus the flags only recovery needs.
pub(crate) struct Decoded {
    pub event: RecordedEvent,
    pub end_of_append: bool,
    pub end_of_group: bool,
}

/// A frame's fields, checked (length, CRC, field lengths; the names' UTF-8 is checked by whoever
/// reads them: `EventRef::read`, `peek`), as offsets into the frame.
#[derive(Debug, Clone)]
struct Layout {
    len: usize,
    position: u64,
    revision: u64,
    recorded_at_micros: u64,
    id: Uuid,
    flags: u8,
    stream: std::ops::Range<usize>,
    event_type: std::ops::Range<usize>,
    data: std::ops::Range<usize>,
    metadata: std::ops::Range<usize>,
}

fn layout(buf: &[u8]) -> Result<Layout, FrameError> {
    let len = frame_len(buf).ok_or(FrameError::Incomplete)?;
    if len < FRAME_HEADER + BODY_FIXED {
        return Err(FrameError::Corrupt("frame shorter than a record header"));
    }
    if buf.len() < len {
        return Err(FrameError::Incomplete);
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let body = &buf[FRAME_HEADER..len];
    if crc32fast::hash(body) != crc {
        return Err(FrameError::Corrupt("CRC mismatch"));
    }
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    let u16_at = |at: usize| u16::from_le_bytes(body[at..at + 2].try_into().expect("2 bytes"));
    let stream_len = u16_at(41) as usize;
    let type_len = u16_at(43) as usize;
    let data_len = u32_at(45) as usize;
    let metadata_len = u32_at(49) as usize;
    if BODY_FIXED + stream_len + type_len + data_len + metadata_len != body.len() {
        return Err(FrameError::Corrupt(
            "field lengths disagree with the frame length",
        ));
    }
    let stream_at = FRAME_HEADER + BODY_FIXED;
    let type_at = stream_at + stream_len;
    let data_at = type_at + type_len;
    let metadata_at = data_at + data_len;
    Ok(Layout {
        len,
        position: u64_at(0),
        revision: u64_at(8),
        recorded_at_micros: u64_at(16),
        id: Uuid::from_bytes(body[24..40].try_into().expect("16 bytes")),
        flags: body[40],
        stream: stream_at..type_at,
        event_type: type_at..data_at,
        data: data_at..metadata_at,
        metadata: metadata_at..len,
    })
}

/// A name in a frame: UTF-8, or the frame is corrupt.
fn text(buf: &[u8], range: std::ops::Range<usize>) -> Result<&str, FrameError> {
    std::str::from_utf8(&buf[range]).map_err(|_| FrameError::Corrupt("name is not UTF-8"))
}

/// What a follower checks of a leader's record, read in place: checked as `decode` checks it.
pub(crate) struct Peeked<'a> {
    pub len: usize,
    pub position: u64,
    pub revision: u64,
    pub id: Uuid,
    pub stream: &'a str,
    pub end_of_append: bool,
    pub end_of_group: bool,
}

/// Reads the frame at the start of `buf` without copying it.
pub(crate) fn peek(buf: &[u8]) -> Result<Peeked<'_>, FrameError> {
    let layout = layout(buf)?;
    // Both names are checked, as `decode` checks them, though only the stream is kept.
    text(buf, layout.event_type.clone())?;
    Ok(Peeked {
        len: layout.len,
        position: layout.position,
        revision: layout.revision,
        id: layout.id,
        stream: text(buf, layout.stream)?,
        end_of_append: layout.flags & FLAG_END_OF_APPEND != 0,
        end_of_group: layout.flags & FLAG_END_OF_GROUP != 0,
    })
}

/// An event read in place: its fields borrowed from the bytes it was read into, nothing copied
/// (checked as `decode` checks it). A reader that only looks at events, or copies them into a
/// form of its own, does without a `RecordedEvent` each.
#[derive(Debug, Clone)]
pub struct EventRef<'a> {
    /// The frame starts at `buf[at..]`; the layout's ranges are from there.
    buf: &'a Bytes,
    at: usize,
    layout: Layout,
    stream: &'a str,
    event_type: &'a str,
}

impl<'a> EventRef<'a> {
    /// The frame at `buf[at..]`.
    pub(crate) fn read(buf: &'a Bytes, at: usize) -> Result<Self, FrameError> {
        let frame = &buf[at..];
        let layout = layout(frame)?;
        Ok(EventRef {
            stream: text(frame, layout.stream.clone())?,
            event_type: text(frame, layout.event_type.clone())?,
            buf,
            at,
            layout,
        })
    }

    /// A range of the frame, as a range of `buf`.
    fn in_buf(&self, range: &std::ops::Range<usize>) -> std::ops::Range<usize> {
        self.at + range.start..self.at + range.end
    }

    fn bytes(&self, range: &std::ops::Range<usize>) -> &'a [u8] {
        &self.buf[self.in_buf(range)]
    }

    /// The frame's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.layout.len
    }

    pub(crate) fn end_of_append(&self) -> bool {
        self.layout.flags & FLAG_END_OF_APPEND != 0
    }

    pub(crate) fn end_of_group(&self) -> bool {
        self.layout.flags & FLAG_END_OF_GROUP != 0
    }

    pub fn position(&self) -> u64 {
        self.layout.position
    }

    pub fn revision(&self) -> u64 {
        self.layout.revision
    }

    pub fn id(&self) -> Uuid {
        self.layout.id
    }

    pub fn recorded_at_micros(&self) -> u64 {
        self.layout.recorded_at_micros
    }

    pub fn stream(&self) -> &'a str {
        self.stream
    }

    pub fn event_type(&self) -> &'a str {
        self.event_type
    }

    pub fn data(&self) -> &'a [u8] {
        self.bytes(&self.layout.data)
    }

    pub fn metadata(&self) -> Option<&'a [u8]> {
        (self.layout.flags & FLAG_HAS_METADATA != 0).then(|| self.bytes(&self.layout.metadata))
    }

    /// The event, owned: the names copied, data and metadata sharing the read's memory.
    pub fn to_event(&self) -> RecordedEvent {
        let slice = |range: &std::ops::Range<usize>| self.buf.slice(self.in_buf(range));
        RecordedEvent {
            position: self.position(),
            stream: self.stream().to_owned(),
            revision: self.revision(),
            id: self.id(),
            event_type: self.event_type().to_owned(),
            data: slice(&self.layout.data),
            metadata: self.metadata().map(|_| slice(&self.layout.metadata)),
            recorded_at_micros: self.recorded_at_micros(),
        }
    }

    pub(crate) fn to_decoded(&self) -> Decoded {
        Decoded {
            event: self.to_event(),
            end_of_append: self.end_of_append(),
            end_of_group: self.end_of_group(),
        }
    }
}

/// Decodes the frame at the start of `buf`, which shares its memory with the returned payloads.
pub(crate) fn decode(buf: &Bytes) -> Result<(Decoded, usize), FrameError> {
    let event = EventRef::read(buf, 0)?;
    Ok((event.to_decoded(), event.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(metadata: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        encode(
            &RecordFields {
                position: 7,
                stream: "order-42",
                revision: 3,
                id: Uuid::from_u128(99),
                event_type: "OrderPlaced",
                data: br#"{"amount": 5}"#,
                metadata,
                recorded_at_micros: 1_700_000_000_000_000,
                end_of_append: true,
            },
            &mut out,
        );
        out
    }

    #[test]
    fn round_trips_with_and_without_metadata() {
        for metadata in [None, Some(&b"{}"[..]), Some(&b""[..])] {
            let bytes = Bytes::from(sample(metadata));
            let (decoded, len) = decode(&bytes).unwrap();
            assert_eq!(len, bytes.len());
            assert!(decoded.end_of_append);
            let event = decoded.event;
            assert_eq!(event.position, 7);
            assert_eq!(event.stream, "order-42");
            assert_eq!(event.category(), "order");
            assert_eq!(event.revision, 3);
            assert_eq!(event.id, Uuid::from_u128(99));
            assert_eq!(event.event_type, "OrderPlaced");
            assert_eq!(&event.data[..], br#"{"amount": 5}"#);
            assert_eq!(event.metadata.as_deref(), metadata);
        }
    }

    #[test]
    fn every_truncation_is_incomplete_and_every_bit_flip_is_detected() {
        let bytes = sample(Some(b"{\"k\":1}"));
        for cut in 0..bytes.len() {
            let torn = Bytes::copy_from_slice(&bytes[..cut]);
            assert!(decode(&torn).is_err(), "cut at {cut} decoded");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(
                decode(&Bytes::from(flipped)).is_err(),
                "flip at {at} decoded"
            );
        }
    }

    #[test]
    fn a_name_that_is_not_utf8_is_corrupt_even_with_a_good_crc() {
        let stream_at = FRAME_HEADER + BODY_FIXED;
        // The first byte of the stream's name, then of the event type's ("order-42" is 8 bytes).
        for at in [stream_at, stream_at + 8] {
            let mut bytes = sample(None);
            bytes[at] = 0xff;
            let crc = crc32fast::hash(&bytes[FRAME_HEADER..]);
            bytes[4..8].copy_from_slice(&crc.to_le_bytes());
            let bytes = Bytes::from(bytes);
            assert!(matches!(
                decode(&bytes),
                Err(FrameError::Corrupt("name is not UTF-8"))
            ));
            assert!(matches!(
                peek(&bytes),
                Err(FrameError::Corrupt("name is not UTF-8"))
            ));
            assert!(EventRef::read(&bytes, 0).is_err());
        }
    }

    #[test]
    fn an_event_read_in_place_is_the_event_decoded() {
        let mut log = vec![0u8; 3];
        log.extend(sample(Some(b"{}")));
        let log = Bytes::from(log);
        let event = EventRef::read(&log, 3).unwrap();
        assert_eq!(event.len(), log.len() - 3);
        assert_eq!(
            (event.stream(), event.event_type(), event.data()),
            ("order-42", "OrderPlaced", &br#"{"amount": 5}"#[..])
        );
        assert_eq!(event.metadata(), Some(&b"{}"[..]));
        let (decoded, _) = decode(&log.slice(3..)).unwrap();
        assert_eq!(event.to_event(), decoded.event);
        let owned = event.to_event();
        assert_eq!(
            (
                owned.position,
                owned.revision,
                owned.id,
                owned.recorded_at_micros
            ),
            (7, 3, Uuid::from_u128(99), 1_700_000_000_000_000)
        );
        assert_eq!(
            (owned.stream.as_str(), &owned.data[..]),
            ("order-42", &br#"{"amount": 5}"#[..])
        );
        assert_eq!(owned.metadata.as_deref(), Some(&b"{}"[..]));
    }

    #[test]
    fn zeroed_space_is_not_a_record() {
        assert!(decode(&Bytes::from(vec![0u8; 128])).is_err());
    }
}
