//! `lantern bench --only replication`: a leader and followers as separate `lantern serve`
//! processes on this machine.
//!
//! - the leader's batched appends alone (which also fills it);
//! - a follower catching up from zero on those events, and its rate over the leader's;
//! - the leader's batched appends with two followers attached, over its rate alone: with two
//!   follower processes (which on this machine share its cores), and with two replication streams
//!   read and dropped by the benchmark (the leader's own cost of followers on other machines);
//! - the live lag at 1,000 single-event appends per second: from the leader's answer to the event
//!   reaching a subscriber of the follower (so after the follower's fsync).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use parking_lot::Mutex;

use super::{BenchOptions, RawConnection, Report, http_batched_appends};

/// A `lantern serve` child process, killed when dropped.
struct Node {
    child: Child,
    address: String,
}

impl Node {
    fn start(data: &Path, args: &[&str]) -> anyhow::Result<Node> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting lantern serve")?;
        let stderr = child.stderr.take().context("its stderr")?;
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listen=").nth(1) {
                    let address = rest.split_whitespace().next().unwrap_or_default();
                    let _ = address_tx.send(address.to_owned());
                }
            }
        });
        let address = address_rx
            .recv_timeout(Duration::from_secs(60))
            .context("the server did not report its address")?;
        Ok(Node { child, address })
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn head(http: &reqwest::Client, node: &Node) -> anyhow::Result<u64> {
    let health: serde_json::Value = http
        .get(format!("{}/health", node.url()))
        .send()
        .await?
        .json()
        .await?;
    health["head"].as_u64().context("health has a head")
}

async fn wait_for_head(http: &reqwest::Client, node: &Node, wanted: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while head(http, node).await? < wanted {
        anyhow::ensure!(Instant::now() < deadline, "the follower did not catch up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

pub(super) async fn run(
    base: &Path,
    options: &BenchOptions,
    report: &mut Report,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let events = options.replication_events;
    let leader = Node::start(&base.join("repl-leader"), &[])?;
    let alone = http_batched_appends(&leader.address, options, events, "repl-a").await?;
    report.record("replication_leader_append_batched_alone", alone, "events/s");

    let started = Instant::now();
    let first = Node::start(&base.join("repl-follower-1"), &["--follow", &leader.url()])?;
    wait_for_head(&http, &first, events).await?;
    let catch_up = events as f64 / started.elapsed().as_secs_f64();
    report.record("replication_follower_catch_up", catch_up, "events/s");
    report.record(
        "replication_follower_catch_up_over_leader_append",
        catch_up / alone,
        "ratio",
    );

    let second = Node::start(&base.join("repl-follower-2"), &["--follow", &leader.url()])?;
    wait_for_head(&http, &second, events).await?;
    let with_two = http_batched_appends(&leader.address, options, events, "repl-b").await?;
    report.record(
        "replication_leader_append_batched_two_followers",
        with_two,
        "events/s",
    );
    report.record(
        "replication_leader_append_two_followers_over_alone",
        with_two / alone,
        "ratio",
    );
    let total = head(&http, &leader).await?;
    wait_for_head(&http, &first, total).await?;
    wait_for_head(&http, &second, total).await?;
    drop(second);
    let mut lags = live_lag(&leader, &first, options.seconds).await?;
    report.record_percentiles("replication_live_lag_1000_per_s", &mut lags);
    drop(first);

    // The leader's own cost: two streams from its head, read and dropped as they come.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut sinks = tokio::task::JoinSet::new();
    let from = head(&http, &leader).await? + 1;
    for _ in 0..2 {
        let response = http
            .get(format!("{}/replicate?from={from}", leader.url()))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "opening a replication stream"
        );
        let stop = stop.clone();
        sinks.spawn(async move {
            let mut body = response.bytes_stream();
            let mut bytes = 0usize;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return bytes,
                    chunk = body.next() => match chunk {
                        Some(Ok(chunk)) => bytes += chunk.len(),
                        _ => return bytes,
                    },
                }
            }
        });
    }
    let with_streams = http_batched_appends(&leader.address, options, events, "repl-c").await?;
    stop.cancel();
    while sinks.join_next().await.is_some() {}
    // Alone again, on a store as large: the ratio is over the mean of the two runs alone.
    let alone_again = http_batched_appends(&leader.address, options, events, "repl-d").await?;
    report.record(
        "replication_leader_append_batched_alone_again",
        alone_again,
        "events/s",
    );
    report.record(
        "replication_leader_append_batched_two_streams",
        with_streams,
        "events/s",
    );
    report.record(
        "replication_leader_append_two_streams_over_alone",
        with_streams / ((alone + alone_again) / 2.0),
        "ratio",
    );
    Ok(())
}

