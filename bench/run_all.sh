#!/usr/bin/env bash
# Runs every mode of the load benchmark (examples/load.rs) in release, each
# against its own durable embedded PostgreSQL, bounded in time, and appends
# each run's JSON line to $OUT (default target/bench-results.jsonl); the
# runs' logs go to target/bench-stderr.log. This is how docs/benchmarks.md
# was produced:
#
#   bash bench/run_all.sh
#
# flat and tree run three times (the machine is shared; take the median);
# flat measures the pgbench ceiling (bench/ceiling.sh) on its server first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/bench-results.jsonl}
LOG=target/bench-stderr.log
cargo build --release --example load || exit 1
B=target/release/examples/load

# run LIMIT_S ARGS...: one bounded run; the example aborts itself after
# LIMIT_S, and `timeout` kills it a minute later if that did not work.
run() {
  local limit=$1
  shift
  echo "== load $* ($(cut -d' ' -f1-3 /proc/loadavg))" >&2
  echo "== load $*" >>"$LOG"
  timeout --kill-after=30 $((limit + 60)) "$B" "$@" --timeout-s "$limit" --json-only \
    2>>"$LOG" | tail -n 1 | tee -a "$OUT"
}

for _ in 1 2 3; do run 300 flat --with-ceiling; done
for _ in 1 2 3; do run 300 tree; done
run 300 rehydrate
run 300 rehydrate --commands 1000000
run 300 idle
# The same with all 100,000 submits spawned at once: RSS then also holds what
# the allocator keeps of 100,000 concurrent host tasks.
run 300 idle --submit-window 0
run 900 cleanup --with-ceiling
# The trade-off of row-by-row deletes under full load: no pause, longer pauses.
run 900 cleanup --cleanup-pause-ms 0
run 900 cleanup --cleanup-pause-ms 20
run 900 cleanup --cleanup-pause-ms 50
