"""Reaching a backend: dial a server of the pool, run the client side of its handshake, retry.

Invariants:
- Each attempt (TCP, TLS and the WebSocket handshake with one server) has its own
  `timeouts.connect`; all attempts together are bounded by `timeouts.connect_total`. A server
  that runs out of its time has failed, like one that refused, and the next one is tried.
- The client's answer follows the last failure: 504 if it was a timeout (the attempt's or the
  total's), else 502; 503 when no server could be chosen at all. Its body is one plain sentence
  that names no address, port, URL or error text: those go to the log, at warning.
- A server is tried at most once per handshake; each failure ejects it (see `balancer`), and a
  completed HTTP answer, 101 or not, counts as the server being alive.
- Every head of a backend's answer is at most `max_head` bytes (`security.max_header_size`),
  counted by `intake.read_head` as for a client's request, however the bytes arrive.
- A backend's non-101 answer is returned whole (status, end-to-end headers, a body of at most
  `MAX_PASSTHROUGH_BODY` bytes) for the client; the stream is closed here in that case.
- On success the caller owns the returned stream and must close it; bytes that came right behind
  the 101 are returned with it, as they are the first WebSocket bytes.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import h11
import trio

from wsproxy.balancer import ANY, Pick, PoolBalancer
from wsproxy.handshake import (
    BackendAccept,
    BackendRequest,
    Headers,
    Reject,
    UpgradeRequest,
    backend_request,
    judge_backend_response,
    new_key,
    passthrough_headers,
)
from wsproxy.http1 import next_event, switching_headers
from wsproxy.intake import HeadTooLarge, read_head
from wsproxy.servers import ServerState
from wsproxy.tls import backend_context
from wsproxy.units import is_address
from wsproxy.wire import close_forcefully, wire_for

log = logging.getLogger(__name__)

Dial = Callable[[str, int], Awaitable[trio.abc.Stream]]

MAX_PASSTHROUGH_BODY: Final = 64 * 1024
_CHUNK: Final = 65536

# What the client reads when no backend took its session; the details are logged instead.
UNREACHABLE: Final = Reject(502, "no backend could take the session")
TOO_SLOW: Final = Reject(504, "the backend did not answer in time")
HEAD_TOO_LARGE: Final = Reject(502, "the backend's answer head was too large")


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
    """This server could not be used: connect refused, reset, a broken answer, or no answer in
    time. The message is for the log; `answer` is what the client gets if no server works."""

    def __init__(self, detail: str, answer: Reject = UNREACHABLE) -> None:
        super().__init__(detail)
        self.answer = answer


# Where it exists (Linux), `socket()` itself makes the socket non-blocking: no ioctl of its own.
_SOCK_NONBLOCK: Final[int] = getattr(socket, "SOCK_NONBLOCK", 0)
_NONBLOCKING_STREAM: Final = socket.SOCK_STREAM | _SOCK_NONBLOCK

_is_address = functools.lru_cache(maxsize=1024)(is_address)  # asked for every dial


async def dial_tcp(host: str, port: int) -> trio.abc.Stream:
    """A TCP stream to `host` (an address, or a name still to resolve), with TCP_NODELAY.

    An address is dialled directly, a non-blocking connect on a plain socket and, unless it is
    over at once (`_connected_at_once`), trio's wait until it is writable: `open_tcp_stream`'s
    lookup and happy-eyeballs nursery are for names, and trio's socket layers cost a visible
    share of each handshake. A failure is the kernel's `OSError` (`strerror` as the log quotes
    it). It is always a cancel point: a dial in a cancelled scope (a health check its reload
    stopped) raises `Cancelled` before it connects."""
    await trio.lowlevel.checkpoint_if_cancelled()  # a cancel point even when nothing waits
    if not _is_address(host):
        stream = await trio.open_tcp_stream(host, port)
        stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
        return stream
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, _NONBLOCKING_STREAM)
    try:
        if not _SOCK_NONBLOCK:
            sock.setblocking(False)
        error = sock.connect_ex((host, port))
        if error == errno.EINPROGRESS:
            error = _connected_at_once(sock)
        if error == errno.EINPROGRESS:
            await trio.lowlevel.wait_writable(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))  # which sets TCP_NODELAY


def _connected_at_once(sock: socket.socket) -> int:
    """The outcome of a non-blocking connect that said EINPROGRESS, if it is known already: 0
    (connected), the error that ended it, or EINPROGRESS (still under way: wait until the
    socket is writable). A loopback connect, the common case, is over by the time `connect`
    returns, and an empty write tells so without a wait and a trip through the scheduler."""
    try:
        sock.send(b"")
    except BlockingIOError:
        return errno.EINPROGRESS
    except OSError as exc:
        return exc.errno or errno.ECONNREFUSED
    return 0


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
        await close_forcefully(stream)
        cause = exc.__cause__
        why = (cause.reason or str(cause)) if isinstance(cause, ssl.SSLError) else "reset"
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = f"certificate verify failed: {cause.verify_message}"
        raise ConnectionError(f"TLS handshake failed: {why}") from None
    except BaseException:
        await close_forcefully(stream)
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
    connect_total: float | None = None,
    max_head: int,
    dial: Dial = dial_tcp,
    pick: Pick = ANY,
    tls: ssl.SSLContext | None = None,
) -> Backend | Passthrough | Reject:
    """Find a server of `balancer`'s pool that takes the upgrade: each try within
    `connect_timeout`, all of them within `connect_total` (None: every try may use its whole
    time, so `connect_timeout` * (1 + `retries`)).

    The server is counted as `connecting` while its handshake runs, so other handshakes see
    its load; the caller counts the session (`balancer.started`) once it owns the stream.
    """
    start = trio.current_time()
    if connect_total is None:
        connect_total = connect_timeout * (1 + balancer.retries)
    total_deadline = start + connect_total
    tried: list[ServerState] = []
    failure: _HandshakeFailed | None = None
    out_of_total = False
    while len(tried) <= balancer.retries:
        began = trio.current_time()
        server = balancer.choose(began, pick, exclude=tried)
        if server is None:
            break
        tried.append(server)
        server.connecting += 1
        # One scope per attempt: its own time, or what is left of the total if that ends first
        # (the total wins a tie, as it did when it was the outer of two scopes).
        own_deadline = began + connect_timeout
        try:
            with trio.move_on_at(min(own_deadline, total_deadline)) as attempt:
                result = await _try_server(server, upgrade, client_ip, scheme, dial, tls, max_head)
        except _HandshakeFailed as exc:
            failure = exc
        else:
            if not attempt.cancelled_caught:
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
        finally:
            server.connecting -= 1
        if attempt.cancelled_caught:
            if own_deadline >= total_deadline:
                out_of_total = True
                break
            failure = _HandshakeFailed(
                f"no answer within {connect_timeout:g}s (timeouts.connect)", TOO_SLOW
            )
        log.warning("backend %s failed: %s", server.key, failure)
        server.failed(trio.current_time())
    if out_of_total:
        failure = _HandshakeFailed(
            f"no answer within the {connect_total:g}s of timeouts.connect_total", TOO_SLOW
        )
        log.warning("backend %s failed: %s", tried[-1].key, failure)
        # The total is the client's budget: a server cut off before it had a whole attempt's
        # time (or the whole total) has not failed.
        if trio.current_time() - began >= min(connect_timeout, connect_total):
            tried[-1].failed(trio.current_time())
    if failure is None:
        return balancer.refusal(trio.current_time())
    return failure.answer


async def _try_server(
    server: ServerState,
    upgrade: UpgradeRequest,
    client_ip: str,
    scheme: str,
    dial: Dial,
    tls: ssl.SSLContext | None,
    max_head: int,
) -> Backend | Passthrough:
    try:
        stream = await connect(server, dial, tls)
    except OSError as exc:
        raise _HandshakeFailed(
            f"connect to {server.address}:{server.port}: {exc.strerror or exc}"
        ) from None
    ok = False
    try:
        result = await _handshake(server, stream, upgrade, client_ip, scheme, max_head)
        ok = isinstance(result, Backend)
        return result
    finally:
        if not ok:
            await close_forcefully(stream)


async def _handshake(
    server: ServerState,
    stream: trio.abc.Stream,
    upgrade: UpgradeRequest,
    client_ip: str,
    scheme: str,
    max_head: int,
) -> Backend | Passthrough:
    key = new_key(os.urandom(16))
    request = backend_request(upgrade, key=key, client_ip=client_ip, scheme=scheme)
    try:
        await wire_for(stream).send_all(request.head())
        head, behind = await _answer_head(stream, request, max_head)
        if not isinstance(head, _Final):
            verdict = judge_backend_response(head, key=key, upgrade=upgrade)
            if isinstance(verdict, Reject):
                raise _HandshakeFailed(verdict.reason)
            return Backend(server, stream, verdict, behind, 0.0)
        conn = head.conn
        if behind:  # to h11, no bytes at all would mean the connection ended
            conn.receive_data(behind)
        body = bytearray()
        while True:
            event = await next_event(stream, conn)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_PASSTHROUGH_BODY:
                    raise _HandshakeFailed("the backend's refusal had an oversized body")
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        answer = head.response
        return Passthrough(
            server,
            answer.status_code,
            answer.reason,
            passthrough_headers(tuple(answer.headers)),
            bytes(body),
        )
    except h11.ProtocolError:
        # h11's message may quote the backend's raw bytes; the log gets a plain description.
        raise _HandshakeFailed("the backend's answer was not valid HTTP") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise _HandshakeFailed("the backend reset the connection") from None


@dataclass(frozen=True, slots=True)
class _Final:
    """A backend's final answer head (not a 101), and the h11 connection that read it."""

    response: h11.Response
    conn: h11.Connection


