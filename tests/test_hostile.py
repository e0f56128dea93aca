"""The hostile catalogue: what an attacker sends, and SPEC's answer to each, end to end.

Every case runs against a real proxy on loopback port 0 with a real `websockets` echo backend
(and, for the backend's misdeeds, a hand-written backend). Before each case a `websockets`
client opens a session through the same proxy (the witness); after the case it must still
echo, so no malformed input harms anybody else.

Heads, frames and bad backend bytes are written by hand on raw sockets, and every answer is
read raw: the exact HTTP status (a refusal's body is one plain-text line, and never names an
internal address) or the exact close code the client and the backend hear.

Decisions where SPEC leaves room, each asserted below:
- An upgrade that announces a body (`Transfer-Encoding`, or a `Content-Length` other than 0)
  is 400: the bytes behind its head would be a body to one reader and frames to another.
  `Content-Length: 0` is harmless and passes, and never reaches the backend (hop-by-hop).
- Obsolete line folding is unfolded to one space (RFC 9112 5.2 allows that or 400) before any
  value is judged or forwarded; folding before the first header line is 400.
- Absolute-form, authority-form and asterisk-form targets are never routed by an authority the
  client chose: no route's path matches them, so they get 404 and no backend is contacted.
- Bare LF inside a header line ends that line (h11 is lenient there); what is forwarded is
  re-serialised, so no CR, LF or NUL ever reaches the backend inside a value.

Setup is per test (trio fixtures cannot outlive one test), and cheap: a proxy and an echo
backend start in a few milliseconds.
"""

from __future__ import annotations

import base64
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import pytest
import trio
import websockets
from websockets.trio.client import ClientConnection, connect

from tests.conftest import ORIGIN, Backend, accept_upgrade, raw_server, start_proxy
from tests.helpers import Peer
from wsproxy.config import parse_config
from wsproxy.handshake import accept_value

pytestmark = pytest.mark.e2e

CAP: Final = 10.0  # seconds: no case comes near it
KEY: Final = base64.b64encode(b"0123456789abcdef")
HANDSHAKE_TIMEOUT: Final = 1.0
MAX_HEADER: Final = 16 * 1024  # the default max_header_size
MAX_MESSAGE: Final = 64 * 1024
MASK: Final = b"\x37\xfa\x21\x3d"


# ------------------------------------------------------------------------------ the setup


@dataclass
class Hostile:
    """A hand-written backend whose behaviour each test chooses (`act`); `heard` collects the
    close codes the proxy sent it (None: the connection ended without a close frame)."""

    port: int = 0
    act: Callable[[trio.SocketStream], Awaitable[None]] | None = None
    heard: list[int | None] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)


@dataclass
class Front:
    """The proxy under test, with its echo backend and its hostile backend."""

    port: int
    backend: Backend
    hostile: Hostile
    hostile_port: int
    refused_port: int


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def hostile(nursery: trio.Nursery) -> Hostile:
    state = Hostile()

    async def handle(stream: trio.SocketStream) -> None:
        try:
            assert state.act is not None, "the test did not say how the backend misbehaves"
            await state.act(stream)
        finally:
            state.done.set()

    state.port = await raw_server(nursery, handle)
    return state


@pytest.fixture
async def front(nursery: trio.Nursery, backend: Backend, hostile: Hostile) -> Front:
    refused = _closed_port()
    text = f"""
listen: [{{address: "127.0.0.1:0"}}]
security:
  allowed_origins: ["{ORIGIN}", "https://*.example.org"]
  handshake_timeout: {HANDSHAKE_TIMEOUT}s
  max_message_size: {MAX_MESSAGE}
timeouts: {{connect: 1s}}
routes:
  - {{path: /hostile, pool: hostile}}
  - {{path: /refused, pool: refused}}
  - {{path: /, pool: main}}
pools:
  main: {{servers: ["{backend.url}"]}}
  hostile: {{servers: ["ws://127.0.0.1:{hostile.port}"]}}
  refused: {{servers: ["ws://127.0.0.1:{refused}"]}}
"""
    running = await start_proxy(nursery, parse_config(text, {}))
    return Front(running.port, backend, hostile, hostile.port, refused)


