"""wsproxy/http1.py: the one writer of HTTP/1.1 answers and the one reader of h11 events."""

from __future__ import annotations

import h11
import trio
import trio.testing

from wsproxy.http1 import next_event, response_head


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
