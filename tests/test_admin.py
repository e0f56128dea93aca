"""The admin endpoint on a real loopback socket, in front of a real proxy and backend."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trio
import websockets
from websockets.trio.client import connect
from websockets.typing import Origin

from tests.conftest import ORIGIN, Backend, RunningProxy, proxy_config, start_backend
from tests.helpers import ask, browser_page
from tests.test_drains import QUICK_STOP, Heard, count_on, hold
from tests.test_pools import start, until
from wsproxy.admin import ProcessStatus, metrics_text, serve_admin
from wsproxy.adminapi import Action, Drain, Guard, SessionQuery, SessionRow, Undrain
from wsproxy.config import Config, parse_config
from wsproxy.drains import DRAIN_REASON
from wsproxy.history import History
from wsproxy.server import Proxy

CAP = 10.0


@dataclass
class Admin:
    running: RunningProxy
    port: int


async def start_with_admin(
    nursery: trio.Nursery, config: Config, history: History | None = None
) -> Admin:
    proxy = Proxy(config)
    if history is not None:  # before `serve`, which samples into it
        proxy.history = history
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
    assert (server["share"], pool["rebalancing"], pool["rebalance_closes"]) == (1.0, False, 0)


async def test_admin_metrics_count_rebalancing_closes_of_every_pool_that_rebalances(
    nursery: trio.Nursery, backend: Backend
) -> None:
    """A pool with `rebalance` has its series at 0 before any close; one without has none."""
    config = proxy_config(
        backend.url, extra="    rebalance: {}\n  quiet:\n    servers: [ws://127.0.0.1:9]"
    )
    admin = await start_with_admin(nursery, config)
    with trio.fail_after(CAP):
        before = (await ask(admin.port, "/metrics")).body.decode().splitlines()
        admin.running.proxy.registry.metrics.rebalance_closes.inc("main", amount=3)
        after = (await ask(admin.port, "/metrics")).body.decode().splitlines()
    assert 'wsproxy_rebalance_closes_total{pool="main"} 0' in before
    assert 'wsproxy_rebalance_closes_total{pool="main"} 3' in after
    assert "# TYPE wsproxy_rebalance_closes_total counter" in after
    assert not any('pool="quiet"' in line and "rebalance" in line for line in after)


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
            total = f"{row}.querySelector('[data-field=total]').textContent"
            await page.until(total, "1")  # the total stays
            async with connect(admin.running.url, origin=ORIGIN, proxy=None):
                admin.running.proxy.stop()  # the drain waits for this session
                await page.until("document.querySelector('#ready').textContent", "no")
                await page.until("document.querySelector('#why').textContent", "draining")


# --- live sessions and actions -----------------------------------------------------------------

TOKEN = "0123456789abcdef-admin"
BEARER = f"Authorization: Bearer {TOKEN}"
WRONG = "Authorization: Bearer wrong"
SERVER = "ws://10.0.0.7:9000/x"
LONG_REASON = json.dumps({"reason": "x" * 124}).encode()


def two_pools(first: Backend, second: Backend, token: str = TOKEN) -> Config:
    return parse_config(
        f"""
listen: [{{address: 127.0.0.1:0}}]
admin: {{address: 127.0.0.1:0, token: "{token}"}}
security: {{allowed_origins: ["{ORIGIN}"]}}
routes: [{{path: /a, pool: pa}}, {{path: /b, pool: pb}}]
pools:
  pa: {{servers: ["{first.url}"]}}
  pb: {{servers: ["{second.url}"]}}
