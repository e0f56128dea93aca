"""A session: the client leg, the backend leg, and the frames relayed between them.

Invariants:
- One task reads each leg (its pump); `Leg.lock` serialises every write to a leg that may wait.
  A pump holds the destination's lock from the first byte of a frame to its last, so the
  proxy's own pings and closes, which take the lock, always land on a frame boundary. (A chunk
  of whole frames, data or control, that the kernel takes at once while nobody holds the lock
  skips it.) When one of them waits for the lock, the pump lets it go at the end of the frame
  under way, even inside a chunk: a peer that streams frames back to back, no read ending on a
  boundary, cannot keep the proxy's close or ping out.
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
- A session of two plain sockets without a rate limit starts parked (see `parking`): it has no
  pump tasks, and the parker relays for it in line (`relay_ready`) what needs no waiting: data
  frames and close frames the kernel takes whole, and the end of a leg whose close handshake is
  over. Anything else (another control frame, a violation, a write the kernel takes only in
  part, a leg lost without a close, a clock that is due, a shutdown) wakes it: the pumps start
  where the parker stopped, the output it fed but did not write first (`Leg.handed`), and a
  pump whose frame is half-way on the wire holds the other leg's lock from the wake on, so
  nothing of ours lands inside it. A session whose pumps run parks again (their tasks end; they
  were only waiting) at the parker's next sweep once both wait for readability with nothing
  held, no frame half-way, no task but the pumps and no close under way.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import Final

import trio

from wsproxy import closes, keepalive, parking, timers
from wsproxy.closes import Close, Side
from wsproxy.config import Config
from wsproxy.frames import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    Buffer,
    FrameReader,
    close_payload,
)
from wsproxy.legs import Leg
from wsproxy.ratelimit import SessionLimit
from wsproxy.wire import SocketWire, close_forcefully

CHUNK: Final = 65536
# How long we wait for a peer to answer a close frame, or to take one, before dropping it.
CLOSE_TIMEOUT: Final = 5.0

_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


class Session:
    """Relays one client's frames to and from its backend until both legs are gone."""

    __slots__ = (
        "_backend_fd",
        "_backend_prefix",
        "_client_fd",
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
        # While parked, the legs' descriptors: the parker reads and writes them directly (no
        # socket can be closed while parked but by `_drop_parked`, which lets its descriptor go).
        self._client_fd = self._backend_fd = -1
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
            if client_prefix or backend_prefix or not self._park_at_start():
                await self._relay(client_prefix, backend_prefix)
            while self._parking:
                if self._parked:  # and not woken meanwhile
                    self._sleeper = trio.lowlevel.current_task()
                    await trio.lowlevel.wait_task_rescheduled(self._abort_sleep)
                if self._ended:
                    return  # both legs closed while parked
                await self._relay(b"", b"")
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

    def parkable_fds(self, since: float) -> tuple[int, int] | None:
        """Both descriptors, if the session may park: both pumps wait for their legs to turn
        readable, no frame is half-way, no task but the pumps runs (no ping, no watch), no write
        waits, and no close is under way. (A rate-limited session also waits until neither leg
        has been heard from since `since`: its data wakes it, as the parker cannot meter it.)"""
        nursery = self._nursery
        if nursery is None or self._parking or self.close is not None or self._ended:
            return None
        for leg in (self.client, self.backend):
            if (
                not leg.waiting
                or leg.held
                or leg.busy()
                or leg.lost
                or leg.sent_close
                or leg.got_close
                or not leg.reader.at_boundary
                or (self.limit is not None and leg.last_rx > since)
            ):
                return None
        if len(nursery.child_tasks) != 1:  # more than the backend's pump: a ping, a watch
            return None
        return self._fds()

    def _fds(self) -> tuple[int, int]:
        client, backend = self.client.wire, self.backend.wire
        assert isinstance(client, SocketWire)
        assert isinstance(backend, SocketWire)
        self._client_fd, self._backend_fd = client.fileno(), backend.fileno()
        return self._client_fd, self._backend_fd

    def _park_at_start(self) -> bool:
        """Start parked (the parker relays from the first byte), unless the pumps are needed
        from the start: streams that are not sockets, a rate limit, or a clock already due."""
        if self._parker is None or self.limit is not None:
            return False
        due, pings = self._scan(trio.current_time())
        if pings or not isinstance(due, float):
            return False
        if due < math.inf:
            self._timer = timers.at(due, self._due)
        self._parking = self._parked = True
        self._parker.hold(self, self._fds())
        return True

    def park(self) -> None:
        """End both pumps (each waits for readability: cancelling them loses nothing); `run`
        then waits until woken, and the parker relays meanwhile."""
        self._parking = self._parked = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def relay_ready(self, fd: int, now: float) -> bool:
        """The parker saw `fd` turn readable (at `now`): relay what it has, as the pump would,
        if that is all it takes: data frames, or a close frame (no other control frame, no
        violation), the kernel taking every byte at once, no rate limit; or the end of a leg
        whose close handshake is over. False: the session must be woken, and its pump goes on
        from here (with the output fed but not written, `Leg.handed`)."""
        if fd == self._client_fd:
            src, dst, dst_fd = self.client, self.backend, self._backend_fd
        else:
            src, dst, dst_fd = self.backend, self.client, self._client_fd
        if self.limit is not None:
            return False
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return True
        except OSError:
            return False  # the pump reads the error, or the end of stream, again
        if not data:
            if not src.got_close:
                return False  # gone without a close: the other leg must be told, by a pump
            self._drop_parked(src)  # the end of a finished close handshake
            return not self._ended
        src.last_rx = now
        src.bytes_in += len(data)
        reader = src.reader
        out = reader.feed(data)
        controls = reader.controls
        if reader.violation is not None or (
            controls
            and (len(controls) != 1 or controls[0].opcode != OP_CLOSE or dst.sent_close or dst.lost)
        ):
            src.handed = out
            return False
        if out and not (dst.sent_close or dst.lost):
            try:
                sent = os.write(dst_fd, out)
            except BlockingIOError:
                sent = 0
            except OSError:
                src.handed = out  # the pump's write finds the leg gone, and says so
                return False
            if sent != len(out):
                src.handed = out[sent:]
                if sent:
                    src.relayed_mid_frame = True
                return False
            self.last_relay = now
            src.relayed_mid_frame = reader.payload_left > 0
        if controls:  # a close, relayed whole, as `_forward_special` relays it
            close = controls[0]
            src.got_close = dst.sent_close = True
            self._begin_close(Close(close.close_code(), close.close_reason()), src.side)
            self._set_timer(self._deadline)
            assert self._parker is not None  # it is relaying for us
            self._parker.stir()  # trio must see the new deadline
            client = self.client
            if client.sent_close and client.got_close:
                self._drop_parked(client)  # its close handshake is complete: we are its server
        return not self._ended

    def _drop_parked(self, leg: Leg) -> None:
        """Close `leg`'s socket while parked, once the parker has let its descriptor go."""
        wire = leg.wire
        assert isinstance(wire, SocketWire)
        assert self._parker is not None
        leg.lost = True
        self._parker.release(self, wire.fileno())
        wire.close()
        if self.client.lost and self.backend.lost:
            self._ended = True

    def _set_timer(self, when: float) -> None:
        """Look at the clocks at `when`, unless the timer is set for sooner."""
        timer = self._timer
        if timer is not None:
            if timer.when <= when:
                return
            timer.cancel()
        self._timer = timers.at(when, self._due)

    def wake(self) -> None:
        """Start the pumps again (the parker has handed a leg over, a clock is due, or the
        session is being shut down); nothing if it is not parked. A pump that resumes a frame
        half-way takes the other leg's lock here, before any task can write there."""
        self._unpark(holding=True)

    def _unpark(self, *, holding: bool) -> None:
        if not self._parked:
            return
        self._parked = False
        if self._parker is not None:
            self._parker.forget(self)
        if holding:
            for src, dst in ((self.client, self.backend), (self.backend, self.client)):
                if src.relayed_mid_frame:
                    dst.lock.acquire_nowait()  # free: no pump ran, and wakes come before writes
                    src.holds = True
        sleeper, self._sleeper = self._sleeper, None
        if sleeper is not None:
            trio.lowlevel.reschedule(sleeper)

    def _abort_sleep(self, _: object) -> trio.lowlevel.Abort:
        """The parked session is cancelled: it ends, as if woken (no pump resumes)."""
        self._sleeper = None
        self._unpark(holding=False)
        return trio.lowlevel.Abort.SUCCEEDED

    # ---------------------------------------------------------------- the pump

    async def _pump(self, src: Leg, dst: Leg, data: Buffer) -> None:
        """Forward what `src` sends to `dst`, starting with `data` (bytes that came right
        behind the handshake head), until `src` is gone."""
        reader = src.reader
        wire = src.wire
        limit = self.limit if src is self.client else None
        rest: Buffer = b""  # what a limit kept back of the last read, to be fed next
        handed, src.handed = src.handed, None  # what the parker fed and could not write
        try:
            while True:
                frame_rest = 0  # where, in `out`, the frame under way ends (0: not known)
                if handed is not None:
                    out, handed = handed, None
                    now = trio.current_time()
                else:
                    if data:
                        now = trio.current_time()
                    else:
                        out = b""  # a pump that waits holds none of the last chunk
                        src.waiting = True
                        try:
                            await wire.readable()
                            src.waiting = False
                            if self._parking:
                                return  # woken as it parked: what came stays for the parker
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
                        data, rest = await self._within_limit(src, dst, limit, data)
                        if not data:
                            return  # closed for its rate, and dropped
                    src.bytes_in += len(data)
                    frame_rest = reader.payload_left
                    out = reader.feed(data)
                    data = rest
                if reader.controls or reader.violation is not None:
                    await self._forward_special(src, dst, out, frame_rest)
                    violation = reader.violation
                    if violation is not None:
                        await self._send_close(src, Close(violation.code, violation.reason))
                        await self._lose(src)
                        return  # the leg has been told why and dropped
                    await self._settle(src)
                    await self._settle(dst)
                    continue
                if not out or dst.sent_close or dst.lost:
                    continue
                if not src.holds and not reader.payload_left and not dst.busy():
                    # Whole frames, and no other writer: what the kernel takes at once needs no
                    # lock, as no other task runs before the lock is taken for the rest.
                    try:
                        sent = dst.wire.send_now(out)
                    except _GONE:
                        await self._lose(dst)
                        continue
                    if sent == len(out):
                        self.last_relay = now
                        src.relayed_mid_frame = False
                        continue
                    out = out[sent:]
                src.held = True
                try:
                    if not src.holds:
                        lock = dst.lock
                        try:
                            lock.acquire_nowait()
                        except trio.WouldBlock:
                            await lock.acquire()
                        src.holds = True
                        if dst.finished():  # a close got the lock first
                            continue
                    elif 0 < frame_rest < len(out) and dst.awaited():
                        after = await _let_in_at_frame_end(src, dst, out, frame_rest)
                        if after is None:
                            continue
                        out = after
                    src.relayed_mid_frame = True
                    await dst.wire.send_all(out)
                except _GONE:
                    await self._lose(dst)
                    continue
                finally:
                    self._resume(src)
                self.last_relay = now
                if not reader.payload_left:
                    src.relayed_mid_frame = False
                    src.holds = False
                    dst.lock.release()
        finally:
            # A pump cancelled to park held nothing (the session was parkable): a hold there now
            # is one a wake took, since, for the pump that takes over from it.
            if src.holds and not self._parking:
                src.holds = False
                dst.lock.release()
        await self._lose(src)

    async def _forward_special(self, src: Leg, dst: Leg, out: Buffer, frame_rest: int) -> None:
        """Forward `out`, which holds control frames or stops at a violation (and then close
        `dst` for it); the other leg's lock is let go as soon as `out` ends on a boundary, or
        at the end of the frame under way (`frame_rest` bytes in) if a frame of ours waits."""
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
        payload: Buffer = b"".join(pieces)
        if not payload and violation is None:  # only our own pong: nothing to write, no lock
            return
        if (
            violation is None
            and not src.holds
            and reader.at_boundary
            and not dst.busy()
            and not dst.finished()
        ):
            # Whole frames and no other writer: as in `_pump`, what the kernel takes at once
            # needs no lock (most closes and pongs go this way).
            try:
                sent = dst.wire.send_now(payload)
            except _GONE:
                await self._lose(dst)
                return
            if sent == len(payload):
                self.last_relay = trio.current_time()
                dst.sent_close = src.got_close
                return
            payload = payload[sent:]
        src.held = True
        try:
            if not src.holds:
                lock = dst.lock
                try:
                    lock.acquire_nowait()  # free unless another writer has it
                except trio.WouldBlock:
                    await lock.acquire()
                src.holds = True
        finally:
            self._resume(src)
        try:
            if payload and not dst.finished():
                src.held = True
                try:
                    if (
                        src.holds
                        and not reader.stopped  # else `out` ends the stream, and the hold
                        and 0 < frame_rest < len(payload)  # controls come after the frame
                        and dst.awaited()
                    ):
                        after = await _let_in_at_frame_end(src, dst, payload, frame_rest)
                        if after is None:
                            return
                        payload = after
                    src.relayed_mid_frame = True
                    await dst.wire.send_all(payload)
                except _GONE:
                    await self._lose(dst)
                else:
                    self.last_relay = trio.current_time()
                    dst.sent_close = src.got_close
                    src.relayed_mid_frame = not reader.at_boundary
                finally:
                    self._resume(src)
            if violation is not None:
                to_src, to_dst = closes.for_violation(src.side, violation)
                self._begin_close(to_src, Side.PROXY)
                await self._send_close(dst, to_dst, holding=True)
        finally:
            if reader.at_boundary and src.holds:
                src.holds = False
                dst.lock.release()

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
        self, src: Leg, dst: Leg, limit: SessionLimit, data: Buffer
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
                            self._send_close, dst, closes.RATE_LIMITED_PEER, holding=src.holds
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

    async def _send_close(self, leg: Leg, close: Close, *, holding: bool = False) -> None:
        """Write our own close frame to `leg` at a frame boundary, or drop the leg."""
        if leg.sent_close or leg.lost:
            return
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
        dropping a silent leg) goes to a task of its own, `_watch`. A parked session is woken
        only when something is due."""
        self._timer = None
        now = trio.current_time()
        due, pings = self._scan(now)
        if self._parking:
            if pings or not isinstance(due, float) or now >= self._deadline:
                self.wake()  # `run` starts the pumps again, and looks at the clocks then
            elif min(due, self._deadline) < math.inf:
                self._timer = timers.at(min(due, self._deadline), self._due)
            return
        nursery = self._nursery
        if nursery is None:
            return  # the session has ended
        with contextlib.suppress(RuntimeError):  # the nursery closed as its last task ended
            self._start_pings(pings, now, nursery)
            if isinstance(due, float):
                if due < math.inf:
                    self._timer = timers.at(due, self._due)
                return
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
            now = trio.current_time()
            after, pings = self._scan(now)
            self._start_pings(pings, now, nursery)
            if isinstance(after, float):
                if after < math.inf:
                    self._timer = timers.at(after, self._due)
                return
            due = after

    def _start_pings(self, legs: list[Leg], now: float, nursery: trio.Nursery) -> None:
        """Ping each of `legs`, each from a task of its own: one leg that takes its time to
        accept a ping must not hold up the other leg's clock."""
        for leg in legs:
            leg.pinged_at = now
            nursery.start_soon(self._ping, leg)

    def _scan(self, now: float) -> tuple[float | Leg | None, list[Leg]]:
        """What is due at `now` (see `keepalive.scan`)."""
        return keepalive.scan(
            now,
            (self.client, self.backend),
            self.last_relay,
            interval=self._ping_interval,
            timeout=self._ping_timeout,
            idle=self._idle,
        )

    async def _ping(self, leg: Leg) -> None:
        self._pings += 1
        payload = b"wsproxy keepalive %d" % self._pings
        frame = leg.frame(OP_PING, payload)
        other = self._other(leg)
        try:
            leg.lock.acquire_nowait()
        except trio.WouldBlock:
            # Waited for as long as it takes: the clocks judge a leg whose ping waits (see
            # `keepalive`), and the session's end cancels the wait. Its timeout starts when
            # it is written.
            leg.ping_waits = True
            try:
                await leg.lock.acquire()
            finally:
                leg.ping_waits = False
            leg.pinged_at = trio.current_time()
            if self._timer is not None:  # (else `_watch` runs, and looks again itself)
                self._set_timer(leg.pinged_at + self._ping_timeout)
        state = "sending"
        try:
            if leg.sent_close or leg.lost or other.relayed_mid_frame:
                return  # closing, or its pump died mid-frame: nothing can be framed now
            leg.ping_payload = payload
            with trio.move_on_after(self._ping_timeout):
                try:
                    await leg.wire.send_all(frame)
                except _GONE:
                    state = "failed"
                else:
                    state = "sent"
        finally:
            leg.lock.release()
        if state != "sent":  # gone, or cancelled part-way through a frame
            await self._lose(leg)


