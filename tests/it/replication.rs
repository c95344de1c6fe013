//! Followers (`docs/replication.md`): a leader and followers as real processes on loopback. The
//! logs are compared record by record from the files, read with the documented layout
//! (`docs/storage.md`), not through the code under test.

use std::path::Path;
use std::time::{Duration, Instant};

use lantern_tests::{ServerProcess, guest, variant};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::send;

const ADMIN: &str = "replication-test-admin-secret-0123";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lantern-under-test"))
}

fn client() -> reqwest::Client {
    client_with(ADMIN)
}

fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

fn leader(data: &Path, listen: Option<&str>) -> ServerProcess {
    let mut args = vec![];
    if let Some(listen) = listen {
        args.extend(["--listen", listen]);
    }
    ServerProcess::start_with(binary(), data, &args, &[("LANTERN_ADMIN_TOKEN", ADMIN)]).unwrap()
}

fn follower(data: &Path, leader_url: &str) -> ServerProcess {
    ServerProcess::start_with(
        binary(),
        data,
        &["--follow", leader_url, "--token", ADMIN],
        &[],
    )
    .unwrap()
}

/// A free port on loopback, for a server that must come back on the same address.
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

async fn health(url: &str) -> Value {
    send(client().get(format!("{url}/health"))).await.1
}

/// Polls `check` every 50 ms until it returns `Some`, for at most 60 s.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the follower at `url` holds `head` events.
async fn caught_up(url: &str, head: u64) {
    eventually(&format!("{url} to reach {head}"), || async {
        (health(url).await["head"] == head).then_some(())
    })
    .await;
}

