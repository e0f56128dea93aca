from __future__ import annotations

import base64
import re
from typing import Final

import h11
import pytest
from hypothesis import given, settings, strategies as st
from wsproto import ConnectionType
from wsproto.events import AcceptConnection, Request as WsRequest
from wsproto.extensions import PerMessageDeflate
from wsproto.handshake import H11Handshake

from wsproxy.config import Security
from wsproxy.handshake import (
    BackendAccept,
    Headers,
    Reject,
    UpgradeRequest,
    _split_list,  # the comma-list fast path ...
    _split_quoted,  # ... and the byte-by-byte split it must agree with
    accept_value,
    backend_request,
    client_accept_headers,
    host_problem,
    judge_backend_response,
    judge_request,
    new_key,
    origin_allowed,
    passthrough_headers,
    reject_from_h11_error,
)
from wsproxy.http1 import response_head, switching_headers

RFC_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3
RFC_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
BACKEND_KEY = new_key(bytes(range(16)))
APP = "https://app.example.com"
SECURITY = Security(allowed_origins=(APP,))
OPEN = Security(allowed_origins=(APP,), require_origin=False)
NOT_16 = "Sec-WebSocket-Key must be 16 bytes in base64"
BAD_BACKEND = "the backend's handshake answer was not valid WebSocket: "

BASE: Headers = (
    (b"host", b"proxy.example.com"),
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", RFC_KEY),
    (b"sec-websocket-version", b"13"),
    (b"origin", APP.encode()),
)


def _headers(drop: tuple[bytes, ...] = (), add: Headers = ()) -> Headers:
    """BASE without the `drop` names and their values replaced by `add` (appended)."""
    return (*((n, v) for n, v in BASE if n not in drop), *add)


def _request(
    drop: tuple[bytes, ...] = (),
    add: Headers = (),
    *,
    method: bytes = b"GET",
    http_version: bytes = b"1.1",
) -> h11.Request:
    return h11.Request(
        method=method,
        target=b"/chat?room=1",
        headers=list(_headers(drop, add)),
        http_version=http_version,
    )


def _upgrade(drop: tuple[bytes, ...] = (), add: Headers = ()) -> UpgradeRequest:
    judged = judge_request(_request(drop, add), SECURITY)
    assert isinstance(judged, UpgradeRequest)
    return judged


def _response(headers: Headers) -> Headers:
    """The headers of a 101 with `headers`, as h11 reads them."""
    return tuple(h11.InformationalResponse(status_code=101, headers=list(headers)).headers)


def _backend_101(*extra: tuple[bytes, bytes]) -> Headers:
    return _response(
        (
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", accept_value(BACKEND_KEY)),
            *extra,
        )
    )


def _send_request(client: h11.Connection, request: h11.Request) -> bytes:
    """A whole bodiless request from an h11 client, as bytes."""
    head, end = client.send(request), client.send(h11.EndOfMessage())
    assert head is not None
    assert end is not None
    return head + end


def _receive_request(server: h11.Connection, data: bytes) -> h11.Request:
    """Feed a request head to an h11 server; it must parse as one bodiless request."""
    server.receive_data(data)
    request, end = _events(server)
    assert isinstance(request, h11.Request)
    assert isinstance(end, h11.EndOfMessage)
    return request


def _events(conn: h11.Connection) -> list[h11.Event]:
    events: list[h11.Event] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return events
        assert isinstance(event, h11.Event)
        events.append(event)
        if isinstance(event, h11.ConnectionClosed):
            return events


# --- judge_request -----------------------------------------------------------------------------


def test_handshake_valid_request_is_accepted() -> None:
    request = _request(add=((b"cookie", b"a=1"),))
    assert judge_request(request, SECURITY) == UpgradeRequest(
        target=b"/chat?room=1",
        host="proxy.example.com",
        origin=APP,
        key=RFC_KEY,
        headers=(*BASE, (b"cookie", b"a=1")),
    )


def test_handshake_request_parsed_by_h11_is_accepted() -> None:
    """A request as a client writes it on the wire: mixed-case names, h11 lower-cases them."""
    server = h11.Connection(h11.SERVER)
    request = _receive_request(
        server,
        b"GET /chat HTTP/1.1\r\nHost: proxy.example.com:8080\r\nUpgrade: WebSocket\r\n"
        b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: " + RFC_KEY + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\nOrigin: HTTPS://App.Example.com\r\n\r\n",
    )
    judged = judge_request(request, SECURITY)
    assert isinstance(judged, UpgradeRequest)
    assert (judged.target, judged.host, judged.origin) == (
        b"/chat",
        "proxy.example.com:8080",
        "HTTPS://App.Example.com",
    )


@pytest.mark.parametrize(
    ("upgrade", "connection"),
    [
        ([b"WebSocket"], [b"Upgrade"]),
        ([b"h2c, websocket"], [b"upgrade"]),
        ([b"h2c", b"websocket"], [b"keep-alive, UPGRADE"]),
        ([b"websocket"], [b"keep-alive", b"Upgrade"]),
    ],
)
def test_handshake_upgrade_and_connection_tokens_are_case_insensitive_lists(
    upgrade: list[bytes], connection: list[bytes]
) -> None:
    request = _request(
        (b"upgrade", b"connection"),
        (*((b"upgrade", v) for v in upgrade), *((b"connection", v) for v in connection)),
    )
    assert isinstance(judge_request(request, SECURITY), UpgradeRequest)


