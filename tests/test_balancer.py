"""Routing on host and path, smooth weighted round robin, and ejection with backoff."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest

from tests.helpers import upgrade_request
from wsproxy.balancer import ANY, Pick, PoolBalancer, find_route, host_without_port
from wsproxy.config import Pool, Route, Server, StickyCookie
from wsproxy.handshake import UpgradeRequest
from wsproxy.servers import FIRST_EJECTION, ServerState, ServerStates

ROUTES = (
    Route(host="chat.example.com", path="/chat", pool="chat"),
    Route(host="*.example.com", path="/", pool="wild"),
    Route(host="[::1]", path="/", pool="v6"),
    Route(host=None, path="/api", pool="api"),
    Route(host="Example.COM", path="/", pool="bare"),
)


def server(name: str, weight: int = 1) -> Server:
    return Server(url=f"ws://{name}:9000", host=name, port=9000, weight=weight)


def pool(*servers: Server, retries: int = 2) -> Pool:
    return Pool(name="main", servers=servers, retries=retries)


def names(balancer: PoolBalancer, count: int, now: float = 0.0, pick: Pick = ANY) -> str:
    """The hosts of the next `count` choices, as one string."""
    chosen: list[str] = []
    for _ in range(count):
        state = balancer.choose(now, pick)
        assert state is not None
        chosen.append(state.host)
    return "".join(chosen)


# --- routes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("example.com", "example.com"),
        ("Example.COM:8080", "example.com"),
        ("  chat.example.com:443 ", "chat.example.com"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("[2001:DB8::1]:443", "[2001:db8::1]"),
        ("[::1", "[::1"),
        ("", ""),
    ],
)
def test_balancer_host_without_port(host: str, name: str) -> None:
    assert host_without_port(host) == name


@pytest.mark.parametrize(
    ("host", "target", "pool_name"),
    [
        ("chat.example.com", "/chat", "chat"),
        ("chat.example.com", "/chat/room/1?token=x", "chat"),
        ("chat.example.com", "/chatroom", "chat"),  # a plain prefix, as SPEC says
        ("chat.example.com", "/other", "wild"),  # first match wins, in order
        ("CHAT.Example.Com:8443", "/chat", "chat"),
        ("a.example.com", "/", "wild"),
        ("a.b.example.com", "/x", "wild"),
        ("example.com", "/", "bare"),  # "*.example.com" never matches the bare suffix
        ("EXAMPLE.com:80", "/", "bare"),
        ("badexample.com", "/api", "api"),  # nor a name merely ending in the suffix
        ("[::1]:8080", "/", "v6"),
        ("[::1]", "/", "v6"),
        ("anything.test", "/api/v1", "api"),  # host None matches any host
        ("", "/api", "api"),
        ("anything.test", "/?next=/api", None),  # the query is not part of the path
        ("anything.test", "/ap", None),
        ("[::2]:8080", "/", None),
    ],
)
def test_balancer_find_route(host: str, target: str, pool_name: str | None) -> None:
    route = find_route(ROUTES, host, target)
    assert (route.pool if route else None) == pool_name


def test_balancer_find_route_without_routes_is_none() -> None:
    assert find_route((), "example.com", "/") is None


def test_balancer_find_route_returns_the_first_of_equal_matches() -> None:
    first = Route(path="/", pool="first")
    assert find_route((first, Route(path="/", pool="second")), "h", "/x") is first


# --- smooth weighted round robin ------------------------------------------------------------


def test_balancer_round_robin_weights_5_1_1_is_nginx_sequence() -> None:
    """nginx's smooth weighted round robin example: a a b a c a a, then again."""
    balancer = PoolBalancer(pool(server("a", 5), server("b", 1), server("c", 1)))
    assert names(balancer, 14) == "aabacaa" * 2


def test_balancer_round_robin_equal_weights_take_turns() -> None:
    balancer = PoolBalancer(pool(server("a"), server("b"), server("c")))
    assert names(balancer, 9) == "abc" * 3


def test_balancer_round_robin_counts_are_exact_over_3000() -> None:
    balancer = PoolBalancer(pool(server("a", 1), server("b", 2), server("c", 3)))
    sequence = names(balancer, 3000)
    assert Counter(sequence) == {"a": 500, "b": 1000, "c": 1500}


