#!/usr/bin/env bash
# Builds Lantern (release) and runs the server on the embedded default:
# data in ./lantern-data, listening on 127.0.0.1:7070. Extra arguments go to `lantern serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "error: cargo not found; install Rust from https://rustup.rs" >&2
  exit 1
fi
cargo build --release -p lantern
exec ./target/release/lantern serve "$@"
