"""Reaching a backend on in-memory streams and virtual time: success, retries, 502/503/504,
each attempt's time and the total's, and the size of the backend's answer head.

Each test gives `open_backend` a fake `dial` (`FakeNet`): every call hands the proxy one end of a
`memory_stream_pair` and runs a scripted backend on the other end, or refuses the connection.
The scripted backends read the proxy's request with an h11 server and answer with a 101, a
refusal, garbage or nothing. After the script, each backend reads until the proxy closes its end,
so a test can tell whether a failed attempt's stream was closed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11
import pytest
import trio
import trio.testing

from tests.helpers import CLIENT_KEY, upgrade_request
from wsproxy.balancer import PoolBalancer
from wsproxy.config import Pool, Server
from wsproxy.handshake import Reject, UpgradeRequest, accept_value
from wsproxy.servers import FIRST_EJECTION
from wsproxy.upstream import (
    MAX_PASSTHROUGH_BODY,
    Backend,
    Passthrough,
    dial_tcp,
    open_backend,
)

CAP = 60.0  # virtual seconds: no test may take longer
CONNECT_TIMEOUT = 5.0
MAX_HEAD = 16 * 1024
CLIENT_IP = "203.0.113.7"
PORT = 9000
# What clients read: one plain sentence, never an address, port or error text.
UNREACHABLE = Reject(502, "no backend could take the session")
TOO_SLOW = Reject(504, "the backend did not answer in time")
HEAD_TOO_LARGE = Reject(502, "the backend's answer head was too large")

ProxyEnd = trio.StapledStream[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]


@dataclass
class Attempt:
    """One call of the fake `dial`: what the backend saw, and whether the proxy closed its end."""

    host: str
    port: int
    at: float  # virtual time of the dial
    proxy_end: ProxyEnd | None = None  # None when the connection was refused
    request: h11.Request | None = None
    closed: trio.Event = field(default_factory=trio.Event)  # the backend saw EOF


Script = Callable[[trio.abc.Stream, Attempt], Awaitable[None]]


@dataclass(frozen=True)
class Fake:
    """How one backend host behaves: refuse, or run `script`; after `dial_delay` either way."""

    script: Script | None = None  # None: connection refused
    dial_delay: float = 0.0
    closed_at_dial: bool = False  # the backend's end is already closed when the dial returns


REFUSE = Fake()


class FakeNet:
    """A `dial` for `open_backend` whose backends are scripted per host."""

    def __init__(self, nursery: trio.Nursery, fakes: dict[str, Fake]) -> None:
        self.nursery = nursery
        self.fakes = fakes
        self.attempts: list[Attempt] = []

    @property
    def hosts(self) -> list[str]:
        return [attempt.host for attempt in self.attempts]

    async def dial(self, host: str, port: int) -> trio.abc.Stream:
        attempt = Attempt(host, port, trio.current_time())
        self.attempts.append(attempt)
        fake = self.fakes[host]
        await trio.sleep(fake.dial_delay)
        if fake.script is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        proxy_end, backend_end = trio.testing.memory_stream_pair()
        attempt.proxy_end = proxy_end
        if fake.closed_at_dial:
            await backend_end.aclose()
        else:
            self.nursery.start_soon(self._run, fake.script, backend_end, attempt)
        return proxy_end

    @staticmethod
    async def _run(script: Script, stream: trio.abc.Stream, attempt: Attempt) -> None:
        try:
            await script(stream, attempt)
            while await stream.receive_some(65536):
                pass  # whatever else the proxy sends is ignored
            attempt.closed.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the script closed the stream itself
        finally:
            await trio.aclose_forcefully(stream)


# --- backend scripts ---------------------------------------------------------------------------


async def read_request(stream: trio.abc.Stream, attempt: Attempt) -> h11.Connection:
    """Read the proxy's whole request into `attempt.request`; the h11 server is returned."""
    conn = h11.Connection(h11.SERVER)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Request):
            attempt.request = event
        elif isinstance(event, h11.EndOfMessage):
            return conn


def header(request: h11.Request | None, name: bytes) -> bytes:
    assert request is not None
    values = [value for field_name, value in request.headers if field_name == name]
    assert len(values) == 1, (name, values)
    return values[0]


def accepting(
    *, trailing: bytes = b"", informational: int | None = None, wrong_accept: bool = False
) -> Script:
    """A backend that answers a valid 101 (after a 1xx when asked), then `trailing` bytes."""

    async def script(stream: trio.abc.Stream, attempt: Attempt) -> None:
        conn = await read_request(stream, attempt)
        if informational is not None:
            await stream.send_all(
                conn.send(h11.InformationalResponse(status_code=informational, headers=[]))
            )
        key = header(attempt.request, b"sec-websocket-key")
        accept = accept_value(b"x" + key if wrong_accept else key)
        response = h11.InformationalResponse(
            status_code=101,
            headers=[
                (b"Upgrade", b"websocket"),
                (b"Connection", b"Upgrade"),
                (b"Sec-WebSocket-Accept", accept),
                (b"Set-Cookie", b"backend=" + attempt.host.encode()),
            ],
        )
        await stream.send_all(conn.send(response) + trailing)

    return script


