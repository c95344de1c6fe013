//! Run a projection under plain `cargo test`, without wasm: feed it events, then look at its
//! state and ask its queries. The same code paths as in the server: events go through the wire
//! encoding, writes are buffered per batch and applied only when the whole batch succeeds.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lantern_wire::{BatchEncoder, EventView, WriteView};
use serde_json::Value;

use crate::state::{Backend, Remembered, State};
use crate::{Error, Event, Params, Projection, QueryError, Result, Upcaster};

type Map = Rc<RefCell<BTreeMap<String, Vec<u8>>>>;

struct MapBackend(Map);

impl Backend for MapBackend {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.0.borrow().get(key).cloned()
    }

    fn scan(&self, prefix: &str, after: &str, limit: u32) -> Vec<(String, Vec<u8>)> {
        self.0
            .borrow()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| k.as_str() > after)
            .take(limit as usize)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// An event to feed the harness.
#[derive(Debug, Clone)]
pub struct TestEvent {
    /// The stream.
    pub stream: String,
    /// The event type.
    pub event_type: String,
    /// The data.
    pub data: Value,
    /// The metadata.
    pub metadata: Option<Value>,
    /// When it was recorded; by default the harness's clock (see [`Harness::batch`]).
    pub recorded_at: Option<SystemTime>,
    /// Its id; by default one made from its position.
    pub id: Option<[u8; 16]>,
}

impl TestEvent {
    /// An event without metadata.
    pub fn new(stream: &str, event_type: &str, data: Value) -> Self {
        TestEvent {
            stream: stream.into(),
            event_type: event_type.into(),
            data,
            metadata: None,
            recorded_at: None,
            id: None,
        }
    }

    /// The same event, recorded at `time`.
    pub fn at(mut self, time: SystemTime) -> Self {
        self.recorded_at = Some(time);
        self
    }

    /// The same event, with this id.
    pub fn with_id(mut self, id: [u8; 16]) -> Self {
        self.id = Some(id);
        self
    }
}

/// Where the harness's clock starts: 2026-01-01T00:00:00Z.
const CLOCK_START_SECS: u64 = 1_767_225_600;

