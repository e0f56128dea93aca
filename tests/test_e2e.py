"""SPEC's session table end to end: real sockets, the real clock, `websockets` on both sides
(and raw sockets where a client must misbehave). Waits are short and every test is capped."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import logging
import math
import os
import random
import select
import socket
import threading
import time
from typing import Any

import pytest
import trio
import websockets
import websockets.sync.client
import websockets.sync.server
from websockets.frames import Close
from websockets.trio.client import ClientConnection, connect
from wsproto.frame_protocol import FrameProtocol, Opcode

from tests.conftest import (
    ORIGIN,
    Backend,
    RunningProxy,
    accept_upgrade,
    proxy_config,
    raw_server,
    start_proxy,
)
from tests.helpers import Peer
from tests.test_admin import series
from wsproxy import parking
from wsproxy.admin import metrics_text
from wsproxy.handshake import accept_value
from wsproxy.logs import JsonFormatter, TextFormatter
from wsproxy.relay import Session

pytestmark = pytest.mark.e2e

CAP = 10  # seconds: no test here should come near it


async def closed_by_peer(ws: ClientConnection) -> Close:
    """Wait until the proxy closes `ws`; return the close frame it sent."""
    try:
        while True:
            await ws.recv()
    except websockets.ConnectionClosed as closed:
        rcvd = closed.rcvd
    assert rcvd is not None, "the connection dropped without a close frame"
    return rcvd


async def raw_client(port: int) -> Peer:
    """A hand-driven client that has completed its opening handshake."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    await stream.send_all(
        b"GET / HTTP/1.1\r\nHost: proxy.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n"
        b"Origin: " + ORIGIN.encode() + b"\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(1)
        assert chunk, "the proxy closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return Peer(stream, client=True)


async def test_e2e_messages_arrive_in_order_and_unchanged(proxy: RunningProxy) -> None:
    messages: list[str | bytes] = []
    for size in (0, 1, 125, 126, 65535, 65536, 300_000):
        messages.append(os.urandom(size))
        messages.append("é" * (size // 2))
    with trio.fail_after(CAP):
        async with connect(proxy.url, origin=ORIGIN, proxy=None, max_size=None) as ws:
            for message in messages:
                await ws.send(message)
            for message in messages:
                assert await ws.recv() == message
            await ws.send(["frag", "mented ", "text"])  # one message in three frames
            assert await ws.recv() == "fragmented text"


async def test_e2e_client_close_code_and_reason_reach_the_backend(
    proxy: RunningProxy, backend: Backend
) -> None:
    with trio.fail_after(CAP):
        async with connect(proxy.url, origin=ORIGIN, proxy=None) as ws:
            await ws.send("hi")
            await ws.recv()
            await ws.aclose(4000, "client bye")
            assert (ws.close_code, ws.close_reason) == (4000, "client bye")
        await backend.ended.wait()
    assert backend.closes == [(4000, "client bye")]


async def test_e2e_backend_close_code_and_reason_reach_the_client(
    proxy: RunningProxy, backend: Backend
) -> None:
    with trio.fail_after(CAP):
        async with connect(proxy.url, origin=ORIGIN, proxy=None) as ws:
            await ws.send("close please")
            close = await closed_by_peer(ws)
        await backend.ended.wait()
    assert (close.code, close.reason) == (4001, "server bye")
    assert backend.closes == [(4001, "server bye")]


async def test_e2e_backend_lost_is_1011_to_the_client(proxy: RunningProxy) -> None:
    with trio.fail_after(CAP):
        async with connect(proxy.url, origin=ORIGIN, proxy=None) as ws:
            await ws.send("drop please")
            close = await closed_by_peer(ws)
    assert close.code == 1011
    assert "backend" in close.reason


async def test_e2e_client_lost_is_1001_to_the_backend(
    proxy: RunningProxy, backend: Backend
) -> None:
    with trio.fail_after(CAP):
        client = await raw_client(proxy.port)
        await client.send_text("hello")
        assert (await client.receive()) is not None
        await client.stream.aclose()  # gone, without a close frame
        await backend.ended.wait()
    assert backend.closes[0][0] == 1001


async def test_e2e_oversized_message_is_1009_to_sender_1001_to_backend(
    nursery: trio.Nursery, backend: Backend
) -> None:
    running = await start_proxy(
        nursery, proxy_config(backend.url, security="  max_message_size: 1KiB")
    )
    with trio.fail_after(CAP):
        async with connect(running.url, origin=ORIGIN, proxy=None, compression=None) as ws:
            await ws.send(b"x" * 1024)  # exactly the limit: fine
            assert len(await ws.recv()) == 1024
            await ws.send(b"x" * 1025)
            close = await closed_by_peer(ws)
        await backend.ended.wait()
    assert close.code == 1009
    assert backend.closes[0][0] == 1001


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (b"\x81\x02hi", "unmasked frame"),
        (b"\x89\xfe\x00\x7e" + b"\x00" * 4 + b"p" * 126, "control frame over 125 bytes"),
        (b"\x83\x80" + b"\x00" * 4, "reserved opcode"),
        (b"\x09\x80" + b"\x00" * 4, "fragmented control frame"),
    ],
    ids=["unmasked", "long-control", "reserved-opcode", "fragmented-control"],
)
async def test_e2e_client_protocol_violation_is_1002_and_1001_to_backend(
    proxy: RunningProxy, backend: Backend, frame: bytes, why: str
) -> None:
    with trio.fail_after(CAP):
        client = await raw_client(proxy.port)
        async with client.stream:
            await client.send(frame)
            code, reason = await client.expect_close()
            await backend.ended.wait()
    assert code == 1002
    assert why in reason
    assert backend.closes[0][0] == 1001


