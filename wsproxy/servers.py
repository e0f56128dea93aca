"""What the proxy knows about each backend server: identity, load, health and totals.

Invariants:
- Pure: no I/O, no clock of its own. Callers pass `now` (trio's clock, in seconds).
- A server is one address and port. Its identity (`ServerState.key`) is its URL when the URL
  names an address, and the URL plus the address when a host name resolved to several; state
  lives in one `ServerStates` registry keyed by identity, never by a config object, so a new
  configuration (reload) or a new DNS answer finds the same counts and health again.
- `connecting + sessions` is the server's load: a server is counted from the moment it is
  chosen, so concurrent handshakes never all pick the same "emptiest" server.
- Healthy means both: the active check's verdict is up (always up without checks), and no
  passive ejection is running. Active checks flip the verdict only after `healthy_after` or
  `unhealthy_after` results in a row; passive ejection starts at the first failed connect and
  doubles while the server keeps failing, up to `MAX_EJECTION`; one success ends it.
- New sessions and shares are reckoned with `effective_weight`: 0 while the server drains,
  else the weight its agent reported (`health_check.agent`), else the configured one. A server
  at 0 gets no new session (`available`).
- One drain at a time: a drain started while one runs keeps the earlier one (its window and
  start); `end_drain` ends it (only one its starter began, when a starter is named). An
  operator's drain over an agent's makes the running drain the operator's (`by`), so the
  agent's silence no longer ends it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from wsproxy.config import HealthCheck, Server

DrainedBy = Literal["agent", "admin"]

FIRST_EJECTION: Final = 1.0  # seconds; nginx's fail_timeout is 10 s, we retry sooner
MAX_EJECTION: Final = 30.0


def identity(server: Server, address: str) -> str:
    """The key of the server at `address` for the configured `server`."""
    return server.url if address == server.host else f"{server.url} ({address})"


def url_of(key: str) -> str:
    """The URL in a server's identity (`identity`); a URL is its own."""
    return key.split(" (", 1)[0]


@dataclass(slots=True, eq=False)
class Drain:
    """A server taking no new sessions while its sessions are closed spread over `window`.
    Compared by identity: a drain ended and started again is another drain."""

    by: DrainedBy  # the only field that changes: from "agent" to "admin" (`start_drain`)
    window: float  # seconds
    started: float  # trio's clock
    code: int  # what its sessions hear

    def left(self, now: float) -> float:
        """Seconds left of the window (0.0 once it has passed; the drain holds)."""
        return max(self.started + self.window - now, 0.0)