@pytest.mark.parametrize("weights", [(1, 2, 3), (5, 1, 1), (3, 7), (1,), (4, 4, 1, 2)])
def test_balancer_round_robin_every_window_of_sum_weights_is_exact(
    weights: tuple[int, ...],
) -> None:
    """Any run of sum(weights) consecutive choices picks each server exactly `weight` times."""
    hosts = "abcd"[: len(weights)]
    balancer = PoolBalancer(pool(*(server(h, w) for h, w in zip(hosts, weights, strict=True))))
    total = sum(weights)
    sequence = names(balancer, total * 10)
    for start in range(len(sequence) - total + 1):
        window = Counter(sequence[start : start + total])
        assert window == dict(zip(hosts, weights, strict=True)), start


def test_balancer_round_robin_skips_excluded() -> None:
    balancer = PoolBalancer(pool(server("a", 3), server("b"), server("c")))
    a, b, c = balancer.servers
    for _ in range(20):
        assert balancer.choose(0.0, exclude=[a]) in (b, c)
    assert balancer.choose(0.0, exclude=(a, c)) is b
    assert balancer.choose(0.0, exclude=balancer.servers) is None


def test_balancer_retry_with_exclude_tries_each_server_once() -> None:
    """A connect loop that excludes what it tried reaches every server, then gets None."""
    balancer = PoolBalancer(pool(server("a", 5), server("b", 2), server("c")))
    tried: list[ServerState] = []
    while (state := balancer.choose(0.0, exclude=tried)) is not None:
        tried.append(state)
    assert sorted(s.host for s in tried) == ["a", "b", "c"]


# --- ejection and backoff -------------------------------------------------------------------


def test_balancer_ejected_server_is_not_chosen_until_its_backoff_ends() -> None:
    balancer = PoolBalancer(pool(server("a"), server("b")))
    a, b = balancer.servers
    a.failed(10.0)
    assert [balancer.choose(10.5) for _ in range(4)] == [b] * 4
    assert balancer.any_healthy(10.5)
    assert a in {balancer.choose(11.0), balancer.choose(11.0)}


def test_balancer_all_ejected_chooses_none_until_one_returns() -> None:
    balancer = PoolBalancer(pool(server("a"), server("b")))
    a, b = balancer.servers
    a.failed(0.0)  # back at 1.0
    b.failed(0.0)
    b.failed(1.0)  # back at 3.0
    assert balancer.choose(0.5) is None
    assert not balancer.any_healthy(0.5)
    assert balancer.choose(1.0) is a
    assert balancer.choose(2.999) is a
    assert balancer.any_healthy(3.0)
    assert {balancer.choose(3.0), balancer.choose(3.0)} == {a, b}


def test_balancer_succeeded_resets_failures_and_backoff() -> None:
    balancer = PoolBalancer(pool(server("a")))
    (a,) = balancer.servers
    for now in (0.0, 1.0, 3.0, 7.0):
        a.failed(now)
    assert (a.failures, a.ejected_until) == (4, 15.0)
    a.succeeded()
    assert (a.failures, a.ejected_until) == (0, 0.0)
    assert balancer.choose(7.0) is a, "one success brings it back at once"
    a.failed(20.0)
    assert a.ejected_until == 20.0 + FIRST_EJECTION


def test_balancer_empty_pool_has_nothing_healthy() -> None:
    balancer = PoolBalancer(pool())
    assert balancer.choose(0.0) is None
    assert not balancer.any_healthy(0.0)


# --- state across reloads -------------------------------------------------------------------


def test_balancer_pool_name_and_retries_come_from_config() -> None:
    balancer = PoolBalancer(pool(server("a"), retries=5))
    assert (balancer.name, balancer.retries) == ("main", 5)


def test_balancer_known_state_survives_a_reload() -> None:
    """State is keyed by URL: sessions and ejection carry over, weights come from the new config."""
    states = ServerStates()
    old = PoolBalancer(pool(server("a"), server("b")), states)
    a, b = old.servers
    a.sessions = 3
    b.sessions = 1
    b.failed(0.0)
    new = PoolBalancer(pool(server("b", 4), server("c")), states)
    b2, c = new.servers
    assert b2 is b
    assert (b2.sessions, b2.failures, b2.weight) == (1, 1, 4)
    assert not b2.healthy(0.5)
    assert c is not a
    assert (c.host, c.sessions) == ("c", 0)
    assert a.sessions == 3, "a server dropped from the config keeps its state for its sessions"


