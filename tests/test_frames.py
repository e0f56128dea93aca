"""The frame reader fed in every possible way, its violations, and the control-frame builders."""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings, strategies as st
from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode

from wsproxy.frames import (
    CLOSE_INVALID_DATA,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NO_STATUS,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RSV1,
    Buffer,
    FrameReader,
    Violation,
    close_code_allowed,
    close_payload,
    close_violation,
    control_frame,
    unmask,
)

KEY = b"\x37\xfa\x21\x3d"  # RFC 6455 5.7's masking key
LIMIT = 1 << 20
HYPOTHESIS = settings(database=None, deadline=None, max_examples=300)


def xor(payload: bytes, key: bytes) -> bytes:
    """Masking written the slow, obvious way, to check `unmask` against."""
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def header(
    opcode: int, length: int, *, fin: bool = True, rsv: int = 0, mask: bytes | None = None
) -> bytes:
    """A frame header declaring `length`, in the shortest length encoding."""
    b0 = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if mask is not None else 0
    if length < 126:
        head = bytes((b0, mask_bit | length))
    elif length < 1 << 16:
        head = bytes((b0, mask_bit | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((b0, mask_bit | 127)) + length.to_bytes(8, "big")
    return head + (mask or b"")


@dataclass(frozen=True)
class Part:
    """One frame of a test stream, and what the reader should make of it."""

    data: bytes
    opcode: int
    payload: bytes
    fin: bool
    header_size: int


def part(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bytes | None = None
) -> Part:
    head = header(opcode, len(payload), fin=fin, rsv=rsv, mask=mask)
    body = payload if mask is None else xor(payload, mask)
    return Part(head + body, opcode, payload, fin, len(head))


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bytes | None = None
) -> bytes:
    return part(opcode, payload, fin=fin, rsv=rsv, mask=mask).data


def mixed(mask: bytes | None) -> list[Part]:
    """Every kind of valid frame: 7- and 16-bit lengths, fragments with controls between, close."""
    return [
        part(OP_TEXT, b"hello", mask=mask),
        part(OP_BINARY, bytes(10), fin=False, mask=mask),
        part(OP_PING, b"are you there", mask=mask),
        part(OP_CONTINUATION, bytes(range(200)), fin=False, mask=mask),
        part(OP_PONG, b"", mask=mask),
        part(OP_CONTINUATION, b"end", mask=mask),
        part(OP_TEXT, b"", mask=mask),
        part(OP_BINARY, b"\xff" * 126, mask=mask),
        part(OP_PING, b"p" * 125, mask=mask),
        part(OP_CLOSE, close_payload(CLOSE_NORMAL, "bye"), mask=mask),
    ]


def stream_of(parts: list[Part]) -> bytes:
    return b"".join(p.data for p in parts)


Found = tuple[int, bytes, int, int]  # opcode, payload, start and end in the whole stream


def expected_controls(parts: list[Part]) -> list[Found]:
    found: list[Found] = []
    pos = 0
    for p in parts:
        if p.opcode & 0x8:
            found.append((p.opcode, p.payload, pos, pos + len(p.data)))
        pos += len(p.data)
    return found


def expected_messages(parts: list[Part]) -> int:
    return sum(1 for p in parts if not p.opcode & 0x8 and p.fin)


def feed_all(reader: FrameReader, chunks: list[Buffer]) -> tuple[bytes, list[Found]]:
    """Everything the reader returned, joined, and its controls placed in the whole stream."""
    out = bytearray()
    found: list[Found] = []
    for chunk in chunks:
        got = reader.feed(chunk)
        for control in reader.controls:
            found.append(
                (control.opcode, control.payload, len(out) + control.start, len(out) + control.end)
            )
        out += got
    return bytes(out), found


def reader_for(mask: bytes | None, *, compressed: bool = False, limit: int = LIMIT) -> FrameReader:
    """A reader for the side that sends with `mask` (a client) or without (a server)."""
    return FrameReader(masked=mask is not None, compressed=compressed, max_message_size=limit)


def client_reader(*, compressed: bool = False, limit: int = LIMIT) -> FrameReader:
    return reader_for(KEY, compressed=compressed, limit=limit)


# --- reassembly: any chunking gives back the exact stream -----------------------------------


@pytest.mark.parametrize("mask", [KEY, None], ids=["from_client", "from_server"])
def test_frames_every_split_point_returns_the_exact_stream(mask: bytes | None) -> None:
    parts = mixed(mask)
    stream = stream_of(parts)
    for cut in range(len(stream) + 1):
        reader = reader_for(mask)
        out, found = feed_all(reader, [stream[:cut], stream[cut:]])
        assert out == stream, cut
        assert found == expected_controls(parts), cut
        assert reader.messages == 4
        assert reader.violation is None
        assert reader.stopped


@pytest.mark.parametrize("mask", [KEY, None], ids=["from_client", "from_server"])
def test_frames_byte_by_byte_withholds_only_a_header_or_a_control_frame(
    mask: bytes | None,
) -> None:
    """Fed one byte at a time, forwarded bytes end at a boundary or inside a data payload."""
    parts = mixed(mask)
    stream = stream_of(parts)
    starts = [0]
    for p in parts:
        starts.append(starts[-1] + len(p.data))
    reader = reader_for(mask)
    returned = 0
    chunks: list[Buffer] = []
    for fed in range(1, len(stream) + 1):
        got = reader.feed(stream[fed - 1 : fed])
        chunks.append(got)
        returned += len(got)
        withheld = fed - returned
        if returned in starts:
            assert reader.at_boundary
            assert reader.payload_left == 0
            if returned < len(stream):
                p = parts[starts.index(returned)]
                # a data frame flows once its header is whole; a control frame once it is whole
                assert withheld < (len(p.data) if p.opcode & 0x8 else p.header_size)
                assert withheld <= (14 + 125 if p.opcode & 0x8 else 14)
        else:
            i = bisect.bisect(starts, returned) - 1
            p = parts[i]
            assert not p.opcode & 0x8, "a control frame is never forwarded in pieces"
            assert returned >= starts[i] + p.header_size
            assert withheld == 0
            assert reader.payload_left == starts[i + 1] - returned
            assert not reader.at_boundary
    assert b"".join(chunks) == stream


@pytest.mark.parametrize("mask", [KEY, None], ids=["from_client", "from_server"])
def test_frames_wsproto_stream_every_split_point(mask: bytes | None) -> None:
    """Frames from wsproto (an independent encoder) come back whole, with their controls found."""
    sender = FrameProtocol(client=mask is not None, extensions=[])
    pieces = [
        bytes(sender.send_data("héllo", fin=False)),
        bytes(sender.ping(b"x")),
        bytes(sender.send_data("wörld", fin=True)),
        bytes(sender.send_data(b"\x01" * 300)),
        bytes(sender.pong(b"y")),
        bytes(sender.close(1001, "gone")),
    ]
    stream = b"".join(pieces)
    for cut in range(len(stream) + 1):
        reader = reader_for(mask)
        out, found = feed_all(reader, [stream[:cut], stream[cut:]])
        assert out == stream
        assert [(op, payload) for op, payload, _, _ in found] == [
            (OP_PING, b"x"),
            (OP_PONG, b"y"),
            (OP_CLOSE, b"\x03\xe9gone"),
        ]
        assert reader.messages == 2


# Every close code RFC 6455 lets on the wire, drawn evenly from its three ranges.
wire_codes = st.one_of(st.integers(1000, 1003), st.integers(1007, 1014), st.integers(3000, 4999))


@st.composite
def valid_streams(draw: st.DrawFn, masked: bool, compressed: bool = False) -> list[Part]:
    """A random valid stream: whole and fragmented messages with controls between frames,
    perhaps ended by a close (empty, or any code allowed on the wire and a UTF-8 reason).
    With `compressed`, a message's first frame may carry RSV1."""
    parts: list[Part] = []
    payloads = st.binary(max_size=300)

    def key() -> bytes | None:
        return draw(st.binary(min_size=4, max_size=4)) if masked else None

    def control() -> Part:
        opcode = draw(st.sampled_from([OP_PING, OP_PONG]))
        return part(opcode, draw(st.binary(max_size=125)), mask=key())

    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            parts.append(control())
            continue
        fragments = draw(st.lists(payloads, min_size=1, max_size=4))
        opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
        rsv = RSV1 if compressed and draw(st.booleans()) else 0
        for i, payload in enumerate(fragments):
            last = i == len(fragments) - 1
            if i:
                parts.append(part(OP_CONTINUATION, payload, fin=last, mask=key()))
            else:
                parts.append(part(opcode, payload, fin=last, rsv=rsv, mask=key()))
            if not last and draw(st.booleans()):
                parts.append(control())
    if draw(st.booleans()):
        if draw(st.booleans()):
            payload = close_payload(draw(wire_codes), draw(st.text(max_size=20)))
        else:
            payload = b""
        parts.append(part(OP_CLOSE, payload, mask=key()))
    return parts


@HYPOTHESIS
@given(st.data(), st.booleans(), st.booleans())
def test_frames_random_streams_in_random_chunks_reassemble(
    data: st.DataObject, masked: bool, as_bytearray: bool
) -> None:
    parts = data.draw(valid_streams(masked))
    stream = stream_of(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0, *cuts, len(stream)]
    chunks: list[Buffer] = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    if as_bytearray:  # what trio's receive_some may hand over
        chunks = [bytearray(c) for c in chunks]
    reader = FrameReader(masked=masked, compressed=False, max_message_size=LIMIT)
    out, found = feed_all(reader, chunks)
    assert out == stream
    assert found == expected_controls(parts)
    assert reader.messages == expected_messages(parts)
    assert reader.violation is None
    assert reader.at_boundary
    assert reader.stopped == (bool(parts) and parts[-1].opcode == OP_CLOSE)


def chunked(data: st.DataObject, stream: bytes) -> list[Buffer]:
    """`stream` cut at random points (empty chunks included), some chunks as bytearrays."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0, *cuts, len(stream)]
    return [
        bytearray(stream[a:b]) if data.draw(st.booleans()) else stream[a:b]
        for a, b in itertools.pairwise(bounds)
    ]


def outcome(reader: FrameReader, chunks: list[Buffer]) -> tuple[object, ...]:
    """All a reader tells its relay after `chunks`: bytes, controls, counts and state."""
    out, found = feed_all(reader, chunks)
    return (
        out,
        found,
        reader.messages,
        reader.in_message,
        reader.payload_left,
        reader.stopped,
        reader.violation,
    )


@HYPOTHESIS
@given(st.data(), st.booleans(), st.booleans())
def test_frames_any_split_of_a_valid_stream_matches_feeding_it_whole(
    data: st.DataObject, masked: bool, compressed: bool
) -> None:
    """Same forwarded bytes, same control frames, same message counts, however it is cut."""
    parts = data.draw(valid_streams(masked, compressed))
    stream = stream_of(parts)
    chunks = chunked(data, stream)

    def reader() -> FrameReader:
        return FrameReader(masked=masked, compressed=compressed, max_message_size=LIMIT)

    whole = outcome(reader(), [stream])
    assert outcome(reader(), chunks) == whole
    assert whole[:3] == (stream, expected_controls(parts), expected_messages(parts))
    assert whole[-1] is None


@st.composite
def hostile_bytes(draw: st.DrawFn, masked: bool) -> bytes:
    """Random bytes: plain noise, or a valid stream with bytes overwritten, cut or added."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    stream = bytearray(stream_of(draw(valid_streams(masked, compressed=True))))
    for _ in range(draw(st.integers(0, 3))):
        if stream:
            stream[draw(st.integers(0, len(stream) - 1))] = draw(st.integers(0, 255))
    stream = stream[: draw(st.integers(0, len(stream)))]
    return bytes(stream) + draw(st.binary(max_size=40))


@HYPOTHESIS
@given(st.data(), st.booleans(), st.booleans(), st.integers(0, 400))
def test_frames_any_bytes_give_frames_or_one_clean_violation(
    data: st.DataObject, masked: bool, compressed: bool, limit: int
) -> None:
    """Never an exception; what comes out is a prefix of what went in, made of whole frames
    (and a data frame's start), the same for every split; a violation ends it for good."""
    stream = data.draw(hostile_bytes(masked))
    chunks = chunked(data, stream)

    def reader() -> FrameReader:
        return FrameReader(masked=masked, compressed=compressed, max_message_size=limit)

    split = reader()
    out = bytearray()
    violation: Violation | None = None
    for chunk in chunks:
        got = split.feed(chunk)
        if violation is not None:
            assert (got, split.controls, split.violation) == (b"", [], violation)
            continue
        out += got
        violation = split.violation
    assert stream.startswith(out)
    assert outcome(reader(), [stream]) == outcome(reader(), chunks)
    if violation is not None:
        assert split.stopped
        assert violation.code in (CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_DATA, CLOSE_MESSAGE_TOO_BIG)
    elif not split.stopped:
        assert len(stream) - len(out) <= 14 + 125  # only a header or a control frame withheld
    # What was forwarded is frames only: a fresh reader takes all of it without complaint.
    again = reader()
    forwarded, found = feed_all(again, [bytes(out)])
    assert (forwarded, again.violation) == (bytes(out), None)
    for opcode, payload, _, _ in found:
        if opcode == OP_CLOSE:
            assert close_violation(payload) is None


def test_frames_chunk_with_nothing_withheld_is_returned_uncopied() -> None:
    """Data payload is passed through: a chunk the reader can forward whole is the same object."""
    reader = client_reader()
    big = frame(OP_BINARY, bytes(1000), mask=KEY)
    first = bytearray(big[:500])
    second = bytearray(big[500:])
    assert reader.feed(first) is first
    assert reader.payload_left == len(big) - 500
    assert reader.feed(second) is second
    assert reader.at_boundary


# --- lengths -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "header_size"),
    [(0, 6), (125, 6), (126, 8), (65535, 8), (65536, 14), (70000, 14)],
)
def test_frames_length_encodings_from_client(length: int, header_size: int) -> None:
    """7-, 16- and 64-bit lengths: the header is withheld until whole, then the payload flows."""
    data = frame(OP_BINARY, bytes(length), mask=KEY)
    assert len(data) == header_size + length
    reader = client_reader()
    assert reader.feed(data[: header_size - 1]) == b""
    assert reader.messages == 0
    assert reader.feed(data[header_size - 1 : header_size]) == data[:header_size]
    assert reader.payload_left == length
    assert reader.at_boundary == (length == 0)
    assert reader.messages == 1
    assert reader.feed(data[header_size:]) == data[header_size:]
    assert reader.at_boundary
    after = frame(OP_TEXT, b"next", mask=KEY)
    assert reader.feed(after) == after
    assert reader.messages == 2


