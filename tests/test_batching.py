"""wsproxy/batching.py: when the parker's next round of reads may start, from the rate of ready
descriptors measured over periods of `PERIOD`."""

from __future__ import annotations

from typing import Final

import pytest

from wsproxy.batching import PERIOD, ReadBatching

WINDOW: Final = 0.0001  # the default: batching is on from 2 ready per 0.1 ms, 20,000/s
AT_THRESHOLD: Final = round(2 * PERIOD / WINDOW)  # ready descriptors in one period: 200


def is_on(batching: ReadBatching) -> bool:
    return batching.on


def test_batching_is_off_until_a_period_is_measured() -> None:
    batching = ReadBatching(WINDOW)
    assert not batching.on
    batching.round(0.0, 10_000)
    assert not batching.on
    assert batching.pause(0.0) == 0.0


@pytest.mark.parametrize(
    ("ready", "on"),
    [(0, False), (AT_THRESHOLD - 1, False), (AT_THRESHOLD, True), (10 * AT_THRESHOLD, True)],
)
def test_batching_turns_on_from_two_ready_per_window(ready: int, on: bool) -> None:
    batching = ReadBatching(WINDOW)
    batching.round(0.0, 0)
    batching.round(PERIOD / 2, ready)
    assert not batching.on  # decided only when the period ends
    batching.round(PERIOD, 0)
    assert batching.on is on


def test_batching_rate_is_over_the_time_the_period_really_lasted() -> None:
    """A period that ran long (the proxy was quiet) counts its ready over all of its time."""
    batching = ReadBatching(WINDOW)
    batching.round(0.0, 0)
    batching.round(0.5, AT_THRESHOLD * 10)  # ten periods' worth of ready, over 100 periods
    batching.round(1.0, 0)
    assert not batching.on
    batching.round(1.0 + PERIOD / 2, AT_THRESHOLD * 10)  # the same, over one period
    batching.round(1.0 + PERIOD, 0)
    assert batching.on


def test_batching_decided_for_a_period_holds_until_its_end() -> None:
    batching = ReadBatching(WINDOW)
    batching.round(0.0, AT_THRESHOLD)
    batching.round(PERIOD, 0)
    assert batching.on
    for step in range(1, 10):  # nothing ready for the rest of the period
        batching.round(PERIOD + step * PERIOD / 10, 0)
        assert batching.on
    batching.round(2 * PERIOD, 0)
    assert not batching.on


def test_batching_pause_is_what_is_left_of_the_window_since_the_last_round() -> None:
    batching = ReadBatching(WINDOW)
    batching.round(0.0, AT_THRESHOLD)
    batching.round(PERIOD, 0)  # on: a round began at PERIOD
    assert batching.on
    assert batching.pause(PERIOD) == pytest.approx(WINDOW)
    assert batching.pause(PERIOD + WINDOW / 4) == pytest.approx(WINDOW * 3 / 4)
    assert batching.pause(PERIOD + WINDOW) == 0.0
    assert batching.pause(1.0) == 0.0


def test_batching_pause_never_exceeds_the_window() -> None:
    """Even for an instant before the last round (a clock that another caller read earlier)."""
    batching = ReadBatching(WINDOW)
    batching.round(0.0, AT_THRESHOLD)
    batching.round(PERIOD, 0)
    assert batching.pause(PERIOD / 2) == WINDOW


def test_batching_off_never_pauses() -> None:
    batching = ReadBatching(WINDOW)
    batching.round(0.0, AT_THRESHOLD - 1)
    batching.round(PERIOD, 0)
    assert not batching.on
    assert batching.pause(PERIOD) == 0.0


def test_batching_window_zero_is_never_on() -> None:
    batching = ReadBatching(0.0)
    batching.round(0.0, 10**9)
    batching.round(PERIOD, 10**9)
    batching.round(2 * PERIOD, 0)
    assert not batching.on
    assert batching.pause(2 * PERIOD) == 0.0


def test_batching_window_set_to_zero_stops_pausing_at_once() -> None:
    """A reload to `batch_window: 0` does not wait for the end of the period."""
    batching = ReadBatching(WINDOW)
    batching.round(0.0, AT_THRESHOLD)
    batching.round(PERIOD, 0)
    assert batching.pause(PERIOD) > 0
    batching.window = 0.0
    assert not batching.on
    assert batching.pause(PERIOD) == 0.0


def test_batching_wider_window_pauses_longer_and_turns_on_at_a_lower_rate() -> None:
    batching = ReadBatching(WINDOW)
    batching.round(0.0, AT_THRESHOLD // 2)  # 10,000 ready per second: off at 0.1 ms
    batching.round(PERIOD, 0)
    assert not batching.on
    batching.window = 2 * WINDOW  # on from 10,000 per second
    batching.round(PERIOD + PERIOD / 2, AT_THRESHOLD // 2)
    batching.round(2 * PERIOD, 0)
    assert is_on(batching)  # (a call: mypy keeps `batching.on` narrowed to False)
    assert batching.pause(2 * PERIOD) == pytest.approx(2 * WINDOW)


AT_HALF: Final = AT_THRESHOLD // 2  # one ready per window


def test_batching_once_on_stays_on_down_to_one_per_window() -> None:
    """Batching itself lowers the count (a busy descriptor counts once per round): once on, it
    takes a rate below one per window to turn it off."""
    batching = ReadBatching(WINDOW)
    batching.round(0.0, AT_THRESHOLD)
    batching.round(PERIOD, AT_HALF)
    assert batching.on
    batching.round(2 * PERIOD, AT_HALF - 1)
    assert batching.on  # one per window held in the second period
    batching.round(3.5 * PERIOD, 0)
    assert not is_on(batching)  # below it in the third


@pytest.mark.parametrize(("ready", "on"), [(AT_HALF - 1, False), (AT_HALF, True)])
def test_batching_held_on_at_one_per_window(ready: int, on: bool) -> None:
    batching = ReadBatching(WINDOW)
    batching.round(0.0, AT_THRESHOLD)
    batching.round(PERIOD, ready)
    batching.round(2 * PERIOD, 0)
    assert batching.on is on


def test_batching_off_needs_two_per_window_again() -> None:
    batching = ReadBatching(WINDOW)
    batching.round(0.0, AT_HALF)
    batching.round(PERIOD, AT_HALF)
    assert not batching.on
    batching.round(2 * PERIOD, 0)
    assert not batching.on


def test_batching_turns_off_when_the_rate_falls() -> None:
    batching = ReadBatching(WINDOW)
    batching.round(0.0, 5 * AT_THRESHOLD)
    batching.round(PERIOD, AT_HALF - 1)
    assert batching.on
    batching.round(2 * PERIOD, 0)
    assert not is_on(batching)
