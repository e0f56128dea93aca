"""The admin endpoint on a real loopback socket, in front of a real proxy and backend."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import websockets
from websockets.trio.client import connect
from websockets.typing import Origin

from tests.conftest import ORIGIN, Backend, RunningProxy, proxy_config, start_backend
from tests.helpers import ask, browser_page
from tests.test_pools import start, until
from wsproxy.admin import metrics_text, serve_admin
from wsproxy.config import Config, parse_config
from wsproxy.server import Proxy

CAP = 10.0


@dataclass
class Admin:
    running: RunningProxy
    port: int


async def start_with_admin(nursery: trio.Nursery, config: Config) -> Admin:
    proxy = Proxy(config)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    admin = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    await nursery.start(functools.partial(proxy.serve, listeners, admin=admin))
    running = RunningProxy(proxy, listeners[0].socket.getsockname()[1])
    return Admin(running, admin.socket.getsockname()[1])


@pytest.fixture
async def admin(nursery: trio.Nursery, backend: Backend) -> Admin:
    return await start_with_admin(nursery, proxy_config(backend.url))


async def test_admin_healthz_is_200(admin: Admin) -> None:
    with trio.fail_after(CAP):
        answer = await ask(admin.port, "/healthz")
    assert (answer.status, answer.body) == (200, b"ok\n")
    assert answer.headers["cache-control"] == "no-store"


async def test_admin_readyz_is_200_then_503_from_the_first_moment_of_the_drain(
    admin: Admin,
) -> None:
    with trio.fail_after(CAP):
        assert (await ask(admin.port, "/readyz")).status == 200
        async with connect(admin.running.url, origin=ORIGIN, proxy=None) as ws:
            admin.running.proxy.stop()
            answer = await ask(admin.port, "/readyz")
            await ws.send("still relayed while draining")
            assert await ws.recv() == "still relayed while draining"
    assert (answer.status, answer.body) == (503, b"not ready: draining\n")


async def test_admin_readyz_is_503_when_a_pool_has_no_healthy_server(admin: Admin) -> None:
    (balancer,) = admin.running.proxy.snapshot.balancers.values()
    balancer.servers[0].failed(trio.current_time())
    with trio.fail_after(CAP):
        answer = await ask(admin.port, "/readyz")
    assert (answer.status, answer.body) == (503, b"not ready: no healthy server in pool main\n")


async def test_admin_metrics_count_sessions_refusals_and_live_figures(
    admin: Admin, backend: Backend
) -> None:
    with trio.fail_after(CAP):
        async with connect(admin.running.url, origin=ORIGIN, proxy=None) as ws:
            await ws.send("one")
            await ws.recv()
        with pytest.raises(websockets.InvalidStatus):
            async with connect(
                admin.running.url, origin=Origin("https://evil.example.net"), proxy=None
            ):
                pass
        async with connect(admin.running.url, origin=ORIGIN, proxy=None) as ws:
            await ws.send("two")
            await ws.recv()
            answer = await ask(admin.port, "/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    lines = answer.body.decode().splitlines()
    server = f'pool="main",server="{backend.url}"'
    for line in (
        'wsproxy_sessions_active{route="/",pool="main"} 1',
        'wsproxy_sessions_total{route="/",pool="main"} 2',
        'wsproxy_handshake_rejections_total{status="403"} 1',
        'wsproxy_messages_total{direction="in"} 2',
        'wsproxy_messages_total{direction="out"} 2',
        'wsproxy_closes_total{side="client",code="1000"} 1',
        f"wsproxy_backend_up{{{server}}} 1",
        f"wsproxy_backend_sessions_active{{{server}}} 1",
        "wsproxy_backend_connect_seconds_count 2",
        "wsproxy_session_seconds_count 1",
        "# TYPE wsproxy_config_reloads_total counter",
        "# TYPE process_resident_memory_bytes gauge",
    ):
        assert line in lines, line
    assert any(line.startswith("process_open_fds ") for line in lines)


async def test_admin_status_is_json_with_pools_and_servers(admin: Admin, backend: Backend) -> None:
    with trio.fail_after(CAP):
        async with connect(admin.running.url, origin=ORIGIN, proxy=None):
            answer = await ask(admin.port, "/status")
    assert answer.headers["content-type"] == "application/json"
    status = json.loads(answer.body)
    assert (status["ready"], status["draining"], status["sessions"]) == (True, False, 1)
    (pool,) = status["pools"]
    assert (pool["pool"], pool["balance"], pool["healthy"], pool["sessions"]) == (
        "main",
        "round_robin",
        1,
        1,
    )
    (server,) = pool["servers"]
    assert (server["server"], server["health"], server["sessions"]) == (backend.url, "up", 1)


async def test_admin_page_is_html_that_reads_status(admin: Admin) -> None:
    with trio.fail_after(CAP):
        answer = await ask(admin.port, "/")
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert b'fetch("/status"' in answer.body


class BrokenView:
    """An admin view with a bug in one answer."""

    async def not_ready(self) -> str:
        return ""

    async def status(self) -> dict[str, object]:
        raise KeyError("pools")

    async def metrics(self) -> str:
        return "# nothing\n"


async def test_admin_a_failing_answer_is_a_500_and_the_endpoint_goes_on(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    await nursery.start(serve_admin, BrokenView(), listener)
    port = listener.socket.getsockname()[1]
    with trio.fail_after(CAP):
        assert (await ask(port, "/status")).status == 500
        assert (await ask(port, "/readyz")).status == 200
    assert any("admin request for /status failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nothing", 404), ("POST", "/healthz", 405), ("GET", "/healthz?verbose=1", 200)],
)
async def test_admin_other_requests(admin: Admin, method: str, path: str, status: int) -> None:
    with trio.fail_after(CAP):
        assert (await ask(admin.port, path, method)).status == status


async def test_admin_head_has_no_body(admin: Admin) -> None:
    with trio.fail_after(CAP):
        answer = await ask(admin.port, "/healthz", "HEAD")
    assert (answer.status, answer.body, answer.headers["content-length"]) == (200, b"", "3")


async def test_admin_garbage_and_silence_are_let_go(admin: Admin) -> None:
    with trio.fail_after(CAP):
        stream = await trio.open_tcp_stream("127.0.0.1", admin.port)
        async with stream:
            await stream.send_all(b"\x00\x01 not http\r\n\r\n")
            assert await stream.receive_some(1024) == b""
        quiet = await trio.open_tcp_stream("127.0.0.1", admin.port)
        await quiet.aclose()  # leaves without a request
        assert (await ask(admin.port, "/healthz")).status == 200


# --- which series /metrics has -------------------------------------------------------------


def series(text: str, family: str) -> dict[str, float]:
    """The samples of `family` in a Prometheus text: {label set as written: value}."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name == family:
            labels, _, value = rest.rpartition(" ")
            found["{" + labels] = float(value)
        elif line.startswith(family + " "):
            found[""] = float(line.rpartition(" ")[2])
    return found


