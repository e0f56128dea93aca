"""wsproxy/ratelimit.py: token buckets, a session's allowance fed to a real frame reader, and
the per-IP handshake buckets, on instants given by hand."""

from __future__ import annotations

import os
from typing import Final

import pytest
from hypothesis import given, settings, strategies as st

from wsproxy.frames import OP_BINARY, OP_CLOSE, OP_PING, FrameReader, control_frame
from wsproxy.ratelimit import (
    MIN_CLIENT_HEADER,
    HandshakeLimit,
    SessionLimit,
    TokenBucket,
    before_message,
    retry_after,
)

# ---------------------------------------------------------------------------- TokenBucket


def test_ratelimit_bucket_starts_full_and_refills_at_its_rate_up_to_capacity() -> None:
    bucket = TokenBucket(10, 5, now=100.0)
    assert bucket.tokens(100.0) == 5
    bucket.take(100.0, 5)
    assert bucket.tokens(100.0) == 0
    assert bucket.tokens(100.2) == pytest.approx(2)
    assert bucket.whole(100.25) == 2
    assert bucket.tokens(101.0) == 5  # capped
    assert bucket.tokens(50.0) == 5  # an earlier instant is no time passed


def test_ratelimit_bucket_ready_and_full_instants() -> None:
    bucket = TokenBucket(4, 8, now=0.0)
    assert bucket.ready_at(0.0, 8) == 0.0
    assert bucket.full_at(0.0) == 0.0
    bucket.take(0.0, 8)
    assert bucket.ready_at(0.0, 1) == pytest.approx(0.25)
    assert bucket.full_at(1.0) == pytest.approx(2.0)
    bucket.take(1.0, 4)
    when = bucket.ready_at(1.0, 3)
    assert when == pytest.approx(1.75)
    assert bucket.whole(when) == 3  # the instant it names is enough


def test_ratelimit_bucket_a_hair_short_of_a_token_has_it() -> None:
    """Float arithmetic must not leave a sleeper waking again and again a hair short."""
    bucket = TokenBucket(3, 1, now=0.0)
    bucket.take(0.0, 1)
    when = bucket.ready_at(0.0, 1)
    assert bucket.whole(when) == 1
    assert bucket.ready_at(when, 1) == when


def test_ratelimit_bucket_credit_earns_the_held_time_beyond_capacity_then_drains() -> None:
    """Rate 10, capacity 5, emptied at 0: refilled (capped) until the hold starts at 1, then
    the 4 s of the hold earn 40 more, uncapped; the unused rest drains at the rate."""
    bucket = TokenBucket(10, 5, now=0.0)
    bucket.take(0.0, 5)
    bucket.credit(1.0, 5.0)
    assert bucket.tokens(5.0) == pytest.approx(45)
    bucket.take(5.0, 30)
    assert bucket.tokens(5.5) == pytest.approx(10)  # 15 left, drained by 5
    assert bucket.tokens(6.0) == pytest.approx(5)  # back at capacity, and no lower
    assert bucket.tokens(60.0) == pytest.approx(5)
    bucket.take(60.0, 5)
    assert bucket.tokens(60.2) == pytest.approx(2)  # below capacity it refills as before


def test_ratelimit_bucket_credit_of_no_time_or_before_its_stamp_changes_nothing() -> None:
    bucket = TokenBucket(10, 5, now=10.0)
    bucket.take(10.0, 5)
    bucket.credit(4.0, 10.0)  # a hold that began before the bucket last counted
    bucket.credit(10.0, 10.0)
    assert bucket.tokens(10.0) == 0
    bucket.credit(8.0, 11.0)  # only the second after the stamp counts, uncapped
    assert bucket.tokens(11.0) == pytest.approx(10)


def test_ratelimit_session_credit_reaches_both_buckets() -> None:
    """Messages 10/s (burst 10), bytes 100/s: after a 5 s hold the backlog of 60 messages of
    6 bytes (360 bytes) passes at once, where without the credit only the burst would."""
    held = SessionLimit(0.0, messages_per_second=10, burst=10, bytes_per_second=100)
    plain = SessionLimit(0.0, messages_per_second=10, burst=10, bytes_per_second=100)
    backlog = _frame(0) * 60
    assert len(backlog) == 360
    held.credit(0.0, 5.0)
    assert held.allowance(5.0, 0, 0, backlog) == 360
    assert plain.allowance(5.0, 0, 0, backlog) == 60


