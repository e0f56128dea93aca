"""The parker on real socket pairs and virtual time: when it asks sessions whether they may park,
what it watches, and what wakes them."""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Iterator
from typing import Final

import pytest
import trio
import trio.testing

from wsproxy import parking
from wsproxy.parking import PARK_AFTER

CAP: Final = 60.0  # virtual seconds


class FakeSession:
    """A `Parkable` over a socket pair's near ends: parks when `quiet` allows it."""

    def __init__(self, name: str, *, quiet: bool = True, fails: bool = False) -> None:
        self.name = name
        self.quiet = quiet
        self.fails = fails
        client, backend = socket.socketpair(), socket.socketpair()
        self.near = (client[0], backend[0])  # the session's ends
        self.far = (client[1], backend[1])  # its peers' ends
        self.asked: list[float] = []
        self.parked: list[float] = []
        self.woken: list[float] = []

    def quiet_fds(self, since: float) -> tuple[int, int] | None:
        self.asked.append(trio.current_time())
        if self.fails:
            raise RuntimeError("injected")
        return (self.near[0].fileno(), self.near[1].fileno()) if self.quiet else None

    def park(self) -> None:
        self.parked.append(trio.current_time())

    def wake(self) -> None:
        self.woken.append(trio.current_time())

    def close(self) -> None:
        for sock in (*self.near, *self.far):
            sock.close()


@pytest.fixture
def sessions() -> Iterator[list[FakeSession]]:
    made: list[FakeSession] = []
    yield made
    for session in made:
        session.close()


def fake(sessions: list[FakeSession], name: str, **kwargs: bool) -> FakeSession:
    session = FakeSession(name, **kwargs)
    sessions.append(session)
    return session


async def test_parking_quiet_session_parks_at_the_next_sweep_and_wakes_on_data(
    sessions: list[FakeSession], autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        parker = parking.parker()
        session = fake(sessions, "a")
        start = trio.current_time()
        parker.watch(session)
        await trio.sleep(10)
        assert session.asked == session.parked == [start + PARK_AFTER]
        assert sorted(parker.parked) == sorted(sock.fileno() for sock in session.near)
        assert not parker.awake
        session.far[1].send(b"x")  # the second leg turns readable
        await trio.testing.wait_all_tasks_blocked()
        assert session.woken == [start + 10]
        assert parker.parked == {}
        session.far[0].send(b"y")  # let go: no second wake-up
        await trio.sleep(10)
        assert session.woken == [start + 10]


async def test_parking_end_of_stream_wakes_a_parked_session(
    sessions: list[FakeSession], autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        parker = parking.parker()
        session = fake(sessions, "a")
        parker.watch(session)
        await trio.sleep(2 * PARK_AFTER)
        assert session.parked
        session.far[0].close()  # the peer leaves
        await trio.testing.wait_all_tasks_blocked()
        assert session.woken == [trio.current_time()]


async def test_parking_bytes_that_came_before_parking_wake_it_at_once(
    sessions: list[FakeSession], autojump_clock: trio.testing.MockClock
) -> None:
    """Level-triggered: bytes already waiting when the session parks wake it right away."""
    with trio.fail_after(CAP):
        parker = parking.parker()
        session = fake(sessions, "a")
        session.far[0].send(b"early")
        start = trio.current_time()
        parker.watch(session)
        await trio.sleep(5)
        assert session.parked == session.woken == [start + PARK_AFTER]


async def test_parking_session_not_quiet_is_asked_every_sweep_until_it_parks(
    sessions: list[FakeSession], autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        parker = parking.parker()
        busy = fake(sessions, "busy", quiet=False)
        start = trio.current_time()
        parker.watch(busy)
        await trio.sleep(3.5 * PARK_AFTER)
        assert [t - start for t in busy.asked] == [PARK_AFTER, 2 * PARK_AFTER, 3 * PARK_AFTER]
        busy.quiet = True
        await trio.sleep(PARK_AFTER)
        assert busy.parked == [start + 4 * PARK_AFTER]


async def test_parking_sleeps_while_no_session_is_awake(
    sessions: list[FakeSession], autojump_clock: trio.testing.MockClock
) -> None:
    """With every session parked (or none), the parker sets no deadline: nothing wakes it but
    a socket; a session watched later is asked a `PARK_AFTER` after it was."""
    with trio.fail_after(CAP):
        parker = parking.parker()
        first = fake(sessions, "first")
        parker.watch(first)
        await trio.sleep(2 * PARK_AFTER)
        assert first.parked
        assert parker._waiting.deadline == math.inf
        await trio.sleep(7.25)
        second = fake(sessions, "second")
        watched = trio.current_time()
        parker.watch(second)
        await trio.sleep(5)
        assert second.asked == second.parked == [watched + PARK_AFTER]


async def test_parking_forgotten_session_is_never_woken(
    sessions: list[FakeSession], autojump_clock: trio.testing.MockClock
) -> None:
    """A session woken by something else (or ended) is let go: its descriptors leave the
    parker before anyone can close them, and their bytes wake nothing."""
    with trio.fail_after(CAP):
        parker = parking.parker()
        session = fake(sessions, "a")
        parker.watch(session)
        await trio.sleep(2 * PARK_AFTER)
        assert session.parked
        parker.forget(session)
        assert parker.parked == {}
        session.far[0].send(b"x")
        await trio.sleep(5)
        assert session.woken == []


async def test_parking_a_failing_session_is_logged_and_the_others_still_park(
    sessions: list[FakeSession],
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(CAP):
        parker = parking.parker()
        failing = fake(sessions, "failing", fails=True)
        fine = fake(sessions, "fine")
        parker.watch(failing)
        parker.watch(fine)
        with caplog.at_level(logging.ERROR, logger="wsproxy.parking"):
            await trio.sleep(1.5 * PARK_AFTER)
        assert fine.parked
        assert not failing.parked
        assert failing not in parker.awake  # not asked again
        assert "parking a session failed" in caplog.text
