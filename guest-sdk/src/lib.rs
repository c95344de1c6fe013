//! The Lantern guest SDK: write projections in Rust and build them for `wasm32-wasip2`.
//!
//! This crate is a placeholder until the projections work lands (see the projections issue).
#![deny(missing_docs)]
