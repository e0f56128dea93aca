"""What one configuration is served with: the configuration, its balancers and its TLS contexts,
built together by `build_snapshot` and swapped whole.

Invariants:
- A `Snapshot` is frozen: a reload builds a new one and swaps one reference, so a reader that
  took one sees a configuration, balancers and contexts that belong together.
- `build_snapshot` is the one check of a file that parsed: it raises `ConfigError` when a
  certificate, key or CA file is unusable. The proxy builds with it at start and on reload, and
  the supervisor of `workers` validates a reloaded file with it before any worker reads it.
- While a snapshot is in use its pools are kept up (`keep_up`: name lookups, health checks);
  the upkeep of a snapshot ends when the next one's begins.
- Balancers keep their server state in the `ServerStates` they are given, so a server listed
  before and after a reload keeps its state (by identity) across the swap; `retire` marks the
  servers a new snapshot no longer lists.
"""

from __future__ import annotations

import dataclasses
import random
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import trio

from wsproxy.balancer import PoolBalancer, PoolStatus
from wsproxy.config import Config
from wsproxy.discovery import Resolver, keep_resolving, resolve_pool
from wsproxy.health import Agent, Probe, prober, watch_pool
from wsproxy.servers import ServerStates
from wsproxy.tls import contexts_for
from wsproxy.upstream import Dial


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One configuration and everything derived from it."""

    config: Config
    balancers: Mapping[str, PoolBalancer]  # by pool name
    listener_tls: Sequence[ssl.SSLContext | None]  # by position in `config.listen`
    pool_tls: Mapping[str, ssl.SSLContext]  # for the pools with wss:// servers

    def status(self, now: float) -> list[PoolStatus]:
        """Each pool's servers at `now`: health, live sessions and totals (as `/status`)."""
        return [balancer.status(now) for balancer in self.balancers.values()]


def build_snapshot(
    config: Config,
    servers: ServerStates | None = None,
    *,
    rng: random.Random | None = None,
    secret: bytes | None = None,
) -> Snapshot:
    """`config` ready to serve; raises `ConfigError` naming every unusable TLS file.

    `servers` keeps the balancers' server state (a fresh registry when only checking);
    `secret` signs sticky cookies for pools that configure no secret of their own."""
    listener_tls, pool_tls = contexts_for(config)
    states = ServerStates() if servers is None else servers
    balancers = {
        name: PoolBalancer(pool, states, rng=rng, secret=secret)
        for name, pool in config.pools.items()
    }
    return Snapshot(
        config, MappingProxyType(balancers), tuple(listener_tls), MappingProxyType(pool_tls)
    )


def restartless(old: Config, new: Config) -> tuple[Config, list[str]]:
    """`new` with what a reload cannot change (bound addresses, admin, workers) kept as in
    `old`, and the names of the settings so kept that `new` changed."""
    listen_moved = [(x.host, x.port) for x in new.listen] != [(x.host, x.port) for x in old.listen]
    kept = dataclasses.replace(
        new,
        listen=old.listen if listen_moved else new.listen,
        admin=old.admin,
        workers=old.workers,
    )
    moved = [
        name
        for name, changed in (
            ("listen addresses", listen_moved),
            ("admin", new.admin != old.admin),
            ("workers", new.workers != old.workers),
        )
        if changed
    ]
    return kept, moved


def retire(old: Snapshot, new: Snapshot, servers: ServerStates) -> None:
    """Servers of `old` that `new` no longer lists take no new sessions; those with sessions
    stay visible (and counted) in their pool of `new` until the last one ends."""
    listed = {id(s) for balancer in new.balancers.values() for s in balancer.servers}
    for name, balancer in old.balancers.items():
        gone = [s for s in (*balancer.servers, *balancer.retired) if id(s) not in listed]
        for state in gone:
            state.listed = False
        balancer.retired = [s for s in gone if s.load]
        for state in gone:
            if not state.load:
                servers.drop(name, state)
        if name in new.balancers:
            new.balancers[name].retired += balancer.retired
    for balancer in new.balancers.values():
        check = balancer.pool.health_check
        for state in balancer.servers:
            if check is None:
                state.forget_checks()
            if check is None or not check.agent:
                state.forget_agent()


async def resolve_names(snapshot: Snapshot, resolve: Resolver) -> None:
    """Resolve the host names of every pool of `snapshot` once."""
    for balancer in snapshot.balancers.values():
        if balancer.hostnames():
            await resolve_pool(balancer, resolve)


async def keep_up(
    snapshot: Snapshot,
    *,
    resolve: Resolver,
    dial: Dial,
    probe: Probe | None,
    rng: random.Random,
    agent: Agent | None = None,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Re-resolve names and check health for the pools of `snapshot` (with `probe`, or by
    default a probe that dials with `dial`; agent reports to `agent`) until the scope given to
    `task_status` is cancelled."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            for balancer in snapshot.balancers.values():
                pool = balancer.pool
                if balancer.hostnames() and pool.resolve_interval:
                    nursery.start_soon(keep_resolving, balancer, resolve, pool.resolve_interval)
                if pool.health_check is not None:
                    checks = probe or prober(dial, snapshot.pool_tls.get(balancer.name))
                    check = pool.health_check
                    nursery.start_soon(watch_pool, balancer, check, checks, rng, agent)
            task_status.started(scope)
