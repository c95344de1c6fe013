//! Five cycles of the crash torture (scripts/torture.sh runs a hundred).

use std::path::Path;
use std::time::Duration;

use lantern_tests::torture::{self, TortureOptions};

#[tokio::test]
async fn five_sigkill_cycles_lose_nothing_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = TortureOptions {
        server: Path::new(env!("CARGO_BIN_EXE_lantern-under-test")).to_owned(),
        module: torture::guests_dir().join("order_totals.wasm"),
        cycles: 5,
        appenders: 4,
        max_run: Duration::from_millis(1500),
        dir: dir.path().to_owned(),
    };
    let summary = torture::run(&options).await.unwrap();
    assert_eq!(summary.cycles, 5);
    assert!(summary.events > 0);
    assert_eq!(summary.read_models_checked, 12);
}