/// 1,000 single-event appends a second on the leader for `seconds`; for each, the time from the
/// leader's answer to the event's arrival at a subscriber of the follower (0 when it arrived
/// before the answer did).
async fn live_lag(leader: &Node, follower: &Node, seconds: u64) -> anyhow::Result<Vec<Duration>> {
    const PER_SECOND: u64 = 1000;
    const CLIENTS: usize = 16;
    let arrived: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let answered: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let subscription = reqwest::Client::new()
        .get(format!("{}/subscribe", follower.url()))
        .header("accept", "application/x-ndjson")
        .send()
        .await?;
    anyhow::ensure!(
        subscription.status().is_success(),
        "subscribing to the follower"
    );
    let reader = {
        let arrived = arrived.clone();
        tokio::spawn(async move {
            let mut body = subscription.bytes_stream();
            let mut line = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                let now = Instant::now();
                for &byte in chunk.iter() {
                    if byte != b'\n' {
                        line.push(byte);
                        continue;
                    }
                    if let Ok(event) = serde_json::from_slice::<serde_json::Value>(&line)
                        && let Some(position) = event["position"].as_u64()
                    {
                        arrived.lock().insert(position, now);
                    }
                    line.clear();
                }
            }
        })
    };
    let total = PER_SECOND * seconds;
    let (jobs, receiver) = async_channel(CLIENTS);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (receiver, answered) = (receiver.clone(), answered.clone());
        let address = leader.address.clone();
        clients.spawn(async move {
            let mut connection = RawConnection::open(&address).await?;
            while let Ok(i) = receiver.recv().await {
                let body = format!(r#"{{"events":[{{"type":"Ping","data":{{"i":{i}}}}}]}}"#);
                let answer = connection
                    .post(&format!("/streams/lag-{}", i % 64), body.as_bytes())
                    .await?;
                let now = Instant::now();
                let answer: serde_json::Value = serde_json::from_slice(&answer)?;
                let position = answer["last_position"].as_u64().context("a position")?;
                answered.lock().insert(position, now);
            }
            anyhow::Ok(())
        });
    }
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / PER_SECOND));
    for i in 0..total {
        ticks.tick().await;
        jobs.send(i).await?;
    }
    drop(jobs);
    while let Some(done) = clients.join_next().await {
        done??;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    reader.abort();
    let arrived = arrived.lock();
    let answered = answered.lock();
    let lags: Vec<Duration> = answered
        .iter()
        .filter_map(|(position, answered)| {
            arrived
                .get(position)
                .map(|arrived| arrived.saturating_duration_since(*answered))
        })
        .collect();
    anyhow::ensure!(
        lags.len() as u64 == total,
        "{} of {total} appends reached the follower's subscriber",
        lags.len()
    );
    Ok(lags)
}

/// A multi-consumer queue of append numbers (tokio's mpsc has one consumer).
fn async_channel(capacity: usize) -> (Sender, Receiver) {
    let (sender, receiver) = tokio::sync::mpsc::channel(capacity);
    (
        Sender(sender),
        Receiver(Arc::new(tokio::sync::Mutex::new(receiver))),
    )
}

struct Sender(tokio::sync::mpsc::Sender<u64>);

impl Sender {
    async fn send(&self, value: u64) -> anyhow::Result<()> {
        self.0
            .send(value)
            .await
            .map_err(|_| anyhow::anyhow!("the appenders stopped"))
    }
}

#[derive(Clone)]
struct Receiver(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<u64>>>);

impl Receiver {
    async fn recv(&self) -> Result<u64, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}
