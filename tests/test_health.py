"""Active health checks: each probe type against real servers, and the check loop on virtual time.

Probes run against real loopback servers (a `websockets` echo backend, hand-written HTTP and
WebSocket servers). The loop runs on MockClock with a scripted probe, so every round's instant
and every verdict flip is exact.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from tests.conftest import accept_upgrade, raw_server, start_backend
from wsproxy.agent import AgentReport
from wsproxy.balancer import PoolBalancer
from wsproxy.config import HealthCheck, Pool, Server
from wsproxy.handshake import accept_value
from wsproxy.health import (
    JITTER,
    PING_PAYLOAD,
    Probed,
    probe_answer,
    probe_server,
    prober,
    watch_pool,
)
from wsproxy.servers import ServerState
from wsproxy.upstream import dial_tcp

CAP = 30.0
QUICK = 2.0  # seconds: the probe timeout for real-socket tests that must fail by timing out

Handler = Callable[[trio.SocketStream], Awaitable[None]]


def state_for(port: int, host: str = "127.0.0.1") -> ServerState:
    return ServerState(Server(url=f"ws://{host}:{port}", host=host, port=port))


def check(kind: str, path: str = "/health", timeout: float = QUICK) -> HealthCheck:
    return HealthCheck(type=kind, path=path, interval=max(timeout, 1.0), timeout=timeout)


async def read_head(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data


def answering(response: bytes, seen: list[bytes] | None = None) -> Handler:
    async def handle(stream: trio.SocketStream) -> None:
        head = await read_head(stream)
        if seen is not None:
            seen.append(head)
        if response:
            await stream.send_all(response)

    return handle


async def closed_port() -> int:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = int(listener.socket.getsockname()[1])
    await listener.aclose()
    return port


# --- tcp -------------------------------------------------------------------------------------


async def test_health_tcp_passes_when_the_connection_opens(nursery: trio.Nursery) -> None:
    with trio.fail_after(CAP):
        port = await raw_server(nursery, answering(b""))
        assert await probe_server(state_for(port), check("tcp"), dial_tcp) is None


async def test_health_tcp_refused_names_the_address() -> None:
    with trio.fail_after(CAP):
        port = await closed_port()
        problem = await probe_server(state_for(port), check("tcp"), dial_tcp)
        assert problem is not None
        assert problem.startswith(f"health check: connect to 127.0.0.1:{port}: ")


# --- http ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [b"200 OK", b"204 No Content", b"302 Found"])
async def test_health_http_passes_on_2xx_and_3xx(nursery: trio.Nursery, status: bytes) -> None:
    seen: list[bytes] = []
    response = b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n"
    with trio.fail_after(CAP):
        port = await raw_server(nursery, answering(response, seen))
        assert (
            await probe_server(state_for(port), check("http", "/health?deep=1"), dial_tcp) is None
        )
    (head,) = seen
    assert head.startswith(b"GET /health?deep=1 HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{port}\r\n".encode() in head.lower()


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        (b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", "GET /health answered 500"),
        (b"HTTP/1.1 404 Not Found\r\n\r\n", "GET /health answered 404"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "GET /health got an answer that is not valid HTTP"),
        (b"", "GET /health got no answer"),
    ],
)
async def test_health_http_fails(nursery: trio.Nursery, response: bytes, problem: str) -> None:
    with trio.fail_after(CAP):
        port = await raw_server(nursery, answering(response))
        assert await probe_server(state_for(port), check("http"), dial_tcp) == (
            f"health check: {problem}"
        )


async def test_health_http_names_ipv6_hosts_in_brackets() -> None:
    """The Host header of an IPv6 server is bracketed, as HTTP requires."""
    sent: list[bytes] = []

    async def dial(host: str, port: int) -> trio.abc.Stream:
        proxy_end, server_end = trio.testing.memory_stream_pair()

        async def serve() -> None:
            sent.append(bytes(await server_end.receive_some(65536)))
            await server_end.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

        nursery.start_soon(serve)
        return proxy_end

    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            assert await probe_server(state_for(9000, "::1"), check("http"), dial) is None
    assert b"Host: [::1]:9000\r\n" in sent[0]


# --- websocket -------------------------------------------------------------------------------


async def test_health_websocket_passes_against_a_real_backend(nursery: trio.Nursery) -> None:
    with trio.fail_after(CAP):
        backend = await start_backend(nursery)
        assert await probe_server(state_for(backend.port), check("websocket"), dial_tcp) is None
        await backend.ended.wait()
    assert [r.path for r in backend.requests] == ["/health"]
    assert backend.closes == [(1000, "")], "the probe completes a clean close"


async def test_health_websocket_refused_upgrade_names_the_status(nursery: trio.Nursery) -> None:
    response = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno"
    with trio.fail_after(CAP):
        port = await raw_server(nursery, answering(response))
        assert await probe_server(state_for(port), check("websocket"), dial_tcp) == (
            "health check: the upgrade on /health answered 403"
        )


def upgraded(then: Callable[[trio.SocketStream], Awaitable[None]]) -> Handler:
    async def handle(stream: trio.SocketStream) -> None:
        await accept_upgrade(stream)
        await then(stream)

    return handle


async def test_health_websocket_silent_after_the_upgrade_times_out(
    nursery: trio.Nursery,
) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(CAP):
        port = await raw_server(nursery, upgraded(silent))
        problem = await probe_server(state_for(port), check("websocket", timeout=0.5), dial_tcp)
        assert problem == "health check: no answer within 0.5s"


async def test_health_websocket_close_before_the_pong_fails(nursery: trio.Nursery) -> None:
    async def close_at_once(stream: trio.SocketStream) -> None:
        await stream.send_all(b"\x88\x02\x03\xe9")  # close 1001, unmasked as a server's is

    with trio.fail_after(CAP):
        port = await raw_server(nursery, upgraded(close_at_once))
        assert await probe_server(state_for(port), check("websocket"), dial_tcp) == (
            "health check: the session closed (1001) before the ping"
        )


async def test_health_websocket_connection_lost_midway_fails(nursery: trio.Nursery) -> None:
    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)  # the ping; then the handler ends and closes

    with trio.fail_after(CAP):
        port = await raw_server(nursery, upgraded(hang_up))
        assert await probe_server(state_for(port), check("websocket"), dial_tcp) == (
            "health check: the connection closed during the ping"
        )


async def test_health_websocket_garbage_after_upgrade_breaks_the_protocol(
    nursery: trio.Nursery,
) -> None:
    async def garbage(stream: trio.SocketStream) -> None:
        await stream.send_all(b"\x8f\x00")  # opcode 0xF is reserved
        await trio.sleep_forever()

    with trio.fail_after(CAP):
        port = await raw_server(nursery, upgraded(garbage))
        problem = await probe_server(state_for(port), check("websocket"), dial_tcp)
        assert problem is not None
        assert problem.startswith("health check: the session closed (1002: ")
        assert problem.endswith(") before the ping")


async def test_health_websocket_bad_101_breaks_the_protocol(nursery: trio.Nursery) -> None:
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    with trio.fail_after(CAP):
        port = await raw_server(nursery, answering(response))
        problem = await probe_server(state_for(port), check("websocket"), dial_tcp)
        assert problem is not None
        assert problem.startswith("health check: the upgrade on /health broke the protocol (")


async def test_health_websocket_answers_a_backend_ping_and_ignores_messages(
    nursery: trio.Nursery,
) -> None:
    """A backend that pings first and greets with a message still passes; its ping gets a pong."""
    received: list[bytes] = []

    async def chatty(stream: trio.SocketStream) -> None:
        await stream.send_all(b"\x89\x02hi" + b"\x81\x05hello")  # ping "hi", text "hello"
        data = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            received.append(chunk)
            frames, data = _client_frames(data + chunk)
            for opcode, payload in frames:
                if opcode == 0x9:  # the probe's ping
                    await stream.send_all(b"\x8a" + bytes([len(payload)]) + payload)
                elif opcode == 0x8:
                    await stream.send_all(b"\x88\x02\x03\xe8")
                    return

    with trio.fail_after(CAP):
        port = await raw_server(nursery, upgraded(chatty))
        assert await probe_server(state_for(port), check("websocket"), dial_tcp) is None
    frames, _ = _client_frames(b"".join(received))
    assert (0xA, b"hi") in frames, "the backend's ping got its pong"
    assert (0x9, PING_PAYLOAD) in frames


async def test_health_websocket_ignores_a_pong_it_did_not_ask_for(nursery: trio.Nursery) -> None:
    async def stray_pong_then_silence(stream: trio.SocketStream) -> None:
        await stream.send_all(b"\x8a\x05stray")
        await trio.sleep_forever()

    with trio.fail_after(CAP):
        port = await raw_server(nursery, upgraded(stray_pong_then_silence))
        problem = await probe_server(state_for(port), check("websocket", timeout=0.5), dial_tcp)
        assert problem == "health check: no answer within 0.5s"


def _client_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """(opcode, unmasked payload) of each whole masked frame with a short payload in `data`,
    and the bytes left over."""
    frames: list[tuple[int, bytes]] = []
    while len(data) >= 6:
        length = data[1] & 0x7F
        if len(data) < 6 + length:
            break
        mask, payload = data[2:6], data[6 : 6 + length]
        frames.append((data[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))))
        data = data[6 + length :]
    return frames, data


async def test_health_reset_during_the_request_is_reported() -> None:
    async def dial(host: str, port: int) -> trio.abc.Stream:
        stream, other = trio.testing.memory_stream_pair()
        await other.aclose()
        return stream

    with trio.fail_after(CAP):
        assert await probe_server(state_for(9000), check("http"), dial) == (
            "health check: 127.0.0.1:9000 reset the connection"
        )


async def test_health_prober_uses_the_given_dial() -> None:
    dialled: list[tuple[str, int]] = []

    async def dial(host: str, port: int) -> trio.abc.Stream:
        dialled.append((host, port))
        raise ConnectionRefusedError(111, "Connection refused")

    with trio.fail_after(CAP):
        probed = await prober(dial)(state_for(9000), check("tcp"))
    assert probed == Probed("health check: connect to 127.0.0.1:9000: Connection refused")
    assert dialled == [("127.0.0.1", 9000)]


# --- the loop, on virtual time ---------------------------------------------------------------


class Middle(random.Random):
    """uniform(a, b) is always the middle: each wait is exactly `interval`."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


