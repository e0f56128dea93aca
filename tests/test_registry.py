"""wsproxy/registry.py: connection counts and limits, and the drain's paced close, under the
autojump clock with exact instants (the relay of a whole session is in test_admission)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.conftest import proxy_config
from tests.helpers import FakeSession, on
from wsproxy.closes import Close
from wsproxy.config import Config, Security, Server
from wsproxy.handshake import Reject
from wsproxy.registry import RETRY_AFTER, Registry, close_times
from wsproxy.servers import ServerState

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
