"""Rebalancing as arithmetic: each server's weighted share of its pool, whether the pool is out
of tolerance, and which sessions to close so the clients that reconnect land where there is room.

Invariants:
- Pure: no I/O, no clock of its own; callers pass `now` (trio's clock, in seconds).
- Room: a server that is listed, healthy and of effective weight above 0. Only room takes new
  sessions. A server that is gone (removed, down by its active check, or draining) has a share
  of 0: its sessions are to leave it. A server that only stops taking new sessions (still
  listed, up by its active check, not draining, but at weight 0 or passively ejected) is held:
  its share is its own load, so it never gives a session nor takes one.
- A room server's share is what the held servers do not hold of the pool's load (connecting +
  live sessions, on every server of the pool, removed ones included) * its effective weight /
  the sum of the room's effective weights. The shares of a pool with room add up to its load.
- Tolerance (round_robin, least_connections, random): a pool starts rebalancing when a server
  holds more than its upper bound, max((1 + tolerance) * share, ceil(share)); once started it
  goes on until no server is above its upper bound and no room server below its lower bound,
  min((1 - tolerance) * share, floor(share)). The whole-session bounds keep a small pool from
  moving one session back and forth; the lower bound is what makes a new server fill up.
- A tolerance plan simulates the closes one at a time: each takes a session from the server whose
  own sessions (those it had, less those it gave) are furthest above its share (not-room servers
  first, the pool's order on a tie) and that has one to give, and its client comes back on the
  room server furthest below its share (where the balancer sends it), until the pool is within
  its bounds. A server that a client came back to never gives a session for it, none gives so
  many that its own fall below its share, rounded down, and none gives one whose client would
  come straight back to it.
- Affinity (hash, cookie): tolerance does not apply. A session is misplaced when its server is
  gone, or is room and its affinity now names another server (`Owner`, the balancer's own
  mapping); the plan closes exactly the misplaced sessions, no others (a held server's stay).
- On each server the oldest sessions go first (earliest `started`, then `id`): they have had the
  longest of their connect-time choice, and a client moved once is the last to be moved again.
- Pacing (`next_close_at`): closes at least 1 / rate apart, and no more than max(1, floor(rate))
  in any window of one second.
- A session younger than `min_age`, or already asked to close (`pending`), is never in a plan; a
  pending one counts as having moved already.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from wsproxy.servers import ServerState


class Placed(Protocol):
    """A live session as rebalancing sees it (`registry.LiveSession`)."""

    @property
    def id(self) -> str: ...

    @property
    def server(self) -> ServerState: ...

    @property
    def started(self) -> float: ...


S = TypeVar("S", bound=Placed)
# (session, the room now) → the server its affinity names, or None when it names none
Owner = Callable[[S, Sequence[ServerState]], ServerState | None]


@dataclass(frozen=True, slots=True)
class Plan(Generic[S]):
    """What to do for one pool now."""

    rebalancing: bool
    closes: tuple[S, ...]  # in the order to close them

    def counts(self) -> Counter[ServerState]:
        """How many sessions to close from each server."""
        return Counter(session.server for session in self.closes)


def is_room(server: ServerState, now: float) -> bool:
    return server.listed and server.healthy(now) and server.effective_weight > 0


def is_gone(server: ServerState) -> bool:
    """Removed, down by its active check, or draining: its sessions are to leave it."""
    return not server.listed or not server.checked_up or server.draining


def is_held(server: ServerState, now: float) -> bool:
    """Taking no new sessions (weight 0, passively ejected) but keeping the ones it has."""
    return not is_gone(server) and not is_room(server, now)


def shares(servers: Iterable[ServerState], now: float) -> dict[ServerState, float]:
    """Each server's weighted share of the pool's load (a held server's own load, 0.0 for a
    gone one or for every server without room)."""
    pool = list(servers)
    weights = {s: s.effective_weight for s in pool if is_room(s, now)}
    if not weights:
        return dict.fromkeys(pool, 0.0)
    held = {s: float(s.load) for s in pool if is_held(s, now)}
    rest = sum(server.load for server in pool) - sum(held.values())
    room_weight = sum(weights.values())
    return {s: rest * weights[s] / room_weight if s in weights else held.get(s, 0.0) for s in pool}


def below_share(servers: Iterable[ServerState], now: float) -> list[ServerState]:
    """The room servers holding less than their share: where new sessions go while rebalancing."""
    share = shares(servers, now)
    return [s for s, part in share.items() if is_room(s, now) and s.load < part]


def upper_bound(share: float, tolerance: float) -> float:
    return max((1 + tolerance) * share, math.ceil(share))


def lower_bound(share: float, tolerance: float) -> float:
    return min((1 - tolerance) * share, math.floor(share))


def out_of_tolerance(
    loads: Mapping[ServerState, int],
    share: Mapping[ServerState, float],
    room: Collection[ServerState],
    tolerance: float,
    *,
    rebalancing: bool,
) -> bool:
    """True when a pool should start rebalancing (a server above its upper bound) or, if it
    already is, go on (that, or a room server below its lower bound). Never without room."""
    if not room:
        return False
    if any(load > upper_bound(share[s], tolerance) for s, load in loads.items()):
        return True
    return rebalancing and any(loads[s] < lower_bound(share[s], tolerance) for s in room)


def overloaded(servers: Iterable[ServerState], now: float, tolerance: float) -> list[ServerState]:
    """The servers holding more than their upper bound (all that hold any, without room)."""
    share = shares(servers, now)
    if not any(is_room(s, now) for s in share):
        return []
    return [s for s, part in share.items() if s.load > upper_bound(part, tolerance)]


def _oldest_first(session: Placed) -> tuple[float, str]:
    return session.started, session.id


def _movable(sessions: Iterable[S], now: float, min_age: float, pending: set[str]) -> list[S]:
    return sorted(
        (s for s in sessions if now - s.started >= min_age and s.id not in pending),
        key=_oldest_first,
    )


def plan_tolerance(
    servers: Sequence[ServerState],
    sessions: Iterable[S],
    now: float,
    *,
    tolerance: float,
    min_age: float,
    rebalancing: bool,
    pending: Collection[S] = (),
) -> Plan[S]:
    """The plan of a pool balanced by load (see the module's invariants). `servers` are the
    pool's, removed ones with sessions included; `rebalancing` says whether it already was."""
    share = shares(servers, now)
    room = [s for s in servers if is_room(s, now)]
    loads = {s: s.load for s in servers}
    if not out_of_tolerance(loads, share, room, tolerance, rebalancing=rebalancing):
        return Plan(False, ())

    kept = dict(loads)  # each server's own sessions, less those it gives

    def ratio(server: ServerState) -> float:
        return loads[server] / share[server] if share[server] else math.inf

    def own_ratio(server: ServerState) -> float:
        return kept[server] / share[server] if share[server] else math.inf

    def come_back_from(server: ServerState) -> ServerState:
        """Where the client of a session `server` gives comes back (the room furthest below
        its share, another than `server` on a tie)."""
        kept[server] -= 1
        loads[server] -= 1
        back = min(room, key=lambda s: (ratio(s), s is server))
        loads[back] += 1
        return back

    for session in pending:
        if session.server in loads:
            come_back_from(session.server)
    movable: dict[ServerState, deque[S]] = {s: deque() for s in servers}
    for session in _movable(sessions, now, min_age, {p.id for p in pending}):
        if session.server in movable:
            movable[session.server].append(session)
    closes: list[S] = []
    while out_of_tolerance(loads, share, room, tolerance, rebalancing=True):
        # Only a server whose own sessions exceed its share gives one: a session that came back
        # to a server (in this simulation) never makes it give another.
        sources = [s for s in servers if kept[s] > share[s] and movable[s]]
        if not sources:
            break  # what is left over is too young, or would come straight back
        source = max(sources, key=own_ratio)  # the first of the furthest on a tie
        if come_back_from(source) is source:  # no use: its client would come back to it
            kept[source] += 1
            movable[source].clear()
            continue
        closes.append(movable[source].popleft())
    return Plan(True, tuple(closes))


def plan_affinity(
    servers: Sequence[ServerState],
    sessions: Iterable[S],
    now: float,
    owner: Owner[S],
    *,
    min_age: float,
    pending: Collection[S] = (),
) -> Plan[S]:
    """The plan of a hash or cookie pool: every misplaced session that is old enough, oldest
    first. It is rebalancing while any session other than a pending one is misplaced."""
    room = [s for s in servers if is_room(s, now)]
    if not room:
        return Plan(False, ())
    roomy = set(room)

    def misplaced(session: S) -> bool:
        if session.server not in roomy:
            return is_gone(session.server)
        home = owner(session, room)
        return home is not None and home is not session.server

    asked = {p.id for p in pending}
    wrong = [s for s in sessions if s.id not in asked and misplaced(s)]
    return Plan(bool(wrong), tuple(_movable(wrong, now, min_age, asked)))


def next_close_at(recent: Sequence[float], rate: float) -> float:
    """When a pool paced at `rate` closes per second may close again, given the instants of its
    last closes (oldest first): 1 / rate after the last, and never while the last
    max(1, floor(rate)) closes lie within one second, so no window of one second ever holds
    more than that, whatever the rounding of the instants."""
    if not recent:
        return -math.inf
    most = per_second(rate)
    due = recent[-1] + 1 / rate
    if len(recent) >= most:
        due = max(due, recent[-most] + 1.0)
    return due


def per_second(rate: float) -> int:
    """How many closes a window of one second may hold at `rate` (at least one)."""
    return max(1, math.floor(rate))
