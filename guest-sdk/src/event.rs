//! An event handed to a projection.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lantern_wire::EventView;
use serde::Deserialize;

use crate::Result;

/// One event of the log, as a projection sees it.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub(crate) view: EventView<'a>,
}

impl<'a> Event<'a> {
    /// Position in the global log, from 1.
    pub fn position(&self) -> u64 {
        self.view.position
    }

    /// Revision in its stream, from 0.
    pub fn revision(&self) -> u64 {
        self.view.revision
    }

    /// The event's id: unique in the store; the one the writer gave, or one the store made.
    pub fn id(&self) -> EventId {
        EventId(self.view.id)
    }

    /// When the store recorded the event (the leader's clock at its append). Use this, never the
    /// clock (which a projection does not have: it must fold the same way on every replay).
    pub fn recorded_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.view.recorded_at_micros)
    }

    /// [`Event::recorded_at`] in microseconds since the Unix epoch.
    pub fn recorded_at_micros(&self) -> u64 {
        self.view.recorded_at_micros
    }

    /// The stream's name.
    pub fn stream(&self) -> &'a str {
        self.view.stream
    }

    /// The stream's category: the part of its name before the first `-`.
    pub fn category(&self) -> &'a str {
        let stream = self.view.stream;
        stream.split_once('-').map_or(stream, |(c, _)| c)
    }

    /// The event type.
    pub fn event_type(&self) -> &'a str {
        self.view.event_type
    }

    /// The data decoded into your own type. The type may borrow from the event (a field
    /// `#[serde(borrow)] name: Cow<'a, str>` is not copied unless the JSON escapes it), which
    /// saves a guest an allocation per string it reads.
    pub fn data<T: Deserialize<'a>>(&self) -> Result<T> {
        let fail = |e: &dyn std::fmt::Display| {
            crate::Error::new(format!(
                "{} at position {}: data does not fit: {e}",
                self.view.event_type, self.view.position
            ))
        };
        // Checked as UTF-8 once, not string by string (JSON text is UTF-8: the store only takes
        // valid JSON): a sixteenth of a typical handler's time in wasm.
        let text = std::str::from_utf8(self.view.data).map_err(|e| fail(&e))?;
        serde_json::from_str(text).map_err(|e| fail(&e))
    }

    /// The data as raw JSON text.
    pub fn data_json(&self) -> &'a [u8] {
        self.view.data
    }

    /// The metadata decoded into your own type, `None` when the event has none.
    pub fn metadata<T: Deserialize<'a>>(&self) -> Result<Option<T>> {
        match self.view.metadata {
            None => Ok(None),
            Some(bytes) => Ok(Some(serde_json::from_slice(bytes)?)),
        }
    }
}

/// An event's id: a UUID, shown in its usual form (`0192f4c5-...`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub [u8; 16]);

impl EventId {
    /// The UUID's 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::EventId;

    #[test]
    fn ids_print_as_uuids() {
        let id = EventId([
            0x01, 0x92, 0xf4, 0xc5, 0x7a, 0x00, 0x70, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x2a,
        ]);
        assert_eq!(id.to_string(), "0192f4c5-7a00-7000-8000-00000000002a");
    }
}
