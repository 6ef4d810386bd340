# Helpers shared by the bench scripts (sourced, not run).

# find_bin NAME: the PostgreSQL program NAME ($PG_BIN_DIR, else PATH, else the
# newest /usr/lib/postgresql/*/bin).
find_bin() {
  if [[ -n ${PG_BIN_DIR:-} && -x $PG_BIN_DIR/$1 ]]; then echo "$PG_BIN_DIR/$1"; return; fi
  if command -v "$1" >/dev/null 2>&1; then command -v "$1"; return; fi
  local newest
  newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [[ -n $newest && -x $newest/$1 ]]; then echo "$newest/$1"; return; fi
  echo "$(basename "$0"): $1 not found (install postgresql-client or set PG_BIN_DIR)" >&2
  exit 1
}

PSQL=$(find_bin psql)
PGBENCH=$(find_bin pgbench)

# lifecycles TPS: pgbench's tps of the batched script as lifecycles/s
# ($BATCH commands per script execution).
lifecycles() { awk -v t="$1" -v b="$BATCH" 'BEGIN{printf "%.0f", t * b}'; }
