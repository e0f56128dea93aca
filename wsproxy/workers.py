"""Several processes serving one configuration on the same ports (`workers` > 1).

Invariants:
- The supervisor binds every listen address first, with SO_REUSEPORT and without listening,
  and holds it until it exits: a port given as 0 becomes one port for all workers, a port in
  use fails before any worker starts, and a restarted worker can always share its port again.
  The kernel spreads new connections over the workers' listening sockets.
- Workers run in sessions of their own, so a terminal's Ctrl-C reaches the supervisor only;
  it forwards SIGTERM, SIGINT and SIGHUP to every worker, which acts on them as a single
  process does (drain, stop at once, reload). The supervisor checks a reloaded file first and
  forwards SIGHUP only when it is usable, so it counts each reload once.
- A worker whose supervisor is killed outright drains and exits by itself (it checks every
  ORPHAN_CHECK seconds), so no worker keeps serving the port unsupervised.
- A worker that exits while the supervisor is not stopping is restarted after RESTART_PAUSE,
  doubled while workers keep dying within YOUNG seconds of their start, up to
  MAX_RESTART_PAUSE. A worker that exits before every worker has first become ready stops the
  start: the other workers are stopped and the supervisor exits 1.
- The admin endpoint is the supervisor's. Each worker answers admin requests on a Unix socket
  of its own; `/metrics` and `/status` combine the workers that answer within ASK_TIMEOUT
  (counts summed, health the best any worker sees) with the supervisor's own figures
  (reloads, restarts, workers running).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import trio

from wsproxy import __version__
from wsproxy.admin import serve_admin
from wsproxy.config import Config, ConfigError
from wsproxy.metrics import Counter, Gauge, ProxyMetrics, merge, render
from wsproxy.server import ListenError, Proxy, bind_shared
from wsproxy.tls import TLSError, contexts_for

log = logging.getLogger(__name__)

PYTHON_M: Final = (sys.executable, "-m", "wsproxy")
RESTART_PAUSE: Final = 0.1  # seconds before a dead worker is started again
MAX_RESTART_PAUSE: Final = 10.0
YOUNG: Final = 10.0  # a worker that dies sooner than this after its start doubles the pause
ASK_TIMEOUT: Final = 2.0  # seconds a worker has to answer an admin request
ORPHAN_CHECK: Final = 0.5  # seconds between a worker's looks at whether its supervisor lives
_FORWARDED: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_HEALTH_ORDER: Final = ("up", "ejected", "down")  # best first


def for_worker(config: Config, ports: Sequence[int]) -> Config:
    """A worker's view of `config`: the supervisor's ports, no admin address (the supervisor
    has it), one process."""
    listen = config.listen
    if len(ports) == len(listen):
        listen = tuple(
            dataclasses.replace(x, port=port) for x, port in zip(listen, ports, strict=True)
        )
    return dataclasses.replace(config, listen=listen, admin=None, workers=1)


async def run_worker(proxy: Proxy, load: Callable[[], Config], control: str) -> None:
    """A worker's life: admin on the Unix socket `control`, shared ports, signals as usual,
    and a drain of its own if the supervisor dies without stopping it."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(control)  # left by this worker's previous life
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(control)
    sock.listen(64)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_supervisor, proxy, os.getppid())
        await proxy.serve_until_signalled(load, reuse_port=True, admin=trio.SocketListener(sock))
        nursery.cancel_scope.cancel()


async def _watch_supervisor(proxy: Proxy, supervisor: int) -> None:
    """Drain once the supervisor is gone (killed outright): no worker outlives it for long."""
    while True:  # polling: no event announces a parent's death (short of prctl)
        await trio.sleep(ORPHAN_CHECK)
        if os.getppid() != supervisor:
            break
    log.warning("the supervisor (pid %d) is gone: draining", supervisor)
    proxy.stop()


@dataclass
class Worker:
    """One worker process, as the supervisor sees it."""

    index: int
    control: str  # the Unix socket it answers admin requests on
    process: trio.Process | None = None
    restarts: int = 0
    exit_code: int | None = None  # set once it has exited for good