async def resolve_app(host: str, port: int) -> list[str]:
    assert host == "app.internal"
    return ["10.0.0.7", "10.0.0.8"]


async def test_admin_metrics_idle_proxy_has_every_route_pool_and_server_at_zero(
    nursery: trio.Nursery,
) -> None:
    """Dashboards and absent() alerts need the series before the first session."""
    config = parse_config(
        """
listen: [{address: 127.0.0.1:0}]
security: {allowed_origins: ["*"]}
routes:
  - {host: chat.example.com, path: /chat, pool: chat}
  - {path: /, pool: main}
pools:
  main: {servers: [ws://127.0.0.1:9001, ws://127.0.0.1:9002]}
  chat: {servers: ["ws://app.internal:9000"], resolve_interval: 0}
""",
        {},
    )
    running = await start(nursery, config, resolve=resolve_app)
    text = metrics_text(running.proxy)
    routes = {'{route="/chat",pool="chat"}': 0.0, '{route="/",pool="main"}': 0.0}
    assert series(text, "wsproxy_sessions_active") == routes
    assert series(text, "wsproxy_sessions_total") == routes
    servers = {
        '{pool="main",server="ws://127.0.0.1:9001"}',
        '{pool="main",server="ws://127.0.0.1:9002"}',
        '{pool="chat",server="ws://app.internal:9000 (10.0.0.7)"}',
        '{pool="chat",server="ws://app.internal:9000 (10.0.0.8)"}',
    }
    assert series(text, "wsproxy_backend_sessions_active") == dict.fromkeys(servers, 0.0)
    assert series(text, "wsproxy_backend_up") == dict.fromkeys(servers, 1.0)
    assert "# TYPE wsproxy_sessions_total counter" in text.splitlines()
    assert series(text, "wsproxy_throttled_seconds_total") == {"": 0.0}
    assert series(text, "wsproxy_rate_limit_closes_total") == {"": 0.0}


