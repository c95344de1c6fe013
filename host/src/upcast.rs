//! Upcasters at work: a [`Chain`] of loaded upcaster modules, in name order, that turns events
//! read from the store into their current shape. The store's events never change; every read
//! path (stream reads, `/all`, `/subscribe`, the projections' input) passes what it read through
//! the chain it was given.
//!
//! A chain is immutable. The server's current chain serves the HTTP reads; each projection
//! generation holds the chain it was built with (the upcasters relevant to its subscription when
//! it was made), so a read model never mixes two chains: changing the upcasters rebuilds the
//! projections they affect, beside the serving ones.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::de::IgnoredAny;

use crate::store::{EventRef, Filter, RecordedEvent, validate_event_type};
use crate::wasm::{GuestFailure, SubscriptionSpec, UpcasterInstance, UpcasterModule};

/// An upcaster failed on an event: nothing is served in its place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upcaster {upcaster:?} failed on the event at position {position}: {message}")]
pub struct UpcastError {
    /// The upcaster's name.
    pub upcaster: String,
    /// The event's position.
    pub position: u64,
    /// What went wrong.
    pub message: String,
}

/// The last fault of an upcaster, kept until it is replaced or deleted (events never change, so
/// the same event would fail again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpcasterFault {
    /// The event's position.
    pub position: u64,
    /// What went wrong.
    pub message: String,
    /// When.
    pub at: SystemTime,
}

/// One deployed upcaster, loaded.
pub struct Upcaster {
    /// Its name (chains run in name order).
    pub name: String,
    /// Its version, counted per name from 1.
    pub version: u64,
    /// SHA-256 of its module.
    pub module_sha256: String,
    takes: Vec<String>,
    gives: Vec<String>,
    /// Its module, or why it could not be loaded (then every event it takes fails).
    module: Result<UpcasterModule, String>,
    /// Instances between calls; a trapped one is dropped.
    idle: Mutex<Vec<UpcasterInstance>>,
    fault: Mutex<Option<UpcasterFault>>,
    faults: AtomicU64,
    events: AtomicU64,
}

impl Upcaster {
    /// A loaded module under `name`.
    pub fn new(name: &str, version: u64, module_sha256: &str, module: UpcasterModule) -> Self {
        let (takes, gives) = (module.takes().to_vec(), module.gives().to_vec());
        Self::with_types(name, version, module_sha256, takes, gives, Ok(module))
    }

    /// An upcaster whose module could not be loaded: every event it takes fails with `why`.
    pub fn broken(
        name: &str,
        version: u64,
        module_sha256: &str,
        takes: Vec<String>,
        gives: Vec<String>,
        why: String,
    ) -> Self {
        Self::with_types(name, version, module_sha256, takes, gives, Err(why))
    }

    fn with_types(
        name: &str,
        version: u64,
        module_sha256: &str,
        takes: Vec<String>,
        gives: Vec<String>,
        module: Result<UpcasterModule, String>,
    ) -> Self {
        Upcaster {
            name: name.to_owned(),
            version,
            module_sha256: module_sha256.to_owned(),
            takes,
            gives,
            module,
            idle: Mutex::new(Vec::new()),
            fault: Mutex::new(None),
            faults: AtomicU64::new(0),
            events: AtomicU64::new(0),
        }
    }

    /// The event types it takes.
    pub fn takes(&self) -> &[String] {
        &self.takes
    }

    /// The types its answers may have besides an event's own.
    pub fn gives(&self) -> &[String] {
        &self.gives
    }

    /// Why its module could not be loaded, if it could not.
    pub fn unloadable(&self) -> Option<&str> {
        self.module.as_ref().err().map(String::as_str)
    }

    /// Its last fault.
    pub fn fault(&self) -> Option<UpcasterFault> {
        self.fault.lock().clone()
    }

    /// Faults since it was loaded.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    /// Events it has upcast since it was loaded.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Records a fault and makes the error for it.
    fn failed(&self, position: u64, message: String) -> UpcastError {
        *self.fault.lock() = Some(UpcasterFault {
            position,
            message: message.clone(),
            at: SystemTime::now(),
        });
        self.faults.fetch_add(1, Ordering::Relaxed);
        tracing::error!(upcaster = %self.name, position, %message, "upcaster failed");
        UpcastError {
            upcaster: self.name.clone(),
            position,
            message,
        }
    }

