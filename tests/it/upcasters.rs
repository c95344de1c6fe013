//! Upcasters (api.md v2, "Upcasters") with the real example upcaster and a misbehaving one: every
//! read path sees the current shape, `raw=true` the stored one, changes rebuild exactly the
//! projections they affect, and a failing upcaster never serves a wrong shape.

use std::collections::BTreeMap;

use lantern_tests::{TestServer, guest};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::projections::{deploy, wait_status};
use super::{append, get, send};

async fn deploy_upcaster(url: &str, name: &str, module: Vec<u8>) -> (StatusCode, Value) {
    send(
        reqwest::Client::new()
            .put(format!("{url}/upcasters/{name}"))
            .header("content-type", "application/wasm")
            .body(module),
    )
    .await
}

/// One order in each of the three shapes the log holds (`examples/order-upcaster`), with the
/// (customer, cents) it means, worked out here from the shapes' definitions.
fn orders() -> Vec<(&'static str, Value, (String, i64))> {
    let mut orders = Vec::new();
    for i in 0..30i64 {
        let customer = format!("c-{}", i % 4);
        let cents = 100 + i;
        let (event_type, data) = match i % 3 {
            0 => (
                "OrderCreated",
                json!({"customer_id": customer, "amount_cents": cents}),
            ),
            1 => (
                "OrderPlaced",
                json!({"customer_id": customer, "amount_cents": cents}),
            ),
            _ => (
                "OrderPlaced",
                json!({"customer": customer, "amount": cents}),
            ),
        };
        orders.push((event_type, data, (customer, cents)));
    }
    orders
}

/// `top` as order-totals answers it, computed from what the orders mean.
fn expected_top(orders: &[(&str, Value, (String, i64))]) -> Value {
    let mut totals: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (_, _, (customer, cents)) in orders {
        let t = totals.entry(customer.clone()).or_default();
        t.0 += 1;
        t.1 += cents;
    }
    let mut rows: Vec<(String, (i64, i64))> = totals.into_iter().collect();
    rows.sort_by(|a, b| b.1.1.cmp(&a.1.1).then_with(|| a.0.cmp(&b.0)));
    rows.into_iter()
        .map(|(customer, (orders, total))| json!({"customer": customer, "total": total, "orders": orders}))
        .collect()
}

