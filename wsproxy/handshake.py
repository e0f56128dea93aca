"""The opening handshake, judged and rewritten as pure functions (no I/O, no trio).

Invariants:
- A refusal is a value (`Reject`) that carries its whole answer; exceptions are for bugs.
- Hop-by-hop headers and the per-leg WebSocket headers (`Connection`, `Upgrade`,
  `Sec-WebSocket-Key`, `Sec-WebSocket-Accept`, `Sec-WebSocket-Version`) are regenerated for each
  leg, never copied. Everything else is end to end.
- Only `permessage-deflate` offers are forwarded, because the relay forwards frames untouched and
  so must know which RSV bits the negotiated extensions allow.
- The Host of an `UpgradeRequest` passed `host_problem`: routing, the backend's `Host` and
  `X-Forwarded-Host` never see a value outside that grammar.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

import h11

from wsproxy.config import Security

Headers = tuple[tuple[bytes, bytes], ...]
Fields = dict[bytes, list[bytes]]  # a head's header names, each with its values in order


@dataclass(frozen=True, slots=True)
class Reject:
    """An HTTP answer instead of a 101: status, extra headers and a short plain-text reason."""

    status: int
    reason: str
    headers: Headers = ()


class RequestHead(Protocol):
    """A parsed request head, as h11 gives it (`h11.Request`) or `PlainRequest`."""

    @property
    def method(self) -> bytes: ...
    @property
    def target(self) -> bytes: ...
    @property
    def http_version(self) -> bytes: ...
    @property
    def headers(self) -> Iterable[tuple[bytes, bytes]]: ...


@dataclass(frozen=True, slots=True)
class PlainRequest:
    """A request head read by `http1.plain_request`: what h11 would give, without h11."""

    method: bytes
    target: bytes
    http_version: bytes
    headers: Headers  # names lower-cased, as h11 gives them


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """A client's upgrade request that passed every check."""

    target: bytes  # path and query, as sent
    host: str  # the Host header, as sent; always valid (see `host_problem`)
    origin: str | None
    key: bytes  # the client's Sec-WebSocket-Key
    headers: Headers  # the request's headers, names lower-cased, as h11 gives them


@dataclass(frozen=True, slots=True)
class BackendAccept:
    """A backend's valid 101: what the client's 101 must carry."""

    subprotocol: str | None
    extensions: str | None  # the Sec-WebSocket-Extensions value accepted, if any
    deflate: bool  # permessage-deflate negotiated, so RSV1 is legal on data frames
    headers: Headers  # the backend's other end-to-end headers (e.g. Set-Cookie)


@dataclass(frozen=True, slots=True)
class BackendRequest:
    """The upgrade request for a backend: a GET of `target` with `headers`, names as written.

    Every part came through h11's parser (the client's request) or is ours, so it is valid HTTP
    as it is: `head()` writes it as h11 would, without building an h11 event for it."""

    target: bytes
    headers: Headers  # Host first

    def head(self) -> bytes:
        lines = b"".join([b"%s: %s\r\n" % (name, value) for name, value in self.headers])
        return b"GET %s HTTP/1.1\r\n%s\r\n" % (self.target, lines)


WEBSOCKET_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Headers that describe one connection, not the message (RFC 9110 7.6.1, plus the legacy
# proxy-connection and the framing headers): never copied from one leg to the other.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"content-length",
    }
)
# Regenerated for the backend leg (the extensions are re-added, filtered).
_PER_LEG_REQUEST: Final = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-accept",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
    }
)
# Rebuilt by `backend_request` from the client's values, whatever its Connection header names.
_REBUILT: Final = frozenset({b"host", b"sec-websocket-protocol", b"sec-websocket-extensions"})
_FORWARDING: Final = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip"}
)
# The client's headers `backend_request` never copies (besides those its Connection names).
_NOT_COPIED_TO_BACKEND: Final = HOP_BY_HOP | _PER_LEG_REQUEST | _REBUILT | _FORWARDING
_DEFLATE: Final = b"permessage-deflate"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_MAX_ECHO: Final = 100  # characters of client input quoted back in a reason
# RFC 3986 reg-name, restricted to what DNS names and the other names hosts are reached by use
# (letters, digits, "-", ".", "_"): no pct-encoded or sub-delims, which no real host name has.
_NAME_BYTES: Final = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
_HEX_BYTES: Final = frozenset(b"0123456789abcdefABCDEF:.")
_BAD_HOST: Final = "the Host header must be a host name or IP address, with an optional :port"
_BAD_PORT: Final = "the Host header's port must be a number from 0 to 65535"


# --- the client's request ----------------------------------------------------------------------