    /// Upcasts the events of `events` at `indices` (each of a type it takes), in place. A large
    /// batch is split over the machine's cores, an instance each; the earliest failing event
    /// is the one reported.
    fn upcast(&self, events: &mut [RecordedEvent], indices: &[usize]) -> Result<(), UpcastError> {
        let parts = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(indices.len() / PARALLEL_CHUNK)
            .max(1);
        let chunk = indices.len().div_ceil(parts);
        let answered: Vec<_> = if parts == 1 {
            vec![self.answer(events, indices)]
        } else {
            let shared: &[RecordedEvent] = events;
            std::thread::scope(|scope| {
                let running: Vec<_> = indices
                    .chunks(chunk)
                    .map(|part| scope.spawn(move || self.answer(shared, part)))
                    .collect();
                running
                    .into_iter()
                    .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            })
        };
        for (part, answer) in indices.chunks(chunk).zip(answered) {
            let (answers, changes) = answer?;
            for (&i, change) in part.iter().zip(changes) {
                let Some(Change {
                    event_type,
                    data,
                    metadata,
                }) = change
                else {
                    continue;
                };
                let event = &mut events[i];
                if let Some(event_type) = event_type {
                    event.event_type = event_type;
                }
                event.data = answers.slice(data);
                event.metadata = metadata.map(|m| answers.slice(m));
            }
        }
        self.events
            .fetch_add(indices.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Calls the guest on the events at `indices` and checks its answers: each event's new
    /// type (when it changes), and where its new data and metadata lie in the answer.
    fn answer(
        &self,
        events: &[RecordedEvent],
        indices: &[usize],
    ) -> Result<(Bytes, Vec<Option<Change>>), UpcastError> {
        let first = events[indices[0]].position;
        let mut batch = lantern_wire::BatchEncoder::new();
        for &i in indices {
            batch.push(&wire_view(&events[i]));
        }
        let module = self
            .module
            .as_ref()
            .map_err(|why| self.failed(first, format!("its module could not be loaded: {why}")))?;
        let instance = self.idle.lock().pop();
        let mut instance = match instance {
            Some(instance) => instance,
            None => module
                .instantiate()
                .map_err(|e| self.failed(first, e.to_string()))?,
        };
        let answers = match instance.upcast(&batch.finish()) {
            Ok(answers) => answers,
            Err(GuestFailure::Event { position, message }) => {
                // The instance is sound: the guest returned an error value.
                self.idle.lock().push(instance);
                let position = if indices.iter().any(|&i| events[i].position == position) {
                    position
                } else {
                    first
                };
                return Err(self.failed(position, message));
            }
            Err(other) => return Err(self.failed(first, other.to_string())),
        };
        self.idle.lock().push(instance);
        // The new data and metadata are slices of the answer: one buffer, no copy per event.
        let answers = Bytes::from(answers);
        let decoded = lantern_wire::decode_upcasts(&answers)
            .map_err(|e| self.failed(first, format!("its answer is malformed: {e}")))?;
        if decoded.len() != indices.len() {
            return Err(self.failed(
                first,
                format!(
                    "it answered for {} events, it was given {}",
                    decoded.len(),
                    indices.len()
                ),
            ));
        }
        let base = answers.as_ptr() as usize;
        let range = |bytes: &[u8]| {
            let start = bytes.as_ptr() as usize - base;
            start..start + bytes.len()
        };
        let mut changes = Vec::with_capacity(indices.len());
        for (&i, answer) in indices.iter().zip(decoded) {
            let lantern_wire::UpcastView::Changed {
                event_type,
                data,
                metadata,
            } = answer
            else {
                changes.push(None);
                continue;
            };
            let event = &events[i];
            let position = event.position;
            let new_type = event_type != event.event_type;
            if new_type && !self.gives().iter().any(|t| t == event_type) {
                return Err(self.failed(
                    position,
                    format!("it answered type {event_type:?}, which it does not declare it gives"),
                ));
            }
            let json = |what: &str, bytes: &[u8]| {
                serde_json::from_slice::<IgnoredAny>(bytes)
                    .map_err(|e| self.failed(position, format!("its {what} is not JSON: {e}")))
            };
            json("data", data)?;
            if let Some(metadata) = metadata {
                json("metadata", metadata)?;
            }
            if new_type {
                validate_event_type(event_type)
                    .map_err(|e| self.failed(position, format!("it answered a bad type: {e}")))?;
            }
            changes.push(Some(Change {
                event_type: new_type.then(|| event_type.to_owned()),
                data: range(data),
                metadata: metadata.map(range),
            }));
        }
        Ok((answers, changes))
    }
}

/// Events per part below which a batch is not split over cores.
const PARALLEL_CHUNK: usize = 2048;

/// What an upcaster changes of one event: its type (when it changes), and where its new data and
/// metadata lie in the upcaster's answer.
struct Change {
    event_type: Option<String>,
    data: std::ops::Range<usize>,
    metadata: Option<std::ops::Range<usize>>,
}

/// An event as a guest receives it.
pub(crate) fn wire_view(event: &RecordedEvent) -> lantern_wire::EventView<'_> {
    lantern_wire::EventView {
        position: event.position,
        revision: event.revision,
        id: event.id.into_bytes(),
        recorded_at_micros: event.recorded_at_micros,
        stream: &event.stream,
        event_type: &event.event_type,
        data: &event.data,
        metadata: event.metadata.as_deref(),
    }
}

/// An event read in place, as a guest receives it.
pub(crate) fn wire_view_in_place<'a>(event: &EventRef<'a>) -> lantern_wire::EventView<'a> {
    lantern_wire::EventView {
        position: event.position(),
        revision: event.revision(),
        id: event.id().into_bytes(),
        recorded_at_micros: event.recorded_at_micros(),
        stream: event.stream(),
        event_type: event.event_type(),
        data: event.data(),
        metadata: event.metadata(),
    }
}