@pytest.mark.parametrize("length", [126, 65535, 65536, 70000])
def test_frames_long_frame_from_server_split_around_headers(length: int) -> None:
    parts = [
        part(OP_TEXT, b"a" * length, fin=False),
        part(OP_PING, b"mid"),
        part(OP_CONTINUATION, b"b" * length),
        part(OP_CLOSE, b""),
    ]
    stream = stream_of(parts)
    second = len(parts[0].data) + len(parts[1].data)
    cuts = [*range(0, 16), *range(second - 16, second + 16), *range(len(stream) - 8, len(stream))]
    for cut in cuts:
        reader = reader_for(None)
        out, found = feed_all(reader, [stream[:cut], stream[cut:]])
        assert out == stream
        assert found == expected_controls(parts)
        assert reader.messages == 1


def test_frames_non_minimal_control_length_withholds_at_most_14_plus_125() -> None:
    """The worst case: a 125-byte masked ping whose length is spelled in 64 bits."""
    ping = (
        bytes((0x80 | OP_PING, 0x80 | 127)) + (125).to_bytes(8, "big") + KEY + xor(bytes(125), KEY)
    )
    reader = client_reader()
    for i in range(len(ping) - 1):
        assert reader.feed(ping[i : i + 1]) == b""
    assert len(ping) - 1 == 14 + 125 - 1
    assert reader.feed(ping[-1:]) == ping
    assert [(c.opcode, c.payload) for c in reader.controls] == [(OP_PING, bytes(125))]