/// `n` orders in appends of 1 to 5 events, on streams `order-{tag}-{0..5}`.
async fn place_orders(url: &str, tag: &str, n: u64) -> u64 {
    let http = client();
    let mut last = 0;
    let mut i = 0;
    while i < n {
        let size = (1 + i % 5).min(n - i);
        let events: Vec<Value> = (i..i + size)
            .map(|k| json!({"type": "OrderPlaced", "data": {"customer": format!("c-{}", k % 37), "amount": k % 9 + 1}}))
            .collect();
        let (status, body) = send(
            http.post(format!("{url}/streams/order-{tag}-{}", i % 5))
                .json(&json!({ "events": events })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        last = body["last_position"].as_u64().unwrap();
        i += size;
    }
    last
}

/// The records of a data folder's log, each with its end-of-group flag (a node's own fsync
/// mark, the one byte a follower may hold differently) and its CRC (which covers that byte)
/// masked: frame = length (u32 LE), CRC (u32 LE), body; the flags byte is the body's 41st.
fn log_records(data: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(data.join("events.log")).unwrap();
    let mut records = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let mut frame = bytes[at..at + 8 + len].to_vec();
        frame[4..8].fill(0);
        frame[8 + 40] &= !4;
        records.push(frame);
        at += 8 + len;
    }
    assert_eq!(at, bytes.len(), "the log ends with a whole record");
    records
}

async fn projection(url: &str, name: &str) -> (StatusCode, Value) {
    send(client().get(format!("{url}/projections/{name}"))).await
}

/// Waits until projection `name` on `url` has folded `head` events, and returns its `top`.
async fn top_when_at(url: &str, name: &str, head: u64) -> Value {
    eventually(&format!("{name} on {url} to reach {head}"), || async {
        let (status, body) = projection(url, name).await;
        (status == StatusCode::OK && body["position"] == head && body["status"] == "running")
            .then_some(())
    })
    .await;
    send(client().get(format!("{url}/projections/{name}/query/top?n=100")))
        .await
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_copy_the_log_projections_and_tokens_and_refuse_writes() {
    let dir = tempfile::tempdir().unwrap();
    let leader_data = dir.path().join("leader");
    let lead = leader(&leader_data, None);
    let (status, _) = send(
        client()
            .put(format!("{}/projections/totals", lead.url))
            .body(guest("order_totals")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    place_orders(&lead.url, "before", 300).await;
    let followers: Vec<(std::path::PathBuf, ServerProcess)> = (0..2)
        .map(|i| {
            let data = dir.path().join(format!("follower-{i}"));
            let server = follower(&data, &lead.url);
            (data, server)
        })
        .collect();
    // Concurrent appends while the followers copy.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = lead.url.clone();
            tokio::spawn(async move { place_orders(&url, &format!("w{w}"), 200).await })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let head = health(&lead.url).await["head"].as_u64().unwrap();
    assert_eq!(head, 1100);
    for (_, server) in &followers {
        caught_up(&server.url, head).await;
    }
    let leader_log = log_records(&leader_data);
    assert_eq!(leader_log.len() as u64, head);
    for (data, _) in &followers {
        let copy = log_records(data);
        assert_eq!(copy.len(), leader_log.len());
        for (position, (a, b)) in leader_log.iter().zip(&copy).enumerate() {
            assert!(a == b, "record {} differs", position + 1);
        }
        assert_eq!(
            std::fs::read_to_string(data.join("store-id")).unwrap(),
            std::fs::read_to_string(leader_data.join("store-id")).unwrap()
        );
    }
    // The same projection over the same log: the same answers.
    let expected = top_when_at(&lead.url, "totals", head).await;
    assert_eq!(expected.as_array().unwrap().len(), 37);
    for (_, server) in &followers {
        assert_eq!(top_when_at(&server.url, "totals", head).await, expected);
    }

    // Writes go to the leader.
    let f = &followers[0].1.url;
    for request in [
        client()
            .post(format!("{f}/streams/order-x"))
            .json(&json!({"events": [{"type": "OrderPlaced", "data": {}}]})),
        client()
            .put(format!("{f}/projections/other"))
            .body(guest("order_totals")),
        client().post(format!("{f}/projections/totals/rebuild")),
        client().delete(format!("{f}/projections/totals")),
        client()
            .post(format!("{f}/tokens"))
            .json(&json!({"name": "x", "role": "reader"})),
    ] {
        let (status, body) = send(request).await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "not_leader");
        assert_eq!(body["error"]["leader"], lead.url.as_str());
    }
    let cli = tokio::process::Command::new(binary())
        .args([
            "--url", f, "--token", ADMIN, "append", "order-x", "--type", "T",
        ])
        .args(["--data", "{}"])
        .output()
        .await
        .unwrap();
    assert!(!cli.status.success());
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(stderr.contains(&lead.url), "{stderr}");
    // A whole module upload refused: the CLI still reads the answer, not a broken pipe.
    let module = Path::new(env!("LANTERN_GUESTS")).join("order_totals.wasm");
    let cli = tokio::process::Command::new(binary())
        .args(["--url", f, "--token", ADMIN, "deploy", "other"])
        .arg(&module)
        .output()
        .await
        .unwrap();
    assert!(!cli.status.success());
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(stderr.contains("not_leader"), "{stderr}");

    let h = health(f).await;
    assert_eq!(h["role"], "follower");
    assert_eq!(h["leader"], lead.url.as_str());
    assert_eq!(h["lag"], 0);
    assert_eq!(h["status"], "ok");
    assert_eq!(health(&lead.url).await["role"], "leader");

    // Read-your-writes on another node: the position from the leader is awaited.
    let (_, written) = send(
        client()
            .post(format!("{}/streams/order-ryw", lead.url))
            .json(&json!({"events": [{"type": "OrderPlaced", "data": {"customer": "ryw", "amount": 5}}]})),
    )
    .await;
    let position = written["last_position"].as_u64().unwrap();
    let (status, value) = send(client().get(format!(
        "{}/projections/totals/state/customer:ryw?min_position={position}",
        followers[1].1.url
    )))
    .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(value, json!({"orders": 1, "total": 5}));

    // Tokens made and revoked on the leader hold on the followers.
    let (status, created) = send(
        client()
            .post(format!("{}/tokens", lead.url))
            .json(&json!({"name": "reader", "role": "reader"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let reader = client_with(created["token"].as_str().unwrap());
    eventually("the reader token on the follower", || async {
        let response = reader.get(format!("{f}/all?limit=1")).send().await.unwrap();
        (response.status() == StatusCode::OK).then_some(())
    })
    .await;
    let revoked = client()
        .delete(format!("{}/tokens/reader", lead.url))
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    eventually("the revoked token refused on the follower", || async {
        let response = reader.get(format!("{f}/all?limit=1")).send().await.unwrap();
        (response.status() == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;

    // Deploys, rebuilds and deletes on the leader are followed.
    let v2 = variant(&guest("order_totals"), "v2");
    let (status, _) = send(
        client()
            .put(format!("{}/projections/totals", lead.url))
            .body(v2.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let sha = lantern::projection::module_sha256(&v2);
    eventually("the new version on the follower", || async {
        let (_, status) = projection(f, "totals").await;
        (status["module_sha256"] == sha.as_str()
            && status["rebuild"].is_null()
            && status["status"] == "running")
            .then_some(())
    })
    .await;
    // A rebuild makes a new read model file (`read-models/<name>/gen-<n>.redb`, storage.md).
    let generations = |data: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(data.join("projections/read-models/totals"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = generations(&followers[0].0);
    let (status, _) = send(client().post(format!("{}/projections/totals/rebuild", lead.url))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    eventually("the rebuild on the follower", || async {
        let (_, status) = projection(f, "totals").await;
        let now = generations(&followers[0].0);
        (now.len() == 1 && now != before && status["rebuild"].is_null()).then_some(())
    })
    .await;
    let deleted = client()
        .delete(format!("{}/projections/totals", lead.url))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    eventually("the delete on the follower", || async {
        (projection(f, "totals").await.0 == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_mid_replication_resumes_from_its_own_log() {
    let dir = tempfile::tempdir().unwrap();
    let (leader_data, follower_data) = (dir.path().join("leader"), dir.path().join("follower"));
    let lead = leader(&leader_data, None);
    place_orders(&lead.url, "a", 2000).await;
    let copy = follower(&follower_data, &lead.url);
    // Kill it while appends go on, once it holds some of the log.
    let writer = {
        let url = lead.url.clone();
        tokio::spawn(async move { place_orders(&url, "b", 1500).await })
    };
    let url = copy.url.clone();
    eventually("the follower to hold some events", || async {
        (health(&url).await["head"].as_u64().unwrap() > 0).then_some(())
    })
    .await;
    copy.kill().unwrap();
    let held = log_records(&follower_data).len();
    assert!(held > 0);
    let copy = follower(&follower_data, &lead.url);
    writer.await.unwrap();
    let head = health(&lead.url).await["head"].as_u64().unwrap();
    assert_eq!(head, 3500);
    caught_up(&copy.url, head).await;
    assert_eq!(log_records(&follower_data), log_records(&leader_data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_reconnect_to_a_restarted_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (leader_data, follower_data) = (dir.path().join("leader"), dir.path().join("follower"));
    let address = free_address();
    let lead = leader(&leader_data, Some(&address));
    let leader_url = lead.url.clone();
    place_orders(&leader_url, "a", 100).await;
    let copy = follower(&follower_data, &leader_url);
    caught_up(&copy.url, 100).await;
    assert!(lead.terminate().unwrap().success());
    // The follower serves what it has while the leader is away.
    let (status, page) = send(client().get(format!("{}/all?limit=1000", copy.url))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["events"].as_array().unwrap().len(), 100);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lead = leader(&leader_data, Some(&address));
    let head = place_orders(&lead.url, "b", 100).await;
    assert_eq!(head, 200);
    caught_up(&copy.url, head).await;
    assert_eq!(log_records(&follower_data), log_records(&leader_data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_another_store_or_a_diverged_log_refuses_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let leader_data = dir.path().join("leader");
    let lead = leader(&leader_data, None);
    place_orders(&lead.url, "a", 50).await;

    // Another store, with events of its own.
    let other_data = dir.path().join("other");
    let other = leader(&other_data, None);
    place_orders(&other.url, "z", 20).await;
    assert!(other.terminate().unwrap().success());
    // A copy of the leader's store that was then written to on its own: the same id, a
    // different history from position 51 on.
    assert!(lead.terminate().unwrap().success());
    let diverged_data = dir.path().join("diverged");
    copy_dir(&leader_data, &diverged_data);
    let lead = leader(&leader_data, None);
    place_orders(&lead.url, "b", 30).await;
    let diverged = leader(&diverged_data, None);
    place_orders(&diverged.url, "c", 10).await;
    assert!(diverged.terminate().unwrap().success());

    for (data, why) in [
        (&other_data, "is not a copy of the leader's"),
        (&diverged_data, "differs from the leader's at position 60"),
    ] {
        let before = std::fs::read(data.join("events.log")).unwrap();
        let copy = follower(data, &lead.url);
        let problem = eventually("the refusal", || async {
            let h = health(&copy.url).await;
            (h["status"] == "degraded").then(|| h["problems"][0].clone())
        })
        .await;
        assert_eq!(problem["code"], "replication_refused", "{problem}");
        assert!(
            problem["message"].as_str().unwrap().contains(why),
            "{problem}"
        );
        // Reads go on; nothing was written.
        let (status, _) = send(client().get(format!("{}/all?limit=5", copy.url))).await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drop(copy);
        assert!(
            std::fs::read(data.join("events.log")).unwrap() == before,
            "the refused follower's log changed"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The follower's store checks each record it is given (CRC, position, revision), writes only
/// whole appends, and refuses appends of its own.
#[tokio::test]
async fn a_follower_store_checks_every_record_and_writes_whole_appends_only() {
    use lantern::store::{ExpectedRevision, Filter, NewEvent, Store, StoreError, StoreOptions};

    let dir = tempfile::tempdir().unwrap();
    let leader = Store::open(
        &dir.path().join("leader"),
        lantern_tests::test_store_options(false),
    )
    .unwrap();
    let event = |i: u64| NewEvent {
        id: None,
        event_type: "E".into(),
        data: format!(r#"{{"i":{i}}}"#).into(),
        metadata: None,
    };
    for (stream, size) in [("a-1", 2u64), ("b-1", 3), ("a-1", 1)] {
        leader
            .append(
                stream,
                ExpectedRevision::Any,
                (0..size).map(event).collect(),
            )
            .await
            .unwrap();
    }
    let frames = leader
        .log_reader(1)
        .unwrap()
        .read(&leader, 1 << 20)
        .unwrap();
    // Record boundaries, from the documented frame layout: length (u32 LE) + 8 header bytes.
    let mut ends = Vec::new();
    let mut at = 0;
    while at < frames.len() {
        at += 8 + u32::from_le_bytes(frames[at..at + 4].try_into().unwrap()) as usize;
        ends.push(at);
    }
    assert_eq!(ends.len(), 6);

    let follower = Store::open(
        &dir.path().join("follower"),
        StoreOptions {
            replica: true,
            ..lantern_tests::test_store_options(false)
        },
    )
    .unwrap();
    let refused = |result: Result<lantern::store::Replicated, StoreError>| match result {
        Err(StoreError::Replication(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let mut damaged = frames.to_vec();
    damaged[ends[3] - 2] ^= 1;
    let why = refused(follower.replicate(damaged.into()).await);
    assert!(why.contains("damaged record for position 4"), "{why}");
    let why = refused(follower.replicate(frames.slice(ends[0]..)).await);
    assert!(why.contains("position 2 where position 1"), "{why}");
    assert_eq!(follower.head(), 0, "nothing of a refused batch is written");

    // Two whole records and part of the next append: only the first append is written.
    let written = follower.replicate(frames.slice(..ends[3])).await.unwrap();
    assert_eq!((written.consumed, written.head), (ends[1], 2));
    let written = follower.replicate(frames.slice(ends[1]..)).await.unwrap();
    assert_eq!(
        (written.consumed, written.head),
        (frames.len() - ends[1], 6)
    );
    let all = |store: &Store| store.read_all(1, 100, &Filter::default()).unwrap().events;
    assert_eq!(all(&follower), all(&leader));
    assert!(matches!(
        follower
            .append("c-1", ExpectedRevision::Any, vec![event(0)])
            .await,
        Err(StoreError::NotLeader)
    ));
    // Records that do not continue a stream's revisions are refused.
    let other = Store::open(
        &dir.path().join("other"),
        lantern_tests::test_store_options(false),
    )
    .unwrap();
    other
        .append(
            "a-1",
            ExpectedRevision::Any,
            vec![
                event(9),
                event(9),
                event(9),
                event(9),
                event(9),
                event(9),
                event(9),
            ],
        )
        .await
        .unwrap();
    let frames = other.log_reader(7).unwrap().read(&other, 1 << 20).unwrap();
    let why = refused(follower.replicate(frames).await);
    assert!(why.contains("revision 6 of stream \"a-1\""), "{why}");
    for store in [leader, follower, other] {
        store.close();
    }
}

/// A follower that stops reading (its stream fills the TCP buffers) and one whose token is not an
/// admin's: the leader's appends go on, and the refused follower says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_follower_does_not_hold_the_leader_back_and_a_reader_token_cannot_replicate() {
    use tokio::io::AsyncWriteExt;

    let dir = tempfile::tempdir().unwrap();
    let lead = leader(&dir.path().join("leader"), None);
    place_orders(&lead.url, "a", 100).await;
    // A replication stream that is never read.
    let address = lead.url.trim_start_matches("http://").to_owned();
    let mut stuck = tokio::net::TcpStream::connect(&address).await.unwrap();
    stuck
        .write_all(
            format!(
                "GET /replicate?from=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Far more than socket buffers hold: 20,000 events of 1 KiB.
    let http = client();
    let pad = "x".repeat(1000);
    for batch in 0..40 {
        let events: Vec<Value> = (0..500)
            .map(|i| json!({"type": "Big", "data": {"batch": batch, "i": i, "pad": pad}}))
            .collect();
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            send(
                http.post(format!("{}/streams/big-{batch}", lead.url))
                    .json(&json!({ "events": events })),
            ),
        )
        .await
        .expect("appends are not held back by a follower that does not read");
        assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
    }
    assert_eq!(health(&lead.url).await["head"], 20_100);
    drop(stuck);

    let (_, created) = send(
        client()
            .post(format!("{}/tokens", lead.url))
            .json(&json!({"name": "reader", "role": "reader"})),
    )
    .await;
    let reader_token = created["token"].as_str().unwrap().to_owned();
    let copy = ServerProcess::start_with(
        binary(),
        &dir.path().join("follower"),
        &["--follow", &lead.url, "--token", &reader_token],
        &[],
    )
    .unwrap();
    let problem = eventually("the follower to report its refused token", || async {
        let h = send(reqwest::Client::new().get(format!("{}/health", copy.url)))
            .await
            .1;
        (h["status"] == "degraded").then(|| h["problems"][0].clone())
    })
    .await;
    assert_eq!(problem["code"], "replication_unauthorized", "{problem}");
    assert_eq!(
        send(reqwest::Client::new().get(format!("{}/health", copy.url)))
            .await
            .1["head"],
        0
    );
}

/// Snapshots reach followers: the ones saved before the follower started and the ones saved
/// while it follows, replaced ones as their newest, each identical to the leader's (time
/// included); a follower refuses to save one itself.
#[tokio::test]
async fn followers_copy_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let lead = leader(&dir.path().join("leader"), None);
    let twelve_each = |url: String| async move {
        for stream in 0..4 {
            let events: Vec<Value> = (0..12)
                .map(|k| json!({"type": "OrderPlaced", "data": {"customer": "c", "amount": k}}))
                .collect();
            let (status, body) = send(
                client()
                    .post(format!("{url}/streams/order-s-{stream}"))
                    .json(&json!({ "events": events })),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    twelve_each(lead.url.clone()).await; // revisions 0..12 of order-s-0..4
    let save = |url: String, stream: &'static str, revision: u64| async move {
        send(
            client()
                .put(format!("{url}/streams/{stream}/snapshot"))
                .json(&json!({"revision": revision, "state": {"stream": stream, "at": revision}})),
        )
        .await
    };
    for (stream, revision) in [("order-s-0", 3), ("order-s-1", 5), ("order-s-0", 7)] {
        let (status, body) = save(lead.url.clone(), stream, revision).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let copy = follower(&dir.path().join("follower"), &lead.url);
    let head = health(&lead.url).await["head"].as_u64().unwrap();
    caught_up(&copy.url, head).await;
    twelve_each(lead.url.clone()).await; // and 12..24
    save(lead.url.clone(), "order-s-2", 20).await;
    save(lead.url.clone(), "order-s-1", 23).await;
    for stream in ["order-s-0", "order-s-1", "order-s-2"] {
        let (_, expected) =
            send(client().get(format!("{}/streams/{stream}/snapshot", lead.url))).await;
        let copied = eventually(&format!("{stream}'s snapshot on the follower"), || async {
            let (_, got) =
                send(client().get(format!("{}/streams/{stream}/snapshot", copy.url))).await;
            (got == expected).then_some(got)
        })
        .await;
        assert_eq!(copied["state"]["stream"], stream);
    }
    let (_, page) =
        send(client().get(format!("{}/streams/order-s-1?from=snapshot", copy.url))).await;
    assert_eq!(page["snapshot"]["revision"], 23);
    let (status, body) = save(copy.url.clone(), "order-s-3", 1).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "not_leader");
    let (status, _) = send(client().get(format!("{}/streams/order-s-3/snapshot", lead.url))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Upcasters reach followers: reads and projections there see the same shapes as on the leader,
/// and a deleted upcaster goes from the follower too.
#[tokio::test]
async fn followers_copy_upcasters() {
    let dir = tempfile::tempdir().unwrap();
    let lead = leader(&dir.path().join("leader"), None);
    let http = client();
    for i in 0..20 {
        let event = if i % 2 == 0 {
            json!({"type": "OrderCreated", "data": {"customer_id": format!("c-{}", i % 3), "amount_cents": i}})
        } else {
            json!({"type": "OrderPlaced", "data": {"customer": format!("c-{}", i % 3), "amount": i}})
        };
        let (status, body) = send(
            http.post(format!("{}/streams/order-{i}", lead.url))
                .json(&json!({ "events": [event] })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, _) = send(
        http.put(format!("{}/upcasters/order-shapes", lead.url))
            .body(guest("order_upcaster")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = send(
        http.put(format!("{}/projections/totals", lead.url))
            .body(guest("order_totals")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let copy = follower(&dir.path().join("follower"), &lead.url);
    caught_up(&copy.url, 20).await;
    let expected = top_when_at(&lead.url, "totals", 20).await;
    assert_eq!(expected.as_array().unwrap().len(), 3, "{expected}");
    assert_eq!(top_when_at(&copy.url, "totals", 20).await, expected);
    let (_, page) = send(http.get(format!("{}/streams/order-0", copy.url))).await;
    assert_eq!(page["events"][0]["type"], "OrderPlaced", "{page}");
    let (status, body) = send(http.delete(format!("{}/upcasters/order-shapes", copy.url))).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");

    let response = http
        .delete(format!("{}/upcasters/order-shapes", lead.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    eventually("the follower to delete the upcaster", || async {
        let (_, page) = send(http.get(format!("{}/streams/order-0", copy.url))).await;
        (page["events"][0]["type"] == "OrderCreated").then_some(())
    })
    .await;
    let (_, listed) = send(http.get(format!("{}/upcasters", copy.url))).await;
    assert_eq!(listed["upcasters"], json!([]));
}
