"""The proxy end to end on loopback: every answer of SPEC's handshake table, and what reaches
the backend. Real sockets, the real clock, the `websockets` library as client and backend."""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import socket
import struct
from dataclasses import dataclass

import pytest
import trio
import websockets
from websockets.trio.client import connect
from websockets.trio.server import ServerConnection
from websockets.typing import Origin, Subprotocol

from tests.conftest import (
    ORIGIN,
    Backend,
    RunningProxy,
    accept_upgrade,
    proxy_config,
    raw_server,
    start_backend,
    start_proxy,
)
from wsproxy.config import parse_config
from wsproxy.handshake import accept_value
from wsproxy.listening import Listening
from wsproxy.logs import REFUSAL_LINES_PER_SECOND, RefusalRecord
from wsproxy.proxyproto import V2_SIGNATURE
from wsproxy.server import Proxy

KEY = base64.b64encode(b"0123456789abcdef").decode()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def upgrade_request(
    *,
    path: str = "/",
    origin: str | None = ORIGIN,
    version: str = "13",
    key: str | None = KEY,
    method: str = "GET",
    http: str = "HTTP/1.1",
    host: str = "proxy.test",
    extra: str = "",
) -> bytes:
    lines = [
        f"{method} {path} {http}",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Version: {version}",
    ]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


async def exchange(port: int, data: bytes, *, read_all: bool = True) -> Answer:
    """Send raw bytes; read the answer until the proxy closes (or the head, for a 101)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        received = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            received += chunk
            if not read_all and b"\r\n\r\n" in received:
                break
    return parse_answer(received)


def parse_answer(data: bytes) -> Answer:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, body)


# ---------------------------------------------------------------- refusals


async def test_server_plain_http_is_426(proxy: RunningProxy) -> None:
    with trio.fail_after(5):
        answer = await exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.status == 426
    assert answer.headers["upgrade"] == "websocket"
    assert answer.body  # a short plain-text reason


async def test_server_wrong_version_is_426_naming_13(proxy: RunningProxy) -> None:
    with trio.fail_after(5):
        answer = await exchange(proxy.port, upgrade_request(version="8"))
    assert answer.status == 426
    assert answer.headers["sec-websocket-version"] == "13"


@pytest.mark.parametrize(
    "request_bytes",
    [
        upgrade_request(method="POST"),
        upgrade_request(http="HTTP/1.0"),
        upgrade_request(key=None),
        upgrade_request(key="dG9vIHNob3J0"),
        b"NONSENSE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
    ],
    ids=["post", "http10", "no-key", "short-key", "garbage", "bad-header"],
)
async def test_server_malformed_upgrade_is_400(proxy: RunningProxy, request_bytes: bytes) -> None:
    with trio.fail_after(5):
        answer = await exchange(proxy.port, request_bytes)
    assert answer.status == 400


@pytest.mark.parametrize("origin", [None, "https://evil.test", "https://example.org"])
async def test_server_missing_or_foreign_origin_is_403(
    proxy: RunningProxy, origin: str | None
) -> None:
    with trio.fail_after(5):
        answer = await exchange(proxy.port, upgrade_request(origin=origin))
    assert answer.status == 403
    assert answer.headers["content-type"].startswith("text/plain")


async def test_server_wildcard_origin_is_accepted(proxy: RunningProxy) -> None:
    with trio.fail_after(5):
        async with connect(proxy.url, origin=Origin("https://chat.example.org"), proxy=None) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"


async def test_server_no_origin_passes_when_not_required(
    nursery: trio.Nursery, backend: Backend
) -> None:
    config = proxy_config(backend.url, security="  require_origin: false")
    running = await start_proxy(nursery, config)
    with trio.fail_after(5):
        async with connect(running.url, proxy=None) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"


async def test_server_oversized_head_is_431(nursery: trio.Nursery, backend: Backend) -> None:
    running = await start_proxy(
        nursery, proxy_config(backend.url, security="  max_header_size: 2KiB")
    )
    big = "X-Filler: " + "a" * 3000 + "\r\n"
    with trio.fail_after(5):
        answer = await exchange(running.port, upgrade_request(extra=big))
    assert answer.status == 431


async def test_server_slow_head_is_408_then_closed(nursery: trio.Nursery, backend: Backend) -> None:
    running = await start_proxy(
        nursery, proxy_config(backend.url, security="  handshake_timeout: 200ms")
    )
    with trio.fail_after(5):
        answer = await exchange(running.port, upgrade_request()[:20])  # never finished
    assert answer.status == 408


async def test_server_no_route_is_404(nursery: trio.Nursery, backend: Backend) -> None:
    text = f"""
