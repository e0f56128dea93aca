"""`workers: N`: real supervisor and worker processes on one port, and real signals.

The end-to-end tests run `wsproxy serve` with two workers in front of `websockets` echo
backends, and read the fleet back through the supervisor's admin endpoint. Merging the workers'
figures is checked on its own in tests/test_fleet.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import ClientConnection, connect

from tests.conftest import ORIGIN, start_backend
from tests.helpers import ask, browser_page
from tests.test_cli import (
    Child,
    assert_one_sentence,
    free_port,
    http_get,
    occupied_port,
    run_wsproxy,
    started,
)
from tests.test_drains import Heard, count_on, hold
from tests.test_pools import until
from wsproxy.config import parse_config
from wsproxy.drains import DRAIN_REASON
from wsproxy.metrics import merge
from wsproxy.workers import Supervisor, for_worker

pytestmark = pytest.mark.e2e

CAP = 20.0


def write(path: Path, port: int, admin: int, *urls: str, extra: str = "", token: str = "") -> Path:
    path.write_text(
        f"""
listen: [{{address: 127.0.0.1:{port}}}]
admin: {{address: 127.0.0.1:{admin}, token: "{token}"}}
workers: 2
security:
  allowed_origins: ["{ORIGIN}"]
routes: [{{path: /, pool: main}}]
pools:
  main:
    servers: [{", ".join(urls)}]
