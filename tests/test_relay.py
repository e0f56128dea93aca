"""The relay on in-memory streams and virtual time: forwarding, closes, keepalive, idle, limits."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import trio
import trio.testing
from wsproto.frame_protocol import FrameProtocol, Opcode

from tests.helpers import Peer
from wsproxy.closes import Side
from wsproxy.config import Config, Keepalive, Listener, Pool, Route, Security, Server, Timeouts
from wsproxy.relay import CLOSE_TIMEOUT, Session

INTERVAL = 20.0
TIMEOUT = 10.0
IDLE = 600.0


def make_config(**changes: object) -> Config:
    config = Config(
        listen=(Listener(address="127.0.0.1:0", host="127.0.0.1", port=0),),
        security=Security(allowed_origins=("*",), max_message_size=1000),
        timeouts=Timeouts(connect=5.0, idle=IDLE),
        keepalive=Keepalive(interval=INTERVAL, timeout=TIMEOUT),
        routes=(Route(pool="main"),),
        pools={"main": Pool(name="main", servers=(Server(url="ws://x:1", host="x", port=1),))},
    )
    return replace(config, **changes)  # type: ignore[arg-type]


@dataclass
class Rig:
    session: Session
    client: Peer  # the test's client, talking to the proxy's client leg
    backend: Peer  # the test's backend, talking to the proxy's backend leg
    done: trio.Event


@pytest.fixture
async def rig(nursery: trio.Nursery) -> Rig:
    return await start_rig(nursery, make_config())


async def start_rig(
    nursery: trio.Nursery,
    config: Config,
    *,
    client_prefix: bytes = b"",
    backend_prefix: bytes = b"",
) -> Rig:
    client_end, proxy_client_end = trio.testing.memory_stream_pair()
    backend_end, proxy_backend_end = trio.testing.memory_stream_pair()
    session = Session(
        config,
        proxy_client_end,
        proxy_backend_end,
        compressed=False,
        client_prefix=client_prefix,
        backend_prefix=backend_prefix,
    )
    done = trio.Event()

    async def run() -> None:
        await session.run()
        done.set()

    nursery.start_soon(run)
    return Rig(session, Peer(client_end, client=True), Peer(backend_end, client=False), done)


async def test_relay_messages_pass_both_ways_unchanged(rig: Rig) -> None:
    await rig.client.send_text("hello")
    frame = await rig.backend.receive()
    assert frame is not None
    assert (frame.opcode, frame.payload) == (Opcode.TEXT, "hello")
    await rig.backend.send_binary(b"\x00\x01\x02")
    frame = await rig.client.receive()
    assert frame is not None
    assert (frame.opcode, frame.payload) == (Opcode.BINARY, b"\x00\x01\x02")
    assert rig.session.messages == (1, 1)


async def test_relay_fragments_and_interleaved_ping_keep_their_order(rig: Rig) -> None:
    await rig.client.send_text("a", fin=False)
    await rig.client.ping(b"p")
    await rig.client.send_text("b", fin=True)
    kinds = []
    for _ in range(3):
        frame = await rig.backend.receive()
        assert frame is not None
        kinds.append((frame.opcode, frame.payload, frame.message_finished))
    assert kinds == [
        (Opcode.TEXT, "a", False),
        (Opcode.PING, b"p", True),
        (Opcode.TEXT, "b", True),  # wsproto reports a continuation by its message's opcode
    ]


async def test_relay_bytes_behind_the_handshake_go_first(nursery: trio.Nursery) -> None:
    early = FrameProtocol(client=True, extensions=[]).send_data("early", True)
    rig = await start_rig(nursery, make_config(), client_prefix=bytes(early))
    frame = await rig.backend.receive()
    assert frame is not None
    assert frame.payload == "early"


async def test_relay_close_handshake_passes_through(rig: Rig, autojump_clock: object) -> None:
    await rig.client.close(4001, "bye")
    assert await rig.backend.expect_close() == (4001, "bye")
    await rig.backend.close(4001, "bye")
    assert await rig.client.expect_close() == (4001, "bye")
    await rig.client.expect_eof()  # we are the client's server: we close TCP first
    await rig.backend.stream.aclose()  # the backend closes its side
    await rig.done.wait()
    assert rig.session.close is not None
    assert (rig.session.close.code, rig.session.closed_by) == (4001, Side.CLIENT)


async def test_relay_backend_lost_is_1011_to_client(rig: Rig) -> None:
    await rig.backend.stream.aclose()
    code, reason = await rig.client.expect_close()
    assert code == 1011
    assert "backend" in reason
    await rig.client.close(1011)
    await rig.client.expect_eof()
    await rig.done.wait()
    assert rig.session.closed_by is Side.BACKEND


async def test_relay_client_lost_is_1001_to_backend(rig: Rig) -> None:
    await rig.client.stream.aclose()
    assert (await rig.backend.expect_close())[0] == 1001
    await rig.backend.close(1001)
    await rig.backend.stream.aclose()  # a server closes TCP after the close handshake
    await rig.done.wait()
    assert rig.session.closed_by is Side.CLIENT


async def test_relay_unmasked_client_frame_is_1002(rig: Rig) -> None:
    await rig.client.send(b"\x81\x02hi")  # a text frame without a mask
    assert (await rig.client.expect_close())[0] == 1002
    assert (await rig.backend.expect_close())[0] == 1001


async def test_relay_oversized_message_is_1009_to_sender_1001_to_other(rig: Rig) -> None:
    await rig.backend.send_binary(b"x" * 1001)
    assert (await rig.backend.expect_close())[0] == 1009
    assert (await rig.client.expect_close())[0] == 1001


async def test_relay_keepalive_pings_a_silent_leg_at_the_interval(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    frame = await rig.client.receive()
    assert frame is not None
    assert frame.opcode is Opcode.PING
    assert trio.current_time() - start == INTERVAL
    await rig.client.pong(bytes(frame.payload))  # type: ignore[arg-type]
    # Our pong is ours: the backend never sees it, and the leg stays up.
    with trio.move_on_after(INTERVAL - 1):
        seen = await rig.backend.receive()
        assert seen is not None
        assert seen.opcode is Opcode.PING  # the backend's own keepalive ping, not the pong
    assert not rig.done.is_set()


async def test_relay_keepalive_drops_a_leg_silent_past_the_timeout(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()

    async def backend_answers_pings() -> None:
        while (frame := await rig.backend.receive()) is not None:
            if frame.opcode is Opcode.PING:
                await rig.backend.pong(bytes(frame.payload))  # type: ignore[arg-type]
            if frame.opcode is Opcode.CLOSE:
                assert frame.payload[0] == 1001
                assert trio.current_time() - start == INTERVAL + TIMEOUT
                await rig.backend.close(1001)
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(backend_answers_pings)
    await rig.done.wait()
    assert rig.session.closed_by is Side.CLIENT


async def test_relay_idle_session_is_closed_1001_both_ways(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    rig = await start_rig(nursery, make_config(keepalive=Keepalive(interval=0, timeout=1)))
    await rig.client.send_text("x")
    await rig.backend.receive()
    start = trio.current_time()
    assert (await rig.client.expect_close())[0] == 1001
    assert trio.current_time() - start == IDLE
    assert (await rig.backend.expect_close())[0] == 1001


async def test_relay_peer_that_never_answers_close_is_dropped_after_close_timeout(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    await rig.client.close(1000)
    assert (await rig.backend.expect_close())[0] == 1000
    start = trio.current_time()
    await rig.done.wait()  # the backend never answers
    assert trio.current_time() - start == CLOSE_TIMEOUT


async def test_relay_slow_reader_holds_back_the_sender(nursery: trio.Nursery) -> None:
    """Back-pressure: with lockstep streams, nothing moves until the backend reads."""
    client_end, proxy_client_end = trio.testing.lockstep_stream_pair()
    backend_end, proxy_backend_end = trio.testing.lockstep_stream_pair()
    session = Session(make_config(), proxy_client_end, proxy_backend_end, compressed=False)
    nursery.start_soon(session.run)
    client = Peer(client_end, client=True)
    sent = trio.Event()

    async def send() -> None:
        await client.send_text("first")
        await client.send_text("second")
        sent.set()

    nursery.start_soon(send)
    await trio.testing.wait_all_tasks_blocked()
    assert not sent.is_set()
    backend = Peer(backend_end, client=False)
    for expected in ("first", "second"):
        frame = await backend.receive()
        assert frame is not None
        assert frame.payload == expected
    await sent.wait()


async def test_relay_peer_pings_and_empty_pongs_pass_end_to_end(rig: Rig) -> None:
    """Regression (Autobahn 2.1): an empty pong was taken for the answer to our own ping."""
    await rig.client.ping(b"")
    frame = await rig.backend.receive()
    assert frame is not None
    assert (frame.opcode, frame.payload) == (Opcode.PING, b"")
    await rig.backend.pong(b"")
    frame = await rig.client.receive()
    assert frame is not None
    assert (frame.opcode, frame.payload) == (Opcode.PONG, b"")
