"""DNS discovery: a server URL with a host name stands for every address the name resolves to.

Invariants:
- Each address is a server of its own (see `PoolBalancer.resolved`); an address that stops
  appearing gets no new sessions, while the sessions it has run on to their end.
- A failed or empty answer changes nothing: the last good list stays (a DNS outage must not
  empty a pool). Changes are logged once, at INFO; failures at WARNING; nothing a resolver
  raises ends the loop.
- Names are resolved once before the proxy accepts its first client, then every
  `resolve_interval` (never again when it is 0). Each lookup is bounded by `RESOLVE_TIMEOUT`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from wsproxy.balancer import PoolBalancer

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]

RESOLVE_TIMEOUT: Final = 10.0  # seconds; the stub resolver's own default is 5 s, tried twice


async def resolve_tcp(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to for a TCP connection, each once, sorted."""
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


async def resolve_pool(balancer: PoolBalancer, resolve: Resolver) -> None:
    """Resolve each named server of the pool once, and update its addresses."""
    for server in balancer.hostnames():
        problem = "the answer had no addresses"
        addresses: list[str] = []
        with trio.move_on_after(RESOLVE_TIMEOUT) as waiting:
            try:
                addresses = await resolve(server.host, server.port)
            except OSError as exc:
                problem = exc.strerror or str(exc)
            except Exception:  # a resolver's bug must stop neither discovery nor the proxy
                log.exception(
                    "pool %s: resolving %s failed unexpectedly", balancer.name, server.host
                )
                continue
        if waiting.cancelled_caught:
            problem = f"no answer within {RESOLVE_TIMEOUT:g}s"
        if not addresses:
            log.warning(
                "pool %s: cannot resolve %s (%s); keeping its last addresses",
                balancer.name,
                server.host,
                problem,
            )
            continue
        added, removed = balancer.resolved(server, addresses)
        if added or removed:
            log.info(
                "pool %s: %s resolves to %s (added %s; removed %s)",
                balancer.name,
                server.host,
                ", ".join(addresses),
                ", ".join(added) or "none",
                ", ".join(removed) or "none",
            )


async def keep_resolving(balancer: PoolBalancer, resolve: Resolver, interval: float) -> None:
    """Re-resolve the pool's names every `interval` seconds, forever."""
    while True:
        await trio.sleep(interval)
        await resolve_pool(balancer, resolve)
