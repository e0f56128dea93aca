from __future__ import annotations

from collections.abc import Callable

import pytest

from wsproxy.units import (
    GIB,
    KIB,
    MIB,
    boolean,
    choice,
    describe,
    duration,
    hash_source,
    is_address,
    listen_address,
    origin,
    percentage,
    rate,
    rebalance_close_code,
    request_path,
    route_host,
    route_path,
    shutdown_close_code,
    size,
    token,
    valid_host,
    whole,
    ws_url,
)

DURATION = "expected a duration like 250ms, 5s, 2m or 1h, got "
SIZE = "expected a size like 512, 64KiB, 1MiB or 1GiB, got "
ORIGIN = "expected '*' or an origin like https://app.example.com or https://*.example.com, got "


def problem(parse: Callable[[object], object], value: object) -> str:
    with pytest.raises(ValueError, match=r".") as caught:
        parse(value)
    return str(caught.value)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "nothing"),
        (True, "true"),
        (False, "false"),
        ([1], "a list"),
        ({}, "a mapping"),
        ("x", "'x'"),
        (1.5, "1.5"),
        (7, "7"),
    ],
)
def test_units_describe(value: object, shown: str) -> None:
    assert describe(value) == shown


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (0, 0.0),
        (1.5, 1.5),
        ("250ms", 0.25),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("30", 30.0),
        ("2.", 2.0),
        (" 10 s ", 10.0),
        ("+3s", 3.0),
    ],
)
def test_units_duration_valid(value: object, seconds: float) -> None:
    assert duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, DURATION + "true"),
        (None, DURATION + "nothing"),
        ("", DURATION + "''"),
        ("5 parsecs", DURATION + "'5 parsecs'"),
        ("1:30", DURATION + "'1:30'"),
        ("10d", DURATION + "'10d'"),
        ("5S", DURATION + "'5S'"),
        ("1e3", DURATION + "'1e3'"),
        (float("inf"), DURATION + "inf"),
        (float("nan"), DURATION + "nan"),
        (10**400, DURATION + repr(10**400)),
        ([5], DURATION + "a list"),
        (-1, "must not be negative, got -1"),
        ("-5s", "must not be negative, got '-5s'"),
    ],
)
def test_units_duration_invalid(value: object, message: str) -> None:
    assert problem(duration, value) == message


@pytest.mark.parametrize("value", [0, "0s", 0.0, "0ms"])
def test_units_duration_positive_refuses_zero(value: object) -> None:
    assert duration(value) == 0.0
    assert problem(lambda v: duration(v, positive=True), value) == (
        f"must be greater than 0, got {describe(value)}"
    )


@pytest.mark.parametrize(
    ("value", "nbytes"),
    [
        (512, 512),
        (0, 0),
        ("512", 512),
        ("64KiB", 64 * KIB),
        ("1MiB", MIB),
        ("1GiB", GIB),
        ("2 kib", 2 * KIB),
        (" 3MIB ", 3 * MIB),
    ],
)
def test_units_size_valid(value: object, nbytes: int) -> None:
    assert size(value) == nbytes


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("64KB", SIZE + "'64KB' (sizes are binary: use KiB/MiB/GiB, e.g. '64KiB')"),
        ("1mb", SIZE + "'1mb' (sizes are binary: use KiB/MiB/GiB, e.g. '1MiB')"),
        ("2G", SIZE + "'2G' (sizes are binary: use KiB/MiB/GiB, e.g. '2GiB')"),
        ("1.5MiB", SIZE + "'1.5MiB'"),
        ("1TiB", SIZE + "'1TiB'"),
        (True, SIZE + "true"),
        (1.5, SIZE + "1.5"),
        (None, SIZE + "nothing"),
        (-1, "must be at least 0 bytes, got -1"),
        ("-1KiB", "must be at least 0 bytes, got '-1KiB'"),
    ],
)
def test_units_size_invalid(value: object, message: str) -> None:
    assert problem(size, value) == message


def test_units_size_minimum() -> None:
    assert size("1KiB", minimum=KIB) == KIB
    assert problem(lambda v: size(v, minimum=KIB), 1023) == "must be at least 1024 bytes, got 1023"
    assert problem(lambda v: size(v, minimum=1), "0") == "must be at least 1 byte, got '0'"


