"""The relay on in-memory streams and virtual time: forwarding, closes, keepalive, idle, limits.

Every test runs on the autojump clock under an absolute `trio.fail_after` cap (`CAP` virtual
seconds, above every instant the test asserts), so a hang fails at once instead of stalling.
Faults are injected by wrapping the proxy's end of a leg (`FaultyStream`) or by pairing it with
a `lockstep_stream_pair`, whose sends block until the other end reads.

The `rig` fixture runs each test twice: on trio's memory streams, where every write takes the
relay's locked path, and on modelled sockets (tests/memsocket.py), which the relay writes to as
to a real socket, so whole frames take the immediate write that skips the lock.
"""

from __future__ import annotations

import functools
import itertools
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Final

import pytest
import trio
import trio.testing
from wsproto.frame_protocol import Frame, FrameProtocol, Opcode

from tests.helpers import Peer, the_parker
from tests.memsocket import SocketEnd, socket_pair
from wsproxy import closes, timers
from wsproxy.closes import Close, Side
from wsproxy.config import (
    Config,
    Keepalive,
    Limits,
    Listener,
    PerSession,
    Pool,
    Route,
    Security,
    Server,
    Timeouts,
)
from wsproxy.frames import OP_CLOSE, Buffer, control_frame
from wsproxy.legs import Leg
from wsproxy.parking import PARK_AFTER
from wsproxy.relay import CLOSE_TIMEOUT, Session
from wsproxy.wire import ImmediateStream, ImmediateWire

INTERVAL: Final = 20.0
TIMEOUT: Final = 10.0
IDLE: Final = 600.0
CAP: Final = 100.0  # virtual seconds; above INTERVAL + TIMEOUT + CLOSE_TIMEOUT and every window

# A ping from the test's client (masked), and a data frame as a backend must never send it.
CLIENT_PING: Final = bytes(FrameProtocol(client=True, extensions=[]).ping(b"peer"))
MASKED_FROM_BACKEND: Final = bytes(FrameProtocol(client=True, extensions=[]).send_data("m", True))

Pair = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]


def make_config(**changes: object) -> Config:
    config = Config(
        listen=(Listener(address="127.0.0.1:0", host="127.0.0.1", port=0),),
        security=Security(allowed_origins=("*",), max_message_size=1000),
        timeouts=Timeouts(connect=5.0, idle=IDLE),
        keepalive=Keepalive(interval=INTERVAL, timeout=TIMEOUT),
        routes=(Route(pool="main"),),
        pools={"main": Pool(name="main", servers=(Server(url="ws://x:1", host="x", port=1),))},
    )
    return replace(config, **changes)  # type: ignore[arg-type]


class FaultyStream(trio.abc.Stream):
    """The proxy's end of a leg, passed through untouched until `broken` makes sends fail.

    A broken stream's `send_all` raises `BrokenResourceError`, as a reset connection does.
    """

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner: trio.abc.Stream = inner
        self.broken = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.broken:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("connection reset (injected)")
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class FaultyImmediateStream(FaultyStream, ImmediateStream):
    """A `FaultyStream` around a modelled socket's end: the relay writes to it as to a socket,
    and a broken one refuses the immediate write too, as a reset socket does."""

    inner: SocketEnd

    def send_now(self, data: bytes | bytearray | memoryview) -> int:
        if self.broken:
            raise trio.BrokenResourceError("connection reset (injected)")
        return self.inner.send_now(data)


def faulty(inner: trio.abc.Stream) -> FaultyStream:
    return FaultyImmediateStream(inner) if isinstance(inner, SocketEnd) else FaultyStream(inner)


@dataclass
class Rig:
    session: Session
    client: Peer  # the test's client, talking to the proxy's client leg
    backend: Peer  # the test's backend, talking to the proxy's backend leg
    proxy_client: FaultyStream  # the proxy's end of the client leg
    proxy_backend: FaultyStream  # the proxy's end of the backend leg
    done: trio.Event


@pytest.fixture(params=[trio.testing.memory_stream_pair, socket_pair], ids=["memory", "socket"])
async def rig(nursery: trio.Nursery, request: pytest.FixtureRequest) -> Rig:
    """A session between two peers, on trio's memory streams (every write takes the locked
    path) or on modelled sockets (whole frames take the immediate path, as in production)."""
    pair: Pair = request.param
    return await start_rig(nursery, client_pair=pair, backend_pair=pair)


async def start_rig(
    nursery: trio.Nursery,
    config: Config | None = None,
    *,
    client_pair: Pair = trio.testing.memory_stream_pair,
    backend_pair: Pair = trio.testing.memory_stream_pair,
    client_prefix: bytes = b"",
    backend_prefix: bytes = b"",
) -> Rig:
    client_end, proxy_client_end = client_pair()
    backend_end, proxy_backend_end = backend_pair()
    proxy_client = faulty(proxy_client_end)
    proxy_backend = faulty(proxy_backend_end)
    session = Session(
        make_config() if config is None else config,
        proxy_client,
        proxy_backend,
        compressed=False,
        client_prefix=client_prefix,
        backend_prefix=backend_prefix,
    )
    done = trio.Event()

    async def run() -> None:
        await session.run()
        done.set()

    nursery.start_soon(run)
    return Rig(
        session,
        Peer(client_end, client=True),
        Peer(backend_end, client=False),
        proxy_client,
        proxy_backend,
        done,
    )


# ---------------------------------------------------------------- helpers for the test's peers


def payload_of(frame: Frame) -> bytes:
    assert isinstance(frame.payload, bytes | bytearray)
    return bytes(frame.payload)


async def next_frame(peer: Peer) -> Frame:
    frame = await peer.receive()
    assert frame is not None, "EOF where a frame was expected"
    return frame


async def payload_bytes(peer: Peer, size: int) -> bytes:
    """The payloads of the frames `peer` receives until `size` bytes have come (a message
    relayed in pieces arrives as several frames)."""
    received = b""
    while len(received) < size:
        received += payload_of(await next_frame(peer))
    return received


async def answer_pings(peer: Peer, seen: list[float], *, delay: float = 0.0) -> None:
    """Until EOF, note when each ping arrives and answer it `delay` seconds later."""
    while (frame := await peer.receive()) is not None:
        if frame.opcode is Opcode.PING:
            seen.append(trio.current_time())
            await trio.sleep(delay)
            try:
                await peer.pong(payload_of(frame))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the proxy dropped the leg meanwhile


async def close_answering_pings(peer: Peer) -> tuple[int, float]:
    """Read until a close frame, answering pings on the way; return its code and arrival time."""
    while True:
        frame = await next_frame(peer)
        if frame.opcode is Opcode.PING:
            await peer.pong(payload_of(frame))
        elif frame.opcode is Opcode.CLOSE:
            assert isinstance(frame.payload, tuple)
            return int(frame.payload[0]), trio.current_time()


async def read_raw_until(stream: trio.abc.Stream, deadline: float) -> list[tuple[float, bytes]]:
    """Every chunk that arrives before `deadline` (or EOF), with its arrival time."""
    chunks: list[tuple[float, bytes]] = []
    with trio.move_on_at(deadline):
        while data := await stream.receive_some(65536):
            chunks.append((trio.current_time(), bytes(data)))
    return chunks


async def read_raw_to_eof(stream: trio.abc.Stream) -> tuple[bytes, float]:
    """Everything the stream delivers until EOF, and the instant of the EOF."""
    received = bytearray()
    try:
        while data := await stream.receive_some(65536):
            received += data
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    return bytes(received), trio.current_time()


async def read_raw_until_size(stream: trio.abc.Stream, size: int) -> tuple[bytes, float]:
    """Exactly `size` bytes from the stream, and the instant the last of them arrived."""
    received = bytearray()
    while len(received) < size:
        data = await stream.receive_some(size - len(received))
        assert data, f"EOF after {len(received)} of {size} bytes"
        received += data
    return bytes(received), trio.current_time()


def arrival_of(chunks: list[tuple[float, bytes]], index: int) -> float:
    """When byte `index` of the concatenated chunks arrived."""
    for at, chunk in chunks:
        if index < len(chunk):
            return at
        index -= len(chunk)
    raise AssertionError("that byte never arrived")


# ---------------------------------------------------------------- forwarding


