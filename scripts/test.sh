#!/usr/bin/env bash
# Sets up what the tests need and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "error: cargo not found; install Rust from https://rustup.rs" >&2
  exit 1
fi
rustup target add wasm32-wasip2
cargo test --workspace "$@"