class Script:
    """A probe that answers from a per-server script and records when it was called."""

    def __init__(self, script: dict[int, list[str | None]]) -> None:
        self.script = script
        self.calls: list[tuple[float, int]] = []
        self.addresses: list[tuple[float, str]] = []

    async def __call__(self, server: ServerState, check: HealthCheck) -> Probed:
        self.calls.append((trio.current_time(), server.port))
        self.addresses.append((trio.current_time(), server.address))
        results = self.script[server.port]
        return Probed(results.pop(0) if len(results) > 1 else results[0])


def pool_of(*ports: int, **check: object) -> tuple[PoolBalancer, HealthCheck]:
    servers = tuple(Server(url=f"ws://10.0.0.1:{p}", host="10.0.0.1", port=p) for p in ports)
    health = HealthCheck(interval=5.0, timeout=1.0, **check)  # type: ignore[arg-type]
    return PoolBalancer(Pool(name="main", servers=servers)), health


async def test_health_watch_pool_rounds_start_at_once_then_every_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    balancer, health = pool_of(1, 2)
    probe = Script({1: [None], 2: [None]})
    with trio.move_on_after(12.0):
        await watch_pool(balancer, health, probe, Middle())
    assert sorted(probe.calls) == [(0.0, 1), (0.0, 2), (5.0, 1), (5.0, 2), (10.0, 1), (10.0, 2)]


