//! Lantern: an event store whose read models are built by WebAssembly projections.
//!
//! # Layout
//! In data-flow order:
//! - [`store`]: the event log (group commit, CRC-framed records) and the indexes derived from it.
//! - [`subscription`]: catch-up from any position, then live, with no gap and no duplicate.
//! - [`access`]: tokens with roles and the audit trail of admin actions.
//! - [`http`]: the HTTP API (axum); the only part that knows JSON shapes and status codes; it
//!   decides access for every route in one place.
//! - [`replication`]: followers, copies of a leader's log, projections and tokens.
//! - [`server`]: wires the store and the HTTP API into `lantern serve`.
//! - [`cli`]: the `lantern` command line, a client of a running server.
//! - [`backup`]: online backups (a tar of the log, tokens, audit trail, registry and modules).
//! - [`maintenance`]: `lantern check` and `lantern repair`, offline tools for a data folder.
//! - [`bench`]: the benchmark program behind `lantern bench`.
//! - [`scaffold`]: `lantern new`, a projection crate to start from.

pub mod access;
pub mod backup;
pub mod bench;
pub mod cli;
pub mod durable;
pub mod http;
pub mod logs;
pub mod maintenance;
pub mod projection;
pub mod readmodel;
mod redb_file;
pub mod replication;
pub mod scaffold;
pub mod server;
pub mod store;
pub mod subscription;
pub mod upcast;
pub mod wasm;
pub mod watcher;
