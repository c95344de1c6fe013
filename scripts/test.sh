#!/usr/bin/env bash
# Sets up what the tests need and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "error: cargo not found; install Rust from https://rustup.rs" >&2
  exit 1
fi
rustup target add wasm32-wasip2
# The storage tests mount a small tmpfs (a real full disk) and trace fsyncs with strace: both need
# root, which CI has.
if ! command -v strace >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq strace
  else
    echo "error: the tests need strace (apt-get install strace) and root (for mount -t tmpfs)" >&2
    exit 1
  fi
fi
cargo test --workspace "$@"
