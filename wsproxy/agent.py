"""What a backend says about itself in its health answers (`health_check.agent: true`):
`Wsproxy-Weight: N` and `Wsproxy-Drain: DURATION`.

Invariants:
- Pure: headers in, an `AgentReport` out; nothing here raises for anything a backend sends.
- A header that is absent is reported absent (`weight` / `drain` None): the figure it set ends
  (the configured weight counts again; a drain ends). A header whose value is bad (not a whole
  number 0-256, not a duration, given twice with different values) is ignored: its figure keeps
  what the backend said before (`keep_weight` / `keep_drain`), and `problems` says why, in a
  sentence that names no address.
- Names are compared case-insensitively and values without surrounding blanks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, TypeVar

from wsproxy.units import duration, whole

WEIGHT_HEADER: Final = b"wsproxy-weight"
DRAIN_HEADER: Final = b"wsproxy-drain"
MAX_WEIGHT: Final = 256
_SHOWN: Final = 40  # characters of a bad value a problem quotes
_Figure = TypeVar("_Figure", int, float)


@dataclass(frozen=True, slots=True)
class AgentReport:
    """One health answer's agent headers."""

    weight: int | None = None  # None: not reported; the configured weight counts
    drain: float | None = None  # the window, in seconds; None: not draining
    keep_weight: bool = False  # the weight header was bad: the last reported weight stays
    keep_drain: bool = False  # the drain header was bad: the drain state stays as it was
    problems: tuple[str, ...] = ()


NO_REPORT: Final = AgentReport()


def agent_report(headers: Iterable[tuple[bytes, bytes]]) -> AgentReport:
    """The agent figures of one health answer's `headers`."""
    weights: list[bytes] = []
    drains: list[bytes] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == WEIGHT_HEADER:
            weights.append(value.strip())
        elif lowered == DRAIN_HEADER:
            drains.append(value.strip())
    weight, weight_problem = _one(weights, "Wsproxy-Weight", _weight)
    drain, drain_problem = _one(drains, "Wsproxy-Drain", _drain)
    problems = tuple(p for p in (weight_problem, drain_problem) if p)
    return AgentReport(
        weight=weight,
        drain=drain,
        keep_weight=bool(weight_problem),
        keep_drain=bool(drain_problem),
        problems=problems,
    )


def _one(
    values: list[bytes], header: str, parse: Callable[[str], _Figure]
) -> tuple[_Figure | None, str]:
    """The figure `values` (one header's, in order) give, and "" or why they are ignored."""
    if not values:
        return None, ""
    if any(value != values[0] for value in values[1:]):
        return None, f"{header} given {len(values)} times with different values: ignored"
    if len(values[0]) > _SHOWN:
        return None, f"{header}: {_shown(values[0])} is too long: ignored"
    try:
        text = values[0].decode("ascii")
        return parse(text), ""
    except UnicodeDecodeError:
        return None, f"{header}: {_shown(values[0])} is not ASCII: ignored"
    except ValueError as exc:
        return None, f"{header}: {exc}: ignored"


def _shown(value: bytes) -> str:
    text = repr(value[:_SHOWN])[2:-1]  # escaped: printable, whatever the bytes
    return f'"{text}..."' if len(value) > _SHOWN else f'"{text}"'


def _weight(text: str) -> int:
    weight = whole(text)
    if weight > MAX_WEIGHT:
        raise ValueError(f"must be at most {MAX_WEIGHT}, got {weight}")
    return weight


def _drain(text: str) -> float:
    return duration(text)