listen: [{{address: "127.0.0.1:0"}}]
security: {{allowed_origins: ["*"]}}
routes:
  - {{host: "*.example.com", path: /chat, pool: main}}
pools:
  main: {{servers: ["{backend.url}"]}}
"""
    running = await start_proxy(nursery, parse_config(text, {}))
    with trio.fail_after(5):
        assert (await exchange(running.port, upgrade_request(path="/chat"))).status == 404
        assert (await exchange(running.port, upgrade_request(host="a.example.com"))).status == 404
        ok = await exchange(
            running.port,
            upgrade_request(path="/chat/room?x=1", host="a.example.com:8080"),
            read_all=False,
        )
    assert ok.status == 101


async def test_server_max_connections_is_503_with_retry_after(
    nursery: trio.Nursery, backend: Backend
) -> None:
    running = await start_proxy(nursery, proxy_config(backend.url, security="  max_connections: 1"))
    with trio.fail_after(5):
        async with connect(running.url, origin=ORIGIN, proxy=None):
            answer = await exchange(running.port, upgrade_request())
    assert answer.status == 503
    assert answer.headers["retry-after"]


async def test_server_max_connections_per_ip_is_429_with_retry_after(
    nursery: trio.Nursery, backend: Backend
) -> None:
    running = await start_proxy(
        nursery, proxy_config(backend.url, security="  max_connections_per_ip: 2")
    )
    with trio.fail_after(5):
        async with connect(running.url, origin=ORIGIN, proxy=None):
            async with connect(running.url, origin=ORIGIN, proxy=None):
                answer = await exchange(running.port, upgrade_request())
            while running.proxy.registry.connections > 1:  # noqa: ASYNC110 (the backend's TCP close is not an event we can await)
                await trio.sleep(0.01)
            async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
                await ws.send("room again")
                assert await ws.recv() == "room again"
    assert answer.status == 429
    assert answer.headers["retry-after"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_server_unreachable_backend_is_502_then_503_while_ejected(
    nursery: trio.Nursery,
) -> None:
    running = await start_proxy(nursery, proxy_config(f"ws://127.0.0.1:{_closed_port()}"))
    with trio.fail_after(5):
        first = await exchange(running.port, upgrade_request())
        second = await exchange(running.port, upgrade_request())
    assert first.status == 502
    assert second.status == 503
    assert b"no healthy server" in second.body


async def test_server_retries_another_server_when_one_is_down(
    nursery: trio.Nursery, backend: Backend
) -> None:
    dead = f"ws://127.0.0.1:{_closed_port()}"
    running = await start_proxy(nursery, proxy_config(dead, backend.url))
    with trio.fail_after(5):
        for _ in range(4):
            async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
                await ws.send("x")
                assert await ws.recv() == "x"


async def _say_nothing(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def test_server_silent_backend_is_504(nursery: trio.Nursery) -> None:
    port = await raw_server(nursery, _say_nothing)
    running = await start_proxy(
        nursery,
        proxy_config(f"ws://127.0.0.1:{port}", extra="timeouts: {connect: 300ms}"),
    )
    with trio.fail_after(5):
        answer = await exchange(running.port, upgrade_request())
    assert answer.status == 504


async def test_server_backend_refusal_is_passed_to_the_client(nursery: trio.Nursery) -> None:
    def refuse(connection: ServerConnection, request: websockets.Request) -> websockets.Response:
        response = connection.respond(401, "who are you?\n")
        response.headers["WWW-Authenticate"] = 'Bearer realm="chat"'
        return response

    backend = await start_backend(nursery, process_request=refuse)
    running = await start_proxy(nursery, proxy_config(backend.url))
    with trio.fail_after(5):
        answer = await exchange(running.port, upgrade_request())
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == 'Bearer realm="chat"'
    assert answer.body == b"who are you?\n"


async def test_server_broken_backend_answer_is_502(nursery: trio.Nursery) -> None:
    async def answer_garbage(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: wrong\r\n\r\n"
        )

    port = await raw_server(nursery, answer_garbage)
    running = await start_proxy(nursery, proxy_config(f"ws://127.0.0.1:{port}"))
    with trio.fail_after(5):
        answer = await exchange(running.port, upgrade_request())
    assert answer.status == 502


# ---------------------------------------------------------------- what the backend gets


async def test_server_forwards_end_to_end_headers_and_adds_forwarding_headers(
    nursery: trio.Nursery,
) -> None:
    backend = await start_backend(nursery, subprotocols=["chat.v2"])
    running = await start_proxy(nursery, proxy_config(backend.url))
    headers = {
        "Cookie": "session=abc",
        "Authorization": "Bearer t0ken",
        "X-Custom": "kept",
        "Keep-Alive": "timeout=5",
        "X-Forwarded-For": "203.0.113.9",
    }
    with trio.fail_after(5):
        async with connect(
            f"{running.url}/room/7?user=ann",
            origin=ORIGIN,
            subprotocols=[Subprotocol("chat.v1"), Subprotocol("chat.v2")],
            additional_headers=headers,
            proxy=None,
        ) as ws:
            assert ws.subprotocol == "chat.v2"
    seen = backend.requests[0]
    assert seen.path == "/room/7?user=ann"
    assert seen.headers["Cookie"] == "session=abc"
    assert seen.headers["Authorization"] == "Bearer t0ken"
    assert seen.headers["X-Custom"] == "kept"
    assert seen.headers["Origin"] == ORIGIN
    assert seen.headers["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    assert seen.headers["X-Real-IP"] == "127.0.0.1"
    assert seen.headers["X-Forwarded-Proto"] == "http"
    assert seen.headers["X-Forwarded-Host"] == f"127.0.0.1:{running.port}"
    assert "Keep-Alive" not in seen.headers
    assert seen.headers["Sec-WebSocket-Protocol"] == "chat.v1, chat.v2"


async def test_server_permessage_deflate_works_end_to_end(proxy: RunningProxy) -> None:
    text = "compressible " * 5000
    with trio.fail_after(5):
        async with connect(proxy.url, origin=ORIGIN, proxy=None) as ws:
            assert ws.response is not None
            assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
            for _ in range(3):
                await ws.send(text)
                assert await ws.recv() == text
                await ws.send(os.urandom(70000))
                await ws.recv()


async def test_server_bytes_right_behind_the_request_are_relayed(proxy: RunningProxy) -> None:
    frame = b"\x81\x85" + b"\x00\x00\x00\x00" + b"early"  # masked (zero key) text "early"
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    with trio.fail_after(5):
        async with stream:
            await stream.send_all(upgrade_request() + frame)
            received = b""
            while b"early" not in received:
                chunk = await stream.receive_some(65536)
                assert chunk
                received += chunk
    assert received.startswith(b"HTTP/1.1 101")
    expected_accept = accept_value(KEY.encode()).decode()
    assert parse_answer(received).headers["sec-websocket-accept"] == expected_accept
    assert received.endswith(b"\x81\x05early")


async def test_server_bytes_right_behind_the_backend_101_are_relayed(
    nursery: trio.Nursery,
) -> None:
    """A backend that speaks first, in the same packet as its 101."""

    async def eager_backend(stream: trio.SocketStream) -> None:
        await accept_upgrade(stream, b"\x81\x07welcome")
        await stream.receive_some(65536)  # the client's close
        await stream.send_all(b"\x88\x02\x03\xe8")  # close 1000, then TCP close

    port = await raw_server(nursery, eager_backend)
    running = await start_proxy(nursery, proxy_config(f"ws://127.0.0.1:{port}"))
    with trio.fail_after(5):
        async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
            assert await ws.recv() == "welcome"


# ---------------------------------------------------------------- PROXY protocol listeners


async def proxy_protocol_proxy(
    nursery: trio.Nursery, backend: Backend, security: str = "", extra: str = ""
) -> RunningProxy:
    """A proxy whose one listener expects a PROXY protocol header first."""
    proxy = Proxy(proxy_config(backend.url, security=security, extra=extra))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(proxy.serve, [Listening(listeners[0], proxy_protocol=True)])
    return RunningProxy(proxy, listeners[0].socket.getsockname()[1])


def v1_header(client: str = "203.0.113.7", port: int = 41000) -> bytes:
    return f"PROXY TCP4 {client} 127.0.0.1 {port} 8080\r\n".encode()


def v2_header(client: str = "2001:db8::7", port: int = 41000) -> bytes:
    body = (
        ipaddress.ip_address(client).packed
        + ipaddress.ip_address("::1").packed
        + struct.pack("!HH", port, 8080)
    )
    return V2_SIGNATURE + b"\x21\x21" + struct.pack("!H", len(body)) + body


@pytest.mark.parametrize(
    ("header", "client"), [(v1_header(), "203.0.113.7"), (v2_header(), "2001:db8::7")]
)
async def test_server_proxy_protocol_client_feeds_the_forwarding_headers(
    nursery: trio.Nursery, backend: Backend, header: bytes, client: str
) -> None:
    running = await proxy_protocol_proxy(nursery, backend)
    with trio.fail_after(5):
        answer = await exchange(running.port, header + upgrade_request(), read_all=False)
        await backend.ended.wait()
    assert answer.status == 101
    seen = backend.requests[0]
    assert seen.headers["X-Forwarded-For"] == client
    assert seen.headers["X-Real-IP"] == client


async def test_server_proxy_protocol_header_in_pieces_with_the_request_behind_it(
    nursery: trio.Nursery, backend: Backend
) -> None:
    """The header may arrive a byte at a time, and the request head in the same segment."""
    running = await proxy_protocol_proxy(nursery, backend)
    data = v1_header() + upgrade_request()
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", running.port)
        async with stream:
            for index in range(20):
                await stream.send_all(data[index : index + 1])
                await trio.sleep(0.001)
            await stream.send_all(data[20:])
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(4096)
    assert head.startswith(b"HTTP/1.1 101 ")


@pytest.mark.parametrize(
    "data",
    [upgrade_request(), b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n" + upgrade_request()],
)
async def test_server_proxy_protocol_missing_or_invalid_header_is_400(
    nursery: trio.Nursery, backend: Backend, data: bytes
) -> None:
    running = await proxy_protocol_proxy(nursery, backend)
    with trio.fail_after(5):
        answer = await exchange(running.port, data)
    assert answer.status == 400
    assert b"PROXY" in answer.body
    assert backend.requests == []


async def test_server_proxy_protocol_header_not_in_time_is_408(
    nursery: trio.Nursery, backend: Backend
) -> None:
    running = await proxy_protocol_proxy(nursery, backend, security="  handshake_timeout: 200ms")
    with trio.fail_after(5):
        answer = await exchange(running.port, b"PROXY TCP4 203.0")
    assert answer.status == 408
    assert answer.body == b"PROXY protocol header not received in time\n"


async def test_server_proxy_protocol_client_that_leaves_during_the_header_is_let_go(
    nursery: trio.Nursery, backend: Backend
) -> None:
    running = await proxy_protocol_proxy(nursery, backend)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", running.port)
        await stream.send_all(b"PROXY TCP4 ")
        await stream.aclose()
        while running.proxy.registry.connections:  # noqa: ASYNC110 (the proxy's side of a TCP close)
            await trio.sleep(0.01)
    assert backend.requests == []


async def test_server_proxy_protocol_local_header_keeps_the_socket_peer(
    nursery: trio.Nursery, backend: Backend
) -> None:
    """A LOCAL header (the balancer's own health check) names no client: the peer stands."""
    running = await proxy_protocol_proxy(nursery, backend)
    local = V2_SIGNATURE + b"\x20\x00\x00\x00"
    with trio.fail_after(5):
        answer = await exchange(running.port, local + upgrade_request(), read_all=False)
        await backend.ended.wait()
    assert answer.status == 101
    assert backend.requests[0].headers["X-Real-IP"] == "127.0.0.1"


async def test_server_proxy_protocol_client_counts_for_the_per_ip_limit(
    nursery: trio.Nursery, backend: Backend
) -> None:
    running = await proxy_protocol_proxy(nursery, backend, security="  max_connections_per_ip: 1")
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", running.port)
        async with stream:  # holds a session for 203.0.113.7
            await stream.send_all(v1_header() + upgrade_request())
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(4096)
            same = await exchange(running.port, v1_header(port=41001) + upgrade_request())
            other = await exchange(
                running.port, v1_header("203.0.113.8") + upgrade_request(), read_all=False
            )
    assert (same.status, other.status) == (429, 101)


async def test_server_proxy_protocol_client_is_the_hash_key_and_in_the_access_log(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsproxy.access")
    backends = [await start_backend(nursery) for _ in range(4)]
    servers = "\n".join(f"      - url: {b.url}" for b in backends[1:])
    extra = f"{servers}\n    balance: hash\n    hash_on: ip"
    running = await proxy_protocol_proxy(nursery, backends[0], extra=extra)
    with trio.fail_after(5):
        for port in range(41000, 41010):  # one client, ten source ports
            await exchange(running.port, v1_header(port=port) + upgrade_request(), read_all=False)
        while sum(len(b.requests) for b in backends) < 10:  # noqa: ASYNC110
            await trio.sleep(0.01)
        while len(caplog.records) < 10:  # noqa: ASYNC110 (access lines come as sessions end)
            await trio.sleep(0.01)
    assert sorted(len(b.requests) for b in backends) == [0, 0, 0, 10]
    clients = {r.access.client for r in caplog.records}  # type: ignore[attr-defined]
    assert clients == {f"203.0.113.7:{port}" for port in range(41000, 41010)}


# ---------------------------------------------------------------- the paced drain


async def test_server_drain_closes_the_rest_spread_over_the_window_with_the_code(
    nursery: trio.Nursery, backend: Backend
) -> None:
    """Three sessions outlive the drain: they hear 1012 at about 0, 0.3 and 0.6 s after it."""
    config = proxy_config(
        backend.url, extra="shutdown: {drain_timeout: 50ms, close_window: 900ms, close_code: 1012}"
    )
    running = await start_proxy(nursery, config)
    heard: list[tuple[float, int | None, str | None]] = []

    async def hold(*, task_status: trio.TaskStatus[None]) -> None:
        async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
            await ws.send("hello")
            await ws.recv()
            task_status.started()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            rcvd = closed.value.rcvd
            assert rcvd is not None
            heard.append((trio.current_time(), rcvd.code, rcvd.reason))

    with trio.fail_after(10):
        async with trio.open_nursery() as clients:
            for _ in range(3):
                await clients.start(hold)
            running.proxy.stop()
    times = sorted(time for time, _, _ in heard)
    assert [(code, reason) for _, code, reason in heard] == [(1012, "proxy shutting down")] * 3
    assert times[1] - times[0] >= 0.2, times  # each waits for its slot: never early
    assert times[2] - times[0] >= 0.5, times


# ---------------------------------------------------------------- refusal lines


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[RefusalRecord]:
    return [
        record.__dict__["refusal"]
        for record in caplog.records
        if record.name == "wsproxy.refusals" and "refusal" in record.__dict__
    ]


def suppressed_counts(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [
        record.__dict__["refusals_suppressed"]
        for record in caplog.records
        if record.name == "wsproxy.refusals" and "refusals_suppressed" in record.__dict__
    ]


async def refused_from(port: int, request: bytes) -> tuple[Answer, str]:
    """`exchange` on a connection of our own: the answer, and our side's IP:PORT."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        host, client_port = stream.socket.getsockname()[:2]
        await stream.send_all(request)
        received = b""
        while chunk := await stream.receive_some(65536):
            received += chunk
    return parse_answer(received), f"{host}:{client_port}"


async def test_server_a_foreign_origin_is_one_info_line_with_the_request_fields(
    proxy: RunningProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsproxy.refusals")
    request = upgrade_request(
        origin="https://evil.test\x1b[2J\u2028", path="/chat?token=secret", host="proxy.test"
    )
    with trio.fail_after(5):
        answer, client = await refused_from(proxy.port, request)
    assert answer.status == 403
    [logged] = [r for r in caplog.records if r.name == "wsproxy.refusals"]
    assert logged.levelno == logging.INFO
    assert logged.__dict__["refusal"] == RefusalRecord(
        status=403,
        # the reason quotes the header decoded as Latin-1: its controls escaped as well
        reason="Origin https://evil.test\\x1b[2J\u00e2\\x80\u00a8 is not allowed",
        client=client,
        origin="https://evil.test\\x1b[2J\\xe2\\x80\\xa8",
        host="proxy.test",
        path="/chat",
    )
    message = logged.getMessage()
    assert message.startswith("handshake refused status=403 reason=")
    assert message.isprintable()
    assert "secret" not in message


async def test_server_refusals_before_the_head_is_parsed_show_a_dash_for_the_unknown(
    nursery: trio.Nursery, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsproxy.refusals")
    running = await start_proxy(
        nursery,
        proxy_config(backend.url, security="  handshake_timeout: 200ms\n  max_header_size: 2KiB"),
    )
    big = "X-Filler: " + "a" * 3000 + "\r\n"
    with trio.fail_after(5):
        for request in (b"NONSENSE\r\n\r\n", upgrade_request()[:20], upgrade_request(extra=big)):
            await refused_from(running.port, request)
    assert [(r.status, r.origin, r.host, r.path) for r in refusal_lines(caplog)] == [
        (400, "-", "-", "-"),
        (408, "-", "-", "-"),
        (431, "-", "-", "-"),
    ]


async def test_server_a_backend_refusal_passed_on_is_logged_too(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsproxy.refusals")

    def refuse(connection: ServerConnection, request: websockets.Request) -> websockets.Response:
        return connection.respond(401, "who are you?\n")

    backend = await start_backend(nursery, process_request=refuse)
    running = await start_proxy(nursery, proxy_config(backend.url))
    with trio.fail_after(5):
        answer, client = await refused_from(running.port, upgrade_request(path="/room"))
    assert answer.status == 401
    assert refusal_lines(caplog) == [
        RefusalRecord(
            status=401,
            reason=f"passed on from {backend.url}: Unauthorized",
            client=client,
            origin=ORIGIN,
            host="proxy.test",
            path="/room",
        )
    ]


@pytest.mark.e2e
async def test_server_a_flood_of_refusals_writes_a_bounded_number_of_lines(
    proxy: RunningProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsproxy.refusals")
    flood, clients = 1000, 20
    request = upgrade_request(origin="https://evil.test")
    started = trio.current_time()

    async def refused(count: int) -> None:
        for _ in range(count):
            assert (await exchange(proxy.port, request)).status == 403

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(refused, flood // clients)
        # The count of the last window is written once that window is over.
        while len(refusal_lines(caplog)) + sum(suppressed_counts(caplog)) < flood:  # noqa: ASYNC110 (a log line is not an event we can await)
            await trio.sleep(0.05)
    windows = int(trio.current_time() - started) + 2  # the one-second windows that can fit
    written, suppressed = refusal_lines(caplog), suppressed_counts(caplog)
    assert len(written) + sum(suppressed) == flood  # every refusal written or counted, once
    assert len(written) <= REFUSAL_LINES_PER_SECOND * windows
    assert len(suppressed) <= windows
    assert len(written) + len(suppressed) < flood // 10
