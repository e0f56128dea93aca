"""Shared fixtures: a real `websockets` echo backend, and a wsproxy in front of it, on loopback."""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trio
import websockets
from websockets.trio.server import ServerConnection, serve
from websockets.typing import Origin

from wsproxy.config import Config, parse_config
from wsproxy.handshake import accept_value
from wsproxy.server import Proxy

ORIGIN = Origin("https://app.example.com")


@dataclass
class Backend:
    """A `websockets` echo server; it keeps the requests it saw and how each session ended.

    Two messages are commands rather than echoed: "close please" makes it close with 4001,
    and "drop please" makes it drop its TCP connection without a close frame.
    """

    port: int
    host: str = "127.0.0.1"
    requests: list[websockets.Request] = field(default_factory=list)
    connections: list[ServerConnection] = field(default_factory=list)
    closes: list[tuple[int | None, str | None]] = field(default_factory=list)
    ended: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"


async def start_backend(
    nursery: trio.Nursery, *, host: str = "127.0.0.1", port: int = 0, **options: object
) -> Backend:
    holder: list[Backend] = []

    async def echo(ws: ServerConnection) -> None:
        backend = holder[0]
        assert ws.request is not None
        backend.requests.append(ws.request)
        backend.connections.append(ws)
        try:
            while True:  # recv, not `async for`: a failed send must leave no iterator to the GC
                message = await ws.recv()
                if message == "close please":
                    await ws.aclose(4001, "server bye")
                elif message == "drop please":
                    await trio.aclose_forcefully(ws.stream)
                else:
                    await ws.send(message)
        except websockets.ConnectionClosed:
            pass
        finally:
            backend.closes.append((ws.close_code, ws.close_reason))
            backend.ended.set()

    listeners = await trio.open_tcp_listeners(port, host=host)
    backend = Backend(listeners[0].socket.getsockname()[1], host)
    holder.append(backend)
    await nursery.start(
        functools.partial(serve, echo, listeners=listeners, **options)  # type: ignore[arg-type]
    )
    return backend


def proxy_config(*backend_urls: str, extra: str = "", security: str = "") -> Config:
    """A configuration on 127.0.0.1:0 routing everything to `backend_urls` round robin."""
    servers = "\n".join(f"      - url: {url}" for url in backend_urls)
    text = f"""
listen:
  - address: 127.0.0.1:0
security:
  allowed_origins: ["{ORIGIN}", "https://*.example.org"]
{security}
routes:
  - {{path: /, pool: main}}
pools:
  main:
    servers:
{servers}
{extra}
"""
    return parse_config(text, os.environ)


@dataclass
class RunningProxy:
    proxy: Proxy
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


async def start_proxy(nursery: trio.Nursery, config: Config) -> RunningProxy:
    proxy = Proxy(config)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(proxy.serve, listeners)
    return RunningProxy(proxy, listeners[0].socket.getsockname()[1])


async def raw_server(
    nursery: trio.Nursery, handle: Callable[[trio.SocketStream], Awaitable[None]]
) -> int:
    """A hand-written backend on loopback; every stream and the listener are closed after."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]

    async def serve() -> None:
        async with listener, trio.open_nursery() as handlers:
            while True:
                stream = await listener.accept()
                handlers.start_soon(_run_closing, handle, stream)

    nursery.start_soon(serve)
    return int(listener.socket.getsockname()[1])


async def accept_upgrade(stream: trio.abc.Stream, first_frames: bytes = b"") -> None:
    """Play a backend's side of the opening handshake by hand; `first_frames` ride with the 101."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += await stream.receive_some(65536)
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_value(key) + b"\r\n\r\n" + first_frames
    )


async def _run_closing(
    handle: Callable[[trio.SocketStream], Awaitable[None]], stream: trio.SocketStream
) -> None:
    async with stream:
        await handle(stream)


@pytest.fixture
async def backend(nursery: trio.Nursery) -> Backend:
    return await start_backend(nursery)


@pytest.fixture
async def proxy(nursery: trio.Nursery, backend: Backend) -> RunningProxy:
    return await start_proxy(nursery, proxy_config(backend.url))
