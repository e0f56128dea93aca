"""Parking sessions: a parked session has no pump tasks; the parker watches every parked
session's two sockets and relays their frames itself, waking a session only when its pumps are
needed.

A session (of two plain sockets) starts parked, so that an idle one costs its objects and the
one task that runs it, and a busy one costs no task switch, no epoll re-arm and no trip through
trio's run loop per read: the parker reads, feeds the frame reader and writes, in line.

Invariants:
- One `Parker` per trio run, installed by the first `parker()` as a trio instrument. It owns a
  private level-triggered `select.epoll` holding every parked session's descriptors (only while
  the session is parked) and trio's own epoll descriptor. A descriptor is removed before its
  socket is closed, so a reused descriptor number never reaches the wrong session.
- The parker runs only in `before_io_wait`, where trio is about to wait for I/O: no task runs
  meanwhile. It waits on its epoll for at most trio's timeout and returns as soon as trio has
  something to do: its own I/O is ready (trio's epoll is readable), a session was woken, or
  the timeout has passed. In the last two cases trio's own wait, still set for the first
  timeout, is cut short with `run_sync_soon`, so no deadline is ever late and no woken task
  waits. When trio has runnable tasks the timeout is 0: the parker only relays what is ready.
- For each readable descriptor the parker asks its session to relay what it has
  (`relay_ready`); the session decides what it relays in line (see `relay.Session`) and
  otherwise says so, and is woken (`wake()`): its pumps go on from where the parker stopped.
  Anything else that needs its pumps (a clock that is due, a shutdown) wakes it first.
- Under load (see `batching`) a round of reads may wait, up to the batching window, for more
  frames to come in. It waits on trio's epoll alone, so trio's I/O ends the wait, and never
  past trio's timeout: with runnable tasks (timeout 0) it never waits.
- Every `PARK_AFTER` seconds while sessions are awake (and only then), a timer asks each awake
  session for `parkable_fds(now - PARK_AFTER)`; a session that answers with its two
  descriptors parks again (`park()`). Awake sessions pay two flag stores per wait of a pump for
  this (`Leg.waiting`).
- Trio never finds itself idle while the parker waits for it (its own wait returns an event
  each time): with a parker installed, an autojump clock with a threshold above 0 and
  `wait_all_tasks_blocked` with a cushion above 0 never fire. (Threshold and cushion 0, the
  defaults the tests use, never let the parker wait.)
- Trio's epoll descriptor is not public: where it cannot be reached, `parker()` is None and
  sessions never park (their pumps run, as they would with TLS).
- A failing session callback is logged; the parker and the other sessions go on.
"""

from __future__ import annotations

import contextlib
import logging
import select
import time
from typing import Final, Protocol

import trio

from wsproxy import timers
from wsproxy.batching import ReadBatching

log = logging.getLogger(__name__)

# How often awake sessions are asked whether they may park again (a rate-limited one: how long
# both its legs must have been quiet).
PARK_AFTER: Final = 0.5


class Parkable(Protocol):
    def parkable_fds(self, since: float) -> tuple[int, int] | None:
        """The session's two descriptors if it may park now (`since`: see `PARK_AFTER`)."""

    def park(self) -> None:
        """End the pumps: the parker now watches the descriptors `parkable_fds` gave."""

    def relay_ready(self, fd: int, now: float) -> bool:
        """`fd` turned readable (at `now`): relay what it has in line; False if the pumps are
        needed."""

    def wake(self) -> None:
        """The pumps are needed (the parker has let both descriptors go): start them again."""


