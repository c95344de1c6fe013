//! Loading an aggregate over HTTP: `GET /streams/{s}?from=snapshot` on a stream of 100k events
//! with a snapshot at revision 99,990 (issue 11's target: p50 under 1 ms), next to loading the
//! same stream without a snapshot (every event, in pages of 10,000).

use std::path::Path;
use std::time::{Duration, Instant};

use super::{BenchOptions, RawConnection, Report, Server, payload};
use crate::store::{ExpectedRevision, NewEvent, Store, StoreOptions};

const EVENTS: u64 = 100_000;
const SNAPSHOT_AT: u64 = 99_990;

pub(super) async fn run(
    base: &Path,
    options: &BenchOptions,
    report: &mut Report,
) -> anyhow::Result<()> {
    let store = Store::open(&base.join("snapshots"), StoreOptions::default())?;
    for chunk in 0..EVENTS / 10_000 {
        let events = (0..10_000)
            .map(|i| NewEvent {
                id: None,
                event_type: "ItemAdded".into(),
                data: payload(chunk * 10_000 + i),
                metadata: None,
            })
            .collect();
        store
            .append("cart-big", ExpectedRevision::Any, events)
            .await?;
    }
    let projections = crate::projection::Projections::open(
        store.clone(),
        &base.join("snapshots-projections"),
        crate::wasm::WasmConfig::default(),
    )
    .await?;
    let server = Server::open(&store, &projections).await?;
    let mut connection = RawConnection::open(&server.address).await?;
    let state = format!(
        r#"{{"revision":{SNAPSHOT_AT},"state":{{"items":{SNAPSHOT_AT},"note":"{}"}}}}"#,
        "x".repeat(1000)
    );
    connection
        .request("PUT", "/streams/cart-big/snapshot", state.as_bytes())
        .await?;

    let until = Instant::now() + Duration::from_secs(options.seconds.max(1));
    let mut latencies = Vec::new();
    while Instant::now() < until {
        let sent = Instant::now();
        let answer = connection
            .request("GET", "/streams/cart-big?from=snapshot", b"")
            .await?;
        latencies.push(sent.elapsed());
        anyhow::ensure!(
            answer.starts_with(br#"{"snapshot":{"revision":99990,"#),
            "the answer starts with the snapshot"
        );
    }
    report.record_percentiles("snapshot_load_100k_stream", &mut latencies);

    let mut full = Vec::new();
    for _ in 0..5 {
        let sent = Instant::now();
        let mut from = 0;
        while from < EVENTS {
            connection
                .request(
                    "GET",
                    &format!("/streams/cart-big?from={from}&limit=10000"),
                    b"",
                )
                .await?;
            from += 10_000;
        }
        full.push(sent.elapsed());
    }
    report.record_percentiles("full_load_100k_stream", &mut full);
    server.stop().await?;
    store.close();
    Ok(())
}
