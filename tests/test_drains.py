"""wsproxy/drains.py: agent reports and operator drains applied to servers, the paced closes
they start on virtual time with exact instants, and end to end: a real backend whose health
answers carry Wsproxy-Weight and Wsproxy-Drain, and Proxy.drain / undrain on a running proxy."""

from __future__ import annotations

import functools
import json
import logging

import pytest
import trio
import trio.testing
import websockets
from websockets.http11 import Request, Response
from websockets.trio.client import connect
from websockets.trio.server import ServerConnection

from tests.conftest import ORIGIN, Backend, proxy_config, start_backend
from tests.helpers import ask, on
from wsproxy.agent import AgentReport
from wsproxy.balancer import PoolBalancer
from wsproxy.closes import Close
from wsproxy.config import Config, parse_config
from wsproxy.drains import DRAIN_REASON, WARN_EVERY, Drains
from wsproxy.registry import Registry
from wsproxy.server import Proxy
from wsproxy.servers import ServerState, ServerStates
from wsproxy.snapshot import Snapshot, build_snapshot, retire

CAP = 20.0
QUICK_STOP = "shutdown: {drain_timeout: 0s, close_window: 0s}"  # the rest hear 1001 at once
log = logging.getLogger(__name__)


def two_servers() -> Config:
    """Two servers by address, and one by name."""
    return proxy_config("ws://10.0.0.1:9000", "ws://10.0.0.2:9000", "ws://app.internal:9000")


def weights(state: ServerState) -> tuple[int | None, int]:
    """(agent weight, effective weight), read afresh (mypy would narrow the attributes)."""
    return state.agent_weight, state.effective_weight


class Fixture:
    """A snapshot of `two_servers`, its registry, and the drains under test."""

    def __init__(self, nursery: trio.Nursery | None = None) -> None:
        config = two_servers()
        self.snapshot: Snapshot = build_snapshot(config)
        self.registry = Registry(lambda: config)
        self.drains = Drains(self.registry, lambda: self.snapshot)
        self.drains.nursery = nursery
        self.balancer: PoolBalancer = self.snapshot.balancers["main"]
        self.a, self.b, self.named = self.balancer.servers


# --- agent reports -----------------------------------------------------------------------------


async def test_drains_agent_weight_is_set_kept_on_a_bad_value_and_ended_when_absent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    f = Fixture()
    f.drains.apply(f.balancer, f.a, AgentReport(weight=0))
    assert weights(f.a) == (0, 0)
    f.drains.apply(f.balancer, f.a, AgentReport(keep_weight=True, problems=("bad",)))
    assert weights(f.a) == (0, 0), "a bad value keeps what was said before"
    f.drains.apply(f.balancer, f.a, AgentReport(weight=9))
    assert weights(f.a) == (9, 9)
    f.drains.apply(f.balancer, f.a, AgentReport())
    assert weights(f.a) == (None, 1)


async def test_drains_agent_drain_starts_once_keeps_on_a_bad_value_and_ends_when_absent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    f = Fixture()
    await trio.sleep(3.0)
    f.drains.apply(f.balancer, f.a, AgentReport(drain=30.0))
    drain = f.a.drain
    assert drain is not None
    assert (drain.by, drain.window, drain.started, drain.code) == ("agent", 30.0, 3.0, 1012)
    await trio.sleep(1.0)
    f.drains.apply(f.balancer, f.a, AgentReport(drain=5.0))
    assert f.a.drain is drain, "the agent saying it again keeps the schedule"
    f.drains.apply(f.balancer, f.a, AgentReport(keep_drain=True, problems=("bad",)))
    assert f.a.drain is drain
    f.drains.apply(f.balancer, f.a, AgentReport())
    assert f.a.drain is None


async def test_drains_agent_silence_never_ends_an_operators_drain(
    autojump_clock: trio.testing.MockClock,
) -> None:
    f = Fixture()
    assert f.drains.drain("main", "ws://10.0.0.1:9000", 10.0, 1012)
    f.drains.apply(f.balancer, f.a, AgentReport(weight=3))
    assert f.a.drain is not None
    assert f.a.drain.by == "admin"
    assert f.a.effective_weight == 0


async def test_drains_an_operators_drain_over_an_agents_is_not_ended_by_the_agent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        f = Fixture(nursery)
        sessions = on(f.registry, f.a, 3)
        f.drains.apply(f.balancer, f.a, AgentReport(drain=3.0))
        await trio.sleep(0.5)
        assert f.drains.drain("main", "ws://10.0.0.1:9000", 60.0, 4000)
        await trio.sleep(0.5)
        f.drains.apply(f.balancer, f.a, AgentReport())  # the agent stops asking at 1.0
        assert f.a.draining
        await trio.sleep(10.0)
    close = Close(1012, DRAIN_REASON)  # the schedule in force goes on: the agent's
    assert [s.asked for s in sessions] == [[(0.0, close)], [(1.0, close)], [(2.0, close)]]
    assert f.a.draining, "only an undrain ends it"


