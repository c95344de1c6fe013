//! The compact encoding that crosses the host/guest boundary as one `list<u8>`.
//!
//! A component-model `list<record>` costs ~145 ns a record at the boundary (a `cabi_realloc` per
//! nested field); one byte list decoded by the guest costs ~12-23 ns. So a batch of events goes
//! in as bytes, and the batch's writes come out as bytes.
//!
//! All integers are little-endian. Strings and byte strings are a `u32` length then the bytes.
//! - batch: `u32 count`, then per event: `u64 position`, `u64 revision`, `[u8; 16] id`,
//!   `u64 recorded_at_micros`, `str stream`, `str type`, `bytes data`, `u8 has_metadata`,
//!   [`bytes metadata`].
//! - legacy batch, for modules built against WIT `lantern:projection@0.1.0`: the same without
//!   `id` and `recorded_at_micros` ([`BatchEncoder::legacy`]).
//! - writes: `u32 count`, then per write: `u8 kind` (1 put, 0 delete), `str key`, [`bytes value`].
//! - upcasts (an upcaster's answer to a batch): `u32 count`, then per event: `u8 kind`
//!   (0 unchanged, 1 changed), and for a changed one `str type`, `bytes data`, `u8 has_metadata`,
//!   [`bytes metadata`].
#![deny(missing_docs)]

/// An event as the guest sees it; borrows from the encoded batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventView<'a> {
    /// Position in the global log.
    pub position: u64,
    /// Revision in its stream.
    pub revision: u64,
    /// The event's id (a UUID's 16 bytes).
    pub id: [u8; 16],
    /// When it was recorded: microseconds since the Unix epoch.
    pub recorded_at_micros: u64,
    /// The stream's name.
    pub stream: &'a str,
    /// The event type.
    pub event_type: &'a str,
    /// JSON text.
    pub data: &'a [u8],
    /// JSON text, if any.
    pub metadata: Option<&'a [u8]>,
}

/// One write of a batch: a put or a delete of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteView<'a> {
    /// Store `value` under `key`.
    Put(&'a str, &'a [u8]),
    /// Remove `key`.
    Delete(&'a str),
}

impl<'a> WriteView<'a> {
    /// The key written.
    pub fn key(&self) -> &'a str {
        match self {
            WriteView::Put(key, _) | WriteView::Delete(key) => key,
        }
    }
}

/// The bytes are not a valid encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed wire data: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Builds an encoded batch.
#[derive(Debug)]
pub struct BatchEncoder {
    out: Vec<u8>,
    count: u32,
    legacy: bool,
}

impl Default for BatchEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchEncoder {
    /// An empty batch.
    pub fn new() -> Self {
        Self::reusing(Vec::new(), false)
    }

    /// An empty batch in the legacy encoding (no id, no recorded time), for modules built
    /// against WIT `lantern:projection@0.1.0`.
    pub fn legacy() -> Self {
        Self::reusing(Vec::new(), true)
    }

    /// An empty batch written into `buffer` (cleared; its capacity kept): a caller that encodes
    /// batch after batch reuses one allocation (`finish` hands it back).
    pub fn reusing(mut buffer: Vec<u8>, legacy: bool) -> Self {
        buffer.clear();
        buffer.extend_from_slice(&[0; 4]);
        BatchEncoder {
            out: buffer,
            count: 0,
            legacy,
        }
    }

    /// Adds one event.
    pub fn push(&mut self, event: &EventView<'_>) {
        self.out.extend_from_slice(&event.position.to_le_bytes());
        self.out.extend_from_slice(&event.revision.to_le_bytes());
        if !self.legacy {
            self.out.extend_from_slice(&event.id);
            self.out
                .extend_from_slice(&event.recorded_at_micros.to_le_bytes());
        }
        put_bytes(&mut self.out, event.stream.as_bytes());
        put_bytes(&mut self.out, event.event_type.as_bytes());
        put_bytes(&mut self.out, event.data);
        match event.metadata {
            Some(metadata) => {
                self.out.push(1);
                put_bytes(&mut self.out, metadata);
            }
            None => self.out.push(0),
        }
        self.count += 1;
    }