# --- violations ----------------------------------------------------------------------------

GOOD_PREFIX = [part(OP_TEXT, b"ok", mask=KEY), part(OP_PING, b"p", mask=KEY)]
GOOD_AFTER = frame(OP_TEXT, b"never forwarded", mask=KEY)


@pytest.mark.parametrize(
    ("offending", "code", "reason"),
    [
        pytest.param(frame(OP_TEXT, b"x"), 1002, "unmasked frame", id="unmasked"),
        *(
            pytest.param(frame(op, b"", mask=KEY), 1002, f"reserved opcode {op}", id=f"opcode{op}")
            for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)
        ),
        pytest.param(
            frame(OP_PING, b"x" * 126, mask=KEY),
            1002,
            "control frame over 125 bytes",
            id="big_ping",
        ),
        pytest.param(
            frame(OP_CLOSE, b"\x03\xe8" + b"x" * 124, mask=KEY),
            1002,
            "control frame over 125 bytes",
            id="big_close",
        ),
        pytest.param(
            frame(OP_PONG, b"x", fin=False, mask=KEY),
            1002,
            "fragmented control frame",
            id="fragmented_control",
        ),
        *(
            pytest.param(
                frame(OP_TEXT, b"x", rsv=rsv, mask=KEY),
                1002,
                "reserved bits set without an extension",
                id=f"rsv{rsv:#x}",
            )
            for rsv in (0x40, 0x20, 0x10)
        ),
        pytest.param(
            frame(OP_PING, b"", rsv=0x20, mask=KEY),
            1002,
            "reserved bits set on a control frame",
            id="rsv_on_control",
        ),
        pytest.param(
            frame(OP_CONTINUATION, b"x", mask=KEY),
            1002,
            "continuation frame outside a message",
            id="lone_continuation",
        ),
        pytest.param(header(OP_BINARY, LIMIT + 1, mask=KEY), 1009, "message too big", id="too_big"),
        pytest.param(
            header(OP_BINARY, (1 << 63) - 1, mask=KEY),
            1009,
            "message too big",
            id="64_bit_max",
        ),
        *(
            pytest.param(
                header(OP_BINARY, length, mask=KEY),
                1002,
                "64-bit length with its top bit set",
                id=f"64_bit_top_bit_{length:#x}",
            )
            for length in (1 << 63, (1 << 64) - 1)
        ),
        pytest.param(
            header(OP_PING, 1 << 63, mask=KEY),
            1002,
            "64-bit length with its top bit set",
            id="64_bit_top_bit_ping",
        ),
        pytest.param(
            frame(OP_CLOSE, b"\x03", mask=KEY),
            1002,
            "close frame with a 1-byte payload",
            id="close_1_byte",
        ),
        pytest.param(
            frame(OP_CLOSE, b"\x03\xed", mask=KEY),
            1002,
            "close code 1005 is not allowed on the wire",
            id="close_1005",
        ),
        pytest.param(
            frame(OP_CLOSE, b"\x03\xe8\xff", mask=KEY),
            1007,
            "close reason is not valid UTF-8",
            id="close_not_utf8",
        ),
    ],
)
def test_frames_client_violation_stops_before_the_offending_frame(
    offending: bytes, code: int, reason: str
) -> None:
    """The bytes before the bad frame are forwarded, nothing from it on, at every split point."""
    prefix = stream_of(GOOD_PREFIX)
    stream = prefix + offending + GOOD_AFTER
    for cut in range(len(stream) + 1):
        reader = client_reader()
        out, found = feed_all(reader, [stream[:cut], stream[cut:]])
        assert out == prefix, cut
        assert found == expected_controls(GOOD_PREFIX)
        assert reader.violation == Violation(code, reason)
        assert reader.stopped
        assert reader.messages == 1
        assert reader.feed(GOOD_AFTER) == b""
        assert reader.controls == []


