//! Subscriptions: catch-up then live, exactly once and in order, in process and over HTTP.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use lantern::store::{EventRef, ExpectedRevision, Filter, NewEvent, RecordedEvent, Store};
use lantern::subscription::{Batch, ReadError, Subscription};
use lantern::upcast::UpcastError;
use lantern_tests::{TestServer, test_store_options};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::append;

fn new_event(event_type: &str, i: usize) -> NewEvent {
    NewEvent {
        id: None,
        event_type: event_type.into(),
        data: Bytes::from(format!("{{\"i\":{i}}}")),
        metadata: None,
    }
}

/// Appends `count` single- or multi-event appends over a few streams and two categories.
async fn write(store: &Store, offset: usize, count: usize) {
    for i in offset..offset + count {
        let stream = format!("{}-{}", if i % 3 == 0 { "cart" } else { "order" }, i % 5);
        let size = 1 + i % 3;
        let events = (0..size)
            .map(|k| new_event(if k % 2 == 0 { "Even" } else { "Odd" }, i))
            .collect();
        store
            .append(&stream, ExpectedRevision::Any, events)
            .await
            .unwrap();
    }
}

fn filters() -> impl Strategy<Value = Filter> {
    prop_oneof![
        Just(Filter::default()),
        Just(Filter {
            category: Some("cart".into()),
            ..Filter::default()
        }),
        Just(Filter {
            types: vec!["Odd".into()],
            ..Filter::default()
        }),
        Just(Filter {
            stream: Some("order-1".into()),
            types: vec!["Even".into()],
            ..Filter::default()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Started at any position while appends run, a subscription delivers every matching event
    /// exactly once, in order, across the switch from catch-up to live and across index chunks;
    /// also when it reads ahead (for batches of another size), when the read ahead is hurried,
    /// and when the reader takes only part of a batch and rewinds.
    #[test]
    fn subscriptions_deliver_every_matching_event_once_in_order(
        before in 0usize..120,
        during in 1usize..120,
        start in 0u64..300,
        batch in 1usize..40,
        filter in filters(),
        ahead in proptest::option::of(1usize..60),
        cut in proptest::option::of(1usize..20),
        ahead_before_cut in any::<bool>(),
        hurry in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), test_store_options(false)).unwrap();
            write(&store, 0, before).await;
            let writer = {
                let store = store.clone();
                tokio::spawn(async move { write(&store, before, during).await })
            };
            let mut subscription = Subscription::from_position(store.clone(), start, filter.clone());
            let mut seen = Vec::new();
            let take = |subscription: &mut Subscription, mut events: Vec<RecordedEvent>| {
                let read_ahead = |subscription: &mut Subscription| {
                    if let Some(limit) = ahead {
                        subscription.read_ahead(limit);
                    }
                };
                if ahead_before_cut {
                    read_ahead(subscription);
                }
                if let Some(cut) = cut.filter(|&cut| cut < events.len()) {
                    subscription.rewind(events[cut].position);
                    events.truncate(cut);
                }
                if !ahead_before_cut {
                    read_ahead(subscription);
                }
                if hurry {
                    subscription.hurry();
                }
                events
            };
            // Live while the writer runs (dropping a pending batch is safe: the position only
            // moves when a read completes)...
            let mut writer = writer;
            loop {
                tokio::select! {
                    events = subscription.next_batch(batch) => {
                        seen.extend(take(&mut subscription, events.unwrap()));
                    }
                    done = &mut writer => {
                        done.unwrap();
                        break;
                    }
                }
            }
            // ...then whatever is left up to the final head.
            let head = store.head();
            while subscription.next_position() <= head {
                let events = subscription.poll_batch(batch).await.unwrap();
                seen.extend(take(&mut subscription, events));
            }
            let expected = store.read_all(start, usize::MAX, &filter).unwrap().events;
            let seen_positions: Vec<u64> = seen.iter().map(|e| e.position).collect();
            let expected_positions: Vec<u64> = expected.iter().map(|e| e.position).collect();
            prop_assert_eq!(seen_positions, expected_positions);
            prop_assert_eq!(seen, expected);
            Ok(())
        })?;
    }
}

