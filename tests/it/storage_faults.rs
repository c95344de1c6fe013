//! Storage faults on a real small filesystem: a full disk refuses appends with 507 `storage_full`
//! and loses nothing acknowledged; reads go on; `/health` says degraded; appends resume when space
//! returns. (Mounting a tmpfs needs root, which CI has.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use lantern::access::AccessControl;
use lantern::http::{AppState, app};
use lantern::projection::Projections;
use lantern::store::{Filter, Store, StoreOptions};
use lantern::wasm::WasmConfig;
use lantern_tests::shared_compile_cache;
use serde_json::{Value, json};
use tower::ServiceExt;

/// A tmpfs of `size` mounted on a fresh folder, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed: this test needs root (as in CI)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: files still open (a failed test's tasks) must not leave the mount behind.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A durable store in `store_dir` (projections in `other`) and the API over it, without a socket.
async fn serve(store_dir: &Path, other: &Path) -> (Store, Projections, axum::Router) {
    let store = Store::open(store_dir, StoreOptions::default()).unwrap();
    let projections = Projections::open(
        store.clone(),
        &other.join("projections"),
        shared_compile_cache(WasmConfig::default()),
    )
    .await
    .unwrap();
    let router = app(AppState::new(
        store.clone(),
        projections.clone(),
        AccessControl::in_memory(),
    ));
    (store, projections, router)
}

