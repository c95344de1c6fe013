//! Projection benchmarks: catch-up of `order-totals` against the same fold in native Rust, live
//! latency from an append to its effect, point queries over HTTP, and a restart of ten
//! projections.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde::Deserialize;

use super::{RawConnection, Report};
use crate::http::AppState;
use crate::projection::{MinPosition, Projections};
use crate::store::{ExpectedRevision, Filter, NewEvent, Store, StoreOptions};
use crate::wasm::WasmConfig;

const CUSTOMERS: u64 = 10_000;

fn order_event(i: u64) -> NewEvent {
    NewEvent {
        id: None,
        event_type: "OrderPlaced".into(),
        data: Bytes::from(format!(
            r#"{{"customer":"c-{}","amount":{}}}"#,
            i % CUSTOMERS,
            100 + i % 900
        )),
        metadata: None,
    }
}

async fn wait_caught_up(projections: &Projections, name: &str, head: u64) -> anyhow::Result<()> {
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
    let module = std::fs::read(&options.module).with_context(|| {
        format!(
            "reading {} (build it with `cargo build --release --target wasm32-wasip2 -p order-totals`)",
            options.module.display()
        )
    })?;
    let store = Store::open(&base.join("projection-store"), StoreOptions::default())?;
    let events = options.projection_events;
    for chunk in 0..events.div_ceil(1000) {
        let batch = (chunk * 1000..((chunk + 1) * 1000).min(events))
            .map(order_event)
            .collect();
        store
            .append(&format!("order-{chunk}"), ExpectedRevision::Any, batch)
            .await?;
    }
    let head = store.head();

    // The same fold, natively: read the log, decode each event, update a map.
    let native_store = store.clone();
    let native = tokio::task::spawn_blocking(move || {
        #[derive(Deserialize)]
        struct Placed<'a> {
            customer: &'a str,
            amount: i64,
        }
        let started = Instant::now();
        let mut totals: HashMap<String, (i64, i64)> = HashMap::new();
        let mut from = 1;
        loop {
            let slice = native_store.read_all(from, 4096, &Filter::default())?;
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
    .await??;
    let native_rate = head as f64 / native.as_secs_f64();

    let projections = Projections::open(
        store.clone(),
        &base.join("projections"),
        WasmConfig::default(),
    )
    .await?;
    // Compile once outside the clock (the cache makes later loads cheap).
    projections.deploy("warm-up", module.clone()).await?;
    projections.delete("warm-up").await?;
    let started = Instant::now();
    projections.deploy("order-totals", module.clone()).await?;
    wait_caught_up(&projections, "order-totals", head).await?;
    let wasm_rate = head as f64 / started.elapsed().as_secs_f64();
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(crate::http::run(
        listener,
        AppState::new(store.clone(), projections.clone()),
        shutdown.clone().cancelled_owned(),
    ));
    let until = Instant::now() + Duration::from_secs(options.seconds);
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..32u64 {
        let address = address.clone();
        clients.spawn(async move {
            let mut connection = RawConnection::open(&address).await?;
            let mut done = 0u64;
            while Instant::now() < until {
                let customer = (client * 7919 + done * 31) % CUSTOMERS;
                let path = format!("/projections/order-totals/state/customer:c-{customer}");
                connection.request("GET", &path, b"").await?;
                done += 1;
            }
            anyhow::Ok(done)
        });
    }
    let mut queries = 0;
    while let Some(done) = clients.join_next().await {
        queries += done??;
    }
    report.record(
        "projection_point_queries_http_32_clients",
        queries as f64 / started.elapsed().as_secs_f64(),
        "queries/s",
    );
    shutdown.cancel();
    server.await??;

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
