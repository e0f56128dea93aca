#!/usr/bin/env bash
# Build the Dockerfile and run the image the way it ships (../shared/container/try-image.sh:
# buildah, no Docker engine), in front of a `wsproxy echo` backend on this host: messages go
# through it, its HEALTHCHECK passes, and SIGTERM drains a held session with 1001 and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
T=../shared/container/try-image.sh
NAME=wsproxy-smoke
work=$(mktemp -d)
backend_pid=""
cleanup() {
  "$T" stop -n "$NAME" >/dev/null 2>&1 || true
  [[ -n "$backend_pid" ]] && kill "$backend_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

read -r proxy_port admin_port backend_port < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)
wsproxy echo --listen "127.0.0.1:$backend_port" >"$work/echo.log" 2>&1 &
backend_pid=$!

cat >"$work/config.yaml" <<YAML
listen: [{address: "127.0.0.1:$proxy_port"}]
admin: {address: "127.0.0.1:$admin_port"}
security: {allowed_origins: ["http://127.0.0.1"]}
routes: [{path: /, pool: echo}]
pools:
  echo:
    servers: ["ws://127.0.0.1:$backend_port"]
shutdown: {drain_timeout: 2s, close_window: 0s}
YAML
chmod a+r "$work/config.yaml"

echo "container: building and starting (proxy on $proxy_port, admin on $admin_port)"
eval "$("$T" up -n "$NAME" -v "$work/config.yaml:/etc/wsproxy/config.yaml:ro" \
  -e "WSPROXY_HEALTH_URL=http://127.0.0.1:$admin_port/healthz" \
  --wait-port "$proxy_port" --wait-timeout 180)"
"$T" health -n "$NAME"
echo "container: HEALTHCHECK passed"

python3 - "$proxy_port" <<'PY' > >(tee "$work/client.log") 2>&1 &
import sys
from websockets.sync.client import connect

url = f"ws://127.0.0.1:{sys.argv[1]}/"
with connect(url, origin="http://127.0.0.1") as ws:
    for text in ("one", "two", "three"):
        ws.send(text)
        assert ws.recv() == text, text
    print("container: three messages echoed through the image", flush=True)
    try:
        ws.recv(timeout=30)  # held open until the drain closes it
    except Exception as closed:  # ConnectionClosed
        code = getattr(getattr(closed, "rcvd", None), "code", None)
        assert code == 1001, f"the drain closed the session with {code}, not 1001"
        print("container: the held session was closed with 1001", flush=True)
    else:
        raise SystemExit("the session got a message instead of the drain's close")
PY
client=$!
for _ in $(seq 300); do  # until the client holds its session (at most 30 s)
  grep -q "three messages echoed" "$work/client.log" 2>/dev/null && break
  sleep 0.1
done
"$T" stop -n "$NAME" --timeout 20 && code=0 || code=$?
wait "$client"
[[ $code -eq 0 ]] || { echo "container: exit code $code, expected 0"; "$T" logs -n "$NAME" || true; exit 1; }
echo "container: SIGTERM drained and the container exited 0"
