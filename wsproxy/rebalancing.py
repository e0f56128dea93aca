"""The rebalancing loop of one process: it watches each pool's servers and, after they change,
closes sessions on overloaded servers at a paced rate until the pool is balanced again. What to
close is `rebalance`'s arithmetic; this module only looks, paces and closes.

Invariants:
- One task per process (`keep_balanced`) looks at every pool of the snapshot in use at least once
  a `CHECK_INTERVAL`; each pool's state (`Watch`) is kept by pool name, across reloads.
- A pool is judged only after its room changed: a server added or removed (reload, DNS), down or
  back up (health), or reweighted; the room's signature is the identities and effective weights
  of its room servers. The first look at a pool is no change. A change while the pool is within
  tolerance moves nothing; otherwise it rebalances until its plan says it is balanced (affinity
  pools: until no session is misplaced), re-planned once a `CHECK_INTERVAL` from what is live.
- Closes are paced per pool by `rebalance.next_close_at`, from the instants closes were made:
  however late a wake-up comes, no window of one second holds more than `rate` closes. With
  `workers`, each process's configuration carries its equal part of the rate
  (`workers.for_worker`).
- A close is `registry.ask_to_close(session, Close(close_code, REASON))` in a task of its own,
  so a slow client never delays the next, and a failing one never stops the loop; it is
  counted in `wsproxy_rebalance_closes_total{pool}` and the pool's `/status`. A session is
  closed only if it is still live and nobody has begun its close.
- The sessions of a draining server are its drain's to close (over the drain's window): they
  count as leaving, and rebalancing never closes one.
- Nothing is closed once the proxy is stopping: the drain closes what is left.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import trio

from wsproxy.balancer import PoolBalancer
from wsproxy.closes import Close
from wsproxy.rebalance import is_room, next_close_at, per_second, plan_affinity, plan_tolerance
from wsproxy.registry import LiveSession, Registry
from wsproxy.servers import ServerState
from wsproxy.snapshot import Snapshot

log = logging.getLogger(__name__)

CHECK_INTERVAL: Final = 1.0  # seconds between two looks at a quiet pool, and between plans
REASON: Final = "rebalancing"  # what a moved client reads: no server names


def room_signature(servers: Sequence[ServerState], now: float) -> frozenset[tuple[str, int]]:
    """What a change of the pool's room changes: its servers' identities and weights."""
    return frozenset((s.key, s.effective_weight) for s in servers if is_room(s, now))


@dataclass
class Watch:
    """One pool's rebalancing state."""

    room: frozenset[tuple[str, int]] | None = None  # None: not looked at yet
    rebalancing: bool = False  # since a change of room, until balanced again
    planned: float = -math.inf  # when the queue was planned
    queue: deque[LiveSession] = field(default_factory=deque)  # the plan's closes to come
    pending: dict[str, LiveSession] = field(default_factory=dict)  # asked to close, still live
    recent: deque[float] = field(default_factory=deque)  # instants of the last closes
    closes: int = 0


async def keep_balanced(
    registry: Registry,
    current: Callable[[], Snapshot],
    stopping: Callable[[], bool],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Rebalance the pools of the snapshot `current` gives, until cancelled."""
    watches: dict[str, Watch] = {}
    async with trio.open_nursery() as closing:
        task_status.started()
        while True:
            now = trio.current_time()
            snapshot = current()
            wake = now + CHECK_INTERVAL
            for name in [name for name in watches if name not in snapshot.balancers]:
                del watches[name]
            for name, balancer in snapshot.balancers.items():
                watch = watches.setdefault(name, Watch())
                _look(watch, balancer, registry, now)
                settings = balancer.pool.rebalance
                if settings is None or stopping() or not watch.queue:
                    continue
                if now >= next_close_at(watch.recent, settings.rate):
                    _close_next(watch, balancer, registry, closing, settings.close_code, now)
                    while len(watch.recent) > per_second(settings.rate):
                        watch.recent.popleft()
                    balancer.rebalance_closes = watch.closes
                if watch.queue:
                    wake = min(wake, next_close_at(watch.recent, settings.rate))
            await trio.sleep_until(wake)


def _look(watch: Watch, balancer: PoolBalancer, registry: Registry, now: float) -> None:
    """Notice a change of room, and re-plan a rebalancing pool when its plan is due."""
    servers = (*balancer.servers, *balancer.retired)
    room = room_signature(servers, now)
    changed = watch.room is not None and room != watch.room
    watch.room = room
    settings = balancer.pool.rebalance
    if settings is None:
        watch.rebalancing = False
        watch.queue.clear()
    elif changed or (watch.rebalancing and now >= watch.planned + CHECK_INTERVAL):
        live = registry.sessions
        watch.pending = {i: s for i, s in watch.pending.items() if s.session in live}
        mine = [s for s in registry.live() if s.balancer.name == balancer.name]
        # asked to close by us, closing anyway, or on a draining server (whose drain paces its
        # closes over its own window): either way on its way off its server
        pending = [
            s
            for s in mine
            if s.id in watch.pending or s.session.close is not None or s.server.drain is not None
        ]
        if balancer.affinity:
            plan = plan_affinity(
                servers,
                mine,
                now,
                lambda s, room: balancer.belongs(s.pick, s.server, room),
                min_age=settings.min_age,
                pending=pending,
            )
        else:
            plan = plan_tolerance(
                servers,
                mine,
                now,
                tolerance=settings.tolerance,
                min_age=settings.min_age,
                rebalancing=watch.rebalancing,
                pending=pending,
            )
        if plan.rebalancing != watch.rebalancing:
            log.info(
                "pool %s: %s",
                balancer.name,
                "rebalancing: " + ", ".join(f"{s.key} gives {n}" for s, n in plan.counts().items())
                if plan.rebalancing
                else f"balanced ({watch.closes} sessions moved so far)",
            )
        watch.rebalancing = plan.rebalancing
        watch.queue = deque(plan.closes)
        watch.planned = now
    balancer.rebalancing = watch.rebalancing
    balancer.rebalance_closes = watch.closes


def _close_next(
    watch: Watch,
    balancer: PoolBalancer,
    registry: Registry,
    closing: trio.Nursery,
    code: int,
    now: float,
) -> None:
    """Ask the next session of the queue that is still live and not closing to close."""
    while watch.queue:
        live = watch.queue.popleft()
        if live.session in registry.sessions and live.session.close is None:
            age = now - live.started
            log.debug(
                "rebalance: closing session %s on %s, %.3fs old", live.id, live.server.key, age
            )
            closing.start_soon(registry.ask_to_close, live.session, Close(code, REASON))
            watch.pending[live.id] = live
            watch.recent.append(now)
            watch.closes += 1
            registry.metrics.rebalance_closes.inc(balancer.name)
            return