def refusing(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> Script:
    """A backend that answers `status` with `headers` and a Content-Length `body`."""

    async def script(stream: trio.abc.Stream, attempt: Attempt) -> None:
        conn = await read_request(stream, attempt)
        length = (b"Content-Length", str(len(body)).encode())
        head = conn.send(h11.Response(status_code=status, headers=[*headers, length]))
        await stream.send_all(head + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))

    return script


def sending(raw: bytes, *, then_close: bool = False, pause_after: bytes = b"") -> Script:
    """A backend that answers with `raw` bytes, then maybe closes its end. With `pause_after`,
    the bytes up to and including it go first, and the rest a second later."""

    async def script(stream: trio.abc.Stream, attempt: Attempt) -> None:
        await read_request(stream, attempt)
        first, rest = raw, b""
        if pause_after:
            cut = raw.index(pause_after) + len(pause_after)
            first, rest = raw[:cut], raw[cut:]
        if first:
            await stream.send_all(first)
        if rest:
            await trio.sleep(1.0)
            await stream.send_all(rest)
        if then_close:
            await stream.aclose()

    return script


SILENT = sending(b"")  # reads the request, never answers
CLOSING = sending(b"", then_close=True)  # reads the request, closes without a word


# --- helpers -----------------------------------------------------------------------------------


def make_balancer(*hosts: str, retries: int = 2) -> PoolBalancer:
    servers = tuple(Server(url=f"ws://{host}:{PORT}", host=host, port=PORT) for host in hosts)
    return PoolBalancer(Pool(name="main", servers=servers, retries=retries))


def make_upgrade(*extra: tuple[bytes, bytes]) -> UpgradeRequest:
    return upgrade_request(*extra)


