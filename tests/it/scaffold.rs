//! `lantern new`: the crate it makes passes its own test, builds for `wasm32-wasip2`, and the
//! module it builds deploys and answers on a real server.

use std::path::Path;
use std::process::Command;

use lantern_tests::TestServer;
use reqwest::StatusCode;
use serde_json::json;

use super::{append, get};
use crate::projections::{deploy, wait_status};

fn lantern(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lantern-under-test"))
        .args(args)
        .output()
        .unwrap()
}

/// `cargo ARGS` in `dir`, in a target folder the test runs share (so only the first one compiles
/// the SDK's dependencies), with the outer build's flags removed.
fn cargo(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(dir)
        .args(args)
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/scaffold"),
        )
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lantern_new_makes_a_crate_that_tests_builds_and_serves() {
    let parent = tempfile::tempdir().unwrap();
    let folder = parent.path().to_str().unwrap();
    let made = lantern(&["new", "visits", "--dir", folder]);
    assert!(made.status.success(), "{made:?}");
    let crate_dir = parent.path().join("visits");
    for file in ["Cargo.toml", "src/lib.rs", "README.md"] {
        assert!(crate_dir.join(file).exists(), "{file}");
    }
    // Refusals: an existing crate, a name a projection cannot have.
    let again = lantern(&["new", "visits", "--dir", folder]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    let bad = lantern(&["new", "Visits", "--dir", folder]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("must match"));

    let tested = cargo(&crate_dir, &["test"]);
    let out = String::from_utf8_lossy(&tested.stdout);
    assert!(
        tested.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&tested.stderr)
    );
    assert!(out.contains("counts_events_per_type ... ok"), "{out}");
    let built = cargo(
        &crate_dir,
        &["build", "--release", "--target", "wasm32-wasip2"],
    );
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let module = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/scaffold/wasm32-wasip2/release/visits.wasm"),
    )
    .unwrap();

    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    let (status, body) = deploy(url, "visits", module).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    append_visits(url).await;
    wait_status(url, "visits", |s| s["position"] == 3).await;
    let (status, answer) = get(url, "/projections/visits/query/count?type=PageViewed").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({"type": "PageViewed", "events": 2}));

    // `lantern dev`: deploys the crate, then every saved change, as a live rebuild.
    let mut dev = dev_command(url, &crate_dir);
    dev.env(
        "CARGO_TARGET_DIR",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/scaffold"),
    )
    .env_remove("RUSTFLAGS")
    .env_remove("CARGO_ENCODED_RUSTFLAGS");
    serves_each_save(
        url,
        dev,
        &crate_dir.join("src/lib.rs"),
        (r#"format!("type:{}""#, r#"format!("kind:{}""#),
    )
    .await;
}

/// Three events: two `PageViewed`, one `SignedUp`.
async fn append_visits(url: &str) {
    for event_type in ["PageViewed", "PageViewed", "SignedUp"] {
        append(
            url,
            "site-1",
            json!({"events": [{"type": event_type, "data": {}}]}),
        )
        .await;
    }
}

/// `lantern dev --name live DIR` against `url`, quiet.
fn dev_command(url: &str, dir: &Path) -> tokio::process::Command {
    let mut dev = tokio::process::Command::new(env!("CARGO_BIN_EXE_lantern-under-test"));
    dev.args(["--url", url, "dev", "--name", "live"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    dev
}

/// Runs `dev` over three events (two `PageViewed`): waits for it to serve, saves `source` with
/// `change.0` made `change.1` (keys `type:` become `kind:`), and waits for the new version to
/// serve the new keys.
async fn serves_each_save(
    url: &str,
    mut dev: tokio::process::Command,
    source: &Path,
    change: (&str, &str),
) {
    let mut dev = dev.spawn().unwrap();
    let first = wait_status(url, "live", |s| {
        s["status"] == "running" && s["position"] == 3
    })
    .await;
    let (status, answer) = get(url, "/projections/live/query/count?type=PageViewed").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({"type": "PageViewed", "events": 2}));
    let text = std::fs::read_to_string(source).unwrap();
    assert!(text.contains(change.0));
    std::fs::write(source, text.replace(change.0, change.1)).unwrap();
    wait_status(url, "live", |s| {
        s["version"].as_u64() > first["version"].as_u64() && s["rebuild"].is_null()
    })
    .await;
    let (status, page) = get(url, "/projections/live/state?prefix=kind:").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"][0]["key"], "kind:PageViewed");
    assert_eq!(page["items"][0]["value"], json!({"events": 2}));
    dev.kill().await.unwrap();
}

fn npm(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("npm")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lantern_new_ts_makes_a_package_that_tests_and_lantern_dev_serves() {
    // The SDK's packages installed and built (the new package uses it by path).
    lantern_tests::ts_guest("order_totals_ts");
    let parent = tempfile::tempdir().unwrap();
    let folder = parent.path().to_str().unwrap();
    let made = lantern(&["new", "visits", "--ts", "--dir", folder]);
    assert!(made.status.success(), "{made:?}");
    assert!(String::from_utf8_lossy(&made.stdout).contains("npm install && npm test"));
    let package = parent.path().join("visits");
    for file in [
        "package.json",
        "tsconfig.json",
        "src/index.ts",
        "test/index.test.ts",
        "README.md",
    ] {
        assert!(package.join(file).exists(), "{file}");
    }
    let not_sdk = lantern(&["new", "other", "--ts", "--dir", folder, "--sdk", folder]);
    assert!(!not_sdk.status.success());
    assert!(String::from_utf8_lossy(&not_sdk.stderr).contains("no package.json"));

    let installed = npm(&package, &["install", "--no-audit", "--no-fund"]);
    assert!(installed.status.success(), "{installed:?}");
    let tested = npm(&package, &["test"]);
    let out = String::from_utf8_lossy(&tested.stdout);
    assert!(tested.status.success(), "{out}");
    assert!(out.contains("ok 1 - counts events per type"), "{out}");

    // `lantern dev` builds it with lantern-build, deploys it, then every saved change.
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    append_visits(url).await;
    serves_each_save(
        url,
        dev_command(url, &package),
        &package.join("src/index.ts"),
        ("`type:${event.type}`", "`kind:${event.type}`"),
    )
    .await;
}
