"""SocketWire on real connected sockets, StreamWire's delegation on memory streams, and
ImmediateWire on the modelled sockets of tests/memsocket.py.

`SocketWire` bypasses trio's stream and talks to the descriptor, so these tests use real sockets
(a loopback TCP pair, or a Unix socketpair where TCP is not needed) and the real clock. Every
test is capped by `trio.fail_after(CAP)` and closes what it opens. Sync points are
`wait_all_tasks_blocked`, never sleeps.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio
import trio.testing

from tests.memsocket import socket_pair
from wsproxy.wire import (
    CHUNK,
    ImmediateWire,
    SocketWire,
    StreamWire,
    close_forcefully,
    wire_for,
)

CAP = 10.0  # seconds of real time: no test may take longer
SMALL_BUFFER = 16 * 1024  # socket buffers kept small so large writes are partial
LARGE = 4 * 1024 * 1024

Pair = tuple[trio.SocketStream, trio.SocketStream]


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[Pair]:
    """(ours, peer): both ends of a loopback TCP connection, closed on exit."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listener:
        port = listener.socket.getsockname()[1]
        ours = await trio.open_tcp_stream("127.0.0.1", port)
        async with ours:
            peer = await listener.accept()
            async with peer:
                yield ours, peer


@asynccontextmanager
async def unix_pair() -> AsyncIterator[Pair]:
    """(ours, peer): both ends of a Unix socketpair, closed on exit."""
    left, right = trio.socket.socketpair()
    async with trio.SocketStream(left) as ours, trio.SocketStream(right) as peer:
        yield ours, peer


def small_buffers(ours: trio.SocketStream, peer: trio.SocketStream) -> None:
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)


async def reset(peer: trio.SocketStream) -> None:
    """Close `peer` abortively (SO_LINGER 0), so the other end gets a RST."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await peer.aclose()


async def fill_send_buffer(stream: trio.SocketStream) -> bytes:
    """Write to `stream`'s descriptor until the kernel takes no more; the bytes written."""
    written = bytearray()
    block = b"f" * 4096
    while True:
        try:
            written += block[: os.write(stream.socket.fileno(), block)]
        except BlockingIOError:
            return bytes(written)


async def read_exactly(stream: trio.SocketStream, size: int, *, slowly: bool = False) -> bytes:
    """Read `size` bytes; with `slowly`, let every other task block before each read."""
    data = bytearray()
    while len(data) < size:
        if slowly:
            await trio.testing.wait_all_tasks_blocked()
        chunk = await stream.receive_some(65536)
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


# --- receive -----------------------------------------------------------------------------------


@pytest.mark.parametrize("make_pair", [tcp_pair, unix_pair], ids=["tcp", "unix"])
async def test_socketwire_receive_returns_data_then_empty_at_eof(
    make_pair: Callable[[], AbstractAsyncContextManager[Pair]],
) -> None:
    with trio.fail_after(CAP):
        async with make_pair() as (ours, peer):
            wire = SocketWire(ours)
            await peer.send_all(b"hello")
            assert await wire.receive() == b"hello"
            await peer.send_all(b"bye")
            await peer.send_eof()
            assert await wire.receive() == b"bye"
            assert await wire.receive() == b""
            assert await wire.receive() == b""  # EOF stays EOF


async def test_socketwire_receive_is_a_checkpoint_even_with_data_ready() -> None:
    with trio.fail_after(CAP):
        async with unix_pair() as (ours, peer):
            wire = SocketWire(ours)
            await peer.send_all(b"ready")
            await trio.testing.wait_all_tasks_blocked()
            with trio.testing.assert_checkpoints():
                assert await wire.receive() == b"ready"


async def test_socketwire_read_now_gives_none_until_readable_then_data_then_empty_at_eof() -> None:
    with trio.fail_after(CAP):
        async with unix_pair() as (ours, peer):
            wire = SocketWire(ours)
            with trio.testing.assert_no_checkpoints():
                assert wire.read_now() is None  # nothing yet: never waits
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wire.readable)
                await trio.testing.wait_all_tasks_blocked()
                await peer.send_all(b"late")
            assert wire.read_now() == b"late"
            await peer.send_eof()
            with trio.testing.assert_checkpoints():
                await wire.readable()
            assert wire.read_now() == b""


async def test_socketwire_readable_waiting_wakes_when_own_stream_closes() -> None:
    with trio.fail_after(CAP):
        async with unix_pair() as (ours, _peer):
            wire = SocketWire(ours)

            async def wait() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await wire.readable()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait)
                await trio.testing.wait_all_tasks_blocked()
                await close_forcefully(ours)
            with pytest.raises(trio.ClosedResourceError):
                wire.read_now()


