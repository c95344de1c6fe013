//! Lantern against its peer: a durable PostgreSQL event store on the same machine (`--only
//! postgres --postgres CONNINFO`; `scripts/bench-postgres.sh` starts a throwaway server).
//!
//! The peer keeps events the way Marten does: a table of streams (id, version) and a table of
//! events (a global sequence, a uuid, the stream and its version, the type, JSONB data, a
//! timestamp), unique on (stream, version). One append is one call of a PL/pgSQL function in one
//! transaction: bump the stream's version, insert the events. PostgreSQL runs with its defaults
//! (`fsync` and `synchronous_commit` on): like Lantern, it answers after the WAL is on disk, and
//! concurrent commits share a WAL flush (its group commit). Both sides get the same load
//! generator shape: pre-built bodies or parameters, one request in flight per connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use super::{
    BenchOptions, CLOSED_LOOP_CLIENTS, GroupStats, Report, Server, gather_latencies,
    http_batched_appends, http_closed_loop, http_single_appends, median, payload,
};
use crate::projection::Projections;
use crate::store::{Store, StoreOptions};

const SCHEMA: &str = r#"
set client_min_messages = warning;
drop function if exists lantern_peer_append(text, text[], text[]);
drop table if exists lantern_peer_events;
drop table if exists lantern_peer_streams;
create table lantern_peer_streams (
    id text primary key,
    version bigint not null,
    timestamp timestamptz not null default now()
);
create table lantern_peer_events (
    seq_id bigserial primary key,
    id uuid not null,
    stream_id text not null references lantern_peer_streams (id),
    version bigint not null,
    type text not null,
    data jsonb not null,
    timestamp timestamptz not null default now(),
    unique (stream_id, version)
);
create function lantern_peer_append(stream text, types text[], bodies text[]) returns bigint
language plpgsql as $$
declare
    n bigint := cardinality(bodies);
    last bigint;
begin
    insert into lantern_peer_streams as s (id, version) values (stream, n)
        on conflict (id) do update set version = s.version + n, timestamp = now()
        returning s.version into last;
    insert into lantern_peer_events (id, stream_id, version, type, data)
        select gen_random_uuid(), stream, last - n + i, types[i], bodies[i]::jsonb
        from generate_subscripts(bodies, 1) as i;
    return last;
end $$;
"#;

const APPEND: &str = "select lantern_peer_append($1, $2, $3)";

/// Rounds of the single-append comparison.
const SINGLE_APPEND_ROUNDS: usize = 3;

/// Runs the comparison, or says why not.
pub(crate) async fn run(
    base: &std::path::Path,
    options: &BenchOptions,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Some(conninfo) = &options.postgres else {
        eprintln!(
            "skipping the PostgreSQL comparison: no --postgres CONNINFO (scripts/bench-postgres.sh starts a server and passes it)"
        );
        return Ok(());
    };
    let admin = connect(conninfo).await?;
    admin.batch_execute(SCHEMA).await?;

    let store = Store::open(&base.join("postgres-peer"), StoreOptions::default())?;
    let projections = Projections::open(
        store.clone(),
        &base.join("postgres-peer-projections"),
        crate::wasm::WasmConfig::default(),
    )
    .await?;
    let server = Server::open(&store, &projections).await?;

    // Single-event appends, 64 clients: Lantern, then PostgreSQL, the same seconds each, in
    // three rounds; each rate is the median of its rounds (the disk's sync time drifts from
    // minute to minute, and one run of each moved the ratio by a fifth), the latencies are all
    // of them.
    let groups = GroupStats::of(&server.address).await?;
    let (mut lantern_rates, mut postgres_rates) = (Vec::new(), Vec::new());
    let (mut lantern_latencies, mut postgres_latencies) = (Vec::new(), Vec::new());
    for _ in 0..SINGLE_APPEND_ROUNDS {
        let (rate, latencies) =
            http_single_appends(&server.address, options.seconds, "peer-single").await?;
        lantern_rates.push(rate);
        lantern_latencies.extend(latencies);
        let (rate, latencies) = postgres_single_appends(conninfo, options.seconds).await?;
        postgres_rates.push(rate);
        postgres_latencies.extend(latencies);
    }
    let lantern_groups = GroupStats::of(&server.address).await?;
    // Each round's own ratio: when they spread far, the day's disk decides the median ratio.
    let round_ratios: Vec<f64> = lantern_rates
        .iter()
        .zip(&postgres_rates)
        .map(|(lantern, postgres)| lantern / postgres)
        .collect();
    let (lantern, postgres) = (median(lantern_rates), median(postgres_rates));
    report.record("postgres_peer_single_lantern", lantern, "appends/s");
    report.record("postgres_peer_single_postgres", postgres, "appends/s");
    report.record("postgres_peer_single_ratio", lantern / postgres, "x");
    report.record(
        "postgres_peer_single_ratio_lowest_round",
        round_ratios.iter().copied().fold(f64::INFINITY, f64::min),
        "x",
    );
    report.record(
        "postgres_peer_single_ratio_highest_round",
        round_ratios.iter().copied().fold(0.0, f64::max),
        "x",
    );
    report.record_percentiles("postgres_peer_single_lantern", &mut lantern_latencies);
    report.record_percentiles("postgres_peer_single_postgres", &mut postgres_latencies);
    lantern_groups.record_since(&groups, "postgres_peer_single_lantern", report);

    // What the same load generator gets from the cheapest route, `GET /health`: the most any
    // request can reach on this machine's loopback, whatever the server does with it.
    let (ceiling, _) = http_closed_loop(
        &server.address,
        options.seconds,
        "GET",
        vec![Vec::new()],
        |_| "/health".to_owned(),
    )
    .await?;
    report.record("postgres_peer_http_ceiling", ceiling, "requests/s");
    report.record(
        "postgres_peer_single_lantern_of_ceiling",
        lantern / ceiling,
        "x",
    );

    // Batched appends: the same events, `options.batch` per append, 4 clients.
    let events = options.events.min(500_000);
    let lantern = http_batched_appends(&server.address, options, events, "peer-batched").await?;
    let postgres = postgres_batched_appends(conninfo, options, events).await?;
    report.record("postgres_peer_batched_lantern", lantern, "events/s");
    report.record("postgres_peer_batched_postgres", postgres, "events/s");
    report.record("postgres_peer_batched_ratio", lantern / postgres, "x");

    let stored: i64 = admin
        .query_one("select count(*) from lantern_peer_events", &[])
        .await?
        .get(0);
    anyhow::ensure!(stored > 0, "PostgreSQL stored no events");
    server.stop().await?;
    projections.shutdown().await;
    store.close();
    Ok(())
}