async fn call(router: &axum::Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

fn append_request(stream: &str, batch: u64) -> Request<Body> {
    let events: Vec<Value> = (0..10)
        .map(|i| {
            json!({
                "type": "Filled",
                "data": {"batch": batch, "i": i, "pad": "x".repeat(4000)},
            })
        })
        .collect();
    Request::post(format!("/streams/{stream}"))
        .header("content-type", "application/json")
        .body(Body::from(json!({ "events": events }).to_string()))
        .unwrap()
}

#[tokio::test]
async fn a_full_disk_refuses_appends_loses_nothing_and_recovers_when_space_returns() {
    let disk = SmallDisk::mount("8m");
    let ballast: PathBuf = disk.path().join("ballast");
    std::fs::write(&ballast, vec![7u8; 2 << 20]).unwrap();
    let store_dir = disk.path().join("store");
    let other = tempfile::tempdir().unwrap();
    let (store, projections, router) = serve(&store_dir, other.path()).await;

    // Fill the disk: every answered append is remembered; the first refusal must be storage_full.
    let mut acknowledged: Vec<(u64, u64)> = Vec::new(); // (batch, first position)
    let mut refusal = None;
    for batch in 0..10_000u64 {
        let (status, body) = call(&router, append_request("fill-1", batch)).await;
        if status == StatusCode::OK {
            acknowledged.push((batch, body["first_position"].as_u64().unwrap()));
        } else {
            refusal = Some((status, body));
            break;
        }
    }
    let (status, body) = refusal.expect("an 8 MiB disk fills up");
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["error"]["code"], "storage_full");
    assert!(
        acknowledged.len() > 50,
        "{} appends fit",
        acknowledged.len()
    );
    let head = acknowledged.len() as u64 * 10;
    assert_eq!(store.head(), head, "the refused append left no trace");

    // Still full: refused again, fast; reads go on; health says why.
    let (status, body) = call(&router, append_request("fill-2", 0)).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    let (status, health) = call(
        &router,
        Request::get("/health").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["problems"][0]["code"], "storage_full");
    let (status, page) = call(
        &router,
        Request::get("/streams/fill-1?limit=20")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["events"][19]["data"]["batch"], 1);

    // Space returns: appends resume by themselves, health is ok again.
    std::fs::remove_file(&ballast).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = call(&router, append_request("fill-2", 1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["first_position"], head + 1);
    let (_, health) = call(
        &router,
        Request::get("/health").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(health["status"], "ok", "{health}");

    // After a restart every acknowledged event is there, in place, with its data.
    projections.shutdown().await;
    drop(projections);
    drop(router);
    store.close();
    drop(store);
    let store = Store::open(&store_dir, StoreOptions::default()).unwrap();
    assert_eq!(store.head(), head + 10);
    let mut from = 1;
    let mut seen = 0u64;
    loop {
        let slice = store.read_all(from, 1000, &Filter::default()).unwrap();
        if slice.events.is_empty() {
            break;
        }
        for event in &slice.events {
            let data: Value = serde_json::from_slice(&event.data).unwrap();
            let index = (event.position - 1) / 10;
            if (index as usize) < acknowledged.len() {
                let (batch, first) = acknowledged[index as usize];
                assert_eq!(data["batch"], batch, "position {}", event.position);
                assert_eq!(
                    data["i"],
                    event.position - first,
                    "position {}",
                    event.position
                );
                assert_eq!(event.stream, "fill-1");
            } else {
                assert_eq!(event.stream, "fill-2");
                assert_eq!(data["batch"], 1);
            }
            seen += 1;
        }
        from = slice.next_from;
    }
    assert_eq!(seen, head + 10);
    store.close();
}

/// A read model whose disk fills up: the projection faults with a storage error that blames no
/// event, retries with backoff, and once space returns it catches up to exactly the fold.
#[tokio::test]
async fn a_full_read_model_disk_is_a_storage_fault_that_heals() {
    use lantern::projection::{FaultCause, Phase};
    use lantern::store::{ExpectedRevision, NewEvent};

    let disk = SmallDisk::mount("64m");
    let other = tempfile::tempdir().unwrap();
    let (store, projections) = with_totals(other.path(), &disk.path().join("projections")).await;
    // Leave a quarter of a MiB free.
    let ballast = disk.path().join("ballast");
    let free = free_bytes(disk.path());
    std::fs::write(&ballast, vec![1u8; (free - (256 << 10)) as usize]).unwrap();
    // 150,000 customers, one order each: a read model far larger than the space left, built in
    // enough batches that a durable commit of a batch (not only the idle flush) meets the full disk.
    let customers = 150_000u64;
    for chunk in 0..(customers / 1000) {
        let events: Vec<NewEvent> = (0..1000)
            .map(|i| NewEvent {
                id: None,
                event_type: "OrderPlaced".into(),
                data: format!(
                    r#"{{"customer":"c-{}","amount":{}}}"#,
                    chunk * 1000 + i,
                    i % 50 + 1
                )
                .into(),
                metadata: None,
            })
            .collect();
        store
            .append(&format!("order-{chunk}"), ExpectedRevision::Any, events)
            .await
            .unwrap();
    }
    let status = wait_until(&projections, |s| s.state.phase == Phase::Faulted).await;
    let fault = status.state.fault.expect("a fault");
    assert_eq!(fault.cause, FaultCause::Storage, "{fault:?}");
    assert!(fault.message.contains("No space left"), "{fault:?}");
    // Where it stopped, not an event found guilty: at most the log's end (after the reopen the
    // read model may be back at its last durable commit, below the batch that failed).
    assert!((1..=customers + 1).contains(&fault.position), "{fault:?}");
    // The store and the other reads go on.
    assert_eq!(store.head(), customers);

    std::fs::remove_file(&ballast).unwrap();
    let status = wait_until(&projections, |s| {
        s.state.phase == Phase::Running && s.position == customers
    })
    .await;
    assert!(status.state.fault.is_none());
    // The read model is exactly the fold: every customer once, with its amount.
    let mut after = String::new();
    let mut seen = 0u64;
    loop {
        let page = projections
            .page("totals", "customer:", &after, 10_000, None)
            .await
            .unwrap();
        for (key, value) in &page.items {
            let number: u64 = key.trim_start_matches("customer:c-").parse().unwrap();
            let value: Value = serde_json::from_slice(value).unwrap();
            assert_eq!(value["orders"], 1, "{key}");
            assert_eq!(value["total"], number % 1000 % 50 + 1, "{key}");
            seen += 1;
        }
        match page.next {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen, customers);
    projections.shutdown().await;
}

/// A store in `dir` (without fsync) and projections in `projections` with `order_totals`
/// deployed as `totals`.
/// Catching up, a batch is handled while the last batch's commit still runs, and reads that
/// batch's writes through its snapshot. With every commit slowed down (a fail point), the read
/// model is still exactly the fold of the log: no batch read a state without the one before it.
#[tokio::test]
async fn a_batch_reads_the_writes_of_the_one_still_being_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &dir.path().join("store"),
        lantern_tests::test_store_options(false),
    )
    .unwrap();
    // 100,000 orders: three batches (32k, 32k, the rest), each touching every customer.
    place_orders_in(&store, 0, 100_000, 1000).await;
    fail::cfg("readmodel-commit", "sleep(300)").unwrap();
    let projections = totals_over(
        &store,
        &dir.path().join("failpoint-slow-commit-projections"),
    )
    .await;
    wait_until(&projections, |s| s.position == 100_000).await;
    fail::remove("readmodel-commit");
    assert_totals_are_the_fold_of(&projections, 100_000).await;
}

/// Catching up, a batch's commit runs on the thread that reads the batch after next, while the
/// next is handled. When it fails, the projection faults with a storage error at that batch (no
/// event blamed), keeps none of what came after it, tries again and ends as exactly the fold of
/// the log.
#[tokio::test]
async fn a_commit_that_fails_behind_the_guest_faults_the_projection_and_it_heals() {
    use lantern::projection::{FaultCause, Phase};

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &dir.path().join("store"),
        lantern_tests::test_store_options(false),
    )
    .unwrap();
    // 300,000 orders: a first batch of 32k, then larger ones; the first commit is behind.
    place_orders_in(&store, 0, 300_000, 1000).await;
    fail::cfg("readmodel-commit-fails", "1*return").unwrap();
    let projections = totals_over(
        &store,
        &dir.path().join("failpoint-failing-commit-projections"),
    )
    .await;
    let faulted = wait_until(&projections, |s| s.state.fault.is_some()).await;
    let fault = faulted.state.fault.expect("a fault");
    assert_eq!(
        (fault.cause, fault.position),
        (FaultCause::Storage, 1),
        "{fault:?}"
    );
    assert!(fault.message.contains("os error 5"), "{fault:?}");
    let status = wait_until(&projections, |s| {
        s.state.phase == Phase::Running && s.position == 300_000
    })
    .await;
    fail::remove("readmodel-commit-fails");
    assert!(status.state.fault.is_none());
    assert_totals_are_the_fold_of(&projections, 300_000).await;
    projections.shutdown().await;
}