async def test_socketwire_send_all_taken_at_once_is_not_a_checkpoint() -> None:
    with trio.fail_after(CAP):
        async with unix_pair() as (ours, peer):
            wire = SocketWire(ours)
            with trio.testing.assert_no_checkpoints():
                await wire.send_all(b"quick")
            assert await read_exactly(peer, 5) == b"quick"


async def test_socketwire_receive_waits_for_data() -> None:
    with trio.fail_after(CAP):
        async with tcp_pair() as (ours, peer):
            wire = SocketWire(ours)
            received: list[bytes] = []
            async with trio.open_nursery() as nursery:

                async def receiver() -> None:
                    received.append(await wire.receive())

                nursery.start_soon(receiver)
                await trio.testing.wait_all_tasks_blocked()
                assert received == []
                await peer.send_all(b"late")
            assert received == [b"late"]


async def test_socketwire_receive_reads_at_most_a_chunk() -> None:
    with trio.fail_after(CAP):
        async with unix_pair() as (ours, peer):
            wire = SocketWire(ours)
            data = os.urandom(CHUNK + 100)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.send_all, data)
                first = await wire.receive()
                assert 0 < len(first) <= CHUNK
                rest = bytearray(first)
                while len(rest) < len(data):
                    rest += await wire.receive()
            assert rest == data


async def test_socketwire_receive_after_peer_reset_is_broken() -> None:
    with trio.fail_after(CAP):
        async with tcp_pair() as (ours, peer):
            wire = SocketWire(ours)
            await reset(peer)
            with pytest.raises(trio.BrokenResourceError):
                await wire.receive()


async def test_socketwire_receive_waiting_when_peer_resets_is_broken() -> None:
    with trio.fail_after(CAP):
        async with tcp_pair() as (ours, peer):
            wire = SocketWire(ours)
            async with trio.open_nursery() as nursery:

                async def receiver() -> None:
                    with pytest.raises(trio.BrokenResourceError):
                        await wire.receive()

                nursery.start_soon(receiver)
                await trio.testing.wait_all_tasks_blocked()
                await reset(peer)


async def test_socketwire_receive_after_own_close_is_closed() -> None:
    with trio.fail_after(CAP):
        async with tcp_pair() as (ours, peer):
            wire = SocketWire(ours)
            await peer.send_all(b"unread")
            await ours.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await wire.receive()


async def test_socketwire_receive_waiting_wakes_when_own_stream_closes() -> None:
    with trio.fail_after(CAP):
        async with tcp_pair() as (ours, _peer):
            wire = SocketWire(ours)
            woke = trio.Event()
            async with trio.open_nursery() as nursery:

                async def receiver() -> None:
                    with pytest.raises(trio.ClosedResourceError):
                        await wire.receive()
                    woke.set()

                nursery.start_soon(receiver)
                await trio.testing.wait_all_tasks_blocked()
                assert not woke.is_set()
                await ours.aclose()
            assert woke.is_set()


async def test_socketwire_closed_never_touches_a_reused_descriptor() -> None:
    """After our close, the descriptor number may name a newer socket: it is never used."""
    with trio.fail_after(CAP):
        async with tcp_pair() as (ours, _peer), unix_pair() as (newer, newer_peer):
            wire = SocketWire(ours)
            old_fd = ours.socket.fileno()
            await ours.aclose()
            os.dup2(newer.socket.fileno(), old_fd)  # the old number now names `newer`
            try:
                await newer_peer.send_all(b"not yours")
                with pytest.raises(trio.ClosedResourceError):
                    await wire.receive()
                with pytest.raises(trio.ClosedResourceError):
                    await wire.send_all(b"nor this")
            finally:
                os.close(old_fd)
            assert await newer.receive_some(100) == b"not yours"
            await newer.aclose()
            assert await newer_peer.receive_some(100) == b""  # nothing was written to it


# --- send_all ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
async def test_socketwire_send_all_small_goes_through(
    kind: Callable[[bytes], bytes | bytearray | memoryview],
) -> None:
    with trio.fail_after(CAP):
        async with unix_pair() as (ours, peer):
            wire = SocketWire(ours)
            await wire.send_all(kind(b"hello"))
            await wire.send_all(kind(b""))
            assert await read_exactly(peer, 5) == b"hello"


