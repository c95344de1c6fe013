//! Projections in TypeScript (`guest-sdk-js`): the example `examples/order-totals-ts`, built with
//! `lantern-build`, folds the same events as the Rust `order-totals` on a real server to the same
//! read model and the same answers, and faults on the same event; its KurrentDB-style twin
//! (`@lantern/sdk/kurrent`) keeps the same totals per customer.

use std::collections::BTreeMap;

use lantern_tests::{TestServer, guest, ts_guest};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::projections::{deploy, wait_status};
use super::{append, get};

#[tokio::test]
async fn the_typescript_order_totals_folds_like_the_rust_one() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    // Orders placed and cancelled by 37 customers, and events the projections do not want.
    let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut seed = 11u64;
    let mut random = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    for append_no in 0..300 {
        let mut events = Vec::new();
        for _ in 0..10 {
            let customer = format!("c-{}", random() % 37);
            let amount = (random() % 5000) as i64;
            let cancelled = random() % 5 == 0;
            let event_type = if cancelled {
                "OrderCancelled"
            } else {
                "OrderPlaced"
            };
            let sign = if cancelled { -1 } else { 1 };
            let totals = expected.entry(customer.clone()).or_default();
            totals.0 += sign;
            totals.1 += sign * amount;
            events.push(
                json!({"type": event_type, "data": {"customer": customer, "amount": amount}}),
            );
        }
        events.push(json!({"type": "OrderShipped", "data": {"customer": "c-0"}}));
        let (status, body) = append(
            url,
            &format!("order-{append_no}"),
            json!({ "events": events }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        append(
            url,
            "cart-1",
            json!({"events": [{"type": "OrderPlaced", "data": {"customer": "c-0", "amount": 1}}]}),
        )
        .await;
    }
    assert_eq!(
        deploy(url, "rust", guest("order_totals")).await.0,
        StatusCode::CREATED
    );
    let (status, body) = deploy(url, "ts", ts_guest("order_totals_ts")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = deploy(url, "kurrent", ts_guest("order_totals_kurrent")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for name in ["rust", "ts", "kurrent"] {
        wait_status(url, name, |s| s["lag"] == 0 && s["status"] == "running").await;
    }
    let state = |name: &'static str| async move {
        let (status, page) = get(
            url,
            &format!("/projections/{name}/state?prefix=customer:&limit=1000"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page["items"].clone()
    };
    let rust_state = state("rust").await;
    assert_eq!(state("ts").await, rust_state);
    let from_the_appends: Vec<Value> = expected
        .iter()
        .map(|(customer, (orders, total))| {
            json!({"key": format!("customer:{customer}"), "value": {"orders": orders, "total": total}})
        })
        .collect();
    assert_eq!(rust_state, json!(from_the_appends));
    for query in ["top?n=5", "top?n=100", "top"] {
        let (status, rust) = get(url, &format!("/projections/rust/query/{query}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            get(url, &format!("/projections/ts/query/{query}")).await.1,
            rust,
            "{query}"
        );
    }
    // The KurrentDB-style twin: a partition per customer, answered by its `state` query.
    for (customer, (orders, total)) in &expected {
        let (status, body) = get(
            url,
            &format!("/projections/kurrent/query/state?partition={customer}"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body,
            json!({"orders": orders, "total": total}),
            "{customer}"
        );
    }
    let (status, page) = get(
        url,
        "/projections/kurrent/state?prefix=partition:&limit=1000",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"].as_array().unwrap().len(), expected.len());
    let (status, body) = get(url, "/projections/kurrent/query/state").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, body) = get(url, "/projections/ts/query/nothing").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("query_not_found"))
    );

    // A malformed order: both fault on the same event, with the TypeScript module's own message.
    let (_, bad) = append(
        url,
        "order-x",
        json!({"events": [{"type": "OrderPlaced", "data": {"customer": "c-1", "amount": "x"}}]}),
    )
    .await;
    let position = bad["first_position"].clone();
    for name in ["rust", "ts"] {
        let status = wait_status(url, name, |s| s["status"] == "faulted").await;
        assert_eq!(status["error"]["position"], position, "{name}: {status}");
    }
    let ts = wait_status(url, "ts", |s| s["status"] == "faulted").await;
    assert!(
        ts["error"]["message"]
            .as_str()
            .unwrap()
            .contains("data does not fit"),
        "{ts}"
    );
    server.stop().await;
}
