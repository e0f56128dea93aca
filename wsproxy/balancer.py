"""Where a session goes: the route table, and each pool's choice of backend server.

Invariants:
- Pure: no I/O, no clock of its own. Callers pass `now` (trio's clock, in seconds), and random
  choices come from the `random.Random` given, so a seeded one repeats them exactly.
- Routes are tried in order and the first match wins; `host` is exact or `*.suffix` (never the
  bare suffix), compared without the port and case-insensitively; `path` is a plain prefix.
- A server can be chosen only while it is listed, healthy, above effective weight 0 (not
  draining, not set to 0 by its agent), under `max_connections_per_server` and not already
  tried in this attempt. Every weighing uses `ServerState.effective_weight`; "weight" below
  means it.
- Round robin is the smooth weighted kind (nginx's): over any run of sum(weights) choices each
  server is picked exactly `weight` times, and never in a burst. It also breaks the ties of
  least_connections, and serves hash and cookie requests that carry no key.
- Random is weighted power of two choices: two distinct servers drawn by weight, the one with
  less load per weight wins, the first drawn on a tie.
- Hash keys (see `affinity`) and sticky cookies name a server without per-process state; when
  that server can't be used the key falls to the next in rendezvous order (hash) or to round
  robin (cookie, which then gets a new cookie).
- While the pool rebalances (`rebalancing`, set by the rebalancing loop), a pool balanced by load
  sends new sessions only to servers below their share (`rebalance.below_share`) while there are
  any; hash and cookie pools keep following their keys, which is where rebalancing sends them.
- A configured server with a host name stands for the addresses it resolves to (`resolved`);
  until the first answer it is dialled by name. An address that goes away is unlisted: no new
  sessions, and its live ones keep their state until they end.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from wsproxy.affinity import (
    cookie_value,
    rendezvous_score,
    request_key,
    set_cookie,
    sticky_token,
)
from wsproxy.config import Pool, Route, Server
from wsproxy.handshake import Reject, UpgradeRequest
from wsproxy.rebalance import below_share, shares
from wsproxy.servers import ServerState, ServerStates, ServerStatus
from wsproxy.units import is_address

RETRY_AFTER: Final = ((b"retry-after", b"5"),)
AFFINITY_MODES: Final = ("hash", "cookie")


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


@dataclass(frozen=True, slots=True)
class Pick:
    """What one handshake brings to the choice: its hash key, or its sticky cookie's token."""

    key: str | None = None
    sticky: str | None = None


