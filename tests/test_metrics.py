"""Counters, histograms and scrape-time gauges, rendered in the Prometheus text format."""

from __future__ import annotations

import itertools
from collections import Counter as Tally

import pytest

from wsproxy.config import Timeouts
from wsproxy.metrics import (
    CONNECT_BUCKETS,
    SESSION_BUCKETS,
    Counter,
    Gauge,
    Histogram,
    ProxyMetrics,
    close_code_label,
    merge,
    render,
)

# Every code a close frame can carry is two bytes.
ALL_CODES = range(65536)
SENDABLE = {1000, 1001, 1002, 1003, *range(1007, 1015)}  # RFC 6455 §7.4 and the IANA registry


def test_metrics_counter_with_labels_and_escaping() -> None:
    counter = Counter("wsproxy_x_total", "Things.\nCounted \\ here.", ("status", "pool"))
    counter.inc("503", "chat")
    counter.inc("503", "chat")
    counter.inc("429", 'we"ird\\pool\nname', amount=2.5)
    assert render([counter]) == (
        "# HELP wsproxy_x_total Things.\\nCounted \\\\ here.\n"
        "# TYPE wsproxy_x_total counter\n"
        'wsproxy_x_total{status="503",pool="chat"} 2\n'
        'wsproxy_x_total{status="429",pool="we\\"ird\\\\pool\\nname"} 2.5\n'
    )


def test_metrics_a_family_without_samples_still_has_help_and_type() -> None:
    assert render([Counter("wsproxy_y_total", "Nothing yet.")]) == (
        "# HELP wsproxy_y_total Nothing yet.\n# TYPE wsproxy_y_total counter\n"
    )


