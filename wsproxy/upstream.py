"""Reaching a backend: dial a server of the pool, run the client side of its handshake, retry.

Invariants:
- The whole attempt, every retry included, runs under one `timeouts.connect` deadline; running
  out of it is a 504, every other failure a 502, and a pool with no healthy server a 503.
- A server is tried at most once per attempt; each failure ejects it (see `balancer`), and a
  completed HTTP answer, 101 or not, counts as the server being alive.
- A backend's non-101 answer is returned whole (status, end-to-end headers, a body of at most
  `MAX_PASSTHROUGH_BODY` bytes) for the client; the stream is closed here in that case.
- On success the caller owns the returned stream and must close it; bytes that came right behind
  the 101 are returned with it, as they are the first WebSocket bytes.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import h11
import trio

from wsproxy.balancer import ANY, Pick, PoolBalancer
from wsproxy.handshake import (
    BackendAccept,
    Reject,
    UpgradeRequest,
    backend_request,
    judge_backend_response,
    new_key,
    passthrough_headers,
)
from wsproxy.servers import ServerState
from wsproxy.tls import backend_context
from wsproxy.units import is_address

log = logging.getLogger(__name__)

Dial = Callable[[str, int], Awaitable[trio.abc.Stream]]

MAX_PASSTHROUGH_BODY: Final = 64 * 1024
MAX_RESPONSE_HEAD: Final = 64 * 1024
_CHUNK: Final = 65536


@dataclass(frozen=True, slots=True)
class Backend:
    """A backend that accepted the upgrade: its stream, its 101, and the bytes behind it."""

    server: ServerState
    stream: trio.abc.Stream
    accept: BackendAccept
    trailing: bytes
    connect_seconds: float


@dataclass(frozen=True, slots=True)
class Passthrough:
    """A backend's answer other than 101, to be given to the client as it is."""

    server: ServerState
    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


class _HandshakeFailed(Exception):
    """This server could not be used: connect refused, reset, or a broken answer."""


async def dial_tcp(host: str, port: int) -> trio.abc.Stream:
    """A TCP stream to `host` (an address, or a name still to resolve), with TCP_NODELAY.

    An address is dialled directly: `open_tcp_stream`'s lookup and happy-eyeballs nursery are
    for names, and cost a visible share of each handshake.
    """
    if not is_address(host):
        stream = await trio.open_tcp_stream(host, port)
        stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
        return stream
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)  # which sets TCP_NODELAY


async def connect(
    server: ServerState, dial: Dial, tls: ssl.SSLContext | None = None
) -> trio.abc.Stream:
    """A stream to `server`, through `dial`; for a wss:// server with its TLS handshake done
    (SNI and the verified name are the URL's host). Every failure is an `OSError`."""
    stream = await dial(server.address, server.port)
    if not server.secure:
        return stream
    secure = trio.SSLStream(
        stream, tls or _default_tls(), server_hostname=server.host, https_compatible=True
    )
    try:
        await secure.do_handshake()
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(stream)
        cause = exc.__cause__
        why = (cause.reason or str(cause)) if isinstance(cause, ssl.SSLError) else "reset"
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = f"certificate verify failed: {cause.verify_message}"
        raise ConnectionError(f"TLS handshake failed: {why}") from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return secure


@functools.cache
def _default_tls() -> ssl.SSLContext:
    return backend_context(None, "tls")


async def open_backend(
    balancer: PoolBalancer,
    upgrade: UpgradeRequest,
    *,
    client_ip: str,
    scheme: str,
    connect_timeout: float,
    dial: Dial = dial_tcp,
    pick: Pick = ANY,
    tls: ssl.SSLContext | None = None,
) -> Backend | Passthrough | Reject:
    """Find a server of `balancer`'s pool that takes the upgrade, within `connect_timeout`.

    The server is counted as `connecting` while its handshake runs, so other handshakes see
    its load; the caller counts the session (`balancer.started`) once it owns the stream.
    """
    start = trio.current_time()
    tried: list[ServerState] = []
    last_problem = ""
    with trio.move_on_after(connect_timeout) as scope:
        while len(tried) <= balancer.retries:
            server = balancer.choose(trio.current_time(), pick, exclude=tried)
            if server is None:
                break
            tried.append(server)
            server.connecting += 1
            try:
                result = await _try_server(server, upgrade, client_ip, scheme, dial, tls)
            except _HandshakeFailed as exc:
                last_problem = str(exc)
                log.warning("backend %s failed: %s", server.key, exc)
                server.failed(trio.current_time())
                continue
            finally:
                server.connecting -= 1
            server.succeeded()
            if isinstance(result, Backend):
                return Backend(
                    server,
                    result.stream,
                    result.accept,
                    result.trailing,
                    trio.current_time() - start,
                )
            return result
    if scope.cancelled_caught:
        if tried:
            tried[-1].failed(trio.current_time())
        return Reject(504, f"the backend did not answer within {connect_timeout:g}s")
    if not tried:
        return balancer.refusal(trio.current_time())
    return Reject(502, f"could not reach a backend: {last_problem}")


async def _try_server(
    server: ServerState,
    upgrade: UpgradeRequest,
    client_ip: str,
    scheme: str,
    dial: Dial,
    tls: ssl.SSLContext | None,
) -> Backend | Passthrough:
    try:
        stream = await connect(server, dial, tls)
    except OSError as exc:
        raise _HandshakeFailed(
            f"connect to {server.address}:{server.port}: {exc.strerror or exc}"
        ) from None
    ok = False
    try:
        result = await _handshake(server, stream, upgrade, client_ip, scheme)
        ok = isinstance(result, Backend)
        return result
    finally:
        if not ok:
            await trio.aclose_forcefully(stream)


async def _handshake(
    server: ServerState,
    stream: trio.abc.Stream,
    upgrade: UpgradeRequest,
    client_ip: str,
    scheme: str,
) -> Backend | Passthrough:
    key = new_key(os.urandom(16))
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
    request = backend_request(upgrade, key=key, client_ip=client_ip, scheme=scheme)
    try:
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        head = await _next_event(stream, conn)
        while isinstance(head, h11.InformationalResponse) and head.status_code != 101:
            head = await _next_event(stream, conn)
        if isinstance(head, h11.InformationalResponse):
            verdict = judge_backend_response(head, key=key, upgrade=upgrade)
            if isinstance(verdict, Reject):
                raise _HandshakeFailed(verdict.reason)
            trailing = bytes(conn.trailing_data[0])
            return Backend(server, stream, verdict, trailing, 0.0)
        assert isinstance(head, h11.Response)  # h11 raises on EOF before a response head
        body = bytearray()
        while True:
            event = await _next_event(stream, conn)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_PASSTHROUGH_BODY:
                    raise _HandshakeFailed("the backend's refusal had an oversized body")
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        return Passthrough(
            server,
            head.status_code,
            head.reason,
            passthrough_headers(tuple(head.headers)),
            bytes(body),
        )
    except h11.ProtocolError:
        # h11's message may quote the backend's bytes, which are not for the client's eyes.
        received, closed = conn.trailing_data
        if closed and not received:
            raise _HandshakeFailed("the backend closed the connection without answering") from None
        raise _HandshakeFailed("the backend's answer was not valid HTTP") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise _HandshakeFailed("the backend reset the connection") from None


async def _next_event(
    stream: trio.abc.Stream, conn: h11.Connection
) -> h11.Event | type[h11.PAUSED]:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        data = await stream.receive_some(_CHUNK)
        conn.receive_data(bytes(data))