def test_frames_unmasked_client_frame_is_1002() -> None:
    reader = client_reader()
    assert reader.feed(frame(OP_TEXT, b"hi")) == b""
    assert reader.violation == Violation(CLOSE_PROTOCOL_ERROR, "unmasked frame")


def test_frames_masked_server_frame_is_1002() -> None:
    reader = reader_for(None)
    ok = frame(OP_TEXT, b"hi")
    assert reader.feed(ok + frame(OP_TEXT, b"hi", mask=KEY) + ok) == ok
    assert reader.violation == Violation(CLOSE_PROTOCOL_ERROR, "masked frame from a server")
    assert reader.feed(ok) == b""


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        (
            [frame(OP_TEXT, b"a", fin=False, mask=KEY), frame(OP_TEXT, b"b", mask=KEY)],
            "new message inside a fragmented message",
        ),
        (
            [frame(OP_TEXT, b"a", fin=False, mask=KEY), frame(OP_BINARY, b"b", mask=KEY)],
            "new message inside a fragmented message",
        ),
        (
            [frame(OP_TEXT, b"a", mask=KEY), frame(OP_CONTINUATION, b"b", mask=KEY)],
            "continuation frame outside a message",
        ),
        (
            [
                frame(OP_TEXT, b"a", fin=False, mask=KEY),
                frame(OP_CONTINUATION, b"b", rsv=0x40, mask=KEY),
            ],
            "reserved bits set on a continuation frame",
        ),
    ],
    ids=["text_in_text", "binary_in_text", "continuation_after_final", "rsv_on_continuation"],
)
def test_frames_fragmentation_violation_is_1002(frames: list[bytes], reason: str) -> None:
    reader = client_reader()
    assert reader.feed(b"".join(frames)) == frames[0]
    assert reader.violation == Violation(CLOSE_PROTOCOL_ERROR, reason)


