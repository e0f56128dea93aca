"""Faults end to end (issue 9, item 15): a backend that dies mid-message or freezes, a client that
stops reading or vanishes, and the proxy restarted under load. Each ends with SPEC's close codes,
promptly, and the proxy's memory stays bounded while a peer stalls.

Rules (those of tests/test_cli.py): real sockets on 127.0.0.1, real processes wherever a process
must be killed, stopped or measured (its resident memory is read from /proc); every wait is bounded;
every process started here is ended by its own handle on the way out, a stopped one continued
first.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect
from wsproto.frame_protocol import Opcode

from tests.conftest import ORIGIN, Backend, accept_upgrade, proxy_config, raw_server, start_proxy
from tests.helpers import Peer
from tests.test_cli import CAP, Lines, _child_env, echo_once, free_port, started
from tests.test_e2e import raw_client

pytestmark = pytest.mark.e2e

MiB: Final = 1 << 20
PROMPTLY: Final = 1.0  # seconds from a backend's death to the client hearing of it
# Resident memory a stalled session may add to the proxy: a chunk per direction, plus the noise
# of a Python process (allocator arenas, coverage's tracer when the run measures it). Measured:
# 0-20 KiB, with or without coverage.
RSS_SLACK: Final = 2 * MiB

# A backend that completes the upgrade, sends the start of a binary message (`between-fragments`:
# one whole 256 KiB fragment with FIN clear; `mid-frame`: the head of a 1 MiB frame and 64 KiB of
# its payload), prints "sent", and on a line from stdin resets its connection (SO_LINGER 0).
# The test kills it instead when the ending is `sigkill`.
DYING_BACKEND: Final = r"""
import base64, hashlib, socket, struct, sys
where = sys.argv[1]
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
head = b""
while b"\r\n\r\n" not in head:
    head += conn.recv(65536)
key = next(
    line.split(b":", 1)[1].strip()
    for line in head.split(b"\r\n")
    if line.lower().startswith(b"sec-websocket-key:")
)
accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
conn.sendall(
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
)
if where == "between-fragments":
    conn.sendall(b"\x02\x7f" + (256 * 1024).to_bytes(8, "big") + b"\xaa" * (256 * 1024))
else:
    conn.sendall(b"\x82\x7f" + (1024 * 1024).to_bytes(8, "big") + b"\xaa" * 65536)
print("sent", flush=True)
sys.stdin.readline()
conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
conn.close()
print("reset", flush=True)
sys.stdin.readline()
"""


def rss(pid: int) -> int:
    """The resident memory of process `pid`, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def binary_frame_head(size: int, *, masked: bool, fin: bool = True) -> bytes:
    """The head of a binary frame of `size` payload bytes (a zero mask: the payload goes as is)."""
    first = 0x82 if fin else 0x02
    return bytes([first, 0xFF if masked else 0x7F]) + size.to_bytes(8, "big") + b"\0" * 4 * masked


def write_faults_config(path: Path, text: str) -> Path:
    """`text` (listen, routes, pools and the rest) after the security block every test shares."""
    path.write_text(
        f'security:\n  allowed_origins: ["{ORIGIN}"]\n{text}',
        encoding="utf-8",
    )
    return path


@asynccontextmanager
async def python_child(script: str, *args: str) -> AsyncIterator[tuple[trio.Process, Lines]]:
    """Run `script` in a child Python; kill it (by its handle) on the way out."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_child_env(),
    )
    try:
        assert process.stdout is not None
        yield process, Lines(process.stdout)
    finally:
        process.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(CAP):
            await process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                await trio.aclose_forcefully(pipe)


# ------------------------------------------------------------- a backend killed mid-message


@pytest.mark.parametrize("ending", ["sigkill", "reset"])
async def test_faults_backend_killed_between_fragments_is_1011_to_the_client_promptly(
    nursery: trio.Nursery, ending: str
) -> None:
    """The first fragment of a message has gone through whole; the backend dies before the rest.
    The client's leg is at a frame boundary, so it hears 1011 at once."""
    async with python_child(DYING_BACKEND, "between-fragments") as (child, lines):
        with trio.fail_after(CAP):
            backend_port = int(await lines.until(""))
            running = await start_proxy(nursery, proxy_config(f"ws://127.0.0.1:{backend_port}"))
            client = await raw_client(running.port)
            await lines.until("sent")
            received = 0
            while received < 256 * 1024:
                frame = await client.receive()
                assert frame is not None
                assert frame.opcode is Opcode.BINARY
                assert isinstance(frame.payload, bytes | bytearray)
                received += len(frame.payload)
            assert received == 256 * 1024
            died = trio.current_time()
            await kill_or_reset(child, lines, ending)
            code, reason = await client.expect_close()
            heard = trio.current_time() - died
            await client.stream.aclose()
    assert (code, reason) == (1011, "backend went away")
    assert heard < PROMPTLY