/// An event's type, data and metadata after an upcaster: `None` when it is unchanged.
type Upcasted = Option<(String, Vec<u8>, Option<Vec<u8>>)>;
type UpcastFn = fn(&EventView<'_>) -> Result<Upcasted>;

/// Runs `U` on one event as the host does (through the wire encodings, and only when `U` takes
/// the event's type); refuses an answer whose type `U` does not give.
fn upcast_view<U: Upcaster>(view: &EventView<'_>) -> Result<Upcasted> {
    let types = U::types();
    if !types.takes.iter().any(|t| t == view.event_type) {
        return Ok(None);
    }
    let mut batch = BatchEncoder::new();
    batch.push(view);
    let answers = crate::upcaster::upcast_batch::<U>(&batch.finish())
        .map_err(|(position, e)| Error::new(format!("upcasting position {position}: {e}")))?;
    let answers = lantern_wire::decode_upcasts(&answers).expect("the SDK encodes valid upcasts");
    match answers.first() {
        Some(lantern_wire::UpcastView::Changed {
            event_type,
            data,
            metadata,
        }) => {
            if *event_type != view.event_type && !types.gives.iter().any(|t| t == event_type) {
                return Err(Error::new(format!(
                    "the upcaster answered type {event_type:?}, which it does not give (UpcastTypes::gives)"
                )));
            }
            Ok(Some((
                (*event_type).to_owned(),
                data.to_vec(),
                metadata.map(<[u8]>::to_vec),
            )))
        }
        _ => Ok(None),
    }
}

/// Runs the upcaster `U` on `event` as the server would (at position 1, revision 0): the event's
/// current shape. An event of a type `U` does not take comes back as it is.
pub fn upcast<U: Upcaster>(event: &TestEvent) -> Result<TestEvent> {
    let data = serde_json::to_vec(&event.data)?;
    let metadata = event
        .metadata
        .as_ref()
        .map(serde_json::to_vec)
        .transpose()?;
    let view = EventView {
        position: 1,
        revision: 0,
        id: event.id.unwrap_or([0; 16]),
        recorded_at_micros: 0,
        stream: &event.stream,
        event_type: &event.event_type,
        data: &data,
        metadata: metadata.as_deref(),
    };
    let mut upcast = event.clone();
    if let Some((event_type, data, metadata)) = upcast_view::<U>(&view)? {
        upcast.event_type = event_type;
        upcast.data = serde_json::from_slice(&data)?;
        upcast.metadata = metadata.map(|m| serde_json::from_slice(&m)).transpose()?;
    }
    Ok(upcast)
}

/// A projection with an in-memory read model and a log of its own.
pub struct Harness<P> {
    state: Map,
    /// As the guest remembers between batches (a failed batch forgets).
    remembered: Remembered,
    position: u64,
    revisions: BTreeMap<String, u64>,
    upcasters: Vec<UpcastFn>,
    _projection: PhantomData<P>,
}

impl<P: Projection> Default for Harness<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Projection> Harness<P> {
    /// An empty read model at position 0.
    pub fn new() -> Self {
        Harness {
            state: Map::default(),
            remembered: Remembered::default(),
            position: 0,
            revisions: BTreeMap::new(),
            upcasters: Vec::new(),
            _projection: PhantomData,
        }
    }

    /// Passes every event through the upcaster `U` before the projection sees it (after the
    /// upcasters added before, as the server chains them by name).
    pub fn upcast_with<U: Upcaster>(mut self) -> Self {
        self.upcasters.push(upcast_view::<U>);
        self
    }

    /// Appends one event and folds it as a batch of one.
    pub fn append(&mut self, stream: &str, event_type: &str, data: Value) -> Result<()> {
        self.batch(vec![TestEvent::new(stream, event_type, data)])
    }

    /// Appends events and folds them as one batch, as the host does: only subscribed events
    /// reach the projection, and if one fails, none of the batch's writes are kept. An event
    /// without a time of its own is recorded at 2026-01-01T00:00:00Z plus its position in
    /// milliseconds; one without an id gets the position's bytes as its id.
    pub fn batch(&mut self, events: Vec<TestEvent>) -> Result<()> {
        let subscription = P::subscription();
        struct Placed<'a> {
            position: u64,
            revision: u64,
            id: [u8; 16],
            recorded_at_micros: u64,
            event: &'a TestEvent,
            data: Vec<u8>,
            metadata: Option<Vec<u8>>,
        }
        impl Placed<'_> {
            /// The event as the guest sees it, with this type, data and metadata.
            fn view<'v>(
                &'v self,
                event_type: &'v str,
                data: &'v [u8],
                metadata: Option<&'v [u8]>,
            ) -> EventView<'v> {
                EventView {
                    position: self.position,
                    revision: self.revision,
                    id: self.id,
                    recorded_at_micros: self.recorded_at_micros,
                    stream: &self.event.stream,
                    event_type,
                    data,
                    metadata,
                }
            }
        }
        let placed: Vec<Placed<'_>> = events
            .iter()
            .map(|event| {
                self.position += 1;
                let next_revision = self.revisions.entry(event.stream.clone()).or_insert(0);
                let revision = *next_revision;
                *next_revision += 1;
                let recorded_at = event.recorded_at.unwrap_or_else(|| {
                    UNIX_EPOCH
                        + Duration::from_secs(CLOCK_START_SECS)
                        + Duration::from_millis(self.position)
                });
                Placed {
                    position: self.position,
                    revision,
                    id: event
                        .id
                        .unwrap_or_else(|| u128::from(self.position).to_be_bytes()),
                    recorded_at_micros: recorded_at
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros() as u64),
                    event,
                    data: serde_json::to_vec(&event.data).expect("JSON values serialize"),
                    metadata: event
                        .metadata
                        .as_ref()
                        .map(|m| serde_json::to_vec(m).expect("JSON values serialize")),
                }
            })
            .collect();
        let mut encoder = BatchEncoder::new();
        for placed in &placed {
            let (mut event_type, mut data, mut metadata) = (
                placed.event.event_type.clone(),
                placed.data.clone(),
                placed.metadata.clone(),
            );
            for upcaster in &self.upcasters {
                if let Some(upcast) =
                    upcaster(&placed.view(&event_type, &data, metadata.as_deref()))?
                {
                    (event_type, data, metadata) = upcast;
                }
            }
            if subscription.matches(&placed.event.stream, &event_type) {
                encoder.push(&placed.view(&event_type, &data, metadata.as_deref()));
            }
        }
        let encoded = encoder.finish();
        let views =
            lantern_wire::decode_batch(&encoded).expect("the harness encodes valid batches");
        let mut state = State::remembering(
            Box::new(MapBackend(self.state.clone())),
            std::mem::take(&mut self.remembered),
        );
        for view in views {
            P::handle(&Event { view }, &mut state)?;
        }
        let (writes, remembered) = state.into_writes()?;
        self.remembered = remembered;
        let mut map = self.state.borrow_mut();
        for write in lantern_wire::decode_writes(&writes).expect("the SDK encodes valid writes") {
            match write {
                WriteView::Put(key, value) => {
                    map.insert(key.to_owned(), value.to_vec());
                }
                WriteView::Delete(key) => {
                    map.remove(key);
                }
            }
        }
        Ok(())
    }

    /// The JSON value under `key`, if any.
    pub fn get(&self, key: &str) -> Option<Value> {
        let map = self.state.borrow();
        map.get(key)
            .map(|bytes| serde_json::from_slice(bytes).expect("the value under the key is JSON"))
    }

    /// Every key and JSON value of the read model, in key order.
    pub fn entries(&self) -> Vec<(String, Value)> {
        self.state
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::from_slice(v).unwrap_or(Value::Null)))
            .collect()
    }

    /// Asks a query, with parameters as name/value pairs.
    pub fn query(&self, name: &str, params: &[(&str, &str)]) -> Result<Value, QueryError> {
        let state = State::new(Box::new(MapBackend(self.state.clone())));
        P::query(name, &Params::new(params.iter().copied()), &state)
    }

    /// The position of the last event appended.
    pub fn position(&self) -> u64 {
        self.position
    }
}
