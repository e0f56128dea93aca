"""HTTP/1.1 as wsproxy speaks it outside the WebSocket stream: one writer for the answers it
gives (refusals, pass-through, the 101, the admin endpoint, the echo backend, the demo page),
one reader of the next h11 event, and the client side of a plain GET or POST (health checks,
the supervisor asking its workers).

Invariants:
- An answer's head is written by `response_head` only: status line with the reason given, the
  headers in order as given, a blank line. `answer` adds the framing every whole answer of
  ours has: content-type, content-length, `connection: close`, then its extra headers, then the
  body (none for a HEAD request's answer).
- `next_event` never returns `h11.NEED_DATA`: it reads from the stream until h11 has an event;
  the peer closing yields h11's own `ConnectionClosed` or `RemoteProtocolError`.
- `read_response` tells a peer that closed before sending a byte (`NoAnswer`) from one whose
  bytes are not an answer (`h11.RemoteProtocolError`); informational answers are skipped.
- `switching_headers` and `plain_request` read only the plainest heads (an `HTTP/1.1 101`
  answer; an HTTP/1.1 request with one Host and no body framing) in h11's own grammar, and give
  exactly what h11 would; for any other head they return None and the caller asks h11, so what
  is accepted or refused never depends on which of the two read it.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

import h11
import trio

from wsproxy.handshake import Headers, PlainRequest, Reject

CHUNK: Final = 65536
TEXT: Final = b"text/plain; charset=utf-8"


class NoAnswer(Exception):
    """The peer closed the connection before it sent a byte of its answer."""


def reason_of(status: int) -> bytes:
    """The standard reason phrase of `status` (empty for a status HTTP does not name)."""
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def response_head(status: int, reason: bytes, headers: Headers) -> bytes:
    """The head of an HTTP/1.1 answer."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    lines += [b"%s: %s\r\n" % (name, value) for name, value in headers]
    lines.append(b"\r\n")
    return b"".join(lines)


def answer(
    status: int, content_type: bytes, body: bytes, *, extra: Headers = (), head: bool = False
) -> bytes:
    """A whole answer that ends the connection; `head`: the answer to a HEAD request."""
    headers = (
        (b"content-type", content_type),
        (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"),
        *extra,
    )
    return response_head(status, reason_of(status), headers) + (b"" if head else body)


def refusal(reject: Reject) -> bytes:
    """The whole answer refusing a client: its status and headers, its reason as plain text."""
    return answer(reject.status, TEXT, (reject.reason + "\n").encode("utf-8"), extra=reject.headers)


async def next_event(
    stream: trio.abc.ReceiveStream, conn: h11.Connection
) -> h11.Event | type[h11.PAUSED]:
    """The next event of `conn`, reading from `stream` as long as h11 needs data."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        conn.receive_data(bytes(await stream.receive_some(CHUNK)))


async def send_get(stream: trio.abc.SendStream, target: bytes, headers: Headers) -> h11.Connection:
    """Send `GET target` with `headers` (Host among them); the connection to read the answer
    with (`read_response`, `read_body`)."""
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method=b"GET", target=target, headers=list(headers))
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    return conn


async def send_post(
    stream: trio.abc.SendStream, target: bytes, headers: Headers, body: bytes
) -> h11.Connection:
    """Send `POST target` with `headers` (Host among them) and `body`; the connection to read
    the answer with, as `send_get`'s."""
    conn = h11.Connection(h11.CLIENT)
    framing = (b"content-length", b"%d" % len(body))
    request = h11.Request(method=b"POST", target=target, headers=[*headers, framing])
    data = conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
    await stream.send_all(data)
    return conn


async def read_response(stream: trio.abc.ReceiveStream, conn: h11.Connection) -> h11.Response:
    """The final answer's head to the request sent on `conn`. Raises `NoAnswer` if the peer
    closed before its first byte, `h11.RemoteProtocolError` for anything else but an answer."""
    informed = False  # an informational answer came, so the peer did answer
    while True:
        try:
            event = await next_event(stream, conn)
        except h11.RemoteProtocolError:
            if not informed and conn.trailing_data == (b"", True):
                raise NoAnswer from None
            raise
        if isinstance(event, h11.Response):
            return event
        informed = True  # an InformationalResponse: a client sees nothing else before the answer


async def read_body(stream: trio.abc.ReceiveStream, conn: h11.Connection) -> bytes:
    """The rest of the answer whose head `read_response` gave, to its end."""
    parts: list[bytes] = []
    while isinstance(event := await next_event(stream, conn), h11.Data):
        parts.append(bytes(event.data))
    if not isinstance(event, h11.EndOfMessage):  # h11 raises first; this keeps the loop finite
        raise h11.RemoteProtocolError("the answer ended before its body")
    return b"".join(parts)


# h11's grammar (h11/_abnf.py, RFC 9110 / 9112) for the lines `switching_headers` reads.
_FIELD_VCHAR: Final = rb"[^\x00\s]"
_HEADER_FIELD: Final = re.compile(
    rb"(?P<name>[-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*"
    rb"(?P<value>(?:" + _FIELD_VCHAR + rb"+(?:[ \t]+" + _FIELD_VCHAR + rb"+)*)?)[ \t]*"
)
_SWITCHING_LINE: Final = re.compile(rb"HTTP/1\.1 101(?: (?:[ \t]|" + _FIELD_VCHAR + rb")*)?")
_REQUEST_LINE: Final = re.compile(
    rb"(?P<method>[-!#$%&'*+.^_`|~0-9a-zA-Z]+) (?P<target>[\x21-\x7e]+) HTTP/1\.1"
)
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding"})  # h11 checks their values


def switching_headers(head: bytes) -> Headers | None:
    """The headers of `head` (an answer head, blank line included) if it is a plain
    `HTTP/1.1 101`, names lower-cased as h11 gives them; None for anything else (another
    status or version, a folded or bare-LF line, a framing header), which h11 must read."""
    lines = head[:-4].split(b"\r\n")
    if not _SWITCHING_LINE.fullmatch(lines[0]):
        return None
    return _plain_headers(lines)


def plain_request(head: bytes) -> PlainRequest | None:
    """`head` (a request head, blank line included) as h11 reads it, if it is a plain HTTP/1.1
    request with exactly one Host header; None for anything else (another version, a folded or
    bare-LF line, a framing header, no Host or several), which h11 must read."""
    lines = head[:-4].split(b"\r\n")
    start = _REQUEST_LINE.fullmatch(lines[0])
    if start is None:
        return None
    headers = _plain_headers(lines)
    if headers is None or [name for name, _ in headers].count(b"host") != 1:
        return None
    return PlainRequest(start["method"], start["target"], b"1.1", headers)


def _plain_headers(lines: list[bytes]) -> Headers | None:
    """The header lines after the first of `lines`, or None if one is not plain."""
    headers = []
    for line in lines[1:]:
        field = _HEADER_FIELD.fullmatch(line)
        if field is None:
            return None
        name = field["name"].lower()
        if name in _FRAMING:
            return None
        headers.append((name, field["value"]))
    return tuple(headers)
