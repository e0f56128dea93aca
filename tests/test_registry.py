"""wsproxy/registry.py: connection counts and limits, and the drain's paced close, under the
autojump clock with exact instants (the relay of a whole session is in test_admission)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from tests.conftest import proxy_config
from tests.helpers import FakeSession, Peer, on
from wsproxy import registry as registry_module, timers
from wsproxy.balancer import Pick
from wsproxy.closes import Close
from wsproxy.config import Config, Security, Server
from wsproxy.handshake import Reject
from wsproxy.logs import AccessRecord
from wsproxy.registry import RETRY_AFTER, LiveSession, Registry, close_times
from wsproxy.relay import Session
from wsproxy.servers import ServerState
from wsproxy.snapshot import Snapshot, build_snapshot

SERVER = Server(url="ws://10.0.0.1:9000", host="10.0.0.1", port=9000)
OTHER = Server(url="ws://10.0.0.2:9000", host="10.0.0.2", port=9000)


def registry_for(config: Config | None = None) -> Registry:
    used = config or proxy_config("ws://127.0.0.1:9")
    return Registry(lambda: used)


def test_registry_counts_by_ip_and_forgets_an_ip_at_zero() -> None:
    registry = registry_for()
    for ip in ("192.0.2.1", "192.0.2.1", ""):
        registry.opened()
        if ip:
            registry.identified(ip)
    assert (registry.connections, dict(registry.per_ip)) == (3, {"192.0.2.1": 2})
    registry.closed("")  # one that never got as far as its address
    registry.closed("192.0.2.1")
    assert (registry.connections, dict(registry.per_ip)) == (1, {"192.0.2.1": 1})
    registry.closed("192.0.2.1")
    assert (registry.connections, dict(registry.per_ip)) == (0, {})


@pytest.mark.parametrize(
    ("open_from", "expected"),
    [
        (["a", "b"], None),
        (["b", "a", "a"], Reject(429, "too many connections from your address", RETRY_AFTER)),
        (["a", "b", "c", "d"], Reject(503, "the proxy is at its connection limit", RETRY_AFTER)),
        (["a", "a", "a", "a"], Reject(503, "the proxy is at its connection limit", RETRY_AFTER)),
    ],
)
def test_registry_limits_whole_proxy_first_then_per_ip(
    open_from: list[str], expected: Reject | None
) -> None:
    """Limits 3 in all and 1 per IP, judged for a connection from "a" (counted in `open_from`)."""
    registry = registry_for()
    for ip in open_from:
        registry.opened()
        registry.identified(ip)
    security = Security(allowed_origins=("*",), max_connections=3, max_connections_per_ip=1)
    assert registry.over_limit("a", security) == expected


async def test_registry_all_closed_waits_for_the_last_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = registry_for()
    with trio.move_on_after(0):
        await registry.all_closed()  # none open: returns at once
    registry.opened()
    registry.opened()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_close_after, registry, 1.0)
        nursery.start_soon(_close_after, registry, 2.5)
        await registry.all_closed()
        assert trio.current_time() == 2.5


async def _close_after(registry: Registry, seconds: float) -> None:
    await trio.sleep(seconds)
    registry.closed("")


@pytest.mark.parametrize(
    ("count", "window", "times"),
    [
        (4, 2.0, [0.0, 0.5, 1.0, 1.5]),
        (1, 5.0, [0.0]),
        (3, 0.0, [0.0, 0.0, 0.0]),
        (0, 5.0, []),
    ],
)
def test_registry_close_times_are_spread_evenly_over_the_window(
    count: int, window: float, times: list[float]
) -> None:
    assert close_times(count, window) == times


async def test_registry_close_paced_asks_each_at_its_instant_and_skips_the_ended(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = registry_for()
    sessions = [FakeSession(registry) for _ in range(3)]
    for session in sessions:
        registry.sessions[session] = None  # type: ignore[index, assignment]
    close = Close(1012, "proxy shutting down")

    async def end_the_last_early() -> None:
        await trio.sleep(0.5)
        del registry.sessions[sessions[2]]  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(end_the_last_early)
        await registry.close_paced(close, 0.9)
    assert [s.asked for s in sessions] == [[(0.0, close)], [(0.3, close)], []]
    assert trio.current_time() == 0.6  # asked when its turn came, and it had ended
    assert not registry.sessions


class Failing(FakeSession):
    async def shutdown(self, close: Close) -> None:
        self.asked.append((trio.current_time(), close))
        raise trio.BusyResourceError("another task is already sending")


@dataclass(frozen=True)
class Named:
    id: str


async def test_registry_a_close_that_fails_is_logged_and_stops_nothing(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    registry = registry_for()
    failing, fine = Failing(registry), FakeSession(registry)
    registry.sessions[failing] = Named("a-1")  # type: ignore[index, assignment]
    registry.sessions[fine] = Named("a-2")  # type: ignore[index, assignment]
    close = Close(1012, "server draining")
    await registry.close_paced(close, 1.0)  # would raise out of the drain's nursery
    assert [failing.asked, fine.asked] == [[(0.0, close)], [(0.5, close)]]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "closing session a-1 with 1012 failed")
    ]
    ended = FakeSession(registry)  # not live (any more): nothing to ask
    await registry.ask_to_close(ended, close)  # type: ignore[arg-type]
    assert ended.asked == []


def test_registry_session_ids_are_distinct_within_a_process_and_between_processes() -> None:
    first, second = registry_for(), registry_for()  # two registries stand for two workers
    ids = [first.new_id() for _ in range(1000)] + [second.new_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    assert all(id_.isascii() and "/" not in id_ and len(id_) <= 16 for id_ in ids)  # URL-safe


async def test_registry_close_paced_of_one_server_closes_only_its_sessions_and_counts_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = registry_for()
    draining, other = ServerState(SERVER), ServerState(OTHER)
    mine, theirs = on(registry, draining, 4), on(registry, other, 2)
    draining.start_drain("agent", 2.0, 1012, 0.0)
    close = Close(1012, "server draining")
    await registry.close_paced(close, 2.0, server=draining)
    assert [s.asked for s in mine] == [
        [(0.0, close)],
        [(0.5, close)],
        [(1.0, close)],
        [(1.5, close)],
    ]
    assert [s.asked for s in theirs] == [[], []]
    assert registry.metrics.drain_closes.values == {("main",): 4}


async def test_registry_close_paced_stops_asking_once_going_on_says_no(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = registry_for()
    draining = ServerState(SERVER)
    sessions = on(registry, draining, 4)
    drain = draining.start_drain("admin", 4.0, 4000, 0.0)
    close = Close(4000, "server draining")

    async def undrain_at_1_5() -> None:
        await trio.sleep(1.5)
        draining.end_drain()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(undrain_at_1_5)
        await registry.close_paced(
            close, 4.0, server=draining, going_on=lambda: draining.drain is drain
        )
    assert [s.asked for s in sessions] == [[(0.0, close)], [(1.0, close)], [], []]
    assert trio.current_time() == 3.0, "the turns left pass without asking"
    assert registry.metrics.drain_closes.values == {("main",): 2}


async def test_registry_close_paced_asks_sessions_begun_meanwhile_in_what_is_left_of_the_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A session whose handshake was under way when the drain began is closed too."""
    registry = registry_for()
    draining = ServerState(SERVER)
    first = on(registry, draining, 2)
    late: list[FakeSession] = []

    async def one_more_at_0_2() -> None:
        await trio.sleep(0.2)
        late.extend(on(registry, draining, 2))

    close = Close(1012, "server draining")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one_more_at_0_2)
        await registry.close_paced(close, 2.0, server=draining)
    assert [s.asked for s in first] == [[(0.0, close)], [(1.0, close)]]
    # the first round ended at 1.0 (its last ask); 1.0 s of the window is left for two
    assert [s.asked for s in late] == [[(1.0, close)], [(1.5, close)]]
    assert registry.metrics.drain_closes.values == {("main",): 4}


