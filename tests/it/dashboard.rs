//! The dashboard in a real browser: `tests/browser/dashboard.py` drives Debian's headless
//! chromium through the system chromedriver (selenium from Debian's python3-selenium) against a
//! `lantern serve` process, checking what the pages show against the API's own answers.
//! `scripts/test.sh` installs the three packages; the screenshots land in
//! `target/dashboard-screenshots/`.

use std::path::Path;

use lantern_tests::ServerProcess;

const ADMIN: &str = "dashboard-test-admin-secret-0123456789";

#[tokio::test]
async fn the_dashboard_shows_and_drives_a_live_server_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        Path::new(env!("CARGO_BIN_EXE_lantern-under-test")),
        &dir.path().join("data"),
        &[],
        &[("LANTERN_ADMIN_TOKEN", ADMIN)],
    )
    .unwrap();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let screenshots = workspace.join("target").join("dashboard-screenshots");
    // Debian's python, where apt puts selenium (a python3 earlier on PATH may not have it).
    let output = tokio::process::Command::new("/usr/bin/python3")
        .arg(workspace.join("tests/browser/dashboard.py"))
        .args(["--url", &server.url, "--admin", ADMIN, "--guests"])
        .arg(env!("LANTERN_GUESTS"))
        .arg("--screenshots")
        .arg(&screenshots)
        .kill_on_drop(true)
        .output()
        .await
        .expect("/usr/bin/python3 runs (scripts/test.sh installs python3-selenium, chromium and chromium-driver)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(
        output.status.success(),
        "the browser test failed:\n{report}"
    );
    assert!(report.contains("all checks passed"), "{report}");
}
