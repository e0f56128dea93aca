"""wsproxy/http1.py: the one writer of HTTP/1.1 answers, the one reader of h11 events, and the
client side of a plain GET."""

from __future__ import annotations

import h11
import pytest
import trio
import trio.testing
from hypothesis import given, strategies as st

from wsproxy.handshake import Headers, PlainRequest, Reject
from wsproxy.http1 import (
    TEXT,
    NoAnswer,
    answer,
    next_event,
    plain_request,
    read_body,
    read_response,
    reason_of,
    refusal,
    response_head,
    send_get,
    send_post,
    switching_headers,
)


def _client_reads(wire: bytes, method: bytes = b"GET") -> list[h11.Event]:
    """What an h11 client that sent `method /` reads from `wire`, up to the end of the answer."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    events: list[h11.Event] = []
    while not isinstance(events[-1:] and events[-1], h11.EndOfMessage):
        event = client.next_event()
        assert isinstance(event, h11.Event), event
        events.append(event)
    assert client.their_state is h11.MUST_CLOSE
    return events


# --- writing answers ---------------------------------------------------------------------------


def test_http1_response_head_keeps_the_reason_and_the_header_order() -> None:
    head = response_head(429, b"Too Many Requests", ((b"retry-after", b"5"), (b"a", b"1")))
    assert head == b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 5\r\na: 1\r\n\r\n"


def test_http1_response_head_is_what_h11_reads_back() -> None:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.receive_data(response_head(200, b"OK", ((b"content-length", b"0"),)))
    event = conn.next_event()
    assert isinstance(event, h11.Response)
    assert (event.status_code, event.reason) == (200, b"OK")
    assert list(event.headers) == [(b"content-length", b"0")]


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (200, b"OK"),
        (405, b"Method Not Allowed"),
        (431, b"Request Header Fields Too Large"),
        (599, b""),
    ],
)
def test_http1_reason_of_is_the_standard_phrase_or_nothing(status: int, reason: bytes) -> None:
    assert reason_of(status) == reason


def test_http1_answer_frames_the_body_closes_and_puts_extra_headers_last() -> None:
    wire = answer(405, TEXT, b"no\n", extra=((b"allow", b"GET, HEAD"),))
    assert wire == (
        b"HTTP/1.1 405 Method Not Allowed\r\n"
        b"content-type: text/plain; charset=utf-8\r\n"
        b"content-length: 3\r\n"
        b"connection: close\r\n"
        b"allow: GET, HEAD\r\n"
        b"\r\n"
        b"no\n"
    )
    response, data, _ = _client_reads(wire)
    assert isinstance(response, h11.Response)
    assert isinstance(data, h11.Data)
    assert data.data == b"no\n"


def test_http1_answer_to_head_has_the_length_of_the_body_it_leaves_out() -> None:
    wire = answer(200, b"text/html", b"<p>hello</p>", head=True)
    assert wire.endswith(b"content-length: 12\r\nconnection: close\r\n\r\n")
    response, end = _client_reads(wire, b"HEAD")
    assert isinstance(response, h11.Response)
    assert isinstance(end, h11.EndOfMessage)


@pytest.mark.parametrize(
    ("reject", "first_line", "extra"),
    [
        (Reject(403, "Origin https://evil.test is not allowed"), b"HTTP/1.1 403 Forbidden", ()),
        (
            Reject(426, "only WebSocket version 13", ((b"sec-websocket-version", b"13"),)),
            b"HTTP/1.1 426 Upgrade Required",
            ((b"sec-websocket-version", b"13"),),
        ),
        (
            Reject(503, "at the limit", ((b"retry-after", b"1"),)),
            b"HTTP/1.1 503 Service Unavailable",
            ((b"retry-after", b"1"),),
        ),
        (Reject(599, "café closed"), b"HTTP/1.1 599 ", ()),
    ],
)
def test_http1_refusal_is_plain_text_and_closes(
    reject: Reject, first_line: bytes, extra: Headers
) -> None:
    body = (reject.reason + "\n").encode()
    wire = refusal(reject)
    head, _, rest = wire.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == first_line
    assert lines[1:] == [
        b"content-type: text/plain; charset=utf-8",
        b"content-length: %d" % len(body),
        b"connection: close",
        *[b"%s: %s" % pair for pair in extra],
    ]
    assert rest == body


def test_http1_refusal_goes_through_h11_to_a_client() -> None:
    reject = Reject(426, "only WebSocket version 13", ((b"sec-websocket-version", b"13"),))
    response, data, end = _client_reads(refusal(reject))
    assert isinstance(response, h11.Response)
    assert response.status_code == 426
    assert (b"sec-websocket-version", b"13") in list(response.headers)
    assert isinstance(data, h11.Data)
    assert data.data == b"only WebSocket version 13\n"
    assert isinstance(end, h11.EndOfMessage)


# --- reading events ----------------------------------------------------------------------------


async def test_http1_next_event_reads_until_h11_has_an_event() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    conn = h11.Connection(h11.SERVER)
    for part in (b"GET /x HT", b"TP/1.1\r\nHost: a\r", b"\n\r\n"):
        await theirs.send_all(part)
    request = await next_event(ours, conn)
    assert isinstance(request, h11.Request)
    assert request.target == b"/x"
    assert isinstance(await next_event(ours, conn), h11.EndOfMessage)


async def test_http1_next_event_gives_h11s_own_event_for_a_peer_that_left() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    await theirs.aclose()
    assert isinstance(await next_event(ours, h11.Connection(h11.SERVER)), h11.ConnectionClosed)


# --- the client side of a GET ------------------------------------------------------------------


async def _get(answer_bytes: bytes) -> tuple[h11.Connection, bytes, trio.abc.Stream]:
    """A GET sent over a memory stream whose peer answers `answer_bytes` (then closes)."""
    ours, theirs = trio.testing.memory_stream_pair()
    conn = await send_get(ours, b"/status", ((b"Host", b"worker"),))
    sent = bytes(await theirs.receive_some(65536))
    await theirs.send_all(answer_bytes)
    await theirs.aclose()
    return conn, sent, ours


async def test_http1_send_get_writes_one_bodiless_request() -> None:
    _, sent, _ = await _get(b"")
    assert sent == b"GET /status HTTP/1.1\r\nHost: worker\r\n\r\n"


async def test_http1_send_post_writes_one_request_with_its_body_framed() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    conn = await send_post(ours, b"/sessions/a-1/close", ((b"Host", b"worker"),), b'{"code": 4000}')
    sent = bytes(await theirs.receive_some(65536))
    assert sent == (
        b"POST /sessions/a-1/close HTTP/1.1\r\nHost: worker\r\ncontent-length: 14\r\n\r\n"
        b'{"code": 4000}'
    )
    await theirs.send_all(answer(200, b"application/json", b"{}"))
    assert (await read_response(ours, conn)).status_code == 200


async def test_http1_read_response_and_body_of_a_whole_answer() -> None:
    conn, _, stream = await _get(answer(200, b"application/json", b'{"a": 1}'))
    response = await read_response(stream, conn)
    assert (response.status_code, response.reason) == (200, b"OK")
    assert await read_body(stream, conn) == b'{"a": 1}'


async def test_http1_read_body_of_an_answer_framed_by_its_close() -> None:
    conn, _, stream = await _get(b"HTTP/1.1 200 OK\r\n\r\nall of it")
    await read_response(stream, conn)
    assert await read_body(stream, conn) == b"all of it"


async def test_http1_read_body_cut_short_is_a_protocol_error() -> None:
    conn, _, stream = await _get(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\npart")
    await read_response(stream, conn)
    with pytest.raises(h11.RemoteProtocolError):
        await read_body(stream, conn)


async def test_http1_read_response_skips_informational_answers() -> None:
    conn, _, stream = await _get(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert (await read_response(stream, conn)).status_code == 204


async def test_http1_read_response_of_a_peer_that_closed_at_once_is_no_answer() -> None:
    conn, _, stream = await _get(b"")
    with pytest.raises(NoAnswer):
        await read_response(stream, conn)


@pytest.mark.parametrize(
    "answer_bytes",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",  # not HTTP
        b"HTTP/1.1 200 O",  # cut in its head
        b"HTTP/1.1 100 Continue\r\n\r\n",  # an interim answer, then nothing
    ],
    ids=["garbage", "cut", "interim-only"],
)
async def test_http1_read_response_of_anything_else_is_a_protocol_error(
    answer_bytes: bytes,
) -> None:
    conn, _, stream = await _get(answer_bytes)
    with pytest.raises(h11.RemoteProtocolError):
        await read_response(stream, conn)


# ---------------------------------------------------------------- switching_headers


def _h11_reads(head: bytes) -> h11.Event | None:
    """What an h11 client that sent an upgrade request reads from `head`; None if it refuses."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(
        h11.Request(
            method="GET",
            target="/",
            headers=[("host", "x"), ("upgrade", "websocket"), ("connection", "upgrade")],
        )
    )
    conn.send(h11.EndOfMessage())
    conn.receive_data(head)
    try:
        return conn.next_event()  # type: ignore[return-value]
    except h11.RemoteProtocolError:
        return None


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 101\r\n\r\n",  # no reason, no headers
        b"HTTP/1.1 101 \r\nX-A:b\r\nX-B: \t spaced  out \t\r\nX-Empty:\r\n\r\n",
        b"HTTP/1.1 101 Ok\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nX-Latin: \xe9t\xe9\r\n\r\n",
    ],
    ids=["plain", "bare", "whitespace", "repeated-and-obs-text"],
)
def test_http1_switching_headers_are_h11s_for_a_plain_101(head: bytes) -> None:
    event = _h11_reads(head)
    assert isinstance(event, h11.InformationalResponse)
    assert event.status_code == 101
    assert switching_headers(head) == tuple(event.headers)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",  # another status
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.0 101 Switching Protocols\r\n\r\n",  # another version
        b"HTTP/1.1 101 Switching\r\nX: a\r\n  folded\r\n\r\n",  # obs-fold: h11 joins it
        b"HTTP/1.1 101 Switching\r\nX: a\nY: b\r\n\r\n",  # bare LF
        b"HTTP/1.1 101 Switching\r\nContent-Length: 0\r\n\r\n",  # framing: h11 checks it
        b"HTTP/1.1 101 Switching\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 101 Switching\r\nBad Name: x\r\n\r\n",  # not a header line at all
        b"HTTP/1.1 101 Switching\r\nX: a\x00b\r\n\r\n",
        b"\r\nHTTP/1.1 101 Switching\r\n\r\n",
    ],
    ids=[
        "200",
        "100",
        "http-1.0",
        "folded",
        "bare-lf",
        "content-length",
        "transfer-encoding",
        "bad-name",
        "nul",
        "leading-blank",
    ],
)
def test_http1_switching_headers_leave_any_other_head_to_h11(head: bytes) -> None:
    assert switching_headers(head) is None