@pytest.mark.parametrize(("value", "number"), [(3, 3), ("3", 3), (" 42 ", 42), ("+7", 7)])
def test_units_whole_valid(value: object, number: int) -> None:
    assert whole(value) == number


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "expected a whole number, got true"),
        (1.0, "expected a whole number, got 1.0"),
        ("1.0", "expected a whole number, got '1.0'"),
        ("ten", "expected a whole number, got 'ten'"),
        (-1, "must be at least 0, got -1"),
        ("-2", "must be at least 0, got -2"),
    ],
)
def test_units_whole_invalid(value: object, message: str) -> None:
    assert problem(whole, value) == message


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("true", True), ("False", False), ("TRUE", True)],
)
def test_units_boolean_valid(value: object, expected: bool) -> None:
    assert boolean(value) is expected


@pytest.mark.parametrize("value", ["yes", "no", "on", "off", 1, 0, None, "1"])
def test_units_boolean_invalid(value: object) -> None:
    assert problem(boolean, value) == f"expected true or false, got {describe(value)}"


def test_units_choice() -> None:
    assert choice(" Info ", ("debug", "info")) == "info"
    assert problem(lambda v: choice(v, ("debug", "info")), "loud") == (
        "expected debug or info, got 'loud'"
    )
    assert problem(lambda v: choice(v, ("a", "b", "c")), 3) == "expected a, b or c, got 3"
    assert problem(lambda v: choice(v, ("round_robin",), ("hash",)), "HASH") == (
        "'hash' is not supported by this version (use round_robin)"
    )


@pytest.mark.parametrize(
    ("host", "valid"),
    [
        ("localhost", True),
        ("chat.example.com", True),
        ("Backend-1.internal", True),
        ("my_service", True),
        ("10.0.0.5", True),
        ("[::1]", True),
        ("[2001:db8::1]", True),
        ("", False),
        ("-bad.example", False),
        ("a..b", False),
        ("a b", False),
        ("999.1.1.1", False),
        ("1.2.3", False),
        ("[::1", False),
        ("[zz]", False),
        ("::1", False),
        ("*.example.com", False),
    ],
)
def test_units_valid_host(host: str, valid: bool) -> None:
    assert valid_host(host) is valid


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("0.0.0.0:8080", ("0.0.0.0:8080", "0.0.0.0", 8080)),
        (" 127.0.0.1:0 ", ("127.0.0.1:0", "127.0.0.1", 0)),
        ("[::1]:8080", ("[::1]:8080", "::1", 8080)),
        ("localhost:65535", ("localhost:65535", "localhost", 65535)),
    ],
)
def test_units_listen_address_valid(address: str, parsed: tuple[str, str, int]) -> None:
    assert listen_address(address) == parsed


