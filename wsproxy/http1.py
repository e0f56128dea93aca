"""HTTP/1.1 as wsproxy speaks it outside the WebSocket stream: one writer for the answers it
gives (refusals, pass-through, the 101, the admin endpoint) and one reader of the next h11 event.

Invariants:
- An answer is written by `answer_bytes` only: status line with the reason given, the headers
  in order as given, a blank line, then the body (none for a HEAD request's answer).
- `next_event` never returns `h11.NEED_DATA`: it reads from the stream until h11 has an event;
  the peer closing yields h11's own `ConnectionClosed` or `RemoteProtocolError`.
"""

from __future__ import annotations

from typing import Final

import h11
import trio

from wsproxy.handshake import Headers

CHUNK: Final = 65536


def response_head(status: int, reason: bytes, headers: Headers) -> bytes:
    """The head of an HTTP/1.1 answer."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    lines += [b"%s: %s\r\n" % (name, value) for name, value in headers]
    lines.append(b"\r\n")
    return b"".join(lines)


async def next_event(
    stream: trio.abc.ReceiveStream, conn: h11.Connection
) -> h11.Event | type[h11.PAUSED]:
    """The next event of `conn`, reading from `stream` as long as h11 needs data."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        conn.receive_data(bytes(await stream.receive_some(CHUNK)))
