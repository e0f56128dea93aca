"""wsproxy/logs.py: the two formatters, the wall clock, set-up, the access line, and the refusal
line with its sanitiser and rate limit.

Plain synchronous tests on hand-made `LogRecord`s with a fixed creation time. Tests that call
`setup_logging` get the root logger back as it was (the `root` fixture), so pytest's own log
capture keeps working.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Final

import pytest

from wsproxy.logs import (
    ACCESS_FIELDS,
    FIELD_LIMIT,
    REFUSAL_FIELDS,
    AccessRecord,
    JsonFormatter,
    LineLimit,
    RefusalRecord,
    TextFormatter,
    access_log,
    change_logging,
    iso_time,
    log_safe,
    refusal_log,
    refusal_record,
    setup_logging,
    wall_time,
    write_access,
    write_progress,
    write_refusal,
    write_refusals_suppressed,
)

# 2026-11-22T08:00:01.123Z
CREATED: Final = datetime(2026, 11, 22, 8, 0, 1, 123000, tzinfo=UTC).timestamp()

ExcInfo = tuple[type[BaseException], BaseException, TracebackType]


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    """The root logger; its handlers and level are restored after the test."""
    logger = logging.getLogger()
    handlers, level = logger.handlers[:], logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


def make_record(
    msg: str = "listening on %s",
    *args: object,
    name: str = "wsproxy.server",
    level: int = logging.INFO,
    exc_info: ExcInfo | None = None,
) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)
    record.created = CREATED
    return record


def access_record(**changes: object) -> AccessRecord:
    fields: dict[str, object] = {
        "time": "2026-11-22T08:00:01.123Z",
        "client": "127.0.0.1:51234",
        "route": "/",
        "pool": "default",
        "server": "ws://127.0.0.1:9001",
        "subprotocol": "",
        "duration": 12.0041,
        "messages_in": 3,
        "messages_out": 4,
        "bytes_in": 120,
        "bytes_out": 96,
        "close_code": 1000,
        "closed_by": "client",
    }
    fields.update(changes)
    return AccessRecord(**fields)  # type: ignore[arg-type]


def with_access(record: AccessRecord) -> logging.LogRecord:
    """The record `write_access` makes: message "access", the data in its `access` attribute."""
    log_record = make_record("access", name="wsproxy.access")
    log_record.access = record
    return log_record


def failure() -> ExcInfo:
    try:
        raise ValueError("boom")
    except ValueError:
        exc_type, exc, tb = sys.exc_info()
        assert exc_type is not None
        assert exc is not None
        assert tb is not None
        return exc_type, exc, tb


# ----------------------------------------------------------------------------- time


def test_iso_time_is_utc_with_milliseconds_and_z() -> None:
    assert iso_time(CREATED) == "2026-11-22T08:00:01.123Z"
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"


def test_iso_time_truncates_below_a_millisecond() -> None:
    assert iso_time(CREATED + 0.0009) == "2026-11-22T08:00:01.123Z"


def test_wall_time_is_the_unix_clock() -> None:
    before = time.time()
    now = wall_time()
    assert before <= now <= time.time()


# ------------------------------------------------------------------------------ text


def test_text_formatter_plain_record_is_time_level_logger_message() -> None:
    line = TextFormatter().format(make_record("listening on %s", "127.0.0.1:8080"))
    assert line == "2026-11-22T08:00:01.123Z INFO wsproxy.server: listening on 127.0.0.1:8080"


def test_text_formatter_names_the_worker() -> None:
    line = TextFormatter(worker=1).format(make_record("ready"))
    assert line == "2026-11-22T08:00:01.123Z INFO wsproxy.server[worker 1]: ready"


def test_text_formatter_record_with_exc_info_adds_the_traceback_below() -> None:
    record = make_record("session failed", level=logging.ERROR, exc_info=failure())
    first, *rest = TextFormatter().format(record).split("\n")
    assert first == "2026-11-22T08:00:01.123Z ERROR wsproxy.server: session failed"
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: boom"


def test_text_formatter_access_record_is_key_value_pairs_in_field_order() -> None:
    line = TextFormatter().format(with_access(access_record()))
    assert line == (
        "2026-11-22T08:00:01.123Z access time=2026-11-22T08:00:01.123Z client=127.0.0.1:51234"
        ' route=/ pool=default server=ws://127.0.0.1:9001 subprotocol="" duration=12.004'
        " messages_in=3 messages_out=4 bytes_in=120 bytes_out=96 close_code=1000 closed_by=client"
    )
    keys = [pair.split("=", 1)[0] for pair in line.split(" ")[2:]]
    assert tuple(keys) == ACCESS_FIELDS


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("chat.v2", "chat.v2"),
        ("", '""'),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ('a"b', '"a\\"b"'),
        ("café", "café"),
    ],
)
def test_text_formatter_quotes_empty_spaced_and_quoted_values_as_json(
    value: str, written: str
) -> None:
    line = TextFormatter().format(with_access(access_record(subprotocol=value)))
    assert f" subprotocol={written} duration=" in line


@pytest.mark.parametrize(
    ("duration", "written"),
    [(0.0, "0.000"), (0.0004, "0.000"), (2.5, "2.500"), (61.23456, "61.235")],
)
def test_text_formatter_writes_floats_with_3_decimals(duration: float, written: str) -> None:
    line = TextFormatter().format(with_access(access_record(duration=duration)))
    assert f" duration={written} " in line


def test_text_formatter_ignores_an_access_attribute_that_is_not_an_access_record() -> None:
    record = make_record("hello")
    record.access = "not a record"
    assert TextFormatter().format(record).endswith(" INFO wsproxy.server: hello")


# ------------------------------------------------------------------------------ json


def test_json_formatter_plain_record_is_one_object() -> None:
    line = JsonFormatter().format(make_record("listening on %s", "127.0.0.1:8080"))
    assert "\n" not in line
    entry = json.loads(line)
    assert list(entry.items()) == [
        ("time", "2026-11-22T08:00:01.123Z"),
        ("level", "info"),
        ("logger", "wsproxy.server"),
        ("message", "listening on 127.0.0.1:8080"),
    ]


def test_json_formatter_names_the_worker() -> None:
    entry = json.loads(JsonFormatter(worker=0).format(make_record("ready")))
    assert entry["worker"] == 0


def test_json_formatter_record_with_exc_info_stays_on_one_line() -> None:
    record = make_record("session failed", level=logging.ERROR, exc_info=failure())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert list(entry) == ["time", "level", "logger", "message", "exception"]
    assert entry["level"] == "error"
    assert entry["exception"].startswith("Traceback (most recent call last):\n")
    assert entry["exception"].endswith("ValueError: boom")


def test_json_formatter_access_record_has_type_then_access_fields_in_order() -> None:
    line = JsonFormatter().format(with_access(access_record(subprotocol="two words")))
    assert "\n" not in line
    entry = json.loads(line)
    assert list(entry) == ["type", *ACCESS_FIELDS]
    assert entry == {
        "type": "access",
        "time": "2026-11-22T08:00:01.123Z",
        "client": "127.0.0.1:51234",
        "route": "/",
        "pool": "default",
        "server": "ws://127.0.0.1:9001",
        "subprotocol": "two words",
        "duration": 12.0041,  # a JSON number, as measured
        "messages_in": 3,
        "messages_out": 4,
        "bytes_in": 120,
        "bytes_out": 96,
        "close_code": 1000,
        "closed_by": "client",
    }


def test_json_formatter_ignores_an_access_attribute_that_is_not_an_access_record() -> None:
    record = make_record("hello")
    record.access = {"type": "access"}
    assert json.loads(JsonFormatter().format(record))["message"] == "hello"


# ----------------------------------------------------------------------------- setup


@pytest.mark.parametrize(
    ("form", "formatter"), [("text", TextFormatter), ("json", JsonFormatter), ("", TextFormatter)]
)
def test_setup_logging_replaces_root_handlers_with_one_stderr_handler(
    root: logging.Logger, form: str, formatter: type[logging.Formatter]
) -> None:
    root.addHandler(logging.NullHandler())
    setup_logging("info", form)
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    assert handler.stream is sys.stderr
    assert type(handler.formatter) is formatter


@pytest.mark.parametrize(
    ("level", "number"),
    [
        ("debug", logging.DEBUG),
        ("info", logging.INFO),
        ("warning", logging.WARNING),
        ("error", logging.ERROR),
    ],
)
def test_setup_logging_sets_the_root_level(root: logging.Logger, level: str, number: int) -> None:
    setup_logging(level, "text")
    assert root.level == number


def test_setup_logging_writes_from_level_up_to_stderr(
    root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("warning", "json")
    logger = logging.getLogger("wsproxy.test")
    logger.info("quiet")
    logger.warning("loud %d", 2)
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert json.loads(line)["message"] == "loud 2"


def test_setup_logging_twice_keeps_one_handler(root: logging.Logger) -> None:
    setup_logging("info", "json")
    setup_logging("debug", "text")
    [handler] = root.handlers
    assert isinstance(handler.formatter, TextFormatter)
    assert root.level == logging.DEBUG


def test_change_logging_switches_format_and_level_from_the_next_line(
    root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("info", "text", worker=3)
    logger = logging.getLogger("wsproxy.test")
    logger.info("as text")
    assert change_logging("warning", "json", worker=3)
    logger.info("quiet now")
    logger.warning("as json")
    [text, line] = capsys.readouterr().err.splitlines()
    assert text.endswith(" INFO wsproxy.test[worker 3]: as text")
    assert json.loads(line) | {"time": ""} == {
        "time": "",
        "level": "warning",
        "logger": "wsproxy.test",
        "message": "as json",
        "worker": 3,
    }
    [handler] = root.handlers
    assert handler.stream is sys.stderr  # type: ignore[attr-defined]


def test_change_logging_leaves_logging_it_did_not_set_up_alone(root: logging.Logger) -> None:
    other = logging.NullHandler()
    root.handlers[:] = [other]
    root.setLevel(logging.INFO)
    assert not change_logging("debug", "json")
    assert root.handlers == [other]
    assert root.level == logging.INFO


# ----------------------------------------------------------------------------- access


def test_write_access_logs_the_record_at_info_on_wsproxy_access(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=access_log.name)
    record = access_record()
    write_access(record)
    [logged] = caplog.records
    assert logged.name == "wsproxy.access"
    assert logged.levelno == logging.INFO
    assert logged.getMessage() == "access"
    assert logged.__dict__["access"] is record


@pytest.mark.parametrize("form", ["text", "json"])
def test_write_access_is_one_line_on_stderr(
    root: logging.Logger, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    setup_logging("info", form)
    write_access(access_record(subprotocol="a b"))
    [line] = capsys.readouterr().err.splitlines()
    if form == "json":
        assert json.loads(line)["subprotocol"] == "a b"
    else:
        assert ' subprotocol="a b" ' in line


def test_access_fields_are_the_access_record_fields_in_order() -> None:
    assert ACCESS_FIELDS == (
        "time",
        "client",
        "route",
        "pool",
        "server",
        "subprotocol",
        "duration",
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "close_code",
        "closed_by",
    )


# ----------------------------------------------------------------------------- log_safe


def unescape(shown: str) -> str:
    """The inverse of `log_safe` on a value it did not clip (str input)."""
    return shown.encode("latin-1", "backslashreplace").decode("unicode_escape")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "-"),
        ("", "-"),
        (b"", "-"),
        ("https://app.example.com", "https://app.example.com"),
        ("two words", "two words"),
        ('say "hi"', 'say "hi"'),
        ("café ünïcode 日本", "café ünïcode 日本"),
        ("a\r\nb", "a\\x0d\\x0ab"),
        ("\x00\x07\t\x1b[31m\x7f", "\\x00\\x07\\x09\\x1b[31m\\x7f"),
        ("\x85\x9b", "\\x85\\x9b"),  # C1 controls: NEL and CSI
        ("back\\slash", "back\\x5cslash"),  # a literal backslash cannot pose as an escape
        ("\\x0a", "\\x5cx0a"),
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),  # line and paragraph separators
        ("\u202eevil\u200b\ufeff", "\\u202eevil\\u200b\\ufeff"),  # bidi override, zero widths
        ("\U000e0041", "\\U000e0041"),  # a tag character
        ("\ud800", "\\ud800"),  # a lone surrogate
        (b"/chat", "/chat"),
        (b"caf\xc3\xa9", "caf\\xc3\\xa9"),  # bytes: what is not printable ASCII is shown as hex
        (b"\xe2\x80\xa8", "\\xe2\\x80\\xa8"),
        (b"a\x00\x7f\\", "a\\x00\\x7f\\x5c"),
    ],
)
def test_log_safe_escapes_what_is_not_printable_and_the_backslash(
    value: str | bytes | None, shown: str
) -> None:
    assert log_safe(value) == shown


def test_log_safe_clips_to_the_limit_and_says_so() -> None:
    assert log_safe("x" * FIELD_LIMIT) == "x" * FIELD_LIMIT
    assert log_safe("x" * (FIELD_LIMIT + 1)) == "x" * FIELD_LIMIT + "..."
    assert log_safe(b"y" * 10_000) == "y" * FIELD_LIMIT + "..."
    assert log_safe("abcdef", limit=3) == "abc..."
    assert log_safe("\n" * 5, limit=2) == "\\x0a\\x0a..."  # the limit counts the value's characters


def test_log_safe_leaves_only_printable_characters_for_every_code_point() -> None:
    every = "".join(map(chr, range(0x110000)))
    shown = log_safe(every, limit=len(every))
    assert shown.isprintable()
    assert unescape(shown) == every  # nothing lost, nothing ambiguous


def test_log_safe_of_every_byte_is_printable_ascii() -> None:
    every = bytes(range(256))
    shown = log_safe(every, limit=256)
    assert shown.isascii()
    assert shown.isprintable()
    assert unescape(shown).encode("latin-1") == every


# ----------------------------------------------------------------------------- refusals


def test_refusal_record_makes_every_field_safe_and_drops_the_query() -> None:
    record = refusal_record(
        403,
        "Origin https://evil.test\r\nINFO forged is not allowed",
        "127.0.0.1:50000",
        origin=b"https://evil.test\r\nINFO forged",
        host=b"proxy.test\x1b[2J",
        target=b"/chat/room?token=secret&x=1",
    )
    assert record == RefusalRecord(
        status=403,
        reason="Origin https://evil.test\\x0d\\x0aINFO forged is not allowed",
        client="127.0.0.1:50000",
        origin="https://evil.test\\x0d\\x0aINFO forged",
        host="proxy.test\\x1b[2J",
        path="/chat/room",
    )


def test_refusal_record_shows_what_is_not_known_as_a_dash() -> None:
    record = refusal_record(408, "request head not received in time", "[::1]:4000")
    assert (record.origin, record.host, record.path) == ("-", "-", "-")
    assert refusal_record(400, "x", "c", target=b"?only=query").path == "-"


def refused(**changes: object) -> RefusalRecord:
    fields: dict[str, object] = {
        "status": 403,
        "reason": "Origin https://evil.test is not allowed",
        "client": "127.0.0.1:51234",
        "origin": "https://evil.test",
        "host": "proxy.test",
        "path": "/chat",
    }
    fields.update(changes)
    return RefusalRecord(**fields)  # type: ignore[arg-type]


def test_refusal_fields_are_the_refusal_record_fields_in_order() -> None:
    assert REFUSAL_FIELDS == ("status", "reason", "client", "origin", "host", "path")


def test_write_refusal_logs_one_info_line_on_wsproxy_refusals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=refusal_log.name)
    record = refused()
    write_refusal(record)
    [logged] = caplog.records
    assert (logged.name, logged.levelno) == ("wsproxy.refusals", logging.INFO)
    assert logged.getMessage() == (
        'handshake refused status=403 reason="Origin https://evil.test is not allowed"'
        " client=127.0.0.1:51234 origin=https://evil.test host=proxy.test path=/chat"
    )
    assert logged.__dict__["refusal"] is record


def test_text_formatter_refusal_is_the_standard_prefix_then_key_value_pairs() -> None:
    log_record = make_record("handshake refused %s", "status=404 reason=x", name="wsproxy.refusals")
    log_record.refusal = refused(status=404)
    assert TextFormatter().format(log_record) == (
        "2026-11-22T08:00:01.123Z INFO wsproxy.refusals: handshake refused status=404 reason=x"
    )


def test_json_formatter_refusal_has_its_fields_as_keys() -> None:
    log_record = make_record("handshake refused %s", "...", name="wsproxy.refusals")
    log_record.refusal = refused(origin="-")
    line = JsonFormatter(worker=2).format(log_record)
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2026-11-22T08:00:01.123Z",
        "level": "info",
        "logger": "wsproxy.refusals",
        "message": "handshake refused",
        "type": "refusal",
        "status": 403,
        "reason": "Origin https://evil.test is not allowed",
        "client": "127.0.0.1:51234",
        "origin": "-",
        "host": "proxy.test",
        "path": "/chat",
        "worker": 2,
    }


def test_refusals_suppressed_line_in_text_and_json(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=refusal_log.name)
    write_refusals_suppressed(37, per_second=10)
    [logged] = caplog.records
    assert logged.name == "wsproxy.refusals"
    assert logged.levelno == logging.INFO
    logged.created = CREATED
    assert TextFormatter().format(logged) == (
        "2026-11-22T08:00:01.123Z INFO wsproxy.refusals: "
        "suppressed 37 refusal lines (at most 10 a second are written)"
    )
    entry = json.loads(JsonFormatter().format(logged))
    assert entry["type"] == "refusals_suppressed"
    assert entry["suppressed"] == 37
    assert entry["message"] == "suppressed 37 refusal lines (at most 10 a second are written)"


@pytest.mark.parametrize("form", ["text", "json"])
def test_a_forged_refusal_stays_one_line_on_stderr(
    root: logging.Logger, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    setup_logging("info", form)
    write_refusal(
        refusal_record(
            403,
            "Origin x is not allowed",
            "127.0.0.1:1",
            origin=b"x\r\n2026-01-01T00:00:00.000Z INFO wsproxy.server: forged",
            host=b"h\x85\xe2\x80\xa8",
        )
    )
    [line] = capsys.readouterr().err.splitlines()
    origin = "x\\x0d\\x0a2026-01-01T00:00:00.000Z INFO wsproxy.server: forged"
    if form == "json":
        assert json.loads(line)["origin"] == origin
        assert json.loads(line)["host"] == "h\\x85\\xe2\\x80\\xa8"
    else:
        assert line.endswith(f' origin="{origin}" host=h\\x85\\xe2\\x80\\xa8 path=-')


@pytest.mark.parametrize(
    ("reason", "written"),
    [
        ("x", "reason=x"),
        ("two words", 'reason="two words"'),
        ('Origin "q" is not allowed', 'reason="Origin \\x22q\\x22 is not allowed"'),
        ('a"b', 'reason="a\\x22b"'),
    ],
)
def test_write_refusal_quotes_spaced_values_and_shows_their_quotes_escaped(
    caplog: pytest.LogCaptureFixture, reason: str, written: str
) -> None:
    caplog.set_level(logging.INFO, logger=refusal_log.name)
    write_refusal(refused(reason=reason))
    assert f" {written} client=" in caplog.records[0].getMessage()


# ----------------------------------------------------------------------------- LineLimit


def test_line_limit_admits_per_window_lines_then_counts_the_rest() -> None:
    lines = LineLimit(3, window=1.0)
    before = lines.window_end
    assert before is None  # no window is open until the first line
    assert [lines.admit(10.0 + i / 10) for i in range(5)] == [True, True, True, False, False]
    assert lines.window_end == 11.0
    assert lines.suppressed == 2


def test_line_limit_hands_out_the_count_once_when_the_window_is_over() -> None:
    lines = LineLimit(1, window=1.0)
    for _ in range(4):
        lines.admit(5.0)
    assert lines.take_suppressed(5.999) == 0  # not over yet
    assert lines.take_suppressed(6.0) == 3  # over exactly at its end
    assert lines.take_suppressed(6.0) == 0
    assert lines.take_suppressed(100.0) == 0
    assert lines.window_end is None


def test_line_limit_a_new_window_begins_with_the_first_line_after_the_last_ended() -> None:
    lines = LineLimit(2, window=1.0)
    assert [lines.admit(t) for t in (0.0, 0.1, 0.2)] == [True, True, False]
    assert lines.admit(1.5)  # the first window ended at 1.0; this one runs 1.5 to 2.5
    assert lines.window_end == 2.5
    assert lines.admit(2.4)
    assert not lines.admit(2.49)
    assert lines.take_suppressed(2.49) == 1  # the first window's line, not the current one's
    assert lines.take_suppressed(2.5) == 1


def test_line_limit_counts_of_windows_not_taken_add_up() -> None:
    lines = LineLimit(1, window=1.0)
    for t in (0.0, 0.5, 0.6, 1.0, 1.1, 2.5):
        lines.admit(t)
    # windows [0, 1): 2 left out; [1, 2): 1; [2.5, 3.5): none
    assert lines.take_suppressed(2.5) == 3
    assert lines.suppressed == 0


def test_line_limit_a_flood_writes_a_bounded_number_of_lines_and_counts_every_other() -> None:
    lines = LineLimit(10, window=1.0)
    written = reported = 0
    for i in range(100_000):  # 100,000 lines over 10 seconds
        now = i / 10_000
        reported += lines.take_suppressed(now)
        written += lines.admit(now)
    reported += lines.take_suppressed(11.0)
    assert written == 100
    assert written + reported == 100_000


@pytest.mark.parametrize("per_window", [1, 2, 7])
def test_line_limit_every_line_is_written_or_counted_exactly_once(per_window: int) -> None:
    """Every pattern of 0 to 3 lines in each of 6 quarter-second steps."""
    for pattern in range(4**6):
        lines = LineLimit(per_window, window=1.0)
        written = reported = total = 0
        for step in range(6):
            for _ in range(pattern // 4**step % 4):
                now = step / 4
                reported += lines.take_suppressed(now)
                written += lines.admit(now)
                total += 1
        reported += lines.take_suppressed(10.0)
        assert written + reported == total
        # at most per_window lines in any one window; windows here last 4 steps
        assert written <= per_window * 2


# ------------------------------------------------------------------------------ progress lines


def progress_record() -> AccessRecord:
    return replace(access_record(), close_code=None, closed_by=None)


def with_progress(record: AccessRecord) -> logging.LogRecord:
    """The record `write_progress` makes: message "progress", the data in `progress`."""
    log_record = make_record("progress", name="wsproxy.access")
    log_record.progress = record
    return log_record


def test_text_formatter_progress_line_is_an_access_line_with_event_progress() -> None:
    line = TextFormatter().format(with_progress(progress_record()))
    assert line == (
        "2026-11-22T08:00:01.123Z access event=progress time=2026-11-22T08:00:01.123Z"
        ' client=127.0.0.1:51234 route=/ pool=default server=ws://127.0.0.1:9001 subprotocol=""'
        " duration=12.004 messages_in=3 messages_out=4 bytes_in=120 bytes_out=96 close_code=-"
        " closed_by=-"
    )


def test_json_formatter_progress_line_has_type_access_and_event_progress() -> None:
    entry = json.loads(JsonFormatter().format(with_progress(progress_record())))
    assert list(entry) == ["type", "event", *ACCESS_FIELDS]
    assert (entry["type"], entry["event"]) == ("access", "progress")
    assert (entry["messages_in"], entry["close_code"], entry["closed_by"]) == (3, None, None)


def test_write_progress_logs_on_the_access_logger(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "wsproxy.access")
    write_progress(progress_record())
    (record,) = caplog.records
    assert (record.name, record.getMessage()) == ("wsproxy.access", "progress")
    assert record.__dict__["progress"] == progress_record()
