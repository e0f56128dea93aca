"""Routing on host and path, smooth weighted round robin, and ejection with backoff."""

from __future__ import annotations

from collections import Counter

import pytest

from wsproxy.balancer import PoolBalancer, find_route, host_without_port
from wsproxy.config import Pool, Route, Server
from wsproxy.servers import FIRST_EJECTION, MAX_EJECTION, ServerState, ServerStates

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


def names(balancer: PoolBalancer, count: int, now: float = 0.0) -> str:
    """The hosts of the next `count` choices, as one string."""
    chosen: list[str] = []
    for _ in range(count):
        state = balancer.choose(now)
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


def test_balancer_failed_backoff_doubles_up_to_30_seconds() -> None:
    a = ServerState(server("a"))
    now = 100.0
    backoffs: list[float] = []
    for _ in range(9):
        a.failed(now)
        backoffs.append(a.ejected_until - now)
        assert not a.healthy(now)
        assert not a.healthy(a.ejected_until - 0.001)
        assert a.healthy(a.ejected_until)
        now = a.ejected_until + 0.5
    assert backoffs == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    assert (FIRST_EJECTION, MAX_EJECTION) == (1.0, 30.0)
    assert a.failures == 9


def test_balancer_backoff_stays_capped_after_many_failures() -> None:
    state = ServerState(server("a"))
    for _ in range(1000):
        state.failed(0.0)
    assert state.ejected_until == MAX_EJECTION


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


def test_balancer_new_server_state() -> None:
    state = ServerState(server("a", 3))
    assert (state.url, state.host, state.port, state.weight) == ("ws://a:9000", "a", 9000, 3)
    assert (state.current, state.sessions, state.failures, state.ejected_until) == (0, 0, 0, 0.0)
    assert state.healthy(0.0)


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


def test_balancer_fresh_registry_makes_fresh_states() -> None:
    balancer = PoolBalancer(pool(server("a")), ServerStates())
    assert balancer.servers[0].sessions == 0
