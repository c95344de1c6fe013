//! Crash torture: cycles of a real server under concurrent appenders (with event ids), a
//! subscriber and two projections (one rebuilding), each cycle ended by SIGKILL. After every
//! restart the test checks its own model of what was acknowledged against the server:
//! - the log holds exactly the acknowledged events, each at its position, once;
//! - appends whose answer was lost to the kill, retried with the same ids, are not duplicated;
//! - the subscriber resumes after the last event it saw with no gap and no duplicate;
//! - each read model equals the fold of the log at its checkpoint.
//!
//! Run by `scripts/torture.sh` (100 cycles) and by an integration test (5 cycles).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::ServerProcess;

/// How to torture.
#[derive(Debug, Clone)]
pub struct TortureOptions {
    /// The `lantern` binary (or the tests' `lantern-under-test`).
    pub server: PathBuf,
    /// The `order-totals` module.
    pub module: PathBuf,
    /// Kill cycles.
    pub cycles: usize,
    /// Concurrent appenders.
    pub appenders: usize,
    /// Longest run before a kill (each cycle picks a time up to this).
    pub max_run: Duration,
    /// Where the data folder goes.
    pub dir: PathBuf,
}

/// What a torture run did.
#[derive(Debug, Default)]
pub struct TortureSummary {
    /// Cycles run (each ended by SIGKILL and checked after the restart).
    pub cycles: usize,
    /// Events acknowledged over the run (the log's final head).
    pub events: u64,
    /// Appends whose answer the kill swallowed, retried after the restart.
    pub retried: u64,
    /// Of those, how many the log already held (answered with the original positions).
    pub retried_found_written: u64,
    /// Events the subscriber received, checked for gaps and duplicates.
    pub subscribed: u64,
    /// Read model comparisons with the fold (two projections per cycle).
    pub read_models_checked: u64,
}

/// One append, as the model knows it: the request (with ids) and, once answered, its position.
#[derive(Clone)]
struct Append {
    stream: String,
    events: Vec<(String, Value)>, // (id, data)
}

impl Append {
    fn body(&self) -> Value {
        let events: Vec<Value> = self
            .events
            .iter()
            .map(|(id, data)| json!({"type": "OrderPlaced", "id": id, "data": data}))
            .collect();
        json!({ "events": events })
    }
}

#[derive(Default)]
struct Model {
    /// Acknowledged events by position: (stream, id, data).
    log: BTreeMap<u64, (String, String, Value)>,
    /// Appends sent whose answer never came.
    in_doubt: Vec<Append>,
}

/// Runs the torture; errors name the first broken promise.
pub async fn run(options: &TortureOptions) -> anyhow::Result<TortureSummary> {
    let data = options.dir.join("data");
    let module = std::fs::read(&options.module)
        .with_context(|| format!("reading {}", options.module.display()))?;
    let model = Arc::new(Mutex::new(Model::default()));
    let mut summary = TortureSummary::default();
    let mut subscriber_last = 0u64;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut seed = 0x5eed_u64;
    for cycle in 0..=options.cycles {
        let server = ServerProcess::start(&options.server, &data)?;
        let url = server.url.clone();
        if cycle == 0 {
            for name in ["totals", "totals-rebuilt"] {
                let response = client
                    .put(format!("{url}/projections/{name}"))
                    .body(module.clone())
                    .send()
                    .await?;
                ensure!(
                    response.status() == 201,
                    "deploying {name}: {}",
                    response.status()
                );
            }
        }
        // 1. Appends in doubt: retried with the same ids, never duplicated.
        let health: Value = client
            .get(format!("{url}/health"))
            .send()
            .await?
            .json()
            .await?;
        let head_at_start = health["head"].as_u64().context("a head")?;
        let in_doubt = std::mem::take(&mut model.lock().expect("model").in_doubt);
        for append in in_doubt {
            let answer = post(&client, &url, &append).await?;
            let first = answer["first_position"].as_u64().context("a position")?;
            summary.retried += 1;
            let mut model = model.lock().expect("model");
            if model.log.contains_key(&first) {
                bail!("a retried append got position {first}, which another append holds");
            }
            if first <= head_at_start {
                summary.retried_found_written += 1;
            }
            for (i, (id, data)) in append.events.iter().enumerate() {
                model.log.insert(
                    first + i as u64,
                    (append.stream.clone(), id.clone(), data.clone()),
                );
            }
        }
        // 2. The log is exactly the model.
        // The appenders are stopped: a copy of the model is what the server must hold.
        let acknowledged = model.lock().expect("model").log.clone();
        check_log(&client, &url, &acknowledged).await?;
        let head = acknowledged.len() as u64;
        // 3. The subscriber resumes with no gap and no duplicate.
        summary.subscribed += resume_subscriber(&client, &url, &mut subscriber_last, head).await?;
        // 4. Read models equal the fold.
        for name in ["totals", "totals-rebuilt"] {
            check_read_model(&client, &url, name, &acknowledged, head).await?;
            summary.read_models_checked += 1;
        }
        if cycle == options.cycles {
            summary.events = head;
            server.terminate()?;
            break;
        }
        // 5. Load, a rebuild in progress, then SIGKILL at a random moment.
        let response = client
            .post(format!("{url}/projections/totals-rebuilt/rebuild"))
            .send()
            .await?;
        ensure!(response.status() == 202, "rebuild: {}", response.status());
        let stop = tokio_util::sync::CancellationToken::new();
        let mut appenders = Vec::new();
        for worker in 0..options.appenders {
            seed = next(seed);
            appenders.push(tokio::spawn(appender(
                client.clone(),
                url.clone(),
                model.clone(),
                stop.clone(),
                cycle,
                worker,
                seed,
            )));
        }
        let killed = tokio_util::sync::CancellationToken::new();
        let live = tokio::spawn(live_subscriber(
            client.clone(),
            url.clone(),
            subscriber_last,
            killed.clone(),
        ));
        seed = next(seed);
        let run_for = options
            .max_run
            .mul_f64(0.2 + 0.8 * (seed % 1000) as f64 / 1000.0);
        tokio::time::sleep(run_for).await;
        server.kill()?;
        stop.cancel();
        for appender in appenders {
            appender.await??;
        }
        killed.cancel();
        let (received, last) = live.await??;
        summary.subscribed += received;
        subscriber_last = last;
        summary.cycles += 1;
        let (acknowledged, in_doubt) = {
            let model = model.lock().expect("model");
            (model.log.len(), model.in_doubt.len())
        };
        eprintln!(
            "cycle {}/{}: killed after {:.2} s; {acknowledged} events acknowledged, {in_doubt} appends in doubt",
            cycle + 1,
            options.cycles,
            run_for.as_secs_f64(),
        );
    }
    Ok(summary)
}

