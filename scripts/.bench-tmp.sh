#!/usr/bin/env bash
# Measures Lantern's durable appends against a PostgreSQL event store on this machine
# (`lantern bench --only postgres`, issue 13's peer): starts a throwaway PostgreSQL cluster
# with its defaults (fsync and synchronous_commit on) in a temporary directory on the same
# disk as the benchmark's store, runs the benchmark, stops and removes the cluster.
# Needs PostgreSQL's server binaries (Debian: apt-get install postgresql).
# Extra arguments go to `lantern bench`, e.g. --seconds 10.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  echo "error: PostgreSQL's initdb not found (apt-get install postgresql, or set PG_BIN)" >&2
  exit 1
fi
target="${CARGO_TARGET_DIR:-target}"
true
dir="$(mktemp -d "${TMPDIR:-/tmp}/lantern-pg.XXXXXX")"
# PostgreSQL refuses to run as root: as root, the cluster belongs to the postgres user.
as_owner() {
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi
}
if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
cleanup() {
  as_owner "'$bin/pg_ctl' -D '$dir/data' -m fast stop" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
as_owner "'$bin/initdb' -D '$dir/data' -A trust -U postgres" >/dev/null
as_owner "'$bin/pg_ctl' -D '$dir/data' -l '$dir/log' -w -o \"-k '$dir' -c listen_addresses=''\" start" >/dev/null
"$BIN" bench --only postgres --postgres "host=$dir user=postgres dbname=postgres" "$@"
