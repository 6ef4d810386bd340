#!/usr/bin/env bash
# What deleting expired rows costs PostgreSQL itself while it runs command
# lifecycles flat out: the database-side limit of row-by-row cleanup, with no
# coordinator in between (docs/benchmarks.md, "cleanup").
#
#   bash bench/cleanup_ceiling.sh postgres://user@host:port/db
#
# In a schema of its own, `bench_cleanup` (the coordinator's table and indexes
# from migrations/V1..V3), it writes $EXPIRED ended roots ended 8 to 20 days
# ago, then runs, $SECONDS_PER_RUN s each:
#   1. lifecycle_batched.sql alone (-c $CLIENTS): the flat ceiling;
#   2. the same while one more client runs cleanup_delete.sql ($ROWS rows per
#      statement) as fast as it can;
#   3. the same with that client throttled (pgbench -R) to $TARGET_ROWS rows/s;
#   4. the design that avoids row deletes: the same table partitioned by
#      created_at, the expired rows alone in an old partition. Flat alone,
#      then flat again while that partition is detached and dropped.
# Human-readable lines go to stderr; the last line on stdout is one JSON object.
# Environment: CLEANUP_SECONDS (15), CLEANUP_EXPIRED (1000000), CEILING_CLIENTS
# (8), CEILING_JOBS (2), CEILING_BATCH (100), CLEANUP_ROWS (1000),
# CLEANUP_TARGET_ROWS (50000), PG_BIN_DIR.
set -euo pipefail

URL=${1:?usage: bench/cleanup_ceiling.sh POSTGRES_URL}
SECONDS_PER_RUN=${CLEANUP_SECONDS:-15}
EXPIRED=${CLEANUP_EXPIRED:-1000000}
CLIENTS=${CEILING_CLIENTS:-8}
JOBS=${CEILING_JOBS:-2}
BATCH=${CEILING_BATCH:-100}
ROWS=${CLEANUP_ROWS:-1000}
TARGET_ROWS=${CLEANUP_TARGET_ROWS:-50000}
SCHEMA=bench_cleanup
HERE=$(cd "$(dirname "$0")" && pwd)

# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
log() { printf 'cleanup-ceiling: %s\n' "$*" >&2; }
sql() { PGOPTIONS="-c search_path=$SCHEMA -c client_min_messages=warning" "$PSQL" "$URL" -X -q -v ON_ERROR_STOP=1 "$@" >&2; }

# Writes the expired rows: ended roots, ended 8 to 20 days ago.
fill_rows() {
  sql -c "INSERT INTO command_entities (command_id, command_type, root_command_id,
            command_parameters, command_params_class, created_at, updated_at, ended_at,
            status, callback_enabled, callback_notified, executed)
          SELECT id, 1, id, '{\"i\":0}', 'load::Noop', t, t, t, 'ENDED_SUCCESSFULLY', true, true, true
          FROM (SELECT gen_random_uuid() AS id,
                       now() - interval '20 days' + g * (interval '12 days' / $EXPIRED) AS t
                FROM generate_series(1, $EXPIRED) g) s" \
      -c "VACUUM ANALYZE command_entities" -c "CHECKPOINT"
}

# A fresh table for a phase: the lifecycle rows of the last one go too.
fill() {
  sql -c "TRUNCATE command_entities"
  fill_rows
}

# pgbench_tps SCRIPT ARGS...: one run; prints tps.
pgbench_tps() {
  local script=$1 out tps
  shift
  out=$(PGOPTIONS="-c search_path=$SCHEMA" "$PGBENCH" -n -M prepared -T "$SECONDS_PER_RUN" \
          "$@" -f "$HERE/$script" "$URL" 2>&1) || { echo "$out" >&2; exit 1; }
  tps=$(awk '/^tps = /{print $3; exit}' <<<"$out")
  [[ -n $tps ]] || { echo "$out" >&2; log "no tps from $script"; exit 1; }
  echo "$tps"
}

# Expired rows deleted in the last phase, per second: counted in the table, as
# pgbench's tps would also count the empty deletes once the rows ran out.
deleted_per_s() {
  local left
  left=$(PGOPTIONS="-c search_path=$SCHEMA" "$PSQL" "$URL" -X -q -t -A -c \
    "SELECT count(*) FROM command_entities WHERE ended_at < now() - interval '7 days'")
  awk -v e="$EXPIRED" -v l="$left" -v s="$SECONDS_PER_RUN" 'BEGIN{printf "%.0f", (e - l) / s}'
}

flat() { pgbench_tps lifecycle_batched.sql -c "$CLIENTS" -j "$JOBS" -D batch="$BATCH"; }
cleanup() { pgbench_tps cleanup_delete.sql -c 1 -j 1 -D rows="$ROWS" "$@"; }

PGOPTIONS="-c client_min_messages=warning" "$PSQL" "$URL" -X -q -v ON_ERROR_STOP=1 \
  -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" -c "CREATE SCHEMA $SCHEMA" >&2