# --- message size limit --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "bad"),
    [
        ([100], None),
        ([101], 0),
        ([40, 60], None),
        ([40, 61], 1),
        ([0, 0, 100], None),
        ([50, 50, 1], 2),
        ([101, 0], 0),
    ],
)
def test_frames_message_size_limit_counts_across_fragments(
    sizes: list[int], bad: int | None
) -> None:
    """A message of exactly max_message_size passes; one byte more is 1009, whatever the split."""
    frames = [
        frame(OP_CONTINUATION if i else OP_BINARY, bytes(n), fin=i == len(sizes) - 1, mask=KEY)
        for i, n in enumerate(sizes)
    ]
    ping = frame(OP_PING, bytes(125), mask=KEY)  # controls don't count
    stream = ping.join(frames)
    reader = client_reader(limit=100)
    out = reader.feed(stream)
    if bad is None:
        assert out == stream
        assert reader.violation is None
        assert reader.messages == 1
    else:
        assert out == b"".join(f + ping for f in frames[:bad])
        assert reader.violation == Violation(CLOSE_MESSAGE_TOO_BIG, "message too big")
        assert reader.messages == 0


def test_frames_message_size_resets_for_each_message() -> None:
    reader = client_reader(limit=100)
    message = frame(OP_TEXT, bytes(50), fin=False, mask=KEY) + frame(
        OP_CONTINUATION, bytes(50), mask=KEY
    )
    stream = message * 3 + frame(OP_BINARY, bytes(100), mask=KEY)
    assert reader.feed(stream) == stream
    assert reader.messages == 4
    assert reader.violation is None


# --- permessage-deflate's RSV1 -------------------------------------------------------------


