"""The sessions of one proxy process: connection counts, the live sessions, what each one's end
adds to the metrics and the access log, and the paced close of a drain.

Invariants:
- `connections` counts every client connection from accept to close; `per_ip` counts them by
  client IP from the moment the IP is known (after any PROXY header and TLS) to close, and
  holds no IP at 0. `all_closed` returns once `connections` is 0.
- A session is in `sessions` from the moment its backend said yes until it has ended, its
  101 sent or not; its server counts it (`balancer.started` / `ended`) for exactly that time.
- Every close the proxy asks of a session from the background (a drain, rebalancing, an
  operator's) goes through `ask_to_close`: it waits until the session's 101 has been sent (no
  close frame ever overtakes the 101 or writes beside it), does nothing to a session that has
  ended, and logs, never raises, what goes wrong, so no close can stop the task that began it.
- When a session ends its messages, bytes, close and duration are added to `metrics`, once,
  and a session that got its 101 writes one access line.
- With `log.session_interval`, one timer (`timers`) walks the live sessions each interval, from
  the first session's start while any is live: each session at least an interval old gets a
  progress line with what moved since its previous one (or its start). The timer is set again
  by the next session to start once none was left, and by a reload that changes the interval.
  The walk is a task of its own (a system task: the registry has no nursery), writing
  `PROGRESS_BATCH` lines between checkpoints; a walk still under way when the next is due
  makes that next one skipped, and one that fails is logged, never raised.
- `close_paced` asks each session still open (of one server, for a server's drain) to close,
  evenly spread over the window, the first at once (`close_times`); a session that ended
  before its turn is skipped, and once `going_on()` is False no more are asked. Sessions that
  begin meanwhile (their handshake was under way) are asked in a next round, spread over what
  is left of the window; a server's drain looks once more at the window's end. A server's
  drain counts each ask in `wsproxy_drain_closes_total`.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Final

import trio

from wsproxy import timers
from wsproxy.balancer import Pick, PoolBalancer
from wsproxy.closes import Close
from wsproxy.config import Config, Security
from wsproxy.frames import CLOSE_ABNORMAL
from wsproxy.handshake import Reject
from wsproxy.logs import (
    AccessRecord,
    access_log,
    iso_time,
    wall_time,
    write_access,
    write_progress,
)
from wsproxy.metrics import ProxyMetrics, close_code_label
from wsproxy.relay import Session
from wsproxy.servers import ServerState
from wsproxy.wire import close_forcefully

log = logging.getLogger(__name__)

RETRY_AFTER: Final = ((b"retry-after", b"5"),)
PROGRESS_BATCH: Final = 200  # progress lines written between two checkpoints

log = logging.getLogger(__name__)


Totals = tuple[int, int, int, int]  # messages in, messages out, bytes in, bytes out


@dataclass(frozen=True, slots=True)
class LiveSession:
    """A session whose backend said yes: all the relay and the access line need."""

    id: str  # unique among the sessions of every process (`Registry.new_id`)
    client: str  # IP:PORT, as the access line and `/sessions` name it
    session: Session
    switching: bytes  # our 101 to the client
    balancer: PoolBalancer
    server: ServerState
    pick: Pick  # what the handshake brought to the choice of server (its hash key or cookie)
    route: str
    subprotocol: str
    started: float  # trio's clock when its backend said yes


class Registry:
    """Counts connections and keeps the live sessions of one process."""

    def __init__(self, config: Callable[[], Config]) -> None:
        """`config` gives the configuration in use now (its `metrics.close_codes` label the
        closes of sessions as they end)."""
        self._config = config
        self.metrics = ProxyMetrics()
        self.sessions: dict[Session, LiveSession] = {}
        self.connections = 0
        self.per_ip: Counter[str] = Counter()
        self._all_closed = trio.Event()
        self._all_closed.set()
        self._id_prefix = secrets.token_hex(3)  # tells this process's ids from other workers'
        self._serial = itertools.count(1)
        self._progress: timers.Timer | None = None  # the next walk for progress lines
        self._walking = False  # a walk is writing its lines (from a task of its own)
        # What each live session's previous progress line counted up to (none before its first)
        self._reported: dict[Session, Totals] = {}
        # The sessions whose 101 is being sent, and the event a close waits on (made by the
        # first close that waits)
        self._switching: dict[Session, trio.Event | None] = {}

    def new_id(self) -> str:
        """A session id no other session of any process has: this process's prefix, a serial."""
        return f"{self._id_prefix}-{next(self._serial):x}"

    def live(self) -> Collection[LiveSession]:
        """The sessions being relayed now."""
        return self.sessions.values()

    def find(self, session_id: str) -> LiveSession | None:
        """The live session called `session_id`, if any (a walk over them all: it serves the
        rare admin request, and keeps the start and end of every session free of an index)."""
        return next((live for live in self.sessions.values() if live.id == session_id), None)

    # ---------------------------------------------------------------- counts

    def opened(self) -> None:
        """A client connection was accepted."""
        self.connections += 1
        if self._all_closed.is_set():
            self._all_closed = trio.Event()

    def identified(self, ip: str) -> None:
        """The connection just opened comes from `ip`."""
        self.per_ip[ip] += 1

    def closed(self, ip: str) -> None:
        """A connection from `ip` ("" if it was never identified) was closed."""
        self.connections -= 1
        if ip:
            self.per_ip[ip] -= 1
            if not self.per_ip[ip]:
                del self.per_ip[ip]
        if not self.connections:
            self._all_closed.set()

    def over_limit(self, ip: str, security: Security) -> Reject | None:
        """The refusal due to a connection from `ip` by the connection limits, if any."""
        if self.connections > security.max_connections:
            return Reject(503, "the proxy is at its connection limit", RETRY_AFTER)
        if self.per_ip[ip] > security.max_connections_per_ip:
            return Reject(429, "too many connections from your address", RETRY_AFTER)
        return None

    async def all_closed(self) -> None:
        """Return once no client connection is open."""
        await self._all_closed.wait()

    # ---------------------------------------------------------------- sessions

    async def relay(self, live: LiveSession) -> None:
        """Send the 101 to the client (through its leg's wire) and relay `live` to its end."""
        session = live.session
        started = live.started
        live.balancer.started(live.server)
        self.sessions[session] = live
        self.metrics.sessions.inc(live.route, live.balancer.name)
        if self._progress is None and (interval := self._config().log.session_interval):
            self._progress = timers.at(started + interval, self._write_progress)
        self._switching[session] = None
        try:
            try:
                await session.client.wire.send_all(live.switching)
            finally:
                if (sent := self._switching.pop(session)) is not None:
                    sent.set()
            await session.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client left before its 101 was sent
        finally:
            del self.sessions[session]
            self._reported.pop(session, None)
            live.balancer.ended(live.server)
            self._count_ended(session, trio.current_time() - started)
            await close_forcefully(session.backend.stream)
        if not access_log.isEnabledFor(logging.INFO):
            return  # no access line is written: none is built
        close = session.close
        write_access(
            _record(
                live,
                iso_time(wall_time()),
                trio.current_time() - started,
                _totals(session),
                close.code if close else CLOSE_ABNORMAL,
                session.closed_by.value if session.closed_by else "unknown",
            )
        )

    async def ask_to_close(self, session: Session, close: Close) -> None:
        """Ask `session` to close with `close`, once its 101 has been sent, unless it has ended
        by then; what goes wrong is logged, never raised."""
        if session in self._switching:
            sent = self._switching[session] or trio.Event()
            self._switching[session] = sent
            await sent.wait()
        if session not in self.sessions:
            return
        live = self.sessions[session]
        try:
            await session.shutdown(close)
        except Exception:
            log.exception("closing session %s with %d failed", live.id, close.code)

    def interval_changed(self, before: float) -> None:
        """A reload changed `log.session_interval` from `before`: the walk follows the new
        interval from now (it may turn progress lines on or off for the sessions running)."""
        interval = self._config().log.session_interval
        if interval == before:
            return
        if self._progress is not None:
            self._progress.cancel()
            self._progress = None
        if interval and self.sessions:
            self._progress = timers.at(trio.current_time() + interval, self._write_progress)

    def _write_progress(self) -> None:
        """The timer's callback: set the next walk an interval later, while sessions are left,
        and start this one in a task of its own (a timer callback must not wait)."""
        self._progress = None
        interval = self._config().log.session_interval
        if not interval or not self.sessions:
            return
        now = trio.current_time()
        self._progress = timers.at(now + interval, self._write_progress)
        if not access_log.isEnabledFor(logging.INFO):
            return  # no line is written: none is built
        if self._walking:
            return  # the last walk is still writing: the next one counts from its lines
        self._walking = True
        trio.lowlevel.spawn_system_task(self._walk, now, interval, name="wsproxy progress lines")

    async def _walk(self, now: float, interval: float) -> None:
        """A progress line for each session at least `interval` old at `now`, `PROGRESS_BATCH`
        at a time with a checkpoint between: thousands of lines must not hold up the rest."""
        try:
            time = iso_time(wall_time())
            due = [item for item in self.sessions.items() if now - item[1].started >= interval]
            for first in range(0, len(due), PROGRESS_BATCH):
                if first:
                    await trio.lowlevel.checkpoint()
                for session, live in due[first : first + PROGRESS_BATCH]:
                    if session in self.sessions:  # not ended since the walk began
                        self._write_progress_line(session, live, time, now - live.started)
        except Exception:
            log.exception("progress lines failed")
        finally:
            self._walking = False

    def _write_progress_line(
        self, session: Session, live: LiveSession, time: str, age: float
    ) -> None:
        totals = _totals(session)
        before = self._reported.get(session, (0, 0, 0, 0))
        self._reported[session] = totals
        moved = (
            totals[0] - before[0],
            totals[1] - before[1],
            totals[2] - before[2],
            totals[3] - before[3],
        )
        write_progress(_record(live, time, age, moved, None, None))

    def _count_ended(self, session: Session, seconds: float) -> None:
        metrics = self.metrics
        messages_in, messages_out = session.messages
        metrics.messages.inc("in", amount=messages_in)
        metrics.messages.inc("out", amount=messages_out)
        metrics.bytes.inc("in", amount=session.client.bytes_in)
        metrics.bytes.inc("out", amount=session.backend.bytes_in)
        side = session.closed_by.value if session.closed_by else "unknown"
        code = session.close.code if session.close else CLOSE_ABNORMAL
        metrics.closes.inc(side, close_code_label(code, self._config().metrics.close_codes))
        metrics.session_seconds.observe(seconds)
        if (limit := session.limit) is not None:
            metrics.throttled.inc(amount=limit.throttled)
            if limit.exceeded:
                metrics.rate_limit_closes.inc()

    # ---------------------------------------------------------------- the drain's close

    async def close_paced(
        self,
        close: Close,
        window: float,
        server: ServerState | None = None,
        going_on: Callable[[], bool] = lambda: True,
    ) -> None:
        """Ask every live session (only those on `server`, if given) to close with `close`,
        spread evenly over `window` seconds; return once each has been asked, has ended before
        its turn, or `going_on()` said False at its turn."""
        asked: set[Session] = set()
        end = trio.current_time() + window
        async with trio.open_nursery() as closing:
            while going_on():
                left = [
                    session
                    for session, live in self.sessions.items()
                    if session not in asked and (server is None or live.server is server)
                ]
                if not left:
                    if server is None or trio.current_time() >= end:
                        break
                    await trio.sleep_until(end)  # a server's: one more look at the window's end
                    continue
                asked.update(left)
                start = trio.current_time()
                times = close_times(len(left), max(end - start, 0.0))
                for when, session in zip(times, left, strict=True):
                    closing.start_soon(
                        self._close_at, session, start + when, close, going_on, server is not None
                    )
                await trio.sleep_until(start + times[-1])  # then look for sessions begun since

    async def _close_at(
        self,
        session: Session,
        when: float,
        close: Close,
        going_on: Callable[[], bool],
        counted: bool,
    ) -> None:
        await trio.sleep_until(when)
        if session in self.sessions and going_on():
            if counted:
                self.metrics.drain_closes.inc(self.sessions[session].balancer.name)
            await self.ask_to_close(session, close)


def _totals(session: Session) -> Totals:
    messages_in, messages_out = session.messages
    return messages_in, messages_out, session.client.bytes_in, session.backend.bytes_in


def _record(
    live: LiveSession,
    time: str,
    seconds: float,
    counts: Totals,
    close_code: int | None,
    closed_by: str | None,
) -> AccessRecord:
    """The access line's record of `live` (a progress line's: without a close)."""
    messages_in, messages_out, bytes_in, bytes_out = counts
    return AccessRecord(
        time=time,
        client=live.client,
        route=live.route,
        pool=live.balancer.name,
        server=live.server.key,
        subprotocol=live.subprotocol,
        duration=round(seconds, 3),
        messages_in=messages_in,
        messages_out=messages_out,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        close_code=close_code,
        closed_by=closed_by,
    )


def close_times(count: int, window: float) -> list[float]:
    """When each of `count` sessions is closed, in seconds from the start of `window`: evenly
    spaced, the first at once and the last a step before the window's end."""
    return [window * index / count for index in range(count)]
