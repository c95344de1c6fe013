//! The HTTP API (axum): the only part that knows JSON shapes and status codes.
//!
//! [`app`] builds the router so tests can call it without a socket; [`run`] serves it on a
//! listener until a shutdown signal, then drains connections and ends open subscriptions.

mod access;
mod admin;
mod error;
mod extract;
mod health;
mod json;
mod metrics;
mod openapi;
mod projections;
mod replicate;
mod request;
mod serve;
mod streams;
mod subscribe;
mod ui;
mod upcasters;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::access::{AccessControl, Role};
use crate::projection::Projections;
use crate::store::Store;

pub use access::{Route, Rule};
pub use error::ApiError;
pub use health::starting_app;
pub use metrics::Metrics;
pub use openapi::document as openapi_document;
pub use serve::{Tls, run, run_with, serve_while};

/// Request and connection limits; the defaults are the contract's and `lantern serve`'s.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest `limit` a read honours; larger values are capped.
    pub max_read_limit: usize,
    /// Largest projection module accepted by `PUT /projections/{name}`.
    pub max_module_bytes: usize,
    /// Open connections at most; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Open subscriptions at most; more answer 503 `too_many_subscribers`.
    pub max_subscribers: usize,
    /// A connection that has not sent a whole request head (or its TLS handshake) this long
    /// after it opened or after its last answer is closed.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 << 20,
            max_read_limit: 10_000,
            max_module_bytes: 32 << 20,
            max_connections: 4096,
            max_subscribers: 1024,
            header_timeout: Duration::from_secs(30),
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The event store.
    pub store: Store,
    /// The deployed projections.
    pub projections: Projections,
    /// Tokens, the audit trail, open mode.
    pub access: AccessControl,
    /// Counters and histograms behind `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Request limits.
    pub limits: Limits,
    /// Origins allowed to call the API from a browser (CORS); empty: none.
    pub cors_origins: Vec<HeaderValue>,
    /// Open subscriptions hold one permit each.
    pub subscribers: Arc<Semaphore>,
    /// Cancelled when the server shuts down, which ends open subscriptions.
    pub shutdown: CancellationToken,
    /// Set on a follower: writes answer 421 with its leader's URL.
    pub follower: Option<Arc<crate::replication::Follower>>,
    /// Projections that must be running (caught up, not faulted) for `/health/ready` to say yes.
    pub required_projections: Arc<Vec<String>>,
}

impl AppState {
    /// State with default limits, fresh metrics and the given access control.
    pub fn new(store: Store, projections: Projections, access: AccessControl) -> Self {
        AppState {
            metrics: Arc::new(Metrics::new(&store, &projections)),
            store,
            projections,
            access,
            limits: Limits::default(),
            cors_origins: Vec::new(),
            subscribers: Arc::new(Semaphore::new(Limits::default().max_subscribers)),
            shutdown: CancellationToken::new(),
            follower: None,
            required_projections: Arc::default(),
        }
    }

    /// The same state with other limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.subscribers = Arc::new(Semaphore::new(limits.max_subscribers));
        self.limits = limits;
        self
    }
}

