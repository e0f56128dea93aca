"""The PROXY protocol, v1 and v2 (HAProxy's spec): the real client's address, sent by an L4
load balancer ahead of the client's own bytes.

Invariants:
- Pure: bytes in; out comes a `ProxyHeader`, None while more bytes are needed, or a
  `ProxyProtocolError` saying in one sentence what is wrong.
- v1 is one text line of at most `V1_MAX` bytes ending in CRLF; v2 is a 16-byte binary head and
  the length it announces, at most `V2_MAX_BODY` bytes. Anything else is refused: a listener
  that expects the PROXY protocol never guesses that a connection came without it.
- A header that names no client (v1 `UNKNOWN`, v2 `LOCAL`, or an address family other than
  IPv4 and IPv6) leaves the connection's own peer as the client. v2 TLVs are skipped.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

V1_PREFIX: Final = b"PROXY "
V1_MAX: Final = 107  # bytes, CRLF included: the spec's longest line
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEAD: Final = 16
V2_MAX_BODY: Final = 4096  # addresses plus TLVs; HAProxy's own buffer is of this order

_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_V2_INET, _V2_INET6 = 0x1, 0x2


class ProxyProtocolError(Exception):
    """The bytes are not a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A whole header: the client it names (None: the connection's peer) and its length."""

    client: tuple[str, int] | None
    length: int


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`, or None if `data` is a valid but unfinished start."""
    if V2_SIGNATURE.startswith(data[: len(V2_SIGNATURE)]):
        return _parse_v2(data)
    if V1_PREFIX.startswith(data[: len(V1_PREFIX)]):
        return _parse_v1(data)
    raise ProxyProtocolError("the connection did not start with a PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyProtocolError("PROXY v1 line longer than 107 bytes")
        return None
    parts = data[:end].split(b" ")
    if parts[1:2] == [b"UNKNOWN"]:
        return ProxyHeader(None, end + 2)
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError("PROXY v1 line is not 'PROXY TCP4|TCP6 src dst sport dport'")
    version = 4 if parts[1] == b"TCP4" else 6
    source = _address(parts[2], version)
    _address(parts[3], version)
    port = _port(parts[4])
    _port(parts[5])
    return ProxyHeader((source, port), end + 2)


def _address(text: bytes, version: int) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        address = None
    if address is None or address.version != version:
        raise ProxyProtocolError(f"PROXY v1 address {text!r} is not an IPv{version} address")
    return str(address)


def _port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535 or text != b"%d" % int(text):
        raise ProxyProtocolError(f"PROXY v1 port {text!r} is not a port number")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < V2_HEAD:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2 or command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyProtocolError(f"PROXY v2 version/command byte {data[12]:#04x} is not valid")
    body = int.from_bytes(data[14:16], "big")
    if body > V2_MAX_BODY:
        raise ProxyProtocolError(f"PROXY v2 header announces {body} bytes, over {V2_MAX_BODY}")
    length = V2_HEAD + body
    if len(data) < length:
        return None
    family = data[13] >> 4
    if command == _V2_LOCAL or family not in (_V2_INET, _V2_INET6):
        return ProxyHeader(None, length)
    size = 4 if family == _V2_INET else 16
    if body < 2 * size + 4:
        raise ProxyProtocolError("PROXY v2 header is too short for its addresses")
    source = ipaddress.ip_address(data[V2_HEAD : V2_HEAD + size])
    port = int.from_bytes(data[V2_HEAD + 2 * size : V2_HEAD + 2 * size + 2], "big")
    return ProxyHeader((str(source), port), length)
