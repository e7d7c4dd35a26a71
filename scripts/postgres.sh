#!/usr/bin/env bash
# PostgreSQL for the production profile (event/decision store and MLflow's backend store), on
# 127.0.0.1, in a cluster of its own (initdb + pg_ctl; idempotent).
#   scripts/postgres.sh start|stop|status|env|purge
# Creates the role REWARDS_PG_USER (default rewards, password REWARDS_PG_PASSWORD, default
# rewards, allowed to create databases) and the databases REWARDS_PG_DB (default rewards, events)
# and mlflow, both owned by it. Port: REWARDS_PG_PORT (default 5432).
# State: $REWARDS_SERVICES_DIR/postgres (default .services/); the cluster is owned by the
# `postgres` user when run as root (PostgreSQL refuses to run as root).
set -euo pipefail
. "$(dirname "$0")/services_lib.sh"
svc_init postgres REWARDS_PG_PORT 5432
# The server runs as `postgres` when we are root: its files must sit where that user can reach
# them. A checkout under a private home (/root is 0700) cannot host them: use /tmp instead.
SDIR="$DIR"
if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$DIR" 2>/dev/null; then
  SDIR="/tmp/rewards-reco-postgres-$(printf %s "$DIR" | md5sum | cut -c1-12)"
fi
DATA="$SDIR/data"
PG_USER="${REWARDS_PG_USER:-rewards}"
PG_PASSWORD="${REWARDS_PG_PASSWORD:-rewards}"
PG_DB="${REWARDS_PG_DB:-rewards}"
MLFLOW_DB="${REWARDS_MLFLOW_DB:-mlflow}"

find_bin() {
  local bin
  bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
  if [ -z "$bin" ]; then
    "$REPO/scripts/system_deps.sh"
    bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
  fi
  echo "$bin"
}

as_owner() {  # run a server command as the cluster owner
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# Superuser over the cluster's own unix socket (trust, local only).
sql() { psql -X -q -h "$SDIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -tAc "$1"; }

running() {
  [ -n "${BIN:-}" ] || return 1
  [ -s "$DATA/postmaster.pid" ] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1 \
    && "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"
}

BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"

case "${1:-}" in
  start)
    if running; then echo "postgres: already running on 127.0.0.1:$PORT"; exit 0; fi
    BIN="$(find_bin)"
    if port_in_use "$PORT"; then echo "postgres: port $PORT is taken by another process" >&2; exit 1; fi
    mkdir -p "$SDIR"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$SDIR"; fi
    if [ ! -s "$DATA/PG_VERSION" ]; then
      as_owner "$BIN/initdb" -D "$DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >"$DIR/initdb.log"
    fi
    as_owner "$BIN/pg_ctl" -D "$DATA" -l "$SDIR/postgres.log" -w -t 60 start -o \
      "-p $PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$SDIR" >/dev/null
    echo "$PORT" >"$DIR/port"
    wait_for 30 "postgres on port $PORT" running
    # Role and databases, created only when missing.
    if [ -z "$(sql "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" ]; then
      sql "CREATE ROLE \"$PG_USER\" LOGIN CREATEDB PASSWORD '$PG_PASSWORD'"
    fi
    for db in "$PG_DB" "$MLFLOW_DB"; do
      if [ -z "$(sql "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
        sql "CREATE DATABASE \"$db\" OWNER \"$PG_USER\""
      fi
    done
    echo "postgres: started on 127.0.0.1:$PORT (databases $PG_DB, $MLFLOW_DB; log $SDIR/postgres.log)"
    ;;
  stop)
    if [ -z "$BIN" ] || [ ! -s "$DATA/postmaster.pid" ]; then echo "postgres: not running"; exit 0; fi
    as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null || true
    echo "postgres: stopped"
    ;;
  purge)  # stop and delete the cluster (tests; a fresh start runs initdb again)
    "$0" stop >/dev/null
    rm -rf "$SDIR" "$DIR"
    echo "postgres: purged"
    ;;
  status)
    if running; then echo "postgres: running on 127.0.0.1:$PORT"; exit 0; fi
    echo "postgres: not running"
    exit 3
    ;;
  env)
    base="postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PORT"
    echo "export REWARDS_EVENTS_URL=$base/$PG_DB"
    echo "export REWARDS_MLFLOW_BACKEND_URI=${base/postgresql:/postgresql+psycopg:}/$MLFLOW_DB"
    ;;
  *) usage ;;
esac
