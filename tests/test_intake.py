"""Reading a client's PROXY header and request head, and refusing it, on in-memory streams."""

from __future__ import annotations

import h11
import pytest
import trio
import trio.testing

from wsproxy.handshake import Reject
from wsproxy.intake import (
    HeadTooLarge,
    Replayed,
    parse_request,
    read_head,
    read_proxy_header,
    refuse,
)

CAP = 10.0
HEAD = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


async def fed(*chunks: bytes, close: bool = True) -> trio.testing.MemoryReceiveStream:
    stream = trio.testing.MemoryReceiveStream()
    for chunk in chunks:
        stream.put_data(chunk)
    if close:
        stream.put_eof()
    return stream


async def test_intake_read_head_finds_the_head_in_the_early_bytes_without_reading() -> None:
    stream = await fed(close=False)  # reading from it would wait forever
    with trio.fail_after(CAP):
        assert await read_head(stream, 1024, HEAD + b"\x81") == (HEAD, b"\x81")


async def test_intake_read_head_joins_early_bytes_and_a_blank_line_split_over_reads() -> None:
    stream = await fed(HEAD[10:-2], HEAD[-2:] + b"rest")
    with trio.fail_after(CAP):
        assert await read_head(stream, 1024, HEAD[:10]) == (HEAD, b"rest")


@pytest.mark.parametrize(
    ("chunks", "limit"),
    [((HEAD,), len(HEAD) - 1), ((b"x" * 600,), 512), ((b"GET / HTTP/1.1\r\n" + b"x" * 600,), 512)],
)
async def test_intake_read_head_over_the_limit(chunks: tuple[bytes, ...], limit: int) -> None:
    stream = await fed(*chunks)
    with trio.fail_after(CAP), pytest.raises(HeadTooLarge):
        await read_head(stream, limit)


async def test_intake_read_head_client_left_early() -> None:
    with trio.fail_after(CAP):
        assert await read_head(await fed(b"GET /"), 1024) == (None, b"")


def test_intake_parse_request_refuses_what_is_not_a_request() -> None:
    request = parse_request(HEAD)
    assert isinstance(request, h11.Request)
    assert request.target == b"/"
    refusal = parse_request(b"HTTP/1.1 200 OK\r\n\r\n")
    assert isinstance(refusal, Reject)
    assert refusal.status == 400


class _Sink(trio.abc.HalfCloseableStream):
    """A stream whose reads come from a script and whose writes may fail."""

    def __init__(self, *, broken: bool) -> None:
        self.broken = broken
        self.sent = b""
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.broken:
            raise trio.BrokenResourceError
        self.sent += bytes(data)

    async def wait_send_all_might_not_block(self) -> None:
        pass

    async def send_eof(self) -> None:
        pass

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return b""

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.parametrize("broken", [False, True])
async def test_intake_refuse_answers_then_closes_even_if_the_client_is_gone(broken: bool) -> None:
    sink = _Sink(broken=broken)
    with trio.fail_after(CAP):
        await refuse(sink, Reject(404, "no route"))
    assert sink.closed
    assert sink.sent.startswith(b"HTTP/1.1 404 Not Found\r\n") != broken


async def test_intake_read_proxy_header_outcomes() -> None:
    with trio.fail_after(CAP):
        whole = await read_proxy_header(
            await fed(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nGET"), trio.current_time() + 5
        )
        assert whole == (("192.0.2.1", 1), b"GET")
        refused = await read_proxy_header(await fed(b"GET / HTTP/1.1\r\n"), trio.current_time() + 5)
        assert isinstance(refused, Reject)
        assert refused.status == 400
        assert await read_proxy_header(await fed(b"PROXY TCP4"), trio.current_time() + 5) is None


async def test_replayed_gives_back_the_early_bytes_before_the_stream() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    replayed = Replayed(theirs, b"abcdef")
    await ours.send_all(b"later")
    assert await replayed.receive_some(4) == b"abcd"
    assert await replayed.receive_some() == b"ef"
    assert await replayed.receive_some() == b"later"
    await replayed.wait_send_all_might_not_block()
    await replayed.send_all(b"out")
    assert await ours.receive_some() == b"out"
    await replayed.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await theirs.send_all(b"x")


async def test_refuse_over_a_stream_that_cannot_half_close_ends_with_close() -> None:
    """A TLS stream has no send_eof: the answer goes out, then the stream is closed."""
    ours, theirs = trio.testing.memory_stream_pair()
    whole = Replayed(theirs, b"")  # a plain Stream, as trio.SSLStream is
    with trio.fail_after(CAP):
        await refuse(whole, Reject(403, "no"))
        answer = b""
        while chunk := await ours.receive_some():
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
