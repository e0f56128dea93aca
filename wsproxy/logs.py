"""Logging: set-up in text or JSON, the wall clock, the one access line per session and the
one line per refused handshake.

Invariants:
- Every log line goes through the stdlib `logging` module, synchronously; pure modules never log.
- `wall_time()` is the only place wsproxy reads the wall clock.
- An access record is one line: `format: json` makes it one JSON object whose keys are
  `ACCESS_FIELDS`; `format: text` makes it `key=value` pairs in that order.
- A progress line (`log.session_interval`) is an access line of a session still running, whose
  counts are what moved since its previous line: the same keys in the same order, its close
  (not come yet) "-" (null in JSON), and `event=progress` right after `access` (in JSON,
  `"event": "progress"` right after `"type": "access"`). The final access line is as it was.
- A refusal line (logger `wsproxy.refusals`, INFO) is `handshake refused` and the pairs of
  `REFUSAL_FIELDS` in that order; `format: json` gives them as keys of its object, with
  `"type": "refusal"`. Every value a client chose went through `log_safe` first: one line, no
  control character, at most `FIELD_LIMIT` characters of it. `LineLimit` keeps the lines
  written to a bounded rate; how many were left out is said in a line of its own.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Final

access_log = logging.getLogger("wsproxy.access")
refusal_log = logging.getLogger("wsproxy.refusals")

FIELD_LIMIT: Final = 200  # characters of a client's value shown in a log line
REFUSAL_LINES_PER_SECOND: Final = 10  # in each process; the others are counted, not written


def wall_time() -> float:
    return time.time()


def iso_time(seconds: float) -> str:
    return (
        datetime.fromtimestamp(seconds, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """What one session did: written when it ends, and in its progress lines (which count
    what moved since the previous one, and have no close yet)."""

    time: str
    client: str
    route: str
    pool: str
    server: str
    subprotocol: str
    duration: float
    messages_in: int  # client to backend
    messages_out: int  # backend to client
    bytes_in: int
    bytes_out: int
    close_code: int | None  # None in a progress line: "-" in text, null in JSON
    closed_by: str | None


ACCESS_FIELDS: Final = tuple(AccessRecord.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class RefusalRecord:
    """A handshake answered with something other than 101; "-" for what is not known."""

    status: int
    reason: str
    client: str  # IP:PORT
    origin: str
    host: str
    path: str  # the request target without its query, which may carry credentials


REFUSAL_FIELDS: Final = tuple(RefusalRecord.__dataclass_fields__)


def refusal_record(
    status: int,
    reason: str,
    client: str,
    *,
    origin: bytes | None = None,
    host: bytes | None = None,
    target: bytes | None = None,
) -> RefusalRecord:
    """The refusal line's fields, each made safe to log."""
    path = None if target is None else target.split(b"?", 1)[0]
    return RefusalRecord(
        status, log_safe(reason), log_safe(client), log_safe(origin), log_safe(host), log_safe(path)
    )


def log_safe(value: str | bytes | None, limit: int = FIELD_LIMIT) -> str:
    """`value` fit for one field of one log line: "-" when absent or empty; a backslash and
    every character that is not printable (controls, line and paragraph separators, format
    characters such as bidirectional overrides) escaped as `\\xNN`, `\\uNNNN` or
    `\\UNNNNNNNN`, and, from bytes, everything outside printable ASCII as `\\xNN`; at most
    `limit` characters of `value`, then "..." if there were more."""
    if not value:
        return "-"
    raw = isinstance(value, bytes)
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    shown = "".join(
        _escape(char) if char == "\\" or not char.isprintable() or (raw and char > "~") else char
        for char in text[:limit]
    )
    return shown + "..." if len(text) > limit else shown


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


