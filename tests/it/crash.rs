//! Crashes: a real server SIGKILLed under load, and torn log tails cut at every byte.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use lantern::store::{ExpectedRevision, Filter, NewEvent, Store};
use lantern_tests::{ServerProcess, test_store_options};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{append, get};

fn server_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lantern-under-test"))
}

/// An acknowledged append: its first position and the data of its events.
type Acknowledged = (u64, Vec<Value>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_concurrent_appends_loses_nothing_acknowledged() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(server_binary(), data.path()).unwrap();
    let acknowledged: Arc<Mutex<Vec<Acknowledged>>> = Arc::default();
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let url = server.url.clone();
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                for seq in 0u64.. {
                    let size = 1 + (seq as usize + writer) % 4;
                    let events: Vec<Value> = (0..size)
                        .map(|part| json!({"writer": writer, "seq": seq, "part": part, "of": size}))
                        .collect();
                    let body = json!({"events": events.iter().map(|d| json!({"type": "Crash", "data": d})).collect::<Vec<_>>()});
                    let response = reqwest::Client::new()
                        .post(format!("{url}/streams/crash-{}", writer % 3))
                        .json(&body)
                        .send()
                        .await;
                    let Ok(response) = response else { return };
                    if response.status() != StatusCode::OK {
                        return;
                    }
                    let Ok(answer) = response.json::<Value>().await else { return };
                    let first = answer["first_position"].as_u64().unwrap();
                    acknowledged.lock().unwrap().push((first, events));
                }
            })
        })
        .collect();
    // Kill it mid-load once enough appends are acknowledged (not after a fixed time: on a slow
    // disk, with other tests running, 1.5 s once gave only 44).
    let started = std::time::Instant::now();
    while acknowledged.lock().unwrap().len() <= 100 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill().unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    assert!(
        acknowledged.len() > 100,
        "the load ran: {} appends",
        acknowledged.len()
    );

    let server = ServerProcess::start(server_binary(), data.path()).unwrap();
    let url = server.url.clone();
    // Every acknowledged event is there, at its position, with its data.
    for (first, events) in &acknowledged {
        let (status, page) = get(&url, &format!("/all?from={first}&limit={}", events.len())).await;
        assert_eq!(status, StatusCode::OK);
        let found: Vec<&Value> = page["events"].as_array().unwrap().iter().collect();
        assert_eq!(found.len(), events.len(), "append at {first}");
        for (i, (event, data)) in found.iter().zip(events).enumerate() {
            assert_eq!(event["position"], json!(first + i as u64));
            assert_eq!(&event["data"], data);
        }
    }
    // No partial append is visible: every append is whole and contiguous, positions have no gaps.
    let mut from = 1;
    let mut expected_position = 1;
    let mut appends: BTreeMap<(u64, u64), Vec<u64>> = BTreeMap::new();
    loop {
        let (_, page) = get(&url, &format!("/all?from={from}&limit=10000")).await;
        for event in page["events"].as_array().unwrap() {
            let position = event["position"].as_u64().unwrap();
            assert_eq!(position, expected_position);
            expected_position += 1;
            let data = &event["data"];
            let key = (
                data["writer"].as_u64().unwrap(),
                data["seq"].as_u64().unwrap(),
            );
            appends.entry(key).or_default().push(position);
            assert_eq!(
                data["part"].as_u64().unwrap() as usize,
                appends[&key].len() - 1
            );
        }
        match page["next"].as_u64() {
            Some(next) => from = next,
            None => break,
        }
    }
    assert!(appends.len() >= acknowledged.len());
    let (_, page) = get(&url, "/all?limit=1").await;
    let head = page["head"].as_u64().unwrap();
    assert_eq!(head, expected_position - 1);
    // The restarted server appends after the recovered head.
    let (status, answer) = append(
        &url,
        "crash-after",
        json!({"events": [{"type": "After", "data": 1}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["first_position"], head + 1);
    let status = server.terminate().unwrap();
    assert!(status.success(), "SIGTERM shuts down cleanly: {status}");
}

fn events(prefix: &str, count: usize) -> Vec<NewEvent> {
    (0..count)
        .map(|i| NewEvent {
            id: None,
            event_type: format!("{prefix}Happened"),
            data: Bytes::from(format!(
                "{{\"{prefix}\":{i},\"pad\":\"{}\"}}",
                "p".repeat(40)
            )),
            metadata: (i % 2 == 0).then(|| Bytes::from_static(b"{\"m\":1}")),
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The log after a crash in the middle of writing a 4-event append, cut at every byte: recovery
/// keeps exactly the earlier append, never part of the torn one, and appends carry on.
#[tokio::test]
async fn a_torn_append_is_cut_at_every_byte() {
    let work = tempfile::tempdir().unwrap();
    let durable = work.path().join("durable");
    let store = Store::open(&durable, test_store_options(true)).unwrap();
    store
        .append("torn-1", ExpectedRevision::Any, events("a", 3))
        .await
        .unwrap();
    store.close();
    drop(store);
    // The state a crash leaves: the index and log as of the first append...
    let after_first = work.path().join("after-first");
    copy_dir(&durable, &after_first);
    let first_len = std::fs::metadata(after_first.join("events.log"))
        .unwrap()
        .len();
    // ...and the bytes of a second append, of which any prefix may have reached the disk.
    let store = Store::open(&durable, test_store_options(true)).unwrap();
    store
        .append("torn-2", ExpectedRevision::Any, events("b", 4))
        .await
        .unwrap();
    store.close();
    drop(store);
    let full_log = std::fs::read(durable.join("events.log")).unwrap();
    assert!(full_log.len() as u64 > first_len + 100);

    for cut in first_len..=full_log.len() as u64 {
        let dir = work.path().join(format!("cut-{cut}"));
        copy_dir(&after_first, &dir);
        std::fs::write(dir.join("events.log"), &full_log[..cut as usize]).unwrap();
        let store = Store::open(&dir, test_store_options(true)).unwrap();
        let whole = cut == full_log.len() as u64;
        let head = if whole { 7 } else { 3 };
        assert_eq!(
            store.head(),
            head,
            "cut at {cut} (first append ends at {first_len})"
        );
        let all = store.read_all(1, 100, &Filter::default()).unwrap();
        assert_eq!(all.events.len() as u64, head, "cut at {cut}");
        if !whole {
            assert_eq!(
                std::fs::metadata(dir.join("events.log")).unwrap().len(),
                first_len,
                "the torn tail is cut off"
            );
            // The log carries on where the cut left it.
            let outcome = store
                .append("torn-2", ExpectedRevision::NoStream, events("c", 1))
                .await
                .unwrap();
            assert_eq!(outcome.first_position, 4);
        }
        store.close();
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A flipped bit or garbage after the last append is never served; a lost index is rebuilt
/// from the log.
#[tokio::test]
async fn corrupt_tails_are_cut_and_a_lost_index_is_rebuilt() {
    let work = tempfile::tempdir().unwrap();
    let base = work.path().join("base");
    let store = Store::open(&base, test_store_options(true)).unwrap();
    for round in 0..5 {
        store
            .append(
                &format!("flip-{round}"),
                ExpectedRevision::Any,
                events("x", 40),
            )
            .await
            .unwrap();
    }
    store.close();
    drop(store);
    let log = std::fs::read(base.join("events.log")).unwrap();

    // Garbage appended after the last record.
    let garbage = work.path().join("garbage");
    copy_dir(&base, &garbage);
    let mut bytes = log.clone();
    bytes.extend_from_slice(&[0xAB; 300]);
    std::fs::write(garbage.join("events.log"), &bytes).unwrap();
    let store = Store::open(&garbage, test_store_options(true)).unwrap();
    assert_eq!(store.head(), 200);
    store.close();
    drop(store);
    assert_eq!(
        std::fs::metadata(garbage.join("events.log")).unwrap().len(),
        log.len() as u64
    );

    // No index at all: everything is rebuilt from the log, reads are complete.
    let rebuilt = work.path().join("rebuilt");
    copy_dir(&base, &rebuilt);
    std::fs::remove_file(rebuilt.join("index.redb")).unwrap();
    let store = Store::open(&rebuilt, test_store_options(true)).unwrap();
    assert_eq!(store.head(), 200);
    let stream = store
        .read_stream("flip-3", None, lantern::store::Direction::Backward, 1000)
        .unwrap();
    assert_eq!(stream.events.len(), 40);
    assert_eq!(stream.events[0].revision, 39);
    assert_eq!(stream.events[0].position, 160);
    store.close();
    drop(store);

    // A flipped bit inside the last append (no index): the store keeps the appends before it.
    let flipped = work.path().join("flipped");
    copy_dir(&rebuilt, &flipped);
    std::fs::remove_file(flipped.join("index.redb")).unwrap();
    let mut bytes = log.clone();
    let at = bytes.len() - 500;
    bytes[at] ^= 0x04;
    std::fs::write(flipped.join("events.log"), &bytes).unwrap();
    let store = Store::open(&flipped, test_store_options(true)).unwrap();
    assert_eq!(store.head(), 160, "the damaged append is dropped whole");
    assert!(
        store
            .read_stream("flip-4", None, lantern::store::Direction::Forward, 10)
            .is_err()
    );
    store.close();
}

/// One flipped byte in the middle of the log, with acknowledged appends after it: the store must
/// not start (and must not cut them), and it names where the damage is. Damage in the last group
/// only is what a crash leaves, and is cut.
#[tokio::test]
async fn corruption_before_acknowledged_appends_stops_the_start_and_changes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let base = work.path().join("base");
    let store = Store::open(&base, test_store_options(true)).unwrap();
    for round in 0..200 {
        store
            .append(
                &format!("mid-{round}"),
                ExpectedRevision::Any,
                events("m", 5),
            )
            .await
            .unwrap();
    }
    store.close();
    drop(store);
    // As after a SIGKILL with the tail not yet indexed: recovery scans the whole log.
    std::fs::remove_file(base.join("index.redb")).unwrap();
    let mut log = std::fs::read(base.join("events.log")).unwrap();
    let at = log.len() / 3;
    log[at] ^= 0x10;
    std::fs::write(base.join("events.log"), &log).unwrap();

    let error = match Store::open(&base, test_store_options(true)) {
        Ok(store) => panic!("the store started with head {}", store.head()),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("events.log is damaged at byte"), "{error}");
    assert!(error.contains("lantern repair"), "{error}");
    // The position named is the damaged record's: 5 events per append, ~1/3 of the way.
    let named: u64 = error
        .split("where position ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the error names a position");
    assert!((300..=370).contains(&named), "{error}");
    assert_eq!(
        std::fs::read(base.join("events.log")).unwrap(),
        log,
        "nothing is cut or rewritten"
    );

    // The same damage in the last group alone is a torn write: cut, the rest kept.
    let last = work.path().join("last");
    let store = Store::open(&last, test_store_options(true)).unwrap();
    store
        .append("torn-a", ExpectedRevision::Any, events("a", 5))
        .await
        .unwrap();
    store
        .append("torn-b", ExpectedRevision::Any, events("b", 20))
        .await
        .unwrap();
    store.close();
    drop(store);
    std::fs::remove_file(last.join("index.redb")).unwrap();
    let mut log = std::fs::read(last.join("events.log")).unwrap();
    // Zero a stretch in the middle of the second append, as an unwritten page would be.
    let middle = log.len() - log.len() / 4;
    log[middle..middle + 64].fill(0);
    std::fs::write(last.join("events.log"), &log).unwrap();
    let store = Store::open(&last, test_store_options(true)).unwrap();
    assert_eq!(store.head(), 5, "the torn last group is cut whole");
    store.close();
}

/// The fold `order-totals` must equal: per customer, orders and total from the log.
async fn fold_order_totals(url: &str) -> BTreeMap<String, Value> {
    let mut totals: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut from = 1;
    loop {
        let (_, page) = get(url, &format!("/all?from={from}&category=order&limit=10000")).await;
        for event in page["events"].as_array().unwrap() {
            let sign = match event["type"].as_str().unwrap() {
                "OrderPlaced" => 1,
                "OrderCancelled" => -1,
                _ => continue,
            };
            let customer = event["data"]["customer"].as_str().unwrap().to_owned();
            let amount = event["data"]["amount"].as_i64().unwrap();
            let entry = totals.entry(format!("customer:{customer}")).or_default();
            entry.0 += sign;
            entry.1 += sign * amount;
        }
        match page["next"].as_u64() {
            Some(next) => from = next,
            None => break,
        }
    }
    totals
        .into_iter()
        .map(|(key, (orders, total))| (key, json!({"orders": orders, "total": total})))
        .collect()
}

fn order_batch(seed: u64, count: u64) -> Value {
    let events: Vec<Value> = (0..count)
        .map(|i| {
            let n = seed * 1000 + i;
            let event_type = if n.is_multiple_of(7) { "OrderCancelled" } else { "OrderPlaced" };
            json!({"type": event_type, "data": {"customer": format!("c-{}", n % 97), "amount": n % 1000}})
        })
        .collect();
    json!({ "events": events })
}

/// SIGKILL while a projection catches up and live appends run: after a restart the read model
/// equals the fold of the log (nothing applied twice, nothing skipped), and the projection
/// resumed from its checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_a_projection_catches_up_keeps_its_read_model_exact() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(server_binary(), data.path()).unwrap();
    let url = server.url.clone();
    for seed in 0..40 {
        let (status, _) = append(&url, &format!("order-{seed}"), order_batch(seed, 1000)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let response = reqwest::Client::new()
        .put(format!("{url}/projections/order-totals"))
        .body(lantern_tests::guest("order_totals"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let writers: Vec<_> = (0..3u64)
        .map(|writer| {
            let url = url.clone();
            tokio::spawn(async move {
                for seed in 0.. {
                    let body = order_batch(100 + writer * 1000 + seed, 1 + seed % 5);
                    let sent = reqwest::Client::new()
                        .post(format!("{url}/streams/order-live{writer}"))
                        .json(&body)
                        .send()
                        .await;
                    if sent.is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    // Let it get part of the way.
    for _ in 0..100 {
        let (_, status) = get(&url, "/projections/order-totals").await;
        if status["position"].as_u64().unwrap_or(0) > 5000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, before) = get(&url, "/projections/order-totals").await;
    eprintln!(
        "killed at projection position {} of head {}",
        before["position"], before["head"]
    );
    server.kill().unwrap();
    for writer in writers {
        writer.await.unwrap();
    }

    let server = ServerProcess::start(server_binary(), data.path()).unwrap();
    let url = server.url.clone();
    let (_, after_restart) = get(&url, "/projections/order-totals").await;
    // Resumed from a checkpoint, not from the start (at most the last second of progress is
    // redone: read-model commits are made durable once a second).
    assert_eq!(after_restart["version"], 1);
    let (_, health) = get(&url, "/health").await;
    let head = health["head"].as_u64().unwrap();
    for _ in 0..1200 {
        let (_, status) = get(&url, "/projections/order-totals").await;
        if status["position"].as_u64() == Some(head) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, status) = get(&url, "/projections/order-totals").await;
    assert_eq!(
        status["position"], head,
        "caught up after the restart: {status}"
    );
    assert_eq!(
        status["status"], "running",
        "{status} (before the kill: {before})"
    );
    let expected = fold_order_totals(&url).await;
    let actual = read_model(&url).await;
    assert_eq!(actual.len(), 97);
    assert_eq!(actual, expected);
}

/// Reads every `customer:` key of `order-totals`.
async fn read_model(url: &str) -> BTreeMap<String, Value> {
    let mut actual = BTreeMap::new();
    let mut after = String::new();
    loop {
        let (_, page) = get(
            url,
            &format!("/projections/order-totals/state?prefix=customer:&after={after}&limit=1000"),
        )
        .await;
        for item in page["items"].as_array().unwrap() {
            actual.insert(
                item["key"].as_str().unwrap().to_owned(),
                item["value"].clone(),
            );
        }
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => return actual,
        }
    }
}

/// SIGKILL during a rebuild: after the restart the current version serves at once, the rebuild
/// resumes from its own checkpoint, and the new version takes over with an exact read model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_rebuild_resumes_it() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(server_binary(), data.path()).unwrap();
    let url = server.url.clone();
    // Enough history that the rebuild runs for a while (a read model's commits are made durable
    // every 65,536 positions, or once a second).
    for seed in 0..800 {
        append(&url, &format!("order-{seed}"), order_batch(seed, 1000)).await;
    }
    let module = lantern_tests::guest("order_totals");
    let put = |body: Vec<u8>| {
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .put(format!("{url}/projections/order-totals"))
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(put(module.clone()).await, StatusCode::CREATED);
    let status = wait_for(&url, |s| s["status"] == "running").await;
    let served_before = status["position"].as_u64().unwrap();
    assert_eq!(
        put(lantern_tests::variant(&module, "v2")).await,
        StatusCode::ACCEPTED
    );
    // Partway through, and past a durable commit at or after 131,072. A commit is made durable
    // (when 65,536 positions are due) after it is visible, but before the next one is made, and a
    // batch is at most 131,072 events: so with a checkpoint past 330,000 visible, the one before
    // it is past 198,928, and a durable one is less than 65,536 behind that.
    let before = wait_for(&url, |s| {
        s["rebuild"].is_null() || s["rebuild"]["position"].as_u64().unwrap_or(0) > 330_000
    })
    .await;
    eprintln!(
        "killed with the rebuild at {} of {}",
        before["rebuild"]["position"], before["head"]
    );
    assert!(
        before["rebuild"].is_object(),
        "still rebuilding when killed: {before}"
    );
    server.kill().unwrap();

    let server = ServerProcess::start(server_binary(), data.path()).unwrap();
    let url = server.url.clone();
    let (_, after) = get(&url, "/projections/order-totals").await;
    // The current version serves at once, from where it was.
    assert_eq!(after["version"], 1, "{after}");
    assert!(after["position"].as_u64().unwrap() >= served_before);
    let (code, _) = get(&url, "/projections/order-totals/state/customer:c-1").await;
    assert_eq!(code, StatusCode::OK);
    // The rebuild resumed from its checkpoint, not from the start.
    assert_eq!(after["rebuild"]["version"], 2, "{after}");
    assert!(
        after["rebuild"]["position"].as_u64().unwrap() >= 131_072,
        "{after}"
    );
    let done = wait_for(&url, |s| s["version"] == 2 && s["rebuild"].is_null()).await;
    assert_eq!(done["status"], "running");
    assert_eq!(read_model(&url).await, fold_order_totals(&url).await);
}

/// Polls the status of `order-totals` until `done`.
async fn wait_for(url: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..3000 {
        let (_, status) = get(url, "/projections/order-totals").await;
        if done(&status) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("order-totals never reached the expected status");
}

/// A new file is durable only once its folder entry is: the log's folder is fsync'd after the log
/// is created, before any append in it is acknowledged. Observed with strace (CI installs it), as
/// only a power cut would show it otherwise; the store is created and used by `lantern bench`.
#[test]
fn the_log_folder_is_fsynced_after_the_log_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.txt");
    let status = std::process::Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=openat,fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(server_binary())
        .args(["bench", "--only", "store", "--events", "2000", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("strace runs (apt-get install strace)");
    assert!(status.success());
    let trace = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = trace.lines().collect();
    let created = lines
        .iter()
        .position(|l| l.contains("events.log\"") && l.contains("O_CREAT"))
        .expect("the log is created");
    let log_path = lines[created].split('"').nth(1).unwrap();
    let folder = Path::new(log_path).parent().unwrap().to_str().unwrap();
    let quoted = format!("\"{folder}\"");
    let fd_of = |line: &str| line.rsplit("= ").next().unwrap().trim().to_owned();
    let first_append_sync = lines[created..]
        .iter()
        .position(|l| l.contains("fdatasync("))
        .map(|i| created + i)
        .expect("appends are fsync'd");
    let folder_synced = lines[created..first_append_sync]
        .iter()
        .filter(|l| l.contains("openat(") && l.contains(&quoted))
        .any(|open| {
            let fd = fd_of(open);
            lines[created..first_append_sync]
                .iter()
                .any(|l| l.contains(&format!("fsync({fd})")))
        });
    assert!(
        folder_synced,
        "{folder} is fsync'd after {log_path} is created and before the first append's fsync"
    );
}