for m in "$HERE"/../migrations/V*.sql; do sql -f "$m"; done

fill
ALONE=$(flat)
log "flat alone: $(lifecycles "$ALONE") lifecycles/s"

fill
FULL_DIR=$(mktemp -d)
flat >"$FULL_DIR/flat" &
cleanup >"$FULL_DIR/cleanup"
wait
FULL_FLAT=$(cat "$FULL_DIR/flat") FULL_DEL=$(deleted_per_s)
log "with full-speed deletes: flat $(lifecycles "$FULL_FLAT")/s, deletes $FULL_DEL rows/s"

fill
RATE=$(( TARGET_ROWS / ROWS ))
flat >"$FULL_DIR/flat" &
cleanup -R "$RATE" >"$FULL_DIR/cleanup"
wait
PACED_FLAT=$(cat "$FULL_DIR/flat") PACED_DEL=$(deleted_per_s)
rm -rf "$FULL_DIR"
log "with deletes paced to $TARGET_ROWS rows/s: flat $(lifecycles "$PACED_FLAT")/s, deletes $PACED_DEL rows/s"

# 4. Partitioned: the coordinator's columns and indexes (V1..V3), the primary
# key extended by the partition key (PostgreSQL requires it), the expired rows
# in a partition of their own.
sql -c "DROP SCHEMA $SCHEMA CASCADE" -c "CREATE SCHEMA $SCHEMA"
for m in "$HERE"/../migrations/V*.sql; do sql -f "$m"; done
sql -c "ALTER TABLE command_entities RENAME TO command_entities_template" \
    -c "CREATE TABLE command_entities (LIKE command_entities_template INCLUDING DEFAULTS)
          PARTITION BY RANGE (created_at)" \
    -c "ALTER TABLE command_entities ADD PRIMARY KEY (command_id, created_at)" \
    -c "CREATE INDEX ON command_entities (root_command_id) WHERE root_command_id IS NOT NULL" \
    -c "CREATE INDEX ON command_entities (parent_command_id) WHERE parent_command_id IS NOT NULL" \
    -c "CREATE INDEX ON command_entities (command_id) WHERE callback_enabled AND callback_notified IS NOT TRUE" \
    -c "CREATE INDEX ON command_entities (ended_at) WHERE parent_command_id IS NULL AND ended_at IS NOT NULL" \
    -c "DROP TABLE command_entities_template"
part_fill() {
  sql -c "DROP TABLE IF EXISTS command_entities_old, command_entities_current" \
      -c "CREATE TABLE command_entities_old PARTITION OF command_entities
            FOR VALUES FROM (MINVALUE) TO ('$(date -u -d '-7 days' '+%Y-%m-%d %H:%M:%S')+00') WITH (fillfactor = 80)" \
      -c "CREATE TABLE command_entities_current PARTITION OF command_entities DEFAULT WITH (fillfactor = 80)"
  fill_rows
}
part_fill
PART_ALONE=$(flat)
log "partitioned, flat alone: $(lifecycles "$PART_ALONE") lifecycles/s"
part_fill
DIR=$(mktemp -d)
flat >"$DIR/flat" &
sleep $(( SECONDS_PER_RUN / 3 ))
START_NS=$(date +%s%N)
sql -c "ALTER TABLE command_entities DETACH PARTITION command_entities_old" -c "DROP TABLE command_entities_old"
DROP_MS=$(( ($(date +%s%N) - START_NS) / 1000000 ))
wait
PART_FLAT=$(cat "$DIR/flat")
rm -rf "$DIR"
log "partitioned, flat while $EXPIRED expired rows go by DETACH + DROP ($DROP_MS ms, psql start included): $(lifecycles "$PART_FLAT")/s"

PGOPTIONS="-c client_min_messages=warning" "$PSQL" "$URL" -X -q -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >&2 || true

awk -v a="$ALONE" -v ff="$FULL_FLAT" -v fd="$FULL_DEL" -v pf="$PACED_FLAT" -v pd="$PACED_DEL" \
    -v pa="$PART_ALONE" -v pp="$PART_FLAT" -v dm="$DROP_MS" \
    -v b="$BATCH" -v r="$ROWS" -v s="$SECONDS_PER_RUN" -v e="$EXPIRED" 'BEGIN{
  printf "{\"flat_alone_lifecycles_per_s\":%.0f,\"full_delete_rows_per_s\":%.0f,\"full_flat_ratio\":%.3f,", a*b, fd, ff/a
  printf "\"paced_delete_rows_per_s\":%.0f,\"paced_flat_ratio\":%.3f,", pd, pf/a
  printf "\"partitioned_flat_alone_lifecycles_per_s\":%.0f,\"partition_drop_ms\":%d,\"partition_drop_rows_per_s\":%.0f,\"partitioned_flat_ratio\":%.3f,", pa*b, dm, e/(dm/1000), pp/pa
  printf "\"seconds\":%d,\"expired\":%d,\"rows_per_delete\":%d}\n", s, e, r }'