    /// Events added so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no event was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded batch.
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes();
        self.out
    }

    /// The batch so far, encoded; more events may be added after.
    pub fn bytes(&mut self) -> &[u8] {
        self.out[..4].copy_from_slice(&self.count.to_le_bytes());
        &self.out
    }

    /// Empties it, keeping its memory.
    pub fn clear(&mut self) {
        self.out.truncate(4);
        self.count = 0;
    }
}

/// Builds an encoded list of writes.
#[derive(Debug)]
pub struct WritesEncoder {
    out: Vec<u8>,
    count: u32,
}

impl Default for WritesEncoder {
    fn default() -> Self {
        WritesEncoder {
            out: vec![0; 4],
            count: 0,
        }
    }
}

impl WritesEncoder {
    /// Adds one write.
    pub fn push(&mut self, write: WriteView<'_>) {
        match write {
            WriteView::Put(key, value) => {
                self.out.push(1);
                put_bytes(&mut self.out, key.as_bytes());
                put_bytes(&mut self.out, value);
            }
            WriteView::Delete(key) => {
                self.out.push(0);
                put_bytes(&mut self.out, key.as_bytes());
            }
        }
        self.count += 1;
    }

    /// The encoded writes.
    pub fn finish(mut self) -> Vec<u8> {
        self.out[..4].copy_from_slice(&self.count.to_le_bytes());
        self.out
    }
}

/// An upcaster's answer for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpcastView<'a> {
    /// The event is already in its current shape.
    Unchanged,
    /// The event's current type, data and metadata.
    Changed {
        /// The event type.
        event_type: &'a str,
        /// JSON text.
        data: &'a [u8],
        /// JSON text, if any.
        metadata: Option<&'a [u8]>,
    },
}

/// Builds an encoded list of upcasts.
#[derive(Debug)]
pub struct UpcastEncoder {
    out: Vec<u8>,
    count: u32,
}

impl Default for UpcastEncoder {
    fn default() -> Self {
        UpcastEncoder {
            out: vec![0; 4],
            count: 0,
        }
    }
}

impl UpcastEncoder {
    /// An empty list with room for `bytes` bytes of answers.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut out = Vec::with_capacity(bytes.max(4));
        out.extend_from_slice(&[0; 4]);
        UpcastEncoder { out, count: 0 }
    }

    /// Adds the answer for the next event.
    pub fn push(&mut self, upcast: UpcastView<'_>) {
        match upcast {
            UpcastView::Unchanged => self.out.push(0),
            UpcastView::Changed {
                event_type,
                data,
                metadata,
            } => {
                self.out.push(1);
                put_bytes(&mut self.out, event_type.as_bytes());
                put_bytes(&mut self.out, data);
                match metadata {
                    Some(metadata) => {
                        self.out.push(1);
                        put_bytes(&mut self.out, metadata);
                    }
                    None => self.out.push(0),
                }
            }
        }
        self.count += 1;
    }

    /// The encoded answers.
    pub fn finish(mut self) -> Vec<u8> {
        self.out[..4].copy_from_slice(&self.count.to_le_bytes());
        self.out
    }
}

/// Reads values off the front of a byte slice.
#[derive(Debug)]
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError("string is not UTF-8"))
    }
}

/// Decodes an encoded batch.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<EventView<'_>>, DecodeError> {
    let mut events = BatchIter::new(bytes)?;
    // Every event takes at least 57 bytes: do not trust `count` for the allocation.
    let mut decoded = Vec::with_capacity(events.remaining.min(bytes.len() / 57));
    for event in &mut events {
        decoded.push(event?);
    }
    Ok(decoded)
}

/// The events of an encoded batch, decoded one at a time (no list of them is built); the last
/// item is an error if the bytes do not end with the last event.
#[derive(Debug)]
pub struct BatchIter<'a> {
    reader: Reader<'a>,
    remaining: usize,
    failed: bool,
}

impl<'a> BatchIter<'a> {
    /// Reads the batch's header.
    pub fn new(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader { bytes };
        let remaining = reader.u32()? as usize;
        Ok(BatchIter {
            reader,
            remaining,
            failed: false,
        })
    }

