//! Reading streams and the global log: directions, paging, filters.

use lantern_tests::TestServer;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{append, get};

async fn seed(url: &str) {
    // order-1: 5 events, order-2: 3 events, cart-1: 2 events, interleaved.
    for round in 0..5 {
        for (stream, count) in [("order-1", 5), ("order-2", 3), ("cart-1", 2)] {
            if round < count {
                let event_type = if round % 2 == 0 { "Even" } else { "Odd" };
                let (status, _) = append(
                    url,
                    stream,
                    json!({"events": [{"type": event_type, "data": {"round": round}}]}),
                )
                .await;
                assert_eq!(status, StatusCode::OK);
            }
        }
    }
}

fn revisions(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect()
}

fn positions(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn streams_read_forward_and_backward_in_pages() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    seed(url).await;
    let (status, page) = get(url, "/streams/order-1?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(revisions(&page), [0, 1]);
    assert_eq!(page["next"], 2);
    let (_, page) = get(url, "/streams/order-1?from=2&limit=2").await;
    assert_eq!(revisions(&page), [2, 3]);
    let (_, page) = get(url, "/streams/order-1?from=4&limit=2").await;
    assert_eq!(revisions(&page), [4]);
    assert_eq!(page["next"], Value::Null);
    let (_, page) = get(url, "/streams/order-1?direction=backward&limit=3").await;
    assert_eq!(revisions(&page), [4, 3, 2]);
    assert_eq!(page["next"], 1);
    let (_, page) = get(url, "/streams/order-1?direction=backward&from=1").await;
    assert_eq!(revisions(&page), [1, 0]);
    assert_eq!(page["next"], Value::Null);
    let (_, page) = get(url, "/streams/order-1?from=9").await;
    assert_eq!(revisions(&page), Vec::<u64>::new());
    assert_eq!(page["next"], Value::Null);
    // Every event carries the contract's fields.
    let (_, page) = get(url, "/streams/cart-1").await;
    let event = &page["events"][0];
    for field in [
        "position",
        "stream",
        "revision",
        "id",
        "type",
        "data",
        "metadata",
        "recorded_at",
    ] {
        assert!(event.get(field).is_some(), "missing {field}: {event}");
    }
    assert_eq!(event["stream"], "cart-1");
    assert_eq!(event["metadata"], Value::Null);
    assert!(event["recorded_at"].as_str().unwrap().ends_with('Z'));
    let (status, body) = get(url, "/streams/nobody-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "stream_not_found");
    server.stop().await;
}

#[tokio::test]
async fn streams_are_listed_by_name_in_pages() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    seed(url).await;
    let (status, page) = get(url, "/streams").await;
    assert_eq!(status, StatusCode::OK);
    // seed() interleaves order-1 (5 events), order-2 (3), cart-1 (2): positions 1..=10.
    assert_eq!(
        page,
        json!({"streams": [
            {"name": "cart-1", "last_revision": 1, "last_position": 6},
            {"name": "order-1", "last_revision": 4, "last_position": 10},
            {"name": "order-2", "last_revision": 2, "last_position": 8},
        ], "next": null})
    );
    let (_, page) = get(url, "/streams?prefix=order&limit=1").await;
    assert_eq!(page["streams"][0]["name"], "order-1");
    assert_eq!(page["next"], "order-1");
    let (_, page) = get(url, "/streams?prefix=order&limit=1&after=order-1").await;
    assert_eq!(page["streams"][0]["name"], "order-2");
    assert_eq!(page["next"], Value::Null);
    let (_, page) = get(url, "/streams?prefix=zzz").await;
    assert_eq!(page, json!({"streams": [], "next": null}));
    let (status, body) = get(url, "/streams?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_request");
}

#[tokio::test]
async fn the_global_log_reads_in_order_with_filters() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    let (_, empty) = get(url, "/all").await;
    assert_eq!(empty, json!({"events": [], "next": null, "head": 0}));
    seed(url).await;
    let (_, page) = get(url, "/all").await;
    assert_eq!(positions(&page), (1..=10).collect::<Vec<_>>());
    assert_eq!(page["head"], 10);
    assert_eq!(page["next"], Value::Null);
    let (_, page) = get(url, "/all?from=3&limit=4").await;
    assert_eq!(positions(&page), [3, 4, 5, 6]);
    assert_eq!(page["next"], 7);
    let (_, page) = get(url, "/all?category=order").await;
    let streams: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream"].as_str().unwrap())
        .collect();
    assert_eq!(streams.len(), 8);
    assert!(streams.iter().all(|s| s.starts_with("order-")));
    let (_, page) = get(url, "/all?stream=order-2&types=Odd").await;
    assert_eq!(revisions(&page), [1]);
    let (_, page) = get(url, "/all?types=Odd,Nothing&category=cart").await;
    assert_eq!(revisions(&page), [1]);
    assert_eq!(page["events"][0]["stream"], "cart-1");
    server.stop().await;
}

