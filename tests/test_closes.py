"""The close codes each side hears, checked against the session table of SPEC and README
("During a session"), not against a copy of the code's own table.

Each row of the table is a test. Where a row is about something a peer sent, the test feeds the
bytes the row names to the proxy's frame reader for that leg and maps the violation the reader
reports, so the codes are checked from the wire to the close. The properties that hold for every
violation (the sender hears why, the innocent side hears 1001 or 1011, every code is sendable)
are checked over every case the table names, from both sides.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from wsproxy.closes import IDLE, SHUTDOWN, Close, Side, for_survivor_of, for_violation
from wsproxy.frames import FrameReader, Violation, close_code_allowed

MAX_MESSAGE: int = 100
MASK = b"\x01\x02\x03\x04"
# RFC 6455 7.4.1: these codes only report what happened locally, never travel in a close frame.
OFF_THE_WIRE = {1005, 1006, 1015}
BACKEND_BROKE = "backend broke the WebSocket protocol"  # README's words for the client's 1011


def raw_frame(b0: int, payload: bytes, *, masked: bool, length: int | None = None) -> bytes:
    """A frame whose first byte is `b0` (so any bit may be set); `length` overrides the length
    field, for lengths no payload could have."""
    size = len(payload) if length is None else length
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = bytes((b0, mask_bit | size))
    elif size < 65536:
        head = bytes((b0, mask_bit | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((b0, mask_bit | 127)) + size.to_bytes(8, "big")
    if not masked:
        return head + payload
    return head + MASK + bytes(byte ^ MASK[i % 4] for i, byte in enumerate(payload))


def violation(sender: Side, data: bytes) -> Violation:
    """What the proxy's reader for `sender`'s leg reports for `data`; it must report one."""
    reader = FrameReader(
        masked=sender is Side.CLIENT, compressed=False, max_message_size=MAX_MESSAGE
    )
    out = reader.feed(data)
    assert reader.violation is not None, f"{data!r} from the {sender.value} was accepted"
    assert out == b"", "nothing of a frame that breaks the rules is forwarded"
    return reader.violation


def correctly_masked(sender: Side) -> bool:
    return sender is Side.CLIENT


# The protocol violations README's table names for a client; a backend's row adds "a masked
# frame" and says "or any other violation above". Each builds its bytes for the sender's leg.
PROTOCOL_VIOLATIONS: dict[str, Callable[[bool], bytes]] = {
    "control frame over 125 bytes": lambda masked: raw_frame(0x89, b"p" * 126, masked=masked),
    "reserved opcode": lambda masked: raw_frame(0x83, b"", masked=masked),
    "fragmented control frame": lambda masked: raw_frame(0x09, b"", masked=masked),
    "RSV bits without an extension": lambda masked: raw_frame(0xC1, b"x", masked=masked),
    "64-bit length with its top bit set": lambda masked: raw_frame(
        0x82, b"", masked=masked, length=1 << 63
    ),
}
# README: "an invalid close frame, from either side: a 1-byte body, a code not allowed on the
# wire (allowed: 1000-1003, 1007-1014, 3000-4999), or a reason that is not UTF-8".
INVALID_CLOSES = {
    "1-byte body": (b"\x03", 1002),
    "code 1005": (b"\x03\xed", 1002),
    "code 1006": (b"\x03\xeebye", 1002),
    "code 2999": ((2999).to_bytes(2, "big"), 1002),
    "code 5000": ((5000).to_bytes(2, "big"), 1002),
    "reason not UTF-8": (b"\x03\xe8\xc3\x28", 1007),
}


def every_case(sender: Side) -> list[bytes]:
    """The bytes of every situation the table names in which `sender` breaks a rule."""
    masked = correctly_masked(sender)
    cases = [make(masked) for make in PROTOCOL_VIOLATIONS.values()]
    cases.append(raw_frame(0x81, b"hi", masked=not masked))  # unmasked / masked frame
    cases.append(raw_frame(0x82, b"x" * (MAX_MESSAGE + 1), masked=masked))
    cases += [raw_frame(0x88, payload, masked=masked) for payload, _ in INVALID_CLOSES.values()]
    return cases


# ---------------------------------------------------------------- the table, row by row


@pytest.mark.parametrize("sender", [Side.CLIENT, Side.BACKEND])
def test_closes_row_message_over_max_message_size_is_1009_to_its_sender_1001_to_the_other(
    sender: Side,
) -> None:
    """A limit, not a failure: even a backend's oversized message is 1001 to the client."""
    data = raw_frame(0x82, b"x" * (MAX_MESSAGE + 1), masked=correctly_masked(sender))
    to_sender, to_other = for_violation(sender, violation(sender, data))
    assert (to_sender.code, to_other.code) == (1009, 1001)


@pytest.mark.parametrize("case", ["unmasked frame", *PROTOCOL_VIOLATIONS])
def test_closes_row_client_protocol_violation_is_1002_to_it_1001_to_the_backend(
    case: str,
) -> None:
    data = (
        raw_frame(0x81, b"hi", masked=False)
        if case == "unmasked frame"
        else PROTOCOL_VIOLATIONS[case](True)
    )
    to_client, to_backend = for_violation(Side.CLIENT, violation(Side.CLIENT, data))
    assert (to_client.code, to_backend.code) == (1002, 1001)