    fn event(&mut self) -> Result<EventView<'a>, DecodeError> {
        let reader = &mut self.reader;
        let position = reader.u64()?;
        let revision = reader.u64()?;
        let id = reader.take(16)?.try_into().expect("16 bytes");
        let recorded_at_micros = reader.u64()?;
        let stream = reader.str()?;
        let event_type = reader.str()?;
        let data = reader.bytes()?;
        let metadata = match reader.u8()? {
            0 => None,
            1 => Some(reader.bytes()?),
            _ => return Err(DecodeError("bad metadata flag")),
        };
        Ok(EventView {
            position,
            revision,
            id,
            recorded_at_micros,
            stream,
            event_type,
            data,
            metadata,
        })
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<EventView<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.remaining == 0 {
            if self.reader.bytes.is_empty() {
                return None;
            }
            self.failed = true;
            return Some(Err(DecodeError("trailing bytes")));
        }
        self.remaining -= 1;
        let event = self.event();
        self.failed = event.is_err();
        Some(event)
    }
}

/// Decodes encoded writes.
pub fn decode_writes(bytes: &[u8]) -> Result<Vec<WriteView<'_>>, DecodeError> {
    let mut reader = Reader { bytes };
    let count = reader.u32()? as usize;
    let mut writes = Vec::with_capacity(count.min(bytes.len() / 5));
    for _ in 0..count {
        let write = match reader.u8()? {
            1 => WriteView::Put(reader.str()?, reader.bytes()?),
            0 => WriteView::Delete(reader.str()?),
            _ => return Err(DecodeError("bad write kind")),
        };
        writes.push(write);
    }
    if !reader.bytes.is_empty() {
        return Err(DecodeError("trailing bytes"));
    }
    Ok(writes)
}

/// Where one write's key and value lie in the encoded writes; `value` is `None` for a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRange {
    /// The key's bytes (checked to be UTF-8).
    pub key: std::ops::Range<usize>,
    /// The value's bytes.
    pub value: Option<std::ops::Range<usize>>,
}

/// Decodes encoded writes as ranges of `bytes`, for a reader that keeps the bytes and looks
/// writes up later. Accepts exactly what [`decode_writes`] accepts.
pub fn decode_write_ranges(bytes: &[u8]) -> Result<Vec<WriteRange>, DecodeError> {
    let mut reader = Reader { bytes };
    let count = reader.u32()? as usize;
    let mut writes = Vec::with_capacity(count.min(bytes.len() / 5));
    let range = |reader: &mut Reader<'_>| -> Result<std::ops::Range<usize>, DecodeError> {
        let piece = reader.bytes()?;
        let end = bytes.len() - reader.bytes.len();
        Ok(end - piece.len()..end)
    };
    for _ in 0..count {
        let put = match reader.u8()? {
            1 => true,
            0 => false,
            _ => return Err(DecodeError("bad write kind")),
        };
        let key = range(&mut reader)?;
        std::str::from_utf8(&bytes[key.clone()]).map_err(|_| DecodeError("string is not UTF-8"))?;
        let value = if put { Some(range(&mut reader)?) } else { None };
        writes.push(WriteRange { key, value });
    }
    if !reader.bytes.is_empty() {
        return Err(DecodeError("trailing bytes"));
    }
    Ok(writes)
}

