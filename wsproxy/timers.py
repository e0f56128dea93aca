"""One task per trio run that calls things back at their instants: every session's keepalive
and idle clock, without a sleeping task (and its cancellation) per session.

Invariants:
- `at(when, callback)` calls `callback()` once, from the timer task, at its first wake at or after
  `when` (under trio's autojump clock: at `when` exactly), unless the `Timer` it returned was
  cancelled first. Callbacks due at the same instant run in the order they were set.
- A callback runs in the one task every session shares: it must not wait (it starts a task for
  anything that does). One that raises is logged; the others still run.
- A cancelled timer holds no reference to its callback, and cancelled timers are pruned once
  they outnumber the live ones: memory follows the live timers, not the ended sessions.
- The task is a trio system task, started by the first `at` of a run; it ends with the run.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable
from typing import Final

import trio

log = logging.getLogger(__name__)

_PRUNE_AT: Final = 64  # cancelled timers tolerated before a prune is considered


class Timer:
    """A callback set for an instant; `cancel()` before it is due and it never runs."""

    __slots__ = ("callback", "order", "when")

    def __init__(self, when: float, order: int, callback: Callable[[], object]) -> None:
        self.when = when
        self.order = order
        self.callback: Callable[[], object] | None = callback

    def __lt__(self, other: Timer) -> bool:
        return (self.when, self.order) < (other.when, other.order)

    def cancel(self) -> None:
        if self.callback is not None:
            self.callback = None
            _timers.get().cancelled += 1


class Timers:
    """The timers of one trio run, in a heap, and the task that fires them."""

    def __init__(self) -> None:
        self.heap: list[Timer] = []
        self.cancelled = 0  # cancelled timers still in the heap
        self._order = itertools.count()
        self._waiting = trio.CancelScope()

    def at(self, when: float, callback: Callable[[], object]) -> Timer:
        timer = Timer(when, next(self._order), callback)
        heapq.heappush(self.heap, timer)
        if when < self._waiting.deadline:
            self._waiting.deadline = when
        if self.cancelled > _PRUNE_AT and self.cancelled * 2 > len(self.heap):
            self.heap = [each for each in self.heap if each.callback is not None]
            heapq.heapify(self.heap)
            self.cancelled = 0
        return timer

    async def run(self) -> None:
        while True:
            heap = self.heap
            with trio.CancelScope(deadline=heap[0].when if heap else math.inf) as self._waiting:
                await trio.sleep_forever()
            now = trio.current_time()
            while self.heap and self.heap[0].when <= now:  # a callback's `at` may prune it
                timer = heapq.heappop(self.heap)
                callback = timer.callback
                if callback is None:
                    self.cancelled -= 1
                    continue
                timer.callback = None
                try:
                    callback()
                except Exception:
                    log.exception("a timer's callback failed")


_timers: trio.lowlevel.RunVar[Timers] = trio.lowlevel.RunVar("wsproxy_timers")


def at(when: float, callback: Callable[[], object]) -> Timer:
    """Call `callback()` at `when` (trio's clock), from this run's timer task."""
    try:
        timers = _timers.get()
    except LookupError:
        timers = Timers()
        _timers.set(timers)
        trio.lowlevel.spawn_system_task(timers.run, name="wsproxy timers")
    return timers.at(when, callback)
