//! Appends: expected revisions, races, atomicity, idempotent retries.

use std::collections::BTreeSet;

use lantern::store::{ExpectedRevision, NewEvent, Store, StoreError};
use lantern_tests::{TestServer, test_store_options};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{append, get};

fn event(event_type: &str, data: Value) -> Value {
    json!({"type": event_type, "data": data})
}

#[tokio::test]
async fn every_expected_revision_case() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    // (expected_revision, stream state before: None = no stream, Some(r) = last revision r, accepted?)
    let cases: Vec<(Value, Option<u64>, bool)> = vec![
        (json!("any"), None, true),
        (json!("any"), Some(0), true),
        (json!("no_stream"), None, true),
        (json!("no_stream"), Some(0), false),
        (json!("exists"), None, false),
        (json!("exists"), Some(2), true),
        (json!(0), None, false),
        (json!(0), Some(0), true),
        (json!(1), Some(0), false),
        (json!(3), Some(3), true),
        (json!(2), Some(3), false),
    ];
    for (case, (expected, before, accepted)) in cases.into_iter().enumerate() {
        let stream = format!("case-{case}");
        if let Some(last) = before {
            let events: Vec<Value> = (0..=last).map(|i| event("Setup", json!(i))).collect();
            let (status, _) = append(url, &stream, json!({ "events": events })).await;
            assert_eq!(status, StatusCode::OK);
        }
        let (status, body) = append(
            url,
            &stream,
            json!({"expected_revision": expected, "events": [event("Tried", json!({}))]}),
        )
        .await;
        if accepted {
            assert_eq!(status, StatusCode::OK, "case {case}: {body}");
            let revision = before.map_or(0, |r| r + 1);
            assert_eq!(body["first_revision"], json!(revision), "case {case}");
            assert_eq!(body["last_revision"], json!(revision), "case {case}");
            assert_eq!(body["stream"], json!(stream));
        } else {
            assert_eq!(status, StatusCode::CONFLICT, "case {case}: {body}");
            assert_eq!(body["error"]["code"], "wrong_expected_revision");
            assert_eq!(body["error"]["expected"], expected, "case {case}");
            assert_eq!(
                body["error"]["actual_revision"],
                json!(before),
                "case {case}"
            );
            // The rejected append left no trace.
            let (_, read) = get(
                url,
                &format!("/streams/{stream}?direction=backward&limit=1"),
            )
            .await;
            let last = &read["events"][0];
            assert_ne!(last["type"], "Tried", "case {case}");
        }
    }
    // A bad expected revision value is a bad request, not a conflict.
    for bad in [json!(-1), json!("latest"), json!(1.5), json!([1])] {
        let (status, body) = append(
            url,
            "case-bad",
            json!({"expected_revision": bad, "events": [event("T", json!(1))]}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
    server.stop().await;
}

#[tokio::test]
async fn sixteen_racers_on_one_expected_revision_one_wins() {
    let server = TestServer::start().await.unwrap();
    let url = server.url.clone();
    let (status, _) = append(
        &url,
        "race-1",
        json!({"events": [event("Start", json!(0))]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let racers: Vec<_> = (0..16)
        .map(|racer| {
            let url = url.clone();
            tokio::spawn(async move {
                append(
                    &url,
                    "race-1",
                    json!({"expected_revision": 0, "events": [event("Raced", json!({"racer": racer}))]}),
                )
                .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for (racer, task) in racers.into_iter().enumerate() {
        let (status, body) = task.await.unwrap();
        match status {
            StatusCode::OK => winners.push(racer),
            StatusCode::CONFLICT => {
                assert_eq!(body["error"]["code"], "wrong_expected_revision");
                assert_eq!(body["error"]["actual_revision"], 1);
            }
            other => panic!("racer {racer}: unexpected {other}: {body}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one racer wins: {winners:?}");
    let (_, read) = get(&url, "/streams/race-1").await;
    let events = read["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["data"]["racer"], json!(winners[0]));
    server.stop().await;
}

#[tokio::test]
async fn a_multi_event_append_is_atomic_and_contiguous() {
    let server = TestServer::start().await.unwrap();
    let url = server.url.clone();
    // Concurrent multi-event appends to many streams: each lands at consecutive positions.
    let tasks: Vec<_> = (0..8)
        .map(|writer| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for round in 0..10 {
                    let events: Vec<Value> = (0..5)
                        .map(|i| event("Part", json!({"writer": writer, "round": round, "i": i})))
                        .collect();
                    let (status, body) = append(
                        &url,
                        &format!("atomic-{}", round % 3),
                        json!({ "events": events }),
                    )
                    .await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                    outcomes.push(body);
                }
                outcomes
            })
        })
        .collect();
    let mut all_positions = BTreeSet::new();
    for task in tasks {
        for outcome in task.await.unwrap() {
            let first = outcome["first_position"].as_u64().unwrap();
            let last = outcome["last_position"].as_u64().unwrap();
            assert_eq!(last - first, 4);
            assert_eq!(
                outcome["last_revision"].as_u64().unwrap()
                    - outcome["first_revision"].as_u64().unwrap(),
                4
            );
            let (_, page) = get(&url, &format!("/all?from={first}&limit=5")).await;
            let parts = page["events"].as_array().unwrap();
            let writer = &parts[0]["data"]["writer"];
            let round = &parts[0]["data"]["round"];
            for (i, part) in parts.iter().enumerate() {
                assert_eq!(part["position"], json!(first + i as u64));
                assert_eq!(&part["data"]["writer"], writer);
                assert_eq!(&part["data"]["round"], round);
                assert_eq!(part["data"]["i"], json!(i));
            }
            all_positions.extend(first..=last);
        }
    }
    assert_eq!(all_positions.len(), 400);
    assert_eq!(all_positions.last(), Some(&400));
    // An append with one bad event writes none of them.
    let (status, _) = append(
        &url,
        "atomic-0",
        json!({"events": [event("Good", json!(1)), {"type": "", "data": 2}]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, health) = get(&url, "/health").await;
    assert_eq!(health["head"], 400);
    server.stop().await;
}

#[tokio::test]
async fn retries_are_idempotent_and_other_id_reuse_conflicts() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    let ids = [
        "0192f0e5-0000-7000-8000-000000000001",
        "0192f0e5-0000-7000-8000-000000000002",
        "0192f0e5-0000-7000-8000-000000000003",
    ];
    let with_ids = |ids: &[&str]| -> Vec<Value> {
        ids.iter()
            .map(|id| json!({"type": "Paid", "data": {"id": id}, "id": id}))
            .collect()
    };
    append(url, "pay-0", json!({"events": [event("Before", json!(0))]})).await;
    let first = append(
        url,
        "pay-1",
        json!({"expected_revision": "no_stream", "events": with_ids(&ids)}),
    )
    .await;
    assert_eq!(first.0, StatusCode::OK);
    // The same append again, even with its now-stale expected revision: the original answer.
    let retry = append(
        url,
        "pay-1",
        json!({"expected_revision": "no_stream", "events": with_ids(&ids)}),
    )
    .await;
    assert_eq!(retry, first);
    let (_, health) = get(url, "/health").await;
    assert_eq!(health["head"], 4, "the retry wrote nothing");

    let conflicts: Vec<(&str, Vec<Value>)> = vec![
        // Same ids, other stream.
        ("pay-2", with_ids(&ids)),
        // Same ids, other order.
        ("pay-1", with_ids(&[ids[1], ids[0], ids[2]])),
        // One old id among new events.
        (
            "pay-1",
            vec![
                json!({"type": "Paid", "data": 1, "id": ids[0]}),
                json!({"type": "New", "data": 2}),
            ],
        ),
        // A new id beside an old one.
        (
            "pay-1",
            vec![
                json!({"type": "Paid", "data": 1, "id": ids[2]}),
                json!({"type": "Paid", "data": 1, "id": "0192f0e5-0000-7000-8000-0000000000ff"}),
            ],
        ),
        // The same id twice in one append.
        (
            "pay-3",
            vec![
                json!({"type": "A", "data": 1, "id": "0192f0e5-0000-7000-8000-0000000000aa"}),
                json!({"type": "A", "data": 1, "id": "0192f0e5-0000-7000-8000-0000000000aa"}),
            ],
        ),
    ];
    for (case, (stream, events)) in conflicts.into_iter().enumerate() {
        let (status, body) = append(url, stream, json!({ "events": events })).await;
        assert_eq!(status, StatusCode::CONFLICT, "case {case}: {body}");
        assert_eq!(body["error"]["code"], "duplicate_event_id", "case {case}");
    }
    let (_, health) = get(url, "/health").await;
    assert_eq!(health["head"], 4, "no conflicting append wrote anything");
    // A retry of a tail of the original append is still the same append.
    let tail = append(url, "pay-1", json!({"events": with_ids(&ids[1..])})).await;
    assert_eq!(tail.0, StatusCode::OK);
    assert_eq!(tail.1["first_position"], 3);
    assert_eq!(tail.1["last_position"], 4);
    server.stop().await;
}

#[tokio::test]
async fn appends_survive_a_restart_and_ids_stay_unique() {
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::now_v7();
    let events = |n: usize| -> Vec<NewEvent> {
        (0..n)
            .map(|i| NewEvent {
                id: None,
                event_type: "Counted".into(),
                data: bytes::Bytes::from(format!("{{\"i\":{i}}}")),
                metadata: Some(bytes::Bytes::from_static(b"{\"m\":true}")),
            })
            .collect()
    };
    {
        let store = Store::open(dir.path(), test_store_options(true)).unwrap();
        // Enough events to seal several index chunks (64 events each in tests).
        for round in 0..10 {
            store
                .append(
                    &format!("count-{}", round % 2),
                    ExpectedRevision::Any,
                    events(30),
                )
                .await
                .unwrap();
        }
        let mut with_id = events(1);
        with_id[0].id = Some(id);
        store
            .append("ids-1", ExpectedRevision::Any, with_id)
            .await
            .unwrap();
        store.close();
    }
    let store = Store::open(dir.path(), test_store_options(true)).unwrap();
    assert_eq!(store.head(), 301);
    let slice = store
        .read_stream("count-1", Some(0), lantern::store::Direction::Forward, 1000)
        .unwrap();
    assert_eq!(slice.events.len(), 150);
    for (revision, event) in slice.events.iter().enumerate() {
        assert_eq!(event.revision, revision as u64);
        assert_eq!(event.stream, "count-1");
        assert_eq!(
            &event.data[..],
            format!("{{\"i\":{}}}", revision % 30).as_bytes()
        );
        assert_eq!(event.metadata.as_deref(), Some(&b"{\"m\":true}"[..]));
    }
    // The id index came back from disk too.
    let mut reused = events(1);
    reused[0].id = Some(id);
    let error = store
        .append("ids-2", ExpectedRevision::Any, reused)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::DuplicateEventId { id: found } if found == id));
    let next = store
        .append("count-0", ExpectedRevision::Exact(149), events(1))
        .await
        .unwrap();
    assert_eq!(next.first_position, 302);
    assert_eq!(next.first_revision, 150);
}