shutdown: {{drain_timeout: 1s, close_window: 0}}
{extra}
"""
    )
    return path


async def status(admin: int) -> dict[str, object]:
    with trio.fail_after(CAP):
        code, body = await http_get(admin, "/status")
    assert code == 200
    document = json.loads(body)
    assert isinstance(document, dict)
    return document


async def metric(admin: int, line_start: str) -> float:
    with trio.fail_after(CAP):
        _, body = await http_get(admin, "/metrics")
    text = body.decode()
    values = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(line_start)]
    assert len(values) == 1, (line_start, text)
    return float(values[0])


async def echo(ws: ClientConnection, text: str) -> None:
    with trio.fail_after(CAP):
        await ws.send(text)
        assert await ws.recv() == text


@dataclass
class Fleet:
    """A running `wsproxy serve` with two workers, its ports and its configuration file."""

    child: Child
    port: int
    admin: int
    config: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def stop_cleanly(self) -> None:
        """SIGTERM, then exit code 0 once every worker has drained."""
        self.child.signal(signal.SIGTERM)
        assert await self.child.exit_code(CAP) == 0

    def rewrite(self, *urls: str) -> None:
        write(self.config, self.port, self.admin, *urls)


@asynccontextmanager
async def fleet(
    tmp_path: Path, *urls: str, env: dict[str, str] | None = None, token: str = ""
) -> AsyncIterator[Fleet]:
    """Start a supervisor with two workers in front of `urls`, and wait for it to listen."""
    port, admin = free_port(), free_port()
    config = write(tmp_path / "c.yaml", port, admin, *urls, token=token)
    async with started("serve", "-c", str(config), env=env) as child:
        line = await child.stderr.until("with 2 workers", CAP)
        assert f"wsproxy listening on 127.0.0.1:{port}" in line
        yield Fleet(child, port, admin, config)


async def test_workers_share_the_port_and_the_admin_sums_them(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = await start_backend(nursery)
    async with fleet(tmp_path, backend.url) as running, AsyncExitStack() as sessions:
        child, port, admin = running.child, running.port, running.admin
        clients = [
            await sessions.enter_async_context(
                connect(f"ws://127.0.0.1:{port}/", origin=ORIGIN, proxy=None)
            )
            for _ in range(24)
        ]
        for index, ws in enumerate(clients):
            await echo(ws, f"client {index}")
        document = await status(admin)
        workers = document["workers"]
        assert isinstance(workers, list)
        assert [w["running"] for w in workers] == [True, True]
        per_worker = [w["sessions"] for w in workers]
        assert sum(per_worker) == 24
        # The kernel spreads connections by a hash of their addresses: with 24 of them, the
        # chance that one worker got none is 2 * 2**-24.
        assert min(per_worker) > 0, per_worker
        assert document["sessions"] == 24
        pools = document["pools"]
        assert isinstance(pools, list)
        assert pools[0]["servers"][0]["sessions"] == 24
        history = document["history"]  # merged: each worker sampled at least when it started
        assert isinstance(history, dict)
        assert history["interval"] == 10
        assert history["samples"]
        assert await metric(admin, 'wsproxy_sessions_total{route="/",pool="main"}') == 24
        assert await metric(admin, "wsproxy_workers ") == 2
        assert await metric(admin, 'wsproxy_backend_up{pool="main"') == 1
        with trio.fail_after(CAP):
            assert (await http_get(admin, "/readyz"))[0] == 200
        child.signal(signal.SIGTERM)
        for ws in clients:  # the drain reaches the sessions of both workers
            with trio.fail_after(CAP), pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001
        assert await child.exit_code(CAP) == 0
        lines = await child.stderr.rest()
    assert len([line for line in lines if "SIGTERM: draining (sessions" in line]) == 2
    for index in (0, 1):  # each worker's lines name it
        assert any(f"wsproxy.server[worker {index}]: worker {index} (pid" in x for x in lines)


TOKEN = "0123456789abcdef-fleet"


async def test_workers_admin_lists_every_workers_sessions_and_closes_one_on_each(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = await start_backend(nursery)
    bearer = (f"Authorization: Bearer {TOKEN}",)
    async with (
        fleet(tmp_path, backend.url, token=TOKEN) as running,
        AsyncExitStack() as sessions,
    ):
        clients: list[ClientConnection] = []

        async def listing(query: str = "") -> list[dict[str, Any]]:
            with trio.fail_after(CAP):
                rows: list[dict[str, Any]] = json.loads(
                    (await ask(running.admin, "/sessions" + query)).body
                )["sessions"]
            return rows

        def worker_of(session: dict[str, Any]) -> str:  # each worker's ids have their prefix
            return str(session["id"]).split("-")[0]

        # The kernel spreads connections over the workers as it likes: 16 reach both but with
        # a chance of 2 * 2**-16, so a few more are made until they do.
        listed: list[dict[str, Any]] = []
        while len(clients) < 16 or len({worker_of(s) for s in listed}) < 2:
            assert len(clients) < 64, listed
            ws = await sessions.enter_async_context(connect(running.url, origin=ORIGIN, proxy=None))
            await echo(ws, f"client {len(clients)}")
            clients.append(ws)
            if len(clients) >= 16:
                listed = await listing()
        oldest = await listing("?limit=5")
        addresses = ["{}:{}".format(*ws.local_address[:2]) for ws in clients]
        # Every worker's sessions are listed, merged oldest first.
        assert sorted(s["client"] for s in listed) == sorted(addresses)
        assert [s["age"] for s in listed] == sorted((s["age"] for s in listed), reverse=True)
        workers = sorted({worker_of(s) for s in listed})
        for worker in workers:  # a worker's own sessions are in the order they connected
            theirs = [s["client"] for s in listed if worker_of(s) == worker]
            assert theirs == [address for address in addresses if address in theirs]
        # The limit applies to the merged list. Each worker tells the ages at its own moment,
        # so sessions of two workers that started close together may interleave differently
        # from one listing to the next; each worker's oldest come first in both.
        assert len(oldest) == 5
        assert [s["age"] for s in oldest] == sorted((s["age"] for s in oldest), reverse=True)
        for worker in workers:
            theirs = [s["id"] for s in oldest if worker_of(s) == worker]
            assert theirs == [s["id"] for s in listed if worker_of(s) == worker][: len(theirs)]
        chosen = [next(s for s in listed if worker_of(s) == w) for w in workers]
        with trio.fail_after(CAP):
            for number, session in enumerate(chosen):
                path = f"/sessions/{session['id']}/close"
                body = json.dumps({"code": 4000 + number, "reason": f"bye {number}"}).encode()
                closing = await ask(running.admin, path, "POST", body=body, headers=bearer)
                assert closing.status == 200, closing.body
                ws = clients[addresses.index(session["client"])]
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd is not None
                assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
                    4000 + number,
                    f"bye {number}",
                )
            unknown = await ask(running.admin, "/sessions/nothing-1/close", "POST", headers=bearer)
            unguarded = await ask(running.admin, path, "POST")
            wrong = await ask(running.admin, path, "POST", headers=("Authorization: Bearer x",))
        assert (unknown.status, unknown.body) == (404, b"no live session 'nothing-1'\n")
        assert (unguarded.status, wrong.status) == (401, 403)
        closed_clients = {session["client"] for session in chosen}
        for ws, address in zip(clients, addresses, strict=True):  # the others go on
            if address not in closed_clients:
                await echo(ws, "still here")


async def test_workers_a_drain_reaches_every_worker_and_one_restarted_later_too(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    a, b = await start_backend(nursery), await start_backend(nursery)
    bearer = (f"Authorization: Bearer {TOKEN}",)
    path = f"/pools/main/servers/{quote(a.url, safe='')}"

    async def document() -> Any:
        return await status(running.admin)

    async def weight_of_a() -> int:
        (pool,) = (await document())["pools"]
        (weight,) = [s["effective_weight"] for s in pool["servers"] if s["server"] == a.url]
        return int(weight)

    async def restarted_and_answering() -> int:
        first = (await document())["workers"][0]
        return int(first["running"] and first["restarts"] == 1)

    async with fleet(tmp_path, a.url, b.url, token=TOKEN) as running:
        heard = Heard()
        with trio.fail_after(CAP):
            async with trio.open_nursery() as clients:
                for _ in range(8):
                    await clients.start(hold, running.url, heard)
                on_a = count_on(a)
                body = b'{"window": 0, "code": 4003}'
                drain = await ask(running.admin, path + "/drain", "POST", body=body, headers=bearer)
                assert drain.status == 200, drain.body
                await heard.at_least(on_a)
                clients.cancel_scope.cancel()
        assert on_a > 0
        assert [(code, reason) for _, code, reason in heard.closes] == [
            (4003, DRAIN_REASON)
        ] * on_a, "every worker closed its sessions on a, and only those"
        for index in range(6):  # new sessions, whichever worker they reach, go to b
            async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
                await echo(ws, f"drained {index}")
        assert count_on(a) == on_a
        assert await weight_of_a() == 0
        workers = (await status(running.admin))["workers"]
        assert isinstance(workers, list)
        victim = workers[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        await running.child.stderr.until(f"(pid {victim}) exited with code -9", CAP)
        await until_async(restarted_and_answering, 1)
        # The restarted worker weighs a at 1 (and the merged weight is the highest) until the
        # supervisor gives it the drain that stands.
        await until_async(weight_of_a, 0)
        undrain = await ask(running.admin, path + "/undrain", "POST", headers=bearer)
        assert undrain.status == 200, undrain.body
        assert await weight_of_a() == 1


async def until_async(read: Callable[[], Awaitable[int]], wanted: int) -> None:
    """Poll `read()` every 20 ms until it gives `wanted`, for at most CAP seconds."""
    with trio.fail_after(CAP):
        while await read() != wanted:  # noqa: ASYNC110 - another process's figures
            await trio.sleep(0.02)


async def test_workers_a_dead_worker_is_restarted_and_the_rest_go_on(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = await start_backend(nursery)
    async with fleet(tmp_path, backend.url) as running:
        child, port, admin = running.child, running.port, running.admin
        workers = (await status(admin))["workers"]
        assert isinstance(workers, list)
        victim, survivor = workers[0]["pid"], workers[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        await child.stderr.until(f"(pid {victim}) exited with code -9: starting it again", CAP)
        await child.stderr.until("worker 0 (pid", CAP)
        workers = (await status(admin))["workers"]
        assert isinstance(workers, list)
        assert workers[0]["pid"] not in (victim, None)
        assert workers[1]["pid"] == survivor
        assert [w["restarts"] for w in workers] == [1, 0]
        assert await metric(admin, "wsproxy_worker_restarts_total ") == 1
        for index in range(10):  # new connections, whichever worker they reach, work
            async with connect(f"ws://127.0.0.1:{port}/", origin=ORIGIN, proxy=None) as ws:
                await echo(ws, f"after the restart {index}")
        await running.stop_cleanly()


async def test_workers_sighup_reloads_every_worker_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    a = await start_backend(nursery)
    b = await start_backend(nursery)
    async with fleet(tmp_path, a.url) as running:
        child, port, admin = running.child, running.port, running.admin
        async with connect(f"ws://127.0.0.1:{port}/", origin=ORIGIN, proxy=None) as before:
            await echo(before, "on a")
            running.rewrite(b.url)
            child.signal(signal.SIGHUP)
            for _ in range(2):
                await child.stderr.until("configuration reloaded", CAP)
            for index in range(10):
                async with connect(f"ws://127.0.0.1:{port}/", origin=ORIGIN, proxy=None) as ws:
                    await echo(ws, f"on b {index}")
            assert (len(a.requests), len(b.requests)) == (1, 10)
            await echo(before, "still on a")

            running.config.write_text("workers: [\n")
            child.signal(signal.SIGHUP)
            await child.stderr.until("reload refused: the workers keep the configuration", CAP)
            async with connect(f"ws://127.0.0.1:{port}/", origin=ORIGIN, proxy=None) as ws:
                await echo(ws, "on b again")
        assert await metric(admin, 'wsproxy_config_reloads_total{result="success"}') == 1
        assert await metric(admin, 'wsproxy_config_reloads_total{result="failure"}') == 1
        await running.stop_cleanly()
        lines = await child.stderr.rest()
    assert len([line for line in lines if "SIGHUP: reloading the configuration" in line]) == 3


async def test_workers_a_restarted_worker_serves_the_accepted_file_and_totals_stay(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """An edit that was never reloaded does not reach a restarted worker, and the fleet's
    totals do not drop when a worker dies."""
    a = await start_backend(nursery)
    b = await start_backend(nursery)
    async with fleet(tmp_path, a.url) as running:
        for index in range(6):
            async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
                await echo(ws, f"before {index}")
        total = 'wsproxy_sessions_total{route="/",pool="main"}'
        assert await metric(running.admin, total) == 6
        running.rewrite(b.url)  # not reloaded
        workers = (await status(running.admin))["workers"]
        assert isinstance(workers, list)
        for worker in workers:
            os.kill(worker["pid"], signal.SIGKILL)
        for index in (0, 1):  # both started again
            await running.child.stderr.count(f"[worker {index}]: worker {index} (pid", 2, CAP)
        assert await metric(running.admin, total) == 6
        for index in range(6):
            async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
                await echo(ws, f"after {index}")
        assert (len(a.requests), len(b.requests)) == (12, 0)
        assert await metric(running.admin, total) == 12
        await running.stop_cleanly()


async def test_workers_a_reload_that_moves_the_listen_address_is_refused(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = await start_backend(nursery)
    async with fleet(tmp_path, backend.url) as running:
        text = running.config.read_text()
        running.config.write_text(text.replace(f"127.0.0.1:{running.port}", "127.0.0.1:1"))
        running.child.signal(signal.SIGHUP)
        await running.child.stderr.until("reload refused: listen: addresses change only", CAP)
        assert await metric(running.admin, 'wsproxy_config_reloads_total{result="failure"}') == 1
        await running.stop_cleanly()


async def test_workers_a_sighup_while_they_start_reaches_each_once_ready(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = await start_backend(nursery)
    port, admin = free_port(), free_port()
    config = write(tmp_path / "c.yaml", port, admin, backend.url)
    async with started("serve", "-c", str(config)) as child:
        await child.stderr.until(") ready", CAP)  # the first worker: the other may not be
        child.signal(signal.SIGHUP)
        await child.stderr.count("configuration reloaded", 2, CAP)
        await child.stderr.count("with 2 workers", 1, CAP)
        child.signal(signal.SIGTERM)
        assert await child.exit_code(CAP) == 0


async def test_workers_readyz_turns_503_at_once_on_sigterm(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = await start_backend(nursery)
    async with fleet(tmp_path, backend.url) as running:
        child, admin = running.child, running.admin
        async with connect(running.url, origin=ORIGIN, proxy=None) as ws:
            child.signal(signal.SIGTERM)
            await child.stderr.until("SIGTERM: draining 2 workers", CAP)
            with trio.fail_after(CAP):
                answer = await http_get(admin, "/readyz")
            assert answer == (503, b"not ready: draining\n")
            await echo(ws, "drain time left")
        assert await child.exit_code(CAP) == 0


async def test_workers_the_status_page_lists_them_in_chromium(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = await start_backend(nursery)
    async with fleet(tmp_path, backend.url) as running:
        port, admin = running.port, running.admin
        with trio.fail_after(60):
            async with browser_page(tmp_path) as page:
                await page.call("Page.navigate", url=f"http://127.0.0.1:{admin}/")
                await page.until("document.querySelector('#ready')?.textContent", "yes")
                text = "document.querySelector('#workers').textContent"
                await page.until(f"{text}.startsWith('2 workers: #0 pid ')", True)
                async with connect(f"ws://127.0.0.1:{port}/", origin=ORIGIN, proxy=None) as ws:
                    await echo(ws, "counted on the page")
                    await page.until("document.querySelector('#sessions').textContent", "1")
                    await page.until(f"/1 sessions/.test({text})", True)
        await running.stop_cleanly()


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie, waiting to be reaped, has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_workers_drain_and_exit_when_the_supervisor_is_killed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = await start_backend(nursery)
    # TMPDIR: the supervisor's control directory, which a killed supervisor leaves behind
    async with fleet(tmp_path, backend.url, env={"TMPDIR": str(tmp_path)}) as running:
        child, admin = running.child, running.admin
        workers = (await status(admin))["workers"]
        assert isinstance(workers, list)
        pids = [worker["pid"] for worker in workers]
        assert all(alive(pid) for pid in pids)
        child.process.kill()
        assert await child.exit_code(CAP) == -signal.SIGKILL
        await until(lambda: not any(alive(pid) for pid in pids), "the workers exit", CAP)
        lines = await child.stderr.rest()
    assert len([line for line in lines if "is gone: draining" in line]) == 2


def test_workers_port_in_use_exits_1_before_any_worker(tmp_path: Path) -> None:
    with occupied_port() as port:
        config = write(tmp_path / "c.yaml", port, free_port(), "ws://127.0.0.1:9")
        result = run_wsproxy("serve", "-c", str(config))
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in assert_one_sentence(result.stderr)


async def test_workers_a_worker_that_cannot_start_stops_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config_path = write(tmp_path / "c.yaml", 0, free_port(), "ws://127.0.0.1:9")
    text = config_path.read_text()
    supervisor = Supervisor(
        str(config_path),
        text,
        parse_config(text, {}),
        command=(sys.executable, "-c", "import sys; sys.exit(3)", "--"),
    )
    with trio.fail_after(CAP), caplog.at_level(logging.INFO):
        assert await supervisor.run() == 1
    assert any("exited with code 3 while starting" in r.getMessage() for r in caplog.records)
    codes = [worker.exit_code for worker in supervisor.workers]
    assert 3 in codes
    assert set(codes) <= {3, -signal.SIGTERM}  # the other may be stopped before it fails


# ---------------------------------------------------------------- merging, on fixed figures


def test_workers_merge_sums_series_and_keeps_families_together() -> None:
    one = (
        "# HELP a_total A.\n# TYPE a_total counter\n"
        'a_total{x="1"} 2\n'
        "# HELP up Up.\n# TYPE up gauge\n"
        'up{s="p"} 0\n'
        "# HELP start Start.\n# TYPE start gauge\nstart 200.5\n"
    )
    two = (
        "# HELP a_total A.\n# TYPE a_total counter\n"
        'a_total{x="1"} 3\na_total{x="a b"} 1\n'
        "# HELP up Up.\n# TYPE up gauge\n"
        'up{s="p"} 1\n'
        "# HELP start Start.\n# TYPE start gauge\nstart 100.25\n"
    )
    assert merge([one, two], highest={"up"}, lowest={"start"}) == (
        "# HELP a_total A.\n# TYPE a_total counter\n"
        'a_total{x="1"} 5\na_total{x="a b"} 1\n'
        "# HELP up Up.\n# TYPE up gauge\n"
        'up{s="p"} 1\n'
        "# HELP start Start.\n# TYPE start gauge\nstart 100.25\n"
    )


def test_workers_for_worker_takes_the_supervisors_ports_and_no_admin(tmp_path: Path) -> None:
    config_path = write(tmp_path / "c.yaml", 0, 9090, "ws://127.0.0.1:9")
    config = parse_config(config_path.read_text(), {})
    assert (config.workers, config.admin is not None) == (2, True)
    worker = for_worker(config, [41234])
    assert [(x.host, x.port) for x in worker.listen] == [("127.0.0.1", 41234)]
    assert (worker.admin, worker.workers) == (None, 1)
    # each of the two workers takes half of each limit, rounded up
    assert (worker.security.max_connections, worker.security.max_connections_per_ip) == (
        5_000,
        128,
    )
    limited = parse_config(
        config_path.read_text().replace(
            "servers: [", "max_connections_per_server: 5\n    servers: ["
        ),
        {},
    )
    assert for_worker(limited, [1]).pools["main"].max_connections_per_server == 3


def test_workers_for_worker_shares_out_the_handshake_and_rebalancing_rates(
    tmp_path: Path,
) -> None:
    text = write(tmp_path / "c.yaml", 0, 9090, "ws://127.0.0.1:9").read_text()
    text = text.replace("servers: [", "rebalance: {rate: 5/s}\n    servers: [")
    limited = parse_config(text + "limits: {per_ip: {handshakes_per_second: 5}}\n", {})
    worker = for_worker(limited, [1])
    rebalance = worker.pools["main"].rebalance
    assert rebalance is not None
    assert rebalance.rate == 2.5
    per_ip = worker.limits.per_ip
    assert per_ip is not None
    assert (per_ip.handshakes_per_second, per_ip.burst) == (3, 3)  # the burst defaulted to 5
    bursty = parse_config(text + "limits: {per_ip: {handshakes_per_second: 5, burst: 41}}\n", {})
    per_ip = for_worker(bursty, [1]).limits.per_ip
    assert per_ip is not None
    assert (per_ip.handshakes_per_second, per_ip.burst) == (3, 21)
    assert for_worker(parse_config(text, {}), [1]).limits.per_ip is None