class Supervisor:
    """Starts `config.workers` workers, keeps them running, and stands for them all."""

    def __init__(
        self,
        path: str,
        config: Config,
        load: Callable[[], Config],
        *,
        command: Sequence[str] = PYTHON_M,
    ) -> None:
        self.path = path
        self.config = config
        self._load = load
        self._command = tuple(command)
        self.workers: list[Worker] = []
        self.reloads = ProxyMetrics().config_reloads  # counted here, once for all workers
        self.restarts = Counter(
            "wsproxy_worker_restarts_total", "Workers started again after they exited.", ()
        )
        self._stopping = trio.Event()
        self._start_failed = False
        self._ready = trio.Event()

    @property
    def stopping(self) -> bool:
        """True from the first SIGTERM or SIGINT (or a failed start) on."""
        return self._stopping.is_set()

    async def run(self) -> int:
        """Serve until signalled and every worker has exited; the exit code."""
        with trio.open_signal_receiver(*_FORWARDED) as signals:
            held, ports = await self._hold_ports()
            try:
                admin = await self._bind_admin()
                with tempfile.TemporaryDirectory(prefix="wsproxy-") as control:
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
            outer.start_soon(self._obey, signals)
            if admin is not None:
                await outer.start(serve_admin, self, admin)
            async with trio.open_nursery() as running:
                for worker in self.workers:
                    running.start_soon(self._keep_running, worker, ports)
                running.start_soon(self._announce, ports, admin)
            outer.cancel_scope.cancel()

    async def _hold_ports(self) -> tuple[list[trio.socket.SocketType], list[int]]:
        held: list[trio.socket.SocketType] = []
        ports: list[int] = []
        try:
            for listen in self.config.listen:
                try:
                    bound = await bind_shared(listen.host, listen.port, listen=False)
                    port = bound[0].getsockname()[1]
                    if listen.port == 0 and len(bound) > 1:  # one port on every address
                        for sock in bound:
                            sock.close()
                        bound = await bind_shared(listen.host, port, listen=False)
                except OSError as exc:
                    raise ListenError(
                        f"cannot listen on {listen.address}: {exc.strerror or exc}"
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
            raise ListenError(f"cannot listen on {admin.address}: {exc.strerror or exc}") from None

    async def _keep_running(self, worker: Worker, ports: list[int]) -> None:
        command = [
            *self._command,
            "worker",
            "-c",
            self.path,
            "--index",
            str(worker.index),
            "--ports",
            ",".join(map(str, ports)),
            "--control",
            worker.control,
        ]
        pause = RESTART_PAUSE
        try:
            while True:
                process = await trio.lowlevel.open_process(
                    command, stdin=subprocess.DEVNULL, start_new_session=True
                )
                worker.process = process
                began = trio.current_time()
                code = await process.wait()
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

    async def _announce(self, ports: list[int], admin: trio.SocketListener | None) -> None:
        """Log once every worker answers, as a single process logs once it listens."""
        while not self.stopping:
            answers = await self._ask_all("/healthz")
            if all(answer is not None for answer in answers):
                self._ready.set()
                hosts = [x.host for x in self.config.listen]
                addresses = [
                    f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                    for host, port in zip(hosts, ports, strict=True)
                ]
                if admin is not None:
                    host, port = admin.socket.getsockname()[:2]
                    log.info("admin endpoint on %s:%d", host, port)
                log.info(
                    "wsproxy listening on %s with %d workers",
                    ", ".join(addresses),
                    len(self.workers),
                )
                return
            await trio.sleep(0.02)

    # ---------------------------------------------------------------- signals

    async def _obey(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                self._reload()
            elif self.stopping:
                log.warning("%s while draining: stopping the workers now", name)
                self._forward(signum)
            else:
                log.info("%s: draining %d workers", name, len(self.workers))
                self._stop(signum)

    def _stop(self, signum: int) -> None:
        self._stopping.set()
        self._forward(signum)

    def _forward(self, signum: int) -> None:
        for worker in self.workers:
            process = worker.process
            if process is not None and process.returncode is None:
                process.send_signal(signum)

    def _reload(self) -> None:
        if self.stopping:
            log.warning("SIGHUP ignored: the workers are draining")
            return
        try:
            config = self._load()
            contexts_for(config)
        except (ConfigError, TLSError) as exc:
            for problem in exc.problems if isinstance(exc, ConfigError) else [str(exc)]:
                log.error("reload refused: %s", problem)
            log.error("reload refused: the workers keep the configuration in use")
            self.reloads.inc("failure")
            return
        if config.workers != self.config.workers:
            log.warning("reload: a new number of workers takes effect on restart")
        self.config = dataclasses.replace(
            config, listen=self.config.listen, admin=self.config.admin, workers=len(self.workers)
        )
        self.reloads.inc("success")
        log.info("SIGHUP: reloading the configuration in %d workers", len(self.workers))
        self._forward(signal.SIGHUP)

    # ---------------------------------------------------------------- the admin view

    async def _ask_all(self, path: str) -> list[tuple[int, str] | None]:
        answers: list[tuple[int, str] | None] = [None] * len(self.workers)

        async def ask(index: int, worker: Worker) -> None:
            answers[index] = await _ask(worker.control, path)

        async with trio.open_nursery() as nursery:
            for index, worker in enumerate(self.workers):
                if worker.process is not None and worker.process.returncode is None:
                    nursery.start_soon(ask, index, worker)
        return answers

    async def not_ready(self) -> str:
        if self.stopping:
            return "draining"
        answers = await self._ask_all("/readyz")
        if not any(answers):
            return "no worker is running"
        for worker, answer in zip(self.workers, answers, strict=True):
            if answer is None:
                continue
            status, body = answer
            if status != 200:
                return f"worker {worker.index}: {body.strip().removeprefix('not ready: ')}"
        return ""

    async def status(self) -> dict[str, object]:
        problem = await self.not_ready()
        answers = await self._ask_all("/status")
        documents = [json.loads(a[1]) if a is not None else None for a in answers]
        present = [doc for doc in documents if doc is not None]
        return {
            "version": __version__,
            "ready": not problem,
            "not_ready_because": problem,
            "draining": self.stopping,
            "connections": sum(doc["connections"] for doc in present),
            "sessions": sum(doc["sessions"] for doc in present),
            "pools": merge_pools([doc["pools"] for doc in present]),
            "workers": [
                {
                    "index": worker.index,
                    "pid": worker.process.pid if worker.process is not None else None,
                    "running": doc is not None,
                    "restarts": worker.restarts,
                    "sessions": doc["sessions"] if doc is not None else 0,
                }
                for worker, doc in zip(self.workers, documents, strict=True)
            ],
        }

    async def metrics(self) -> str:
        answers = await self._ask_all("/metrics")
        reloads = self.reloads.name
        texts = [_without(answer[1], reloads) for answer in answers if answer is not None]
        running = Gauge(
            "wsproxy_workers",
            "Worker processes answering the supervisor.",
            (),
            [((), float(len(texts)))],
        )
        own = render([self.reloads, self.restarts, running])
        return merge(
            [*texts, own],
            highest={"wsproxy_backend_up"},
            lowest={"process_start_time_seconds"},
        )


def merge_pools(each: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The pools of several workers' `/status` as one: counts summed, a server's health the
    best any worker sees (a session may go to that worker), listed if any lists it."""
    pools: dict[str, dict[str, Any]] = {}
    servers: dict[str, dict[str, dict[str, Any]]] = {}
    for worker_pools in each:
        for pool in worker_pools:
            name = pool["pool"]
            merged = pools.setdefault(name, {**pool, "healthy": 0, "sessions": 0})
            merged["healthy"] = max(merged["healthy"], pool["healthy"])
            merged["sessions"] += pool["sessions"]
            known = servers.setdefault(name, {})
            for server in pool["servers"]:
                have = known.get(server["server"])
                if have is None:
                    known[server["server"]] = dict(server)
                    continue
                for key in ("sessions", "connecting", "sessions_total", "failures_total"):
                    have[key] += server[key]
                if _HEALTH_ORDER.index(server["health"]) < _HEALTH_ORDER.index(have["health"]):
                    have["health"] = server["health"]
                    have["check_problem"] = server["check_problem"]
                have["listed"] = have["listed"] or server["listed"]
                have["ejected_for"] = min(have["ejected_for"], server["ejected_for"])
    return [{**pool, "servers": list(servers[name].values())} for name, pool in pools.items()]


async def _ask(control: str, path: str) -> tuple[int, str] | None:
    """A worker's answer to `GET path` (status, body), or None if it gave none in time."""
    with trio.move_on_after(ASK_TIMEOUT):
        try:
            stream = await trio.open_unix_socket(control)
            async with stream:
                await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: worker\r\n\r\n".encode())
                data = b""
                while chunk := await stream.receive_some(65536):
                    data += chunk
        except (OSError, trio.BrokenResourceError):
            return None
        head, _, body = data.partition(b"\r\n\r\n")
        parts = head.split(b" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            return None
        return int(parts[1]), body.decode("utf-8", "replace")
    return None


def _without(text: str, family: str) -> str:
    """`text` without the samples and comments of metric `family`."""
    return "\n".join(
        line
        for line in text.splitlines()
        if not (
            line.startswith((f"# HELP {family} ", f"# TYPE {family} ", f"{family}{{"))
            or line.startswith(f"{family} ")
        )
    )
