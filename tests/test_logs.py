"""wsproxy/logs.py: the two formatters, the wall clock, set-up and the access line.

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
from datetime import UTC, datetime
from types import TracebackType
from typing import Final

import pytest

from wsproxy.logs import (
    ACCESS_FIELDS,
    AccessRecord,
    JsonFormatter,
    TextFormatter,
    access_log,
    change_logging,
    iso_time,
    setup_logging,
    wall_time,
    write_access,
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