""",
        {},
    )


async def listing(port: int, query: str = "") -> list[dict[str, Any]]:
    answer = await ask(port, "/sessions" + query)
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"] == "application/json"
    sessions = json.loads(answer.body)["sessions"]
    assert isinstance(sessions, list)
    return sessions


async def test_admin_sessions_lists_live_sessions_oldest_first_with_their_figures(
    nursery: trio.Nursery, backend: Backend
) -> None:
    other = await start_backend(nursery)
    admin = await start_with_admin(nursery, two_pools(backend, other))
    url = admin.running.url
    with trio.fail_after(CAP):
        assert await listing(admin.port) == []
        async with (
            connect(url + "/a", origin=ORIGIN, proxy=None, compression=None) as first,
            connect(url + "/a", origin=ORIGIN, proxy=None) as second,
            connect(url + "/b?x=1", origin=ORIGIN, proxy=None) as third,
        ):
            for text in ("one", "two"):
                await first.send(text)
                assert await first.recv() == text
            everything = await listing(admin.port)
            only_pb = await listing(admin.port, "?pool=pb")
            by_server = await listing(admin.port, f"?server={quote(backend.url, safe='')}")
            oldest = await listing(admin.port, "?limit=1")
            bad = await ask(admin.port, "/sessions?limit=0")
            mine = ["{}:{}".format(*ws.local_address[:2]) for ws in (first, second, third)]
    assert len(everything) == 3
    ages = [session["age"] for session in everything]
    assert ages == sorted(ages, reverse=True)
    assert [session["id"] for session in oldest] == [everything[0]["id"]]
    by_client = {session["client"]: session for session in everything}
    assert sorted(by_client) == sorted(mine)
    one = by_client[mine[0]]
    assert set(one) == {
        "id", "client", "route", "pool", "server", "age",
        "messages_in", "messages_out", "bytes_in", "bytes_out",
    }  # fmt: skip
    assert (one["route"], one["pool"], one["server"]) == ("/a", "pa", backend.url)
    assert (one["messages_in"], one["messages_out"]) == (2, 2)
    assert one["bytes_in"] == 2 * (2 + 4 + 3)  # two masked 3-byte texts: head, mask, payload
    assert one["bytes_out"] == 2 * (2 + 3)
    assert isinstance(one["age"], float)
    assert 0 <= one["age"] < CAP
    assert len({session["id"] for session in everything}) == 3
    assert [s["client"] for s in only_pb] == [mine[2]]
    assert (only_pb[0]["route"], only_pb[0]["server"]) == ("/b", other.url)
    assert sorted(s["client"] for s in by_server) == sorted(mine[:2])
    assert (bad.status, bad.body) == (
        400,
        b"limit must be a whole number from 1 to 10000, got '0'\n",
    )


async def test_admin_close_by_id_delivers_the_code_and_reason_to_that_client_only(
    nursery: trio.Nursery, backend: Backend
) -> None:
    admin = await start_with_admin(nursery, two_pools(backend, backend))
    url = admin.running.url + "/a"
    with trio.fail_after(CAP):
        async with (
            connect(url, origin=ORIGIN, proxy=None) as closing,
            connect(url, origin=ORIGIN, proxy=None) as staying,
            connect(url, origin=ORIGIN, proxy=None) as plain,
        ):
            clients = {s["client"]: s["id"] for s in await listing(admin.port)}
            ids = [clients["{}:{}".format(*ws.local_address[:2])] for ws in (closing, plain)]
            body = json.dumps({"code": 4000, "reason": "moved \u00e9"}).encode()
            path = f"/sessions/{ids[0]}/close"
            answer = await ask(admin.port, path, "POST", body=body, headers=(BEARER,))
            assert (answer.status, answer.headers["content-type"]) == (200, "application/json")
            assert json.loads(answer.body) == {
                "closing": ids[0],
                "code": 4000,
                "reason": "moved \u00e9",
            }
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await closing.recv()
            plain_path = f"/sessions/{ids[1]}/close"
            answer = await ask(admin.port, plain_path, "POST", headers=(BEARER,))
            assert answer.status == 200
            with pytest.raises(websockets.ConnectionClosed) as closed_plainly:
                await plain.recv()
            await staying.send("still here")
            assert await staying.recv() == "still here"
            await until(lambda: len(admin.running.proxy.registry.sessions) == 1, "closes end")
            again = await ask(admin.port, path, "POST", body=body, headers=(BEARER,))
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "moved \u00e9")
    assert closed_plainly.value.rcvd is not None
    assert (closed_plainly.value.rcvd.code, closed_plainly.value.rcvd.reason) == (1000, "")
    assert (again.status, again.body) == (404, f"no live session {ids[0]!r}\n".encode())


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "says"),
    [
        ("POST", "/sessions/ID/close", (), b"", 401, b"this action needs the header Authorization"),
        ("POST", "/sessions/ID/close", ("Authorization: Basic eDp5",), b"", 401, b"Bearer"),
        ("POST", "/sessions/ID/close", (WRONG,), b"", 403, b"wrong admin token"),
        ("POST", "/sessions/ID/close", (BEARER,), b"{not json", 400, b"the body is not JSON\n"),
        ("POST", "/sessions/ID/close", (BEARER,), b'{"code": 1006}', 400, b"code must be a close"),
        ("POST", "/sessions/ID/close", (BEARER,), LONG_REASON, 400, b"123 bytes"),
        ("POST", "/sessions/ID/close", (BEARER,), b" " * 4097, 400, b"larger than 4096 bytes"),
        ("GET", "/sessions/ID/close", (BEARER,), b"", 405, b"only POST\n"),
        ("POST", "/sessions", (BEARER,), b"", 405, b"only GET and HEAD\n"),
        ("POST", "/sessions/ID/kill", (BEARER,), b"", 404, b"not found"),
        ("POST", "/sessions/unknown-1/close", (BEARER,), b"", 404, b"no live session 'unknown-1'"),
        ("POST", "/pools/pa/servers/x/drain", (WRONG,), b"", 403, b"wrong"),
    ],
)  # fmt: skip
async def test_admin_actions_refused_leave_the_session_alone(
    nursery: trio.Nursery,
    backend: Backend,
    method: str,
    path: str,
    headers: tuple[str, ...],
    body: bytes,
    status: int,
    says: bytes,
) -> None:
    admin = await start_with_admin(nursery, two_pools(backend, backend))
    with trio.fail_after(CAP):
        async with connect(admin.running.url + "/a", origin=ORIGIN, proxy=None) as ws:
            (session,) = await listing(admin.port)
            target = path.replace("ID", str(session["id"]))
            answer = await ask(admin.port, target, method, body=body or None, headers=headers)
            await ws.send("alive")
            assert await ws.recv() == "alive"
    assert answer.status == status, answer.body
    assert says in answer.body
    assert answer.body.count(b"\n") == 1  # one sentence
    if status == 401:
        assert answer.headers["www-authenticate"] == "Bearer"
    if status == 405:
        assert answer.headers["allow"] == ("POST" if method == "GET" else "GET, HEAD")


async def test_admin_actions_are_403_without_a_configured_token(
    nursery: trio.Nursery, backend: Backend
) -> None:
    admin = await start_with_admin(nursery, proxy_config(backend.url))
    with trio.fail_after(CAP):
        async with connect(admin.running.url, origin=ORIGIN, proxy=None):
            (session,) = await listing(admin.port)  # reading needs no token
            path = f"/sessions/{session['id']}/close"
            for headers in [(), (BEARER,), ("Authorization: Bearer ",)]:
                answer = await ask(admin.port, path, "POST", headers=headers)
                assert (answer.status, answer.body) == (
                    403,
                    b"admin actions are disabled: admin.token is not configured\n",
                )


@dataclass
class RecordingView:
    """An admin view that records the actions it is asked for, and knows one server."""

    acted: list[Action]

    async def not_ready(self) -> str:
        return ""

    async def status(self) -> ProcessStatus:
        raise NotImplementedError

    async def metrics(self) -> str:
        return ""

    async def sessions(self, query: SessionQuery) -> list[SessionRow]:
        return []

    async def act(self, action: Action) -> bool:
        self.acted.append(action)
        return getattr(action, "server", "") == SERVER


@pytest.mark.parametrize(
    ("path", "body", "action"),
    [
        ("drain", b"", Drain("chat", SERVER, 30.0, 1012)),
        ("drain", b'{"window": "60s", "code": 1013}', Drain("chat", SERVER, 60, 1013)),
        ("undrain", b"", Undrain("chat", SERVER)),
    ],
)  # fmt: skip
async def test_admin_drain_and_undrain_reach_the_view_with_the_server_decoded(
    nursery: trio.Nursery, path: str, body: bytes, action: Action
) -> None:
    view = RecordingView([])
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    await nursery.start(serve_admin, view, listener, Guard(token=TOKEN))
    port = listener.socket.getsockname()[1]
    server = quote(SERVER, safe="")
    with trio.fail_after(CAP):
        known = await ask(
            port, f"/pools/chat/servers/{server}/{path}", "POST", body=body, headers=(BEARER,)
        )
        unknown = await ask(
            port, f"/pools/chat/servers/ws%3A%2F%2Fz/{path}", "POST", headers=(BEARER,)
        )
    assert known.status == 200
    assert json.loads(known.body)["draining"] is isinstance(action, Drain)
    assert view.acted[0] == action
    assert (unknown.status, unknown.body) == (404, b"no server 'ws://z' in pool 'chat'\n")


async def test_admin_a_trusted_listener_acts_without_a_token(nursery: trio.Nursery) -> None:
    view = RecordingView([])
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    await nursery.start(serve_admin, view, listener, Guard(trusted=True))
    port = listener.socket.getsockname()[1]
    with trio.fail_after(CAP):
        answer = await ask(port, "/pools/p/servers/s/undrain", "POST")
    assert answer.status == 404  # the view knows no such server: it was asked
    assert view.acted == [Undrain("p", "s")]


async def test_admin_drain_and_undrain_a_server_of_a_running_proxy(nursery: trio.Nursery) -> None:
    a, b = await start_backend(nursery), await start_backend(nursery)
    extra = f'admin: {{address: 127.0.0.1:0, token: "{TOKEN}"}}\n{QUICK_STOP}'
    admin = await start_with_admin(nursery, proxy_config(a.url, b.url, extra=extra))
    url, heard = admin.running.url, Heard()
    path = f"/pools/main/servers/{quote(a.url, safe='')}"

    async def draining() -> dict[str, bool]:
        (pool,) = json.loads((await ask(admin.port, "/status")).body)["pools"]
        return {server["server"]: server["draining"] for server in pool["servers"]}

    with trio.fail_after(CAP):
        async with trio.open_nursery() as clients:
            for _ in range(4):
                await clients.start(hold, url, heard)
            assert (count_on(a), count_on(b)) == (2, 2)
            body = b'{"window": 0, "code": 4002}'
            drained = await ask(admin.port, path + "/drain", "POST", body=body, headers=(BEARER,))
            assert drained.status == 200, drained.body
            await heard.at_least(2)
            assert await draining() == {a.url: True, b.url: False}
            for _ in range(2):
                await clients.start(hold, url, heard)
            assert (count_on(a), count_on(b)) == (2, 4), "drained: new sessions go elsewhere"
            undrained = await ask(admin.port, path + "/undrain", "POST", headers=(BEARER,))
            assert undrained.status == 200, undrained.body
            assert await draining() == {a.url: False, b.url: False}
            unknown = await ask(
                admin.port, "/pools/main/servers/ws%3A%2F%2Fnowhere%3A1/drain", "POST",
                headers=(BEARER,),
            )  # fmt: skip
            admin.running.proxy.stop()
    assert [(code, reason) for _, code, reason in heard.closes[:2]] == [(4002, DRAIN_REASON)] * 2
    assert json.loads(drained.body) == {
        "pool": "main",
        "server": a.url,
        "window": 0.0,
        "code": 4002,
        "draining": True,
    }
    assert (unknown.status, unknown.body) == (404, b"no server 'ws://nowhere:1' in pool 'main'\n")
