"""wsproxy/fleet.py: the supervisor's admin view, merged from its workers' answers.

The merging functions are checked on fixed values; `FleetView` on members that answer from a
table (the real processes are tests/test_workers.py's)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import pytest

from wsproxy import __version__
from wsproxy.admin import ProcessStatus
from wsproxy.adminapi import (
    Action,
    CloseSession,
    Drain,
    SessionQuery,
    SessionRow,
    Undrain,
    action_body,
    action_target,
    query_target,
    sessions_document,
)
from wsproxy.balancer import PoolStatus
from wsproxy.fleet import (
    Answer,
    FleetStatus,
    FleetView,
    Member,
    WorkerStatus,
    merge_metrics,
    merge_pools,
    merge_server,
    merge_sessions,
    merge_status,
    not_ready_because,
    parse_status,
    without,
)
from wsproxy.history import HistoryStatus, Sample
from wsproxy.metrics import Counter, Family
from wsproxy.servers import ServerStatus


def server(
    name: str = "a", health: str = "up", sessions: int = 1, **changes: object
) -> ServerStatus:
    base = ServerStatus(
        server=name,
        url=f"ws://{name}:9000",
        address="192.0.2.1",
        port=9000,
        weight=1,
        share=1.5,
        health=health,
        listed=True,
        sessions=sessions,
        connecting=0,
        sessions_total=sessions,
        failures_total=1,
        check_problem="" if health == "up" else f"{health} here",
        ejected_for=2.0 if health == "ejected" else 0.0,
        effective_weight=1,
        agent_weight=None,
        draining=False,
        drain_left=0.0,
    )
    changed = replace(base, **changes)  # type: ignore[arg-type]
    if "effective_weight" in changes:
        return changed
    # a server neither draining nor reweighted by its agent is weighed with its weight
    return replace(changed, effective_weight=changed.weight)


def pool(name: str, healthy: int, *servers: ServerStatus) -> PoolStatus:
    return PoolStatus(
        pool=name,
        balance="round_robin",
        healthy=healthy,
        sessions=sum(s.sessions for s in servers),
        rebalancing=False,
        rebalance_closes=0,
        tolerance=None,
        servers=servers,
    )


NO_HISTORY = HistoryStatus(10.0, 600.0, 0.0, ())


def process(
    connections: int = 2,
    sessions: int = 1,
    *pools: PoolStatus,
    history: HistoryStatus = NO_HISTORY,
) -> ProcessStatus:
    return ProcessStatus(
        version=__version__,
        ready=True,
        not_ready_because="",
        draining=False,
        connections=connections,
        sessions=sessions,
        pools=pools,
        history=history,
    )


@dataclass
class FakeMember:
    index: int
    answers: dict[str, Answer] = field(default_factory=dict)  # by path; missing: silent
    pid: int | None = 100
    restarts: int = 0
    metrics: str = ""
    base: str = ""
    asked: list[str] = field(default_factory=list)
    posted: list[bytes] = field(default_factory=list)  # the bodies of the POSTs among `asked`

    async def ask(self, path: str, post: bytes | None = None) -> Answer | None:
        self.asked.append(path)
        if post is not None:
            self.posted.append(post)
        return self.answers.get(path)


@dataclass
class FakeSupervisor:
    workers: Sequence[FakeMember]
    stopping: bool = False
    reloads: Counter = field(
        default_factory=lambda: Counter("wsproxy_config_reloads_total", "Reloads.", ("result",))
    )

    def own_metrics(self) -> list[Family]:
        return [self.reloads]


# --- parse_status ------------------------------------------------------------------------------


def test_fleet_parse_status_reads_back_what_a_worker_writes() -> None:
    samples = (Sample(1000.0, {"main": {"a": 1, "b": 0}}), Sample(1010.0, {"main": {"a": 2}}))
    history = HistoryStatus(10.0, 600.0, 1012.5, samples)
    document = process(3, 2, pool("main", 1, server("a"), server("b", "ejected")), history=history)
    text = json.dumps(asdict(document), indent=1)
    assert parse_status((200, text)) == document


@pytest.mark.parametrize(
    "answer",
    [
        None,
        (503, json.dumps(asdict(process()))),
        (200, "not json"),
        (200, "[1, 2]"),
        (200, json.dumps({**asdict(process()), "extra": 1})),
        (200, json.dumps({k: v for k, v in asdict(process()).items() if k != "pools"})),
        (200, json.dumps({k: v for k, v in asdict(process()).items() if k != "sessions"})),
        (200, json.dumps({**asdict(process()), "pools": [{"pool": "main"}]})),
        (200, json.dumps({**asdict(process()), "pools": [1]})),
    ],
    ids=[
        "none",
        "not-200",
        "not-json",
        "not-an-object",
        "unknown-key",
        "no-pools",
        "no-sessions",
        "pool-without-servers",
        "pool-not-an-object",
    ],
)
def test_fleet_parse_status_of_anything_a_worker_does_not_give_is_none(
    answer: Answer | None,
) -> None:
    assert parse_status(answer) is None


# --- not_ready_because -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answers", "problem"),
    [
        ([], "no worker is running"),
        ([None, None], "no worker is running"),
        ([(200, "ready\n"), None], ""),
        (
            [None, (503, "not ready: no healthy server in pool main\n")],
            "worker 1: no healthy server in pool main",
        ),
        ([(503, "not ready: draining\n"), (503, "not ready: other\n")], "worker 0: draining"),
        ([(200, "ready\n"), (500, "internal error\n")], "worker 1: internal error"),
    ],
)
def test_fleet_not_ready_because_the_first_worker_that_is_not(
    answers: list[Answer | None], problem: str
) -> None:
    assert not_ready_because(list(range(len(answers))), answers) == problem


# --- merge_server and merge_pools --------------------------------------------------------------


def test_fleet_merge_server_sums_counts_and_takes_the_best_health_with_its_problem() -> None:
    down = server("a", "down", 3, connecting=1)
    up = server("a", "up", 2, listed=False, connecting=2)
    for first, second in ((down, up), (up, down)):
        merged = merge_server(first, second)
        assert (merged.health, merged.check_problem) == ("up", "")
        assert (merged.sessions, merged.connecting) == (5, 3)
        assert (merged.sessions_total, merged.failures_total) == (5, 2)
        assert merged.listed  # one lists it
        assert (merged.url, merged.weight) == (first.url, first.weight)


def test_fleet_merge_server_sums_the_workers_shares_of_their_own_sessions() -> None:
    """Each worker rebalances its own sessions: the server's share of the summed sessions is
    the sum of its shares, rounded as each worker rounds it."""
    merged = merge_server(server("a", share=33.333), server("a", share=16.667))
    assert merged.share == 50.0
    assert merge_server(server("a", share=0.1), server("a", share=0.2)).share == 0.3


def test_fleet_merge_pools_rebalancing_if_any_worker_is_and_closes_summed() -> None:
    calm = replace(pool("main", 1, server("a")), rebalance_closes=4)
    busy = replace(pool("main", 1, server("a")), rebalancing=True, rebalance_closes=3)
    for order in ((calm, busy), (busy, calm)):
        [merged] = merge_pools([[order[0]], [order[1]]])
        assert (merged.rebalancing, merged.rebalance_closes) == (True, 7)
    [quiet] = merge_pools([[calm], [calm]])
    assert (quiet.rebalancing, quiet.rebalance_closes) == (False, 8)


def test_fleet_merge_server_ejected_beats_down_and_the_shortest_ejection_counts() -> None:
    merged = merge_server(server("a", "down"), server("a", "ejected", ejected_for=1.5))
    assert (merged.health, merged.check_problem, merged.ejected_for) == (
        "ejected",
        "ejected here",
        0.0,  # the down worker's: it does not eject the server at all
    )


def test_fleet_merge_server_on_a_tie_keeps_the_first_workers_problem() -> None:
    first = server("a", "down", check_problem="refused")
    second = server("a", "down", check_problem="timed out")
    assert merge_server(first, second).check_problem == "refused"


def test_fleet_merge_server_listed_by_neither_stays_unlisted() -> None:
    assert not merge_server(server(listed=False), server(listed=False)).listed


def test_fleet_merge_server_drains_if_any_worker_drains_with_the_most_time_left() -> None:
    idle = server("a", effective_weight=3)
    draining = server("a", effective_weight=0, draining=True, drain_left=4.5)
    for first, second in ((idle, draining), (draining, idle)):
        merged = merge_server(first, second)
        assert (merged.draining, merged.drain_left) == (True, 4.5)
        assert merged.effective_weight == 3, "the highest: a session may go to that worker"
    later = merge_server(draining, replace(draining, drain_left=7.25))
    assert later.drain_left == 7.25


@pytest.mark.parametrize(
    ("first", "second", "merged"), [(None, None, None), (None, 5, 5), (0, 5, 0), (7, None, 7)]
)
def test_fleet_merge_server_agent_weight_is_the_first_one_reported(
    first: int | None, second: int | None, merged: int | None
) -> None:
    both = merge_server(server(agent_weight=first), server(agent_weight=second))
    assert both.agent_weight == merged


def test_fleet_merge_pools_sums_sessions_and_keeps_the_most_healthy() -> None:
    first = [pool("main", 0, server("a", "down", 3))]
    second = [pool("main", 1, server("a", "up", 2), server("b", "up", 2, listed=False))]
    [merged] = merge_pools([first, second])
    assert (merged.pool, merged.healthy, merged.sessions) == ("main", 1, 7)
    a, b = merged.servers
    assert (a.health, a.check_problem, a.sessions, a.failures_total) == ("up", "", 5, 2)
    assert (b.server, b.listed, b.sessions) == ("b", False, 2)


def test_fleet_merge_pools_keeps_the_order_pools_and_servers_are_first_seen_in() -> None:
    first = [pool("chat", 1, server("c"))]
    second = [pool("main", 1, server("b"), server("a")), pool("chat", 1, server("d"), server("c"))]
    merged = merge_pools([first, second])
    assert [(p.pool, [s.server for s in p.servers]) for p in merged] == [
        ("chat", ["c", "d"]),
        ("main", ["b", "a"]),
    ]
    assert merged[0].sessions == 3


def test_fleet_merge_pools_of_no_worker_is_no_pool() -> None:
    assert merge_pools([]) == ()
    assert merge_pools([(), ()]) == ()


# --- merge_status ------------------------------------------------------------------------------


def worker_history(sessions: int) -> HistoryStatus:
    samples = (Sample(1010.0, {"main": {"a": sessions}}),)
    return HistoryStatus(10.0, 600.0, 1015.0, samples)


def test_fleet_merge_status_sums_the_answers_and_lists_every_worker() -> None:
    members = [FakeMember(0, pid=10, restarts=1), FakeMember(1, pid=None), FakeMember(2, pid=12)]
    documents = [
        process(3, 2, pool("main", 0, server("a", "down", 2)), history=worker_history(2)),
        None,
        process(4, 1, pool("main", 1, server("a", "up", 1)), history=worker_history(1)),
    ]
    status = merge_status("worker 0: draining", True, members, documents)
    assert status == FleetStatus(
        version=__version__,
        ready=False,
        not_ready_because="worker 0: draining",
        draining=True,
        connections=7,
        sessions=3,
        pools=merge_pools([documents[0].pools, documents[2].pools]),  # type: ignore[union-attr]
        history=HistoryStatus(10.0, 600.0, 1015.0, (Sample(1010.0, {"main": {"a": 3}}),)),
        workers=(
            WorkerStatus(index=0, pid=10, running=True, restarts=1, sessions=2),
            WorkerStatus(index=1, pid=None, running=False, restarts=0, sessions=0),
            WorkerStatus(index=2, pid=12, running=True, restarts=0, sessions=1),
        ),
    )


def test_fleet_status_document_is_one_process_document_and_its_workers() -> None:
    status = merge_status("", False, [FakeMember(0)], [process()])
    assert isinstance(status, ProcessStatus)
    assert list(asdict(status)) == [*asdict(process()), "workers"]
    assert status.ready


# --- metrics -----------------------------------------------------------------------------------

RELOADS = (
    "# HELP wsproxy_config_reloads_total Reloads.\n"
    "# TYPE wsproxy_config_reloads_total counter\n"
    'wsproxy_config_reloads_total{result="success"} 4\n'
)
SESSIONS = "# HELP s_total S.\n# TYPE s_total counter\ns_total 2\n"


def test_fleet_without_drops_a_family_and_only_that_one() -> None:
    like = "# HELP wsproxy_config_reloads_totals X.\nwsproxy_config_reloads_totals 1\n"
    bare = "wsproxy_config_reloads_total 3"
    text = RELOADS + SESSIONS + like + bare
    kept = without(text, ["wsproxy_config_reloads_total"])
    assert kept.splitlines() == (SESSIONS + like).splitlines()
    assert without(text, []) == text.rstrip("\n")


def test_fleet_merge_metrics_sums_lives_and_adds_the_supervisors_own() -> None:
    reloads = Counter("wsproxy_config_reloads_total", "Reloads.", ("result",))
    reloads.inc("success")
    text = merge_metrics([(SESSIONS, SESSIONS), ("", SESSIONS), ("", "")], [reloads], 2)
    assert "s_total 6\n" in text
    assert 'wsproxy_config_reloads_total{result="success"} 1\n' in text
    assert "# TYPE wsproxy_workers gauge\nwsproxy_workers 2\n" in text


def test_fleet_merge_metrics_backend_up_if_any_worker_sees_it_up() -> None:
    up = (
        "# HELP wsproxy_backend_up Up.\n# TYPE wsproxy_backend_up gauge\n"
        'wsproxy_backend_up{s="a"} %d\n'
    )
    text = merge_metrics([("", up % 0), ("", up % 1)], [], 2)
    assert 'wsproxy_backend_up{s="a"} 1\n' in text


@pytest.mark.parametrize("family", ["wsproxy_backend_weight", "wsproxy_backend_draining"])
def test_fleet_merge_metrics_weight_and_draining_are_the_highest_not_summed(family: str) -> None:
    gauge = f'# HELP {family} X.\n# TYPE {family} gauge\n{family}{{s="a"}} %d\n'
    text = merge_metrics([("", gauge % 1), ("", gauge % 1), ("", gauge % 0)], [], 3)
    assert f'{family}{{s="a"}} 1\n' in text


# --- FleetView ---------------------------------------------------------------------------------


async def test_fleet_view_while_draining_asks_no_worker() -> None:
    member = FakeMember(0)
    view = FleetView(FakeSupervisor([member], stopping=True))
    assert await view.not_ready() == "draining"
    assert member.asked == []


async def test_fleet_view_not_ready_asks_every_worker() -> None:
    members = [FakeMember(0, {"/readyz": (200, "ready\n")}), FakeMember(1)]
    assert await FleetView(FakeSupervisor(members)).not_ready() == ""
    assert [m.asked for m in members] == [["/readyz"], ["/readyz"]]


async def test_fleet_view_status_merges_what_the_workers_answer() -> None:
    answers = {
        "/readyz": (200, "ready\n"),
        "/status": (200, json.dumps(asdict(process(1, 1, pool("main", 1, server()))))),
    }
    members = [FakeMember(0, answers), FakeMember(1, answers, restarts=2), FakeMember(2)]
    status = await FleetView(FakeSupervisor(members)).status()
    assert (status.ready, status.connections, status.sessions) == (True, 2, 2)
    assert [(w.running, w.restarts, w.sessions) for w in status.workers] == [
        (True, 0, 1),
        (True, 2, 1),
        (False, 0, 0),
    ]


async def test_fleet_view_metrics_keep_a_silent_workers_last_answer() -> None:
    talking = FakeMember(0, {"/metrics": (200, RELOADS + SESSIONS)})
    silent = FakeMember(1, metrics=SESSIONS, base=SESSIONS)
    failing = FakeMember(2, {"/metrics": (500, "internal error\n")}, metrics=SESSIONS)
    supervisor = FakeSupervisor([talking, silent, failing])
    text = await FleetView(supervisor).metrics()
    assert talking.metrics == SESSIONS.rstrip("\n")  # the worker's reload count is dropped
    assert failing.metrics == SESSIONS
    assert "s_total 8\n" in text
    assert "wsproxy_workers 1\n" in text
    assert 'result="success"} 4' not in text  # only the supervisor counts reloads


def session(id: str, age: float, pool: str = "main") -> SessionRow:
    return SessionRow(id, "192.0.2.1:5000", "/", pool, "ws://a:1", age, 1, 1, 10, 10)


def listed(*rows: SessionRow) -> Answer:
    return 200, sessions_document(rows).decode()


def test_fleet_merge_sessions_selects_again_from_every_answer() -> None:
    answers: list[Answer | None] = [
        listed(session("a-1", 5.0), session("a-2", 1.0)),
        None,  # silent
        (500, "internal error\n"),
        (200, "not a listing"),
        listed(session("b-1", 3.0), session("b-2", 9.0, pool="other")),
    ]
    query = SessionQuery(limit=3)
    assert [r.id for r in merge_sessions(answers, query)] == ["b-2", "a-1", "b-1"]
    assert [r.id for r in merge_sessions(answers, SessionQuery(pool="main"))] == [
        "a-1",
        "b-1",
        "a-2",
    ]
    assert merge_sessions([None, None], SessionQuery()) == []


async def test_fleet_view_sessions_asks_every_worker_the_same_query() -> None:
    query = SessionQuery("main", "ws://a:1", 2)
    target = query_target(query)
    members = [
        FakeMember(0, {target: listed(session("a-1", 5.0), session("a-2", 1.0))}),
        FakeMember(1, {target: listed(session("b-1", 3.0))}),
        FakeMember(2),
    ]
    rows = await FleetView(FakeSupervisor(members)).sessions(query)
    assert [r.id for r in rows] == ["a-1", "b-1"]
    assert [m.asked for m in members] == [[target]] * 3
    assert [m.posted for m in members] == [[]] * 3  # a GET


@pytest.mark.parametrize(
    ("statuses", "done"),
    [
        ((404, 200, None), True),
        ((404, 404, None), False),
        ((None, None, None), False),
        ((500, 404, 404), False),
        ((200, 200, 200), True),
    ],
)
async def test_fleet_view_act_posts_to_every_worker_done_if_any_did_it(
    statuses: tuple[int | None, ...], done: bool
) -> None:
    action = CloseSession("a-1", 4000, "bye")
    target = action_target(action)
    members = [
        FakeMember(index, {} if status is None else {target: (status, "")})
        for index, status in enumerate(statuses)
    ]
    assert await FleetView(FakeSupervisor(members)).act(action) is done
    assert [m.asked for m in members] == [[target]] * 3
    assert [m.posted for m in members] == [[action_body(action)]] * 3


async def test_fleet_view_drains_done_stand_for_workers_ready_later() -> None:
    def member(index: int, *actions: Action) -> FakeMember:
        return FakeMember(index, {action_target(a): (200, "{}") for a in actions})

    first, second = Drain("chat", "ws://a:1", 60.0, 1012), Drain("chat", "ws://b:1")
    undrain = Undrain("chat", "ws://a:1")
    view = FleetView(FakeSupervisor([member(0, first, second, undrain)]))
    assert await view.act(first)
    assert await view.act(second)
    assert not await view.act(Drain("chat", "ws://c:1"))  # no worker knew it: it stands not
    late = member(1)
    await view.restore(late)
    assert late.asked == [action_target(first), action_target(second)]
    assert late.posted == [action_body(first), action_body(second)]
    assert await view.act(undrain)
    assert await view.act(replace(second, window=5.0))  # drained again: the newest stands
    again = member(2)
    await view.restore(again)
    assert again.posted == [action_body(replace(second, window=5.0))]
    await view.act(CloseSession("a-1"))  # other actions do not stand
    assert list(view.standing) == [("chat", "ws://b:1")]


async def test_fleet_view_standing_drains_follow_either_spelling_of_a_server() -> None:
    url, one, two = "ws://app:1", "ws://app:1 (10.0.0.5)", "ws://app:1 (10.0.0.6)"
    actions = [Drain("chat", s) for s in (url, one, two)] + [
        Undrain("chat", s) for s in (url, one, two)
    ]
    view = FleetView(
        FakeSupervisor([FakeMember(0, {action_target(a): (200, "{}") for a in actions})])
    )

    async def replayed() -> list[str]:
        late = FakeMember(1)
        await view.restore(late)
        return late.asked

    def asks(*actions: Action) -> list[str]:
        return [action_target(action) for action in actions]

    assert await view.act(Drain("chat", url))
    assert await view.act(Undrain("chat", one))  # one address of it takes sessions again
    assert await replayed() == asks(Drain("chat", url), Undrain("chat", one))
    assert await view.act(Drain("chat", one))  # drained again: the drain of it stands
    assert await replayed() == asks(Drain("chat", url), Drain("chat", one))
    assert await view.act(Undrain("chat", url))  # by URL: every address of it
    assert await replayed() == []
    assert await view.act(Drain("chat", two))
    assert await view.act(Undrain("chat", url))  # drained by identity, undrained by URL
    assert await replayed() == []
    assert await view.act(Drain("chat", url))
    assert await view.act(Undrain("chat", two))
    assert await view.act(Drain("chat", url))  # the URL again: every address drains
    assert await replayed() == asks(Drain("chat", url))


def test_fleet_member_protocol_is_what_workers_give() -> None:
    from wsproxy.workers import Worker

    member: Member = Worker(0, "/nowhere")
    assert (member.index, member.pid, member.restarts) == (0, None, 0)