async def test_drains_bad_headers_warn_once_per_server_and_problem_then_every_minute(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wsproxy.drains")
    f = Fixture()
    bad = AgentReport(keep_weight=True, problems=("Wsproxy-Weight: x: ignored",))
    worse = AgentReport(keep_drain=True, problems=("Wsproxy-Drain: y: ignored",))
    for _ in range(30):  # a probe every 5 s for 150 s
        f.drains.apply(f.balancer, f.a, bad)
        f.drains.apply(f.balancer, f.b, bad)
        f.drains.apply(f.balancer, f.a, worse)
        await trio.sleep(5.0)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    per_line = {line: lines.count(line) for line in lines}
    assert per_line == {
        ("WARNING", "pool main: server ws://10.0.0.1:9000: Wsproxy-Weight: x: ignored"): 3,
        ("WARNING", "pool main: server ws://10.0.0.2:9000: Wsproxy-Weight: x: ignored"): 3,
        ("WARNING", "pool main: server ws://10.0.0.1:9000: Wsproxy-Drain: y: ignored"): 3,
    }
    assert WARN_EVERY == 60.0  # at 0, 60 and 120 s


# --- operator drains -----------------------------------------------------------------------------


async def test_drains_unknown_pool_or_server_is_false_and_a_bad_code_or_window_raises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    f = Fixture()
    assert not f.drains.drain("other", "ws://10.0.0.1:9000", 1.0, 1012)
    assert not f.drains.drain("main", "ws://10.0.0.9:9000", 1.0, 1012)
    assert not f.drains.undrain("other", "ws://10.0.0.1:9000")
    assert not f.drains.undrain("main", "10.0.0.1")
    for code in (1005, 1006, 1015, 999, 2000, 5000):
        with pytest.raises(ValueError, match="close code"):
            f.drains.drain("main", "ws://10.0.0.1:9000", 1.0, code)
    with pytest.raises(ValueError, match="window"):
        f.drains.drain("main", "ws://10.0.0.1:9000", -1.0, 1012)
    assert all(s.drain is None for s in f.balancer.servers)


async def test_drains_a_server_is_named_by_its_identity_or_by_its_url(
    autojump_clock: trio.testing.MockClock,
) -> None:
    f = Fixture()
    named = f.named
    f.balancer.resolved(
        f.snapshot.config.pools["main"].servers[2], ["10.0.0.7", "10.0.0.8"]
    )  # a name that resolved to two addresses: two states
    seven, eight = f.balancer.servers[2:]
    assert f.drains.drain("main", "ws://app.internal:9000 (10.0.0.8)", 1.0, 1012)
    assert (seven.draining, eight.draining) == (False, True)
    assert f.drains.undrain("main", "ws://app.internal:9000")
    assert not eight.draining
    assert f.drains.drain("main", "ws://app.internal:9000", 1.0, 4000), "by URL: every address"
    assert (seven.draining, eight.draining) == (True, True)
    assert [s.draining for s in (f.a, f.b, named)] == [False] * 3


async def test_drains_closes_the_servers_sessions_spread_over_the_window_and_only_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        f = Fixture(nursery)
        mine, theirs = on(f.registry, f.a, 3), on(f.registry, f.b, 2)
        await trio.sleep(10.0)
        assert f.drains.drain("main", "ws://10.0.0.1:9000", 1.5, 4000)  # returns at once
        assert trio.current_time() == 10.0
        assert f.balancer.choose(10.0) is f.b, "no new sessions for the draining server"
    close = Close(4000, DRAIN_REASON)
    assert [s.asked for s in mine] == [[(10.0, close)], [(10.5, close)], [(11.0, close)]]
    assert [s.asked for s in theirs] == [[], []]
    assert f.registry.metrics.drain_closes.values == {("main",): 3}
    assert f.a.draining, "the drain holds after its window, until undrained"
    assert f.a.status(20.0).drain_left == 0.0


async def test_drains_started_twice_keeps_the_first_schedule_and_undrain_stops_the_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        f = Fixture(nursery)
        sessions = on(f.registry, f.a, 4)
        assert f.drains.drain("main", "ws://10.0.0.1:9000", 4.0, 1012)
        await trio.sleep(0.5)
        f.drains.apply(f.balancer, f.a, AgentReport(drain=0.0))  # would close all at once
        assert f.drains.drain("main", "ws://10.0.0.1:9000", 0.0, 1013)
        await trio.sleep(1.0)
        assert f.drains.undrain("main", "ws://10.0.0.1:9000")  # at 1.5: two asked so far
        assert f.balancer.choose(1.5) is f.a, "takes new sessions again"
    close = Close(1012, DRAIN_REASON)
    assert [s.asked for s in sessions] == [[(0.0, close)], [(1.0, close)], [], []]
    assert f.registry.metrics.drain_closes.values == {("main",): 2}


async def test_drains_undrained_then_drained_again_gets_a_new_schedule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        f = Fixture(nursery)
        sessions = on(f.registry, f.a, 3)
        f.drains.apply(f.balancer, f.a, AgentReport(drain=3.0))
        await trio.sleep(0.5)
        f.drains.apply(f.balancer, f.a, AgentReport())  # the header is gone: drain ends
        await trio.sleep(0.5)
        f.drains.apply(f.balancer, f.a, AgentReport(drain=1.0))  # back, at 1.0
    close = Close(1012, DRAIN_REASON)
    assert [s.asked for s in sessions] == [[(0.0, close)], [(1.0, close)], [(1.5, close)]]


async def test_drains_a_server_of_a_pool_a_reload_removed_can_still_be_undrained(
    autojump_clock: trio.testing.MockClock,
) -> None:
    states = ServerStates()
    both = parse_config(
        """
listen: [{address: 127.0.0.1:0}]
security: {allowed_origins: ["*"]}
routes: [{path: /, pool: main}, {path: /old, pool: old}]
pools:
  main: {servers: ["ws://10.0.0.1:9000"]}
  old: {servers: ["ws://10.0.0.9:9000"]}
""",
        {},
    )
    snapshot = build_snapshot(both, states)
    registry = Registry(lambda: both)
    drains = Drains(registry, lambda: snapshot)
    gone = snapshot.balancers["old"].servers[0]
    sessions = on(registry, gone, 3, pool="old")
    async with trio.open_nursery() as nursery:
        drains.nursery = nursery
        assert drains.drain("old", "ws://10.0.0.9:9000", 3.0, 1012)
        await trio.sleep(0.5)
        after = build_snapshot(proxy_config("ws://10.0.0.1:9000"), states)
        retire(snapshot, after, states)
        snapshot = after  # the reload removed pool old
        assert drains.undrain("old", "ws://10.0.0.9:9000")
        assert not gone.draining
        assert not drains.undrain("old", "ws://10.0.0.8:9000")
    assert [len(s.asked) for s in sessions] == [1, 0, 0], "the undrain stopped the closes"


# --- end to end ----------------------------------------------------------------------------------


class AgentBackend:
    """A `websockets` echo backend whose `GET /health` answers 200 with `headers`."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.backend: Backend | None = None
        self.probes = 0
        self._probed = trio.Event()

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path != "/health":
            return None
        response = connection.respond(200, "ok\n")
        for name, value in self.headers.items():
            response.headers[name] = value
        self.probes += 1
        self._probed.set()
        self._probed = trio.Event()
        return response

    async def say(self, **headers: str) -> None:
        """Answer with `headers` from now on; return once the proxy has read them. A server is
        probed once the last probe's answer was applied, so the second probe from now on
        comes after the first answer with the new headers was applied."""
        self.headers = {name.replace("_", "-"): value for name, value in headers.items()}
        target = self.probes + 2
        while self.probes < target:
            await self._probed.wait()

    async def start(self, nursery: trio.Nursery) -> Backend:
        self.backend = await start_backend(nursery, process_request=self.process_request)
        return self.backend


class Heard:
    """The closes clients heard: (when, code, reason), in order."""

    def __init__(self) -> None:
        self.closes: list[tuple[float, int, str]] = []
        self._more = trio.Event()

    def add(self, code: int, reason: str) -> None:
        self.closes.append((trio.current_time(), code, reason))
        self._more.set()
        self._more = trio.Event()

    async def at_least(self, count: int) -> None:
        while len(self.closes) < count:
            await self._more.wait()


async def hold(
    url: str, heard: Heard, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """A client that holds its session until the proxy closes it, noting when and how."""
    async with connect(url, origin=ORIGIN, proxy=None) as ws:
        await ws.send("hello")
        await ws.recv()
        task_status.started()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        rcvd = closed.value.rcvd
        assert rcvd is not None
        heard.add(rcvd.code, rcvd.reason)


def server_status(body: bytes, url: str) -> dict[str, object]:
    document = json.loads(body)
    (pool,) = document["pools"]
    return next(s for s in pool["servers"] if s["server"] == url)


def count_on(backend: Backend) -> int:
    return len(backend.connections)


async def test_drains_end_to_end_wsproxy_weight_then_wsproxy_drain_then_neither(
    nursery: trio.Nursery,
) -> None:
    agent_a, agent_b = AgentBackend(), AgentBackend()
    a, b = await agent_a.start(nursery), await agent_b.start(nursery)
    check = (
        "    health_check: {type: http, path: /health, interval: 50ms, timeout: 1s,"
        " healthy_after: 1, unhealthy_after: 1, agent: true}"
    )
    proxy = Proxy(proxy_config(a.url, b.url, extra=f"{check}\n{QUICK_STOP}"))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    admin = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    admin_port = admin.socket.getsockname()[1]
    await nursery.start(functools.partial(proxy.serve, listeners, admin=admin))
    url = f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    state_a = proxy.snapshot.balancers["main"].servers[0]
    heard = Heard()
    with trio.fail_after(CAP):
        async with trio.open_nursery() as clients:
            for _ in range(4):  # round robin: two on each
                await clients.start(hold, url, heard)
            assert (count_on(a), count_on(b)) == (2, 2)

            await agent_a.say(Wsproxy_Weight="0")
            for _ in range(3):
                await clients.start(hold, url, heard)
            assert (count_on(a), count_on(b)) == (2, 5), "weight 0: no new sessions there"
            status = server_status((await ask(admin_port, "/status")).body, a.url)
            assert (status["agent_weight"], status["effective_weight"]) == (0, 0)
            assert status["draining"] is False

            await agent_a.say(Wsproxy_Weight="0", Wsproxy_Drain="2s")
            assert state_a.drain is not None
            started = state_a.drain.started
            status = server_status((await ask(admin_port, "/status")).body, a.url)
            assert status["draining"] is True
            assert 1.0 < status["drain_left"] <= 2.0  # type: ignore[operator]
            await heard.at_least(2)
            metrics = (await ask(admin_port, "/metrics")).body.decode()

            await agent_a.say()
            assert (state_a.status(0.0).draining, state_a.agent_weight) == (False, None)
            for _ in range(2):
                await clients.start(hold, url, heard)
            assert count_on(a) == 3, "the headers are gone: new sessions go there again"
            assert count_on(b) == 6
            proxy.stop()
    drained = heard.closes[:2]
    at = [round(time - started, 2) for time, _, _ in drained]
    for when, (_, code, reason) in zip(at, drained, strict=True):
        log.info("Wsproxy-Drain: 2s: a client heard %d %r at +%.2fs", code, reason, when)
    assert [(code, reason) for _, code, reason in drained] == [(1012, DRAIN_REASON)] * 2
    assert at[0] < 0.3, at  # the first at once
    assert 0.9 <= at[1] - at[0] <= 1.3, at  # two sessions over 2 s: one second apart
    assert 'wsproxy_drain_closes_total{pool="main"} 2' in metrics
    assert f'wsproxy_backend_draining{{pool="main",server="{a.url}"}} 1' in metrics
    assert f'wsproxy_backend_weight{{pool="main",server="{a.url}"}} 0' in metrics
    assert f'wsproxy_backend_weight{{pool="main",server="{b.url}"}} 1' in metrics


async def test_drains_end_to_end_proxy_drain_and_undrain_on_a_running_proxy(
    nursery: trio.Nursery,
) -> None:
    a, b = await start_backend(nursery), await start_backend(nursery)
    proxy = Proxy(proxy_config(a.url, b.url, extra=QUICK_STOP))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(proxy.serve, listeners)
    url = f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    heard = Heard()
    with trio.fail_after(CAP):
        async with trio.open_nursery() as clients:
            for _ in range(6):
                await clients.start(hold, url, heard)
            assert (count_on(a), count_on(b)) == (3, 3)
            assert not proxy.actions.drain("main", "ws://127.0.0.1:1", 1.0, 1012)
            assert not proxy.actions.undrain("nope", a.url)
            began = trio.current_time()
            assert proxy.actions.drain(
                "main", a.url, 1.0, 4000
            )  # returns; the closes run in the background
            assert heard.closes == []
            for _ in range(2):
                await clients.start(hold, url, heard)
            assert (count_on(a), count_on(b)) == (3, 5)
            await heard.at_least(3)
            assert proxy.actions.undrain("main", a.url)
            for _ in range(2):
                await clients.start(hold, url, heard)
            assert count_on(a) == 4, "undrained: new sessions go there again"
            proxy.stop()
    first = heard.closes[:3]
    assert [(code, reason) for _, code, reason in first] == [(4000, DRAIN_REASON)] * 3
    offsets = [round(time - began, 2) for time, _, _ in first]
    assert offsets[0] < 0.3, offsets
    assert 0.25 <= offsets[1] - offsets[0] <= 0.6, offsets  # 3 over 1 s: a third apart
    assert 0.55 <= offsets[2] - offsets[0] <= 1.0, offsets
    assert {code for _, code, _ in heard.closes[3:]} == {1001}, (
        "the rest end with the proxy's drain"
    )
