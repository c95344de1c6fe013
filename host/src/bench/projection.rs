//! Projection benchmarks: catch-up of `order-totals` against the same fold in native Rust, live
//! latency from an append to its effect, point queries over HTTP, and a restart of ten
//! projections.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;

use super::Report;
use crate::projection::{MinPosition, Projections};
use crate::store::{ExpectedRevision, Filter, NewEvent, Store, StoreOptions};
use crate::wasm::WasmConfig;

pub(super) const CUSTOMERS: u64 = 10_000;

fn order_event(i: u64) -> NewEvent {
    order_of(i, CUSTOMERS)
}

/// The `i`th order, by customer `i % customers`.
fn order_of(i: u64, customers: u64) -> NewEvent {
    NewEvent {
        id: None,
        event_type: "OrderPlaced".into(),
        data: Bytes::from(format!(
            r#"{{"customer":"c-{}","amount":{}}}"#,
            i % customers,
            100 + i % 900
        )),
        metadata: None,
    }
}

/// Appends `events` order events in appends of 1000, a stream per append.
pub(super) async fn seed_orders(store: &Store, events: u64) -> anyhow::Result<()> {
    seed_orders_of(store, events, CUSTOMERS).await
}

/// `seed_orders` over `customers` customers.
pub(super) async fn seed_orders_of(
    store: &Store,
    events: u64,
    customers: u64,
) -> anyhow::Result<()> {
    for chunk in 0..events.div_ceil(1000) {
        let batch = (chunk * 1000..((chunk + 1) * 1000).min(events))
            .map(|i| order_of(i, customers))
            .collect();
        store
            .append(&format!("order-{chunk}"), ExpectedRevision::Any, batch)
            .await?;
    }
    Ok(())
}

/// Rounds of the catch-up figures; each figure is the median of its rounds.
const CATCH_UP_ROUNDS: usize = 3;

/// The fold `order-totals` makes, written natively: read the log, decode each event, update a
/// map. Returns how long it took over the whole log.
async fn native_fold(store: &Store, events: u64) -> anyhow::Result<Duration> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        #[derive(Deserialize)]
        struct Placed<'a> {
            customer: &'a str,
            amount: i64,
        }
        let started = Instant::now();
        let mut totals: HashMap<String, (i64, i64)> = HashMap::new();
        let mut from = 1;
        loop {
            let slice = store.read_all(from, 4096, &Filter::default())?;
            if slice.events.is_empty() {
                break;
            }
            for event in &slice.events {
                if event.event_type == "OrderPlaced" {
                    let placed: Placed<'_> = serde_json::from_slice(&event.data)?;
                    let entry = totals
                        .entry(format!("customer:{}", placed.customer))
                        .or_default();
                    entry.0 += 1;
                    entry.1 += placed.amount;
                }
            }
            from = slice.next_from;
        }
        anyhow::ensure!(totals.len() as u64 == CUSTOMERS.min(events));
        anyhow::Ok(started.elapsed())
    })
    .await?
}

/// Seconds from a deploy to caught up at `head`.
pub(super) async fn catch_up(
    projections: &Projections,
    name: &str,
    module: &[u8],
    head: u64,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    projections.deploy(name, module.to_vec()).await?;
    wait_caught_up(projections, name, head).await?;
    Ok(started.elapsed().as_secs_f64())
}

