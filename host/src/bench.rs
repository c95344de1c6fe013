//! The benchmark program behind `lantern bench`: prints every figure as a JSON line
//! `{"bench": ..., "value": ..., "unit": ...}` and a readable table at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::store::{Direction, ExpectedRevision, Filter, NewEvent, Store, StoreOptions};

/// What to measure and how big.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Events in the store for the in-process benchmarks (10,000,000 for the issue's targets).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Events per append in the batched benchmarks.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Distinct streams the events spread over.
    #[arg(long, default_value_t = 10_000)]
    pub streams: u64,
    /// Concurrent appenders in the in-process batched benchmark.
    #[arg(long, default_value_t = 4)]
    pub appenders: usize,
    /// Seconds each HTTP benchmark runs.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Where to put the benchmark's stores (a fresh temporary directory by default).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run only the benchmarks whose names contain one of these words.
    #[arg(long = "only", value_delimiter = ',')]
    pub only: Vec<String>,
}

struct Figure {
    bench: String,
    value: f64,
    unit: &'static str,
}

struct Report {
    figures: Vec<Figure>,
}

impl Report {
    fn record(&mut self, bench: &str, value: f64, unit: &'static str) {
        println!(
            "{}",
            serde_json::json!({"bench": bench, "value": (value * 100.0).round() / 100.0, "unit": unit})
        );
        self.figures.push(Figure {
            bench: bench.to_owned(),
            value,
            unit,
        });
    }

    fn print_table(&self) {
        println!();
        println!("{:<44} {:>16}  unit", "benchmark", "value");
        for figure in &self.figures {
            println!(
                "{:<44} {:>16.2}  {}",
                figure.bench, figure.value, figure.unit
            );
        }
    }
}

/// A ~200-byte JSON payload.
fn payload(i: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"customer":"c-{:05}","amount":{},"currency":"EUR","note":"{}","sku":"sku-{:06}"}}"#,
        i % 10_000,
        i % 9973,
        "x".repeat(112),
        i % 100_000
    ))
}

/// Runs the benchmarks and prints their figures.
pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
    let base = match &options.dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let wanted = |name: &str| {
        options.only.is_empty() || options.only.iter().any(|w| name.contains(w.as_str()))
    };
    let mut report = Report {
        figures: Vec::new(),
    };
    let rss_before = peak_rss_kib();

    if wanted("store") {
        let store = Store::open(&base.path().join("store"), StoreOptions::default())?;
        bench_batched_appends(&store, &options, &mut report).await?;
        bench_read_all(&store, &mut report).await?;
        bench_read_stream(&store, &options, &mut report).await?;
        if let (Some(before), Some(after)) = (rss_before, peak_rss_kib()) {
            report.record("store_peak_rss", after as f64 / 1024.0, "MiB");
            report.record(
                "store_peak_rss_growth",
                (after - before) as f64 / 1024.0,
                "MiB",
            );
        }
        store.close();
    }
    report.print_table();
    Ok(())
}

async fn bench_batched_appends(
    store: &Store,
    options: &BenchOptions,
    report: &mut Report,
) -> anyhow::Result<()> {
    let appends = options.events.div_ceil(options.batch as u64);
    let gate = Arc::new(Semaphore::new(options.appenders));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for append in 0..appends {
        let permit = gate.clone().acquire_owned().await?;
        let store = store.clone();
        let batch = options.batch as u64;
        let stream = format!("bench-{}", append % options.streams);
        tasks.spawn(async move {
            let events = (0..batch)
                .map(|i| NewEvent {
                    id: None,
                    event_type: "OrderPlaced".into(),
                    data: payload(append * batch + i),
                    metadata: None,
                })
                .collect();
            let result = store.append(&stream, ExpectedRevision::Any, events).await;
            drop(permit);
            result
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let elapsed = started.elapsed();
    report.record(
        "store_append_batched_durable",
        (appends * options.batch as u64) as f64 / elapsed.as_secs_f64(),
        "events/s",
    );
    Ok(())
}

async fn bench_read_all(store: &Store, report: &mut Report) -> anyhow::Result<()> {
    let store = store.clone();
    let (count, elapsed) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut from = 1;
        let mut count = 0u64;
        loop {
            let slice = store.read_all(from, 10_000, &Filter::default())?;
            if slice.events.is_empty() {
                break;
            }
            count += slice.events.len() as u64;
            from = slice.next_from;
        }
        anyhow::Ok((count, started.elapsed()))
    })
    .await??;
    report.record(
        "store_read_all",
        count as f64 / elapsed.as_secs_f64(),
        "events/s",
    );
    Ok(())
}

async fn bench_read_stream(
    store: &Store,
    options: &BenchOptions,
    report: &mut Report,
) -> anyhow::Result<()> {
    let store = store.clone();
    // Only streams that received an append have events.
    let streams = options
        .streams
        .min(options.events.div_ceil(options.batch as u64));
    let mut latencies = tokio::task::spawn_blocking(move || {
        let mut latencies = Vec::with_capacity(1000);
        for i in 0..1000u64 {
            // A spread of streams, each read from its start: 100 events per read.
            let stream = format!("bench-{}", (i * 7919) % streams);
            let started = Instant::now();
            let slice = store
                .read_stream(&stream, Some(0), Direction::Forward, 100)
                .with_context(|| format!("reading {stream}"))?;
            latencies.push(started.elapsed());
            anyhow::ensure!(!slice.events.is_empty(), "stream {stream} is empty");
        }
        anyhow::Ok(latencies)
    })
    .await??;
    latencies.sort();
    report.record(
        "store_read_stream_100_p50",
        ms(latencies[latencies.len() / 2]),
        "ms",
    );
    report.record(
        "store_read_stream_100_p99",
        ms(latencies[latencies.len() * 99 / 100]),
        "ms",
    );
    Ok(())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The process's peak resident set (VmHWM), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