def judge_request(request: RequestHead, security: Security) -> UpgradeRequest | Reject:
    """Check a client's Host (RFC 9112 3.2: a bad one is a 400 for any request), its upgrade
    request (RFC 6455 4.2.1) and the Origin policy, in that order."""
    headers: Headers = tuple(request.headers)
    fields = _fields(headers)
    hosts = _values(fields, b"host")
    if len(hosts) != 1:
        return Reject(400, "more than one Host header" if hosts else "the Host header is missing")
    problem = host_problem(hosts[0])
    if problem is not None:
        return Reject(400, problem)
    if b"websocket" not in _tokens(fields, b"upgrade"):
        return Reject(
            426,
            "this port serves WebSocket only; send Upgrade: websocket",
            ((b"upgrade", b"websocket"),),
        )
    if request.method != b"GET":
        return Reject(
            400, f"a WebSocket handshake must use GET, not {request.method.decode('latin-1')}"
        )
    if request.http_version != b"1.1":
        version = request.http_version.decode("latin-1")
        return Reject(400, f"a WebSocket handshake needs HTTP/1.1, not HTTP/{version}")
    if b"upgrade" not in _tokens(fields, b"connection"):
        return Reject(400, "the Connection header must include upgrade")
    if _values(fields, b"transfer-encoding") or any(
        value.lstrip(b"0") for value in _values(fields, b"content-length")
    ):
        # What follows the head would be a body to one reader and frames to another.
        return Reject(400, "a WebSocket handshake has no body")
    if _values(fields, b"sec-websocket-version") != [b"13"]:
        return Reject(
            426,
            "only WebSocket version 13 is supported; send Sec-WebSocket-Version: 13",
            ((b"sec-websocket-version", b"13"),),
        )
    keys = _values(fields, b"sec-websocket-key")
    if not keys:
        return Reject(400, "Sec-WebSocket-Key is missing")
    if len(keys) > 1:
        return Reject(400, "Sec-WebSocket-Key is repeated")
    if not _is_key(keys[0]):
        return Reject(400, "Sec-WebSocket-Key must be 16 bytes in base64")
    origins = _values(fields, b"origin")
    if len(origins) > 1:
        return Reject(403, "more than one Origin header")
    origin = origins[0].decode("latin-1") if origins else None
    if origin is None:
        if security.require_origin:
            return Reject(403, "an Origin header is required")
    elif not origin_allowed(origin, security.allowed_origins):
        return Reject(403, f"Origin {_clip(origin)} is not allowed")
    return UpgradeRequest(
        target=request.target,
        host=hosts[0].decode("ascii"),
        origin=origin,
        key=keys[0],
        headers=headers,
    )


def host_problem(value: bytes) -> str | None:
    """Why `value` is not a valid Host header value (RFC 9110 7.2, RFC 3986 3.2.2), or None.

    Accepted: `host [":" port]`, where host is
    - a name of letters, digits, "-", "." and "_" (RFC 3986's reg-name, without the
      percent-encoding and sub-delims no real host name uses; it covers every IPv4 address);
    - or an IPv6 address in brackets, without a zone ID (IPvFuture is refused);
    and port is 1 to 5 digits worth 0 to 65535 (an empty port, which RFC 3986 allows, is
    refused: no client sends one, and backends disagree on what it means).
    An empty value (RFC 9110 allows it for URIs without an authority, never a ws: URI) is refused.
    """
    if not value:
        return "the Host header is empty"
    if value.startswith(b"["):
        end = value.find(b"]")
        literal, port = value[1:end], value[end + 1 :]
        if end < 0 or not literal or not _HEX_BYTES.issuperset(literal):
            return _BAD_HOST
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError:
            return _BAD_HOST
    else:
        name, colon, digits = value.partition(b":")
        port = colon + digits
        if not name or not _NAME_BYTES.issuperset(name):
            return _BAD_HOST
    if not port:
        return None
    if port[:1] != b":":
        return _BAD_HOST
    digits = port[1:]
    if not (digits.isdigit() and len(digits) <= 5 and int(digits) <= 65535):
        return _BAD_PORT
    return None


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    """Whether `origin` matches an entry of `allowed` (see the configuration's `allowed_origins`).

    `*` allows every origin; other entries are exact (case-insensitive, default ports implied)
    or `scheme://*.suffix[:port]`, which matches subdomains of any depth but not `suffix`
    itself. `null` (sandboxed frames, file: pages) is allowed only by `*` or an exact `null`.
    """
    wanted = origin.strip().lower()
    entries = [entry.strip().lower() for entry in allowed]
    if "*" in entries:
        return True
    if wanted == "null":
        return "null" in entries
    parsed = _parse_origin(wanted)
    for entry in entries:
        if entry == wanted:
            return True
        pattern = _parse_origin(entry)
        if parsed is None or pattern is None:
            continue
        scheme, host, port = pattern
        if not host.startswith("*."):
            if pattern == parsed:
                return True
        elif (scheme, port) == (parsed[0], parsed[2]) and _is_subdomain(parsed[1], host[1:]):
            return True
    return False


