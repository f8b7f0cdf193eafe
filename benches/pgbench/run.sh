#!/usr/bin/env bash
# The raw PostgreSQL append baseline of docs/PERFORMANCE.md: pgbench, 32 clients, one
# event-row INSERT per transaction into a table shaped like ticketd's events, over TCP
# loopback without TLS (as ticketd connects in the benchmarks).
# Usage: benches/pgbench/run.sh [database] [seconds] [clients]
set -euo pipefail
db=${1:-ticketd_bench}
seconds=${2:-15}
clients=${3:-32}
here=$(dirname "$0")
export PGSSLMODE=disable
psql -q -h 127.0.0.1 -U postgres -d "$db" -f "$here/events_table.sql"
pgbench -h 127.0.0.1 -U postgres -n -c "$clients" -j 2 -T "$seconds" -r -f "$here/append.sql" "$db"