def test_ratelimit_bucket_needs_a_positive_rate_and_capacity() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0, 1, now=0.0)
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(1, 0, now=0.0)


# ---------------------------------------------------------------------------- SessionLimit


def test_ratelimit_session_default_burst_is_the_rate_and_at_least_one() -> None:
    limit = SessionLimit(0.0, messages_per_second=50)
    assert limit.messages is not None
    assert limit.messages.capacity == 50
    assert SessionLimit(0.0, messages_per_second=50, burst=7).messages.capacity == 7  # type: ignore[union-attr]
    assert SessionLimit(0.0, messages_per_second=0.5).messages.capacity == 1  # type: ignore[union-attr]
    assert SessionLimit(0.0, bytes_per_second=1000).messages is None
    assert SessionLimit(0.0, messages_per_second=1).bytes is None


def test_ratelimit_session_without_buckets_allows_everything() -> None:
    limit = SessionLimit(0.0)
    assert limit.allowance(0.0, 10**6, 0, bytes(65536)) == 65536
    assert limit.ready_at(0.0, 0, 65536) == 0.0


def test_ratelimit_session_bytes_pass_up_to_one_second_then_at_the_rate() -> None:
    limit = SessionLimit(0.0, bytes_per_second=1000)
    assert limit.allowance(0.0, 0, 0, bytes(600)) == 600
    assert limit.allowance(0.0, 0, 0, bytes(600)) == 400
    assert limit.allowance(0.0, 0, 0, bytes(600)) == 0
    assert limit.ready_at(0.0, 0, 600) == pytest.approx(0.6)  # all 600 waiting bytes at once
    assert limit.ready_at(0.0, 0, 5000) == pytest.approx(1.0)  # at most a bucketful
    assert limit.allowance(0.6, 0, 0, bytes(600)) == 600


def test_ratelimit_session_messages_bound_the_headers_a_feed_can_complete() -> None:
    limit = SessionLimit(0.0, messages_per_second=10, burst=3)
    assert limit.allowance(0.0, 0, 0, MESSAGES) == 3 * MIN_CLIENT_HEADER
    # Three messages completed: paid for at the next question. No token is left, so only
    # what completes no message passes: the next header short of its last byte.
    assert limit.allowance(0.0, 3, 0, MESSAGES) == MIN_CLIENT_HEADER - 1
    assert limit.allowance(0.0, 3, 0, MESSAGES[5:], MESSAGES[:5]) == 0
    assert limit.ready_at(0.0, 0, 65536) == pytest.approx(0.1)
    # The rest of a frame under way needs no message token.
    assert limit.allowance(0.0, 3, 5000, MESSAGES) == 5000
    assert limit.ready_at(0.0, 5000, 65536) == 0.0
    assert limit.allowance(0.1, 3, 0, MESSAGES) == MIN_CLIENT_HEADER
    assert limit.allowance(0.1, 3, 0, MESSAGES[:4]) == 4  # never more than was read


def test_ratelimit_session_both_buckets_the_smaller_allowance_wins() -> None:
    limit = SessionLimit(0.0, messages_per_second=100, bytes_per_second=10)
    assert limit.allowance(0.0, 0, 0, MESSAGES) == 10
    assert limit.allowance(0.0, 0, 0, MESSAGES) == 0
    limit = SessionLimit(0.0, messages_per_second=1, bytes_per_second=10_000)
    assert limit.allowance(0.0, 0, 0, MESSAGES) == MIN_CLIENT_HEADER
    assert limit.allowance(0.0, 1, 0, MESSAGES[6:], MESSAGES[:6]) == 0
    # Waiting for both: the message token (1 s) and the bytes (already there).
    assert limit.ready_at(0.0, 0, 65536) == pytest.approx(1.0)


