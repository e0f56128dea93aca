"""The admin endpoint: /healthz, /readyz, /metrics, /status and a live status page at /.

Invariants:
- One small HTTP/1.1 server (h11), one request per connection, each answered within
  `REQUEST_TIMEOUT`; it runs for as long as the proxy does, the drain included, so that a
  load balancer sees `/readyz` turn 503 the moment the drain starts.
- `/readyz` is 200 only while the proxy accepts sessions and every pool has a healthy server.
- Every figure is read when asked, from an `AdminView`: one proxy (`ProxyView`, which reads a
  `Served` process), or with `workers` > 1 the supervisor's merge of its workers
  (`fleet.FleetView`); nothing here keeps state of its own, and nothing here knows the
  server's class or the supervisor's.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import resource
import time
from collections import Counter as Tally
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Final, Protocol

import h11
import trio

from wsproxy import __version__
from wsproxy.balancer import PoolStatus
from wsproxy.http1 import answer, next_event
from wsproxy.listening import accept_forever
from wsproxy.metrics import CONTENT_TYPE, Family, Gauge, ProxyMetrics, render
from wsproxy.registry import LiveSession
from wsproxy.snapshot import Snapshot

log = logging.getLogger(__name__)

REQUEST_TIMEOUT: Final = 10.0
NO_STORE: Final = ((b"cache-control", b"no-store"),)
_STARTED: Final = time.time()


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    """The `/status` document of one process (the supervisor's adds its workers)."""

    version: str
    ready: bool
    not_ready_because: str
    draining: bool
    connections: int  # client connections open, admitted or not
    sessions: int  # sessions being relayed
    pools: tuple[PoolStatus, ...]


class AdminView(Protocol):
    """What the admin endpoint shows: each call reads the figures of this instant."""

    async def not_ready(self) -> str:
        """Why no new sessions should come now, or "" when they should."""

    async def status(self) -> ProcessStatus:
        """The `/status` document."""

    async def metrics(self) -> str:
        """The `/metrics` text."""


class Sessions(Protocol):
    """The sessions of one process as the admin endpoint reads them (`registry.Registry`)."""

    @property
    def connections(self) -> int:
        """Client connections open now, admitted or not."""

    @property
    def metrics(self) -> ProxyMetrics:
        """The counters and histograms of ended sessions and refusals."""

    def live(self) -> Collection[LiveSession]:
        """The sessions being relayed now."""


class Served(Protocol):
    """One proxy process as the admin endpoint reads it (`server.Proxy`)."""

    @property
    def stopping(self) -> bool:
        """True once the drain has begun."""

    @property
    def snapshot(self) -> Snapshot:
        """What new sessions are served with."""

    @property
    def registry(self) -> Sessions:
        """Its sessions."""


class ProxyView:
    """The admin view of one proxy process."""

    def __init__(self, proxy: Served) -> None:
        self.proxy = proxy

    async def not_ready(self) -> str:
        return not_ready(self.proxy)

    async def status(self) -> ProcessStatus:
        return status(self.proxy)

    async def metrics(self) -> str:
        return metrics_text(self.proxy)


async def serve_admin(
    view: AdminView,
    listener: trio.SocketListener,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer admin requests on `listener` until cancelled."""
    async with listener, trio.open_nursery() as handlers:
        task_status.started()
        await accept_forever(listener, handlers, functools.partial(_answer, view), "admin endpoint")


async def _answer(view: AdminView, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        with trio.move_on_after(REQUEST_TIMEOUT):
            request = await _read_request(stream, conn)
            if request is None:
                return
            try:
                status, content_type, body = await respond(view, request)
            except Exception:  # a bug in one answer must stop neither the endpoint nor the proxy
                log.exception("admin request for %s failed", request.target.decode("latin-1"))
                status, content_type, body = 500, "text/plain; charset=utf-8", b"internal error\n"
            await stream.send_all(
                answer(
                    status,
                    content_type.encode(),
                    body,
                    extra=NO_STORE,
                    head=request.method == b"HEAD",
                )
            )
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _read_request(stream: trio.SocketStream, conn: h11.Connection) -> h11.Request | None:
    event = await next_event(stream, conn)
    return event if isinstance(event, h11.Request) else None


async def respond(view: AdminView, request: h11.Request) -> tuple[int, str, bytes]:
    """(status, content type, body) for one admin request."""
    if request.method not in (b"GET", b"HEAD"):
        return 405, "text/plain; charset=utf-8", b"only GET and HEAD\n"
    path = request.target.split(b"?", 1)[0]
    if path == b"/healthz":
        return 200, "text/plain; charset=utf-8", b"ok\n"
    if path == b"/readyz":
        problem = await view.not_ready()
        if problem:
            return 503, "text/plain; charset=utf-8", f"not ready: {problem}\n".encode()
        return 200, "text/plain; charset=utf-8", b"ready\n"
    if path == b"/metrics":
        return 200, CONTENT_TYPE, (await view.metrics()).encode()
    if path == b"/status":
        return 200, "application/json", json.dumps(asdict(await view.status()), indent=1).encode()
    if path == b"/":
        return 200, "text/html; charset=utf-8", PAGE.encode()
    return (
        404,
        "text/plain; charset=utf-8",
        b"not found (try /healthz, /readyz, /metrics, /status)\n",
    )


def not_ready(proxy: Served) -> str:
    """Why the proxy should get no new sessions now, or "" when it should."""
    if proxy.stopping:
        return "draining"
    now = trio.current_time()
    balancers = proxy.snapshot.balancers
    empty = [name for name, balancer in balancers.items() if not balancer.any_healthy(now)]
    return f"no healthy server in pool {', '.join(empty)}" if empty else ""


def status(proxy: Served) -> ProcessStatus:
    problem = not_ready(proxy)
    registry = proxy.registry
    return ProcessStatus(
        version=__version__,
        ready=not problem,
        not_ready_because=problem,
        draining=proxy.stopping,
        connections=registry.connections,
        sessions=len(registry.live()),
        pools=tuple(proxy.snapshot.status(trio.current_time())),
    )


def metrics_text(proxy: Served) -> str:
    """The `/metrics` text. Every route/pool pair the configuration names, and every server its
    pools list, has its series, at 0 when idle; a pair or server a reload removed keeps its
    series only while it has sessions."""
    metrics = proxy.registry.metrics
    live = proxy.registry.live()
    snapshot = proxy.snapshot
    routes: dict[tuple[str, ...], float] = {(r.path, r.pool): 0 for r in snapshot.config.routes}
    active = Tally(routes)
    active.update((each.route, each.balancer.name) for each in live)
    started = Tally(routes)
    started.update(metrics.sessions.values)
    messages = Tally(metrics.messages.values)
    wire = Tally(metrics.bytes.values)
    throttled = 0.0
    for each in live:  # live sessions count too, so the totals move as they run
        session = each.session
        if session.limit is not None:
            throttled += session.limit.throttled
        messages_in, messages_out = session.messages
        messages.update({("in",): messages_in, ("out",): messages_out})
        wire.update({("in",): session.client.bytes_in, ("out",): session.backend.bytes_in})
    pools = snapshot.status(trio.current_time())
    on_server = Tally({(p.pool, s.server): s.sessions for p in pools for s in p.servers})
    busy = [(each.balancer.name, each.server.key) for each in live]
    on_server.update([key for key in busy if key not in on_server])  # in a pool removed since
    families: list[Family] = [
        Gauge(
            "wsproxy_sessions_active",
            "Sessions being relayed now, by route and pool.",
            ("route", "pool"),
            sorted(active.items()),
        ),
        Gauge(
            metrics.sessions.name,
            metrics.sessions.help,
            metrics.sessions.labels,
            sorted(started.items()),
            kind="counter",
        ),
        metrics.rejections,
        Gauge(
            metrics.messages.name,
            "Messages relayed (direction in: client to backend).",
            ("direction",),
            sorted(messages.items()),
            kind="counter",
        ),
        Gauge(
            metrics.bytes.name,
            "Wire bytes relayed (direction in: client to backend).",
            ("direction",),
            sorted(wire.items()),
            kind="counter",
        ),
        Gauge(
            "wsproxy_backend_up",
            "1 if the server can take new sessions (listed, healthy), else 0.",
            ("pool", "server"),
            [
                ((pool.pool, server.server), float(server.health == "up" and server.listed))
                for pool in pools
                for server in pool.servers
            ],
        ),
        Gauge(
            "wsproxy_backend_sessions_active",
            "Sessions being relayed now, by pool and server.",
            ("pool", "server"),
            [(key, float(count)) for key, count in on_server.items()],
        ),
        metrics.connect_seconds,
        metrics.session_seconds,
        metrics.closes,
        Gauge(
            metrics.throttled.name,
            metrics.throttled.help,
            (),
            [((), metrics.throttled.values.get((), 0.0) + throttled)],
            kind="counter",
        ),
        Gauge(
            metrics.rate_limit_closes.name,
            metrics.rate_limit_closes.help,
            (),
            [((), metrics.rate_limit_closes.values.get((), 0.0))],
            kind="counter",
        ),
        metrics.config_reloads,
        *_process_figures(),
    ]
    return render(families)


def _process_figures() -> list[Family]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        open_fds = len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux
        resident, open_fds = usage.ru_maxrss * 1024, 0
    return [
        Gauge(
            "process_cpu_seconds_total",
            "User and system CPU time spent, in seconds.",
            (),
            [((), usage.ru_utime + usage.ru_stime)],
        ),
        Gauge("process_resident_memory_bytes", "Resident memory, in bytes.", (), [((), resident)]),
        Gauge("process_open_fds", "Open file descriptors.", (), [((), float(open_fds))]),
        Gauge(
            "process_start_time_seconds",
            "Start time of the process, in seconds since the epoch.",
            (),
            [((), _STARTED)],
        ),
    ]


PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>wsproxy status</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 12px; text-align: left; }
.up { color: #070; } .down, .ejected { color: #b00; } #error { color: #b00; }
</style>
</head>
<body>
<h1>wsproxy <span id="version"></span></h1>
<p>Ready: <b id="ready">?</b> <span id="why"></span> &middot; connections: <b id="connections">?</b>
&middot; sessions: <b id="sessions">?</b> &middot; updated <span id="updated">never</span></p>
<p id="workers"></p>
<p id="error"></p>
<div id="pools"></div>
<script>
function cell(row, text, cls) {
  const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls;
}
async function refresh() {
  try {
    const status = await (await fetch("/status", {cache: "no-store"})).json();
    document.getElementById("version").textContent = status.version;
    document.getElementById("ready").textContent = status.ready ? "yes" : "no";
    document.getElementById("why").textContent = status.not_ready_because;
    document.getElementById("connections").textContent = status.connections;
    document.getElementById("sessions").textContent = status.sessions;
    document.getElementById("workers").textContent = status.workers
      ? `${status.workers.length} workers: ` + status.workers.map((w) =>
          `#${w.index} pid ${w.pid ?? "-"}${w.running ? "" : " (not running)"}, ` +
          `${w.sessions} sessions, ${w.restarts} restarts`).join("; ")
      : "";
    const pools = document.getElementById("pools");
    pools.replaceChildren();
    for (const pool of status.pools) {
      const title = document.createElement("h2");
      title.textContent =
        `pool ${pool.pool} (${pool.balance}): ${pool.healthy} healthy, ${pool.sessions} sessions`;
      const table = document.createElement("table");
      table.className = "pool";
      table.dataset.pool = pool.pool;
      const head = table.createTHead().insertRow();
      for (const name of ["server", "health", "sessions", "total", "failures", "note"]) {
        const th = document.createElement("th"); th.textContent = name; head.appendChild(th);
      }
      for (const s of pool.servers) {
        const row = table.insertRow();
        row.dataset.server = s.server;
        cell(row, s.server); cell(row, s.health, s.health); cell(row, s.sessions);
        cell(row, s.sessions_total); cell(row, s.failures_total);
        cell(row, s.listed ? s.check_problem : "removed; finishing its sessions");
      }
      pools.append(title, table);
    }
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
    document.getElementById("error").textContent = "";
  } catch (error) {
    document.getElementById("error").textContent = `cannot reach the proxy: ${error}`;
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
"""
