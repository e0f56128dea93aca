"""The syntax of one configuration value: durations, sizes, numbers, addresses, URLs, origins.

Invariants:
- Pure: one YAML scalar in (after `${ENV}` substitution), a typed value out, or a `ValueError`
  whose message can follow a dotted path (`path: message`). Nothing here resolves a name.
- A string that spells a number or a boolean is accepted where one is expected, because
  `${ENV}` substitution only ever produces strings. A YAML boolean is never a number.
- Nothing is negative, infinite or NaN. Durations are float seconds. Sizes are int bytes and
  binary (KiB, MiB, GiB are powers of 1024); `64KB` is refused with a hint rather than guessed,
  since KB means 1000 to some readers and 1024 to others.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from typing import Final
from urllib.parse import urlsplit

KIB: Final = 1024
MIB: Final = 1024 * KIB
GIB: Final = 1024 * MIB
NOT_YET: Final = "not supported by this version"

_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION: Final = re.compile(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))\s*(ms|s|m|h)?")
_BYTES: Final = {"": 1, "kib": KIB, "mib": MIB, "gib": GIB}
_SIZE: Final = re.compile(r"([+-]?[0-9]+)\s*(kib|mib|gib)?", re.IGNORECASE)
_DECIMAL_SIZE: Final = re.compile(r"([0-9]+)\s*([kmg])b?", re.IGNORECASE)
_WHOLE: Final = re.compile(r"[+-]?[0-9]+")
_LABEL: Final = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_ORIGIN: Final = re.compile(r"https?://(\*\.)?([^:/?#\[\]]+|\[[^\]]*\])(?::([0-9]+))?")


def describe(value: object) -> str:
    """A YAML value as a problem shows it: strings quoted, collections by kind."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return "a list" if isinstance(value, list) else "a mapping"
    return repr(value)


def boolean(value: object) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {describe(value)}")
    return value


def whole(value: object, *, minimum: int = 0) -> int:
    """An int, or a string of digits."""
    number = int(value) if isinstance(value, str) and _WHOLE.fullmatch(value.strip()) else value
    if not isinstance(number, int) or isinstance(number, bool):
        raise ValueError(f"expected a whole number, got {describe(value)}")
    if number < minimum:
        raise ValueError(f"must be at least {minimum}, got {number}")
    return number


def choice(value: object, options: tuple[str, ...], later: tuple[str, ...] = ()) -> str:
    """One of `options`, case-insensitively; one of `later` is refused as not supported yet."""
    name = value.strip().lower() if isinstance(value, str) else value
    if isinstance(name, str) and name in options:
        return name
    either = " or ".join(filter(None, [", ".join(options[:-1]), options[-1]]))
    if name in later:
        raise ValueError(f"{name!r} is {NOT_YET} (use {either})")
    raise ValueError(f"expected {either}, got {describe(value)}")


def duration(value: object, *, positive: bool = False) -> float:
    """`250ms`, `1.5s`, `2m`, `1h`, `"30"` or a YAML number (seconds) → float seconds."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = None
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match[1]) * _SECONDS[match[2] or "s"]
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(f"expected a duration like 250ms, 5s, 2m or 1h, got {describe(value)}")
    if seconds < 0:
        raise ValueError(f"must not be negative, got {describe(value)}")
    if positive and not seconds:
        raise ValueError(f"must be greater than 0, got {describe(value)}")
    return seconds


def size(value: object, *, minimum: int = 0) -> int:
    """`512`, `64KiB`, `1MiB`, `1GiB`, `"512"` or a YAML integer (bytes) → int bytes."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if match := _SIZE.fullmatch(text):
            number = int(match[1]) * _BYTES[(match[2] or "").lower()]
        elif match := _DECIMAL_SIZE.fullmatch(text):
            hint = f"{match[1]}{match[2].upper()}iB"
            raise ValueError(
                f"expected a size like 512, 64KiB, 1MiB or 1GiB, got {value!r} "
                f"(sizes are binary: use KiB/MiB/GiB, e.g. {hint!r})"
            )
    if number is None:
        raise ValueError(f"expected a size like 512, 64KiB, 1MiB or 1GiB, got {describe(value)}")
    if number < minimum:
        unit = "byte" if minimum == 1 else "bytes"
        raise ValueError(f"must be at least {minimum} {unit}, got {describe(value)}")
    return number


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {describe(value)}")
    return value.strip()