/// Upcasters in the order they run (by name); empty: events are served as stored.
#[derive(Default)]
pub struct Chain {
    upcasters: Vec<Arc<Upcaster>>,
    /// Every type some upcaster of the chain takes.
    takes: HashSet<String>,
}

impl Chain {
    /// A chain of these upcasters, sorted by name.
    pub fn new(mut upcasters: Vec<Arc<Upcaster>>) -> Chain {
        upcasters.sort_by(|a, b| a.name.cmp(&b.name));
        let takes = upcasters
            .iter()
            .flat_map(|u| u.takes().iter().cloned())
            .collect();
        Chain { upcasters, takes }
    }

    /// The upcasters, in the order they run.
    pub fn upcasters(&self) -> &[Arc<Upcaster>] {
        &self.upcasters
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.upcasters.is_empty()
    }

    /// `(name, module)` of each upcaster, in order: what a generation records.
    pub fn members(&self) -> Vec<(String, String)> {
        self.upcasters
            .iter()
            .map(|u| (u.name.clone(), u.module_sha256.clone()))
            .collect()
    }

    /// The sub-chain a projection with this subscription must see: every upcaster through which
    /// an event may pass on its way to a type the projection wants. With chains that is more
    /// than the upcasters that give a wanted type: one that turns `W` into `Y` matters to a
    /// projection of `X` when another turns `Y` into `X`.
    pub fn relevant_to(&self, subscription: &SubscriptionSpec) -> Chain {
        if subscription.types.is_empty() {
            return Chain::new(self.upcasters.clone());
        }
        // The types an event may have on its way to a wanted one, to a fixed point.
        let mut wanted: HashSet<&str> = subscription.types.iter().map(String::as_str).collect();
        let touches = |u: &Upcaster, wanted: &HashSet<&str>| {
            u.takes()
                .iter()
                .chain(u.gives())
                .any(|t| wanted.contains(t.as_str()))
        };
        loop {
            let before = wanted.len();
            for upcaster in &self.upcasters {
                if touches(upcaster, &wanted) {
                    wanted.extend(upcaster.takes().iter().map(String::as_str));
                }
            }
            if wanted.len() == before {
                break;
            }
        }
        Chain::new(
            self.upcasters
                .iter()
                .filter(|u| touches(u, &wanted))
                .cloned()
                .collect(),
        )
    }

