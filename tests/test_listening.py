"""wsproxy/listening.py: the one accept loop, driven by a scripted listener under MockClock;
and the proxy and the admin endpoint, which use it, stopping on an error no pause cures."""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket

import pytest
import trio
import trio.testing

from tests.conftest import proxy_config
from wsproxy.admin import ProxyView, serve_admin
from wsproxy.listening import (
    CAPACITY_PAUSE,
    ListenError,
    accept_forever,
    bind_shared,
    host_port,
    open_listeners,
)
from wsproxy.server import Proxy


class FakeStream(trio.abc.AsyncResource):
    def __init__(self, name: str) -> None:
        self.name = name

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class FakeListener(trio.abc.Listener[FakeStream]):
    """Each `accept` takes the next item of `script`: an exception is raised, a stream is
    returned; once the script is done, `accept` waits until the listener is closed."""

    def __init__(self, *script: FakeStream | Exception) -> None:
        self.script = list(script)
        self.accepted_at: list[float] = []  # when each `accept` call began
        self.closed = trio.Event()

    async def accept(self) -> FakeStream:
        self.accepted_at.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if self.script:
            item = self.script.pop(0)
            if isinstance(item, Exception):
                raise item
            return item
        await self.closed.wait()
        raise trio.ClosedResourceError

    async def aclose(self) -> None:
        self.closed.set()
        await trio.lowlevel.checkpoint()


def os_error(code: int) -> OSError:
    return OSError(code, errno.errorcode[code])


class Handled:
    """A handler that notes each stream it was started for, and when."""

    def __init__(self) -> None:
        self.streams: list[tuple[str, float]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.streams]

    def times(self) -> list[float]:
        return [when for _, when in self.streams]

    async def __call__(self, stream: FakeStream) -> None:
        self.streams.append((stream.name, trio.current_time()))
        await trio.sleep_forever()  # a session: the loop must not wait for it


