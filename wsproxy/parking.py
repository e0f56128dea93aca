"""Parking idle sessions: a session whose two socket legs have been quiet for `PARK_AFTER` ends
its pump tasks and is watched, with every other parked session, by one task of the process.

An idle session then costs its objects and the one task that runs it, waiting without a
nursery, pumps or reads of its own (about half the memory of a session whose pumps wait).

Invariants:
- One `Parker` per trio run (a system task, started by the first `parker()`): it owns a private
  `select.epoll`, level-triggered, and waits for it with `trio.lowlevel.wait_readable`. A
  parked session's descriptors are in it, and only while the session is parked; a descriptor
  is removed before its socket can be closed (a parked session is woken first, by whatever
  would close it), so a reused descriptor number never wakes the wrong session.
- Every `PARK_AFTER` seconds while sessions are awake (and only then: an idle process with
  every session parked sleeps until a socket turns readable), the parker asks each awake session
  `quiet_fds(now - PARK_AFTER)`; a session that answers with its two descriptors is parked
  (`park()`), and woken (`wake()`) as soon as either turns readable (data, end of stream or
  error). A session decides for itself when it may park (see `relay.Session.quiet_fds`);
  anything else that needs its pumps (a clock that is due, a shutdown) wakes it first.
- Busy sessions pay two flag stores per wait of a pump for this (`Leg.waiting`): the parker
  only looks at them once per `PARK_AFTER`, and never moves their bytes.
- A failing session callback is logged; the parker and the other sessions go on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
from typing import Final, Protocol

import trio

log = logging.getLogger(__name__)

# How long both legs of a session must have been quiet (nothing read, nothing held) before it
# parks; it parks between one and two of these after its last byte.
PARK_AFTER: Final = 0.5


class Parkable(Protocol):
    def quiet_fds(self, since: float) -> tuple[int, int] | None:
        """The session's two descriptors if it may park now, having heard nothing since `since`."""

    def park(self) -> None:
        """End the pumps: the parker now watches the descriptors `quiet_fds` gave."""

    def wake(self) -> None:
        """A descriptor turned readable (the parker has let both go): start the pumps again."""


class Parker:
    """The process's parked sessions (by descriptor), its awake ones, and the task for both."""

    def __init__(self) -> None:
        self.awake: set[Parkable] = set()
        self.parked: dict[int, Parkable] = {}  # by descriptor, both of each session's
        self._fds: dict[Parkable, tuple[int, int]] = {}
        self._epoll = select.epoll()
        self._next_sweep = math.inf
        self._waiting = trio.CancelScope()

    def watch(self, session: Parkable) -> None:
        """`session`'s pumps run: look at it from the next sweep on."""
        self.awake.add(session)
        if self._next_sweep == math.inf:
            self._next_sweep = trio.current_time() + PARK_AFTER
            self._waiting.deadline = self._next_sweep

    def forget(self, session: Parkable) -> None:
        """`session` ends, or is woken by something else than the parker: let its descriptors go."""
        self.awake.discard(session)
        fds = self._fds.pop(session, None)
        if fds is not None:
            for fd in fds:
                self.parked.pop(fd, None)
                with contextlib.suppress(OSError):  # only if registering it failed
                    self._epoll.unregister(fd)

    async def run(self) -> None:
        try:
            while True:
                with trio.CancelScope(deadline=self._next_sweep) as self._waiting:
                    await trio.lowlevel.wait_readable(self._epoll.fileno())
                for fd, _ in self._epoll.poll(0):
                    session = self.parked.get(fd)
                    if session is None:
                        continue  # its other descriptor woke it just now
                    self.forget(session)
                    try:
                        session.wake()
                    except Exception:
                        log.exception("waking a parked session failed")
                now = trio.current_time()
                if now >= self._next_sweep:
                    self._sweep(now)
        finally:
            self._epoll.close()

    def _sweep(self, now: float) -> None:
        since = now - PARK_AFTER
        for session in list(self.awake):
            try:
                fds = session.quiet_fds(since)
                if fds is None:
                    continue
                self.awake.discard(session)
                self._fds[session] = fds
                for fd in fds:
                    self.parked[fd] = session
                    self._epoll.register(fd, select.EPOLLIN)
                session.park()
            except Exception:
                log.exception("parking a session failed")
                self.forget(session)
        self._next_sweep = now + PARK_AFTER if self.awake else math.inf


_parker: trio.lowlevel.RunVar[Parker] = trio.lowlevel.RunVar("wsproxy_parker")


def parker() -> Parker:
    """This run's parker (started by the first call)."""
    try:
        return _parker.get()
    except LookupError:
        new = Parker()
        _parker.set(new)
        trio.lowlevel.spawn_system_task(new.run, name="wsproxy parker")
        return new