async def test_registry_close_paced_for_the_whole_proxy_counts_no_drain_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = registry_for()
    sessions = on(registry, ServerState(SERVER), 2)
    await registry.close_paced(Close(1001, "proxy shutting down"), 1.0)
    assert [len(s.asked) for s in sessions] == [1, 1]
    assert registry.metrics.drain_closes.values == {}


async def test_registry_close_paced_of_a_server_looks_once_more_at_the_windows_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = registry_for()
    draining = ServerState(SERVER)
    first = on(registry, draining, 1)
    late: list[FakeSession] = []

    async def one_more_at_1_5() -> None:
        await trio.sleep(1.5)
        late.extend(on(registry, draining, 1))

    close = Close(1012, "server draining")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one_more_at_1_5)
        await registry.close_paced(close, 2.0, server=draining)
    assert [s.asked for s in (*first, *late)] == [[(0.0, close)], [(2.0, close)]]
    assert trio.current_time() == 2.05, "returns once the last close ended, no more looks"


# ---------------------------------------------------------------- progress lines

SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"


async def open_session(
    nursery: trio.Nursery, registry: Registry, snapshot: Snapshot, client: str
) -> tuple[Peer, Peer]:
    """A session relayed by `registry` on memory streams: the test's client and backend."""
    client_end, proxy_client = trio.testing.memory_stream_pair()
    backend_end, proxy_backend = trio.testing.memory_stream_pair()
    balancer = snapshot.balancers["main"]
    live = LiveSession(
        id=registry.new_id(),
        session=Session(snapshot.config, proxy_client, proxy_backend, compressed=False),
        switching=SWITCHING,
        balancer=balancer,
        server=balancer.servers[0],
        pick=Pick(),
        route="/",
        subprotocol="",
        started=trio.current_time(),
        client=client,
    )
    nursery.start_soon(registry.relay, live)
    head = b""
    while len(head) < len(SWITCHING):
        head += await client_end.receive_some(len(SWITCHING) - len(head))
    return Peer(client_end, client=True), Peer(backend_end, client=False)


