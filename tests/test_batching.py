"""wsproxy/batching.py: whether the parker's rounds of reads are batched, from the rate of ready
descriptors measured over periods of `PERIOD`, and how long the next round waits."""

from __future__ import annotations

from typing import Final

import pytest

from wsproxy.batching import PERIOD, ReadBatching

WINDOW: Final = 0.0001  # the default: batching turns on from 2 ready per 0.1 ms, 20,000/s
AT_THRESHOLD: Final = round(2 * PERIOD / WINDOW)  # ready descriptors in one period: 200
AT_HALF: Final = AT_THRESHOLD // 2  # one ready per window: the rate that keeps it on


def started(window: float = WINDOW, at: float = 0.0) -> ReadBatching:
    """A batching whose first period began at `at`."""
    batching = ReadBatching(window)
    batching.decide(at)
    return batching


def period(batching: ReadBatching, ready: int, end: float) -> bool:
    """The rounds of a period found `ready` in all; it ends at `end`. Whether batching is on
    for the next one."""
    batching.ready += ready
    batching.decide(end)
    return batching.on


def test_batching_is_off_until_a_period_is_measured() -> None:
    batching = ReadBatching(WINDOW)
    assert not batching.on
    batching.ready += 10_000
    batching.decide(0.0)  # begins the first period: nothing was measured
    assert not batching.on
    assert batching.pause(0.0) == 0.0
    assert batching.ready == 0
    assert batching.period_end == PERIOD


@pytest.mark.parametrize(
    ("ready", "on"),
    [(0, False), (AT_THRESHOLD - 1, False), (AT_THRESHOLD, True), (10 * AT_THRESHOLD, True)],
)
def test_batching_turns_on_from_two_ready_per_window(ready: int, on: bool) -> None:
    assert period(started(), ready, PERIOD) is on


def test_batching_rate_is_over_the_time_the_period_really_lasted() -> None:
    """A period that ran long (the parker was quiet) counts its ready over all of its time."""
    batching = started()
    assert not period(batching, AT_THRESHOLD * 10, 1.0)  # ten periods' worth, over 100
    assert period(batching, AT_THRESHOLD * 10, 1.0 + 5 * PERIOD)  # the same over five


def test_batching_decided_for_a_period_holds_until_the_next_decision() -> None:
    batching = started()
    assert period(batching, AT_THRESHOLD, PERIOD)
    assert batching.period_end == 2 * PERIOD
    assert batching.on
    assert not period(batching, 0, 2 * PERIOD)


def test_batching_once_on_stays_on_down_to_one_per_window() -> None:
    """Batching itself lowers the count (a busy descriptor counts once per round): once on, it
    takes a rate below one per window to turn it off, and two per window to turn it on again."""
    batching = started()
    assert period(batching, AT_THRESHOLD, PERIOD)
    assert period(batching, AT_HALF, 2 * PERIOD)
    assert not period(batching, AT_HALF - 1, 3.5 * PERIOD)
    assert not period(batching, AT_HALF * 2 - 1, 4.5 * PERIOD)


@pytest.mark.parametrize(("ready", "on"), [(AT_HALF - 1, False), (AT_HALF, True)])
def test_batching_held_on_at_one_per_window(ready: int, on: bool) -> None:
    batching = started()
    assert period(batching, AT_THRESHOLD, PERIOD)
    assert period(batching, ready, 2 * PERIOD) is on


def test_batching_pause_is_what_is_left_of_the_window_since_the_last_round() -> None:
    batching = started()
    assert period(batching, AT_THRESHOLD, PERIOD)
    assert batching.pause(PERIOD) == 0.0  # no round began yet
    batching.began(PERIOD)
    assert batching.pause(PERIOD) == pytest.approx(WINDOW)
    assert batching.pause(PERIOD + WINDOW / 4) == pytest.approx(WINDOW * 3 / 4)
    assert batching.pause(PERIOD + WINDOW) == 0.0
    assert batching.pause(1.0) == 0.0


def test_batching_pause_never_exceeds_the_window() -> None:
    """Even for an instant before the last round (a clock read earlier)."""
    batching = started()
    assert period(batching, AT_THRESHOLD, PERIOD)
    batching.began(PERIOD)
    assert batching.pause(PERIOD / 2) == WINDOW


def test_batching_off_never_pauses() -> None:
    batching = started()
    assert not period(batching, AT_THRESHOLD - 1, PERIOD)
    batching.began(PERIOD)
    assert batching.pause(PERIOD) == 0.0


def test_batching_window_zero_is_never_on() -> None:
    batching = started(0.0)
    assert not period(batching, 10**9, PERIOD)
    assert batching.pause(PERIOD) == 0.0


def test_batching_window_set_to_zero_stops_pausing_at_once() -> None:
    """A reload to `batch_window: 0` does not wait for the end of the period."""
    batching = started()
    assert period(batching, AT_THRESHOLD, PERIOD)
    batching.began(PERIOD)
    assert batching.pause(PERIOD) > 0
    batching.window = 0.0
    assert not batching.on
    assert batching.pause(PERIOD) == 0.0


def test_batching_wider_window_pauses_longer_and_turns_on_at_a_lower_rate() -> None:
    batching = started()
    assert not period(batching, AT_HALF, PERIOD)  # 10,000 per second: off at 0.1 ms
    batching.window = 2 * WINDOW  # on from 10,000 per second
    assert period(batching, AT_HALF, 2 * PERIOD)
    batching.began(2 * PERIOD)
    assert batching.pause(2 * PERIOD) == pytest.approx(2 * WINDOW)


def test_batching_turns_off_when_the_rate_falls() -> None:
    batching = started()
    assert period(batching, 5 * AT_THRESHOLD, PERIOD)
    assert not period(batching, 0, 2 * PERIOD)