@pytest.mark.parametrize(
    "upgrade",
    [(), ((b"upgrade", b"h2c"),), ((b"upgrade", b""),), ((b"upgrade", b"websockets"),)],
)
def test_handshake_without_upgrade_websocket_is_426(upgrade: Headers) -> None:
    request = _request((b"upgrade",), upgrade)
    assert judge_request(request, SECURITY) == Reject(
        426,
        "this port serves WebSocket only; send Upgrade: websocket",
        ((b"upgrade", b"websocket"),),
    )


def test_handshake_plain_http_request_is_426_before_the_websocket_checks() -> None:
    request = h11.Request(method=b"POST", target=b"/", headers=[(b"host", b"x")])
    judged = judge_request(request, SECURITY)
    assert isinstance(judged, Reject)
    assert (judged.status, judged.headers) == (426, ((b"upgrade", b"websocket"),))


@pytest.mark.parametrize("method", [b"POST", b"HEAD", b"get", b"CONNECT"])
def test_handshake_method_other_than_get_is_400(method: bytes) -> None:
    assert judge_request(_request(method=method), SECURITY) == Reject(
        400, f"a WebSocket handshake must use GET, not {method.decode()}"
    )


def test_handshake_http_1_0_is_400() -> None:
    assert judge_request(_request(http_version=b"1.0"), SECURITY) == Reject(
        400, "a WebSocket handshake needs HTTP/1.1, not HTTP/1.0"
    )


@pytest.mark.parametrize(
    "framing",
    [
        ((b"transfer-encoding", b"chunked"),),
        ((b"content-length", b"5"),),
        ((b"content-length", b"0"), (b"transfer-encoding", b"chunked")),
    ],
    ids=["chunked", "length-5", "length-0-and-chunked"],
)
def test_handshake_upgrade_announcing_a_body_is_400(framing: Headers) -> None:
    """Bytes behind such a head would be a body to one reader and frames to another."""
    assert judge_request(_request(add=framing), SECURITY) == Reject(
        400, "a WebSocket handshake has no body"
    )


@pytest.mark.parametrize("length", [b"0", b"00"])
def test_handshake_content_length_0_is_accepted(length: bytes) -> None:
    upgrade = judge_request(_request(add=((b"content-length", length),)), SECURITY)
    assert isinstance(upgrade, UpgradeRequest)


@pytest.mark.parametrize(
    "connection",
    [(), ((b"connection", b"keep-alive"),), ((b"connection", b"upgraded, close"),)],
)
def test_handshake_connection_without_upgrade_is_400(connection: Headers) -> None:
    assert judge_request(_request((b"connection",), connection), SECURITY) == Reject(
        400, "the Connection header must include upgrade"
    )


@pytest.mark.parametrize(
    "version",
    [
        (),
        ((b"sec-websocket-version", b"8"),),
        ((b"sec-websocket-version", b"13, 8"),),
        ((b"sec-websocket-version", b"13"), (b"sec-websocket-version", b"13")),
        ((b"sec-websocket-version", b"013"),),
    ],
)
def test_handshake_version_other_than_13_is_426(version: Headers) -> None:
    assert judge_request(_request((b"sec-websocket-version",), version), SECURITY) == Reject(
        426,
        "only WebSocket version 13 is supported; send Sec-WebSocket-Version: 13",
        ((b"sec-websocket-version", b"13"),),
    )


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ((), "Sec-WebSocket-Key is missing"),
        (
            ((b"sec-websocket-key", RFC_KEY), (b"sec-websocket-key", RFC_KEY)),
            "Sec-WebSocket-Key is repeated",
        ),
        (((b"sec-websocket-key", b"not base64!!!!!!!!!!!!!!"),), NOT_16),
        (((b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ"),), NOT_16),  # no padding
        (((b"sec-websocket-key", base64.b64encode(bytes(15))),), NOT_16),
        (((b"sec-websocket-key", base64.b64encode(bytes(17))),), NOT_16),
        (((b"sec-websocket-key", b""),), NOT_16),
    ],
)
def test_handshake_bad_key_is_400(key: Headers, reason: str) -> None:
    assert judge_request(_request((b"sec-websocket-key",), key), SECURITY) == Reject(400, reason)


def test_handshake_missing_origin_is_403() -> None:
    assert judge_request(_request((b"origin",)), SECURITY) == Reject(
        403, "an Origin header is required"
    )


def test_handshake_missing_origin_is_accepted_when_not_required() -> None:
    judged = judge_request(_request((b"origin",)), OPEN)
    assert isinstance(judged, UpgradeRequest)
    assert judged.origin is None


@pytest.mark.parametrize("security", [SECURITY, OPEN], ids=["required", "optional"])
def test_handshake_disallowed_origin_is_403(security: Security) -> None:
    request = _request((b"origin",), ((b"origin", b"https://evil.test"),))
    assert judge_request(request, security) == Reject(
        403, "Origin https://evil.test is not allowed"
    )


def test_handshake_long_disallowed_origin_is_clipped_in_the_reason() -> None:
    origin = "https://" + "a" * 200 + ".test"
    request = _request((b"origin",), ((b"origin", origin.encode()),))
    assert judge_request(request, SECURITY) == Reject(403, f"Origin {origin[:100]}… is not allowed")


def test_handshake_repeated_origin_is_403() -> None:
    request = _request(add=((b"origin", APP.encode()),))
    assert judge_request(request, OPEN) == Reject(403, "more than one Origin header")


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (_request((b"upgrade", b"sec-websocket-key"), method=b"POST"), 426),
        (_request((b"sec-websocket-version",), method=b"POST"), 400),
        (_request((b"sec-websocket-version", b"sec-websocket-key")), 426),
        (_request((b"sec-websocket-key", b"origin")), 400),
    ],
    ids=["upgrade-before-method", "method-before-version", "version-before-key", "key-first"],
)
def test_handshake_checks_run_in_order(request_: h11.Request, status: int) -> None:
    judged = judge_request(request_, SECURITY)
    assert isinstance(judged, Reject)
    assert judged.status == status


