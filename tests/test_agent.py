"""wsproxy/agent.py: the Wsproxy-Weight and Wsproxy-Drain headers of a health answer, every
good and bad value: a bad one is ignored with a reason, never an exception."""

from __future__ import annotations

import pytest

from wsproxy.agent import MAX_WEIGHT, NO_REPORT, AgentReport, agent_report


def report(*headers: tuple[bytes, bytes]) -> AgentReport:
    return agent_report([(b"Content-Type", b"text/plain"), *headers])


def test_agent_no_headers_is_no_report() -> None:
    assert agent_report([]) == NO_REPORT
    assert report() == AgentReport(weight=None, drain=None)
    assert report((b"X-Wsproxy-Weight", b"3"), (b"Wsproxy-Weights", b"3")) == NO_REPORT


@pytest.mark.parametrize(
    ("value", "weight"),
    [
        (b"0", 0),
        (b"1", 1),
        (b"10", 10),
        (b" 42 ", 42),
        (b"+7", 7),
        (b"007", 7),
        (b"256", MAX_WEIGHT),
    ],
)
def test_agent_weight(value: bytes, weight: int) -> None:
    assert report((b"Wsproxy-Weight", value)) == AgentReport(weight=weight)


@pytest.mark.parametrize(
    ("weight", "drain"),
    [
        (b"wsproxy-weight", b"wsproxy-drain"),
        (b"WSPROXY-WEIGHT", b"WSPROXY-DRAIN"),
        (b"WsProxy-weight", b"wsPROXY-Drain"),
    ],
)
def test_agent_names_are_case_insensitive(weight: bytes, drain: bytes) -> None:
    assert report((weight, b"5"), (drain, b"5s")) == AgentReport(weight=5, drain=5.0)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"257", "Wsproxy-Weight: must be at most 256, got 257: ignored"),
        (b"-1", "Wsproxy-Weight: must be at least 0, got -1: ignored"),
        (b"1.5", "Wsproxy-Weight: expected a whole number, got '1.5': ignored"),
        (b"", "Wsproxy-Weight: expected a whole number, got '': ignored"),
        (b"ten", "Wsproxy-Weight: expected a whole number, got 'ten': ignored"),
        (b"50%", "Wsproxy-Weight: expected a whole number, got '50%': ignored"),
        (b"1e3", "Wsproxy-Weight: expected a whole number, got '1e3': ignored"),
        (b"\xff", 'Wsproxy-Weight: "\\xff" is not ASCII: ignored'),
        (b"9" * 41, f'Wsproxy-Weight: "{"9" * 40}..." is too long: ignored'),
    ],
)
def test_agent_bad_weight_is_ignored_and_kept_as_it_was(value: bytes, why: str) -> None:
    assert report((b"Wsproxy-Weight", value)) == AgentReport(keep_weight=True, problems=(why,))


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"30s", 30.0),
        (b"30", 30.0),
        (b"1.5s", 1.5),
        (b"250ms", 0.25),
        (b"2m", 120.0),
        (b"1h", 3600.0),
        (b"0s", 0.0),
        (b"  10s ", 10.0),
    ],
)
def test_agent_drain(value: bytes, seconds: float) -> None:
    assert report((b"Wsproxy-Drain", value)) == AgentReport(drain=seconds)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"soon", "expected a duration like 250ms, 5s, 2m or 1h, got 'soon'"),
        (b"", "expected a duration like 250ms, 5s, 2m or 1h, got ''"),
        (b"-5s", "must not be negative, got '-5s'"),
        (b"5 days", "expected a duration like 250ms, 5s, 2m or 1h, got '5 days'"),
        (b"inf", "expected a duration like 250ms, 5s, 2m or 1h, got 'inf'"),
        (b"nan", "expected a duration like 250ms, 5s, 2m or 1h, got 'nan'"),
    ],
)
def test_agent_bad_drain_is_ignored_and_kept_as_it_was(value: bytes, why: str) -> None:
    assert report((b"Wsproxy-Drain", value)) == AgentReport(
        keep_drain=True, problems=(f"Wsproxy-Drain: {why}: ignored",)
    )


def test_agent_both_headers_each_on_its_own() -> None:
    assert report((b"Wsproxy-Weight", b"0"), (b"Wsproxy-Drain", b"2s")) == AgentReport(
        weight=0, drain=2.0
    )
    assert report((b"Wsproxy-Weight", b"x"), (b"Wsproxy-Drain", b"2s")) == AgentReport(
        drain=2.0,
        keep_weight=True,
        problems=("Wsproxy-Weight: expected a whole number, got 'x': ignored",),
    )
    assert report((b"Wsproxy-Weight", b"3"), (b"Wsproxy-Drain", b"x")) == AgentReport(
        weight=3,
        keep_drain=True,
        problems=("Wsproxy-Drain: expected a duration like 250ms, 5s, 2m or 1h, got 'x': ignored",),
    )
    both_bad = report((b"Wsproxy-Weight", b"x"), (b"Wsproxy-Drain", b"x"))
    assert (both_bad.keep_weight, both_bad.keep_drain, len(both_bad.problems)) == (True, True, 2)


def test_agent_a_header_given_twice() -> None:
    same = report((b"Wsproxy-Weight", b"4"), (b"wsproxy-weight", b" 4"))
    assert same == AgentReport(weight=4), "the same value twice is that value"
    differ = report((b"Wsproxy-Drain", b"4s"), (b"Wsproxy-Drain", b"5s"))
    assert differ == AgentReport(
        keep_drain=True,
        problems=("Wsproxy-Drain given 2 times with different values: ignored",),
    )


@pytest.mark.parametrize(
    "value",
    [bytes([byte]) for byte in range(256)] + [b"\x00" * 100, b"\r\n5", "é".encode(), b"5\x00"],
)
def test_agent_never_raises_whatever_the_value(value: bytes) -> None:
    for name in (b"Wsproxy-Weight", b"Wsproxy-Drain"):
        result = report((name, value))
        assert len(result.problems) == int(result.keep_weight or result.keep_drain)
        for problem in result.problems:
            assert problem.isprintable()
