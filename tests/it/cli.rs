//! The `lantern` command line against a running server: readable output, `--json`, and plain
//! errors with a non-zero exit.

use std::path::Path;

use lantern_tests::{TestServer, guest};
use serde_json::Value;

/// Runs the real CLI; returns (success, stdout, stderr).
async fn lantern(url: &str, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_lantern-under-test"))
        .arg("--url")
        .arg(url)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("the CLI runs");
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// Runs the CLI and checks that it fails with a message containing `expected`.
async fn fails_with(url: &str, args: &[&str], expected: &str) {
    let (ok, _, err) = lantern(url, args).await;
    assert!(!ok, "{args:?} succeeded");
    assert!(err.contains(expected), "{args:?}: {err}");
}

#[tokio::test]
async fn the_cli_appends_reads_deploys_and_queries() {
    let server = TestServer::start().await.unwrap();
    let url = server.url.as_str();
    let (ok, out, err) = lantern(
        url,
        &[
            "append",
            "order-1",
            "--type",
            "OrderPlaced",
            "--data",
            r#"{"customer":"c-1","amount":40}"#,
            "--expected-revision",
            "no_stream",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("appended 1 event(s) to order-1"), "{out}");

    fails_with(
        url,
        &[
            "append",
            "order-1",
            "--type",
            "OrderPlaced",
            "--data",
            "{oops",
        ],
        "--data is not valid JSON",
    )
    .await;
    fails_with(
        url,
        &[
            "append",
            "order-1",
            "--type",
            "X",
            "--data",
            "1",
            "--expected-revision",
            "7",
        ],
        "wrong_expected_revision",
    )
    .await;
    fails_with(url, &["read", "nobody-1"], "stream_not_found").await;

    let (ok, out, _) = lantern(url, &["read", "order-1"]).await;
    assert!(ok);
    assert!(
        out.contains("order-1@0") && out.contains("OrderPlaced"),
        "{out}"
    );
    let (ok, out, _) = lantern(url, &["--json", "read", "--all"]).await;
    assert!(ok);
    let event: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(event["data"]["amount"], 40);

    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("order_totals.wasm");
    std::fs::write(&module, guest("order_totals")).unwrap();
    let (ok, out, err) = lantern(url, &["deploy", "order-totals", module.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    assert!(out.contains("serves at position"), "{out}");
    let (ok, out, _) = lantern(
        url,
        &[
            "query",
            "order-totals",
            "customer:c-1",
            "--min-position",
            "1",
        ],
    )
    .await;
    assert!(ok);
    let value: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["total"], 40);
    let (ok, out, _) = lantern(
        url,
        &["query", "order-totals", "--query", "top", "--param", "n=1"],
    )
    .await;
    assert!(ok);
    assert!(out.contains("\"customer\": \"c-1\""), "{out}");
    let (ok, out, _) = lantern(url, &["projections"]).await;
    assert!(
        ok && out.contains("order-totals") && out.contains("running"),
        "{out}"
    );
    fails_with(
        url,
        &[
            "deploy",
            "broken",
            Path::new("Cargo.toml").to_str().unwrap(),
        ],
        "invalid_module",
    )
    .await;
    server.stop().await;

    fails_with(
        "http://127.0.0.1:9",
        &["read", "--all"],
        "cannot reach the server",
    )
    .await;
}

#[tokio::test]
async fn the_cli_saves_and_reads_snapshots() {
    let server = TestServer::start().await.unwrap();
    let url = server.url.as_str();
    for n in 0..4 {
        let data = format!(r#"{{"n":{n}}}"#);
        let (ok, _, err) = lantern(
            url,
            &["append", "cart-1", "--type", "Added", "--data", &data],
        )
        .await;
        assert!(ok, "{err}");
    }
    fails_with(url, &["snapshot", "get", "cart-1"], "snapshot_not_found").await;
    fails_with(
        url,
        &[
            "snapshot",
            "save",
            "cart-1",
            "--revision",
            "9",
            "--state",
            "{}",
        ],
        "has no revision 9",
    )
    .await;
    fails_with(
        url,
        &[
            "snapshot",
            "save",
            "cart-1",
            "--revision",
            "1",
            "--state",
            "{nope",
        ],
        "the state is not JSON",
    )
    .await;
    let (ok, out, err) = lantern(
        url,
        &[
            "snapshot",
            "save",
            "cart-1",
            "--revision",
            "2",
            "--state",
            r#"{"sum":3}"#,
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "saved the snapshot of cart-1 at revision 2");
    let (ok, out, _) = lantern(
        url,
        &[
            "snapshot",
            "save",
            "cart-1",
            "--revision",
            "1",
            "--state",
            "1",
        ],
    )
    .await;
    assert!(ok);
    assert!(
        out.contains("kept the stored snapshot of cart-1: it is of a later revision (2)"),
        "{out}"
    );
    let (ok, out, _) = lantern(url, &["--json", "snapshot", "get", "cart-1"]).await;
    assert!(ok);
    let snapshot: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (snapshot["revision"].clone(), snapshot["state"].clone()),
        (2.into(), serde_json::json!({"sum": 3}))
    );
    // The snapshot, then the events after it.
    let (ok, out, err) = lantern(url, &["--json", "read", "cart-1", "--from-snapshot"]).await;
    assert!(ok, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["state"]["sum"], 3);
    assert_eq!(lines[1]["revision"], 3);
    let (ok, out, _) = lantern(url, &["read", "cart-1", "--from-snapshot"]).await;
    assert!(ok);
    assert!(out.starts_with("snapshot  cart-1@2  "), "{out}");
    server.stop().await;
}

#[tokio::test]
async fn the_cli_deploys_lists_and_deletes_upcasters_and_reads_raw() {
    let server = TestServer::start().await.unwrap();
    let url = server.url.as_str();
    let (ok, _, err) = lantern(
        url,
        &[
            "append",
            "order-1",
            "--type",
            "OrderCreated",
            "--data",
            r#"{"customer_id":"c-1","amount_cents":40}"#,
        ],
    )
    .await;
    assert!(ok, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("u.wasm");
    std::fs::write(&file, guest("order_upcaster")).unwrap();
    let file = file.to_str().unwrap();
    let (ok, out, err) = lantern(url, &["upcaster", "deploy", "order-shapes", file]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "upcaster order-shapes: version 1 deployed");
    let (ok, out, _) = lantern(url, &["upcaster", "list"]).await;
    assert!(ok);
    assert!(out.starts_with("order-shapes"), "{out}");
    assert!(
        out.contains("takes OrderPlaced,OrderCreated gives OrderPlaced"),
        "{out}"
    );
    let (ok, out, _) = lantern(url, &["--json", "read", "order-1"]).await;
    assert!(ok);
    let event: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(event["type"], "OrderPlaced");
    let (ok, out, _) = lantern(url, &["--json", "read", "--all", "--raw"]).await;
    assert!(ok);
    let event: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(event["type"], "OrderCreated");
    fails_with(
        url,
        &["upcaster", "delete", "nothing"],
        "upcaster_not_found",
    )
    .await;
    fails_with(
        url,
        &["upcaster", "deploy", "x", "/no/such/file.wasm"],
        "reading /no/such/file.wasm",
    )
    .await;
    let (ok, out, _) = lantern(url, &["upcaster", "delete", "order-shapes"]).await;
    assert!(ok);
    assert!(out.contains("deleted"), "{out}");
    let (ok, out, _) = lantern(url, &["upcaster", "list"]).await;
    assert!(ok);
    assert_eq!(out.trim(), "no upcasters deployed");
    server.stop().await;
}
