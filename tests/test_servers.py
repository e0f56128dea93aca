"""Server state: identity, load, passive ejection, active-check counting, status, registry."""

from __future__ import annotations

import pytest

from wsproxy.config import HealthCheck, Server
from wsproxy.servers import FIRST_EJECTION, ServerState, ServerStates, ServerStatus, identity

CHECK = HealthCheck(healthy_after=2, unhealthy_after=3)


def server(host: str = "10.0.0.1", weight: int = 1) -> Server:
    return Server(url=f"ws://{host}:9000", host=host, port=9000, weight=weight)


def test_servers_identity_is_the_url_or_the_url_and_address() -> None:
    assert identity(server(), "10.0.0.1") == "ws://10.0.0.1:9000"
    named = server("app.internal")
    assert identity(named, "app.internal") == "ws://app.internal:9000"
    assert identity(named, "10.0.0.7") == "ws://app.internal:9000 (10.0.0.7)"


def test_servers_new_state() -> None:
    state = ServerState(server("app.internal", 3), "10.0.0.7")
    assert (state.url, state.host, state.address, state.port, state.weight) == (
        "ws://app.internal:9000",
        "app.internal",
        "10.0.0.7",
        9000,
        3,
    )
    assert state.key == "ws://app.internal:9000 (10.0.0.7)"
    assert repr(state) == "<ServerState ws://app.internal:9000 (10.0.0.7)>"
    assert (state.load, state.sessions_total, state.failures_total) == (0, 0, 0)
    assert state.listed
    assert state.healthy(0.0)
    assert ServerState(server()).address == "10.0.0.1"


def test_servers_load_counts_connecting_and_sessions_and_limits() -> None:
    state = ServerState(server())
    state.connecting, state.sessions = 1, 2
    assert state.load == 3
    assert state.full(3)
    assert not state.full(4)
    assert not state.full(0), "0 means no limit"


def test_servers_failed_backoff_doubles_up_to_30_seconds() -> None:
    state = ServerState(server())
    now = 100.0
    backoffs: list[float] = []
    for _ in range(9):
        state.failed(now)
        backoffs.append(state.ejected_until - now)
        assert not state.healthy(state.ejected_until - 0.001)
        assert state.healthy(state.ejected_until)
        now = state.ejected_until + 0.5
    assert backoffs == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    assert (state.failures, state.failures_total) == (9, 9)


def test_servers_succeeded_ends_the_ejection_but_keeps_the_total() -> None:
    state = ServerState(server())
    state.failed(0.0)
    state.failed(1.0)
    state.succeeded()
    assert (state.failures, state.ejected_until, state.failures_total) == (0, 0.0, 2)
    assert state.healthy(1.0)


def test_servers_checked_goes_down_after_unhealthy_after_failures_in_a_row() -> None:
    state = ServerState(server())
    flips = [state.checked(problem, CHECK) for problem in ("x", "y", None, "a", "b", "c", "d")]
    assert flips == [False, False, False, False, False, True, False]
    assert not state.checked_up
    assert not state.healthy(0.0)
    assert state.check_problem == "d"


def test_servers_checked_comes_back_after_healthy_after_passes_in_a_row() -> None:
    state = ServerState(server())
    for _ in range(3):
        state.checked("refused", CHECK)
    assert not state.checked_up
    flips = [state.checked(problem, CHECK) for problem in (None, "again", None, None, None)]
    assert flips == [False, False, False, True, False]
    assert state.healthy(0.0)
    assert state.check_problem == "again", "the last failure is kept for the record"


def test_servers_checked_with_thresholds_of_one_flips_at_once() -> None:
    state = ServerState(server())
    quick = HealthCheck(healthy_after=1, unhealthy_after=1)
    assert state.checked("down", quick)
    assert state.checked(None, quick)
    assert not state.checked(None, quick)


@pytest.mark.parametrize(
    ("checked_up", "ejected_until", "health", "ejected_for", "problem"),
    [
        (True, 0.0, "up", 0.0, ""),
        (True, 12.5, "ejected", 2.5, ""),
        (False, 12.5, "down", 2.5, "refused"),
    ],
)
def test_servers_status(
    checked_up: bool, ejected_until: float, health: str, ejected_for: float, problem: str
) -> None:
    state = ServerState(server(weight=2))
    state.checked_up = checked_up
    state.check_problem = "refused"
    state.ejected_until = ejected_until
    state.sessions, state.connecting, state.sessions_total, state.failures_total = 3, 1, 10, 4
    assert state.status(10.0, 2.5) == ServerStatus(
        server="ws://10.0.0.1:9000",
        url="ws://10.0.0.1:9000",
        address="10.0.0.1",
        port=9000,
        weight=2,
        share=2.5,
        health=health,
        listed=True,
        sessions=3,
        connecting=1,
        sessions_total=10,
        failures_total=4,
        check_problem=problem,
        ejected_for=ejected_for,
        effective_weight=2,
        agent_weight=None,
        draining=False,
        drain_left=0.0,
    )