pub(super) async fn wait_caught_up(
    projections: &Projections,
    name: &str,
    head: u64,
) -> anyhow::Result<()> {
    loop {
        let status = projections.status(name)?;
        if let Some(fault) = status.state.fault {
            anyhow::bail!("{name} faulted: {}", fault.message);
        }
        if status.position >= head && status.rebuild.is_none() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(super) async fn run(
    base: &Path,
    options: &super::BenchOptions,
    report: &mut Report,
) -> anyhow::Result<()> {
    let module = options.order_totals()?;
    let store = Store::open(&base.join("projection-store"), StoreOptions::default())?;
    let events = options.projection_events;
    seed_orders(&store, events).await?;
    let head = store.head();

    let projections = Projections::open(
        store.clone(),
        &base.join("projections"),
        WasmConfig::default(),
    )
    .await?;
    // Compile once outside the clock (the cache makes later loads cheap).
    projections.deploy("warm-up", module.clone()).await?;
    projections.delete("warm-up").await?;
    // A catch-up of 1M events takes under half a second, so one hiccup of the machine moves a
    // single figure by a tenth: the native fold and the module take turns, three rounds, and the
    // median of each counts. The last round's projection stays for the figures below.
    let (mut native_rates, mut wasm_rates) = (Vec::new(), Vec::new());
    for round in 1..=CATCH_UP_ROUNDS {
        native_rates.push(head as f64 / native_fold(&store, events).await?.as_secs_f64());
        let name = match round {
            CATCH_UP_ROUNDS => "order-totals".to_owned(),
            _ => format!("order-totals-{round}"),
        };
        wasm_rates.push(head as f64 / catch_up(&projections, &name, &module, head).await?);
        if round < CATCH_UP_ROUNDS {
            projections.delete(&name).await?;
        }
    }
    let (native_rate, wasm_rate) = (super::median(native_rates), super::median(wasm_rates));
    report.record("projection_catch_up_wasm", wasm_rate, "events/s");
    report.record("projection_catch_up_native", native_rate, "events/s");
    report.record(
        "projection_catch_up_ratio",
        wasm_rate / native_rate,
        "wasm/native",
    );

    // Live: from an append's answer to its effect being visible, at ~1000 appends/s.
    let mut latencies = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for i in 0..2000u64 {
        tick.tick().await;
        let outcome = store
            .append("order-live", ExpectedRevision::Any, vec![order_event(i)])
            .await?;
        let answered = Instant::now();
        let min = MinPosition {
            position: outcome.last_position,
            wait: Duration::from_secs(5),
        };
        projections
            .get(
                "order-totals",
                &format!("customer:c-{}", i % CUSTOMERS),
                Some(min),
            )
            .await?;
        latencies.push(answered.elapsed());
    }
    report.record_percentiles("projection_live_visible", &mut latencies);

    // Point queries over HTTP from 32 clients.
    let server = super::Server::open(&store, &projections).await?;
    let rate =
        super::access::point_queries(&server.address, "", Duration::from_secs(options.seconds))
            .await?;
    report.record(
        "projection_point_queries_http_32_clients",
        rate,
        "queries/s",
    );
    // Module queries over HTTP from 32 clients: `top?n=3`, which scans all 10,000 customers in
    // the module (the Rust module's answer; a query runs on one of the generation's instances).
    let rate = super::access::requests_per_second(
        &server.address,
        "",
        Duration::from_secs(options.seconds),
        |_, _| "/projections/order-totals/query/top?n=3".to_owned(),
    )
    .await?;
    report.record(
        "projection_module_queries_http_32_clients",
        rate,
        "queries/s",
    );
    server.stop().await?;

    // Ten projections: a restart resumes them all from their checkpoints.
    for i in 0..9 {
        projections
            .deploy(&format!("copy-{i}"), module.clone())
            .await?;
    }
    let head = store.head();
    for i in 0..9 {
        wait_caught_up(&projections, &format!("copy-{i}"), head).await?;
    }
    wait_caught_up(&projections, "order-totals", head).await?;
    projections.shutdown().await;
    drop(projections);
    let started = Instant::now();
    let reopened = Projections::open(
        store.clone(),
        &base.join("projections"),
        WasmConfig::default(),
    )
    .await?;
    let names: Vec<String> = reopened.list().into_iter().map(|s| s.name).collect();
    anyhow::ensure!(names.len() == 10, "{} projections came back", names.len());
    for name in &names {
        wait_caught_up(&reopened, name, head).await?;
    }
    report.record(
        "projection_restart_10_resume",
        started.elapsed().as_secs_f64() * 1000.0,
        "ms",
    );
    reopened.shutdown().await;
    store.close();
    Ok(())
}

/// Live rebuilds: throughput against catch-up, point-query latency and append throughput while a
/// rebuild runs, and the time from saving a module into a watched folder to it serving.
pub(super) async fn run_rebuild(
    base: &Path,
    options: &super::BenchOptions,
    report: &mut Report,
) -> anyhow::Result<()> {
    let module = options.order_totals()?;
    let store = Store::open(&base.join("rebuild-store"), StoreOptions::default())?;
    seed_orders(&store, options.projection_events).await?;
    let projections = Projections::open(
        store.clone(),
        &base.join("rebuild-projections"),
        WasmConfig::default(),
    )
    .await?;
    projections.deploy("warm-up", module.clone()).await?;
    projections.delete("warm-up").await?;
    // Let the store's indexer finish the fresh history, so the runs below meet the same machine.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Best of two runs each: a catch-up of a new projection, and a rebuild beside the serving
    // generation (the same work).
    let mut catch_up_rate: f64 = 0.0;
    for name in ["order-totals", "catch-up-again"] {
        let started = Instant::now();
        projections.deploy(name, module.clone()).await?;
        wait_caught_up(&projections, name, store.head()).await?;
        catch_up_rate = catch_up_rate.max(store.head() as f64 / started.elapsed().as_secs_f64());
    }
    projections.delete("catch-up-again").await?;
    let mut rebuild_rate: f64 = 0.0;
    for _ in 0..2 {
        let started = Instant::now();
        projections.rebuild("order-totals").await?;
        wait_caught_up(&projections, "order-totals", store.head()).await?;
        rebuild_rate = rebuild_rate.max(store.head() as f64 / started.elapsed().as_secs_f64());
    }
    report.record("catch_up_throughput", catch_up_rate, "events/s");
    report.record("rebuild_throughput", rebuild_rate, "events/s");
    report.record("rebuild_vs_catch_up", rebuild_rate / catch_up_rate, "ratio");

    // Appends of 100 events from 4 writers, for a fixed time: their rate without a rebuild...
    async fn appends_for(store: &Store, duration: Duration) -> anyhow::Result<f64> {
        let until = Instant::now() + duration;
        let mut writers = tokio::task::JoinSet::new();
        for writer in 0..4u64 {
            let store = store.clone();
            writers.spawn(async move {
                let mut written = 0u64;
                while Instant::now() < until {
                    let batch = (0..100)
                        .map(|i| order_event(writer * 1_000_000 + written + i))
                        .collect();
                    store
                        .append(&format!("busy-{writer}"), ExpectedRevision::Any, batch)
                        .await?;
                    written += 100;
                }
                anyhow::Ok(written)
            });
        }
        let mut total = 0;
        while let Some(done) = writers.join_next().await {
            total += done??;
        }
        Ok(total as f64 / duration.as_secs_f64())
    }
    let quiet_rate = appends_for(&store, Duration::from_secs(2)).await?;

    // ...and while a rebuild runs, with point queries throughout.
    let head = store.head();
    projections.rebuild("order-totals").await?;
    let busy = {
        let store = store.clone();
        tokio::spawn(async move { appends_for(&store, Duration::from_secs(2)).await })
    };
    let mut latencies = Vec::new();
    let mut i = 0u64;
    loop {
        let asked = Instant::now();
        projections
            .get(
                "order-totals",
                &format!("customer:c-{}", i % CUSTOMERS),
                None,
            )
            .await?;
        latencies.push(asked.elapsed());
        i += 1;
        let status = projections.status("order-totals")?;
        if status.rebuild.is_none() && status.position >= head {
            break;
        }
        if let Some(fault) = status.rebuild.and_then(|r| r.state.fault) {
            anyhow::bail!("the rebuild faulted: {}", fault.message);
        }
    }
    let busy_rate = busy.await??;
    report.record_percentiles("rebuild_point_query", &mut latencies);
    report.record("rebuild_appends_quiet", quiet_rate, "events/s");
    report.record("rebuild_appends_during", busy_rate, "events/s");
    report.record("rebuild_appends_kept", busy_rate / quiet_rate, "ratio");
    projections.shutdown().await;
    drop(projections);

    // From saving a module into the watched folder to the new version serving, on 100k events.
    let watch_store = Store::open(&base.join("watch-store"), StoreOptions::default())?;
    seed_orders(&watch_store, 100_000).await?;
    let projections = Projections::open(
        watch_store.clone(),
        &base.join("watch-projections"),
        WasmConfig::default(),
    )
    .await?;
    let folder = base.join("watched");
    std::fs::create_dir_all(&folder)?;
    std::fs::write(folder.join("order-totals.wasm"), &module)?;
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn(crate::watcher::watch(
        projections.clone(),
        folder.clone(),
        stop.clone(),
    ));
    loop {
        if projections.status("order-totals").is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_caught_up(&projections, "order-totals", watch_store.head()).await?;
    // A new build: the same code with another custom section, as a rebuilt module would differ.
    let mut changed = module.clone();
    changed.extend_from_slice(&[0, 6, 5, b'b', b'e', b'n', b'c', b'h']);
    let saved = Instant::now();
    std::fs::write(folder.join(".order-totals.tmp"), &changed)?;
    std::fs::rename(
        folder.join(".order-totals.tmp"),
        folder.join("order-totals.wasm"),
    )?;
    loop {
        let status = projections.status("order-totals")?;
        if status.version == 2 && status.rebuild.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    report.record(
        "watch_save_to_serving_100k",
        saved.elapsed().as_secs_f64() * 1000.0,
        "ms",
    );
    stop.cancel();
    watcher.await??;
    projections.shutdown().await;
    store.close();
    watch_store.close();
    Ok(())
}