async def attempt_open(
    balancer: PoolBalancer,
    net: FakeNet,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    connect_total: float | None = None,
    max_head: int = MAX_HEAD,
    upgrade: UpgradeRequest | None = None,
) -> Backend | Passthrough | Reject:
    return await open_backend(
        balancer,
        upgrade or make_upgrade(),
        client_ip=CLIENT_IP,
        scheme="https",
        connect_timeout=connect_timeout,
        connect_total=connect_total,
        max_head=max_head,
        dial=net.dial,
    )


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings `open_backend` logged: one per failed server, with the details."""
    return [r.getMessage() for r in caplog.records if r.name == "wsproxy.upstream"]


async def expect_closed(attempt: Attempt) -> None:
    """The backend of `attempt` sees EOF: the proxy closed its end of the stream."""
    with trio.move_on_after(1.0):
        await attempt.closed.wait()
    assert attempt.closed.is_set(), f"the stream to {attempt.host} was left open"


def state(balancer: PoolBalancer, host: str) -> tuple[int, float]:
    """(failures, ejected_until) of `host`."""
    (server,) = [s for s in balancer.servers if s.host == host]
    return server.failures, server.ejected_until


# --- success -----------------------------------------------------------------------------------


async def test_open_backend_success_returns_the_stream_accept_and_trailing_bytes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        start = trio.current_time()
        net = FakeNet(nursery, {"a": Fake(accepting(trailing=b"\x81\x02hi"), dial_delay=0.25)})
        balancer = make_balancer("a")
        result = await attempt_open(balancer, net)
        assert isinstance(result, Backend)
        assert result.server is balancer.servers[0]
        assert result.stream is net.attempts[0].proxy_end
        assert result.trailing == b"\x81\x02hi"
        assert result.connect_seconds == 0.25
        assert trio.current_time() == start + 0.25
        assert result.accept.subprotocol is None
        assert result.accept.extensions is None
        assert not result.accept.deflate
        assert result.accept.headers == ((b"set-cookie", b"backend=a"),)
        assert net.hosts == ["a"]
        assert net.attempts[0].port == PORT
        assert not net.attempts[0].closed.is_set()  # the caller owns the stream now
        await result.stream.aclose()
        await expect_closed(net.attempts[0])


async def test_open_backend_without_trailing_bytes_has_empty_trailing(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(accepting())})
        result = await attempt_open(make_balancer("a"), net)
        assert isinstance(result, Backend)
        assert result.trailing == b""
        assert result.connect_seconds == 0.0
        await result.stream.aclose()


async def test_open_backend_subprotocol_and_deflate_are_judged_against_the_client_offer(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def script(stream: trio.abc.Stream, attempt: Attempt) -> None:
        conn = await read_request(stream, attempt)
        key = header(attempt.request, b"sec-websocket-key")
        response = h11.InformationalResponse(
            status_code=101,
            headers=[
                (b"Upgrade", b"websocket"),
                (b"Connection", b"Upgrade"),
                (b"Sec-WebSocket-Accept", accept_value(key)),
                (b"Sec-WebSocket-Protocol", b"chat.v2"),
                (b"Sec-WebSocket-Extensions", b"permessage-deflate"),
            ],
        )
        await stream.send_all(conn.send(response))

    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(script)})
        upgrade = make_upgrade(
            (b"Sec-WebSocket-Protocol", b"chat.v1, chat.v2"),
            (b"Sec-WebSocket-Extensions", b"permessage-deflate; client_max_window_bits"),
        )
        result = await attempt_open(make_balancer("a"), net, upgrade=upgrade)
        assert isinstance(result, Backend)
        assert result.accept.subprotocol == "chat.v2"
        assert result.accept.extensions == "permessage-deflate"
        assert result.accept.deflate
        request = net.attempts[0].request
        assert header(request, b"sec-websocket-protocol") == b"chat.v1, chat.v2"
        assert header(request, b"sec-websocket-extensions") == (
            b"permessage-deflate; client_max_window_bits"
        )
        await result.stream.aclose()


@pytest.mark.parametrize("status", [100, 103])
async def test_open_backend_informational_answers_before_the_101_are_skipped(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, status: int
) -> None:
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(accepting(informational=status, trailing=b"ws"))})
        result = await attempt_open(make_balancer("a"), net)
        assert isinstance(result, Backend)
        assert result.trailing == b"ws"
        await result.stream.aclose()


async def test_open_backend_request_carries_forwarding_headers_and_a_fresh_key(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(accepting())})
        upgrade = make_upgrade((b"X-Forwarded-For", b"10.0.0.1"), (b"Cookie", b"sid=42"))
        result = await attempt_open(make_balancer("a"), net, upgrade=upgrade)
        assert isinstance(result, Backend)
        await result.stream.aclose()
        request = net.attempts[0].request
        assert request is not None
        assert (request.method, request.target, request.http_version) == (
            b"GET",
            b"/chat?room=1",
            b"1.1",
        )
        assert header(request, b"host") == b"proxy.example.com"
        assert header(request, b"x-forwarded-for") == b"10.0.0.1, " + CLIENT_IP.encode()
        assert header(request, b"x-forwarded-proto") == b"https"
        assert header(request, b"x-forwarded-host") == b"proxy.example.com"
        assert header(request, b"x-real-ip") == CLIENT_IP.encode()
        assert header(request, b"origin") == b"https://app.example.com"
        assert header(request, b"cookie") == b"sid=42"
        assert header(request, b"upgrade") == b"websocket"
        assert header(request, b"sec-websocket-version") == b"13"
        key = header(request, b"sec-websocket-key")
        assert key != CLIENT_KEY  # the backend leg gets its own key
        assert len(key) == 24


async def test_open_backend_success_resets_the_failure_count(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(accepting())})
        balancer = make_balancer("a")
        server = balancer.servers[0]
        for _ in range(3):
            server.failed(trio.current_time() - 100.0)  # ejections long over
        assert server.failures == 3
        result = await attempt_open(balancer, net)
        assert isinstance(result, Backend)
        assert state(balancer, "a") == (0, 0.0)
        await result.stream.aclose()


# --- retries and 502 ---------------------------------------------------------------------------


async def test_open_backend_refused_connect_tries_the_next_server(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        start = trio.current_time()
        net = FakeNet(nursery, {"a": REFUSE, "b": Fake(accepting())})
        balancer = make_balancer("a", "b")
        result = await attempt_open(balancer, net)
        assert isinstance(result, Backend)
        assert result.server is balancer.servers[1]
        assert net.hosts == ["a", "b"]
        assert state(balancer, "a") == (1, start + FIRST_EJECTION)
        assert state(balancer, "b") == (0, 0.0)
        await result.stream.aclose()


async def test_open_backend_gives_up_after_retries_with_502_and_logs_each_reason(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(CAP):
        start = trio.current_time()
        net = FakeNet(nursery, {host: REFUSE for host in "abcd"})
        balancer = make_balancer("a", "b", "c", "d", retries=2)
        result = await attempt_open(balancer, net)
        assert result == UNREACHABLE
        assert logged(caplog) == [
            f"backend ws://{host}:9000 failed: connect to {host}:9000: Connection refused"
            for host in "abc"
        ]
        assert net.hosts == ["a", "b", "c"]  # one try and two retries; d is never dialled
        for host in "abc":
            assert state(balancer, host) == (1, start + FIRST_EJECTION)
        assert state(balancer, "d") == (0, 0.0)


async def test_open_backend_no_retries_means_one_try(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": REFUSE, "b": Fake(accepting())})
        result = await attempt_open(make_balancer("a", "b", retries=0), net)
        assert isinstance(result, Reject)
        assert result.status == 502
        assert net.hosts == ["a"]


async def test_open_backend_never_tries_the_same_server_twice(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": REFUSE, "b": REFUSE})
        result = await attempt_open(make_balancer("a", "b", retries=5), net)
        assert result == UNREACHABLE
        assert net.hosts == ["a", "b"]


async def test_open_backend_oserror_without_strerror_logs_its_message(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def dial(host: str, port: int) -> trio.abc.Stream:
        raise OSError(f"all attempts to connect to {host}:{port} failed")

    with trio.fail_after(CAP):
        result = await open_backend(
            make_balancer("a"),
            make_upgrade(),
            client_ip=CLIENT_IP,
            scheme="http",
            connect_timeout=CONNECT_TIMEOUT,
            max_head=MAX_HEAD,
            dial=dial,
        )
        assert result == UNREACHABLE
        assert logged(caplog) == [
            "backend ws://a:9000 failed: connect to a:9000: "
            "all attempts to connect to a:9000 failed"
        ]


async def test_open_backend_all_servers_ejected_is_503_without_dialling(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(accepting()), "b": Fake(accepting())})
        balancer = make_balancer("a", "b")
        start = trio.current_time()
        for server in balancer.servers:
            server.failed(start)
        result = await attempt_open(balancer, net)
        assert result == Reject(503, "no healthy server in pool main")
        assert net.hosts == []
        assert trio.current_time() == start


async def test_open_backend_skips_an_ejected_server(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(accepting()), "b": Fake(accepting())})
        balancer = make_balancer("a", "b")
        balancer.servers[0].failed(trio.current_time())
        result = await attempt_open(balancer, net)
        assert isinstance(result, Backend)
        assert net.hosts == ["b"]
        await result.stream.aclose()


async def test_open_backend_invalid_101_fails_ejects_and_closes_the_stream(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(CAP):
        start = trio.current_time()
        net = FakeNet(nursery, {"a": Fake(accepting(wrong_accept=True))})
        balancer = make_balancer("a")
        result = await attempt_open(balancer, net)
        assert result == UNREACHABLE
        assert logged(caplog) == [
            "backend ws://a:9000 failed: the backend's handshake answer was not valid WebSocket: "
            "Sec-WebSocket-Accept does not match the key"
        ]
        assert state(balancer, "a") == (1, start + FIRST_EJECTION)
        assert not balancer.any_healthy(trio.current_time())
        await expect_closed(net.attempts[0])


async def test_open_backend_invalid_101_then_a_good_server(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        net = FakeNet(
            nursery, {"a": Fake(accepting(wrong_accept=True)), "b": Fake(accepting(trailing=b"x"))}
        )
        balancer = make_balancer("a", "b")
        result = await attempt_open(balancer, net)
        assert isinstance(result, Backend)
        assert result.server.host == "b"
        assert result.trailing == b"x"
        assert state(balancer, "a")[0] == 1
        await expect_closed(net.attempts[0])
        await result.stream.aclose()


async def test_open_backend_garbage_answer_is_502(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(sending(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"))})
        balancer = make_balancer("a")
        result = await attempt_open(balancer, net)
        assert result == UNREACHABLE
        assert logged(caplog) == [
            "backend ws://a:9000 failed: the backend's answer was not valid HTTP"
        ]
        assert state(balancer, "a")[0] == 1
        await expect_closed(net.attempts[0])


async def test_open_backend_backend_closing_without_an_answer_is_502(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The logged reason is the one `_handshake` has for this case, not h11's message."""
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(CLOSING)})
        balancer = make_balancer("a")
        result = await attempt_open(balancer, net)
        assert result == UNREACHABLE
        assert state(balancer, "a")[0] == 1
        proxy_end = net.attempts[0].proxy_end
        assert proxy_end is not None
        with pytest.raises(trio.ClosedResourceError):
            await proxy_end.send_all(b"x")  # the proxy closed its end too
        assert logged(caplog) == [
            "backend ws://a:9000 failed: the backend closed the connection without answering"
        ]