async def test_socketwire_send_all_large_completes_while_the_peer_reads_slowly() -> None:
    data = os.urandom(LARGE)
    with trio.fail_after(CAP):
        async with tcp_pair() as (ours, peer):
            small_buffers(ours, peer)
            wire = SocketWire(ours)
            sent = trio.Event()
            async with trio.open_nursery() as nursery:

                async def sender() -> None:
                    await wire.send_all(memoryview(data))
                    sent.set()

                nursery.start_soon(sender)
                await trio.testing.wait_all_tasks_blocked()
                assert not sent.is_set()  # the kernel took part of it: the sender waits
                received = await read_exactly(peer, LARGE, slowly=True)
            assert sent.is_set()
            assert received == data


async def test_socketwire_send_all_when_the_buffer_is_already_full_waits() -> None:
    with trio.fail_after(CAP):
        async with tcp_pair() as (ours, peer):
            small_buffers(ours, peer)
            wire = SocketWire(ours)
            filler = await fill_send_buffer(ours)
            sent = trio.Event()
            async with trio.open_nursery() as nursery:

                async def sender() -> None:
                    await wire.send_all(b"tail")
                    sent.set()

                nursery.start_soon(sender)
                await trio.testing.wait_all_tasks_blocked()
                assert not sent.is_set()
                received = await read_exactly(peer, len(filler) + 4, slowly=True)
            assert received == filler + b"tail"


async def test_socketwire_send_all_to_a_reset_peer_is_broken() -> None:
    with trio.fail_after(CAP):
        async with tcp_pair() as (ours, peer):
            wire = SocketWire(ours)
            await reset(peer)
            await trio.lowlevel.wait_readable(ours.socket)  # the RST has arrived
            with pytest.raises(trio.BrokenResourceError):
                await wire.send_all(b"anyone there?")
            with pytest.raises(trio.BrokenResourceError):
                await wire.send_all(b"still?")


async def test_socketwire_send_all_waiting_when_the_peer_resets_is_broken() -> None:
    with trio.fail_after(CAP):
        async with tcp_pair() as (ours, peer):
            small_buffers(ours, peer)
            wire = SocketWire(ours)
            async with trio.open_nursery() as nursery:

                async def sender() -> None:
                    with pytest.raises(trio.BrokenResourceError):
                        await wire.send_all(bytes(LARGE))

                nursery.start_soon(sender)
                await trio.testing.wait_all_tasks_blocked()
                await reset(peer)


async def test_socketwire_send_all_after_own_close_is_closed() -> None:
    with trio.fail_after(CAP):
        async with unix_pair() as (ours, _peer):
            wire = SocketWire(ours)
            await ours.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await wire.send_all(b"x")


async def test_socketwire_send_all_waiting_wakes_when_own_stream_closes() -> None:
    with trio.fail_after(CAP):
        async with tcp_pair() as (ours, peer):
            small_buffers(ours, peer)
            wire = SocketWire(ours)
            woke = trio.Event()
            async with trio.open_nursery() as nursery:

                async def sender() -> None:
                    with pytest.raises(trio.ClosedResourceError):
                        await wire.send_all(bytes(LARGE))
                    woke.set()

                nursery.start_soon(sender)
                await trio.testing.wait_all_tasks_blocked()
                assert not woke.is_set()
                await ours.aclose()
            assert woke.is_set()


# --- wire_for and StreamWire -------------------------------------------------------------------


async def test_wire_for_a_socket_stream_is_a_socketwire() -> None:
    with trio.fail_after(CAP):
        async with unix_pair() as (ours, _peer):
            assert isinstance(wire_for(ours), SocketWire)


async def test_wire_for_a_memory_stream_is_a_streamwire() -> None:
    left, right = trio.testing.memory_stream_pair()
    async with left, right:
        assert isinstance(wire_for(left), StreamWire)


async def test_streamwire_delegates_to_the_stream() -> None:
    with trio.fail_after(CAP):
        left, right = trio.testing.memory_stream_pair()
        async with left, right:
            wire = StreamWire(left)
            await wire.send_all(b"to the right")
            assert await right.receive_some(100) == b"to the right"
            await wire.send_all(memoryview(b"view"))
            assert await right.receive_some(100) == b"view"
            await right.send_all(b"to the left")
            assert await wire.receive() == b"to the left"
            await right.send_eof()
            assert await wire.receive() == b""
            await left.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await wire.receive()
            with pytest.raises(trio.ClosedResourceError):
                await wire.send_all(b"x")


