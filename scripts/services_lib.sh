# Shared by scripts/redis.sh, scripts/postgres.sh and scripts/mlflow_server.sh (sourced, not run).
#
# Each server keeps its state in one folder, $REWARDS_SERVICES_DIR/<name> (default: .services/ in
# the checkout): data, log, pid file and the port it was started on. `status` and `stop` read the
# port back from there, so a server started on a custom port is found again without the variable.
# Every server listens on 127.0.0.1 only.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES_DIR="${REWARDS_SERVICES_DIR:-$REPO/.services}"

# svc_init NAME PORT_VARIABLE DEFAULT_PORT: sets DIR and PORT.
svc_init() {
  local name="$1" var="$2" default="$3"
  DIR="$SERVICES_DIR/$name"
  mkdir -p "$DIR"
  # An explicit variable wins; else the port this server last started on; else the default.
  PORT="${!var:-$(cat "$DIR/port" 2>/dev/null || echo "$default")}"
}

pid_alive() {  # pid_alive PIDFILE
  [ -s "$1" ] && kill -0 "$(head -n1 "$1")" 2>/dev/null
}

port_in_use() {  # port_in_use PORT: something (anything) accepts connections on 127.0.0.1:PORT
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds
  local seconds="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$what did not come up within ${seconds}s" >&2
      return 1
    fi
    sleep 0.2
  done
}

usage() {
  echo "usage: $0 start|stop|status|env" >&2
  exit 2
}