async def test_relay_messages_pass_both_ways_unchanged(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        await rig.client.send_text("hello")
        frame = await next_frame(rig.backend)
        assert (frame.opcode, frame.payload) == (Opcode.TEXT, "hello")
        await rig.backend.send_binary(b"\x00\x01\x02")
        frame = await next_frame(rig.client)
        assert (frame.opcode, frame.payload) == (Opcode.BINARY, b"\x00\x01\x02")
        assert rig.session.messages == (1, 1)


async def test_relay_fragments_and_interleaved_ping_keep_their_order(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        await rig.client.send_text("a", fin=False)
        await rig.client.ping(b"p")
        await rig.client.send_text("b", fin=True)
        kinds = []
        for _ in range(3):
            frame = await next_frame(rig.backend)
            kinds.append((frame.opcode, frame.payload, frame.message_finished))
        assert kinds == [
            (Opcode.TEXT, "a", False),
            (Opcode.PING, b"p", True),
            (Opcode.TEXT, "b", True),  # wsproto reports a continuation by its message's opcode
        ]


async def test_relay_bytes_behind_the_handshake_go_first(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        early = FrameProtocol(client=True, extensions=[]).send_data("early", True)
        rig = await start_rig(nursery, client_prefix=bytes(early))
        frame = await next_frame(rig.backend)
        assert frame.payload == "early"


async def test_relay_peer_pings_and_empty_pongs_pass_end_to_end(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """Regression (Autobahn 2.1): an empty pong was taken for the answer to our own ping."""
    with trio.fail_after(CAP):
        await rig.client.ping(b"")
        frame = await next_frame(rig.backend)
        assert (frame.opcode, frame.payload) == (Opcode.PING, b"")
        await rig.backend.pong(b"")
        frame = await next_frame(rig.client)
        assert (frame.opcode, frame.payload) == (Opcode.PONG, b"")


async def test_relay_counts_messages_and_bytes_in_on_both_legs(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """A message counts once however many fragments it has; control frames count only as bytes."""
    with trio.fail_after(CAP):
        c, b = rig.client.protocol, rig.backend.protocol
        from_client = [
            c.send_data("hel", False),
            c.ping(b"p"),
            c.send_data("lo", True),
            c.send_data(b"\x00" * 300, True),
        ]
        from_backend = [
            b.send_data("a", True),
            b.pong(b"p"),
            b.send_data(b"bb", False),
            b.send_data(b"cc", False),
            b.send_data(b"dd", True),
        ]
        for data in from_client:
            await rig.client.send(data)
        for data in from_backend:
            await rig.backend.send(data)
        for _ in from_client:
            await next_frame(rig.backend)
        for _ in from_backend:
            await next_frame(rig.client)
        assert rig.session.messages == (2, 2)
        assert rig.session.client.bytes_in == sum(map(len, from_client))
        assert rig.session.backend.bytes_in == sum(map(len, from_backend))


async def test_relay_slow_reader_holds_back_the_sender(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Back-pressure: with lockstep streams, nothing moves until the backend reads."""
    with trio.fail_after(CAP):
        rig = await start_rig(
            nursery,
            client_pair=trio.testing.lockstep_stream_pair,
            backend_pair=trio.testing.lockstep_stream_pair,
        )
        sent = trio.Event()

        async def send() -> None:
            await rig.client.send_text("first")
            await rig.client.send_text("second")
            sent.set()

        nursery.start_soon(send)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()
        for expected in ("first", "second"):
            frame = await next_frame(rig.backend)
            assert frame.payload == expected
        await sent.wait()


# ---------------------------------------------------------------- the immediate write path


class RecordingWire:
    """A leg's wire that notes each write the relay makes: ("now", size, taken) for an
    immediate write, ("all", size) for one through the locked path."""

    def __init__(self, wire: ImmediateWire) -> None:
        self.wire = wire
        self.writes: list[tuple[str, int] | tuple[str, int, int]] = []

    async def receive(self) -> bytes | bytearray:
        return await self.wire.receive()

    async def readable(self) -> None:
        await self.wire.readable()

    def read_now(self) -> bytes | bytearray | None:
        return self.wire.read_now()

    def send_now(self, data: bytes | bytearray | memoryview) -> int:
        taken = self.wire.send_now(data)
        self.writes.append(("now", len(data), taken))
        return taken

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(("all", len(data)))
        await self.wire.send_all(data)


async def socket_rig(nursery: trio.Nursery, capacity: int) -> tuple[Rig, RecordingWire]:
    """A rig on modelled sockets, the backend's buffering `capacity` bytes each way; the writes
    to the backend leg are recorded. (The session's pumps bind the wire when they first run,
    which is after this returns: `start_soon` runs nothing before the caller's next checkpoint.)"""
    rig = await start_rig(
        nursery, client_pair=socket_pair, backend_pair=functools.partial(socket_pair, capacity)
    )
    wire = rig.session.backend.wire
    assert isinstance(wire, ImmediateWire)
    recording = RecordingWire(wire)
    rig.session.backend.wire = recording  # type: ignore[assignment]
    return rig, recording


async def test_relay_whole_frames_take_the_immediate_write_and_part_frames_the_lock(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        rig, backend_wire = await socket_rig(nursery, capacity=65536)
        protocol = rig.client.protocol
        whole = [bytes(protocol.send_data(text, True)) for text in ("one", "two", "three")]
        split = bytes(protocol.send_data(b"x" * 900, True))
        for frame in whole:
            await rig.client.send(frame)
            await trio.testing.wait_all_tasks_blocked()  # one chunk per frame
        await rig.client.send(split[:300])
        await trio.testing.wait_all_tasks_blocked()
        await rig.client.send(split[300:])
        received, _ = await read_raw_until_size(rig.backend.stream, sum(map(len, whole)) + 900 + 8)
        assert received == b"".join(whole) + split
        assert backend_wire.writes == [
            *(("now", len(frame), len(frame)) for frame in whole),
            ("all", 300),  # the frame goes on: the lock is held to its last byte
            ("all", len(split) - 300),
        ]
        assert not rig.session.backend.busy()


async def test_relay_a_whole_close_frame_takes_the_immediate_write(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A close (a control frame, forwarded by `_forward_special`) goes like a whole data frame:
    at once, without the lock, when the kernel takes it all and nobody else writes."""
    with trio.fail_after(CAP):
        rig, backend_wire = await socket_rig(nursery, capacity=65536)
        close = bytes(rig.client.protocol.close(1000, "bye"))
        await rig.client.send(close)
        received, _ = await read_raw_until_size(rig.backend.stream, len(close))
        assert received == close
        assert backend_wire.writes == [("now", len(close), len(close))]
        assert rig.session.backend.sent_close


async def test_relay_partial_immediate_write_finishes_under_the_lock_in_order(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The backend's buffer takes 1000 bytes; it reads nothing until 5 s. The second frame is
    taken in part at once, the rest waits, holding the lock; the third waits behind it."""
    with trio.fail_after(CAP):
        rig, backend_wire = await socket_rig(nursery, capacity=1000)
        start = trio.current_time()
        protocol = rig.client.protocol
        frames = [bytes(protocol.send_data(bytes([n]) * 900, True)) for n in range(3)]
        for frame in frames:
            await rig.client.send(frame)
            await trio.testing.wait_all_tasks_blocked()  # one chunk per frame
        size = len(frames[0])  # 908: a 900-byte payload, 2 + 2 length bytes, 4 mask bytes
        rest = 2 * size - 1000
        assert backend_wire.writes == [
            ("now", size, size),
            ("now", size, 1000 - size),
            ("all", rest),
        ]
        assert rig.session.backend.busy()
        await trio.sleep(5)
        received, at = await read_raw_until_size(rig.backend.stream, 3 * size)
        assert received == b"".join(frames)
        assert at == start + 5
        assert backend_wire.writes[3][:2] == ("now", size)  # whole again: immediate first
        assert not rig.session.backend.busy()


async def test_relay_keepalive_ping_queued_behind_a_partial_immediate_write_lands_after_it(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The backend takes 512 bytes of a 908-byte frame at once and reads nothing until 25 s;
    its ping, due at 20 s, waits for the frame's last byte."""
    with trio.fail_after(CAP):
        rig, backend_wire = await socket_rig(nursery, capacity=512)
        start = trio.current_time()
        frame = bytes(rig.client.protocol.send_data(b"x" * 900, True))
        await rig.client.send(frame)
        await trio.sleep(25)
        chunks = await read_raw_until(rig.backend.stream, start + INTERVAL + TIMEOUT - 1)
        received = b"".join(chunk for _, chunk in chunks)
        assert received[: len(frame)] == frame
        parser = FrameProtocol(client=False, extensions=[])
        parser.receive_bytes(received[len(frame) :])
        [ping] = list(parser.received_frames())
        assert ping.opcode is Opcode.PING
        assert payload_of(ping).startswith(b"wsproxy keepalive")
        assert arrival_of(chunks, len(frame)) - start == 25
        assert backend_wire.writes[:2] == [("now", len(frame), 512), ("all", len(frame) - 512)]


# ---------------------------------------------------------------- closes


async def test_relay_close_handshake_passes_through(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        await rig.client.close(4001, "bye")
        assert await rig.backend.expect_close() == (4001, "bye")
        await rig.backend.close(4001, "bye")
        assert await rig.client.expect_close() == (4001, "bye")
        await rig.client.expect_eof()  # we are the client's server: we close TCP first
        await rig.backend.stream.aclose()  # the backend closes its side
        await rig.done.wait()
        assert rig.session.close is not None
        assert (rig.session.close.code, rig.session.closed_by) == (4001, Side.CLIENT)


async def test_relay_backend_lost_is_1011_to_client(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        await rig.backend.stream.aclose()
        code, reason = await rig.client.expect_close()
        assert code == 1011
        assert "backend" in reason
        await rig.client.close(1011)
        await rig.client.expect_eof()
        await rig.done.wait()
        assert rig.session.closed_by is Side.BACKEND


async def test_relay_client_lost_is_1001_to_backend(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        await rig.client.stream.aclose()
        assert (await rig.backend.expect_close())[0] == 1001
        await rig.backend.close(1001)
        await rig.backend.stream.aclose()  # a server closes TCP after the close handshake
        await rig.done.wait()
        assert rig.session.closed_by is Side.CLIENT


async def test_relay_peer_that_never_answers_close_is_dropped_after_close_timeout(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        await rig.client.close(1000)
        assert (await rig.backend.expect_close())[0] == 1000
        start = trio.current_time()
        await rig.done.wait()  # the backend never answers
        assert trio.current_time() - start == CLOSE_TIMEOUT


async def test_relay_data_sent_after_the_proxy_closed_is_not_forwarded(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """Once a leg has been sent a close nothing follows it, yet both close handshakes complete."""
    with trio.fail_after(CAP):
        start = trio.current_time()
        await rig.session.shutdown()
        assert (await next_frame(rig.client)).opcode is Opcode.CLOSE
        assert (await next_frame(rig.backend)).opcode is Opcode.CLOSE
        await rig.backend.send_text("late from the backend")
        await rig.client.send_text("late from the client")
        await rig.client.close(1001)
        await rig.backend.close(1001)
        await rig.client.expect_eof()  # its handshake is complete: we close its TCP, nothing else
        await rig.backend.expect_eof()  # it keeps its TCP open, so it is dropped at the timeout
        assert trio.current_time() == start + CLOSE_TIMEOUT


async def test_relay_shutdown_sends_1001_both_ways_and_ends_when_both_answer(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """The server's drain: `Session.shutdown()` from outside the session's own tasks."""
    with trio.fail_after(CAP):
        start = trio.current_time()
        await rig.session.shutdown()
        assert await rig.client.expect_close() == (1001, "proxy shutting down")
        assert await rig.backend.expect_close() == (1001, "proxy shutting down")
        await rig.client.close(1001)
        await rig.client.expect_eof()
        await rig.backend.close(1001)
        await rig.backend.stream.aclose()
        await rig.done.wait()
        assert trio.current_time() == start
        assert (rig.session.close, rig.session.closed_by) == (closes.SHUTDOWN, Side.PROXY)


@pytest.mark.parametrize("silent", [Side.CLIENT, Side.BACKEND], ids=["client", "backend"])
async def test_relay_shutdown_drops_a_peer_that_never_answers_after_close_timeout(
    rig: Rig, autojump_clock: trio.testing.MockClock, silent: Side
) -> None:
    with trio.fail_after(CAP):
        quiet, answering = (
            (rig.client, rig.backend) if silent is Side.CLIENT else (rig.backend, rig.client)
        )
        start = trio.current_time()
        await rig.session.shutdown()
        assert (await answering.expect_close())[0] == 1001
        await answering.close(1001)
        if answering is rig.client:
            await rig.client.expect_eof()
        else:
            await rig.backend.stream.aclose()
        assert await quiet.expect_close() == (1001, "proxy shutting down")
        await quiet.expect_eof()
        assert trio.current_time() == start + CLOSE_TIMEOUT
        await rig.done.wait()
        assert trio.current_time() == start + CLOSE_TIMEOUT


@pytest.mark.parametrize("dying", [Side.CLIENT, Side.BACKEND], ids=["client", "backend"])
async def test_relay_source_dying_mid_frame_drops_the_other_leg_without_a_close(
    rig: Rig, autojump_clock: trio.testing.MockClock, dying: Side
) -> None:
    """A close can't be framed inside a frame: the leg the half frame went to just gets EOF."""
    with trio.fail_after(CAP):
        source, target = (
            (rig.client, rig.backend) if dying is Side.CLIENT else (rig.backend, rig.client)
        )
        frame = bytes(source.protocol.send_data(b"x" * 900, True))
        await source.send(frame[:300])
        start = trio.current_time()
        await source.stream.aclose()
        data, eof_at = await read_raw_to_eof(target.stream)
        assert data == frame[:300]  # not a close frame's bytes spliced into the payload
        assert eof_at == start  # there is no close handshake to wait for


@pytest.mark.parametrize("source_side", [Side.CLIENT, Side.BACKEND], ids=["client", "backend"])
async def test_relay_shutdown_while_a_message_is_half_relayed_closes_after_its_end(
    rig: Rig, autojump_clock: trio.testing.MockClock, source_side: Side
) -> None:
    """The proxy's close waits for the frame under way: the rest of it is relayed whole, then
    the close follows, and the handshake completes (no drop after `CLOSE_TIMEOUT`)."""
    with trio.fail_after(CAP):
        source, target = (
            (rig.client, rig.backend) if source_side is Side.CLIENT else (rig.backend, rig.client)
        )
        frame = bytes(source.protocol.send_data(b"x" * 900, True))
        await source.send(frame[:300])
        await trio.testing.wait_all_tasks_blocked()
        rig.session.wake()  # nothing: not parked
        asked = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rig.session.shutdown)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(1)
            await source.send(frame[300:])
            assert await payload_bytes(target, 900) == b"x" * 900
            assert await target.expect_close() == (1001, "proxy shutting down")
            assert await source.expect_close() == (1001, "proxy shutting down")
            await target.close(1001)
            await source.close(1001)
            await rig.client.expect_eof()  # we are its server: its TCP closed by us
            await rig.backend.stream.aclose()  # the backend closes its own
        await rig.done.wait()
        assert trio.current_time() == asked + 1  # the handshakes completed: no timeout


@pytest.mark.parametrize("between", ["nothing", "ping"])
@pytest.mark.parametrize("source_side", [Side.CLIENT, Side.BACKEND], ids=["client", "backend"])
async def test_relay_close_waiting_on_a_stream_of_frames_goes_in_at_the_first_frame_end(
    rig: Rig, autojump_clock: trio.testing.MockClock, source_side: Side, between: str
) -> None:
    """A peer that streams frames back to back, so that no read ends on a frame boundary (with
    or without a control frame between them), does not keep the proxy's close out: the pump
    writes up to the end of the frame under way, lets the close in there, and relays nothing
    after it (no drop at `CLOSE_TIMEOUT`)."""
    with trio.fail_after(CAP):
        source, target = (
            (rig.client, rig.backend) if source_side is Side.CLIENT else (rig.backend, rig.client)
        )
        first = bytes(source.protocol.send_data(b"a" * 900, True))
        first += bytes(source.protocol.ping(b"hb")) if between == "ping" else b""
        second = bytes(source.protocol.send_data(b"b" * 900, True))
        await source.send(first[:300])
        await trio.testing.wait_all_tasks_blocked()
        asked = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rig.session.shutdown)
            await trio.testing.wait_all_tasks_blocked()
            await source.send(first[300:] + second[:300])  # no read ends on a frame end
            assert await payload_bytes(target, 900) == b"a" * 900
            assert await target.expect_close() == (1001, "proxy shutting down")
            assert trio.current_time() == asked  # at the first frame's end, not a timeout
            assert await source.expect_close() == (1001, "proxy shutting down")
            await source.send(second[300:])  # it finishes its frame, then answers the close
            await source.close(1001)
            await target.close(1001)
            await rig.client.expect_eof()
            await rig.backend.stream.aclose()
        await rig.done.wait()
        assert trio.current_time() == asked


# ---------------------------------------------------------------- failures and violations


@pytest.mark.parametrize("kind", ["data", "ping"])
@pytest.mark.parametrize(
    ("broken", "code"), [(Side.BACKEND, 1011), (Side.CLIENT, 1001)], ids=["backend", "client"]
)
async def test_relay_failed_send_loses_that_leg_and_closes_the_other(
    rig: Rig, autojump_clock: trio.testing.MockClock, broken: Side, code: int, kind: str
) -> None:
    """A frame we can't write to a leg means the leg is gone (1011 for a backend, 1001 a client)."""
    with trio.fail_after(CAP):
        if broken is Side.BACKEND:
            sender, victim, rig.proxy_backend.broken = rig.client, rig.backend, True
        else:
            sender, victim, rig.proxy_client.broken = rig.backend, rig.client, True
        start = trio.current_time()
        if kind == "data":
            await sender.send_text("hello")
        else:
            await sender.ping(b"hi")
        assert await sender.expect_close() == (code, closes.for_survivor_of(broken).reason)
        await victim.expect_eof()  # nothing reached it, and its connection is closed
        await sender.close(code)
        if sender is rig.client:
            await rig.client.expect_eof()
        else:
            await rig.backend.stream.aclose()
        await rig.done.wait()
        assert trio.current_time() == start
        assert rig.session.closed_by is broken


async def test_relay_close_that_cannot_be_sent_ends_the_session_at_once(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """The backend drops and the client's connection is broken too: nobody is left to wait for."""
    with trio.fail_after(CAP):
        rig.proxy_client.broken = True
        start = trio.current_time()
        await rig.backend.stream.aclose()
        await rig.done.wait()
        assert trio.current_time() == start
        assert rig.session.closed_by is Side.BACKEND
        await rig.client.expect_eof()


async def test_relay_unmasked_client_frame_is_1002(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        await rig.client.send(b"\x81\x02hi")  # a text frame without a mask
        assert (await rig.client.expect_close())[0] == 1002
        assert (await rig.backend.expect_close())[0] == 1001


@pytest.mark.parametrize(
    ("bad", "reason"),
    [(MASKED_FROM_BACKEND, "masked frame from a server"), (b"\x83\x00", "reserved opcode 3")],
    ids=["masked", "reserved-opcode"],
)
async def test_relay_backend_protocol_violation_is_1002_to_it_and_1011_to_client(
    rig: Rig, autojump_clock: trio.testing.MockClock, bad: bytes, reason: str
) -> None:
    with trio.fail_after(CAP):
        start = trio.current_time()
        await rig.backend.send(bytes(rig.backend.protocol.send_data("before", True)) + bad)
        frame = await next_frame(rig.client)  # the frames before the bad one still go through
        assert (frame.opcode, frame.payload) == (Opcode.TEXT, "before")
        assert await rig.client.expect_close() == (1011, "backend broke the WebSocket protocol")
        assert await rig.backend.expect_close() == (1002, reason)
        await rig.backend.expect_eof()  # dropped at once: a backend that broke the rules
        await rig.client.close(1011)
        await rig.client.expect_eof()
        await rig.done.wait()
        assert trio.current_time() == start
        assert (rig.session.close, rig.session.closed_by) == (Close(1002, reason), Side.PROXY)


async def test_relay_oversized_message_is_1009_to_sender_1001_to_other(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        await rig.backend.send_binary(b"x" * 1001)
        assert (await rig.backend.expect_close())[0] == 1009
        assert (await rig.client.expect_close())[0] == 1001


# Close frames RFC 6455 keeps off the wire (5.5.1, 7.4), the code their sender hears, and why.
INVALID_CLOSES = pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        (b"\x03", 1002, "close frame with a 1-byte payload"),
        (b"\x03\xed", 1002, "close code 1005 is not allowed on the wire"),
        (b"\x03\xeebye", 1002, "close code 1006 is not allowed on the wire"),
        (b"\x13\x88", 1002, "close code 5000 is not allowed on the wire"),
        (b"\x03\xe8\xff", 1007, "close reason is not valid UTF-8"),
    ],
    ids=["one-byte", "1005", "1006", "5000", "not-utf8"],
)


def frames_in(data: bytes, *, from_client: bool) -> list[tuple[Opcode, object]]:
    """The frames in raw bytes a peer received, parsed by wsproto (which refuses invalid closes)."""
    protocol = FrameProtocol(client=not from_client, extensions=[])
    protocol.receive_bytes(data)
    return [(frame.opcode, frame.payload) for frame in protocol.received_frames()]


@INVALID_CLOSES
async def test_relay_client_invalid_close_is_its_violation_and_never_reaches_the_backend(
    rig: Rig, autojump_clock: trio.testing.MockClock, payload: bytes, code: int, reason: str
) -> None:
    """The client hears 1002 (1007 for a bad reason) and is dropped; the backend hears 1001."""
    with trio.fail_after(CAP):
        start = trio.current_time()
        bad = control_frame(OP_CLOSE, payload, b"\x01\x02\x03\x04")
        await rig.client.send(bytes(rig.client.protocol.send_data("before", True)) + bad)
        assert await rig.client.expect_close() == (code, reason)
        await rig.client.expect_eof()  # dropped at once: a client that broke the rules
        data, eof_at = await read_raw_to_eof(rig.backend.stream)  # the backend never answers
        assert bad not in data
        assert frames_in(data, from_client=True) == [
            (Opcode.TEXT, "before"),
            (Opcode.CLOSE, (1001, "peer closed: " + reason)),
        ]
        assert eof_at == start + CLOSE_TIMEOUT
        await rig.done.wait()
        assert (rig.session.close, rig.session.closed_by) == (Close(code, reason), Side.PROXY)


@INVALID_CLOSES
async def test_relay_backend_invalid_close_is_its_violation_and_the_client_hears_1011(
    rig: Rig, autojump_clock: trio.testing.MockClock, payload: bytes, code: int, reason: str
) -> None:
    """The backend hears 1002 (1007 for a bad reason) and is dropped; the client hears 1011."""
    with trio.fail_after(CAP):
        start = trio.current_time()
        bad = control_frame(OP_CLOSE, payload, None)
        await rig.backend.send(bytes(rig.backend.protocol.send_data("before", True)) + bad)
        assert await rig.backend.expect_close() == (code, reason)
        await rig.backend.expect_eof()
        data, eof_at = await read_raw_to_eof(rig.client.stream)  # the client never answers
        assert bad not in data
        assert frames_in(data, from_client=False) == [
            (Opcode.TEXT, "before"),
            (Opcode.CLOSE, (1011, "backend broke the WebSocket protocol")),
        ]
        assert eof_at == start + CLOSE_TIMEOUT
        await rig.done.wait()
        assert (rig.session.close, rig.session.closed_by) == (Close(code, reason), Side.PROXY)


async def test_relay_invalid_close_answering_a_valid_one_is_still_a_violation(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """The client closes 1000; the backend answers with 1005: the backend is dropped, the client
    hears 1011, not 1005, and the session stays recorded as closed by the client."""
    with trio.fail_after(CAP):
        await rig.client.close(1000, "done")
        assert await rig.backend.expect_close() == (1000, "done")
        await rig.backend.send(control_frame(OP_CLOSE, b"\x03\xed", None))
        await rig.backend.expect_eof()  # it had our close already: nothing may follow it
        assert await rig.client.expect_close() == (1011, "backend broke the WebSocket protocol")
        await rig.client.expect_eof()  # its close handshake is complete: we close its TCP
        await rig.done.wait()
        assert (rig.session.close, rig.session.closed_by) == (Close(1000, "done"), Side.CLIENT)


# ---------------------------------------------------------------- keepalive and idle


async def test_relay_keepalive_pings_a_silent_leg_at_the_interval(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        start = trio.current_time()
        frame = await next_frame(rig.client)
        assert frame.opcode is Opcode.PING
        assert trio.current_time() - start == INTERVAL
        await rig.client.pong(payload_of(frame))
        ping = await next_frame(rig.backend)  # the backend's own keepalive ping, same instant
        assert ping.opcode is Opcode.PING
        await rig.backend.pong(payload_of(ping))
        # The pongs are ours: neither peer sees the other's, and both legs stay up.
        seen = []
        with trio.move_on_after(INTERVAL - 1):
            seen.append(await next_frame(rig.backend))
        with trio.move_on_after(1):
            seen.append(await next_frame(rig.client))
        assert seen == []
        assert not rig.done.is_set()


async def test_relay_session_runs_no_task_of_its_own_for_its_clocks(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """The keepalive and idle clocks run from the shared timer task: a quiet session is its two
    pumps (the client's in the session's own task), and its timer is let go when it ends."""
    with trio.fail_after(CAP):
        await trio.testing.wait_all_tasks_blocked()
        nursery = rig.session._nursery
        assert nursery is not None
        assert [task.name for task in nursery.child_tasks] == [
            f"{Session._pump.__module__}.{Session._pump.__qualname__}"
        ]
        timer = rig.session._timer
        assert timer is not None
        assert timer.when == trio.current_time() + INTERVAL
        await rig.backend.stream.aclose()  # the backend leaves: the client hears 1011
        await rig.client.expect_close()
        await rig.client.close(1011)
        await rig.done.wait()
        assert timer.callback is None


async def test_relay_keepalive_pings_each_leg_once_per_silence(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """Each leg is pinged at its own last frame + interval, once, however often the watch wakes."""
    with trio.fail_after(CAP):
        start = trio.current_time()
        client_pings: list[float] = []
        backend_pings: list[float] = []
        await trio.sleep(5)
        await rig.backend.send_text("at 5")  # the backend's silence starts at 5, the client's at 0
        with trio.move_on_at(start + 55):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(answer_pings, delay=8.0), rig.client, client_pings
                )
                nursery.start_soon(
                    functools.partial(answer_pings, delay=1.0), rig.backend, backend_pings
                )
        # client: pinged at 20, answers at 28, pinged at 48; backend: 25, answers at 26, 46
        assert [t - start for t in client_pings] == [20, 48]
        assert [t - start for t in backend_pings] == [25, 46]
        assert rig.session.close is None


async def test_relay_keepalive_pong_in_the_same_instant_as_the_ping_counts(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """Peers that answer every ping at once are pinged every interval and never dropped."""
    with trio.fail_after(CAP):
        start = trio.current_time()
        client_pings: list[float] = []
        backend_pings: list[float] = []
        with trio.move_on_at(start + 4 * INTERVAL + 1):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer_pings, rig.client, client_pings)
                nursery.start_soon(answer_pings, rig.backend, backend_pings)
        every_interval = [INTERVAL, 2 * INTERVAL, 3 * INTERVAL, 4 * INTERVAL]
        assert [t - start for t in client_pings] == every_interval
        assert [t - start for t in backend_pings] == every_interval
        assert rig.session.close is None


async def test_relay_keepalive_drops_a_leg_silent_past_the_timeout(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        start = trio.current_time()

        async def backend_answers_pings() -> None:
            while (frame := await rig.backend.receive()) is not None:
                if frame.opcode is Opcode.PING:
                    await rig.backend.pong(payload_of(frame))
                if frame.opcode is Opcode.CLOSE:
                    assert frame.payload[0] == 1001
                    assert trio.current_time() - start == INTERVAL + TIMEOUT
                    await rig.backend.close(1001)
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend_answers_pings)
        await rig.done.wait()
        assert rig.session.closed_by is Side.CLIENT


@pytest.mark.parametrize("lead", [b"", CLIENT_PING], ids=["frame-alone", "behind-a-peer-ping"])
async def test_relay_keepalive_ping_lands_after_the_frame_in_flight_to_that_leg(
    rig: Rig, autojump_clock: trio.testing.MockClock, lead: bytes
) -> None:
    """The backend's ping falls due at 20 s, mid-frame; it goes out right after the last byte."""
    with trio.fail_after(CAP):
        start = trio.current_time()
        frame = bytes(rig.client.protocol.send_data(b"x" * 900, True))

        async def client_sends_in_three_chunks() -> None:
            await rig.client.send(lead + frame[:308])
            await trio.sleep(15)
            await rig.client.send(frame[308:608])
            await trio.sleep(10)
            await rig.client.send(frame[608:])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(client_sends_in_three_chunks)
            # at 30 the backend, which never answers, would be dropped
            chunks = await read_raw_until(rig.backend.stream, start + INTERVAL + TIMEOUT - 1)
        received = b"".join(chunk for _, chunk in chunks)
        whole = len(lead) + len(frame)
        assert received[:whole] == lead + frame  # whole and unchanged, with nothing inside it
        parser = FrameProtocol(client=False, extensions=[])
        parser.receive_bytes(received[whole:])
        [ping] = list(parser.received_frames())
        assert ping.opcode is Opcode.PING
        assert payload_of(ping).startswith(b"wsproxy keepalive")
        assert {at - start for at, _ in chunks} == {0, 15, 25}
        assert arrival_of(chunks, whole) - start == 25  # with the frame's last byte, not at 20


@pytest.mark.parametrize("between", ["nothing", "ping"])
async def test_relay_keepalive_ping_goes_in_between_frames_streamed_back_to_back(
    rig: Rig, autojump_clock: trio.testing.MockClock, between: str
) -> None:
    """The backend streams frames so that every read ends inside one (with or without a ping of
    its own between them): the silent client's keepalive ping goes in at the first frame end
    after it falls due, it answers, and it is not dropped."""
    with trio.fail_after(CAP):
        start = trio.current_time()
        frames = [bytes(rig.backend.protocol.send_data(bytes([n]) * 900, True)) for n in range(30)]
        own_ping = bytes(rig.backend.protocol.ping(b"hb")) if between == "ping" else b""
        pings: list[float] = []

        async def backend_streams() -> None:
            await rig.backend.send(frames[0][:300])
            for before, after in itertools.pairwise(frames):
                await trio.sleep(1.5)
                await rig.backend.send(before[300:] + own_ping + after[:300])

        async def client_reads() -> None:
            while (frame := await rig.client.receive()) is not None:
                if frame.opcode is Opcode.PING:
                    if payload_of(frame) != b"hb":  # the backend's go unanswered: it stays silent
                        pings.append(trio.current_time() - start)
                        await rig.client.pong(payload_of(frame))
                else:
                    received.append(payload_of(frame))

        received: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend_streams)
            nursery.start_soon(client_reads)
            await trio.sleep(29 * 1.5 + 1)
            nursery.cancel_scope.cancel()
        assert pings == [21.0, 42.0]  # due at 20 and 41 (heard at 21): in at the next frame end
        relayed = b"".join(received)  # 29 frames whole, and the start of the last one's payload
        assert relayed[: 29 * 900] == b"".join(bytes([n]) * 900 for n in range(29))
        assert relayed[29 * 900 :] == bytes([29]) * (len(relayed) - 29 * 900)
        assert rig.session.close is None


async def test_relay_keepalive_ping_queued_behind_a_frame_never_follows_a_close(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """The frame the ping waited for ends in the client's close: the ping is dropped, not sent."""
    with trio.fail_after(CAP):
        start = trio.current_time()
        frame = bytes(rig.client.protocol.send_data(b"x" * 900, True))
        close = bytes(rig.client.protocol.close(1000, "done"))
        await rig.client.send(frame[:308])
        await trio.sleep(25)  # the backend's ping fell due at 20 and waits behind the frame
        await rig.client.send(frame[308:] + close)
        data, eof_at = await read_raw_to_eof(rig.backend.stream)
        assert data == frame + close
        assert eof_at - start == 25 + CLOSE_TIMEOUT  # the backend never answered the close


async def test_relay_data_waits_behind_a_ping_the_backend_is_slow_to_take(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Our ping to a backend that isn't reading holds its lock; data relayed meanwhile follows."""
    with trio.fail_after(CAP):
        rig = await start_rig(nursery, backend_pair=trio.testing.lockstep_stream_pair)
        start = trio.current_time()
        await trio.sleep(INTERVAL + 2)
        await rig.client.send_text("queued")
        await trio.sleep(3)  # the backend starts reading at 25
        first = await next_frame(rig.backend)
        assert trio.current_time() - start == 25
        second = await next_frame(rig.backend)
        assert trio.current_time() - start == 25
        assert (first.opcode, second.opcode, second.payload) == (Opcode.PING, Opcode.TEXT, "queued")


async def test_relay_keepalive_ping_that_fails_loses_the_leg_at_the_interval(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        rig.proxy_backend.broken = True
        start = trio.current_time()
        code, at = await close_answering_pings(rig.client)
        assert (code, at - start) == (1011, INTERVAL)
        assert rig.session.closed_by is Side.BACKEND


async def test_relay_keepalive_ping_that_cannot_be_sent_drops_the_leg_at_interval_plus_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The client has stopped reading: our ping to it can't be written, and it counts as dead."""
    with trio.fail_after(CAP):
        rig = await start_rig(nursery, client_pair=trio.testing.lockstep_stream_pair)
        start = trio.current_time()
        code, at = await close_answering_pings(rig.backend)
        assert (code, at - start) == (1001, INTERVAL + TIMEOUT)
        await rig.backend.close(1001)
        await rig.backend.stream.aclose()
        await rig.done.wait()
        assert trio.current_time() - start == INTERVAL + TIMEOUT
        assert rig.session.closed_by is Side.CLIENT


async def test_relay_keepalive_ping_stuck_on_one_leg_does_not_delay_the_other(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The client reads nothing until 29 s; the backend is still pinged at 20 s and given the
    whole timeout to answer (it answers each ping 2 s later)."""
    with trio.fail_after(CAP):
        rig = await start_rig(nursery, client_pair=trio.testing.lockstep_stream_pair)
        start = trio.current_time()
        client_pings: list[float] = []
        backend_pings: list[float] = []

        async def client_reads_late() -> None:
            await trio.sleep(29)  # a full window: our ping to it can't be written before this
            await answer_pings(rig.client, client_pings)

        with trio.move_on_at(start + 45):
            async with trio.open_nursery() as peers:
                peers.start_soon(client_reads_late)
                peers.start_soon(
                    functools.partial(answer_pings, delay=2.0), rig.backend, backend_pings
                )
        assert [t - start for t in backend_pings] == [INTERVAL, INTERVAL + 2 + INTERVAL]
        assert [t - start for t in client_pings] == [29]
        assert rig.session.close is None


async def test_relay_keepalive_never_blames_a_leg_for_the_silence_of_its_held_back_pump(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The backend streams news but reads nothing until 60 s, so the client's upload (and the
    pongs behind it) can't be read: the client is neither pinged nor dropped meanwhile, and its
    silence counts from the moment its pump is freed."""
    hold = 2 * (INTERVAL + TIMEOUT)
    with trio.fail_after(CAP):
        rig = await start_rig(nursery, backend_pair=trio.testing.lockstep_stream_pair)
        start = trio.current_time()
        client_pings: list[float] = []

        async def backend_streams_then_reads() -> None:
            while trio.current_time() - start < hold:
                await rig.backend.send_text("news")
                await trio.sleep(5)
            assert (await next_frame(rig.backend)).payload == "upload"

        await rig.client.send_text("upload")
        with trio.move_on_at(start + hold + INTERVAL + 1):
            async with trio.open_nursery() as peers:
                peers.start_soon(backend_streams_then_reads)
                peers.start_soon(answer_pings, rig.client, client_pings)
        assert not rig.session.client.lost
        assert rig.session.close is None
        assert [t - start for t in client_pings] == [hold + INTERVAL]


async def test_relay_keepalive_judges_both_legs_when_neither_peer_reads(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Both pumps wait on each other's peer: with no idle timeout, keepalive still ends it."""
    with trio.fail_after(CAP):
        rig = await start_rig(
            nursery,
            make_config(timeouts=Timeouts(connect=5.0, idle=0)),
            client_pair=trio.testing.lockstep_stream_pair,
            backend_pair=trio.testing.lockstep_stream_pair,
        )
        start = trio.current_time()
        await rig.client.send_text("upload")
        await rig.backend.send_text("download")
        await trio.testing.wait_all_tasks_blocked()
        assert rig.session.client.held
        assert rig.session.backend.held
        await rig.done.wait()
        assert trio.current_time() - start <= INTERVAL + TIMEOUT + CLOSE_TIMEOUT


async def test_relay_idle_session_is_closed_1001_both_ways(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(IDLE + CAP):
        rig = await start_rig(nursery, make_config(keepalive=Keepalive(interval=0, timeout=1)))
        await rig.client.send_text("x")
        await rig.backend.receive()
        start = trio.current_time()
        assert (await rig.client.expect_close())[0] == 1001
        assert trio.current_time() - start == IDLE
        assert (await rig.backend.expect_close())[0] == 1001


async def test_relay_without_idle_or_keepalive_a_silent_session_stays_open(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """`timeouts.idle: 0` and `keepalive.interval: 0`: no ping and no close, ever."""
    with trio.fail_after(10 * IDLE + CAP):
        config = make_config(
            timeouts=Timeouts(connect=5.0, idle=0), keepalive=Keepalive(interval=0, timeout=1)
        )
        rig = await start_rig(nursery, config)
        seen: list[Frame | None] = []

        async def watch(peer: Peer) -> None:
            seen.append(await peer.receive())

        with trio.move_on_after(10 * IDLE):
            async with trio.open_nursery() as peers:
                peers.start_soon(watch, rig.client)
                peers.start_soon(watch, rig.backend)
        assert seen == []
        await rig.client.send_text("still here")
        assert (await next_frame(rig.backend)).payload == "still here"


# ---------------------------------------------------------------- the test's own fault injector


async def test_relay_faulty_stream_honours_the_stream_contract_until_broken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Unbroken, `FaultyStream` is a faithful stream: failures seen above are the relay's."""

    async def memory_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        left, right = trio.testing.memory_stream_pair()
        return FaultyStream(left), FaultyStream(right)

    async def clogged_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        left, right = trio.testing.lockstep_stream_pair()
        return FaultyStream(left), FaultyStream(right)

    with trio.fail_after(CAP):
        await trio.testing.check_two_way_stream(memory_pair, clogged_pair)


# ---------------------------------------------------------------- rate limits


def limited(**per_session: object) -> Config:
    return make_config(
        limits=Limits(per_session=PerSession(**per_session)),  # type: ignore[arg-type]
        security=Security(allowed_origins=("*",), max_message_size=1 << 20),
    )


async def collect(peer: Peer, count: int) -> list[tuple[float, bytes]]:
    """The next `count` data messages (whole frames) with their arrival instants; pings are
    answered on the way."""
    got: list[tuple[float, bytes]] = []
    while len(got) < count:
        frame = await next_frame(peer)
        if frame.opcode is Opcode.PING:
            await peer.pong(payload_of(frame))
        else:
            assert frame.message_finished
            got.append((trio.current_time(), payload_of(frame)))
    return got


async def test_relay_throttled_client_passes_its_burst_then_its_rate_in_order(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """25 messages in one write: 5 (the burst) pass at once, then one every 1/10 s."""
    with trio.fail_after(CAP):
        rig = await start_rig(nursery, limited(messages_per_second=10, burst=5))
        start = trio.current_time()
        sender = FrameProtocol(client=True, extensions=[])
        await rig.client.send(b"".join(bytes(sender.send_data(b"%d" % n, True)) for n in range(25)))
        got = await collect(rig.backend, 25)
        assert [payload for _, payload in got] == [b"%d" % n for n in range(25)]
        times = [round(t - start, 6) for t, _ in got]
        assert times == [0.0] * 5 + [round(0.1 * n, 6) for n in range(1, 21)]
        assert rig.session.limit is not None
        assert rig.session.limit.throttled == pytest.approx(2.0)
        assert rig.session.messages == (25, 0)


async def test_relay_throttled_client_is_not_read_until_tokens_refill(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Back-pressure, not buffering: on a lockstep pair the client's third write completes only
    when the proxy reads again, once a token has come back (1 s)."""
    with trio.fail_after(CAP):
        rig = await start_rig(
            nursery,
            limited(messages_per_second=1, burst=1),
            client_pair=trio.testing.lockstep_stream_pair,
        )
        start = trio.current_time()
        nursery.start_soon(collect, rig.backend, 3)
        await rig.client.send_binary(b"one")
        await rig.client.send_binary(b"two")  # read at once, held back until 1 s
        assert trio.current_time() == start
        await rig.client.send_binary(b"three")
        assert trio.current_time() - start == pytest.approx(1.0)


async def test_relay_throttled_client_bytes_pass_at_their_rate(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A 10,000-byte message at 2,000 bytes a second: a second's worth at once, the rest at the
    rate, so its last byte reaches the backend at 4 s."""
    with trio.fail_after(CAP):
        rig = await start_rig(nursery, limited(bytes_per_second=2000))
        start = trio.current_time()
        frame = bytes(FrameProtocol(client=True, extensions=[]).send_data(b"x" * 9992, True))
        assert len(frame) == 10_000
        await rig.client.send(frame)
        chunks = await read_raw_until(rig.backend.stream, start + 10)
        assert b"".join(chunk for _, chunk in chunks) == frame
        for at, _ in chunks:
            passed = sum(len(c) for t, c in chunks if t <= at)
            assert passed <= 2000 + 2000 * (at - start) + 1e-6
        assert chunks[-1][0] - start == pytest.approx(4.0)


async def test_relay_throttled_client_is_not_pinged_or_dropped_while_held_back(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """80 messages at 2 a second take 39.5 s, past interval + timeout (30 s): the client, which
    sends nothing else, is neither pinged nor dropped until INTERVAL after the last passed."""
    with trio.fail_after(CAP):
        rig = await start_rig(nursery, limited(messages_per_second=2, burst=1))
        start = trio.current_time()
        sender = FrameProtocol(client=True, extensions=[])
        await rig.client.send(b"".join(bytes(sender.send_data(b"m", True)) for _ in range(80)))
        pings: list[float] = []
        nursery.start_soon(answer_pings, rig.client, pings)
        got = await collect(rig.backend, 80)
        nursery.start_soon(answer_pings, rig.backend, [])
        assert got[-1][0] - start == pytest.approx(39.5)
        await trio.sleep_until(start + 39.5 + INTERVAL + 1)
        assert not rig.session.client.lost
        assert rig.session.close is None
        assert [t - start for t in pings] == [pytest.approx(39.5 + INTERVAL)]


async def test_relay_client_over_its_rate_with_action_close_hears_1008(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Within the burst messages pass; the next one closes: 1008 to the client, 1001 to the
    backend, and the session is counted as closed for its rate."""
    with trio.fail_after(CAP):
        rig = await start_rig(nursery, limited(messages_per_second=1, burst=2, action="close"))
        sender = FrameProtocol(client=True, extensions=[])
        await rig.client.send(b"".join(bytes(sender.send_data(b"%d" % n, True)) for n in range(3)))
        assert [p for _, p in await collect(rig.backend, 2)] == [b"0", b"1"]
        assert await rig.backend.expect_close() == (1001, "client exceeded its rate limit")
        assert await rig.client.expect_close() == (1008, "rate limit exceeded")
        await rig.done.wait()
        assert rig.session.close == closes.RATE_LIMIT
        assert rig.session.closed_by is Side.PROXY
        assert rig.session.limit is not None
        assert rig.session.limit.exceeded


async def test_relay_without_limits_has_no_limit(rig: Rig) -> None:
    assert rig.session.limit is None


async def test_relay_client_without_tokens_still_pings_pongs_and_closes_with_action_close(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Control frames are not messages: after its one message the client's ping reaches the
    backend at once, and its close ends the session politely, not with 1008."""
    with trio.fail_after(CAP):
        rig = await start_rig(nursery, limited(messages_per_second=1, burst=1, action="close"))
        await rig.client.send_binary(b"one")
        await rig.client.ping(b"still there?")
        assert payload_of(await next_frame(rig.backend)) == b"one"
        frame = await next_frame(rig.backend)
        assert (frame.opcode, payload_of(frame)) == (Opcode.PING, b"still there?")
        await rig.client.close(1000, "bye")
        assert await rig.backend.expect_close() == (1000, "bye")
        assert rig.session.limit is not None
        assert not rig.session.limit.exceeded


async def test_relay_byte_limit_close_in_the_middle_of_a_message_is_1008_to_the_client(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A 10,000-byte message at 2,000 bytes a second with `action: close`: the backend has the
    first 2,000 bytes of the frame, so it can hear no close frame and is dropped; the client
    still hears 1008, not the 1011 of a backend that went away."""
    with trio.fail_after(CAP):
        rig = await start_rig(nursery, limited(bytes_per_second=2000, action="close"))
        frame = bytes(FrameProtocol(client=True, extensions=[]).send_data(b"x" * 9992, True))
        await rig.client.send(frame)
        assert await rig.client.expect_close() == (1008, "rate limit exceeded")
        received, _ = await read_raw_to_eof(rig.backend.stream)
        assert received == frame[:2000]
        await rig.done.wait()
        assert rig.session.close == closes.RATE_LIMIT
        assert rig.session.closed_by is Side.PROXY


async def test_relay_action_close_does_not_count_the_time_its_backend_held_the_client_back(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A client within its rate (10 a second, burst 10) while its backend takes nothing for 5 s:
    the 50 messages it sent meanwhile are read at once when the backend reads again; that
    backlog is the proxy's doing, so all pass and nobody is closed."""
    with trio.fail_after(CAP):
        rig = await start_rig(
            nursery,
            limited(messages_per_second=10, burst=10, action="close"),
            backend_pair=trio.testing.lockstep_stream_pair,
        )
        start = trio.current_time()
        for n in range(60):
            await trio.sleep_until(start + 0.1 * n)
            await rig.client.send_binary(b"%d" % n)
            if n == 49:
                got = await collect(rig.backend, 50)  # the backend reads again at 4.9 s
        got += await collect(rig.backend, 10)
        assert [payload for _, payload in got] == [b"%d" % n for n in range(60)]
        assert rig.session.close is None
        assert rig.session.limit is not None
        assert not rig.session.limit.exceeded


# ---------------------------------------------------------------- parking (real socket pairs)


@dataclass
class SocketSession:
    """A session whose legs are real sockets (socket pairs), so that it may park."""

    session: Session
    client: Peer
    backend: Peer
    done: trio.Event


def real_socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    left, right = trio.socket.socketpair()
    return trio.SocketStream(left), trio.SocketStream(right)


@pytest.fixture
async def peer_ends() -> AsyncIterator[list[trio.SocketStream]]:
    """The test's ends of the socket pairs, closed when the test is over."""
    ends: list[trio.SocketStream] = []
    yield ends
    for end in ends:
        end.socket.close()


async def start_socket_session(
    nursery: trio.Nursery, peer_ends: list[trio.SocketStream], config: Config | None = None
) -> SocketSession:
    client_end, proxy_client = real_socket_pair()
    backend_end, proxy_backend = real_socket_pair()
    peer_ends += (client_end, backend_end)
    session = Session(
        make_config() if config is None else config, proxy_client, proxy_backend, compressed=False
    )
    done = trio.Event()

    async def run() -> None:
        await session.run()
        done.set()

    nursery.start_soon(run)
    return SocketSession(
        session, Peer(client_end, client=True), Peer(backend_end, client=False), done
    )


@pytest.fixture(params=[True, False], ids=["parked", "pumps"])
def parks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """The test twice: with sessions that park, and with sessions whose pumps always run."""
    if not request.param:
        monkeypatch.setattr(Session, "_park_at_start", lambda self: False)
        monkeypatch.setattr(Session, "parkable_fds", lambda self, since: None)
    return bool(request.param)


def pump_tasks() -> int:
    """Pump tasks running anywhere in this run (a session's backend pump is one)."""
    name = f"{Session._pump.__module__}.{Session._pump.__qualname__}"
    count = 0
    tasks = [trio.lowlevel.current_root_task()]
    while tasks:
        task = tasks.pop()
        assert task is not None
        count += task.name == name
        tasks.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return count


def is_parked(session: Session) -> bool:
    """No nursery, no pump: the session's task waits for the parker."""
    return session._nursery is None and not session._ended and pump_tasks() == 0


def count_pump_starts(monkeypatch: pytest.MonkeyPatch) -> list[Side]:
    """The side of every pump started from now on (none while the parker relays in line)."""
    started: list[Side] = []
    pump = Session._pump

    async def counted(self: Session, src: Leg, dst: Leg, data: Buffer) -> None:
        started.append(src.side)
        await pump(self, src, dst, data)

    monkeypatch.setattr(Session, "_pump", counted)
    return started


async def test_relay_socket_session_is_relayed_and_closed_in_line_without_pumps(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    peer_ends: list[trio.SocketStream],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A session of two sockets starts parked: its frames, both closes and the backend's end
    of stream are relayed by the parker, and no pump ever runs."""
    pumps = count_pump_starts(monkeypatch)
    with trio.fail_after(CAP):
        running = await start_socket_session(nursery, peer_ends)
        await trio.testing.wait_all_tasks_blocked()
        assert is_parked(running.session)
        await running.client.send_text("hello")
        assert (await next_frame(running.backend)).payload == "hello"
        await running.backend.send_text("back")
        assert (await next_frame(running.client)).payload == "back"
        await running.client.close(1000, "bye")
        assert await running.backend.expect_close() == (1000, "bye")
        await running.backend.close(1000, "bye")
        assert await running.client.expect_close() == (1000, "bye")
        await running.client.expect_eof()  # we are its server: we close its TCP
        await running.backend.stream.aclose()  # the server closes its own
        await running.done.wait()
        assert running.session.close == Close(1000, "bye")
        assert running.session.closed_by is Side.CLIENT
        assert running.session.messages == (1, 1)
        assert pumps == []
        assert the_parker().parked == {}


async def test_relay_in_line_close_keeps_the_close_deadline(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    peer_ends: list[trio.SocketStream],
) -> None:
    """A close relayed in line starts the same `CLOSE_TIMEOUT`: a backend that never answers
    it is dropped then, and the client hears nothing more."""
    with trio.fail_after(CAP):
        running = await start_socket_session(nursery, peer_ends)
        await trio.testing.wait_all_tasks_blocked()
        closed = trio.current_time()
        await running.client.close(1000, "bye")
        assert await running.backend.expect_close() == (1000, "bye")
        await running.done.wait()
        assert trio.current_time() - closed == CLOSE_TIMEOUT
        await running.client.expect_eof()


async def test_relay_server_initiated_close_is_relayed_in_line(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    peer_ends: list[trio.SocketStream],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pumps = count_pump_starts(monkeypatch)
    with trio.fail_after(CAP):
        running = await start_socket_session(nursery, peer_ends)
        await running.backend.close(4000, "done")
        assert await running.client.expect_close() == (4000, "done")
        await running.client.close(4000, "done")
        assert await running.backend.expect_close() == (4000, "done")
        await running.client.expect_eof()
        await running.backend.stream.aclose()
        await running.done.wait()
        assert running.session.closed_by is Side.BACKEND
        assert pumps == []


async def test_relay_parked_session_hands_a_ping_to_its_pumps(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    peer_ends: list[trio.SocketStream],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A control frame other than a close wakes the session; its pump relays what the parker
    read (data before the ping included, in order), and the session parks again."""
    pumps = count_pump_starts(monkeypatch)
    with trio.fail_after(CAP):
        running = await start_socket_session(nursery, peer_ends)
        data = bytes(running.client.protocol.send_data("first", True))
        await running.client.send(data + CLIENT_PING)
        assert (await next_frame(running.backend)).payload == "first"
        ping = await next_frame(running.backend)
        assert (ping.opcode, payload_of(ping)) == (Opcode.PING, b"peer")
        assert Side.CLIENT in pumps
        await trio.sleep(2 * PARK_AFTER)
        assert is_parked(running.session)


async def test_relay_parked_session_hands_a_violation_to_its_pumps(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    peer_ends: list[trio.SocketStream],
) -> None:
    with trio.fail_after(CAP):
        running = await start_socket_session(nursery, peer_ends)
        await trio.testing.wait_all_tasks_blocked()
        await running.client.send(b"\x81\x02hi")  # unmasked
        assert await running.client.expect_close() == (1002, "unmasked frame")
        assert (await running.backend.expect_close())[0] == 1001
        await running.client.expect_eof()


async def test_relay_parked_session_hands_a_write_the_kernel_took_in_part_to_its_pump(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    peer_ends: list[trio.SocketStream],
) -> None:
    """A backend that reads nothing fills its socket: the parker's write is cut short, the
    pump writes the rest as the backend reads, and every byte arrives once, in order."""
    with trio.fail_after(CAP):
        running = await start_socket_session(nursery, peer_ends)
        running.session.backend.stream.socket.setsockopt(  # type: ignore[attr-defined]
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        payloads = [bytes([n]) * 900 for n in range(40)]  # 36 KB: more than the buffers hold
        for payload in payloads:
            await running.client.send_binary(payload)
        assert await payload_bytes(running.backend, 40 * 900) == b"".join(payloads)
        await trio.sleep(2 * PARK_AFTER)
        assert is_parked(running.session)


async def test_relay_shutdown_while_a_frame_is_half_relayed_in_line_closes_after_it(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    peer_ends: list[trio.SocketStream],
) -> None:
    """The parker relayed half a frame: the woken pump holds the backend's lock, so the
    shutdown's close reaches the backend only after the frame's rest, never inside it."""
    with trio.fail_after(CAP):
        running = await start_socket_session(nursery, peer_ends)
        frame = bytes(running.client.protocol.send_data(b"x" * 100, True))
        await running.client.send(frame[:50])
        await trio.testing.wait_all_tasks_blocked()
        assert is_parked(running.session)
        assert running.session.client.reader.payload_left > 0
        nursery.start_soon(running.session.shutdown)
        await trio.testing.wait_all_tasks_blocked()
        await running.client.send(frame[50:])
        assert await payload_bytes(running.backend, 100) == b"x" * 100
        assert await running.backend.expect_close() == (1001, "proxy shutting down")
        assert await running.client.expect_close() == (1001, "proxy shutting down")


async def test_relay_shutdown_of_a_parked_session_streaming_frames_closes_at_a_frame_end(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    peer_ends: list[trio.SocketStream],
) -> None:
    """On real sockets: the parker relayed half a frame, and the client's next chunk ends that
    frame and starts another it never finishes: the backend still gets the shutdown's close,
    right after the first frame, and nothing of the second."""
    with trio.fail_after(CAP):
        running = await start_socket_session(nursery, peer_ends)
        first = bytes(running.client.protocol.send_data(b"a" * 100, True))
        second = bytes(running.client.protocol.send_data(b"b" * 100, True))
        await running.client.send(first[:50])
        await trio.testing.wait_all_tasks_blocked()
        assert is_parked(running.session)
        asked = trio.current_time()
        nursery.start_soon(running.session.shutdown)
        await trio.testing.wait_all_tasks_blocked()
        await running.client.send(first[50:] + second[:50])
        assert await payload_bytes(running.backend, 100) == b"a" * 100
        assert await running.backend.expect_close() == (1001, "proxy shutting down")
        assert await running.client.expect_close() == (1001, "proxy shutting down")
        assert trio.current_time() == asked


async def test_relay_wake_while_the_pumps_it_parked_are_ending_keeps_the_mid_frame_hold(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    peer_ends: list[trio.SocketStream],
) -> None:
    """In the instant of the sweep that parks an awake session, half a client frame and a
    backend ping arrive: the parker relays the half frame in line, the ping wakes the session
    (the backend's lock taken for the client's next pump), and the pump the sweep cancelled,
    ending only now, must not let that lock go. Both legs stay healthy: the frame arrives
    whole, and the backend is pinged and kept (not dropped for a ping that never got out)."""
    with trio.fail_after(CAP):
        running = await start_socket_session(nursery, peer_ends)
        session, client, backend = running.session, running.client, running.backend
        await trio.testing.wait_all_tasks_blocked()
        woken = trio.current_time()
        frame = bytes(client.protocol.send_data(b"C" * 400, True))

        def bytes_arrive() -> None:  # set before the sweep's timer: it runs just before it
            client_end, backend_end = peer_ends[-2:]
            os.write(client_end.socket.fileno(), frame[:200])
            os.write(backend_end.socket.fileno(), bytes(backend.protocol.ping(b"b")))

        timers.at(woken + PARK_AFTER, bytes_arrive)
        await client.ping(b"wake")  # wakes the session; its sweep is set for woken + PARK_AFTER
        assert (await next_frame(backend)).opcode is Opcode.PING
        await trio.sleep(PARK_AFTER + 0.1)
        assert (await next_frame(client)).opcode is Opcode.PING  # the backend's
        assert session.client.holds  # for the client's pump, which finishes the frame
        await client.send(frame[200:])
        assert await payload_bytes(backend, 400) == b"C" * 400
        assert not session.client.relayed_mid_frame
        backend_pings: list[float] = []
        nursery.start_soon(answer_pings, backend, backend_pings)
        nursery.start_soon(answer_pings, client, [])
        await trio.sleep(3 * INTERVAL)
        assert backend_pings
        assert session.close is None


async def test_relay_backend_is_kept_while_a_client_uploads_one_frame_slowly(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    peer_ends: list[trio.SocketStream],
    parks: bool,
) -> None:
    """One 3,000-byte frame from the client, 100 bytes every 2 s (62 s): the backend's pings
    wait behind it, and the backend, which answers every ping, is not dropped for them. Its
    ping goes out at the frame's end."""
    config = make_config(
        keepalive=Keepalive(interval=5.0, timeout=5.0),
        security=Security(allowed_origins=("*",), max_message_size=100_000),
    )
    with trio.fail_after(CAP):
        running = await start_socket_session(nursery, peer_ends, config)
        start = trio.current_time()
        backend_pings: list[float] = []
        received: list[bytes] = []

        async def backend_reads() -> None:
            while (frame := await running.backend.receive()) is not None:
                if frame.opcode is Opcode.PING:
                    backend_pings.append(trio.current_time() - start)
                    await running.backend.pong(payload_of(frame))
                else:
                    received.append(payload_of(frame))

        nursery.start_soon(backend_reads)
        frame = bytes(running.client.protocol.send_data(b"z" * 3000, True))
        for at in range(0, len(frame), 100):  # the last piece at 60
            await running.client.send(frame[at : at + 100])
            await trio.sleep(2)
        assert running.session.close is None
        assert backend_pings == [60.0]  # right behind the frame's last piece
        assert b"".join(received) == b"z" * 3000


async def test_relay_parked_session_is_pinged_and_a_late_pong_wakes_it(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    peer_ends: list[trio.SocketStream],
) -> None:
    """The keepalive clock wakes a parked session to ping; it parks again while the pong is
    awaited, and the pong (5 s late) wakes it: it counts, and is not relayed."""
    with trio.fail_after(CAP):
        start = trio.current_time()
        running = await start_socket_session(nursery, peer_ends)
        backend_pings: list[float] = []
        nursery.start_soon(answer_pings, running.backend, backend_pings)
        await trio.testing.wait_all_tasks_blocked()  # parked from its start
        assert is_parked(running.session)
        ping = await next_frame(running.client)
        assert ping.opcode is Opcode.PING
        assert trio.current_time() - start == INTERVAL
        await trio.sleep(5)
        assert is_parked(running.session)
        await running.client.pong(payload_of(ping))
        again = await next_frame(running.client)
        assert again.opcode is Opcode.PING
        assert trio.current_time() - start == 2 * INTERVAL + 5  # heard at 25: pinged at 45
        assert [t - start for t in backend_pings] == [INTERVAL, 2 * INTERVAL]
        assert running.session.close is None


async def test_relay_parked_session_ends_when_a_peer_leaves(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    peer_ends: list[trio.SocketStream],
) -> None:
    with trio.fail_after(CAP):
        running = await start_socket_session(nursery, peer_ends)
        await trio.testing.wait_all_tasks_blocked()  # parked from its start
        assert is_parked(running.session)
        await running.backend.stream.aclose()
        assert (await running.client.expect_close())[0] == 1011
        await running.client.close(1011)
        await running.client.expect_eof()
        await running.done.wait()
        assert running.session.closed_by is Side.BACKEND


async def test_relay_shutdown_of_a_parked_session_closes_both_legs(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    peer_ends: list[trio.SocketStream],
) -> None:
    with trio.fail_after(CAP):
        running = await start_socket_session(nursery, peer_ends)
        await trio.testing.wait_all_tasks_blocked()  # parked from its start
        assert is_parked(running.session)
        nursery.start_soon(running.session.shutdown)
        assert await running.client.expect_close() == (1001, "proxy shutting down")
        assert await running.backend.expect_close() == (1001, "proxy shutting down")
        await running.client.close(1001)
        await running.backend.close(1001)
        await running.client.expect_eof()
        await running.done.wait()
        assert running.session.closed_by is Side.PROXY


async def test_relay_shutdown_of_a_parked_session_keeps_the_close_deadline(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    peer_ends: list[trio.SocketStream],
) -> None:
    """A peer that never answers the shutdown's close is dropped `CLOSE_TIMEOUT` after it."""
    with trio.fail_after(CAP):
        running = await start_socket_session(nursery, peer_ends)
        await trio.testing.wait_all_tasks_blocked()  # parked from its start
        assert is_parked(running.session)
        asked = trio.current_time()
        nursery.start_soon(running.session.shutdown)
        assert (await running.client.expect_close())[0] == 1001
        await running.done.wait()  # neither peer answers
        assert trio.current_time() - asked == CLOSE_TIMEOUT


async def test_relay_parked_session_cancelled_lets_its_sockets_go(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    peer_ends: list[trio.SocketStream],
) -> None:
    with trio.fail_after(CAP):
        client_end, proxy_client = real_socket_pair()
        backend_end, proxy_backend = real_socket_pair()
        peer_ends += (client_end, backend_end)
        session = Session(make_config(), proxy_client, proxy_backend, compressed=False)
        with trio.move_on_after(3 * PARK_AFTER):
            async with trio.open_nursery() as inner:
                inner.start_soon(session.run)
                await trio.testing.wait_all_tasks_blocked()  # parked from its start
                assert is_parked(session)
                assert the_parker().parked
        assert the_parker().parked == {}
        assert await client_end.receive_some(10) == b""  # closed
        assert await backend_end.receive_some(10) == b""


async def test_relay_violation_whose_close_cannot_be_written_ends_the_session_cleanly(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    peer_ends: list[trio.SocketStream],
    parks: bool,
) -> None:
    """A violation in the read that ends a frame the pump held the backend's lock for, while
    the client's own leg is stalled mid-frame (it reads nothing): the violator's close waits
    until the session's deadline, and the session then ends with its close recorded, each
    lock let go once (a second release used to escape `run` as an error)."""
    config = make_config(security=Security(allowed_origins=("*",), max_message_size=10_000))
    with trio.fail_after(CAP):
        running = await start_socket_session(nursery, peer_ends, config)
        backend_frames = b"".join(
            bytes(running.backend.protocol.send_data(b"y" * 900, True)) for _ in range(400)
        )
        await running.backend.send(backend_frames[:150_001])  # stalls half-way to the client
        frame = bytes(running.client.protocol.send_data(b"z" * 900, True))
        await running.client.send(frame[:300])
        await trio.testing.wait_all_tasks_blocked()
        started = trio.current_time()
        await running.client.send(frame[300:] + b"\x81\x02hi")  # its end, then unmasked
        await running.done.wait()
        assert running.session.close == Close(1002, "unmasked frame")
        assert trio.current_time() - started == CLOSE_TIMEOUT


async def test_relay_session_whose_pump_is_mid_frame_does_not_park_again(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    peer_ends: list[trio.SocketStream],
) -> None:
    """A pump that holds the other leg's lock for the rest of a frame keeps the session awake."""
    with trio.fail_after(CAP):
        running = await start_socket_session(nursery, peer_ends)
        await running.client.send(CLIENT_PING)  # wakes it
        await next_frame(running.backend)
        frame = bytes(running.client.protocol.send_data(b"x" * 100, True))
        await running.client.send(frame[:50])
        await trio.sleep(5 * PARK_AFTER)
        assert not is_parked(running.session)
        await running.client.send(frame[50:])
        assert await payload_bytes(running.backend, 100) == b"x" * 100
        await trio.sleep(2 * PARK_AFTER)
        assert is_parked(running.session)


async def test_relay_parked_session_is_closed_when_idle(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    peer_ends: list[trio.SocketStream],
) -> None:
    with trio.fail_after(CAP):
        start = trio.current_time()
        config = make_config(
            timeouts=Timeouts(connect=5.0, idle=30), keepalive=Keepalive(interval=0, timeout=1)
        )
        running = await start_socket_session(nursery, peer_ends, config)
        await trio.testing.wait_all_tasks_blocked()  # parked from its start
        assert is_parked(running.session)
        assert await running.client.expect_close() == (1001, "idle timeout")
        assert trio.current_time() - start == 30
        assert await running.backend.expect_close() == (1001, "idle timeout")


async def test_relay_streams_that_are_not_sockets_never_park(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    """TLS legs and memory streams: the pumps keep waiting themselves."""
    with trio.fail_after(CAP):
        await trio.sleep(5 * PARK_AFTER)
        assert pump_tasks() == 1
        assert rig.session._nursery is not None