async def test_open_backend_backend_closing_mid_answer_is_502(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(sending(b"HTTP/1.1 101 Swi", then_close=True))})
        result = await attempt_open(make_balancer("a"), net)
        assert result == UNREACHABLE
        assert logged(caplog) == [
            "backend ws://a:9000 failed: the backend's answer was not valid HTTP"
        ]


async def test_open_backend_reset_before_the_request_is_502(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(accepting(), closed_at_dial=True)})
        balancer = make_balancer("a")
        result = await attempt_open(balancer, net)
        assert result == UNREACHABLE
        assert logged(caplog) == ["backend ws://a:9000 failed: the backend reset the connection"]
        assert state(balancer, "a")[0] == 1


# --- passthrough -------------------------------------------------------------------------------


async def test_open_backend_non_101_is_passed_through_with_end_to_end_headers(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    headers = [
        (b"Content-Type", b"text/plain"),
        (b"WWW-Authenticate", b'Bearer realm="chat"'),
        (b"Connection", b"close, X-Hop"),
        (b"X-Hop", b"only for this connection"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Set-Cookie", b"a=1"),
    ]
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(refusing(401, headers, b"log in first\n"))})
        balancer = make_balancer("a")
        balancer.servers[0].failed(trio.current_time() - 100.0)
        result = await attempt_open(balancer, net)
        assert result == Passthrough(
            server=balancer.servers[0],
            status=401,
            reason=b"",
            headers=(
                (b"content-type", b"text/plain"),
                (b"www-authenticate", b'Bearer realm="chat"'),
                (b"set-cookie", b"a=1"),
            ),
            body=b"log in first\n",
        )
        assert state(balancer, "a") == (0, 0.0)  # a complete answer means the server is alive
        assert net.hosts == ["a"]
        await expect_closed(net.attempts[0])