def test_frames_compressed_allows_rsv1_on_first_frame_only() -> None:
    reader = client_reader(compressed=True)
    ok = (
        frame(OP_TEXT, b"z", rsv=RSV1, mask=KEY)
        + frame(OP_BINARY, b"a", fin=False, rsv=RSV1, mask=KEY)
        + frame(OP_PING, b"", mask=KEY)
        + frame(OP_CONTINUATION, b"b", mask=KEY)
        + frame(OP_TEXT, b"plain", mask=KEY)
    )
    assert reader.feed(ok) == ok
    assert reader.messages == 3
    assert reader.violation is None


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (
            frame(OP_CONTINUATION, b"b", rsv=RSV1, mask=KEY),
            "reserved bits set on a continuation frame",
        ),
        (frame(OP_PING, b"", rsv=RSV1, mask=KEY), "reserved bits set on a control frame"),
        (
            frame(OP_CONTINUATION, b"b", rsv=0x20, mask=KEY),
            "reserved bits set on a continuation frame",
        ),
    ],
    ids=["rsv1_continuation", "rsv1_control", "rsv2_continuation"],
)
def test_frames_compressed_rejects_rsv1_after_first_frame(bad: bytes, reason: str) -> None:
    reader = client_reader(compressed=True)
    first = frame(OP_TEXT, b"a", fin=False, rsv=RSV1, mask=KEY)
    assert reader.feed(first + bad) == first
    assert reader.violation == Violation(CLOSE_PROTOCOL_ERROR, reason)


@pytest.mark.parametrize("rsv", [0x20, 0x10, 0x60])
def test_frames_compressed_still_rejects_rsv2_and_rsv3(rsv: int) -> None:
    reader = client_reader(compressed=True)
    assert reader.feed(frame(OP_TEXT, b"a", rsv=rsv, mask=KEY)) == b""
    assert reader.violation == Violation(
        CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension"
    )


# --- control frames and close --------------------------------------------------------------


def test_frames_control_frame_is_withheld_until_whole() -> None:
    data = frame(OP_TEXT, b"data", mask=KEY)
    ping = frame(OP_PING, b"p" * 125, mask=KEY)
    pong = frame(OP_PONG, b"q", mask=KEY)
    reader = client_reader()
    assert reader.feed(data + ping[:3]) == data
    assert reader.controls == []
    assert reader.at_boundary
    assert reader.feed(ping[3:-1]) == b""
    assert reader.controls == []
    assert reader.feed(ping[-1:] + pong + data[:1]) == ping + pong
    assert [(c.opcode, c.payload, c.start, c.end) for c in reader.controls] == [
        (OP_PING, b"p" * 125, 0, len(ping)),
        (OP_PONG, b"q", len(ping), len(ping) + len(pong)),
    ]
    assert reader.feed(data[1:]) == data, "the withheld first header byte comes back"
    assert reader.controls == [], "controls are reset by the next feed"


def test_frames_masked_control_payload_is_unmasked() -> None:
    """RFC 6455 5.7's masked "Hello" example, as a ping."""
    data = bytes.fromhex("8985") + KEY + bytes.fromhex("7f9f4d5158")
    reader = client_reader()
    assert reader.feed(data) == data
    assert reader.controls[0].payload == b"Hello"


def test_frames_close_stops_the_reader() -> None:
    close = frame(OP_CLOSE, close_payload(1000, "done"), mask=KEY)
    data = frame(OP_TEXT, b"before", mask=KEY)
    reader = client_reader()
    out = reader.feed(data + close + data)
    assert out == data + close
    assert reader.stopped
    assert reader.violation is None
    assert reader.at_boundary
    assert reader.controls[0].close_code() == 1000
    assert reader.feed(data) == b""
    assert reader.controls == []
    assert reader.feed(b"") == b""


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        (b"", CLOSE_NO_STATUS, ""),
        (b"\x03\xe8", 1000, ""),
        (b"\x03\xe9bye", 1001, "bye"),
        (b"\x0f\xa0" + "héllo €".encode(), 4000, "héllo €"),
    ],
    ids=["empty", "code_only", "code_and_reason", "utf8_reason"],
)
def test_frames_close_code_and_reason(payload: bytes, code: int, reason: str) -> None:
    reader = reader_for(None)
    reader.feed(frame(OP_CLOSE, payload))
    (close,) = reader.controls
    assert close.close_code() == code
    assert close.close_reason() == reason


def test_frames_messages_count_when_final_frame_begins() -> None:
    reader = client_reader()
    first = frame(OP_TEXT, b"a" * 10, fin=False, mask=KEY)
    last = frame(OP_CONTINUATION, b"b" * 10, mask=KEY)
    assert reader.feed(first) == first
    assert (reader.in_message, reader.messages) == (True, 0)
    assert reader.feed(last[:7]) == last[:7]
    assert (reader.in_message, reader.messages) == (False, 1)
    assert reader.payload_left == 9


def test_frames_empty_feed_returns_nothing() -> None:
    reader = client_reader()
    assert reader.feed(b"") == b""
    assert reader.at_boundary
    assert reader.feed(b"\x81") == b""
    assert reader.feed(b"") == b""
    assert reader.feed(b"\x80" + KEY) == b"\x81\x80" + KEY
    assert reader.messages == 1


