"""The echo backend: end to end over loopback sockets, and its timeouts on virtual time.

Most tests talk to it with the `websockets` trio client, an independent implementation, over real
loopback sockets and the real clock, each capped at `CAP` seconds. The ones that need exact bytes on
the wire (bytes behind the upgrade request, an unmasked frame, one frame per echo, a peer that
vanishes mid-frame) use a tiny wsproto client. The timeouts, and the paths a real socket rarely
takes, run `echo_connection` over in-memory streams with `autojump_clock`. The `echo_url` fixture
fails any test whose backend logged a warning: a peer's mistake is only ever a DEBUG line.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager

import pytest
import trio
import trio.testing
from trio.testing import MemoryReceiveStream, MemorySendStream, MockClock, memory_stream_pair
from websockets.exceptions import ConnectionClosedError
from websockets.trio.client import connect
from websockets.typing import Subprotocol
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Request,
    TextMessage,
)

from wsproxy.echo import (
    CLOSE_TIMEOUT,
    MAX_MESSAGE_SIZE,
    REQUEST_TIMEOUT,
    echo_connection,
    parse_address,
    run_echo,
    serve_echo,
)

CAP = 10  # seconds, per test
# Virtual-time tests wait for the backend's own timeouts, so their cap sits above those.
VIRTUAL_CAP = max(REQUEST_TIMEOUT, CLOSE_TIMEOUT) + CAP


@pytest.fixture
async def echo_url(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> AsyncIterator[str]:
    """ws://127.0.0.1:PORT of an echo backend; the test fails if the backend logged a warning."""
    caplog.set_level(logging.DEBUG, logger="wsproxy.echo")
    [(host, port)] = await nursery.start(serve_echo, "127.0.0.1", 0)
    yield f"ws://{host}:{port}"
    loud = [r for r in caplog.records if r.name == "wsproxy.echo" and r.levelno >= logging.WARNING]
    assert loud == []


def _client(
    url: str,
    *,
    compression: str | None = "deflate",
    max_size: int | None = 2**20,
    subprotocols: Sequence[str] = (),
) -> connect:
    """The websockets trio client, with no proxy from the environment."""
    return connect(
        url,
        proxy=None,
        compression=compression,
        max_size=max_size,
        subprotocols=[Subprotocol(name) for name in subprotocols] or None,
    )


@contextmanager
def _logged(text: str) -> Iterator[trio.Event]:
    """An event set when the echo backend logs a line containing `text` (a sync point)."""
    event = trio.Event()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if text in record.getMessage():
                event.set()

    handler = Handler(logging.DEBUG)
    logger = logging.getLogger("wsproxy.echo")
    logger.addHandler(handler)
    try:
        yield event
    finally:
        logger.removeHandler(handler)


def _address(url: str) -> tuple[str, int]:
    return parse_address(url.removeprefix("ws://"))


def _masked_text_frame(text: bytes) -> bytes:
    """A client's single-frame text message, masked with the all-zero key (payload unchanged)."""
    assert len(text) < 126
    return bytes([0x81, 0x80 | len(text)]) + b"\0\0\0\0" + text


