//! Projections end to end over HTTP with the real example modules.

use std::time::Duration;

use lantern_tests::{TestServer, guest};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{append, get, send};

pub(crate) async fn deploy(url: &str, name: &str, module: Vec<u8>) -> (StatusCode, Value) {
    send(
        reqwest::Client::new()
            .put(format!("{url}/projections/{name}"))
            .header("content-type", "application/wasm")
            .body(module),
    )
    .await
}

/// Waits until the projection exists and its status satisfies `done`, or panics after 60 s.
pub(crate) async fn wait_status(url: &str, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..600 {
        let (status, body) = get(url, &format!("/projections/{name}")).await;
        assert!(
            status == StatusCode::OK || status == StatusCode::NOT_FOUND,
            "{body}"
        );
        if status == StatusCode::OK && done(&body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("projection {name} never reached the expected status");
}

fn order(event_type: &str, customer: &str, amount: i64) -> Value {
    json!({"events": [{"type": event_type, "data": {"customer": customer, "amount": amount}}]})
}

#[tokio::test]
async fn order_totals_end_to_end() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    // History before the deploy is caught up; events after it are followed live.
    append(url, "order-1", order("OrderPlaced", "c-1", 1250)).await;
    append(url, "order-2", order("OrderPlaced", "c-2", 300)).await;
    append(url, "invoice-1", order("OrderPlaced", "c-9", 999)).await;
    let (status, body) = deploy(url, "order-totals", guest("order_totals")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body,
        json!({"name": "order-totals", "version": 1, "status": "catching_up"})
    );
    let (status, body) = deploy(url, "order-totals", guest("order_totals")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the same bytes change nothing: {body}"
    );
    assert_eq!(body["version"], 1);

    append(url, "order-3", order("OrderPlaced", "c-1", 750)).await;
    append(url, "order-2", order("OrderShipped", "c-2", 300)).await;
    let (_, answer) = append(url, "order-1", order("OrderCancelled", "c-1", 1250)).await;
    let last = answer["last_position"].as_u64().unwrap();

    // Read your writes: wait for the append's position.
    let response = reqwest::get(format!(
        "{url}/projections/order-totals/state/customer:c-1?min_position={last}"
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let position: u64 = response.headers()["lantern-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(position >= last);
    let value: Value = response.json().await.unwrap();
    assert_eq!(value, json!({"orders": 1, "total": 750}));

    // Prefix pages.
    let (_, page) = get(
        url,
        "/projections/order-totals/state?prefix=customer:&limit=1",
    )
    .await;
    assert_eq!(
        page["items"],
        json!([{"key": "customer:c-1", "value": {"orders": 1, "total": 750}}])
    );
    assert_eq!(page["next"], "customer:c-1");
    let (_, page) = get(
        url,
        "/projections/order-totals/state?prefix=customer:&after=customer:c-1",
    )
    .await;
    assert_eq!(
        page["items"],
        json!([{"key": "customer:c-2", "value": {"orders": 1, "total": 300}}])
    );
    assert_eq!(page["next"], Value::Null);
    assert!(page["position"].as_u64().unwrap() >= last);

    // The module's own query.
    let (status, top) = get(url, "/projections/order-totals/query/top?n=2").await;
    assert_eq!(status, StatusCode::OK, "{top}");
    assert_eq!(
        top,
        json!([
            {"customer": "c-1", "total": 750, "orders": 1},
            {"customer": "c-2", "total": 300, "orders": 1},
        ])
    );
    let errors = [
        (
            "/projections/order-totals/query/nope",
            StatusCode::NOT_FOUND,
            "query_not_found",
        ),
        (
            "/projections/order-totals/query/top?n=lots",
            StatusCode::BAD_REQUEST,
            "query_failed",
        ),
        (
            "/projections/order-totals/state/customer:c-9",
            StatusCode::NOT_FOUND,
            "key_not_found",
        ),
        (
            "/projections/nobody/state/x",
            StatusCode::NOT_FOUND,
            "projection_not_found",
        ),
        (
            "/projections/nobody",
            StatusCode::NOT_FOUND,
            "projection_not_found",
        ),
        (
            "/projections/order-totals/state/customer:c-1?min_position=999999&wait_ms=50",
            StatusCode::SERVICE_UNAVAILABLE,
            "not_caught_up",
        ),
    ];
    for (path, status, code) in errors {
        let (got, body) = get(url, path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
    }
    let (_, body) = get(
        url,
        "/projections/order-totals/state/x?min_position=999999&wait_ms=50",
    )
    .await;
    assert!(body["error"]["position"].as_u64().unwrap() >= last);

    // The status, and events it does not subscribe to still advance its checkpoint.
    append(
        url,
        "other-1",
        json!({"events": [{"type": "Noise", "data": 1}]}),
    )
    .await;
    let (_, health) = get(url, "/health").await;
    let head = health["head"].as_u64().unwrap();
    let status = wait_status(url, "order-totals", |s| s["position"] == head).await;
    assert_eq!(status["status"], "running");
    assert_eq!(status["lag"], 0);
    assert_eq!(
        status["subscription"],
        json!({"categories": ["order"], "streams": [], "types": []})
    );
    assert_eq!(status["module_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(status["error"], Value::Null);
    assert_eq!(status["rebuild"], Value::Null);
    let (_, list) = get(url, "/projections").await;
    assert_eq!(list["projections"].as_array().unwrap().len(), 1);

    // Delete: gone, and its name is free again.
    let response = reqwest::Client::new()
        .delete(format!("{url}/projections/order-totals"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, _) = get(url, "/projections/order-totals/state/customer:c-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test]
async fn carts_use_deletes_and_prefix_scans() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    let (status, body) = deploy(url, "carts", guest("carts")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let add = |sku: &str, quantity: i64, price: i64| json!({"events": [{"type": "ItemAdded", "data": {"sku": sku, "quantity": quantity, "price": price}}]});
    append(url, "cart-7", add("apple", 2, 40)).await;
    append(url, "cart-7", add("pear", 1, 90)).await;
    append(url, "cart-8", add("fig", 5, 10)).await;
    append(
        url,
        "cart-7",
        json!({"events": [{"type": "ItemRemoved", "data": {"sku": "apple"}}]}),
    )
    .await;
    let (_, answer) = append(
        url,
        "cart-8",
        json!({"events": [{"type": "CartCheckedOut", "data": {}}]}),
    )
    .await;
    let last = answer["last_position"].as_u64().unwrap();
    let (status, cart) = get(
        url,
        &format!("/projections/carts/query/cart?id=7&min_position={last}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{cart}");
    assert_eq!(cart["summary"], json!({"items": 1, "total": 90}));
    assert_eq!(
        cart["items"],
        json!([{"sku": "pear", "item": {"quantity": 1, "price": 90}}])
    );
    let (_, page) = get(url, "/projections/carts/state").await;
    let keys: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["cart:7", "cart:7:item:pear", "checked-out:8"]);
    server.stop().await;
}

#[tokio::test]
async fn invalid_modules_are_refused_and_change_nothing() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "garbage",
            b"not wasm at all".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_module",
        ),
        (
            "core-module",
            core_module,
            StatusCode::BAD_REQUEST,
            "invalid_module",
        ),
        (
            "other-world",
            guest("not_a_projection"),
            StatusCode::BAD_REQUEST,
            "invalid_module",
        ),
        (
            "Bad_Name",
            guest("order_totals"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "-dash",
            guest("order_totals"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "too-big",
            vec![0u8; (32 << 20) + 10],
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ];
    for (name, module, status, code) in cases {
        let (got, body) = deploy(url, name, module).await;
        assert_eq!(got, status, "{name}: {body}");
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    let (_, list) = get(url, "/projections").await;
    assert_eq!(list, json!({"projections": []}));
    // A refused new version leaves the current one alone.
    assert_eq!(
        deploy(url, "order-totals", guest("order_totals")).await.0,
        StatusCode::CREATED
    );
    let (status, _) = deploy(url, "order-totals", guest("not_a_projection")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, status) = get(url, "/projections/order-totals").await;
    assert_eq!(status["version"], 1);
    assert_eq!(status["rebuild"], Value::Null);
    server.stop().await;
}

#[tokio::test]
async fn a_module_that_cannot_load_at_start_up_faults_alone() {
    use lantern::projection::{Phase, Projections};
    use lantern::store::Store;
    use lantern::wasm::WasmConfig;
    use lantern_tests::{shared_compile_cache, test_store_options};

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store"), test_store_options(false)).unwrap();
    let config = shared_compile_cache(WasmConfig::default());
    let root = dir.path().join("projections");
    let projections = Projections::open(store.clone(), &root, config.clone())
        .await
        .unwrap();
    projections
        .deploy("order-totals", guest("order_totals"))
        .await
        .unwrap();
    projections.deploy("carts", guest("carts")).await.unwrap();
    projections.shutdown().await;
    drop(projections);
    // The module file of one projection is lost.
    let sha = lantern::projection::module_sha256(&guest("order_totals"));
    std::fs::remove_file(root.join("modules").join(format!("{sha}.wasm"))).unwrap();

    let projections = Projections::open(store.clone(), &root, config)
        .await
        .unwrap();
    let broken = projections.status("order-totals").unwrap();
    assert_eq!(broken.state.phase, Phase::Faulted);
    assert!(
        broken
            .state
            .fault
            .unwrap()
            .message
            .contains("could not be loaded")
    );
    assert_eq!(projections.list().len(), 2);
    assert_eq!(projections.status("carts").unwrap().version, 1);
    // Deploying a module under the name replaces the broken one.
    projections
        .deploy("order-totals", guest("order_totals"))
        .await
        .unwrap();
    let status = projections.status("order-totals").unwrap();
    assert_eq!(status.version, 2);
    assert_ne!(status.state.phase, Phase::Faulted);
    projections.shutdown().await;
}

/// A projection sees each event's id and recorded time: `orders-per-day` counts orders on the
/// UTC day the store recorded them, which the test reads from the API's `recorded_at`.
#[tokio::test]
async fn projections_see_when_and_as_what_each_event_was_recorded() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    let (status, body) = deploy(url, "per-day", guest("orders_per_day")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for (i, amount) in [3, 4, 5].into_iter().enumerate() {
        append(
            url,
            &format!("order-{i}"),
            order("OrderPlaced", "c", amount),
        )
        .await;
    }
    let (_, all) = get(url, "/all?limit=10").await;
    let mut days = std::collections::BTreeMap::<String, (u64, i64)>::new();
    for event in all["events"].as_array().unwrap() {
        let day = event["recorded_at"].as_str().unwrap()[..10].to_owned();
        let entry = days.entry(day).or_default();
        entry.0 += 1;
        entry.1 += event["data"]["amount"].as_i64().unwrap();
    }
    wait_status(url, "per-day", |s| s["position"] == 3).await;
    for (day, (orders, total)) in days {
        let (status, value) = get(url, &format!("/projections/per-day/state/day:{day}")).await;
        assert_eq!(status, StatusCode::OK, "{value}");
        assert_eq!(value, json!({"orders": orders, "total": total}));
    }
}

/// A module built by the SDK of WIT 0.1.0 (before events carried their id and time) keeps
/// loading and folding the same as a current build of the same projection.
#[tokio::test]
async fn a_module_built_against_the_previous_wit_still_runs() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    let old = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/order_totals_wit_0.1.0.wasm"
    ))
    .unwrap();
    let (status, body) = deploy(url, "old", old).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = deploy(url, "new", guest("order_totals")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for i in 0..40 {
        append(
            url,
            &format!("order-{}", i % 7),
            order(
                if i % 5 == 4 {
                    "OrderCancelled"
                } else {
                    "OrderPlaced"
                },
                &format!("c-{}", i % 6),
                i,
            ),
        )
        .await;
    }
    for name in ["old", "new"] {
        let status = wait_status(url, name, |s| s["position"] == 40).await;
        assert!(status["error"].is_null(), "{status}");
    }
    let (_, old_top) = get(url, "/projections/old/query/top?n=10").await;
    let (_, new_top) = get(url, "/projections/new/query/top?n=10").await;
    assert_eq!(old_top.as_array().unwrap().len(), 6);
    assert_eq!(old_top, new_top);
}

#[tokio::test]
async fn batches_of_large_events_are_cut_to_fit_and_lose_nothing() {
    // 48 orders of about 600 KB each (29 MB): more than one batch may hold (16 MiB), so the
    // runner cuts a batch short and reads the rest again; each order must be folded exactly once.
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    let pad = "x".repeat(600_000);
    let mut amounts = 0;
    for chunk in 0..8 {
        let events: Vec<Value> = (0..6)
            .map(|i| {
                let amount = chunk * 6 + i + 1;
                amounts += amount;
                json!({"type": "OrderPlaced", "data": {"customer": "c-1", "amount": amount, "pad": pad}})
            })
            .collect();
        let (status, body) =
            append(url, &format!("order-{chunk}"), json!({ "events": events })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = deploy(url, "order-totals", guest("order_totals")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    wait_status(url, "order-totals", |s| {
        s["lag"] == 0 && s["status"] == "running"
    })
    .await;
    let (status, body) = get(url, "/projections/order-totals/state/customer:c-1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"orders": 48, "total": amounts}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_of_one_projection_run_side_by_side() {
    // One query held busy in the module must not hold up another of the same projection.
    let server = TestServer::start().await.unwrap();
    let url = server.url.clone();
    let (status, body) = deploy(&url, "h", guest("hostile")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    append(
        &url,
        "hostile-1",
        json!({"events": [{"type": "Ping", "data": {}}]}),
    )
    .await;
    wait_status(&url, "h", |s| s["lag"] == 0 && s["status"] == "running").await;
    // Spins for about 1.5 s (well inside the 5 s call deadline), measured on this machine.
    let timed = |spins: u64| {
        let url = url.clone();
        async move {
            let started = std::time::Instant::now();
            let (status, body) = get(&url, &format!("/projections/h/query/spin?n={spins}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body, json!({"count": 1, "spins": spins}));
            started.elapsed()
        }
    };
    let probe = 20_000_000;
    let per_spin = timed(probe).await.as_secs_f64() / probe as f64;
    let spins = (1.5 / per_spin) as u64;
    let slow = tokio::spawn(timed(spins));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let (status, body) = get(&url, "/projections/h/query/count").await;
    let quick = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"count": 1, "spins": 0}));
    assert!(
        !slow.is_finished(),
        "the quick query ({quick:?}) waited for the slow one"
    );
    let slow = slow.await.unwrap();
    assert!(quick < slow / 2, "quick {quick:?}, slow {slow:?}");
}
