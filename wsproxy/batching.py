"""Read batching: how long the parker waits before its next round of reads, decided. Pure: the
parker brings the instants and the counts.

Each round of reads costs a wake-up (an `epoll_wait` that slept, and the scheduler's switch)
whatever it finds. At a high rate a proxy that starts a round for every descriptor that turns
readable pays that cost per frame; waiting a little lets the next round find more frames, on more
descriptors, so every read, write and wake-up carries more. Network cards do the same with their
interrupts (interrupt moderation).

Invariants:
- The rate is measured over periods of at least `PERIOD`: the parker adds the descriptors each
  round found ready to `ready`, and calls `decide` once `period_end` has passed; the rate is
  `ready` over the time the period really lasted, and holds for the next period. The first
  call only begins the first period.
- Batching turns on at a rate of two per `window`: from there a wait saves more wake-ups than
  it costs (the wait is a wake-up too). It stays on while the rate is at least one per
  `window`, since batching itself lowers the count (a busy descriptor is counted once per
  round however many frames it brings); below that every round starts at once, and no
  latency is added.
- While batching is on, a round begins no sooner than `window` after the last one began:
  `pause()` is never more than `window`. A window of 0 turns batching off at once.
- Off, a round costs the parker an addition, a clock read and a comparison, nothing more.
"""

from __future__ import annotations

import math
from typing import Final

# How long the rate is measured over before batching is turned on or off.
PERIOD: Final = 0.01


class ReadBatching:
    """One parker's read rounds: whether they are batched, and when the next may begin."""

    def __init__(self, window: float) -> None:
        self._window = window  # seconds
        self.on = False
        self.ready = 0  # descriptors found ready in this period (the parker adds them)
        self.period_end = -math.inf  # when `decide` is due
        self._period_start = -math.inf
        self._last_round = -math.inf

    @property
    def window(self) -> float:
        return self._window

    @window.setter
    def window(self, seconds: float) -> None:
        self._window = seconds
        if seconds <= 0:
            self.on = False

    def decide(self, now: float) -> None:
        """End the period at `now`: turn batching on or off for the next one."""
        needed = 1 if self.on else 2  # ready per window
        elapsed = now - self._period_start  # inf for the first: batching stays off
        self.on = self._window > 0 and self.ready * self._window >= needed * elapsed
        self._period_start, self.period_end, self.ready = now, now + PERIOD, 0

    def pause(self, now: float) -> float:
        """How long to wait from `now` before the round of reads that is due."""
        if not self.on:
            return 0.0
        return max(0.0, min(self._window, self._last_round + self._window - now))

    def began(self, now: float) -> None:
        """A round of reads began at `now` (while batching is on)."""
        self._last_round = now
