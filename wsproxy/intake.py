"""What a client sends before its session starts, and the HTTP answers that refuse it.

Invariants:
- A PROXY protocol header is read whole, with nothing read past its end that is not returned;
  a head (a client's request here, a backend's answer in `upstream`) is read up to its blank
  line and at most `limit` bytes, counted the same however the bytes arrive, and the bytes
  behind it are returned, as they belong to the WebSocket stream.
- A refusal is an HTTP/1.1 answer with a short plain-text body, then a polite close: send, shut
  our side, read what the client still sends for at most `LINGER` seconds, then close, so the
  client reads the answer instead of a reset.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import h11
import trio

from wsproxy.handshake import Reject, RequestHead, reject_from_h11_error
from wsproxy.http1 import plain_request, refusal, response_head
from wsproxy.proxyproto import ProxyHeader, ProxyProtocolError, parse as parse_proxy_header
from wsproxy.wire import SocketWire

if TYPE_CHECKING:  # upstream reads its backends' answers with `read_head`
    from wsproxy.upstream import Passthrough

_CHUNK: Final = 16384
LINGER: Final = 1.0  # seconds spent reading what a refused client still sends, before closing


class HeadTooLarge(Exception):
    """The head is longer than its limit (`max_header_size`)."""


class HeadTooSlow(Exception):
    """The head was not whole by its deadline (`handshake_timeout`)."""


async def read_proxy_header(
    stream: trio.abc.ReceiveStream, deadline: float
) -> tuple[tuple[str, int] | None, bytes] | Reject | None:
    """Read a PROXY protocol header: (the client it names, the bytes behind it); the refusal
    due (400 for no valid header, 408 for none by `deadline`); or None if the client left."""
    buffer = b""
    header: ProxyHeader | None = None
    with trio.move_on_at(deadline):
        try:
            while (header := parse_proxy_header(buffer)) is None:
                data = await stream.receive_some(_CHUNK)
                if not data:
                    return None
                buffer += data
        except ProxyProtocolError as exc:
            return Reject(400, str(exc))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
    if header is None:  # the deadline passed
        return Reject(408, "PROXY protocol header not received in time")
    return header.client, buffer[header.length :]


async def read_head(
    stream: trio.abc.ReceiveStream,
    limit: int,
    early: bytes = b"",
    *,
    arrived: bool = False,
    deadline: float = math.inf,
) -> tuple[bytes | None, bytes]:
    """Read up to the blank line that ends an HTTP head (a client's request, a backend's
    answer): (head, the bytes behind it), or (None, every byte read) if the peer closed first.

    `early` holds bytes of the head already read. A head longer than `limit` bytes, blank line
    included, raises `HeadTooLarge`, however its bytes are split into reads; one not whole by
    `deadline` raises `HeadTooSlow`. A socket is read through its wire (`wire.SocketWire`),
    without the layers of trio's socket stream; with `arrived` (the head was most likely sent
    before we asked, as a client's request is) what the socket already holds is read before any
    wait, and a head found whole there is returned without a wait or a cancel scope."""
    buffer = bytearray(early)
    found = _head_in(buffer, limit, 0)
    if found is not None:
        return found
    receive: Callable[[], Awaitable[bytes | bytearray]]
    if isinstance(stream, trio.SocketStream):
        wire = SocketWire(stream)
        receive = wire.receive
        first = wire.read_now() if arrived else None
        if first is not None:
            if not first:
                return None, bytes(buffer)
            found = _grown(buffer, first, limit)
            if found is not None:
                return found
    else:
        receive = functools.partial(stream.receive_some, _CHUNK)
    if deadline == math.inf:
        return await _read_rest(receive, buffer, limit)
    with trio.move_on_at(deadline):
        return await _read_rest(receive, buffer, limit)
    raise HeadTooSlow


async def _read_rest(
    receive: Callable[[], Awaitable[bytes | bytearray]], buffer: bytearray, limit: int
) -> tuple[bytes | None, bytes]:
    """`read_head` once `buffer` holds no whole head: read until it does."""
    while True:
        data = await receive()
        if not data:
            return None, bytes(buffer)
        found = _grown(buffer, data, limit)
        if found is not None:
            return found


def _grown(buffer: bytearray, data: bytes | bytearray, limit: int) -> tuple[bytes, bytes] | None:
    """Add `data` to `buffer`; the head and what follows it, if its blank line is there now
    (searched for only where it can newly end)."""
    searched_from = max(len(buffer) - 3, 0)
    buffer += data
    return _head_in(buffer, limit, searched_from)


def _head_in(buffer: bytearray, limit: int, searched_from: int) -> tuple[bytes, bytes] | None:
    """The head `buffer` begins with and the bytes behind it, if its blank line is there
    (at or after `searched_from`); `HeadTooLarge` if it is, or would be, over `limit`."""
    end = buffer.find(b"\r\n\r\n", searched_from)
    if end >= 0:
        if end + 4 > limit:
            raise HeadTooLarge
        return bytes(buffer[: end + 4]), bytes(buffer[end + 4 :])
    if len(buffer) > limit:
        raise HeadTooLarge
    return None


def parse_request(head: bytes) -> RequestHead | Reject:
    """A client's request head, parsed; or the refusal due to a malformed one."""
    plain = plain_request(head)
    if plain is not None:
        return plain
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=len(head) + 1)
    try:
        conn.receive_data(head)
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        return reject_from_h11_error(exc)
    if not isinstance(event, h11.Request):
        return Reject(400, "malformed request")
    return event


async def refuse(stream: trio.abc.Stream, reject: Reject) -> None:
    await _answer_and_close(stream, refusal(reject))


async def pass_through(stream: trio.abc.Stream, answer: Passthrough) -> None:
    headers = (
        *answer.headers,
        (b"content-length", b"%d" % len(answer.body)),
        (b"connection", b"close"),
    )
    await _answer_and_close(
        stream, response_head(answer.status, answer.reason, headers) + answer.body
    )


async def _answer_and_close(stream: trio.abc.Stream, data: bytes) -> None:
    """Send a final HTTP answer, then close politely so the client gets to read it (a TLS
    stream, which cannot half-close, ends with its close_notify instead)."""
    with trio.move_on_after(LINGER):
        try:
            await stream.send_all(data)
            if not isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.aclose()
                return
            await stream.send_eof()
            while await stream.receive_some(_CHUNK):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await trio.aclose_forcefully(stream)


class Replayed(trio.abc.Stream):
    """`stream`, whose first reads give back `early`: bytes already read from it (behind a
    PROXY header, before the TLS handshake that must see them)."""

    def __init__(self, stream: trio.abc.Stream, early: bytes) -> None:
        self._stream = stream
        self._early = early

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._early:
            size = len(self._early) if max_bytes is None else max_bytes
            data, self._early = self._early[:size], self._early[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()
