"""The client side of the admin endpoint, for `wsproxy admin`: where it is, which token to
send, one request each, and the answers as an operator's shell shows them.

Invariants:
- The address is `--url`, else the configuration's `admin.address` (a wildcard host asked on
  loopback); the token is `--token`, else `$WSPROXY_ADMIN_TOKEN`, else `admin.token`. A
  request is sent with the token only when there is one, and only one an `Authorization`
  header can carry (printable ASCII, no space: what `admin.token` may be).
- Every failure is an `AdminError` with one sentence: the endpoint unreachable or silent
  within `TIMEOUT`, or an answer other than 200 (the endpoint's own sentence is kept). The
  token never appears in one.
- This runs outside the proxy, in a short-lived command: plain blocking `http.client`.
"""

from __future__ import annotations

import http.client
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from wsproxy.adminapi import (
    Action,
    SessionQuery,
    SessionRow,
    action_body,
    action_target,
    describe,
    parse_sessions,
    query_target,
)
from wsproxy.config import TOKEN_CHARACTERS, Admin

TIMEOUT: Final = 10.0  # seconds for the endpoint to answer
TOKEN_VARIABLE: Final = "WSPROXY_ADMIN_TOKEN"
_WILDCARDS: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
COLUMNS: Final = (
    "ID",
    "CLIENT",
    "POOL",
    "SERVER",
    "ROUTE",
    "AGE",
    "MSGS IN",
    "MSGS OUT",
    "BYTES IN",
    "BYTES OUT",
)


class AdminError(Exception):
    """The command failed; `str(exc)` is the one sentence to show."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the admin endpoint is and what proves the right to act."""

    host: str
    port: int
    token: str  # "": none


def find_endpoint(
    url: str | None, token: str | None, env: Mapping[str, str], admin: Admin | None
) -> Endpoint:
    """The endpoint from the command's `url` and `token`, the environment and the
    configuration's `admin` section (None: the file has none, or was not read)."""
    token = token or env.get(TOKEN_VARIABLE) or (admin.token if admin is not None else "")
    if token and not TOKEN_CHARACTERS.fullmatch(token):  # a header could not carry it
        raise AdminError(
            f"the admin token (--token, ${TOKEN_VARIABLE}) must be printable ASCII without "
            "spaces, as admin.token is"
        )
    if url:
        unfit = AdminError(f"--url must be http://HOST:PORT, got {url!r}")
        try:
            parts = urlsplit(url if "//" in url else f"http://{url}")
            port = parts.port or 80
        except ValueError:  # an unclosed [IPv6 address, or a port that is not a number
            raise unfit from None
        host = parts.hostname
        if parts.scheme != "http" or not host or not host.isprintable() or " " in host:
            raise unfit
        return Endpoint(host, port, token)
    if admin is None:
        raise AdminError("the configuration has no admin.address: give --url http://HOST:PORT")
    return Endpoint(_WILDCARDS.get(admin.host, admin.host), admin.port, token)


def needs_config(
    url: str | None, token: str | None, env: Mapping[str, str], *, acting: bool
) -> bool:
    """Whether the configuration file is to be read: the flags and environment leave the
    address to it, or the token for an action."""
    return not url or (acting and not (token or env.get(TOKEN_VARIABLE)))


def request(endpoint: Endpoint, path: str, body: bytes | None = None) -> bytes:
    """The body of the endpoint's 200 answer to `GET path` (`POST path` with `body`)."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if endpoint.token:
        headers["Authorization"] = f"Bearer {endpoint.token}"
    where = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    where = f"http://{where}:{endpoint.port}"
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=TIMEOUT)
    try:
        conn.request("POST" if body is not None else "GET", path, body=body, headers=headers)
        response = conn.getresponse()
        status, text = response.status, response.read()
    except (OSError, http.client.HTTPException, UnicodeError) as exc:  # UnicodeError: IDNA
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise AdminError(f"cannot reach the admin endpoint at {where}: {reason}") from None
    finally:
        conn.close()
    if status != 200:
        said = text.decode("utf-8", "replace").strip().splitlines()
        raise AdminError(f"the admin endpoint answered {status}: {said[0] if said else '-'}")
    return text


def list_sessions(endpoint: Endpoint, query: SessionQuery) -> list[SessionRow]:
    rows = parse_sessions(request(endpoint, query_target(query)).decode("utf-8", "replace"))
    if rows is None:
        raise AdminError("the admin endpoint's /sessions answer is not a list of sessions")
    return rows


def act(endpoint: Endpoint, action: Action) -> str:
    """Do `action`; the line that says it is under way."""
    request(endpoint, action_target(action), action_body(action))
    return describe(action)


def sessions_table(rows: Sequence[SessionRow]) -> str:
    """`rows` as aligned columns under a header, numbers to the right."""
    lines = [
        (
            row.id,
            row.client,
            row.pool,
            row.server,
            row.route,
            age_text(row.age),
            str(row.messages_in),
            str(row.messages_out),
            str(row.bytes_in),
            str(row.bytes_out),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in (COLUMNS, *lines)) for i in range(len(COLUMNS))]
    left = 5  # the columns up to ROUTE are text
    return "\n".join(
        "  ".join(
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in (COLUMNS, *lines)
    )


def age_text(seconds: float) -> str:
    """`42s`, `5m03s`, `2h07m`: an age at a glance."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
