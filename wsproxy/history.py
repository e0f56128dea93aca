"""The recent past of each server's sessions, for the status page's chart: a ring of samples.

Invariants:
- Pure: no I/O, no clock of its own. Callers pass `now` in wall-clock seconds (`time.time()`),
  the one clock every process of a machine shares, so workers' samples line up.
- A sample is labelled with the start of the interval it was taken in (`slot`): a multiple of
  `interval` since the epoch. Samples are kept in increasing time order, at most one per slot
  (a second one in the same slot replaces the first), and only those within `span` of the
  newest; a clock that goes back starts the history over.
- Merging (`merge_histories`, the supervisor's view of its workers) sums each server's sessions
  over the workers that have a sample of that slot, and shows no slot newer than the oldest
  "newest sample" of the workers: a worker that has not yet sampled the current slot would
  otherwise be missing from it, and the chart would dip.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from wsproxy.balancer import PoolStatus

INTERVAL: Final = 10.0  # seconds between samples
SPAN: Final = 600.0  # how far back the history goes: 10 minutes

Counts = dict[str, dict[str, int]]  # pool → server → sessions


@dataclass(frozen=True, slots=True)
class Sample:
    """The sessions on each server of each pool at `time` (the start of its slot)."""

    time: float
    pools: Counts


@dataclass(frozen=True, slots=True)
class HistoryStatus:
    """The history as `/status` shows it: `time` is the answering process's clock now."""

    interval: float
    span: float
    time: float
    samples: tuple[Sample, ...]  # oldest first


def slot(now: float, interval: float) -> float:
    """The start of the interval `now` falls in (rounded to the millisecond, so the same slot
    computed in two processes compares equal)."""
    return round(math.floor(now / interval) * interval, 3)


def sessions_of(pools: Iterable[PoolStatus]) -> Counts:
    """The sample figures of a `/status` pool list: each server's live sessions."""
    return {pool.pool: {s.server: s.sessions for s in pool.servers} for pool in pools}


class History:
    """The samples of the last `span` seconds, one every `interval` seconds."""

    def __init__(self, interval: float = INTERVAL, span: float = SPAN) -> None:
        if interval <= 0 or span < interval:
            raise ValueError("a history needs 0 < interval <= span")
        self.interval = interval
        self.span = span
        self._samples: deque[Sample] = deque(maxlen=int(span // interval) + 1)

    def __len__(self) -> int:
        return len(self._samples)

    def record(self, now: float, pools: Counts) -> None:
        """Keep `pools` as the sample of the slot `now` falls in."""
        at = slot(now, self.interval)
        samples = self._samples
        if samples and samples[-1].time > at:  # the clock went back
            samples.clear()
        if samples and samples[-1].time == at:
            samples.pop()
        samples.append(Sample(at, pools))
        while samples[0].time < at - self.span:
            samples.popleft()

    def until_next(self, now: float) -> float:
        """Seconds from `now` (just sampled) to the next sample: the start of the next slot, but
        never sooner than half an interval, so a sampler paced by another clock than the wall
        clock (a test's mock clock, a wake-up a moment early) samples at most twice a slot."""
        return max(slot(now, self.interval) + self.interval - now, self.interval / 2)

    def status(self, now: float) -> HistoryStatus:
        return HistoryStatus(self.interval, self.span, round(now, 3), tuple(self._samples))


def parse_history(document: Mapping[str, Any]) -> HistoryStatus:
    """A `/status` document's `history` as data; raises KeyError, TypeError or ValueError when it
    is not one."""
    samples = tuple(
        Sample(
            float(sample["time"]),
            {
                str(pool): {str(server): int(count) for server, count in servers.items()}
                for pool, servers in sample["pools"].items()
            },
        )
        for sample in document["samples"]
    )
    return HistoryStatus(
        float(document["interval"]), float(document["span"]), float(document["time"]), samples
    )


def merge_histories(each: Sequence[HistoryStatus]) -> HistoryStatus:
    """Several workers' histories as one (see the module's invariants). Their interval and span
    are the first one's: every worker runs the same code."""
    if not each:
        return HistoryStatus(INTERVAL, SPAN, 0.0, ())
    first = each[0]
    newest = min((h.samples[-1].time for h in each if h.samples), default=math.inf)
    summed: dict[float, Counts] = {}
    for history in each:
        for sample in history.samples:
            if sample.time > newest:
                continue
            pools = summed.setdefault(sample.time, {})
            for pool, servers in sample.pools.items():
                counts = pools.setdefault(pool, {})
                for server, sessions in servers.items():
                    counts[server] = counts.get(server, 0) + sessions
    return HistoryStatus(
        first.interval,
        first.span,
        max(h.time for h in each),
        tuple(Sample(time, pools) for time, pools in sorted(summed.items())),
    )