#[tokio::test]
async fn data_and_metadata_come_back_exactly_as_sent() {
    let server = TestServer::start().await.unwrap();
    let body = r#"{"events": [{"type": "Odd\u00e9", "data": {"b": [1, 2.50, "x\ny"], "a": null},
        "metadata": {"correlation_id": "k-1"}}, {"type": "Scalar", "data": "just a string"}]}"#;
    let response = reqwest::Client::new()
        .post(format!("{}/streams/exact-1", server.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = reqwest::get(format!("{}/streams/exact-1", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Byte-exact: key order, number spelling and spacing are kept.
    assert!(
        text.contains(r#""data":{"b": [1, 2.50, "x\ny"], "a": null}"#),
        "{text}"
    );
    assert!(
        text.contains(r#""metadata":{"correlation_id": "k-1"}"#),
        "{text}"
    );
    assert!(text.contains(r#""data":"just a string""#), "{text}");
    assert!(text.contains(r#""type":"Oddé""#), "{text}");
    server.stop().await;
}

mod model {
    //! Stream reads checked against a model: the global log filtered by stream.

    use bytes::Bytes;
    use lantern::store::{Direction, ExpectedRevision, Filter, NewEvent, Store};
    use lantern_tests::test_store_options;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Whatever mix of append sizes wrote them, and whether they sit in the in-memory tail or
        /// in the index's runs, a stream's pages equal its events in the log, in both directions.
        #[test]
        fn stream_pages_match_the_log(
            appends in proptest::collection::vec((0usize..4, 1usize..150), 1..40),
            reads in proptest::collection::vec((0usize..4, 0u64..400, any::<bool>(), 1usize..120), 1..20),
            reopen in any::<bool>(),
        ) {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let mut store = Store::open(dir.path(), test_store_options(false)).unwrap();
                for (i, (stream, size)) in appends.iter().enumerate() {
                    let events = (0..*size)
                        .map(|k| NewEvent {
                            id: None,
                            event_type: "T".into(),
                            data: Bytes::from(format!("[{i},{k}]")),
                            metadata: None,
                        })
                        .collect();
                    store.append(&format!("s-{stream}"), ExpectedRevision::Any, events).await.unwrap();
                }
                if reopen {
                    store.close();
                    drop(store);
                    store = Store::open(dir.path(), test_store_options(false)).unwrap();
                }
                for (stream, from, backward, limit) in reads {
                    let name = format!("s-{stream}");
                    let filter = Filter { stream: Some(name.clone()), ..Filter::default() };
                    let log = store.read_all(1, usize::MAX, &filter).unwrap().events;
                    let direction = if backward { Direction::Backward } else { Direction::Forward };
                    let read = store.read_stream(&name, Some(from), direction, limit);
                    if log.is_empty() {
                        prop_assert!(read.is_err());
                        continue;
                    }
                    let read = read.unwrap();
                    let mut expected: Vec<_> = if backward {
                        log.iter().rev().filter(|e| e.revision <= from).cloned().collect()
                    } else {
                        log.iter().filter(|e| e.revision >= from).cloned().collect()
                    };
                    let next = expected.get(limit).map(|e| e.revision);
                    expected.truncate(limit);
                    prop_assert_eq!(read.events, expected);
                    prop_assert_eq!(read.next, next);
                }
                Ok(())
            })?;
        }

        /// Paging through `list_streams` by `next`, for any prefix and page size, gives every
        /// stream with that prefix once, in byte order, with the last revision and position its
        /// appends were answered with, whether the stream sits in the tail, in redb, or both.
        #[test]
        fn stream_list_pages_match_the_appends(
            appends in proptest::collection::vec((0usize..7, 1usize..90), 1..40),
            prefix in 0usize..5,
            start_after in proptest::option::of(0usize..7),
            limit in 1usize..5,
            reopen in any::<bool>(),
        ) {
            const NAMES: [&str; 7] = ["a", "a-1", "ab-2", "a-10", "b-1", "b", "\u{e9}t\u{e9}-3"];
            const PREFIXES: [&str; 5] = ["", "a", "a-1", "b", "z"];
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let mut store = Store::open(dir.path(), test_store_options(false)).unwrap();
                let mut model = std::collections::BTreeMap::new();
                for (stream, size) in &appends {
                    let events = (0..*size)
                        .map(|_| NewEvent {
                            id: None,
                            event_type: "T".into(),
                            data: Bytes::from_static(b"0"),
                            metadata: None,
                        })
                        .collect();
                    let outcome = store.append(NAMES[*stream], ExpectedRevision::Any, events).await.unwrap();
                    model.insert(NAMES[*stream].to_owned(), (outcome.last_revision, outcome.last_position));
                }
                if reopen {
                    store.close();
                    drop(store);
                    store = Store::open(dir.path(), test_store_options(false)).unwrap();
                }
                let prefix = PREFIXES[prefix];
                let mut after = start_after.map(|i| NAMES[i].to_owned());
                let expected: Vec<(String, u64, u64)> = model
                    .iter()
                    .filter(|(name, _)| name.starts_with(prefix) && after.as_ref().is_none_or(|a| *name > a))
                    .map(|(name, (revision, position))| (name.clone(), *revision, *position))
                    .collect();
                let mut listed = Vec::new();
                loop {
                    let (page, more) = store.list_streams(prefix, after.as_deref(), limit).unwrap();
                    prop_assert!(page.len() <= limit);
                    listed.extend(page.iter().map(|s| (s.name.clone(), s.last_revision, s.last_position)));
                    if !more {
                        break;
                    }
                    prop_assert_eq!(page.len(), limit);
                    after = page.last().map(|s| s.name.clone());
                }
                prop_assert_eq!(listed, expected);
                Ok(())
            })?;
        }
    }
}

/// Events larger than a read block come back whole from a stream read, alone in their run or not.
#[tokio::test]
async fn large_events_read_back_whole_from_streams() {
    let server = TestServer::start().await.unwrap();
    let url = server.url.as_str();
    for (i, size) in [5_000usize, 70_000, 3_000_000].into_iter().enumerate() {
        let pad = "y".repeat(size);
        let (status, body) = append(
            url,
            &format!("big-{i}"),
            json!({"events": [{"type": "Big", "data": {"pad": pad}}]}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, page) = get(url, &format!("/streams/big-{i}")).await;
        assert_eq!(status, StatusCode::OK, "{size}: {page}");
        assert_eq!(
            page["events"][0]["data"]["pad"].as_str().unwrap().len(),
            size
        );
    }
    server.stop().await;
}
