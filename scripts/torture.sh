#!/usr/bin/env bash
# Crash torture: N SIGKILL cycles (default 100) of a real release server under concurrent
# appenders with event ids, a resuming subscriber and two projections (one rebuilding); after
# every restart the log, the retried appends, the subscriber and both read models are checked
# against the test's own model. Prints a summary; exits non-zero at the first broken promise.
#   ./scripts/torture.sh [CYCLES] [more lantern-torture flags]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "error: cargo not found; install Rust from https://rustup.rs" >&2
  exit 1
fi
rustup target add wasm32-wasip2
cycles="${1:-100}"
shift || true
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p lantern -p lantern-tests --bin lantern --bin lantern-torture
exec "$target/release/lantern-torture" --cycles "$cycles" --server "$target/release/lantern" "$@"
