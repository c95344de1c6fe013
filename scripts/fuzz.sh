#!/usr/bin/env bash
# Runs each fuzz target (cargo-fuzz, libFuzzer) for SECONDS (default 600), starting from the
# corpus kept in fuzz/corpus/ (new inputs go to a scratch folder, so the kept corpus stays small).
# Installs the nightly toolchain and cargo-fuzz it needs. A crash leaves its input in
# fuzz/artifacts/<target>/: add it to fuzz/corpus/<target>/ once fixed, and `cargo test` replays it.
#   ./scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(log_recovery wire_writes http_request)
fi
rustup toolchain install nightly --profile minimal
rustup target add wasm32-wasip2 --toolchain nightly
command -v cargo-fuzz >/dev/null || cargo +nightly install cargo-fuzz --locked
# Our code forbids `unsafe`, so the address sanitizer would add little but build time.
cargo +nightly fuzz build --sanitizer none
for target in "${targets[@]}"; do
  scratch="$(mktemp -d)"
  cp -r "fuzz/corpus/$target/." "$scratch/"
  echo "== fuzzing $target for ${seconds}s"
  cargo +nightly fuzz run --sanitizer none "$target" "$scratch" -- \
    -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 2>&1 \
    | grep -E "^(#[0-9]+ *DONE|stat::|==|INFO: Running|Done )|panicked|ERROR|SUMMARY" || true
  rm -rf "$scratch"
done