@pytest.mark.parametrize("registry", ["default", "fresh"])
def test_balancer_with_another_registry_shares_no_state(registry: str) -> None:
    """Without a registry (or with a fresh one) a balancer starts clean: a server that failed
    and carries sessions under another balancer is healthy and unloaded under this one."""
    old = PoolBalancer(pool(server("a"), server("b")))
    a, _ = old.servers
    a.sessions = 5
    a.failed(0.0)
    assert old.choose(0.0) is not a
    states = None if registry == "default" else ServerStates()
    new = PoolBalancer(pool(server("a"), server("b")), states)
    chosen = new.choose(0.0)
    assert chosen is not None
    assert (chosen.host, chosen.sessions, chosen.failures) == ("a", 0, 0)
    assert chosen is not a


# --- least connections ----------------------------------------------------------------------


def modes(balance: str, *servers: Server, **keys: object) -> PoolBalancer:
    return PoolBalancer(
        Pool(name="main", balance=balance, servers=servers, **keys),  # type: ignore[arg-type]
        rng=random.Random(7),
        secret=b"per-process secret",
    )


def test_balancer_least_connections_picks_least_load_per_weight() -> None:
    balancer = modes("least_connections", server("a"), server("b", 2), server("c"))
    a, b, c = balancer.servers
    a.sessions, b.sessions, c.sessions = 2, 3, 1
    assert balancer.choose(0.0) is c  # loads per weight: 2, 1.5, 1
    c.connecting = 2  # handshakes under way count as load: 2, 1.5, 3
    assert balancer.choose(0.0) is b
    b.sessions = 4  # 2, 2, 3: a tie between a and b, broken round robin by weight
    assert Counter(names(balancer, 30)) == {"a": 10, "b": 20}


def test_balancer_least_connections_follows_the_load_as_sessions_open() -> None:
    """Each new session lands on the emptiest server, so loads stay level."""
    balancer = modes("least_connections", server("a"), server("b"), server("c"))
    a, _, _ = balancer.servers
    a.sessions = 5
    for _ in range(10):
        chosen = balancer.choose(0.0)
        assert chosen is not None
        balancer.started(chosen)
    assert [s.sessions for s in balancer.servers] == [5, 5, 5]


def test_balancer_least_connections_skips_unhealthy_and_excluded() -> None:
    balancer = modes("least_connections", server("a"), server("b"), server("c"))
    a, b, c = balancer.servers
    b.sessions, c.sessions = 1, 2
    a.failed(0.0)
    assert balancer.choose(0.5) is b
    assert balancer.choose(0.5, exclude=[b]) is c


# --- random: power of two choices -----------------------------------------------------------


def test_balancer_random_without_load_follows_the_weights_within_10_percent() -> None:
    balancer = modes("random", server("a", 1), server("b", 2), server("c", 3))
    counts = Counter(names(balancer, 3000))
    for host, ideal in (("a", 500), ("b", 1000), ("c", 1500)):
        assert abs(counts[host] - ideal) <= ideal * 0.10, counts


def test_balancer_random_same_seed_same_choices() -> None:
    first = modes("random", server("a"), server("b"), server("c"))
    second = modes("random", server("a"), server("b"), server("c"))
    assert names(first, 50) == names(second, 50)
    assert len(set(names(first, 50))) == 3


def test_balancer_random_of_two_draws_the_less_loaded_wins() -> None:
    balancer = modes("random", server("a"), server("b"))
    a, b = balancer.servers
    a.sessions = 1
    assert {balancer.choose(0.0) for _ in range(50)} == {b}, "b is in every pair of two"
    b.sessions = 1
    a.sessions = 0
    assert {balancer.choose(0.0) for _ in range(50)} == {a}


def test_balancer_random_weighs_the_load_by_weight() -> None:
    balancer = modes("random", server("a", 4), server("b", 1))
    a, b = balancer.servers
    a.sessions, b.sessions = 3, 1  # per weight 0.75 and 1: a wins every pair
    assert {balancer.choose(0.0) for _ in range(50)} == {a}


