#!/usr/bin/env bash
# Redis for the production profile's Feast online store, on 127.0.0.1 (idempotent).
#   scripts/redis.sh start|stop|status|env
# Port: REWARDS_REDIS_PORT (default 6379). State: $REWARDS_SERVICES_DIR/redis (default .services/).
# `env` prints the variables the production profile reads (eval "$(scripts/redis.sh env)").
set -euo pipefail
. "$(dirname "$0")/services_lib.sh"
svc_init redis REWARDS_REDIS_PORT 6379
PIDFILE="$DIR/redis.pid"

ping() { redis-cli -h 127.0.0.1 -p "$PORT" ping | grep -q PONG; }
running() { pid_alive "$PIDFILE" && ping; }

case "${1:-}" in
  start)
    if running; then echo "redis: already running on 127.0.0.1:$PORT"; exit 0; fi
    command -v redis-server >/dev/null || "$REPO/scripts/system_deps.sh"
    if port_in_use "$PORT"; then echo "redis: port $PORT is taken by another process" >&2; exit 1; fi
    # The online store is rebuilt by `rewards features materialize`: snapshots are switched off
    # to keep writes cheap; turn on appendonly for a store that must survive restarts by itself.
    redis-server --bind 127.0.0.1 --port "$PORT" --dir "$DIR" --daemonize yes \
      --pidfile "$PIDFILE" --logfile "$DIR/redis.log" --save "" --appendonly no \
      --protected-mode yes
    echo "$PORT" >"$DIR/port"
    wait_for 30 "redis on port $PORT" running
    echo "redis: started on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), log $DIR/redis.log)"
    ;;
  stop)
    if ! pid_alive "$PIDFILE"; then echo "redis: not running"; exit 0; fi
    pid="$(cat "$PIDFILE")"
    kill "$pid"
    wait_for 30 "redis shutdown" bash -c "! kill -0 $pid 2>/dev/null"
    rm -f "$PIDFILE"
    echo "redis: stopped"
    ;;
  status)
    if running; then echo "redis: running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"; exit 0; fi
    echo "redis: not running"
    exit 3
    ;;
  env)
    echo "export REWARDS_REDIS_URL=127.0.0.1:$PORT"
    ;;
  *) usage ;;
esac
