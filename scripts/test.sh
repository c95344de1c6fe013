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
# root, which CI has. The dashboard test drives Debian's chromium through its chromedriver with
# Debian's selenium (never a browser downloaded at run time); the metrics test reads /metrics
# with the official Prometheus client's strict OpenMetrics parser; the operator assets under deploy/
# are checked with promtool (Debian's prometheus) and systemd-analyze.
packages=()
command -v strace >/dev/null || packages+=(strace)
[ -x /usr/bin/chromium ] || packages+=(chromium)
[ -x /usr/bin/chromedriver ] || packages+=(chromium-driver)
/usr/bin/python3 -c 'import selenium' 2>/dev/null || packages+=(python3-selenium)
/usr/bin/python3 -c 'import prometheus_client' 2>/dev/null || packages+=(python3-prometheus-client)
command -v promtool >/dev/null || packages+=(prometheus)
command -v systemd-analyze >/dev/null || packages+=(systemd)
# The TypeScript SDK (guest-sdk-js) is built and tested with Node 20+ and its committed lockfile.
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)
if [ ${#packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
  else
    echo "error: the tests need ${packages[*]} (apt-get install ${packages[*]}) and root (for mount -t tmpfs)" >&2
    exit 1
  fi
fi
# The TypeScript SDK and its example, from their committed lockfiles (the example uses the SDK by
# path, so the SDK is installed and built first); the Rust tests then build the example into a
# module and run it on a real server beside the Rust one.
for package in guest-sdk-js examples/order-totals-ts; do
  (cd "$package" && npm ci --no-audit --no-fund --loglevel=error && npm test)
done
cargo test --workspace "$@"