    /// Upcasts, in place, every event of `events` for which `wanted` says yes (the others are
    /// left as stored), upcaster by upcaster. Blocking (it calls into wasm).
    pub fn apply(
        &self,
        events: &mut [RecordedEvent],
        wanted: impl Fn(&RecordedEvent) -> bool,
    ) -> Result<(), UpcastError> {
        if self.upcasters.is_empty() {
            return Ok(());
        }
        let candidates: Vec<usize> = (0..events.len())
            .filter(|&i| self.takes.contains(&events[i].event_type) && wanted(&events[i]))
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        for upcaster in &self.upcasters {
            let indices: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&i| upcaster.takes().contains(&events[i].event_type))
                .collect();
            if !indices.is_empty() {
                upcaster.upcast(events, &indices)?;
            }
        }
        Ok(())
    }

    /// The filter to read the store with for a reader that wants `filter` after upcasting: an
    /// event of a type some upcaster takes may turn into a wanted type. Check each upcast event
    /// against `filter` again ([`Chain::keep`]).
    pub fn widen(&self, filter: &Filter) -> Filter {
        let mut widened = filter.clone();
        if !filter.types.is_empty() && !self.is_empty() {
            widened.types.extend(self.takes.iter().cloned());
            widened.types.sort();
            widened.types.dedup();
        }
        widened
    }

    /// Upcasts what was read with [`Chain::widen`]`(filter)` and keeps what `filter` wants.
    pub fn apply_filtered(
        &self,
        events: &mut Vec<RecordedEvent>,
        filter: &Filter,
    ) -> Result<(), UpcastError> {
        if self.is_empty() {
            return Ok(());
        }
        self.apply(events, |_| true)?;
        if !filter.types.is_empty() {
            events.retain(|e| filter.matches(e));
        }
        Ok(())
    }

    /// Like [`Chain::apply_filtered`], but when an upcaster fails, the events before the
    /// failing one are still upcast and returned, with the error (a subscription sends them,
    /// then ends with the error).
    pub fn apply_until_failure(
        &self,
        mut events: Vec<RecordedEvent>,
        filter: &Filter,
    ) -> (Vec<RecordedEvent>, Option<UpcastError>) {
        if self.is_empty() {
            return (events, None);
        }
        // A failed pass leaves the events half upcast: the earlier ones start again from here.
        let stored = events.clone();
        match self.apply_filtered(&mut events, filter) {
            Ok(()) => (events, None),
            Err(error) => {
                let mut before: Vec<RecordedEvent> = stored
                    .into_iter()
                    .filter(|e| e.position < error.position)
                    .collect();
                match self.apply_filtered(&mut before, filter) {
                    Ok(()) => (before, Some(error)),
                    Err(again) => (Vec::new(), Some(again)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upcaster(name: &str, takes: &[&str], gives: &[&str]) -> Arc<Upcaster> {
        let list = |types: &[&str]| types.iter().map(|t| (*t).to_owned()).collect();
        Arc::new(Upcaster::broken(
            name,
            1,
            "sha",
            list(takes),
            list(gives),
            "types only".into(),
        ))
    }

    fn relevant(chain: &Chain, types: &[&str]) -> Vec<String> {
        let subscription = SubscriptionSpec {
            types: types.iter().map(|t| (*t).to_owned()).collect(),
            ..SubscriptionSpec::default()
        };
        chain
            .relevant_to(&subscription)
            .members()
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    #[test]
    fn relevance_follows_chains_to_a_fixed_point() {
        // w -> y by "a", y -> x by "b", and an unrelated "c" on z.
        let chain = Chain::new(vec![
            upcaster("b", &["Y"], &["X"]),
            upcaster("a", &["W"], &["Y"]),
            upcaster("c", &["Z"], &[]),
        ]);
        assert_eq!(relevant(&chain, &["X"]), ["a", "b"]);
        assert_eq!(relevant(&chain, &["Y"]), ["a", "b"]);
        assert_eq!(relevant(&chain, &["W"]), ["a"]);
        assert_eq!(relevant(&chain, &["Z", "Q"]), ["c"]);
        assert_eq!(relevant(&chain, &["Q"]), Vec::<String>::new());
        assert_eq!(
            relevant(&chain, &[]),
            ["a", "b", "c"],
            "every type: every upcaster"
        );
    }
}