_LINE_BYTES = st.sampled_from([b"a", b"Z", b"-", b":", b" ", b"\t", b"\xe9", b"\x00", b"\n", b"1"])


@given(st.lists(st.lists(_LINE_BYTES, max_size=12).map(b"".join), max_size=6))
def test_http1_switching_headers_never_accept_what_h11_would_not(lines: list[bytes]) -> None:
    """Any head the fast reader accepts, h11 reads as the same 101 with the same headers."""
    head = b"HTTP/1.1 101 Switching Protocols\r\n" + b"".join(line + b"\r\n" for line in lines)
    head += b"\r\n"
    headers = switching_headers(head)
    if headers is not None:
        event = _h11_reads(head)
        assert isinstance(event, h11.InformationalResponse)
        assert tuple(event.headers) == headers


# ---------------------------------------------------------------- plain_request


def _h11_request(head: bytes) -> h11.Request | None:
    """What an h11 server reads from `head`; None if it refuses it or reads no request."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    return event if isinstance(event, h11.Request) else None


def _as_tuple(request: h11.Request | PlainRequest) -> tuple[bytes, bytes, bytes, Headers]:
    return request.method, request.target, request.http_version, tuple(request.headers)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /chat?room=1 HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost:a\r\n\r\n",
        b"GET /#frag%20 HTTP/1.1\r\nX-Spaced: \t a  b \t\r\nHOST: a\r\nX-Empty:\r\n\r\n",
    ],
    ids=["upgrade", "other-method", "whitespace"],
)
def test_http1_plain_request_is_h11s_request(head: bytes) -> None:
    expected = _h11_request(head)
    plain = plain_request(head)
    assert expected is not None
    assert plain is not None
    assert _as_tuple(plain) == _as_tuple(expected)


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",  # another version
        b"GET / HTTP/1.1\r\n\r\n",  # no Host: h11's own 400
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # several
        b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",  # bare LF
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",  # two spaces
        b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
        b"G\xe9T / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
    ids=[
        "http-1.0",
        "no-host",
        "two-hosts",
        "folded",
        "bare-lf",
        "content-length",
        "transfer-encoding",
        "double-space",
        "del-in-target",
        "obs-text-method",
        "leading-blank",
    ],
)
def test_http1_plain_request_leaves_any_other_head_to_h11(head: bytes) -> None:
    assert plain_request(head) is None


_REQUEST_BYTES = st.sampled_from(
    [b"G", b"/", b" ", b"\t", b":", b"h", b"o", b"s", b"t", b"\xe9", b"\x00", b"\n", b"\x7f"]
)


@given(
    st.lists(_REQUEST_BYTES, max_size=8).map(b"".join),
    st.lists(st.lists(_REQUEST_BYTES, max_size=10).map(b"".join), max_size=5),
)
def test_http1_plain_request_never_accepts_what_h11_would_not(
    target: bytes, lines: list[bytes]
) -> None:
    """Any head the fast reader accepts, h11 reads as the same request."""
    head = b"GET /" + target + b" HTTP/1.1\r\nHost: a\r\n"
    head += b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    plain = plain_request(head)
    if plain is not None:
        expected = _h11_request(head)
        assert expected is not None
        assert _as_tuple(plain) == _as_tuple(expected)
