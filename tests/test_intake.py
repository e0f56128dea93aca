"""Reading a client's PROXY header and request head, and refusing it, on in-memory streams."""

from __future__ import annotations

from typing import Final

import h11
import pytest
import trio
import trio.testing
from hypothesis import given, settings, strategies as st

from wsproxy.config import Security
from wsproxy.handshake import Reject, UpgradeRequest, host_problem, judge_request
from wsproxy.intake import (
    HeadTooLarge,
    HeadTooSlow,
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
        assert await read_head(await fed(b"GET /"), 1024) == (None, b"GET /")
        assert await read_head(await fed(), 1024) == (None, b"")


async def test_intake_read_head_not_whole_by_the_deadline_is_too_slow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stream = await fed(HEAD[:10], close=False)
    deadline = trio.current_time() + 5
    with pytest.raises(HeadTooSlow):
        await read_head(stream, 1024, deadline=deadline)
    assert trio.current_time() == deadline


async def test_intake_read_head_whole_at_once_is_read_whatever_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The deadline bounds waiting only: a head already whole (in the early bytes, or in what a
    socket holds) is returned without a wait, even once its deadline has passed."""
    past = trio.current_time() - 1
    with trio.testing.assert_no_checkpoints():
        assert await read_head(await fed(), 1024, HEAD + b"\x81", deadline=past) == (HEAD, b"\x81")
    left, right = trio.socket.socketpair()
    async with trio.SocketStream(left) as ours, trio.SocketStream(right) as peer:
        await peer.send_all(HEAD)
        with trio.testing.assert_no_checkpoints():
            assert await read_head(ours, 1024, arrived=True, deadline=past) == (HEAD, b"")


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
async def test_intake_read_head_of_a_socket_that_arrived_reads_before_waiting(split: bool) -> None:
    """A client's request is read at once when it is there (no wait, no checkpoint); what is
    not there yet is waited for, and the bytes behind the head are returned."""
    left, right = trio.socket.socketpair()
    async with trio.SocketStream(left) as ours, trio.SocketStream(right) as peer:
        with trio.fail_after(CAP):
            await peer.send_all(HEAD[:10] if split else HEAD + b"\x81")
            if not split:
                with trio.testing.assert_no_checkpoints():
                    assert await read_head(ours, 1024, arrived=True) == (HEAD, b"\x81")
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.send_all, HEAD[10:])
                assert await read_head(ours, 1024, arrived=True) == (HEAD, b"")
            await peer.send_eof()
            assert await read_head(ours, 1024, arrived=True) == (None, b"")


def test_intake_parse_request_refuses_what_is_not_a_request() -> None:
    request = parse_request(HEAD)
    assert not isinstance(request, Reject)
    assert request.target == b"/"
    folded = parse_request(b"GET /f HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n")  # h11 reads it
    assert isinstance(folded, h11.Request)
    assert (folded.target, list(folded.headers)) == (b"/f", [(b"host", b"a"), (b"x", b"1 2")])
    refusal = parse_request(b"HTTP/1.1 200 OK\r\n\r\n")
    assert isinstance(refusal, Reject)
    assert refusal.status == 400


# --- any request head gets exactly one answer --------------------------------------------------

# SPEC's answers to a request head judged on its own (limits, routes and backends come later).
HEAD_STATUSES: Final = frozenset({400, 403, 426, 431})
SECURITIES: Final = (
    Security(allowed_origins=("https://app.example.com",)),
    Security(allowed_origins=("*",), require_origin=False),
)
PROPERTY = settings(database=None, deadline=None, max_examples=1000)

_FIELDS: Final = {
    b"Host": [b"proxy.example.com", b"proxy.example.com:8080", b"[::1]:9", b"a/b", b"", b"x@y"],
    b"Upgrade": [b"websocket", b"WebSocket, h2c", b"h2c", b""],
    b"Connection": [b"Upgrade", b"keep-alive, upgrade", b"close"],
    b"Sec-WebSocket-Key": [b"dGhlIHNhbXBsZSBub25jZQ==", b"short", b""],
    b"Sec-WebSocket-Version": [b"13", b"8", b"13, 13"],
    b"Origin": [b"https://app.example.com", b"null", b"https://evil.test"],
    b"Content-Length": [b"0", b"5", b"-1", b"1, 2"],
    b"Transfer-Encoding": [b"chunked", b"gzip", b"identity"],
    b"Sec-WebSocket-Extensions": [b"permessage-deflate; client_max_window_bits", b'x; y="'],
}
_VALID: Final = [(name, values[0]) for name, values in list(_FIELDS.items())[:6]]
_LINE_ENDS: Final = [b"\n", b"\r", b"", b"\r\r\n", b"\n\r"]


def _mostly(draw: st.DrawFn, usual: bytes, others: list[bytes]) -> bytes:
    """`usual` about four times in five, else one of `others`."""
    return draw(st.sampled_from([*[usual] * 4 * len(others), *others]))


def _sometimes(draw: st.DrawFn) -> bool:
    return draw(st.sampled_from([False, False, False, True]))


@st.composite
def near_valid_heads(draw: st.DrawFn) -> bytes:
    """A request head built like a real upgrade, with some of its parts replaced by others or by
    random bytes, repeated or dropped, odd line ends, or one byte changed."""
    method = _mostly(draw, b"GET", [b"POST", b"get", b"CONNECT", b""])
    target = _mostly(draw, b"/chat?room=1", [b"*", b"http://h.test/", b"", b"/\x00"])
    version = _mostly(draw, b"HTTP/1.1", [b"HTTP/1.0", b"HTTP/2", b"HTTP/1", b"http/1.1"])
    fields = list(_VALID)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        name = draw(st.sampled_from([*_FIELDS, b"X-Any", b"Bad Name", b""]))
        value = draw(st.one_of(st.sampled_from(_FIELDS.get(name, [b"v"])), st.binary(max_size=20)))
        index = draw(st.integers(0, len(fields)))
        if draw(st.booleans()):
            fields.insert(index, (name, value))
        elif fields:
            fields[min(index, len(fields) - 1)] = (name, value)
    if _sometimes(draw):
        del fields[draw(st.integers(0, len(fields) - 1))]
    lines = [b"%s %s %s" % (method, target, version), *(b"%s: %s" % f for f in fields), b""]
    head = b"".join(line + _mostly(draw, b"\r\n", _LINE_ENDS) for line in lines)
    if _sometimes(draw):  # one byte changed somewhere
        at = draw(st.integers(0, len(head) - 1))
        head = head[:at] + bytes([draw(st.integers(0, 255))]) + head[at + 1 :]
    return head


def _judged(head: bytes, security: Security) -> UpgradeRequest | Reject:
    request = parse_request(head)
    return request if isinstance(request, Reject) else judge_request(request, security)


@PROPERTY
@given(
    st.one_of(st.binary(max_size=600), near_valid_heads(), st.binary().map(lambda b: HEAD + b)),
    st.sampled_from(SECURITIES),
)
def test_intake_any_request_head_gets_exactly_one_answer(head: bytes, security: Security) -> None:
    judged = _judged(head, security)
    if isinstance(judged, Reject):
        assert judged.status in HEAD_STATUSES
        assert judged.reason
    else:
        assert isinstance(judged, UpgradeRequest)
        assert host_problem(judged.host.encode()) is None  # routing sees only valid hosts


def test_intake_near_valid_heads_can_pass() -> None:
    """The generator is not all refusals: its unchanged head is a valid upgrade."""
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"%s: %s\r\n" % f for f in _VALID) + b"\r\n"
    assert isinstance(_judged(head, SECURITIES[0]), UpgradeRequest)


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",  # obsolete folding: "a b"
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h.example.test/evil\r\n\r\n",
    ],
    ids=["none", "twice-same", "twice", "twice-1.0", "nul", "folded", "space", "empty", "slash"],
)
def test_intake_missing_repeated_or_invalid_host_is_400(head: bytes) -> None:
    """h11 refuses a missing (HTTP/1.1) or repeated Host; `judge_request` the rest."""
    judged = _judged(head, SECURITIES[1])
    assert isinstance(judged, Reject)
    assert judged.status == 400


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
