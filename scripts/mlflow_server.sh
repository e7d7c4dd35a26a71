#!/usr/bin/env bash
# MLflow tracking server + model registry for the production profile, on 127.0.0.1: runs and
# registry in PostgreSQL, artifacts served by the server from a local folder (idempotent).
#   scripts/mlflow_server.sh start|stop|status|env
# Backend: REWARDS_MLFLOW_BACKEND_URI (default: the `mlflow` database of scripts/postgres.sh,
# which is started first when it is not running). Artifacts: REWARDS_MLFLOW_ARTIFACTS (default
# $REWARDS_SERVICES_DIR/mlflow/artifacts). Port: REWARDS_MLFLOW_PORT (default 5000).
# Clients only need REWARDS_MLFLOW_TRACKING_URI=http://127.0.0.1:<port>; they upload and download
# artifacts through the server (mlflow-artifacts:/), so they need no access to the folder.
set -euo pipefail
. "$(dirname "$0")/services_lib.sh"
svc_init mlflow REWARDS_MLFLOW_PORT 5000
PIDFILE="$DIR/mlflow.pid"
ARTIFACTS="${REWARDS_MLFLOW_ARTIFACTS:-$DIR/artifacts}"
MLFLOW="${REWARDS_MLFLOW_BIN:-$REPO/.venv/bin/mlflow}"
[ -x "$MLFLOW" ] || MLFLOW="$(command -v mlflow || true)"

health() { python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/health', timeout=2)"; }
running() { pid_alive "$PIDFILE" && health; }

case "${1:-}" in
  start)
    if running; then echo "mlflow: already running on http://127.0.0.1:$PORT"; exit 0; fi
    [ -n "$MLFLOW" ] || { echo "mlflow: not installed (run make install)" >&2; exit 1; }
    if port_in_use "$PORT"; then echo "mlflow: port $PORT is taken by another process" >&2; exit 1; fi
    backend="${REWARDS_MLFLOW_BACKEND_URI:-}"
    if [ -z "$backend" ]; then
      "$REPO/scripts/postgres.sh" start >/dev/null
      eval "$("$REPO/scripts/postgres.sh" env)"
      backend="$REWARDS_MLFLOW_BACKEND_URI"
    fi
    mkdir -p "$ARTIFACTS"
    # setsid: the server and its worker share a process group of their own, which stop ends.
    setsid "$MLFLOW" server --backend-store-uri "$backend" \
      --artifacts-destination "$ARTIFACTS" --serve-artifacts \
      --host 127.0.0.1 --port "$PORT" --workers "${REWARDS_MLFLOW_WORKERS:-1}" \
      >"$DIR/mlflow.log" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    echo "$PORT" >"$DIR/port"
    # First start against an empty database runs MLflow's schema migrations (tens of seconds).
    if ! wait_for 180 "mlflow on port $PORT" running; then
      tail -n 20 "$DIR/mlflow.log" >&2
      exit 1
    fi
    echo "mlflow: started on http://127.0.0.1:$PORT (backend ${backend%%://*}, artifacts $ARTIFACTS)"
    ;;
  stop)
    if ! pid_alive "$PIDFILE"; then echo "mlflow: not running"; rm -f "$PIDFILE"; exit 0; fi
    pid="$(cat "$PIDFILE")"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    if ! wait_for 10 "mlflow shutdown" bash -c "! kill -0 $pid 2>/dev/null"; then
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
    echo "mlflow: stopped"
    ;;
  status)
    if running; then echo "mlflow: running on http://127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"; exit 0; fi
    echo "mlflow: not running"
    exit 3
    ;;
  env)
    echo "export REWARDS_MLFLOW_TRACKING_URI=http://127.0.0.1:$PORT"
    ;;
  *) usage ;;
esac
