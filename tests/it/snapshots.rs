//! Snapshots (api.md v2 "Snapshots"): saved at an existing revision, newest kept, durable, and
//! read together with the events after them.

use std::path::Path;

use lantern_tests::{ServerProcess, TestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{append, get, send};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lantern-under-test"))
}

async fn put_snapshot(url: &str, stream: &str, body: Value) -> (StatusCode, Value) {
    send(
        reqwest::Client::new()
            .put(format!("{url}/streams/{stream}/snapshot"))
            .json(&body),
    )
    .await
}

async fn append_counts(url: &str, stream: &str, counts: impl IntoIterator<Item = i64>) {
    let events: Vec<Value> = counts
        .into_iter()
        .map(|n| json!({"type": "Added", "data": {"n": n}}))
        .collect();
    let (status, body) = append(url, stream, json!({"events": events})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_snapshot_is_checked_against_its_stream_and_the_newest_is_kept() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    append_counts(url, "cart-1", 1..=5).await; // revisions 0..=4

    // A revision the stream does not have, or a stream that does not exist: 400.
    for (stream, revision) in [("cart-1", 5), ("cart-1", 1000), ("cart-9", 0)] {
        let (status, body) =
            put_snapshot(url, stream, json!({"revision": revision, "state": {}})).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{stream}@{revision}: {body}"
        );
        assert_eq!(body["error"]["code"], "invalid_request");
    }
    // Malformed bodies: 400, and nothing stored.
    for bad in [
        json!({"revision": 1}),
        json!({"state": 1}),
        json!({"revision": -1, "state": 1}),
        json!({"revision": "1", "state": 1}),
    ] {
        let (status, body) = put_snapshot(url, "cart-1", bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, body) = get(url, "/streams/cart-1/snapshot").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "snapshot_not_found");
    let (status, _) = get(url, "/streams/bad%2Fname/snapshot").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The state comes back as sent, byte for byte.
    let state = r#"{"total": 6,  "items":["a","b"], "z":null}"#;
    let response = reqwest::Client::new()
        .put(format!("{url}/streams/cart-1/snapshot"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"revision": 2, "state": {state}}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let saved: Value = response.json().await.unwrap();
    assert_eq!(
        saved,
        json!({"stream": "cart-1", "revision": 2, "stored": true, "current_revision": 2})
    );
    let text = reqwest::get(format!("{url}/streams/cart-1/snapshot"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(&format!(r#""state":{state}"#)), "{text}");
    let (_, snapshot) = get(url, "/streams/cart-1/snapshot").await;
    assert_eq!(snapshot["revision"], 2);
    let recorded = snapshot["recorded_at"].as_str().unwrap();
    humantime::parse_rfc3339(recorded).expect("recorded_at is RFC 3339");

    // An older one is ignored; a later one replaces it; the same revision again replaces it.
    let (status, saved) = put_snapshot(url, "cart-1", json!({"revision": 1, "state": "old"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(saved["stored"], false);
    assert_eq!(saved["current_revision"], 2);
    assert_eq!(get(url, "/streams/cart-1/snapshot").await.1["revision"], 2);
    let (_, saved) = put_snapshot(url, "cart-1", json!({"revision": 4, "state": "four"})).await;
    assert_eq!(saved["stored"], true);
    let (_, saved) = put_snapshot(url, "cart-1", json!({"revision": 4, "state": "four'"})).await;
    assert_eq!(saved["stored"], true);
    let (_, snapshot) = get(url, "/streams/cart-1/snapshot").await;
    assert_eq!(
        (snapshot["revision"].clone(), snapshot["state"].clone()),
        (json!(4), json!("four'"))
    );
    server.stop().await;
}

#[tokio::test]
async fn from_snapshot_reads_the_snapshot_and_the_events_after_it() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    append_counts(url, "cart-1", 0..10).await; // revisions 0..=9

    // Without a snapshot: null, and the stream from revision 0.
    let (status, page) = get(url, "/streams/cart-1?from=snapshot&limit=4").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["snapshot"], Value::Null);
    assert_eq!(revisions(&page), [0, 1, 2, 3]);
    assert_eq!(page["next"], 4);

    put_snapshot(url, "cart-1", json!({"revision": 6, "state": {"sum": 21}})).await;
    let (_, page) = get(url, "/streams/cart-1?from=snapshot&limit=2").await;
    assert_eq!(page["snapshot"]["revision"], 6);
    assert_eq!(page["snapshot"]["state"], json!({"sum": 21}));
    assert_eq!(revisions(&page), [7, 8]);
    assert_eq!(page["next"], 9);
    // The next page is an ordinary read from `next`.
    let (_, rest) = get(url, "/streams/cart-1?from=9").await;
    assert_eq!(revisions(&rest), [9]);
    assert!(rest.get("snapshot").is_none(), "{rest}");

    // A snapshot at the last revision: no events after it.
    put_snapshot(url, "cart-1", json!({"revision": 9, "state": {"sum": 45}})).await;
    let (_, page) = get(url, "/streams/cart-1?from=snapshot").await;
    assert_eq!(page["snapshot"]["revision"], 9);
    assert_eq!(revisions(&page), Vec::<u64>::new());
    assert_eq!(page["next"], Value::Null);

    let (status, body) = get(url, "/streams/cart-404?from=snapshot").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "stream_not_found");
    for bad in ["from=snapshot&direction=backward", "from=later", "from=-1"] {
        let (status, body) = get(url, &format!("/streams/cart-1?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
    server.stop().await;
}

fn revisions(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect()
}

/// The pattern docs/snapshots.md tells clients to follow (load with `from=snapshot`, decide,
/// append with `expected_revision`, snapshot every N events) gives the same state as folding the
/// whole stream, which the test computes from what it appended.
#[tokio::test]
async fn the_documented_client_pattern_keeps_state_equal_to_a_full_fold() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    const EVERY: u64 = 7;
    let mut sum_of_everything_added = 0i64;
    for command in 0..40i64 {
        // Load.
        let (status, page) = get(url, "/streams/account-1?from=snapshot&limit=10000").await;
        let (mut sum, mut revision) = match status {
            StatusCode::NOT_FOUND => (0, None),
            _ => match &page["snapshot"] {
                Value::Null => (0, None),
                s => (s["state"]["sum"].as_i64().unwrap(), s["revision"].as_u64()),
            },
        };
        for event in page["events"].as_array().into_iter().flatten() {
            sum += event["data"]["n"].as_i64().unwrap();
            revision = event["revision"].as_u64();
        }
        assert_eq!(
            sum, sum_of_everything_added,
            "state loaded for command {command}"
        );
        // Decide and append, guarded by the revision loaded.
        let n = command * 3 - 20;
        let expected = revision.map_or(json!("no_stream"), |r| json!(r));
        let (status, appended) = append(
            url,
            "account-1",
            json!({"expected_revision": expected, "events": [{"type": "Added", "data": {"n": n}}]}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{appended}");
        sum += n;
        sum_of_everything_added += n;
        let last = appended["last_revision"].as_u64().unwrap();
        if (last + 1) % EVERY == 0 {
            let (status, saved) = put_snapshot(
                url,
                "account-1",
                json!({"revision": last, "state": {"sum": sum}}),
            )
            .await;
            assert_eq!(
                (status, saved["stored"].clone()),
                (StatusCode::OK, json!(true))
            );
        }
    }
    let (_, page) = get(url, "/streams/account-1?from=snapshot").await;
    assert_eq!(page["snapshot"]["revision"], 34);
    assert_eq!(revisions(&page), (35..40).collect::<Vec<_>>());
    server.stop().await;
}

/// A snapshot is in its file when it is answered: SIGKILL right after the answer loses nothing.
#[tokio::test]
async fn a_saved_snapshot_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(binary(), dir.path()).unwrap();
    append_counts(&server.url, "cart-1", 0..3).await;
    for revision in 0..3 {
        let (status, _) = put_snapshot(
            &server.url,
            "cart-1",
            json!({"revision": revision, "state": {"at": revision}}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    server.kill().unwrap();
    let server = ServerProcess::start(binary(), dir.path()).unwrap();
    let (status, snapshot) = get(&server.url, "/streams/cart-1/snapshot").await;
    assert_eq!(status, StatusCode::OK, "{snapshot}");
    assert_eq!(snapshot["state"], json!({"at": 2}));
}

/// A store never holds a snapshot of a revision its log does not have: a follower's copy of one
/// past its head is refused.
#[tokio::test]
async fn a_copied_snapshot_past_the_log_is_refused() {
    use lantern::store::{ExpectedRevision, NewEvent, Snapshot, Store, StoreError};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), lantern_tests::test_store_options(false)).unwrap();
    let event = NewEvent {
        id: None,
        event_type: "T".into(),
        data: bytes::Bytes::from_static(b"{}"),
        metadata: None,
    };
    store
        .append("s-1", ExpectedRevision::Any, vec![event])
        .await
        .unwrap();
    let snapshot = |position| Snapshot {
        stream: "s-1".into(),
        revision: 0,
        position,
        recorded_at_micros: 1,
        change: 1,
        state: bytes::Bytes::from_static(b"1"),
    };
    let refused = store.copy_snapshot(&snapshot(2));
    assert!(
        matches!(refused, Err(StoreError::Replication(_))),
        "{refused:?}"
    );
    assert_eq!(store.snapshot("s-1").unwrap(), None);
    store.copy_snapshot(&snapshot(1)).unwrap();
    assert_eq!(store.snapshot("s-1").unwrap(), Some(snapshot(1)));
    store.close();
}

/// A backup's snapshots file holds the snapshots of revisions up to the backup's position only.
#[tokio::test]
async fn a_backup_copy_leaves_out_snapshots_past_its_position() {
    use lantern::store::{ExpectedRevision, NewEvent, Store};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &dir.path().join("a"),
        lantern_tests::test_store_options(false),
    )
    .unwrap();
    for stream in ["a-1", "b-1"] {
        let event = NewEvent {
            id: None,
            event_type: "T".into(),
            data: bytes::Bytes::from_static(b"{}"),
            metadata: None,
        };
        store
            .append(stream, ExpectedRevision::Any, vec![event])
            .await
            .unwrap();
        store
            .save_snapshot(stream, 0, bytes::Bytes::from(format!("\"{stream}\"")))
            .unwrap();
    }
    let copy = dir.path().join("b");
    std::fs::create_dir_all(&copy).unwrap();
    assert_eq!(
        store
            .copy_snapshots_to(&copy.join("snapshots.redb"), 1)
            .unwrap(),
        1
    );
    store.close();
    let restored = Store::open(&copy, lantern_tests::test_store_options(false)).unwrap();
    assert_eq!(
        &restored.snapshot("a-1").unwrap().unwrap().state[..],
        b"\"a-1\""
    );
    assert_eq!(restored.snapshot("b-1").unwrap(), None);
    restored.close();
}
