//! Builds the example projections and the test guests for `wasm32-wasip2`, once per test build,
//! and hands their folder to the tests as `LANTERN_GUESTS`.

use std::path::PathBuf;
use std::process::Command;

const GUESTS: [&str; 8] = [
    "order-totals",
    "order-upcaster",
    "bad-upcaster",
    "tag-upcaster",
    "orders-per-day",
    "carts",
    "hostile",
    "not-a-projection",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir.parent().expect("tests/ sits in the workspace");
    // A target folder of its own: the outer build holds the lock on the main one.
    let target_dir = workspace.join("target").join("guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", &target_dir)
        // Whatever wraps or flags the outer (host) build is not for the guests.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    for guest in GUESTS {
        command.args(["-p", guest]);
    }
    let status = command.status().expect("running cargo for the guests");
    assert!(
        status.success(),
        "building the guest modules failed; is the target installed? (rustup target add wasm32-wasip2)"
    );
    let out = target_dir.join("wasm32-wasip2").join("release");
    println!("cargo:rustc-env=LANTERN_GUESTS={}", out.display());
    for watched in [
        "examples",
        "guest-sdk",
        "wire",
        "wit",
        "tests/guests",
        "Cargo.toml",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
}
