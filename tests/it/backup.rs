//! Online backups under load: `lantern backup` while appends run; the archive unpacked into an
//! empty folder serves exactly the log up to the position it names, with the tokens, the
//! projections and their read models rebuilt to the fold.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use lantern_tests::{ServerProcess, guest};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::send;

const ADMIN: &str = "backup-test-admin-secret-0123456789";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lantern-under-test"))
}

fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {ADMIN}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_backup_taken_under_load_restores_exactly_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server =
        ServerProcess::start_with(binary(), &data, &[], &[("LANTERN_ADMIN_TOKEN", ADMIN)]).unwrap();
    let url = server.url.clone();
    let response = client()
        .put(format!("{url}/projections/totals"))
        .body(guest("order_totals"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    // An upcaster (of a type no event has: it changes nothing here) goes into the backup too.
    let response = client()
        .put(format!("{url}/upcasters/ticks"))
        .body(guest("bad_upcaster"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    // Appenders run throughout; every acknowledged event is remembered by position.
    let acknowledged: Arc<Mutex<BTreeMap<u64, (String, Value)>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut appenders = Vec::new();
    for worker in 0..4u64 {
        let (url, acknowledged, stop) = (url.clone(), acknowledged.clone(), stop.clone());
        appenders.push(tokio::spawn(async move {
            let client = client();
            let mut round = 0u64;
            while !stop.is_cancelled() {
                let stream = format!("order-{worker}-{}", round % 10);
                let data: Vec<Value> = (0..5)
                    .map(|i| json!({"customer": format!("c-{}", (round + i) % 13), "amount": round + i + 1}))
                    .collect();
                let events: Vec<Value> = data
                    .iter()
                    .map(|d| json!({"type": "OrderPlaced", "data": d}))
                    .collect();
                let (status, body) = send(
                    client
                        .post(format!("{url}/streams/{stream}"))
                        .json(&json!({ "events": events })),
                )
                .await;
                assert_eq!(status, StatusCode::OK, "{body}");
                let first = body["first_position"].as_u64().unwrap();
                // A snapshot of every other append's last revision; its state names the
                // revision's position, so a restored one can be checked against the log.
                if round.is_multiple_of(2) {
                    let (revision, position) = (&body["last_revision"], &body["last_position"]);
                    let (status, saved) = send(
                        client
                            .put(format!("{url}/streams/{stream}/snapshot"))
                            .json(&json!({"revision": revision, "state": {"position": position}})),
                    )
                    .await;
                    assert_eq!(status, StatusCode::OK, "{saved}");
                }
                let mut acknowledged = acknowledged.lock().unwrap();
                for (i, d) in data.into_iter().enumerate() {
                    acknowledged.insert(first + i as u64, (stream.clone(), d));
                }
                round += 1;
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let archive = dir.path().join("backup.tar");
    let output = tokio::process::Command::new(binary())
        .args(["--url", &url, "--token", ADMIN, "backup"])
        .arg(&archive)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{:?}", output);
    let printed = String::from_utf8(output.stdout).unwrap();
    let position: u64 = printed
        .split("up to position ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the position is printed: {printed}"));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.cancel();
    for appender in appenders {
        appender.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(position > 0);
    assert!(
        acknowledged.keys().last().copied().unwrap() > position,
        "appends went on after the backup's moment"
    );
    server.terminate().unwrap();

    let restored = dir.path().join("restored");
    std::fs::create_dir_all(&restored).unwrap();
    tar::Archive::new(std::fs::File::open(&archive).unwrap())
        .unpack(&restored)
        .unwrap();
    let server = ServerProcess::start(binary(), &restored).unwrap();
    let url = server.url.clone();
    // The tokens came along: without one, nothing but /health.
    let (status, _) = send(reqwest::Client::new().get(format!("{url}/all"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, health) = send(client().get(format!("{url}/health"))).await;
    assert_eq!(health["head"], position, "{health}");
    // Every acknowledged event up to the position, in place; none after it.
    let mut from = 1;
    let mut seen = 0u64;
    loop {
        let (status, page) = send(client().get(format!("{url}/all?from={from}&limit=1000"))).await;
        assert_eq!(status, StatusCode::OK);
        for event in page["events"].as_array().unwrap() {
            let at = event["position"].as_u64().unwrap();
            let (stream, data) = &acknowledged[&at];
            assert_eq!(event["stream"], stream.as_str(), "position {at}");
            assert_eq!(&event["data"], data, "position {at}");
            seen += 1;
        }
        match page["next"].as_u64() {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(seen, position);
    let (_, upcasters) = send(client().get(format!("{url}/upcasters"))).await;
    assert_eq!(upcasters["upcasters"][0]["name"], "ticks", "{upcasters}");
    // Snapshots came along, none of a revision past the backup's position.
    let mut restored_snapshots = 0;
    for worker in 0..4 {
        for round in 0..10 {
            let stream = format!("order-{worker}-{round}");
            let (status, snapshot) =
                send(client().get(format!("{url}/streams/{stream}/snapshot"))).await;
            if status == StatusCode::NOT_FOUND {
                continue;
            }
            assert_eq!(status, StatusCode::OK, "{snapshot}");
            let at = snapshot["state"]["position"].as_u64().unwrap();
            assert!(
                at <= position,
                "{stream}: a snapshot at {at}, past {position}"
            );
            let revision = snapshot["revision"].as_u64().unwrap();
            let (_, page) =
                send(client().get(format!("{url}/streams/{stream}?from={revision}&limit=1"))).await;
            assert_eq!(page["events"][0]["position"], at, "{stream}@{revision}");
            restored_snapshots += 1;
        }
    }
    assert!(restored_snapshots > 0, "the backup holds snapshots");
    // The projection came along and rebuilds its read model to the fold of the restored log.
    let mut expected: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (_, data) in acknowledged.range(..=position).map(|(_, v)| v) {
        let totals = expected
            .entry(format!("customer:{}", data["customer"].as_str().unwrap()))
            .or_default();
        totals.0 += 1;
        totals.1 += data["amount"].as_u64().unwrap();
    }
    let (status, page) = send(client().get(format!(
        "{url}/projections/totals/state?prefix=customer:&min_position={position}&wait_ms=30000"
    )))
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let got: BTreeMap<String, (u64, u64)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["key"].as_str().unwrap().to_owned(),
                (
                    item["value"]["orders"].as_u64().unwrap(),
                    item["value"]["total"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(got, expected);
    let (_, audit) = send(client().get(format!("{url}/audit"))).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["token_bootstrap", "deploy", "deploy_upcaster"],
        "the trail as of the backup"
    );
}