@pytest.mark.parametrize("ending", ["sigkill", "reset"])
async def test_faults_backend_killed_mid_frame_drops_the_client_promptly(
    nursery: trio.Nursery, ending: str
) -> None:
    """The backend dies inside a frame whose first 64 KiB the client already has. No close frame
    can follow half a frame (and padding it would hand the client a corrupt message), so the
    client's connection is dropped at once: no hang, and nothing after the partial payload."""
    async with python_child(DYING_BACKEND, "mid-frame") as (child, lines):
        with trio.fail_after(CAP):
            backend_port = int(await lines.until(""))
            running = await start_proxy(nursery, proxy_config(f"ws://127.0.0.1:{backend_port}"))
            client = await raw_client(running.port)
            await lines.until("sent")
            received = 0
            while received < 10 + 65536:
                data = await client.stream.receive_some(65536)
                assert data
                received += len(data)
            assert received == 10 + 65536  # the frame's head and the payload sent so far
            died = trio.current_time()
            await kill_or_reset(child, lines, ending)
            rest = await client.stream.receive_some(65536)
            dropped = trio.current_time() - died
            await client.stream.aclose()
    assert rest == b""
    assert dropped < PROMPTLY


async def kill_or_reset(child: trio.Process, lines: Lines, ending: str) -> None:
    if ending == "sigkill":
        child.kill()
        await child.wait()
    else:
        assert child.stdin is not None
        await child.stdin.send_all(b"go\n")
        await lines.until("reset")


# ------------------------------------------------------------- a backend stopped by SIGSTOP


async def test_faults_stopped_backend_holds_the_proxys_memory_and_keepalive_finds_it(
    tmp_path: Path,
) -> None:
    """A frozen backend (SIGSTOP: its kernel still holds the connection; it answers nothing).
    The client goes on sending: back-pressure stops it, and the proxy's memory does not grow with
    what it sends. Keepalive (1 s + 1 s) finds the backend dead; the client hears 1011."""
    echo_port = free_port()
    async with started("echo", "--listen", f"127.0.0.1:{echo_port}") as echo:
        with trio.fail_after(CAP):
            assert await echo.echo_port() == echo_port
        config = write_faults_config(
            tmp_path / "c.yaml",
            f"""\
listen: [{{address: "127.0.0.1:0"}}]
routes: [{{path: /, pool: main}}]
pools:
  main: {{servers: ["ws://127.0.0.1:{echo_port}"]}}
keepalive: {{interval: 1s, timeout: 1s}}
""",
        )
        async with started("serve", "-c", str(config)) as proxy:
            [port] = await proxy.ready_ports()
            with trio.fail_after(CAP):
                client = await raw_client(port)
                await client.send_binary(b"before the freeze")
                frame = await client.receive()
                assert frame is not None
                assert frame.payload == b"before the freeze"
            echo.signal(signal.SIGSTOP)
            frozen = trio.current_time()  # the backend leg was last heard from just now
            try:
                # The client starts a little later, so that the proxy's last read from it is
                # clearly later than from the backend (see test_faults_client_held_back_...).
                await trio.sleep(0.3)
                before = rss(proxy.process.pid)
                attempted = 20 * MiB  # in 512 KiB messages (the default limit is 1 MiB)
                sent = 0
                chunk = b"\0" * 65536
                with trio.move_on_after(0.8):  # keepalive's verdict is due 2 s after the freeze
                    while sent < attempted:
                        await client.send(binary_frame_head(512 * 1024, masked=True))
                        for _ in range(8):
                            await client.send(chunk)
                            sent += len(chunk)
                grown = rss(proxy.process.pid) - before
                with trio.fail_after(CAP):
                    code, reason = await client.expect_close()
                heard = trio.current_time() - frozen
            finally:
                echo.signal(signal.SIGCONT)
            await client.stream.aclose()
    assert sent < attempted // 4, "the client's sends never blocked"  # measured: < 1 MiB
    assert grown < RSS_SLACK, f"the proxy grew {grown / MiB:.1f} MiB; {sent / MiB} MiB went in"
    assert (code, reason) == (1011, "backend went away")
    assert 2.0 <= heard < 2.0 + 1.5  # interval + timeout, and a margin for a busy machine