@pytest.mark.parametrize(
    ("address", "message"),
    [
        (8080, "expected a string, got 8080"),
        ("localhost", "expected HOST:PORT like 0.0.0.0:8080 or [::1]:8080, got 'localhost'"),
        ("[::1]", "expected HOST:PORT like 0.0.0.0:8080 or [::1]:8080, got '[::1]'"),
        ("::1:8080", "put an IPv6 address in brackets, like [::1]:8080, got '::1:8080'"),
        (":8080", "missing host in ':8080' (0.0.0.0 means every IPv4 address)"),
        ("a b:80", "'a b' is not a valid host name or address"),
        ("[zz]:80", "'[zz]' is not a valid host name or address"),
        ("localhost:", "port must be a number from 0 to 65535, got ''"),
        ("localhost:65536", "port must be a number from 0 to 65535, got '65536'"),
        ("localhost:http", "port must be a number from 0 to 65535, got 'http'"),
        ("localhost:٨٠", "port must be a number from 0 to 65535, got '٨٠'"),
    ],
)
def test_units_listen_address_invalid(address: object, message: str) -> None:
    assert problem(listen_address, address) == message


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("ws://127.0.0.1:9001", ("ws://127.0.0.1:9001", "127.0.0.1", 9001)),
        ("ws://backend", ("ws://backend", "backend", 80)),
        ("ws://Backend.Internal:81/", ("ws://Backend.Internal:81/", "backend.internal", 81)),
        ("ws://[::1]:9001", ("ws://[::1]:9001", "::1", 9001)),
        ("WS://a:1", ("WS://a:1", "a", 1)),
        ("wss://chat.internal", ("wss://chat.internal", "chat.internal", 443)),
        ("wss://a:9443", ("wss://a:9443", "a", 9443)),
    ],
)
def test_units_ws_url_valid(url: str, parsed: tuple[str, str, int]) -> None:
    assert ws_url(url) == parsed


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (None, "expected a string, got nothing"),
        ("http://a", "expected a URL like ws://10.0.0.5:9001, got 'http://a'"),
        ("127.0.0.1:9001", "expected a URL like ws://10.0.0.5:9001, got '127.0.0.1:9001'"),
        ("ws:///x", "expected a URL like ws://10.0.0.5:9001, got 'ws:///x'"),
        ("ws://u@a", "a server URL takes no user or password"),
        ("ws://a/chat", "a server URL takes no path (each client's path is passed on)"),
        ("ws://a/#x", "a server URL takes no query or fragment"),
        ("ws://a?x", "a server URL takes no query or fragment"),
        ("ws://:80", "'' is not a valid host name or address"),
        ("ws://a_b c", "'a_b c' is not a valid host name or address"),
        ("ws://a:0", "port must be a number from 1 to 65535, got 0"),
        ("ws://a:x", "'ws://a:x' is not a valid URL (check its host and port)"),
        ("ws://[zz]:1", "'ws://[zz]:1' is not a valid URL (check its host and port)"),
    ],
)
def test_units_ws_url_invalid(url: object, message: str) -> None:
    assert problem(ws_url, url) == message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("*", "*"),
        ("null", "null"),
        ("https://App.Example.com", "https://app.example.com"),
        ("http://localhost:8080", "http://localhost:8080"),
        ("https://*.example.com", "https://*.example.com"),
        ("https://*.example.com:8443", "https://*.example.com:8443"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("http://127.0.0.1", "http://127.0.0.1"),
    ],
)
def test_units_origin_valid(value: str, expected: str) -> None:
    assert origin(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (5, "expected a string, got 5"),
        ("app.example.com", ORIGIN + "'app.example.com'"),
        ("ftp://x", ORIGIN + "'ftp://x'"),
        ("https://", ORIGIN + "'https://'"),
        ("https://a.com/", "an origin has no path (did you mean 'https://a.com'?)"),
        ("https://a.com:8443/app", "an origin has no path (did you mean 'https://a.com:8443'?)"),
        ("https://*.[::1]", "'[::1]' is not a valid host name or address"),
        ("https://a b", "'a b' is not a valid host name or address"),
        ("https://a:0", "port must be a number from 1 to 65535, got '0'"),
        ("https://a:65536", "port must be a number from 1 to 65535, got '65536'"),
    ],
)
def test_units_origin_invalid(value: object, message: str) -> None:
    assert problem(origin, value) == message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("chat.example.com", "chat.example.com"),
        ("Chat.Example.COM", "chat.example.com"),
        ("*.example.com", "*.example.com"),
        ("[::1]", "[::1]"),
    ],
)
def test_units_route_host_valid(value: str, expected: str) -> None:
    assert route_host(value) == expected


@pytest.mark.parametrize("value", ["chat.example.com:80", "*", "*.[::1]", "a b", "*example.com"])
def test_units_route_host_invalid(value: str) -> None:
    assert problem(route_host, value) == (
        f"expected a host like chat.example.com or *.example.com (no port), got {value!r}"
    )


@pytest.mark.parametrize("value", ["/", "/chat", "/chat/", "/a/b.c-d_e~f"])
def test_units_route_path_valid(value: str) -> None:
    assert route_path(value) == value


@pytest.mark.parametrize("value", ["chat", "", "/a b", "/chat?room=1", "/chat#x"])
def test_units_route_path_invalid(value: str) -> None:
    assert problem(route_path, value) == (
        f"expected a path like / or /chat (no query), got {value!r}"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ip", "ip"),
        (" IP ", "ip"),
        ("path", "path"),
        ("header:X-User-Id", "header:x-user-id"),
        ("Header: X-User-Id ", "header:x-user-id"),
        ("cookie:SessionID", "cookie:SessionID"),
        ("query:user", "query:user"),
        ("query:User.Name", "query:User.Name"),
    ],
)
def test_units_hash_source_valid(value: str, expected: str) -> None:
    assert hash_source(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "host",
        "ip:x",
        "path:/a",
        "header:",
        "header:a b",
        "header:a:b",
        "cookie:a;b",
        "query:",
        "query:a&b",
        "query:a=b",
        "query:a b",
        "body:x",
    ],
)
def test_units_hash_source_invalid(value: str) -> None:
    assert problem(hash_source, value) == (
        "expected one of ip, path, header:NAME, cookie:NAME, query:NAME, got " + repr(value)
    )


