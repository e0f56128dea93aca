"""One connection of a session, as the relay keeps it: its stream and wire, the frame reader of
what it sends us, its close state, the lock for writes to it, and what the keepalive clocks and
the parker need to know of it.

Invariants:
- Every write to a leg that may wait holds `Leg.lock`; a pump holds the other leg's lock from
  the first byte of a frame it writes to the last (`holds`), so our own frames land on frame
  boundaries. The lock is a semaphore, not a task-owned lock: the parker's wake takes it for
  the pump about to resume a frame half-way.
- `relayed_mid_frame` is what has been written of its frames to the other leg, not what its
  reader has seen: it is set before a write that may stop part-way, and cleared only when a
  write ended on a frame boundary.
- `sent_close` is set once a close frame has been written to it (ours or its peer's), `lost`
  once it is dropped: after either, nothing more is written to it (`finished`).
"""

from __future__ import annotations

import math
import os

import trio

from wsproxy.closes import Side
from wsproxy.frames import Buffer, FrameReader, control_frame
from wsproxy.wire import wire_for


class Leg:
    """One connection of a session: its stream, the frames it sends us, and its close state."""

    __slots__ = (
        "_lock",
        "bytes_in",
        "got_close",
        "handed",
        "held",
        "holds",
        "last_rx",
        "lost",
        "masks",
        "ping_payload",
        "ping_waits",
        "pinged_at",
        "reader",
        "relayed_mid_frame",
        "sent_close",
        "side",
        "stream",
        "waiting",
        "wire",
    )

    def __init__(self, side: Side, stream: trio.abc.Stream, reader: FrameReader) -> None:
        self.side = side
        self.stream = stream
        self.wire = wire_for(stream)
        self.reader = reader
        self.masks = side is Side.BACKEND  # frames we write to a server are masked
        # Every write that may wait holds it. A semaphore, not a lock: the parker's wake takes it
        # for the pump about to resume a frame half-way (see `Session.wake`). Made at its first
        # use: most legs never wait.
        self._lock: trio.Semaphore | None = None
        self.last_rx = trio.current_time()
        self.held = False  # its pump waits on the other leg, so nothing of it can be heard
        self.waiting = False  # its pump waits for it to turn readable
        self.bytes_in = 0
        self.ping_payload = b""  # our latest keepalive ping's payload; its pong is not relayed
        self.pinged_at = -math.inf  # when our latest ping was asked for, or written if later
        self.ping_waits = False  # our ping waits for the lock (a frame may be half-way here)
        self.sent_close = False
        self.got_close = False
        self.lost = False
        # Its pump holds the other leg's lock (from a frame's first byte written to its last):
        # kept here, not in the pump's frame, so every path that releases it says so at once.
        self.holds = False
        # What has been written of its frames to the other leg ends inside a frame (also while
        # such a write is under way, and after one cut short): no frame of ours may follow.
        self.relayed_mid_frame = False
        # Left by the parker's relay for this leg's pump (see `Session.relay_ready`): output fed
        # but not (all) written yet.
        self.handed: Buffer | None = None

    @property
    def lock(self) -> trio.Semaphore:
        if self._lock is None:
            self._lock = trio.Semaphore(1, max_value=1)
        return self._lock

    def finished(self) -> bool:
        """A close frame has been written to it, or it is gone: nothing more goes to it."""
        return self.sent_close or self.lost

    def busy(self) -> bool:
        """Someone holds the lock (a write to this leg is under way)."""
        return self._lock is not None and self._lock.value == 0

    def awaited(self) -> bool:
        """A frame of our own (a close, a ping) waits for the lock, to go in at a frame end."""
        return self._lock is not None and self._lock.statistics().tasks_waiting > 0

    def frame(self, opcode: int, payload: bytes) -> bytes:
        return control_frame(opcode, payload, os.urandom(4) if self.masks else None)