fn next(seed: u64) -> u64 {
    seed.wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
}

async fn post(client: &reqwest::Client, url: &str, append: &Append) -> anyhow::Result<Value> {
    let response = client
        .post(format!("{url}/streams/{}", append.stream))
        .json(&append.body())
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    ensure!(status == 200, "append answered {status}: {body}");
    Ok(body)
}

/// Appends until stopped or the server dies; an append without an answer goes in doubt.
async fn appender(
    client: reqwest::Client,
    url: String,
    model: Arc<Mutex<Model>>,
    stop: tokio_util::sync::CancellationToken,
    cycle: usize,
    worker: usize,
    mut seed: u64,
) -> anyhow::Result<()> {
    let mut round = 0u64;
    while !stop.is_cancelled() {
        seed = next(seed);
        let count = 1 + (seed % 5) as usize;
        let append = Append {
            stream: format!("order-{worker}-{}", seed % 7),
            events: (0..count)
                .map(|i| {
                    let id = uuid::Uuid::now_v7().to_string();
                    let data = json!({
                        "customer": format!("c-{}", (seed >> 8) % 17),
                        "amount": (seed >> 16) % 100 + 1,
                        "at": format!("{cycle}/{worker}/{round}/{i}"),
                    });
                    (id, data)
                })
                .collect(),
        };
        round += 1;
        match post(&client, &url, &append).await {
            Ok(answer) => {
                let first = answer["first_position"].as_u64().context("a position")?;
                let mut model = model.lock().expect("model");
                for (i, (id, data)) in append.events.iter().enumerate() {
                    let previous = model.log.insert(
                        first + i as u64,
                        (append.stream.clone(), id.clone(), data.clone()),
                    );
                    ensure!(
                        previous.is_none(),
                        "position {} acknowledged twice",
                        first + i as u64
                    );
                }
            }
            Err(_) => {
                // The kill: the append may or may not be in the log.
                model.lock().expect("model").in_doubt.push(append);
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

async fn check_log(
    client: &reqwest::Client,
    url: &str,
    model: &BTreeMap<u64, (String, String, Value)>,
) -> anyhow::Result<()> {
    let mut from = 1u64;
    let mut seen = 0u64;
    let mut ids: HashMap<String, u64> = HashMap::new();
    loop {
        let page: Value = client
            .get(format!("{url}/all?from={from}&limit=10000"))
            .send()
            .await?
            .json()
            .await?;
        for event in page["events"].as_array().context("events")? {
            let position = event["position"].as_u64().context("position")?;
            ensure!(
                position == seen + 1,
                "the log skips from {seen} to {position}"
            );
            seen = position;
            let Some((stream, id, data)) = model.get(&position) else {
                bail!("position {position} holds an event that was never acknowledged: {event}");
            };
            ensure!(
                event["stream"] == stream.as_str()
                    && event["id"] == id.as_str()
                    && &event["data"] == data,
                "position {position} holds {event}, acknowledged was {stream} {id} {data}"
            );
            if let Some(other) = ids.insert(id.clone(), position) {
                bail!("event id {id} at positions {other} and {position}");
            }
        }
        match page["next"].as_u64() {
            Some(next) => from = next,
            None => break,
        }
    }
    ensure!(
        seen == model.len() as u64,
        "the log holds {seen} events, {} were acknowledged",
        model.len()
    );
    Ok(())
}

/// Takes the complete NDJSON lines out of `pending` and returns their events' positions
/// (heartbeats, empty lines, are skipped).
fn take_positions(pending: &mut Vec<u8>) -> anyhow::Result<Vec<u64>> {
    let mut positions = Vec::new();
    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = pending.drain(..=end).collect();
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let event: Value = serde_json::from_slice(&line)?;
        positions.push(event["position"].as_u64().context("position")?);
    }
    Ok(positions)
}

/// Follows `/subscribe` live from after `last` until the connection breaks (the kill), checking
/// order; returns how many events came and the last position seen.
async fn live_subscriber(
    client: reqwest::Client,
    url: String,
    last: u64,
    killed: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(u64, u64)> {
    let mut seen = last;
    let mut received = 0u64;
    let response = match client
        .get(format!("{url}/subscribe"))
        .header("accept", "application/x-ndjson")
        .header("last-event-id", last.to_string())
        .send()
        .await
    {
        Ok(response) => response,
        Err(_) => return Ok((0, last)),
    };
    let mut body = response.bytes_stream();
    let mut pending = Vec::new();
    use futures::StreamExt;
    loop {
        let chunk = tokio::select! {
            chunk = body.next() => chunk,
            // The kill: whatever is still in flight is not waited for.
            () = killed.cancelled() => None,
        };
        let Some(Ok(chunk)) = chunk else { break };
        pending.extend_from_slice(&chunk);
        for position in take_positions(&mut pending)? {
            ensure!(
                position == seen + 1,
                "the subscription went from {seen} to {position}"
            );
            seen = position;
            received += 1;
        }
    }
    Ok((received, seen))
}

/// After a restart: resume after `last` and read up to `head` with no gap and no duplicate.
async fn resume_subscriber(
    client: &reqwest::Client,
    url: &str,
    last: &mut u64,
    head: u64,
) -> anyhow::Result<u64> {
    use futures::StreamExt;
    if *last >= head {
        ensure!(
            *last == head,
            "the subscriber saw position {last} past the head {head}"
        );
        return Ok(0);
    }
    let response = client
        .get(format!("{url}/subscribe"))
        .header("accept", "application/x-ndjson")
        .header("last-event-id", last.to_string())
        .send()
        .await?;
    let mut body = response.bytes_stream();
    let mut pending = Vec::new();
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while *last < head {
        ensure!(
            Instant::now() < deadline,
            "the subscriber stalled at {last}"
        );
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.next())
            .await
            .context("the subscription went quiet")?
            .context("the subscription ended")??;
        pending.extend_from_slice(&chunk);
        for position in take_positions(&mut pending)? {
            ensure!(
                position == *last + 1,
                "after the restart the subscription went from {last} to {position}"
            );
            *last = position;
            received += 1;
        }
    }
    Ok(received)
}

async fn check_read_model(
    client: &reqwest::Client,
    url: &str,
    name: &str,
    model: &BTreeMap<u64, (String, String, Value)>,
    head: u64,
) -> anyhow::Result<()> {
    let page: Value = client
        .get(format!(
            "{url}/projections/{name}/state?prefix=customer:&limit=10000&min_position={head}&wait_ms=30000"
        ))
        .send()
        .await?
        .json()
        .await?;
    let position = page["position"].as_u64().context("a position")?;
    let mut fold: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (_, (_, _, data)) in model.range(..=position) {
        let totals = fold
            .entry(format!(
                "customer:{}",
                data["customer"].as_str().unwrap_or_default()
            ))
            .or_default();
        totals.0 += 1;
        totals.1 += data["amount"].as_u64().unwrap_or_default();
    }
    let got: BTreeMap<String, (u64, u64)> = page["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|item| {
            (
                item["key"].as_str().unwrap_or_default().to_owned(),
                (
                    item["value"]["orders"].as_u64().unwrap_or_default(),
                    item["value"]["total"].as_u64().unwrap_or_default(),
                ),
            )
        })
        .collect();
    ensure!(
        got == fold,
        "read model {name} at position {position} differs from the fold of the log"
    );
    Ok(())
}

/// The folder the tests' build script put the guest modules in.
pub fn guests_dir() -> &'static Path {
    Path::new(env!("LANTERN_GUESTS"))
}
