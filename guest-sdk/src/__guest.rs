//! The wasm glue: bindings generated from `wit/lantern.wit` and the adapter that exports a
//! [`Projection`]. Not public API.

use std::marker::PhantomData;

pub use wit_bindgen;

use crate::state::{Backend, Remembered, State};
use crate::{Event, Level, Params, Projection, QueryError as SdkQueryError};

wit_bindgen::generate!({
    path: "../wit",
    world: "projection",
    pub_export_macro: true,
    export_macro_name: "__export_projection",
    default_bindings_module: "lantern_sdk::__guest",
    runtime_path: "lantern_sdk::__guest::wit_bindgen::rt",
});

use lantern::projection::host;
use lantern::projection::types;

/// Reads the read model through the host's imports.
struct HostBackend;

impl Backend for HostBackend {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        host::get(key)
    }

    fn scan(&self, prefix: &str, after: &str, limit: u32) -> Vec<(String, Vec<u8>)> {
        host::scan(prefix, after, limit)
    }
}

pub(crate) fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => types::Level::Trace,
        Level::Debug => types::Level::Debug,
        Level::Info => types::Level::Info,
        Level::Warn => types::Level::Warn,
        Level::Error => types::Level::Error,
    };
    host::log(level, message);
}

/// Implements the generated `Guest` trait for any projection.
pub struct Adapter<P>(PhantomData<P>);

std::thread_local! {
    /// What `update` kept decoded in this instance's earlier batches (see `state::Remembered`).
    static REMEMBERED: std::cell::RefCell<Remembered> = std::cell::RefCell::default();
}

impl<P: Projection> Guest for Adapter<P> {
    fn describe() -> types::Subscription {
        let subscription = P::subscription();
        types::Subscription {
            categories: subscription.categories,
            streams: subscription.streams,
            types: subscription.types,
        }
    }

    fn handle(batch: Vec<u8>) -> Result<Vec<u8>, types::HandleError> {
        // Decoded as handled, with no list of views (a batch holds up to 131k events). A malformed
        // batch fails like a failing event: none of its writes are kept.
        let malformed = |e: lantern_wire::DecodeError| types::HandleError {
            position: 0,
            message: e.to_string(),
        };
        let mut last = 0;
        // Taken out for the batch: a batch that fails leaves nothing remembered (and the host
        // calls this instance no more).
        let remembered = REMEMBERED.take();
        let mut state = State::remembering(Box::new(HostBackend), remembered);
        for view in lantern_wire::BatchIter::new(&batch).map_err(malformed)? {
            let view = view.map_err(malformed)?;
            last = view.position;
            let event = Event { view };
            P::handle(&event, &mut state).map_err(|e| types::HandleError {
                position: event.position(),
                message: e.to_string(),
            })?;
        }
        let (writes, remembered) = state.into_writes().map_err(|e| types::HandleError {
            position: last,
            message: e.to_string(),
        })?;
        REMEMBERED.set(remembered);
        Ok(writes)
    }

    fn query(name: String, params: String) -> Result<String, types::QueryError> {
        let params = Params::from_json(&params)
            .map_err(|e| types::QueryError::Failed(format!("bad parameters: {e}")))?;
        let state = State::new(Box::new(HostBackend));
        match P::query(&name, &params, &state) {
            Ok(value) => Ok(value.to_string()),
            Err(SdkQueryError::NotFound) => Err(types::QueryError::NotFound),
            Err(SdkQueryError::Failed(message)) => Err(types::QueryError::Failed(message)),
        }
    }
}

/// The upcaster world's bindings and the adapter that exports an [`Upcaster`](crate::Upcaster).
pub mod upcaster {
    use std::marker::PhantomData;

    wit_bindgen::generate!({
        path: "../wit",
        world: "upcaster",
        pub_export_macro: true,
        export_macro_name: "__export_upcaster",
        default_bindings_module: "lantern_sdk::__guest::upcaster",
        runtime_path: "lantern_sdk::__guest::wit_bindgen::rt",
    });

    use lantern::projection::types;

    /// Implements the generated `Guest` trait for any upcaster.
    pub struct UpcasterAdapter<U>(PhantomData<U>);

    impl<U: crate::Upcaster> Guest for UpcasterAdapter<U> {
        fn describe() -> UpcasterSpec {
            let types = U::types();
            UpcasterSpec {
                takes: types.takes,
                gives: types.gives,
            }
        }

        fn upcast(batch: Vec<u8>) -> Result<Vec<u8>, types::HandleError> {
            crate::upcaster::upcast_batch::<U>(&batch).map_err(|(position, error)| {
                types::HandleError {
                    position,
                    message: error.to_string(),
                }
            })
        }
    }
}
