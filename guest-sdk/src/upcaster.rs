//! Upcasters: stored events of an old shape, seen in their current shape.

use lantern_wire::{EventView, UpcastEncoder, UpcastView};
use serde_json::Value;

use crate::{Error, Event, Result};

/// An upcaster: turns events of the types it takes into their current shape. The stored events
/// never change; readers (`/streams`, `/all`, `/subscribe`) and projections see the upcaster's
/// answer, and `?raw=true` reads the stored form.
///
/// ```
/// use lantern_sdk::{Event, Upcast, UpcastTypes, Upcaster, json};
///
/// /// `OrderPlaced.amount` was once an integer of cents; it is now `{"amount", "currency"}`.
/// struct AmountWithCurrency;
///
/// impl Upcaster for AmountWithCurrency {
///     fn types() -> UpcastTypes {
///         UpcastTypes::new().takes("OrderPlaced")
///     }
///
///     fn upcast(event: &Event<'_>) -> lantern_sdk::Result<Upcast> {
///         let mut data: lantern_sdk::Value = event.data()?;
///         match data["amount"].as_i64() {
///             Some(cents) => {
///                 data["amount"] = json!({"amount": cents, "currency": "EUR"});
///                 Ok(Upcast::data(data))
///             }
///             None => Ok(Upcast::unchanged()), // already the current shape
///         }
///     }
/// }
///
/// lantern_sdk::export_upcaster!(AmountWithCurrency);
///
/// let old = lantern_sdk::testing::TestEvent::new("order-1", "OrderPlaced", json!({"amount": 250}));
/// let upcast = lantern_sdk::testing::upcast::<AmountWithCurrency>(&old).unwrap();
/// assert_eq!(upcast.data, json!({"amount": {"amount": 250, "currency": "EUR"}}));
/// ```
///
/// **What it may change.** An event's type, data and metadata; never its position, stream,
/// revision, id or time. It sees only events whose stored type (or, in a chain, whose type as the
/// upcasters before it left it) is one it [takes](UpcastTypes::takes), and an answer whose type is
/// neither the event's own nor one it [gives](UpcastTypes::gives) is refused: the server knows from
/// these lists which projections an upcaster affects, and rebuilds exactly those when it changes.
///
/// **Chains.** Several upcasters run in the byte order of their names (`001-order-amounts`, then
/// `002-order-rename`): each sees the previous one's answer.
///
/// **Old and current shapes.** It is given every event of a type it takes, old or already
/// current, so it must recognise the current shape and answer [`Upcast::unchanged`] (which is
/// also the cheapest answer).
///
/// **Determinism and faults.** Like a projection it has no clock, randomness, files or network,
/// and must answer the same for the same event every time. An `Err` or a panic is a fault: reads
/// that need the event answer 500 `upcast_failed` with its position, projections that need it
/// fault, and everything else goes on.
pub trait Upcaster {
    /// The types it takes, and every type its answers may have besides an event's own.
    fn types() -> UpcastTypes;

    /// The event in its current shape.
    fn upcast(event: &Event<'_>) -> Result<Upcast>;
}

/// The event types an upcaster takes and gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpcastTypes {
    /// Types it is given.
    pub takes: Vec<String>,
    /// Types its answers may have, besides the event's own.
    pub gives: Vec<String>,
}

impl UpcastTypes {
    /// No types yet.
    pub fn new() -> Self {
        UpcastTypes::default()
    }

    /// Adds a type it takes.
    pub fn takes(mut self, event_type: impl Into<String>) -> Self {
        self.takes.push(event_type.into());
        self
    }

    /// Adds a type its answers may have (a rename's new name).
    pub fn gives(mut self, event_type: impl Into<String>) -> Self {
        self.gives.push(event_type.into());
        self
    }
}

/// An upcaster's answer for one event: what changes. Unset parts stay as the event has them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Upcast {
    event_type: Option<std::borrow::Cow<'static, str>>,
    /// JSON text, or why the value could not be serialized.
    data: Option<std::result::Result<Vec<u8>, String>>,
    metadata: Option<Option<Value>>,
}

impl Upcast {
    /// Nothing changes: the event is already in its current shape.
    pub fn unchanged() -> Self {
        Upcast::default()
    }

    /// New data (a [`Value`], or any `Serialize` type: a struct of borrowed fields is the
    /// fastest); the type and metadata stay.
    pub fn data(data: impl serde::Serialize) -> Self {
        Upcast {
            data: Some(serde_json::to_vec(&data).map_err(|e| e.to_string())),
            ..Upcast::default()
        }
    }

    /// Also a new type (it must be one the upcaster [gives](UpcastTypes::gives)).
    pub fn with_type(mut self, event_type: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Also new metadata (`None`: none).
    pub fn with_metadata(mut self, metadata: Option<Value>) -> Self {
        self.metadata = Some(metadata);
        self
    }

    fn is_unchanged(&self) -> bool {
        self.event_type.is_none() && self.data.is_none() && self.metadata.is_none()
    }
}

/// Upcasts an encoded batch with `U`; returns the encoded answers, or the position and message
/// of the event it failed on. What the wasm export and the test harness both run.
pub(crate) fn upcast_batch<U: Upcaster>(
    batch: &[u8],
) -> std::result::Result<Vec<u8>, (u64, Error)> {
    let decode = |e: lantern_wire::DecodeError| (0, Error::new(e.to_string()));
    let events = lantern_wire::BatchIter::new(batch).map_err(decode)?;
    let mut out = UpcastEncoder::with_capacity(batch.len());
    for view in events {
        let view = view.map_err(decode)?;
        let position = view.position;
        let answer = U::upcast(&Event { view }).map_err(|e| (position, e))?;
        push_answer(&mut out, &view, &answer).map_err(|e| (position, e))?;
    }
    Ok(out.finish())
}

fn push_answer(out: &mut UpcastEncoder, event: &EventView<'_>, answer: &Upcast) -> Result<()> {
    if answer.is_unchanged() {
        out.push(UpcastView::Unchanged);
        return Ok(());
    }
    let data = match &answer.data {
        Some(Ok(data)) => data.as_slice(),
        Some(Err(error)) => return Err(Error::new(format!("the new data: {error}"))),
        None => event.data,
    };
    let metadata = match &answer.metadata {
        Some(Some(metadata)) => Some(serde_json::to_vec(metadata)?),
        Some(None) => None,
        None => event.metadata.map(<[u8]>::to_vec),
    };
    out.push(UpcastView::Changed {
        event_type: answer.event_type.as_deref().unwrap_or(event.event_type),
        data,
        metadata: metadata.as_deref(),
    });
    Ok(())
}

/// Exports an [`Upcaster`] as the module's upcaster (instead of a projection). Use it once per
/// crate.
#[macro_export]
macro_rules! export_upcaster {
    ($upcaster:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __LanternExportedUpcaster = $crate::__guest::upcaster::UpcasterAdapter<$upcaster>;
            $crate::__guest::upcaster::__export_upcaster!(__LanternExportedUpcaster with_types_in $crate::__guest::upcaster);
        };
    };
}
