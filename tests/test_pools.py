"""Pools end to end: real `websockets` backends on loopback behind a real proxy.

Each balance mode is checked by where real handshakes land (every backend keeps the requests it
accepted), and failover, limits, health checks and DNS discovery by what clients see. Random
choices come from a seeded `random.Random`, so nothing here is flaky; the proxy runs in this
process, except where two proxy processes must agree.
"""

from __future__ import annotations

import itertools
import logging
import random
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import trio
import trio.testing
import websockets
from websockets.trio.client import ClientConnection, connect

from tests.conftest import ORIGIN, Backend, RunningProxy, start_backend
from tests.test_cli import free_port, started
from wsproxy.config import Config, parse_config
from wsproxy.server import Proxy

pytestmark = pytest.mark.e2e

CAP = 60.0  # seconds: the longest any test here may take


def pools_yaml(servers: Sequence[tuple[str, int]], pool: str = "") -> str:
    """A configuration routing everything to one pool of (url, weight) servers."""
    lines = "\n".join(f"      - {{url: {url}, weight: {weight}}}" for url, weight in servers)
    return f"""
listen:
  - address: 127.0.0.1:0
security:
  allowed_origins: ["{ORIGIN}"]
  max_connections_per_ip: 100000
routes:
  - {{path: /, pool: main}}
pools:
  main:
    servers:
{lines}
{pool}
"""


def pool_config(backends: Sequence[Backend], weights: Sequence[int] = (), pool: str = "") -> Config:
    weights = weights or [1] * len(backends)
    servers = [(b.url, w) for b, w in zip(backends, weights, strict=True)]
    return parse_config(pools_yaml(servers, pool), {})


async def start(
    nursery: trio.Nursery, config: Config, *, seed: int = 1, **seams: object
) -> RunningProxy:
    proxy = Proxy(config, rng=random.Random(seed), **seams)  # type: ignore[arg-type]
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(proxy.serve, listeners)
    return RunningProxy(proxy, listeners[0].socket.getsockname()[1])


async def backends(nursery: trio.Nursery, count: int) -> list[Backend]:
    return [await start_backend(nursery) for _ in range(count)]


async def until(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Poll `condition()` every 5 ms until it is true, for at most `seconds`."""
    with trio.move_on_after(seconds):
        for _ in itertools.count():
            if condition():
                return
            await trio.sleep(0.005)
    raise AssertionError(f"not within {seconds}s: {what}")


def landed(servers: Sequence[Backend]) -> list[int]:
    """How many sessions each backend has accepted."""
    return [len(backend.requests) for backend in servers]


async def settle(servers: Sequence[Backend], total: int) -> list[int]:
    """The counts, once `total` sessions have reached the backends."""
    await until(lambda: sum(landed(servers)) >= total, f"{total} sessions reach the backends")
    return landed(servers)


async def open_and_drop(port: int, target: str = "/") -> None:
    """A client's whole opening handshake by hand, then a hang-up: the cheapest session."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"GET " + target.encode() + b" HTTP/1.1\r\nHost: proxy.test\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: "
            + ORIGIN.encode()
            + b"\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(4096)
            assert chunk, "the proxy hung up during the handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101 "), head


async def handshakes(proxy: RunningProxy, count: int, *, workers: int = 16) -> None:
    """Open and drop `count` sessions, `workers` at a time."""
    todo = iter(range(count))

    async def worker() -> None:
        for _ in todo:
            await open_and_drop(proxy.port)

    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker)


async def echo(ws: ClientConnection, text: str = "still here") -> None:
    await ws.send(text)
    assert await ws.recv() == text


def which(servers: Sequence[Backend], header: str, value: str) -> int:
    """The index of the backend that accepted the session whose `header` was `value`."""
    found = [
        index
        for index, backend in enumerate(servers)
        for request in backend.requests
        if request.headers.get(header) == value
    ]
    assert len(set(found)) == 1, (value, found)
    return found[0]