@pytest.mark.parametrize("make", [StreamWire, ImmediateWire], ids=["stream", "immediate"])
async def test_streamwire_readable_reads_ahead_for_read_now(
    make: Callable[[trio.abc.Stream], StreamWire],
) -> None:
    with trio.fail_after(CAP):
        ours, peer = socket_pair()
        async with ours, peer:
            wire = make(ours)
            assert wire.read_now() is None  # nothing read ahead yet
            await peer.send_all(b"first")
            with trio.testing.assert_checkpoints():
                await wire.readable()
            with trio.testing.assert_checkpoints():
                await wire.readable()  # still unread: no second read, but a checkpoint
            assert wire.read_now() == b"first"
            assert wire.read_now() is None
            await peer.aclose()
            await wire.readable()
            assert wire.read_now() == b""


async def test_streamwire_receive_reads_at_most_a_chunk() -> None:
    with trio.fail_after(CAP):
        left, right = trio.testing.memory_stream_pair()
        async with left, right:
            await right.send_all(bytes(CHUNK + 1))
            assert len(await StreamWire(left).receive()) == CHUNK
            assert len(await StreamWire(left).receive()) == 1


# --- ImmediateWire, on the modelled sockets of tests/memsocket.py ----------------------------


async def test_wire_for_an_immediate_stream_is_an_immediatewire() -> None:
    ours, peer = socket_pair()
    async with ours, peer:
        assert isinstance(wire_for(ours), ImmediateWire)


async def test_immediatewire_send_all_that_fits_takes_no_checkpoint() -> None:
    """Like `SocketWire`: what the buffer takes at once goes without letting another task run."""
    with trio.fail_after(CAP):
        ours, peer = socket_pair(capacity=100)
        async with ours, peer:
            wire = wire_for(ours)
            with trio.testing.assert_no_checkpoints():
                await wire.send_all(b"x" * 100)
            assert (ours.outgoing.sent_now, ours.outgoing.sent_later) == (100, 0)
            assert await peer.receive_some() == b"x" * 100


async def test_immediatewire_send_all_waits_for_room_for_the_rest() -> None:
    with trio.fail_after(CAP):
        ours, peer = socket_pair(capacity=100)
        async with ours, peer:
            wire = wire_for(ours)
            data = bytes(range(250))
            received = bytearray()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wire.send_all, data)
                await trio.testing.wait_all_tasks_blocked()
                assert bytes(ours.outgoing.buffer) == data[:100]
                while len(received) < len(data):
                    received += await peer.receive_some()
            assert received == data
            assert wire.send_now(b"") == 0


async def test_immediatewire_to_a_closed_peer_is_broken() -> None:
    with trio.fail_after(CAP):
        ours, peer = socket_pair(capacity=100)
        async with ours:
            wire = wire_for(ours)
            await peer.aclose()
            with pytest.raises(trio.BrokenResourceError):
                wire.send_now(b"x")
            with pytest.raises(trio.BrokenResourceError):
                await wire.send_all(b"x")
            assert await wire.receive() == b""


async def test_memsocket_honours_the_stream_contract() -> None:
    """The relay tests' socket model is a faithful trio stream: what they see is the relay's."""

    async def pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        return socket_pair(capacity=1000)

    async def clogged() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        left, right = socket_pair(capacity=1000)
        left.send_now(bytes(1000))
        right.send_now(bytes(1000))
        return left, right

    with trio.fail_after(CAP):
        await trio.testing.check_two_way_stream(pair, clogged)


# ---------------------------------------------------------------- close_forcefully


async def test_close_forcefully_closes_a_socket_stream_at_once_and_wakes_its_reader() -> None:
    with trio.fail_after(CAP):
        async with tcp_pair() as (ours, peer):
            wire = SocketWire(ours)
            woke = trio.Event()
            async with trio.open_nursery() as nursery:

                async def receiver() -> None:
                    with pytest.raises(trio.ClosedResourceError):
                        await wire.receive()
                    woke.set()

                nursery.start_soon(receiver)
                await trio.testing.wait_all_tasks_blocked()
                with trio.testing.assert_no_checkpoints():
                    await close_forcefully(ours)
                assert ours.socket.fileno() == -1
                await close_forcefully(ours)  # twice is harmless
            assert woke.is_set()
            assert await peer.receive_some(10) == b""  # the peer sees the end


async def test_close_forcefully_closes_any_other_stream_as_trio_does() -> None:
    left, right = trio.testing.memory_stream_pair()
    async with right:
        with trio.testing.assert_checkpoints():
            await close_forcefully(left)
        with pytest.raises(trio.ClosedResourceError):
            await left.send_all(b"x")