/// Each customer's totals are those of the first `orders` orders `place_orders` placed.
async fn assert_totals_are_the_fold_of(projections: &Projections, orders: u64) {
    for customer in 0..100u64 {
        let (value, _) = projections
            .get("totals", &format!("customer:c-{customer}"), None)
            .await
            .unwrap();
        let value: Value = serde_json::from_slice(&value).unwrap();
        let amounts: Vec<u64> = (0..orders)
            .filter(|i| i % 100 == customer)
            .map(|i| i % 7 + 1)
            .collect();
        assert_eq!(value["orders"], amounts.len() as u64, "c-{customer}");
        assert_eq!(value["total"], amounts.iter().sum::<u64>(), "c-{customer}");
    }
}

async fn with_totals(dir: &Path, projections: &Path) -> (Store, Projections) {
    let store = Store::open(&dir.join("store"), lantern_tests::test_store_options(false)).unwrap();
    let projections = totals_over(&store, projections).await;
    (store, projections)
}

/// Projections in `dir` over `store`, with `order-totals` deployed as `totals`.
async fn totals_over(store: &Store, dir: &Path) -> Projections {
    let projections = Projections::open(
        store.clone(),
        dir,
        shared_compile_cache(WasmConfig::default()),
    )
    .await
    .unwrap();
    projections
        .deploy("totals", lantern_tests::guest("order_totals"))
        .await
        .unwrap();
    projections
}

async fn wait_until(
    projections: &Projections,
    done: impl Fn(&lantern::projection::Status) -> bool,
) -> lantern::projection::Status {
    for _ in 0..1200 {
        let status = projections.status("totals").unwrap();
        if done(&status) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "timed out: {:?}",
        projections.status("totals").unwrap().state
    );
}

/// Bytes free on the filesystem holding `path` (from `df`).
fn free_bytes(path: &Path) -> u64 {
    let output = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .expect("df prints the free bytes")
}

/// An I/O error on the log's fsync (injected below the writer): the group is not acknowledged,
/// appends stop with 503 `storage_unavailable` until a restart, reads go on, and after the
/// restart everything acknowledged is there and nothing of the failed group.
#[tokio::test]
async fn an_io_error_on_fsync_stops_appends_until_a_restart_and_loses_nothing() {
    use lantern::store::{ExpectedRevision, NewEvent};

    let other = tempfile::tempdir().unwrap();
    let dir = other.path().join("failpoint-store");
    let (store, projections, router) = serve(&dir, other.path()).await;
    for batch in 0..3 {
        let (status, _) = call(&router, append_request("io-1", batch)).await;
        assert_eq!(status, StatusCode::OK);
    }
    fail::cfg("log-fsync", "return").unwrap();
    let (status, body) = call(&router, append_request("io-1", 3)).await;
    fail::remove("log-fsync");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "storage_unavailable");
    // The disk works again, but the store does not trust the file until a restart.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = call(&router, append_request("io-2", 0)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (_, health) = call(
        &router,
        Request::get("/health").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["problems"][0]["code"], "storage_unavailable");
    let (status, page) = call(
        &router,
        Request::get("/streams/io-1?limit=100")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "reads go on");
    assert_eq!(page["events"].as_array().unwrap().len(), 30);

    projections.shutdown().await;
    drop(projections);
    drop(router);
    store.close();
    drop(store);
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    assert_eq!(store.head(), 30, "the failed group left no trace");
    let outcome = store
        .append(
            "io-2",
            ExpectedRevision::NoStream,
            vec![NewEvent {
                id: None,
                event_type: "After".into(),
                data: "{}".into(),
                metadata: None,
            }],
        )
        .await
        .unwrap();
    assert_eq!(outcome.first_position, 31);
    store.close();
}

