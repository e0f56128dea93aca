"""wsproxy/client.py: `wsproxy client URL` as a user runs it, through a real proxy to a real
`websockets` echo backend (the conftest fixtures), and its pure parts."""

from __future__ import annotations

import subprocess
from typing import Final

import pytest
import trio
from wsproto.frame_protocol import Opcode

from tests.conftest import (
    ORIGIN,
    Backend,
    RunningProxy,
    accept_upgrade,
    proxy_config,
    raw_server,
    start_proxy,
)
from tests.helpers import Peer
from tests.test_cli import PYTHON_M, _child_env, assert_one_sentence, free_port
from wsproxy.client import Target, parse_url, refusal, shown
from wsproxy.echo import serve_echo

CAP: Final = 10.0


async def client(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run `python -m wsproxy client *args` to its end, feeding it `stdin`."""
    with trio.fail_after(CAP):
        return await trio.run_process(
            [*PYTHON_M, "client", *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            env=_child_env(),
            check=False,
        )


@pytest.fixture
async def echo_proxy(nursery: trio.Nursery) -> RunningProxy:
    """wsproxy's own echo backend behind a proxy: it echoes each message before it answers a
    close, so every line sent before the end of stdin comes back."""
    [(host, port)] = await nursery.start(serve_echo, "127.0.0.1", 0)
    return await start_proxy(nursery, proxy_config(f"ws://{host}:{port}"))


async def test_client_sends_each_line_prints_each_echo_and_exits_0_at_eof(
    echo_proxy: RunningProxy,
) -> None:
    lines = b"hello\nsecond line\r\n\nh\xc3\xa9 \xe2\x9c\x93\nno newline at the end"
    result = await client(f"{echo_proxy.url}/chat?room=1", "--origin", ORIGIN, stdin=lines)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        "hello",
        "second line",
        "",
        "hé ✓",
        "no newline at the end",
    ]
    assert result.stderr == b""


async def test_client_sends_the_path_and_origin_and_closes_with_1000(
    proxy: RunningProxy, backend: Backend
) -> None:
    result = await client(f"{proxy.url}/chat?room=1", "--origin", ORIGIN)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert backend.requests[0].path == "/chat?room=1"
    assert backend.requests[0].headers["Origin"] == ORIGIN
    with trio.fail_after(CAP):
        await backend.ended.wait()
    assert backend.closes == [(1000, "")]


async def test_client_refused_handshake_is_one_sentence_and_exit_1(proxy: RunningProxy) -> None:
    result = await client(proxy.url, "--origin", "https://evil.example.net", stdin=b"hi\n")
    assert result.returncode == 1
    assert assert_one_sentence(result.stderr.decode()) == (
        "wsproxy: the server refused the handshake: 403 Forbidden: "
        "Origin https://evil.example.net is not allowed"
    )
    assert result.stdout == b""


async def test_client_without_origin_is_refused_by_a_proxy_that_requires_one(
    proxy: RunningProxy,
) -> None:
    result = await client(proxy.url)
    assert result.returncode == 1
    assert "403 Forbidden: an Origin header is required" in result.stderr.decode()


async def client_holding_stdin(*args: str, lines: bytes) -> tuple[int, bytes, bytes]:
    """Like `client`, but stdin stays open: whatever ends the session, it is not stdin's end.
    Returns the exit code, stdout and stderr."""
    process = await trio.lowlevel.open_process(
        [*PYTHON_M, "client", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(),
    )
    output: dict[str, bytes] = {}

    async def read(name: str, pipe: trio.abc.ReceiveStream) -> None:
        output[name] = b""
        while data := await pipe.receive_some(65536):
            output[name] += data

    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        with trio.fail_after(CAP):
            await process.stdin.send_all(lines)
            async with trio.open_nursery() as readers:
                readers.start_soon(read, "out", process.stdout)
                readers.start_soon(read, "err", process.stderr)
            code = await process.wait()
    finally:
        process.kill()
        for pipe in (process.stdin, process.stdout, process.stderr):
            await trio.aclose_forcefully(pipe)
    return code, output["out"], output["err"]


async def test_client_a_close_from_the_server_other_than_1000_exits_1(
    nursery: trio.Nursery,
) -> None:
    async def echo_once_then_close(stream: trio.SocketStream) -> None:
        await accept_upgrade(stream)
        peer = Peer(stream, client=False)
        frame = await peer.receive()
        assert frame is not None
        await peer.send_text(str(frame.payload))
        await peer.close(4001, "server bye")
        assert await peer.expect_close() == (4001, "server bye")  # the client answered it

    port = await raw_server(nursery, echo_once_then_close)
    code, out, err = await client_holding_stdin(f"ws://127.0.0.1:{port}/", lines=b"first\n")
    assert (code, out) == (1, b"first\n")
    assert assert_one_sentence(err.decode()) == (
        "wsproxy: the server closed the connection with 4001 server bye"
    )


async def test_client_a_close_from_the_server_with_1000_exits_0(nursery: trio.Nursery) -> None:
    async def close_at_once(stream: trio.SocketStream) -> None:
        await accept_upgrade(stream)
        peer = Peer(stream, client=False)
        await peer.close(1000)
        assert await peer.expect_close() == (1000, "")

    port = await raw_server(nursery, close_at_once)
    assert await client_holding_stdin(f"ws://127.0.0.1:{port}/", lines=b"") == (0, b"", b"")


async def test_client_prints_binary_and_fragmented_messages_and_answers_pings(
    nursery: trio.Nursery,
) -> None:
    async def send_things(stream: trio.SocketStream) -> None:
        await accept_upgrade(stream)
        peer = Peer(stream, client=False)
        await peer.send_binary(b"\x00\x01\xfe")
        await peer.send_text("frag", fin=False)
        await peer.ping(b"are you there")
        await peer.send(peer.protocol.send_data("mented", True))
        pong = await peer.receive()
        assert pong is not None
        assert (pong.opcode, pong.payload) == (Opcode.PONG, b"are you there")
        await peer.close(1000)
        await peer.expect_close()

    port = await raw_server(nursery, send_things)
    code, out, err = await client_holding_stdin(f"ws://127.0.0.1:{port}/", lines=b"")
    assert (code, err) == (0, b"")
    assert out.decode().splitlines() == ["<3 bytes: 0001fe>", "fragmented"]


async def test_client_a_server_that_breaks_the_protocol_is_reported(
    nursery: trio.Nursery,
) -> None:
    async def masked_frame(stream: trio.SocketStream) -> None:
        await accept_upgrade(stream)
        peer = Peer(stream, client=False)
        await peer.send(b"\x81\x82abcd" + bytes([ord("h") ^ ord("a"), ord("i") ^ ord("b")]))
        assert (await peer.expect_close())[0] == 1002

    port = await raw_server(nursery, masked_frame)
    code, out, err = await client_holding_stdin(f"ws://127.0.0.1:{port}/", lines=b"")
    assert (code, out) == (1, b"")
    assert assert_one_sentence(err.decode()).startswith(
        "wsproxy: the server broke the protocol (1002 "
    )


async def test_client_a_connection_lost_without_a_close_frame(nursery: trio.Nursery) -> None:
    async def vanish(stream: trio.SocketStream) -> None:
        await accept_upgrade(stream)

    port = await raw_server(nursery, vanish)
    code, out, err = await client_holding_stdin(f"ws://127.0.0.1:{port}/", lines=b"")
    assert (code, out) == (1, b"")
    assert assert_one_sentence(err.decode()) == (
        "wsproxy: the connection was lost without a close frame"
    )


async def test_client_a_backend_that_vanishes_is_reported(nursery: trio.Nursery) -> None:
    async def vanish(stream: trio.SocketStream) -> None:
        await accept_upgrade(stream)

    port = await raw_server(nursery, vanish)
    running = await start_proxy(nursery, proxy_config(f"ws://127.0.0.1:{port}"))
    code, _, err = await client_holding_stdin(running.url, "--origin", ORIGIN, lines=b"")
    assert code == 1
    sentence = assert_one_sentence(err.decode())
    assert sentence.startswith("wsproxy: the server closed the connection with 1011")


async def test_client_nothing_listening_exits_1() -> None:
    port = free_port()
    result = await client(f"ws://127.0.0.1:{port}/")
    assert result.returncode == 1
    assert assert_one_sentence(result.stderr.decode()) == (
        f"wsproxy: cannot connect to 127.0.0.1:{port}: Connection refused"
    )


async def test_client_plain_http_server_is_not_a_websocket(nursery: trio.Nursery) -> None:
    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhi\n")

    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    nursery.start_soon(trio.serve_listeners, answer, [listener])
    result = await client(f"ws://127.0.0.1:{listener.socket.getsockname()[1]}/")
    assert result.returncode == 1
    assert assert_one_sentence(result.stderr.decode()) == (
        "wsproxy: the server refused the handshake: 200 OK: hi"
    )


async def test_client_a_server_that_hangs_up_before_answering(nursery: trio.Nursery) -> None:
    async def hang_up(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)

    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    nursery.start_soon(trio.serve_listeners, hang_up, [listener])
    result = await client(f"ws://127.0.0.1:{listener.socket.getsockname()[1]}/")
    assert result.returncode == 1
    assert assert_one_sentence(result.stderr.decode()) == (
        "wsproxy: the server closed the connection before it answered"
    )


async def answering(nursery: trio.Nursery, answer: bytes) -> int:
    """A server that reads the request, writes `answer` and hangs up; returns its port."""

    async def handle(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(answer)

    return await raw_server(nursery, handle)


async def test_client_a_refusal_without_a_body(nursery: trio.Nursery) -> None:
    port = await answering(nursery, b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
    result = await client(f"ws://127.0.0.1:{port}/")
    assert result.returncode == 1
    assert assert_one_sentence(result.stderr.decode()) == (
        "wsproxy: the server refused the handshake: 401 Unauthorized"
    )


async def test_client_an_answer_that_is_not_http(nursery: trio.Nursery) -> None:
    port = await answering(nursery, b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    result = await client(f"ws://127.0.0.1:{port}/")
    assert result.returncode == 1
    assert assert_one_sentence(result.stderr.decode()) == (
        "wsproxy: the server's answer is not a WebSocket handshake: Bad HTTP message"
    )


async def test_client_wss_to_a_server_without_tls(nursery: trio.Nursery) -> None:
    port = await answering(nursery, b"HTTP/1.1 400 Bad Request\r\n\r\n")
    result = await client(f"wss://127.0.0.1:{port}/")
    assert result.returncode == 1
    sentence = assert_one_sentence(result.stderr.decode())
    assert sentence.startswith(f"wsproxy: TLS with 127.0.0.1:{port} failed: ")


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/", "127.0.0.1:8080", "ws://", "ws://h:99999/", "ws://u@h/"]
)
async def test_client_bad_url_exits_2(url: str) -> None:
    result = await client(url)
    assert result.returncode == 2
    assert url in assert_one_sentence(result.stderr.decode())


# ---------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("url", "target", "host_header"),
    [
        ("ws://127.0.0.1:8080/", Target(False, "127.0.0.1", 8080, "/"), "127.0.0.1:8080"),
        ("ws://example.com", Target(False, "example.com", 80, "/"), "example.com"),
        ("WSS://Example.com/a?b=1", Target(True, "example.com", 443, "/a?b=1"), "example.com"),
        ("wss://h:8443/x", Target(True, "h", 8443, "/x"), "h:8443"),
        ("ws://[::1]:9000/p", Target(False, "::1", 9000, "/p"), "[::1]:9000"),
        ("ws://[::1]/", Target(False, "::1", 80, "/"), "[::1]"),
    ],
)
def test_client_parse_url(url: str, target: Target, host_header: str) -> None:
    assert parse_url(url) == target
    assert target.host_header == host_header


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://h/", "expected a ws:// or wss:// URL, got 'http://h/'"),
        ("h:80", "expected a ws:// or wss:// URL, got 'h:80'"),
        ("ws:///path", "the URL names no host: 'ws:///path'"),
        ("ws://h:port/", "not a valid URL: 'ws://h:port/'"),
        ("ws://[::1/", "not a valid URL: 'ws://[::1/'"),
        ("ws://user:pw@h/", "a WebSocket URL carries no user name or password: 'ws://user:pw@h/'"),
        ("ws://h/#top", "a WebSocket URL has no #fragment: 'ws://h/#top'"),
        ("ws://h/#", "a WebSocket URL has no #fragment: 'ws://h/#'"),
    ],
)
def test_client_parse_url_refuses(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=r"URL") as caught:
        parse_url(url)
    assert str(caught.value) == problem


@pytest.mark.parametrize(
    ("status", "body", "sentence"),
    [
        (403, b"not allowed\n", "403 Forbidden: not allowed"),
        (502, b"", "502 Bad Gateway"),
        (401, b"  \n", "401 Unauthorized"),
        (404, b"first line\nsecond line\n", "404 Not Found: first line"),
        (599, b"odd", "599: odd"),
        (400, b"\xff bad bytes", "400 Bad Request: \ufffd bad bytes"),
        (403, b"\x1b[2Jcleared\x07", "403 Forbidden: \\x1b[2Jcleared\\x07"),
    ],
)
def test_client_refusal_sentence(status: int, body: bytes, sentence: str) -> None:
    assert refusal(status, body) == f"the server refused the handshake: {sentence}"


@pytest.mark.parametrize(
    ("message", "text"),
    [("hello", "hello"), ("", ""), (b"\x00\xff", "<2 bytes: 00ff>"), (b"", "<0 bytes: >")],
)
def test_client_shown(message: str | bytes, text: str) -> None:
    assert shown(message) == text