def test_servers_registry_keeps_one_state_per_pool_and_identity() -> None:
    states = ServerStates()
    a = states.get("main", server())
    assert states.get("main", server(weight=5)) is a
    assert a.weight == 5, "the newest configuration's weight wins"
    assert states.get("other", server()) is not a, "two pools count a server apart"
    named = server("app.internal")
    one = states.get("main", named, "10.0.0.7")
    assert states.get("main", named, "10.0.0.7") is one
    assert states.get("main", named) is not one
    assert len(states) == 4


def test_servers_registry_get_lists_again_and_drop_forgets_only_that_object() -> None:
    states = ServerStates()
    a = states.get("main", server())
    a.listed = False
    assert states.get("main", server()) is a
    assert a.listed
    states.drop("main", ServerState(server()))  # an equal-looking stranger: not dropped
    assert states.get("main", server()) is a
    states.drop("main", a)
    assert len(states) == 0
    assert states.get("main", server()) is not a


# --- effective weight, drains and the agent ----------------------------------------------------


@pytest.mark.parametrize(
    ("agent_weight", "draining", "effective"),
    [
        (None, False, 3),
        (7, False, 7),
        (0, False, 0),
        (256, False, 256),
        (None, True, 0),
        (7, True, 0),
    ],
)
def test_servers_effective_weight_is_0_draining_else_the_agents_else_the_configured(
    agent_weight: int | None, draining: bool, effective: int
) -> None:
    state = ServerState(server(weight=3))
    state.agent_weight = agent_weight
    if draining:
        state.start_drain("agent", 30.0, 1012, 0.0)
    assert state.effective_weight == effective
    assert state.available(0.0) is (effective > 0)
    assert state.weight == 3, "the configured weight stays as configured"


def test_servers_available_needs_health_too() -> None:
    state = ServerState(server())
    state.failed(0.0)
    assert state.effective_weight == 1
    assert not state.available(0.5)
    assert state.available(FIRST_EJECTION)


def test_servers_a_drain_started_twice_keeps_the_earlier_schedule() -> None:
    state = ServerState(server())
    first = state.start_drain("admin", 30.0, 1012, 5.0)
    assert (first.by, first.window, first.started, first.code) == ("admin", 30.0, 5.0, 1012)
    again = state.start_drain("agent", 2.0, 4000, 9.0)
    assert again is first
    assert state.drain is first
    assert (first.by, first.window, first.started, first.code) == ("admin", 30.0, 5.0, 1012)
    assert state.draining


def test_servers_an_operators_drain_over_an_agents_makes_it_the_operators() -> None:
    state = ServerState(server())
    first = state.start_drain("agent", 600.0, 1012, 5.0)
    again = state.start_drain("admin", 60.0, 4000, 9.0)
    assert again is first, "the schedule is kept"
    assert (first.by, first.window, first.started, first.code) == ("admin", 600.0, 5.0, 1012)
    assert not state.end_drain("agent"), "the agent's silence no longer ends it"
    assert state.end_drain("admin")


def draining(state: ServerState) -> bool:
    """Read afresh: mypy would narrow `state.draining` across calls that change it."""
    return state.draining


def agent_weight(state: ServerState) -> int | None:
    return state.agent_weight


def test_servers_end_drain_by_its_starter_or_by_anyone() -> None:
    state = ServerState(server())
    state.start_drain("admin", 30.0, 1012, 0.0)
    assert not state.end_drain("agent"), "an agent's silence does not end an operator's drain"
    assert draining(state)
    assert state.end_drain("admin")
    assert not draining(state)
    assert not state.end_drain(), "nothing left to end"
    state.start_drain("agent", 30.0, 1012, 0.0)
    assert state.end_drain(), "an operator's undrain ends an agent's drain"
    restarted = state.start_drain("agent", 10.0, 1012, 40.0)
    assert restarted.started == 40.0, "ended then started again: a new schedule"


def test_servers_forget_agent_ends_what_the_agent_said_only() -> None:
    state = ServerState(server(weight=2))
    state.agent_weight = 0
    state.start_drain("agent", 30.0, 1012, 0.0)
    state.forget_agent()
    assert (agent_weight(state), draining(state), state.effective_weight) == (None, False, 2)
    state.start_drain("admin", 30.0, 1012, 0.0)
    state.forget_agent()
    assert draining(state)


@pytest.mark.parametrize(
    ("now", "left"), [(10.0, 30.0), (25.5, 14.5), (39.9996, 0.0), (40.0, 0.0), (100.0, 0.0)]
)
def test_servers_status_while_draining_shows_the_time_left(now: float, left: float) -> None:
    state = ServerState(server(weight=2))
    state.agent_weight = 5
    state.start_drain("agent", 30.0, 1012, 10.0)
    status = state.status(now)
    assert (status.weight, status.effective_weight, status.agent_weight) == (2, 0, 5)
    assert (status.draining, status.drain_left) == (True, left)


def test_servers_status_of_an_agent_weight() -> None:
    state = ServerState(server(weight=2))
    state.agent_weight = 9
    status = state.status(0.0)
    assert (status.effective_weight, status.agent_weight, status.draining) == (9, 9, False)
