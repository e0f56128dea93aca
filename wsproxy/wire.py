"""Moving a leg's bytes: straight on the socket when it is one, through the trio stream otherwise.

A stream that is not a socket but can also take bytes without waiting (an `ImmediateStream`,
such as the relay tests' in-memory socket model) is driven the way a socket is: `send_now`
first, and a wait for room only for what it did not take.

Invariants:
- `receive` always waits for readiness first, so it is a checkpoint on every call: a pump that
  finds data every time still lets other tasks run. A pump reads in two steps, `readable()`
  (the wait, always a checkpoint) then `read_now()` (never waits; None when a wake-up found
  nothing to read yet), so that a socket leg's idle pump waits in trio's own frames, with none
  of ours between.
- `send_all` returns without a checkpoint when the kernel takes the whole chunk at once, which is
  the common case; it waits for writability only when the socket buffer is full. `send_now`
  never waits (and on a plain trio stream sends nothing), so no other task runs during it.
- Every failure surfaces as `trio.BrokenResourceError` (peer gone) or
  `trio.ClosedResourceError` (we closed it), as with trio's own streams.
- The descriptor is read from the socket after every wait, never kept: a closed socket can
  never read or write a descriptor number that a newer connection has reused.
- `close_forcefully` closes like `trio.aclose_forcefully`; a plain socket stream is closed at once,
  without the cancelled scope and the checkpoint (each a visible share of a short session).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Awaitable
from typing import Final

import trio

CHUNK: Final = 65536


class SocketWire:
    """A plain TCP leg, read and written with `os.read`/`os.write` on its descriptor.

    The descriptor is looked up again after every wait: a closed socket's is -1, so a
    descriptor number that a newer connection has reused is never touched.
    """

    __slots__ = ("_socket",)

    def __init__(self, stream: trio.SocketStream) -> None:
        self._socket = stream.socket  # not its bound `fileno`: one object less per leg

    def fileno(self) -> int:
        """The socket's descriptor now (ClosedResourceError once it is closed)."""
        return self._fd()

    def close(self) -> None:
        """Close the socket at once (waking any task that waits on it)."""
        self._socket.close()

    def _fd(self) -> int:
        fd = self._socket.fileno()
        if fd < 0:
            raise trio.ClosedResourceError
        return fd

    def readable(self) -> Awaitable[None]:
        """Wait until the socket can be read (trio's own wait, with no frame of ours)."""
        return trio.lowlevel.wait_readable(self._fd())  # noqa: ASYNC105 (the caller awaits it)

    def read_now(self) -> bytes | None:
        """What the kernel has for us now (b"" at end of stream), or None if nothing yet."""
        try:
            return os.read(self._fd(), CHUNK)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from None

    async def receive(self) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self._fd())
            try:
                return os.read(self._fd(), CHUNK)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from None

    def send_now(self, data: bytes | bytearray | memoryview) -> int:
        """Write what the kernel takes at once, without waiting; return how many bytes."""
        try:
            return os.write(self._fd(), data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sent = self.send_now(data)
        size = len(data)
        if sent == size:
            return
        view = memoryview(data)
        while sent < size:
            await trio.lowlevel.wait_writable(self._fd())
            try:
                sent += os.write(self._fd(), view[sent:])
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from None


class StreamWire:
    """Any other trio stream: a read is `receive_some`, which `readable` does ahead for
    `read_now`; nothing can be written without waiting."""

    __slots__ = ("_pending", "_stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._pending: bytes | bytearray | None = None  # read by `readable`, for `read_now`

    async def receive(self) -> bytes | bytearray:
        return await self._stream.receive_some(CHUNK)

    async def readable(self) -> None:
        if self._pending is None:
            self._pending = await self._stream.receive_some(CHUNK)
        else:
            await trio.lowlevel.checkpoint()

    def read_now(self) -> bytes | bytearray | None:
        data, self._pending = self._pending, None
        return data

    def send_now(self, data: bytes | bytearray | memoryview) -> int:
        """A trio stream can't write without waiting: nothing is sent now."""
        return 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)


class ImmediateStream(trio.abc.Stream):
    """A stream that, like a socket, can take bytes at once without a checkpoint."""

    @abc.abstractmethod
    def send_now(self, data: bytes | bytearray | memoryview) -> int:
        """Take what fits at once, without waiting or a checkpoint; return how many bytes."""


class ImmediateWire(StreamWire):
    """An `ImmediateStream` driven as `SocketWire` drives a socket: what `send_now` takes needs
    no checkpoint; `wait_send_all_might_not_block` stands in for waiting until writable."""

    __slots__ = ("_immediate",)

    def __init__(self, stream: ImmediateStream) -> None:
        super().__init__(stream)
        self._immediate = stream

    def send_now(self, data: bytes | bytearray | memoryview) -> int:
        return self._immediate.send_now(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        stream = self._immediate
        sent = stream.send_now(data)
        size = len(data)
        if sent == size:
            return
        view = memoryview(data)
        while sent < size:
            await stream.wait_send_all_might_not_block()
            sent += stream.send_now(view[sent:])


def wire_for(stream: trio.abc.Stream) -> SocketWire | StreamWire | ImmediateWire:
    if isinstance(stream, trio.SocketStream):
        return SocketWire(stream)
    if isinstance(stream, ImmediateStream):
        return ImmediateWire(stream)
    return StreamWire(stream)


async def close_forcefully(stream: trio.abc.AsyncResource) -> None:
    """Close `stream` at once, as `trio.aclose_forcefully` does. A socket stream is closed
    directly (waking any task that waits on it), which is not a checkpoint."""
    if type(stream) is trio.SocketStream:
        stream.socket.close()
    else:
        await trio.aclose_forcefully(stream)
