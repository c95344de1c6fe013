//! Upcasting's cost: catch-up of `order-totals` over orders that all need the example upcaster
//! (`examples/order-upcaster`) against the same number of orders already in today's shape, and
//! reading `/all` over HTTP through the upcaster against `raw=true`, in one run.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;

use super::projection::{CUSTOMERS, seed_orders, wait_caught_up};
use super::{RawConnection, Report, Server};
use crate::projection::Projections;
use crate::store::{ExpectedRevision, NewEvent, Store, StoreOptions};
use crate::wasm::WasmConfig;

/// Orders in the two old shapes the example upcaster takes, alternating.
async fn seed_old_orders(store: &Store, events: u64) -> anyhow::Result<()> {
    for chunk in 0..events.div_ceil(1000) {
        let batch = (chunk * 1000..((chunk + 1) * 1000).min(events))
            .map(|i| NewEvent {
                id: None,
                event_type: if i % 2 == 0 {
                    "OrderCreated"
                } else {
                    "OrderPlaced"
                }
                .into(),
                data: Bytes::from(format!(
                    r#"{{"customer_id":"c-{}","amount_cents":{}}}"#,
                    i % CUSTOMERS,
                    100 + i % 900
                )),
                metadata: None,
            })
            .collect();
        store
            .append(&format!("order-{chunk}"), ExpectedRevision::Any, batch)
            .await?;
    }
    Ok(())
}

/// Seconds to deploy `module` as `order-totals` and catch up to `head` (compiled beforehand).
async fn catch_up(projections: &Projections, module: &[u8], head: u64) -> anyhow::Result<f64> {
    projections.deploy("warm-up", module.to_vec()).await?;
    projections.delete("warm-up").await?;
    let started = Instant::now();
    projections.deploy("order-totals", module.to_vec()).await?;
    wait_caught_up(projections, "order-totals", head).await?;
    Ok(started.elapsed().as_secs_f64())
}

/// Reads the whole log over HTTP in pages of 10,000; returns events per second.
async fn read_all(address: &str, head: u64, raw: bool) -> anyhow::Result<f64> {
    let mut connection = RawConnection::open(address).await?;
    // Outside the clock: the upcast read really is upcast.
    let first = connection
        .request("GET", &format!("/all?limit=2&raw={raw}"), b"")
        .await?;
    let stored_shape = first.windows(13).any(|w| w == b"\"customer_id\"");
    anyhow::ensure!(stored_shape == raw, "raw={raw} read the wrong shape");
    let started = Instant::now();
    let mut from = 1;
    while from <= head {
        connection
            .request(
                "GET",
                &format!("/all?from={from}&limit=10000&raw={raw}"),
                b"",
            )
            .await?;
        from += 10_000;
    }
    Ok(head as f64 / started.elapsed().as_secs_f64())
}

pub(super) async fn run(
    base: &Path,
    options: &super::BenchOptions,
    report: &mut Report,
) -> anyhow::Result<()> {
    let module = options.order_totals()?;
    let upcaster = super::read_module(
        &options.upcaster_module,
        "cargo build --release --target wasm32-wasip2 -p order-upcaster",
    )?;
    let events = options.projection_events;

    let current = Store::open(&base.join("upcast-current"), StoreOptions::default())?;
    seed_orders(&current, events).await?;
    let projections = Projections::open(
        current.clone(),
        &base.join("upcast-current-projections"),
        WasmConfig::default(),
    )
    .await?;
    let current_seconds = catch_up(&projections, &module, current.head()).await?;
    projections.shutdown().await;
    current.close();

    let old = Store::open(&base.join("upcast-old"), StoreOptions::default())?;
    seed_old_orders(&old, events).await?;
    let head = old.head();
    let projections = Projections::open(
        old.clone(),
        &base.join("upcast-old-projections"),
        WasmConfig::default(),
    )
    .await?;
    projections
        .deploy_upcaster("order-shapes", upcaster)
        .await?;
    let upcast_seconds = catch_up(&projections, &module, head).await?;
    report.record(
        "upcast_catch_up_current_shape",
        events as f64 / current_seconds,
        "events/s",
    );
    report.record(
        "upcast_catch_up_every_event_upcast",
        events as f64 / upcast_seconds,
        "events/s",
    );
    report.record(
        "upcast_catch_up_ratio",
        current_seconds / upcast_seconds,
        "upcast/current",
    );

    let server = Server::open(&old, &projections).await?;
    let address = server.address.clone();
    // Alternating rounds; the best of each, so a noisy moment does not decide the ratio.
    let (mut raw_rate, mut upcast_rate) = (0f64, 0f64);
    for _ in 0..3 {
        raw_rate = raw_rate.max(read_all(&address, head, true).await?);
        upcast_rate = upcast_rate.max(read_all(&address, head, false).await?);
    }
    report.record("upcast_read_all_raw", raw_rate, "events/s");
    report.record("upcast_read_all_upcast", upcast_rate, "events/s");
    report.record(
        "upcast_read_all_ratio",
        upcast_rate / raw_rate,
        "upcast/raw",
    );
    server.stop().await?;
    projections.shutdown().await;
    old.close();
    Ok(())
}
