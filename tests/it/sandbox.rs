//! Hostile modules: each failure faults that projection alone; the log, the server and the other
//! projections carry on, and nothing of the failed batch is written.

use std::time::Duration;

use lantern::wasm::WasmConfig;
use lantern_tests::{TestServer, guest, shared_compile_cache};
use reqwest::StatusCode;
use serde_json::json;

use super::projections::{deploy, wait_status};
use super::{append, get};

#[tokio::test]
async fn every_kind_of_misbehaviour_faults_alone() {
    // (event type, words the fault message must contain)
    let modes = [
        ("Trap", "told to trap"),
        ("Loop", "deadline"),
        ("Grow", "memory"),
        ("Flood", "write set"),
        ("Fail", "told to fail"),
    ];
    for (mode, expected) in modes {
        let config = shared_compile_cache(WasmConfig {
            call_timeout: Duration::from_millis(500),
            max_write_bytes: 8 << 20,
            ..WasmConfig::default()
        });
        let server = TestServer::start_with(config).await.unwrap();
        let url = &server.url;
        assert_eq!(
            deploy(url, "hostile", guest("hostile")).await.0,
            StatusCode::CREATED
        );
        assert_eq!(
            deploy(url, "order-totals", guest("order_totals")).await.0,
            StatusCode::CREATED
        );
        append(
            url,
            "hostile-1",
            json!({"events": [{"type": "Count", "data": 1}, {"type": "Count", "data": 2}]}),
        )
        .await;
        let (_, bad) = append(
            url,
            "hostile-1",
            json!({"events": [{"type": mode, "data": {}}, {"type": "Count", "data": 3}]}),
        )
        .await;
        let bad_position = bad["first_position"].as_u64().unwrap();
        let status = wait_status(url, "hostile", |s| s["status"] == "faulted").await;
        let message = status["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{mode}: {message}");
        assert_eq!(
            status["error"]["position"], bad_position,
            "{mode}: {status}"
        );
        assert!(
            status["position"].as_u64().unwrap() < bad_position,
            "{mode}: the failed event is not checkpointed"
        );
        // However the events were batched, the events before the bad one are folded and nothing
        // from it on: the count stops at 2.
        let (code, count) = get(url, "/projections/hostile/state/count").await;
        assert_eq!(code, StatusCode::OK, "{mode}");
        assert_eq!(count, json!(2), "{mode}");
        // The rest carries on: appends, the other projection, its queries.
        let (code, placed) = append(
            url,
            "order-1",
            json!({"events": [{"type": "OrderPlaced", "data": {"customer": "c-1", "amount": 5}}]}),
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{mode}");
        let position = &placed["last_position"];
        let (code, totals) = get(
            url,
            &format!("/projections/order-totals/state/customer:c-1?min_position={position}"),
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{mode}: {totals}");
        assert_eq!(totals, json!({"orders": 1, "total": 5}));
        let (_, health) = get(url, "/health").await;
        assert_eq!(health["status"], "ok");
        server.stop().await;
    }
}

#[tokio::test]
async fn a_fault_inside_a_batch_is_pinned_to_its_event() {
    for mode in ["Trap", "Fail"] {
        let server = TestServer::start().await.unwrap();
        let url = &server.url;
        // History first, so the projection meets it all in one batch.
        let (_, written) = append(
            url,
            "hostile-1",
            json!({"events": [
                {"type": "Count", "data": 1},
                {"type": "Count", "data": 2},
                {"type": mode, "data": {}},
                {"type": "Count", "data": 3},
            ]}),
        )
        .await;
        let bad_position = written["first_position"].as_u64().unwrap() + 2;
        deploy_and_see_the_fault_at(url, bad_position, 2).await;
        server.stop().await;
    }
}

/// Catching up, a batch's commit runs while the next batch is handled. A batch that fails then is
/// replayed only after that commit: the fault names its event, and every event before it counts
/// once (the first two batches of 32,768 were committed behind the next).
#[tokio::test]
async fn a_fault_after_batches_committed_behind_keeps_every_event_before_it() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    let many: Vec<_> = (0..8192).map(|_| json!({"type": "Count"})).collect();
    for _ in 0..8 {
        let (code, _) = append(url, "hostile-1", json!({ "events": many })).await;
        assert_eq!(code, StatusCode::OK);
    }
    let (_, written) = append(
        url,
        "hostile-1",
        json!({"events": [
            {"type": "Count"}, {"type": "Count"}, {"type": "Fail", "data": {}}, {"type": "Count"},
        ]}),
    )
    .await;
    let bad_position = written["first_position"].as_u64().unwrap() + 2;
    deploy_and_see_the_fault_at(url, bad_position, 8 * 8192 + 2).await;
    server.stop().await;
}

/// Deploys the hostile guest over what is in the log: it faults at `bad_position`, with every
/// event before it folded (`count` of them counted).
async fn deploy_and_see_the_fault_at(url: &str, bad_position: u64, count: u64) {
    assert_eq!(
        deploy(url, "hostile", guest("hostile")).await.0,
        StatusCode::CREATED
    );
    let status = wait_status(url, "hostile", |s| s["status"] == "faulted").await;
    assert_eq!(status["error"]["position"], bad_position, "{status}");
    assert_eq!(status["position"], bad_position - 1, "{status}");
    let (_, counted) = get(url, "/projections/hostile/state/count").await;
    assert_eq!(counted, json!(count));
}

/// Linear memory never shrinks, and a garbage-collected guest's heap grows across batches: an
/// instance past half its memory cap is replaced by a fresh one between batches, so a module that
/// keeps 10 MiB per event (cap 64 MiB) folds twelve such events, one batch each, without a
/// fault.
#[tokio::test]
async fn an_instance_past_half_its_memory_is_renewed_between_batches() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    assert_eq!(
        deploy(url, "hostile", guest("hostile")).await.0,
        StatusCode::CREATED
    );
    for i in 1..=12u64 {
        let (_, appended) = append(
            url,
            "hostile-1",
            json!({"events": [{"type": "Leak", "data": 10}]}),
        )
        .await;
        let position = &appended["last_position"];
        // One batch each: wait until it is folded before the next.
        let (code, count) = get(
            url,
            &format!("/projections/hostile/state/count?min_position={position}"),
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{count}");
        assert_eq!(count, json!(i));
    }
    let (_, status) = get(url, "/projections/hostile").await;
    assert_eq!(status["status"], "running", "{status}");
    // Not even a fault it recovered from (a retry on a fresh instance would hide one).
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let faults: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("lantern_projection_faults_total{") && l.contains("hostile"))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(faults.is_empty(), "{faults:?}");
    server.stop().await;
}