class _RawClient:
    """A wsproto client over any stream, for tests that need exact bytes on the wire."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self._events: deque[Event] = deque()

    @classmethod
    async def connect(cls, url: str, *, behind_request: bytes = b"") -> _RawClient:
        host, port = _address(url)
        client = cls(await trio.open_tcp_stream(host, port))
        await client.handshake(behind_request=behind_request)
        return client

    async def handshake(self, *, behind_request: bytes = b"") -> None:
        request = self.ws.send(Request(host="echo", target="/any/path?x=1"))
        await self.stream.send_all(request + behind_request)
        assert isinstance(await self.next_event(), AcceptConnection)

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self) -> Event:
        while not self._events:
            data = await self.stream.receive_some()
            self.ws.receive_data(bytes(data) or None)
            self._events.extend(self.ws.events())
        return self._events.popleft()


async def _http_exchange(url: str, request: bytes) -> bytes:
    """Send raw bytes, read the answer until the server closes the connection."""
    host, port = _address(url)
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(request)
        answer = b""
        while data := await stream.receive_some():
            answer += data
    return answer


async def test_echo_text_message_comes_back(echo_url: str) -> None:
    with trio.fail_after(CAP):
        async with _client(echo_url, compression=None) as ws:
            await ws.send("hello, échö")
            assert await ws.recv() == "hello, échö"


async def test_echo_binary_message_comes_back(echo_url: str) -> None:
    with trio.fail_after(CAP):
        async with _client(echo_url, compression=None) as ws:
            await ws.send(b"\x00\xffbinary")
            assert await ws.recv() == b"\x00\xffbinary"


async def test_echo_empty_messages_keep_their_type(echo_url: str) -> None:
    with trio.fail_after(CAP):
        async with _client(echo_url, compression=None) as ws:
            await ws.send("")
            assert await ws.recv() == ""
            await ws.send(b"")
            assert await ws.recv() == b""


async def test_echo_one_mib_message_comes_back(echo_url: str) -> None:
    message = bytes(range(256)) * 4096  # 1 MiB
    with trio.fail_after(CAP):
        async with _client(echo_url, compression=None, max_size=None) as ws:
            await ws.send(message)
            assert await ws.recv() == message


async def test_echo_messages_come_back_in_order(echo_url: str) -> None:
    with trio.fail_after(CAP):
        async with _client(echo_url, compression=None) as ws:
            for i in range(50):
                await ws.send(f"message {i}")
            assert [await ws.recv() for _ in range(50)] == [f"message {i}" for i in range(50)]


async def test_echo_fragmented_message_is_reassembled(echo_url: str) -> None:
    """Three fragments in, one whole frame back, with the type of the first fragment."""
    with trio.fail_after(CAP):
        client = await _RawClient.connect(echo_url)
        await client.send(TextMessage(data="hel", message_finished=False))
        await client.send(TextMessage(data="lo wo", message_finished=False))
        await client.send(TextMessage(data="rld", message_finished=True))
        echo = await client.next_event()
        assert echo == TextMessage(data="hello world", frame_finished=True, message_finished=True)
        await client.stream.aclose()


async def test_echo_fragmented_message_from_websockets_client(echo_url: str) -> None:
    with trio.fail_after(CAP):
        async with _client(echo_url) as ws:
            await ws.send([b"ab", b"cd", b"ef"])
            assert await ws.recv() == b"abcdef"


async def test_echo_ping_is_answered_with_pong(echo_url: str) -> None:
    with trio.fail_after(CAP):
        async with _client(echo_url, compression=None) as ws:
            pong = await ws.ping(b"are you there")
            await pong.wait()


async def test_echo_close_code_and_reason_come_back(echo_url: str) -> None:
    with trio.fail_after(CAP):
        async with _client(echo_url, compression=None) as ws:
            await ws.send("last words")
            assert await ws.recv() == "last words"
            await ws.aclose(4001, "bye")
            assert ws.protocol.close_rcvd is not None
            assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (4001, "bye")


async def test_echo_first_offered_subprotocol_is_chosen(echo_url: str) -> None:
    with trio.fail_after(CAP):
        async with _client(echo_url, subprotocols=["chat.v2", "chat.v1"]) as ws:
            assert ws.subprotocol == "chat.v2"
        async with _client(echo_url) as ws:
            assert ws.subprotocol is None


async def test_echo_permessage_deflate_negotiated_when_offered(echo_url: str) -> None:
    message = "a highly compressible line of text\n" * 10_000
    with trio.fail_after(CAP):
        async with _client(echo_url, compression="deflate", max_size=None) as ws:
            assert ws.response is not None
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert extensions.startswith("permessage-deflate")
            for _ in range(3):  # the compression context carries over between messages
                await ws.send(message)
                assert await ws.recv() == message
            await ws.send(b"\x01\x02" * 1000)
            assert await ws.recv() == b"\x01\x02" * 1000


async def test_echo_no_compression_when_not_offered(echo_url: str) -> None:
    with trio.fail_after(CAP):
        async with _client(echo_url, compression=None) as ws:
            assert ws.response is not None
            assert "Sec-WebSocket-Extensions" not in ws.response.headers


async def test_echo_bytes_behind_upgrade_request_are_echoed(echo_url: str) -> None:
    """A frame sent in the same segment as the upgrade request belongs to the WebSocket."""
    with trio.fail_after(CAP):
        client = await _RawClient.connect(echo_url, behind_request=_masked_text_frame(b"early"))
        echo = await client.next_event()
        assert isinstance(echo, TextMessage)
        assert echo.data == "early"
        await client.stream.aclose()


async def test_echo_protocol_violation_gets_wsproto_close_code(echo_url: str) -> None:
    """An unmasked client frame is a protocol error: close 1002, then the server hangs up."""
    with trio.fail_after(CAP):
        client = await _RawClient.connect(echo_url)
        await client.stream.send_all(bytes([0x81, 0x02]) + b"hi")
        close = await client.next_event()
        assert isinstance(close, CloseConnection)
        assert close.code == 1002
        assert await client.stream.receive_some() == b""
        await client.stream.aclose()


async def test_echo_oversized_message_is_closed_with_1009(echo_url: str) -> None:
    with trio.fail_after(CAP):
        async with _client(echo_url, compression=None) as ws:
            await ws.send(b"x" * (MAX_MESSAGE_SIZE + 1))
            with pytest.raises(ConnectionClosedError) as caught:
                await ws.recv()
            assert caught.value.rcvd is not None
            assert caught.value.rcvd.code == 1009


async def test_echo_plain_http_get_is_answered_200(echo_url: str) -> None:
    with trio.fail_after(CAP):
        answer = await _http_exchange(echo_url, b"GET /healthz HTTP/1.1\r\nHost: echo\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-type: text/plain; charset=utf-8" in head.lower()
    assert body == b"wsproxy echo backend\n"


async def test_echo_plain_http_head_has_no_body(echo_url: str) -> None:
    with trio.fail_after(CAP):
        answer = await _http_exchange(echo_url, b"HEAD / HTTP/1.1\r\nHost: echo\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b""


async def test_echo_plain_http_post_is_405(echo_url: str) -> None:
    request = b"POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\n\r\nhello"
    with trio.fail_after(CAP):
        answer = await _http_exchange(echo_url, request)
    assert answer.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert b"\r\nallow: GET, HEAD\r\n" in answer


async def test_echo_garbage_request_is_400(echo_url: str) -> None:
    with trio.fail_after(CAP):
        answer = await _http_exchange(echo_url, b"this is not HTTP\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")


async def test_echo_broken_upgrade_request_gets_wsproto_rejection(echo_url: str) -> None:
    request = b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    with trio.fail_after(CAP):
        answer = await _http_exchange(echo_url, request)  # no key, no version
    assert answer.startswith(b"HTTP/1.1 400 ")


async def test_echo_serves_concurrent_clients(echo_url: str) -> None:
    async def chat(n: int) -> None:
        async with _client(echo_url) as ws:
            for i in range(10):
                await ws.send(f"client {n} message {i}")
                assert await ws.recv() == f"client {n} message {i}"

    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(chat, n)


@pytest.mark.parametrize("how", ["eof", "reset"])
async def test_echo_vanished_client_does_not_break_server(
    echo_url: str, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """A client that leaves mid-frame is logged at DEBUG only, and the next client is served."""
    with trio.fail_after(CAP):
        client = await _RawClient.connect(echo_url)
        await client.stream.send_all(_masked_text_frame(b"half a frame")[:9])
        if how == "reset":  # SO_LINGER 0: close() sends RST instead of FIN
            linger = struct.pack("ii", 1, 0)
            assert isinstance(client.stream, trio.SocketStream)
            client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        with _logged("peer went away") as gone:
            await client.stream.aclose()
            await gone.wait()

        async with _client(echo_url) as ws:
            await ws.send("still here?")
            assert await ws.recv() == "still here?"


async def test_echo_client_vanishing_before_its_request_is_quiet(echo_url: str) -> None:
    with trio.fail_after(CAP):
        host, port = _address(echo_url)
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHo")
        await stream.aclose()
        async with _client(echo_url) as ws:
            await ws.send("next")
            assert await ws.recv() == "next"


async def test_run_echo_logs_each_bound_address(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsproxy.echo")
    with trio.fail_after(CAP), _logged("listening") as listening:
        nursery.start_soon(run_echo, "127.0.0.1:0")
        await listening.wait()
        [record] = caplog.records
        assert record.levelno == logging.INFO
        url = record.getMessage().removeprefix("echo backend listening on ")
        assert url.startswith("ws://127.0.0.1:")
        async with _client(url) as ws:
            await ws.send("via run_echo")
            assert await ws.recv() == "via run_echo"


# In-memory streams and virtual time: the timeouts, and the paths a real socket rarely takes.


async def test_echo_connection_drops_silent_client_after_request_timeout(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    client, server = memory_stream_pair()
    with trio.fail_after(VIRTUAL_CAP):
        nursery.start_soon(echo_connection, server)
        await client.send_all(b"GET / HTTP/1.1\r\n")  # and nothing more
        assert await client.receive_some() == b""
        assert trio.current_time() == REQUEST_TIMEOUT


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET / HTTP/1.1\r\nHo", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nhalf"],
    ids=["nothing", "half-head", "half-body"],
)
async def test_echo_connection_client_leaving_mid_request_gets_no_answer(
    autojump_clock: MockClock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, sent: bytes
) -> None:
    """A request cut short by the client's EOF is a peer that went away, not a bad request."""
    caplog.set_level(logging.DEBUG, logger="wsproxy.echo")
    client_send, server_receive = trio.testing.memory_stream_one_way_pair()
    server_send, client_receive = trio.testing.memory_stream_one_way_pair()
    with trio.fail_after(VIRTUAL_CAP):
        nursery.start_soon(echo_connection, trio.StapledStream(server_send, server_receive))
        await client_send.send_all(sent)
        await client_send.aclose()
        assert await client_receive.receive_some() == b""
    assert [r.getMessage() for r in caplog.records] == ["peer: peer went away"]