/// One SSE message: (id, data).
fn parse_sse(text: &str) -> Vec<(u64, Value)> {
    text.split("\n\n")
        .filter_map(|message| {
            let mut id = None;
            let mut data = None;
            for line in message.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse().unwrap());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(v).unwrap());
                }
            }
            Some((id?, data?))
        })
        .collect()
}

/// Reads from a streaming response until `want` complete messages (split by `separator`) arrived.
async fn read_messages(response: reqwest::Response, separator: &str, want: usize) -> String {
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while text.matches(separator).count() < want {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("the subscription delivers in time")
            .expect("the stream stays open")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    text
}

/// A store of 100 events of `event_type`, all in `order-1`, at positions 1..=100.
async fn hundred_events(event_type: &str) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), test_store_options(false)).unwrap();
    let events = (0..100).map(|i| new_event(event_type, i)).collect();
    store
        .append("order-1", ExpectedRevision::Any, events)
        .await
        .unwrap();
    (dir, store)
}

#[tokio::test]
async fn a_read_ahead_yields_to_a_rewind_and_to_a_smaller_batch() {
    let (_dir, store) = hundred_events("Even").await;
    let positions =
        |events: Vec<RecordedEvent>| -> Vec<u64> { events.iter().map(|e| e.position).collect() };
    let mut subscription = Subscription::from_position(store.clone(), 1, Filter::default());
    assert_eq!(
        positions(subscription.poll_batch(10).await.unwrap()),
        (1..=10).collect::<Vec<_>>()
    );
    // Read ahead from 11, then the reader takes only 1..=5 of its batch.
    subscription.read_ahead(10);
    subscription.rewind(6);
    assert_eq!(
        positions(subscription.poll_batch(10).await.unwrap()),
        (6..=15).collect::<Vec<_>>()
    );
    // Read ahead 50, then asked for 10: the other 40 come next.
    subscription.read_ahead(50);
    assert_eq!(
        positions(subscription.poll_batch(10).await.unwrap()),
        (16..=25).collect::<Vec<_>>()
    );
    subscription.read_ahead(100);
    assert_eq!(
        positions(subscription.poll_batch(100).await.unwrap()),
        (26..=100).collect::<Vec<_>>()
    );
    // At the head, nothing is read ahead and nothing comes.
    subscription.read_ahead(10);
    assert!(subscription.poll_batch(10).await.unwrap().is_empty());
}

/// A batch that notes, when a read starts filling it, whether `ran` was set by then.
#[derive(Debug)]
struct Probe {
    ran: std::sync::Arc<std::sync::atomic::AtomicBool>,
    set_before_the_read: Option<bool>,
    events: usize,
}

impl Batch for Probe {
    fn fresh(&self) -> Self {
        Probe {
            ran: self.ran.clone(),
            set_before_the_read: None,
            events: 0,
        }
    }

    fn clear(&mut self) {
        self.set_before_the_read = Some(self.ran.load(std::sync::atomic::Ordering::SeqCst));
        self.events = 0;
    }

    fn take(&mut self, _: &EventRef<'_>) -> bool {
        self.events += 1;
        true
    }

    fn len(&self) -> usize {
        self.events
    }
}