# --- the backend leg ---------------------------------------------------------------------------


def new_key(random_bytes: bytes) -> bytes:
    """A Sec-WebSocket-Key from 16 random bytes (the caller passes `os.urandom(16)`)."""
    if len(random_bytes) != 16:
        raise ValueError(f"a WebSocket key needs 16 random bytes, got {len(random_bytes)}")
    return base64.b64encode(random_bytes)


def accept_value(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept answering `key` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest())


def backend_request(
    upgrade: UpgradeRequest, *, key: bytes, client_ip: str, scheme: str
) -> BackendRequest:
    """The upgrade request for the backend: the client's end-to-end headers, fresh per-leg ones."""
    client = upgrade.headers
    fields = _fields(client)
    host = upgrade.host.encode("latin-1")
    headers: list[tuple[bytes, bytes]] = [
        (b"Host", host),
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", key),
        (b"Sec-WebSocket-Version", b"13"),
    ]
    headers += [
        (b"Sec-WebSocket-Protocol", value) for value in _values(fields, b"sec-websocket-protocol")
    ]
    offers = _deflate_offers(fields)
    if offers:
        headers.append((b"Sec-WebSocket-Extensions", b", ".join(offers)))
    named = _connection_named(fields)
    dropped = _NOT_COPIED_TO_BACKEND | named
    headers += [(name, value) for name, value in client if name not in dropped]
    ip = client_ip.encode("latin-1")
    chain = [] if b"x-forwarded-for" in named else _elements(fields, b"x-forwarded-for")
    headers += [
        (b"X-Forwarded-For", b", ".join([*chain, ip])),
        (b"X-Forwarded-Proto", scheme.encode("latin-1")),
        (b"X-Forwarded-Host", host),
        (b"X-Real-IP", ip),
    ]
    return BackendRequest(upgrade.target, tuple(headers))


def judge_backend_response(
    headers: Headers, *, key: bytes, upgrade: UpgradeRequest
) -> BackendAccept | Reject:
    """Check the headers of a backend's 101 (names lower-cased, as h11 gives them; the caller
    has checked the status) against what was offered."""
    fields = _fields(headers)
    if b"websocket" not in _tokens(fields, b"upgrade"):
        return _bad_backend("no Upgrade: websocket")
    if b"upgrade" not in _tokens(fields, b"connection"):
        return _bad_backend("the Connection header does not include upgrade")
    accepts = _values(fields, b"sec-websocket-accept")
    if not accepts:
        return _bad_backend("Sec-WebSocket-Accept is missing")
    if accepts != [accept_value(key)]:
        return _bad_backend("Sec-WebSocket-Accept does not match the key")
    chosen = _elements(fields, b"sec-websocket-protocol")
    if len(chosen) > 1:
        return _bad_backend("it chose more than one subprotocol")
    if chosen and chosen[0] not in _elements(_fields(upgrade.headers), b"sec-websocket-protocol"):
        return _bad_backend(
            f"it chose subprotocol {_text(chosen[0])}, which the client did not offer"
        )
    extensions = _elements(fields, b"sec-websocket-extensions")
    for extension in extensions:
        name = _extension_name(extension)
        if name != _DEFLATE:
            return _bad_backend(f"it accepted extension {_text(name)}, which was not offered")
        if not _deflate_offers(_fields(upgrade.headers)):
            return _bad_backend("it accepted permessage-deflate, which the client did not offer")
    if len(extensions) > 1:
        return _bad_backend("it accepted permessage-deflate more than once")
    dropped = HOP_BY_HOP | _connection_named(fields)
    return BackendAccept(
        subprotocol=chosen[0].decode("latin-1") if chosen else None,
        extensions=extensions[0].decode("latin-1") if extensions else None,
        deflate=bool(extensions),
        headers=tuple(
            (name, value)
            for name, value in headers
            if name not in dropped and not name.startswith(b"sec-websocket-")
        ),
    )


def passthrough_headers(headers: Headers) -> Headers:
    """A backend's non-101 answer's headers, for the client: hop-by-hop and framing removed."""
    dropped = HOP_BY_HOP | _connection_named(_fields(headers))
    return tuple((name, value) for name, value in headers if name not in dropped)


