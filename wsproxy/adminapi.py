"""The admin endpoint's sessions and actions as data: who may act, which sessions a listing
shows, what an action asks, each parsed, checked and written back without I/O.

Invariants:
- Reading needs nothing. Acting needs `Authorization: Bearer <admin.token>`, compared in
  constant time: no Bearer credentials → 401 (the answer carries `WWW-Authenticate: Bearer`);
  a wrong token, or no token configured → 403. A worker's private socket (`Guard.trusted`)
  takes actions from its supervisor, which checked them first.
- A malformed request is a `BadRequest` whose text is one sentence. What parses is kept in one
  normal form, and the supervisor passes on to its workers exactly that form (`query_target`,
  `action_target`, `action_body`), so a worker never judges a request the supervisor did not.
- A listing is the oldest sessions first (ties by id), filtered by pool and server, at most
  `limit` of them (`DEFAULT_LIMIT` unless given, at most `MAX_LIMIT`). A server is named by its
  identity or by its URL (every address of it), as drains name it. Merging the listings of
  several workers is selecting again from their union (`select_sessions`).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, quote, unquote, urlencode

from wsproxy.config import Admin
from wsproxy.frames import close_code_allowed
from wsproxy.units import duration

DEFAULT_LIMIT: Final = 1000  # sessions a listing shows unless `limit` says otherwise
MAX_LIMIT: Final = 10_000  # the default connection limit: every session of a process
MAX_BODY: Final = 4096  # bytes of an action's JSON body
MAX_REASON: Final = 123  # bytes of UTF-8 a close frame's reason may hold
CLOSE_CODE: Final = 1000  # what a closed session hears unless the request says
DRAIN_WINDOW: Final = 30.0
DRAIN_CODE: Final = 1012  # service restart: clients reconnect, elsewhere

Refusal = tuple[int, str]  # status, one sentence


class BadRequest(Exception):
    """A request the endpoint cannot act on: 400, with `str(exc)` as the sentence."""


# ---------------------------------------------------------------- who may act


@dataclass(frozen=True, slots=True)
class Guard:
    """Who may act on one admin listener."""

    token: str = ""  # the Bearer token actions need; "": nobody may act
    trusted: bool = False  # every request may act: a worker's socket, reached by its supervisor


NOBODY: Final = Guard()  # a listener on which nobody may act


def guard_for(admin: Admin | None, worker: int | None) -> Guard:
    """Who may act on a process's admin listener: a worker's is its supervisor's alone (a Unix
    socket in a directory only the proxy's user may enter), which checks the token first; a
    single process's needs `admin.token`."""
    if worker is not None:
        return Guard(trusted=True)
    return Guard(token=admin.token if admin is not None else "")


def refusal(guard: Guard, authorization: Sequence[bytes]) -> Refusal | None:
    """Why a request with these `Authorization` header values may not act, or None if it may."""
    if guard.trusted:
        return None
    if not guard.token:
        return 403, "admin actions are disabled: admin.token is not configured"
    scheme, _, credentials = authorization[0].partition(b" ") if authorization else (b"", b"", b"")
    if len(authorization) != 1 or scheme.lower() != b"bearer" or not credentials.strip():
        return 401, "this action needs the header Authorization: Bearer <admin.token>"
    if not hmac.compare_digest(credentials.strip(), guard.token.encode()):
        return 403, "wrong admin token"
    return None


# ---------------------------------------------------------------- listing sessions