async def test_echo_connection_gives_up_on_peer_that_ignores_our_close(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    """After 1009 the rest of the message is dropped, and the answer awaited for CLOSE_TIMEOUT."""
    client_stream, server = memory_stream_pair()
    client = _RawClient(client_stream)
    with trio.fail_after(VIRTUAL_CAP):
        nursery.start_soon(echo_connection, server)
        await client.handshake()
        await client.send(BytesMessage(data=bytes(MAX_MESSAGE_SIZE + 1), message_finished=False))
        await client.send(BytesMessage(data=b"and more", message_finished=True))
        close = await client.next_event()
        assert isinstance(close, CloseConnection)
        assert close.code == 1009
        sent_close_at = trio.current_time()
        assert await client_stream.receive_some() == b""  # no close frame from us: it hangs up
        assert trio.current_time() == sent_close_at + CLOSE_TIMEOUT


async def test_echo_connection_peer_gone_before_its_echo_is_quiet(
    autojump_clock: MockClock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wsproxy.echo")
    client_stream, server = memory_stream_pair()
    client = _RawClient(client_stream)
    with trio.fail_after(VIRTUAL_CAP), _logged("peer went away") as gone:
        nursery.start_soon(echo_connection, server)
        await client.handshake()
        await client.send(TextMessage(data="never read"))
        await client_stream.aclose()
        await gone.wait()
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


async def test_echo_connection_bug_is_logged_and_stream_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected exception is ours to log (with its traceback); the stream is still closed."""

    async def explode() -> None:
        raise RuntimeError("boom")

    closed = trio.Event()
    stream = trio.StapledStream(
        MemorySendStream(close_hook=closed.set), MemoryReceiveStream(receive_some_hook=explode)
    )
    with trio.fail_after(CAP):
        await echo_connection(stream)
    assert closed.is_set()
    [record] = [r for r in caplog.records if r.name == "wsproxy.echo"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:65535", ("::1", 65535)),
        ("0.0.0.0:9000", ("0.0.0.0", 9000)),
    ],
)
def test_parse_address_accepts_host_port(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize(
    "address",
    [
        "8080",
        ":8080",
        "host:",
        "host:65536",
        "host:-1",
        "host:http",
        "[]:80",
        "::1:80",
        "h:\uff18\uff10",
    ],
)
def test_parse_address_rejects_malformed(address: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|port|brackets"):
        parse_address(address)
