"""The close codes each side gets, for every way a session ends (SPEC's session table as code).

Invariants:
- Codes that RFC 6455 keeps off the wire (1005, 1006, 1015) are never chosen here.
- A side that broke a rule hears why (1002, 1007, 1009); the innocent side hears 1001 "going
  away", except that a client whose backend failed (went away, or broke the protocol: 1002 or
  1007, an invalid close frame included) hears 1011, the code browsers report as a server error.
  A backend's message over the size limit is a limit, not a failure: the client hears 1001.
- A client over its rate limit (`action: close`) hears 1008 "policy violation"; its backend 1001.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from wsproxy.frames import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_DATA,
    CLOSE_PROTOCOL_ERROR,
    Violation,
)

CLOSE_POLICY_VIOLATION: Final = 1008

_PROTOCOL_BREACHES = frozenset({CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_DATA})


class Side(Enum):
    CLIENT = "client"
    BACKEND = "backend"
    PROXY = "proxy"


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


def for_survivor_of(lost: Side) -> Close:
    """What the other side hears when `lost`'s connection dropped or failed its keepalive."""
    if lost is Side.BACKEND:
        return Close(CLOSE_INTERNAL_ERROR, "backend went away")
    return Close(CLOSE_GOING_AWAY, "client went away")


def for_violation(sender: Side, violation: Violation) -> tuple[Close, Close]:
    """(to the sender, to the other side) after `sender` broke the protocol or a limit."""
    to_sender = Close(violation.code, violation.reason)
    if sender is Side.BACKEND and violation.code in _PROTOCOL_BREACHES:
        return to_sender, Close(CLOSE_INTERNAL_ERROR, "backend broke the WebSocket protocol")
    return to_sender, Close(CLOSE_GOING_AWAY, "peer closed: " + violation.reason)


IDLE = Close(CLOSE_GOING_AWAY, "idle timeout")
SHUTDOWN = Close(CLOSE_GOING_AWAY, "proxy shutting down")
# `limits.per_session` with `action: close`: the client sent faster than its limit.
RATE_LIMIT = Close(CLOSE_POLICY_VIOLATION, "rate limit exceeded")
RATE_LIMITED_PEER = Close(CLOSE_GOING_AWAY, "client exceeded its rate limit")
