"""The admin view of a supervisor and its workers (`workers` > 1): each worker's answers merged
into the documents one process gives, so the admin endpoint serves either without knowing which.

Invariants:
- `FleetView` is an `admin.AdminView`; it keeps no figures of its own but each worker's last
  `/metrics` and the totals of its earlier lives (`Member.metrics`, `Member.base`), so totals
  never go down: a worker that does not answer counts with its last answer.
- The merging is pure: `parse_status`, `merge_pools`, `merge_status`, `not_ready_because` and
  `merge_metrics` read values and return values. Counts are summed; a server's health is the
  best any worker sees (a session may go to that worker), with that worker's check problem; a
  server is listed if any worker lists it and ejected for the shortest time any worker says;
  its effective weight is the highest any worker weighs it with, its agent weight the first
  one reported, and it drains if any worker drains it, for the longest time left. Each worker
  rebalances its own sessions, so a server's share is the sum of the workers' shares (a share
  of the summed sessions), and a pool is rebalancing if any worker's is. Histories are summed
  per server at each sample time (`history.merge_histories`).
- A worker's answer that is not what a worker of this version gives counts as no answer.
- `/sessions` is selected again from the union of the workers' lists. An action, already
  checked and parsed by the supervisor, goes to every worker in its normal form; it is done if
  any worker did it (a session lives in one worker; every worker knows every server).
- A drain that was done stands until its undrain: `restore` gives it to a worker that becomes
  ready later (restarted, or not yet ready when the drain came), so no worker sends new
  sessions to a drained server. What stands is what the workers were left with, whichever
  spelling (a server's identity or its URL) each action used: an undrain by URL ends the drains
  of each of its addresses, and an undrain of one address of a URL that stands drained stands
  itself (replayed after that drain), until a drain of that address or URL replaces it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

import trio

from wsproxy import __version__
from wsproxy.admin import ProcessStatus
from wsproxy.adminapi import (
    Action,
    Drain,
    SessionQuery,
    SessionRow,
    Undrain,
    action_body,
    action_target,
    parse_sessions,
    query_target,
    select_sessions,
)
from wsproxy.balancer import PoolStatus
from wsproxy.history import merge_histories, parse_history
from wsproxy.metrics import Family, Gauge, merge, render
from wsproxy.servers import ServerStatus, url_of

HEALTH_ORDER: Final = ("up", "ejected", "down")  # best first
_SUMMED: Final = ("sessions", "connecting", "sessions_total", "failures_total", "share")

Answer = tuple[int, str]  # a worker's answer to one admin request: status, body


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker in the supervisor's `/status`."""

    index: int
    pid: int | None  # None before its first start
    running: bool  # it answered this `/status`
    restarts: int
    sessions: int


@dataclass(frozen=True, slots=True)
class FleetStatus(ProcessStatus):
    """The supervisor's `/status`: one process's document over all workers, and each worker."""

    workers: tuple[WorkerStatus, ...]


class Member(Protocol):
    """A worker as the fleet view reads it (`workers.Worker`)."""

    metrics: str  # its last `/metrics` in this life, without the supervisor's own families
    base: str  # the totals of its earlier lives

    @property
    def index(self) -> int: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def restarts(self) -> int: ...

    async def ask(self, path: str, post: bytes | None = None) -> Answer | None:
        """Its answer to `GET path` (`POST path` with the body `post`), or None (not running,
        not ready, or silent)."""


class Supervised(Protocol):
    """The supervisor as the fleet view reads it (`workers.Supervisor`)."""

    @property
    def stopping(self) -> bool: ...

    @property
    def workers(self) -> Sequence[Member]: ...

    def own_metrics(self) -> list[Family]:
        """The families the supervisor counts itself, in place of the workers' own."""