# --- the Host header ---------------------------------------------------------------------------

BAD_HOST = "the Host header must be a host name or IP address, with an optional :port"
BAD_PORT = "the Host header's port must be a number from 0 to 65535"


@pytest.mark.parametrize(
    "host",
    [
        b"proxy.example.com",
        b"proxy.example.com:8080",
        b"Proxy.Example.COM.",  # a fully qualified name, in any case
        b"my_host-1",
        b"localhost:0",
        b"127.0.0.1",
        b"127.0.0.1:65535",
        b"999.1.1.1",  # not an IPv4 address, so a reg-name (RFC 3986 3.2.2)
        b"example.com:00080",
        b"[::1]",
        b"[::1]:443",
        b"[2001:DB8::ff00:42:8329]:9000",
        b"[::ffff:192.0.2.1]",
    ],
)
def test_handshake_valid_host_is_accepted_as_sent(host: bytes) -> None:
    assert host_problem(host) is None
    judged = judge_request(_request((b"host",), ((b"host", host),)), SECURITY)
    assert isinstance(judged, UpgradeRequest)
    assert judged.host == host.decode()


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        (b"h.example.test/evil", BAD_HOST),
        (b"h.example.test?x", BAD_HOST),
        (b"h.example.test#x", BAD_HOST),
        (b"evil@127.0.0.1", BAD_HOST),
        (b"user:pass@h.example.test", BAD_PORT),
        (b"127.0.0.1:80x", BAD_PORT),
        (b"127.0.0.1:", BAD_PORT),  # RFC 3986 allows an empty port; we don't
        (b"127.0.0.1:65536", BAD_PORT),
        (b"127.0.0.1:123456", BAD_PORT),
        (b"127.0.0.1:-1", BAD_PORT),
        (b"127.0.0.1:+80", BAD_PORT),
        (b"h.example.test:80:81", BAD_PORT),
        (b"::1", BAD_HOST),  # an IPv6 address must be in brackets
        (b"[::1", BAD_HOST),
        (b"[::1]x", BAD_HOST),
        (b"[::1]]", BAD_HOST),
        (b"[]", BAD_HOST),
        (b"[127.0.0.1]", BAD_HOST),
        (b"[::g]", BAD_HOST),
        (b"[1:2:3:4:5:6:7:8:9]", BAD_HOST),
        (b"[fe80::1%25eth0]", BAD_HOST),  # zone IDs are refused
        (b"[v1.fe]", BAD_HOST),  # IPvFuture is refused
        (b"h%2eexample.test", BAD_HOST),  # pct-encoded: no real name needs it
        (b"h!example.test", BAD_HOST),  # sub-delims likewise
        (b"a b", BAD_HOST),
        (b"a\tb", BAD_HOST),
        (b"caf\xc3\xa9.test", BAD_HOST),  # an IDN goes as its A-label (xn--caf-dma.test)
        (b":80", BAD_HOST),
        (b"", "the Host header is empty"),
    ],
)
def test_handshake_invalid_host_is_400(host: bytes, reason: str) -> None:
    assert host_problem(host) == reason
    request = _request((b"host",), ((b"host", host),))
    assert judge_request(request, SECURITY) == Reject(400, reason)


@pytest.mark.parametrize(
    "host", [b"a\r\nX-Evil: 1", b"a\rb", b"a\nb", b"a\x00", b" a", b"a ", b"\x7f", b"a\x0bb"]
)
def test_handshake_host_with_control_bytes_or_outer_whitespace_is_refused(host: bytes) -> None:
    """h11 refuses most of these before `judge_request`; `host_problem` refuses them itself."""
    assert host_problem(host) == BAD_HOST


def test_handshake_missing_host_is_400() -> None:
    """HTTP/1.1 without Host never reaches `judge_request` (h11 refuses it); 1.0 does."""
    request = _request((b"host",), http_version=b"1.0")
    assert judge_request(request, SECURITY) == Reject(400, "the Host header is missing")


def test_handshake_repeated_host_is_400() -> None:
    """h11 refuses to parse or build such a request; `judge_request` does not rely on that."""
    with pytest.raises(h11.LocalProtocolError):
        _request(add=((b"host", b"other.example.com"),))
    request = _request()
    object.__setattr__(request, "headers", (*_headers(), (b"host", b"other.example.com")))
    assert judge_request(request, SECURITY) == Reject(400, "more than one Host header")


def test_handshake_bad_host_is_400_even_for_plain_http() -> None:
    """RFC 9112 3.2: an invalid Host is a 400 for any request, before the 426 of a plain one."""
    request = h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"a/b")])
    assert judge_request(request, SECURITY) == Reject(400, BAD_HOST)


# The reference grammar: RFC 3986 3.2.2 (host, IP-literal, IPv6address, IPv4address, reg-name)
# and 3.2.3 (port), transcribed from the ABNF, with the restrictions `host_problem` documents:
# reg-name is 1*( ALPHA / DIGIT / "-" / "." / "_" ), IP-literal holds IPv6address only, and
# port is 1*5DIGIT no greater than 65535.
_H16: Final = "[0-9A-Fa-f]{1,4}"
_DEC_OCTET: Final = "(?:[0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])"
_IPV4: Final = rf"{_DEC_OCTET}\.{_DEC_OCTET}\.{_DEC_OCTET}\.{_DEC_OCTET}"
_LS32: Final = f"(?:{_H16}:{_H16}|{_IPV4})"


def _groups(count: int) -> str:
    return f"(?:{_H16}:){{{count}}}"