class Witness:
    """A session opened before the case; `check` proves it still echoes."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.sent = 0

    async def check(self) -> None:
        self.sent += 1
        text = f"witness message {self.sent}"
        with trio.fail_after(CAP):
            await self.ws.send(text)
            assert await self.ws.recv() == text


@pytest.fixture
async def witness(front: Front) -> AsyncIterator[Witness]:
    async with connect(f"ws://127.0.0.1:{front.port}/", origin=ORIGIN, proxy=None) as ws:
        witness = Witness(ws)
        await witness.check()
        yield witness


# ------------------------------------------------------------------------------ raw tools


def head(
    *,
    line: bytes = b"GET / HTTP/1.1",
    drop: tuple[bytes, ...] = (),
    set_: tuple[tuple[bytes, bytes], ...] = (),
    add: tuple[tuple[bytes, bytes], ...] = (),
    raw: bytes = b"",
    after: bytes = b"",
) -> bytes:
    """A client's upgrade request, byte for byte: the valid default headers minus `drop`,
    with `set_` replacing values, plus `add` and `raw` header lines, then `after` behind it."""
    headers = {
        b"Host": b"proxy.test",
        b"Upgrade": b"websocket",
        b"Connection": b"Upgrade",
        b"Sec-WebSocket-Version": b"13",
        b"Sec-WebSocket-Key": KEY,
        b"Origin": ORIGIN.encode(),
    }
    for name in drop:
        del headers[name]
    headers.update(dict(set_))
    lines = [line, *(name + b": " + value for name, value in (*headers.items(), *add))]
    return b"\r\n".join(lines) + b"\r\n" + raw + b"\r\n" + after


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """One frame as a peer would write it; `length` announces a length other than the real one."""
    size = len(payload) if length is None else length
    mask_bit = 0x80 if mask else 0
    first = bytes([(0x80 if fin else 0) | rsv | opcode])
    if size < 126:
        header = first + bytes([mask_bit | size])
    elif size < 1 << 16:
        header = first + bytes([mask_bit | 126]) + size.to_bytes(2, "big")
    else:
        header = first + bytes([mask_bit | 127]) + size.to_bytes(8, "big")
    if not mask:
        return header + payload
    return header + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def close_body(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


@dataclass
class Reply:
    """The proxy's answer to a raw request: status and headers; a refusal's body, or for a 101
    the stream (at the first byte behind the head), ready for frames."""

    status: int
    headers: dict[str, str]
    body: bytes
    stream: trio.SocketStream


async def _send_quietly(stream: trio.abc.SendStream, data: bytes) -> None:
    """Send what a refusing proxy may stop reading halfway: a reset is an acceptable end."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)


async def ask(port: int, data: bytes) -> Reply:
    """Send raw request bytes; read the answer head byte by byte (so nothing behind a 101 is
    consumed), and a refusal's body to the end."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        return await _answer(stream, data)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def _answer(stream: trio.SocketStream, data: bytes) -> Reply:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_send_quietly, stream, data)
        received = b""
        while not received.endswith(b"\r\n\r\n"):
            chunk = await stream.receive_some(1)
            assert chunk, f"the proxy closed before answering: {received!r}"
            received += chunk
        status_line, *lines = received[:-4].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(status_line.split()[1])
        body = b""
        if status != 101:
            while chunk := await _receive_or_eof(stream):
                body += chunk
            await stream.aclose()
    return Reply(status, headers, body, stream)


async def _receive_or_eof(stream: trio.SocketStream) -> bytes:
    try:
        return bytes(await stream.receive_some(65536))
    except trio.BrokenResourceError:  # a reset after the answer: the answer stands
        return b""


def assert_refusal(reply: Reply, status: int, *, addresses: tuple[int, ...] = ()) -> None:
    """`status`, with a one-line plain-text body that names no internal address."""
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.body.endswith(b"\n"), reply.body
    assert reply.body.count(b"\n") == 1, reply.body
    assert len(reply.body) > 1
    assert b"127.0.0.1" not in reply.body, reply.body
    for port in addresses:
        assert str(port).encode() not in reply.body, reply.body


async def open_raw(port: int, path: bytes = b"/") -> Peer:
    """A hand-driven client past its 101, to send frames the `websockets` client never would."""
    reply = await ask(port, head(line=b"GET " + path + b" HTTP/1.1"))
    assert reply.status == 101, reply
    return Peer(reply.stream, client=True)


async def close_heard(peer: Peer) -> int:
    """The code of the close frame the proxy sends `peer`, which then answers it."""
    code, _ = await peer.expect_close()
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await peer.send(frame(0x8, close_body(1000)))
    await peer.stream.aclose()
    return code


async def backend_heard(front: Front) -> int | None:
    """The close code the echo backend got for the case's session (the witness is still open)."""
    await front.backend.ended.wait()
    return front.backend.closes[0][0]


async def echoes(peer: Peer, text: str = "after the head") -> None:
    await peer.send(frame(0x1, text.encode()))
    answer = await peer.receive()
    assert answer is not None
    assert answer.payload == text


# ------------------------------------------------------------------------------ request heads


@dataclass(frozen=True)
class Head:
    """A request head and its answer. For a 101: `close` is the code the client hears for the
    bytes behind the head (None: the session works and echoes), `seen` checks what reached
    the backend."""

    data: bytes
    status: int
    close: int | None = None
    seen: Callable[[websockets.Request], None] | None = None
    first: tuple[tuple[int, str | bytes], ...] = ()  # (opcode, payload) echoed for pipelined bytes
    rest: bytes = b""  # sent once the 101 has come


def _no_framing(request: websockets.Request) -> None:
    assert "Content-Length" not in request.headers
    assert "Transfer-Encoding" not in request.headers


def _unfolded(request: websockets.Request) -> None:
    assert request.headers["X-Folded"] == "first second"


def _one_upgrade(request: websockets.Request) -> None:
    assert request.headers.get_all("Upgrade") == ["websocket"]


def _split_at_lf(request: websockets.Request) -> None:
    assert request.headers["X-First"] == "one"
    assert request.headers["X-Second"] == "two"
    for name, value in request.headers.raw_items():
        assert not {"\r", "\n", "\0"} & set(name + value), (name, value)


def _path(path: str) -> Callable[[websockets.Request], None]:
    def check(request: websockets.Request) -> None:
        assert request.path == path

    return check


def _header(name: str, value: str) -> Callable[[websockets.Request], None]:
    def check(request: websockets.Request) -> None:
        assert request.headers[name] == value

    return check