@pytest.mark.parametrize("case", ["masked frame", *PROTOCOL_VIOLATIONS])
def test_closes_row_backend_protocol_violation_is_1002_to_it_1011_to_the_client(
    case: str,
) -> None:
    data = (
        raw_frame(0x81, b"hi", masked=True)
        if case == "masked frame"
        else PROTOCOL_VIOLATIONS[case](False)
    )
    to_backend, to_client = for_violation(Side.BACKEND, violation(Side.BACKEND, data))
    assert (to_backend.code, to_client) == (1002, Close(1011, BACKEND_BROKE))


@pytest.mark.parametrize(("payload", "code"), INVALID_CLOSES.values(), ids=list(INVALID_CLOSES))
def test_closes_row_invalid_close_from_the_client_is_1002_or_1007_to_it_1001_to_the_backend(
    payload: bytes, code: int
) -> None:
    data = raw_frame(0x88, payload, masked=True)
    to_client, to_backend = for_violation(Side.CLIENT, violation(Side.CLIENT, data))
    assert (to_client.code, to_backend.code) == (code, 1001)


@pytest.mark.parametrize(("payload", "code"), INVALID_CLOSES.values(), ids=list(INVALID_CLOSES))
def test_closes_row_invalid_close_from_the_backend_is_1002_or_1007_to_it_1011_to_the_client(
    payload: bytes, code: int
) -> None:
    data = raw_frame(0x88, payload, masked=False)
    to_backend, to_client = for_violation(Side.BACKEND, violation(Side.BACKEND, data))
    assert (to_backend.code, to_client) == (code, Close(1011, BACKEND_BROKE))


ALLOWED = [1000, 1001, 1002, 1003, *range(1007, 1015), 3000, 3999, 4000, 4999]
NOT_ALLOWED = [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize("sender", [Side.CLIENT, Side.BACKEND])
@pytest.mark.parametrize("code", ALLOWED)
def test_closes_row_one_side_closes_with_an_allowed_code_and_it_is_relayed(
    sender: Side, code: int
) -> None:
    """README's allowed ranges, 1000-1003, 1007-1014, 3000-4999: the close goes through whole."""
    masked = correctly_masked(sender)
    reader = FrameReader(masked=masked, compressed=False, max_message_size=MAX_MESSAGE)
    data = raw_frame(0x88, code.to_bytes(2, "big") + b"bye", masked=masked)
    assert reader.feed(data) == data
    assert reader.violation is None


@pytest.mark.parametrize("sender", [Side.CLIENT, Side.BACKEND])
@pytest.mark.parametrize("code", NOT_ALLOWED)
def test_closes_row_a_close_code_outside_the_allowed_ranges_is_a_violation(
    sender: Side, code: int
) -> None:
    data = raw_frame(0x88, code.to_bytes(2, "big") + b"bye", masked=correctly_masked(sender))
    to_sender, to_other = for_violation(sender, violation(sender, data))
    assert to_sender.code == 1002
    assert to_other.code == (1001 if sender is Side.CLIENT else 1011)


def test_closes_row_the_backends_connection_is_lost_is_1011_to_the_client() -> None:
    """README: `1011` "backend went away" (also a backend leg that fails its keepalive)."""
    assert for_survivor_of(Side.BACKEND) == Close(1011, "backend went away")


def test_closes_row_the_clients_connection_is_lost_is_1001_to_the_backend() -> None:
    assert for_survivor_of(Side.CLIENT).code == 1001


@pytest.mark.parametrize("close", [IDLE, SHUTDOWN], ids=["idle timeout", "shutdown's drain"])
def test_closes_row_idle_and_shutdown_are_1001_both_ways_with_a_reason(close: Close) -> None:
    assert close.code == 1001
    assert close.reason
    assert IDLE.reason != SHUTDOWN.reason, "the peers can tell the two apart"


# ---------------------------------------------------------------- properties of every case


@pytest.mark.parametrize("sender", [Side.CLIENT, Side.BACKEND])
def test_closes_the_sender_hears_its_own_violation(sender: Side) -> None:
    """A side that broke a rule hears why: the reader's code and reason, unchanged."""
    for data in every_case(sender):
        found = violation(sender, data)
        to_sender, _ = for_violation(sender, found)
        assert to_sender == Close(found.code, found.reason)


@pytest.mark.parametrize("sender", [Side.CLIENT, Side.BACKEND])
def test_closes_the_innocent_side_is_never_blamed(sender: Side) -> None:
    """The other side hears 1001 "going away" or, a client whose backend failed, 1011; a
    backend never hears 1011 (it is the server), and nobody hears another's 1002/1007/1009."""
    allowed = {1001} if sender is Side.CLIENT else {1001, 1011}
    heard = {for_violation(sender, violation(sender, data))[1].code for data in every_case(sender)}
    assert heard <= allowed
    assert heard == allowed, "every code the table gives the other side is reached"


@pytest.mark.parametrize("sender", [Side.CLIENT, Side.BACKEND])
def test_closes_never_choose_a_code_kept_off_the_wire(sender: Side) -> None:
    """Every close chosen is sendable and fits a close frame (2 + 123 bytes)."""
    closes = [
        c for data in every_case(sender) for c in for_violation(sender, violation(sender, data))
    ]
    closes += [for_survivor_of(sender), IDLE, SHUTDOWN]
    for close in closes:
        assert close.code not in OFF_THE_WIRE
        assert close_code_allowed(close.code)
        assert 1000 <= close.code <= 4999
        assert len(close.reason.encode()) <= 123