async def test_open_backend_passthrough_keeps_the_reason_phrase_and_is_not_retried(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    raw = b"HTTP/1.1 403 Go Away\r\nContent-Length: 3\r\n\r\nno\n"
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(sending(raw)), "b": Fake(accepting())})
        result = await attempt_open(make_balancer("a", "b"), net)
        assert isinstance(result, Passthrough)
        assert (result.status, result.reason, result.headers, result.body) == (
            403,
            b"Go Away",
            (),
            b"no\n",
        )
        assert net.hosts == ["a"]
        await expect_closed(net.attempts[0])


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 403 Go Away\r\nContent-Length: 3\r\n\r\nno\n",
        b"HTTP/1.1 403 Go Away\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nno\n\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_open_backend_passthrough_body_behind_a_head_sent_alone(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, raw: bytes
) -> None:
    """The body comes a second after the head: it is waited for, and the server is alive."""
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(sending(raw, pause_after=b"\r\n\r\n"))})
        balancer = make_balancer("a")
        result = await attempt_open(balancer, net)
        assert isinstance(result, Passthrough)
        assert (result.status, result.body) == (403, b"no\n")
        assert state(balancer, "a") == (0, 0.0)


async def test_open_backend_passthrough_body_until_close_behind_a_head_sent_alone(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    raw = b"HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\ntry later"
    with trio.fail_after(CAP):
        script = sending(raw, then_close=True, pause_after=b"\r\n\r\n")
        net = FakeNet(nursery, {"a": Fake(script)})
        result = await attempt_open(make_balancer("a"), net)
        assert isinstance(result, Passthrough)
        assert (result.status, result.body) == (503, b"try later")


async def test_open_backend_passthrough_body_until_close(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    raw = b"HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\ntry later"
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(sending(raw, then_close=True))})
        result = await attempt_open(make_balancer("a"), net)
        assert isinstance(result, Passthrough)
        assert (result.status, result.headers, result.body) == (503, (), b"try later")


async def test_open_backend_passthrough_body_of_the_maximum_size_is_kept(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    body = bytes(range(256)) * (MAX_PASSTHROUGH_BODY // 256)
    assert len(body) == MAX_PASSTHROUGH_BODY
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(refusing(400, [], body))})
        result = await attempt_open(make_balancer("a"), net)
        assert isinstance(result, Passthrough)
        assert result.body == body


