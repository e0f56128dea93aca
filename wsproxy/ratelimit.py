"""Token buckets: how much of a client's traffic may pass now, and when the rest may.

Invariants:
- Pure: no clock and no I/O; every question carries `now` (trio's clock, in seconds), and time
  never runs backwards for one bucket (an earlier `now` counts as no time passed).
- A bucket holds at most `capacity` tokens and gains `rate` a second. Whatever passes in any
  span of T seconds is at most `capacity + rate * T`: tokens are taken before (or, for a
  session's messages, by the time) what they pay for passes, and never go below zero.
  The one exception is `credit`: time in which the owner was not read for reasons of ours
  earns its tokens without the cap (what it sent meanwhile is read late, all at once); tokens
  above `capacity` are not refilled but drain at `rate`, so an unused credit of H seconds is
  gone H seconds later at most.
- A session's messages are counted when their final frame's header has been read
  (`FrameReader.messages`), its bytes as they are read. `SessionLimit.allowance` says how many
  of the bytes read may be given to the frame reader now: few enough that the messages they
  can complete (each frame header from a client is at least `MIN_CLIENT_HEADER` bytes) and
  the bytes they are fit both buckets. The messages so completed are paid for at the next call.
  With no message token left, what comes before the next message's final header (control
  frames, fragments that are not final, the start of that header) still passes: only a
  message waits for a token, and only a message can be over the limit.
- `HandshakeLimit` keeps a bucket per client IP only while it is not full: a full bucket is
  the same as none, so buckets are forgotten once full, and memory follows the IPs that used
  a handshake in the last `burst / rate` seconds, not every IP ever seen.
"""

from __future__ import annotations

import math
from typing import Final

from wsproxy.frames import Buffer

# A client's frame header: 2 bytes, and 4 of masking key (RFC 6455 5.3, every client frame).
MIN_CLIENT_HEADER: Final = 6
# Float arithmetic may leave a refilled bucket a hair under a whole token; that hair is a token.
_EPSILON: Final = 1e-9
# How many buckets `HandshakeLimit` keeps before it first looks for full ones to forget.
_PRUNE_FLOOR: Final = 1024


class TokenBucket:
    """`capacity` tokens at most, refilled at `rate` a second; starts full at `now`."""

    __slots__ = ("_stamp", "_tokens", "capacity", "rate")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("a bucket needs a positive rate and capacity")
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity
        self._stamp = now

    def tokens(self, now: float) -> float:
        """The tokens in the bucket at `now`."""
        if now > self._stamp:
            gained = (now - self._stamp) * self.rate
            if self._tokens > self.capacity:  # what is left of a credit drains away
                self._tokens = max(self.capacity, self._tokens - gained)
            else:
                self._tokens = min(self.capacity, self._tokens + gained)
            self._stamp = now
        return self._tokens

    def credit(self, since: float, now: float) -> None:
        """The owner was not read from `since` to `now` for reasons of ours: that time earns
        its tokens beyond `capacity` (nothing was taken from the bucket meanwhile)."""
        since = max(since, self._stamp)
        if now > since:
            self._tokens = self.tokens(since) + (now - since) * self.rate
            self._stamp = now

    def whole(self, now: float) -> int:
        """The whole tokens in the bucket at `now`."""
        return math.floor(self.tokens(now) + _EPSILON)

    def take(self, now: float, count: float) -> None:
        """Take `count` tokens at `now` (the caller made sure they are there)."""
        self._tokens = self.tokens(now) - count

    def ready_at(self, now: float, count: float) -> float:
        """The first instant, from `now` on, at which the bucket holds `count` tokens
        (`count` at most `capacity`)."""
        tokens = self.tokens(now)
        if tokens + _EPSILON >= count:
            return now
        # Never `now` itself: a wait too short for the clock to tell still moves it on.
        return max(now + (count - tokens) / self.rate, math.nextafter(now, math.inf))

    def full_at(self, now: float) -> float:
        """When the bucket is full again if nothing more is taken."""
        return self.ready_at(now, self.capacity)