# --- answers to the client ---------------------------------------------------------------------


def client_accept_headers(upgrade: UpgradeRequest, accept: BackendAccept) -> Headers:
    """The headers of the client's 101: its own Sec-WebSocket-Accept, the backend's choices and
    headers; names lower-cased, as h11 would write them. Every value is ours or came through
    h11's grammar (the backend's 101), so the head needs no h11 event to be valid."""
    headers: list[tuple[bytes, bytes]] = [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", accept_value(upgrade.key)),
    ]
    if accept.subprotocol is not None:
        headers.append((b"sec-websocket-protocol", accept.subprotocol.encode("latin-1")))
    if accept.extensions is not None:
        headers.append((b"sec-websocket-extensions", accept.extensions.encode("latin-1")))
    headers += accept.headers
    return tuple(headers)


def reject_from_h11_error(exc: h11.RemoteProtocolError) -> Reject:
    """The refusal for a request h11 could not parse: 431 for an oversized head, else 400."""
    if exc.error_status_hint == 431:
        return Reject(431, "request head too large")
    # h11's message can quote the raw bytes (as a bytearray repr): not for the client's eyes.
    return Reject(400, "malformed HTTP request")


# --- helpers -----------------------------------------------------------------------------------


def _fields(headers: Headers) -> Fields:
    """Each header name of `headers` with its values, in order: one pass, for every lookup."""
    fields: Fields = {}
    for name, value in headers:
        if name in fields:
            fields[name].append(value)
        else:
            fields[name] = [value]
    return fields


def _values(fields: Fields, name: bytes) -> list[bytes]:
    return fields.get(name) or []


def _elements(fields: Fields, name: bytes) -> list[bytes]:
    """The non-empty elements of every `name` header, split on commas outside quoted strings."""
    values = fields.get(name)
    if not values:
        return []
    return [item for value in values for item in _split_list(value)]


def _tokens(fields: Fields, name: bytes) -> list[bytes]:
    return [item.lower() for item in _elements(fields, name)]


def _split_list(value: bytes) -> list[bytes]:
    if b'"' not in value:  # no quoted string, so every comma separates (the common case)
        return [stripped for item in value.split(b",") if (stripped := item.strip(b" \t"))]
    return _split_quoted(value)


def _split_quoted(value: bytes) -> list[bytes]:
    """`_split_list` the long way: byte by byte, commas inside quoted strings kept."""
    items: list[bytes] = []
    start = 0
    quoted = escaped = False
    for index, byte in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and byte == ord("\\"):
            escaped = True
        elif byte == ord('"'):
            quoted = not quoted
        elif byte == ord(",") and not quoted:
            items.append(value[start:index])
            start = index + 1
    items.append(value[start:])
    return [stripped for item in items if (stripped := item.strip(b" \t"))]


def _connection_named(fields: Fields) -> frozenset[bytes]:
    return frozenset(_tokens(fields, b"connection"))


def _extension_name(extension: bytes) -> bytes:
    return extension.split(b";", 1)[0].strip(b" \t").lower()


def _deflate_offers(fields: Fields) -> list[bytes]:
    return [
        offer
        for offer in _elements(fields, b"sec-websocket-extensions")
        if _extension_name(offer) == _DEFLATE
    ]


def _is_key(value: bytes) -> bool:
    try:
        return len(base64.b64decode(value, validate=True)) == 16
    except binascii.Error:
        return False


def _parse_origin(origin: str) -> tuple[str, str, int | None] | None:
    """`scheme://host[:port]` as (scheme, host, port with the scheme's default), or None."""
    scheme, separator, rest = origin.partition("://")
    if not separator or not scheme or "/" in rest:
        return None
    host, port = rest, ""
    if rest.startswith("["):  # an IPv6 literal
        end = rest.find("]") + 1
        host, port = rest[:end], rest[end:]
    elif ":" in rest:
        host, colon, digits = rest.partition(":")
        port = colon + digits
    if not host or (port and not (port[0] == ":" and port[1:].isascii() and port[1:].isdigit())):
        return None
    return scheme, host, int(port[1:]) if port else _DEFAULT_PORTS.get(scheme)


def _is_subdomain(host: str, suffix: str) -> bool:
    """`host` is strictly below `suffix` (which starts with a dot)."""
    return host.endswith(suffix) and len(host) > len(suffix)


def _bad_backend(why: str) -> Reject:
    return Reject(502, f"the backend's handshake answer was not valid WebSocket: {why}")


def _text(value: bytes) -> str:
    return _clip(value.decode("latin-1"))


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_ECHO else text[:_MAX_ECHO] + "…"
