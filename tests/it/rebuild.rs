//! Live rebuilds: new versions and rebuilds build beside the serving generation; queries always
//! answer from one whole generation; positions never go back.

use std::collections::BTreeMap;
use std::time::Duration;

use lantern_tests::{TestServer, guest, variant};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::projections::{deploy, wait_status};
use super::{append, get, send};

/// The events the test appended to one customer: (position, sign, amount).
type History = BTreeMap<u64, (i64, i64)>;

fn fold(history: &History, position: u64) -> Value {
    let (orders, total) = history
        .range(..=position)
        .fold((0, 0), |(o, t), (_, (sign, amount))| {
            (o + sign, t + sign * amount)
        });
    json!({"orders": orders, "total": total})
}

async fn place(url: &str, history: &mut History, i: i64) {
    let (event_type, sign) = if i % 5 == 4 {
        ("OrderCancelled", -1)
    } else {
        ("OrderPlaced", 1)
    };
    let amount = 10 + i % 7;
    let (status, answer) = append(
        url,
        &format!("order-{}", i % 13),
        json!({"events": [{"type": event_type, "data": {"customer": "c-1", "amount": amount}}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    history.insert(answer["first_position"].as_u64().unwrap(), (sign, amount));
}

/// Reads customer c-1 and checks it against the fold at the answer's position.
async fn check_answer(url: &str, history: &History, last_position: &mut u64) {
    let response = reqwest::get(format!("{url}/projections/order-totals/state/customer:c-1"))
        .await
        .unwrap();
    if response.status() == StatusCode::NOT_FOUND {
        assert_eq!(*last_position, 0, "the key never disappears once there");
        return;
    }
    assert_eq!(response.status(), StatusCode::OK);
    let position: u64 = response.headers()["lantern-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let value: Value = response.json().await.unwrap();
    assert!(
        position >= *last_position,
        "position went back from {last_position} to {position}"
    );
    assert_eq!(
        value,
        fold(history, position),
        "answer at position {position}"
    );
    *last_position = position;
}

#[tokio::test]
async fn queries_during_rebuilds_always_match_one_whole_generation() {
    let server = TestServer::start().await.unwrap();
    let url = server.url.clone();
    let mut history = History::new();
    // Enough history that a rebuild takes a while; noise from another category too.
    for chunk in 0..20 {
        let events: Vec<Value> = (0..1000)
            .map(|i| json!({"type": "Noise", "data": {"i": i}}))
            .collect();
        append(&url, &format!("noise-{chunk}"), json!({ "events": events })).await;
    }
    for i in 0..50 {
        place(&url, &mut history, i).await;
    }
    assert_eq!(
        deploy(&url, "order-totals", guest("order_totals")).await.0,
        StatusCode::CREATED
    );
    let mut last_position = 0;
    for round in 0..3 {
        let (status, body) = if round == 1 {
            send(reqwest::Client::new().post(format!("{url}/projections/order-totals/rebuild")))
                .await
        } else {
            deploy(
                &url,
                "order-totals",
                variant(&guest("order_totals"), &format!("v{round}")),
            )
            .await
        };
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["status"], "rebuilding");
        let version = body["version"].as_u64().unwrap();
        // Appends and queries throughout the rebuild, until the new version serves.
        let mut i = 1000 * (round + 1);
        loop {
            place(&url, &mut history, i).await;
            i += 1;
            check_answer(&url, &history, &mut last_position).await;
            let (_, status) = get(&url, "/projections/order-totals").await;
            if status["version"] == version && status["rebuild"].is_null() {
                break;
            }
            assert_ne!(status["rebuild"]["status"], "faulted", "{status}");
        }
        for _ in 0..20 {
            place(&url, &mut history, i).await;
            i += 1;
            check_answer(&url, &history, &mut last_position).await;
        }
    }
    let (_, status) = get(&url, "/projections/order-totals").await;
    assert_eq!(status["version"], 3);
    server.stop().await;
}

#[tokio::test]
async fn a_new_deploy_supersedes_a_running_rebuild() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    for chunk in 0..30 {
        let events: Vec<Value> = (0..1000)
            .map(|i| json!({"type": "OrderPlaced", "data": {"customer": format!("c-{}", i % 50), "amount": 1}}))
            .collect();
        append(url, &format!("order-{chunk}"), json!({ "events": events })).await;
    }
    assert_eq!(
        deploy(url, "order-totals", guest("order_totals")).await.0,
        StatusCode::CREATED
    );
    wait_status(url, "order-totals", |s| s["status"] == "running").await;
    let (status, body) = deploy(url, "order-totals", variant(&guest("order_totals"), "a")).await;
    assert_eq!(
        (status, body["version"].clone()),
        (StatusCode::ACCEPTED, json!(2))
    );
    let (status, body) = deploy(url, "order-totals", variant(&guest("order_totals"), "b")).await;
    assert_eq!(
        (status, body["version"].clone()),
        (StatusCode::ACCEPTED, json!(3))
    );
    let status = wait_status(url, "order-totals", |s| {
        s["version"] == 3 && s["rebuild"].is_null()
    })
    .await;
    assert_eq!(status["status"], "running");
    let (_, value) = get(url, "/projections/order-totals/state/customer:c-7").await;
    assert_eq!(value, json!({"orders": 600, "total": 600}));
    // Only the serving generation's file is left: the old one and the superseded rebuild's are
    // deleted.
    let files: Vec<_> =
        std::fs::read_dir(server.dir().join("projections/read-models/order-totals"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
    assert_eq!(files, ["gen-3.redb"]);
    server.stop().await;
}

#[tokio::test]
async fn a_faulting_new_version_is_abandoned_and_the_current_one_serves() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    append(
        url,
        "order-1",
        json!({"events": [{"type": "OrderPlaced", "data": {"customer": "c-1", "amount": 5}}]}),
    )
    .await;
    let (_, bad) = append(
        url,
        "hostile-1",
        json!({"events": [{"type": "Fail", "data": {}}]}),
    )
    .await;
    assert_eq!(
        deploy(url, "order-totals", guest("order_totals")).await.0,
        StatusCode::CREATED
    );
    // A "new version" that fails on the log's second event.
    let (status, _) = deploy(url, "order-totals", guest("hostile")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let status = wait_status(url, "order-totals", |s| s["rebuild"]["status"] == "faulted").await;
    assert_eq!(status["version"], 1, "{status}");
    assert_eq!(status["rebuild"]["version"], 2);
    assert_eq!(
        status["rebuild"]["error"]["position"],
        bad["first_position"]
    );
    assert!(
        status["rebuild"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("told to fail")
    );
    assert_eq!(status["status"], "running");
    // The current version keeps serving and following.
    let (_, placed) = append(
        url,
        "order-2",
        json!({"events": [{"type": "OrderPlaced", "data": {"customer": "c-1", "amount": 7}}]}),
    )
    .await;
    let (code, value) = get(
        url,
        &format!(
            "/projections/order-totals/state/customer:c-1?min_position={}",
            placed["last_position"]
        ),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(value, json!({"orders": 2, "total": 12}));
    server.stop().await;
}

#[tokio::test]
async fn the_watched_folder_deploys_on_change_and_ignores_broken_files() {
    let server = TestServer::start().await.unwrap();
    let url = server.url.clone();
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path().to_owned();
    // One module there before the watcher starts.
    std::fs::write(dir.join("carts.wasm"), guest("carts")).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn(lantern::watcher::watch(
        server.projections.clone(),
        dir.clone(),
        stop.clone(),
    ));
    wait_status(&url, "carts", |s| s["status"] == "running").await;

    // Written by rename, as editors and build tools do.
    let module = guest("order_totals");
    std::fs::write(dir.join(".order-totals.tmp"), &module).unwrap();
    std::fs::rename(dir.join(".order-totals.tmp"), dir.join("order-totals.wasm")).unwrap();
    wait_status(&url, "order-totals", |s| s["status"] == "running").await;

    // Written slowly in two halves: never deployed half-written.
    let v2 = variant(&module, "slow");
    let half = v2.len() / 2;
    std::fs::write(dir.join("order-totals.wasm"), &v2[..half]).unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("order-totals.wasm"))
        .unwrap();
    std::io::Write::write_all(&mut file, &v2[half..]).unwrap();
    drop(file);
    let status = wait_status(&url, "order-totals", |s| {
        s["version"] == 2 && s["rebuild"].is_null()
    })
    .await;
    assert_eq!(status["status"], "running");

    // An invalid file is refused and changes nothing; a broken new version leaves the old one.
    std::fs::write(dir.join("broken.wasm"), b"not a module").unwrap();
    std::fs::write(dir.join("order-totals.wasm"), b"also not a module").unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (code, _) = get(&url, "/projections/broken").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (_, status) = get(&url, "/projections/order-totals").await;
    assert_eq!(status["version"], 2);
    assert_eq!(status["rebuild"], Value::Null);

    // NAME.upcaster.wasm is an upcaster.
    std::fs::write(dir.join("ticks.upcaster.wasm"), guest("bad_upcaster")).unwrap();
    let mut found = false;
    for _ in 0..100 {
        if get(&url, "/upcasters/ticks").await.0 == StatusCode::OK {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "the upcaster file was deployed as an upcaster");
    assert_eq!(
        get(&url, "/projections/ticks.upcaster").await.0,
        StatusCode::NOT_FOUND
    );

    // Removal deletes nothing.
    std::fs::remove_file(dir.join("carts.wasm")).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, _) = get(&url, "/projections/carts").await;
    assert_eq!(code, StatusCode::OK);
    stop.cancel();
    watcher.await.unwrap().unwrap();
    server.stop().await;
}

/// A swap that cannot be made (here: the registry cannot be saved, through a fail point that only
/// touches projections named `failpoint-*`) leaves the current version serving, shows why, keeps
/// watching the new version for faults, and is tried again until it succeeds.
#[tokio::test]
async fn a_swap_that_fails_is_retried_and_later_faults_stay_visible() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    let (_, placed) = append(
        url,
        "order-1",
        json!({"events": [{"type": "OrderPlaced", "data": {"customer": "c-1", "amount": 5}}]}),
    )
    .await;
    for name in ["failpoint-a", "failpoint-b"] {
        assert_eq!(
            deploy(url, name, guest("order_totals")).await.0,
            StatusCode::CREATED
        );
        wait_status(url, name, |s| s["status"] == "running").await;
    }
    fail::cfg("projection-promote-save", "return").unwrap();

    // a: the new version cannot be swapped in; it says why, and v1 serves.
    let (status, _) = deploy(url, "failpoint-a", variant(&guest("order_totals"), "v2")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let status = wait_status(url, "failpoint-a", |s| {
        s["rebuild"]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not be swapped in yet"))
    })
    .await;
    assert_eq!(status["version"], 1, "{status}");
    let (code, value) = get(
        url,
        &format!(
            "/projections/failpoint-a/state/customer:c-1?min_position={}",
            placed["last_position"]
        ),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(value, json!({"orders": 1, "total": 5}));

    // b: while its swap keeps failing, the new version faults: it is abandoned and shown.
    let (status, _) = deploy(url, "failpoint-b", guest("hostile")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_status(url, "failpoint-b", |s| {
        s["rebuild"]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not be swapped in yet"))
    })
    .await;
    let (_, bad) = append(
        url,
        "hostile-1",
        json!({"events": [{"type": "Fail", "data": {}}]}),
    )
    .await;
    let status = wait_status(url, "failpoint-b", |s| s["rebuild"]["status"] == "faulted").await;
    assert_eq!(status["version"], 1, "{status}");
    assert_eq!(
        status["rebuild"]["error"]["position"],
        bad["first_position"]
    );

    // The fault goes away: a's swap is made on the next attempt.
    fail::remove("projection-promote-save");
    let status = wait_status(url, "failpoint-a", |s| s["version"] == 2).await;
    assert_eq!(status["rebuild"], Value::Null, "{status}");
    server.stop().await;
}
