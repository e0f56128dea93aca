"""Shared fixtures: a real `websockets` echo backend, and a wsproxy in front of it, on loopback."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import pytest
import trio
import websockets
from websockets.trio.server import ServerConnection, serve
from websockets.typing import Origin

from wsproxy.config import Config, parse_config
from wsproxy.server import Proxy

ORIGIN = Origin("https://app.example.com")


@dataclass
class Backend:
    """A `websockets` echo server; it keeps the handshake requests it saw."""

    port: int
    requests: list[websockets.Request] = field(default_factory=list)
    connections: list[ServerConnection] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


async def start_backend(nursery: trio.Nursery, **options: object) -> Backend:
    holder: list[Backend] = []

    async def echo(ws: ServerConnection) -> None:
        backend = holder[0]
        assert ws.request is not None
        backend.requests.append(ws.request)
        backend.connections.append(ws)
        try:
            async for message in ws:
                await ws.send(message)
        except websockets.ConnectionClosed:
            pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    backend = Backend(listeners[0].socket.getsockname()[1])
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


@pytest.fixture
async def backend(nursery: trio.Nursery) -> Backend:
    return await start_backend(nursery)


@pytest.fixture
async def proxy(nursery: trio.Nursery, backend: Backend) -> RunningProxy:
    return await start_proxy(nursery, proxy_config(backend.url))
