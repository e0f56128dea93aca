"""wsproxy/rebalance.py: shares, tolerance, which sessions a plan moves, and the pacing rule."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings, strategies as st

from wsproxy.balancer import ANY, Pick, PoolBalancer
from wsproxy.config import Pool, Server
from wsproxy.rebalance import (
    Owner,
    Plan,
    below_share,
    is_room,
    lower_bound,
    next_close_at,
    out_of_tolerance,
    overloaded,
    per_second,
    plan_affinity,
    plan_tolerance,
    shares,
    upper_bound,
)
from wsproxy.servers import ServerState, ServerStates

_serial = itertools.count()


@dataclass(frozen=True)
class Sess:
    """A live session as rebalancing sees it."""

    server: ServerState
    started: float = 0.0
    pick: Pick = ANY
    id: str = field(default_factory=lambda: f"s{next(_serial):05d}")


def state(name: str, weight: int = 1) -> ServerState:
    return ServerState(Server(url=f"ws://{name}:9000", host=name, port=9000, weight=weight))


def fill(server: ServerState, count: int, started: float = 0.0) -> list[Sess]:
    """`count` sessions on `server`, started one second apart from `started`."""
    server.sessions += count
    return [Sess(server, started + i) for i in range(count)]


def loads_after(servers: list[ServerState], plan: Plan[Sess], now: float) -> dict[str, int]:
    """Each server's sessions once the plan's clients came back where there is room: one at a
    time, to the room server furthest below its share (as the balancer sends them)."""
    share = shares(servers, now)
    loads = {s: s.load for s in servers}
    room = [s for s in servers if is_room(s, now)]
    for session in plan.closes:
        loads[session.server] -= 1
        back = min(room, key=lambda s: (loads[s] / share[s], s is session.server))
        assert back is not session.server, "a close whose client comes straight back"
        loads[back] += 1
    return {s.host: n for s, n in loads.items()}


# --- room and shares -----------------------------------------------------------------------


def test_rebalance_room_is_listed_healthy_and_weighted() -> None:
    up, gone, down, ejected, weightless = (state(n) for n in "abcde")
    gone.listed = False
    down.checked_up = False
    ejected.ejected_until = 5.0
    weightless.weight = 0
    assert [is_room(s, 1.0) for s in (up, gone, down, ejected, weightless)] == [
        True,
        False,
        False,
        False,
        False,
    ]
    assert is_room(ejected, 5.0)  # the ejection is over


def test_rebalance_shares_are_weighted_and_count_every_session_of_the_pool() -> None:
    a, b, gone = state("a", 1), state("b", 3), state("c")
    gone.listed = False
    fill(a, 10)
    fill(b, 2)
    b.connecting = 2  # chosen, handshake under way: counted
    fill(gone, 6)
    assert shares([a, b, gone], 0.0) == {a: 5.0, b: 15.0, gone: 0.0}


def test_rebalance_shares_without_room_are_all_zero() -> None:
    a = state("a")
    a.checked_up = False
    fill(a, 4)
    assert shares([a], 0.0) == {a: 0.0}
    assert overloaded([a], 0.0, 0.25) == []  # nowhere to move to
    assert below_share([a], 0.0) == []


def test_rebalance_shares_of_an_empty_pool() -> None:
    a, b = state("a"), state("b")
    assert shares([a, b], 0.0) == {a: 0.0, b: 0.0}
    assert below_share([a, b], 0.0) == []


def test_rebalance_below_share_is_room_under_its_share() -> None:
    a, b, c, down = state("a"), state("b"), state("c"), state("d")
    down.checked_up = False
    fill(a, 8)
    fill(b, 2)
    fill(c, 5)  # share 5: not below
    assert below_share([a, b, c, down], 0.0) == [b]


@pytest.mark.parametrize(
    ("share", "tolerance", "upper", "lower"),
    [
        (100.0, 0.25, 125.0, 75.0),
        (0.5, 0.25, 1, 0),  # one session between two servers stays where it is
        (1.5, 0.25, 2, 1),
        (33.4, 0.0, 34, 33),
        (0.0, 0.25, 0, 0),  # not room: any session is above
        (10.0, 2.0, 30.0, -10.0),  # a tolerance above 100 %: no lower bound
    ],
)
def test_rebalance_bounds_are_the_tolerance_or_whole_sessions(
    share: float, tolerance: float, upper: float, lower: float
) -> None:
    assert upper_bound(share, tolerance) == pytest.approx(upper)
    assert lower_bound(share, tolerance) == pytest.approx(lower)


def test_rebalance_out_of_tolerance_starts_above_and_goes_on_below() -> None:
    a, b, c = state("a"), state("b"), state("c")
    share = {a: 100.0, b: 100.0, c: 100.0}
    room = [a, b, c]
    assert out_of_tolerance({a: 126, b: 100, c: 74}, share, room, 0.25, rebalancing=False)
    assert not out_of_tolerance({a: 125, b: 101, c: 74}, share, room, 0.25, rebalancing=False)
    assert out_of_tolerance({a: 125, b: 101, c: 74}, share, room, 0.25, rebalancing=True)
    assert not out_of_tolerance({a: 125, b: 100, c: 75}, share, room, 0.25, rebalancing=True)
    assert not out_of_tolerance({a: 300, b: 0, c: 0}, share, [], 0.25, rebalancing=True)


def test_rebalance_overloaded_names_the_servers_above_their_upper_bound() -> None:
    a, b, c, gone = state("a"), state("b"), state("c"), state("g")
    gone.listed = False
    fill(a, 130)
    fill(b, 100)
    fill(c, 60)
    fill(gone, 10)  # share 0
    assert overloaded([a, b, c, gone], 0.0, 0.25) == [a, gone]  # shares 100


# --- tolerance plans -----------------------------------------------------------------------


def test_rebalance_plan_scale_out_2x150_to_3_moves_the_fewest_oldest_first() -> None:
    """The issue's example: a third server joins two that hold 150 each. 75 sessions move,
    oldest first, alternately from each, until the third holds 75 % of its share of 100 (the
    fewest moves within tolerance, rather than 100 to fill it to its share)."""
    a, b, c = state("a"), state("b"), state("c")
    on_a, on_b = fill(a, 150), fill(b, 150, started=0.5)
    plan = plan_tolerance(
        [a, b, c], on_a + on_b, 1000.0, tolerance=0.25, min_age=30.0, rebalancing=False
    )
    assert plan.rebalancing
    assert plan.counts() == {a: 38, b: 37}
    alternately = [x for pair in zip(on_a[:37], on_b[:37], strict=True) for x in pair]
    assert list(plan.closes) == [*alternately, on_a[37]]
    assert loads_after([a, b, c], plan, 1000.0) == {"a": 112, "b": 113, "c": 75}


def test_rebalance_plan_within_tolerance_moves_nothing() -> None:
    a, b, c = state("a"), state("b"), state("c")
    sessions = fill(a, 110) + fill(b, 110) + fill(c, 80)  # shares 100: none above 125
    plan = plan_tolerance([a, b, c], sessions, 1e6, tolerance=0.25, min_age=0, rebalancing=False)
    assert plan == Plan(False, ())


def test_rebalance_plan_a_new_server_alone_below_does_not_start_it() -> None:
    """Ten servers of 100 and an eleventh: shares of 90.9, none above 113.6. SPEC starts a
    rebalance only above the tolerance; once started, the lower bound fills the new one."""
    servers = [state(f"s{i}") for i in range(11)]
    sessions = [x for s in servers[:10] for x in fill(s, 100)]
    quiet = plan_tolerance(servers, sessions, 1e6, tolerance=0.25, min_age=0, rebalancing=False)
    assert quiet == Plan(False, ())
    going = plan_tolerance(servers, sessions, 1e6, tolerance=0.25, min_age=0, rebalancing=True)
    after = loads_after(servers, going, 1e6)
    assert after["s10"] == math.ceil(0.75 * 1000 / 11)
    assert len(going.closes) == after["s10"]


def test_rebalance_plan_follows_weights() -> None:
    a, b = state("a", 3), state("b", 1)
    sessions = fill(a, 50) + fill(b, 50)  # shares 75 and 25: b is above 31.25
    plan = plan_tolerance([a, b], sessions, 1e6, tolerance=0.25, min_age=0, rebalancing=False)
    assert plan.counts() == {b: 19}
    assert loads_after([a, b], plan, 1e6) == {"a": 69, "b": 31}


def test_rebalance_plan_empties_removed_and_down_servers_into_room() -> None:
    a, b, gone, down = state("a"), state("b"), state("g"), state("d")
    gone.listed = False
    down.checked_up = False
    sessions = fill(a, 50) + fill(b, 50) + fill(gone, 20) + fill(down, 10)
    plan = plan_tolerance(
        [a, b, gone, down], sessions, 1e6, tolerance=0.25, min_age=0, rebalancing=False
    )
    assert plan.counts() == {gone: 20, down: 10}
    assert loads_after([a, b, gone, down], plan, 1e6) == {"a": 65, "b": 65, "g": 0, "d": 0}


def test_rebalance_plan_of_a_small_pool_never_moves_one_session_back_and_forth() -> None:
    a, b = state("a"), state("b")
    one = fill(a, 1)
    assert plan_tolerance([a, b], one, 1e6, tolerance=0.0, min_age=0, rebalancing=True) == Plan(
        False, ()
    )
    three = one + fill(a, 2)
    plan = plan_tolerance([a, b], three, 1e6, tolerance=0.0, min_age=0, rebalancing=False)
    assert plan.counts() == {a: 1}


def test_rebalance_plan_never_takes_a_session_younger_than_min_age() -> None:
    a, b = state("a"), state("b")
    sessions = fill(a, 100, started=0.0)  # started at 0 .. 99
    plan = plan_tolerance([a, b], sessions, 110.0, tolerance=0.25, min_age=30.0, rebalancing=False)
    assert plan.rebalancing
    assert [s.started for s in plan.closes] == [float(i) for i in range(38)]  # 62 and 38 left
    young = plan_tolerance([a, b], sessions, 110.0, tolerance=0.25, min_age=200, rebalancing=False)
    assert young == Plan(True, ())  # out of tolerance, nothing old enough yet


def test_rebalance_plan_counts_pending_closes_as_moved() -> None:
    a, b, c = state("a"), state("b"), state("c")
    on_a, on_b = fill(a, 150), fill(b, 150)
    pending = on_a[:10] + on_b[:10]
    plan = plan_tolerance(
        [a, b, c], on_a + on_b, 1e6, tolerance=0.25, min_age=0, rebalancing=True, pending=pending
    )
    assert plan.counts() == {a: 28, b: 27}  # 20 + 55: the 75 moves of no pending ones
    assert not set(plan.closes) & set(pending)


def test_rebalance_plan_ignores_sessions_of_servers_not_in_the_pool() -> None:
    a, b, stranger = state("a"), state("b"), state("x")
    sessions = fill(a, 10) + fill(stranger, 5)
    plan = plan_tolerance(
        [a, b], sessions, 1e6, tolerance=0.0, min_age=0, rebalancing=False, pending=sessions[-1:]
    )
    assert plan.counts() == {a: 5}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 40),  # sessions
            st.integers(0, 4),  # weight (0: not room)
            st.booleans(),  # listed
            st.integers(0, 40),  # how many of its sessions are young
        ),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]),
    st.booleans(),
)
def test_rebalance_plan_properties(
    spec: list[tuple[int, int, bool, int]], tolerance: float, rebalancing: bool
) -> None:
    servers: list[ServerState] = []
    sessions: list[Sess] = []
    for i, (count, weight, listed, young) in enumerate(spec):
        server = state(f"s{i}", max(weight, 1))
        server.weight, server.listed = weight, listed
        servers.append(server)
        old = count - min(young, count)
        sessions += fill(server, old, started=0.0)
        sessions += fill(server, count - old, started=100.0)
    now, min_age = 110.0, 30.0
    plan = plan_tolerance(
        servers, sessions, now, tolerance=tolerance, min_age=min_age, rebalancing=rebalancing
    )
    share = shares(servers, now)
    room = [s for s in servers if is_room(s, now)]
    loads = {s: s.load for s in servers}
    assert plan.rebalancing == out_of_tolerance(
        loads, share, room, tolerance, rebalancing=rebalancing
    )
    assert len(set(plan.closes)) == len(plan.closes)
    assert all(now - s.started >= min_age for s in plan.closes)
    for server, n in plan.counts().items():
        assert loads[server] - n >= math.floor(share[server])  # never below its own share
        taken = [s for s in plan.closes if s.server is server]
        assert taken == sorted(taken, key=lambda s: (s.started, s.id))
    if not plan.rebalancing:
        assert plan.closes == ()
    elif all(now - s.started >= min_age for s in sessions):
        after = loads_after(servers, plan, now)
        final = {s: after[s.host] for s in servers}
        assert not out_of_tolerance(final, share, room, tolerance, rebalancing=True)


# --- affinity plans ------------------------------------------------------------------------


def hash_pool(states: ServerStates, *names: str, balance: str = "hash") -> PoolBalancer:
    servers = tuple(Server(url=f"ws://{n}:9000", host=n, port=9000) for n in names)
    pool = Pool(name="main", servers=servers, balance=balance, hash_on="ip" if balance else None)
    return PoolBalancer(pool, states, secret=b"s" * 32)


def belongs(balancer: PoolBalancer) -> Owner[Sess]:
    return lambda s, room: balancer.belongs(s.pick, s.server, room)


def place(balancer: PoolBalancer, keys: list[str | None]) -> list[Sess]:
    """A session per key, placed as the balancer places it."""
    placed = []
    for key in keys:
        pick = Pick(key=key) if key is not None else ANY
        server = balancer.choose(0.0, pick)
        assert server is not None
        balancer.started(server)
        placed.append(Sess(server, 0.0, pick))
    return placed


def test_rebalance_affinity_a_new_server_takes_exactly_the_keys_it_now_wins() -> None:
    states = ServerStates()
    before = hash_pool(states, "a", "b")
    keys = [f"10.0.0.{i}" for i in range(200)]
    sessions = place(before, [*keys, None, None])  # two keyless ones stay where they are
    after = hash_pool(states, "a", "b", "c")
    c = after.servers[2]
    plan = plan_affinity(after.servers, sessions, 100.0, belongs(after), min_age=30.0)
    winners = {
        s.pick.key for s in sessions if s.pick.key and after.owner(s.pick, after.servers) is c
    }
    assert plan.rebalancing
    assert {s.pick.key for s in plan.closes} == winners
    assert 40 < len(winners) < 95  # about a third
    assert all(s.server.host != "c" for s in plan.closes)


def test_rebalance_affinity_a_removed_server_gives_up_all_its_sessions() -> None:
    states = ServerStates()
    before = hash_pool(states, "a", "b")
    sessions = place(before, [f"k{i}" for i in range(50)] + [None, None])
    (b,) = [s for s in before.servers if s.host == "b"]
    after = hash_pool(states, "a")
    b.listed = False  # as `retire` leaves it
    plan = plan_affinity([*after.servers, b], sessions, 100.0, belongs(after), min_age=0)
    assert set(plan.closes) == {s for s in sessions if s.server is b}  # keyless ones too


def test_rebalance_affinity_nothing_misplaced_moves_nothing() -> None:
    states = ServerStates()
    balancer = hash_pool(states, "a", "b")
    sessions = place(balancer, [f"k{i}" for i in range(50)])
    plan = plan_affinity(balancer.servers, sessions, 100.0, belongs(balancer), min_age=0)
    assert plan == Plan(False, ())


def test_rebalance_affinity_young_misplaced_sessions_wait() -> None:
    states = ServerStates()
    sessions = place(hash_pool(states, "a"), [f"k{i}" for i in range(50)])
    after = hash_pool(states, "a", "b")
    plan = plan_affinity(after.servers, sessions, 10.0, belongs(after), min_age=30.0)
    assert plan == Plan(True, ())
    pending = plan_affinity(
        after.servers,
        sessions,
        100.0,
        belongs(after),
        min_age=30.0,
        pending=sessions,
    )
    assert pending == Plan(False, ())  # every misplaced one is already closing


def test_rebalance_affinity_cookies_stick_to_their_server_until_it_goes() -> None:
    states = ServerStates()
    before = hash_pool(states, "a", "b", balance="cookie")
    sessions = place(before, [None] * 20)  # each got its server's cookie with its 101
    after = hash_pool(states, "a", "b", "c", balance="cookie")
    assert plan_affinity(after.servers, sessions, 100.0, belongs(after), min_age=0) == Plan(
        False, ()
    )
    (a, *_) = after.servers
    a.checked_up = False
    plan = plan_affinity(after.servers, sessions, 100.0, belongs(after), min_age=0)
    assert set(plan.closes) == {s for s in sessions if s.server is a}
    assert plan.closes


def test_rebalance_affinity_without_room_moves_nothing() -> None:
    states = ServerStates()
    balancer = hash_pool(states, "a")
    sessions = place(balancer, ["k"])
    balancer.servers[0].checked_up = False
    plan = plan_affinity(balancer.servers, sessions, 100.0, belongs(balancer), min_age=0)
    assert plan == Plan(False, ())


# --- pacing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recent", "rate", "due"),
    [
        ([], 10.0, -math.inf),
        ([5.0], 10.0, 5.1),
        ([5.0, 5.1], 0.5, 7.1),  # slower than one a second
        ([5.0, 5.5, 5.6], 2.0, 6.5),  # two in the last second: one second after the first
        ([5.0, 5.4, 5.8], 2.5, 6.4),  # 2.5/s: at most 2 in a second (not 3, 0.4 s apart)
    ],
)
def test_rebalance_next_close_at(recent: list[float], rate: float, due: float) -> None:
    assert next_close_at(recent, rate) == pytest.approx(due)
    assert per_second(0.5) == 1


@given(
    st.sampled_from([1.0, 2.5, 3.0, 7.0, 10.0, 20.0, 33.0]),
    st.lists(st.floats(0.0, 0.05), min_size=1, max_size=120),
)
def test_rebalance_pacing_never_exceeds_the_rate_in_any_second(
    rate: float, lateness: list[float]
) -> None:
    """Closes made at `next_close_at`, each wake-up late by some amount: no window [t, t+1)
    holds more than max(1, floor(rate)) of them, in floating point as computed."""
    made: list[float] = [0.1]
    for late in lateness:
        made.append(next_close_at(made[-per_second(rate) :], rate) + late)
    most = Counter(sum(1 for t in made if start <= t < start + 1.0) for start in made)
    assert max(most) <= per_second(rate)


def test_rebalance_plan_never_closes_a_session_whose_client_would_come_straight_back() -> None:
    """Shares 6.4, 8 and 1.6. At 7, 7 and 2, s2 is still the furthest above its share (1.25
    times it), but one more close would leave it the furthest below (1 of 1.6), and its
    client would come back to it: s2 gives no more, and s0 gives the last one."""
    s0, s1, s2 = state("s0", 4), state("s1", 5), state("s2", 1)
    sessions = fill(s0, 12) + fill(s2, 4)
    plan = plan_tolerance([s0, s1, s2], sessions, 1e6, tolerance=0.1, min_age=0, rebalancing=False)
    assert plan.counts() == {s0: 6, s2: 2}
    assert loads_after([s0, s1, s2], plan, 1e6) == {"s0": 6, "s1": 8, "s2": 2}


def test_rebalance_a_server_that_only_stops_taking_sessions_keeps_its_own() -> None:
    # weight 0 (its agent's or configured) and a passive ejection stop new sessions, not live
    # ones: such a server's share is its own load, so it never gives a session (nor takes one)
    a, b, weightless, ejected = state("a"), state("b"), state("w"), state("e")
    weightless.agent_weight = 0
    ejected.failed(0.5)  # one failed connect: ejected until 1.5
    sessions = fill(a, 40) + fill(b, 40) + fill(weightless, 30) + fill(ejected, 30)
    servers = [a, b, weightless, ejected]
    assert shares(servers, 1.0) == {a: 40.0, b: 40.0, weightless: 30.0, ejected: 30.0}
    assert below_share(servers, 1.0) == []
    plan = plan_tolerance(servers, sessions, 1.0, tolerance=0.25, min_age=0, rebalancing=False)
    assert plan == Plan(False, ())
    plan = plan_tolerance(servers, sessions, 1.0, tolerance=0.0, min_age=0, rebalancing=True)
    assert plan == Plan(False, ())
    # once back in the room, the ejected server is reckoned by its weight again
    assert shares(servers, 2.0)[ejected] == pytest.approx(110 / 3)  # w still holds its 30


def test_rebalance_a_draining_server_still_has_no_share() -> None:
    a, draining = state("a"), state("d")
    draining.start_drain("admin", 60.0, 1012, 0.0)
    fill(a, 10)
    fill(draining, 10)
    assert shares([a, draining], 1.0) == {a: 20.0, draining: 0.0}


def test_rebalance_affinity_sessions_stay_on_a_server_that_only_stops_taking_new_ones() -> None:
    states = ServerStates()
    balancer = hash_pool(states, "a", "b", "c", "d")
    sessions = place(balancer, [f"10.0.0.{i}" for i in range(80)])
    a, b, c, _ = balancer.servers
    a.agent_weight = 0
    b.failed(0.5)
    plan = plan_affinity(balancer.servers, sessions, 1.0, belongs(balancer), min_age=0)
    assert plan == Plan(False, ())
    c.checked_up = False  # down by its active check: its sessions go
    plan = plan_affinity(balancer.servers, sessions, 1.0, belongs(balancer), min_age=0)
    assert set(plan.closes) == {s for s in sessions if s.server is c}
