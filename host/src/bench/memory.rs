//! Memory: `order-totals` catching up over `--memory-events` orders of `--memory-keys` customers
//! (10M and 1M are the target: under 1 GiB), and the process's peak resident memory
//! while it does. The peak is reset after seeding, so it is the catch-up's alone (plus what the
//! process already held, reported beside it).

use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use super::Report;
use super::projection::{catch_up, seed_orders_of};
use crate::projection::Projections;
use crate::store::{Store, StoreOptions};
use crate::wasm::WasmConfig;

pub(super) async fn run(
    base: &Path,
    options: &super::BenchOptions,
    report: &mut Report,
) -> anyhow::Result<()> {
    let module = options.order_totals()?;
    let store = Store::open(&base.join("memory-store"), StoreOptions::default())?;
    let started = Instant::now();
    seed_orders_of(&store, options.memory_events, options.memory_keys).await?;
    eprintln!(
        "memory: {} orders of {} customers appended in {:.0} s",
        options.memory_events,
        options.memory_keys,
        started.elapsed().as_secs_f64()
    );
    let head = store.head();
    // From here on, the high-water mark is the catch-up's (Linux: writing 5 resets VmHWM).
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS")?;
    let before = super::current_rss_kib().unwrap_or(0);
    let projections = Projections::open(
        store.clone(),
        &base.join("memory-projections"),
        WasmConfig::default(),
    )
    .await?;
    let seconds = catch_up(&projections, "order-totals", &module, head).await?;
    let peak = super::peak_rss_kib().unwrap_or(0);
    report.record(
        "memory_catch_up",
        options.memory_events as f64 / seconds,
        "events/s",
    );
    report.record("memory_rss_before_catch_up", before as f64 / 1024.0, "MiB");
    report.record("memory_catch_up_peak_rss", peak as f64 / 1024.0, "MiB");
    projections.shutdown().await;
    store.close();
    Ok(())
}