async def test_open_backend_passthrough_body_over_the_maximum_is_a_failure(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(CAP):
        start = trio.current_time()
        body = b"x" * (MAX_PASSTHROUGH_BODY + 1)
        net = FakeNet(nursery, {"a": Fake(refusing(400, [], body))})
        balancer = make_balancer("a")
        result = await attempt_open(balancer, net)
        assert result == UNREACHABLE
        assert logged(caplog) == [
            "backend ws://a:9000 failed: the backend's refusal had an oversized body"
        ]
        assert state(balancer, "a") == (1, start + FIRST_EJECTION)
        await expect_closed(net.attempts[0])


# --- each attempt's time, the total, and 504 ---------------------------------------------------


async def test_open_backend_silent_backend_is_504_exactly_at_the_connect_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(CAP):
        start = trio.current_time()
        net = FakeNet(nursery, {"a": Fake(SILENT)})
        balancer = make_balancer("a")
        result = await attempt_open(balancer, net)
        assert result == TOO_SLOW
        assert trio.current_time() == start + CONNECT_TIMEOUT
        assert state(balancer, "a") == (1, start + CONNECT_TIMEOUT + FIRST_EJECTION)
        assert logged(caplog) == [
            "backend ws://a:9000 failed: no answer within 5s (timeouts.connect)"
        ]
        await expect_closed(net.attempts[0])


async def test_open_backend_hanging_dial_is_504_at_the_connect_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        start = trio.current_time()
        net = FakeNet(nursery, {"a": Fake(accepting(), dial_delay=3600.0)})
        result = await attempt_open(make_balancer("a"), net, connect_timeout=2.5)
        assert result == TOO_SLOW
        assert trio.current_time() == start + 2.5
        assert net.attempts[0].proxy_end is None


@pytest.mark.parametrize("hung", [Fake(SILENT), Fake(accepting(), dial_delay=3600.0)])
async def test_open_backend_hung_server_costs_one_connect_timeout_then_the_next_answers(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, hung: Fake
) -> None:
    """A frozen server (accepts, never answers; or never accepts) no longer eats the budget."""
    with trio.fail_after(CAP):
        start = trio.current_time()
        net = FakeNet(nursery, {"a": hung, "b": Fake(accepting(trailing=b"ws"))})
        balancer = make_balancer("a", "b")
        result = await attempt_open(balancer, net)
        assert isinstance(result, Backend)
        assert result.server.host == "b"
        assert result.trailing == b"ws"
        assert trio.current_time() == start + CONNECT_TIMEOUT
        assert result.connect_seconds == CONNECT_TIMEOUT
        assert [(attempt.host, attempt.at) for attempt in net.attempts] == [
            ("a", start),
            ("b", start + CONNECT_TIMEOUT),
        ]
        assert state(balancer, "a") == (1, start + CONNECT_TIMEOUT + FIRST_EJECTION)
        assert state(balancer, "b") == (0, 0.0)
        await result.stream.aclose()


async def test_open_backend_each_retry_gets_its_own_connect_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        start = trio.current_time()
        net = FakeNet(
            nursery,
            {"a": Fake(dial_delay=3.0), "b": Fake(SILENT, dial_delay=1.0), "c": Fake(accepting())},
        )
        balancer = make_balancer("a", "b", "c")
        result = await attempt_open(balancer, net)
        assert isinstance(result, Backend)
        assert result.server.host == "c"
        assert trio.current_time() == start + 3.0 + CONNECT_TIMEOUT  # b had a whole 5 s
        assert [(attempt.host, attempt.at) for attempt in net.attempts] == [
            ("a", start),
            ("b", start + 3.0),
            ("c", start + 3.0 + CONNECT_TIMEOUT),
        ]
        assert state(balancer, "a") == (1, start + 3.0 + FIRST_EJECTION)
        assert state(balancer, "b") == (1, start + 3.0 + CONNECT_TIMEOUT + FIRST_EJECTION)
        await expect_closed(net.attempts[1])
        await result.stream.aclose()


async def test_open_backend_default_total_lets_every_attempt_use_its_whole_time(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Unset, `connect_total` is connect * (1 + retries): three silent servers, 15 s, 504."""
    with trio.fail_after(CAP):
        start = trio.current_time()
        net = FakeNet(nursery, {host: Fake(SILENT) for host in "abcd"})
        balancer = make_balancer("a", "b", "c", "d", retries=2)
        result = await attempt_open(balancer, net)
        assert result == TOO_SLOW
        assert trio.current_time() == start + 3 * CONNECT_TIMEOUT
        assert [attempt.at for attempt in net.attempts] == [start, start + 5.0, start + 10.0]
        for host, failed_at in (("a", 5.0), ("b", 10.0), ("c", 15.0)):
            assert state(balancer, host) == (1, start + failed_at + FIRST_EJECTION)
        assert state(balancer, "d") == (0, 0.0)
        for attempt in net.attempts:
            await expect_closed(attempt)


async def test_open_backend_total_exhausted_is_504_and_spares_the_server_it_cut_short(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(CAP):
        start = trio.current_time()
        net = FakeNet(nursery, {host: Fake(SILENT) for host in "abc"})
        balancer = make_balancer("a", "b", "c", retries=2)
        result = await attempt_open(balancer, net, connect_total=12.0)
        assert result == TOO_SLOW
        assert trio.current_time() == start + 12.0
        assert [attempt.at for attempt in net.attempts] == [start, start + 5.0, start + 10.0]
        assert state(balancer, "c") == (0, 0.0)  # 2 s of its 5: the client's budget ran out
        assert logged(caplog)[-1] == (
            "backend ws://c:9000 failed: no answer within the 12s of timeouts.connect_total"
        )
        await expect_closed(net.attempts[2])


async def test_open_backend_total_shorter_than_one_attempt_cuts_it(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        start = trio.current_time()
        net = FakeNet(nursery, {"a": Fake(SILENT), "b": Fake(accepting())})
        balancer = make_balancer("a", "b")
        result = await attempt_open(balancer, net, connect_total=2.0)
        assert result == TOO_SLOW
        assert trio.current_time() == start + 2.0
        assert net.hosts == ["a"]
        assert state(balancer, "a") == (1, start + 2.0 + FIRST_EJECTION)


@pytest.mark.parametrize(
    ("first", "last", "answer"),
    [(Fake(SILENT), REFUSE, UNREACHABLE), (REFUSE, Fake(SILENT), TOO_SLOW)],
    ids=["timeout-then-refused", "refused-then-timeout"],
)
async def test_open_backend_answer_follows_the_last_failure(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    first: Fake,
    last: Fake,
    answer: Reject,
) -> None:
    with trio.fail_after(CAP):
        start = trio.current_time()
        net = FakeNet(nursery, {"a": first, "b": last})
        result = await attempt_open(make_balancer("a", "b"), net)
        assert result == answer
        assert trio.current_time() == start + CONNECT_TIMEOUT
        assert net.hosts == ["a", "b"]


async def test_open_backend_connect_seconds_covers_the_failed_tries(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(dial_delay=1.5), "b": Fake(accepting(), dial_delay=0.5)})
        result = await attempt_open(make_balancer("a", "b"), net)
        assert isinstance(result, Backend)
        assert result.connect_seconds == 2.0
        await result.stream.aclose()


# --- the size of the backend's answer head -----------------------------------------------------


def padded_101(key: bytes, size: int, *, status: bytes = b"101 Switching Protocols") -> bytes:
    """A valid answer head for `key` of exactly `size` bytes, blank line included."""
    head = (
        b"HTTP/1.1 " + status + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_value(key) + b"\r\nX-Pad: "
    )
    pad = size - len(head) - 4
    assert pad >= 1
    return head + b"p" * pad + b"\r\n\r\n"


def sending_head(size: int, piece: int, *, after: bytes = b"\x81\x00") -> Script:
    """A backend whose 101 head is `size` bytes, sent in pieces of `piece` bytes, then `after`."""

    async def script(stream: trio.abc.Stream, attempt: Attempt) -> None:
        await read_request(stream, attempt)
        data = padded_101(header(attempt.request, b"sec-websocket-key"), size) + after
        for at in range(0, len(data), piece):
            await stream.send_all(data[at : at + piece])
            await trio.sleep(0.001)  # each piece is its own read

    return script


@pytest.mark.parametrize("piece", [1_000_000, 4096, 1], ids=["one-write", "4KiB", "1-byte"])
async def test_open_backend_answer_head_over_max_head_is_502_however_it_arrives(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    piece: int,
) -> None:
    size = (MAX_HEAD + 1) if piece != 1 else 2049
    max_head = MAX_HEAD if piece != 1 else 2048
    with trio.fail_after(CAP):
        start = trio.current_time()
        net = FakeNet(nursery, {"a": Fake(sending_head(size, piece))})
        balancer = make_balancer("a")
        result = await attempt_open(balancer, net, max_head=max_head)
        assert result == HEAD_TOO_LARGE
        assert logged(caplog) == [
            f"backend ws://a:9000 failed: its answer head was over {max_head} bytes "
            "(security.max_header_size)"
        ]
        assert state(balancer, "a") == (1, trio.current_time() + FIRST_EJECTION)
        assert trio.current_time() - start < CONNECT_TIMEOUT
        proxy_end = net.attempts[0].proxy_end
        assert proxy_end is not None
        with pytest.raises(trio.ClosedResourceError):
            await proxy_end.send_all(b"x")  # the proxy closed its end


@pytest.mark.parametrize("piece", [1_000_000, 4096, 1], ids=["one-write", "4KiB", "1-byte"])
async def test_open_backend_answer_head_of_exactly_max_head_passes_however_it_arrives(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, piece: int
) -> None:
    size = MAX_HEAD if piece != 1 else 2048
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(sending_head(size, piece))})
        result = await attempt_open(make_balancer("a"), net, max_head=size)
        assert isinstance(result, Backend)
        assert [name for name, _ in result.accept.headers] == [b"x-pad"]
        assert result.trailing == b"\x81\x00"[: len(result.trailing)]  # what came behind it
        await result.stream.aclose()


async def test_open_backend_each_interim_head_has_the_limit_of_its_own(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def script(stream: trio.abc.Stream, attempt: Attempt) -> None:
        await read_request(stream, attempt)
        key = header(attempt.request, b"sec-websocket-key")
        interim = b"HTTP/1.1 103 Early Hints\r\nLink: " + b"l" * 1500 + b"\r\n\r\n"
        await stream.send_all(interim + padded_101(key, 2000))

    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(script)})
        result = await attempt_open(make_balancer("a"), net, max_head=2048)
        assert isinstance(result, Backend)
        await result.stream.aclose()


async def test_open_backend_oversized_refusal_head_is_502_too(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    raw = b"HTTP/1.1 401 Unauthorized\r\nX-Pad: " + b"p" * MAX_HEAD + b"\r\n\r\n"
    with trio.fail_after(CAP):
        net = FakeNet(nursery, {"a": Fake(sending(raw))})
        result = await attempt_open(make_balancer("a"), net)
        assert result == HEAD_TOO_LARGE


# --- the real dial -----------------------------------------------------------------------------


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("listen_on", "dial_to"),
    [
        ("127.0.0.1", "127.0.0.1"),  # an address: dialled directly
        ("127.0.0.1", "localhost"),  # a name: looked up first
        pytest.param(
            "::1",
            "::1",
            marks=pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here"),
        ),
    ],
)
async def test_dial_tcp_connects_with_nodelay(listen_on: str, dial_to: str) -> None:
    with trio.fail_after(10):
        listeners = await trio.open_tcp_listeners(0, host=listen_on)
        (listener,) = listeners
        port = listener.socket.getsockname()[1]
        async with listener:
            stream = await dial_tcp(dial_to, port)
            async with stream, await listener.accept():
                assert isinstance(stream, trio.SocketStream)
                nodelay = stream.getsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY)
                assert nodelay != 0


async def test_dial_tcp_loopback_connect_returns_a_working_stream() -> None:
    """A loopback connect is over when `connect` returns: the stream comes back (without a wait
    for writability) and carries bytes."""
    with trio.fail_after(10):
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listener.socket.getsockname()[1]
        async with listener:
            stream = await dial_tcp("127.0.0.1", port)
            async with stream, await listener.accept() as accepted:
                await stream.send_all(b"ping")
                assert await accepted.receive_some(4) == b"ping"


async def test_dial_tcp_in_a_cancelled_scope_is_cancelled_before_it_connects() -> None:
    """A dial is a cancel point even though a loopback connect never waits: a health check
    whose loop a reload cancelled cannot go on to count a verdict after the reload."""
    with trio.fail_after(10):
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listener.socket.getsockname()[1]
        async with listener:
            with trio.CancelScope() as scope:
                scope.cancel()
                await dial_tcp("127.0.0.1", port)
            assert scope.cancelled_caught
            queued, _, _ = select.select([listener.socket.fileno()], [], [], 0)
            assert queued == []  # nothing was dialled (a loopback connect queues at once)


async def test_dial_tcp_refused_address_raises_oserror_and_leaks_no_socket() -> None:
    with trio.fail_after(10):
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        await listener.aclose()
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(OSError, match="refused") as refused:
            await dial_tcp("127.0.0.1", port)
        assert len(os.listdir("/proc/self/fd")) == before
        # The error is the kernel's own, as the log line quotes it (no address repeated in it).
        assert refused.value.errno == errno.ECONNREFUSED
        assert refused.value.strerror == os.strerror(errno.ECONNREFUSED)


async def test_dial_tcp_cancelled_while_connecting_leaks_no_socket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A SYN nobody answers (a non-routable address) keeps the connect waiting; cancelling it
    closes the socket."""
    before = len(os.listdir("/proc/self/fd"))
    # (OSError: no route here at all, so nothing to wait for and nothing to cancel.)
    with trio.move_on_after(1), contextlib.suppress(OSError):
        await dial_tcp("10.255.255.1", 9)
    assert len(os.listdir("/proc/self/fd")) == before


async def test_open_backend_default_dial_refused_is_502_naming_no_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(10):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        await listeners[0].aclose()  # nothing listens there any more
        server = Server(url=f"ws://127.0.0.1:{port}", host="127.0.0.1", port=port)
        balancer = PoolBalancer(Pool(name="main", servers=(server,), retries=0))
        result = await open_backend(
            balancer,
            make_upgrade(),
            client_ip=CLIENT_IP,
            scheme="http",
            connect_timeout=5.0,
            max_head=MAX_HEAD,
        )
    assert result == UNREACHABLE
    assert "127.0.0.1" not in result.reason
    assert str(port) not in result.reason
    (line,) = logged(caplog)
    assert line.startswith(f"backend ws://127.0.0.1:{port} failed: connect to 127.0.0.1:{port}: ")
    assert line.endswith("Connection refused")