async def test_health_watch_pool_jitter_stays_within_ten_percent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    balancer, health = pool_of(1)
    probe = Script({1: [None]})
    with trio.move_on_after(200.0):
        await watch_pool(balancer, health, probe, random.Random(3))
    starts = [time for time, _ in probe.calls]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) >= 35
    assert all(5.0 * (1 - JITTER) <= gap <= 5.0 * (1 + JITTER) for gap in gaps)
    assert len(set(gaps)) > 1, "the waits differ"


async def test_health_flapping_server_goes_down_and_up_at_exact_rounds(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """unhealthy_after 3 and healthy_after 2: down at the third failure, up at the second pass."""
    caplog.set_level(logging.INFO, logger="wsproxy.health")
    balancer, health = pool_of(1, 2, healthy_after=2, unhealthy_after=3)
    flaky, steady = balancer.servers
    refused = "health check: connect to 10.0.0.1:1: Connection refused"
    script = [None, refused, refused, None, refused, refused, refused, None, refused, None, None]
    probe = Script({1: [*script, None], 2: [None]})
    up: list[bool] = []

    async def observe() -> None:
        await trio.sleep(0.5)  # just after each round
        while True:
            up.append(flaky.healthy(trio.current_time()))
            await trio.sleep(5.0)

    with trio.move_on_after(60.0):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(observe)
            await watch_pool(balancer, health, probe, Middle())
    # rounds at 0, 5, ..., 55 give: pass, fail, fail, pass, fail, fail, FAIL (down), pass,
    # fail, pass, PASS (up), pass
    assert up == [True] * 6 + [False] * 4 + [True] * 2
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"pool main: server ws://10.0.0.1:1 is down ({refused})",
        "pool main: server ws://10.0.0.1:1 is up (health check passed)",
    ]
    assert steady.healthy(60.0)


