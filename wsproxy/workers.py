"""Several processes serving one configuration on the same ports (`workers` > 1).

Invariants:
- The supervisor binds every listen address first, with SO_REUSEPORT and without listening,
  and holds it until it exits: a port given as 0 becomes one port for all workers, a port in
  use fails before any worker starts, and a restarted worker can always share its port again.
  The kernel spreads new connections over the workers' listening sockets.
- Workers read the supervisor's copy of the file it last accepted, never the file itself: a
  restarted worker serves what the others serve, whatever the file holds by then. A reload
  that moves listen addresses is refused (they are bound once, by the supervisor).
- Each worker enforces its share of each connection limit (the limit over the workers, rounded
  up), so the whole proxy never exceeds the configured one.
- Workers run in sessions of their own, so a terminal's Ctrl-C reaches the supervisor only. It
  forwards SIGTERM, SIGINT and SIGHUP to every worker once that worker is ready (answers on its
  admin socket, so its own signal handling is in place); a signal for a worker not yet ready
  waits for it. A worker acts on them as a single process does (drain, stop at once, reload).
  The supervisor checks a reloaded file first and forwards SIGHUP only when it is usable.
- A worker whose supervisor is killed outright drains and exits by itself (it looks every
  ORPHAN_CHECK seconds), so no worker keeps serving the port unsupervised.
- A worker that exits while the supervisor is not stopping is restarted after RESTART_PAUSE,
  doubled while workers keep dying within YOUNG seconds of their start, up to
  MAX_RESTART_PAUSE. A worker that exits before every worker has first become ready stops the
  start: the other workers are stopped and the supervisor exits 1.
- The admin endpoint is the supervisor's. Each worker answers admin requests on a Unix socket
  of its own, in a directory only the proxy's user may enter; the supervisor checks an
  action's token, then passes the action on to every worker, which takes it without one.
  `/metrics` and `/status` combine the workers' answers (`fleet`: counts summed, health the
  best any worker sees) with the supervisor's own figures, `/sessions` their lists. Totals
  never go down: a worker that does not answer in ASK_TIMEOUT counts with its last answer, and
  the totals of a worker that died are kept as a base under its successor's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

import h11
import trio

from wsproxy.admin import serve_admin
from wsproxy.adminapi import Guard
from wsproxy.config import Config, ConfigError, read_config
from wsproxy.fleet import FleetView
from wsproxy.http1 import NoAnswer, read_body, read_response, send_get, send_post
from wsproxy.listening import ListenError, bind_shared, host_port
from wsproxy.logs import change_logging
from wsproxy.metrics import Counter, Family, ProxyMetrics, cumulative, merge
from wsproxy.server import Proxy
from wsproxy.signals import SIGNALS, obey
from wsproxy.snapshot import build_snapshot, restartless

log = logging.getLogger(__name__)

PYTHON_M: Final = (sys.executable, "-m", "wsproxy")
RESTART_PAUSE: Final = 0.1  # seconds before a dead worker is started again
MAX_RESTART_PAUSE: Final = 10.0
YOUNG: Final = 10.0  # a worker that dies sooner than this after its start doubles the pause
ASK_TIMEOUT: Final = 2.0  # seconds a worker has to answer an admin request
ORPHAN_CHECK: Final = 0.5  # seconds between a worker's looks at whether its supervisor lives
READY_POLL: Final = 0.02  # seconds between looks at whether a started worker answers


def for_worker(config: Config, ports: Sequence[int]) -> Config:
    """A worker's view of `config`: the supervisor's ports, its share of each connection
    limit, of the per-IP handshake rate and of each pool's rebalancing rate, no admin address
    (the supervisor has it), one process."""
    share = config.workers
    listen = tuple(
        dataclasses.replace(x, port=port) for x, port in zip(config.listen, ports, strict=True)
    )
    security = dataclasses.replace(
        config.security,
        max_connections=-(-config.security.max_connections // share),
        max_connections_per_ip=-(-config.security.max_connections_per_ip // share),
    )
    per_ip = config.limits.per_ip
    if per_ip is not None:
        rate = per_ip.handshakes_per_second
        per_ip = dataclasses.replace(
            per_ip,
            handshakes_per_second=-(-rate // share),
            burst=-(-(per_ip.burst or rate) // share),
        )
    limits = dataclasses.replace(config.limits, per_ip=per_ip)
    pools = MappingProxyType(
        {
            name: dataclasses.replace(
                pool,
                max_connections_per_server=-(-pool.max_connections_per_server // share),
                rebalance=None
                if pool.rebalance is None
                else dataclasses.replace(pool.rebalance, rate=pool.rebalance.rate / share),
            )
            for name, pool in config.pools.items()
        }
    )
    return dataclasses.replace(
        config,
        listen=listen,
        security=security,
        limits=limits,
        pools=pools,
        admin=None,
        workers=1,
    )


async def run_worker(
    proxy: Proxy, load: Callable[[], Config], control: str, supervisor: int
) -> None:
    """A worker's life: admin on the Unix socket `control`, shared ports, signals as usual,
    and a drain of its own if the `supervisor` process dies without stopping it."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(control)  # left by this worker's previous life
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(control)
    sock.listen(64)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_supervisor, proxy, supervisor)
        await proxy.serve_until_signalled(load, reuse_port=True, admin=trio.SocketListener(sock))
        nursery.cancel_scope.cancel()


