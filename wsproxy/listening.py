"""Listening: binding the configured addresses, and the one accept loop behind every listener
wsproxy runs (the proxy's, the admin endpoint's and the echo backend's).

Invariants:
- Every configured address is bound before the first client is accepted; an address that
  cannot be bound is a `ListenError` naming its key and address, and nothing stays bound.
  Shared ports (`workers`) are bound with SO_REUSEPORT on every address the host resolves to.
- Each accepted stream is handed at once to its handler, started in the handlers' nursery; the
  loop itself never waits on a connection. A socket listener's queue is taken in one go, with a
  checkpoint every `ACCEPT_BATCH` connections, not a scheduler round after each one.
- Only a capacity error (EMFILE, ENFILE, ENOBUFS, ENOMEM: out of descriptors or memory, which
  connections ending will free) is retried: logged at error, then accept again after
  `CAPACITY_PAUSE` seconds. A listener closed under the loop (the owner shutting down) ends it
  quietly. Any other `OSError` propagates: it is a bug to surface, not a state to wait out.
  (`trio.SocketListener.accept` already retries the harmless ones itself, such as a client
  that reset its connection while it was queued.)
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar, cast

import trio

from wsproxy.config import Config

log = logging.getLogger(__name__)

CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
CAPACITY_PAUSE: Final = 0.1  # seconds; as `trio.serve_listeners` waits
ACCEPT_BATCH: Final = 16  # connections accepted from a socket between two checkpoints
# What trio's `SocketListener.accept` skips: a connection that failed while it was queued.
_IGNORABLE_ACCEPT_ERRNOS: Final = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    if hasattr(errno, name)
)

StreamT = TypeVar("StreamT", bound=trio.abc.AsyncResource)


async def accept_forever(
    listener: trio.abc.Listener[StreamT],
    handlers: trio.Nursery,
    handle: Callable[[StreamT], Awaitable[object]],
    name: str,
) -> None:
    """Accept on `listener` and start `handle(stream)` in `handlers` for each connection, until
    cancelled or the listener is closed. `name` says whose listener it is in the log.

    A trio `SocketListener` is accepted from directly (`SocketAcceptor`): every connection
    already queued is taken in one go, where `SocketListener.accept` yields to the scheduler
    after each one."""
    if type(listener) is not trio.SocketListener:
        await _accept_loop(listener.accept, handlers, handle, name)
        return
    with SocketAcceptor(listener) as acceptor:
        # (StreamT is trio.SocketStream here, as the listener is a SocketListener)
        accept = cast("Callable[[], Awaitable[StreamT]]", acceptor.accept)
        await _accept_loop(accept, handlers, handle, name)


async def _accept_loop(
    accept: Callable[[], Awaitable[StreamT]],
    handlers: trio.Nursery,
    handle: Callable[[StreamT], Awaitable[object]],
    name: str,
) -> None:
    while True:
        try:
            stream = await accept()
        except trio.ClosedResourceError:
            log.debug("%s: the listener was closed, accepting ends", name)
            return
        except OSError as exc:
            if exc.errno not in CAPACITY_ERRNOS:
                raise
            log.error(
                "%s: accept failed with %s (%s); retrying in %gs",
                name,
                errno.errorcode[exc.errno],
                os.strerror(exc.errno),
                CAPACITY_PAUSE,
            )
            await trio.sleep(CAPACITY_PAUSE)
            continue
        handlers.start_soon(handle, stream)


class SocketAcceptor:
    """`SocketListener.accept` without a scheduler round per connection: what is queued is
    accepted at once (with a checkpoint every `ACCEPT_BATCH`, so a flood cannot hold up the
    other tasks); only an empty queue waits, in trio's own wait, which the listener's close
    wakes. The errors trio's `accept` skips are skipped alike, a closed listener is
    `ClosedResourceError`, and any other `OSError` is raised as it is.

    The kernel's accept is called on a second socket object for the listener's descriptor (the
    trio socket's own is not public). It is checked open through the trio socket before every
    use, with no await between, so a number a newer socket reused is never touched; and it
    lets go of the descriptor on exit, never closing it."""

    def __init__(self, listener: trio.SocketListener) -> None:
        self._listener = listener.socket
        self._fd = self._listener.fileno()
        self._raw = socket.socket(
            self._listener.family, self._listener.type, self._listener.proto, self._fd
        )
        try:
            self._raw.setblocking(False)  # (it is already; this tells the socket object)
        except BaseException:
            self._raw.detach()
            raise
        self._taken = 0  # accepted since the last checkpoint

    def __enter__(self) -> SocketAcceptor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._raw.detach()

    async def accept(self) -> trio.SocketStream:
        if self._taken >= ACCEPT_BATCH:
            self._taken = 0
            await trio.lowlevel.checkpoint()
        while True:
            if self._listener.fileno() != self._fd:
                raise trio.ClosedResourceError
            try:
                accepted, _ = self._raw.accept()
            except BlockingIOError:
                self._taken = 0
                await trio.lowlevel.wait_readable(self._listener)
                continue
            except OSError as exc:
                if exc.errno in _IGNORABLE_ACCEPT_ERRNOS:
                    continue
                raise
            self._taken += 1
            return trio.SocketStream(trio.socket.from_stdlib_socket(accepted))


class ListenError(Exception):
    """A configured address could not be bound (in use, not local, no permission)."""


@dataclass(frozen=True, slots=True)
class Listening:
    """A bound listener and what its configuration asks of each connection on it."""

    listener: trio.SocketListener
    proxy_protocol: bool = False  # only for a listener without a position
    position: int | None = None  # in `config.listen`, whose current settings apply


async def open_listeners(
    config: Config, *, reuse_port: bool = False
) -> tuple[list[Listening], trio.SocketListener | None]:
    """Bind every address of `config`: the client listeners, and the admin one if any; a
    failure is a `ListenError` naming the key and the address. With `reuse_port` the client
    listeners share their ports with other processes (SO_REUSEPORT)."""
    listening: list[Listening] = []
    admin_listener: trio.SocketListener | None = None
    admin = config.admin
    wanted = [
        (f"listen[{index}].address {listen.address}", listen.host, listen.port)
        for index, listen in enumerate(config.listen)
    ]
    if admin is not None:
        wanted.append((f"admin.address {admin.address}", admin.host, admin.port))
    for index, (address, host, port) in enumerate(wanted):
        shared = reuse_port and index < len(config.listen)
        try:
            if shared:
                bound = [trio.SocketListener(sock) for sock in await bind_shared(host, port)]
            else:
                bound = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            for each in listening:
                await each.listener.aclose()
            raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from None
        if index == len(config.listen):
            admin_listener = bound[0]
            for extra in bound[1:]:
                await extra.aclose()
        else:
            listening += [Listening(listener, position=index) for listener in bound]
    return listening, admin_listener


async def bind_shared(host: str, port: int, *, listen: bool = True) -> list[trio.socket.SocketType]:
    """Listeners on every address `host` resolves to, each with SO_REUSEPORT, so that other
    processes doing the same share the port and the kernel spreads connections among them.
    With `listen` False the sockets are bound only: they hold the port and take no clients."""
    infos = await trio.socket.getaddrinfo(
        host or None, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE
    )
    bound: list[trio.socket.SocketType] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(
            (info[0], info[1], info[2], "", info[4]) for info in infos
        ):
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
                if family == trio.socket.AF_INET6:
                    sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                if listen:
                    sock.listen(socket.SOMAXCONN)
            except BaseException:
                sock.close()
                raise
            bound.append(sock)
    except BaseException:
        for each in bound:
            each.close()
        raise
    return bound


def address_of(listener: trio.SocketListener) -> str:
    """Where `listener` listens, as the logs write it (a Unix socket by its path)."""
    name = listener.socket.getsockname()
    if isinstance(name, str):  # a Unix socket: a worker's admin
        return name
    return host_port(name[0], name[1])


def host_port(host: str, port: int) -> str:
    """`HOST:PORT` as written in the configuration and the logs (`[::1]:8080` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