def test_balancer_random_with_one_candidate_returns_it() -> None:
    balancer = modes("random", server("a"), server("b"))
    a, b = balancer.servers
    assert {balancer.choose(0.0, exclude=[a]) for _ in range(10)} == {b}


class _TopOfRange(random.Random):
    def random(self) -> float:
        return 1.0 - 1e-17  # rounds to 1.0 once scaled: the draw must still land on a server


def test_balancer_random_draw_at_the_very_end_of_the_range_takes_the_last() -> None:
    balancer = PoolBalancer(
        Pool(name="main", balance="random", servers=(server("a"), server("b"))),
        rng=_TopOfRange(),
    )
    assert balancer.choose(0.0) is not None


# --- hash -----------------------------------------------------------------------------------


def hashing(*servers: Server, hash_on: str = "header:x-user-id") -> PoolBalancer:
    return modes("hash", *servers, hash_on=hash_on)


def owners(balancer: PoolBalancer, keys: range) -> dict[int, str]:
    chosen: dict[int, str] = {}
    for key in keys:
        state = balancer.choose(0.0, Pick(key=f"user-{key}"))
        assert state is not None
        chosen[key] = state.key
    return chosen


def test_balancer_hash_same_key_same_server_every_time() -> None:
    balancer = hashing(*(server(f"s{i}") for i in range(5)))
    first = balancer.choose(0.0, Pick(key="user-42"))
    assert all(balancer.choose(0.0, Pick(key="user-42")) is first for _ in range(100))


def test_balancer_hash_two_balancers_agree_on_every_key() -> None:
    """No per-process state: separately built balancers (other registries, rngs) agree."""
    servers = [server(f"s{i}", 1 + i % 3) for i in range(6)]
    one = hashing(*servers)
    other = PoolBalancer(
        Pool(name="main", balance="hash", hash_on="ip", servers=tuple(servers)),
        rng=random.Random(99),
    )
    assert owners(one, range(2000)) == owners(other, range(2000))


def test_balancer_hash_removing_1_of_10_servers_moves_only_its_keys() -> None:
    servers = [server(f"s{i}") for i in range(10)]
    before = owners(hashing(*servers), range(10_000))
    after = owners(hashing(*servers[:3], *servers[4:]), range(10_000))
    moved = {key for key in before if before[key] != after[key]}
    assert moved == {key for key in before if before[key] == "ws://s3:9000"}
    assert len(moved) <= 1_500
    assert len(moved) >= 700  # about a tenth: s3 did own its share


def test_balancer_hash_adding_an_11th_server_takes_about_a_11th() -> None:
    servers = [server(f"s{i}") for i in range(11)]
    before = owners(hashing(*servers[:10]), range(10_000))
    after = owners(hashing(*servers), range(10_000))
    moved = {key for key in before if before[key] != after[key]}
    assert all(after[key] == "ws://s10:9000" for key in moved)
    assert 600 <= len(moved) <= 1_200


def test_balancer_hash_ownership_follows_the_weights() -> None:
    counts = Counter(owners(hashing(server("a", 1), server("b", 3)), range(8000)).values())
    assert 1_600 <= counts["ws://a:9000"] <= 2_400  # ideal 2,000
    assert counts["ws://a:9000"] + counts["ws://b:9000"] == 8000


def test_balancer_hash_unusable_owner_passes_the_key_to_the_next_and_gets_it_back() -> None:
    balancer = hashing(*(server(f"s{i}") for i in range(4)))
    owner = balancer.choose(0.0, Pick(key="k"))
    assert owner is not None
    owner.failed(0.0)
    second = balancer.choose(0.5, Pick(key="k"))
    assert second is not None
    assert second is not owner
    assert balancer.choose(0.5, Pick(key="k"), exclude=[second]) not in (owner, second)
    assert balancer.choose(1.0, Pick(key="k")) is owner, "back once its ejection ends"


def test_balancer_hash_without_a_key_goes_round_robin() -> None:
    balancer = hashing(server("a"), server("b"))
    assert names(balancer, 4) == "abab"


# --- pick_for --------------------------------------------------------------------------------