# --- close frames: only what RFC 6455 lets on the wire ---------------------------------------

# RFC 6455 7.4 and IANA's registry, written out as sets: a reference for `close_code_allowed`.
WIRE_CODES = {*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)}
CODE_BOUNDARIES = [
    (0, False),
    (999, False),
    (1000, True),
    (1003, True),
    (1004, False),
    (1005, False),
    (1006, False),
    (1007, True),
    (1011, True),
    (1012, True),
    (1014, True),
    (1015, False),
    (1016, False),
    (2999, False),
    (3000, True),
    (4999, True),
    (5000, False),
    (65535, False),
]
BOTH_SIDES = pytest.mark.parametrize("mask", [KEY, None], ids=["from_client", "from_server"])


def test_frames_close_code_allowed_agrees_with_the_registry_for_every_code() -> None:
    assert [code for code in range(1 << 16) if close_code_allowed(code)] == sorted(WIRE_CODES)


@pytest.mark.parametrize(("code", "allowed"), CODE_BOUNDARIES, ids=lambda v: str(v))
def test_frames_close_code_allowed_at_range_boundaries(code: int, allowed: bool) -> None:
    assert close_code_allowed(code) is allowed
    assert (code in WIRE_CODES) is allowed


@BOTH_SIDES
@pytest.mark.parametrize(("code", "allowed"), CODE_BOUNDARIES, ids=lambda v: str(v))
def test_frames_close_with_a_code_off_the_wire_is_1002_and_never_returned(
    mask: bytes | None, code: int, allowed: bool
) -> None:
    """A close with an allowed code is relayed; any other is withheld, at every split point."""
    before = [part(OP_TEXT, b"ok", mask=mask), part(OP_PING, b"p", mask=mask)]
    close = part(OP_CLOSE, code.to_bytes(2, "big") + b"bye", mask=mask)
    stream = stream_of([*before, close]) + frame(OP_TEXT, b"after", mask=mask)
    for cut in range(len(stream) + 1):
        reader = reader_for(mask)
        out, found = feed_all(reader, [stream[:cut], stream[cut:]])
        assert reader.stopped
        if allowed:
            assert out == stream_of([*before, close])
            assert found == expected_controls([*before, close])
            assert reader.violation is None
        else:
            assert out == stream_of(before), cut
            assert found == expected_controls(before)
            assert reader.violation == Violation(
                CLOSE_PROTOCOL_ERROR, f"close code {code} is not allowed on the wire"
            )


@BOTH_SIDES
@pytest.mark.parametrize(
    ("payload", "violation"),
    [
        (b"", None),
        (b"\x03", Violation(1002, "close frame with a 1-byte payload")),
        (b"\xff", Violation(1002, "close frame with a 1-byte payload")),
        (b"\x03\xe8", None),
        (b"\x03\xe8" + "héllo € 😀".encode(), None),
        (b"\x03\xe8\xff", Violation(1007, "close reason is not valid UTF-8")),
        (b"\x03\xe8ok\xc3", Violation(1007, "close reason is not valid UTF-8")),  # cut short
        (b"\x03\xe8\xc0\xaf", Violation(1007, "close reason is not valid UTF-8")),  # overlong
        (b"\x03\xe8\xed\xa0\x80", Violation(1007, "close reason is not valid UTF-8")),  # surrogate
        (b"\x03\xe8\xf4\x90\x80\x80", Violation(1007, "close reason is not valid UTF-8")),
        (b"\x03\xe7\xff", Violation(1002, "close code 999 is not allowed on the wire")),
    ],
    ids=["empty", "one_byte", "one_byte_ff", "code_only", "utf8", "ff", "truncated", "overlong",
         "surrogate", "above_max", "bad_code_before_bad_reason"],
)  # fmt: skip
def test_frames_close_length_and_reason_are_checked(
    mask: bytes | None, payload: bytes, violation: Violation | None
) -> None:
    close = frame(OP_CLOSE, payload, mask=mask)
    reader = reader_for(mask)
    assert close_violation(payload) == violation
    if violation is None:
        assert reader.feed(close) == close
        assert [(c.opcode, c.payload) for c in reader.controls] == [(OP_CLOSE, payload)]
    else:
        assert reader.feed(close) == b""
        assert reader.controls == []
    assert reader.violation == violation
    assert reader.stopped


def test_frames_data_payload_is_never_validated() -> None:
    """Only close frames are inspected: text that is not UTF-8 flows (the endpoints judge it)."""
    data = frame(OP_TEXT, b"\xff\xfe", mask=KEY) + frame(OP_BINARY, b"\x03", mask=KEY)
    reader = client_reader()
    assert reader.feed(data) == data
    assert reader.violation is None