class FleetView:
    """The admin view of a supervisor: its workers' answers, merged."""

    def __init__(self, supervisor: Supervised) -> None:
        self.supervisor = supervisor
        # drains done (and undrains of one address under a URL's drain), by pool and server,
        # in the order to replay them
        self.standing: dict[tuple[str, str], Drain | Undrain] = {}

    async def _ask_all(self, path: str, post: bytes | None = None) -> list[Answer | None]:
        members = self.supervisor.workers
        answers: list[Answer | None] = [None] * len(members)

        async def ask(index: int, member: Member) -> None:
            answers[index] = await member.ask(path, post)

        async with trio.open_nursery() as nursery:
            for index, member in enumerate(members):
                nursery.start_soon(ask, index, member)
        return answers

    async def not_ready(self) -> str:
        if self.supervisor.stopping:
            return "draining"
        answers = await self._ask_all("/readyz")
        return not_ready_because([m.index for m in self.supervisor.workers], answers)

    async def status(self) -> FleetStatus:
        problem = await self.not_ready()
        answers = await self._ask_all("/status")
        documents = [parse_status(answer) for answer in answers]
        return merge_status(problem, self.supervisor.stopping, self.supervisor.workers, documents)

    async def metrics(self) -> str:
        own = self.supervisor.own_metrics()
        answers = await self._ask_all("/metrics")
        members = self.supervisor.workers
        for member, answer in zip(members, answers, strict=True):
            if answer is not None and answer[0] == 200:
                member.metrics = without(answer[1], [family.name for family in own])
        answering = sum(1 for answer in answers if answer is not None and answer[0] == 200)
        return merge_metrics([(m.base, m.metrics) for m in members], own, answering)

    async def sessions(self, query: SessionQuery) -> list[SessionRow]:
        answers = await self._ask_all(query_target(query))
        return merge_sessions(answers, query)

    async def act(self, action: Action) -> bool:
        answers = await self._ask_all(action_target(action), action_body(action))
        done = any(answer is not None and answer[0] == 200 for answer in answers)
        if done and isinstance(action, Drain | Undrain):
            self._stand(action)
        return done

    def _stand(self, action: Drain | Undrain) -> None:
        """Keep what the workers were left with after `action` (see the module's invariants)."""
        pool, server = action.pool, action.server
        draining = isinstance(action, Drain)
        for (of, named), done in list(self.standing.items()):
            if of != pool or (named != server and url_of(named) != server):
                continue  # neither that server nor one of its addresses
            # a drain replaces its own spelling and the undrains it covers; an undrain ends all
            if not draining or named == server or isinstance(done, Undrain):
                del self.standing[of, named]
        if draining or (pool, url_of(server)) in self.standing:
            self.standing[pool, server] = action

    async def restore(self, member: Member) -> None:
        """Give `member`, just become ready, every drain that stands (and the undrains of
        single addresses that follow them)."""
        for done in list(self.standing.values()):
            await member.ask(action_target(done), action_body(done))


def merge_sessions(answers: Sequence[Answer | None], query: SessionQuery) -> list[SessionRow]:
    """The sessions `query` lists, from each worker's answer to it."""
    rows: list[SessionRow] = []
    for answer in answers:
        if answer is not None and answer[0] == 200:
            rows += parse_sessions(answer[1]) or []
    return select_sessions(rows, query)


def not_ready_because(indexes: Sequence[int], answers: Sequence[Answer | None]) -> str:
    """Why the workers (numbered `indexes`) should get no new sessions, from their `/readyz`
    answers: the first one that is not ready says why; none answering is not ready either."""
    if all(answer is None for answer in answers):
        return "no worker is running"
    for index, answer in zip(indexes, answers, strict=True):
        if answer is not None and answer[0] != 200:
            return f"worker {index}: {answer[1].strip().removeprefix('not ready: ')}"
    return ""


def parse_status(answer: Answer | None) -> ProcessStatus | None:
    """A worker's `/status` answer as data, or None for no answer or one no worker gives."""
    if answer is None or answer[0] != 200:
        return None
    try:
        document = json.loads(answer[1])
        pools = tuple(_pool(pool) for pool in document.pop("pools"))
        history = parse_history(document.pop("history"))
        return ProcessStatus(**document, pools=pools, history=history)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _pool(pool: dict[str, Any]) -> PoolStatus:
    servers = tuple(ServerStatus(**server) for server in pool.pop("servers"))
    return PoolStatus(**pool, servers=servers)


