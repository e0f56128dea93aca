"""wsproxy/actions.py: the admin endpoint's actions on one process, under the autojump clock
(through HTTP, a running proxy and a supervisor: test_admin, test_workers)."""

from __future__ import annotations

from dataclasses import dataclass

import trio
import trio.testing

from tests.conftest import proxy_config
from tests.helpers import FakeSession, Peer
from wsproxy.actions import Actions
from wsproxy.balancer import Pick
from wsproxy.closes import Close
from wsproxy.config import Config
from wsproxy.drains import Drains
from wsproxy.registry import LiveSession, Registry
from wsproxy.relay import Session
from wsproxy.servers import ServerStates
from wsproxy.snapshot import build_snapshot


@dataclass(frozen=True)
class Named:
    """Stands for a `LiveSession`: its id and its session."""

    id: str
    session: FakeSession


SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"


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


async def test_actions_a_close_during_the_101_waits_for_it_and_never_fails_the_nursery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = proxy_config("ws://10.0.0.1:9000")
    actions, registry = actions_for(config)
    snapshot = build_snapshot(config, ServerStates())
    client_end, proxy_client = trio.testing.lockstep_stream_pair()  # the 101 waits for a reader
    backend_end, proxy_backend = trio.testing.memory_stream_pair()
    balancer = snapshot.balancers["main"]
    live = LiveSession(
        id=registry.new_id(),
        session=Session(config, proxy_client, proxy_backend, compressed=False),
        switching=SWITCHING,
        balancer=balancer,
        server=balancer.servers[0],
        pick=Pick(),
        route="/",
        subprotocol="",
        started=trio.current_time(),
        client="10.1.0.1:40000",
    )
    client, backend = Peer(client_end, client=True), Peer(backend_end, client=False)
    async with trio.open_nursery() as nursery:
        actions.nursery = nursery
        nursery.start_soon(registry.relay, live)
        await trio.testing.wait_all_tasks_blocked()  # the 101 is being sent
        assert actions.close_session(live.id, Close(4000, "bye"))
        await trio.testing.wait_all_tasks_blocked()
        head = b""
        while len(head) < len(SWITCHING):
            head += await client_end.receive_some(len(SWITCHING) - len(head))
        assert head == SWITCHING, "the 101 first, whole"
        assert await client.expect_close() == (4000, "bye")
        assert await backend.expect_close() == (4000, "bye")
        await client.close(4000)
        await backend.close(4000)
    assert not registry.sessions