/// `n` orders, customer `c-{i % 100}`, amount `i % 7 + 1`, one append per ten.
async fn place_orders(store: &Store, from: u64, n: u64) {
    place_orders_in(store, from, n, 10).await;
}

/// `place_orders`, `per_append` orders per append.
async fn place_orders_in(store: &Store, from: u64, n: u64, per_append: u64) {
    use lantern::store::{ExpectedRevision, NewEvent};
    for start in (from..from + n).step_by(per_append as usize) {
        let events = (start..start + per_append)
            .map(|i| NewEvent {
                id: None,
                event_type: "OrderPlaced".into(),
                data: format!(r#"{{"customer":"c-{}","amount":{}}}"#, i % 100, i % 7 + 1).into(),
                metadata: None,
            })
            .collect();
        store
            .append(
                &format!("order-{}", start % 30),
                ExpectedRevision::Any,
                events,
            )
            .await
            .unwrap();
    }
}

/// An I/O error below redb (injected in its storage backend) while a read model is written: the
/// projection faults with a storage error that blames no event, reads answer 503 or the last
/// good state, never a wrong one; when the disk works again the projection heals by itself and
/// its read model is exactly the fold of the log.
#[tokio::test]
async fn an_io_error_below_a_read_model_faults_its_projection_and_heals() {
    use lantern::projection::{FaultCause, Phase};

    let other = tempfile::tempdir().unwrap();
    let (store, projections) = with_totals(
        other.path(),
        &other.path().join("failpoint-redb-projections"),
    )
    .await;
    place_orders(&store, 0, 500).await;
    wait_until(&projections, |s| s.position == 500).await;

    fail::cfg("redb-write", "return").unwrap();
    place_orders(&store, 500, 500).await;
    let status = wait_until(&projections, |s| s.state.phase == Phase::Faulted).await;
    let fault = status.state.fault.expect("a fault");
    assert_eq!(fault.cause, FaultCause::Storage, "{fault:?}");
    assert!(fault.message.contains("os error 5"), "{fault:?}");
    // Reads never see a state that disagrees with its checkpoint: a value with the checkpoint
    // it reflects (at most the last durable commit's), or 503.
    match projections.get("totals", "customer:c-1", None).await {
        Ok((value, position)) => {
            let value: Value = serde_json::from_slice(&value).unwrap();
            let orders = (0..position).filter(|i| i % 100 == 1).count();
            assert_eq!(value["orders"], orders as u64, "at {position}");
        }
        Err(error) => assert!(
            matches!(
                error,
                lantern::projection::ProjectionError::Storage(_)
                    | lantern::projection::ProjectionError::Unavailable { .. }
            ),
            "{error:?}"
        ),
    }
    assert_eq!(store.head(), 1000, "appends go on");

    fail::remove("redb-write");
    let status = wait_until(&projections, |s| {
        s.state.phase == Phase::Running && s.position == 1000
    })
    .await;
    assert!(status.state.fault.is_none());
    assert_totals_are_the_fold_of(&projections, 1000).await;
    projections.shutdown().await;
}

/// An I/O error below redb in the store's index: appends are still acknowledged (the log is the
/// truth and it is durable), reads stay complete from the in-memory tail, `/health` says the
/// indexer stopped; a restart indexes the log again and `lantern check` finds it whole.
#[tokio::test]
async fn an_io_error_below_the_index_stops_indexing_not_appends() {
    use lantern::store::Direction;
    use lantern_tests::test_store_options;

    let other = tempfile::tempdir().unwrap();
    let dir = other.path().join("failpoint-redb-store");
    let store = Store::open(&dir, test_store_options(false)).unwrap();
    place_orders(&store, 0, 300).await;
    fail::cfg("redb-sync", "return").unwrap();
    place_orders(&store, 300, 700).await;
    let mut problems = store.problems();
    for _ in 0..100 {
        if !problems.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        problems = store.problems();
    }
    fail::remove("redb-sync");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].code, "indexer_stopped");
    assert!(problems[0].message.contains("os error 5"), "{problems:?}");
    assert_eq!(store.head(), 1000);
    let count = |store: &Store| {
        [0, 10, 20]
            .iter()
            .map(|s| {
                store
                    .read_stream(&format!("order-{s}"), None, Direction::Forward, 10_000)
                    .unwrap()
                    .events
                    .len()
            })
            .sum::<usize>()
    };
    assert_eq!(count(&store), 1000, "reads are complete");
    store.close();
    drop(store);

    let store = Store::open(&dir, test_store_options(false)).unwrap();
    assert!(store.problems().is_empty());
    assert_eq!(store.head(), 1000);
    assert_eq!(count(&store), 1000);
    store.close();
    drop(store);
    let report = lantern::store::check::check(&dir).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.events, 1000);
}