#[tokio::test]
async fn order_totals_folds_every_shape_through_the_upcaster_and_reads_see_todays_shape() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    let orders = orders();
    for (i, (event_type, data, _)) in orders.iter().enumerate() {
        let (status, body) = append(
            url,
            &format!("order-{i}"),
            json!({"events": [{"type": event_type, "data": data}]}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Without the upcaster, order-totals cannot fold the old shapes.
    deploy(url, "totals", guest("order_totals")).await;
    deploy(url, "per-day", guest("orders_per_day")).await;
    deploy(url, "carts", guest("carts")).await;
    let faulted = wait_status(url, "totals", |s| s["status"] == "faulted").await;
    assert_eq!(faulted["error"]["position"], 2, "{faulted}");
    wait_status(url, "carts", |s| s["lag"] == 0).await;

    let (status, deployed) = deploy_upcaster(url, "order-shapes", guest("order_upcaster")).await;
    assert_eq!(status, StatusCode::CREATED, "{deployed}");
    assert_eq!(deployed["version"], 1);
    // order-totals (every type of `order`) and orders-per-day (`OrderPlaced`, which it gives)
    // are affected; carts is too (it takes every type), and rebuilds to the same state.
    assert_eq!(
        deployed["rebuilding"],
        json!(["carts", "per-day", "totals"])
    );
    let (_, listed) = get(url, "/upcasters").await;
    assert_eq!(
        listed["upcasters"][0]["takes"],
        json!(["OrderPlaced", "OrderCreated"])
    );
    assert_eq!(listed["upcasters"][0]["gives"], json!(["OrderPlaced"]));

    let totals = wait_status(url, "totals", |s| {
        s["version"] == 1 && s["rebuild"].is_null() && s["status"] == "running" && s["lag"] == 0
    })
    .await;
    assert_eq!(totals["upcasters"], json!(["order-shapes"]), "{totals}");
    let (status, top) = get(url, "/projections/totals/query/top?n=10").await;
    assert_eq!(status, StatusCode::OK, "{top}");
    assert_eq!(top, expected_top(&orders));

    // Reads: today's shape, or the stored one with raw=true.
    let (_, page) = get(url, "/streams/order-0").await;
    assert_eq!(page["events"][0]["type"], "OrderPlaced");
    assert_eq!(
        page["events"][0]["data"],
        json!({"customer": "c-0", "amount": 100})
    );
    let (_, page) = get(url, "/streams/order-0?raw=true").await;
    assert_eq!(page["events"][0]["type"], "OrderCreated");
    assert_eq!(page["events"][0]["data"], orders[0].1);
    // A types filter matches the upcast type: every order is an OrderPlaced now.
    let (_, all) = get(url, "/all?types=OrderPlaced&limit=100").await;
    let events = all["events"].as_array().unwrap();
    assert_eq!(events.len(), orders.len(), "{all}");
    for (event, (_, _, (customer, cents))) in events.iter().zip(&orders) {
        assert_eq!(
            event["data"],
            json!({"customer": customer, "amount": cents})
        );
    }
    let (_, all) = get(url, "/all?types=OrderCreated&limit=100").await;
    assert_eq!(
        all["events"],
        json!([]),
        "nothing is an OrderCreated any more"
    );
    let (_, all) = get(url, "/all?types=OrderCreated&limit=100&raw=true").await;
    assert_eq!(all["events"].as_array().unwrap().len(), 10);
    // /subscribe too.
    let text = reqwest::Client::new()
        .get(format!("{url}/subscribe?from=1&types=OrderPlaced"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    let mut text = text;
    let mut seen = Vec::new();
    while seen.len() < orders.len() {
        let chunk = text
            .chunk()
            .await
            .unwrap()
            .expect("the subscription stays open");
        for line in String::from_utf8(chunk.to_vec()).unwrap().lines() {
            if !line.trim().is_empty() {
                seen.push(serde_json::from_str::<Value>(line).unwrap());
            }
        }
    }
    assert!(
        seen.iter()
            .all(|e| e["type"] == "OrderPlaced" && e["data"]["customer"].is_string())
    );
    // ... and with raw=true, the stored types.
    let mut raw = reqwest::Client::new()
        .get(format!(
            "{url}/subscribe?from=1&types=OrderCreated&raw=true"
        ))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    let first = raw
        .chunk()
        .await
        .unwrap()
        .expect("the subscription stays open");
    let line = std::str::from_utf8(&first).unwrap().lines().next().unwrap();
    let first: Value = serde_json::from_str(line).unwrap();
    assert_eq!(first["type"], "OrderCreated");
    assert_eq!(first["position"], 1);

    // Deleting it rebuilds the affected projections again: without it, order-totals cannot
    // fold the old shapes, so that rebuild faults and the version with the upcaster serves on.
    let response = reqwest::Client::new()
        .delete(format!("{url}/upcasters/order-shapes"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let totals = wait_status(url, "totals", |s| s["rebuild"]["status"] == "faulted").await;
    assert_eq!(
        totals["rebuild"]["reason"],
        "upcaster order-shapes was deleted"
    );
    assert_eq!(totals["rebuild"]["error"]["cause"], "module");
    assert_eq!(totals["status"], "running");
    assert_eq!(
        get(url, "/projections/totals/query/top?n=10").await.1,
        expected_top(&orders)
    );
    let (_, page) = get(url, "/streams/order-0").await;
    assert_eq!(
        page["events"][0]["type"], "OrderCreated",
        "reads are raw again"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_failing_upcaster_never_serves_a_wrong_shape_and_faults_alone() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    let tick = |data: Value| json!({"events": [{"type": "Tick", "data": data}]});
    append(url, "order-clock", tick(json!({"n": 1}))).await; // 1
    append(url, "order-clock", tick(json!({"fail": true}))).await; // 2
    append(url, "order-clock", tick(json!({"n": 3}))).await; // 3
    append(
        url,
        "order-1",
        json!({"events": [{"type": "OrderPlaced", "data": {"customer": "c", "amount": 5}}]}),
    )
    .await; // 4
    append(url, "other-clock", tick(json!({"trap": true}))).await; // 5
    append(url, "other-clock", tick(json!({"rename": true}))).await; // 6
    deploy(url, "totals", guest("order_totals")).await;
    deploy(url, "per-day", guest("orders_per_day")).await;
    wait_status(url, "totals", |s| s["lag"] == 0).await;
    wait_status(url, "per-day", |s| s["lag"] == 0).await;

    let (status, deployed) = deploy_upcaster(url, "ticks", guest("bad_upcaster")).await;
    assert_eq!(status, StatusCode::CREATED, "{deployed}");
    // orders-per-day wants only OrderPlaced: not affected.
    assert_eq!(deployed["rebuilding"], json!(["totals"]));

    // Reads that need a failing event: 500 upcast_failed with its position; never the stored
    // shape in its place.
    let (status, body) = get(url, "/all").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["code"], "upcast_failed");
    assert_eq!(body["error"]["position"], 2);
    assert_eq!(body["error"]["upcaster"], "ticks");
    let (status, page) = get(url, "/all?limit=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["events"][0]["data"], json!({"n": 1, "upcast": true}));
    for (from, position) in [(5, 5), (6, 6)] {
        let (status, body) = get(url, &format!("/all?from={from}&limit=1")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert_eq!(body["error"]["position"], position, "{body}");
    }
    let (status, body) = get(url, "/streams/order-clock").await;
    assert_eq!(
        (status, body["error"]["position"].clone()),
        (StatusCode::INTERNAL_SERVER_ERROR, json!(2))
    );
    // Everything else goes on: other streams, raw reads, appends, the unaffected projection.
    let (status, page) = get(url, "/streams/order-1").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (status, page) = get(url, "/all?raw=true").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["events"].as_array().unwrap().len(), 6);
    let (status, _) = append(
        url,
        "order-2",
        json!({"events": [{"type": "OrderPlaced", "data": {"customer": "d", "amount": 7}}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let per_day = wait_status(url, "per-day", |s| s["lag"] == 0).await;
    assert!(per_day["rebuild"].is_null(), "{per_day}");
    // The affected projection's rebuild stops at the failing event; the version without the
    // upcaster serves on.
    let totals = wait_status(url, "totals", |s| s["rebuild"]["status"] == "faulted").await;
    assert_eq!(totals["rebuild"]["error"]["cause"], "upcaster", "{totals}");
    assert_eq!(totals["rebuild"]["error"]["position"], 2, "{totals}");
    assert_eq!(
        totals["rebuild"]["reason"],
        "upcaster ticks version 1 was deployed"
    );
    assert_eq!(totals["status"], "running");
    // A subscription that reaches the event ends with the error, after the events before it.
    let mut response = reqwest::Client::new()
        .get(format!("{url}/subscribe?from=1"))
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    while !text.contains("event: error") {
        let chunk = response
            .chunk()
            .await
            .unwrap()
            .expect("the error comes before the end");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.starts_with("id: 1\n"), "{text}");
    assert!(text.contains("\"upcast_failed\""), "{text}");
    assert!(
        response.chunk().await.unwrap().is_none(),
        "the subscription ends"
    );
    // The upcaster's status names the last fault.
    let (_, upcaster) = get(url, "/upcasters/ticks").await;
    assert!(upcaster["faults"].as_u64().unwrap() >= 4, "{upcaster}");
    assert!(upcaster["error"]["message"].is_string(), "{upcaster}");
    // The server says it is degraded, and why, but stays ready (every node has the same
    // upcasters); the metrics count the faults.
    let (_, health) = get(url, "/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["problems"][0]["code"], "upcaster_failed", "{health}");
    assert_eq!(get(url, "/health/ready").await.0, StatusCode::OK);
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let faults: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lantern_upcaster_faults_total{upcaster=\"ticks\"} "))
        .expect("the fault counter is exported")
        .parse()
        .unwrap();
    assert!(faults >= 4, "{faults}");
    let (status, body) = get(url, "/upcasters/nothing").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("upcaster_not_found"))
    );
    server.stop().await;
}

#[tokio::test]
async fn upcaster_deploys_refuse_what_is_not_an_upcaster() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    for (module, what) in [
        (guest("order_totals"), "a projection"),
        (b"not wasm".to_vec(), "garbage"),
    ] {
        let (status, body) = deploy_upcaster(url, "x", module).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(body["error"]["code"], "invalid_module", "{what}");
    }
    let (status, body) = deploy_upcaster(url, "Bad Name", guest("bad_upcaster")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, listed) = get(url, "/upcasters").await;
    assert_eq!(listed["upcasters"], json!([]));
    // The same module twice: 201, then 200 and nothing changes.
    assert_eq!(
        deploy_upcaster(url, "t", guest("bad_upcaster")).await.0,
        StatusCode::CREATED
    );
    let (status, again) = deploy_upcaster(url, "t", guest("bad_upcaster")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["unchanged"], true);
    assert_eq!(again["version"], 1);
    server.stop().await;
}

/// Upcasters are in the registry: after a restart they are loaded again, reads go through them,
/// and projections keep the chain they were built with.
#[tokio::test]
async fn upcasters_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_lantern-under-test"));
    let server = lantern_tests::ServerProcess::start(binary, dir.path()).unwrap();
    let url = server.url.clone();
    append(
        &url,
        "order-1",
        json!({"events": [{"type": "OrderCreated", "data": {"customer_id": "c-1", "amount_cents": 7}}]}),
    )
    .await;
    assert_eq!(
        deploy_upcaster(&url, "order-shapes", guest("order_upcaster"))
            .await
            .0,
        StatusCode::CREATED
    );
    deploy(&url, "totals", guest("order_totals")).await;
    wait_status(&url, "totals", |s| {
        s["lag"] == 0 && s["status"] == "running"
    })
    .await;
    server.kill().unwrap();

    let server = lantern_tests::ServerProcess::start(binary, dir.path()).unwrap();
    let url = server.url.clone();
    let (_, listed) = get(&url, "/upcasters").await;
    assert_eq!(listed["upcasters"][0]["name"], "order-shapes");
    let (_, page) = get(&url, "/streams/order-1").await;
    assert_eq!(
        page["events"][0]["data"],
        json!({"customer": "c-1", "amount": 7})
    );
    let totals = wait_status(&url, "totals", |s| s["lag"] == 0).await;
    assert_eq!(totals["upcasters"], json!(["order-shapes"]));
    assert!(totals["rebuild"].is_null(), "nothing to rebuild: {totals}");
    let (_, value) = get(&url, "/projections/totals/state/customer:c-1").await;
    assert_eq!(value, json!({"orders": 1, "total": 7}));
}

/// A large page is upcast in parts on several cores: every event gets its own answer, and of
/// two failing events the earlier one is reported.
#[tokio::test]
async fn a_large_page_is_upcast_in_parts_each_event_its_own_answer() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    const N: u64 = 10_000;
    let events: Vec<Value> = (1..=N)
        .map(|n| json!({"type": "Tick", "data": {"n": n}}))
        .collect();
    let (status, body) = append(url, "clock-1", json!({ "events": events })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        deploy_upcaster(url, "ticks", guest("bad_upcaster")).await.0,
        StatusCode::CREATED
    );
    let (status, page) = get(url, &format!("/all?limit={N}")).await;
    assert_eq!(status, StatusCode::OK);
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len() as u64, N);
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["position"], i as u64 + 1);
        assert_eq!(
            event["data"],
            json!({"n": i as u64 + 1, "upcast": true}),
            "{event}"
        );
    }
    // Two failing events far apart (in different parts): the earlier one is reported.
    let events: Vec<Value> = (1..=N)
        .map(|n| match n {
            7_000 | 9_500 => json!({"type": "Tick", "data": {"fail": true}}),
            n => json!({"type": "Tick", "data": {"n": n}}),
        })
        .collect();
    append(url, "clock-2", json!({ "events": events })).await;
    let (status, body) = get(url, &format!("/all?from={}&limit={N}", N + 1)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["position"], N + 7_000);
    server.stop().await;
}

/// Upcasters chain in the byte order of their names, each seeing the previous one's answer.
#[tokio::test]
async fn upcasters_chain_in_name_order() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    append(
        url,
        "order-1",
        json!({"events": [
            {"type": "OrderCreated", "data": {"customer_id": "c-1", "amount_cents": 1}},
            {"type": "OrderPlaced", "data": {"customer": "c-2", "amount": 2}},
        ]}),
    )
    .await;
    // The renaming upcaster first, then the tagger: every order arrives tagged, in today's shape.
    deploy_upcaster(url, "1-order-shapes", guest("order_upcaster")).await;
    deploy_upcaster(url, "2-tag", guest("tag_upcaster")).await;
    let (_, listed) = get(url, "/upcasters").await;
    let names: Vec<&str> = listed["upcasters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["1-order-shapes", "2-tag"]);
    let (_, page) = get(url, "/streams/order-1").await;
    assert_eq!(page["events"][0]["type"], "OrderPlaced");
    assert_eq!(
        page["events"][0]["data"],
        json!({"customer": "c-1", "amount": 1, "tagged": true})
    );
    assert_eq!(
        page["events"][1]["data"],
        json!({"customer": "c-2", "amount": 2, "tagged": true})
    );
    // The tagger renamed to run first: it does not take the stored OrderCreated (and the
    // renaming upcaster then writes it afresh, untagged); today's OrderPlaced it tags, and the
    // renaming upcaster leaves that unchanged.
    let response = reqwest::Client::new()
        .delete(format!("{url}/upcasters/2-tag"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    deploy_upcaster(url, "0-tag", guest("tag_upcaster")).await;
    let (_, page) = get(url, "/streams/order-1").await;
    assert_eq!(
        page["events"][0]["data"],
        json!({"customer": "c-1", "amount": 1})
    );
    assert_eq!(
        page["events"][1]["data"],
        json!({"customer": "c-2", "amount": 2, "tagged": true})
    );
    server.stop().await;
}