async def test_health_down_server_is_not_chosen_until_it_recovers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    balancer, health = pool_of(1, 2, healthy_after=1, unhealthy_after=1)
    probe = Script({1: ["down", "down", None], 2: [None]})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_pool, balancer, health, probe, Middle())
        await trio.sleep(1.0)
        assert {balancer.choose(1.0) for _ in range(4)} == {balancer.servers[1]}
        await trio.sleep(10.0)  # the third round, at 10 s, passes
        assert {balancer.choose(11.0) for _ in range(4)} == set(balancer.servers)
        nursery.cancel_scope.cancel()


async def test_health_servers_listed_later_are_probed_from_the_next_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    named = Server(url="ws://app.internal:7", host="app.internal", port=7)
    balancer = PoolBalancer(Pool(name="main", servers=(named,)))
    probe = Script({7: [None]})
    health = HealthCheck(interval=5.0, timeout=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_pool, balancer, health, probe, Middle())
        await trio.sleep(1.0)
        balancer.resolved(named, ["10.0.0.7", "10.0.0.8"])
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()
    assert sorted(probe.addresses) == [
        (0.0, "app.internal"),
        (5.0, "10.0.0.7"),
        (5.0, "10.0.0.8"),
    ]


async def test_health_http_skips_an_interim_1xx_answer(nursery: trio.Nursery) -> None:
    response = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    with trio.fail_after(CAP):
        port = await raw_server(nursery, answering(response))
        assert await probe_server(state_for(port), check("http"), dial_tcp) is None


async def test_health_websocket_frames_after_its_close_are_ignored(nursery: trio.Nursery) -> None:
    """Once the probe sent its close, a late message or ping from the backend changes nothing."""

    async def late_talker(stream: trio.SocketStream) -> None:
        data = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            frames, data = _client_frames(data + chunk)
            for opcode, payload in frames:
                if opcode == 0x9:
                    await stream.send_all(b"\x8a" + bytes([len(payload)]) + payload)
                elif opcode == 0x8:
                    await stream.send_all(b"\x81\x04late" + b"\x89\x00" + b"\x88\x02\x03\xe8")

    with trio.fail_after(CAP):
        port = await raw_server(nursery, upgraded(late_talker))
        assert await probe_server(state_for(port), check("websocket"), dial_tcp) is None


async def test_health_a_probe_that_raises_counts_as_a_failure_and_the_loop_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    balancer, health = pool_of(1, healthy_after=1, unhealthy_after=1)
    calls: list[float] = []

    async def broken(server: ServerState, check: HealthCheck) -> Probed:
        calls.append(trio.current_time())
        raise RuntimeError("a bug")

    with trio.move_on_after(6.0):
        await watch_pool(balancer, health, broken, Middle())
    assert calls == [0.0, 5.0]
    assert not balancer.servers[0].healthy(6.0)
    assert balancer.servers[0].check_problem == "health check: RuntimeError"
    assert "health check of ws://10.0.0.1:1 failed unexpectedly" in caplog.text


async def test_health_a_probe_longer_than_the_interval_is_never_doubled_and_holds_back_no_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """interval 250 ms, timeout 1 s: a server whose probes take 1 s is probed 250 ms after
    each one ends (HAProxy's `inter`), one at a time; a quick server beside it keeps its pace."""
    balancer, _ = pool_of(1, 2)
    health = HealthCheck(interval=0.25, timeout=1.0)
    starts: dict[int, list[float]] = {1: [], 2: []}
    in_flight = {1: 0, 2: 0}
    most = {1: 0, 2: 0}

    async def probe(server: ServerState, check: HealthCheck) -> Probed:
        starts[server.port].append(trio.current_time())
        in_flight[server.port] += 1
        most[server.port] = max(most[server.port], in_flight[server.port])
        try:
            await trio.sleep(1.0 if server.port == 1 else 0.0)
        finally:
            in_flight[server.port] -= 1
        return Probed(None)

    with trio.move_on_after(5.1):
        await watch_pool(balancer, health, probe, Middle())
    assert starts[1] == [0.0, 1.25, 2.5, 3.75, 5.0]
    assert starts[2] == [0.25 * n for n in range(21)]
    assert most == {1: 1, 2: 1}


# --- agent headers --------------------------------------------------------------------------


AGENT = ((b"Wsproxy-Weight", b"0"), (b"Wsproxy-Drain", b"2s"))