/// The work handed to a read ahead (a projection's commit of its last batch) runs on the
/// reader's thread before the read; at the head, where no read starts, it runs all the same.
#[tokio::test]
async fn work_handed_to_a_read_ahead_runs_before_the_read_and_at_the_head_alone() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let (_dir, store) = hundred_events("Even").await;
    let ran = Arc::new(AtomicBool::new(false));
    let first = Probe {
        ran: ran.clone(),
        set_before_the_read: None,
        events: 0,
    };
    let mut subscription = Subscription::into_batches(store, 1, Filter::default(), first);
    let batch = subscription.poll_batch(10).await.unwrap();
    assert_eq!(batch.set_before_the_read, Some(false));
    subscription.recycle(batch);

    let set = |ran: &Arc<AtomicBool>| -> Option<Box<dyn FnOnce() + Send>> {
        let ran = ran.clone();
        Some(Box::new(move || {
            // Slow work: a read that did not wait for it would start before it ends.
            std::thread::sleep(Duration::from_millis(50));
            ran.store(true, Ordering::SeqCst);
        }))
    };
    subscription.read_ahead_after(90, set(&ran));
    let batch = subscription.poll_batch(90).await.unwrap();
    assert_eq!((batch.events, batch.set_before_the_read), (90, Some(true)));
    subscription.recycle(batch);

    // At the head: no read starts, the work still runs.
    ran.store(false, Ordering::SeqCst);
    assert!(!subscription.can_read_ahead());
    subscription.read_ahead_after(10, set(&ran));
    tokio::time::timeout(Duration::from_secs(10), async {
        while !ran.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the work ran at the head");
    assert!(subscription.poll_batch(10).await.unwrap().is_empty());
}

/// A batch of its own kind: the events' positions and types, renamed as they are taken (as a
/// projection's batch encodes them as they are read); at most `room` of them; its `finish`
/// fails on position 30 (as an upcaster may).
#[derive(Debug)]
struct Renamed {
    room: usize,
    events: Vec<(u64, String)>,
}

impl Batch for Renamed {
    fn fresh(&self) -> Self {
        Renamed {
            room: self.room,
            events: Vec::new(),
        }
    }

    fn clear(&mut self) {
        self.events.clear();
    }

    fn take(&mut self, event: &EventRef<'_>) -> bool {
        if self.events.len() == self.room {
            return false;
        }
        let renamed = format!("{}Prepared", event.event_type());
        self.events.push((event.position(), renamed));
        true
    }

    fn finish(&mut self) -> Result<(), UpcastError> {
        match self.events.iter().find(|(position, _)| *position == 30) {
            Some(_) => Err(UpcastError {
                upcaster: "test".into(),
                position: 30,
                message: "no".into(),
            }),
            None => Ok(()),
        }
    }

    fn len(&self) -> usize {
        self.events.len()
    }
}

/// A subscription to 100 events, read into `Renamed` batches of at most `room`.
async fn renamed(room: usize) -> (tempfile::TempDir, Subscription<Renamed>) {
    let (dir, store) = hundred_events("Raw").await;
    let first = Renamed {
        room,
        events: Vec::new(),
    };
    let subscription = Subscription::into_batches(store, 1, Filter::default(), first);
    (dir, subscription)
}

/// The positions of a batch, and whether all were renamed.
fn made(batch: &Renamed) -> (Vec<u64>, bool) {
    (
        batch.events.iter().map(|(position, _)| *position).collect(),
        batch
            .events
            .iter()
            .all(|(_, renamed)| renamed == "RawPrepared"),
    )
}

#[tokio::test]
async fn batches_come_made_as_read_and_a_failure_past_a_smaller_batch_is_not_reported_early() {
    let (_dir, mut subscription) = renamed(usize::MAX).await;
    let batch = subscription.poll_batch(10).await.unwrap();
    assert_eq!(made(&batch), ((1..=10).collect(), true));
    subscription.recycle(batch);
    // Read ahead 11..=60, whose finish fails at 30; then only 11..=20 are asked for: they
    // come (read again), and the failure is not theirs.
    subscription.read_ahead(50);
    let batch = subscription.poll_batch(10).await.unwrap();
    assert_eq!(made(&batch), ((11..=20).collect(), true));
    // Read ahead, and taken up at the size it was read at.
    subscription.read_ahead(5);
    let batch = subscription.poll_batch(5).await.unwrap();
    assert_eq!(made(&batch), ((21..=25).collect(), true));
    // A batch that holds position 30 fails with it, read ahead or not.
    subscription.read_ahead(20);
    match subscription.poll_batch(20).await {
        Err(ReadError::Upcast(error)) => assert_eq!(error.position, 30),
        other => panic!("expected the failure at 30, got {other:?}"),
    }
}

#[tokio::test]
async fn a_batch_without_room_for_an_event_ends_before_it_and_the_next_starts_with_it() {
    let (_dir, mut subscription) = renamed(3).await;
    let batch = subscription.poll_batch(10).await.unwrap();
    assert_eq!(made(&batch), (vec![1, 2, 3], true));
    assert_eq!(subscription.next_position(), 4);
    subscription.read_ahead(10);
    let batch = subscription.poll_batch(10).await.unwrap();
    assert_eq!(made(&batch), (vec![4, 5, 6], true));
}

/// Positions, taken as read; the read stops at position 10 until the gate opens.
struct Gated {
    positions: Vec<u64>,
    gate: Option<std::sync::mpsc::Receiver<()>>,
}

impl Batch for Gated {
    fn fresh(&self) -> Self {
        Gated {
            positions: Vec::new(),
            gate: None,
        }
    }

    fn clear(&mut self) {
        self.positions.clear();
    }

    fn take(&mut self, event: &EventRef<'_>) -> bool {
        if event.position() == 10
            && let Some(gate) = &self.gate
        {
            gate.recv().unwrap();
        }
        self.positions.push(event.position());
        true
    }

    fn len(&self) -> usize {
        self.positions.len()
    }
}

#[tokio::test]
async fn a_hurried_read_ahead_ends_once_it_holds_half_and_the_next_batch_starts_after_it() {
    let (_dir, store) = hundred_events("Raw").await;
    let (open, gate) = std::sync::mpsc::channel();
    let first = Gated {
        positions: Vec::new(),
        gate: Some(gate),
    };
    let mut subscription = Subscription::into_batches(store, 1, Filter::default(), first);
    // Read ahead 100; it holds at most 9 when hurried, and goes on to half of them.
    subscription.read_ahead(100);
    subscription.hurry();
    open.send(()).unwrap();
    let batch = subscription.poll_batch(100).await.unwrap();
    assert_eq!(batch.positions, (1..=50).collect::<Vec<_>>());
    assert_eq!(subscription.next_position(), 51);
    // The rest, in order, none twice; hurrying with nothing read ahead changes nothing.
    subscription.hurry();
    let batch = subscription.poll_batch(100).await.unwrap();
    assert_eq!(batch.positions, (51..=100).collect::<Vec<_>>());
}

#[tokio::test]
async fn sse_catches_up_then_goes_live_and_resumes_from_last_event_id() {
    let server = TestServer::start().await.unwrap();
    let url = server.url.clone();
    for i in 0..3 {
        append(
            &url,
            "sub-1",
            json!({"events": [{"type": "T", "data": {"i": i}}]}),
        )
        .await;
    }
    let client = reqwest::Client::new();
    let response = client
        .get(format!("{url}/subscribe?from=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let live = {
        let url = url.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            append(&url, "sub-1", json!({"events": [{"type": "T", "data": {"i": 3}}, {"type": "T", "data": "multi\nline"}]})).await
        })
    };
    let text = read_messages(response, "\n\n", 4).await;
    live.await.unwrap();
    let messages = parse_sse(&text);
    let ids: Vec<u64> = messages.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [2, 3, 4, 5]);
    assert_eq!(messages[2].1["data"], json!({"i": 3}));
    assert_eq!(messages[3].1["data"], "multi\nline");
    for (id, event) in &messages {
        assert_eq!(event["position"], *id);
    }
    // A browser reconnects with Last-Event-ID, which wins over `from`.
    let response = client
        .get(format!("{url}/subscribe?from=1"))
        .header("Last-Event-ID", "4")
        .send()
        .await
        .unwrap();
    let messages = parse_sse(&read_messages(response, "\n\n", 1).await);
    assert_eq!(messages[0].0, 5);
    server.stop().await;
}