def _filler(total: int) -> bytes:
    """Header lines of at most 1,000 bytes (what a backend's line limit allows) making a head of
    exactly `total` bytes with the default headers."""
    room = total - len(head())
    count = -(-room // 1000)
    sizes = [room // count + (index < room % count) for index in range(count)]
    lines = [
        b"X-Fill-%03d: " % index + b"a" * (size - 14) + b"\r\n" for index, size in enumerate(sizes)
    ]
    assert len(b"".join(lines)) == room
    return b"".join(lines)


def _many_headers(count: int) -> bytes:
    return b"".join(b"X-H%d: v\r\n" % index for index in range(count))


MASKED_HELLO = frame(0x1, b"hello")

HEADS: Final[dict[str, Head]] = {
    # --- smuggling shapes: framing headers on an upgrade
    "content-length-zero": Head(head(add=((b"Content-Length", b"0"),)), 101, seen=_no_framing),
    "content-length-with-body": Head(head(add=((b"Content-Length", b"5"),), after=b"hello"), 400),
    "content-length-body-is-a-frame": Head(
        head(add=((b"Content-Length", b"%d" % len(MASKED_HELLO)),), after=MASKED_HELLO), 400
    ),
    "transfer-encoding-chunked": Head(
        head(add=((b"Transfer-Encoding", b"chunked"),), after=b"5\r\nhello\r\n0\r\n\r\n"), 400
    ),
    "transfer-encoding-and-content-length": Head(
        head(
            add=((b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"4")),
            after=b"0\r\n\r\n",
        ),
        400,
    ),
    "transfer-encoding-gzip": Head(head(add=((b"Transfer-Encoding", b"gzip"),)), 400),
    "transfer-encoding-gzip-chunked": Head(
        head(add=((b"Transfer-Encoding", b"gzip, chunked"),)), 400
    ),
    "transfer-encoding-space-before-colon": Head(head(raw=b"Transfer-Encoding : chunked\r\n"), 400),
    "content-length-conflicting": Head(
        head(add=((b"Content-Length", b"5"), (b"Content-Length", b"6"))), 400
    ),
    "content-length-negative": Head(head(add=((b"Content-Length", b"-1"),)), 400),
    "content-length-not-a-number": Head(head(add=((b"Content-Length", b"0x5"),)), 400),
    "content-length-huge": Head(head(add=((b"Content-Length", b"9" * 30),)), 400),
    # --- obsolete line folding
    "fold-value": Head(head(raw=b"X-Folded: first\r\n second\r\n"), 101, seen=_unfolded),
    "fold-value-tab": Head(head(raw=b"X-Folded: first\r\n\tsecond\r\n"), 101, seen=_unfolded),
    "fold-before-first-header": Head(b"GET / HTTP/1.1\r\n X: y\r\n" + head()[16:], 400),
    "fold-host": Head(head(drop=(b"Host",), raw=b"Host: proxy.test\r\n evil.test\r\n"), 400),
    "fold-upgrade": Head(
        head(drop=(b"Upgrade",), raw=b"Upgrade:\r\n websocket\r\n"), 101, seen=_one_upgrade
    ),
    # --- duplicated headers
    "host-twice": Head(head(add=((b"Host", b"proxy.test"),)), 400),
    "host-twice-different": Head(head(add=((b"Host", b"evil.test"),)), 400),
    "upgrade-twice": Head(head(add=((b"Upgrade", b"websocket"),)), 101, seen=_one_upgrade),
    "upgrade-websocket-and-h2c": Head(head(add=((b"Upgrade", b"h2c"),)), 101, seen=_one_upgrade),
    "connection-twice": Head(head(add=((b"Connection", b"keep-alive"),)), 101),
    "key-twice": Head(head(add=((b"Sec-WebSocket-Key", KEY),)), 400),
    "key-twice-different": Head(
        head(add=((b"Sec-WebSocket-Key", base64.b64encode(b"fedcba9876543210")),)), 400
    ),
    "version-twice": Head(head(add=((b"Sec-WebSocket-Version", b"13"),)), 426),
    "version-list": Head(head(set_=((b"Sec-WebSocket-Version", b"13, 8"),)), 426),
    "origin-twice": Head(head(add=((b"Origin", ORIGIN.encode()),)), 403),
    # --- CR, LF and NUL where they do not belong
    "nul-in-value": Head(head(add=((b"X-Evil", b"a\0b"),)), 400),
    "nul-in-name": Head(head(add=((b"X-E\0vil", b"a"),)), 400),
    "nul-in-target": Head(head(line=b"GET /a\0b HTTP/1.1"), 400),
    "nul-in-origin": Head(head(set_=((b"Origin", ORIGIN.encode() + b"\0"),)), 400),
    "cr-in-value": Head(head(add=((b"X-Evil", b"a\rb"),)), 400),
    "cr-in-host": Head(head(set_=((b"Host", b"proxy.test\rX-Evil: 1"),)), 400),
    "bare-lf-in-a-header-line": Head(
        head(raw=b"X-First: one\nX-Second: two\r\n"), 101, seen=_split_at_lf
    ),
    "crlf-in-target": Head(head(line=b"GET /a\r\nX-Evil: b HTTP/1.1"), 400),
    "space-in-target": Head(head(line=b"GET /a b HTTP/1.1"), 400),
    "only-lf-line-ends": Head(head().replace(b"\r\n", b"\n"), 408),
    # --- sizes
    "5000-headers": Head(head(raw=_many_headers(5000)), 431),
    "64KiB-request-line": Head(head(line=b"GET /" + b"a" * 65536 + b" HTTP/1.1"), 431),
    "64KiB-header-value": Head(head(add=((b"X-Big", b"a" * 65536),)), 431),
    "head-of-exactly-max-header-size": Head(head(raw=_filler(MAX_HEADER)), 101),
    "head-one-byte-over-max-header-size": Head(head(raw=_filler(MAX_HEADER + 1)), 431),
    "100-headers": Head(head(raw=_many_headers(100)), 101, seen=_header("X-H99", "v")),
    # --- 8-bit bytes
    "8bit-in-name": Head(head(add=((b"X-\xe9vil", b"a"),)), 400),
    "8bit-in-value": Head(head(add=((b"X-Latin", b"caf\xe9"),)), 101),
    "8bit-in-target": Head(head(line=b"GET /caf\xe9 HTTP/1.1"), 400),
    "8bit-in-method": Head(head(line=b"G\xc9T / HTTP/1.1"), 400),
    "8bit-in-host": Head(head(set_=((b"Host", b"caf\xe9.test"),)), 400),
    "8bit-in-origin": Head(head(set_=((b"Origin", b"https://app.ex\xe4mple.com"),)), 403),
    "8bit-in-key": Head(head(set_=((b"Sec-WebSocket-Key", b"\xe9" * 24),)), 400),
    # --- targets that are not origin-form: never routed by the client's authority
    "absolute-form": Head(head(line=b"GET http://evil.test/ HTTP/1.1"), 404),
    "absolute-form-own-host": Head(head(line=b"GET http://proxy.test/ HTTP/1.1"), 404),
    "absolute-form-ws": Head(head(line=b"GET ws://evil.test/ HTTP/1.1"), 404),
    "authority-form": Head(head(line=b"GET evil.test:80 HTTP/1.1"), 404),
    "asterisk-form": Head(head(line=b"GET * HTTP/1.1"), 404),
    "double-slash-path": Head(
        head(line=b"GET //evil.test/x HTTP/1.1"), 101, seen=_path("//evil.test/x")
    ),
    "dot-segments-kept": Head(
        head(line=b"GET /a/../b?x=1 HTTP/1.1"), 101, seen=_path("/a/../b?x=1")
    ),
    # --- bytes pipelined behind the head: the first WebSocket bytes
    "pipelined-frame": Head(head(after=MASKED_HELLO), 101, first=((0x1, "hello"),)),
    "pipelined-frames-and-ping": Head(
        head(after=frame(0x1, b"one") + frame(0x9, b"p") + frame(0x2, b"two")),
        101,
        first=((0x1, "one"), (0xA, b"p"), (0x2, b"two")),
    ),
    "pipelined-half-frame": Head(
        head(after=MASKED_HELLO[:3]), 101, first=((0x1, "hello"),), rest=MASKED_HELLO[3:]
    ),
    "pipelined-garbage": Head(head(after=b"garbage!"), 101, close=1002),
    "pipelined-unmasked-frame": Head(head(after=frame(0x1, b"hello", mask=False)), 101, close=1002),
    "pipelined-second-request": Head(head(after=head()), 101, close=1002),
    "pipelined-close": Head(head(after=frame(0x8, close_body(1000))), 101, close=1000),
    # --- methods and versions
    "method-post": Head(head(line=b"POST / HTTP/1.1"), 400),
    "method-put": Head(head(line=b"PUT / HTTP/1.1"), 400),
    "method-head": Head(head(line=b"HEAD / HTTP/1.1"), 400),
    "method-options": Head(head(line=b"OPTIONS / HTTP/1.1"), 400),
    "method-connect": Head(head(line=b"CONNECT / HTTP/1.1"), 400),
    "method-delete": Head(head(line=b"DELETE / HTTP/1.1"), 400),
    "method-lowercase": Head(head(line=b"get / HTTP/1.1"), 400),
    "method-unknown": Head(head(line=b"BREW / HTTP/1.1"), 400),
    "version-http10": Head(head(line=b"GET / HTTP/1.0"), 400),
    "version-http20": Head(head(line=b"GET / HTTP/2.0"), 400),
    "version-lowercase": Head(head(line=b"GET / http/1.1"), 400),
    "version-missing": Head(head(line=b"GET /"), 400),
    "version-http1-10": Head(head(line=b"GET / HTTP/1.10"), 400),
    "request-line-extra-field": Head(head(line=b"GET / HTTP/1.1 extra"), 400),
    "garbage-head": Head(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    # --- Sec-WebSocket-Key
    "key-missing": Head(head(drop=(b"Sec-WebSocket-Key",)), 400),
    "key-empty": Head(head(set_=((b"Sec-WebSocket-Key", b""),)), 400),
    "key-short": Head(head(set_=((b"Sec-WebSocket-Key", base64.b64encode(b"x" * 15)),)), 400),
    "key-long": Head(head(set_=((b"Sec-WebSocket-Key", base64.b64encode(b"x" * 17)),)), 400),
    "key-not-base64": Head(head(set_=((b"Sec-WebSocket-Key", b"!" * 24),)), 400),
    "key-urlsafe-alphabet": Head(
        head(set_=((b"Sec-WebSocket-Key", base64.urlsafe_b64encode(b"\xfb" * 16)),)), 400
    ),
    "key-without-padding": Head(head(set_=((b"Sec-WebSocket-Key", KEY.rstrip(b"=")),)), 400),
    # --- Sec-WebSocket-Version
    "version-8": Head(head(set_=((b"Sec-WebSocket-Version", b"8"),)), 426),
    "version-12": Head(head(set_=((b"Sec-WebSocket-Version", b"12"),)), 426),
    "version-14": Head(head(set_=((b"Sec-WebSocket-Version", b"14"),)), 426),
    "version-013": Head(head(set_=((b"Sec-WebSocket-Version", b"013"),)), 426),
    "version-empty": Head(head(set_=((b"Sec-WebSocket-Version", b""),)), 426),
    "version-header-missing": Head(head(drop=(b"Sec-WebSocket-Version",)), 426),
    # --- Upgrade and Connection
    "upgrade-missing": Head(head(drop=(b"Upgrade",)), 426),
    "upgrade-lookalike": Head(head(set_=((b"Upgrade", b"websocketx"),)), 426),
    "upgrade-mixed-case": Head(head(set_=((b"Upgrade", b"WebSocket"),)), 101),
    "connection-missing": Head(head(drop=(b"Connection",)), 400),
    "connection-close": Head(head(set_=((b"Connection", b"close"),)), 400),
    "connection-list": Head(head(set_=((b"Connection", b"keep-alive, Upgrade"),)), 101),
    # --- Origin
    "origin-missing": Head(head(drop=(b"Origin",)), 403),
    "origin-null": Head(head(set_=((b"Origin", b"null"),)), 403),
    "origin-foreign": Head(head(set_=((b"Origin", b"https://evil.test"),)), 403),
    "origin-allowed-as-prefix": Head(
        head(set_=((b"Origin", b"https://app.example.com.evil.test"),)), 403
    ),
    "origin-allowed-in-path": Head(
        head(set_=((b"Origin", b"https://evil.test/https://app.example.com"),)), 403
    ),
    "origin-other-scheme": Head(head(set_=((b"Origin", b"http://app.example.com"),)), 403),
    "origin-other-port": Head(head(set_=((b"Origin", b"https://app.example.com:444"),)), 403),
    "origin-with-path": Head(head(set_=((b"Origin", b"https://app.example.com/"),)), 403),
    "origin-userinfo": Head(head(set_=((b"Origin", b"https://app.example.com@evil.test"),)), 403),
    "origin-wildcard-base": Head(head(set_=((b"Origin", b"https://example.org"),)), 403),
    "origin-wildcard-lookalike": Head(head(set_=((b"Origin", b"https://evilexample.org"),)), 403),
    "origin-default-port": Head(head(set_=((b"Origin", b"https://app.example.com:443"),)), 101),
    "origin-upper-case": Head(head(set_=((b"Origin", b"HTTPS://APP.EXAMPLE.COM"),)), 101),
    "origin-wildcard-deep": Head(head(set_=((b"Origin", b"https://a.b.example.org"),)), 101),
    # --- Host (RFC 9112 3.2, RFC 3986 3.2.2: reg-name or IP literal, optional numeric port)
    "host-missing": Head(head(drop=(b"Host",)), 400),
    "host-empty": Head(head(set_=((b"Host", b""),)), 400),
    "host-with-path": Head(head(set_=((b"Host", b"h.example.test/evil"),)), 400),
    "host-bad-port": Head(head(set_=((b"Host", b"127.0.0.1:80x"),)), 400),
    "host-userinfo": Head(head(set_=((b"Host", b"evil@127.0.0.1"),)), 400),
    "host-space": Head(head(set_=((b"Host", b"proxy test"),)), 400),
    "host-query": Head(head(set_=((b"Host", b"proxy.test?x=1"),)), 400),
    "host-backslash": Head(head(set_=((b"Host", b"proxy.test\\evil"),)), 400),
    "host-unclosed-ipv6": Head(head(set_=((b"Host", b"[::1"),)), 400),
    "host-ipv6-with-port": Head(head(set_=((b"Host", b"[::1]:8080"),)), 101),
    "host-name-with-port": Head(head(set_=((b"Host", b"proxy.test:8080"),)), 101),
    "host-ipv4": Head(head(set_=((b"Host", b"127.0.0.1"),)), 101),
}


@pytest.mark.parametrize("case", HEADS.values(), ids=HEADS.keys())
async def test_hostile_head(front: Front, witness: Witness, case: Head) -> None:
    with trio.fail_after(CAP):
        reply = await ask(front.port, case.data)
        async with reply.stream:
            await _judge_head(front, case, reply)
    await witness.check()


async def _judge_head(front: Front, case: Head, reply: Reply) -> None:
    """Assert the answer SPEC gives `case`, and for a 101 what the session does next."""
    if case.status != 101:
        assert_refusal(reply, case.status)
        assert len(front.backend.requests) == 1  # the witness's: nothing else got through
    else:
        assert reply.status == 101, reply.body
        assert reply.headers["sec-websocket-accept"] == accept_value(KEY).decode()
        peer = Peer(reply.stream, client=True)
        await peer.send(case.rest)
        if case.close is None:
            received = set()
            for _ in case.first:  # a pong may overtake the echo of an earlier message
                answer = await peer.receive()
                assert answer is not None
                received.add((int(answer.opcode), answer.payload))
            assert received == set(case.first)
            await echoes(peer)
            await peer.send(frame(0x8, close_body(1000)))
            assert (await peer.expect_close())[0] == 1000
        else:
            assert await close_heard(peer) == case.close
            assert await backend_heard(front) == (1000 if case.close == 1000 else 1001)
        assert len(front.backend.requests) == 2  # the witness's and this one's
        if case.seen is not None:
            case.seen(front.backend.requests[1])


# -------------------------------------------------------------------------- frames from a client


@dataclass(frozen=True)
class FromClient:
    """Bytes a client sends once its session is open; the close codes each side then hears."""

    data: bytes
    client: int
    backend: int | None = 1001  # None: not checked (the backend itself chose how to close)


def _violation(data: bytes) -> FromClient:
    return FromClient(data, 1002)


TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10

FROM_CLIENT: Final[dict[str, FromClient]] = {
    "unmasked-text": _violation(frame(TEXT, b"hi", mask=False)),
    "unmasked-binary": _violation(frame(BINARY, b"hi", mask=False)),
    "unmasked-ping": _violation(frame(PING, b"", mask=False)),
    "unmasked-close": _violation(frame(CLOSE, close_body(1000), mask=False)),
    **{f"reserved-opcode-{op:x}": _violation(frame(op, b"x")) for op in (3, 4, 5, 6, 7)},
    **{f"reserved-opcode-{op:x}": _violation(frame(op)) for op in (0xB, 0xC, 0xD, 0xE, 0xF)},
    "rsv1-on-text-without-extension": _violation(frame(TEXT, b"hi", rsv=RSV1)),
    "rsv2-on-text": _violation(frame(TEXT, b"hi", rsv=RSV2)),
    "rsv3-on-binary": _violation(frame(BINARY, b"hi", rsv=RSV3)),
    "rsv1-on-ping": _violation(frame(PING, rsv=RSV1)),
    "rsv2-on-close": _violation(frame(CLOSE, close_body(1000), rsv=RSV2)),
    "rsv1-on-continuation": _violation(frame(TEXT, b"a", fin=False) + frame(0x0, b"b", rsv=RSV1)),
    "fragmented-ping": _violation(frame(PING, b"p", fin=False)),
    "fragmented-pong": _violation(frame(PONG, b"p", fin=False)),
    "fragmented-close": _violation(frame(CLOSE, close_body(1000), fin=False)),
    "ping-of-126-bytes": _violation(frame(PING, b"p" * 126)),
    "pong-of-200-bytes": _violation(frame(PONG, b"p" * 200)),
    "close-of-126-bytes": _violation(frame(CLOSE, close_body(1000, b"r" * 124))),
    "ping-announcing-64KiB": _violation(frame(PING, length=65536)),
    "continuation-without-start": _violation(frame(0x0, b"lost")),
    "final-continuation-without-start": _violation(frame(0x0, b"lost", fin=True)),
    "text-inside-fragmented-message": _violation(frame(TEXT, b"a", fin=False) + frame(TEXT, b"b")),
    "binary-inside-fragmented-message": _violation(
        frame(BINARY, b"a", fin=False) + frame(BINARY, b"b")
    ),
    "close-body-of-1-byte": _violation(frame(CLOSE, b"\x03")),
    **{
        f"close-code-{code}": _violation(frame(CLOSE, close_body(code)))
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)
    },
    "close-reason-not-utf8": FromClient(frame(CLOSE, close_body(1000, b"\xff\xfe")), 1007),
    "close-reason-cut-utf8": FromClient(frame(CLOSE, close_body(1000, "é".encode()[:1])), 1007),
    "length-with-top-bit": _violation(frame(BINARY, length=1 << 63)),
    "length-all-ones": _violation(frame(BINARY, length=(1 << 64) - 1)),
    "length-1TiB": FromClient(frame(BINARY, length=1 << 40), 1009),
    "length-one-over-max-message": FromClient(frame(TEXT, length=MAX_MESSAGE + 1), 1009),
    "fragments-over-max-message": FromClient(
        frame(BINARY, b"a" * 40_000, fin=False) + frame(0x0, length=30_000), 1009
    ),
    # What a client may send: relayed, and the backend's answer comes back.
    **{
        f"valid-close-{code}": FromClient(frame(CLOSE, close_body(code, b"bye")), code, code)
        for code in (1000, 1001, 1003, 1007, 1011, 1012, 1013, 3000, 4999)
    },
    "valid-close-without-code": FromClient(frame(CLOSE), 1005, 1005),
    # Not the proxy's business (it never decodes payloads): the backend refuses it, 1007.
    "text-not-utf8": FromClient(frame(TEXT, b"\xff\xfe"), 1007, None),
}


@pytest.mark.parametrize("case", FROM_CLIENT.values(), ids=FROM_CLIENT.keys())
async def test_hostile_client_frames(front: Front, witness: Witness, case: FromClient) -> None:
    with trio.fail_after(CAP):
        peer = await open_raw(front.port)
        async with peer.stream:
            await echoes(peer, "before the attack")
            await _send_quietly(peer.stream, case.data)
            assert await close_heard(peer) == case.client
        if case.backend is not None:
            assert await backend_heard(front) == case.backend
    await witness.check()


@pytest.mark.parametrize("size", [0, 1, 125])
async def test_hostile_client_ping_up_to_125_bytes_is_answered(
    front: Front, witness: Witness, size: int
) -> None:
    with trio.fail_after(CAP):
        peer = await open_raw(front.port)
        async with peer.stream:
            await peer.send(frame(PING, b"p" * size))
            pong = await peer.receive()
            assert pong is not None
            assert (int(pong.opcode), pong.payload) == (PONG, b"p" * size)
            await echoes(peer)
    await witness.check()


# ------------------------------------------------------------------------- frames from a backend


@dataclass(frozen=True)
class FromBackend:
    """Bytes a backend sends right behind its 101; the close codes each side then hears
    (`backend` None: the proxy just drops the connection)."""

    data: bytes
    client: int = 1011
    backend: int | None = 1002


def _unmasked(
    opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, length: int | None = None
) -> bytes:
    return frame(opcode, payload, fin=fin, rsv=rsv, mask=False, length=length)


FROM_BACKEND: Final[dict[str, FromBackend]] = {
    "masked-text": FromBackend(frame(TEXT, b"hi")),
    "masked-close": FromBackend(frame(CLOSE, close_body(1000))),
    **{f"reserved-opcode-{op:x}": FromBackend(_unmasked(op, b"x")) for op in (3, 4, 5, 6, 7)},
    **{f"reserved-opcode-{op:x}": FromBackend(_unmasked(op)) for op in (0xB, 0xC, 0xD, 0xE, 0xF)},
    "rsv1-on-text-without-extension": FromBackend(_unmasked(TEXT, b"hi", rsv=RSV1)),
    "rsv2-on-binary": FromBackend(_unmasked(BINARY, b"hi", rsv=RSV2)),
    "rsv3-on-ping": FromBackend(_unmasked(PING, rsv=RSV3)),
    "fragmented-ping": FromBackend(_unmasked(PING, b"p", fin=False)),
    "ping-of-126-bytes": FromBackend(_unmasked(PING, b"p" * 126)),
    "continuation-without-start": FromBackend(_unmasked(0x0, b"lost")),
    "text-inside-fragmented-message": FromBackend(
        _unmasked(TEXT, b"a", fin=False) + _unmasked(TEXT, b"b")
    ),
    "close-body-of-1-byte": FromBackend(_unmasked(CLOSE, b"\x03")),
    **{
        f"close-code-{code}": FromBackend(_unmasked(CLOSE, close_body(code)))
        for code in (0, 999, 1004, 1005, 1006, 1015, 2000, 5000)
    },
    "close-reason-not-utf8": FromBackend(_unmasked(CLOSE, close_body(1000, b"\xff")), 1011, 1007),
    "length-with-top-bit": FromBackend(_unmasked(BINARY, length=1 << 63)),
    "length-one-over-max-message": FromBackend(_unmasked(TEXT, length=MAX_MESSAGE + 1), 1001, 1009),
    # A backend's own close is relayed; the client's answer goes back to it.
    "valid-close-4001": FromBackend(_unmasked(CLOSE, close_body(4001, b"bye")), 4001, 1000),
    "valid-close-1000": FromBackend(_unmasked(CLOSE, close_body(1000)), 1000, 1000),
    "connection-dropped": FromBackend(b"", 1011, None),
}


async def _hear_close(stream: trio.SocketStream) -> int | None:
    """As a backend: the code of the close frame the proxy sends (answered), or None at EOF."""
    peer = Peer(stream, client=False)
    while (received := await peer.receive()) is not None:
        if received.opcode == CLOSE:
            assert isinstance(received.payload, tuple)
            code = int(received.payload[0])
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await peer.send(_unmasked(CLOSE, close_body(1000)))
            return code
    return None


@pytest.mark.parametrize("case", FROM_BACKEND.values(), ids=FROM_BACKEND.keys())
async def test_hostile_backend_frames(front: Front, witness: Witness, case: FromBackend) -> None:
    async def misbehave(stream: trio.SocketStream) -> None:
        await accept_upgrade(stream, case.data)
        if case.backend is not None:
            front.hostile.heard.append(await _hear_close(stream))

    front.hostile.act = misbehave
    with trio.fail_after(CAP):
        peer = await open_raw(front.port, b"/hostile")
        async with peer.stream:
            assert await close_heard(peer) == case.client
        await front.hostile.done.wait()
    assert front.hostile.heard == ([] if case.backend is None else [case.backend])
    await witness.check()


# ------------------------------------------------------------------------------ bad backend answers


@dataclass(frozen=True)
class Answer:
    """What a backend answers to the upgrade (`answer(key)`), sent in `pieces` of that size;
    the status the client gets, and for a backend's own refusal the body passed on."""

    answer: Callable[[bytes], bytes]
    status: int
    body: bytes | None = None  # None: the proxy's own one-line refusal
    pieces: int = 0


def _switching(*headers: bytes, accept: bool = True, pad: int = 0) -> Callable[[bytes], bytes]:
    """A 101 with the usual headers (minus a wrong Accept if not `accept`), `headers` added and
    `pad` bytes of filler header lines of 1,000 bytes."""

    def answer(key: bytes) -> bytes:
        lines = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket", b"Connection: Upgrade"]
        lines.append(b"Sec-WebSocket-Accept: " + (accept_value(key) if accept else b"d3Jvbmc="))
        lines += headers
        lines += [b"X-Pad-%05d: " % i + b"p" * 986 for i in range(pad // 1000)]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    return answer


def _fixed(data: bytes) -> Callable[[bytes], bytes]:
    return lambda key: data


ANSWERS: Final[dict[str, Answer]] = {
    "status-200-is-passed-on": Answer(
        _fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), 200, b"hello"
    ),
    "status-401-is-passed-on": Answer(
        _fixed(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nwho?"), 401, b"who?"
    ),
    "status-403-chunked-is-passed-on": Answer(
        _fixed(b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n"),
        403,
        b"no",
    ),
    "status-401-in-pieces-is-passed-on": Answer(
        _fixed(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nwho?"),
        401,
        b"who?",
        pieces=7,
    ),
    "refusal-body-over-64KiB": Answer(
        _fixed(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 70000\r\n\r\n" + b"n" * 70000), 502
    ),
    "100-continue-then-101": Answer(
        lambda key: b"HTTP/1.1 100 Continue\r\n\r\n" + _switching()(key), 101
    ),
    "no-upgrade-header": Answer(
        lambda key: _switching()(key).replace(b"Upgrade: websocket\r\n", b""), 502
    ),
    "upgrade-to-something-else": Answer(
        lambda key: _switching()(key).replace(b"Upgrade: websocket", b"Upgrade: h2c"), 502
    ),
    "no-connection-header": Answer(
        lambda key: _switching()(key).replace(b"Connection: Upgrade\r\n", b""), 502
    ),
    "accept-missing": Answer(
        lambda key: _switching()(key).replace(b"Sec-WebSocket-Accept", b"X-Nothing"), 502
    ),
    "accept-wrong": Answer(_switching(accept=False), 502),
    "accept-twice": Answer(
        lambda key: _switching(b"Sec-WebSocket-Accept: " + accept_value(key))(key), 502
    ),
    "subprotocol-not-offered": Answer(_switching(b"Sec-WebSocket-Protocol: chat"), 502),
    "extension-not-offered": Answer(_switching(b"Sec-WebSocket-Extensions: x-evil"), 502),
    "deflate-not-offered": Answer(_switching(b"Sec-WebSocket-Extensions: permessage-deflate"), 502),
    "nul-in-a-header": Answer(_switching(b"X-Evil: a\0b"), 502),
    "garbage": Answer(_fixed(b"\x00\xffnot HTTP at all\r\n\r\n"), 502),
    "status-line-only-then-close": Answer(_fixed(b"HTTP/1.1 101 Switching Protocols\r\n"), 502),
    "close-before-answering": Answer(_fixed(b""), 502),
    "head-8KiB-in-pieces": Answer(_switching(pad=8000), 101, pieces=4096),
    "head-over-max-header-size-at-once": Answer(_switching(pad=20_000), 502),
    "head-over-max-header-size-in-pieces": Answer(_switching(pad=20_000), 502, pieces=4096),
    "head-of-100KiB-at-once": Answer(_switching(pad=100_000), 502),
    "head-of-100KiB-in-pieces": Answer(_switching(pad=100_000), 502, pieces=4096),
}


async def _read_request(stream: trio.SocketStream) -> bytes:
    """As a backend: the proxy's request head; the Sec-WebSocket-Key it carries."""
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return b""
        request += chunk
    return next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )


@pytest.mark.parametrize("case", ANSWERS.values(), ids=ANSWERS.keys())
async def test_hostile_backend_answer(front: Front, witness: Witness, case: Answer) -> None:
    async def answer(stream: trio.SocketStream) -> None:
        key = await _read_request(stream)
        data = case.answer(key)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            if not case.pieces:
                await stream.send_all(data)
            for start in range(0, len(data) if case.pieces else 0, case.pieces or 1):
                await stream.send_all(data[start : start + case.pieces])
                await trio.sleep(0.002)  # so that the pieces arrive as separate segments
            if case.status == 101:
                front.hostile.heard.append(await _hear_close(stream))

    front.hostile.act = answer
    with trio.fail_after(CAP):
        reply = await ask(front.port, head(line=b"GET /hostile HTTP/1.1"))
        async with reply.stream:
            if case.status == 101:
                assert reply.status == 101
                peer = Peer(reply.stream, client=True)
                await peer.send(frame(CLOSE, close_body(1000)))
                assert (await peer.expect_close())[0] == 1000
                await front.hostile.done.wait()
                assert front.hostile.heard == [1000]
            elif case.body is not None:
                assert (reply.status, reply.body) == (case.status, case.body)
            else:
                assert_refusal(reply, case.status, addresses=(front.hostile_port,))
    await witness.check()


async def test_hostile_backend_that_never_answers_is_504(front: Front, witness: Witness) -> None:
    async def say_nothing(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    front.hostile.act = say_nothing
    with trio.fail_after(CAP):
        reply = await ask(front.port, head(line=b"GET /hostile HTTP/1.1"))
    assert_refusal(reply, 504, addresses=(front.hostile_port,))
    await witness.check()


async def test_hostile_backend_that_refuses_tcp_is_502_without_its_address(
    front: Front, witness: Witness
) -> None:
    with trio.fail_after(CAP):
        reply = await ask(front.port, head(line=b"GET /refused HTTP/1.1"))
    assert_refusal(reply, 502, addresses=(front.refused_port,))
    await witness.check()