def _prefix(most: int) -> str:
    """`[ *most( h16 ":" ) h16 ]`"""
    return f"(?:(?:{_H16}:){{0,{most}}}{_H16})?"


_IPV6: Final = "|".join(
    [
        f"{_groups(6)}{_LS32}",
        f"::{_groups(5)}{_LS32}",
        f"(?:{_H16})?::{_groups(4)}{_LS32}",
        f"{_prefix(1)}::{_groups(3)}{_LS32}",
        f"{_prefix(2)}::{_groups(2)}{_LS32}",
        f"{_prefix(3)}::{_H16}:{_LS32}",
        f"{_prefix(4)}::{_LS32}",
        f"{_prefix(5)}::{_H16}",
        f"{_prefix(6)}::",
    ]
)
_REG_NAME: Final = "[A-Za-z0-9._-]+"
_PORT: Final = "(?:[0-9]{1,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
REFERENCE_HOST: Final = re.compile(
    f"(?:\\[(?:{_IPV6})\\]|{_IPV4}|{_REG_NAME})(?::{_PORT})?".encode(), re.ASCII
)
HOSTISH: Final = "abcfAF0123456789.-_:[]@/%!~ v\t\r\n\x00\xe9"


def test_handshake_reference_host_grammar_sanity() -> None:
    """The reference is only useful if it is right: a few values from RFC 4291 and RFC 3986."""
    good = [b"[::]", b"[1:2:3:4:5:6:7:8]", b"[1:2:3:4:5:6:1.2.3.4]", b"[1::]", b"[::1.2.3.4]"]
    bad = [b"[1:2:3:4:5:6:7:8:9]", b"[1::2::3]", b"[::1.2.3.04]", b"[:::]", b"[1:2:3:4:5:6:7::8]"]
    assert all(REFERENCE_HOST.fullmatch(value) for value in good)
    assert not any(REFERENCE_HOST.fullmatch(value) for value in bad)


HOST_PROPERTY = settings(database=None, deadline=None, max_examples=2000)


@HOST_PROPERTY
@given(
    st.one_of(
        st.text(HOSTISH, max_size=40),
        st.text(max_size=40),
        st.from_regex(REFERENCE_HOST, fullmatch=True).map(lambda value: value.decode("latin-1")),
        st.tuples(st.ip_addresses(v=6), st.text(HOSTISH, max_size=4)).map(
            lambda pair: f"[{pair[0]}{pair[1]}]"  # valid, or one with a zone or junk inside
        ),
        st.tuples(st.ip_addresses(v=6), st.integers(0, 99999)).map(
            lambda pair: f"[{pair[0].exploded}]:{pair[1]}"
        ),
        st.tuples(st.ip_addresses(v=4), st.integers(0, 99999)).map(
            lambda pair: f"{pair[0]}:{pair[1]}"
        ),
    )
)
def test_handshake_host_validation_agrees_with_the_rfc_3986_grammar(text: str) -> None:
    value = text.encode("utf-8")
    assert (host_problem(value) is None) == bool(REFERENCE_HOST.fullmatch(value))


# --- origin_allowed ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "allowed", "expected"),
    [
        ("https://app.example.com", ("https://app.example.com",), True),
        ("HTTPS://APP.example.COM", ("https://app.example.com",), True),
        ("https://app.example.com", ("HTTPS://App.Example.Com",), True),
        ("https://app.example.com:443", ("https://app.example.com",), True),
        ("https://app.example.com", ("https://app.example.com:443",), True),
        ("http://app.example.com:80", ("http://app.example.com",), True),
        ("https://app.example.com:8443", ("https://app.example.com",), False),
        ("http://app.example.com", ("https://app.example.com",), False),
        ("https://app.example.com.evil.test", ("https://app.example.com",), False),
        ("https://other.example.com", ("https://app.example.com",), False),
        ("https://evil.test", (), False),
        ("https://evil.test", ("*",), True),
        ("anything at all", ("https://app.example.com", "*"), True),
        # wildcards
        ("https://a.example.com", ("https://*.example.com",), True),
        ("https://a.b.example.com", ("https://*.example.com",), True),
        ("https://A.Example.com:443", ("https://*.example.com",), True),
        ("https://a.example.com", ("https://*.example.com:443",), True),
        ("https://example.com", ("https://*.example.com",), False),
        ("https://.example.com", ("https://*.example.com",), False),
        ("http://a.example.com", ("https://*.example.com",), False),
        ("https://a.example.com:8443", ("https://*.example.com",), False),
        ("https://a.example.com:8443", ("https://*.example.com:8443",), True),
        ("https://a.example.com", ("https://*.example.com:8443",), False),
        ("https://aexample.com", ("https://*.example.com",), False),
        ("https://a.example.com.evil.test", ("https://*.example.com",), False),
        ("https://*.example.com", ("https://app.example.com",), False),
        # null
        ("null", ("null",), True),
        ("null", ("NULL",), True),
        ("null", ("*",), True),
        ("null", ("https://*.example.com", "https://app.example.com"), False),
        ("https://app.example.com", ("null",), False),
        # other shapes
        ("http://[::1]:8080", ("http://[::1]:8080",), True),
        ("http://[::1]", ("http://[::1]:80",), True),
        ("http://[::1]:8081", ("http://[::1]:8080",), False),
        ("http://[::1", ("http://[::1]",), False),
        ("http://[::1]x", ("http://[::1]",), False),
        ("chrome-extension://abcdef", ("chrome-extension://abcdef",), True),
        ("chrome-extension://abcdef", ("chrome-extension://*.abcdef",), False),
        ("https://app.example.com:abc", ("https://app.example.com",), False),
        ("https://app.example.com:", ("https://app.example.com",), False),
        ("https://app.example.com:४४३", ("https://app.example.com",), False),
        ("https://app.example.com/", ("https://app.example.com",), False),
        ("https://", ("https://*.example.com",), False),
        ("app.example.com", ("https://app.example.com",), False),
        ("://app.example.com", ("https://app.example.com",), False),
        ("https://a.example.com", ("not an origin",), False),
    ],
)
def test_origin_allowed_matches_entries(
    origin: str, allowed: tuple[str, ...], expected: bool
) -> None:
    assert origin_allowed(origin, allowed) is expected


