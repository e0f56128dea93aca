"""The keepalive and idle clocks' decision, on plain values: every case of `keepalive.scan`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import pytest

from wsproxy.keepalive import scan

INTERVAL: Final = 20.0
TIMEOUT: Final = 10.0
IDLE: Final = 600.0


@dataclass
class FakeLeg:
    name: str
    last_rx: float = 0.0
    pinged_at: float = -math.inf
    held: bool = False
    lost: bool = False
    sent_close: bool = False
    ping_waits: bool = False
    relayed_mid_frame: bool = False


def legs(
    *,
    last_rx: float = 0.0,
    pinged_at: float = -math.inf,
    held: bool = False,
    lost: bool = False,
    sent_close: bool = False,
) -> tuple[FakeLeg, FakeLeg]:
    """The client leg as given, and a backend leg last heard at 0."""
    client = FakeLeg("client", last_rx, pinged_at, held, lost, sent_close)
    return client, FakeLeg("backend")


def at(
    now: float,
    pair: tuple[FakeLeg, FakeLeg],
    *,
    last_relay: float = 0.0,
    interval: float = INTERVAL,
    idle: float = IDLE,
) -> tuple[float | FakeLeg | None, list[FakeLeg]]:
    return scan(now, pair, last_relay, interval=interval, timeout=TIMEOUT, idle=idle)


def test_keepalive_nothing_due_looks_again_at_the_first_ping() -> None:
    assert at(5, legs()) == (INTERVAL, [])


def test_keepalive_silent_legs_are_pinged_once_and_looked_at_when_they_would_be_dead() -> None:
    pair = legs()
    assert at(INTERVAL, pair) == (INTERVAL + TIMEOUT, list(pair))
    for leg in pair:
        leg.pinged_at = INTERVAL
    assert at(INTERVAL + 1, pair) == (INTERVAL + TIMEOUT, [])  # not pinged twice


def test_keepalive_a_leg_heard_after_its_ping_is_pinged_again_later() -> None:
    pair = legs(last_rx=25.0, pinged_at=20.0)
    pair[1].last_rx = 30.0
    assert at(45, pair) == (50.0, [pair[0]])


def test_keepalive_a_leg_silent_past_its_timeout_is_dead() -> None:
    pair = legs(pinged_at=INTERVAL)
    pair[1].last_rx = 25.0
    assert at(INTERVAL + TIMEOUT, pair) == (pair[0], [])


def test_keepalive_a_ping_written_late_gives_the_leg_its_timeout_from_then() -> None:
    pair = legs(pinged_at=35.0)  # asked for at 20, written at 35 (it waited behind a frame)
    pair[1].last_rx = 40.0
    assert at(40, pair) == (45.0, [])
    assert at(45, pair) == (pair[0], [])


def test_keepalive_a_leg_heard_while_its_ping_waits_is_not_pinged_twice() -> None:
    pair = legs(last_rx=25.0, pinged_at=20.0)
    pair[0].ping_waits = True
    pair[1].last_rx = 44.0
    assert at(45, pair) == (55.0, [])


def test_keepalive_a_ping_waiting_behind_the_other_peers_half_frame_is_not_its_fault() -> None:
    """The client's ping, asked for at 20, waits behind the backend's frame, half-way to the
    client while the backend's pump waits for the backend: the client is not dead at 30, and is
    looked at again a timeout later. If that pump waits to write to the client instead, the
    client may be the one that stalls: dead at 30."""
    client, backend = pair = legs(pinged_at=INTERVAL)
    client.ping_waits = True
    backend.relayed_mid_frame = True
    backend.last_rx = 29.0
    assert at(INTERVAL + TIMEOUT, pair) == (INTERVAL + 2 * TIMEOUT, [])
    backend.held = True
    assert at(INTERVAL + TIMEOUT, pair) == (client, [])


def test_keepalive_idle_wins_and_needs_no_ping() -> None:
    assert at(IDLE, legs(), last_relay=0.0) == (None, [])
    pair = legs(last_rx=IDLE - 2)
    pair[1].last_rx = IDLE - 2  # both heard (keepalive traffic), nothing relayed since 0
    assert at(IDLE - 1, pair, last_relay=0.0) == (IDLE, [])


@pytest.mark.parametrize("lost", [True, False], ids=["lost", "closed"])
def test_keepalive_a_closed_or_lost_leg_has_no_clock(lost: bool) -> None:
    pair = legs(lost=lost, sent_close=not lost)
    pair[1].last_rx = 100.0
    assert at(100, pair) == (120.0, [])


def test_keepalive_a_held_leg_is_neither_pinged_nor_dead_while_the_other_is_heard() -> None:
    pair = legs(held=True)
    pair[1].last_rx = 100.0
    assert at(100, pair) == (100 + INTERVAL, [])  # not dead at 30, looked at again


def test_keepalive_two_held_legs_are_judged_as_usual() -> None:
    pair = legs(held=True)
    pair[1].held = True
    assert at(INTERVAL + TIMEOUT, pair) == (pair[0], [])


def test_keepalive_clocks_off_wait_for_nothing() -> None:
    assert at(10_000, legs(), interval=0, idle=0) == (math.inf, [])