def test_ratelimit_session_without_tokens_control_frames_and_fragments_still_pass() -> None:
    """Pings, pongs, a close and the fragments before a final one complete no message."""
    limit = SessionLimit(0.0, messages_per_second=1, burst=1)
    assert limit.allowance(0.0, 0, 0, MESSAGES) == MIN_CLIENT_HEADER
    ping = control_frame(OP_PING, b"are you there", b"abcd")
    first = _frame(70_000, fin=False)
    data = ping + first[:20]
    assert limit.allowance(0.0, 1, 0, data) == len(data)  # the fragment's payload is its own
    close = control_frame(OP_CLOSE, b"\x03\xe8", b"abcd")
    assert limit.allowance(0.0, 1, 0, close) == len(close)
    assert limit.allowance(0.0, 1, 0, ping + MESSAGES) == len(ping) + MIN_CLIENT_HEADER - 1
    # A header cut by the end of the read: all of it passes, it completes nothing yet.
    assert limit.allowance(0.0, 1, 0, MESSAGES[:3]) == 3
    # A long run of control frames: as far as one look goes.
    assert limit.allowance(0.0, 1, 0, ping * 1000) == 4096


@pytest.mark.parametrize("scan", [1, 7, 4096])
def test_ratelimit_before_message_counts_pending_bytes_as_already_fed(scan: int) -> None:
    frame = _frame(300)  # a 16-bit length: 8 bytes of header
    assert before_message(frame[:3], frame[3:], scan) == min(scan, 4)