def request(*headers: tuple[bytes, bytes]) -> UpgradeRequest:
    return upgrade_request(*headers, target=b"/chat?user=ann")


def test_balancer_pick_for_reads_what_the_mode_needs() -> None:
    upgrade = request((b"X-User-Id", b"7"), (b"Cookie", b"wsproxy_server=tok"))
    assert hashing(server("a")).pick_for(upgrade, "10.1.1.1") == Pick(key="7")
    ip = hashing(server("a"), hash_on="ip")
    assert ip.pick_for(upgrade, "10.1.1.1") == Pick(key="10.1.1.1")
    assert modes("cookie", server("a")).pick_for(upgrade, "10.1.1.1") == Pick(sticky="tok")
    for balance in ("round_robin", "least_connections", "random"):
        assert modes(balance, server("a")).pick_for(upgrade, "10.1.1.1") is ANY


# --- cookie ----------------------------------------------------------------------------------


def test_balancer_cookie_token_picks_its_server_while_it_is_usable() -> None:
    balancer = modes("cookie", server("a"), server("b"), server("c"))
    a, b, c = balancer.servers
    sticky = Pick(sticky=balancer.token(b))
    assert all(balancer.choose(0.0, sticky) is b for _ in range(20))
    b.failed(0.0)
    assert balancer.choose(0.5, sticky) in (a, c)
    assert balancer.choose(1.0, sticky) is b


@pytest.mark.parametrize("token", ["forged", "", "AAAAAAAAAAAAAAAAAAAAAA"])
def test_balancer_cookie_unknown_token_goes_round_robin(token: str) -> None:
    balancer = modes("cookie", server("a"), server("b"))
    chosen = [balancer.choose(0.0, Pick(sticky=token)) for _ in range(4)]
    assert [s.host for s in chosen if s] == ["a", "b", "a", "b"]


def test_balancer_cookie_token_of_another_secret_is_not_honoured() -> None:
    mine = modes("cookie", server("a"), server("b"))
    theirs = PoolBalancer(mine.pool, secret=b"another process's secret")
    token = theirs.token(theirs.servers[1])
    assert token != mine.token(mine.servers[1])
    assert names(mine, 2, pick=Pick(sticky=token)) == "ab"


def test_balancer_cookie_configured_secret_is_shared_and_wins_over_the_process_one() -> None:
    pool_ = Pool(
        name="main",
        balance="cookie",
        servers=(server("a"),),
        cookie=StickyCookie(name="sticky", secret="0123456789abcdef-shared"),
    )
    one = PoolBalancer(pool_, secret=b"process one")
    two = PoolBalancer(pool_, secret=b"process two")
    assert one.token(one.servers[0]) == two.token(two.servers[0])
    unconfigured = dataclasses.replace(pool_, cookie=StickyCookie())
    assert PoolBalancer(unconfigured).token(one.servers[0]) != PoolBalancer(unconfigured).token(
        one.servers[0]
    ), "without any secret each balancer makes its own"


def test_balancer_sticky_header_only_when_the_cookie_does_not_already_stick() -> None:
    balancer = modes("cookie", server("a"), server("b"))
    a, b = balancer.servers
    token = balancer.token(a)
    assert balancer.sticky_header(a, Pick(sticky=token), secure=False) == ()
    assert balancer.sticky_header(a, ANY, secure=True) == (
        (b"set-cookie", f"wsproxy_server={token}; Path=/; HttpOnly; SameSite=Lax; Secure".encode()),
    )
    (header,) = balancer.sticky_header(b, Pick(sticky=token), secure=False)
    assert header[1].startswith(f"wsproxy_server={balancer.token(b)};".encode())
    assert modes("round_robin", server("a")).sticky_header(a, ANY, secure=False) == ()


# --- max_connections_per_server and refusals ------------------------------------------------


def test_balancer_full_server_is_skipped_and_all_full_is_503_with_retry_after() -> None:
    balancer = modes("round_robin", server("a"), server("b"), max_connections_per_server=2)
    a, b = balancer.servers
    a.sessions = 2
    assert names(balancer, 3) == "bbb"
    b.connecting, b.sessions = 1, 1
    assert balancer.choose(0.0) is None
    refusal = balancer.refusal(0.0)
    assert (refusal.status, refusal.headers) == (503, ((b"retry-after", b"5"),))
    assert "max_connections_per_server" in refusal.reason


