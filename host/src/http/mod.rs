//! The HTTP API (axum): the only part that knows JSON shapes and status codes.
//!
//! [`app`] builds the router so tests can call it without a socket; [`run`] serves it on a
//! listener until a shutdown signal, then drains connections and ends open subscriptions.

mod error;
mod extract;
mod json;
mod metrics;
mod projections;
mod streams;
mod subscribe;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::projection::Projections;
use crate::store::Store;

pub use error::ApiError;
pub use metrics::Metrics;

/// Request limits of the contract; the defaults are the contract's.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest `limit` a read honours; larger values are capped.
    pub max_read_limit: usize,
    /// Largest projection module accepted by `PUT /projections/{name}`.
    pub max_module_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 << 20,
            max_read_limit: 10_000,
            max_module_bytes: 32 << 20,
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
    /// Counters and histograms behind `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Request limits.
    pub limits: Limits,
    /// Cancelled when the server shuts down, which ends open subscriptions.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// State with default limits and fresh metrics.
    pub fn new(store: Store, projections: Projections) -> Self {
        AppState {
            store,
            projections,
            metrics: Arc::new(Metrics::default()),
            limits: Limits::default(),
            shutdown: CancellationToken::new(),
        }
    }
}

/// The router of the whole API.
pub fn app(state: AppState) -> Router {
    let max_body = state.limits.max_body_bytes;
    // One byte over the limit, so a module of exactly the limit is read and refused by size.
    let max_module = state.limits.max_module_bytes + 1;
    Router::new()
        .route(
            "/streams/{stream}",
            post(streams::append).get(streams::read_stream),
        )
        .route("/all", get(streams::read_all))
        .route("/subscribe", get(subscribe::subscribe))
        .route("/health", get(streams::health))
        .route("/projections", get(projections::list))
        .route(
            "/projections/{name}",
            put(projections::deploy)
                .layer(DefaultBodyLimit::max(max_module))
                .get(projections::status)
                .delete(projections::delete),
        )
        .route("/projections/{name}/rebuild", post(projections::rebuild))
        .route("/projections/{name}/state", get(projections::page))
        .route(
            "/projections/{name}/state/{*key}",
            get(projections::get_key),
        )
        .route("/projections/{name}/query/{query}", get(projections::query))
        .route("/metrics", get(metrics::metrics))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes, then ends subscriptions and waits for
/// requests in flight.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = state.shutdown.clone();
    let router = app(state);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            token.cancel();
        })
        .await
}
