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
- `GET /sessions` lists live sessions; the actions (`POST /sessions/{id}/close`,
  `/pools/{pool}/servers/{server}/drain` and `/undrain`) pass the listener's `Guard` first,
  then are parsed (`adminapi`; a body of at most `MAX_BODY` bytes), then reach the view. A
  known path asked with another method is a 405 naming the one it takes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import resource
import time
from collections import Counter as Tally
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Final, NamedTuple, Protocol

import h11
import trio

from wsproxy import __version__
from wsproxy.adminapi import (
    MAX_BODY,
    NOBODY,
    Action,
    BadRequest,
    CloseSession,
    Drain,
    Guard,
    SessionQuery,
    SessionRow,
    action_done,
    action_unknown,
    describe,
    is_action,
    parse_action,
    parse_query,
    refusal,
    select_sessions,
    sessions_document,
)
from wsproxy.balancer import PoolStatus
from wsproxy.closes import Close
from wsproxy.history import History, HistoryStatus, sessions_of
from wsproxy.http1 import answer, next_event
from wsproxy.listening import accept_forever
from wsproxy.metrics import CONTENT_TYPE, Family, Gauge, ProxyMetrics, render
from wsproxy.page import PAGE
from wsproxy.registry import LiveSession
from wsproxy.servers import ServerStatus
from wsproxy.snapshot import Snapshot

log = logging.getLogger(__name__)

REQUEST_TIMEOUT: Final = 10.0
NO_STORE: Final = ((b"cache-control", b"no-store"),)
TEXT: Final = "text/plain; charset=utf-8"
JSON: Final = "application/json"
READABLE: Final = (b"/healthz", b"/readyz", b"/metrics", b"/status", b"/sessions", b"/")
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
    history: HistoryStatus  # each server's sessions over the last minutes, for the page's chart


class AdminView(Protocol):
    """What the admin endpoint shows: each call reads the figures of this instant."""

    async def not_ready(self) -> str:
        """Why no new sessions should come now, or "" when they should."""

    async def status(self) -> ProcessStatus:
        """The `/status` document."""

    async def metrics(self) -> str:
        """The `/metrics` text."""

    async def sessions(self, query: SessionQuery) -> list[SessionRow]:
        """The live sessions `query` lists (`adminapi.select_sessions`)."""

    async def act(self, action: Action) -> bool:
        """Begin `action`; False if what it names (a session, a pool's server) is unknown."""


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


class Operable(Protocol):
    """The actions of one process (`actions.Actions`); each returns False when what it names is
    unknown."""

    def close_session(self, session_id: str, close: Close) -> bool:
        """Ask the live session `session_id` to close with `close`, in the background."""

    def drain(self, pool: str, server: str, window: float, code: int) -> bool:
        """No new sessions to `server` (as /status names it) of `pool`, and its sessions closed
        with `code` spread over `window` seconds."""

    def undrain(self, pool: str, server: str) -> bool:
        """New sessions may go to that server again."""


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

    @property
    def history(self) -> History:
        """Its servers' recent sessions."""

    @property
    def actions(self) -> Operable:
        """What an operator may do to it."""


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

    async def sessions(self, query: SessionQuery) -> list[SessionRow]:
        return select_sessions(session_rows(self.proxy.registry.live()), query)

    async def act(self, action: Action) -> bool:
        actions = self.proxy.actions
        if isinstance(action, CloseSession):
            return actions.close_session(action.session, Close(action.code, action.reason))
        if isinstance(action, Drain):
            return actions.drain(action.pool, action.server, action.window, action.code)
        return actions.undrain(action.pool, action.server)


def session_rows(live: Collection[LiveSession]) -> list[SessionRow]:
    """Each live session as `/sessions` shows it."""
    now = trio.current_time()
    rows = []
    for each in live:
        session = each.session
        messages_in, messages_out = session.messages
        rows.append(
            SessionRow(
                id=each.id,
                client=each.client,
                route=each.route,
                pool=each.balancer.name,
                server=each.server.key,
                age=round(now - each.started, 6),  # fine enough that the order is the start order
                messages_in=messages_in,
                messages_out=messages_out,
                bytes_in=session.client.bytes_in,
                bytes_out=session.backend.bytes_in,
            )
        )
    return rows


class Reply(NamedTuple):
    """One admin answer."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


async def keep_history(history: History, snapshot: Callable[[], Snapshot]) -> None:
    """Sample each server's sessions into `history` (the page's chart) at the start of every
    interval, for as long as the proxy serves."""
    while True:
        history.record(time.time(), sessions_of(snapshot().status(trio.current_time())))
        await trio.sleep(history.until_next(time.time()))


async def serve_admin(
    view: AdminView,
    listener: trio.SocketListener,
    guard: Guard = NOBODY,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer admin requests on `listener` until cancelled; `guard` says who may act."""
    async with listener, trio.open_nursery() as handlers:
        task_status.started()
        await accept_forever(
            listener, handlers, functools.partial(_answer, view, guard), "admin endpoint"
        )