# --- keys --------------------------------------------------------------------------------------


def test_accept_value_matches_the_rfc_6455_example() -> None:
    assert accept_value(RFC_KEY) == RFC_ACCEPT


def test_new_key_is_base64_of_the_random_bytes() -> None:
    assert new_key(bytes(16)) == b"AAAAAAAAAAAAAAAAAAAAAA=="
    assert base64.b64decode(BACKEND_KEY) == bytes(range(16))


def test_new_key_is_a_key_judge_request_accepts() -> None:
    key = new_key(b"\xff" * 16)
    judged = judge_request(
        _request((b"sec-websocket-key",), ((b"sec-websocket-key", key),)), SECURITY
    )
    assert isinstance(judged, UpgradeRequest)
    assert judged.key == key


@pytest.mark.parametrize("size", [0, 15, 17])
def test_new_key_with_wrong_size_is_a_bug(size: int) -> None:
    with pytest.raises(ValueError, match=f"16 random bytes, got {size}"):
        new_key(bytes(size))


# --- backend_request ---------------------------------------------------------------------------


def test_backend_request_regenerates_per_leg_headers_and_keeps_end_to_end_ones() -> None:
    upgrade = _upgrade(
        (b"connection",),
        (
            (b"connection", b"Upgrade, keep-alive, X-Hop"),
            (b"sec-websocket-protocol", b"chat.v2, chat.v1"),
            (b"sec-websocket-protocol", b"json"),
            (b"sec-websocket-extensions", b"x-webkit-deflate-frame"),
            (
                b"sec-websocket-extensions",
                b"permessage-deflate; client_max_window_bits, permessage-deflate",
            ),
            (b"cookie", b"session=abc"),
            (b"authorization", b"Bearer t0k3n"),
            (b"user-agent", b"test/1.0"),
            (b"x-request-id", b"42"),
            (b"keep-alive", b"timeout=5"),
            (b"x-hop", b"dropped because Connection names it"),
            (b"te", b"trailers"),
            (b"trailer", b"x-sum"),
            (b"proxy-connection", b"keep-alive"),
            (b"proxy-authorization", b"Basic c2VjcmV0"),
            (b"proxy-authenticate", b"Basic"),
            (b"sec-websocket-accept", b"bogus"),
            (b"x-forwarded-for", b"203.0.113.7"),
            (b"x-forwarded-proto", b"gopher"),
            (b"x-forwarded-host", b"spoofed.test"),
            (b"x-real-ip", b"127.0.0.1"),
        ),
    )
    request = backend_request(upgrade, key=BACKEND_KEY, client_ip="198.51.100.2", scheme="https")
    assert request.target == b"/chat?room=1"
    assert request.head().startswith(b"GET /chat?room=1 HTTP/1.1\r\nHost: proxy.example.com\r\n")
    assert [(name.lower(), value) for name, value in request.headers] == [
        (b"host", b"proxy.example.com"),
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-key", BACKEND_KEY),
        (b"sec-websocket-version", b"13"),
        (b"sec-websocket-protocol", b"chat.v2, chat.v1"),
        (b"sec-websocket-protocol", b"json"),
        (
            b"sec-websocket-extensions",
            b"permessage-deflate; client_max_window_bits, permessage-deflate",
        ),
        (b"origin", APP.encode()),
        (b"cookie", b"session=abc"),
        (b"authorization", b"Bearer t0k3n"),
        (b"user-agent", b"test/1.0"),
        (b"x-request-id", b"42"),
        (b"x-forwarded-for", b"203.0.113.7, 198.51.100.2"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"proxy.example.com"),
        (b"x-real-ip", b"198.51.100.2"),
    ]


def test_backend_request_bytes_are_an_upgrade_an_h11_server_understands() -> None:
    upgrade = _upgrade(add=((b"cookie", b"a=1"), (b"sec-websocket-protocol", b"chat")))
    request = backend_request(upgrade, key=BACKEND_KEY, client_ip="::1", scheme="http")
    wire = request.head()
    client = h11.Connection(h11.CLIENT)  # what h11 would write for the same request
    as_h11 = h11.Request(method=b"GET", target=request.target, headers=list(request.headers))
    assert _send_request(client, as_h11) == wire
    assert wire.startswith(b"GET /chat?room=1 HTTP/1.1\r\nHost: proxy.example.com\r\n")
    server = h11.Connection(h11.SERVER)
    seen = _receive_request(server, wire)
    assert server.next_event() is h11.PAUSED  # h11 saw a protocol-switch proposal
    assert list(seen.headers) == [
        (b"host", b"proxy.example.com"),
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-key", BACKEND_KEY),
        (b"sec-websocket-version", b"13"),
        (b"sec-websocket-protocol", b"chat"),
        (b"origin", APP.encode()),
        (b"cookie", b"a=1"),
        (b"x-forwarded-for", b"::1"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"proxy.example.com"),
        (b"x-real-ip", b"::1"),
    ]


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        ((), b"192.0.2.9"),
        (((b"x-forwarded-for", b"203.0.113.7"),), b"203.0.113.7, 192.0.2.9"),
        (((b"x-forwarded-for", b"203.0.113.7 ,10.0.0.1"),), b"203.0.113.7, 10.0.0.1, 192.0.2.9"),
        (
            ((b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-for", b"10.0.0.1")),
            b"203.0.113.7, 10.0.0.1, 192.0.2.9",
        ),
        (((b"x-forwarded-for", b""),), b"192.0.2.9"),
        (
            ((b"connection", b"upgrade, X-Forwarded-For"), (b"x-forwarded-for", b"203.0.113.7")),
            b"192.0.2.9",
        ),
    ],
    ids=["none", "one", "list", "repeated", "empty", "hop-by-hop"],
)
def test_backend_request_appends_client_ip_to_x_forwarded_for(
    client: Headers, expected: bytes
) -> None:
    drop = (b"connection",) if any(name == b"connection" for name, _ in client) else ()
    upgrade = _upgrade(drop, client)
    request = backend_request(upgrade, key=BACKEND_KEY, client_ip="192.0.2.9", scheme="http")
    assert [v for n, v in request.headers if n.lower() == b"x-forwarded-for"] == [expected]