/// Every route of the API with the rule it needs: the router is built from this list only.
pub fn routes(limits: &Limits) -> Vec<Route> {
    use Method as M;
    use Role::{Admin, Reader, Writer};
    use Rule::{Projection, Public, Store};
    // One byte over the limit, so a module of exactly the limit is read and refused by size.
    let module_limit = DefaultBodyLimit::max(limits.max_module_bytes + 1);
    vec![
        Route::new(M::GET, "/health", Public, health::health),
        Route::new(M::GET, "/health/ready", Public, health::ready),
        Route::new(M::GET, "/metrics", Store(Reader), metrics::metrics),
        Route::new(M::GET, "/openapi.json", Store(Reader), openapi::openapi),
        Route::new(M::GET, "/ui", Public, ui::redirect),
        Route::new(M::GET, "/ui/", Public, ui::index),
        Route::new(M::GET, "/ui/{file}", Public, ui::asset),
        Route::new(M::GET, "/streams", Store(Reader), streams::list_streams),
        Route::new(M::POST, "/streams/{stream}", Store(Writer), streams::append),
        Route::new(
            M::GET,
            "/streams/{stream}",
            Store(Reader),
            streams::read_stream,
        ),
        Route::new(
            M::PUT,
            "/streams/{stream}/snapshot",
            Store(Writer),
            streams::save_snapshot,
        ),
        Route::new(
            M::GET,
            "/streams/{stream}/snapshot",
            Store(Reader),
            streams::read_snapshot,
        ),
        Route::new(M::GET, "/all", Store(Reader), streams::read_all),
        Route::new(M::GET, "/subscribe", Store(Reader), subscribe::subscribe),
        Route::new(M::GET, "/projections", Store(Reader), projections::list),
        Route::new(
            M::GET,
            "/projections/{name}",
            Projection(Reader),
            projections::status,
        ),
        Route::new(
            M::PUT,
            "/projections/{name}",
            Projection(Admin),
            projections::deploy,
        )
        .layer(module_limit),
        Route::new(
            M::DELETE,
            "/projections/{name}",
            Projection(Admin),
            projections::delete,
        ),
        Route::new(
            M::POST,
            "/projections/{name}/rebuild",
            Projection(Admin),
            projections::rebuild,
        ),
        Route::new(
            M::GET,
            "/projections/{name}/state",
            Projection(Reader),
            projections::page,
        ),
        Route::new(
            M::GET,
            "/projections/{name}/state/{*key}",
            Projection(Reader),
            projections::get_key,
        ),
        Route::new(
            M::GET,
            "/projections/{name}/query/{query}",
            Projection(Reader),
            projections::query,
        ),
        Route::new(M::POST, "/tokens", Store(Admin), admin::create_token),
        Route::new(M::GET, "/tokens", Store(Admin), admin::list_tokens),
        Route::new(
            M::DELETE,
            "/tokens/{name}",
            Store(Admin),
            admin::revoke_token,
        ),
        Route::new(M::GET, "/audit", Store(Admin), admin::audit),
        Route::new(M::GET, "/backup", Store(Admin), admin::backup),
        Route::new(M::GET, "/upcasters", Store(Admin), upcasters::list),
        Route::new(M::GET, "/upcasters/{name}", Store(Admin), upcasters::status),
        Route::new(M::PUT, "/upcasters/{name}", Store(Admin), upcasters::deploy)
            .layer(module_limit),
        Route::new(
            M::DELETE,
            "/upcasters/{name}",
            Store(Admin),
            upcasters::delete,
        ),
        Route::new(M::GET, "/replicate", Store(Admin), replicate::replicate),
        Route::new(M::GET, "/replicate/state", Store(Admin), replicate::state),
        Route::new(
            M::GET,
            "/replicate/snapshots",
            Store(Admin),
            replicate::snapshots,
        ),
        Route::new(
            M::GET,
            "/replicate/modules/{sha256}",
            Store(Admin),
            replicate::module,
        ),
    ]
}

/// The router of the whole API.
pub fn app(state: AppState) -> Router {
    // One shared copy: each request's extractors clone an `Arc`, not every field.
    let state = Arc::new(state);
    let mut router = Router::new();
    for route in routes(&state.limits) {
        let context = request::RouteContext::new(state.clone(), Some(&route));
        let around = axum::middleware::from_fn_with_state(context, request::around);
        router = router.route(route.path, route.handler.route_layer(around));
    }
    let unmatched = axum::middleware::from_fn_with_state(
        request::RouteContext::new(state.clone(), None),
        request::around,
    );
    // Large JSON answers are compressed for clients that ask; streams of events never are, so
    // each event reaches a subscriber as soon as it is committed.
    let compress = SizeAbove::new(1024)
        .and(NotForContentType::const_new("text/event-stream"))
        .and(NotForContentType::const_new("application/x-ndjson"))
        .and(NotForContentType::const_new("application/octet-stream"));
    let routes: Router = router
        .fallback_service(
            axum::routing::any(error::not_found)
                .layer(unmatched)
                .with_state(state.clone()),
        )
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state.clone());
    // The layers every request passes through wrap the router once, outermost first (a
    // `Router::layer` wraps each route and the fallback apart: one boxed service and future per
    // layer per request; single appends 49.9k -> 53.5k/s over seven alternating pairs).
    let everything = tower::ServiceBuilder::new()
        // A bug that panics answers 500 with the contract's JSON; no lock is left poisoned
        // (the shared state uses locks that do not poison), so later requests are unaffected.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panicked,
        ))
        .option_layer(cors(&state.cors_origins))
        .layer(CompressionLayer::new().compress_when(compress))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .service(routes);
    Router::new().fallback_service(everything)
}

/// Browsers on these origins may call the API (`--cors-origin`); without any, no CORS layer at all,
/// so no cross-origin browser request is let through.
fn cors(origins: &[HeaderValue]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([HeaderName::from_static("lantern-position")])
        .max_age(Duration::from_secs(600));
    Some(layer)
}