class Parker(trio.abc.Instrument):
    """The process's parked sessions (by descriptor), its awake ones, and the relaying of the
    parked ones' bytes while trio would otherwise wait for I/O."""

    def __init__(self, trio_epoll_fd: int, token: trio.lowlevel.TrioToken) -> None:
        self.awake: set[Parkable] = set()
        self.parked: dict[int, Parkable] = {}  # by descriptor, both of each session's
        self._fds: dict[Parkable, tuple[int, ...]] = {}
        self._epoll = select.epoll()
        self._trio_fd = trio_epoll_fd
        self._epoll.register(trio_epoll_fd, select.EPOLLIN)
        self._token = token
        self._sweep_timer: timers.Timer | None = None
        self._stirred = False  # a session changed what trio waits for (see `stir`)
        self.batching = ReadBatching(0.0)  # off until `batch_reads`
        # A pause waits on trio's epoll with `select`, whose timeout is finer than `epoll`'s
        # milliseconds but which takes only descriptors below FD_SETSIZE.
        self._pausable = _selectable(trio_epoll_fd)

    def watch(self, session: Parkable) -> None:
        """`session`'s pumps run: look at it from the next sweep on."""
        self.awake.add(session)
        if self._sweep_timer is None:
            self._sweep_timer = timers.at(trio.current_time() + PARK_AFTER, self._sweep)

    def forget(self, session: Parkable) -> None:
        """`session` ends, or is woken by something else than the parker: let its descriptors go."""
        self.awake.discard(session)
        fds = self._fds.pop(session, None)
        if fds is not None:
            for fd in fds:
                self.parked.pop(fd, None)
                with contextlib.suppress(OSError):  # only if registering it failed
                    self._epoll.unregister(fd)

    def release(self, session: Parkable, fd: int) -> None:
        """Let one of a parked session's descriptors go (its socket is about to be closed)."""
        fds = self._fds.get(session)
        if fds is not None and fd in fds:
            self._fds[session] = tuple(each for each in fds if each != fd)
            self.parked.pop(fd, None)
            self._epoll.unregister(fd)

    def stir(self) -> None:
        """A session, relaying in line, changed what trio waits for (it set a timer, or made a
        task runnable): the parker lets trio look again before it waits on."""
        self._stirred = True

    def hold(self, session: Parkable, fds: tuple[int, ...]) -> None:
        """Watch `session`'s two descriptors: it is parked (or parks right after)."""
        self.awake.discard(session)
        self._fds[session] = fds
        for fd in fds:
            self.parked[fd] = session
            self._epoll.register(fd, select.EPOLLIN)

    def before_io_wait(self, timeout: float) -> None:
        """Trio is about to wait up to `timeout` for its own I/O: relay the parked sessions'
        bytes meanwhile, waiting on their sockets and on trio's epoll at once, until trio has
        something to do (its I/O, a session woken, the timeout)."""
        try:
            self._relay(timeout)
        except Exception:
            log.exception("relaying for parked sessions failed")
            self._token.run_sync_soon(_nothing)

    def _relay(self, timeout: float) -> None:
        poll, parked, trio_fd = self._epoll.poll, self.parked, self._trio_fd
        current_time = trio.lowlevel.current_clock().current_time
        waits = timeout > 0
        end = time.monotonic() + timeout
        batching = self.batching
        while True:
            events = poll(timeout)
            if batching.on and events:
                events = self._pause(events, end if waits else 0.0)
            now = current_time()
            trio_ready = woken = False
            for fd, _ in events:
                if fd == trio_fd:
                    trio_ready = True
                    continue
                session = parked.get(fd)
                if session is None:
                    continue  # its other descriptor woke it just now
                try:
                    if session.relay_ready(fd, now):
                        continue
                except Exception:
                    log.exception("relaying for a parked session failed")
                self.forget(session)
                woken = True
                try:
                    session.wake()
                except Exception:
                    log.exception("waking a parked session failed")
            if self._stirred:
                woken, self._stirred = True, False
            clock = time.monotonic()
            batching.ready += len(events) - trio_ready
            if clock >= batching.period_end:
                batching.decide(clock)
            if trio_ready or not waits:
                return  # trio's own wait returns at once
            timeout = end - clock
            if woken or timeout <= 0 or not events:
                # Trio's own wait is for its first `timeout` still, and must not wait at all
                # now: a session's task is runnable, a deadline may have moved, or the time
                # trio waited for has come.
                self._token.run_sync_soon(_nothing)
                return

    def _pause(self, events: list[tuple[int, int]], end: float) -> list[tuple[int, int]]:
        """Wait until `batching` lets this round of reads begin (never past `end`; trio's own
        I/O ends the wait); the round's events."""
        now = time.monotonic()
        pause = min(self.batching.pause(now), end - now)
        if pause > 0 and self._pausable:
            select.select([self._trio_fd], [], [], pause)
            events = self._epoll.poll(0)
            now = time.monotonic()
        self.batching.began(now)
        return events

    def after_run(self) -> None:
        self._epoll.close()

    def _sweep(self) -> None:
        """Ask each awake session whether it may park again."""
        now = trio.current_time()
        since = now - PARK_AFTER
        for session in list(self.awake):
            try:
                fds = session.parkable_fds(since)
                if fds is None:
                    continue
                self.hold(session, fds)
                session.park()
            except Exception:
                log.exception("parking a session failed")
                self.forget(session)
        self._sweep_timer = timers.at(now + PARK_AFTER, self._sweep) if self.awake else None


def _nothing() -> None:
    pass


def _selectable(fd: int) -> bool:
    try:
        select.select([fd], [], [], 0)
    except (ValueError, OSError):
        return False
    return True


def _trio_epoll_fd() -> int | None:
    """The descriptor of trio's own epoll (None where trio does not use one we can reach)."""
    try:
        runner = trio._core._run.GLOBAL_RUN_CONTEXT.runner
        fd = runner.io_manager._epoll.fileno()
    except (AttributeError, ValueError, OSError):
        return None
    return fd if isinstance(fd, int) else None


_parker: trio.lowlevel.RunVar[Parker | None] = trio.lowlevel.RunVar("wsproxy_parker")


def parker() -> Parker | None:
    """This run's parker (installed by the first call); None where trio's own epoll cannot be
    reached, and sessions then never park."""
    try:
        return _parker.get()
    except LookupError:
        fd = _trio_epoll_fd()
        new = None if fd is None else Parker(fd, trio.lowlevel.current_trio_token())
        _parker.set(new)
        if new is not None:
            trio.lowlevel.add_instrument(new)
        return new


def batch_reads(window: float) -> None:
    """Batch this run's reads for parked sessions with `window` (see `batching`; 0: off)."""
    if (current := parker()) is not None:
        current.batching.window = window
