"""The ring of session samples behind the status page's chart, and the merge of workers' rings."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from tests.test_fleet import pool, server
from wsproxy.history import (
    History,
    HistoryStatus,
    Sample,
    merge_histories,
    parse_history,
    sessions_of,
    slot,
)


def counts(sessions: int) -> dict[str, dict[str, int]]:
    return {"main": {"a": sessions}}


def times(history: History) -> list[float]:
    return [sample.time for sample in history.status(0.0).samples]


# --- slots -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "interval", "expected"),
    [
        (1000.0, 10.0, 1000.0),
        (1009.999, 10.0, 1000.0),
        (1010.0, 10.0, 1010.0),
        (0.7, 0.25, 0.5),
        (1733380001.35, 0.1, 1733380001.3),
    ],
)
def test_history_slot_is_the_start_of_the_interval_now_falls_in(
    now: float, interval: float, expected: float
) -> None:
    assert slot(now, interval) == expected


@pytest.mark.parametrize(
    ("now", "expected"),
    [(1000.0, 10.0), (1003.5, 6.5), (1004.9, 5.1), (1005.0, 5.0), (1009.75, 5.0), (1010.0, 10.0)],
)
def test_history_until_next_is_the_next_slot_but_at_least_half_an_interval(
    now: float, expected: float
) -> None:
    assert History(10.0).until_next(now) == pytest.approx(expected)


@pytest.mark.parametrize(("interval", "span"), [(0.0, 600.0), (-1.0, 600.0), (10.0, 5.0)])
def test_history_needs_a_positive_interval_within_the_span(interval: float, span: float) -> None:
    with pytest.raises(ValueError, match="interval"):
        History(interval, span)


# --- recording ---------------------------------------------------------------------------------


def test_history_records_one_sample_per_slot_labelled_with_its_start() -> None:
    history = History(10.0, 600.0)
    history.record(1001.0, counts(1))
    history.record(1012.5, counts(2))
    status = history.status(1013.0)
    assert status == HistoryStatus(
        10.0, 600.0, 1013.0, (Sample(1000.0, counts(1)), Sample(1010.0, counts(2)))
    )


def test_history_a_second_sample_in_a_slot_replaces_the_first() -> None:
    history = History(10.0, 600.0)
    history.record(1000.0, counts(1))
    history.record(1009.0, counts(5))
    assert history.status(1009.0).samples == (Sample(1000.0, counts(5)),)


def test_history_keeps_the_span_and_no_more() -> None:
    history = History(10.0, 600.0)
    for step in range(100):
        history.record(1000.0 + 10 * step, counts(step))
    assert len(history) == 61  # 600 s back from the newest, both ends included
    assert times(history) == [1390.0 + 10 * step for step in range(61)]
    assert history.status(1990.0).samples[-1] == Sample(1990.0, counts(99))


def test_history_drops_samples_older_than_the_span_after_a_gap() -> None:
    history = History(10.0, 600.0)
    for step in range(5):
        history.record(1000.0 + 10 * step, counts(step))
    history.record(1630.0, counts(9))  # the process was suspended for ten minutes
    assert times(history) == [1030.0, 1040.0, 1630.0]


def test_history_starts_over_when_the_clock_goes_back() -> None:
    history = History(10.0, 600.0)
    history.record(1000.0, counts(1))
    history.record(1010.0, counts(2))
    history.record(995.0, counts(3))
    assert history.status(995.0).samples == (Sample(990.0, counts(3)),)


def test_history_sessions_of_reads_each_servers_sessions_from_status_pools() -> None:
    pools = [
        pool("main", 2, server("a", sessions=3), server("b", sessions=0)),
        pool("chat", 1, server("c", sessions=1)),
    ]
    assert sessions_of(pools) == {"main": {"a": 3, "b": 0}, "chat": {"c": 1}}
    assert sessions_of([]) == {}


# --- the /status form --------------------------------------------------------------------------


def test_history_parse_reads_back_what_status_writes() -> None:
    history = History(10.0, 600.0)
    history.record(1000.0, {"main": {"a": 1, "b": 2}, "chat": {}})
    history.record(1010.0, counts(4))
    status = history.status(1011.25)
    assert parse_history(json.loads(json.dumps(asdict(status)))) == status


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"interval": 10, "span": 600, "time": 1},
        {"interval": 10, "span": 600, "time": 1, "samples": [{"time": 1}]},
        {"interval": 10, "span": 600, "time": 1, "samples": [{"time": 1, "pools": []}]},
        {"interval": "x", "span": 600, "time": 1, "samples": []},
        {"interval": 10, "span": 600, "time": 1, "samples": [{"time": 1, "pools": {"p": 3}}]},
    ],
)
def test_history_parse_refuses_what_is_not_a_history(document: dict[str, object]) -> None:
    with pytest.raises((KeyError, TypeError, ValueError, AttributeError)):
        parse_history(document)


# --- merging workers' histories ----------------------------------------------------------------


def status(now: float, *samples: Sample) -> HistoryStatus:
    return HistoryStatus(10.0, 600.0, now, samples)


def test_history_merge_sums_each_server_at_each_sample_time() -> None:
    first = status(
        1025.0,
        Sample(1000.0, {"main": {"a": 1, "b": 2}}),
        Sample(1010.0, {"main": {"a": 2, "b": 2}, "chat": {"c": 1}}),
        Sample(1020.0, {"main": {"a": 3}}),
    )
    second = status(
        1026.0,
        Sample(1010.0, {"main": {"a": 5, "d": 1}}),
        Sample(1020.0, {"main": {"a": 1, "b": 4}}),
    )
    assert merge_histories([first, second]) == status(
        1026.0,
        Sample(1000.0, {"main": {"a": 1, "b": 2}}),  # the second worker had not started
        Sample(1010.0, {"main": {"a": 7, "b": 2, "d": 1}, "chat": {"c": 1}}),
        Sample(1020.0, {"main": {"a": 4, "b": 4}}),
    )


def test_history_merge_shows_no_slot_a_worker_has_not_sampled_yet() -> None:
    ahead = status(1030.0, Sample(1020.0, counts(2)), Sample(1030.0, counts(2)))
    behind = status(1029.999, Sample(1020.0, counts(3)))  # wakes for 1030 a moment later
    assert merge_histories([ahead, behind]).samples == (Sample(1020.0, counts(5)),)


def test_history_merge_ignores_empty_histories_and_nothing_is_an_empty_one() -> None:
    one = status(1012.0, Sample(1010.0, counts(2)))
    assert merge_histories([status(1011.0), one]) == status(1012.0, Sample(1010.0, counts(2)))
    assert merge_histories([]).samples == ()
    assert merge_histories([one]) == one