@pytest.mark.parametrize(
    ("offers", "forwarded"),
    [
        ((), None),
        ((b"x-webkit-deflate-frame",), None),
        ((b"",), None),
        ((b"permessage-deflate",), b"permessage-deflate"),
        (
            (b"x-webkit-deflate-frame, Permessage-Deflate ; server_no_context_takeover",),
            b"Permessage-Deflate ; server_no_context_takeover",
        ),
        (
            (b"permessage-deflate; client_max_window_bits=10", b"foo, permessage-deflate"),
            b"permessage-deflate; client_max_window_bits=10, permessage-deflate",
        ),
        (
            (b'permessage-deflate; x="a,b\\"c", foo; y="permessage-deflate, z"',),
            b'permessage-deflate; x="a,b\\"c"',
        ),
    ],
)
def test_backend_request_forwards_only_permessage_deflate_offers(
    offers: tuple[bytes, ...], forwarded: bytes | None
) -> None:
    upgrade = _upgrade(add=tuple((b"sec-websocket-extensions", offer) for offer in offers))
    request = backend_request(upgrade, key=BACKEND_KEY, client_ip="192.0.2.9", scheme="http")
    values = [v for n, v in request.headers if n.lower() == b"sec-websocket-extensions"]
    assert values == ([] if forwarded is None else [forwarded])


def test_backend_request_connection_cannot_remove_headers_the_handshake_needs() -> None:
    upgrade = _upgrade(
        (b"connection",),
        (
            (b"connection", b"Upgrade, Host, Sec-WebSocket-Protocol, Sec-WebSocket-Extensions"),
            (b"sec-websocket-protocol", b"chat"),
            (b"sec-websocket-extensions", b"permessage-deflate"),
        ),
    )
    request = backend_request(upgrade, key=BACKEND_KEY, client_ip="192.0.2.9", scheme="http")
    names = [name.lower() for name, _ in request.headers]
    assert names.count(b"host") == names.count(b"sec-websocket-protocol") == 1
    assert names.count(b"sec-websocket-extensions") == 1


# --- judge_backend_response --------------------------------------------------------------------


def test_backend_response_minimal_101_is_accepted() -> None:
    assert judge_backend_response(
        _backend_101(), key=BACKEND_KEY, upgrade=_upgrade()
    ) == BackendAccept(subprotocol=None, extensions=None, deflate=False, headers=())


