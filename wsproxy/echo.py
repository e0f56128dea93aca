"""The built-in echo backend: a real WebSocket endpoint that sends every message straight back.

Invariants:
- One task per connection does all of that connection's reading and writing, so no lock is needed.
  It answers each event (echo, pong, close) before it reads more bytes: a client that stops reading
  stops being read, and a connection holds at most one message (and its echo) in memory.
- h11 reads the request head. A request without `Upgrade` is plain HTTP (`http1.answer`): GET and
  HEAD get 200 `text/plain` "wsproxy echo backend" (a health check needs no WebSocket client),
  other methods 405; every plain answer ends the connection. A GET with `Upgrade` goes to wsproto,
  which either accepts it (any path, the client's first subprotocol, permessage-deflate when
  offered) or writes its own rejection. Bytes that arrived right behind the upgrade request are fed
  to wsproto before anything read later.
- A message is reassembled from its fragments and echoed whole, with its type (text or binary).
  One larger than `MAX_MESSAGE_SIZE` bytes (after decompression) is refused with close code 1009.
- Nothing is written after a close frame: every send checks wsproto's state first. A close from the
  peer is answered with its own code and reason; a frame that breaks the protocol gets the close
  code wsproto chose; after a close of our own we wait at most `CLOSE_TIMEOUT` for the answer.
- A peer that leaves, resets or breaks the rules is logged at DEBUG, never with a traceback. Each
  stream is closed exactly once, by its connection's task, in a `finally`.
"""

from __future__ import annotations

import logging
from typing import Final

import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import RemoteProtocolError

from wsproxy.http1 import TEXT, answer, next_event
from wsproxy.listening import ListenError, accept_forever

LOGGER = logging.getLogger(__name__)

CHUNK: Final = 65536
# Generous for an echo: ten times the proxy's default `security.max_message_size`.
MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024
# A new connection must have sent its whole request within this many seconds.
REQUEST_TIMEOUT: Final = 10.0
# After our own close frame, how long we wait for the peer's before closing TCP anyway.
CLOSE_TIMEOUT: Final = 5.0

BANNER: Final = b"wsproxy echo backend\n"
ALLOW: Final = ((b"allow", b"GET, HEAD"),)

_GONE: Final = (trio.BrokenResourceError, trio.ClosedResourceError)


class _PeerGone(Exception):
    """The peer closed or reset the connection: nothing more can be read from or written to it."""


def parse_address(address: str) -> tuple[str, int]:
    """Split "HOST:PORT" (an IPv6 host in brackets) into its parts; raise `ValueError`."""
    host, colon, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"put an IPv6 address in brackets, as in [::1]:8080, not {address!r}")
    if not colon or not host:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"the port must be a number from 0 to 65535, got {address!r}")
    return host, int(port_text)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def run_echo(address: str) -> None:
    """Serve the echo backend on `address` ("HOST:PORT") until cancelled."""
    host, port = parse_address(address)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_echo, host, port)
        for bound_host, bound_port in bound:
            LOGGER.info("echo backend listening on ws://%s", _host_port(bound_host, bound_port))


