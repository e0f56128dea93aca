#!/usr/bin/env bash
# Autobahn|Testsuite (RFC 6455) against wsproxy in front of the shared reference echo backend
# (Node `ws`, permessage-deflate on), so that any failed case is the proxy's.
# Usage: scripts/autobahn-through-proxy.sh [--full] [autobahn.sh options...]
#   (default)  the runner's default selection, as CI runs it (433 cases, 3-4 min)
#   --full     every case (517, 10-14 min), with close behaviour judged strictly and a declined
#              permessage-deflate counted as a failure: AUTOBAHN_EXCLUDE= AUTOBAHN_STRICT_CLOSE=1
#              AUTOBAHN_REQUIRE_DEFLATE=1. Options after it still apply (`-c '1.*,7.*'`).
set -euo pipefail
if [ "${1:-}" = --full ]; then
  shift
  export AUTOBAHN_EXCLUDE= AUTOBAHN_STRICT_CLOSE=1 AUTOBAHN_REQUIRE_DEFLATE=1
fi
here=$(cd "$(dirname "$0")/.." && pwd)
shared=${WSPROXY_SHARED:-$here/../shared}
[ -x "$shared/conformance/autobahn.sh" ] || {
  echo "no $shared/conformance/autobahn.sh: set WSPROXY_SHARED to the shared directory" >&2; exit 2
}
work=$(mktemp -d "${TMPDIR:-/tmp}/wsproxy-autobahn.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2; return 1
}

backend_port=$(free_port)
"$shared/conformance/echo-backend.sh" "$backend_port" deflate >"$work/backend.log" 2>&1 &
pids+=($!)
wait_port "$backend_port"

proxy_port=$(free_port)
cat >"$work/wsproxy.yaml" <<YAML
listen:
  - address: 127.0.0.1:$proxy_port
security:
  allowed_origins: ["http://127.0.0.1"]
  max_message_size: 16MiB          # section 9 sends messages up to 16 MiB
routes:
  - {path: /, pool: echo}
pools:
  echo:
    servers: [{url: "ws://127.0.0.1:$backend_port"}]
log:
  level: warning
YAML
python3 -m wsproxy serve -c "$work/wsproxy.yaml" >"$work/proxy.log" 2>&1 &
pids+=($!)
wait_port "$proxy_port"

status=0
"$shared/conformance/autobahn.sh" -o http://127.0.0.1 "$@" "ws://127.0.0.1:$proxy_port/" || status=$?
if grep -q Traceback "$work/proxy.log"; then
  echo "wsproxy logged a traceback during the run:" >&2
  cat "$work/proxy.log" >&2
  status=1
fi
exit "$status"
