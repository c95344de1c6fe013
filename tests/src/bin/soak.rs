//! `lantern-soak`: mixed load on a real server for a while, sampling its memory, open file
//! descriptors and threads every 10 s; after the warm-up they must stay flat (growth under 10%).
//!
//! `lantern-soak [--minutes N] [--server PATH] [--module PATH] [--warmup-minutes N]
//! [--index-cache-mib N]` (the last is passed to the server)
//!
//! The load: appenders (a bounded set of customers, so read models stop growing), subscribers
//! that come and go, point, prefix and module queries, and a redeploy (a live rebuild) every
//! minute.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lantern_tests::{ServerProcess, torture, variant};
use serde_json::json;

struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: u64,
    threads: u64,
}

fn sample(pid: u32, started: Instant) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample {
        at: started.elapsed(),
        rss_kib: field("VmRSS:")?,
        fds,
        threads: field("Threads:")?,
    })
}

fn main() -> ExitCode {
    let mut minutes = 30u64;
    let mut warmup = 10u64;
    let mut server = PathBuf::from("target/release/lantern");
    let mut module = torture::guests_dir().join("order_totals.wasm");
    let mut server_args: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--minutes" => minutes = value.parse().unwrap_or(minutes),
            "--warmup-minutes" => warmup = value.parse().unwrap_or(warmup),
            "--server" => server = PathBuf::from(value),
            "--module" => module = PathBuf::from(value),
            "--index-cache-mib" => server_args.extend(["--index-cache-mib".into(), value]),
            _ => {
                eprintln!("error: unknown flag {flag}");
                return ExitCode::from(2);
            }
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    match runtime.block_on(soak(server, &server_args, module, minutes, warmup)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("soak failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn soak(
    server: PathBuf,
    server_args: &[String],
    module_path: PathBuf,
    minutes: u64,
    warmup: u64,
) -> anyhow::Result<bool> {
    let dir = tempfile::tempdir()?;
    let args: Vec<&str> = server_args.iter().map(String::as_str).collect();
    let process = ServerProcess::start_with(&server, &dir.path().join("data"), &args, &[])?;
    let pid = process.pid();
    let url = process.url.clone();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let module = std::fs::read(&module_path)?;
    let deployed = client
        .put(format!("{url}/projections/totals"))
        .body(module.clone())
        .send()
        .await?;
    anyhow::ensure!(deployed.status() == 201, "deploy: {}", deployed.status());
    let until = Instant::now() + Duration::from_secs(minutes * 60);
    let counters: Arc<[AtomicU64; 4]> = Arc::new(Default::default()); // appends, queries, subscriptions, redeploys
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..4u64 {
        let (client, url, counters) = (client.clone(), url.clone(), counters.clone());
        tasks.spawn(async move {
            let mut i = 0u64;
            while Instant::now() < until {
                let events: Vec<_> = (0..10)
                    .map(|k| json!({"type": "OrderPlaced", "data": {"customer": format!("c-{}", (i * 10 + k) % 500), "amount": k + 1}}))
                    .collect();
                let response = client
                    .post(format!("{url}/streams/order-{worker}-{}", i % 50))
                    .json(&json!({ "events": events }))
                    .send()
                    .await?;
                anyhow::ensure!(response.status() == 200, "append: {}", response.status());
                counters[0].fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(())
        });
    }
    for reader in 0..2u64 {
        let (client, url, counters) = (client.clone(), url.clone(), counters.clone());
        tasks.spawn(async move {
            let mut i = 0u64;
            while Instant::now() < until {
                let path = match i % 3 {
                    0 => format!(
                        "/projections/totals/state/customer:c-{}",
                        (i + reader) % 500
                    ),
                    1 => "/projections/totals/state?prefix=customer:c-1&limit=50".to_owned(),
                    _ => "/projections/totals/query/top?n=5".to_owned(),
                };
                let response = client.get(format!("{url}{path}")).send().await?;
                anyhow::ensure!(
                    response.status().is_success() || response.status() == 404,
                    "{path}: {}",
                    response.status()
                );
                response.bytes().await?;
                counters[1].fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(())
        });
    }
    {
        // Subscribers come and go: each reads for a while from some position, then leaves.
        let (client, url, counters) = (client.clone(), url.clone(), counters.clone());
        tasks.spawn(async move {
            let mut i = 0u64;
            while Instant::now() < until {
                let response = client
                    .get(format!("{url}/subscribe?from={}", 1 + i * 997))
                    .header("accept", "application/x-ndjson")
                    .send()
                    .await?;
                let mut body = response.bytes_stream();
                let stay = Instant::now() + Duration::from_millis(500 + (i % 7) * 300);
                while Instant::now() < stay {
                    if tokio::time::timeout(Duration::from_millis(200), body.next())
                        .await
                        .is_ok_and(|chunk| chunk.is_none())
                    {
                        break;
                    }
                }
                counters[2].fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok(())
        });
    }
    {
        let (client, url, counters) = (client.clone(), url.clone(), counters.clone());
        tasks.spawn(async move {
            let mut version = 0u64;
            while Instant::now() + Duration::from_secs(60) < until {
                tokio::time::sleep(Duration::from_secs(60)).await;
                version += 1;
                let response = client
                    .put(format!("{url}/projections/totals"))
                    .body(variant(&module, &format!("soak-{version}")))
                    .send()
                    .await?;
                anyhow::ensure!(response.status() == 202, "redeploy: {}", response.status());
                counters[3].fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    println!(
        "{:>6}  {:>9}  {:>5}  {:>7}",
        "time", "rss MiB", "fds", "threads"
    );
    while Instant::now() < until {
        if let Some(s) = sample(pid, started) {
            println!(
                "{:>5}s  {:>9.1}  {:>5}  {:>7}",
                s.at.as_secs(),
                s.rss_kib as f64 / 1024.0,
                s.fds,
                s.threads
            );
            samples.push(s);
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    process.terminate()?;
    let after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= Duration::from_secs(warmup * 60))
        .collect();
    anyhow::ensure!(after.len() >= 2, "too few samples after the warm-up");
    // Growth is a trend: the median of the last five minutes over the median of the first five
    // after the warm-up (a third of the samples each when the run is shorter). A single sample
    // (a connection open for a moment, a page cache refill) is noise, not growth; the peak over
    // the first sample is printed too.
    let window = (after.len() / 3).clamp(1, 30);
    let median = |samples: &[&Sample], value: fn(&Sample) -> u64| {
        let mut values: Vec<u64> = samples.iter().map(|s| value(s)).collect();
        values.sort_unstable();
        values[values.len() / 2] as f64
    };
    let growth = |value: fn(&Sample) -> u64| {
        let first = median(&after[..window], value);
        let last = median(&after[after.len() - window..], value);
        (last - first) / first.max(1.0)
    };
    let peak = |value: fn(&Sample) -> u64| {
        let base = value(after[0]) as f64;
        let peak = after.iter().map(|s| value(s)).max().unwrap_or(0) as f64;
        (peak - base) / base.max(1.0)
    };
    let (rss, fds, threads) = (
        growth(|s| s.rss_kib),
        growth(|s| s.fds),
        growth(|s| s.threads),
    );
    let flat = rss < 0.10 && fds < 0.10 && threads < 0.10;
    println!(
        "soak: {minutes} min, {} appends of 10 events, {} queries, {} subscriptions, {} redeploys; after a {warmup}-minute warm-up, growth (median of the last {window} samples over the first {window}): RSS {:+.1}%, fds {:+.1}%, threads {:+.1}% (peak over the first sample: RSS {:+.1}%, fds {:+.1}%, threads {:+.1}%): {}",
        counters[0].load(Ordering::Relaxed),
        counters[1].load(Ordering::Relaxed),
        counters[2].load(Ordering::Relaxed),
        counters[3].load(Ordering::Relaxed),
        rss * 100.0,
        fds * 100.0,
        threads * 100.0,
        peak(|s| s.rss_kib) * 100.0,
        peak(|s| s.fds) * 100.0,
        peak(|s| s.threads) * 100.0,
        if flat { "flat" } else { "NOT FLAT" }
    );
    Ok(flat)
}