@pytest.mark.parametrize("status", [b"200 OK", b"503 Service Unavailable"])
async def test_health_http_answer_of_any_status_brings_its_headers(
    nursery: trio.Nursery, status: bytes
) -> None:
    response = b"HTTP/1.1 %s\r\nWsproxy-Weight: 0\r\nWsproxy-Drain: 2s\r\nContent-Length: 0\r\n\r\n"
    with trio.fail_after(CAP):
        port = await raw_server(nursery, answering(response % status))
        probed = await probe_answer(state_for(port), check("http"), dial_tcp)
    assert probed.headers is not None
    assert [(n, v) for n, v in probed.headers if n.startswith(b"wsproxy-")] == [
        (b"wsproxy-weight", b"0"),
        (b"wsproxy-drain", b"2s"),
    ]
    assert (probed.problem is None) is (status == b"200 OK")


async def test_health_no_answer_brings_no_headers(nursery: trio.Nursery) -> None:
    with trio.fail_after(CAP):
        silent = await raw_server(nursery, answering(b""))
        garbage = await raw_server(nursery, answering(b"SSH-2.0-OpenSSH\r\n\r\n"))
        for port in (silent, garbage, await closed_port()):
            probed = await probe_answer(state_for(port), check("http"), dial_tcp)
            assert probed.problem is not None
            assert probed.headers is None
        up = await raw_server(nursery, answering(b""))
        assert await probe_answer(state_for(up), check("tcp"), dial_tcp) == Probed(None)


async def test_health_websocket_brings_the_101s_headers_or_the_refusals(
    nursery: trio.Nursery,
) -> None:
    async def accept_with_agent(stream: trio.SocketStream) -> None:
        await accept_upgrade_with(stream, b"Wsproxy-Weight: 7\r\n")
        await stream.send_all(b"\x88\x02\x03\xe8")  # a close, before the ping's pong

    refusal = b"HTTP/1.1 503 Service Unavailable\r\nWsproxy-Drain: 1m\r\nContent-Length: 0\r\n\r\n"
    with trio.fail_after(CAP):
        accepting = await raw_server(nursery, accept_with_agent)
        refusing = await raw_server(nursery, answering(refusal))
        accepted = await probe_answer(state_for(accepting), check("websocket"), dial_tcp)
        refused = await probe_answer(state_for(refusing), check("websocket"), dial_tcp)
    assert accepted.problem == "health check: the session closed (1000) before the ping"
    assert (b"wsproxy-weight", b"7") in (accepted.headers or ())
    assert refused.problem == "health check: the upgrade on /health answered 503"
    assert (b"wsproxy-drain", b"1m") in (refused.headers or ())


async def accept_upgrade_with(stream: trio.SocketStream, extra: bytes) -> None:
    """`accept_upgrade` with `extra` header lines in the 101."""
    head = await read_head(stream)
    key = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_value(key) + b"\r\n" + extra + b"\r\n"
    )


class Reports:
    """An `Agent` that records what it is told."""

    def __init__(self) -> None:
        self.got: list[tuple[float, int, AgentReport]] = []

    def __call__(self, balancer: PoolBalancer, server: ServerState, report: AgentReport) -> None:
        self.got.append((trio.current_time(), server.port, report))


class Answers:
    """A probe answering from a script of `Probed`, the last one repeated."""

    def __init__(self, *script: Probed) -> None:
        self.script = list(script)

    async def __call__(self, server: ServerState, check: HealthCheck) -> Probed:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


async def test_health_with_agent_every_answer_is_reported_and_no_answer_is_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    balancer, health = pool_of(1, agent=True)
    probe = Answers(
        Probed(None, AGENT),
        Probed("health check: no answer within 1s"),  # no answer: the last report stands
        Probed("health check: GET /health answered 503", ((b"Wsproxy-Weight", b"3"),)),
        Probed(None, ()),
    )
    reports = Reports()
    with trio.move_on_after(16.0):
        await watch_pool(balancer, health, probe, Middle(), reports)
    assert reports.got == [
        (0.0, 1, AgentReport(weight=0, drain=2.0)),
        (10.0, 1, AgentReport(weight=3)),
        (15.0, 1, AgentReport()),
    ]


async def test_health_without_agent_the_headers_are_not_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    balancer, health = pool_of(1)
    assert not health.agent, "off unless asked for"
    reports = Reports()
    with trio.move_on_after(6.0):
        await watch_pool(balancer, health, Answers(Probed(None, AGENT)), Middle(), reports)
    assert reports.got == []