# --- balance modes ---------------------------------------------------------------------------


async def test_pools_round_robin_3000_handshakes_land_exactly_on_weights_1_2_3(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(CAP):
        servers = await backends(nursery, 3)
        proxy = await start(nursery, pool_config(servers, (1, 2, 3)))
        await handshakes(proxy, 3000)
        assert await settle(servers, 3000) == [500, 1000, 1500]


async def test_pools_random_3000_handshakes_within_10_percent_of_weights_1_2_3(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(CAP):
        servers = await backends(nursery, 3)
        proxy = await start(nursery, pool_config(servers, (1, 2, 3), "    balance: random"))
        await handshakes(proxy, 3000)
        counts = await settle(servers, 3000)
    for count, ideal in zip(counts, (500, 1000, 1500), strict=True):
        assert abs(count - ideal) <= ideal * 0.10, counts


def statuses(proxy: RunningProxy) -> list[tuple[str, str, bool, int, int]]:
    """(address, health, listed, live sessions, sessions in total) of each server of the pool."""
    (pool,) = proxy.proxy.snapshot.status(trio.current_time())
    return [(s.address, s.health, s.listed, s.sessions, s.sessions_total) for s in pool.servers]


async def test_pools_status_counts_live_sessions_and_totals(nursery: trio.Nursery) -> None:
    with trio.fail_after(CAP):
        servers = await backends(nursery, 2)
        proxy = await start(nursery, pool_config(servers))
        await handshakes(proxy, 6, workers=1)
        async with connect(proxy.url, origin=ORIGIN, proxy=None) as ws:
            await echo(ws)
            assert [s[3:] for s in statuses(proxy)] == [(1, 4), (0, 3)]
        await until(lambda: [s[3] for s in statuses(proxy)] == [0, 0], "sessions end")
    assert [s[:3] for s in statuses(proxy)] == [("127.0.0.1", "up", True)] * 2


async def test_pools_least_connections_sends_new_sessions_to_the_emptiest(
    nursery: trio.Nursery,
) -> None:
    config_text = "    balance: least_connections"
    with trio.fail_after(CAP):
        servers = await backends(nursery, 3)
        proxy = await start(nursery, pool_config(servers, pool=config_text))
        async with trio.open_nursery() as clients:
            held: dict[int, trio.Event] = {}

            async def hold(number: int, *, task_status: trio.TaskStatus[None]) -> None:
                held[number] = trio.Event()
                headers = {"X-Session": str(number)}
                async with connect(
                    proxy.url, origin=ORIGIN, proxy=None, additional_headers=headers
                ) as ws:
                    await echo(ws)
                    task_status.started()
                    await held[number].wait()

            for number in range(6):  # one at a time: each goes to the emptiest, so 2, 2, 2
                await clients.start(hold, number)
            await settle(servers, 6)
            assert [s[3] for s in statuses(proxy)] == [2, 2, 2]
            on_first = [n for n in range(6) if which(servers, "X-Session", str(n)) == 0]
            for number in on_first:
                held[number].set()
            await until(lambda: [s[3] for s in statuses(proxy)] == [0, 2, 2], "two leave")
            await clients.start(hold, 6)
            await clients.start(hold, 7)
            await settle(servers, 8)
            assert which(servers, "X-Session", "6") == 0
            assert which(servers, "X-Session", "7") == 0
            assert [s[3] for s in statuses(proxy)] == [2, 2, 2]
            clients.cancel_scope.cancel()


async def test_pools_hash_same_key_same_server_and_keys_spread(nursery: trio.Nursery) -> None:
    config_text = "    balance: hash\n    hash_on: header:X-User-Id"
    with trio.fail_after(CAP):
        servers = await backends(nursery, 3)
        proxy = await start(nursery, pool_config(servers, pool=config_text))
        for _ in range(100):
            async with connect(
                proxy.url, origin=ORIGIN, proxy=None, additional_headers={"X-User-Id": "alice"}
            ):
                pass
        await settle(servers, 100)
        assert sorted(landed(servers)) == [0, 0, 100]
        for user in range(30):
            async with connect(
                proxy.url, origin=ORIGIN, proxy=None, additional_headers={"X-User-Id": str(user)}
            ):
                pass
        async with connect(proxy.url, origin=ORIGIN, proxy=None) as ws:  # no key: still served
            await echo(ws)
        counts = await settle(servers, 131)
    assert all(count > 0 for count in counts), "30 keys spread over every server"


async def test_pools_hash_two_proxy_processes_agree_on_every_key(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(CAP):
        servers = await backends(nursery, 4)
        config = tmp_path / "hash.yaml"
        config.write_text(
            pools_yaml(
                [(b.url, 1 + i % 2) for i, b in enumerate(servers)],
                "    balance: hash\n    hash_on: header:X-User-Id",
            )
        )
        async with (
            started("serve", "-c", str(config)) as one,
            started("serve", "-c", str(config)) as two,
        ):
            ports = [(await one.ready_ports())[0], (await two.ready_ports())[0]]
            for user in range(60):
                for port in ports:
                    async with connect(
                        f"ws://127.0.0.1:{port}",
                        origin=ORIGIN,
                        proxy=None,
                        additional_headers={"X-User-Id": f"user-{user}"},
                    ):
                        pass
            await settle(servers, 120)
            owners = [which(servers, "X-User-Id", f"user-{user}") for user in range(60)]
            for child in (one, two):
                child.signal(signal.SIGTERM)
                assert await child.exit_code() == 0
    assert len(set(owners)) == 4, "which() found every key on one server, via both proxies"


async def test_pools_hash_removing_1_of_10_servers_moves_only_its_keys(
    nursery: trio.Nursery,
) -> None:
    config_text = "    balance: hash\n    hash_on: query:user"
    with trio.fail_after(CAP):
        servers = await backends(nursery, 10)
        ten = await start(nursery, pool_config(servers, pool=config_text))
        nine = await start(
            nursery, parse_config(pools_yaml([(b.url, 1) for b in servers[1:]], config_text), {})
        )
        for user in range(300):
            await open_and_drop(ten.port, f"/?user={user}&via=ten")
            await open_and_drop(nine.port, f"/?user={user}&via=nine")
        await settle(servers, 600)
    where: dict[str, dict[str, int]] = {"ten": {}, "nine": {}}
    for index, backend in enumerate(servers):
        for request in backend.requests:
            query = dict(part.split("=") for part in request.path.split("?")[1].split("&"))
            where[query["via"]][query["user"]] = index
    moved = [user for user in where["ten"] if where["ten"][user] != where["nine"][user]]
    assert all(where["ten"][user] == 0 for user in moved), "only the removed server's keys move"
    assert 0 < len(moved) <= 45, len(moved)  # at most 15% of 300


async def stoppable_backend(
    nursery: trio.Nursery, **options: object
) -> tuple[Backend, trio.CancelScope]:
    """A backend with a cancel scope that stops it (listener and sessions)."""

    async def run(*, task_status: trio.TaskStatus[tuple[Backend, trio.CancelScope]]) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                backend = await start_backend(inner)
                task_status.started((backend, scope))

    return await nursery.start(run)  # type: ignore[no-any-return]


def sticky(ws: ClientConnection) -> str | None:
    assert ws.response is not None
    value = ws.response.headers.get("Set-Cookie")
    return None if value is None else value.split(";")[0]


async def test_pools_cookie_sticks_to_its_server_until_that_server_goes(
    nursery: trio.Nursery,
) -> None:
    config_text = "    balance: cookie\n    cookie: {name: lb}"
    with trio.fail_after(CAP):
        pairs = [await stoppable_backend(nursery) for _ in range(3)]
        servers = [backend for backend, _ in pairs]
        proxy = await start(nursery, pool_config(servers, pool=config_text))
        async with connect(proxy.url, origin=ORIGIN, proxy=None) as ws:
            cookie = sticky(ws)
        assert cookie is not None
        assert cookie.startswith("lb=")
        home = await settle(servers, 1)
        for number in range(20):
            headers = {"Cookie": f"other=1; {cookie}", "X-Session": str(number)}
            async with connect(
                proxy.url, origin=ORIGIN, proxy=None, additional_headers=headers
            ) as ws:
                assert sticky(ws) is None, "a cookie that sticks is not set again"
        assert await settle(servers, 21) == [21 * count for count in home]
        pairs[home.index(1)][1].cancel()  # the sticky server goes away
        async with connect(
            proxy.url, origin=ORIGIN, proxy=None, additional_headers={"Cookie": cookie}
        ) as ws:
            await echo(ws)
            moved = sticky(ws)
        assert moved is not None
        assert moved != cookie
        async with connect(
            proxy.url, origin=ORIGIN, proxy=None, additional_headers={"Cookie": "lb=forged"}
        ) as ws:
            await echo(ws)
            assert sticky(ws) is not None


@pytest.mark.parametrize("checked", [False, True])
async def test_pools_failover_when_a_backend_process_is_killed(
    nursery: trio.Nursery, checked: bool
) -> None:
    """Every new session succeeds while one of three `wsproxy echo` processes is killed."""
    ports = [free_port() for _ in range(3)]
    check = "    health_check: {type: tcp, interval: 200ms, timeout: 200ms}" if checked else ""
    config = parse_config(pools_yaml([(f"ws://127.0.0.1:{p}", 1) for p in ports], check), {})
    with trio.fail_after(CAP):
        async with (
            started("echo", "--listen", f"127.0.0.1:{ports[0]}") as first,
            started("echo", "--listen", f"127.0.0.1:{ports[1]}") as second,
            started("echo", "--listen", f"127.0.0.1:{ports[2]}") as third,
        ):
            assert [await echo.echo_port() for echo in (first, second, third)] == ports
            proxy = await start(nursery, config)
            for number in range(60):
                if number == 20:
                    first.process.kill()  # the PID this test started
                    await first.process.wait()
                async with connect(proxy.url, origin=ORIGIN, proxy=None) as ws:
                    await echo(ws, f"message {number}")
            (pool,) = proxy.proxy.snapshot.status(trio.current_time())
            dead = pool.servers[0]
            assert dead.health in ("ejected", "down")
            assert dead.sessions_total <= 7, "it took its turns only before it died"
            assert sum(s.sessions_total for s in pool.servers) == 60


async def test_pools_full_servers_answer_503_with_retry_after(nursery: trio.Nursery) -> None:
    with trio.fail_after(CAP):
        servers = await backends(nursery, 2)
        proxy = await start(nursery, pool_config(servers, pool="    max_connections_per_server: 2"))
        async with trio.open_nursery() as clients:
            release = trio.Event()

            async def hold(*, task_status: trio.TaskStatus[None]) -> None:
                async with connect(proxy.url, origin=ORIGIN, proxy=None) as ws:
                    await echo(ws)
                    task_status.started()
                    await release.wait()

            for _ in range(4):
                await clients.start(hold)
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with connect(proxy.url, origin=ORIGIN, proxy=None):
                    pass
            response = refused.value.response
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "5"
            assert b"max_connections_per_server" in response.body
            release.set()
        await until(lambda: [s[3] for s in statuses(proxy)] == [0, 0], "sessions end")
        async with connect(proxy.url, origin=ORIGIN, proxy=None) as ws:
            await echo(ws)


async def test_pools_active_health_check_takes_a_sick_server_out_and_back(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend whose /health refuses the upgrade gets no new sessions, though it could."""
    caplog.set_level(logging.INFO, logger="wsproxy.health")
    sick: set[int] = set()

    def health_page(connection: object, request: websockets.Request) -> object:
        port = request.headers.get("Host", ":0").rsplit(":", 1)[1]
        if request.path == "/health" and int(port) in sick:
            return connection.respond(503, "sick\n")  # type: ignore[attr-defined]
        return None

    check = (
        "    health_check: {type: websocket, path: /health, interval: 100ms, timeout: 100ms,"
        " healthy_after: 2, unhealthy_after: 2}"
    )
    with trio.fail_after(CAP):
        servers = [await start_backend(nursery, process_request=health_page) for _ in range(2)]
        proxy = await start(nursery, pool_config(servers, pool=check))
        sick.add(servers[0].port)
        await until(lambda: statuses(proxy)[0][1] == "down", "the sick server is down")
        before = landed(servers)
        for _ in range(6):
            async with connect(proxy.url, origin=ORIGIN, proxy=None) as ws:
                await echo(ws)
        assert (await settle(servers, sum(before) + 6))[0] == before[0]
        sick.add(servers[1].port)
        await until(lambda: statuses(proxy)[1][1] == "down", "both are down")
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(proxy.url, origin=ORIGIN, proxy=None):
                pass
        assert refused.value.response.status_code == 503
        sick.clear()
        await until(lambda: [s[1] for s in statuses(proxy)] == ["up", "up"], "both are back")
    downs = [r.getMessage() for r in caplog.records if "is down" in r.getMessage()]
    assert downs == [
        f"pool main: server {servers[0].url} is down (health check: the upgrade on /health "
        "answered 503)",
        f"pool main: server {servers[1].url} is down (health check: the upgrade on /health "
        "answered 503)",
    ], "each change is logged once"


async def test_pools_dns_change_moves_new_sessions_and_keeps_old_ones(
    nursery: trio.Nursery,
) -> None:
    zone = {"backends.test": ["127.0.0.1"]}

    async def resolve(host: str, port: int) -> list[str]:
        return list(zone[host])

    with trio.fail_after(CAP):
        old = await start_backend(nursery)
        new = await start_backend(nursery, host="127.0.0.2", port=old.port)
        config = parse_config(
            pools_yaml([(f"ws://backends.test:{old.port}", 1)], "    resolve_interval: 100ms"), {}
        )
        proxy = await start(nursery, config, resolve=resolve)
        async with connect(proxy.url, origin=ORIGIN, proxy=None) as first:
            await echo(first)
            assert statuses(proxy) == [("127.0.0.1", "up", True, 1, 1)]
            zone["backends.test"] = ["127.0.0.2"]
            await until(lambda: len(statuses(proxy)) == 2, "the new address is listed")
            assert statuses(proxy) == [
                ("127.0.0.2", "up", True, 0, 0),
                ("127.0.0.1", "up", False, 1, 1),
            ]
            async with connect(proxy.url, origin=ORIGIN, proxy=None) as second:
                await echo(second)
            await echo(first, "the old address's session goes on")
        await until(lambda: len(statuses(proxy)) == 1, "the old address is forgotten")
        assert landed([old, new]) == [1, 1]
        assert statuses(proxy) == [("127.0.0.2", "up", True, 0, 1)]


async def test_pools_names_resolve_before_serving_and_interval_0_never_again(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    lookups: list[float] = []

    async def resolve(host: str, port: int) -> list[str]:
        lookups.append(trio.current_time())
        return ["127.0.0.1"]

    config = parse_config(pools_yaml([("ws://backends.test:9", 1)], "    resolve_interval: 0"), {})
    proxy = await start(nursery, config, resolve=resolve)
    assert lookups == [0.0], "resolved before the proxy reported itself started"
    await trio.sleep(3600)
    assert lookups == [0.0]
    assert statuses(proxy) == [("127.0.0.1", "up", True, 0, 0)]
