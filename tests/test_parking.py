"""The parker on real socket pairs: what it relays in line, what wakes a session, when it asks
sessions whether they may park again (virtual time), and, on the real clock, that waiting in
its own epoll never keeps trio from its tasks, its I/O or its deadlines."""

from __future__ import annotations

import logging
import math
import socket
import threading
from collections.abc import Iterator
from typing import Final

import pytest
import trio
import trio.testing

from tests.helpers import the_parker
from wsproxy import parking
from wsproxy.parking import PARK_AFTER

CAP: Final = 60.0  # virtual seconds
REAL_CAP: Final = 10.0  # real seconds, for the tests on the real clock


class FakeSession:
    """A `Parkable` over two socket pairs' near ends. It relays in line (reads what came, and
    keeps it) unless `needs_pumps`; it may park when `parkable` says so."""

    def __init__(self, name: str, *, parkable: bool = True, fails: bool = False) -> None:
        self.name = name
        self.parkable = parkable
        self.fails = fails
        self.needs_pumps = False
        client, backend = socket.socketpair(), socket.socketpair()
        self.near = (client[0], backend[0])  # the session's ends
        self.far = (client[1], backend[1])  # its peers' ends
        for sock in self.near:
            sock.setblocking(False)
        self.asked: list[float] = []
        self.parked: list[float] = []
        self.woken: list[float] = []
        self.relayed: list[tuple[int, bytes]] = []  # (leg, bytes) read in line
        self.on_relay: trio.Event | None = None  # set, and the parker stirred, on each relay

    def fds(self) -> tuple[int, int]:
        return self.near[0].fileno(), self.near[1].fileno()

    def parkable_fds(self, since: float) -> tuple[int, int] | None:
        self.asked.append(trio.current_time())
        if self.fails:
            raise RuntimeError("injected")
        return self.fds() if self.parkable else None

    def park(self) -> None:
        self.parked.append(trio.current_time())

    def relay_ready(self, fd: int, now: float) -> bool:
        if self.needs_pumps:
            return False
        leg = self.fds().index(fd)
        self.relayed.append((leg, self.near[leg].recv(100)))
        if self.on_relay is not None:
            self.on_relay.set()
            parker = parking.parker()
            assert parker is not None
            parker.stir()
        return True

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


def held(sessions: list[FakeSession]) -> FakeSession:
    """A fake session that this run's parker holds (parked)."""
    session = fake(sessions, "a")
    the_parker().hold(session, session.fds())
    return session


async def test_parking_is_available_on_this_trio() -> None:
    """The parker needs trio's own epoll descriptor, which is not public: a trio release that
    moves it must fail here, not silently stop parking."""
    parker = the_parker()
    assert parking.parker() is parker  # one per run