class ServerState:
    """One backend server (one address and port) and what the proxy has seen of it."""

    __slots__ = (
        "address",
        "agent_weight",
        "check_problem",
        "check_streak",
        "checked_up",
        "connecting",
        "current",
        "drain",
        "ejected_until",
        "failures",
        "failures_total",
        "host",
        "key",
        "listed",
        "port",
        "secure",
        "sessions",
        "sessions_total",
        "url",
        "weight",
    )

    def __init__(self, server: Server, address: str | None = None) -> None:
        self.url = server.url
        self.host = server.host  # as configured: the name for Host and TLS, or an address
        self.address = address or server.host  # what is dialled
        self.port = server.port
        self.secure = server.secure  # wss://: TLS to the server
        self.key = identity(server, self.address)
        self.weight = server.weight
        self.listed = True  # False once no pool lists it: no new sessions, old ones go on
        self.current = 0  # smooth weighted round robin's running score
        self.connecting = 0  # chosen, handshake with the backend under way
        self.sessions = 0  # live sessions
        self.sessions_total = 0
        self.failures = 0  # consecutive connect or handshake failures (passive health)
        self.failures_total = 0
        self.ejected_until = 0.0
        self.checked_up = True  # the active check's verdict
        self.check_streak = 0  # results in a row that disagree with the verdict
        self.check_problem = ""  # why the last active check failed
        self.agent_weight: int | None = None  # what its health answers said (`agent`)
        self.drain: Drain | None = None

    def __repr__(self) -> str:
        return f"<ServerState {self.key}>"

    @property
    def effective_weight(self) -> int:
        """The weight new sessions and shares are reckoned with now."""
        if self.drain is not None:
            return 0
        return self.weight if self.agent_weight is None else self.agent_weight

    @property
    def draining(self) -> bool:
        return self.drain is not None

    @property
    def load(self) -> int:
        return self.connecting + self.sessions

    def healthy(self, now: float) -> bool:
        return self.checked_up and now >= self.ejected_until

    def available(self, now: float) -> bool:
        """Healthy, and taking new sessions (its effective weight is above 0)."""
        return self.effective_weight > 0 and self.healthy(now)

    def full(self, limit: int) -> bool:
        return bool(limit) and self.load >= limit

    # ---- passive health

    def failed(self, now: float) -> None:
        """A connect or handshake failed: eject for a backoff that doubles while it fails."""
        self.failures += 1
        self.failures_total += 1
        backoff = FIRST_EJECTION * 2 ** min(self.failures - 1, 16)
        self.ejected_until = now + min(backoff, MAX_EJECTION)

    def succeeded(self) -> None:
        self.failures = 0
        self.ejected_until = 0.0

    # ---- active health

    def checked(self, problem: str | None, check: HealthCheck) -> bool:
        """Count one active check's result (`None` = passed); True when the verdict flipped."""
        passed = problem is None
        if problem is not None:
            self.check_problem = problem
        if passed == self.checked_up:
            self.check_streak = 0
            return False
        self.check_streak += 1
        if self.check_streak < (check.healthy_after if passed else check.unhealthy_after):
            return False
        self.checked_up = passed
        self.check_streak = 0
        return True

    def forget_checks(self) -> None:
        """The pool no longer checks this server actively: only passive health counts."""
        self.checked_up = True
        self.check_streak = 0
        self.check_problem = ""

    # ---- drains and the agent

    def start_drain(self, by: DrainedBy, window: float, code: int, now: float) -> Drain:
        """Drain from `now` over `window`, unless a drain runs already (an operator's over an
        agent's makes it the operator's): the drain in force."""
        if self.drain is None:
            self.drain = Drain(by, window, now, code)
        elif by == "admin":
            self.drain.by = by
        return self.drain

    def end_drain(self, by: DrainedBy | None = None) -> bool:
        """End the drain (only one `by` began, if given); True if one ended."""
        if self.drain is None or (by is not None and self.drain.by != by):
            return False
        self.drain = None
        return True

    def forget_agent(self) -> None:
        """The pool no longer reads this server's agent headers: what they said ends."""
        self.agent_weight = None
        self.end_drain("agent")

    def status(self, now: float, share: float = 0.0) -> ServerStatus:
        """As `/status` shows it; `share` is its weighted share of the pool (`rebalance`)."""
        if not self.checked_up:
            health = "down"
        elif now < self.ejected_until:
            health = "ejected"
        else:
            health = "up"
        return ServerStatus(
            server=self.key,
            url=self.url,
            address=self.address,
            port=self.port,
            weight=self.weight,
            share=share,
            health=health,
            listed=self.listed,
            sessions=self.sessions,
            connecting=self.connecting,
            sessions_total=self.sessions_total,
            failures_total=self.failures_total,
            check_problem=self.check_problem if not self.checked_up else "",
            ejected_for=round(max(self.ejected_until - now, 0.0), 3),
            effective_weight=self.effective_weight,
            agent_weight=self.agent_weight,
            draining=self.drain is not None,
            drain_left=round(self.drain.left(now), 3) if self.drain is not None else 0.0,
        )


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """One server as `/status` shows it."""

    server: str  # identity
    url: str
    address: str
    port: int
    weight: int
    share: float  # of its pool's sessions, by effective weight (`rebalance.shares`)
    health: str  # up | down (active check) | ejected (passive, for `ejected_for` seconds)
    listed: bool  # False: removed from its pool, finishing the sessions it has
    sessions: int
    connecting: int
    sessions_total: int
    failures_total: int
    check_problem: str
    ejected_for: float
    effective_weight: int  # what new sessions are weighed with: 0 while draining
    agent_weight: int | None  # what the server's health answers said; None: nothing
    draining: bool
    drain_left: float  # seconds left of the drain's window (0.0: not draining, or it passed)


class ServerStates:
    """The registry: one `ServerState` per pool and identity, for as long as a pool lists it or
    it has sessions. Two pools listing one URL count it apart, as they weigh and check it apart."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], ServerState] = {}

    def get(self, pool: str, server: Server, address: str | None = None) -> ServerState:
        """The state of `server` at `address` (its configured host if None), made on first use."""
        key = (pool, identity(server, address or server.host))
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = ServerState(server, address)
        state.weight = server.weight
        state.listed = True
        return state

    def drop(self, pool: str, state: ServerState) -> None:
        """Forget a server its pool no longer lists (call once its last session ended)."""
        if self._states.get((pool, state.key)) is state:
            del self._states[(pool, state.key)]

    def __len__(self) -> int:
        return len(self._states)
