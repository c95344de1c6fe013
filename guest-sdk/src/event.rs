//! An event handed to a projection.

use lantern_wire::EventView;
use serde::de::DeserializeOwned;

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

    /// The data decoded into your own type.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(self.view.data).map_err(|e| {
            crate::Error::new(format!(
                "{} at position {}: data does not fit: {e}",
                self.view.event_type, self.view.position
            ))
        })
    }

    /// The data as raw JSON text.
    pub fn data_json(&self) -> &'a [u8] {
        self.view.data
    }

    /// The metadata decoded into your own type, `None` when the event has none.
    pub fn metadata<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        match self.view.metadata {
            None => Ok(None),
            Some(bytes) => Ok(Some(serde_json::from_slice(bytes)?)),
        }
    }
}