async def test_parking_relays_in_line_and_the_session_stays_parked(
    sessions: list[FakeSession], autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        parker = the_parker()
        session = held(sessions)
        session.far[0].send(b"one")
        await trio.testing.wait_all_tasks_blocked()
        session.far[1].send(b"two")
        await trio.sleep(1)
        assert session.relayed == [(0, b"one"), (1, b"two")]
        assert session.woken == []
        assert sorted(parker.parked) == sorted(session.fds())


async def test_parking_session_that_needs_its_pumps_is_woken_and_let_go(
    sessions: list[FakeSession], autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        parker = the_parker()
        session = held(sessions)
        session.needs_pumps = True
        start = trio.current_time()
        session.far[1].send(b"x")
        await trio.sleep(2)
        assert session.woken == [start]
        assert parker.parked == {}
        session.far[0].send(b"y")  # let go: no second wake-up
        await trio.sleep(2)
        assert session.woken == [start]


async def test_parking_end_of_stream_goes_to_the_session(
    sessions: list[FakeSession], autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        session = held(sessions)
        session.far[0].close()  # the peer leaves: the session reads its end of stream
        await trio.testing.wait_all_tasks_blocked()
        assert (0, b"") in session.relayed


async def test_parking_release_lets_one_descriptor_go(
    sessions: list[FakeSession], autojump_clock: trio.testing.MockClock
) -> None:
    """A leg closed while parked leaves the parker first; the other leg is still watched."""
    with trio.fail_after(CAP):
        parker = the_parker()
        session = held(sessions)
        client_fd, backend_fd = session.fds()
        parker.release(session, client_fd)
        assert list(parker.parked) == [backend_fd]
        session.far[0].send(b"not watched")
        session.far[1].send(b"watched")
        await trio.sleep(1)
        assert session.relayed == [(1, b"watched")]
        parker.forget(session)
        assert parker.parked == {}


async def test_parking_awake_session_parks_at_the_next_sweep(
    sessions: list[FakeSession], autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        parker = the_parker()
        session = fake(sessions, "a")
        start = trio.current_time()
        parker.watch(session)
        await trio.sleep(10)
        assert session.asked == session.parked == [start + PARK_AFTER]
        assert sorted(parker.parked) == sorted(session.fds())
        assert not parker.awake


async def test_parking_bytes_that_came_before_parking_are_relayed_at_once(
    sessions: list[FakeSession], autojump_clock: trio.testing.MockClock
) -> None:
    """Level-triggered: bytes already waiting when the session parks are seen right away."""
    with trio.fail_after(CAP):
        parker = the_parker()
        session = fake(sessions, "a")
        session.far[0].send(b"early")
        parker.watch(session)
        await trio.sleep(2 * PARK_AFTER)
        assert session.relayed == [(0, b"early")]


async def test_parking_session_that_may_not_park_is_asked_every_sweep_until_it_may(
    sessions: list[FakeSession], autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        parker = the_parker()
        busy = fake(sessions, "busy", parkable=False)
        start = trio.current_time()
        parker.watch(busy)
        await trio.sleep(3.5 * PARK_AFTER)
        assert [t - start for t in busy.asked] == [PARK_AFTER, 2 * PARK_AFTER, 3 * PARK_AFTER]
        busy.parkable = True
        await trio.sleep(PARK_AFTER)
        assert busy.parked == [start + 4 * PARK_AFTER]


async def test_parking_sweeps_stop_while_no_session_is_awake(
    sessions: list[FakeSession], autojump_clock: trio.testing.MockClock
) -> None:
    """With every session parked (or none), no sweep is set; a session watched later is asked
    a `PARK_AFTER` after it was."""
    with trio.fail_after(CAP):
        parker = the_parker()
        first = fake(sessions, "first")
        parker.watch(first)
        await trio.sleep(2 * PARK_AFTER)
        assert first.parked
        assert parker._sweep_timer is None
        await trio.sleep(7.25)
        second = fake(sessions, "second")
        watched = trio.current_time()
        parker.watch(second)
        await trio.sleep(5)
        assert second.asked == second.parked == [watched + PARK_AFTER]
        assert first.asked == [first.parked[0]]  # never asked again


async def test_parking_forgotten_session_is_never_relayed_for(
    sessions: list[FakeSession], autojump_clock: trio.testing.MockClock
) -> None:
    """A session woken by something else (or ended) is let go: its descriptors leave the
    parker before anyone can close them, and their bytes reach nothing."""
    with trio.fail_after(CAP):
        parker = the_parker()
        session = held(sessions)
        parker.forget(session)
        assert parker.parked == {}
        session.far[0].send(b"x")
        await trio.sleep(5)
        assert session.relayed == []
        assert session.woken == []


async def test_parking_a_failing_session_is_logged_and_the_others_still_park(
    sessions: list[FakeSession],
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(CAP):
        parker = the_parker()
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


async def test_parking_a_session_failing_to_relay_is_logged_and_woken(
    sessions: list[FakeSession],
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(CAP):
        session = held(sessions)

        def fails(fd: int, now: float) -> bool:
            raise RuntimeError("injected")

        session.relay_ready = fails  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="wsproxy.parking"):
            session.far[1].send(b"x")
            await trio.sleep(1)
        assert "relaying for a parked session failed" in caplog.text
        assert len(session.woken) == 1


# ---------------------------------------------------------------- the real clock: the parker waits


async def test_parking_wait_never_lengthens_trio_deadlines(sessions: list[FakeSession]) -> None:
    """While the parker waits in its own epoll for trio's timeout, trio's own wait is cut
    short at the end of it: a sleep is not waited out twice."""
    with trio.fail_after(REAL_CAP):
        held(sessions)
        for _ in range(3):
            before = trio.current_time()
            await trio.sleep(0.5)
            assert trio.current_time() - before < 0.95  # waited twice, it would be 1.0


async def test_parking_wait_lets_trio_io_through(sessions: list[FakeSession]) -> None:
    """A task waiting on its own socket (in trio's epoll) is woken while the parker waits."""
    with trio.fail_after(REAL_CAP):
        held(sessions)
        left, right = trio.socket.socketpair()
        with left, right:

            async def send_later() -> None:
                await trio.sleep(0.2)
                await right.send(b"to a task")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_later)
                assert await left.recv(100) == b"to a task"


async def while_trio_waits(peer: socket.socket, data: bytes, done: trio.Event) -> None:
    """`peer` sends `data` 0.2 s from now, while trio's next deadline is a minute away (the
    parker waits in its epoll meanwhile); return once `done` is set."""

    async def send_later() -> None:
        await trio.sleep(0.2)
        peer.send(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_later)
        nursery.start_soon(trio.sleep, 60)
        await done.wait()
        nursery.cancel_scope.cancel()


async def test_parking_wait_relays_and_wakes_tasks_the_relay_made_runnable(
    sessions: list[FakeSession],
) -> None:
    """Bytes for a parked session are relayed while trio waits (for a whole minute here), and a
    task the relay makes runnable (the session stirs the parker) runs at once."""
    with trio.fail_after(REAL_CAP):
        parker = the_parker()
        session = fake(sessions, "a")
        session.on_relay = trio.Event()
        parker.hold(session, session.fds())
        await while_trio_waits(session.far[1], b"while trio waits", session.on_relay)
        assert session.relayed == [(1, b"while trio waits")]


async def test_parking_wait_wakes_a_session_at_once(sessions: list[FakeSession]) -> None:
    """A session that needs its pumps is woken while trio waits, and trio runs at once."""
    with trio.fail_after(REAL_CAP):
        parker = the_parker()
        session = fake(sessions, "a")
        session.needs_pumps = True
        woken = trio.Event()
        session.wake = woken.set  # type: ignore[method-assign]
        parker.hold(session, session.fds())
        await while_trio_waits(session.far[0], b"a ping, say", woken)
        assert parker.parked == {}


# ---------------------------------------------------------------- the real clock: batched reads


class Pausing:
    """A `ReadBatching` that is on (unless told otherwise) and asks for `pause` before every
    round; it notes when rounds began."""

    def __init__(self, pause: float) -> None:
        self.window = pause
        self.on = True
        self.ready = 0
        self.period_end = math.inf
        self.began_at: list[float] = []

    def decide(self, now: float) -> None:
        raise AssertionError("a period never ends here")

    def pause(self, now: float) -> float:
        return self.window

    def began(self, now: float) -> None:
        self.began_at.append(now)


def send_from_a_thread(after: float, sock: socket.socket, data: bytes) -> threading.Timer:
    """Send `data` on `sock` `after` seconds from now, from outside trio (which may be waiting
    inside the parker's pause)."""
    timer = threading.Timer(after, sock.send, (data,))
    timer.start()
    return timer


def batched(pause: float) -> Pausing:
    pausing = Pausing(pause)
    the_parker().batching = pausing  # type: ignore[assignment]
    return pausing


async def test_parking_batched_round_waits_and_gathers_what_came_meanwhile(
    sessions: list[FakeSession],
) -> None:
    """A round of reads waits out the pause: bytes that come during it are read with the bytes
    that opened it, in one read, and the round counts both sessions' descriptors."""
    with trio.fail_after(REAL_CAP):
        first, second = held(sessions), fake(sessions, "b")
        the_parker().hold(second, second.fds())
        pausing = batched(1.0)
        first.on_relay = trio.Event()
        first.far[0].send(b"one")
        timers = [
            send_from_a_thread(0.05, first.far[0], b"two"),
            send_from_a_thread(0.05, second.far[1], b"three"),
        ]
        await first.on_relay.wait()
        for timer in timers:
            timer.join()
        assert first.relayed == [(0, b"onetwo")]
        assert second.relayed == [(1, b"three")]
        assert len(pausing.began_at) == 1
        assert pausing.ready == 2  # one round found both


async def test_parking_batched_pause_ends_when_trio_has_io(sessions: list[FakeSession]) -> None:
    """A task's socket turning readable ends the parker's pause: the task does not wait for
    it (a minute here)."""
    with trio.fail_after(REAL_CAP):
        session = held(sessions)
        batched(60.0)
        left, right = socket.socketpair()
        with left, right, trio.socket.from_stdlib_socket(left) as task_end:
            before = trio.current_time()
            session.far[0].send(b"opens a round")
            timer = send_from_a_thread(0.2, right, b"to a task")
            assert await task_end.recv(100) == b"to a task"
            timer.join()
            assert trio.current_time() - before < 5  # a minute, if the pause ignored trio


async def test_parking_batched_pause_never_lengthens_trio_deadlines(
    sessions: list[FakeSession],
) -> None:
    """The pause ends at trio's timeout: a sleep is not lengthened by a round that came in."""
    with trio.fail_after(REAL_CAP):
        session = held(sessions)
        batched(60.0)
        before = trio.current_time()
        timer = send_from_a_thread(0.05, session.far[0], b"opens a round")
        await trio.sleep(0.5)
        timer.join()
        assert trio.current_time() - before < 0.95  # a minute, with the pause uncapped


async def read_twice(session: FakeSession) -> list[tuple[int, bytes]]:
    """What the parker reads of two sends 50 ms apart (the second from a thread): two reads
    unless a pause gathered them."""
    relayed = session.on_relay = trio.Event()
    session.far[0].send(b"one")
    await relayed.wait()
    relayed = session.on_relay = trio.Event()
    timer = send_from_a_thread(0.05, session.far[0], b"two")
    await relayed.wait()
    timer.join()
    return session.relayed


async def test_parking_batching_off_never_pauses(sessions: list[FakeSession]) -> None:
    """Batching off (below its rate, or `batch_window: 0`, or a parker the process has not
    configured yet): every round begins at once."""
    with trio.fail_after(REAL_CAP):
        assert not the_parker().batching.on
        session = held(sessions)
        batched(1.0).on = False
        assert await read_twice(session) == [(0, b"one"), (0, b"two")]


async def test_parking_trio_epoll_select_cannot_take_never_pauses(
    sessions: list[FakeSession],
) -> None:
    """`select` takes descriptors below FD_SETSIZE (1024) only: a parker whose trio epoll
    descriptor is above it relays without pausing."""
    with trio.fail_after(REAL_CAP):
        parker = the_parker()
        session = held(sessions)
        batched(1.0)
        parker._pausable = False
        assert await read_twice(session) == [(0, b"one"), (0, b"two")]
    with socket.socket() as sock:
        assert parking._selectable(sock.fileno())
    assert not parking._selectable(4096)


async def test_parking_batch_reads_sets_this_runs_window() -> None:
    parking.batch_reads(0.002)
    assert the_parker().batching.window == 0.002
    parking.batch_reads(0.0)
    assert the_parker().batching.window == 0.0