async def test_admin_metrics_gauges_go_back_to_zero_when_the_session_ends(
    admin: Admin, backend: Backend
) -> None:
    route = '{route="/",pool="main"}'
    server = f'{{pool="main",server="{backend.url}"}}'
    with trio.fail_after(CAP):
        async with connect(admin.running.url, origin=ORIGIN, proxy=None) as ws:
            await ws.send("one")
            await ws.recv()
            during = (await ask(admin.port, "/metrics")).body.decode()
        await until(lambda: not admin.running.proxy.registry.sessions, "the session ends")
        after = (await ask(admin.port, "/metrics")).body.decode()
    assert series(during, "wsproxy_sessions_active") == {route: 1.0}
    assert series(during, "wsproxy_backend_sessions_active") == {server: 1.0}
    assert series(after, "wsproxy_sessions_active") == {route: 0.0}
    assert series(after, "wsproxy_backend_sessions_active") == {server: 0.0}
    assert series(after, "wsproxy_sessions_total") == {route: 1.0}


async def test_admin_metrics_after_a_reload_show_the_new_set(
    nursery: trio.Nursery, backend: Backend
) -> None:
    """New routes and servers appear at 0; removed ones stay while they have a session."""
    other = await start_backend(nursery)
    before = proxy_config(backend.url)
    text = f"""
listen: [{{address: 127.0.0.1:0}}]
security: {{allowed_origins: ["{ORIGIN}"]}}
routes: [{{path: /new, pool: other}}]
pools:
  other: {{servers: ["{other.url}"]}}
"""
    old_server = f'{{pool="main",server="{backend.url}"}}'
    new_server = f'{{pool="other",server="{other.url}"}}'
    with trio.fail_after(CAP):
        running = await start(nursery, before)
        async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
            assert await running.proxy.reload(lambda: parse_config(text, {}))
            await ws.send("still here")
            assert await ws.recv() == "still here"
            busy = metrics_text(running.proxy)
        await until(lambda: not running.proxy.registry.sessions, "the session ends")
        idle = metrics_text(running.proxy)
    assert series(busy, "wsproxy_sessions_active") == {
        '{route="/",pool="main"}': 1.0,
        '{route="/new",pool="other"}': 0.0,
    }
    assert series(busy, "wsproxy_backend_sessions_active") == {new_server: 0.0, old_server: 1.0}
    assert series(idle, "wsproxy_sessions_active") == {'{route="/new",pool="other"}': 0.0}
    assert series(idle, "wsproxy_backend_sessions_active") == {new_server: 0.0}
    assert series(idle, "wsproxy_sessions_total") == {
        '{route="/",pool="main"}': 1.0,
        '{route="/new",pool="other"}': 0.0,
    }


async def test_admin_metrics_close_codes_are_bounded_by_the_configuration(
    nursery: trio.Nursery, backend: Backend
) -> None:
    """An unlisted application code counts as 4xxx; a listed one keeps its own label."""
    config = proxy_config(backend.url, extra="metrics: {close_codes: [4001]}")
    admin = await start_with_admin(nursery, config)
    with trio.fail_after(CAP):
        for code in (4123, 4001, 4567):
            async with connect(admin.running.url, origin=ORIGIN, proxy=None) as ws:
                await ws.send("hello")
                await ws.recv()
                await ws.aclose(code)
        await until(lambda: not admin.running.proxy.registry.sessions, "the sessions end")
        text = (await ask(admin.port, "/metrics")).body.decode()
    assert series(text, "wsproxy_closes_total") == {
        '{side="client",code="4xxx"}': 2.0,
        '{side="client",code="4001"}': 1.0,
    }


# --- the live page, in a real browser --------------------------------------------------------


async def test_admin_page_shows_the_status_and_follows_it_live_in_chromium(
    admin: Admin, backend: Backend, tmp_path: Path
) -> None:
    """The page lists the pool and its server, and its counts change as sessions come and go,
    without a reload."""
    with trio.fail_after(60):
        async with browser_page(tmp_path) as page:
            await page.call("Page.navigate", url=f"http://127.0.0.1:{admin.port}/")
            await page.until("document.querySelector('#ready')?.textContent", "yes")
            row = f"document.querySelector('table.pool tr[data-server=\"{backend.url}\"]')"
            await page.until(f"{row}?.cells[1].textContent", "up")
            await page.until("document.querySelector('#sessions').textContent", "0")
            async with connect(admin.running.url, origin=ORIGIN, proxy=None) as ws:
                await ws.send("seen by the page")
                await ws.recv()
                await page.until("document.querySelector('#sessions').textContent", "1")
                await page.until(f"{row}.cells[2].textContent", "1")
            await page.until("document.querySelector('#sessions').textContent", "0")
            await page.until(f"{row}.cells[3].textContent", "1")  # the total stays
            async with connect(admin.running.url, origin=ORIGIN, proxy=None):
                admin.running.proxy.stop()  # the drain waits for this session
                await page.until("document.querySelector('#ready').textContent", "no")
                await page.until("document.querySelector('#why').textContent", "draining")