async def test_faults_client_held_back_by_a_slow_backend_is_not_declared_dead(
    nursery: trio.Nursery,
) -> None:
    """A backend that streams to the client but reads nothing: the client's upload blocks, so the
    proxy stops reading the client, and the client's pongs wait behind its upload. The client is
    alive (it reads, and answers every ping): keepalive must not drop it."""

    async def stream_never_read(stream: trio.SocketStream) -> None:
        await accept_upgrade(stream)
        peer = Peer(stream, client=False)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                await peer.send_text("news")
                await trio.sleep(0.05)

    port = await raw_server(nursery, stream_never_read)
    running = await start_proxy(
        nursery,
        proxy_config(
            f"ws://127.0.0.1:{port}",
            extra="keepalive: {interval: 300ms, timeout: 300ms}",
        ),
    )
    news = 0
    with trio.fail_after(CAP):
        client = await raw_client(running.port)
        writing = trio.Lock()  # one frame at a time: a pong waits behind the upload's frame
        async with client.stream, trio.open_nursery() as inside:

            async def upload() -> None:
                while True:  # until it blocks: the backend reads nothing
                    async with writing:
                        await client.send_binary(b"\0" * 65536)

            inside.start_soon(upload)
            with trio.move_on_after(2.5):  # four times interval + timeout
                while True:
                    frame = await client.receive()
                    assert frame is not None, "the proxy dropped a live client"
                    if frame.opcode is Opcode.PING:
                        assert isinstance(frame.payload, bytes | bytearray)
                        async with writing:
                            await client.pong(bytes(frame.payload))
                    else:
                        assert frame.payload == "news"
                        news += 1
            inside.cancel_scope.cancel()
    assert news > 30  # it went on hearing the backend all along


# ------------------------------------------------------------- a client that stops reading


async def test_faults_client_that_stops_reading_pushes_back_on_the_backend_alone(
    tmp_path: Path, nursery: trio.Nursery, backend: Backend
) -> None:
    """A backend floods a client that reads nothing: the backend's sends block, the proxy's
    memory stays put, and another session through the same proxy echoes as before."""
    attempted = 32 * MiB
    flooded = 0
    flood_done = trio.Event()

    async def flood(stream: trio.SocketStream) -> None:
        nonlocal flooded
        await accept_upgrade(stream)
        frame = binary_frame_head(65536, masked=False) + b"\xaa" * 65536
        with contextlib.suppress(trio.BrokenResourceError):  # the proxy is gone at the end
            while flooded < attempted:
                await stream.send_all(frame)
                flooded += 65536
            flood_done.set()
            await trio.sleep_forever()

    flood_port = await raw_server(nursery, flood)
    config = write_faults_config(
        tmp_path / "c.yaml",
        f"""\
listen: [{{address: "127.0.0.1:0"}}]
routes:
  - {{host: proxy.test, pool: flood}}
  - {{path: /, pool: echo}}
pools:
  flood: {{servers: ["ws://127.0.0.1:{flood_port}"]}}
  echo: {{servers: ["{backend.url}"]}}
""",
    )
    async with started("serve", "-c", str(config)) as proxy:
        [port] = await proxy.ready_ports()
        with trio.fail_after(CAP):
            await echo_once(f"ws://127.0.0.1:{port}/", "warm-up")  # so both pools' code has run
        before = rss(proxy.process.pid)
        with trio.fail_after(CAP):
            client = await raw_client(port)  # Host: proxy.test, so the flood; it never reads
        with trio.move_on_after(2.0):  # unhindered, loopback would carry it in well under 1 s
            await flood_done.wait()
        grown = rss(proxy.process.pid) - before
        with trio.fail_after(CAP):
            async with connect(f"ws://127.0.0.1:{port}/", origin=ORIGIN, proxy=None) as ws:
                for number in range(20):
                    await ws.send(f"unaffected {number}")
                    assert await ws.recv() == f"unaffected {number}"
        await client.stream.aclose()
    assert not flood_done.is_set(), "the backend's sends never blocked"
    assert flooded < attempted // 4  # measured: about 300 KiB
    assert grown < RSS_SLACK, f"the proxy grew {grown / MiB:.1f} MiB; {flooded / MiB} MiB went out"