def test_units_hash_source_needs_a_string() -> None:
    assert problem(hash_source, 5) == "expected a string, got 5"


@pytest.mark.parametrize("value", ["wsproxy_server", "SID", "a-b.c~d!"])
def test_units_token_valid(value: str) -> None:
    assert token(value) == value


@pytest.mark.parametrize("value", ["", "a b", "a;b", "a=b", "ü"])
def test_units_token_invalid(value: str) -> None:
    assert problem(token, value) == (
        f"expected a name of letters, digits, '-' or '_', got {value!r}"
    )


@pytest.mark.parametrize("value", ["/", "/health", "/health?deep=1", "/a/b"])
def test_units_request_path_valid(value: str) -> None:
    assert request_path(value) == value


@pytest.mark.parametrize("value", ["health", "", "/a b", "/a#b"])
def test_units_request_path_invalid(value: str) -> None:
    assert problem(request_path, value) == f"expected a path like /health, got {value!r}"


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("10.0.0.1", True),
        ("::1", True),
        ("2001:db8::5", True),
        ("app.internal", False),
        ("localhost", False),
        ("10.0.0", False),
        ("[::1]", False),
    ],
)
def test_units_is_address(host: str, address: bool) -> None:
    assert is_address(host) is address


@pytest.mark.parametrize(
    ("value", "code"),
    [(1001, 1001), ("1012", 1012), (1000, 1000), (1013, 1013), (4000, 4000), (4999, 4999)],
)
def test_units_shutdown_close_code_valid(value: object, code: int) -> None:
    assert shutdown_close_code(value) == code


@pytest.mark.parametrize("value", [1002, 1005, 1006, 1011, 1015, 3000, 5000, 999])
def test_units_shutdown_close_code_invalid(value: int) -> None:
    assert problem(shutdown_close_code, value) == (
        "expected 1001 (going away), 1012 (service restart), 1013 (try again later), "
        f"1000 or an application code from 4000 to 4999, got {value}"
    )


@pytest.mark.parametrize(
    ("value", "fraction"), [("25%", 0.25), (" 12.5 % ", 0.125), ("0%", 0.0), ("150%", 1.5)]
)
def test_units_percentage_valid(value: str, fraction: float) -> None:
    assert percentage(value) == fraction


@pytest.mark.parametrize("value", [25, 0.25, "25", "%", "-5%", "25 percent", True, None])
def test_units_percentage_invalid(value: object) -> None:
    assert problem(percentage, value) == (f"expected a percentage like 25%, got {describe(value)}")


@pytest.mark.parametrize(
    ("value", "per_second"),
    [("10/s", 10.0), ("600/m", 10.0), ("36000 / h", 10.0), ("0.5/s", 0.5), (3, 3.0), ("2.5", 2.5)],
)
def test_units_rate_valid(value: object, per_second: float) -> None:
    assert rate(value) == per_second


@pytest.mark.parametrize(
    "value", ["0/s", 0, -1, "-1/s", "10/d", "10 per second", "/s", True, None, float("inf")]
)
def test_units_rate_invalid(value: object) -> None:
    assert problem(rate, value) == (
        f"expected a rate above 0 like 10/s or 600/m, got {describe(value)}"
    )


@pytest.mark.parametrize(("value", "code"), [(1012, 1012), ("1013", 1013)])
def test_units_rebalance_close_code_valid(value: object, code: int) -> None:
    assert rebalance_close_code(value) == code


@pytest.mark.parametrize("value", [1000, 1001, 1011, 4000])
def test_units_rebalance_close_code_invalid(value: int) -> None:
    assert problem(rebalance_close_code, value) == (
        f"expected 1012 (service restart) or 1013 (try again later), got {value}"
    )