#[tokio::test]
async fn ndjson_without_from_sends_only_new_events_filtered() {
    let server = TestServer::start().await.unwrap();
    let url = server.url.clone();
    append(&url, "old-1", json!({"events": [{"type": "T", "data": 0}]})).await;
    let response = reqwest::Client::new()
        .get(format!("{url}/subscribe?category=new"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    for (stream, data) in [("old-1", 1), ("new-1", 2), ("other-1", 3), ("new-2", 4)] {
        append(
            &url,
            stream,
            json!({"events": [{"type": "T", "data": data}]}),
        )
        .await;
    }
    let text = read_messages(response, "\n", 2).await;
    let events: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let data: Vec<&Value> = events.iter().map(|e| &e["data"]).collect();
    assert_eq!(data, [&json!(2), &json!(4)]);
    server.stop().await;
}

#[tokio::test]
async fn server_shutdown_ends_open_subscriptions() {
    let server = TestServer::start().await.unwrap();
    let response = reqwest::Client::new()
        .get(format!("{}/subscribe", server.url))
        .send()
        .await
        .unwrap();
    // Graceful shutdown must not wait forever for the open subscription.
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("shutdown completes with a subscriber connected");
    // The body ends (cleanly or cut off) instead of hanging.
    let _ended = tokio::time::timeout(Duration::from_secs(10), response.bytes())
        .await
        .expect("the subscription's body ends");
}