async def _answer(view: AdminView, guard: Guard, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        with trio.move_on_after(REQUEST_TIMEOUT):
            read = await _read_request(stream, conn)
            if read is None:
                return
            request, body = read
            try:
                if body is None:
                    reply = Reply(400, TEXT, b"the body is larger than %d bytes\n" % MAX_BODY)
                else:
                    reply = await respond(view, request, body, guard)
            except Exception:  # a bug in one answer must stop neither the endpoint nor the proxy
                log.exception("admin request for %s failed", request.target.decode("latin-1"))
                reply = Reply(500, TEXT, b"internal error\n")
            await stream.send_all(
                answer(
                    reply.status,
                    reply.content_type.encode(),
                    reply.body,
                    extra=(*NO_STORE, *reply.headers),
                    head=request.method == b"HEAD",
                )
            )
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _read_request(
    stream: trio.SocketStream, conn: h11.Connection
) -> tuple[h11.Request, bytes | None] | None:
    """The request and its body (None: longer than `MAX_BODY`), or None if none came whole."""
    request = await next_event(stream, conn)
    if not isinstance(request, h11.Request):
        return None
    body = bytearray()
    while isinstance(event := await next_event(stream, conn), h11.Data):
        body += event.data
        if len(body) > MAX_BODY:
            return request, None
    return (request, bytes(body)) if isinstance(event, h11.EndOfMessage) else None


async def respond(
    view: AdminView, request: h11.Request, body: bytes = b"", guard: Guard = NOBODY
) -> Reply:
    """The answer to one admin request with its `body`."""
    path, _, query = request.target.partition(b"?")
    if path in READABLE:
        if request.method not in (b"GET", b"HEAD"):
            return Reply(405, TEXT, b"only GET and HEAD\n", ((b"allow", b"GET, HEAD"),))
        return await _read(view, path, query)
    if is_action(path):
        if request.method != b"POST":
            return Reply(405, TEXT, b"only POST\n", ((b"allow", b"POST"),))
        return await _act(view, request, path, body, guard)
    return Reply(404, TEXT, b"not found (try /healthz, /readyz, /metrics, /status, /sessions)\n")


async def _read(view: AdminView, path: bytes, query: bytes) -> Reply:
    if path == b"/healthz":
        return Reply(200, TEXT, b"ok\n")
    if path == b"/readyz":
        problem = await view.not_ready()
        if problem:
            return Reply(503, TEXT, f"not ready: {problem}\n".encode())
        return Reply(200, TEXT, b"ready\n")
    if path == b"/metrics":
        return Reply(200, CONTENT_TYPE, (await view.metrics()).encode())
    if path == b"/status":
        return Reply(200, JSON, json.dumps(asdict(await view.status()), indent=1).encode())
    if path == b"/sessions":
        try:
            wanted = parse_query(query)
        except BadRequest as exc:
            return Reply(400, TEXT, f"{exc}\n".encode())
        return Reply(200, JSON, sessions_document(await view.sessions(wanted)))
    return Reply(200, "text/html; charset=utf-8", PAGE.encode())


async def _act(
    view: AdminView, request: h11.Request, path: bytes, body: bytes, guard: Guard
) -> Reply:
    refused = refusal(guard, [value for name, value in request.headers if name == b"authorization"])
    if refused is not None:
        status, sentence = refused
        challenge = ((b"www-authenticate", b"Bearer"),) if status == 401 else ()
        return Reply(status, TEXT, f"{sentence}\n".encode(), challenge)
    try:
        action = parse_action(path, body)
    except BadRequest as exc:
        return Reply(400, TEXT, f"{exc}\n".encode())
    if not await view.act(action):
        return Reply(404, TEXT, f"{action_unknown(action)}\n".encode())
    if not guard.trusted:  # a worker's is the supervisor's, logged there
        log.info("admin action: %s", describe(action))
    return Reply(200, JSON, action_done(action))


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
        history=proxy.history.status(time.time()),
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
    drain_closes: Tally[tuple[str, ...]] = Tally({(pool.pool,): 0 for pool in pools})
    drain_closes.update(metrics.drain_closes.values)
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
        _per_server(
            "wsproxy_backend_up",
            "1 if the server can take new sessions (listed, healthy), else 0.",
            pools,
            lambda server: server.health == "up" and server.listed,
        ),
        _per_server(
            "wsproxy_backend_weight",
            "The weight new sessions are reckoned with: configured, agent's, 0 while draining.",
            pools,
            lambda server: server.effective_weight,
        ),
        _per_server(
            "wsproxy_backend_draining",
            "1 while the server drains (its agent's or an admin's drain), else 0.",
            pools,
            lambda server: server.draining,
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
            metrics.drain_closes.name,
            metrics.drain_closes.help,
            metrics.drain_closes.labels,
            sorted(drain_closes.items()),
            kind="counter",
        ),
        Gauge(  # every pool that rebalances has its series, at 0 until it moves a session
            metrics.rebalance_closes.name,
            metrics.rebalance_closes.help,
            metrics.rebalance_closes.labels,
            sorted(
                (
                    {(name,): 0.0 for name, pool in snapshot.config.pools.items() if pool.rebalance}
                    | metrics.rebalance_closes.values
                ).items()
            ),
            kind="counter",
        ),
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


def _per_server(
    name: str, help: str, pools: Sequence[PoolStatus], value: Callable[[ServerStatus], float]
) -> Gauge:
    """A gauge with one series per pool and server, of `value` of its status."""
    return Gauge(
        name,
        help,
        ("pool", "server"),
        [
            ((pool.pool, server.server), float(value(server)))
            for pool in pools
            for server in pool.servers
        ],
    )


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
