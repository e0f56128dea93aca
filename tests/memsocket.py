"""An in-memory model of a connected socket pair, for the relay's virtual-clock tests.

Each direction is a `Pipe`: a buffer of `capacity` bytes, like a kernel's socket buffer. Its
ends are `ImmediateStream`s, so `wsproxy.wire.wire_for` drives them as it drives a real socket:
`send_now` takes what fits at once without a checkpoint (the relay's immediate write path), and
the rest waits for room. The ends also honour trio's whole stream contract (checked by
`trio.testing.check_two_way_stream` in tests/test_wire.py), so a test's peer can use one as an
ordinary stream.

As with a socket, only one task may wait for room on an end at a time (trio's `wait_writable`
raises `BusyResourceError` for a second one): two writers of one leg must take turns by a lock.
Every pipe counts the bytes that went in at once (`sent_now`) and after a wait (`sent_later`).
"""

from __future__ import annotations

import trio

from wsproxy.wire import ImmediateStream

SOCKET_BUFFER = 65536  # a small kernel socket buffer


class Pipe:
    """One direction: bytes written at one end wait here, up to `capacity`, until read."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buffer = bytearray()
        self.sender_closed = False
        self.receiver_closed = False
        self.sent_now = 0  # bytes taken by a write that did not wait
        self.sent_later = 0  # bytes taken by a write after waiting for room
        self.changed = trio.lowlevel.ParkingLot()  # both ends wait on it; woken on every change

    @property
    def room(self) -> int:
        return self.capacity - len(self.buffer)

    def put(self, data: bytes | bytearray | memoryview) -> int:
        if self.sender_closed:
            raise trio.ClosedResourceError("this end was closed")
        if self.receiver_closed:
            raise trio.BrokenResourceError("the peer closed its end")
        taken = min(len(data), self.room)
        if taken:
            self.buffer += memoryview(data)[:taken]
            self.changed.unpark_all()
        return taken

    def close_sender(self) -> None:
        self.sender_closed = True
        self.changed.unpark_all()

    def close_receiver(self) -> None:
        self.receiver_closed = True
        self.buffer.clear()
        self.changed.unpark_all()


class SocketEnd(ImmediateStream):
    """One end of a modelled socket pair: writes to `outgoing`, reads from `incoming`."""

    def __init__(self, outgoing: Pipe, incoming: Pipe) -> None:
        self.outgoing = outgoing
        self.incoming = incoming
        self._sending = False  # in send_all or wait_send_all_might_not_block
        self._receiving = False

    def send_now(self, data: bytes | bytearray | memoryview) -> int:
        taken = self.outgoing.put(data)
        self.outgoing.sent_now += taken
        return taken

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already waiting to write")
        self._sending = True
        try:
            await self._wait_for_room()
        finally:
            self._sending = False

    async def _wait_for_room(self) -> None:
        pipe = self.outgoing
        await trio.lowlevel.checkpoint()
        while not pipe.room and not pipe.sender_closed and not pipe.receiver_closed:
            await pipe.changed.park()
        if pipe.sender_closed:
            raise trio.ClosedResourceError("this end was closed")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already writing")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint()
            view = memoryview(data)
            sent = self.send_now(view)
            while sent < len(view):
                await self._wait_for_room()
                taken = self.outgoing.put(view[sent:])
                self.outgoing.sent_later += taken
                sent += taken
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            if not isinstance(max_bytes, int):
                raise TypeError("max_bytes must be an integer")
            if max_bytes < 1:
                raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already reading")
        self._receiving = True
        try:
            pipe = self.incoming
            await trio.lowlevel.checkpoint()
            while not pipe.buffer and not pipe.sender_closed and not pipe.receiver_closed:
                await pipe.changed.park()
            if pipe.receiver_closed:
                raise trio.ClosedResourceError("this end was closed")
            size = len(pipe.buffer) if max_bytes is None else max_bytes
            data = bytes(pipe.buffer[:size])
            del pipe.buffer[:size]
            pipe.changed.unpark_all()
            return data
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        self.outgoing.close_sender()
        self.incoming.close_receiver()
        await trio.lowlevel.checkpoint()


def socket_pair(capacity: int = SOCKET_BUFFER) -> tuple[SocketEnd, SocketEnd]:
    """Two connected ends, each direction buffering up to `capacity` bytes."""
    left_to_right, right_to_left = Pipe(capacity), Pipe(capacity)
    return SocketEnd(left_to_right, right_to_left), SocketEnd(right_to_left, left_to_right)
