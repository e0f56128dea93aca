"""The close codes each side hears, checked against SPEC's session table."""

from __future__ import annotations

import pytest

from wsproxy.closes import IDLE, SHUTDOWN, Close, Side, for_survivor_of, for_violation
from wsproxy.frames import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_PROTOCOL_ERROR,
    FrameReader,
    Violation,
)

OFF_THE_WIRE = {1005, 1006, 1015}  # RFC 6455 7.4.1: never sent in a close frame
TOO_BIG = Violation(CLOSE_MESSAGE_TOO_BIG, "message too big")
UNMASKED = Violation(CLOSE_PROTOCOL_ERROR, "unmasked frame")
MASKED = Violation(CLOSE_PROTOCOL_ERROR, "masked frame from a server")


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
            Close(1011, "backend broke the WebSocket protocol"),
        ),
    ],
    ids=["client_1002", "client_1009", "backend_1009", "backend_1002"],
)
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
@pytest.mark.parametrize("violation", [UNMASKED, MASKED, TOO_BIG])
def test_closes_never_choose_a_code_kept_off_the_wire(side: Side, violation: Violation) -> None:
    """Every close chosen is sendable and fits a close frame (2 + 123 bytes)."""
    closes = [*for_violation(side, violation), for_survivor_of(side), IDLE, SHUTDOWN]
    for close in closes:
        assert close.code not in OFF_THE_WIRE
        assert 1000 <= close.code <= 4999
        assert len(close.reason.encode()) <= 123
