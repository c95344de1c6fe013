#!/usr/bin/env bash
# Soak: MINUTES (default 30) of mixed load on a real release server (appends, subscribers coming and
# going, queries, a live redeploy every minute), sampling its RSS, open file descriptors and threads
# every 10 s. Exits non-zero if any grows by 10% or more after the warm-up (10 minutes: the
# in-memory index tail and the read models' caches fill up over the first minutes, then stay).
#   ./scripts/soak.sh [MINUTES] [lantern-soak flags: --warmup-minutes N, --index-cache-mib N]
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2
minutes="${1:-30}"
shift || true
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p lantern -p lantern-tests --bin lantern --bin lantern-soak
exec "$target/release/lantern-soak" --minutes "$minutes" --server "$target/release/lantern" "$@"
