"""Reloading the configuration: new sessions get the new one, sessions in flight keep theirs.

Most tests reload a proxy running in this process (`Proxy.reload`, the very call SIGHUP makes)
with real `websockets` backends and clients on loopback; the last ones send SIGHUP to a real
`wsproxy serve` process and read the result back through the admin endpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing
import websockets
from websockets.trio.client import ClientConnection, connect

from tests.conftest import ORIGIN, Backend, start_backend
from tests.test_cli import free_port, http_get, started
from tests.test_pools import backends, start, until
from tests.test_tls import Certs, make_certs
from wsproxy import parking
from wsproxy.config import Config, HealthCheck, parse_config
from wsproxy.health import Probed
from wsproxy.listening import open_listeners
from wsproxy.server import Proxy

pytestmark = pytest.mark.e2e

CAP = 30.0


def yaml_for(*urls: str, security: str = "", pool: str = "", extra: str = "") -> str:
    servers = ", ".join(urls)
    return f"""
listen: [{{address: 127.0.0.1:0}}]
security:
  allowed_origins: ["{ORIGIN}"]
{security}
routes: [{{path: /, pool: main}}]
pools:
  main:
    servers: [{servers}]
{pool}
{extra}
"""


def config_for(*urls: str, **parts: str) -> Config:
    return parse_config(yaml_for(*urls, **parts), {})


async def echo(ws: ClientConnection, text: str | bytes) -> None:
    with trio.fail_after(CAP):
        await ws.send(text)
        assert await ws.recv() == text


async def reload_to(proxy: Proxy, config: Config) -> bool:
    with trio.fail_after(CAP):
        return await proxy.reload(lambda: config)


def server_rows(proxy: Proxy) -> dict[str, tuple[bool, int]]:
    """server → (listed, live sessions), as /status shows them."""
    return {
        s.server: (s.listed, s.sessions)
        for pool in proxy.snapshot.status(trio.current_time())
        for s in pool.servers
    }


def reloads(proxy: Proxy) -> dict[tuple[str, ...], float]:
    return dict(proxy.registry.metrics.config_reloads.values)


async def test_reload_new_sessions_use_the_new_pool_and_old_ones_go_on(
    nursery: trio.Nursery,
) -> None:
    a, b = await backends(nursery, 2)
    running = await start(nursery, config_for(a.url))
    proxy = running.proxy
    async with connect(running.url, origin=ORIGIN, proxy=None) as before:
        await echo(before, "on a")
        assert await reload_to(proxy, config_for(b.url))
        async with connect(running.url, origin=ORIGIN, proxy=None) as after:
            await echo(after, "on b")
            await echo(before, "still on a")
            assert (len(a.requests), len(b.requests)) == (1, 1)
            # a is no longer listed: visible while its session lives, then forgotten
            assert server_rows(proxy) == {b.url: (True, 1), a.url: (False, 1)}
    await until(lambda: a.url not in server_rows(proxy), "a is forgotten once its session ends")
    assert server_rows(proxy) == {b.url: (True, 0)}
    assert len(proxy.servers) == 1
    assert reloads(proxy) == {("success",): 1}


async def test_reload_keeps_the_counts_and_health_of_servers_that_stay(
    nursery: trio.Nursery,
) -> None:
    a, b, c = await backends(nursery, 3)
    running = await start(nursery, config_for(a.url, b.url))
    proxy = running.proxy
    state_a = proxy.snapshot.balancers["main"].servers[0]
    async with connect(running.url, origin=ORIGIN, proxy=None) as on_a:
        await echo(on_a, "x")
        state_a.failures_total = 7  # as if it had failed before: must survive the reload
        assert await reload_to(proxy, config_for(a.url, c.url, pool="    balance: random"))
        kept = proxy.snapshot.balancers["main"].servers[0]
        assert kept is state_a
        assert (kept.sessions, kept.sessions_total, kept.failures_total) == (1, 1, 7)
        assert proxy.snapshot.balancers["main"].pool.balance == "random"
        await echo(on_a, "y")
    await until(lambda: state_a.sessions == 0, "the session's end is counted on the kept state")
    assert b.url not in server_rows(proxy)


async def test_reload_limits_apply_to_new_sessions_only(nursery: trio.Nursery) -> None:
    (a,) = await backends(nursery, 1)
    running = await start(nursery, config_for(a.url))
    async with connect(running.url, origin=ORIGIN, proxy=None, max_size=None) as before:
        small = config_for(a.url, security="  max_message_size: 1KiB")
        assert await reload_to(running.proxy, small)
        async with connect(running.url, origin=ORIGIN, proxy=None) as after:
            noise = os.urandom(4096)  # incompressible, so 4 KiB on the wire too
            await echo(before, noise)  # the old limit (1 MiB) still holds for it
            await after.send(noise)
            with trio.fail_after(CAP), pytest.raises(websockets.ConnectionClosed) as closed:
                await after.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1009


async def test_reload_new_routes_and_a_removed_pool(nursery: trio.Nursery) -> None:
    a, b = await backends(nursery, 2)
    running = await start(nursery, config_for(a.url))
    new = f"""