def _frame(size: int, *, fin: bool = True, opcode: int = OP_BINARY) -> bytes:
    """A masked client frame with `size` payload bytes."""
    b0 = (0x80 if fin else 0) | opcode
    if size < 126:
        header = bytes([b0, 0x80 | size])
    elif size < 65536:
        header = bytes([b0, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([b0, 0x80 | 127]) + size.to_bytes(8, "big")
    return header + os.urandom(4) + bytes(size)


MESSAGES: Final = b"".join(_frame(2) for _ in range(10_000))  # 80,000 bytes of tiny messages


def _drive(
    limit: SessionLimit, stream: bytes, chunks: list[int], start: float = 0.0
) -> list[tuple[float, int, int]]:
    """Read `stream` in `chunks` as a greedy client's pump would: each read fed as the limit
    allows, waiting when it allows nothing. Returns (instant, messages, bytes) after each feed."""
    reader = FrameReader(masked=True, compressed=False, max_message_size=1 << 40)
    now = start
    fed = 0
    seen: list[tuple[float, int, int]] = []
    pos = 0
    sizes = iter(chunks)
    while pos < len(stream):
        data = stream[pos : pos + next(sizes, 65536)]
        pos += len(data)
        while data:
            take = limit.allowance(now, reader.messages, reader.payload_left, data, reader.pending)
            if not take:
                later = limit.ready_at(now, reader.payload_left, len(data))
                assert later > now
                now = later
                continue
            reader.feed(data[:take])
            assert reader.violation is None
            data = data[take:]
            fed += take
            seen.append((now, reader.messages, fed))
    return seen


def _within(seen: list[tuple[float, int, int]], index: int, rate: float, capacity: float) -> None:
    """Whatever passed in any span [t0, t1] is at most `capacity + rate * (t1 - t0)`: for each
    feed, against the lowest (passed before t0) - rate * t0 over the spans ending there."""
    lowest = float("inf")
    before = 0
    for t1, *counts in seen:
        lowest = min(lowest, before - rate * t1)
        passed = counts[index - 1]
        assert passed - rate * t1 - lowest <= capacity + 1e-6
        before = passed


def test_ratelimit_session_small_messages_in_one_chunk_pass_at_the_rate() -> None:
    """8,000 tiny messages arrive in one read: the burst passes at once, the rest at the rate."""
    stream = b"".join(_frame(2) for _ in range(8000))
    seen = _drive(SessionLimit(0.0, messages_per_second=1000, burst=200), stream, [len(stream)])
    assert seen[-1][1] == 8000
    assert [n for t, n, _ in seen if t == 0.0][-1] == 200
    assert seen[-1][0] == pytest.approx(7.8)  # (8000 - 200) / 1000
    _within(seen, 1, 1000, 200)


def test_ratelimit_session_a_big_message_is_not_fed_byte_by_byte() -> None:
    """With no message token left, the rest of a frame under way still passes in one feed."""
    stream = _frame(1) + _frame(1_000_000)
    seen = _drive(SessionLimit(0.0, messages_per_second=1, burst=1), stream, [1_000_000, 20])
    assert seen[-1][1:] == (2, len(stream))
    assert len(seen) <= 8  # a header takes at most three feeds of 6 bytes; the payload one


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=40),
    pings=st.lists(st.booleans(), min_size=40, max_size=40),
    fragmented=st.lists(st.booleans(), min_size=40, max_size=40),
    chunks=st.lists(st.integers(1, 20_000), min_size=1, max_size=60),
    rate=st.integers(1, 500),
    burst=st.integers(1, 500),
    byte_rate=st.one_of(st.none(), st.integers(100, 20_000)),
)
def test_ratelimit_session_never_lets_more_pass_than_rate_plus_burst(
    sizes: list[int],
    pings: list[bool],
    fragmented: list[bool],
    chunks: list[int],
    rate: int,
    burst: int,
    byte_rate: int | None,
) -> None:
    """Any frames (fragmented messages, pings between them), read in any chunks by a client
    that sends as fast as it can: the messages and bytes passed in any span stay within the
    rate times the span plus the bucket, and every byte passes in the end, in order."""
    parts: list[bytes] = []
    for size, ping, split in zip(sizes, pings, fragmented, strict=False):
        if ping:
            parts.append(_frame(3, opcode=OP_PING))
        if split and size > 1:
            parts += [_frame(size // 2, fin=False), _frame(size - size // 2, fin=True, opcode=0)]
        else:
            parts.append(_frame(size))
    stream = b"".join(parts)
    limit = SessionLimit(0.0, messages_per_second=rate, burst=burst, bytes_per_second=byte_rate)
    seen = _drive(limit, stream, chunks)
    assert seen[-1][1:] == (len(sizes), len(stream))
    _within(seen, 1, rate, burst)
    if byte_rate is not None:
        _within(seen, 2, byte_rate, byte_rate)


def test_ratelimit_control_frames_need_no_message_token() -> None:
    limit = SessionLimit(0.0, messages_per_second=1, burst=1)
    ping = control_frame(OP_PING, b"hi", b"abcd")
    stream = _frame(1) + ping * 5 + _frame(1)
    seen = _drive(limit, stream, [len(stream)])
    assert seen[-1][1:] == (2, len(stream))
    assert seen[-1][0] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- HandshakeLimit


def test_ratelimit_handshakes_burst_then_rate_per_ip() -> None:
    limit = HandshakeLimit()
    assert [limit.take("10.0.0.1", 0.0, 2, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.take("10.0.0.1", 0.0, 2, 3) == pytest.approx(0.5)
    assert limit.take("10.0.0.2", 0.0, 2, 3) == 0.0  # another address has its own bucket
    assert limit.take("10.0.0.1", 0.5, 2, 3) == 0.0
    assert limit.take("10.0.0.1", 0.5, 2, 3) == pytest.approx(0.5)


def test_ratelimit_handshakes_new_figures_start_a_new_bucket() -> None:
    limit = HandshakeLimit()
    assert limit.take("ip", 0.0, 1, 1) == 0.0
    assert limit.take("ip", 0.0, 1, 1) == pytest.approx(1.0)
    assert limit.take("ip", 0.0, 10, 20) == 0.0  # a reload changed the limit


def test_ratelimit_handshakes_memory_stays_bounded_under_many_addresses() -> None:
    """A million addresses, one handshake each, 10,000 a second: only the buckets not yet
    full again are kept, so memory follows the recent addresses, not all ever seen."""
    limit = HandshakeLimit()
    most = 0
    for n in range(1_000_000):
        assert limit.take(f"ip{n}", n / 10_000, 20, 40) == 0.0
        most = max(most, len(limit))
    # Each bucket is full again 1/20 s after its handshake: 500 addresses are recent at once;
    # the pruning keeps at most twice the floor.
    assert most <= 2048
    assert len(limit) <= 2048


def test_ratelimit_handshakes_keeps_buckets_still_refilling() -> None:
    limit = HandshakeLimit()
    for n in range(1024):
        limit.take(f"ip{n}", 0.0, 1, 1)
    limit.take("late", 0.5, 1, 1)  # the prune: none of the first is full yet
    assert len(limit) == 1025
    assert limit.take("ip0", 0.5, 1, 1) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.0, 1), (0.01, 1), (1.0, 1), (1.0000000001, 1), (1.2, 2), (59.5, 60)]
)
def test_ratelimit_retry_after_is_whole_seconds_at_least_one(seconds: float, header: int) -> None:
    assert retry_after(seconds) == header
