#!/usr/bin/env bash
# Builds Lantern and the example projections, and runs the server on the embedded default:
# data in ./lantern-data, listening on 127.0.0.1:7070, with the examples deployed from
# ./lantern-modules (a watched folder: drop a .wasm file there to deploy it; NAME.upcaster.wasm
# is an upcaster).
# Extra arguments go to `lantern serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "error: cargo not found; install Rust from https://rustup.rs" >&2
  exit 1
fi
rustup target add wasm32-wasip2
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p lantern
cargo build --release --target wasm32-wasip2 -p order-totals -p orders-per-day -p carts -p order-upcaster
mkdir -p lantern-modules
cp "$target/wasm32-wasip2/release/order_totals.wasm" lantern-modules/order-totals.wasm
cp "$target/wasm32-wasip2/release/orders_per_day.wasm" lantern-modules/orders-per-day.wasm
cp "$target/wasm32-wasip2/release/carts.wasm" lantern-modules/carts.wasm
cp "$target/wasm32-wasip2/release/order_upcaster.wasm" lantern-modules/order-shapes.upcaster.wasm
exec "$target/release/lantern" serve --watch lantern-modules "$@"
