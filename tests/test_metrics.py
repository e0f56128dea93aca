"""Counters, histograms and scrape-time gauges, rendered in the Prometheus text format."""

from __future__ import annotations

from wsproxy.metrics import (
    CONNECT_BUCKETS,
    Counter,
    Gauge,
    Histogram,
    ProxyMetrics,
    render,
)


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
    assert metrics.connect_seconds.buckets == CONNECT_BUCKETS
    assert list(CONNECT_BUCKETS) == sorted(CONNECT_BUCKETS)