class LineLimit:
    """At most `per_window` lines in each window of `window` seconds; a window begins with the
    first line after the previous one ended. Lines over the limit are counted, and the count
    of each window that ended is handed out once, by `take_suppressed`. Pure: the caller says
    what time it is."""

    def __init__(self, per_window: int, window: float = 1.0) -> None:
        self.per_window = per_window
        self.window = window
        self._start: float | None = None  # of the current window, if one is open
        self._written = 0  # in the current window
        self.suppressed = 0  # in the current window
        self._ended_suppressed = 0  # in windows that ended, not yet taken

    @property
    def window_end(self) -> float | None:
        """When the current window ends (None: no window is open)."""
        return None if self._start is None else self._start + self.window

    def admit(self, now: float) -> bool:
        """Whether a line may be written at `now`; a line refused is counted."""
        self._roll(now)
        if self._start is None:
            self._start = now
        if self._written < self.per_window:
            self._written += 1
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self, now: float) -> int:
        """How many lines were refused in the windows over by `now` (each counted once)."""
        self._roll(now)
        taken, self._ended_suppressed = self._ended_suppressed, 0
        return taken

    def _roll(self, now: float) -> None:
        end = self.window_end
        if end is not None and now >= end:
            self._ended_suppressed += self.suppressed
            self._start, self._written, self.suppressed = None, 0, 0


class TextFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker  # with `workers` > 1, which worker writes (None: the supervisor)

    def format(self, record: logging.LogRecord) -> str:
        access, event = _access_of(record)
        if access is not None:
            fields = " ".join(
                f"{k}={'-' if v is None else _text_value(v)}" for k, v in asdict(access).items()
            )
            return f"{access.time} access {f'event={event} ' if event else ''}{fields}"
        name = record.name if self.worker is None else f"{record.name}[worker {self.worker}]"
        line = f"{iso_time(record.created)} {record.levelname} {name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        access, event = _access_of(record)
        if access is not None:
            return json.dumps(
                {"type": "access", **({"event": event} if event else {}), **asdict(access)}
            )
        refusal = getattr(record, "refusal", None)
        suppressed = getattr(record, "refusals_suppressed", None)
        entry: dict[str, object] = {
            "time": iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": "handshake refused"
            if isinstance(refusal, RefusalRecord)
            else record.getMessage(),
        }
        if isinstance(refusal, RefusalRecord):
            entry.update(type="refusal", **asdict(refusal))
        elif isinstance(suppressed, int):
            entry.update(type="refusals_suppressed", suppressed=suppressed)
        if self.worker is not None:
            entry["worker"] = self.worker
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _access_of(record: logging.LogRecord) -> tuple[AccessRecord | None, str]:
    """The access record a log record carries, and its event ("" for a session's end,
    "progress" for a progress line)."""
    for key, event in (("access", ""), ("progress", "progress")):
        access = getattr(record, key, None)
        if isinstance(access, AccessRecord):
            return access, event
    return None, ""


def _text_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    return text if text and " " not in text and '"' not in text else json.dumps(text)


def _quoted(value: str) -> str:
    """A `log_safe` value in a text line: in double quotes if it has a space or one of them
    (which it shows as `\\x22`: every backslash in such a value begins an escape)."""
    if " " not in value and '"' not in value:
        return value
    return '"' + value.replace('"', "\\x22") + '"'


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `setup_logging` installs, so that `change_logging` can find it again."""


def setup_logging(level: str, form: str, worker: int | None = None) -> None:
    """Send every wsproxy log line to stderr, in `form` ("text" or "json"), from `level` up;
    a worker's lines name it."""
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(_formatter(form, worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def change_logging(level: str, form: str, worker: int | None = None) -> bool:
    """Apply a reloaded `log.level` and `log.format` to the handler `setup_logging` installed,
    from the next line on; False (and nothing changed) when logging was set up otherwise,
    as in a test or an embedding program."""
    root = logging.getLogger()
    ours = [handler for handler in root.handlers if isinstance(handler, _StderrHandler)]
    if not ours:
        return False
    for handler in ours:
        handler.setFormatter(_formatter(form, worker))
    root.setLevel(level.upper())
    return True


def _formatter(form: str, worker: int | None) -> logging.Formatter:
    return JsonFormatter(worker) if form == "json" else TextFormatter(worker)


def write_access(record: AccessRecord) -> None:
    access_log.info("access", extra={"access": record})


def write_progress(record: AccessRecord) -> None:
    access_log.info("progress", extra={"progress": record})


def write_refusal(record: RefusalRecord) -> None:
    fields = " ".join(f"{k}={_quoted(str(v))}" for k, v in asdict(record).items())
    refusal_log.info("handshake refused %s", fields, extra={"refusal": record})


def write_refusals_suppressed(count: int, per_second: int = REFUSAL_LINES_PER_SECOND) -> None:
    refusal_log.info(
        "suppressed %d refusal lines (at most %d a second are written)",
        count,
        per_second,
        extra={"refusals_suppressed": count},
    )
