//! The benchmark program behind `lantern bench`: prints every figure as a JSON line
//! `{"bench": ..., "value": ..., "unit": ...}` and a readable table at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::http::AppState;
use crate::projection::Projections;
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
    /// The `order-totals` module for the projection benchmarks (build it with
    /// `cargo build --release --target wasm32-wasip2 -p order-totals`).
    #[arg(long, default_value = "target/wasm32-wasip2/release/order_totals.wasm")]
    pub module: PathBuf,
    /// The `order-upcaster` module for the upcasting benchmark (build it with
    /// `cargo build --release --target wasm32-wasip2 -p order-upcaster`).
    #[arg(
        long,
        default_value = "target/wasm32-wasip2/release/order_upcaster.wasm"
    )]
    pub upcaster_module: PathBuf,
    /// The `order-totals-ts` module for the TypeScript benchmark (build it with
    /// `cd examples/order-totals-ts && npm ci && npm run build`).
    #[arg(
        long,
        default_value = "examples/order-totals-ts/dist/order_totals_ts.wasm"
    )]
    pub ts_module: PathBuf,
    /// Events in the projection catch-up benchmark.
    #[arg(long, default_value_t = 1_000_000)]
    pub projection_events: u64,
    /// Events the replication benchmark appends on the leader (then a follower copies them).
    #[arg(long, default_value_t = 1_000_000)]
    pub replication_events: u64,
    /// Orders in the memory benchmark (run it with `--only memory`: it is not in the default run).
    #[arg(long, default_value_t = 10_000_000)]
    pub memory_events: u64,
    /// Distinct customers (read-model keys) in the memory benchmark.
    #[arg(long, default_value_t = 1_000_000)]
    pub memory_keys: u64,
    /// A PostgreSQL server to measure appends against (`--only postgres`), as a libpq-style
    /// connection string, e.g. `host=/tmp/pg user=postgres`. It gets tables named
    /// `lantern_peer_*`, dropped first. `scripts/bench-postgres.sh` starts a throwaway server.
    #[arg(long)]
    pub postgres: Option<String>,
}

mod access;
mod memory;
mod postgres;
mod projection;
mod replication;
mod snapshots;
mod typescript;
mod upcasters;

struct Figure {
    bench: String,
    value: f64,
    unit: &'static str,
}

pub(crate) struct Report {
    figures: Vec<Figure>,
}