class SessionLimit:
    """The buckets of one session's client: messages (`burst` of them at once) and bytes (one
    second of `bytes_per_second`). Either may be absent (None: no limit on it)."""

    __slots__ = ("_counted", "bytes", "closes", "exceeded", "messages", "throttled")

    def __init__(
        self,
        now: float,
        *,
        messages_per_second: float | None = None,
        burst: float | None = None,
        bytes_per_second: int | None = None,
        closes: bool = False,
    ) -> None:
        self.messages = (
            None
            if messages_per_second is None
            else TokenBucket(messages_per_second, burst or max(1.0, messages_per_second), now)
        )
        self.bytes = (
            None
            if bytes_per_second is None
            else TokenBucket(bytes_per_second, bytes_per_second, now)
        )
        self.closes = closes  # `action: close`: over the limit, the session ends (1008)
        self.throttled = 0.0  # seconds this session's client was not read for its rate
        self.exceeded = False  # the session was closed for its rate (`closes`)
        self._counted = 0  # the reader's messages paid for so far

    def allowance(
        self, now: float, messages: int, payload_left: int, data: Buffer, pending: Buffer = b""
    ) -> int:
        """How many bytes of `data`, read from the client, may be fed to its frame reader at
        `now` (0: none yet, see `ready_at`). `messages` is the reader's count of messages so
        far (those not yet paid for are paid now), `payload_left` the bytes of its current data
        frame still to come, `pending` the bytes it holds back (`FrameReader.pending`). The
        bytes allowed are taken from the byte bucket."""
        available = len(data)
        bucket = self.messages
        if bucket is not None:
            done = messages - self._counted
            if done:
                bucket.take(now, done)
                self._counted = messages
            tokens = bucket.whole(now)
            if tokens > 0:  # past the current frame's payload, a token pays for a header
                allowed = payload_left + tokens * MIN_CLIENT_HEADER
            elif payload_left:
                allowed = payload_left
            else:
                allowed = before_message(pending, data)
            if allowed < available:
                available = allowed
        if self.bytes is not None:
            affordable = self.bytes.whole(now)
            if affordable < available:
                available = affordable
            self.bytes.take(now, available)
        return available

    def credit(self, since: float, now: float) -> None:
        """The client was not read from `since` to `now` because its backend would not take
        more: what it sent meanwhile is read late, and must not count against it."""
        if self.messages is not None:
            self.messages.credit(since, now)
        if self.bytes is not None:
            self.bytes.credit(since, now)

    def ready_at(self, now: float, payload_left: int, available: int) -> float:
        """When `allowance` will give something again, once it gave nothing at `now`: a
        message token (unless the current frame's payload is still to come) and as many byte
        tokens as there are bytes waiting, up to a bucketful."""
        when = now
        if self.messages is not None and not payload_left:
            when = self.messages.ready_at(now, 1)
        if self.bytes is not None:
            when = max(when, self.bytes.ready_at(now, min(available, self.bytes.capacity)))
        return when


def before_message(pending: Buffer, data: Buffer, scan: int = 4096) -> int:
    """How many bytes of `data` (at a frame boundary once `pending` is taken into account)
    complete no message: the whole control frames and non-final fragments in front, then the
    start of the next final data frame's header, short of its last byte. Looks at `scan` bytes
    of `data` at most (then says that many, or fewer)."""
    head = bytes(pending) + bytes(data[:scan])
    size = len(head)
    pos = 0
    while True:
        if size - pos < 2:
            break
        b0, b1 = head[pos], head[pos + 1]
        length = b1 & 0x7F
        header = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if b1 & 0x80 else 0)
        if size - pos < header:
            break
        if b0 & 0x80 and not b0 & 0x08:  # a final data frame: its header completes a message
            return max(0, pos + header - 1 - len(pending))
        if length >= 126:
            length = int.from_bytes(head[pos + 2 : pos + (4 if length == 126 else 10)], "big")
        pos += header + length
    return min(len(data), max(0, size - len(pending)))


class HandshakeLimit:
    """A bucket of `burst` handshakes per client IP, refilled at `rate` a second."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._prune_at = _PRUNE_FLOOR

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, ip: str, now: float, rate: float, burst: float) -> float:
        """Let `ip` have a handshake at `now` (0.0), or say how many seconds until it may."""
        bucket = self._buckets.get(ip)
        if bucket is None or bucket.rate != rate or bucket.capacity != burst:
            if len(self._buckets) >= self._prune_at:
                self._prune(now)
            bucket = self._buckets[ip] = TokenBucket(rate, burst, now)
        if bucket.whole(now) >= 1:
            bucket.take(now, 1)
            return 0.0
        return bucket.ready_at(now, 1) - now

    def _prune(self, now: float) -> None:
        """Forget the full buckets; look again once as many more as are left were added."""
        self._buckets = {
            ip: bucket for ip, bucket in self._buckets.items() if bucket.full_at(now) > now
        }
        self._prune_at = max(_PRUNE_FLOOR, 2 * len(self._buckets))


def retry_after(seconds: float) -> int:
    """A `Retry-After` value: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds - _EPSILON))