async def _let_in_at_frame_end(src: Leg, dst: Leg, out: Buffer, frame_end: int) -> Buffer | None:
    """A close or ping of ours waits for `dst`, whose lock `src`'s pump holds with `out` to
    write, and the peer streams on (`out` goes past the frame under way, which ends at
    `frame_end`): write up to there, let the waiting frame in, and take the lock back. The rest
    of `out`, or None if the frame let in was a close (nothing more goes to `dst`)."""
    await dst.wire.send_all(out[:frame_end])
    src.relayed_mid_frame = src.holds = False
    dst.lock.release()  # to the frame that waits
    await dst.lock.acquire()
    src.holds = True
    return None if dst.finished() else out[frame_end:]


async def _write_at_boundary(leg: Leg, other: Leg, frame: bytes) -> bool:
    """Write our own close `frame` to `leg` (its lock held), unless a close got there first, or
    a frame from `other` is half-way there (`relayed_mid_frame`: its pump died mid-frame, or
    was cut short in a write): then nothing can be framed on that leg any more. `sent_close`
    is set only here, with the lock held: a pump that holds it finishes its frame first."""
    if leg.sent_close:
        return True
    if leg.lost or other.relayed_mid_frame:
        return False
    leg.sent_close = True
    try:
        await leg.wire.send_all(frame)
    except _GONE:
        return False
    return True