def test_backend_response_choices_and_end_to_end_headers_are_kept() -> None:
    upgrade = _upgrade(
        add=(
            (b"sec-websocket-protocol", b"chat.v2, chat.v1"),
            (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"),
        )
    )
    response = _backend_101(
        (b"sec-websocket-protocol", b"chat.v1"),
        (b"sec-websocket-extensions", b"permessage-deflate; server_no_context_takeover"),
        (b"set-cookie", b"sticky=s1; Path=/"),
        (b"server", b"backend/1"),
        (b"sec-websocket-version", b"13"),
        (b"sec-websocket-whatever", b"x"),
        (b"keep-alive", b"timeout=5"),
        (b"content-length", b"0"),
        (b"connection", b"X-Internal"),
        (b"x-internal", b"dropped"),
        (b"set-cookie", b"other=2"),
    )
    assert judge_backend_response(response, key=BACKEND_KEY, upgrade=upgrade) == BackendAccept(
        subprotocol="chat.v1",
        extensions="permessage-deflate; server_no_context_takeover",
        deflate=True,
        headers=(
            (b"set-cookie", b"sticky=s1; Path=/"),
            (b"server", b"backend/1"),
            (b"set-cookie", b"other=2"),
        ),
    )


def test_backend_response_empty_choice_headers_mean_none() -> None:
    response = _backend_101((b"sec-websocket-protocol", b""), (b"sec-websocket-extensions", b""))
    accepted = judge_backend_response(response, key=BACKEND_KEY, upgrade=_upgrade())
    assert accepted == BackendAccept(None, None, False, ())


_GOOD = (
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-accept", accept_value(BACKEND_KEY)),
)


def _but(*changes: tuple[bytes, bytes | None]) -> Headers:
    """_GOOD with each named header replaced (or removed when the value is None)."""
    names = {name for name, _ in changes}
    kept = tuple((n, v) for n, v in _GOOD if n not in names)
    return (*kept, *((n, v) for n, v in changes if v is not None))


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        (_but((b"upgrade", None)), "no Upgrade: websocket"),
        (_but((b"upgrade", b"h2c")), "no Upgrade: websocket"),
        (_but((b"connection", None)), "the Connection header does not include upgrade"),
        (_but((b"connection", b"close")), "the Connection header does not include upgrade"),
        (_but((b"sec-websocket-accept", None)), "Sec-WebSocket-Accept is missing"),
        (
            _but((b"sec-websocket-accept", RFC_ACCEPT)),
            "Sec-WebSocket-Accept does not match the key",
        ),
        (
            _but((b"sec-websocket-accept", accept_value(BACKEND_KEY).lower())),
            "Sec-WebSocket-Accept does not match the key",
        ),
        (
            (*_GOOD, (b"sec-websocket-accept", accept_value(BACKEND_KEY))),
            "Sec-WebSocket-Accept does not match the key",
        ),
        (
            (*_GOOD, (b"sec-websocket-protocol", b"chat, json")),
            "it chose more than one subprotocol",
        ),
        (
            (*_GOOD, (b"sec-websocket-protocol", b"chat"), (b"sec-websocket-protocol", b"json")),
            "it chose more than one subprotocol",
        ),
        (
            (*_GOOD, (b"sec-websocket-protocol", b"xml")),
            "it chose subprotocol xml, which the client did not offer",
        ),
        (
            (*_GOOD, (b"sec-websocket-protocol", b"CHAT")),
            "it chose subprotocol CHAT, which the client did not offer",
        ),
        (
            (*_GOOD, (b"sec-websocket-protocol", b"p" * 150)),
            f"it chose subprotocol {'p' * 100}…, which the client did not offer",
        ),
        (
            (*_GOOD, (b"sec-websocket-extensions", b"x-webkit-deflate-frame")),
            "it accepted extension x-webkit-deflate-frame, which was not offered",
        ),
        (
            (*_GOOD, (b"sec-websocket-extensions", b"permessage-deflate, foo; bar=1")),
            "it accepted extension foo, which was not offered",
        ),
        (
            (*_GOOD, (b"sec-websocket-extensions", b"permessage-deflate, permessage-deflate")),
            "it accepted permessage-deflate more than once",
        ),
    ],
)
def test_backend_response_invalid_101_is_502(headers: Headers, why: str) -> None:
    upgrade = _upgrade(
        add=(
            (b"sec-websocket-protocol", b"chat, json"),
            (b"sec-websocket-extensions", b"permessage-deflate"),
        )
    )
    verdict = judge_backend_response(_response(headers), key=BACKEND_KEY, upgrade=upgrade)
    assert verdict == Reject(502, BAD_BACKEND + why)


@pytest.mark.parametrize(
    ("client", "why"),
    [
        ((), "it accepted permessage-deflate, which the client did not offer"),
        (
            ((b"sec-websocket-extensions", b"x-webkit-deflate-frame"),),
            "it accepted permessage-deflate, which the client did not offer",
        ),
    ],
)
def test_backend_response_unoffered_deflate_is_502(client: Headers, why: str) -> None:
    response = _backend_101((b"sec-websocket-extensions", b"permessage-deflate"))
    verdict = judge_backend_response(response, key=BACKEND_KEY, upgrade=_upgrade(add=client))
    assert verdict == Reject(502, BAD_BACKEND + why)


def test_backend_response_subprotocol_without_client_offer_is_502() -> None:
    response = _backend_101((b"sec-websocket-protocol", b"chat"))
    verdict = judge_backend_response(response, key=BACKEND_KEY, upgrade=_upgrade())
    assert verdict == Reject(
        502, BAD_BACKEND + "it chose subprotocol chat, which the client did not offer"
    )


# --- client_accept_response --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "extra"),
    [
        (BackendAccept(None, None, False, ()), []),
        (
            BackendAccept(
                "chat",
                "permessage-deflate; server_no_context_takeover",
                True,
                ((b"set-cookie", b"sticky=s1"),),
            ),
            [
                (b"sec-websocket-protocol", b"chat"),
                (b"sec-websocket-extensions", b"permessage-deflate; server_no_context_takeover"),
                (b"set-cookie", b"sticky=s1"),
            ],
        ),
    ],
    ids=["plain", "with-choices"],
)
def test_client_accept_headers_answer_the_clients_key(
    accept: BackendAccept, extra: list[tuple[bytes, bytes]]
) -> None:
    assert list(client_accept_headers(_upgrade(), accept)) == [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", RFC_ACCEPT),
        *extra,
    ]


def test_client_accept_headers_head_is_the_one_h11_writes() -> None:
    """Our 101 head, written without h11, is byte for byte the one h11 would write."""
    accept = BackendAccept(
        "chat", "permessage-deflate", True, ((b"set-cookie", b"a=1; Path=/"), (b"x-id", b"7"))
    )
    headers = client_accept_headers(_upgrade(), accept)
    server = h11.Connection(h11.SERVER)
    server.receive_data(_send_request(h11.Connection(h11.CLIENT), _request()))
    assert isinstance(server.next_event(), h11.Request)
    by_h11 = server.send(
        h11.InformationalResponse(
            status_code=101, headers=list(headers), reason=b"Switching Protocols"
        )
    )
    assert response_head(101, b"Switching Protocols", headers) == by_h11


def test_client_accept_headers_switch_protocol_in_h11() -> None:
    client = h11.Connection(h11.CLIENT)
    server = h11.Connection(h11.SERVER)
    request = _receive_request(server, _send_request(client, _request()))
    upgrade = judge_request(request, SECURITY)
    assert isinstance(upgrade, UpgradeRequest)
    headers = client_accept_headers(upgrade, BackendAccept(None, None, False, ()))
    answer = response_head(101, b"Switching Protocols", headers)
    client.receive_data(answer + b"\x81\x00")
    (response,) = _events(client)
    assert isinstance(response, h11.InformationalResponse)
    assert response.status_code == 101
    assert client.states == {h11.CLIENT: h11.SWITCHED_PROTOCOL, h11.SERVER: h11.SWITCHED_PROTOCOL}
    assert client.trailing_data == (b"\x81\x00", False)


