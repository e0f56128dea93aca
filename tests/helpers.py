"""Small test tools: a judged upgrade request to build on, an independent WebSocket peer
(wsproto's frame layer over any trio stream), one-shot HTTP requests, and a headless Chromium
driven over the DevTools protocol (for the pages wsproxy serves)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest
import trio
from websockets.trio.client import ClientConnection, connect
from wsproto.frame_protocol import Frame, FrameProtocol, Opcode

from wsproxy import parking
from wsproxy.closes import Close
from wsproxy.config import Security
from wsproxy.handshake import UpgradeRequest, judge_request
from wsproxy.parking import Parker
from wsproxy.registry import Registry
from wsproxy.servers import ServerState

CLIENT_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example key


def upgrade_request(*extra: tuple[bytes, bytes], target: bytes = b"/chat?room=1") -> UpgradeRequest:
    """A client's upgrade request for `target` that passed every check, plus `extra` headers."""
    request = h11.Request(
        method=b"GET",
        target=target,
        headers=[
            (b"Host", b"proxy.example.com"),
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Key", CLIENT_KEY),
            (b"Sec-WebSocket-Version", b"13"),
            (b"Origin", b"https://app.example.com"),
            *extra,
        ],
    )
    upgrade = judge_request(request, Security(allowed_origins=("*",)))
    assert isinstance(upgrade, UpgradeRequest)
    return upgrade


class Peer:
    """One end of a WebSocket connection at the frame level (client=True masks its frames)."""

    def __init__(self, stream: trio.abc.Stream, *, client: bool) -> None:
        self.stream = stream
        self.protocol = FrameProtocol(client=client, extensions=[])
        self._frames: list[Frame] = []

    async def send(self, data: bytes | bytearray) -> None:
        await self.stream.send_all(data)

    async def send_text(self, text: str, *, fin: bool = True) -> None:
        await self.send(self.protocol.send_data(text, fin))

    async def send_binary(self, data: bytes, *, fin: bool = True) -> None:
        await self.send(self.protocol.send_data(data, fin))

    async def ping(self, payload: bytes = b"") -> None:
        await self.send(self.protocol.ping(payload))

    async def pong(self, payload: bytes = b"") -> None:
        await self.send(self.protocol.pong(payload))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.send(self.protocol.close(code, reason))

    async def receive(self) -> Frame | None:
        """The next frame, or None at EOF."""
        while not self._frames:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                return None
            self.protocol.receive_bytes(bytes(data))
            self._frames.extend(self.protocol.received_frames())
        return self._frames.pop(0)

    async def expect_close(self) -> tuple[int, str]:
        """Read until a close frame; return its code and reason."""
        while True:
            frame = await self.receive()
            assert frame is not None, "EOF before a close frame"
            if frame.opcode is Opcode.CLOSE:
                assert isinstance(frame.payload, tuple)
                code, reason = frame.payload
                return int(code), reason

    async def expect_eof(self) -> None:
        frame = await self.receive()
        assert frame is None, f"expected EOF, got {frame}"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def ask(
    port: int,
    path: str,
    method: str = "GET",
    *,
    body: bytes | None = None,
    headers: tuple[str, ...] = (),
) -> Answer:
    """One request (with `body`, framed by its Content-Length, and the header lines
    `headers`); the answer is read to its Content-Length, or to the connection's end."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        sent = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        sent += [*headers, *([f"Content-Length: {len(body)}"] if body is not None else [])]
        await stream.send_all("\r\n".join([*sent, "", ""]).encode() + (body or b""))
        data = b""
        while True:
            head, blank, rest = data.partition(b"\r\n\r\n")
            if blank:
                status_line, *lines = head.decode().split("\r\n")
                answered = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines)}
                length = answered.get("content-length")
                if method == "HEAD" or (length is not None and len(rest) >= int(length)):
                    return Answer(int(status_line.split()[1]), answered, rest)
            chunk = await stream.receive_some(65536)
            if not chunk:
                assert blank, data
                return Answer(int(status_line.split()[1]), answered, rest)
            data += chunk


def chromium_or_skip() -> str:
    """Debian's chromium; `.ci/run` installs it, so under CI its absence is a failure."""
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs the Debian package)")
        pytest.skip("chromium is not installed here (.ci/run installs the Debian package)")
    return found


class DevTools:
    """Just enough of the Chrome DevTools Protocol: navigate, and evaluate an expression."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: object) -> dict[str, object]:
        self.next_id += 1
        await self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                result: dict[str, object] = message["result"]
                return result

    async def evaluate(self, expression: str) -> object:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        value = result["result"]
        assert isinstance(value, dict)
        return value.get("value")

    async def until(self, expression: str, expected: object, seconds: float = 5.0) -> None:
        """Poll `expression` in the page until it equals `expected`."""
        seen: object = None
        with trio.move_on_after(seconds):
            while (seen := await self.evaluate(expression)) != expected:  # noqa: ASYNC110
                await trio.sleep(0.05)  # the page's own state: there is no event to await
            return
        raise AssertionError(f"{expression} stayed {seen!r}, expected {expected!r}")


@asynccontextmanager
async def browser_page(tmp_path: Path) -> AsyncIterator[DevTools]:
    """A headless Chromium (started here, stopped by its PID) and a DevTools link to its page."""
    profile = tmp_path / "profile"
    process = await trio.lowlevel.open_process(
        [
            chromium_or_skip(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        active = profile / "DevToolsActivePort"
        while not active.exists() or not active.read_text().count("\n"):  # noqa: ASYNC110
            await trio.sleep(0.05)
        port = int(active.read_text().split()[0])
        (page,) = [
            target
            for target in json.loads((await ask(port, "/json/list")).body)
            if target["type"] == "page"
        ]
        async with connect(page["webSocketDebuggerUrl"], proxy=None, max_size=None) as ws:
            yield DevTools(ws)
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


# --- stand-ins for live sessions, for the paced closes of the registry and of drains ----------


@dataclass(eq=False)
class FakeSession:
    """Stands for a live session: records when it was asked to close, and with what."""

    registry: Registry
    asked: list[tuple[float, Close]] = field(default_factory=list)

    async def shutdown(self, close: Close) -> None:
        self.asked.append((trio.current_time(), close))
        await trio.sleep(0.05)  # the close handshake takes a while; it does not delay the next
        del self.registry.sessions[self]  # type: ignore[arg-type]


@dataclass(frozen=True)
class FakeBalancer:
    name: str = "main"


@dataclass(frozen=True)
class FakeLive:
    """Stands for a `LiveSession`: the server it is on and its pool's balancer's name."""

    server: ServerState
    balancer: FakeBalancer


def on(
    registry: Registry, server: ServerState, count: int, pool: str = "main"
) -> list[FakeSession]:
    """`count` fake sessions on `server`, live in `registry`."""
    sessions = [FakeSession(registry) for _ in range(count)]
    for session in sessions:
        live = FakeLive(server, FakeBalancer(pool))
        registry.sessions[session] = live  # type: ignore[index, assignment]
    return sessions


def the_parker() -> Parker:
    """This run's parker, which this trio must allow (its epoll reached): else sessions would
    never park, and a test of parking proves nothing."""
    parker = parking.parker()
    assert parker is not None, "trio's epoll could not be reached: sessions would never park"
    return parker
