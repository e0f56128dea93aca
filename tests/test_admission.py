"""wsproxy/admission.py: one connection's admission, on memory streams under the autojump clock.

No socket anywhere: the client is one end of `memory_stream_pair`, its address an argument, and
the backend a scripted `dial` on another pair. Every instant is exact (virtual time).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from tests.conftest import accept_upgrade
from tests.helpers import CLIENT_KEY, Peer
from wsproxy.admission import Admission
from wsproxy.config import Config, parse_config
from wsproxy.intake import LINGER
from wsproxy.listening import Listening
from wsproxy.logs import RefusalRecord
from wsproxy.registry import Registry
from wsproxy.snapshot import Snapshot, build_snapshot

PEER = ("203.0.113.7", 40112)
ORIGIN = b"https://app.example.com"
Backend = Callable[[trio.abc.Stream], Awaitable[None]]


def config_with(security: str = "", routes: str = "[{path: /, pool: main}]") -> Config:
    text = f"""
listen: [{{address: 127.0.0.1:0}}]
security:
  allowed_origins: ["{ORIGIN.decode()}"]
  handshake_timeout: 5s
{security}
routes: {routes}
pools:
  main:
    servers: [{{url: "ws://backend.test:9000"}}]
"""
    return parse_config(text, os.environ)


def request(origin: bytes = ORIGIN, target: bytes = b"/chat") -> bytes:
    return (
        b"GET %s HTTP/1.1\r\nHost: proxy.example.com\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
        b"Origin: %s\r\n\r\n" % (target, CLIENT_KEY, origin)
    )


async def read_head_of(stream: trio.abc.Stream) -> tuple[int, dict[bytes, bytes], bytes]:
    """The answer the client reads: its status, headers (lowercase names), and what follows."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, f"the proxy closed before a whole head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers = dict(line.split(b": ", 1) for line in lines)
    return int(status_line.split(b" ")[1]), {k.lower(): v for k, v in headers.items()}, rest


async def accept_and_echo(stream: trio.abc.Stream) -> None:
    """A backend that says yes, then echoes frames back (unmasked) until the proxy leaves."""
    await accept_upgrade(stream)
    peer = Peer(stream, client=False)
    while (frame := await peer.receive()) is not None:
        if frame.opcode.name == "TEXT":
            await peer.send_text(str(frame.payload))
        elif frame.opcode.name == "CLOSE":
            await peer.close(1000)
            return


async def refuse_403(stream: trio.abc.Stream) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    await stream.send_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 4\r\n\r\nnope")


class Rig:
    """An `Admission` over a registry and a snapshot, with a scripted backend."""

    def __init__(self, nursery: trio.Nursery, config: Config, backend: Backend) -> None:
        self.nursery = nursery
        self.snapshot: Snapshot = build_snapshot(config)
        self.registry = Registry(lambda: self.snapshot.config)
        self.admission = Admission(self.registry, lambda: self.snapshot, dial=self.dial)
        self.admission.reports = nursery
        self.backend = backend
        self.dials: list[tuple[str, int, float]] = []
        self.done = trio.Event()

    async def dial(self, host: str, port: int) -> trio.abc.Stream:
        self.dials.append((host, port, trio.current_time()))
        ours, theirs = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self._run_backend, theirs)
        return ours

    async def _run_backend(self, stream: trio.abc.Stream) -> None:
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.backend(stream)

    def connect(
        self, peer: tuple[str, int] = PEER, listening: Listening | None = None
    ) -> trio.abc.Stream:
        """A client connection being admitted; its end is returned."""
        client, proxy_end = trio.testing.memory_stream_pair()
        where = listening or Listening(None, position=0)  # type: ignore[arg-type]
        self.nursery.start_soon(self._handle, proxy_end, peer, where)
        return client

    async def _handle(self, stream: trio.abc.Stream, peer: object, where: Listening) -> None:
        await self.admission.handle(stream, peer, where)
        self.done.set()


def refusals(caplog: pytest.LogCaptureFixture) -> list[RefusalRecord]:
    return [
        record.__dict__["refusal"]
        for record in caplog.records
        if record.name == "wsproxy.refusals" and "refusal" in record.__dict__
    ]


@pytest.fixture
def caplog_info(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, "wsproxy")
    return caplog