def test_handshake_whole_story_between_wsproto_client_and_backend() -> None:
    """A wsproto client and a wsproto backend negotiate a subprotocol and deflate through us."""
    client = H11Handshake(ConnectionType.CLIENT)
    hello = client.send(
        WsRequest(
            host="proxy.example.com",
            target="/chat",
            subprotocols=["v2.chat", "v1.chat"],
            extensions=[PerMessageDeflate()],
            extra_headers=[(b"Origin", APP.encode()), (b"Cookie", b"a=1")],
        )
    )
    proxy_server = h11.Connection(h11.SERVER)
    request = _receive_request(proxy_server, hello)
    upgrade = judge_request(request, SECURITY)
    assert isinstance(upgrade, UpgradeRequest)

    to_backend = backend_request(
        upgrade, key=BACKEND_KEY, client_ip="192.0.2.9", scheme="http"
    ).head()
    backend = H11Handshake(ConnectionType.SERVER)
    backend.receive_data(to_backend)
    (seen,) = backend.events()
    assert isinstance(seen, WsRequest)
    assert seen.subprotocols == ["v2.chat", "v1.chat"]
    assert (b"cookie", b"a=1") in seen.extra_headers
    from_backend = backend.send(
        AcceptConnection(
            subprotocol="v1.chat",
            extensions=[PerMessageDeflate()],
            extra_headers=[(b"Set-Cookie", b"sticky=s1")],
        )
    )

    response = switching_headers(from_backend)  # the proxy's reader of a plain 101
    assert response is not None
    accepted = judge_backend_response(response, key=BACKEND_KEY, upgrade=upgrade)
    assert isinstance(accepted, BackendAccept)
    assert (accepted.subprotocol, accepted.deflate, accepted.headers) == (
        "v1.chat",
        True,
        ((b"set-cookie", b"sticky=s1"),),
    )

    client.receive_data(
        response_head(101, b"Switching Protocols", client_accept_headers(upgrade, accepted))
    )
    (done,) = client.events()
    assert isinstance(done, AcceptConnection)
    assert done.subprotocol == "v1.chat"
    assert [extension.name for extension in done.extensions] == ["permessage-deflate"]
    assert (b"set-cookie", b"sticky=s1") in done.extra_headers


# --- passthrough_headers -----------------------------------------------------------------------


def test_passthrough_headers_drop_hop_by_hop_and_framing() -> None:
    headers: Headers = (
        (b"content-type", b"application/json"),
        (b"content-length", b"17"),
        (b"transfer-encoding", b"chunked"),
        (b"connection", b"keep-alive, X-Conn-Only"),
        (b"keep-alive", b"timeout=5"),
        (b"x-conn-only", b"1"),
        (b"www-authenticate", b'Bearer realm="chat"'),
        (b"upgrade", b"h2c"),
        (b"trailer", b"x-sum"),
        (b"te", b"trailers"),
        (b"proxy-authenticate", b"Basic"),
        (b"proxy-connection", b"close"),
        (b"sec-websocket-version", b"13"),
        (b"set-cookie", b"a=1"),
    )
    assert passthrough_headers(headers) == (
        (b"content-type", b"application/json"),
        (b"www-authenticate", b'Bearer realm="chat"'),
        (b"sec-websocket-version", b"13"),
        (b"set-cookie", b"a=1"),
    )


def test_passthrough_headers_of_nothing_is_nothing() -> None:
    assert passthrough_headers(()) == ()


# --- reject_from_h11_error (the answer itself is http1.refusal) ------------------------------


def _h11_error(head: bytes, limit: int = 16 * 1024) -> h11.RemoteProtocolError:
    server = h11.Connection(h11.SERVER, max_incomplete_event_size=limit)
    server.receive_data(head)
    with pytest.raises(h11.RemoteProtocolError) as caught:
        server.next_event()
    return caught.value


@pytest.mark.parametrize(
    ("head", "limit", "expected"),
    [
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 200,
            100,
            Reject(431, "request head too large"),
        ),
        (b"GARBAGE\r\n\r\n", 16384, Reject(400, "malformed HTTP request")),
        (
            b"GET / HTTP/1.1\r\n\r\n",
            16384,
            Reject(400, "malformed HTTP request"),
        ),
    ],
    ids=["too-large", "garbage", "no-host"],
)
def test_reject_from_h11_error_maps_the_status_hint(
    head: bytes, limit: int, expected: Reject
) -> None:
    assert reject_from_h11_error(_h11_error(head, limit)) == expected


def test_reject_from_h11_error_unsupported_transfer_encoding_is_400() -> None:
    """h11 hints 501 for a transfer coding it doesn't know; to a WebSocket port it's malformed."""
    error = _h11_error(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n")
    assert error.error_status_hint == 501
    assert reject_from_h11_error(error) == Reject(400, "malformed HTTP request")


# --- comma-separated lists ---------------------------------------------------------------------


def test_split_list_keeps_commas_inside_quoted_strings() -> None:
    assert _split_list(b'a, "b,c", ,d ') == [b"a", b'"b,c"', b"d"]
    assert _split_list(b"a,\tb ,, c") == [b"a", b"b", b"c"]


@given(
    st.binary(max_size=40)
    | st.lists(st.sampled_from([b",", b" ", b"\t", b'"', b"\\", b"x"])).map(b"".join)
)
def test_split_list_agrees_with_the_byte_by_byte_split(value: bytes) -> None:
    assert _split_list(value) == _split_quoted(value)
