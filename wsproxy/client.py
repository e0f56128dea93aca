"""`wsproxy client URL`: a line-based WebSocket client built on wsproxy's own dependencies.

Invariants:
- Each line of stdin (without its line ending) goes out as one text message; each message that
  arrives is printed on a line of its own: text as it is, binary as `<N bytes: HEX>`.
- At the end of stdin the client sends a close (1000) and waits up to `CLOSE_TIMEOUT` for the
  server's; a completed close handshake is a clean end. Messages that arrive before the
  server's close are printed; a server that answers the close before its last replies sends
  them no more (RFC 6455 §5.5.1), so they are not seen. A close the server starts is answered;
  it is clean only with 1000 (normal closure).
- Every way it can fail is a `ClientError` holding one sentence: a refused handshake (its status
  and body), a connection that cannot be made, is lost, or never answers the close. A URL that
  is not a ws:// or wss:// URL is a `ValueError` from `parse_url`, before any I/O.
- One task reads the connection, one reads stdin; a lock keeps their writes whole. wsproto
  answers pings; nothing is written after a close frame.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import sys
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final
from urllib.parse import urlsplit

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
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from wsproxy.logs import log_safe

CHUNK: Final = 65536
CLOSE_TIMEOUT: Final = 5.0  # after our close, how long the server has to answer it
HANDSHAKE_TIMEOUT: Final = 10.0  # for the TCP (and TLS) connection and the server's answer
MAX_BODY: Final = 4096  # of a refusal's body, shown in the sentence
_NORMAL: Final = 1000
_GONE: Final = (trio.BrokenResourceError, trio.ClosedResourceError)


class ClientError(Exception):
    """The session could not be had or did not end cleanly; the message is one sentence."""


@dataclass(frozen=True, slots=True)
class Target:
    secure: bool
    host: str
    port: int
    resource: str  # path and query, as sent in the request line

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_url(url: str) -> Target:
    """A ws:// or wss:// URL's parts; `ValueError` with one sentence for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"not a valid URL: {url!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ValueError(f"expected a ws:// or wss:// URL, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"the URL names no host: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"a WebSocket URL carries no user name or password: {url!r}")
    if parts.fragment or url.endswith("#"):
        raise ValueError(f"a WebSocket URL has no #fragment: {url!r}")
    secure = scheme == "wss"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(secure, parts.hostname, port or (443 if secure else 80), resource)


def refusal(status: int, body: bytes) -> str:
    """The sentence for a refused handshake: status, its phrase and the body's first line."""
    text = body[:MAX_BODY].decode("utf-8", "replace").strip()
    first = text.splitlines()[0].strip() if text else ""
    try:
        phrase = f" {HTTPStatus(status).phrase}"
    except ValueError:
        phrase = ""
    shown = f": {log_safe(first)}" if first else ""  # the server's bytes: no terminal escapes
    return f"the server refused the handshake: {status}{phrase}{shown}"


def shown(message: str | bytes) -> str:
    """How a received message is printed."""
    if isinstance(message, str):
        return message
    return f"<{len(message)} bytes: {message.hex()}>"


async def run_client(url: str, origin: str | None) -> None:
    """Connect to `url`, relay stdin and stdout until the end of stdin and a clean close;
    raise `ClientError` otherwise (and `ValueError` for a bad URL, before connecting)."""
    target = parse_url(url)
    stream = await _open(target)
    try:
        ws = WSConnection(ConnectionType.CLIENT)
        session = _Session(stream, ws)
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await session.handshake(target, origin)
        await session.run()
    except trio.TooSlowError:
        raise ClientError(f"no answer to the handshake within {HANDSHAKE_TIMEOUT:g} s") from None
    finally:
        await trio.aclose_forcefully(stream)


async def _open(target: Target) -> trio.abc.Stream:
    where = f"{target.host}:{target.port}"
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            if not target.secure:
                return await trio.open_tcp_stream(target.host, target.port)
            stream = await trio.open_ssl_over_tcp_stream(
                target.host, target.port, ssl_context=ssl.create_default_context()
            )
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError as exc:
                await trio.aclose_forcefully(stream)
                cause = exc.__cause__
                why = getattr(cause, "reason", None) or cause or "the connection ended"
                raise ClientError(f"TLS with {where} failed: {why}") from None
            except BaseException:  # the deadline, mostly
                await trio.aclose_forcefully(stream)
                raise
            return stream
    except trio.TooSlowError:
        raise ClientError(f"cannot connect to {where} within {HANDSHAKE_TIMEOUT:g} s") from None
    except OSError as exc:
        raise ClientError(f"cannot connect to {where}: {_why(exc)}") from None