/// Decodes an upcaster's encoded answers.
pub fn decode_upcasts(bytes: &[u8]) -> Result<Vec<UpcastView<'_>>, DecodeError> {
    let mut reader = Reader { bytes };
    let count = reader.u32()? as usize;
    let mut upcasts = Vec::with_capacity(count.min(bytes.len()));
    for _ in 0..count {
        let upcast = match reader.u8()? {
            0 => UpcastView::Unchanged,
            1 => UpcastView::Changed {
                event_type: reader.str()?,
                data: reader.bytes()?,
                metadata: match reader.u8()? {
                    0 => None,
                    1 => Some(reader.bytes()?),
                    _ => return Err(DecodeError("bad metadata flag")),
                },
            },
            _ => return Err(DecodeError("bad upcast kind")),
        };
        upcasts.push(upcast);
    }
    if !reader.bytes.is_empty() {
        return Err(DecodeError("trailing bytes"));
    }
    Ok(upcasts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip() {
        let events = [
            EventView {
                position: 1,
                revision: 0,
                id: [7; 16],
                recorded_at_micros: 1_700_000_000_000_000,
                stream: "order-1",
                event_type: "OrderPlaced",
                data: b"{\"a\":1}",
                metadata: None,
            },
            EventView {
                position: 9,
                revision: 4,
                id: [0; 16],
                recorded_at_micros: 0,
                stream: "cart-é",
                event_type: "",
                data: b"null",
                metadata: Some(b"{}"),
            },
        ];
        let mut encoder = BatchEncoder::new();
        for event in &events {
            encoder.push(event);
        }
        let bytes = encoder.finish();
        assert_eq!(decode_batch(&bytes).unwrap(), events);
        for cut in 0..bytes.len() {
            assert!(decode_batch(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn an_encoder_shows_its_batch_so_far_and_is_cleared_for_the_next() {
        let event = |position| EventView {
            position,
            revision: 0,
            id: [1; 16],
            recorded_at_micros: 2,
            stream: "s",
            event_type: "t",
            data: b"{}",
            metadata: None,
        };
        let mut encoder = BatchEncoder::new();
        encoder.push(&event(1));
        assert_eq!(decode_batch(encoder.bytes()).unwrap(), [event(1)]);
        encoder.push(&event(2));
        assert_eq!(decode_batch(encoder.bytes()).unwrap(), [event(1), event(2)]);
        encoder.clear();
        assert!(encoder.is_empty());
        encoder.push(&event(3));
        assert_eq!(decode_batch(encoder.bytes()).unwrap(), [event(3)]);
    }

    #[test]
    fn legacy_batches_leave_out_the_id_and_the_time() {
        let event = EventView {
            position: 3,
            revision: 1,
            id: [9; 16],
            recorded_at_micros: 5,
            stream: "s",
            event_type: "t",
            data: b"1",
            metadata: None,
        };
        let mut current = BatchEncoder::new();
        current.push(&event);
        let mut legacy = BatchEncoder::legacy();
        legacy.push(&event);
        let (current, legacy) = (current.finish(), legacy.finish());
        assert_eq!(current.len(), legacy.len() + 24);
        // The 0.1.0 layout: count, position, revision, then the stream right away.
        assert_eq!(&legacy[..4], &1u32.to_le_bytes());
        assert_eq!(&legacy[4..12], &3u64.to_le_bytes());
        assert_eq!(&legacy[12..20], &1u64.to_le_bytes());
        assert_eq!(&legacy[20..25], &[1, 0, 0, 0, b's']);
    }

    #[test]
    fn writes_round_trip_and_reject_garbage() {
        let writes = [WriteView::Put("k", b"[1]"), WriteView::Delete("gone")];
        let mut encoder = WritesEncoder::default();
        for write in writes {
            encoder.push(write);
        }
        let bytes = encoder.finish();
        assert_eq!(decode_writes(&bytes).unwrap(), writes);
        assert!(decode_writes(&[255, 255, 255, 255]).is_err());
        assert!(decode_writes(&[1, 0, 0, 0, 7]).is_err());
    }

    #[test]
    fn upcasts_round_trip_and_reject_garbage() {
        let upcasts = [
            UpcastView::Unchanged,
            UpcastView::Changed {
                event_type: "OrderPlaced",
                data: b"{\"amount\":{\"amount\":1,\"currency\":\"EUR\"}}",
                metadata: Some(b"{}"),
            },
            UpcastView::Changed {
                event_type: "",
                data: b"null",
                metadata: None,
            },
        ];
        let mut encoder = UpcastEncoder::default();
        for upcast in upcasts {
            encoder.push(upcast);
        }
        let bytes = encoder.finish();
        assert_eq!(&bytes[..5], &[3, 0, 0, 0, 0]);
        assert_eq!(decode_upcasts(&bytes).unwrap(), upcasts);
        for cut in 0..bytes.len() {
            assert!(decode_upcasts(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_upcasts(&[1, 0, 0, 0, 2]).is_err());
    }
}
