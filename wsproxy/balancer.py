"""Where a session goes: the route table, and each pool's choice of backend server.

Invariants:
- Pure: no I/O, no clock of its own. Callers pass `now` (trio's clock, in seconds).
- Routes are tried in order and the first match wins; `host` is exact or `*.suffix` (never the
  bare suffix), compared without the port and case-insensitively; `path` is a plain prefix.
- Round robin is the smooth weighted kind (nginx's): over any run of sum(weights) choices each
  healthy server is picked exactly `weight` times, and never in a burst.
- A server that fails to connect or handshake is ejected for a backoff that doubles while it
  keeps failing (up to `MAX_EJECTION`); one success brings it back at once.
- Server state is keyed by the server's URL, not by a config object, so it can outlive a reload.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from wsproxy.config import Pool, Route, Server

FIRST_EJECTION: Final = 1.0  # seconds; nginx's fail_timeout is 10 s, we retry sooner
MAX_EJECTION: Final = 30.0


def host_without_port(host: str) -> str:
    """`Host` header value → lower-cased host name (IPv6 brackets kept)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if ":" in host else host


def route_matches(route: Route, host: str, path: str) -> bool:
    if not path.startswith(route.path):
        return False
    if route.host is None:
        return True
    name = host_without_port(host)
    pattern = route.host.lower()
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    return name == pattern


def find_route(routes: Iterable[Route], host: str, target: str) -> Route | None:
    """The first route matching `host` and the path part of `target`, if any."""
    path = target.split("?", 1)[0]
    for route in routes:
        if route_matches(route, host, path):
            return route
    return None


class ServerState:
    """What the proxy knows about one backend server, across sessions."""

    __slots__ = (
        "current",
        "ejected_until",
        "failures",
        "host",
        "port",
        "sessions",
        "url",
        "weight",
    )

    def __init__(self, server: Server) -> None:
        self.url = server.url
        self.host = server.host
        self.port = server.port
        self.weight = server.weight
        self.current = 0  # smooth weighted round robin's running score
        self.sessions = 0  # live sessions on this server
        self.failures = 0  # consecutive connect or handshake failures
        self.ejected_until = 0.0

    def healthy(self, now: float) -> bool:
        return now >= self.ejected_until


class PoolBalancer:
    """Chooses a server of one pool for each new session."""

    def __init__(self, pool: Pool, known: Mapping[str, ServerState] | None = None) -> None:
        self.name = pool.name
        self.retries = pool.retries
        known = known or {}
        self.servers: list[ServerState] = []
        for server in pool.servers:
            state = known.get(server.url) or ServerState(server)
            state.weight = server.weight
            self.servers.append(state)

    def choose(self, now: float, exclude: Iterable[ServerState] = ()) -> ServerState | None:
        """The next healthy server not in `exclude`, or None when there is none."""
        skip = set(map(id, exclude))
        candidates = [s for s in self.servers if s.healthy(now) and id(s) not in skip]
        if not candidates:
            return None
        total = 0
        best = candidates[0]
        for server in candidates:
            server.current += server.weight
            total += server.weight
            if server.current > best.current:
                best = server
        best.current -= total
        return best

    def any_healthy(self, now: float) -> bool:
        return any(s.healthy(now) for s in self.servers)

    @staticmethod
    def failed(server: ServerState, now: float) -> None:
        server.failures += 1
        backoff = min(FIRST_EJECTION * 2 ** min(server.failures - 1, 16), MAX_EJECTION)
        server.ejected_until = now + backoff

    @staticmethod
    def succeeded(server: ServerState) -> None:
        server.failures = 0
        server.ejected_until = 0.0
