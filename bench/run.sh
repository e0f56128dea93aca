#!/bin/sh
# The shared WebSocket proxy benchmark (../shared/bench) with this checkout's wsproxy beside
# `direct`, nginx and HAProxy: one table per round, and a median summary with --repeat.
#
#   bench/run.sh --quick --scenarios small          # about a minute: proves the set-up works
#   bench/run.sh --repeat 3                         # the figures to decide on (about 8 min)
#   bench/run.sh --repeat 3 --scenarios churn,idle  # any other option goes to the shared bench.py
#
# The shared directory is $WSPROXY_SHARED, else ../shared beside this repository. wsproxy is
# this checkout's: .venv/bin/wsproxy when the checkout has that virtual environment, else
# `python3 -m wsproxy` with this checkout first on PYTHONPATH. Its configuration is
# bench/wsproxy.yaml.in (@listen@ and @backend@ are filled in per cell). Commands of extra
# proxies get this checkout's too, as `wsproxy` (the venv's bin comes first on PATH) or as
# `python3 -m wsproxy` (PYTHONPATH), e.g.
#   bench/run.sh --proxy 'wsproxy-hash=wsproxy serve -c {config}' \
#     --proxy-config wsproxy-hash=bench/hash-health.yaml.in
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
shared=${WSPROXY_SHARED:-$repo/../shared}
if [ ! -f "$shared/bench/bench.py" ]; then
  echo "no $shared/bench/bench.py: set WSPROXY_SHARED to the shared directory" >&2
  exit 2
fi
if [ -x "$repo/.venv/bin/wsproxy" ]; then
  PATH="$repo/.venv/bin:$PATH"
  wsproxy="'$repo/.venv/bin/wsproxy'"
else
  PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONPATH
  wsproxy="python3 -m wsproxy"
  if ! python3 -c 'import trio, h11, wsproto, yaml' 2>/dev/null; then
    echo "$(command -v python3) lacks wsproxy's dependencies: make .venv here" \
      "(python3 -m venv .venv && .venv/bin/pip install -e .) or put a venv that has them first on PATH" >&2
    exit 2
  fi
fi
export PATH
commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$repo" diff --quiet HEAD -- wsproxy 2>/dev/null || commit="$commit+uncommitted changes"
echo "wsproxy: $repo (commit $commit), run as $wsproxy; benchmark: $shared/bench" >&2
exec python3 "$shared/bench/bench.py" \
  --proxy "wsproxy=$wsproxy serve -c {config}" \
  --proxy-config "wsproxy=$here/wsproxy.yaml.in" \
  "$@"