async def run_until_closed(listener: FakeListener, handle: Handled, after: float) -> None:
    """Run the loop; close `listener` `after` seconds in; return once the loop has ended."""
    async with trio.open_nursery() as handlers:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept_forever, listener, handlers, handle, "test listener")
            await trio.sleep(after)
            await listener.aclose()
        handlers.cancel_scope.cancel()


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
async def test_listening_capacity_errors_are_logged_and_retried_after_the_pause(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    listener = FakeListener(os_error(code), os_error(code), FakeStream("a"))
    handle = Handled()
    start = trio.current_time()
    await run_until_closed(listener, handle, after=10)
    offsets = [when - start for when in listener.accepted_at]
    assert offsets == pytest.approx([0, CAPACITY_PAUSE, 2 * CAPACITY_PAUSE, 2 * CAPACITY_PAUSE])
    assert handle.names() == ["a"]
    assert handle.times() == pytest.approx([start + 2 * CAPACITY_PAUSE])
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert errors[0].name == "wsproxy.listening"
    assert (
        errors[0]
        .getMessage()
        .startswith(f"test listener: accept failed with {errno.errorcode[code]} (")
    )


@pytest.mark.parametrize(
    "error",
    [
        os_error(errno.EINVAL),
        os_error(errno.ENOTSOCK),
        os_error(errno.EACCES),
        OSError("no errno at all"),
        ConnectionResetError(errno.ECONNRESET, "reset"),
    ],
)
async def test_listening_any_other_os_error_propagates_at_once(
    autojump_clock: trio.testing.MockClock, error: OSError
) -> None:
    listener = FakeListener(FakeStream("a"), error, FakeStream("never"))
    handle = Handled()
    with pytest.raises(ExceptionGroup) as caught:
        await run_until_closed(listener, handle, after=10)
    raised, others = caught.value.split(lambda exc: exc is error)
    assert raised is not None
    assert others is None
    assert len(listener.accepted_at) == 2  # no retry
    assert handle.names() == ["a"]


async def test_listening_a_closed_listener_ends_the_loop_quietly(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    listener = FakeListener()
    handle = Handled()
    await run_until_closed(listener, handle, after=5)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert handle.streams == []


async def test_listening_each_accepted_stream_gets_its_handler_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    listener = FakeListener(*(FakeStream(name) for name in "abc"))
    handle = Handled()
    start = trio.current_time()
    await run_until_closed(listener, handle, after=1)
    # Each handler runs forever, yet all three streams were handed over without delay.
    assert handle.streams == [("a", start), ("b", start), ("c", start)]


async def test_listening_serves_again_after_a_long_spell_without_descriptors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The loop keeps going through a long EMFILE spell, at one accept per pause."""
    spell = [os_error(errno.EMFILE)] * 50
    listener = FakeListener(*spell, FakeStream("after"))
    handle = Handled()
    start = trio.current_time()
    await run_until_closed(listener, handle, after=60)
    assert handle.names() == ["after"]
    assert handle.times() == pytest.approx([start + 50 * CAPACITY_PAUSE])
    assert len(listener.accepted_at) == 52


async def broken_listener() -> trio.SocketListener:
    """A real listener whose socket was shut down: its accept fails with EINVAL (Linux), an
    error no waiting cures."""
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener.socket.shutdown(socket.SHUT_RDWR)
    return listener


def only_einval(group: BaseExceptionGroup[BaseException]) -> bool:
    einval, others = group.split(lambda exc: isinstance(exc, OSError) and exc.errno == errno.EINVAL)
    return einval is not None and others is None


@pytest.mark.e2e
async def test_listening_the_proxy_stops_on_an_accept_error_no_pause_cures() -> None:
    proxy = Proxy(proxy_config("ws://127.0.0.1:9"))
    with trio.fail_after(5), pytest.raises(ExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve, [await broken_listener()])
    assert only_einval(caught.value)


@pytest.mark.e2e
async def test_listening_the_admin_endpoint_stops_on_an_accept_error_no_pause_cures() -> None:
    proxy = Proxy(proxy_config("ws://127.0.0.1:9"))
    with trio.fail_after(5), pytest.raises(ExceptionGroup) as caught:
        await serve_admin(ProxyView(proxy), await broken_listener())
    assert only_einval(caught.value)


# --- binding -----------------------------------------------------------------------------------


async def test_listening_bind_shared_lets_two_binds_share_one_port() -> None:
    first = await bind_shared("127.0.0.1", 0)
    port = first[0].getsockname()[1]
    second = await bind_shared("127.0.0.1", port)  # SO_REUSEPORT: no EADDRINUSE
    try:
        assert [s.getsockname() for s in second] == [("127.0.0.1", port)]
    finally:
        for sock in (*first, *second):
            sock.close()


async def test_listening_open_listeners_failure_names_the_key_and_address() -> None:
    taken = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = taken.socket.getsockname()[1]
    config = proxy_config("ws://127.0.0.1:9")
    config = dataclasses.replace(
        config, listen=(*config.listen, dataclasses.replace(config.listen[0], port=port))
    )
    async with taken:
        with pytest.raises(ListenError, match=r"^cannot listen on listen\[1\]\.address "):
            await open_listeners(config)


@pytest.mark.parametrize(
    ("host", "port", "written"),
    [("127.0.0.1", 80, "127.0.0.1:80"), ("::1", 8080, "[::1]:8080"), ("", 1, ":1")],
)
def test_listening_host_port_brackets_ipv6(host: str, port: int, written: str) -> None:
    assert host_port(host, port) == written


# --- a socket listener, accepted from directly (SocketAcceptor) ---------------------------------

CAP_SECONDS = 10.0


async def hold(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def queued_clients(listener: trio.SocketListener, count: int) -> list[trio.SocketStream]:
    """`count` clients connected to `listener`, queued in its backlog (not accepted yet)."""
    port = listener.socket.getsockname()[1]
    return [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(count)]


async def test_listening_a_socket_listener_hands_over_every_queued_connection_in_one_go() -> None:
    """Connections already queued are accepted without a scheduler round between them (trio's
    own `accept` yields after each): a task counting rounds sees at most one go by."""
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    clients = await queued_clients(listener, 5)
    handled: list[trio.SocketStream] = []
    all_handled = trio.Event()
    rounds = 0

    async def handle(stream: trio.SocketStream) -> None:
        handled.append(stream)
        if len(handled) == len(clients):
            all_handled.set()
        await trio.sleep_forever()

    async def count_rounds() -> None:
        nonlocal rounds
        while True:
            await trio.lowlevel.checkpoint()
            rounds += 1

    with trio.fail_after(CAP_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(count_rounds)
            nursery.start_soon(accept_forever, listener, nursery, handle, "test listener")
            await all_handled.wait()
            assert rounds <= 2
            for stream in handled:
                assert isinstance(stream, trio.SocketStream)
                assert stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            nursery.cancel_scope.cancel()
    for each in (*clients, *handled, listener):
        await each.aclose()


async def test_listening_a_socket_listener_closed_under_the_loop_ends_it_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    with trio.fail_after(CAP_SECONDS):
        async with trio.open_nursery() as handlers, trio.open_nursery() as nursery:
            nursery.start_soon(accept_forever, listener, handlers, hold, "x")
            await trio.testing.wait_all_tasks_blocked()
            await listener.aclose()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_listening_a_socket_listener_stays_open_after_the_loop_is_cancelled() -> None:
    """The loop lets go of the listener's descriptor, never closing it: the listener accepts
    again afterwards."""
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    with trio.fail_after(CAP_SECONDS):
        async with trio.open_nursery() as handlers:
            handlers.start_soon(accept_forever, listener, handlers, hold, "x")
            await trio.testing.wait_all_tasks_blocked()
            handlers.cancel_scope.cancel()
        [client] = await queued_clients(listener, 1)
        async with client, await listener.accept() as accepted, listener:
            await client.send_all(b"ok")
            assert await accepted.receive_some(2) == b"ok"
