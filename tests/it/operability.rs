//! What an operator sees: `/metrics` after real work (a projection's lag, faults and rebuild
//! progress; every family read by the official Prometheus client's strict OpenMetrics parser), and
//! `/health/ready` while the server starts, while a required projection is behind, and after.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lantern::store::{ExpectedRevision, NewEvent, Store};
use lantern::wasm::WasmConfig;
use lantern_tests::{TestServer, guest, shared_compile_cache, test_store_options};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{append, get};

/// Every sample of a scrape, by its series (`name{labels}` as exposed), and the whole text.
async fn scrape(url: &str) -> (BTreeMap<String, f64>, String) {
    let response = reqwest::get(format!("{url}/metrics")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let samples = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect();
    (samples, text)
}

fn sample(samples: &BTreeMap<String, f64>, series: &str) -> Option<f64> {
    samples.get(series).copied()
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn deploy_module(url: &str, name: &str, module: Vec<u8>) {
    let response = reqwest::Client::new()
        .put(format!("{url}/projections/{name}"))
        .header("content-type", "application/wasm")
        .body(module)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

async fn status(url: &str, name: &str) -> Value {
    get(url, &format!("/projections/{name}")).await.1
}

/// `events` events of `event_type` with `data`, appended to `stream` in appends of 10,000.
async fn append_many(url: &str, stream: &str, event_type: &str, data: Value, events: usize) {
    for start in (0..events).step_by(10_000) {
        let batch: Vec<Value> = (start..events.min(start + 10_000))
            .map(|_| json!({"type": event_type, "data": data}))
            .collect();
        let (status, body) = append(url, stream, json!({"events": batch})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// Deploys `order-totals` and waits until it has folded `orders` orders of customer `c-1`.
async fn fold_orders(url: &str, orders: usize) {
    deploy_module(url, "order-totals", guest("order_totals")).await;
    let placed = json!({"customer": "c-1", "amount": 5});
    append_many(url, "order-1", "OrderPlaced", placed, orders).await;
    wait_for("the fold", async || {
        status(url, "order-totals").await["lag"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projections_metrics_show_its_lag_its_rebuild_and_its_faults() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    // Slow events spin in the guest: folding these takes a few batches (32,768 events each) and
    // seconds. Deployed after them, the projection starts behind all of them.
    const SLOW: usize = 150_000;
    append_many(url, "hostile-1", "Slow", json!(15_000), SLOW).await;
    deploy_module(url, "slow", guest("hostile")).await;

    // Behind: the lag in events and in seconds is what the log holds beyond its checkpoint.
    let (samples, _) = scrape(url).await;
    let behind = sample(
        &samples,
        r#"lantern_projection_lag_events{projection="slow"}"#,
    )
    .unwrap();
    let head = get(url, "/health").await.1["head"].as_f64().unwrap();
    let position = sample(
        &samples,
        r#"lantern_projection_position{projection="slow"}"#,
    )
    .unwrap();
    assert!(
        behind > 0.0,
        "just appended {SLOW} slow events, lag {behind}"
    );
    assert_eq!(behind, head - position);
    assert!(
        sample(
            &samples,
            r#"lantern_projection_lag_seconds{projection="slow"}"#
        )
        .unwrap()
            > 0.0
    );
    wait_for("the projection to catch up", async || {
        status(url, "slow").await["lag"] == 0
    })
    .await;
    let (samples, _) = scrape(url).await;
    assert_eq!(
        sample(
            &samples,
            r#"lantern_projection_lag_events{projection="slow"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &samples,
            r#"lantern_projection_lag_seconds{projection="slow"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &samples,
            r#"lantern_projection_events_handled_total{projection="slow",role="serving"}"#
        ),
        Some(SLOW as f64)
    );
    let batches = sample(
        &samples,
        r#"lantern_projection_batches_total{projection="slow",role="serving"}"#,
    )
    .unwrap();
    assert!(batches >= 1.0);
    assert_eq!(
        sample(
            &samples,
            r#"lantern_projection_batch_duration_seconds_count{projection="slow",role="serving"}"#
        ),
        Some(batches)
    );
    assert_eq!(
        sample(
            &samples,
            r#"lantern_projection_status{projection="slow",version="1",status="running"}"#
        ),
        Some(1.0)
    );

    // A rebuild: its progress rises through values between 0 and 1, then it is swapped in.
    let response = reqwest::Client::new()
        .post(format!("{url}/projections/slow/rebuild"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (samples, _) = scrape(url).await;
        match sample(
            &samples,
            r#"lantern_projection_rebuild_progress_ratio{projection="slow",version="1"}"#,
        ) {
            Some(progress) => seen.push(progress),
            None if !seen.is_empty() => break,
            None => {}
        }
        assert!(
            Instant::now() < deadline,
            "the rebuild did not end: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let moving: Vec<f64> = seen
        .iter()
        .copied()
        .filter(|p| *p > 0.0 && *p < 1.0)
        .collect();
    assert!(
        moving.windows(2).any(|w| w[1] > w[0]),
        "progress did not move: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[1] >= w[0]),
        "progress went back: {seen:?}"
    );
    let (samples, _) = scrape(url).await;
    assert_eq!(
        sample(
            &samples,
            r#"lantern_projection_events_handled_total{projection="slow",role="rebuild"}"#
        ),
        Some(SLOW as f64)
    );
    assert_eq!(status(url, "slow").await["rebuild"], Value::Null);

    // A fault: counted, and the status flips.
    let (before, _) = scrape(url).await;
    let faults = r#"lantern_projection_faults_total{projection="slow",role="serving"}"#;
    assert_eq!(sample(&before, faults), Some(0.0));
    append(url, "hostile-1", json!({"events": [{"type": "Fail"}]})).await;
    wait_for("the fault", async || {
        status(url, "slow").await["status"] == "faulted"
    })
    .await;
    let (samples, _) = scrape(url).await;
    assert!(
        sample(
            &samples,
            r#"lantern_projection_faults_total{projection="slow",role="serving"}"#
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(
            &samples,
            r#"lantern_projection_status{projection="slow",version="1",status="faulted"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &samples,
            r#"lantern_projection_status{projection="slow",version="1",status="running"}"#
        ),
        Some(0.0)
    );

    // Deleted: its series go with it (labels stay bounded by what is deployed).
    let response = reqwest::Client::new()
        .delete(format!("{url}/projections/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (_, text) = scrape(url).await;
    assert!(!text.contains(r#"projection="slow""#), "{text}");
}

/// The official Prometheus Python client's strict OpenMetrics parser (Debian's
/// python3-prometheus-client) reads the whole exposition of a server that has done every kind of
/// work, and finds the families the operator assets rely on.
#[tokio::test]
async fn the_official_openmetrics_parser_reads_every_family() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    fold_orders(url, 100).await;
    get(url, "/projections/order-totals/state/customer:c-1").await;
    get(url, "/projections/order-totals/query/top?n=1").await;
    get(url, "/nowhere").await;
    let (_, text) = scrape(url).await;
    let parser = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    print(family.name, family.type, len(family.samples))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", parser])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (scripts/test.sh installs python3-prometheus-client)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let families = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "the strict parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    for family in [
        "lantern_projection_position gauge",
        "lantern_projection_lag_events gauge",
        "lantern_projection_lag_seconds gauge",
        "lantern_projection_events_handled counter",
        "lantern_projection_batch_duration_seconds histogram",
        "lantern_projection_read_duration_seconds histogram",
        "lantern_http_request_duration_seconds histogram",
        "lantern_store_fsync_duration_seconds histogram",
        "lantern_store_disk_free_bytes gauge",
        "lantern_wasm_compile_duration_seconds histogram",
    ] {
        assert!(
            families.contains(family),
            "{family} missing from:\n{families}"
        );
    }
    // Route templates, never raw paths, and the unmatched path under one label.
    assert!(text.contains(r#"route="/projections/{name}/state/{*key}",method="GET",status="2xx""#));
    assert!(text.contains(r#"route="unmatched",method="GET",status="4xx""#));
    assert!(!text.contains("customer:c-1") && !text.contains("/nowhere"));
}

/// A required projection keeps the server unready until it runs.
#[tokio::test]
async fn readiness_waits_for_required_projections() {
    let server =
        TestServer::start_custom(shared_compile_cache(WasmConfig::default()), |mut state| {
            state.required_projections = Arc::new(vec!["slow".to_owned()]);
            state
        })
        .await
        .unwrap();
    let url = &server.url;
    let (code, body) = get(url, "/health/ready").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["ready"], false);
    assert_eq!(body["reasons"][0]["code"], "projection_not_ready");
    assert_eq!(body["error"]["code"], "not_ready");
    append_many(url, "hostile-1", "Slow", json!(20_000), 100_000).await;
    deploy_module(url, "slow", guest("hostile")).await;
    let (code, body) = get(url, "/health/ready").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["reasons"][0]["message"]
            .as_str()
            .unwrap()
            .contains("catching up"),
        "{body}"
    );
    wait_for("readiness", async || {
        get(url, "/health/ready").await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(
        get(url, "/health/ready").await.1,
        json!({"ready": true, "reasons": []})
    );
    append(url, "hostile-1", json!({"events": [{"type": "Fail"}]})).await;
    wait_for("unreadiness after the fault", async || {
        get(url, "/health/ready").await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
}

/// While the server recovers a large unindexed tail it is alive (`/health` 200, `degraded`:
/// starting) but not ready, and every other route says it is starting; then it is ready and
/// serves the whole log.
#[tokio::test]
async fn readiness_is_false_while_recovering_and_true_after() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    const EVENTS: usize = 400_000;
    {
        let store = Store::open(&data, test_store_options(false)).unwrap();
        for chunk in 0..EVENTS / 10_000 {
            let events = (0..10_000)
                .map(|i| NewEvent {
                    id: None,
                    event_type: "T".into(),
                    data: Bytes::from(format!("{{\"n\":{}}}", chunk * 10_000 + i)),
                    metadata: None,
                })
                .collect();
            store
                .append(&format!("s-{}", chunk % 7), ExpectedRevision::Any, events)
                .await
                .unwrap();
        }
        store.close();
    }
    // The index is derived: without it, the whole log is the unindexed tail to recover.
    std::fs::remove_file(data.join("index.redb")).unwrap();
    let mut child = Command::new(Path::new(env!("CARGO_BIN_EXE_lantern-under-test")))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env_remove("LANTERN_ADMIN_TOKEN")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = loop {
        let line = lines.next().expect("the server logs its address").unwrap();
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let url = format!("http://{address}");
    let (code, ready) = get(&url, "/health/ready").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["reasons"][0]["code"], "starting");
    let (code, health) = get(&url, "/health").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["problems"][0]["code"], "starting");
    let (code, body) = get(&url, "/all?limit=1").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "starting");
    let recovering = Instant::now();
    wait_for("readiness", async || {
        get(&url, "/health/ready").await.0 == StatusCode::OK
    })
    .await;
    println!("ready {:?} after the first answer", recovering.elapsed());
    let (_, health) = get(&url, "/health").await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["head"], EVENTS);
    let (_, page) = get(&url, &format!("/all?from={EVENTS}")).await;
    assert_eq!(page["events"][0]["data"]["n"], EVENTS - 1);
    let _ = child.kill();
    let _ = child.wait();
}

/// A connection the starting server accepted just before the store finished opening still gets
/// its answer (it used to be closed unanswered when the starting loop ended: CI saw a load
/// balancer's-eye `IncompleteMessage` from `/health/ready` at the switch).
#[tokio::test]
async fn a_connection_accepted_while_starting_is_answered_after_the_switch() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (opened, open) = tokio::sync::oneshot::channel::<()>();
    let starting = tokio::spawn(async move {
        lantern::http::serve_while(
            &listener,
            None,
            Duration::from_secs(10),
            lantern::http::starting_app(false),
            async move { open.await.unwrap() },
        )
        .await;
        listener
    });
    let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
    // Accepted by the starting loop, no request read yet; then the store is open.
    tokio::time::sleep(Duration::from_millis(200)).await;
    opened.send(()).unwrap();
    let _listener = starting.await.unwrap();
    client
        .write_all(b"GET /health/ready HTTP/1.1\r\nhost: lantern\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_string(&mut answer))
        .await
        .expect("the connection is closed after its answer")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("\"starting\""), "{answer:?}");
}

/// A server on a fresh data folder writing its logs in `format`: its URL, the process, and the
/// lines it has written so far.
fn logging_server(
    format: &str,
) -> (
    String,
    std::process::Child,
    Arc<std::sync::Mutex<Vec<String>>>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(Path::new(env!("CARGO_BIN_EXE_lantern-under-test")))
        .args([
            "--log-format",
            format,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(dir.path().join("data"))
        .env_remove("LANTERN_ADMIN_TOKEN")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (address_tx, address_rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let collected = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // The start-up line names the address: `"listen":"..."` or `listen=...`.
            let listen = line
                .split(['"', ' ', '='])
                .skip_while(|word| *word != "listen")
                .find(|word| word.starts_with("127.0.0.1:"));
            if let Some(listen) = listen {
                let _ = address_tx.send(listen.to_owned());
            }
            collected.lock().unwrap().push(line);
        }
    });
    let address = address_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    (format!("http://{address}"), child, lines, dir)
}

/// Deploys the `hostile` guest as `name` with `x-request-id: id`; answers the 201.
async fn deploy_with_id(url: &str, name: &str, id: &str) -> reqwest::Response {
    let response = reqwest::Client::new()
        .put(format!("{url}/projections/{name}"))
        .header("content-type", "application/wasm")
        .header("x-request-id", id)
        .body(guest("hostile"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response
}

/// `--log-format text`: the lines a request causes name it before their spans, as
/// `request{id=...}:`.
#[tokio::test]
async fn text_logs_carry_request_ids() {
    let (url, mut child, lines, _dir) = logging_server("text");
    deploy_with_id(&url, "t", "deploy-7").await;
    // The line is written before the answer; wait for the thread reading stderr to see it.
    wait_for("the deploy's line", async || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains("serving from position 1"))
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.lock().unwrap().clone();
    let deployed = lines
        .iter()
        .find(|line| line.contains("serving from position 1"))
        .unwrap_or_else(|| panic!("the deploy is logged: {lines:#?}"));
    assert!(
        deployed.contains(" INFO request{id=deploy-7}: "),
        "{deployed}"
    );
    // The start-up line belongs to no request.
    let started = lines
        .iter()
        .find(|line| line.contains("lantern is serving"));
    assert!(
        started.is_some_and(|line| !line.contains("request{")),
        "{lines:#?}"
    );
}

/// `--log-format json`: every line is one JSON object; the lines a request causes carry its id
/// (the one answered in `x-request-id`), and a projection's lines its name and version.
#[tokio::test]
async fn json_logs_carry_request_ids_and_projections() {
    let (url, mut child, lines, _dir) = logging_server("json");
    let response = deploy_with_id(&url, "h", "deploy-42").await;
    assert_eq!(response.headers()["x-request-id"], "deploy-42");
    // Without one (or with one that is not a short plain token), the server makes a new one
    // for each request and answers it.
    let mut made = Vec::new();
    for given in [None, None, Some("two words")] {
        let mut request = reqwest::Client::new().get(format!("{url}/health"));
        if let Some(given) = given {
            request = request.header("x-request-id", given);
        }
        let response = request.send().await.unwrap();
        made.push(
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(
        made.iter().all(|id| id.len() > 13 && !id.contains(' ')),
        "{made:?}"
    );
    assert!(made[0] != made[1] && made[1] != made[2], "{made:?}");
    append(&url, "hostile-1", json!({"events": [{"type": "Trap"}]})).await;
    wait_for("the fault", async || {
        status(&url, "h").await["status"] == "faulted"
    })
    .await;
    wait_for("the fault's line", async || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains("\"level\":\"ERROR\"") && line.contains("faulted"))
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.lock().unwrap().clone();
    let objects: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let in_request = |object: &Value, id: &str| {
        object["spans"].as_array().is_some_and(|spans| {
            spans
                .iter()
                .any(|s| s["name"] == "request" && s["id"] == id)
        })
    };
    let deployed = objects
        .iter()
        .find(|o| o["message"] == "serving from position 1")
        .expect("the deploy is logged");
    assert!(in_request(deployed, "deploy-42"), "{deployed}");
    let fault = objects
        .iter()
        .find(|o| o["level"] == "ERROR" && o["message"].as_str().unwrap_or("").contains("faulted"))
        .expect("the fault is logged");
    let in_projection = fault["spans"].as_array().is_some_and(|spans| {
        spans
            .iter()
            .any(|s| s["name"] == "projection" && s["projection"] == "h" && s["version"] == 1)
    });
    assert!(in_projection, "{fault}");
    // The runner's lines are its own, not the deploying request's.
    assert!(!in_request(fault, "deploy-42"), "{fault}");
}

/// Every `lantern_...` metric name in `text`, without the suffixes a family's samples add.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("lantern_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let mut name = &tail[..end];
        for suffix in ["_bucket", "_count", "_sum", "_total", "_created"] {
            name = name.strip_suffix(suffix).unwrap_or(name);
        }
        names.insert(name.to_owned());
        rest = &tail[end..];
    }
    names
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{said}");
    said
}

/// The operator assets under `deploy/`: the alerting rules pass `promtool check rules` and their
/// unit tests, the dashboard's queries are valid PromQL, every metric either names is one a real
/// server exports, and the systemd unit passes `systemd-analyze verify`.
#[tokio::test]
async fn the_shipped_rules_dashboard_and_unit_fit_the_server() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let rules_dir = deploy.join("prometheus");
    run(Command::new("promtool")
        .args(["check", "rules", "lantern-alerts.yml"])
        .current_dir(&rules_dir));
    run(Command::new("promtool")
        .args(["test", "rules", "lantern-alerts.test.yml"])
        .current_dir(&rules_dir));

    // The dashboard's queries, as recording rules, so promtool parses each one.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy.join("grafana/lantern-dashboard.json")).unwrap(),
    )
    .unwrap();
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let dir = tempfile::tempdir().unwrap();
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, query)| {
            let query = query
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*");
            json!({"record": format!("dashboard:query_{i}"), "expr": query})
        })
        .collect();
    let file = dir.path().join("dashboard-queries.yml");
    // JSON is YAML.
    std::fs::write(
        &file,
        json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string(),
    )
    .unwrap();
    run(Command::new("promtool").args(["check", "rules"]).arg(&file));

    // A real server that has done some of everything.
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    fold_orders(url, 10).await;
    get(url, "/projections/order-totals/state/customer:c-1").await;
    deploy_module(url, "h", guest("hostile")).await;
    append(url, "hostile-1", json!({"events": [{"type": "Fail"}]})).await;
    wait_for("the fault", async || {
        status(url, "h").await["status"] == "faulted"
    })
    .await;
    let (_, text) = scrape(url).await;
    let exported: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let rules_text = std::fs::read_to_string(rules_dir.join("lantern-alerts.yml")).unwrap();
    let named = metric_names(&rules_text)
        .into_iter()
        .chain(queries.iter().flat_map(|q| metric_names(q)));
    for name in named {
        assert!(
            exported.contains(&name),
            "{name} is not exported; exported: {exported:?}"
        );
    }

    // The systemd unit, with its binary where this build put it.
    let unit = std::fs::read_to_string(deploy.join("systemd/lantern.service"))
        .unwrap()
        .replace(
            "/usr/local/bin/lantern",
            env!("CARGO_BIN_EXE_lantern-under-test"),
        );
    let unit_file = dir.path().join("lantern.service");
    std::fs::write(&unit_file, unit).unwrap();
    let said = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_file));
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify complains:\n{said}"
    );
}
