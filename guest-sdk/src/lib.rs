//! Write [Lantern](https://example.invalid/lantern) projections in Rust.
//!
//! A projection folds the event log into a read model: JSON values by string key, which clients
//! read over HTTP by key, by prefix, or through the projection's own named queries. Build it for
//! `wasm32-wasip2` and deploy the `.wasm` file; test it natively with [`testing::Harness`].
//!
//! ```
//! use lantern_sdk::{Event, Params, Projection, QueryError, State, Subscription, Value, json};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct OrderPlaced {
//!     customer: String,
//!     amount: i64,
//! }
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Totals {
//!     orders: i64,
//!     total: i64,
//! }
//!
//! struct OrderTotals;
//!
//! impl Projection for OrderTotals {
//!     fn subscription() -> Subscription {
//!         Subscription::all().category("order")
//!     }
//!
//!     fn handle(event: &Event<'_>, state: &mut State) -> lantern_sdk::Result<()> {
//!         if event.event_type() == "OrderPlaced" {
//!             let placed: OrderPlaced = event.data()?;
//!             state.update(&format!("customer:{}", placed.customer), |t: &mut Totals| {
//!                 t.orders += 1;
//!                 t.total += placed.amount;
//!             })?;
//!         }
//!         Ok(())
//!     }
//!
//!     fn query(name: &str, params: &Params, state: &State) -> Result<Value, QueryError> {
//!         match name {
//!             "customer" => {
//!                 let id = params.require("id")?;
//!                 let totals: Option<Totals> = state.get(&format!("customer:{id}"))?;
//!                 Ok(json!(totals.map(|t| t.total)))
//!             }
//!             _ => Err(QueryError::NotFound),
//!         }
//!     }
//! }
//!
//! lantern_sdk::export!(OrderTotals);
//!
//! // The same projection under plain `cargo test`:
//! let mut harness = lantern_sdk::testing::Harness::<OrderTotals>::new();
//! harness.append("order-1", "OrderPlaced", json!({"customer": "c-1", "amount": 250})).unwrap();
//! harness.append("order-2", "OrderPlaced", json!({"customer": "c-1", "amount": 100})).unwrap();
//! assert_eq!(harness.get("customer:c-1"), Some(json!({"orders": 2, "total": 350})));
//! assert_eq!(harness.query("customer", &[("id", "c-1")]).unwrap(), json!(350));
//! ```
//!
//! # The model
//!
//! **Subscription.** [`Projection::subscription`] names the events the projection wants: by
//! category (the part of the stream name before the first `-`: `order-42` is in `order`), by
//! stream, and by event type; lists combine as "any category or stream listed, and any type
//! listed"; [`Subscription::all`] alone is every event. The host filters before the module runs,
//! so unwanted events cost nothing.
//!
//! **Events.** An [`Event`] has its place in the log ([`Event::position`], global and gapless
//! from 1; [`Event::revision`] in its stream, from 0), its [`Event::stream`] and
//! [`Event::category`], [`Event::event_type`], [`Event::id`], [`Event::recorded_at`] (the store's
//! clock when it was appended), and its JSON [`Event::data`] and [`Event::metadata`], decoded into
//! your types with serde.
//!
//! **Batches and what a read sees.** The host hands events over in batches (up to 32,768, or
//! one at a time while live). During a batch, [`State::get`] and [`State::scan`] see the read
//! model as of the batch's start plus the batch's own writes; the writes reach the host once, at
//! the end of the batch, which commits them with the projection's checkpoint in one transaction:
//! the read model is always exactly the fold of the log up to its checkpoint. Clients that wrote
//! an event read their own write by passing its position as `min_position`.
//!
//! **Determinism.** A projection is rebuilt from position 1 whenever a new version is deployed
//! (beside the serving one, which answers until the new one has caught up), and followers run it
//! over their copy of the log. It must therefore be a function of the events alone: it has no
//! clock (use [`Event::recorded_at`]), no randomness, no files, no network and no environment.
//!
//! **Queries.** [`Projection::query`] answers `GET /projections/{name}/query/{query}?a=1&b=x`
//! with JSON; [`Params`] holds the query string. It reads a consistent snapshot and cannot write.
//! Return [`QueryError::NotFound`] for an unknown name (404), [`QueryError::Failed`] or any
//! [`Error`] (via `?`) for a bad request (400). Plain key and prefix reads need no code:
//! `GET /projections/{name}/state/{key}` and `?prefix=`.
//!
//! **Errors and faults.** An `Err` from [`Projection::handle`] fails the whole batch: none of its
//! writes are kept, the host retries the batch one event at a time to find the failing event, and
//! the projection stops as `faulted` with that event's position and your message (its read model
//! keeps answering, with every event before the failing one folded). A panic or trap, running out of memory, or a call
//! longer than the time limit is a fault the same way; it never affects other projections or the
//! server. Deploy a fixed module to rebuild.
//!
//! **Testing.** [`testing::Harness`] runs the projection natively under `cargo test` with the
//! host's batch semantics (subscription filtering, all-or-nothing batches, the wire encoding);
//! give events a time with [`testing::TestEvent::at`].
//!
//! **Upcasters.** When the shape of an event changes, keep the projection written against
//! today's shape and deploy an [`Upcaster`]: a module of its own that turns stored events of old
//! shapes into today's on every read path, projections' input included. Test it with
//! [`testing::upcast`] and a projection over every shape with [`testing::Harness::upcast_with`];
//! `docs/upcasters.md` is the guide.
//!
//! **Limits** (per instance, the server's defaults): 64 MiB of linear memory, 5 s per call into
//! the module, 32 MiB for the module and for one batch's writes.
//!
//! `lantern new NAME` makes a crate to start from; `docs/projections.md` walks from there to a
//! live rebuild.
#![deny(missing_docs)]

// The generated bindings name this crate by its public path, inside it too.
#[cfg(target_arch = "wasm32")]
extern crate self as lantern_sdk;

mod event;
mod log;
mod state;
pub mod testing;
mod upcaster;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __guest;

use std::collections::BTreeMap;

pub use event::{Event, EventId};
pub use log::{Level, log};
pub use serde_json::{Value, json};
pub use state::State;
pub use upcaster::{Upcast, UpcastTypes, Upcaster};

/// A projection: which events it wants, how it folds them, and the queries it answers.
pub trait Projection {
    /// The events this projection wants. The host skips the others (they still advance the
    /// projection's checkpoint).
    fn subscription() -> Subscription;

    /// Folds one event into the read model. An error fails the whole batch: none of its writes
    /// are kept, and the projection stops with the error as its status.
    fn handle(event: &Event<'_>, state: &mut State) -> Result<()>;

    /// Answers the named query from a consistent snapshot of the read model. The default has no
    /// queries.
    fn query(name: &str, params: &Params, state: &State) -> Result<Value, QueryError> {
        let _ = (name, params, state);
        Err(QueryError::NotFound)
    }
}

/// Which events a projection wants: events of any listed category or any listed stream (all
/// events when both lists are empty), and of a listed type (any type when that list is empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Stream categories (the part of a stream name before its first `-`).
    pub categories: Vec<String>,
    /// Whole stream names.
    pub streams: Vec<String>,
    /// Event types.
    pub types: Vec<String>,
}

impl Subscription {
    /// Every event.
    pub fn all() -> Self {
        Subscription::default()
    }

    /// Adds a category.
    pub fn category(mut self, category: impl Into<String>) -> Self {
        self.categories.push(category.into());
        self
    }

    /// Adds a stream.
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.streams.push(stream.into());
        self
    }

    /// Adds an event type.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.types.push(event_type.into());
        self
    }

    /// Whether an event of `stream` with type `event_type` is wanted.
    pub fn matches(&self, stream: &str, event_type: &str) -> bool {
        let category = stream.split_once('-').map_or(stream, |(c, _)| c);
        let place = (self.categories.is_empty() && self.streams.is_empty())
            || self.categories.iter().any(|c| c == category)
            || self.streams.iter().any(|s| s == stream);
        place && (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
    }
}