ANY: Final = Pick()


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A pool as `/status` shows it."""

    pool: str
    balance: str
    healthy: int  # servers that can take a session now
    sessions: int
    rebalancing: bool  # closing sessions on servers above their share, new ones below it
    rebalance_closes: int  # sessions closed to rebalance, since the process started
    tolerance: float | None  # its rebalance tolerance (0.25 for 25 %); None: no rebalancing
    servers: tuple[ServerStatus, ...]  # listed ones first, in configuration order


class PoolBalancer:
    """Chooses a server of one pool for each new session, and keeps the pool's server list."""

    def __init__(
        self,
        pool: Pool,
        states: ServerStates | None = None,
        *,
        rng: random.Random | None = None,
        secret: bytes | None = None,
    ) -> None:
        self.pool = pool
        self.name = pool.name
        self.retries = pool.retries
        self.limit = pool.max_connections_per_server
        self._states = ServerStates() if states is None else states
        self._rng = rng or random.Random()
        # `secret` stands in for a secret the pool does not configure; the proxy passes one per
        # process, so a reload keeps honouring the cookies it gave out.
        configured = pool.cookie.secret
        self._secret = configured.encode() if configured else secret or os.urandom(32)
        self._tokens: dict[str, str] = {}
        # each configured server → the states it stands for (one per address)
        self._expanded: dict[str, list[ServerState]] = {
            server.url: [self._states.get(self.name, server)] for server in pool.servers
        }
        self.servers: list[ServerState] = []
        self.retired: list[ServerState] = []  # unlisted, with sessions still running
        self.rebalancing = False  # kept by the rebalancing loop
        self.rebalance_closes = 0
        self._relist()

    # ---- choosing

    def pick_for(self, upgrade: UpgradeRequest, client_ip: str) -> Pick:
        """The affinity this pool's mode reads from a request."""
        if self.pool.balance == "hash" and self.pool.hash_on is not None:
            return Pick(key=request_key(self.pool.hash_on, upgrade, client_ip))
        if self.pool.balance == "cookie":
            return Pick(sticky=cookie_value(upgrade.headers, self.pool.cookie.name))
        return ANY

    def choose(
        self, now: float, pick: Pick = ANY, exclude: Iterable[ServerState] = ()
    ) -> ServerState | None:
        """The server for a new session, or None when no server can take it."""
        skip = set(map(id, exclude))
        candidates = [
            s
            for s in self.servers
            if s.available(now) and not s.full(self.limit) and id(s) not in skip
        ]
        if not candidates:
            return None
        mode = self.pool.balance
        if pick != ANY and (owner := self.owner(pick, candidates)) is not None:
            return owner
        if self.rebalancing and mode not in AFFINITY_MODES:
            room = set(below_share((*self.servers, *self.retired), now))
            candidates = [s for s in candidates if s in room] or candidates
        if mode == "least_connections":
            return _round_robin(_least_loaded(candidates))
        if mode == "random":
            return self._two_choices(candidates)
        return _round_robin(candidates)

    def owner(self, pick: Pick, candidates: Sequence[ServerState]) -> ServerState | None:
        """The server of `candidates` that `pick`'s affinity names: the one its sticky cookie
        names, or the best rendezvous score for its key. None when it names none of them."""
        if pick.sticky is not None:
            for server in candidates:
                if self.token(server) == pick.sticky:
                    return server
        if pick.key is not None and candidates:
            key = pick.key.encode("utf-8", "surrogateescape")
            return max(candidates, key=lambda s: rendezvous_score(key, s.key, s.effective_weight))
        return None

    @property
    def affinity(self) -> bool:
        """True for hash and cookie pools, whose sessions belong to a server by their key."""
        return self.pool.balance in AFFINITY_MODES

    def belongs(
        self, pick: Pick, server: ServerState, room: Sequence[ServerState]
    ) -> ServerState | None:
        """Where a session placed on `server` with `pick` belongs among `room` now. A cookie
        session holds `server`'s cookie since its 101, whatever it sent; None: anywhere."""
        if self.pool.balance == "cookie":
            pick = Pick(sticky=self.token(server))
        return self.owner(pick, room)

    def refusal(self, now: float) -> Reject:
        """Why `choose` found nothing on a first try: no healthy server, none taking new
        sessions (draining or at weight 0), or all of them full."""
        if any(s.available(now) for s in self.servers):
            return Reject(
                503,
                f"every server in pool {self.name} is at max_connections_per_server",
                RETRY_AFTER,
            )
        if any(s.healthy(now) for s in self.servers):
            return Reject(503, f"no server in pool {self.name} takes new sessions now")
        return Reject(503, f"no healthy server in pool {self.name}")

    def any_healthy(self, now: float) -> bool:
        """Whether a server can take a new session now (healthy, effective weight above 0)."""
        return any(s.available(now) for s in self.servers)

    def token(self, server: ServerState) -> str:
        token = self._tokens.get(server.key)
        if token is None:
            token = self._tokens[server.key] = sticky_token(self._secret, server.key)
        return token

    def sticky_header(
        self, server: ServerState, pick: Pick, *, secure: bool
    ) -> tuple[tuple[bytes, bytes], ...]:
        """The `Set-Cookie` the client's 101 carries in cookie mode, unless it already sticks."""
        if self.pool.balance != "cookie":
            return ()
        token = self.token(server)
        if pick.sticky == token:
            return ()
        return (set_cookie(self.pool.cookie.name, token, secure=secure),)

    def _two_choices(self, candidates: list[ServerState]) -> ServerState:
        first = self._weighted_draw(candidates)
        if len(candidates) == 1:
            return first
        second = self._weighted_draw([s for s in candidates if s is not first])
        return (
            second
            if second.load * first.effective_weight < first.load * second.effective_weight
            else first
        )

    def _weighted_draw(self, servers: Sequence[ServerState]) -> ServerState:
        point = self._rng.random() * sum(s.effective_weight for s in servers)
        for server in servers:
            point -= server.effective_weight
            if point < 0:
                return server
        return servers[-1]  # float rounding at the very end

    # ---- sessions

    def started(self, server: ServerState) -> None:
        server.sessions += 1
        server.sessions_total += 1

    def ended(self, server: ServerState) -> None:
        server.sessions -= 1
        if not server.listed and not server.load:
            self._prune()

    # ---- the server list

    def hostnames(self) -> list[Server]:
        """The configured servers whose host is a name to resolve."""
        return [server for server in self.pool.servers if not is_address(server.host)]

    def resolved(self, server: Server, addresses: Sequence[str]) -> tuple[list[str], list[str]]:
        """`server`'s name now resolves to `addresses`: (identities added, identities removed)."""
        before = self._expanded[server.url]
        after = [
            self._states.get(self.name, server, address) for address in dict.fromkeys(addresses)
        ]
        self._expanded[server.url] = after
        kept = set(map(id, after))
        gone = [state for state in before if id(state) not in kept]
        for state in gone:
            state.listed = False
            self.retired.append(state)
        self._relist()
        known = set(map(id, before))
        return [s.key for s in after if id(s) not in known], [s.key for s in gone]

    def status(self, now: float) -> PoolStatus:
        self._prune()
        everyone = (*self.servers, *self.retired)
        share = shares(everyone, now)
        return PoolStatus(
            pool=self.name,
            balance=self.pool.balance,
            healthy=sum(1 for s in self.servers if s.available(now)),
            sessions=sum(s.sessions for s in everyone),
            rebalancing=self.rebalancing,
            rebalance_closes=self.rebalance_closes,
            tolerance=self.pool.rebalance.tolerance if self.pool.rebalance else None,
            servers=tuple(s.status(now, round(share[s], 3)) for s in everyone),
        )

    def _relist(self) -> None:
        self.servers = [state for states in self._expanded.values() for state in states]
        self._prune()

    def _prune(self) -> None:
        """Forget unlisted servers whose last session ended; drop re-listed ones from `retired`."""
        for state in self.retired:
            if not state.listed and not state.load:
                self._states.drop(self.name, state)
        self.retired = [s for s in self.retired if not s.listed and s.load]


def _least_loaded(servers: list[ServerState]) -> list[ServerState]:
    """The servers with the least load per weight (all of them on a tie)."""
    best = servers[0]
    for server in servers[1:]:
        if server.load * best.effective_weight < best.load * server.effective_weight:
            best = server
    best_load, best_weight = best.load, best.effective_weight
    return [s for s in servers if s.load * best_weight == best_load * s.effective_weight]


def _round_robin(servers: list[ServerState]) -> ServerState:
    """Smooth weighted round robin over `servers` (nginx's): the highest running score wins."""
    total = 0
    best = servers[0]
    for server in servers:
        weight = server.effective_weight
        server.current += weight
        total += weight
        if server.current > best.current:
            best = server
    best.current -= total
    return best
