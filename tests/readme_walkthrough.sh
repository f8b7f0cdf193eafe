#!/usr/bin/env bash
# Runs README.md's curl walk-through verbatim (but for the binary's path and the port) against
# a fresh server on the embedded SQLite default, and checks what its comments promise.
# Usage: tests/readme_walkthrough.sh path/to/ticketd
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ -x "${1:-}" ] || { echo "usage: $0 path/to/ticketd (not found: ${1:-})" >&2; exit 2; }
bin=$(realpath "$1")
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"; }

awk '/^With the service running/{f=1} f&&/^```sh/{g=1;next} g&&/^```/{exit} g' "$root/README.md" \
  | sed -e "s#^T=./target/release/ticketd#T=$bin#" -e "s#127.0.0.1:8080#127.0.0.1:$port#" \
  > "$work/walk.sh"
grep -q "127.0.0.1:$port" "$work/walk.sh" || { echo "README walk-through not found" >&2; exit 1; }

cd "$work"
"$bin" serve --listen "127.0.0.1:$port" > server.log 2>&1 &
server=$!
trap cleanup EXIT
for _ in $(seq 1 50); do
  curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && break
  sleep 0.2
done

bash -euo pipefail walk.sh > out.txt
fail() { echo "README walk-through: $1" >&2; cat out.txt >&2; exit 1; }
# Every answer is one JSON line; exactly one is a problem (the customer's forbidden move).
grep -q '^ticket [0-9a-f-]\{36\}$' out.txt || fail "no ticket id"
[ "$(grep -c '"status":403' out.txt)" = 1 ] || fail "expected exactly one 403"
grep -q '"code":"forbidden"' out.txt || fail "the 403 is not problem+json forbidden"
# Alice's reply moved it to in_progress; Bob resolved it under If-Match; the read is version 8.
grep -q '"status":"in_progress","version":5' out.txt || fail "the reply did not move it"
grep -q '^{"status":"resolved","version":7' out.txt || fail "If-Match resolve failed"
grep -q '^{"version":8,' out.txt || fail "the read receipt"
# The auditor's view has all eight events, chained.
[ "$(grep -o '"type":"ticket\.' out.txt | wc -l)" = 8 ] || fail "expected 8 audit events"
# SIGTERM stops it cleanly, and a clean stop folds each WAL into its database file.
kill -TERM "$server"
wait "$server" || fail "ticketd exited with $? on SIGTERM"
for f in data/ticketd.db data/ticketd.views.db; do
  [ -s "$f" ] || fail "$f missing after the stop"
  [ ! -e "$f-wal" ] || fail "$f-wal left after a clean stop"
done
echo "README walk-through: ok"
