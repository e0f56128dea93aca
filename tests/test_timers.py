"""The timer task under trio's autojump clock: exact instants, order, cancellation, pruning,
and a failing callback that harms no other."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from wsproxy import timers

CAP = 100.0  # virtual seconds


async def test_timers_call_back_at_their_instants_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    fired: list[tuple[str, float]] = []

    def note(name: str) -> None:
        fired.append((name, trio.current_time() - start))

    timers.at(start + 5, lambda: note("five"))
    timers.at(start + 2, lambda: note("two"))
    timers.at(start + 5, lambda: note("five again"))  # same instant: in the order they were set
    await trio.sleep(3)
    timers.at(start + 4, lambda: note("four"))  # set later, earlier than the next one due
    await trio.sleep(10)
    assert fired == [("two", 2), ("four", 4), ("five", 5), ("five again", 5)]


async def test_timers_a_cancelled_timer_never_fires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    fired: list[float] = []
    timer = timers.at(start + 1, lambda: fired.append(trio.current_time() - start))
    timers.at(start + 2, lambda: fired.append(trio.current_time() - start))
    timer.cancel()
    timer.cancel()  # twice is harmless
    await trio.sleep(5)
    assert fired == [2]


async def test_timers_a_callback_may_set_the_next_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    fired: list[float] = []

    def again() -> None:
        fired.append(trio.current_time() - start)
        if len(fired) < 3:
            timers.at(trio.current_time() + 10, again)

    timers.at(start + 10, again)
    await trio.sleep(CAP)
    assert fired == [10, 20, 30]


async def test_timers_cancelled_ones_are_pruned_and_hold_no_callback(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    cancelled = [timers.at(start + 50, lambda: None) for _ in range(1000)]
    for timer in cancelled:
        timer.cancel()
    assert all(timer.callback is None for timer in cancelled)
    fired: list[float] = []
    timers.at(start + 1, lambda: fired.append(trio.current_time() - start))
    heap = timers._timers.get().heap
    assert len(heap) == 1  # the cancelled ones went at the next `at`
    await trio.sleep(2)
    assert fired == [1]


async def test_timers_a_failing_callback_is_logged_and_the_others_still_run(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    start = trio.current_time()
    fired: list[float] = []

    def fail() -> None:
        raise ValueError("a bug")

    timers.at(start + 1, fail)
    timers.at(start + 1, lambda: fired.append(trio.current_time() - start))
    with caplog.at_level(logging.ERROR, logger="wsproxy.timers"):
        await trio.sleep(2)
    assert fired == [1]
    assert "a timer's callback failed" in caplog.text