async def close_session(client: Peer, backend: Peer) -> None:
    """The client closes; the backend answers and hangs up: the session ends at once."""
    await client.close()
    await backend.expect_close()
    await backend.close()
    await backend.stream.aclose()


def progress_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, float, int, int, int]]:
    return [
        (p.client, p.duration, p.messages_in, p.messages_out, p.bytes_in)
        for p in (r.__dict__.get("progress") for r in caplog.records)
        if isinstance(p, AccessRecord)
    ]


async def test_registry_progress_lines_each_interval_count_what_moved_since_the_last(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Interval 10 s, from the first session's start (0): A (from 0) at 10, 20 and 30 with what
    moved since its previous line; B (from 5) first at 20, when it is 15 s old; after the last
    session ends no walk is set until the next one starts (C at 50: first walk at 60)."""
    caplog.set_level(logging.INFO, "wsproxy.access")
    config = proxy_config(
        "ws://127.0.0.1:9",
        extra="log: {session_interval: 10s}\nkeepalive: {interval: 0}\ntimeouts: {idle: 0}",
    )
    snapshot = build_snapshot(config)
    registry = Registry(lambda: config)
    a_client, a_backend = await open_session(nursery, registry, snapshot, "192.0.2.1:1")
    await trio.sleep(1)
    await a_client.send_text("hi")  # 8 bytes from a client: 2 + 4 of mask + 2
    await a_client.send_text("yo")
    await trio.sleep(1)
    await a_backend.send_text("back")
    await trio.sleep_until(5)
    b_client, b_backend = await open_session(nursery, registry, snapshot, "192.0.2.2:2")
    await trio.sleep_until(12)
    await a_client.send_text("more")
    await trio.sleep_until(25)
    await close_session(b_client, b_backend)
    await trio.sleep_until(35)
    await close_session(a_client, a_backend)
    await trio.sleep_until(50)
    assert not registry.sessions
    assert progress_lines(caplog) == [
        ("192.0.2.1:1", 10.0, 2, 1, 16),
        ("192.0.2.1:1", 20.0, 1, 0, 10),
        ("192.0.2.2:2", 15.0, 0, 0, 0),
        ("192.0.2.1:1", 30.0, 0, 0, 0),
    ]
    ended = [r.__dict__["access"] for r in caplog.records if "access" in r.__dict__]
    assert [(e.client, e.messages_in, e.messages_out) for e in ended] == [
        ("192.0.2.2:2", 0, 0),
        ("192.0.2.1:1", 3, 1),  # the final line counts the whole session, as ever
    ]
    caplog.clear()
    await open_session(nursery, registry, snapshot, "192.0.2.3:3")
    await trio.sleep_until(59.5)
    assert progress_lines(caplog) == []
    await trio.sleep_until(60)
    await trio.testing.wait_all_tasks_blocked()  # the timer task's turn at 60 too
    assert progress_lines(caplog) == [("192.0.2.3:3", 10.0, 0, 0, 0)]
    nursery.cancel_scope.cancel()


async def test_registry_progress_lines_are_written_in_batches_that_let_timers_run_between(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batches of 2 lines, 5 sessions due at 10: the walk is not the timer task's (a timer due
    at the same instant runs before any line is written), and it yields between batches: a
    task started as each line is written has not run by the end of that batch, and the
    first batch's have run by the third batch."""
    caplog.set_level(logging.INFO, "wsproxy.access")  # else no line is built at all
    monkeypatch.setattr(registry_module, "PROGRESS_BATCH", 2)
    ran: list[None] = []
    seen: list[tuple[float, int]] = []  # each line's duration, and how many tasks had run

    async def run() -> None:
        ran.append(None)

    def write_progress(record: AccessRecord) -> None:
        seen.append((record.duration, len(ran)))
        nursery.start_soon(run)

    monkeypatch.setattr(registry_module, "write_progress", write_progress)
    config = proxy_config(
        "ws://127.0.0.1:9",
        extra="log: {session_interval: 10s}\nkeepalive: {interval: 0}\ntimeouts: {idle: 0}",
    )
    snapshot = build_snapshot(config)
    registry = Registry(lambda: config)
    for n in range(5):
        await open_session(nursery, registry, snapshot, f"192.0.2.{n}:1")
    seen_by_timer: list[int] = []
    timers.at(10.0, lambda: seen_by_timer.append(len(seen)))
    await trio.sleep_until(11)
    assert seen_by_timer == [0]
    assert [duration for duration, _ in seen] == [10.0] * 5
    assert [count for _, count in seen[:2]] == [0, 0]
    assert seen[4][1] >= 2
    nursery.cancel_scope.cancel()


async def test_registry_progress_walk_due_while_the_last_one_still_writes_is_skipped(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One line a batch, three sessions; writing the first line at 10 takes a whole interval
    (the clock jumps to 20 meanwhile): the walk due at 20, whose turn comes while the lines
    of 10 are still being written, is skipped; the one at 30 counts from those of 10."""
    caplog.set_level(logging.INFO, "wsproxy.access")
    monkeypatch.setattr(registry_module, "PROGRESS_BATCH", 1)
    written: list[tuple[str, float]] = []

    def write_progress(record: AccessRecord) -> None:
        if not written:
            autojump_clock.jump(10)
        written.append((record.client, record.duration))

    monkeypatch.setattr(registry_module, "write_progress", write_progress)
    config = proxy_config(
        "ws://127.0.0.1:9",
        extra="log: {session_interval: 10s}\nkeepalive: {interval: 0}\ntimeouts: {idle: 0}",
    )
    snapshot = build_snapshot(config)
    registry = Registry(lambda: config)
    for n in range(3):
        await open_session(nursery, registry, snapshot, f"192.0.2.{n}:1")
    await trio.sleep_until(35)
    assert written == [(f"192.0.2.{n}:1", age) for age in (10.0, 30.0) for n in range(3)]
    nursery.cancel_scope.cancel()


async def test_registry_progress_walk_that_fails_is_logged_and_the_next_one_runs(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, "wsproxy.access")
    config = proxy_config(
        "ws://127.0.0.1:9",
        extra="log: {session_interval: 10s}\nkeepalive: {interval: 0}\ntimeouts: {idle: 0}",
    )
    registry = Registry(lambda: config)
    await open_session(nursery, registry, build_snapshot(config), "192.0.2.1:1")
    written: list[AccessRecord] = []

    def write_progress(record: AccessRecord) -> None:
        written.append(record)
        if len(written) == 1:
            raise OSError("the log's disk is full (injected)")

    monkeypatch.setattr(registry_module, "write_progress", write_progress)
    await trio.sleep_until(25)
    assert [record.duration for record in written] == [10.0, 20.0]
    assert "progress lines failed" in caplog.text
    nursery.cancel_scope.cancel()


async def test_registry_without_session_interval_writes_no_progress_line(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "wsproxy.access")
    config = proxy_config("ws://127.0.0.1:9", extra="keepalive: {interval: 0}\ntimeouts: {idle: 0}")
    snapshot = build_snapshot(config)
    registry = Registry(lambda: config)
    await open_session(nursery, registry, snapshot, "192.0.2.1:1")
    await trio.sleep(3600)
    assert progress_lines(caplog) == []
    nursery.cancel_scope.cancel()


async def test_registry_a_reload_turns_progress_lines_on_and_off_for_running_sessions(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "wsproxy.access")
    quiet = "keepalive: {interval: 0}\ntimeouts: {idle: 0}"
    off = proxy_config("ws://127.0.0.1:9", extra=quiet)
    on_every_10s = proxy_config(
        "ws://127.0.0.1:9", extra=f"log: {{session_interval: 10s}}\n{quiet}"
    )
    in_use = [off]
    registry = Registry(lambda: in_use[0])
    await open_session(nursery, registry, build_snapshot(off), "192.0.2.1:1")
    await trio.sleep_until(100)
    in_use[0] = on_every_10s
    registry.interval_changed(0.0)
    await trio.sleep_until(125)
    assert progress_lines(caplog) == [
        ("192.0.2.1:1", 110.0, 0, 0, 0),
        ("192.0.2.1:1", 120.0, 0, 0, 0),
    ]
    in_use[0] = off
    registry.interval_changed(10.0)
    await trio.sleep_until(200)
    assert len(progress_lines(caplog)) == 2, "off again: no more lines"
    nursery.cancel_scope.cancel()
