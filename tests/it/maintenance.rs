//! `lantern check` and `lantern repair` on a real data folder: a healthy store passes; a flipped
//! byte in the middle of the log is found, stops the server, and is repaired only when asked,
//! after which the projections rebuild to the fold of what is left.

use std::collections::BTreeMap;
use std::path::Path;

use lantern_tests::{ServerProcess, guest};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::send;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lantern-under-test"))
}

fn lantern(args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(binary())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// The customers' totals the test expects from the orders it appended up to `last` (position).
fn fold(orders: &[(u64, String, u64)], last: u64) -> BTreeMap<String, Value> {
    let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (position, customer, amount) in orders {
        if *position <= last {
            let entry = totals.entry(format!("customer:{customer}")).or_default();
            entry.0 += 1;
            entry.1 += amount;
        }
    }
    totals
        .into_iter()
        .map(|(k, (orders, total))| (k, json!({"orders": orders, "total": total})))
        .collect()
}

async fn read_model(url: &str, min_position: u64) -> BTreeMap<String, Value> {
    let (status, page) = send(reqwest::Client::new().get(format!(
        "{url}/projections/totals/state?prefix=customer:&limit=10000&min_position={min_position}&wait_ms=30000"
    )))
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["key"].as_str().unwrap().to_owned(),
                item["value"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn check_finds_mid_log_damage_and_repair_cuts_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let server = ServerProcess::start(binary(), &data).unwrap();
    let client = reqwest::Client::new();
    let response = client
        .put(format!("{}/projections/totals", server.url))
        .body(guest("order_totals"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let mut orders = Vec::new();
    for append in 0..200u64 {
        let events: Vec<Value> = (0..5)
            .map(|i| {
                json!({"type": "OrderPlaced", "data": {"customer": format!("c-{}", (append + i) % 7), "amount": append + i}})
            })
            .collect();
        let (status, body) = send(
            client
                .post(format!("{}/streams/order-{append}", server.url))
                .json(&json!({ "events": events })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let first = body["first_position"].as_u64().unwrap();
        for i in 0..5 {
            orders.push((first + i, format!("c-{}", (append + i) % 7), append + i));
        }
    }
    assert_eq!(read_model(&server.url, 1000).await, fold(&orders, 1000));
    // A snapshot at each end of the log.
    for stream in ["order-0", "order-199"] {
        let (status, body) = send(
            client
                .put(format!("{}/streams/{stream}/snapshot", server.url))
                .json(&json!({"revision": 4, "state": {"stream": stream}})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    server.terminate().unwrap();

    let (ok, out, err) = lantern(&["check", "--data", data_arg]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("log: 1000 events in 200 appends over 200 streams"),
        "{out}"
    );
    assert!(
        out.contains("index entries and 2 snapshots checked against it"),
        "{out}"
    );
    assert!(
        out.contains("totals v1 (serving): read model at position 1000 of 1000"),
        "{out}"
    );
    assert!(out.contains("all is well"), "{out}");

    // One flipped byte a third of the way in, and the index gone (as after a crash).
    let log_path = data.join("events.log");
    let mut log = std::fs::read(&log_path).unwrap();
    let at = log.len() / 3;
    log[at] ^= 0x01;
    std::fs::write(&log_path, &log).unwrap();
    std::fs::remove_file(data.join("index.redb")).unwrap();
    let (ok, out, _) = lantern(&["check", "--data", data_arg]);
    assert!(!ok, "{out}");
    assert!(out.contains("PROBLEM: the log is damaged at byte"), "{out}");
    assert!(out.contains("PROBLEMS FOUND"), "{out}");
    let damaged: u64 = out
        .split("where position ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .expect("the damaged position is named");
    assert!(
        ServerProcess::start(binary(), &data).is_err(),
        "the server refuses to start"
    );

    // Repair says what it would discard and changes nothing without --yes.
    let position = damaged.to_string();
    let (ok, out, err) = lantern(&["repair", "--data", data_arg, "--truncate-at", &position]);
    assert!(ok, "{err}");
    assert!(out.contains("nothing changed"), "{out}");
    assert!(
        out.contains("past the damage") && out.contains("to 1000)"),
        "the valid records after the damage are counted: {out}"
    );
    assert!(
        out.contains("read model of totals v1 reflects discarded events"),
        "{out}"
    );
    assert!(
        out.contains("snapshots of discarded revisions, which go too: order-199@4\n"),
        "{out}"
    );
    assert_eq!(std::fs::read(&log_path).unwrap(), log);
    let (ok, out, err) = lantern(&[
        "repair",
        "--data",
        data_arg,
        "--truncate-at",
        &position,
        "--yes",
    ]);
    assert!(ok, "{err}");
    // The damage starts an append (the scan stops at the first bad record): the cut is right there.
    let kept = damaged - 1;
    assert!(
        out.contains(&format!("the log ends at position {kept}")),
        "{out}"
    );
    let (ok, out, _) = lantern(&["check", "--data", data_arg]);
    assert!(ok, "{out}");

    assert!(out.contains("and 1 snapshots checked"), "{out}");

    let server = ServerProcess::start(binary(), &data).unwrap();
    let (_, health) = send(client.get(format!("{}/health", server.url))).await;
    assert_eq!(health["head"], kept);
    let (status, _) = send(client.get(format!("{}/streams/order-0/snapshot", server.url))).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the snapshot of a kept revision stays"
    );
    let (status, _) = send(client.get(format!("{}/streams/order-199/snapshot", server.url))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(read_model(&server.url, kept).await, fold(&orders, kept));
}
