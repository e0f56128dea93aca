"""wsproxy/actions.py: the admin endpoint's actions on one process, under the autojump clock
(through HTTP, a running proxy and a supervisor: test_admin, test_workers)."""

from __future__ import annotations

from dataclasses import dataclass

import trio
import trio.testing

from tests.conftest import proxy_config
from tests.helpers import FakeSession
from wsproxy.actions import Actions
from wsproxy.closes import Close
from wsproxy.config import Config
from wsproxy.drains import Drains
from wsproxy.registry import Registry
from wsproxy.servers import ServerStates
from wsproxy.snapshot import build_snapshot


@dataclass(frozen=True)
class Named:
    """Stands for a `LiveSession`: its id and its session."""

    id: str
    session: FakeSession


def actions_for(config: Config) -> tuple[Actions, Registry]:
    registry = Registry(lambda: config)
    snapshot = build_snapshot(config, ServerStates())
    return Actions(registry, Drains(registry, lambda: snapshot)), registry


async def test_actions_close_session_asks_that_session_alone_in_the_background(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actions, registry = actions_for(proxy_config("ws://10.0.0.1:9000"))
    first, second = FakeSession(registry), FakeSession(registry)
    registry.sessions[first] = Named("a-1", first)  # type: ignore[index, assignment]
    registry.sessions[second] = Named("a-2", second)  # type: ignore[index, assignment]
    close = Close(4000, "bye")
    assert not actions.close_session("a-1", close), "the proxy does not serve yet"
    async with trio.open_nursery() as nursery:
        actions.nursery = nursery
        assert actions.close_session("a-1", close)
        assert first.asked == []  # begun, not awaited
        assert not actions.close_session("a-9", close)
    assert (first.asked, second.asked) == ([(0.0, close)], [])
    assert list(registry.sessions) == [second]  # type: ignore[comparison-overlap]


async def test_actions_drain_and_undrain_name_a_pools_server_or_return_false(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actions, _ = actions_for(proxy_config("ws://10.0.0.1:9000"))
    assert not actions.drain("nope", "ws://10.0.0.1:9000", 1.0, 1012)
    assert not actions.undrain("main", "ws://10.0.0.2:9000")
    assert actions.drain("main", "ws://10.0.0.1:9000", 1.0, 1012)
    assert actions.undrain("main", "ws://10.0.0.1:9000")