/// A deploy that meets a full disk is refused with 507 `storage_full`, leaves nothing behind (no
/// registry entry, no part of a file) and works once there is space.
#[tokio::test]
async fn a_deploy_on_a_full_disk_is_refused_with_507_and_changes_nothing() {
    let disk = SmallDisk::mount("16m");
    let other = tempfile::tempdir().unwrap();
    let (store, projections, router) = serve(&other.path().join("store"), disk.path()).await;
    let ballast = disk.path().join("ballast");
    let free = free_bytes(disk.path());
    std::fs::write(&ballast, vec![1u8; (free - (1 << 20)) as usize]).unwrap();
    let deploy = || {
        Request::put("/projections/totals")
            .header("content-type", "application/wasm")
            .body(Body::from(lantern_tests::guest("order_totals")))
            .unwrap()
    };
    let list = || Request::get("/projections").body(Body::empty()).unwrap();

    let (status, body) = call(&router, deploy()).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["error"]["code"], "storage_full");
    let (_, listed) = call(&router, list()).await;
    assert_eq!(listed["projections"], json!([]));
    let leftovers: Vec<_> = walkdir(&disk.path().join("projections"))
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    std::fs::remove_file(&ballast).unwrap();
    let (status, body) = call(&router, deploy()).await;
    assert!(status.is_success(), "{status} {body}");
    let (_, listed) = call(&router, list()).await;
    assert_eq!(listed["projections"][0]["name"], "totals");
    projections.shutdown().await;
    store.close();
}

/// Every file under `dir`.
fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// A snapshot save on a full disk is a 507 `storage_full`; the snapshots saved before stay
/// readable, and saves work again once there is space.
#[tokio::test]
async fn a_snapshot_save_on_a_full_disk_is_refused_with_507_and_heals() {
    let disk = SmallDisk::mount("16m");
    let other = tempfile::tempdir().unwrap();
    let (store, projections, router) = serve(&disk.path().join("store"), other.path()).await;
    let (status, _) = call(&router, append_request("cart-1", 0)).await;
    assert_eq!(status, StatusCode::OK);
    let save = |revision: u64, pad: usize| {
        Request::put("/streams/cart-1/snapshot")
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"revision": revision, "state": {"pad": "y".repeat(pad), "at": revision}})
                    .to_string(),
            ))
            .unwrap()
    };
    let read = || {
        Request::get("/streams/cart-1/snapshot")
            .body(Body::empty())
            .unwrap()
    };
    let (status, body) = call(&router, save(1, 10)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ballast = disk.path().join("ballast");
    let free = free_bytes(disk.path());
    std::fs::write(&ballast, vec![1u8; (free - (64 << 10)) as usize]).unwrap();

    let mut refusal = None;
    for revision in 2..10 {
        let (status, body) = call(&router, save(revision, 1 << 20)).await;
        if status != StatusCode::OK {
            refusal = Some((status, body));
            break;
        }
    }
    let (status, body) = refusal.expect("a 1 MiB state does not fit in 64 KiB");
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["error"]["code"], "storage_full");
    let (status, snapshot) = call(&router, read()).await;
    assert_eq!(status, StatusCode::OK, "{snapshot}");
    assert_eq!(snapshot["revision"], 1);

    std::fs::remove_file(&ballast).unwrap();
    let (status, body) = call(&router, save(9, 1 << 20)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, snapshot) = call(&router, read()).await;
    assert_eq!(snapshot["state"]["at"], 9);
    projections.shutdown().await;
    store.close();
}