@dataclass(frozen=True, slots=True)
class SessionQuery:
    """Which sessions `GET /sessions` lists."""

    pool: str = ""  # "": every pool
    server: str = ""  # a server's identity as /status names it, or its URL; "": every server
    limit: int = DEFAULT_LIMIT


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One live session in a listing. `in` is client to backend, as in the metrics."""

    id: str
    client: str  # IP:PORT
    route: str
    pool: str
    server: str
    age: float  # seconds since its backend said yes
    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int


def parse_query(query: bytes) -> SessionQuery:
    """The query string of `GET /sessions` (what follows the `?`), read."""
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("the query must be percent-encoded UTF-8") from None
    given: dict[str, str] = {}
    for name, value in pairs:
        if name not in ("pool", "server", "limit"):
            raise BadRequest(f"unknown parameter {name!r}: /sessions takes pool, server and limit")
        if name in given:
            raise BadRequest(f"the parameter {name} is given twice")
        given[name] = value
    text = given.get("limit") or str(DEFAULT_LIMIT)
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {text!r}")
    return SessionQuery(given.get("pool", ""), given.get("server", ""), int(text))


def query_target(query: SessionQuery) -> str:
    """The request target that asks for `query`."""
    params = [("pool", query.pool), ("server", query.server)]
    return "/sessions?" + urlencode([*((k, v) for k, v in params if v), ("limit", query.limit)])


def select_sessions(rows: Iterable[SessionRow], query: SessionQuery) -> list[SessionRow]:
    """The rows `query` lists, oldest first."""
    chosen = [
        row
        for row in rows
        if (not query.pool or row.pool == query.pool)
        and (not query.server or _names(query.server, row.server))
    ]
    chosen.sort(key=lambda row: (-row.age, row.id))
    return chosen[: query.limit]


def _names(server: str, key: str) -> bool:
    """Whether `server`, as an operator gives it, names the server whose identity is `key`:
    the identity itself, or its URL (every address of it, as a drain takes it). An identity is
    the URL, or the URL and ` (ADDRESS)`; a URL has no space."""
    return key == server or key.partition(" (")[0] == server


def sessions_document(rows: Iterable[SessionRow]) -> bytes:
    """The JSON answer of `GET /sessions`."""
    return json.dumps({"sessions": [asdict(row) for row in rows]}, indent=1).encode()


def parse_sessions(text: str) -> list[SessionRow] | None:
    """A `GET /sessions` answer read back, or None if it is not one."""
    try:
        document = json.loads(text)
        rows = [SessionRow(**item) for item in document["sessions"]]
    except (ValueError, RecursionError, TypeError, KeyError):
        return None
    return rows


# ---------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class CloseSession:
    """`POST /sessions/{id}/close`: close that session with `code` and `reason`."""

    session: str
    code: int = CLOSE_CODE
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Drain:
    """`POST /pools/{pool}/servers/{server}/drain`: no new sessions to that server, and its
    sessions closed with `code` spread over `window` seconds."""

    pool: str
    server: str
    window: float = DRAIN_WINDOW
    code: int = DRAIN_CODE


@dataclass(frozen=True, slots=True)
class Undrain:
    """`POST /pools/{pool}/servers/{server}/undrain`: new sessions may go to it again."""

    pool: str
    server: str


Action = CloseSession | Drain | Undrain


def is_action(path: bytes) -> bool:
    """Whether `path` (the target without its query) names an action, well formed or not."""
    parts = path.split(b"/")
    return (len(parts) == 4 and parts[1] == b"sessions" and parts[3] == b"close") or (
        len(parts) == 6
        and (parts[1], parts[3]) == (b"pools", b"servers")
        and parts[5] in (b"drain", b"undrain")
    )


def parse_action(path: bytes, body: bytes) -> Action:
    """The action `POST path` with `body` asks for; `path` is one `is_action` accepts."""
    parts = path.split(b"/")
    if len(parts) == 4:
        fields = _fields(body, ("code", "reason"))
        return CloseSession(
            _segment(parts[2], "session id"),
            _code(fields.get("code", CLOSE_CODE)),
            _reason(fields.get("reason", "")),
        )
    pool, server = _segment(parts[2], "pool"), _segment(parts[4], "server")
    if parts[5] == b"undrain":
        _fields(body, ())
        return Undrain(pool, server)
    fields = _fields(body, ("window", "code"))
    try:
        window = duration(fields.get("window", DRAIN_WINDOW))
    except ValueError as exc:
        raise BadRequest(f"window: {exc}") from None
    return Drain(pool, server, window, _code(fields.get("code", DRAIN_CODE)))


def action_target(action: Action) -> str:
    """The path that asks for `action`."""
    if isinstance(action, CloseSession):
        return f"/sessions/{quote(action.session, safe='')}/close"
    verb = "drain" if isinstance(action, Drain) else "undrain"
    return f"/pools/{quote(action.pool, safe='')}/servers/{quote(action.server, safe='')}/{verb}"


def action_body(action: Action) -> bytes:
    """The JSON body that asks for `action`, every field given."""
    if isinstance(action, CloseSession):
        return json.dumps({"code": action.code, "reason": action.reason}).encode()
    if isinstance(action, Drain):
        return json.dumps({"window": action.window, "code": action.code}).encode()
    return b""


def action_done(action: Action) -> bytes:
    """The JSON answer once `action` is under way."""
    fields = asdict(action)
    if isinstance(action, CloseSession):
        fields = {"closing": fields.pop("session"), **fields}
    else:
        fields["draining"] = isinstance(action, Drain)
    return json.dumps(fields).encode()


def describe(action: Action) -> str:
    """`action` in a few words, for a log line and the command's answer."""
    if isinstance(action, CloseSession):
        reason = f" ({action.reason!r})" if action.reason else ""
        return f"closing session {action.session} with {action.code}{reason}"
    if isinstance(action, Drain):
        return (
            f"draining {action.server} in pool {action.pool}: "
            f"its sessions closed with {action.code} over {action.window:g}s"
        )
    return f"{action.server} in pool {action.pool} takes new sessions again"


def action_unknown(action: Action) -> str:
    """The sentence of a 404: what `action` names does not exist."""
    if isinstance(action, CloseSession):
        return f"no live session {action.session!r}"
    return f"no server {action.server!r} in pool {action.pool!r}"


def _segment(raw: bytes, what: str) -> str:
    try:
        text = unquote(raw.decode("ascii"), errors="strict")
    except UnicodeDecodeError:
        raise BadRequest(f"the {what} in the path must be percent-encoded UTF-8") from None
    if not text:
        raise BadRequest(f"the {what} in the path is empty")
    return text


def _fields(body: bytes, known: tuple[str, ...]) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        fields = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python goes
        raise BadRequest("the body is not JSON") from None
    if not isinstance(fields, dict):
        raise BadRequest("the body must be a JSON object")
    for name in fields:
        if name not in known:
            takes = f"only {', '.join(known)}" if known else "no fields"
            raise BadRequest(f"unknown field {name!r}: this action takes {takes}")
    return fields


def _code(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not close_code_allowed(value):
        raise BadRequest(
            f"code must be a close code that may be sent (1000-1003, 1007-1014, 3000-4999), "
            f"got {json.dumps(value)}"
        )
    return value


def _reason(value: object) -> str:
    if not isinstance(value, str) or len(value.encode("utf-8", "surrogatepass")) > MAX_REASON:
        raise BadRequest(f"reason must be a string of at most {MAX_REASON} bytes of UTF-8")
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape
        raise BadRequest("reason must be valid Unicode") from None
    return value
