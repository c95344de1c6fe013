//! `order-totals-ts` (built with `lantern-build`) against the Rust `order-totals` on the same
//! orders: catch-up rate and ratio, the first deploy's compile time, and a restart's start time
//! with the compile cache warm.

use std::path::Path;
use std::time::Instant;

use super::Report;
use super::projection::{catch_up, seed_orders};
use crate::projection::Projections;
use crate::store::{Store, StoreOptions};
use crate::wasm::WasmConfig;

pub(super) async fn run(
    base: &Path,
    options: &super::BenchOptions,
    report: &mut Report,
) -> anyhow::Result<()> {
    let rust = options.order_totals()?;
    let ts = super::read_module(
        &options.ts_module,
        "cd examples/order-totals-ts && npm ci && npm run build",
    )?;
    let store = Store::open(&base.join("ts-store"), StoreOptions::default())?;
    seed_orders(&store, options.projection_events).await?;
    let head = store.head();
    let dir = base.join("ts-projections");
    let projections = Projections::open(store.clone(), &dir, WasmConfig::default()).await?;

    // The first deploy compiles (the cache is empty); the module is then removed again, so the
    // catch-up below measures folding, not compiling.
    let started = Instant::now();
    projections.deploy("compile-ts", ts.clone()).await?;
    report.record(
        "ts_first_deploy_compile",
        started.elapsed().as_secs_f64(),
        "s",
    );
    projections.delete("compile-ts").await?;
    projections.deploy("compile-rust", rust.clone()).await?;
    projections.delete("compile-rust").await?;

    let rust_seconds = catch_up(&projections, "rust", &rust, head).await?;
    let ts_seconds = match catch_up(&projections, "ts", &ts, head).await {
        Ok(seconds) => seconds,
        Err(error) => {
            // Reported, not hidden: how far it got before the fault.
            let position = projections.status("ts").map_or(0, |s| s.position);
            anyhow::bail!("order-totals-ts faulted after {position} of {head} events: {error:#}");
        }
    };
    let events = options.projection_events as f64;
    report.record("ts_catch_up_rust", events / rust_seconds, "events/s");
    report.record("ts_catch_up_typescript", events / ts_seconds, "events/s");
    report.record(
        "ts_catch_up_ratio",
        rust_seconds / ts_seconds,
        "typescript/rust",
    );
    let memory = projections
        .memory_high_water_bytes()
        .into_iter()
        .find(|(name, _)| name == "ts")
        .map_or(0, |(_, bytes)| bytes);
    report.record(
        "ts_memory_high_water",
        memory as f64 / (1 << 20) as f64,
        "MiB",
    );

    // A restart: both modules come from the compile cache.
    projections.shutdown().await;
    drop(projections);
    let started = Instant::now();
    let reopened = Projections::open(store.clone(), &dir, WasmConfig::default()).await?;
    report.record(
        "ts_cached_start_two_projections",
        started.elapsed().as_secs_f64(),
        "s",
    );
    reopened.shutdown().await;
    store.close();
    Ok(())
}