def test_balancer_no_healthy_server_is_503_without_retry_after() -> None:
    balancer = modes("round_robin", server("a"))
    balancer.servers[0].failed(0.0)
    refusal = balancer.refusal(0.5)
    assert (refusal.status, refusal.reason, refusal.headers) == (
        503,
        "no healthy server in pool main",
        (),
    )


# --- sessions, DNS and status ----------------------------------------------------------------


def test_balancer_started_and_ended_count_sessions() -> None:
    balancer = modes("round_robin", server("a"))
    (a,) = balancer.servers
    balancer.started(a)
    balancer.started(a)
    balancer.ended(a)
    assert (a.sessions, a.sessions_total) == (1, 2)


def test_balancer_hostnames_are_the_servers_to_resolve() -> None:
    named = server("app.internal")
    balancer = modes("round_robin", server("10.0.0.1"), named, server("::1"))
    assert balancer.hostnames() == [named]


def test_balancer_a_name_is_dialled_as_is_until_it_resolves() -> None:
    named = server("app.internal")
    balancer = modes("round_robin", server("10.0.0.1"), named)
    assert [(s.key, s.address) for s in balancer.servers] == [
        ("ws://10.0.0.1:9000", "10.0.0.1"),
        ("ws://app.internal:9000", "app.internal"),
    ]
    added, removed = balancer.resolved(named, ["10.0.0.8", "10.0.0.7", "10.0.0.8"])
    assert added == ["ws://app.internal:9000 (10.0.0.8)", "ws://app.internal:9000 (10.0.0.7)"]
    assert removed == ["ws://app.internal:9000"]
    assert [s.address for s in balancer.servers] == ["10.0.0.1", "10.0.0.8", "10.0.0.7"]
    assert balancer.retired == [], "the name had no sessions, so it is forgotten"


def test_balancer_an_address_that_goes_keeps_its_sessions_and_takes_no_new_ones() -> None:
    named = server("app.internal")
    states = ServerStates()
    balancer = PoolBalancer(Pool(name="main", servers=(named,)), states)
    balancer.resolved(named, ["10.0.0.7", "10.0.0.8"])
    old, kept = balancer.servers
    balancer.started(old)
    assert balancer.resolved(named, ["10.0.0.8"]) == ([], [old.key])
    assert not old.listed
    assert all(balancer.choose(0.0) is kept for _ in range(5))
    status = balancer.status(0.0)
    assert [(s.address, s.listed, s.sessions) for s in status.servers] == [
        ("10.0.0.8", True, 0),
        ("10.0.0.7", False, 1),
    ]
    assert status.sessions == 1
    balancer.ended(old)
    assert balancer.retired == []
    assert [s.address for s in balancer.status(0.0).servers] == ["10.0.0.8"]
    assert len(states) == 1, "forgotten once its last session ended"


def test_balancer_an_address_that_comes_back_keeps_its_counts() -> None:
    named = server("app.internal")
    balancer = modes("round_robin", named)
    balancer.resolved(named, ["10.0.0.7"])
    (state,) = balancer.servers
    balancer.started(state)
    balancer.resolved(named, ["10.0.0.8"])
    added, removed = balancer.resolved(named, ["10.0.0.7", "10.0.0.8"])
    assert (added, removed) == (["ws://app.internal:9000 (10.0.0.7)"], [])
    assert balancer.servers[0] is state
    assert state.listed
    assert state.sessions_total == 1
    assert balancer.retired == []
    assert balancer.resolved(named, ["10.0.0.8", "10.0.0.7"]) == ([], []), "order is no change"


def test_balancer_status_counts_healthy_servers_and_sessions() -> None:
    balancer = modes("least_connections", server("a"), server("b"), server("c"))
    a, b, c = balancer.servers
    a.sessions, b.sessions = 2, 1
    c.failed(10.0)
    status = balancer.status(10.5)
    assert (status.pool, status.balance, status.healthy, status.sessions) == (
        "main",
        "least_connections",
        2,
        3,
    )
    assert [s.health for s in status.servers] == ["up", "up", "ejected"]
    assert balancer.any_healthy(10.5)


# --- effective weight: agents and drains ---------------------------------------------------