def valid_host(host: str) -> bool:
    """A host name (letters, digits, '-', '_'), an IPv4 address, or an IPv6 one in brackets."""
    try:
        if host.startswith("["):
            ipaddress.IPv6Address(host[1:].removesuffix("]"))
            return host.endswith("]")
        if re.fullmatch(r"[0-9.]+", host):
            ipaddress.IPv4Address(host)
            return True
    except ValueError:
        return False
    return _HOST_NAME.fullmatch(host.lower()) is not None


def listen_address(value: object) -> tuple[str, str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` → (as written, host without brackets, port); 0 = any port."""
    address = _text(value)
    host, colon, port = address.rpartition(":")
    if not colon or (host.startswith("[") and not host.endswith("]")):
        raise ValueError(f"expected HOST:PORT like 0.0.0.0:8080 or [::1]:8080, got {address!r}")
    if ":" in host and not host.startswith("["):
        raise ValueError(f"put an IPv6 address in brackets, like [::1]:8080, got {address!r}")
    if not host:
        raise ValueError(f"missing host in {address!r} (0.0.0.0 means every IPv4 address)")
    if not valid_host(host):
        raise ValueError(f"{host!r} is not a valid host name or address")
    if not (port.isascii() and port.isdigit() and int(port) <= 65535):
        raise ValueError(f"port must be a number from 0 to 65535, got {port!r}")
    return address, host.removeprefix("[").removesuffix("]"), int(port)


def ws_url(value: object) -> tuple[str, str, int]:
    """`ws://HOST[:PORT]` or `wss://HOST[:PORT]` → (as written, host, port), the port 80 or 443
    by default; no path or query."""
    text = _text(value)
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError:
        raise ValueError(f"{text!r} is not a valid URL (check its host and port)") from None
    if url.scheme not in ("ws", "wss") or not url.netloc:
        raise ValueError(f"expected a URL like ws://10.0.0.5:9001, got {text!r}")
    if "@" in url.netloc:
        raise ValueError("a server URL takes no user or password")
    if url.path not in ("", "/"):
        raise ValueError("a server URL takes no path (each client's path is passed on)")
    if url.query or url.fragment:
        raise ValueError("a server URL takes no query or fragment")
    host = url.hostname or ""
    if not valid_host(f"[{host}]" if ":" in host else host):
        raise ValueError(f"{host!r} is not a valid host name or address")
    if port == 0:
        raise ValueError("port must be a number from 1 to 65535, got 0")
    return text, host, port or (443 if url.scheme == "wss" else 80)


def workers(value: object) -> int:
    """A number of worker processes, at least 1, or "auto": one per CPU this process may use."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return len(os.sched_getaffinity(0))
    try:
        number = whole(value)
    except ValueError:
        raise ValueError(
            f'expected a number of processes or "auto", got {describe(value)}'
        ) from None
    return whole(number, minimum=1)


def tls_version(value: object) -> str:
    """The lowest TLS version to accept: "1.2" or "1.3" (older ones are broken)."""
    text = str(value).strip() if isinstance(value, (str, float)) else value
    if text in ("1.2", "1.3"):
        return str(text)
    raise ValueError(f'expected "1.2" or "1.3", got {describe(value)}')


def origin(value: object) -> str:
    """`*`, `null` (sandboxed frames, file: pages), `scheme://host[:port]` or
    `scheme://*.suffix[:port]`, scheme http or https → lower-cased."""
    text = _text(value).lower()
    match = _ORIGIN.fullmatch(text)
    if text in ("*", "null"):
        return text
    if match is None:
        if re.match(r"https?://[^/]+/", text):
            bare = "/".join(text.split("/", 3)[:3])
            raise ValueError(f"an origin has no path (did you mean {bare!r}?)")
        raise ValueError(
            "expected '*' or an origin like https://app.example.com or https://*.example.com, "
            f"got {value!r}"
        )
    wildcard, host, port = match.groups()
    if not valid_host(host) or (wildcard and host.startswith("[")):
        raise ValueError(f"{host!r} is not a valid host name or address")
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, got {port!r}")
    return text


def route_host(value: object) -> str:
    """`chat.example.com` or `*.example.com` (no port) → lower-cased."""
    host = _text(value).lower()
    if not valid_host(host.removeprefix("*.")) or host.startswith("*.["):
        raise ValueError(
            f"expected a host like chat.example.com or *.example.com (no port), got {value!r}"
        )
    return host


def route_path(value: object) -> str:
    """A path prefix: starts with `/`, no query, fragment or spaces."""
    path = _text(value)
    if not path.startswith("/") or re.search(r"[\s?#]", path):
        raise ValueError(f"expected a path like / or /chat (no query), got {value!r}")
    return path


HASH_SOURCES: Final = ("ip", "path", "header:NAME", "cookie:NAME", "query:NAME")
_TOKEN: Final = re.compile(
    r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
)  # RFC 9110 token: header and cookie names


def hash_source(value: object) -> str:
    """`ip`, `path`, `header:NAME`, `cookie:NAME` or `query:NAME` → normalised (header names
    lower-cased, since HTTP compares them case-insensitively; cookie and query names kept)."""
    text = _text(value)
    kind, colon, name = text.partition(":")
    kind = kind.strip().lower()
    name = name.strip()
    if not colon and kind in ("ip", "path"):
        return kind
    if colon and kind in ("header", "cookie") and _TOKEN.fullmatch(name):
        return f"{kind}:{name.lower() if kind == 'header' else name}"
    if colon and kind == "query" and name and not re.search(r"[\s&=#]", name):
        return f"query:{name}"
    raise ValueError(f"expected one of {', '.join(HASH_SOURCES)}, got {value!r}")


def token(value: object) -> str:
    """An HTTP token, as header and cookie names are (letters, digits, `-`, `_`, ...)."""
    text = _text(value)
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"expected a name of letters, digits, '-' or '_', got {value!r}")
    return text