async def test_admission_upgrade_relays_and_counts_the_connection_by_its_address(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig(nursery, config_with(), accept_and_echo)
    client = rig.connect()
    await trio.sleep(1.0)
    assert (rig.registry.connections, dict(rig.registry.per_ip)) == (1, {PEER[0]: 1})
    await client.send_all(request())
    status, _, _ = await read_head_of(client)
    assert status == 101
    assert trio.current_time() == 1.0  # the backend answers at once on memory streams
    assert rig.dials == [("backend.test", 9000, 1.0)]
    (live,) = rig.registry.live()
    assert (live.route, live.balancer.name, live.server.key) == ("/", "main", live.server.key)
    peer = Peer(client, client=True)
    await peer.send_text("hello")
    echoed = await peer.receive()
    assert echoed is not None
    assert echoed.payload == "hello"
    await peer.close(1000)
    await rig.done.wait()
    assert (rig.registry.connections, dict(rig.registry.per_ip)) == (0, {})
    assert not rig.registry.live()
    assert rig.registry.metrics.closes.values == {("client", "1000"): 1}


async def test_admission_head_not_whole_by_the_deadline_is_408_at_the_deadline(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    rig = Rig(nursery, config_with(), accept_and_echo)
    client = rig.connect()
    await client.send_all(request()[:20])
    status, _, body = await read_head_of(client)
    assert (status, trio.current_time()) == (408, 5.0)
    assert b"request head not received in time" in body
    assert [(r.status, r.client) for r in refusals(caplog_info)] == [(408, "203.0.113.7:40112")]
    await rig.done.wait()
    assert trio.current_time() == 5.0 + LINGER  # the client never closed: the proxy did
    assert rig.dials == []
    assert rig.registry.connections == 0


async def test_admission_proxy_header_names_the_client_for_limits_and_lines(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    rig = Rig(nursery, config_with(security="  max_connections_per_ip: 1"), accept_and_echo)
    rig.registry.opened()  # another connection from the PROXY header's client, already counted
    rig.registry.identified("198.51.100.9")
    client = rig.connect(listening=Listening(None, proxy_protocol=True))  # type: ignore[arg-type]
    await trio.sleep(2.0)
    await client.send_all(b"PROXY TCP4 198.51.100.9 203.0.113.1 5000 80\r\n" + request())
    status, headers, _ = await read_head_of(client)
    assert (status, trio.current_time()) == (429, 2.0)  # once the head is read
    assert headers[b"retry-after"] == b"5"
    assert [(r.status, r.client) for r in refusals(caplog_info)] == [(429, "198.51.100.9:5000")]
    await rig.done.wait()
    assert dict(rig.registry.per_ip) == {"198.51.100.9": 1}  # the other one's, still open


async def test_admission_refusals_judgement_route_and_backend(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    """The judgement (403), the route (404) and a backend's own answer (passed on), in order."""
    rig = Rig(nursery, config_with(routes="[{path: /chat, pool: main}]"), refuse_403)
    statuses = []
    for origin, target in (
        (b"https://evil.test", b"/chat"),
        (ORIGIN, b"/other"),
        (ORIGIN, b"/chat"),
    ):
        rig.done = trio.Event()
        client = rig.connect()
        await client.send_all(request(origin, target))
        status, _, _ = await read_head_of(client)
        statuses.append(status)
        await client.aclose()  # the polite close ends as soon as the client does
        await rig.done.wait()
    assert statuses == [403, 404, 403]
    assert [(r.status, r.path) for r in refusals(caplog_info)] == [
        (403, "/chat"),
        (404, "/other"),
        (403, "/chat"),
    ]
    assert refusals(caplog_info)[2].reason.startswith("passed on from ")
    assert rig.registry.metrics.rejections.values == {("403",): 2, ("404",): 1}
    assert len(rig.dials) == 1
    assert trio.current_time() == 0.0


async def test_admission_failure_is_logged_with_the_given_address_and_uncounted(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(nursery, config_with(), accept_and_echo)

    async def broken_dial(host: str, port: int) -> trio.abc.Stream:
        raise RuntimeError("a bug in a dial")

    rig.admission._dial = broken_dial  # a bug below admission
    client = rig.connect(peer=("2001:db8::7", 5555))
    await client.send_all(request())
    await rig.done.wait()
    (record,) = [r for r in caplog.records if r.name == "wsproxy.server"]
    assert record.getMessage() == "session of 2001:db8::7:5555 failed"
    assert (rig.registry.connections, dict(rig.registry.per_ip)) == (0, {})
    assert await client.receive_some(100) == b""  # closed, without an answer


async def test_admission_handshakes_per_ip_beyond_the_burst_are_429_with_retry_after(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    """Burst 2, one a second: the third handshake at once is 429 with Retry-After 1 (the wait
    rounded up to whole seconds, at least 1, at 0.5 s too); another address has its own
    bucket; at 1 s the first address passes again."""
    limits = "limits: {per_ip: {handshakes_per_second: 1, burst: 2}}"
    rig = Rig(nursery, config_with(security=limits), accept_and_echo)

    async def handshake(peer: tuple[str, int] = PEER) -> tuple[int, bytes | None]:
        client = rig.connect(peer)
        await client.send_all(request())
        status, headers, _ = await read_head_of(client)
        return status, headers.get(b"retry-after")

    answers = [await handshake() for _ in range(3)]
    answers.append(await handshake(("198.51.100.9", 5000)))
    assert answers == [(101, None), (101, None), (429, b"1"), (101, None)]
    await trio.sleep(0.5)
    assert await handshake() == (429, b"1")
    await trio.sleep(0.5)
    assert await handshake() == (101, None)
    assert [(r.status, r.reason) for r in refusals(caplog_info)] == [
        (429, "too many handshakes from your address")
    ] * 2
    assert rig.registry.metrics.rejections.values == {("429",): 2}