async def test_e2e_backend_close_code_kept_off_the_wire_is_1011_to_client_1002_to_backend(
    nursery: trio.Nursery,
) -> None:
    """A backend's close with 1006 never reaches the client (a real `websockets` client, which
    would refuse it); the client hears 1011, the backend 1002, then its connection is dropped."""
    bad_close = b"\x88\x02\x03\xee"  # 1006: "no close frame", never to be sent
    heard = bytearray()
    backend_done = trio.Event()

    async def close_badly(stream: trio.SocketStream) -> None:
        await accept_upgrade(stream)
        await stream.send_all(b"\x81\x06before" + bad_close)
        with contextlib.suppress(trio.BrokenResourceError):
            while data := await stream.receive_some(65536):
                heard.extend(data)
        backend_done.set()

    port = await raw_server(nursery, close_badly)
    running = await start_proxy(nursery, proxy_config(f"ws://127.0.0.1:{port}"))
    with trio.fail_after(CAP):
        async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
            assert await ws.recv() == "before"
            close = await closed_by_peer(ws)
        await backend_done.wait()
    assert (close.code, close.reason) == (1011, "backend broke the WebSocket protocol")
    as_server = FrameProtocol(client=False, extensions=[])
    as_server.receive_bytes(bytes(heard))
    assert [(f.opcode, f.payload) for f in as_server.received_frames()] == [
        (Opcode.CLOSE, (1002, "close code 1006 is not allowed on the wire"))
    ]


async def test_e2e_keepalive_drops_a_client_that_never_answers(
    nursery: trio.Nursery, backend: Backend
) -> None:
    running = await start_proxy(
        nursery, proxy_config(backend.url, extra="keepalive: {interval: 200ms, timeout: 200ms}")
    )
    with trio.fail_after(CAP):
        client = await raw_client(running.port)  # reads nothing, so it answers no ping
        await backend.ended.wait()
        await client.stream.aclose()
    assert backend.closes[0][0] == 1001


async def test_e2e_keepalive_keeps_a_quiet_client_that_answers(
    nursery: trio.Nursery, backend: Backend
) -> None:
    running = await start_proxy(
        nursery, proxy_config(backend.url, extra="keepalive: {interval: 100ms, timeout: 200ms}")
    )
    with trio.fail_after(CAP):
        async with connect(running.url, origin=ORIGIN, proxy=None, ping_interval=None) as ws:
            await trio.sleep(1.0)  # ten keepalive intervals of silence, each ping answered
            await ws.send("still here")
            assert await ws.recv() == "still here"


