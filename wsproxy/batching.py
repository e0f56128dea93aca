"""Read batching: how long the parker waits before its next round of reads, decided. Pure: the
parker brings the instants and the counts.

Each round of reads costs a wake-up (an `epoll_wait` that slept, and the scheduler's switch)
whatever it finds. At a high rate a proxy that starts a round for every descriptor that turns
readable pays that cost per frame; waiting a little lets the next round find more frames, on more
descriptors, so every read, write and wake-up carries more. Network cards do the same with their
interrupts (interrupt moderation).

Invariants:
- The rate is measured over periods of `PERIOD`: the descriptors found ready by the rounds
  that began in a period, divided by the time it lasted. A period ends at the first round
  `PERIOD` or more after it began, and its rate holds for the next period.
- Batching turns on at a rate of two per `window`: from there a wait saves more wake-ups
  than it costs (the wait is a wake-up too). It stays on while the rate is at least one per
  `window`, since batching itself lowers the count (a busy descriptor is counted once per
  round however many frames it brings); below that every round starts at once, and no
  latency is added.
- While batching is on, a round starts no sooner than `window` after the last one began:
  `pause()` is never more than `window`, and 0 when the window is 0 (off).
"""

from __future__ import annotations

import math
from typing import Final

# How long the rate is measured over before batching is turned on or off.
PERIOD: Final = 0.01


class ReadBatching:
    """One parker's read rounds: when the next may start."""

    def __init__(self, window: float) -> None:
        self.window = window  # seconds; 0: rounds always start at once
        self._on = False
        self._last_round = -math.inf
        self._period_start = -math.inf
        self._ready = 0  # descriptors found ready in this period

    @property
    def on(self) -> bool:
        """Whether the last period's rate turned batching on."""
        return self._on and self.window > 0

    def pause(self, now: float) -> float:
        """How long to wait from `now` before the round of reads that is due."""
        if not self.on:
            return 0.0
        return max(0.0, min(self.window, self._last_round + self.window - now))

    def round(self, now: float, ready: int) -> None:
        """A round of reads began at `now` and found `ready` descriptors ready."""
        self._last_round = now
        elapsed = now - self._period_start
        if elapsed >= PERIOD:
            # The first period (elapsed inf) leaves batching off.
            needed = 1 if self._on else 2  # per window
            self._on = self.window > 0 and self._ready * self.window >= needed * elapsed
            self._period_start, self._ready = now, 0
        self._ready += ready