async def _watch_supervisor(proxy: Proxy, supervisor: int) -> None:
    """Drain once the supervisor is gone (killed outright): no worker outlives it for long."""
    while os.getppid() == supervisor:  # noqa: ASYNC110 - no event tells of a parent's death
        await trio.sleep(ORPHAN_CHECK)
    log.warning("the supervisor (pid %d) is gone: draining", supervisor)
    proxy.stop()


@dataclass
class Worker:
    """One worker process, as the supervisor sees it."""

    index: int
    control: str  # the Unix socket it answers admin requests on
    process: trio.Process | None = None
    ready: bool = False  # this process has answered on `control`: it handles signals
    pending: list[int] = field(default_factory=list)  # signals for it once it is ready
    restarts: int = 0
    exit_code: int | None = None  # set once it has exited for good
    metrics: str = ""  # the last /metrics it gave in this life
    base: str = ""  # the totals of its earlier lives

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def ask(self, path: str, post: bytes | None = None) -> tuple[int, str] | None:
        """Its answer to `GET path` (`POST path` with the body `post`) on its admin socket;
        None unless it runs and is ready."""
        process = self.process
        if not self.ready or process is None or process.returncode is not None:
            return None
        return await _ask(self.control, path, post)


class Supervisor:
    """Starts `config.workers` workers, keeps them running, and stands for them all."""

    def __init__(
        self, path: str, text: str, config: Config, *, command: Sequence[str] = PYTHON_M
    ) -> None:
        """`text` is the file's content that parsed as `config`."""
        self.path = path
        self.config = config
        self._text = text
        self._command = tuple(command)
        self._copy = ""  # the workers' configuration file, in the control directory
        self.workers: list[Worker] = []
        self.reloads = ProxyMetrics().config_reloads  # counted here, once for all workers
        self.restarts = Counter(
            "wsproxy_worker_restarts_total", "Workers started again after they exited.", ()
        )
        self._stopping = trio.Event()
        self._start_failed = False
        self._ready = trio.Event()  # every worker has been ready once
        self.view = FleetView(self)  # the admin endpoint's, which keeps the drains that stand

    @property
    def stopping(self) -> bool:
        """True from the first SIGTERM or SIGINT (or a failed start) on."""
        return self._stopping.is_set()

    async def run(self) -> int:
        """Serve until signalled and every worker has exited; the exit code."""
        with trio.open_signal_receiver(*SIGNALS) as signals:
            held, ports = await self._hold_ports()
            try:
                admin = await self._bind_admin()
                with tempfile.TemporaryDirectory(prefix="wsproxy-") as control:
                    self._copy = os.path.join(control, "config.yaml")
                    self._write_copy(self._text)
                    self.workers = [
                        Worker(index, os.path.join(control, f"worker-{index}.sock"))
                        for index in range(self.config.workers)
                    ]
                    await self._supervise(signals, ports, admin)
            finally:
                for sock in held:
                    sock.close()
        if self._start_failed:
            return 1
        return 0 if all(worker.exit_code == 0 for worker in self.workers) else 1

    async def _supervise(
        self,
        signals: AsyncIterator[int],
        ports: list[int],
        admin: trio.SocketListener | None,
    ) -> None:
        async with trio.open_nursery() as outer:
            outer.start_soon(obey, signals, self)
            if admin is not None:
                guard = Guard(token=self.config.admin.token if self.config.admin else "")
                await outer.start(serve_admin, self.view, admin, guard)
            async with trio.open_nursery() as running:
                for worker in self.workers:
                    running.start_soon(self._keep_running, worker, ports)
                running.start_soon(self._announce, ports, admin)
            outer.cancel_scope.cancel()

    async def _hold_ports(self) -> tuple[list[trio.socket.SocketType], list[int]]:
        held: list[trio.socket.SocketType] = []
        ports: list[int] = []
        try:
            for index, listen in enumerate(self.config.listen):
                try:
                    bound = await bind_shared(listen.host, listen.port, listen=False)
                    port = bound[0].getsockname()[1]
                    if listen.port == 0 and len(bound) > 1:  # one port on every address
                        for sock in bound:
                            sock.close()
                        bound = await bind_shared(listen.host, port, listen=False)
                except OSError as exc:
                    raise ListenError(
                        f"cannot listen on listen[{index}].address {listen.address}: "
                        f"{exc.strerror or exc}"
                    ) from None
                held += bound
                ports.append(port)
        except BaseException:
            for sock in held:
                sock.close()
            raise
        return held, ports

    async def _bind_admin(self) -> trio.SocketListener | None:
        admin = self.config.admin
        if admin is None:
            return None
        try:
            return (await trio.open_tcp_listeners(admin.port, host=admin.host))[0]
        except OSError as exc:
            raise ListenError(
                f"cannot listen on admin.address {admin.address}: {exc.strerror or exc}"
            ) from None

    def _write_copy(self, text: str) -> None:
        """Replace the workers' file in one step: a worker never reads half of it."""
        fresh = self._copy + ".new"
        Path(fresh).write_text(text, encoding="utf-8")
        os.replace(fresh, self._copy)

    async def _keep_running(self, worker: Worker, ports: list[int]) -> None:
        command = [
            *self._command,
            "worker",
            "-c",
            self._copy,
            "--index",
            str(worker.index),
            "--ports",
            ",".join(map(str, ports)),
            "--control",
            worker.control,
            "--supervisor",
            str(os.getpid()),
        ]
        pause = RESTART_PAUSE
        try:
            while True:
                worker.ready, worker.pending = False, []
                process = await trio.lowlevel.open_process(
                    command, stdin=subprocess.DEVNULL, start_new_session=True
                )
                worker.process = process
                if self.stopping:  # began while the process was being started
                    worker.pending.append(signal.SIGTERM)
                began = trio.current_time()
                async with trio.open_nursery() as life:
                    life.start_soon(self._become_ready, worker, process)
                    code = await process.wait()
                    life.cancel_scope.cancel()
                if worker.metrics:  # its totals carry on under its successor's
                    worker.base = merge([worker.base, cumulative(worker.metrics)])
                    worker.metrics = ""
                if self.stopping or not self._ready.is_set():
                    worker.exit_code = code
                    if not self.stopping:
                        log.error(
                            "worker %d exited with code %d while starting: stopping",
                            worker.index,
                            code,
                        )
                        self._start_failed = True
                        self._stop(signal.SIGTERM)
                    return
                young = trio.current_time() - began < YOUNG
                wait = pause if young else RESTART_PAUSE
                pause = min(wait * 2, MAX_RESTART_PAUSE)
                log.warning(
                    "worker %d (pid %d) exited with code %d: starting it again in %gs",
                    worker.index,
                    process.pid,
                    code,
                    wait,
                )
                worker.restarts += 1
                self.restarts.inc()
                await trio.sleep(wait)
                if self._stopping.is_set():
                    worker.exit_code = code
                    return
        finally:
            process_left = worker.process
            if process_left is not None and process_left.returncode is None:
                process_left.kill()  # only when the supervisor itself is being torn down

    async def _become_ready(self, worker: Worker, process: trio.Process) -> None:
        """Wait until the worker answers on its admin socket, then give it what is pending:
        signals, and the drains that stand (a worker's drains end with its life)."""
        while await _ask(worker.control, "/healthz") is None:  # noqa: ASYNC110 - polling a socket
            await trio.sleep(READY_POLL)
        worker.ready = True
        pending, worker.pending = worker.pending, []
        for signum in pending:
            process.send_signal(signum)
        await self.view.restore(worker)

    async def _announce(self, ports: list[int], admin: trio.SocketListener | None) -> None:
        """Log once every worker is ready, as a single process logs once it listens."""
        while not all(worker.ready for worker in self.workers):
            if self.stopping:
                return
            await trio.sleep(READY_POLL)
        self._ready.set()
        addresses = [
            host_port(x.host, port) for x, port in zip(self.config.listen, ports, strict=True)
        ]
        if admin is not None:
            log.info("admin endpoint on %s", host_port(*admin.socket.getsockname()[:2]))
        log.info("wsproxy listening on %s with %d workers", ", ".join(addresses), len(self.workers))

    # ---------------------------------------------------------------- signals

    def drain(self, signum: signal.Signals) -> None:
        log.info("%s: draining %d workers", signum.name, len(self.workers))
        self._stop(signum)

    def stop_now(self, signum: signal.Signals) -> None:
        log.warning("%s while draining: stopping the workers now", signum.name)
        self._forward(signum)

    def hang_up(self, reloads: trio.Nursery) -> None:
        self._reload()  # at once: the workers get SIGHUP before any signal that follows

    def _stop(self, signum: int) -> None:
        self._stopping.set()
        self._forward(signum)

    def _forward(self, signum: int) -> None:
        for worker in self.workers:
            process = worker.process
            if process is None or process.returncode is not None:
                continue
            if worker.ready:
                process.send_signal(signum)
            else:  # (a SIGHUP too: it may have read the copy before it was replaced)
                worker.pending.append(signum)

    def _reload(self) -> None:
        if self.stopping:
            log.warning("SIGHUP ignored: the workers are draining")
            return
        try:
            text, read = read_config(self.path, os.environ)
            build_snapshot(read)  # the checks a proxy's reload makes (`Proxy.reload`)
            config, moved = restartless(self.config, read)
            if "listen addresses" in moved:
                raise ConfigError(["listen: addresses change only on a restart (with workers)"])
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            log.error("reload refused: the workers keep the configuration in use")
            self.reloads.inc("failure")
            return
        if moved:  # admin or workers
            log.warning("reload: changes to admin or workers take effect on restart")
        self.config = config
        self._text = text
        self._write_copy(text)
        self.reloads.inc("success")
        log.info("SIGHUP: reloading the configuration in %d workers", len(self.workers))
        change_logging(config.log.level, config.log.format)  # the supervisor's own lines
        self._forward(signal.SIGHUP)

    # ---------------------------------------------------------------- the admin view

    def own_metrics(self) -> list[Family]:
        """What the supervisor counts itself: reloads (once for all workers), restarts."""
        return [self.reloads, self.restarts]


async def _ask(control: str, path: str, post: bytes | None = None) -> tuple[int, str] | None:
    """A worker's answer to `GET path` (`POST path` with the body `post`): status and body, or
    None if it gave none in time. The worker's socket takes actions without a token: only the
    supervisor can reach it, and it checked the asker's token first."""
    host = ((b"Host", b"worker"),)
    with trio.move_on_after(ASK_TIMEOUT):
        try:
            stream = await trio.open_unix_socket(control)
            async with stream:
                if post is None:
                    conn = await send_get(stream, path.encode(), host)
                else:
                    conn = await send_post(stream, path.encode(), host, post)
                response = await read_response(stream, conn)
                body = await read_body(stream, conn)
        except (OSError, trio.BrokenResourceError, h11.RemoteProtocolError, NoAnswer):
            return None
        return response.status_code, body.decode("utf-8", "replace")
    return None
