"""PROXY protocol v1 and v2 headers: whole, unfinished and invalid."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from wsproxy.proxyproto import (
    V1_MAX,
    V2_MAX_BODY,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    parse,
)

V1 = b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n"


def v2(
    command: int = 0x1,
    family: int = 0x11,
    addresses: bytes | None = None,
    tlvs: bytes = b"",
    version: int = 2,
) -> bytes:
    """A v2 header: PROXY over TCP/IPv4 from 192.0.2.10:56324 unless told otherwise."""
    if addresses is None:
        addresses = (
            ipaddress.ip_address("192.0.2.10").packed
            + ipaddress.ip_address("198.51.100.1").packed
            + struct.pack("!HH", 56324, 443)
        )
    body = addresses + tlvs
    return (
        V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack("!H", len(body)) + body
    )


IPV6 = (
    ipaddress.ip_address("2001:db8::7").packed
    + ipaddress.ip_address("2001:db8::1").packed
    + struct.pack("!HH", 40000, 443)
)


@pytest.mark.parametrize(
    ("data", "header"),
    [
        (V1 + b"GET / HTTP/1.1\r\n", ProxyHeader(("192.0.2.10", 56324), len(V1))),
        (
            b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n",
            ProxyHeader(("2001:db8::7", 40000), 46),
        ),
        (b"PROXY UNKNOWN\r\n", ProxyHeader(None, 15)),
        (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nGET", ProxyHeader(None, 35)),
        (v2() + b"GET", ProxyHeader(("192.0.2.10", 56324), 28)),
        (v2(tlvs=b"\x04\x00\x01x"), ProxyHeader(("192.0.2.10", 56324), 32)),
        (v2(family=0x21, addresses=IPV6), ProxyHeader(("2001:db8::7", 40000), 52)),
        (v2(family=0x10), ProxyHeader(("192.0.2.10", 56324), 28)),  # transport unspecified
        (v2(command=0x0), ProxyHeader(None, 28)),  # LOCAL: a health check of the balancer
        (v2(family=0x31, addresses=b"/tmp/a" * 36), ProxyHeader(None, 232)),  # AF_UNIX
        (v2(family=0x00, addresses=b""), ProxyHeader(None, 16)),  # UNSPEC
    ],
)
def test_proxyproto_whole_headers(data: bytes, header: ProxyHeader) -> None:
    assert parse(data) == header


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"P",
        b"PROXY ",
        V1[:-1],
        b"\r\n\r\n",
        V2_SIGNATURE,
        v2()[:15],
        v2()[:27],
    ],
)
def test_proxyproto_unfinished_headers_need_more(data: bytes) -> None:
    assert parse(data) is None


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"GET / HTTP/1.1\r\n", "the connection did not start with a PROXY protocol header"),
        (b"PROXY\r\n", "the connection did not start with a PROXY protocol header"),
        (b"\r\n\r\n\x00\r\nQUIX\n", "the connection did not start with a PROXY protocol header"),
        (b"PROXY " + b"1" * V1_MAX, "PROXY v1 line longer than 107 bytes"),
        (
            b"PROXY UDP4 192.0.2.10 198.51.100.1 1 2\r\n",
            "PROXY v1 line is not 'PROXY TCP4|TCP6 src dst sport dport'",
        ),
        (
            b"PROXY TCP4 192.0.2.10 198.51.100.1 1\r\n",
            "PROXY v1 line is not 'PROXY TCP4|TCP6 src dst sport dport'",
        ),
        (
            b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",
            "PROXY v1 address b'2001:db8::7' is not an IPv4 address",
        ),
        (
            b"PROXY TCP6 2001:db8::7 192.0.2.1 1 2\r\n",
            "PROXY v1 address b'192.0.2.1' is not an IPv6 address",
        ),
        (
            b"PROXY TCP4 192.0.2.\xff 198.51.100.1 1 2\r\n",
            "PROXY v1 address b'192.0.2.\\xff' is not an IPv4 address",
        ),
        (
            b"PROXY TCP4 192.0.2.10 198.51.100.1 65536 2\r\n",
            "PROXY v1 port b'65536' is not a port number",
        ),
        (
            b"PROXY TCP4 192.0.2.10 198.51.100.1 1 -2\r\n",
            "PROXY v1 port b'-2' is not a port number",
        ),
        (
            b"PROXY TCP4 192.0.2.10 198.51.100.1 01 2\r\n",
            "PROXY v1 port b'01' is not a port number",
        ),
        (v2(version=1), "PROXY v2 version/command byte 0x11 is not valid"),
        (v2(command=0x2), "PROXY v2 version/command byte 0x22 is not valid"),
        (
            V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX_BODY + 1),
            f"PROXY v2 header announces {V2_MAX_BODY + 1} bytes, over {V2_MAX_BODY}",
        ),
        (v2(addresses=b"\x00" * 11), "PROXY v2 header is too short for its addresses"),
        (v2(family=0x21), "PROXY v2 header is too short for its addresses"),
    ],
)
def test_proxyproto_invalid_headers(data: bytes, problem: str) -> None:
    with pytest.raises(ProxyProtocolError) as caught:
        parse(data)
    assert str(caught.value) == problem