async def test_e2e_idle_session_is_closed_1001_both_ways(
    nursery: trio.Nursery, backend: Backend
) -> None:
    running = await start_proxy(
        nursery,
        proxy_config(backend.url, extra="timeouts: {idle: 300ms}\nkeepalive: {interval: 0}"),
    )
    with trio.fail_after(CAP):
        async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
            close = await closed_by_peer(ws)
        await backend.ended.wait()
    assert (close.code, close.reason) == (1001, "idle timeout")
    assert backend.closes[0][0] == 1001


async def test_e2e_drain_lets_sessions_finish_then_closes_them_1001(
    nursery: trio.Nursery, backend: Backend
) -> None:
    running = await start_proxy(
        nursery, proxy_config(backend.url, extra="shutdown: {drain_timeout: 500ms}")
    )
    with trio.fail_after(CAP):
        async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
            running.proxy.stop()
            await ws.send("during the drain")
            assert await ws.recv() == "during the drain"
            with pytest.raises(OSError, match="all attempts to connect"):
                await trio.open_tcp_stream("127.0.0.1", running.port)
            close = await closed_by_peer(ws)
        await backend.ended.wait()
    assert close.code == 1001
    assert backend.closes[0][0] == 1001


async def test_e2e_slow_backend_pushes_back_on_the_client(
    nursery: trio.Nursery, backend: Backend
) -> None:
    """A backend that stops reading stalls the client's send: nothing piles up in between."""
    stalled = trio.Event()

    async def handshake_then_stall(stream: trio.SocketStream) -> None:
        await accept_upgrade(stream)
        await stalled.wait()

    port = await raw_server(nursery, handshake_then_stall)
    running = await start_proxy(
        nursery, proxy_config(f"ws://127.0.0.1:{port}", security="  max_message_size: 1GiB")
    )
    client = await raw_client(running.port)
    size = 256 * 1024 * 1024
    header = b"\x82\xff" + size.to_bytes(8, "big") + b"\x00" * 4
    sent = 0
    with trio.move_on_after(2):
        await client.send(header)
        chunk = b"\x00" * 65536
        while sent < size:
            await client.send(chunk)
            sent += len(chunk)
    stalled.set()
    assert sent < size // 4  # kernel buffers on two sockets, a chunk in the proxy: far less
    await client.stream.aclose()


async def test_e2e_random_garbage_never_hurts_the_proxy(
    proxy: RunningProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """Random bytes before and after the handshake: each connection gets an answer or a close,
    nothing is logged as an error, and the proxy goes on serving."""
    rng = random.Random(20261122)
    with trio.fail_after(CAP * 3):
        for round_ in range(40):
            blob = rng.randbytes(rng.randrange(1, 3000))
            stream: trio.abc.HalfCloseableStream
            if round_ % 2:
                client = await raw_client(proxy.port)
                assert isinstance(client.stream, trio.SocketStream)
                stream = client.stream
            else:
                stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            async with stream:
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(blob)
                    await stream.send_eof()  # so a half-sent frame or head ends too
                    while await stream.receive_some(65536):
                        pass
        async with connect(proxy.url, origin=ORIGIN, proxy=None) as ws:
            await ws.send("still serving")
            assert await ws.recv() == "still serving"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def raw_answer(port: int, host: bytes = b"proxy.test") -> bytes:
    """Send an upgrade request by hand; everything the proxy answers before it closes."""
    key = base64.b64encode(os.urandom(16))
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nOrigin: " + ORIGIN.encode() + b"\r\n\r\n"
        )
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
    return answer


async def echo_once(stream: trio.SocketStream) -> None:
    """A hand-driven backend's session: echo one text message, then wait for the close."""
    peer = Peer(stream, client=False)
    frame = await peer.receive()
    assert frame is not None
    assert isinstance(frame.payload, str)
    await peer.send_text(frame.payload)
    await peer.expect_close()


async def echoes(url: str, text: str) -> None:
    async with connect(url, origin=ORIGIN, proxy=None) as ws:
        await ws.send(text)
        assert await ws.recv() == text