# --- builders ------------------------------------------------------------------------------


# Empty, short and 125-byte payloads; a close's must be one RFC 6455 lets on the wire.
CONTROL_PAYLOADS = pytest.mark.parametrize(
    ("opcode", "payload"),
    [
        *((op, payload) for op in (OP_PING, OP_PONG) for payload in (b"", b"x", bytes(range(125)))),
        (OP_CLOSE, b""),
        (OP_CLOSE, close_payload(CLOSE_NORMAL, "")),
        (OP_CLOSE, close_payload(4999, "r" * 123)),
    ],
    ids=[*(f"{kind}_{size}" for kind in ("ping", "pong") for size in ("empty", "one", "max")),
         "close_empty", "close_code", "close_max"],
)  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "key"),
    [(b"", KEY), (b"Hello", KEY), (bytes(range(256)), b"\x00\x00\x00\x00"), (b"abc", b"\xff" * 4)],
)
def test_frames_unmask_matches_bytewise_xor(payload: bytes, key: bytes) -> None:
    assert unmask(payload, key) == xor(payload, key)
    assert unmask(unmask(payload, key), key) == payload


@HYPOTHESIS
@given(st.binary(max_size=200), st.binary(min_size=4, max_size=4))
def test_frames_unmask_round_trips(payload: bytes, key: bytes) -> None:
    masked = unmask(payload, key)
    assert masked == xor(payload, key)
    assert unmask(masked, key) == payload


@CONTROL_PAYLOADS
def test_frames_control_frame_unmasked_parses_back(opcode: int, payload: bytes) -> None:
    built = control_frame(opcode, payload, None)
    assert built == frame(opcode, payload)
    reader = reader_for(None)
    assert reader.feed(built) == built
    assert [(c.opcode, c.payload) for c in reader.controls] == [(opcode, payload)]


@CONTROL_PAYLOADS
def test_frames_control_frame_masked_parses_back(opcode: int, payload: bytes) -> None:
    built = control_frame(opcode, payload, KEY)
    assert built == frame(opcode, payload, mask=KEY)
    reader = client_reader()
    assert reader.feed(built) == built
    assert reader.violation is None
    assert [(c.opcode, c.payload) for c in reader.controls] == [(opcode, payload)]


def test_frames_control_frame_masked_is_understood_by_wsproto() -> None:
    server = FrameProtocol(client=False, extensions=[])
    server.receive_bytes(
        control_frame(OP_PING, b"keepalive", b"\x01\x02\x03\x04")
        + control_frame(OP_CLOSE, close_payload(1001, "bye"), b"\x05\x06\x07\x08")
    )
    frames = list(server.received_frames())
    assert [(f.opcode, f.payload) for f in frames] == [
        (Opcode.PING, b"keepalive"),
        (Opcode.CLOSE, (CloseReason.GOING_AWAY, "bye")),
    ]


def test_frames_control_frame_over_125_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="control frame payload over 125 bytes"):
        control_frame(OP_PING, bytes(126), None)


@pytest.mark.parametrize(
    ("reason", "kept"),
    [
        ("", ""),
        ("bye", "bye"),
        ("a" * 123, "a" * 123),
        ("a" * 124, "a" * 123),
        ("a" * 1000, "a" * 123),
        ("é" * 100, "é" * 61),  # 2-byte characters: 122 bytes, not a split 123rd
        ("€" * 50, "€" * 41),  # 3-byte: exactly 123
        ("😀" * 40, "😀" * 30),  # 4-byte: 120
        ("a" + "😀" * 31, "a" + "😀" * 30),  # 121 bytes; the next emoji would make 125
        ("ab" + "😀" * 31, "ab" + "😀" * 30),  # 122
    ],
    ids=["empty", "short", "exact", "one_over", "long", "two_byte", "three_byte", "four_byte",
         "odd_1", "odd_2"],
)  # fmt: skip
def test_frames_close_payload_cuts_reason_on_a_character_boundary(reason: str, kept: str) -> None:
    payload = close_payload(4321, reason)
    assert payload == b"\x10\xe1" + kept.encode()
    assert len(payload) <= 125
    built = control_frame(OP_CLOSE, payload, KEY)
    reader = client_reader()
    assert reader.feed(built) == built
    (close,) = reader.controls
    assert close.close_code() == 4321
    assert close.close_reason() == kept


@HYPOTHESIS
@given(st.integers(1000, 4999), st.text(max_size=200))
def test_frames_close_payload_is_the_longest_prefix_that_fits(code: int, reason: str) -> None:
    payload = close_payload(code, reason)
    kept = payload[2:].decode("utf-8")  # never cut inside a character
    assert len(payload) <= 125
    assert int.from_bytes(payload[:2], "big") == code
    assert reason.startswith(kept)
    if kept != reason:
        assert len(reason[: len(kept) + 1].encode()) > 123