def _why(exc: OSError) -> str:
    """The reason a connect failed; trio puts each attempt's error in the cause."""
    causes = exc.__cause__
    if isinstance(causes, BaseExceptionGroup):
        for cause in causes.exceptions:
            if isinstance(cause, OSError) and cause.errno:
                return os.strerror(cause.errno)
    return exc.strerror or str(exc)


class _Lines:
    """Lines of a file descriptor (stdin), each read in a thread with `os.read`: a blocking read
    cannot be interrupted, so a cancelled one is abandoned, and an abandoned `os.read` holds no
    lock that the interpreter's exit would wait for (a buffered `sys.stdin` read would)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = b""
        self.ended = False

    async def next(self) -> bytes | None:
        """The next line with its ending, the unterminated rest, or None at the end."""
        while b"\n" not in self.pending and not self.ended:
            data = await trio.to_thread.run_sync(os.read, self.fd, CHUNK, abandon_on_cancel=True)
            self.ended = not data
            self.pending += data
        line, newline, self.pending = self.pending.partition(b"\n")
        if not (line or newline):
            return None
        return line + newline


class _Session:
    def __init__(self, stream: trio.abc.Stream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.writing = trio.Lock()
        self.parts: list[str | bytes] = []
        self.closing = trio.CancelScope()  # its deadline is set once our close is sent

    async def read(self) -> bytes:
        """The next bytes; b"" at the end of the connection."""
        try:
            return bytes(await self.stream.receive_some(CHUNK))
        except _GONE:
            return b""

    async def send(self, event: Event) -> None:
        async with self.writing:
            try:
                data = self.ws.send(event)
            except LocalProtocolError:
                return  # the connection closed meanwhile: nothing more goes out
            with contextlib.suppress(*_GONE):  # the reader finds out and says why
                await self.stream.send_all(data)

    async def handshake(self, target: Target, origin: str | None) -> None:
        headers = [(b"origin", origin.encode())] if origin else []
        await self.send(
            Request(host=target.host_header, target=target.resource, extra_headers=headers)
        )
        status, body = 0, b""
        while True:
            try:
                data = await self.read()
                if not data:
                    raise ClientError("the server closed the connection before it answered")
                self.ws.receive_data(data)
            except RemoteProtocolError as exc:
                raise ClientError(
                    f"the server's answer is not a WebSocket handshake: {exc}"
                ) from None
            # Lazily: frames that came with the 101 stay queued for `read_messages`.
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    return
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise ClientError(refusal(status, body))
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        raise ClientError(refusal(status, body))

    async def run(self) -> None:
        """Relay until the close handshake is done; `ClientError` unless it ended cleanly."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.send_lines)
            try:
                await self.read_messages()
            finally:
                nursery.cancel_scope.cancel()

    async def send_lines(self) -> None:
        lines = _Lines(sys.stdin.fileno())
        while (line := await lines.next()) is not None:
            text = line.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r")
            await self.send(TextMessage(data=text))
        await self.send(CloseConnection(code=_NORMAL))
        self.closing.deadline = trio.current_time() + CLOSE_TIMEOUT

    async def read_messages(self) -> None:
        with self.closing:
            while True:
                for event in self.ws.events():  # those queued first, then each read's
                    if isinstance(event, TextMessage | BytesMessage):
                        self.parts.append(
                            bytes(event.data) if isinstance(event, BytesMessage) else event.data
                        )
                        if event.message_finished:
                            _print(self.parts)
                            self.parts.clear()
                    elif isinstance(event, Ping):
                        await self.send(event.response())
                    elif isinstance(event, CloseConnection):
                        await self.closed(event)
                        return
                self.ws.receive_data(await self.read() or None)
        raise ClientError(f"the server did not answer our close within {CLOSE_TIMEOUT:g} s")

    async def closed(self, event: CloseConnection) -> None:
        if self.ws.state is ConnectionState.OPEN:  # wsproto's verdict on a broken frame
            await self.send(CloseConnection(code=event.code, reason=event.reason))
            raise ClientError(f"the server broke the protocol ({event.code} {event.reason})")
        if self.ws.state is ConnectionState.REMOTE_CLOSING:  # the server closed first
            await self.send(event.response())
            if event.code != _NORMAL:
                said = f" {event.reason}" if event.reason else ""
                raise ClientError(f"the server closed the connection with {event.code}{said}")
        elif event.code == 1006:  # made up by wsproto: no close frame came
            raise ClientError("the connection was lost without a close frame")


def _print(parts: list[str | bytes]) -> None:
    if all(isinstance(part, str) for part in parts):
        message: str | bytes = "".join(part for part in parts if isinstance(part, str))
    else:
        message = b"".join(part for part in parts if isinstance(part, bytes))
    print(shown(message), flush=True)
