"""One server's drain: no new sessions for it, and its sessions closed spread over a window.
Started by its agent (`Wsproxy-Drain` in a health answer, with `health_check.agent`) or by an
operator (`Proxy.drain`, which the admin endpoint calls); agent weights are applied here too.

Invariants:
- A server is found by pool and name in the snapshot in use (servers a reload unlisted
  included) or, for a pool a reload removed, among the servers its live sessions run on: a
  drain of a removed pool's server can still be ended while its paced close goes on.
- The state of a drain is the server's (`ServerState.drain`); this module starts the paced
  close that goes with it (`Registry.close_paced` over that server's sessions) in the nursery
  it is given, and returns at once. The close stops asking as soon as the drain it serves is
  no longer the server's (undrained, or ended and started anew), so no two schedules ever
  close one server's sessions; a drain started while one runs keeps the running one.
- An agent report sets the server's agent weight (absent: back to the configured weight), and
  starts or ends an agent drain; it never ends an operator's drain. An operator's drain over an
  agent's running one keeps its schedule but becomes the operator's, so only an undrain ends
  it. An operator's undrain ends either kind (an agent still asking starts a new one at its
  next answer).
- A report's problems are logged at WARNING, once per server and problem, then again only
  after `WARN_EVERY` seconds: a backend sending a bad header every probe does not flood the
  log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import trio

from wsproxy.agent import AgentReport
from wsproxy.balancer import PoolBalancer
from wsproxy.closes import Close
from wsproxy.frames import close_code_allowed
from wsproxy.registry import Registry
from wsproxy.servers import Drain, DrainedBy, ServerState
from wsproxy.snapshot import Snapshot

log = logging.getLogger(__name__)

AGENT_CLOSE_CODE: Final = 1012  # service restart: the client reconnects, elsewhere
DRAIN_REASON: Final = "server draining"
WARN_EVERY: Final = 60.0  # seconds between two warnings of one server's same bad header


class Drains:
    """Starts and ends the drains of one process's servers."""

    def __init__(self, registry: Registry, snapshot: Callable[[], Snapshot]) -> None:
        self._registry = registry
        self._snapshot = snapshot
        self.nursery: trio.Nursery | None = None  # where closes run; set once the proxy serves
        self._warned: dict[tuple[str, str, str], float] = {}  # (pool, server, problem) → when

    # ---- an operator's

    def drain(self, pool: str, server: str, window: float, code: int) -> bool:
        """Drain `server` of `pool` (its identity, or its URL: every address of it) over
        `window` seconds, its sessions hearing `code`; False when either is unknown. Raises
        `ValueError` for a negative window or a code no close frame may carry."""
        if window < 0 or not close_code_allowed(code):
            raise ValueError(f"a drain needs a window >= 0 and a close code to send: {code}")
        found = self._find(pool, server)
        for balancer, state in found:
            self.start(balancer, state, "admin", window, code)
        return bool(found)

    def undrain(self, pool: str, server: str) -> bool:
        """End the drain of `server` of `pool`, whoever began it: new sessions may go there
        again, and no more of its sessions are closed. False when either is unknown."""
        found = self._find(pool, server)
        for balancer, state in found:
            if state.end_drain():
                log.info("pool %s: server %s undrained", balancer.name, state.key)
        return bool(found)

    def _find(self, pool: str, server: str) -> list[tuple[PoolBalancer, ServerState]]:
        balancer = self._snapshot().balancers.get(pool)
        if balancer is not None:
            found = {s: balancer for s in (*balancer.servers, *balancer.retired)}
        else:  # a pool a reload removed: the servers its sessions still run on
            found = {x.server: x.balancer for x in self._registry.live() if x.balancer.name == pool}
        named = [s for s in found if s.key == server] or [s for s in found if s.url == server]
        return [(found[state], state) for state in named]

    # ---- an agent's

    def apply(self, balancer: PoolBalancer, state: ServerState, report: AgentReport) -> None:
        """Apply one health answer's agent report to `state` (an `health.Agent`)."""
        now = trio.current_time()
        for problem in report.problems:
            self._warn(balancer.name, state.key, problem, now)
        if not report.keep_weight and report.weight != state.agent_weight:
            state.agent_weight = report.weight
            said = "its configured weight" if report.weight is None else f"weight {report.weight}"
            log.info("pool %s: server %s: agent reports %s", balancer.name, state.key, said)
        if report.keep_drain:
            return
        if report.drain is not None:
            self.start(balancer, state, "agent", report.drain, AGENT_CLOSE_CODE)
        elif state.end_drain("agent"):
            log.info("pool %s: server %s: agent ended its drain", balancer.name, state.key)

    def _warn(self, pool: str, server: str, problem: str, now: float) -> None:
        key = (pool, server, problem)
        last = self._warned.get(key)
        if last is not None and now - last < WARN_EVERY:
            return
        if len(self._warned) > 1000:  # bounded: forget the oldest warnings
            self._warned = {k: t for k, t in self._warned.items() if now - t < WARN_EVERY}
        self._warned[key] = now
        log.warning("pool %s: server %s: %s", pool, server, problem)

    # ---- both

    def start(
        self, balancer: PoolBalancer, state: ServerState, by: DrainedBy, window: float, code: int
    ) -> None:
        """Drain `state` unless it drains already (the running drain is kept)."""
        running = state.drain
        was = running.by if running is not None else None
        drain = state.start_drain(by, window, code, trio.current_time())
        if drain is running:
            if was != drain.by:
                log.info(
                    "pool %s: server %s: the operator's drain takes over the agent's "
                    "(closing with %d over %gs, %.3gs left)",
                    balancer.name,
                    state.key,
                    drain.code,
                    drain.window,
                    drain.left(trio.current_time()),
                )
            return
        log.info(
            "pool %s: server %s draining (%s): %d sessions closed with %d over %gs",
            balancer.name,
            state.key,
            by,
            state.sessions,
            code,
            window,
        )
        if self.nursery is not None:
            self.nursery.start_soon(self._close, state, drain)

    async def _close(self, state: ServerState, drain: Drain) -> None:
        await self._registry.close_paced(
            Close(drain.code, DRAIN_REASON),
            drain.window,
            server=state,
            going_on=lambda: state.drain is drain,
        )
