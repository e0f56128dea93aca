"""Metrics: counters and histograms the proxy updates, and the Prometheus text format.

Invariants:
- Pure: plain numbers in dicts, no clock, no I/O. Nothing here is touched per message: the
  relay's own counts are read when a session ends or when `/metrics` is scraped.
- A metric's label values are a tuple in the order of its `labels`; a sample exists from its
  first update on (counters never go down, so a scrape never sees one shrink).
- `render` writes the text exposition format 0.0.4: `# HELP` and `# TYPE` once per family,
  label values escaped, histograms as cumulative `_bucket{le=...}` plus `_sum` and `_count`.
- Every label set is bounded by the configuration, never by what a peer sends: a close code
  becomes a label through `close_code_label`, which has at most 17 values plus one per listed
  application code.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Container, Iterable, Sequence, Set
from dataclasses import dataclass, field
from typing import Final

from wsproxy.frames import CLOSE_ABNORMAL, CLOSE_NO_STATUS, close_code_allowed

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. Connects to a healthy backend take well under 10 ms on a LAN; the top buckets show
# slow DNS, TLS or an overloaded backend, up to `timeouts.connect`.
CONNECT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Seconds. WebSocket sessions last from a failed login to days.
SESSION_BUCKETS: Final = (1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0)

Labels = tuple[str, ...]


def close_code_label(code: int, listed: Container[int] = ()) -> str:
    """The `code` label of `wsproxy_closes_total` for a session that ended with `code`.

    A code that may go on the wire is its own label, and so are 1005 (a close without a code)
    and 1006 (no close at all); an application code (3000-4999) only when `listed`, otherwise
    its range, "3xxx" or "4xxx". Anything else is "other".
    """
    if 3000 <= code <= 4999:
        return str(code) if code in listed else f"{code // 1000}xxx"
    if close_code_allowed(code) or code in (CLOSE_NO_STATUS, CLOSE_ABNORMAL):
        return str(code)
    return "other"


@dataclass
class Counter:
    name: str
    help: str
    labels: tuple[str, ...] = ()
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...]
    labels: tuple[str, ...] = ()
    counts: dict[Labels, list[int]] = field(default_factory=dict)  # per bucket, +Inf last
    sums: dict[Labels, float] = field(default_factory=dict)

    def observe(self, value: float, *labels: str) -> None:
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0] * (len(self.buckets) + 1)
            self.sums[labels] = 0.0
        counts[bisect_left(self.buckets, value)] += 1
        self.sums[labels] += value


@dataclass(frozen=True, slots=True)
class Gauge:
    """Values read at scrape time, as (label values, value) pairs. `kind` is "counter" for a
    total computed when asked (one that still never goes down)."""

    name: str
    help: str
    labels: tuple[str, ...]
    samples: Sequence[tuple[Labels, float]]
    kind: str = "gauge"


Family = Counter | Histogram | Gauge


def render(families: Iterable[Family]) -> str:
    """The Prometheus text format for `families`, in the order given."""
    lines: list[str] = []
    for family in families:
        if isinstance(family, Gauge):
            kind = family.kind
        else:
            kind = "counter" if isinstance(family, Counter) else "histogram"
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {kind}")
        if isinstance(family, Histogram):
            lines += _histogram_lines(family)
        else:
            items = family.values.items() if isinstance(family, Counter) else family.samples
            for values, value in items:
                lines.append(f"{family.name}{_labels(family.labels, values)} {_number(value)}")
    return "\n".join(lines) + "\n"


def _histogram_lines(family: Histogram) -> list[str]:
    lines: list[str] = []
    for values, counts in family.counts.items():
        total = 0
        for bound, count in zip((*family.buckets, math.inf), counts, strict=True):
            total += count
            names = (*family.labels, "le")
            labels = _labels(names, (*values, _number(bound)))
            lines.append(f"{family.name}_bucket{labels} {total}")
        labels = _labels(family.labels, values)
        lines.append(f"{family.name}_sum{labels} {_number(family.sums[values])}")
        lines.append(f"{family.name}_count{labels} {total}")
    return lines


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = (f'{name}="{_escape_value(value)}"' for name, value in zip(names, values, strict=True))
    return "{" + ",".join(pairs) + "}"


def _escape_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class ProxyMetrics:
    """What the proxy counts as it goes. Live figures (sessions now, backend health, messages
    of sessions still running) are added at scrape time by whoever renders."""

    def __init__(self) -> None:
        self.sessions = Counter(
            "wsproxy_sessions_total", "Sessions relayed, by route and pool.", ("route", "pool")
        )
        self.rejections = Counter(
            "wsproxy_handshake_rejections_total",
            "Handshakes answered with an HTTP refusal, by status.",
            ("status",),
        )
        self.messages = Counter(
            "wsproxy_messages_total",
            "Messages relayed by ended sessions (direction in: client to backend).",
            ("direction",),
        )
        self.bytes = Counter(
            "wsproxy_bytes_total",
            "Wire bytes relayed by ended sessions (direction in: client to backend).",
            ("direction",),
        )
        self.closes = Counter(
            "wsproxy_closes_total",
            "Ended sessions, by who closed and the close code the client got.",
            ("side", "code"),
        )
        self.drain_closes = Counter(
            "wsproxy_drain_closes_total",
            "Sessions asked to close by a server's drain (its agent's or an admin's), by pool.",
            ("pool",),
        )
        self.rebalance_closes = Counter(
            "wsproxy_rebalance_closes_total",
            "Sessions closed to rebalance their pool, by pool.",
            ("pool",),
        )
        self.throttled = Counter(
            "wsproxy_throttled_seconds_total",
            "Seconds clients were not read because they sent faster than limits.per_session.",
        )
        self.rate_limit_closes = Counter(
            "wsproxy_rate_limit_closes_total",
            "Sessions closed with 1008 for sending faster than limits.per_session.",
        )
        self.config_reloads = Counter(
            "wsproxy_config_reloads_total", "Configuration reloads, by result.", ("result",)
        )
        self.connect_seconds = Histogram(
            "wsproxy_backend_connect_seconds",
            "Time to reach a backend: TCP connect and WebSocket handshake, retries included.",
            CONNECT_BUCKETS,
        )
        self.session_seconds = Histogram(
            "wsproxy_session_seconds", "How long ended sessions lasted.", SESSION_BUCKETS
        )


def merge(
    texts: Sequence[str], *, highest: Set[str] = frozenset(), lowest: Set[str] = frozenset()
) -> str:
    """Several processes' Prometheus texts as one: samples of equal name and labels summed,
    or the highest (families in `highest`) or lowest (in `lowest`) of them taken. A family's
    samples stay together under its HELP and TYPE lines, in the order first seen."""
    comments: dict[str, list[str]] = {}
    samples: dict[str, dict[str, float]] = {}
    for text in texts:
        family = ""
        for line in text.splitlines():
            if line.startswith("# "):
                family = line.split(" ", 3)[2]
                known = comments.setdefault(family, [])
                if line not in known:
                    known.append(line)
                samples.setdefault(family, {})
                continue
            if not line:
                continue
            key, _, text_value = line.rpartition(" ")
            value = float(text_value)
            series = samples.setdefault(family, {})
            if key not in series:
                series[key] = value
            elif family in highest:
                series[key] = max(series[key], value)
            elif family in lowest:
                series[key] = min(series[key], value)
            else:
                series[key] += value
    lines: list[str] = []
    for family, series in samples.items():
        lines += comments.get(family, [])
        lines += [f"{key} {_number(value)}" for key, value in series.items()]
    return "\n".join(lines) + "\n" if lines else ""


def cumulative(text: str) -> str:
    """Only the counters and histograms of a Prometheus text: what never goes down."""
    kept: list[str] = []
    keep = False
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            keep = line.rsplit(" ", 1)[1] in ("counter", "histogram")
        if keep:
            kept.append(line)
    return "\n".join(kept) + "\n" if kept else ""