/// A failure in a projection, with a message for its status and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Error(format!("JSON: {error}"))
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error(message.to_owned())
    }
}

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a query did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// There is no query of that name (HTTP 404 `query_not_found`).
    NotFound,
    /// The query failed; the message goes to the client (HTTP 400 `query_failed`).
    Failed(String),
}

impl From<Error> for QueryError {
    fn from(error: Error) -> Self {
        QueryError::Failed(error.0)
    }
}

impl From<serde_json::Error> for QueryError {
    fn from(error: serde_json::Error) -> Self {
        QueryError::Failed(format!("JSON: {error}"))
    }
}

/// The parameters of a query: the query string of the HTTP request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    /// Parameters from name/value pairs.
    pub fn new<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Params(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// Parses the JSON object the host sends.
    pub fn from_json(json: &str) -> Result<Self> {
        Ok(Params(serde_json::from_str(json)?))
    }

    /// The raw value of a parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A parameter that must be there.
    pub fn require(&self, name: &str) -> Result<&str> {
        self.get(name)
            .ok_or_else(|| Error(format!("missing parameter {name:?}")))
    }

    /// A parameter parsed into `T`, or `default` when absent.
    pub fn parse_or<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|_| Error(format!("parameter {name:?} has a bad value {raw:?}"))),
        }
    }
}

/// Exports a [`Projection`] as the module's projection. Use it once per crate.
#[macro_export]
macro_rules! export {
    ($projection:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __LanternExported = $crate::__guest::Adapter<$projection>;
    $crate::__guest::__export_projection!(__LanternExported with_types_in $crate::__guest);
        };
    };
}
