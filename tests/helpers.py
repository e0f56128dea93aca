"""Small test tools: a judged upgrade request to build on, and an independent WebSocket peer
(wsproto's frame layer over any trio stream)."""

from __future__ import annotations

import h11
import trio
from wsproto.frame_protocol import Frame, FrameProtocol, Opcode

from wsproxy.config import Security
from wsproxy.handshake import UpgradeRequest, judge_request

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
