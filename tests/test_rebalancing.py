"""wsproxy/rebalancing.py: the loop that moves sessions after a pool's servers change.

The first tests run the loop on trio's MockClock over stand-in sessions whose clients come back
at once when they are asked to close (so every instant is exact); the last one runs it end to
end, in a real proxy with real `websockets` backends and clients on loopback.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import cast

import pytest
import trio
import trio.testing
import websockets
from websockets.trio.client import connect

from tests.conftest import ORIGIN, proxy_config
from tests.test_pools import backends, landed, start, until
from wsproxy.balancer import ANY, Pick
from wsproxy.closes import Close
from wsproxy.config import Config, parse_config
from wsproxy.rebalance import lower_bound, upper_bound
from wsproxy.rebalancing import CHECK_INTERVAL, REASON, keep_balanced
from wsproxy.registry import LiveSession, Registry
from wsproxy.relay import Session
from wsproxy.servers import ServerStates
from wsproxy.snapshot import Snapshot, build_snapshot, retire
from wsproxy.workers import for_worker

ADDRESSES = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
CAP = 30.0


def config(
    count: int,
    rebalance: str = "{rate: 10/s, min_age: 30s}",
    *,
    balance: str = "round_robin",
    workers: int = 1,
) -> Config:
    servers = ", ".join(f"ws://{address}:9000" for address in ADDRESSES[:count])
    hash_on = "    hash_on: ip\n" if balance == "hash" else ""
    option = f"    rebalance: {rebalance}\n" if rebalance else ""
    return parse_config(
        f"""
listen: [{{address: 127.0.0.1:0}}]
workers: {workers}
security: {{allowed_origins: ["*"]}}
routes: [{{path: /, pool: main}}]
pools:
  main:
    balance: {balance}
{hash_on}{option}    servers: [{servers}]
""",
        {},
    )


class StandIn:
    """A relay session's part in rebalancing: asked to close, it ends, and its client comes
    back at once with what it brought the first time (as a client that heard 1012 does)."""

    def __init__(self, proxy: FakeProxy) -> None:
        self.proxy = proxy
        self.close: Close | None = None

    async def shutdown(self, close: Close) -> None:
        self.close = close
        live = self.proxy.registry.sessions.pop(cast(Session, self))
        live.balancer.ended(live.server)
        now = trio.current_time()
        self.proxy.asked.append((now, live, now - live.started, close))
        self.proxy.connect(live.pick)


class FakeProxy:
    def __init__(self, first: Config) -> None:
        self.states = ServerStates()
        self.snapshot: Snapshot = build_snapshot(first, self.states)
        self.registry = Registry(lambda: self.snapshot.config)
        self.asked: list[tuple[float, LiveSession, float, Close]] = []
        self.stopping = False

    def connect(self, pick: Pick = ANY) -> LiveSession:
        balancer = self.snapshot.balancers["main"]
        now = trio.current_time()
        server = balancer.choose(now, pick)
        assert server is not None
        session = cast(Session, StandIn(self))
        live = LiveSession(
            id=self.registry.new_id(),
            session=session,
            switching=b"",
            balancer=balancer,
            server=server,
            pick=pick,
            route="/",
            subprotocol="",
            started=now,
            client="10.1.0.1:40000",
        )
        balancer.started(server)
        self.registry.sessions[session] = live
        return live

    def reload(self, new: Config) -> None:
        snapshot = build_snapshot(new, self.states)
        retire(self.snapshot, snapshot, self.states)
        self.snapshot = snapshot

    def loads(self) -> dict[str, int]:
        return {s.address: s.sessions for s in self.snapshot.balancers["main"].servers}

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(
            keep_balanced, self.registry, lambda: self.snapshot, lambda: self.stopping
        )


def most_in_a_second(instants: list[float]) -> int:
    return max(
        (sum(1 for t in instants if start <= t < start + 1.0) for start in instants), default=0
    )


def closes_at(proxy: FakeProxy) -> list[float]:
    return [when for when, *_ in proxy.asked]


def spaced(first: float, step: float, count: int) -> list[float]:
    return [first + step * i for i in range(count)]


async def test_rebalancing_scale_out_2x150_to_3_at_10_per_second(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    proxy = FakeProxy(config(2))
    for _ in range(300):
        proxy.connect()
    await proxy.start(nursery)  # at 0: the first look
    await trio.sleep_until(100.5)
    proxy.reload(config(3))
    await trio.sleep_until(105.0)
    balancer = proxy.snapshot.balancers["main"]
    assert balancer.status(105.0).rebalancing
    await trio.sleep_until(200.0)
    assert closes_at(proxy) == pytest.approx(spaced(101.0, 0.1, 75))  # noticed at the next look
    assert most_in_a_second(closes_at(proxy)) == 10
    assert all(age >= 30.0 for *_, age, _ in proxy.asked)
    assert {close for *_, close in proxy.asked} == {Close(1012, REASON)}
    assert proxy.loads() == {"10.0.0.1": 112, "10.0.0.2": 113, "10.0.0.3": 75}
    status = balancer.status(200.0)
    assert (status.rebalancing, status.rebalance_closes) == (False, 75)
    assert proxy.registry.metrics.rebalance_closes.values == {("main",): 75}


async def test_rebalancing_nothing_moves_while_within_tolerance(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    proxy = FakeProxy(config(2))
    for _ in range(20):
        proxy.connect()
    await proxy.start(nursery)
    await trio.sleep_until(100.0)
    proxy.reload(config(2, "{tolerance: 60%, min_age: 0s}"))  # only the settings change
    proxy.snapshot.balancers["main"].servers[1].weight = 2  # shares 6.7 and 13.3: within 60 %
    await trio.sleep_until(200.0)
    assert proxy.asked == []
    assert not proxy.snapshot.balancers["main"].rebalancing


async def test_rebalancing_waits_for_a_change_of_servers(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Sessions that ended unevenly are not moved: rebalancing follows a change of servers."""
    proxy = FakeProxy(config(2, "{min_age: 0s}"))
    sessions = [proxy.connect() for _ in range(40)]
    for live in sessions[::2]:  # every one on the first server ends
        del proxy.registry.sessions[live.session]
        live.balancer.ended(live.server)
    await proxy.start(nursery)
    await trio.sleep_until(100.0)
    assert proxy.loads() == {"10.0.0.1": 0, "10.0.0.2": 20}
    assert proxy.asked == []