async fn connect(conninfo: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .map_err(|error| anyhow::anyhow!("cannot connect to PostgreSQL ({conninfo}): {error}"))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("PostgreSQL connection: {error}");
        }
    });
    Ok(client)
}

/// For `seconds`, each of 64 connections appends one event at a time to its own stream.
async fn postgres_single_appends(
    conninfo: &str,
    seconds: u64,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let bodies: Arc<Vec<String>> = Arc::new(
        (0..1024)
            .map(|i| String::from_utf8(payload(i).to_vec()).expect("UTF-8"))
            .collect(),
    );
    // Connections and statements made before the clock starts.
    let mut clients = Vec::new();
    for _ in 0..CLOSED_LOOP_CLIENTS {
        let client = connect(conninfo).await?;
        let append = client.prepare(APPEND).await?;
        clients.push((client, append));
    }
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (worker, (client, append)) in clients.into_iter().enumerate() {
        let bodies = bodies.clone();
        tasks.spawn(async move {
            let stream = format!("single-{worker}");
            let types = ["Ping"];
            let mut latencies = Vec::new();
            let mut i = worker;
            while Instant::now() < until {
                let body = [bodies[i % bodies.len()].as_str()];
                let sent = Instant::now();
                client
                    .query_one(&append, &[&stream, &&types[..], &&body[..]])
                    .await?;
                latencies.push(sent.elapsed());
                i += 1;
            }
            anyhow::Ok(latencies)
        });
    }
    gather_latencies(tasks, started).await
}

/// Appends `events` in calls of `options.batch` events from 4 connections, to `options.streams`
/// streams; returns events per second.
async fn postgres_batched_appends(
    conninfo: &str,
    options: &BenchOptions,
    events: u64,
) -> anyhow::Result<f64> {
    const CLIENTS: u64 = 4;
    let batch = options.batch as u64;
    let batches: Arc<Vec<Vec<String>>> = Arc::new(
        (0..16u64)
            .map(|variant| {
                (0..batch)
                    .map(|i| {
                        String::from_utf8(payload(variant * 1000 + i).to_vec()).expect("UTF-8")
                    })
                    .collect()
            })
            .collect(),
    );
    let types: Arc<Vec<&'static str>> = Arc::new(vec!["OrderPlaced"; options.batch]);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let client = connect(conninfo).await?;
        let append = client.prepare(APPEND).await?;
        clients.push((client, append));
    }
    let appends = events.div_ceil(batch);
    let streams = options.streams;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (worker, (client, append)) in clients.into_iter().enumerate() {
        let batches = batches.clone();
        let types = types.clone();
        tasks.spawn(async move {
            let mut append_number = worker as u64;
            while append_number < appends {
                let stream = format!("batched-{}", append_number % streams);
                let bodies: &Vec<String> = &batches[(append_number % 16) as usize];
                client
                    .query_one(&append, &[&stream, &*types, bodies])
                    .await?;
                append_number += CLIENTS;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok((appends * batch) as f64 / started.elapsed().as_secs_f64())
}