@pytest.mark.parametrize(
    "host",
    [b"h.example.test/evil", b"127.0.0.1:80x", b"evil@127.0.0.1", b"", b"a b", b"a\x00"],
    ids=["slash", "port", "userinfo", "empty", "space", "nul"],
)
async def test_e2e_invalid_host_is_400_and_never_reaches_a_backend(
    nursery: trio.Nursery, host: bytes
) -> None:
    dialled: list[trio.SocketStream] = []

    async def backend(stream: trio.SocketStream) -> None:
        dialled.append(stream)
        await accept_upgrade(stream)
        await echo_once(stream)

    port = await raw_server(nursery, backend)
    running = await start_proxy(nursery, proxy_config(f"ws://127.0.0.1:{port}"))
    with trio.fail_after(CAP):
        answer = await raw_answer(running.port, host)
        await echoes(running.url, "a valid Host still gets through")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert len(dialled) == 1  # the valid session's, and only it


async def test_e2e_hung_server_costs_one_connect_timeout_and_every_client_gets_through(
    nursery: trio.Nursery, backend: Backend
) -> None:
    """Round robin over a server that accepts TCP and never answers, and a healthy one."""
    hung: list[trio.SocketStream] = []

    async def accept_and_hang(stream: trio.SocketStream) -> None:
        hung.append(stream)
        await trio.sleep_forever()

    port = await raw_server(nursery, accept_and_hang)
    config = proxy_config(f"ws://127.0.0.1:{port}", backend.url, extra="timeouts: {connect: 300ms}")
    running = await start_proxy(nursery, config)
    with trio.fail_after(CAP):
        for round_ in range(3):
            await echoes(running.url, f"round {round_}")
        async with trio.open_nursery() as clients:
            for client in range(8):
                clients.start_soon(echoes, running.url, f"client {client}")
        # the ejection (1 s) runs out: the hung server is tried again, and the client still wins
        await trio.sleep(1.1)
        await echoes(running.url, "after the ejection")
        await echoes(running.url, "and once more")
    assert len(hung) == 2
    assert len(backend.requests) == 3 + 8 + 2