async def test_rebalancing_never_closes_a_session_younger_than_min_age(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    proxy = FakeProxy(config(2))
    await proxy.start(nursery)
    await trio.sleep_until(95.0)
    for _ in range(40):
        proxy.connect()
    await trio.sleep_until(100.5)
    proxy.reload(config(3))
    await trio.sleep_until(200.0)
    assert closes_at(proxy) == pytest.approx(spaced(125.0, 0.1, 10))  # 30 s after they began
    assert min(age for *_, age, _ in proxy.asked) == pytest.approx(30.0)


async def test_rebalancing_a_server_back_up_takes_its_share(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    proxy = FakeProxy(config(3, "{rate: 5/s, min_age: 1s, close_code: 1013}"))
    down = proxy.snapshot.balancers["main"].servers[2]
    down.checked_up = False
    for _ in range(60):
        proxy.connect()
    await proxy.start(nursery)
    await trio.sleep_until(10.2)
    down.checked_up = True
    await trio.sleep_until(60.0)
    assert closes_at(proxy) == pytest.approx(spaced(11.0, 0.2, 15))
    assert {close.code for *_, close in proxy.asked} == {1013}
    assert proxy.loads() == {"10.0.0.1": 22, "10.0.0.2": 23, "10.0.0.3": 15}


async def test_rebalancing_leaves_a_draining_servers_sessions_to_its_drain(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    proxy = FakeProxy(config(2, "{min_age: 0s}"))
    for _ in range(40):
        proxy.connect()
    await proxy.start(nursery)
    await trio.sleep_until(10.5)
    draining = proxy.snapshot.balancers["main"].servers[0]
    draining.start_drain("admin", 60.0, 1012, 10.5)  # its share is now 0: the room changed
    await trio.sleep_until(100.0)
    assert proxy.asked == [], "the drain closes them, over its window"
    assert proxy.loads() == {"10.0.0.1": 20, "10.0.0.2": 20}


async def test_rebalancing_a_name_that_resolves_to_one_more_address_spreads_onto_it(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    named = parse_config(
        """
listen: [{address: 127.0.0.1:0}]
security: {allowed_origins: ["*"]}
routes: [{path: /, pool: main}]
pools:
  main:
    rebalance: {rate: 10/s, min_age: 0s}
    servers: [ws://app.internal:9000]
""",
        {},
    )
    proxy = FakeProxy(named)
    balancer = proxy.snapshot.balancers["main"]
    server = named.pools["main"].servers[0]
    balancer.resolved(server, ["10.0.0.1", "10.0.0.2"])
    for _ in range(40):
        proxy.connect()
    await proxy.start(nursery)
    await trio.sleep_until(10.5)
    balancer.resolved(server, ["10.0.0.1", "10.0.0.2", "10.0.0.3"])  # DNS answers one more
    await trio.sleep_until(100.0)
    assert closes_at(proxy) == pytest.approx(spaced(11.0, 0.1, 10))
    assert proxy.loads() == {"10.0.0.1": 15, "10.0.0.2": 15, "10.0.0.3": 10}


async def test_rebalancing_workers_share_the_rate(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # a worker runs the configuration the supervisor hands it
    proxy = FakeProxy(for_worker(config(1, "{rate: 10/s, min_age: 0s}", workers=2), [0]))
    for _ in range(20):
        proxy.connect()
    await proxy.start(nursery)
    await trio.sleep_until(0.5)
    proxy.reload(for_worker(config(2, "{rate: 10/s, min_age: 0s}", workers=2), [0]))
    await trio.sleep_until(30.0)
    assert closes_at(proxy) == pytest.approx(spaced(1.0, 0.2, 8))  # 5/s in each of 2 workers
    assert most_in_a_second(closes_at(proxy)) == 5


async def test_rebalancing_hash_pool_moves_exactly_the_keys_the_new_server_wins(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    proxy = FakeProxy(config(2, "{rate: 100/s, min_age: 0s}", balance="hash"))
    for i in range(200):
        proxy.connect(Pick(key=f"10.1.{i // 250}.{i % 250}"))
    await proxy.start(nursery)
    await trio.sleep_until(0.5)
    proxy.reload(config(3, "{rate: 100/s, min_age: 0s}", balance="hash"))
    new = proxy.snapshot.balancers["main"]
    third = new.servers[2]
    winners = {
        live.pick.key
        for live in proxy.registry.live()
        if new.owner(live.pick, new.servers) is third
    }
    await trio.sleep_until(60.0)
    assert {live.pick.key for _, live, *_ in proxy.asked} == winners
    assert len(proxy.asked) == len(winners)  # each once
    assert proxy.loads()["10.0.0.3"] == len(winners)
    assert not new.rebalancing


async def test_rebalancing_skips_sessions_that_ended_and_counts_closing_ones_as_leaving(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    proxy = FakeProxy(config(1, "{rate: 1/s, min_age: 0s}"))
    sessions = [proxy.connect() for _ in range(6)]
    await proxy.start(nursery)
    await trio.sleep_until(0.5)
    proxy.reload(config(2, "{rate: 1/s, min_age: 0s}"))
    await trio.sleep_until(1.5)  # the oldest was closed at 1.0 (its client came back)
    closing, gone = sessions[1], sessions[2]
    cast(StandIn, closing.session).close = Close(1000, "")  # its client began to close
    del proxy.registry.sessions[gone.session]
    gone.balancer.ended(gone.server)
    await trio.sleep_until(5.5)  # 4 and 2, one of the 4 closing: nothing more to do
    assert closes_at(proxy) == [1.0]
    del proxy.registry.sessions[closing.session]  # its close is over; its client stays away
    closing.balancer.ended(closing.server)
    await trio.sleep_until(30.0)  # 3 and 1: one more
    assert [live.id for _, live, *_ in proxy.asked] == [sessions[0].id, sessions[3].id]
    assert closes_at(proxy) == pytest.approx([1.0, 6.0])
    assert proxy.snapshot.balancers["main"].rebalance_closes == 2


async def test_rebalancing_stops_when_the_proxy_stops_and_without_the_setting(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    proxy = FakeProxy(config(1, ""))
    for _ in range(20):
        proxy.connect()
    await proxy.start(nursery)
    await trio.sleep_until(0.5)
    proxy.reload(config(2, ""))  # no rebalance: sessions stay
    await trio.sleep_until(10.0)
    assert proxy.asked == []
    proxy.stopping = True
    proxy.reload(config(3, "{min_age: 0s}"))
    await trio.sleep_until(20.0)
    assert proxy.asked == []


async def test_rebalancing_a_pool_removed_by_reload_is_forgotten(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    proxy = FakeProxy(config(2))
    await proxy.start(nursery)
    await trio.sleep_until(0.5)
    other = parse_config(
        """
listen: [{address: 127.0.0.1:0}]
security: {allowed_origins: ["*"]}
routes: [{path: /, pool: other}]
pools: {other: {servers: [ws://10.0.0.9:9000], rebalance: {}}}
""",
        {},
    )
    proxy.snapshot = build_snapshot(other, proxy.states)
    await trio.sleep_until(0.5 + 3 * CHECK_INTERVAL)
    assert proxy.asked == []


# ---------------------------------------------------------------- end to end, on loopback


class CloseTimes(logging.Handler):
    """The proxy's own record of each rebalancing close: trio's clock when it was made, and
    the session's age then (the proxy runs in this process, so its clock is ours)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.closes: list[tuple[float, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("rebalance: closing session"):
            assert isinstance(record.args, tuple)
            self.closes.append((trio.current_time(), float(cast(float, record.args[2]))))


@dataclass
class Client:
    """A client that reconnects whenever it hears 1012, and remembers what it heard."""

    url: str
    heard: list[int] = field(default_factory=list)
    sessions: int = 0
    connected: trio.Event = field(default_factory=trio.Event)

    async def run(self) -> None:
        while True:
            async with connect(self.url, origin=ORIGIN, proxy=None) as ws:
                self.sessions += 1
                self.connected.set()
                with contextlib.suppress(websockets.ConnectionClosed):
                    await ws.recv()  # the echo server says nothing unasked: until the close
                code = ws.close_code
            assert code is not None
            self.heard.append(code)
            if code != 1012:
                return


@pytest.mark.e2e
async def test_rebalancing_end_to_end_scale_out_by_reload(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """2 echo servers x 30 sessions, a third added by reload (the call SIGHUP makes): 20
    closes a second at most, none younger than 0.5 s, every moved client heard 1012 and came
    back, and every server ends within 25 % of its share."""
    a, b, c = await backends(nursery, 3)
    rebalance = "{tolerance: 25%, rate: 20/s, min_age: 0.5s}"
    first = proxy_config(a.url, b.url, extra=f"    rebalance: {rebalance}")
    running = await start(nursery, first)
    caplog.set_level(logging.DEBUG, "wsproxy.rebalancing")
    times = CloseTimes()
    logging.getLogger("wsproxy.rebalancing").addHandler(times)
    try:
        clients = [Client(running.url + "/") for _ in range(60)]
        for client in clients:
            nursery.start_soon(client.run)
            with trio.fail_after(CAP):
                await client.connected.wait()
        proxy = running.proxy
        assert landed([a, b, c]) == [30, 30, 0]
        await trio.sleep(0.5)  # every session is old enough to move
        second = proxy_config(a.url, b.url, c.url, extra=f"    rebalance: {rebalance}")
        reloaded = trio.current_time()
        with trio.fail_after(CAP):
            assert await proxy.reload(lambda: second)

        def settled() -> bool:
            (pool,) = proxy.snapshot.status(trio.current_time())
            return bool(pool.rebalance_closes) and not pool.rebalancing

        await until(settled, "the pool rebalanced", seconds=15 / 20 + 5)
        await until(lambda: len(proxy.registry.live()) == 60, "every moved client came back")
    finally:
        logging.getLogger("wsproxy.rebalancing").removeHandler(times)
    (pool,) = proxy.snapshot.status(trio.current_time())
    for server in pool.servers:  # shares are rounded to 3 decimals
        low, high = lower_bound(server.share, 0.25), upper_bound(server.share, 0.25)
        assert low - 1e-3 <= server.sessions <= high + 1e-3, pool
    moved = [client for client in clients if client.heard]
    instants = [when for when, _ in times.closes]
    assert len(moved) == len(instants) == pool.rebalance_closes >= 15
    assert all(client.heard == [1012] and client.sessions == 2 for client in moved)
    assert most_in_a_second(instants) <= 20
    assert min(age for _, age in times.closes) >= 0.5
    assert instants[0] - reloaded <= CHECK_INTERVAL + 0.5
    assert sum(landed([a, b, c])) == 60 + len(moved)