impl Report {
    pub(crate) fn record(&mut self, bench: &str, value: f64, unit: &'static str) {
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

    /// Records the median and the 99th percentile of `latencies`, in milliseconds.
    pub(crate) fn record_percentiles(&mut self, bench: &str, latencies: &mut [Duration]) {
        latencies.sort();
        let at = |fraction: f64| ms(latencies[((latencies.len() - 1) as f64 * fraction) as usize]);
        self.record(&format!("{bench}_p50"), at(0.50), "ms");
        self.record(&format!("{bench}_p99"), at(0.99), "ms");
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

/// The API served on a free loopback port for a benchmark, until `stop`.
pub(crate) struct Server {
    pub(crate) address: String,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub(crate) async fn start(state: AppState) -> anyhow::Result<Server> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(crate::http::run(
            listener,
            state,
            shutdown.clone().cancelled_owned(),
        ));
        Ok(Server {
            address,
            shutdown,
            task,
        })
    }

    /// In open mode (no tokens), over `store` and `projections`.
    pub(crate) async fn open(store: &Store, projections: &Projections) -> anyhow::Result<Server> {
        Self::start(AppState::new(
            store.clone(),
            projections.clone(),
            crate::access::AccessControl::in_memory(),
        ))
        .await
    }

    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
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
    if wanted("http") {
        let store = Store::open(&base.path().join("http"), StoreOptions::default())?;
        let projections = Projections::open(
            store.clone(),
            &base.path().join("http-projections"),
            crate::wasm::WasmConfig::default(),
        )
        .await?;
        let server = Server::open(&store, &projections).await?;
        bench_http_batched(&server.address, &options, &mut report).await?;
        let groups = GroupStats::of(&server.address).await?;
        bench_http_single(&server.address, &options, &mut report).await?;
        GroupStats::of(&server.address).await?.record_since(
            &groups,
            "http_append_single",
            &mut report,
        );
        server.stop().await?;
        store.close();
    }
    let module_built = options.module.exists();
    if !module_built
        && (wanted("projection") || wanted("rebuild") || wanted("access") || wanted("upcast"))
    {
        eprintln!(
            "skipping the projection benchmarks: {} is missing (cargo build --release --target wasm32-wasip2 -p order-totals)",
            options.module.display()
        );
    }
    if module_built && wanted("projection") {
        projection::run(base.path(), &options, &mut report).await?;
    }
    if module_built && wanted("rebuild") {
        projection::run_rebuild(base.path(), &options, &mut report).await?;
    }
    if module_built && wanted("access") {
        access::run(base.path(), &options, &mut report).await?;
    }
    if module_built && wanted("ts") {
        typescript::run(base.path(), &options, &mut report).await?;
    }
    if module_built && wanted("upcast") {
        upcasters::run(base.path(), &options, &mut report).await?;
    }
    if wanted("replication") {
        replication::run(base.path(), &options, &mut report).await?;
    }
    if wanted("snapshot") {
        snapshots::run(base.path(), &options, &mut report).await?;
    }
    // Needs a PostgreSQL server: only when asked for by name.
    if options.only.iter().any(|w| w == "postgres") {
        postgres::run(base.path(), &options, &mut report).await?;
    }
    // Ten million events take minutes to append: only when asked for by name.
    if module_built && options.only.iter().any(|w| w == "memory") {
        memory::run(base.path(), &options, &mut report).await?;
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
    // Payloads are made before the clock starts: the figure is the store's, not format!'s.
    let payloads: Arc<Vec<Bytes>> = Arc::new((0..4096).map(payload).collect());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for append in 0..appends {
        let permit = gate.clone().acquire_owned().await?;
        let store = store.clone();
        let payloads = payloads.clone();
        let batch = options.batch as u64;
        let stream = format!("bench-{}", append % options.streams);
        tasks.spawn(async move {
            let events = (0..batch)
                .map(|i| NewEvent {
                    id: None,
                    event_type: "OrderPlaced".into(),
                    data: payloads[((append * batch + i) % 4096) as usize].clone(),
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
    report.record_percentiles("store_read_stream_100", &mut latencies);
    Ok(())
}

/// Batched appends over HTTP: JSON bodies of `batch` events, a few clients at once.
async fn bench_http_batched(
    address: &str,
    options: &BenchOptions,
    report: &mut Report,
) -> anyhow::Result<()> {
    let events = options.events.min(1_000_000);
    let rate = http_batched_appends(address, options, events, "http").await?;
    report.record("http_append_batched_durable", rate, "events/s");
    Ok(())
}

/// Appends `events` in batches of `options.batch` from 4 keep-alive connections, to streams
/// `{prefix}-{n}`; returns the rate in events per second.
pub(crate) async fn http_batched_appends(
    address: &str,
    options: &BenchOptions,
    events: u64,
    prefix: &str,
) -> anyhow::Result<f64> {
    const CLIENTS: u64 = 4;
    let bodies: Vec<Bytes> = (0..16u64)
        .map(|variant| {
            let events: Vec<serde_json::Value> = (0..options.batch as u64)
                .map(|i| {
                    serde_json::json!({
                        "type": "OrderPlaced",
                        "data": serde_json::from_slice::<serde_json::Value>(&payload(variant * 1000 + i)).expect("valid JSON"),
                    })
                })
                .collect();
            Bytes::from(serde_json::to_vec(&serde_json::json!({ "events": events })).expect("JSON"))
        })
        .collect();
    let appends = events.div_ceil(options.batch as u64);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..CLIENTS {
        let bodies = bodies.clone();
        let address = address.to_owned();
        let streams = options.streams;
        let prefix = prefix.to_owned();
        tasks.spawn(async move {
            let mut connection = RawConnection::open(&address).await?;
            let mut append = worker;
            while append < appends {
                let path = format!("/streams/{prefix}-{}", append % streams);
                connection
                    .post(&path, &bodies[(append % 16) as usize])
                    .await?;
                append += CLIENTS;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok((appends * options.batch as u64) as f64 / started.elapsed().as_secs_f64())
}

/// Single-event durable appends from 64 concurrent HTTP clients.
async fn bench_http_single(
    address: &str,
    options: &BenchOptions,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (rate, mut latencies) = http_single_appends(address, options.seconds, "single").await?;
    report.record("http_append_single_64_clients_durable", rate, "appends/s");
    report.record_percentiles("http_append_single", &mut latencies);
    Ok(())
}

/// The store's group commit figures at one moment: to say what a benchmark's appends did.
pub(crate) struct GroupStats {
    groups: u64,
    events: f64,
    fsyncs: u64,
    fsync_seconds: f64,
}

impl GroupStats {
    /// Read from the server's `/metrics`, as an operator would.
    pub(crate) async fn of(address: &str) -> anyhow::Result<GroupStats> {
        let text = RawConnection::open(address)
            .await?
            .request("GET", "/metrics", b"")
            .await?;
        let text = String::from_utf8(text)?;
        let value = |name: &str| -> anyhow::Result<f64> {
            text.lines()
                .find_map(|line| {
                    let (metric, value) = line.split_once(' ')?;
                    metric.ends_with(name).then(|| value.parse::<f64>().ok())?
                })
                .with_context(|| format!("/metrics has no {name}"))
        };
        Ok(GroupStats {
            groups: value("store_group_commit_events_count")? as u64,
            events: value("store_group_commit_events_sum")?,
            fsyncs: value("store_fsync_duration_seconds_count")? as u64,
            fsync_seconds: value("store_fsync_duration_seconds_sum")?,
        })
    }

    /// Records the mean events per group and the mean fsync since `before`.
    pub(crate) fn record_since(&self, before: &GroupStats, bench: &str, report: &mut Report) {
        let groups = (self.groups - before.groups).max(1) as f64;
        let fsyncs = (self.fsyncs - before.fsyncs).max(1) as f64;
        report.record(
            &format!("{bench}_events_per_group"),
            (self.events - before.events) / groups,
            "events",
        );
        report.record(
            &format!("{bench}_fsync_mean"),
            (self.fsync_seconds - before.fsync_seconds) * 1000.0 / fsyncs,
            "ms",
        );
    }
}

/// Connections of the closed-loop benchmarks: single-event appends (here and against
/// PostgreSQL) and the HTTP ceiling.
pub(crate) const CLOSED_LOOP_CLIENTS: usize = 64;

/// The median of rounds' figures (the upper one of an even count).
pub(crate) fn median(mut figures: Vec<f64>) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures[figures.len() / 2]
}

/// Waits for a closed loop's clients, each answering its requests' latencies; returns requests
/// per second since `started` and every latency.
pub(crate) async fn gather_latencies(
    mut clients: tokio::task::JoinSet<anyhow::Result<Vec<Duration>>>,
    started: Instant,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let mut latencies = Vec::new();
    while let Some(done) = clients.join_next().await {
        latencies.extend(done??);
    }
    Ok((
        latencies.len() as f64 / started.elapsed().as_secs_f64(),
        latencies,
    ))
}

/// For `seconds`, each of 64 keep-alive connections appends one event at a time to its own
/// stream `{prefix}-{client}`, waiting for each answer; returns appends per second and the
/// latency of each.
pub(crate) async fn http_single_appends(
    address: &str,
    seconds: u64,
    prefix: &str,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let bodies = (0..1024)
        .map(|i| {
            format!(
                r#"{{"events":[{{"type":"Ping","data":{}}}]}}"#,
                std::str::from_utf8(&payload(i)).expect("UTF-8")
            )
            .into_bytes()
        })
        .collect();
    let prefix = prefix.to_owned();
    http_closed_loop(address, seconds, "POST", bodies, move |client| {
        format!("/streams/{prefix}-{client}")
    })
    .await
}

/// For `seconds`, each of 64 keep-alive connections sends `method` to `path(client)` with the
/// next of `bodies`, one request at a time; returns requests per second and the latency of each.
pub(crate) async fn http_closed_loop(
    address: &str,
    seconds: u64,
    method: &'static str,
    bodies: Vec<Vec<u8>>,
    path: impl Fn(usize) -> String,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    // Bodies built before the clock starts: the load generator should cost next to nothing.
    let bodies = Arc::new(bodies);
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..CLOSED_LOOP_CLIENTS {
        let address = address.to_owned();
        let path = path(client);
        let bodies = bodies.clone();
        tasks.spawn(async move {
            let mut connection = RawConnection::open(&address).await?;
            let mut latencies = Vec::new();
            let mut i = client;
            while Instant::now() < until {
                let sent = Instant::now();
                connection
                    .request(method, &path, &bodies[i % bodies.len()])
                    .await?;
                latencies.push(sent.elapsed());
                i += 1;
            }
            anyhow::Ok(latencies)
        });
    }
    gather_latencies(tasks, started).await
}

/// A keep-alive HTTP/1.1 connection that sends pre-built POSTs and reads just enough of each
/// answer. The benchmark's load generator: on two cores, a full client such as reqwest spends
/// more CPU per request than the server does, and the figure would measure the client.
pub(crate) struct RawConnection {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
    line: String,
    /// The request being sent.
    request: Vec<u8>,
    /// Extra header lines sent with every request, each ending in CRLF.
    headers: String,
}

impl RawConnection {
    pub(crate) async fn open(address: &str) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(RawConnection {
            stream: tokio::io::BufReader::new(stream),
            line: String::new(),
            request: Vec::new(),
            headers: String::new(),
        })
    }

    /// Sends these header lines (each ending in CRLF) with every request.
    pub(crate) fn with_headers(mut self, headers: &str) -> Self {
        self.headers = headers.to_owned();
        self
    }

    /// Sends one POST and waits for a 200 answer; returns its body.
    pub(crate) async fn post(&mut self, path: &str, body: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.request("POST", path, body).await
    }

    /// Sends one request and waits for a 200 answer; returns its body.
    pub(crate) async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<Vec<u8>> {
        use std::io::Write;
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        // One write per request, as a real client's: head and body in one segment.
        self.request.clear();
        write!(
            self.request,
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n{}Content-Length: {}\r\n\r\n",
            self.headers,
            body.len()
        )?;
        self.request.extend_from_slice(body);
        self.stream.get_mut().write_all(&self.request).await?;
        let mut status = None;
        let mut content_length = 0;
        loop {
            self.line.clear();
            anyhow::ensure!(
                self.stream.read_line(&mut self.line).await? > 0,
                "the server closed the connection"
            );
            let line = self.line.trim_end();
            if line.is_empty() {
                break;
            }
            if status.is_none() {
                status = line.split(' ').nth(1).map(str::to_owned);
            } else if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse()?;
            }
        }
        let mut answer = vec![0; content_length];
        self.stream.read_exact(&mut answer).await?;
        anyhow::ensure!(
            status.as_deref() == Some("200"),
            "{method} {path} answered {status:?}: {}",
            String::from_utf8_lossy(&answer)
        );
        Ok(answer)
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The process's peak resident set (VmHWM), in KiB.
impl BenchOptions {
    /// The `order-totals` module (`--module`).
    fn order_totals(&self) -> anyhow::Result<Vec<u8>> {
        read_module(
            &self.module,
            "cargo build --release --target wasm32-wasip2 -p order-totals",
        )
    }
}

/// A module's bytes; a missing file's error says how to build it.
fn read_module(path: &std::path::Path, build: &str) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    std::fs::read(path).with_context(|| format!("reading {} (build it: {build})", path.display()))
}

fn peak_rss_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

fn current_rss_kib() -> Option<u64> {
    status_kib("VmRSS:")
}

/// A `/proc/self/status` figure in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
