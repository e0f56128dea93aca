"""A session's keepalive and idle clocks, decided: which leg to ping, which leg is dead, whether
the session is idle, and when to look next. Pure: the relay brings the legs and the instant.

Invariants:
- A leg is pinged once `interval` has passed since it was last heard, and only once per
  silence (not again until it has been heard since its ping, nor while a ping of ours waits to
  be written to it); it is dead `timeout` after that, or after the ping was written if that
  came later (`pinged_at` is moved then).
- A leg whose ping waits behind a frame of the other leg's that is half-way to it
  (`relayed_mid_frame`), while the other leg's pump waits for its own peer and not for this
  leg, is not dead: its ping cannot be framed, and the delay is the other peer's. (If that
  pump waits to write to it, it may be the one that stalls: it is judged as usual.)
- A leg whose close we wrote, or that is lost, has no clock.
- A leg whose pump waits on the other leg (`held`) cannot be heard: it is neither pinged nor
  dead, and is looked at again an `interval` from now, unless the other leg is held too (then
  neither peer reads, and both are judged as usual).
- The session is idle `idle` after its last relayed frame; idle wins over everything else.
- `interval` or `idle` 0 turns that clock off; with nothing to wait for, the next look is `inf`.
"""

from __future__ import annotations

import math
from typing import Protocol, TypeVar


class HeardLeg(Protocol):
    """What the clocks read of a leg."""

    @property
    def lost(self) -> bool: ...
    @property
    def sent_close(self) -> bool: ...
    @property
    def held(self) -> bool: ...
    @property
    def last_rx(self) -> float: ...
    @property
    def pinged_at(self) -> float: ...
    @property
    def ping_waits(self) -> bool: ...
    @property
    def relayed_mid_frame(self) -> bool: ...


LegT = TypeVar("LegT", bound=HeardLeg)


def scan(
    now: float,
    legs: tuple[LegT, LegT],
    last_relay: float,
    *,
    interval: float,
    timeout: float,
    idle: float,
) -> tuple[float | LegT | None, list[LegT]]:
    """What is due at `now`: None when the session is idle, a leg silent past its timeout, or
    else the next instant to look; and the silent legs to ping now."""
    wake = math.inf
    pings: list[LegT] = []
    if idle:
        idle_at = last_relay + idle
        if now >= idle_at:
            return None, pings
        wake = idle_at
    if interval:
        first, second = legs
        for leg, other in ((first, second), (second, first)):
            if leg.lost or leg.sent_close:
                continue
            if leg.held and not other.held:  # its silence is ours
                wake = min(wake, now + interval)
                continue
            ping_at = leg.last_rx + interval
            dead_at = max(ping_at, leg.pinged_at) + timeout
            if now >= dead_at:
                if not (leg.ping_waits and other.relayed_mid_frame and not other.held):
                    return leg, pings
                wake = min(wake, now + timeout)  # behind the other peer's frame: not its fault
                continue
            if now >= ping_at:
                if leg.pinged_at <= leg.last_rx and not leg.ping_waits:  # not since last heard
                    pings.append(leg)
                wake = min(wake, dead_at)
            else:
                wake = min(wake, ping_at)
    return wake, pings
