#!/usr/bin/env bash
# The database's ceiling for command lifecycles: how many no-op lifecycles per
# second PostgreSQL itself sustains for the statements a lifecycle needs, with
# no coordinator in between. The load benchmark (examples/load.rs) compares
# its figures with these.
#
#   bash bench/ceiling.sh postgres://user@host:port/db
#
# (`cargo run --release --example load -- flat --with-ceiling` runs this
# against its own embedded server first and puts the batched figure into its
# JSON.)
#
# It works in a schema of its own, `bench_ceiling` (dropped and re-created from
# migrations/V1__command_entities.sql, so the table and its indexes are the
# coordinator's), and never touches the coordinator's rows.
#
# Two workloads, pgbench -M prepared -c $CLIENTS -j $JOBS -T $SECONDS each:
#   lifecycle_single.sql   one command, 5 statements = 5 transactions
#   lifecycle_batched.sql  $BATCH commands, the same 5 statements over arrays
#
# Arithmetic: pgbench counts one "transaction" per execution of the whole
# script, so its tps is script executions per second. One execution of the
# single script is 1 lifecycle; one of the batched script is $BATCH
# lifecycles. Hence
#   single_lifecycles_per_s  = tps_single
#   batched_lifecycles_per_s = tps_batched * BATCH
# (equivalently: commits/s * commands per commit / 5 steps per lifecycle,
# since each script does 5 commits).
#
# Human-readable lines go to stderr; the last line on stdout is
#   {"single_lifecycles_per_s":...,"batched_lifecycles_per_s":...}
# Environment: CEILING_SECONDS (10), CEILING_CLIENTS (8), CEILING_JOBS (2),
# CEILING_BATCH (100), PG_BIN_DIR (where pgbench/psql are; else PATH, else the
# newest /usr/lib/postgresql/*/bin).
set -euo pipefail

URL=${1:?usage: bench/ceiling.sh POSTGRES_URL}
SECONDS_PER_RUN=${CEILING_SECONDS:-10}
CLIENTS=${CEILING_CLIENTS:-8}
JOBS=${CEILING_JOBS:-2}
BATCH=${CEILING_BATCH:-100}
SCHEMA=bench_ceiling
HERE=$(cd "$(dirname "$0")" && pwd)

# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"

log() { printf 'ceiling: %s\n' "$*" >&2; }

# A fresh copy of the coordinator's table in a schema of its own.
PGOPTIONS="-c client_min_messages=warning" "$PSQL" "$URL" -X -q -v ON_ERROR_STOP=1 \
  -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" -c "CREATE SCHEMA $SCHEMA" >&2
PGOPTIONS="-c search_path=$SCHEMA -c client_min_messages=warning" "$PSQL" "$URL" -X -q -v ON_ERROR_STOP=1 \
  -f "$HERE/../migrations/V1__command_entities.sql" >&2

# Runs one script; prints pgbench's tps (script executions per second).
run() {
  local script=$1 out tps failed
  out=$(PGOPTIONS="-c search_path=$SCHEMA" "$PGBENCH" -n -M prepared \
          -c "$CLIENTS" -j "$JOBS" -T "$SECONDS_PER_RUN" -D batch="$BATCH" \
          -f "$HERE/$script" "$URL" 2>&1) || { echo "$out" >&2; exit 1; }
  tps=$(awk '/^tps = /{print $3; exit}' <<<"$out")
  failed=$(awk '/number of failed transactions/{print $5; exit}' <<<"$out")
  if [[ -z $tps ]]; then echo "$out" >&2; log "no tps in pgbench output"; exit 1; fi
  log "$script: tps=$tps failed=${failed:-0} (-c $CLIENTS -j $JOBS -T $SECONDS_PER_RUN)"
  echo "$tps"
}

TPS_SINGLE=$(run lifecycle_single.sql)
TPS_BATCHED=$(run lifecycle_batched.sql)

SINGLE=$(awk -v t="$TPS_SINGLE" 'BEGIN{printf "%.0f", t}')
BATCHED=$(lifecycles "$TPS_BATCHED")
log "single:  $SINGLE lifecycles/s (5 commits each)"
log "batched: $BATCHED lifecycles/s ($BATCH per statement)"

PGOPTIONS="-c client_min_messages=warning" "$PSQL" "$URL" -X -q -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >&2 || true

printf '{"single_lifecycles_per_s":%s,"batched_lifecycles_per_s":%s,"clients":%s,"jobs":%s,"seconds":%s,"batch":%s}\n' \
  "$SINGLE" "$BATCHED" "$CLIENTS" "$JOBS" "$SECONDS_PER_RUN" "$BATCH"