async def _answer_head(
    stream: trio.abc.Stream, request: BackendRequest, max_head: int
) -> tuple[Headers | _Final, bytes]:
    """The headers of the backend's 101, or its final answer, past any other 1xx, and the
    bytes behind it.

    Each head is read whole by `read_head` before it is parsed, so its size limit does not
    depend on how the backend's bytes were split. A plain 101 is read by `switching_headers`;
    any other head by an h11 client connection, made on the first such head."""
    behind = b""
    conn: h11.Connection | None = None
    while True:
        try:
            raw, behind = await read_head(stream, max_head, behind)
        except HeadTooLarge:
            raise _HandshakeFailed(
                f"its answer head was over {max_head} bytes (security.max_header_size)",
                HEAD_TOO_LARGE,
            ) from None
        if raw is None:
            if behind:
                raise _HandshakeFailed("the backend's answer was not valid HTTP")
            raise _HandshakeFailed("the backend closed the connection without answering")
        switching = switching_headers(raw)
        if switching is not None:
            return switching, behind
        if conn is None:
            conn = _sent(request, max_head)
        conn.receive_data(raw)
        head = conn.next_event()
        if isinstance(head, h11.InformationalResponse) and head.status_code == 101:
            return tuple(head.headers), behind
        if isinstance(head, h11.Response):
            return _Final(head, conn), behind
        if not isinstance(head, h11.InformationalResponse):
            raise _HandshakeFailed("the backend's answer was not valid HTTP")


def _sent(request: BackendRequest, max_head: int) -> h11.Connection:
    """An h11 client connection that has sent `request` (already on the wire), ready to read
    the answer."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head)
    conn.send(h11.Request(method=b"GET", target=request.target, headers=list(request.headers)))
    conn.send(h11.EndOfMessage())
    return conn