listen: [{{address: 127.0.0.1:0}}]
security: {{allowed_origins: ["{ORIGIN}"]}}
routes: [{{path: /chat, pool: chat}}]
pools: {{chat: {{servers: [{b.url}]}}}}
"""
    async with connect(running.url + "/x", origin=ORIGIN, proxy=None) as before:
        assert await reload_to(running.proxy, parse_config(new, {}))
        async with connect(running.url + "/chat", origin=ORIGIN, proxy=None) as chat:
            await echo(chat, "chat")
        with trio.fail_after(CAP), pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(running.url + "/x", origin=ORIGIN, proxy=None):
                pass
        assert refused.value.response.status_code == 404
        await echo(before, "the removed pool's session goes on")
    assert [b.requests[0].path] == ["/chat"]


async def test_reload_during_a_handshake_serves_it_with_the_new_configuration(
    nursery: trio.Nursery,
) -> None:
    """A request head that is whole only after the reload is routed by the new file, even
    when the pool it would have had is gone."""
    a, b = await backends(nursery, 2)
    running = await start(nursery, config_for(a.url))
    new = f"""
listen: [{{address: 127.0.0.1:0}}]
security: {{allowed_origins: ["{ORIGIN}"]}}
routes: [{{path: /, pool: other}}]
pools: {{other: {{servers: [{b.url}]}}}}
"""
    stream = await trio.open_tcp_stream("127.0.0.1", running.port)
    async with stream:
        head = (
            b"GET / HTTP/1.1\r\nHost: proxy.test\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: "
            + ORIGIN.encode()
            + b"\r\n\r\n"
        )
        await stream.send_all(head[:20])
        await trio.testing.wait_all_tasks_blocked()  # the proxy has read it, and waits for more
        assert await reload_to(running.proxy, parse_config(new, {}))
        await stream.send_all(head[20:])
        with trio.fail_after(CAP):
            answer = await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 101 "), answer
    assert (len(a.requests), len(b.requests)) == (0, 1)


async def test_reload_an_invalid_file_is_refused_logged_and_counted(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    (a,) = await backends(nursery, 1)
    running = await start(nursery, config_for(a.url))

    def broken() -> Config:
        return parse_config(yaml_for(a.url, extra="shutdown: {drain_timeout: soon}"), {})

    with trio.fail_after(CAP):
        assert not await running.proxy.reload(broken)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("reload refused: shutdown.drain_timeout" in m for m in messages), messages
    assert reloads(running.proxy) == {("failure",): 1}
    async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
        await echo(ws, "the old configuration stays")


async def test_reload_while_draining_is_ignored(nursery: trio.Nursery) -> None:
    a, b = await backends(nursery, 2)
    running = await start(nursery, config_for(a.url, extra="shutdown: {drain_timeout: 5s}"))
    async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
        running.proxy.stop()
        assert not await reload_to(running.proxy, config_for(b.url))
        await echo(ws, "draining")
    assert reloads(running.proxy) == {}


async def test_reload_resolves_new_host_names_at_once(nursery: trio.Nursery) -> None:
    a, b = await backends(nursery, 2)
    answers = {"app.test": ["127.0.0.1"]}

    async def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    running = await start(nursery, config_for(a.url), resolve=resolve)
    named = config_for(f"ws://app.test:{b.port}", pool="    resolve_interval: 0")
    assert await reload_to(running.proxy, named)
    assert server_rows(running.proxy) == {f"ws://app.test:{b.port} (127.0.0.1)": (True, 0)}
    async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
        await echo(ws, "by name")
    assert len(b.requests) == 1


async def test_reload_health_checks_start_stop_and_keep_their_verdict(
    nursery: trio.Nursery,
) -> None:
    a, b = await backends(nursery, 2)
    check = "    health_check: {type: tcp, interval: 0.05s, timeout: 0.05s, unhealthy_after: 1}"
    dead = f"ws://127.0.0.1:{free_port()}"
    running = await start(nursery, config_for(a.url, dead, pool=check))
    proxy = running.proxy
    state = next(s for s in proxy.snapshot.balancers["main"].servers if s.url == dead)
    await until(lambda: not state.checked_up, "the dead server is found down")
    assert await reload_to(proxy, config_for(a.url, dead, b.url, pool=check))
    assert proxy.snapshot.balancers["main"].servers[1] is state
    assert not state.checked_up  # the verdict survives the reload
    assert await reload_to(proxy, config_for(a.url, dead))
    assert state.checked_up  # no checks any more: only passive health counts


async def test_reload_cannot_move_listeners_and_says_so(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    (a,) = await backends(nursery, 1)
    running = await start(nursery, config_for(a.url))
    moved = parse_config(
        yaml_for(a.url).replace("127.0.0.1:0", f"127.0.0.1:{free_port()}")
        + "admin: {address: 127.0.0.1:0}\nworkers: 3\n",
        {},
    )
    assert await reload_to(running.proxy, moved)
    config = running.proxy.config
    assert (config.listen[0].port, config.admin, config.workers) == (0, None, 1)
    assert any(
        "changes to listen addresses, admin, workers take effect on restart" in r.getMessage()
        for r in caplog.records
    )


async def test_reload_while_serve_starts_leaves_one_health_loop(nursery: trio.Nursery) -> None:
    """A reload that comes while `serve` is still resolving names waits for it; afterwards
    only the new pools are checked."""
    (a,) = await backends(nursery, 1)
    resolving, release, checked_new = trio.Event(), trio.Event(), trio.Event()

    async def resolve(host: str, port: int) -> list[str]:
        resolving.set()
        await release.wait()
        return ["127.0.0.1"]

    checks: list[tuple[float, str]] = []

    async def probe(server: object, check: HealthCheck) -> Probed:
        checks.append((trio.current_time(), check.path))
        if sum(path == "/new" for _, path in checks) >= 8:
            checked_new.set()
        return Probed(None)

    def with_check(path: str) -> Config:
        pool = f"    health_check: {{type: http, path: {path}, interval: 0.05s, timeout: 0.05s}}"
        return config_for(f"ws://app.test:{a.port}", pool=pool)

    proxy = Proxy(with_check("/old"), resolve=resolve, probe=probe)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(proxy.serve, listeners)
    await resolving.wait()
    reloaded = trio.Event()

    async def reload_now() -> None:
        assert await proxy.reload(lambda: with_check("/new"))
        reloaded.set()

    nursery.start_soon(reload_now)
    await trio.testing.wait_all_tasks_blocked()  # the reload waits for serve's start
    release.set()
    with trio.fail_after(CAP):
        await reloaded.wait()
    switched = trio.current_time()
    with trio.fail_after(CAP):
        await checked_new.wait()  # eight rounds of checks since
    later = [path for when, path in checks if when > switched]
    assert later
    assert set(later) == {"/new"}
    proxy.stop()


async def test_reload_a_slow_reload_never_delays_the_drain(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    (a,) = await backends(nursery, 1)
    never = trio.Event()

    async def resolve(host: str, port: int) -> list[str]:
        await never.wait()
        return []

    running = await start(nursery, config_for(a.url), resolve=resolve)
    proxy = running.proxy
    send, receive = trio.open_memory_channel[int](4)
    scope = trio.CancelScope()
    slow = config_for(f"ws://slow.test:{a.port}")
    nursery.start_soon(proxy.obey, receive, scope, lambda: slow)
    await send.send(signal.SIGHUP)
    await until(lambda: any("SIGHUP" in r.getMessage() for r in caplog.records), "the reload")
    await send.send(signal.SIGTERM)
    await until(lambda: proxy.stopping, "the drain starts while the reload waits")
    await until(
        lambda: any("reload abandoned" in r.getMessage() for r in caplog.records),
        "the reload gives up",
    )
    assert proxy.config.pools["main"].servers[0].url == a.url
    assert reloads(proxy) == {}


# ---------------------------------------------------------------- TLS files are read again


async def test_reload_reads_the_listener_certificate_again(
    nursery: trio.Nursery, backend: Backend, tmp_path: Path
) -> None:
    first = make_certs(tmp_path / "first")
    second = make_certs(tmp_path / "second")
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "tls.crt", live / "tls.key"

    def install(certs: Certs) -> None:
        cert.write_bytes(certs.cert_file.read_bytes())
        key.write_bytes(certs.key_file.read_bytes())

    install(first)
    text = yaml_for(backend.url).replace(
        "{address: 127.0.0.1:0}", f"{{address: 127.0.0.1:0, tls: {{cert: {cert}, key: {key}}}}}"
    )
    proxy = Proxy(parse_config(text, {}))
    listening, _ = await open_listeners(proxy.config)
    await nursery.start(proxy.serve, listening)
    url = f"wss://localhost:{listening[0].listener.socket.getsockname()[1]}/"

    async with connect(url, origin=ORIGIN, ssl=first.client_context(), proxy=None) as old:
        install(second)
        assert await reload_to(proxy, parse_config(text, {}))
        async with connect(url, origin=ORIGIN, ssl=second.client_context(), proxy=None) as new:
            await echo(new, "the new certificate")
        with trio.fail_after(CAP), pytest.raises(trio.BrokenResourceError) as failed:
            async with connect(url, origin=ORIGIN, ssl=first.client_context(), proxy=None):
                pass
        assert isinstance(failed.value.__cause__, ssl.SSLCertVerificationError)
        await echo(old, "the session on the old certificate goes on")

        key.write_text("not a key\n")
        with trio.fail_after(CAP):
            assert not await proxy.reload(lambda: parse_config(text, {}))
        async with connect(url, origin=ORIGIN, ssl=second.client_context(), proxy=None) as kept:
            await echo(kept, "a broken key keeps the certificate in use")
    assert reloads(proxy) == {("success",): 1, ("failure",): 1}


async def test_reload_logs_what_changed(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await backends(nursery, 2)
    running = await start(nursery, config_for(a.url))
    caplog.set_level(logging.INFO, "wsproxy.server")
    changed = config_for(a.url, b.url, security="  max_message_size: 2MiB")
    assert await reload_to(running.proxy, changed)
    assert await reload_to(running.proxy, changed)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reload: ")]
    assert lines == [
        "reload: security.max_message_size: 1MiB -> 2MiB",
        f"reload: pools.main.servers: added {b.url}",
        "reload: nothing changed",  # the second time
    ]


# ---------------------------------------------------------------- a real process and SIGHUP


async def test_reload_on_sighup_in_a_real_process(nursery: trio.Nursery, tmp_path: Path) -> None:
    a = await start_backend(nursery)
    b = await start_backend(nursery)
    port, admin = free_port(), free_port()
    config = tmp_path / "wsproxy.yaml"

    def write(*urls: str, extra: str = "") -> None:
        text = yaml_for(*urls, extra=f"admin: {{address: 127.0.0.1:{admin}}}\n{extra}")
        config.write_text(text.replace("127.0.0.1:0", f"127.0.0.1:{port}"))

    write(a.url)
    async with started("serve", "-c", str(config)) as child:
        await child.ready_ports()
        url = f"ws://127.0.0.1:{port}/"
        async with connect(url, origin=ORIGIN, proxy=None) as before:
            await echo(before, "a")
            write(b.url)
            child.signal(signal.SIGHUP)
            await child.stderr.until("configuration reloaded")
            async with connect(url, origin=ORIGIN, proxy=None) as after:
                await echo(after, "b")
            await echo(before, "a, still")
            assert (len(a.requests), len(b.requests)) == (1, 1)

            config.write_text("listen: [oops\n")
            child.signal(signal.SIGHUP)
            await child.stderr.until("reload refused: the configuration in use stays")
            async with connect(url, origin=ORIGIN, proxy=None) as again:
                await echo(again, "b again")
            assert len(b.requests) == 2

        with trio.fail_after(CAP):
            status, body = await http_get(admin, "/metrics")
        metrics = body.decode()
        assert status == 200
        assert 'wsproxy_config_reloads_total{result="success"} 1' in metrics
        assert 'wsproxy_config_reloads_total{result="failure"} 1' in metrics
        child.signal(signal.SIGTERM)
        assert await child.exit_code() == 0


async def test_reload_applies_log_level_and_format_in_a_real_process(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """From text at info to JSON at warning: the reload's own lines are the last in text, then
    info lines (SIGHUP, access) are gone and the warnings and errors are JSON objects."""
    a = await start_backend(nursery)
    config = tmp_path / "wsproxy.yaml"
    config.write_text(yaml_for(a.url, extra="log: {level: info, format: text}"))
    async with started("serve", "-c", str(config)) as child:
        [port] = await child.ready_ports()
        config.write_text(yaml_for(a.url, extra="log: {level: warning, format: json}"))
        child.signal(signal.SIGHUP)
        await child.stderr.until("reload: log.format: text -> json")
        switched = len(child.stderr.lines)
        async with connect(f"ws://127.0.0.1:{port}/", origin=ORIGIN, proxy=None) as ws:
            await echo(ws, "an access line at info, not written now")
        config.write_text("listen: [oops\n")
        child.signal(signal.SIGHUP)
        await child.stderr.until("reload refused: the configuration in use stays")
        child.signal(signal.SIGTERM)
        assert await child.exit_code() == 0
        lines = await child.stderr.rest()
    assert "reload: log.level: info -> warning" in "\n".join(lines[:switched])
    after = [json.loads(line) for line in lines[switched:]]  # every one a JSON object
    assert {entry["level"] for entry in after} <= {"warning", "error"}
    assert any(entry["message"].startswith("reload refused: ") for entry in after)
    assert not any(entry.get("type") == "access" for entry in after)


async def test_reload_batch_window_applies_to_the_whole_process_at_once(
    nursery: trio.Nursery,
) -> None:
    """The parker is the process's: the window the proxy starts with, and then a reload's, is
    the one every parked session's reads are batched with (sessions in flight included)."""
    (a,) = await backends(nursery, 1)
    running = await start(nursery, config_for(a.url, extra="relay: {batch_window: 2ms}"))
    parker = parking.parker()
    assert parker is not None
    assert parker.batching.window == 0.002
    async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
        assert await reload_to(running.proxy, config_for(a.url, extra="relay: {batch_window: 0}"))
        assert parker.batching.window == 0.0
        await echo(ws, "still relayed")
    assert await reload_to(running.proxy, config_for(a.url))
    assert parker.batching.window == 0.0001  # the default