# ------------------------------------------------------------- a client that vanishes without FIN


async def test_faults_client_vanished_mid_stream_is_found_by_keepalive_and_1001_to_backend(
    nursery: trio.Nursery,
) -> None:
    """A client that is gone without a FIN (its socket stays open; it reads nothing and answers
    no ping) while the backend streams to it: the proxy's writes to it block, so even its ping
    cannot be sent, and still the leg is dropped after interval + timeout; the backend hears 1001.
    """
    heard: list[tuple[int, str]] = []
    backend_heard = trio.Event()

    async def stream_then_listen(stream: trio.SocketStream) -> None:
        await accept_upgrade(stream)
        peer = Peer(stream, client=False)

        async def stream_to_client() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while True:
                    await peer.send_binary(b"\xaa" * 16384)

        async with trio.open_nursery() as inner:
            inner.start_soon(stream_to_client)
            heard.append(await peer.expect_close())
            backend_heard.set()
            inner.cancel_scope.cancel()

    port = await raw_server(nursery, stream_then_listen)
    running = await start_proxy(
        nursery,
        proxy_config(
            f"ws://127.0.0.1:{port}", extra="keepalive: {interval: 300ms, timeout: 300ms}"
        ),
    )
    with trio.fail_after(CAP):
        connecting = trio.current_time()
        client = await raw_client(running.port)
        await backend_heard.wait()
        found = trio.current_time() - connecting
    await client.stream.aclose()
    assert heard == [(1001, "client went away")]
    assert 0.6 <= found < 0.6 + 1.5


# ------------------------------------------------------------- the proxy restarted under load


async def test_faults_proxy_restarted_under_load_every_client_hears_a_close_code(
    tmp_path: Path,
) -> None:
    """Twenty sessions exchanging numbered messages, SIGTERM: every client hears the configured
    close code (1012) and lost nothing before it; a new process on the same port serves at once."""
    sessions = 20
    port, echo_port = free_port(), free_port()
    config = write_faults_config(
        tmp_path / "c.yaml",
        f"""\
listen: [{{address: "127.0.0.1:{port}"}}]
routes: [{{path: /, pool: main}}]
pools:
  main: {{servers: ["ws://127.0.0.1:{echo_port}"]}}
shutdown: {{drain_timeout: 500ms, close_window: 500ms, close_code: 1012}}
""",
    )
    url = f"ws://127.0.0.1:{port}/"
    ends: dict[int, tuple[int | None, int]] = {}
    exchanging = trio.Event()
    running = 0

    async def chatter(index: int) -> None:
        nonlocal running
        sequence = 0
        async with connect(url, origin=ORIGIN, proxy=None) as ws:
            try:
                while True:
                    await ws.send(f"{index}:{sequence}")
                    assert await ws.recv() == f"{index}:{sequence}"
                    sequence += 1
                    if sequence == 1:
                        running += 1
                        if running == sessions:
                            exchanging.set()
                    await trio.sleep(0.01)  # a steady load, not a busy loop on two cores
            except ConnectionClosed as closed:
                ends[index] = (closed.rcvd.code if closed.rcvd else None, sequence)

    async with started("echo", "--listen", f"127.0.0.1:{echo_port}") as echo:
        with trio.fail_after(CAP):
            assert await echo.echo_port() == echo_port
        async with started("serve", "-c", str(config)) as proxy:
            assert await proxy.ready_ports() == [port]
            with trio.fail_after(CAP):
                async with trio.open_nursery() as clients:
                    for index in range(sessions):
                        clients.start_soon(chatter, index)
                    await exchanging.wait()
                    proxy.signal(signal.SIGTERM)
            assert await proxy.exit_code() == 0
        assert sorted(ends) == list(range(sessions))
        assert {code for code, _ in ends.values()} == {1012}, ends
        assert all(count > 1 for _, count in ends.values())  # they kept talking in the drain

        async with started("serve", "-c", str(config)) as restarted:
            assert await restarted.ready_ports() == [port]
            with trio.fail_after(CAP):
                await echo_once(url, "after the restart")
