//! What access control costs: single appends and point queries over HTTP against the same store,
//! once in open mode (no tokens) and once with a token on every request (among 100 stored
//! tokens), alternating rounds so that both meet the same machine.

use std::path::Path;
use std::time::{Duration, Instant};

use super::Server;
use super::projection::{CUSTOMERS, seed_orders, wait_caught_up};
use super::{BenchOptions, RawConnection, Report, payload};
use crate::access::{AccessControl, Role};
use crate::http::AppState;
use crate::projection::Projections;
use crate::store::{Store, StoreOptions};
use crate::wasm::WasmConfig;

const ROUNDS: usize = 4;

pub(super) async fn run(
    base: &Path,
    options: &BenchOptions,
    report: &mut Report,
) -> anyhow::Result<()> {
    let store = Store::open(&base.join("access-store"), StoreOptions::default())?;
    seed_orders(&store, 100_000).await?;
    let projections = Projections::open(
        store.clone(),
        &base.join("access-projections"),
        WasmConfig::default(),
    )
    .await?;
    let module = options.order_totals()?;
    projections.deploy("order-totals", module).await?;
    wait_caught_up(&projections, "order-totals", store.head()).await?;

    let secured = AccessControl::in_memory();
    for i in 0..99 {
        secured
            .tokens
            .create(&format!("reader-{i}"), Role::Reader, None)?;
    }
    let (_, writer) = secured.tokens.create("bench-writer", Role::Writer, None)?;
    let open = Server::start(AppState::new(
        store.clone(),
        projections.clone(),
        AccessControl::in_memory(),
    ))
    .await?;
    let tokened = Server::start(AppState::new(store.clone(), projections.clone(), secured)).await?;
    let with_token = format!("Authorization: Bearer {writer}\r\n");

    let round = Duration::from_secs(options.seconds.max(2)) / 2;
    let (mut appends, mut queries) = ([0.0f64; 2], [0.0f64; 2]);
    for r in 0..ROUNDS {
        // Alternate which goes first, so drift during the run favours neither.
        let order: [(usize, &Server, &str); 2] = if r % 2 == 0 {
            [(0, &open, ""), (1, &tokened, &with_token)]
        } else {
            [(1, &tokened, &with_token), (0, &open, "")]
        };
        for (slot, server, header) in order {
            appends[slot] += single_appends(&server.address, header, round).await?;
            queries[slot] += point_queries(&server.address, header, round).await?;
        }
    }
    let per_round = |total: f64| total / ROUNDS as f64;
    report.record(
        "access_append_single_open",
        per_round(appends[0]),
        "appends/s",
    );
    report.record(
        "access_append_single_token",
        per_round(appends[1]),
        "appends/s",
    );
    report.record("access_append_single_ratio", appends[1] / appends[0], "x");
    report.record(
        "access_point_queries_open",
        per_round(queries[0]),
        "queries/s",
    );
    report.record(
        "access_point_queries_token",
        per_round(queries[1]),
        "queries/s",
    );
    report.record("access_point_queries_ratio", queries[1] / queries[0], "x");
    open.stop().await?;
    tokened.stop().await?;
    projections.shutdown().await;
    store.close();
    Ok(())
}

/// Durable single-event appends from 64 clients for `duration`: appends per second.
async fn single_appends(address: &str, header: &str, duration: Duration) -> anyhow::Result<f64> {
    let until = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..64u64 {
        let (address, header) = (address.to_owned(), header.to_owned());
        tasks.spawn(async move {
            let mut connection = RawConnection::open(&address).await?.with_headers(&header);
            let path = format!("/streams/access-{worker}");
            let mut done = 0u64;
            while Instant::now() < until {
                let body = format!(
                    r#"{{"events":[{{"type":"Ping","data":{}}}]}}"#,
                    std::str::from_utf8(&payload(done)).expect("UTF-8")
                );
                connection.request("POST", &path, body.as_bytes()).await?;
                done += 1;
            }
            anyhow::Ok(done)
        });
    }
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Point queries of `order-totals` from 32 clients for `duration`, each request with `header`
/// (header lines, or nothing): queries per second.
pub(super) async fn point_queries(
    address: &str,
    header: &str,
    duration: Duration,
) -> anyhow::Result<f64> {
    requests_per_second(address, header, duration, |client, done| {
        let customer = (client * 7919 + done * 31) % CUSTOMERS;
        format!("/projections/order-totals/state/customer:c-{customer}")
    })
    .await
}

/// GETs of `path(client, request)` from 32 clients, each on its own connection, for `duration`:
/// answers per second.
pub(super) async fn requests_per_second(
    address: &str,
    header: &str,
    duration: Duration,
    path: fn(u64, u64) -> String,
) -> anyhow::Result<f64> {
    let until = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..32u64 {
        let (address, header) = (address.to_owned(), header.to_owned());
        tasks.spawn(async move {
            let mut connection = RawConnection::open(&address).await?.with_headers(&header);
            let mut done = 0u64;
            while Instant::now() < until {
                connection.request("GET", &path(client, done), b"").await?;
                done += 1;
            }
            anyhow::Ok(done)
        });
    }
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}
