"""Logging: set-up in text or JSON, the wall clock, and the one access line per session.

Invariants:
- Every log line goes through the stdlib `logging` module, synchronously; pure modules never log.
- `wall_time()` is the only place wsproxy reads the wall clock.
- An access record is one line: `format: json` makes it one JSON object whose keys are
  `ACCESS_FIELDS`; `format: text` makes it `key=value` pairs in that order.
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
    """What one session did, written when it ends."""

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
    close_code: int
    closed_by: str


ACCESS_FIELDS: Final = tuple(AccessRecord.__dataclass_fields__)


class TextFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker  # with `workers` > 1, which worker writes (None: the supervisor)

    def format(self, record: logging.LogRecord) -> str:
        access = getattr(record, "access", None)
        if isinstance(access, AccessRecord):
            fields = " ".join(f"{k}={_text_value(v)}" for k, v in asdict(access).items())
            return f"{access.time} access {fields}"
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
        access = getattr(record, "access", None)
        if isinstance(access, AccessRecord):
            return json.dumps({"type": "access", **asdict(access)})
        entry: dict[str, object] = {
            "time": iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _text_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    return text if text and " " not in text and '"' not in text else json.dumps(text)


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