async def serve_echo(
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on `host`:`port` (0 picks a free port) and echo on every connection, forever.

    Reports the (host, port) pairs actually bound through `task_status`.
    """
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        where = _host_port(host, port)
        raise ListenError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    try:
        bound = []
        for listener in listeners:
            name = listener.socket.getsockname()
            bound.append((str(name[0]), int(name[1])))
        async with trio.open_nursery() as handlers, trio.open_nursery() as acceptors:
            for listener in listeners:
                acceptors.start_soon(
                    accept_forever, listener, handlers, echo_connection, "echo backend"
                )
            task_status.started(bound)
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


async def echo_connection(stream: trio.abc.Stream) -> None:
    """Serve one accepted connection until it ends, then close it; never raises but `Cancelled`.

    `serve_echo` runs one per TCP connection; tests drive it over in-memory streams.
    """
    peer = _peer_name(stream)
    try:
        await _serve_connection(stream, peer)
    except _PeerGone:
        LOGGER.debug("%s: peer went away", peer)
    except Exception:
        # A bug of ours: no caller can receive it, and it must not stop the other connections.
        LOGGER.exception("%s: echo connection failed", peer)
    finally:
        with trio.move_on_after(CLOSE_TIMEOUT):
            await stream.aclose()


def _peer_name(stream: trio.abc.Stream) -> str:
    if not isinstance(stream, trio.SocketStream):
        return "peer"
    try:
        name = stream.socket.getpeername()
    except OSError:  # already reset
        return "peer"
    return _host_port(str(name[0]), int(name[1]))


async def _receive(stream: trio.abc.ReceiveStream) -> bytes:
    """The next bytes from the peer; `_PeerGone` on EOF, reset or a stream we closed."""
    try:
        data = await stream.receive_some(CHUNK)
    except _GONE as exc:
        raise _PeerGone from exc
    if not data:
        raise _PeerGone
    return bytes(data)


async def _send(stream: trio.abc.SendStream, data: bytes) -> None:
    """Write `data` whole; `_PeerGone` if the peer can no longer take it (then write no more)."""
    try:
        await stream.send_all(data)
    except _GONE as exc:
        raise _PeerGone from exc


async def _serve_connection(stream: trio.abc.Stream, peer: str) -> None:
    """Answer the request: plain HTTP gets a text answer, an upgrade becomes an echo session."""
    http = h11.Connection(h11.SERVER)
    request: h11.Request | None = None
    with trio.move_on_after(REQUEST_TIMEOUT):
        try:
            request = await _read_request(stream, http)
        except h11.RemoteProtocolError as exc:
            LOGGER.debug("%s: bad HTTP request: %s", peer, exc)
            await _send(stream, answer(exc.error_status_hint, TEXT, b"bad request\n"))
            return
    if request is None:
        LOGGER.debug("%s: no complete request within %s s", peer, REQUEST_TIMEOUT)
        return

    upgrade = any(name == b"upgrade" for name, _ in request.headers)
    if request.method == b"HEAD" or (request.method == b"GET" and not upgrade):
        await _send(stream, answer(200, TEXT, BANNER, head=request.method == b"HEAD"))
        return
    if request.method != b"GET":
        await _send(stream, answer(405, TEXT, b"method not allowed\n", extra=ALLOW))
        return

    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.initiate_upgrade_connection(list(request.headers), request.target)
    except RemoteProtocolError as exc:
        LOGGER.debug("%s: upgrade refused: %s", peer, exc)
        await _send(stream, ws.send(exc.event_hint or RejectConnection()))
        return
    await _send(stream, _accept(ws))
    trailing, _ = http.trailing_data  # our h11 stopped reading at the end of the request
    ws.receive_data(trailing)
    await _EchoSession(stream, ws, peer).run()


async def _read_request(stream: trio.abc.ReceiveStream, http: h11.Connection) -> h11.Request:
    """Read one request to its end (any body is discarded); `h11.RemoteProtocolError` if bad,
    `_PeerGone` if the peer leaves first."""
    request: h11.Request | None = None
    while True:
        try:
            event = await next_event(stream, http)
        except _GONE as exc:
            raise _PeerGone from exc
        except h11.RemoteProtocolError as exc:
            if http.trailing_data[1]:  # it left in the middle of its request
                raise _PeerGone from exc
            raise
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage) and request is not None:
            return request
        elif isinstance(event, h11.ConnectionClosed):
            raise _PeerGone
        # h11.Data is the body of a plain request, which nothing here reads.


def _accept(ws: WSConnection) -> bytes:
    """The 101 for the upgrade request wsproto has just found valid (its one `Request` event)."""
    request = next(event for event in ws.events() if isinstance(event, Request))
    subprotocol = request.subprotocols[0] if request.subprotocols else None
    # wsproto enables the extension only if the client offered it.
    return ws.send(AcceptConnection(subprotocol=subprotocol, extensions=[PerMessageDeflate()]))


class _EchoSession:
    """One WebSocket connection after its handshake: the message being reassembled, the close."""

    __slots__ = ("_close_wait", "_parts", "_size", "_text", "peer", "stream", "ws")

    def __init__(self, stream: trio.abc.Stream, ws: WSConnection, peer: str) -> None:
        self.stream = stream
        self.ws = ws
        self.peer = peer
        self._parts: list[bytes] = []  # text is kept UTF-8 encoded, so its size is counted in bytes
        self._size = 0
        self._text = False
        # Given a deadline when we send a close frame of our own and start waiting for the answer.
        self._close_wait = trio.CancelScope()

    async def run(self) -> None:
        """Echo until the close handshake ends or the peer breaks the protocol; `_PeerGone`."""
        with self._close_wait:
            while True:
                for event in self.ws.events():
                    if await self._handle(event):
                        return
                self.ws.receive_data(await _receive(self.stream))
        LOGGER.debug("%s: no answer to our close frame within %s s", self.peer, CLOSE_TIMEOUT)

    async def _handle(self, event: Event) -> bool:
        """React to one wsproto event; True once the connection is finished."""
        if isinstance(event, TextMessage):
            await self._on_data(event.data.encode(), text=True, finished=event.message_finished)
        elif isinstance(event, BytesMessage):
            await self._on_data(bytes(event.data), text=False, finished=event.message_finished)
        elif isinstance(event, Ping):
            if self.ws.state is ConnectionState.OPEN:
                await _send(self.stream, self.ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            await self._on_close(event)
            return True
        return False  # Pong: nothing to do

    async def _on_data(self, data: bytes, *, text: bool, finished: bool) -> None:
        if self.ws.state is not ConnectionState.OPEN:
            return  # the rest of a message we refused, or anything after our close frame
        self._size += len(data)
        if self._size > MAX_MESSAGE_SIZE:
            self._parts.clear()
            LOGGER.debug(
                "%s: message over %d bytes, closing with 1009", self.peer, MAX_MESSAGE_SIZE
            )
            reason = f"message larger than {MAX_MESSAGE_SIZE} bytes"
            await _send(
                self.stream,
                self.ws.send(CloseConnection(code=CloseReason.MESSAGE_TOO_BIG, reason=reason)),
            )
            self._close_wait.deadline = trio.current_time() + CLOSE_TIMEOUT
            return
        if not self._parts:
            self._text = text
        self._parts.append(data)
        if finished:
            payload = b"".join(self._parts)
            self._parts.clear()
            self._size = 0
            echo = TextMessage(data=payload.decode()) if self._text else BytesMessage(data=payload)
            await _send(self.stream, self.ws.send(echo))

    async def _on_close(self, event: CloseConnection) -> None:
        state = self.ws.state
        if state is ConnectionState.REMOTE_CLOSING:
            # The peer's close: answer with its own code and reason, then we (the server) close TCP.
            await _send(self.stream, self.ws.send(event.response()))
            LOGGER.debug("%s: closed by peer with %s %r", self.peer, event.code, event.reason)
        elif state is ConnectionState.OPEN:
            # Not a frame from the peer: wsproto's verdict on a frame that broke the protocol.
            LOGGER.debug("%s: protocol error (%s): %s", self.peer, event.code, event.reason)
            await _send(
                self.stream, self.ws.send(CloseConnection(code=event.code, reason=event.reason))
            )
        # CLOSED (the answer to our close) or LOCAL_CLOSING (garbage after it): nothing to send.