async def test_e2e_failed_connects_answer_one_sentence_without_addresses(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = int(sock.getsockname()[1])  # nothing listens there once the socket is closed

    async def accept_and_hang(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    hung = await raw_server(nursery, accept_and_hang)
    refused = await start_proxy(nursery, proxy_config(f"ws://127.0.0.1:{closed}"))
    silent = await start_proxy(
        nursery, proxy_config(f"ws://127.0.0.1:{hung}", extra="timeouts: {connect: 200ms}")
    )
    with trio.fail_after(CAP):
        unreachable = await raw_answer(refused.port)
        too_slow = await raw_answer(silent.port)
    assert unreachable.startswith(b"HTTP/1.1 502 ")
    assert unreachable.endswith(b"\r\n\r\nno backend could take the session\n")
    assert too_slow.startswith(b"HTTP/1.1 504 ")
    assert too_slow.endswith(b"\r\n\r\nthe backend did not answer in time\n")
    for answer, port in ((unreachable, closed), (too_slow, hung)):
        assert b"127.0.0.1" not in answer
        assert str(port).encode() not in answer
    logged = [r.getMessage() for r in caplog.records if r.name == "wsproxy.upstream"]
    assert any(f"127.0.0.1:{closed}" in line for line in logged)
    assert any(f"127.0.0.1:{hung}" in line for line in logged)


def padded_101(request: bytes, size: int) -> bytes:
    """A valid 101 for `request` (a raw upgrade request) of exactly `size` bytes."""
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_value(key) + b"\r\nX-Pad: "
    )
    return head + b"p" * (size - len(head) - 4) + b"\r\n\r\n"


@pytest.mark.parametrize(
    ("size", "piece", "passes"),
    [(8193, 1 << 20, False), (8193, 4096, False), (8192, 4096, True), (8192, 1 << 20, True)],
    ids=["over-one-write", "over-4KiB-pieces", "limit-4KiB-pieces", "limit-one-write"],
)
async def test_e2e_backend_answer_head_limit_does_not_depend_on_segmentation(
    nursery: trio.Nursery, size: int, piece: int, passes: bool
) -> None:
    async def big_head(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(65536)
        head = padded_101(request, size)
        for at in range(0, len(head), piece):
            await stream.send_all(head[at : at + piece])
            await trio.sleep(0.01)  # so each piece goes out in segments of its own
        await echo_once(stream)

    port = await raw_server(nursery, big_head)
    config = proxy_config(f"ws://127.0.0.1:{port}", security="  max_header_size: 8KiB")
    running = await start_proxy(nursery, config)
    with trio.fail_after(CAP):
        if passes:
            await echoes(running.url, "a head of the limit passes")
        else:
            answer = await raw_answer(running.port)
            assert answer.startswith(b"HTTP/1.1 502 ")
            assert answer.endswith(b"\r\n\r\nthe backend's answer head was too large\n")


# ---------------------------------------------------------------- rate limits


async def test_e2e_throttled_client_gets_its_rate_and_every_message_in_order(
    nursery: trio.Nursery, backend: Backend
) -> None:
    """A client sending 450 messages as fast as it can, limited to 200 a second with a burst
    of 50: the backend echoes all of them, in order, no sooner than (450 - 50) / 200 = 2 s,
    and the throttled time shows in /metrics."""
    limits = "limits: {per_session: {messages_per_second: 200, burst: 50}}"
    running = await start_proxy(nursery, proxy_config(backend.url, extra=limits))
    count, rate, burst = 450, 200, 50
    sent = [f"message {n}" for n in range(count)]
    with trio.fail_after(CAP):
        async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
            start = trio.current_time()

            async def send_all() -> None:
                for message in sent:
                    await ws.send(message)

            nursery.start_soon(send_all)
            received = [await ws.recv() for _ in range(count)]
            elapsed = trio.current_time() - start
            throttled = series(metrics_text(running.proxy), "wsproxy_throttled_seconds_total")
    assert received == sent
    measured = count / elapsed
    logging.getLogger(__name__).warning(
        "throttled client: %d messages in %.3f s = %.1f/s (limit %d/s, burst %d)",
        count,
        elapsed,
        measured,
        rate,
        burst,
    )
    assert elapsed >= (count - burst) / rate - 0.01
    assert count - burst <= rate * elapsed + 1  # within the limit, plus the burst
    assert elapsed < (count - burst) / rate + 1.5  # and not far below it
    assert throttled[""] > 1.0


async def test_e2e_client_over_its_rate_with_action_close_hears_1008(
    nursery: trio.Nursery, backend: Backend
) -> None:
    """The client hears 1008, the backend 1001 (after the two messages within the burst)."""
    limits = "limits: {per_session: {messages_per_second: 1, burst: 2, action: close}}"
    running = await start_proxy(nursery, proxy_config(backend.url, extra=limits))
    with trio.fail_after(CAP):
        async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
            for n in range(3):  # the burst is 2: the third one is too many
                await ws.send(f"message {n}")
            close = await closed_by_peer(ws)
        await backend.ended.wait()
        await running.proxy.registry.all_closed()  # its end counted
    assert (close.code, close.reason) == (1008, "rate limit exceeded")
    assert backend.closes == [(1001, "client exceeded its rate limit")]
    text = metrics_text(running.proxy)
    assert series(text, "wsproxy_rate_limit_closes_total") == {"": 1.0}
    assert series(text, "wsproxy_closes_total")['{side="proxy",code="1008"}'] == 1.0


async def test_e2e_handshakes_per_ip_beyond_the_burst_are_429_with_retry_after(
    nursery: trio.Nursery, backend: Backend
) -> None:
    limits = "limits: {per_ip: {handshakes_per_second: 1, burst: 1}}"
    running = await start_proxy(nursery, proxy_config(backend.url, extra=limits))
    with trio.fail_after(CAP):
        client = await raw_client(running.port)  # the burst: 101
        answer = await raw_answer(running.port)
        await client.stream.aclose()
    head = answer.split(b"\r\n\r\n")[0].lower().split(b"\r\n")
    assert head[0] == b"http/1.1 429 too many requests"
    assert b"retry-after: 1" in head
    assert series(metrics_text(running.proxy), "wsproxy_handshake_rejections_total") == {
        '{status="429"}': 1.0
    }


# ---------------------------------------------------------------- progress lines


async def test_e2e_progress_lines_while_a_session_runs_then_its_access_line(
    nursery: trio.Nursery, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """`log.session_interval: 1s` (the least allowed): a session that lives 2.5 s, with a
    message in its first moments, gets progress lines that count it once between them, written
    as access lines with event=progress, then its usual access line."""
    caplog.set_level(logging.INFO, "wsproxy.access")
    running = await start_proxy(
        nursery, proxy_config(backend.url, extra="log: {session_interval: 1s}")
    )
    with trio.fail_after(CAP):
        async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await trio.sleep(2.5)  # the session's own length, not a wait for something
        await running.proxy.registry.all_closed()
    lines = [(r, TextFormatter().format(r), JsonFormatter().format(r)) for r in caplog.records]
    progress = [(text, json.loads(entry)) for r, text, entry in lines if "progress" in r.__dict__]
    assert len(progress) >= 2  # at 1 and 2 s at least
    first_text, first = progress[0]
    assert " access event=progress time=" in first_text
    assert first_text.endswith(" close_code=- closed_by=-")
    assert (first["type"], first["event"], first["close_code"], first["closed_by"]) == (
        "access",
        "progress",
        None,
        None,
    )
    # Each line counts what moved since the previous one: together, the message each way.
    assert sum(entry["messages_in"] for _, entry in progress) == 1
    assert sum(entry["messages_out"] for _, entry in progress) == 1
    assert [entry["duration"] >= 1 for _, entry in progress] == [True] * len(progress)
    final = [json.loads(entry) for r, _, entry in lines if "access" in r.__dict__]
    assert [(e["messages_in"], e["close_code"]) for e in final] == [(1, 1000)]
    assert "event" not in final[0]


# ---------------------------------------------------------------- parked sessions


@pytest.fixture
def parks(monkeypatch: pytest.MonkeyPatch) -> trio.MemoryReceiveChannel[Session]:
    """Sessions park again every 50 ms; each one that parks (at its start, or again) is sent
    here as it does."""
    monkeypatch.setattr(parking, "PARK_AFTER", 0.05)
    send, receive = trio.open_memory_channel[Session](math.inf)
    park, park_at_start = Session.park, Session._park_at_start

    def noted(session: Session) -> None:
        park(session)
        send.send_nowait(session)

    def noted_at_start(session: Session) -> bool:
        parked = park_at_start(session)
        if parked:
            send.send_nowait(session)
        return parked

    monkeypatch.setattr(Session, "park", noted)
    monkeypatch.setattr(Session, "_park_at_start", noted_at_start)
    return receive


def still_parked(session: Session) -> bool:
    parker = parking.parker()
    return parker is not None and session in parker.parked.values()


async def test_e2e_parked_session_echoes_and_closes_as_before(
    nursery: trio.Nursery, backend: Backend, parks: trio.MemoryReceiveChannel[Session]
) -> None:
    running = await start_proxy(nursery, proxy_config(backend.url))
    with trio.fail_after(CAP):
        async with connect(running.url, origin=ORIGIN, proxy=None, ping_interval=None) as ws:
            session = await parks.receive()  # from its start
            for n in range(3):
                await ws.send(f"while parked {n}")
                assert await ws.recv() == f"while parked {n}"
            assert still_parked(session)  # relayed in line: never woken
            await ws.aclose(1000, "done")
        await backend.ended.wait()
    assert backend.closes == [(1000, "done")]
    assert session.messages == (3, 3)


async def test_e2e_parked_session_is_pinged_and_its_pong_keeps_it(
    nursery: trio.Nursery, backend: Backend, parks: trio.MemoryReceiveChannel[Session]
) -> None:
    running = await start_proxy(
        nursery, proxy_config(backend.url, extra="keepalive: {interval: 500ms, timeout: 1s}")
    )
    with trio.fail_after(CAP):
        client = await raw_client(running.port)
        session = await parks.receive()
        ping = await client.receive()
        assert ping is not None
        assert ping.opcode is Opcode.PING
        assert await parks.receive() is session  # parked again while its pong is awaited
        await client.pong(bytes(ping.payload))  # type: ignore[arg-type]
        again = await client.receive()  # the pong woke it and counted: pinged once more
        assert again is not None
        assert again.opcode is Opcode.PING
        await client.pong(bytes(again.payload))  # type: ignore[arg-type]
        await client.send_text("still here")
        echo = await client.receive()
        while echo is not None and echo.opcode is Opcode.PING:
            await client.pong(bytes(echo.payload))  # type: ignore[arg-type]
            echo = await client.receive()
        assert echo is not None
        assert echo.payload == "still here"
        assert session.close is None
        await client.stream.aclose()


async def test_e2e_parked_session_ends_when_its_client_leaves(
    nursery: trio.Nursery, backend: Backend, parks: trio.MemoryReceiveChannel[Session]
) -> None:
    running = await start_proxy(nursery, proxy_config(backend.url))
    with trio.fail_after(CAP):
        client = await raw_client(running.port)
        await parks.receive()
        await client.stream.aclose()
        await backend.ended.wait()
    assert backend.closes[0][0] == 1001
    assert not running.proxy.registry.sessions


async def test_e2e_drain_closes_parked_sessions_1001(
    nursery: trio.Nursery, backend: Backend, parks: trio.MemoryReceiveChannel[Session]
) -> None:
    running = await start_proxy(
        nursery, proxy_config(backend.url, extra="shutdown: {drain_timeout: 100ms}")
    )
    with trio.fail_after(CAP):
        async with connect(running.url, origin=ORIGIN, proxy=None, ping_interval=None) as ws:
            await parks.receive()
            running.proxy.stop()
            close = await closed_by_peer(ws)
        await backend.ended.wait()
    assert close.code == 1001
    assert backend.closes[0][0] == 1001


def echo_in_threads() -> tuple[websockets.sync.server.Server, threading.Thread]:
    """A `websockets` echo server in threads of its own, outside trio (so that the proxy's
    batching pauses really wait for it)."""

    def echo(ws: websockets.sync.server.ServerConnection) -> None:
        for message in ws:
            ws.send(message)

    server = websockets.sync.server.serve(echo, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    return server, thread


def pipeline(url: str, client: int, count: int) -> list[str]:
    """Send `count` numbered messages from one thread while this one reads the echoes."""
    with websockets.sync.client.connect(url, origin=ORIGIN, proxy=None) as ws:

        def send_all() -> None:
            for n in range(count):
                ws.send(f"{client}:{n}")

        sender = threading.Thread(target=send_all)
        sender.start()
        echoes = [str(ws.recv(timeout=CAP)) for _ in range(count)]
        sender.join()
    return echoes


class CountedSelect:
    """The `select` module as `parking` sees it, with the time of every pause noted."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    def __getattr__(self, name: str) -> object:
        return getattr(select, name)

    def select(self, *args: Any) -> object:
        before = time.monotonic()
        try:
            return select.select(*args)
        finally:
            self.pauses.append(time.monotonic() - before)


async def test_e2e_batched_reads_relay_every_message_in_order(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients and a backend in threads pipeline small messages through a proxy with a wide
    batching window: batching turns on, the parker's rounds really wait, and every message
    comes back, in order."""
    counted = CountedSelect()
    monkeypatch.setattr(parking, "select", counted)
    server, thread = echo_in_threads()
    try:
        port = server.socket.getsockname()[1]
        config = proxy_config(f"ws://127.0.0.1:{port}", extra="relay: {batch_window: 10ms}")
        running = await start_proxy(nursery, config)
        clients, count = 4, 3000

        def load() -> list[list[str]]:
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                runs = [pool.submit(pipeline, running.url, c, count) for c in range(clients)]
                return [run.result() for run in runs]

        with trio.fail_after(CAP * 3):
            echoes = await trio.to_thread.run_sync(load)
        for client, got in enumerate(echoes):
            assert got == [f"{client}:{n}" for n in range(count)]
        assert sum(pause > 0.001 for pause in counted.pauses) >= 10
    finally:
        server.shutdown()
        thread.join()