@pytest.mark.parametrize("balance", ["round_robin", "least_connections", "random"])
def test_balancer_a_server_at_effective_weight_0_is_never_chosen(balance: str) -> None:
    balancer = modes(balance, server("a"), server("b"), server("c"))
    a, b, _ = balancer.servers
    a.agent_weight = 0
    b.start_drain("admin", 30.0, 1012, 0.0)
    assert set(names(balancer, 60)) == {"c"}
    assert balancer.choose(0.0, exclude=balancer.servers[2:]) is None


def test_balancer_hash_key_of_a_server_at_0_goes_to_the_next_and_comes_back() -> None:
    balancer = hashing(*(server(f"s{i}") for i in range(4)))
    owner = balancer.choose(0.0, Pick(key="k"))
    assert owner is not None
    owner.start_drain("agent", 30.0, 1012, 0.0)
    second = balancer.choose(0.0, Pick(key="k"))
    assert second is not None
    assert second is not owner
    owner.end_drain("agent")
    assert balancer.choose(0.0, Pick(key="k")) is owner


def test_balancer_cookie_of_a_draining_server_is_not_honoured() -> None:
    balancer = modes("cookie", server("a"), server("b"))
    a, b = balancer.servers
    a.start_drain("admin", 30.0, 1012, 0.0)
    assert balancer.choose(0.0, Pick(sticky=balancer.token(a))) is b


def test_balancer_round_robin_follows_the_agents_weights() -> None:
    balancer = PoolBalancer(pool(server("a", 1), server("b", 1), server("c", 1)))
    a, _, _ = balancer.servers
    a.agent_weight = 5  # as the configured weights 5 1 1: nginx's sequence
    assert names(balancer, 14) == "aabacaa" * 2
    a.agent_weight = None
    assert Counter(names(balancer, 300)) == {"a": 100, "b": 100, "c": 100}


def test_balancer_random_follows_the_agents_weights() -> None:
    balancer = modes("random", server("a", 3), server("b", 2), server("c", 1))
    a, b, c = balancer.servers
    a.agent_weight, b.agent_weight, c.agent_weight = 1, 2, 3
    counts = Counter(names(balancer, 3000))
    for host, ideal in (("a", 500), ("b", 1000), ("c", 1500)):
        assert abs(counts[host] - ideal) <= ideal * 0.10, counts
    a.sessions, b.sessions = 3, 1  # per agent weight 3 and 0.5: b wins every pair of a and b
    c.agent_weight = 0
    assert {balancer.choose(0.0) for _ in range(50)} == {b}


def test_balancer_least_connections_weighs_the_load_by_the_agents_weight() -> None:
    balancer = modes("least_connections", server("a"), server("b"))
    a, b = balancer.servers
    a.sessions, b.sessions = 2, 1
    assert balancer.choose(0.0) is b
    a.agent_weight = 4  # per weight 0.5 against 1
    assert balancer.choose(0.0) is a


def test_balancer_hash_ownership_follows_the_agents_weights() -> None:
    balancer = hashing(server("a", 3), server("b", 1))
    a, _ = balancer.servers
    a.agent_weight = 1
    counts = Counter(owners(balancer, range(8000)).values())
    assert 3_500 <= counts["ws://a:9000"] <= 4_500  # ideal 4,000: equal weights


def test_balancer_pool_with_every_server_at_0_refuses_503_and_is_not_ready() -> None:
    balancer = modes("round_robin", server("a"), server("b"))
    a, b = balancer.servers
    a.agent_weight = 0
    b.start_drain("agent", 30.0, 1012, 0.0)
    assert balancer.choose(0.0) is None
    refusal = balancer.refusal(0.0)
    assert (refusal.status, refusal.reason, refusal.headers) == (
        503,
        "no server in pool main takes new sessions now",
        (),
    )
    assert not balancer.any_healthy(0.0)
    status = balancer.status(0.0)
    assert status.healthy == 0
    assert [s.health for s in status.servers] == ["up", "up"], "healthy, yet taking none"
    assert [(s.effective_weight, s.draining) for s in status.servers] == [(0, False), (0, True)]
    b.end_drain()
    assert balancer.choose(0.0) is b
    assert balancer.status(0.0).healthy == 1
