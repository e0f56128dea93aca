"""A session: the client leg, the backend leg, and the frames relayed between them.

Invariants:
- One task reads each leg (its pump); `Leg.lock` serialises every write to a leg that may wait.
  A pump holds the destination's lock from the first byte of a frame to its last, so the
  proxy's own pings and closes, which take the lock, always land on a frame boundary. (A chunk
  of whole frames, data or control, that the kernel takes at once while nobody holds the lock
  skips it.)
- Frames are forwarded as they arrived (payload bytes untouched, so compression negotiated end to
  end keeps working); only our own keepalive pongs are dropped. A close frame the reader refuses
  (RFC 6455 keeps it off the wire) is a violation like any other: never forwarded, and never
  taken for the session's close (which, unless one came before, is the proxy's answer to it).
- A pump forwards a chunk before it reads the next one: a peer that stops reading stops its
  sender, and a session holds at most one chunk per direction in memory.
- Keepalive judges a leg only by what we could have heard: while a leg's pump waits to write to
  the other leg (`Leg.held`), that leg is neither pinged nor declared dead, and its silence
  counts from the moment the wait ends. When both legs are held (neither peer reads), both are
  judged as usual, so two stalled peers cannot hold a session for ever.
- With `limits.per_session`, the client's bytes go to its frame reader only as fast as
  `ratelimit.SessionLimit` allows: throttled, its pump stops reading (holding at most the rest
  of the chunk it read) and counts as `held` while it waits; with `action: close`, the client
  gets 1008 and the backend 1001 instead. Time the client's pump spends `held` by its backend
  is credited to the buckets (`SessionLimit.credit`): a client is judged by when it could
  send, not by when the proxy got round to reading it. Without limits the pump pays one
  `None` test a chunk (and one more when a write has to wait).
- A close the proxy begins (`shutdown`, a violation, a rate limit) is sent to each leg by the
  code that began it: a leg lost meanwhile (a backend that has part of a client's frame can
  take no close frame, so it is dropped) does not make the other hear 1011 or 1001 instead.
- After a close frame has been written to a leg, nothing else is. The session ends when both
  legs are gone: the client's TCP is closed by us once its close handshake completes (we are its
  server), the backend's when the backend closes it (we are its client), and every wait for a
  close is bounded by `CLOSE_TIMEOUT`.
- A session of two plain sockets parks (see `parking`) once both pumps have waited for
  readability for `parking.PARK_AFTER` with nothing held, no frame half-way, no task but the
  pumps and no close under way: the pumps end (they were only waiting, so nothing is lost) and
  the task that runs the session waits, with no nursery, until a leg turns readable, a clock is
  due or the session is shut down; then the pumps start again where they were (the readers,
  locks and clocks are the session's, not the pumps').
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import Final

import trio

from wsproxy import closes, parking, timers
from wsproxy.closes import Close, Side
from wsproxy.config import Config
from wsproxy.frames import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    Buffer,
    FrameReader,
    close_payload,
    control_frame,
)
from wsproxy.ratelimit import SessionLimit
from wsproxy.wire import SocketWire, close_forcefully, wire_for

CHUNK: Final = 65536
# How long we wait for a peer to answer a close frame, or to take one, before dropping it.
CLOSE_TIMEOUT: Final = 5.0

_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


class Leg:
    """One connection of a session: its stream, the frames it sends us, and its close state."""

    __slots__ = (
        "_lock",
        "bytes_in",
        "got_close",
        "held",
        "last_rx",
        "lost",
        "masks",
        "ping_payload",
        "pinged_at",
        "reader",
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
        self._lock: trio.StrictFIFOLock | None = None  # made at its first use: most legs never wait
        self.last_rx = trio.current_time()
        self.held = False  # its pump waits on the other leg, so nothing of it can be heard
        self.waiting = False  # its pump waits for it to turn readable
        self.bytes_in = 0
        self.ping_payload = b""  # our latest keepalive ping's payload; its pong is not relayed
        self.pinged_at = -math.inf
        self.sent_close = False
        self.got_close = False
        self.lost = False

    @property
    def lock(self) -> trio.StrictFIFOLock:
        if self._lock is None:
            self._lock = trio.StrictFIFOLock()
        return self._lock

    def busy(self) -> bool:
        """Someone holds the lock (a write to this leg is under way)."""
        return self._lock is not None and self._lock.locked()

    def frame(self, opcode: int, payload: bytes) -> bytes:
        return control_frame(opcode, payload, os.urandom(4) if self.masks else None)


class Session:
    """Relays one client's frames to and from its backend until both legs are gone."""

    __slots__ = (
        "_backend_prefix",
        "_client_prefix",
        "_deadline",
        "_ended",
        "_idle",
        "_nursery",
        "_parked",
        "_parker",
        "_parking",
        "_ping_interval",
        "_ping_timeout",
        "_pings",
        "_sleeper",
        "_timer",
        "backend",
        "client",
        "close",
        "closed_by",
        "last_relay",
        "limit",
    )

    def __init__(
        self,
        config: Config,
        client: trio.abc.Stream,
        backend: trio.abc.Stream,
        *,
        compressed: bool,
        client_prefix: bytes = b"",
        backend_prefix: bytes = b"",
    ) -> None:
        size = config.security.max_message_size
        self.client = Leg(
            Side.CLIENT,
            client,
            FrameReader(masked=True, compressed=compressed, max_message_size=size),
        )
        self.backend = Leg(
            Side.BACKEND,
            backend,
            FrameReader(masked=False, compressed=compressed, max_message_size=size),
        )
        self._client_prefix = client_prefix
        self._backend_prefix = backend_prefix
        self._idle = config.timeouts.idle
        self._ping_interval = config.keepalive.interval
        self._ping_timeout = config.keepalive.timeout
        self.last_relay = trio.current_time()
        self.close: Close | None = None  # the first close of the session, and who began it
        self.closed_by: Side | None = None
        # The session ends at `_deadline` (CLOSE_TIMEOUT after its first close), or once `_ended`
        # (both legs gone): the nursery's own scope carries both while it runs.
        self._deadline = math.inf
        self._ended = False
        self._nursery: trio.Nursery | None = None  # while running
        self._timer: timers.Timer | None = None  # when the clocks are looked at next
        self._pings = 0
        # Parking (see `parking`): only a session of two plain sockets parks. `_parking` from
        # `park()` until the pumps run again; `_parked` until woken; `_sleeper`, the task that
        # runs the session, while it waits parked.
        self._parker = (
            parking.parker()
            if isinstance(self.client.wire, SocketWire)
            and isinstance(self.backend.wire, SocketWire)
            else None
        )
        self._parking = False
        self._parked = False
        self._sleeper: trio.lowlevel.Task | None = None
        per_session = config.limits.per_session
        self.limit = (  # what the client may send; None: no limit
            None
            if per_session is None
            else SessionLimit(
                self.last_relay,
                messages_per_second=per_session.messages_per_second,
                burst=per_session.burst,
                bytes_per_second=per_session.bytes_per_second,
                closes=per_session.action == "close",
            )
        )

    # ---------------------------------------------------------------- running

    async def run(self) -> None:
        """Relay until both legs are gone (or `CLOSE_TIMEOUT` after the first close)."""
        client_prefix, backend_prefix = self._client_prefix, self._backend_prefix
        self._client_prefix = self._backend_prefix = b""
        try:
            while True:
                await self._relay(client_prefix, backend_prefix)
                if not self._parking:
                    return
                client_prefix = backend_prefix = b""
                if self._parked:  # and not woken meanwhile
                    self._sleeper = trio.lowlevel.current_task()
                    await trio.lowlevel.wait_task_rescheduled(self._abort_sleep)
        finally:
            self._nursery = None
            if self._parker is not None:
                self._parker.forget(self)
            if self._timer is not None:
                self._timer.cancel()
            for leg in (self.client, self.backend):
                leg.lost = True
                await close_forcefully(leg.stream)

    async def _relay(self, client_prefix: Buffer, backend_prefix: Buffer) -> None:
        """Run both pumps until the session ends or parks. (A frame of its own: the one the
        pumps' cancellation passes through is not kept by a parked session.)"""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._parking = False
            nursery.cancel_scope.deadline = self._deadline
            if self._ended:
                nursery.cancel_scope.cancel()
            self.client.waiting = self.backend.waiting = False
            nursery.start_soon(self._pump, self.backend, self.client, backend_prefix)
            if self._timer is None:  # at the start, or woken by the clocks themselves
                self._due()  # the keepalive and idle clocks start (again)
            if self._parker is not None:
                self._parker.watch(self)
            await self._pump(self.client, self.backend, client_prefix)
        self._nursery = None

    async def shutdown(self, close: Close = closes.SHUTDOWN) -> None:
        """Ask both peers to close, as the proxy; the session ends when they have."""
        self.wake()
        self._begin_close(close, Side.PROXY)
        async with trio.open_nursery() as nursery:
            for leg in (self.client, self.backend):
                nursery.start_soon(functools.partial(self._send_close, leg, close, holding=False))

    @property
    def messages(self) -> tuple[int, int]:
        """Messages (client to backend, backend to client)."""
        return self.client.reader.messages, self.backend.reader.messages

    # ---------------------------------------------------------------- parking

    def quiet_fds(self, since: float) -> tuple[int, int] | None:
        """Both descriptors, if the session may park: both pumps wait for their legs to turn
        readable, neither leg has been heard from since `since`, no frame is half-way, no task
        but the pumps runs (no ping, no watch), no write waits, and no close is under way."""
        nursery = self._nursery
        if nursery is None or self._parking or self.close is not None or self._ended:
            return None
        for leg in (self.client, self.backend):
            if (
                not leg.waiting
                or leg.last_rx > since
                or leg.held
                or leg.busy()
                or leg.lost
                or leg.sent_close
                or leg.got_close
                or not leg.reader.at_boundary
            ):
                return None
        if len(nursery.child_tasks) != 1:  # more than the backend's pump: a ping, a watch
            return None
        client, backend = self.client.wire, self.backend.wire
        assert isinstance(client, SocketWire)
        assert isinstance(backend, SocketWire)
        return client.fileno(), backend.fileno()

    def park(self) -> None:
        """End both pumps (each waits for readability: cancelling them loses nothing); `run`
        then waits until woken."""
        self._parking = self._parked = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def wake(self) -> None:
        """Start the pumps again (the parker has seen a leg turn readable, a clock is due, or
        the session is being shut down); nothing if it is not parked."""
        if not self._parked:
            return
        self._parked = False
        if self._parker is not None:
            self._parker.forget(self)
        sleeper, self._sleeper = self._sleeper, None
        if sleeper is not None:
            trio.lowlevel.reschedule(sleeper)

    def _abort_sleep(self, _: object) -> trio.lowlevel.Abort:
        """The parked session is cancelled: it ends, as if woken."""
        self._sleeper = None
        self.wake()
        return trio.lowlevel.Abort.SUCCEEDED

    # ---------------------------------------------------------------- the pump

    async def _pump(self, src: Leg, dst: Leg, data: Buffer) -> None:
        """Forward what `src` sends to `dst`, starting with `data` (bytes that came right
        behind the handshake head), until `src` is gone."""
        reader = src.reader
        wire = src.wire
        limit = self.limit if src is self.client else None
        rest: Buffer = b""  # what a limit kept back of the last read, to be fed next
        holding = False
        try:
            while True:
                if data:
                    now = trio.current_time()
                else:
                    out: Buffer = b""  # a pump that waits holds none of the last chunk
                    src.waiting = True
                    try:
                        await wire.readable()
                        src.waiting = False
                        if self._parking:
                            return  # woken as it parked: what came stays for the pumps to come
                        read = wire.read_now()
                    except _GONE:
                        break
                    if read is None:
                        continue  # woken, but nothing to read yet
                    if not read:
                        break
                    data, read = read, None
                    now = src.last_rx = trio.current_time()
                if limit is not None:
                    data, rest = await self._within_limit(src, dst, limit, data, holding)
                    if not data:
                        return  # closed for its rate, and dropped
                src.bytes_in += len(data)
                out = reader.feed(data)
                data = rest
                if reader.controls or reader.violation is not None:
                    holding = await self._forward_special(src, dst, out, holding)
                    if reader.violation is not None:
                        return  # the leg has been told why and dropped
                    continue
                if not out or dst.sent_close or dst.lost:
                    continue
                if not holding and not reader.payload_left and not dst.busy():
                    # Whole frames, and no other writer: what the kernel takes at once needs no
                    # lock, as no other task runs before the lock is taken for the rest.
                    try:
                        sent = dst.wire.send_now(out)
                    except _GONE:
                        await self._lose(dst)
                        continue
                    if sent == len(out):
                        self.last_relay = now
                        continue
                    out = out[sent:]
                src.held = True
                try:
                    if not holding:
                        lock = dst.lock
                        try:
                            lock.acquire_nowait()
                        except trio.WouldBlock:
                            await lock.acquire()
                        holding = True
                    await dst.wire.send_all(out)
                except _GONE:
                    await self._lose(dst)
                    continue
                finally:
                    self._resume(src)
                self.last_relay = now
                if not reader.payload_left:
                    dst.lock.release()
                    holding = False
        finally:
            if holding:
                dst.lock.release()
        await self._lose(src)

    async def _forward_special(self, src: Leg, dst: Leg, out: Buffer, holding: bool) -> bool:
        """Forward `out`, which holds control frames or stops at a violation; return `holding`."""
        reader = src.reader
        violation = reader.violation
        pieces: list[Buffer] = []
        start = 0
        for control in reader.controls:
            if (
                control.opcode == OP_PONG
                and src.ping_payload
                and control.payload == src.ping_payload
            ):
                pieces.append(out[start : control.start])
                start = control.end
            elif control.opcode == OP_CLOSE:
                src.got_close = True
                self._begin_close(Close(control.close_code(), control.close_reason()), src.side)
        pieces.append(out[start:])
        payload = b"".join(pieces)
        if not payload and violation is None:  # only our own pong: nothing to write, no lock
            await self._settle(src)
            await self._settle(dst)
            return holding
        if (
            violation is None
            and not holding
            and reader.at_boundary
            and not dst.busy()
            and not dst.sent_close
            and not dst.lost
        ):
            # Whole frames and no other writer: as in `_pump`, what the kernel takes at once
            # needs no lock (most closes and pongs go this way).
            try:
                sent = dst.wire.send_now(payload)
            except _GONE:
                await self._lose(dst)
                sent = len(payload)
            else:
                if sent == len(payload):
                    self.last_relay = trio.current_time()
                    dst.sent_close = src.got_close
            if sent == len(payload):
                await self._settle(src)
                await self._settle(dst)
                return False
            payload = payload[sent:]
        src.held = True
        try:
            if not holding:
                lock = dst.lock
                try:
                    lock.acquire_nowait()  # free unless another writer has it
                except trio.WouldBlock:
                    await lock.acquire()
        finally:
            self._resume(src)
        try:
            if payload and not dst.sent_close and not dst.lost:
                src.held = True
                try:
                    await dst.wire.send_all(payload)
                except _GONE:
                    await self._lose(dst)
                else:
                    self.last_relay = trio.current_time()
                    dst.sent_close = src.got_close
                finally:
                    self._resume(src)
            if violation is not None:
                to_src, to_dst = closes.for_violation(src.side, violation)
                self._begin_close(to_src, Side.PROXY)
                await self._send_close(dst, to_dst, holding=True)
        finally:
            holding = not reader.at_boundary
            if not holding:
                dst.lock.release()
        if violation is not None:
            await self._send_close(src, Close(violation.code, violation.reason), holding=False)
            await self._lose(src)
        else:
            await self._settle(src)
            await self._settle(dst)
        return holding

    def _resume(self, src: Leg) -> None:
        """`src`'s pump is done waiting on the other leg (`held` since `src.last_rx`, the
        instant it last read or last waited): its silence counts from now, and the wait is not
        counted against its rate limit (what its client sent meanwhile is read late)."""
        since = src.last_rx
        src.held = False
        src.last_rx = trio.current_time()
        if self.limit is not None and src is self.client:
            self.limit.credit(since, src.last_rx)

    async def _within_limit(
        self, src: Leg, dst: Leg, limit: SessionLimit, data: Buffer, holding: bool
    ) -> tuple[Buffer, Buffer]:
        """The part of `data` that `limit` lets through, once it does (meanwhile nothing is
        read from `src`), and the rest; (b"", b"") when the session was closed for it."""
        reader = src.reader
        while not (src.sent_close or dst.sent_close or dst.lost):  # then nothing is relayed
            now = trio.current_time()
            take = limit.allowance(now, reader.messages, reader.payload_left, data, reader.pending)
            if take:
                return (data, b"") if take == len(data) else (data[:take], data[take:])
            if limit.closes:
                limit.exceeded = True
                self._begin_close(closes.RATE_LIMIT, Side.PROXY)
                async with trio.open_nursery() as nursery:  # neither peer waits on the other
                    nursery.start_soon(
                        functools.partial(
                            self._send_close, dst, closes.RATE_LIMITED_PEER, holding=holding
                        )
                    )
                    nursery.start_soon(
                        functools.partial(self._send_close, src, closes.RATE_LIMIT, holding=False)
                    )
                await self._lose(src)
                return b"", b""
            src.held = True
            try:
                await trio.sleep_until(limit.ready_at(now, reader.payload_left, len(data)))
            finally:
                src.held = False
                src.last_rx = trio.current_time()
                limit.throttled += src.last_rx - now
        return data, b""

    # ---------------------------------------------------------------- closing

    def _begin_close(self, close: Close, by: Side) -> None:
        if self.close is None:
            self.close = close
            self.closed_by = by
            self._deadline = min(self._deadline, trio.current_time() + CLOSE_TIMEOUT)
            if self._nursery is not None:
                self._nursery.cancel_scope.deadline = self._deadline

    async def _send_close(self, leg: Leg, close: Close, *, holding: bool) -> None:
        """Write our own close frame to `leg` at a frame boundary, or drop the leg."""
        if leg.sent_close or leg.lost:
            return
        leg.sent_close = True
        frame = leg.frame(OP_CLOSE, close_payload(close.code, close.reason))
        other = self._other(leg)
        sent = False
        with trio.move_on_after(CLOSE_TIMEOUT):
            if holding:
                sent = await _write_at_boundary(leg, other, frame)
            else:
                async with leg.lock:
                    sent = await _write_at_boundary(leg, other, frame)
        if sent:
            await self._settle(leg)
        else:
            await self._lose(leg)

    async def _settle(self, leg: Leg) -> None:
        """Close the client's TCP once its close handshake is complete (we are its server)."""
        if leg is self.client and leg.sent_close and leg.got_close and not leg.lost:
            await self._drop(leg)

    def _other(self, leg: Leg) -> Leg:
        return self.backend if leg is self.client else self.client

    async def _lose(self, leg: Leg) -> None:
        """`leg` is gone or given up on: drop it, and tell the other side if it must be told."""
        if leg.lost:
            return
        await self._drop(leg)
        if leg.got_close or self.closed_by is Side.PROXY:
            # It closed properly (its close frame went to the other side), or the proxy is
            # closing the session and tells each leg its own close: a leg it gave up on (one
            # that cannot take a close mid-frame) must not make the other hear "went away".
            return
        survivor = closes.for_survivor_of(leg.side)
        self._begin_close(survivor, leg.side)
        other = self._other(leg)
        await self._send_close(other, survivor, holding=False)

    async def _drop(self, leg: Leg) -> None:
        leg.lost = True
        await close_forcefully(leg.stream)
        if self.client.lost and self.backend.lost:
            self._ended = True
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()

    # ---------------------------------------------------------------- keepalive and idle

    def _due(self) -> None:
        """Look at the clocks now (the timer set for now, or the session's start): start the
        pings due, and set the timer for the next instant; anything that waits (idle close,
        dropping a silent leg) goes to a task of its own, `_watch`."""
        self._timer = None
        if self._parking:
            self.wake()  # `run` starts the pumps again, and looks at the clocks then
            return
        nursery = self._nursery
        if nursery is None:
            return  # the session has ended
        due = self._scan(trio.current_time(), nursery)
        if isinstance(due, float):
            if due < math.inf:
                self._timer = timers.at(due, self._due)
            return
        with contextlib.suppress(RuntimeError):  # the nursery closed as its last task ended
            nursery.start_soon(self._watch, due)

    async def _watch(self, due: Leg | None) -> None:
        """Close the idle session (`due` None), or drop a silent leg and look again."""
        while True:
            if due is None:
                await self.shutdown(closes.IDLE)
                return  # the clocks stop
            await self._lose(due)
            nursery = self._nursery
            if nursery is None:
                return
            after = self._scan(trio.current_time(), nursery)
            if isinstance(after, float):
                if after < math.inf:
                    self._timer = timers.at(after, self._due)
                return
            due = after

    def _scan(self, now: float, nursery: trio.Nursery) -> float | Leg | None:
        """Ping silent legs (each from a task of its own: one leg that takes its time to accept
        a ping must not hold up the other leg's clock), and say what else is due: None when
        the session is idle, a leg silent past its timeout, or else the next instant to look.
        """
        interval, timeout, idle = self._ping_interval, self._ping_timeout, self._idle
        wake = math.inf
        if idle:
            idle_at = self.last_relay + idle
            if now >= idle_at:
                return None
            wake = idle_at
        if interval:
            for leg in (self.client, self.backend):
                if leg.lost or leg.sent_close:
                    continue
                if leg.held and not self._other(leg).held:  # its silence is ours
                    wake = min(wake, now + interval)
                    continue
                ping_at = leg.last_rx + interval
                dead_at = ping_at + timeout
                if now >= dead_at:
                    return leg
                if now >= ping_at:
                    if leg.pinged_at <= leg.last_rx:  # not pinged since it was last heard
                        leg.pinged_at = now
                        nursery.start_soon(self._ping, leg)
                    wake = min(wake, dead_at)
                else:
                    wake = min(wake, ping_at)
        return wake

    async def _ping(self, leg: Leg) -> None:
        self._pings += 1
        payload = b"wsproxy keepalive %d" % self._pings
        frame = leg.frame(OP_PING, payload)
        other = self._other(leg)
        state = "waiting"
        with trio.move_on_after(self._ping_timeout):
            async with leg.lock:
                if leg.sent_close or leg.lost or not other.reader.at_boundary:
                    return  # closing, or its pump died mid-frame: nothing can be framed now
                leg.ping_payload = payload
                state = "sending"
                try:
                    await leg.wire.send_all(frame)
                except _GONE:
                    state = "failed"
                else:
                    state = "sent"
        if state in ("sending", "failed"):  # gone, or cancelled part-way through a frame
            await self._lose(leg)


async def _write_at_boundary(leg: Leg, other: Leg, frame: bytes) -> bool:
    """Write our own `frame` to `leg` (its lock held), unless a frame from `other` is half-way
    there (its pump died mid-frame): then nothing can be framed on that leg any more."""
    if not other.reader.at_boundary:
        return False
    try:
        await leg.wire.send_all(frame)
    except _GONE:
        return False
    return True
