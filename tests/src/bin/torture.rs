//! `lantern-torture`: crash torture of a real server (see `lantern_tests::torture`).
//!
//! `lantern-torture [--cycles N] [--server PATH] [--module PATH] [--appenders N] [--max-run-ms MS]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lantern_tests::torture::{self, TortureOptions};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut options = TortureOptions {
        server: PathBuf::from("target/release/lantern"),
        module: torture::guests_dir().join("order_totals.wasm"),
        cycles: 100,
        appenders: 4,
        max_run: Duration::from_millis(2000),
        dir: std::env::temp_dir().join(format!("lantern-torture-{}", std::process::id())),
    };
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        let parsed = match flag.as_str() {
            "--cycles" => value.parse().map(|n| options.cycles = n).is_ok(),
            "--server" => {
                options.server = PathBuf::from(&value);
                true
            }
            "--module" => {
                options.module = PathBuf::from(&value);
                true
            }
            "--appenders" => value.parse().map(|n| options.appenders = n).is_ok(),
            "--max-run-ms" => value
                .parse()
                .map(|ms| options.max_run = Duration::from_millis(ms))
                .is_ok(),
            "--dir" => {
                options.dir = PathBuf::from(&value);
                true
            }
            _ => false,
        };
        if !parsed {
            eprintln!("error: bad argument {flag} {value}");
            return ExitCode::from(2);
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let started = std::time::Instant::now();
    match runtime.block_on(torture::run(&options)) {
        Ok(summary) => {
            println!(
                "torture: {}/{} SIGKILL cycles clean in {:.0} s: {} events acknowledged and found at their positions after every restart; {} appends in doubt retried ({} already written, none duplicated); {} events to the resuming subscriber without gap or duplicate; {} read models equal to the fold",
                summary.cycles,
                options.cycles,
                started.elapsed().as_secs_f64(),
                summary.events,
                summary.retried,
                summary.retried_found_written,
                summary.subscribed,
                summary.read_models_checked
            );
            let _ = std::fs::remove_dir_all(&options.dir);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "torture FAILED: {error:#}\n(data kept in {})",
                options.dir.display()
            );
            ExitCode::FAILURE
        }
    }
}
