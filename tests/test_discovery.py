"""DNS discovery through an injected resolver, on virtual time; and the real resolver."""

from __future__ import annotations

import logging
import socket

import pytest
import trio
import trio.testing

from wsproxy.balancer import PoolBalancer
from wsproxy.config import Pool, Server
from wsproxy.discovery import RESOLVE_TIMEOUT, keep_resolving, resolve_pool, resolve_tcp

CAP = 120.0
NAMED = Server(url="ws://app.internal:9000", host="app.internal", port=9000)
FIXED = Server(url="ws://10.0.0.1:9000", host="10.0.0.1", port=9000)


class Zone:
    """A resolver whose answers the test changes; it records each lookup's virtual time."""

    def __init__(self, **answers: list[str] | OSError) -> None:
        self.answers: dict[str, list[str] | OSError] = {
            name.replace("_", "."): answer for name, answer in answers.items()
        }
        self.lookups: list[tuple[float, str, int]] = []
        self.hang = False

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append((trio.current_time(), host, port))
        if self.hang:
            await trio.sleep_forever()
        answer = self.answers[host]
        if isinstance(answer, OSError):
            raise answer
        return list(answer)


def addresses(balancer: PoolBalancer) -> list[str]:
    return [s.address for s in balancer.servers]


async def test_discovery_each_address_becomes_a_server(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsproxy.discovery")
    balancer = PoolBalancer(Pool(name="main", servers=(FIXED, NAMED)))
    zone = Zone(app_internal=["10.0.0.7", "10.0.0.8"])
    await resolve_pool(balancer, zone)
    assert zone.lookups == [(0.0, "app.internal", 9000)], "addresses are never looked up"
    assert addresses(balancer) == ["10.0.0.1", "10.0.0.7", "10.0.0.8"]
    assert [r.getMessage() for r in caplog.records] == [
        "pool main: app.internal resolves to 10.0.0.7, 10.0.0.8 (added "
        "ws://app.internal:9000 (10.0.0.7), ws://app.internal:9000 (10.0.0.8); removed "
        "ws://app.internal:9000)"
    ]


async def test_discovery_a_change_is_logged_once_and_no_change_not_at_all(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    balancer = PoolBalancer(Pool(name="main", servers=(NAMED,)))
    zone = Zone(app_internal=["10.0.0.7"])
    await resolve_pool(balancer, zone)
    caplog.clear()
    caplog.set_level(logging.INFO, logger="wsproxy.discovery")
    await resolve_pool(balancer, zone)
    assert caplog.records == []
    zone.answers["app.internal"] = ["10.0.0.8"]
    await resolve_pool(balancer, zone)
    assert [r.getMessage() for r in caplog.records] == [
        "pool main: app.internal resolves to 10.0.0.8 (added ws://app.internal:9000 "
        "(10.0.0.8); removed ws://app.internal:9000 (10.0.0.7))"
    ]
    assert addresses(balancer) == ["10.0.0.8"]


@pytest.mark.parametrize(
    ("failure", "problem"),
    [
        (socket.gaierror(-2, "Name or service not known"), "Name or service not known"),
        (OSError("no route"), "no route"),
        ([], "the answer had no addresses"),
    ],
)
async def test_discovery_a_failed_lookup_keeps_the_last_addresses(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    failure: list[str] | OSError,
    problem: str,
) -> None:
    balancer = PoolBalancer(Pool(name="main", servers=(NAMED,)))
    zone = Zone(app_internal=["10.0.0.7"])
    await resolve_pool(balancer, zone)
    zone.answers["app.internal"] = failure
    caplog.set_level(logging.WARNING, logger="wsproxy.discovery")
    await resolve_pool(balancer, zone)
    assert addresses(balancer) == ["10.0.0.7"]
    assert [r.getMessage() for r in caplog.records] == [
        f"pool main: cannot resolve app.internal ({problem}); keeping its last addresses"
    ]


async def test_discovery_a_resolver_that_raises_keeps_the_list_and_the_loop(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    balancer = PoolBalancer(Pool(name="main", servers=(NAMED,)))
    zone = Zone(app_internal=["10.0.0.7"])
    await resolve_pool(balancer, zone)

    async def broken(host: str, port: int) -> list[str]:
        raise UnicodeError("label too long")

    with trio.move_on_after(25.0):
        await keep_resolving(balancer, broken, 10.0)
    assert addresses(balancer) == ["10.0.0.7"]
    failures = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(failures) == 2, "both rounds ran, each logged with its traceback"
    assert all(r.exc_info for r in failures)


async def test_discovery_a_lookup_that_hangs_is_cut_at_the_timeout(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    balancer = PoolBalancer(Pool(name="main", servers=(NAMED,)))
    zone = Zone(app_internal=["10.0.0.7"])
    await resolve_pool(balancer, zone)
    zone.hang = True
    start = trio.current_time()
    await resolve_pool(balancer, zone)
    assert trio.current_time() - start == RESOLVE_TIMEOUT
    assert addresses(balancer) == ["10.0.0.7"]
    assert f"no answer within {RESOLVE_TIMEOUT:g}s" in caplog.text


async def test_discovery_before_any_answer_the_name_itself_is_dialled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    balancer = PoolBalancer(Pool(name="main", servers=(NAMED,)))
    await resolve_pool(balancer, Zone(app_internal=OSError("down")))
    assert addresses(balancer) == ["app.internal"]


async def test_discovery_keep_resolving_every_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    balancer = PoolBalancer(Pool(name="main", servers=(NAMED,)))
    zone = Zone(app_internal=["10.0.0.7"])
    with trio.move_on_after(95.0):
        await keep_resolving(balancer, zone, 30.0)
    assert [time for time, _, _ in zone.lookups] == [30.0, 60.0, 90.0]
    assert addresses(balancer) == ["10.0.0.7"]


async def test_discovery_resolve_tcp_localhost_is_loopback_sorted_and_unique() -> None:
    with trio.fail_after(CAP):
        found = await resolve_tcp("localhost", 80)
    assert found
    assert found == sorted(set(found))
    assert set(found) <= {"127.0.0.1", "::1"}