def merge_status(
    problem: str,
    draining: bool,
    members: Sequence[Member],
    documents: Sequence[ProcessStatus | None],
) -> FleetStatus:
    """The supervisor's `/status` from each worker's (None: it did not answer)."""
    present = [doc for doc in documents if doc is not None]
    return FleetStatus(
        version=__version__,
        ready=not problem,
        not_ready_because=problem,
        draining=draining,
        connections=sum(doc.connections for doc in present),
        sessions=sum(doc.sessions for doc in present),
        pools=merge_pools([doc.pools for doc in present]),
        history=merge_histories([doc.history for doc in present]),
        workers=tuple(
            WorkerStatus(
                index=member.index,
                pid=member.pid,
                running=doc is not None,
                restarts=member.restarts,
                sessions=doc.sessions if doc is not None else 0,
            )
            for member, doc in zip(members, documents, strict=True)
        ),
    )


def merge_pools(each: Sequence[Sequence[PoolStatus]]) -> tuple[PoolStatus, ...]:
    """The pools of several workers as one, in the order they are first seen, each pool's
    servers too (see the module's invariants for how each figure merges)."""
    pools: dict[str, PoolStatus] = {}
    servers: dict[str, dict[str, ServerStatus]] = {}
    for worker_pools in each:
        for pool in worker_pools:
            have = pools.get(pool.pool)
            if have is None:
                pools[pool.pool] = pool
            else:
                pools[pool.pool] = replace(
                    have,
                    healthy=max(have.healthy, pool.healthy),
                    sessions=have.sessions + pool.sessions,
                    rebalancing=have.rebalancing or pool.rebalancing,
                    rebalance_closes=have.rebalance_closes + pool.rebalance_closes,
                )
            known = servers.setdefault(pool.pool, {})
            for server in pool.servers:
                seen = known.get(server.server)
                known[server.server] = server if seen is None else merge_server(seen, server)
    return tuple(
        replace(pool, servers=tuple(servers[name].values())) for name, pool in pools.items()
    )


def merge_server(first: ServerStatus, second: ServerStatus) -> ServerStatus:
    """One server as two workers see it."""
    best = min(first, second, key=lambda s: HEALTH_ORDER.index(s.health))  # first on a tie
    summed = {name: getattr(first, name) + getattr(second, name) for name in _SUMMED}
    summed["share"] = round(summed["share"], 3)  # as each worker rounds it
    return replace(
        first,
        health=best.health,
        check_problem=best.check_problem,
        listed=first.listed or second.listed,
        ejected_for=min(first.ejected_for, second.ejected_for),
        effective_weight=max(first.effective_weight, second.effective_weight),
        agent_weight=first.agent_weight if first.agent_weight is not None else second.agent_weight,
        draining=first.draining or second.draining,
        drain_left=max(first.drain_left, second.drain_left),
        **summed,
    )


def merge_metrics(lives: Sequence[tuple[str, str]], own: Sequence[Family], answering: int) -> str:
    """The supervisor's `/metrics`: each worker's (the totals of its earlier lives, its last
    text), its own families, and how many workers answered."""
    running = Gauge(
        "wsproxy_workers", "Worker processes answering the supervisor.", (), [((), answering)]
    )
    texts = [text for life in lives for text in life if text]
    return merge(
        [*texts, render([*own, running])],
        highest={"wsproxy_backend_up", "wsproxy_backend_weight", "wsproxy_backend_draining"},
        lowest={"process_start_time_seconds"},
    )


def without(text: str, families: Sequence[str]) -> str:
    """`text` without the samples and comments of the metric `families`."""
    return "\n".join(
        line for line in text.splitlines() if not any(_of(line, family) for family in families)
    )


def _of(line: str, family: str) -> bool:
    return line.startswith((f"# HELP {family} ", f"# TYPE {family} ", f"{family}{{", f"{family} "))
