"""A leg's own state: its lock (made at first use, free to be let go by another task), whether
anything more may be written to it, and the control frames it is sent (masked to a server)."""

from __future__ import annotations

import trio
import trio.testing
from wsproto.frame_protocol import FrameProtocol, Opcode

from wsproxy.closes import Side
from wsproxy.frames import OP_PING, FrameReader
from wsproxy.legs import Leg


def make_leg(side: Side) -> Leg:
    stream, _ = trio.testing.memory_stream_pair()
    return Leg(
        side,
        stream,
        FrameReader(masked=side is Side.CLIENT, compressed=False, max_message_size=1000),
    )


async def test_legs_lock_is_made_at_first_use_and_busy_while_held() -> None:
    leg = make_leg(Side.CLIENT)
    assert not leg.busy()
    assert leg._lock is None  # most legs never wait
    async with leg.lock:
        assert leg.busy()
    assert not leg.busy()


async def test_legs_lock_taken_by_one_task_is_let_go_by_another() -> None:
    """The parker's wake takes it for the pump that resumes a frame half-way."""
    leg = make_leg(Side.BACKEND)
    leg.lock.acquire_nowait()  # outside the pump's task, as the wake does

    async def pump() -> None:
        leg.lock.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
    assert not leg.busy()


async def test_legs_awaited_while_a_frame_of_ours_waits_for_the_lock() -> None:
    leg = make_leg(Side.CLIENT)
    assert not leg.awaited()  # no lock yet
    leg.lock.acquire_nowait()  # a pump is half-way through a frame
    assert not leg.awaited()
    async with trio.open_nursery() as nursery:

        async def close() -> None:
            async with leg.lock:
                pass

        nursery.start_soon(close)
        await trio.testing.wait_all_tasks_blocked()
        assert leg.awaited()
        leg.lock.release()  # the pump's frame ends: the close goes in
    assert not leg.awaited()
    assert not leg.busy()


async def test_legs_finished_once_a_close_was_written_or_it_is_lost() -> None:
    leg = make_leg(Side.CLIENT)
    assert not leg.finished()
    leg.sent_close = True
    assert leg.finished()
    other = make_leg(Side.BACKEND)
    other.lost = True
    assert other.finished()


async def test_legs_frames_to_a_server_are_masked_and_to_a_client_are_not() -> None:
    for side, masked in ((Side.BACKEND, True), (Side.CLIENT, False)):
        frame = make_leg(side).frame(OP_PING, b"hi")
        assert bool(frame[1] & 0x80) is masked
        reader = FrameProtocol(client=not masked, extensions=[])
        reader.receive_bytes(frame)
        (parsed,) = reader.received_frames()
        assert (parsed.opcode, parsed.payload) == (Opcode.PING, b"hi")