def request_path(value: object) -> str:
    """A path to request, query allowed: starts with `/`, no spaces or fragment."""
    path = _text(value)
    if not path.startswith("/") or re.search(r"[\s#]", path):
        raise ValueError(f"expected a path like /health, got {value!r}")
    return path


def is_address(host: str) -> bool:
    """True for an IPv4 or IPv6 address (no brackets), False for a name to resolve."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


SHUTDOWN_CLOSE_CODES: Final = (1000, 1001, 1012, 1013)


def shutdown_close_code(value: object) -> int:
    """A close code the proxy may send when it stops: 1000, 1001, 1012, 1013 or 4000-4999."""
    code = whole(value)
    if code not in SHUTDOWN_CLOSE_CODES and not 4000 <= code <= 4999:
        raise ValueError(
            "expected 1001 (going away), 1012 (service restart), 1013 (try again later), "
            f"1000 or an application code from 4000 to 4999, got {code}"
        )
    return code


_NUMBER: Final = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_PERCENT: Final = re.compile(rf"({_NUMBER.pattern})\s*%")
_RATE: Final = re.compile(rf"({_NUMBER.pattern})\s*/\s*(s|m|h)")


def percentage(value: object) -> float:
    """`25%` or `12.5%` → a fraction (0.25, 0.125). A bare number is refused: 25 and 0.25 both
    look like a tolerance."""
    match = _PERCENT.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a percentage like 25%, got {describe(value)}")
    return float(match[1]) / 100


def rate(value: object) -> float:
    """`10/s`, `600/m`, `36000/h`, or a number (per second) → a positive float per second."""
    per_second: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        per_second = float(value)
    elif isinstance(value, str) and (match := _RATE.fullmatch(value.strip())):
        per_second = float(match[1]) / _SECONDS[match[2]]
    elif isinstance(value, str) and (match := _NUMBER.fullmatch(value.strip())):
        per_second = float(match[0])
    if per_second is None or not math.isfinite(per_second) or per_second <= 0:
        raise ValueError(f"expected a rate above 0 like 10/s or 600/m, got {describe(value)}")
    return per_second


REBALANCE_CLOSE_CODES: Final = (1012, 1013)


def rebalance_close_code(value: object) -> int:
    """What a client moved by rebalancing hears: 1012 or 1013, both ask it to come back."""
    code = whole(value)
    if code not in REBALANCE_CLOSE_CODES:
        raise ValueError(f"expected 1012 (service restart) or 1013 (try again later), got {code}")
    return code