def test_metrics_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    histogram = Histogram("wsproxy_h_seconds", "How long.", (0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    assert render([histogram]) == (
        "# HELP wsproxy_h_seconds How long.\n"
        "# TYPE wsproxy_h_seconds histogram\n"
        'wsproxy_h_seconds_bucket{le="0.1"} 2\n'
        'wsproxy_h_seconds_bucket{le="1"} 3\n'
        'wsproxy_h_seconds_bucket{le="+Inf"} 4\n'
        "wsproxy_h_seconds_sum 3.65\n"
        "wsproxy_h_seconds_count 4\n"
    )


def test_metrics_histogram_with_labels_keeps_each_series_apart() -> None:
    histogram = Histogram("h", "H.", (1.0,), ("pool",))
    histogram.observe(0.5, "a")
    histogram.observe(2.0, "b")
    lines = render([histogram]).splitlines()
    assert 'h_bucket{pool="a",le="1"} 1' in lines
    assert 'h_bucket{pool="b",le="1"} 0' in lines
    assert 'h_bucket{pool="b",le="+Inf"} 1' in lines
    assert 'h_count{pool="a"} 1' in lines


def test_metrics_gauge_samples_and_kind() -> None:
    gauges = [
        Gauge("g", "A gauge.", ("pool", "server"), [(("main", "ws://a:1"), 1.0)]),
        Gauge("t_total", "A total read when asked.", (), [((), 12.0)], kind="counter"),
    ]
    assert render(gauges) == (
        "# HELP g A gauge.\n# TYPE g gauge\n"
        'g{pool="main",server="ws://a:1"} 1\n'
        "# HELP t_total A total read when asked.\n# TYPE t_total counter\n"
        "t_total 12\n"
    )


def test_metrics_proxy_metrics_use_the_spec_names() -> None:
    metrics = ProxyMetrics()
    names = {
        family.name
        for family in (
            metrics.sessions,
            metrics.rejections,
            metrics.messages,
            metrics.bytes,
            metrics.closes,
            metrics.config_reloads,
            metrics.connect_seconds,
            metrics.session_seconds,
        )
    }
    assert names == {
        "wsproxy_sessions_total",
        "wsproxy_handshake_rejections_total",
        "wsproxy_messages_total",
        "wsproxy_bytes_total",
        "wsproxy_closes_total",
        "wsproxy_config_reloads_total",
        "wsproxy_backend_connect_seconds",
        "wsproxy_session_seconds",
    }


@pytest.mark.parametrize("buckets", [CONNECT_BUCKETS, SESSION_BUCKETS])
def test_metrics_buckets_ascend_strictly(buckets: tuple[float, ...]) -> None:
    """`observe` finds a bucket by bisection, which needs them in order, each once."""
    assert all(a < b for a, b in itertools.pairwise(buckets))


def test_metrics_a_connect_that_takes_the_whole_default_timeout_has_a_finite_bucket() -> None:
    metrics = ProxyMetrics()
    metrics.connect_seconds.observe(Timeouts().connect)
    lines = render([metrics.connect_seconds]).splitlines()
    assert f'wsproxy_backend_connect_seconds_bucket{{le="{Timeouts().connect:g}"}} 1' in lines


# --- close codes as labels --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "label"),
    [
        (0, "other"),
        (999, "other"),
        (1000, "1000"),
        (1003, "1003"),
        (1004, "other"),
        (1005, "1005"),
        (1006, "1006"),
        (1007, "1007"),
        (1014, "1014"),
        (1015, "other"),
        (2999, "other"),
        (3000, "3xxx"),
        (3999, "3xxx"),
        (4000, "4xxx"),
        (4001, "4001"),
        (4002, "4xxx"),
        (4999, "4xxx"),
        (5000, "other"),
        (65535, "other"),
        (-1, "other"),
        (70000, "other"),
    ],
)
def test_metrics_close_code_label_at_each_boundary(code: int, label: str) -> None:
    assert close_code_label(code, {4001}) == label


def test_metrics_close_code_labels_of_every_code_without_a_listing() -> None:
    labels = Tally(close_code_label(code) for code in ALL_CODES)
    expected = {str(code): 1 for code in (*SENDABLE, 1005, 1006)}
    expected |= {"3xxx": 1000, "4xxx": 1000, "other": 65536 - 12 - 2 - 2000}
    assert labels == expected


def test_metrics_close_code_labels_keep_only_listed_application_codes() -> None:
    listed = (3000, 4001, 4999)
    labels = Tally(close_code_label(code, listed) for code in ALL_CODES)
    assert labels["3xxx"] == 999
    assert labels["4xxx"] == 998
    assert {label: labels[label] for label in ("3000", "4001", "4999")} == dict.fromkeys(
        ("3000", "4001", "4999"), 1
    )
    assert len(labels) == 12 + 2 + 2 + 1 + len(listed)


@pytest.mark.parametrize("code", sorted(SENDABLE))
def test_metrics_close_codes_that_go_on_the_wire_are_their_own_label(code: int) -> None:
    assert close_code_label(code) == str(code)


@pytest.mark.parametrize("code", [1005, 1006])
def test_metrics_close_without_a_code_or_without_a_close_keeps_its_code(code: int) -> None:
    assert close_code_label(code, range(3000, 5000)) == str(code)


def test_metrics_listing_a_code_outside_the_application_range_changes_nothing() -> None:
    """Only application codes are listed (the configuration checks it); others ignore it."""
    assert [close_code_label(code, {1004, 5000, 1000}) for code in (1004, 5000, 1000)] == [
        "other",
        "other",
        "1000",
    ]


# --- merging the workers' texts ----------------------------------------------------------------


def test_metrics_merge_keeps_series_at_zero() -> None:
    worker = (
        "# HELP wsproxy_sessions_active Sessions.\n"
        "# TYPE wsproxy_sessions_active gauge\n"
        'wsproxy_sessions_active{route="/",pool="main"} 0\n'
        'wsproxy_sessions_active{route="/chat",pool="chat"} 0\n'
    )
    busy = worker.replace('pool="main"} 0', 'pool="main"} 2')
    assert merge([worker, worker]) == worker
    assert merge([worker, busy]) == busy
    assert merge([worker, worker], highest={"wsproxy_sessions_active"}) == worker
