"""The close codes each side hears, checked against SPEC's session table."""

from __future__ import annotations

import pytest

from wsproxy.closes import IDLE, SHUTDOWN, Close, Side, for_survivor_of, for_violation
from wsproxy.frames import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_DATA,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_PROTOCOL_ERROR,
    OP_CLOSE,
    FrameReader,
    Violation,
    close_code_allowed,
    control_frame,
)

OFF_THE_WIRE = {1005, 1006, 1015}  # RFC 6455 7.4.1: never sent in a close frame
TOO_BIG = Violation(CLOSE_MESSAGE_TOO_BIG, "message too big")
UNMASKED = Violation(CLOSE_PROTOCOL_ERROR, "unmasked frame")
MASKED = Violation(CLOSE_PROTOCOL_ERROR, "masked frame from a server")
ONE_BYTE_CLOSE = Violation(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
CLOSE_1005 = Violation(CLOSE_PROTOCOL_ERROR, "close code 1005 is not allowed on the wire")
NOT_UTF8 = Violation(CLOSE_INVALID_DATA, "close reason is not valid UTF-8")
VIOLATIONS = [UNMASKED, MASKED, TOO_BIG, ONE_BYTE_CLOSE, CLOSE_1005, NOT_UTF8]
BACKEND_BROKE = Close(CLOSE_INTERNAL_ERROR, "backend broke the WebSocket protocol")
# The edges of every range RFC 6455 7.4 and IANA's registry draw (True: allowed on the wire).
ALLOWED_EDGES = (1000, 1003, 1007, 1011, 1012, 1014, 3000, 4999)
REFUSED_EDGES = (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)
CODE_BOUNDARIES = sorted(
    [*((c, True) for c in ALLOWED_EDGES), *((c, False) for c in REFUSED_EDGES)]
)


def client_broke(violation: Violation) -> tuple[Close, Close]:
    """What a client that sent `violation` hears, and what its backend hears."""
    return Close(violation.code, violation.reason), Close(1001, "peer closed: " + violation.reason)


def backend_broke(violation: Violation) -> tuple[Close, Close]:
    """What a backend that sent `violation` hears, and what its client hears."""
    return Close(violation.code, violation.reason), BACKEND_BROKE


def close_heard(sender: Side, payload: bytes) -> tuple[Close, Close] | None:
    """Feed `sender`'s close frame with `payload` to the proxy's reader for that leg: None if it
    is relayed, else what (the sender, the other side) hear."""
    masked = sender is Side.CLIENT
    reader = FrameReader(masked=masked, compressed=False, max_message_size=100)
    data = control_frame(OP_CLOSE, payload, b"\x01\x02\x03\x04" if masked else None)
    out = reader.feed(data)
    if reader.violation is None:
        assert out == data
        return None
    assert out == b""  # the bad close is never relayed
    return for_violation(sender, reader.violation)


@pytest.mark.parametrize(
    ("lost", "survivor_hears"),
    [
        (Side.BACKEND, Close(CLOSE_INTERNAL_ERROR, "backend went away")),
        (Side.CLIENT, Close(CLOSE_GOING_AWAY, "client went away")),
    ],
)
def test_closes_survivor_of_a_lost_leg(lost: Side, survivor_hears: Close) -> None:
    """Backend lost: the client hears 1011. Client lost: the backend hears 1001."""
    assert for_survivor_of(lost) == survivor_hears


@pytest.mark.parametrize(
    ("sender", "violation", "to_sender", "to_other"),
    [
        (
            Side.CLIENT,
            UNMASKED,
            Close(1002, "unmasked frame"),
            Close(1001, "peer closed: unmasked frame"),
        ),
        (
            Side.CLIENT,
            TOO_BIG,
            Close(1009, "message too big"),
            Close(1001, "peer closed: message too big"),
        ),
        (
            Side.BACKEND,
            TOO_BIG,
            Close(1009, "message too big"),
            Close(1001, "peer closed: message too big"),
        ),
        (
            Side.BACKEND,
            MASKED,
            Close(1002, "masked frame from a server"),
            BACKEND_BROKE,
        ),
        (
            Side.CLIENT,
            NOT_UTF8,
            Close(1007, "close reason is not valid UTF-8"),
            Close(1001, "peer closed: close reason is not valid UTF-8"),
        ),
        (Side.BACKEND, NOT_UTF8, Close(1007, "close reason is not valid UTF-8"), BACKEND_BROKE),
    ],
    ids=["client_1002", "client_1009", "backend_1009", "backend_1002", "client_1007",
         "backend_1007"],
)  # fmt: skip
def test_closes_violation_codes(
    sender: Side, violation: Violation, to_sender: Close, to_other: Close
) -> None:
    """The sender hears its violation; the other side 1001, or 1011 for a broken backend."""
    assert for_violation(sender, violation) == (to_sender, to_other)


@pytest.mark.parametrize("close", [IDLE, SHUTDOWN], ids=["idle", "shutdown"])
def test_closes_idle_and_shutdown_are_1001_both_ways(close: Close) -> None:
    assert close.code == CLOSE_GOING_AWAY
    assert close.reason


def test_closes_violation_from_the_frame_reader_reaches_both_sides() -> None:
    """A reader's violation feeds straight into the table: unmasked client frame → 1002 / 1001."""
    reader = FrameReader(masked=True, compressed=False, max_message_size=100)
    reader.feed(b"\x81\x02hi")
    assert reader.violation is not None
    to_client, to_backend = for_violation(Side.CLIENT, reader.violation)
    assert (to_client.code, to_backend.code) == (CLOSE_PROTOCOL_ERROR, CLOSE_GOING_AWAY)


@pytest.mark.parametrize("side", [Side.CLIENT, Side.BACKEND])
@pytest.mark.parametrize("violation", VIOLATIONS, ids=lambda v: v.reason)
def test_closes_never_choose_a_code_kept_off_the_wire(side: Side, violation: Violation) -> None:
    """Every close chosen is sendable and fits a close frame (2 + 123 bytes)."""
    closes = [*for_violation(side, violation), for_survivor_of(side), IDLE, SHUTDOWN]
    for close in closes:
        assert close.code not in OFF_THE_WIRE
        assert close_code_allowed(close.code)
        assert 1000 <= close.code <= 4999
        assert len(close.reason.encode()) <= 123


EDGES = pytest.mark.parametrize(
    ("code", "allowed"), CODE_BOUNDARIES, ids=[str(code) for code, _ in CODE_BOUNDARIES]
)


@EDGES
def test_closes_client_close_code_off_the_wire_is_1002_to_it_1001_to_backend(
    code: int, allowed: bool
) -> None:
    heard = close_heard(Side.CLIENT, code.to_bytes(2, "big") + b"bye")
    why = Violation(CLOSE_PROTOCOL_ERROR, f"close code {code} is not allowed on the wire")
    assert heard == (None if allowed else client_broke(why))


@EDGES
def test_closes_backend_close_code_off_the_wire_is_1002_to_it_1011_to_client(
    code: int, allowed: bool
) -> None:
    heard = close_heard(Side.BACKEND, code.to_bytes(2, "big") + b"bye")
    why = Violation(CLOSE_PROTOCOL_ERROR, f"close code {code} is not allowed on the wire")
    assert heard == (None if allowed else backend_broke(why))


@pytest.mark.parametrize(
    ("sender", "payload", "heard"),
    [
        (Side.CLIENT, b"", None),
        (Side.BACKEND, b"", None),
        (Side.CLIENT, b"\x03", client_broke(ONE_BYTE_CLOSE)),
        (Side.BACKEND, b"\x03", backend_broke(ONE_BYTE_CLOSE)),
        (Side.CLIENT, b"\x03\xe8\xc3\x28", client_broke(NOT_UTF8)),
        (Side.BACKEND, b"\x03\xe8\xc3\x28", backend_broke(NOT_UTF8)),
    ],
    ids=["client_empty", "backend_empty", "client_1_byte", "backend_1_byte", "client_not_utf8",
         "backend_not_utf8"],
)  # fmt: skip
def test_closes_close_length_and_reason_violations_both_ways(
    sender: Side, payload: bytes, heard: tuple[Close, Close] | None
) -> None:
    """An empty close is fine; a 1-byte one is 1002, a reason that is not UTF-8 1007."""
    assert close_heard(sender, payload) == heard
