"""The proxy process: its listeners, signals, upkeep (health checks, name lookups), reloads and
the drain. One connection's admission is `admission`'s; the live sessions are `registry`'s.

Invariants:
- What is served comes from one `Snapshot` (configuration, balancers, TLS contexts) that a
  reload replaces whole, between two awaits, after the new names are resolved; a reload
  runs one at a time, and `stop()` abandons one still under way. Servers are kept by identity
  across the swap (one `ServerStates` for the process's life).
- Host names are resolved once before the first client is accepted; health checks and
  re-resolution run beside the accept loop for as long as `serve` does, for the pools of the
  snapshot in use; each server's sessions are sampled into `history` (the status page's
  chart) at the start of every `history.interval` beside them.
- Shutdown: stop accepting, let sessions run for up to `shutdown.drain_timeout`, ask the rest to
  close with `shutdown.close_code` spread evenly over `shutdown.close_window`, and cancel what
  is left `CLOSE_TIMEOUT` after the last ask.
"""

from __future__ import annotations

import functools
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import trio

from wsproxy.actions import Actions
from wsproxy.admin import ProxyView, keep_history, serve_admin
from wsproxy.adminapi import guard_for
from wsproxy.admission import Admission
from wsproxy.changes import config_changes
from wsproxy.closes import Close
from wsproxy.config import Config, ConfigError
from wsproxy.discovery import Resolver, resolve_tcp
from wsproxy.drains import Drains
from wsproxy.health import Probe
from wsproxy.history import History
from wsproxy.listening import Listening, accept_forever, address_of, open_listeners
from wsproxy.logs import change_logging
from wsproxy.parking import batch_reads
from wsproxy.rebalancing import keep_balanced
from wsproxy.registry import Registry
from wsproxy.relay import CLOSE_TIMEOUT
from wsproxy.servers import ServerStates
from wsproxy.signals import SIGNALS, ProxySignals, obey
from wsproxy.snapshot import build_snapshot, keep_up, resolve_names, restartless, retire
from wsproxy.upstream import Dial, dial_tcp

log = logging.getLogger(__name__)


class Proxy:
    """Serves one configuration on its listeners until `stop()`."""

    def __init__(
        self,
        config: Config,
        *,
        dial: Dial = dial_tcp,
        resolve: Resolver = resolve_tcp,
        probe: Probe | None = None,
        rng: random.Random | None = None,
        worker: int | None = None,
    ) -> None:
        """Raises `ConfigError` when a certificate, key or CA file of `config` is unusable.
        `worker` numbers this process among a supervisor's workers (see `workers`)."""
        self.worker = worker
        self._resolve = resolve
        self._rng = rng or random.Random()
        self.servers = ServerStates()
        self._build = functools.partial(  # the secret: for cookie pools that configure none
            build_snapshot, servers=self.servers, rng=self._rng, secret=os.urandom(32)
        )
        self.snapshot = self._build(config)
        self.registry = Registry(lambda: self.snapshot.config)
        self.history = History()  # for the status page's chart
        self.admission = Admission(self.registry, lambda: self.snapshot, dial=dial)
        self.drains = Drains(self.registry, lambda: self.snapshot)
        self.actions = Actions(self.registry, self.drains)  # the admin endpoint's
        self._keep_up = functools.partial(
            keep_up, resolve=resolve, dial=dial, probe=probe, rng=self._rng, agent=self.drains.apply
        )
        self._upkeep: trio.Nursery | None = None  # set once `serve` has begun upkeep
        self._upkeep_scope = trio.CancelScope()
        self._switching = trio.Lock()  # one reload (or serve's start) at a time
        self._reloading = trio.CancelScope()
        self._stopping = trio.Event()

    @property
    def config(self) -> Config:
        """The configuration new sessions get."""
        return self.snapshot.config

    @property
    def stopping(self) -> bool:
        """True from the moment the drain starts."""
        return self._stopping.is_set()

    def stop(self) -> None:
        """Begin the drain: no new connections; sessions get `drain_timeout` to finish. A
        reload still resolving names is abandoned."""
        self._stopping.set()
        self._reloading.cancel()

    async def serve(
        self,
        listeners: Sequence[trio.SocketListener | Listening] | None = None,
        *,
        admin: trio.SocketListener | None = None,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept and relay until `stop()`, then drain; `started` gets the bound addresses.
        A bare `SocketListener` is a `Listening` with the defaults (no PROXY protocol).
        By default every configured address is bound, the admin one included."""
        if listeners is None:
            listeners, admin = await open_listeners(self.config)
        listening = [x if isinstance(x, Listening) else Listening(x) for x in listeners]
        async with trio.open_nursery() as upkeep:
            async with self._switching:  # a reload waits until upkeep has begun
                await resolve_names(self.snapshot, self._resolve)
                self._upkeep = self.admission.reports = upkeep
                self.drains.nursery = self.actions.nursery = upkeep
                self._upkeep_scope = await upkeep.start(self._keep_up, self.snapshot)
                batch_reads(self.config.relay.batch_window)
            upkeep.start_soon(keep_history, self.history, lambda: self.snapshot)
            snapshot, stopping = (lambda: self.snapshot), (lambda: self.stopping)
            await upkeep.start(keep_balanced, self.registry, snapshot, stopping)
            addresses = [address_of(x.listener) for x in listening]
            if admin is not None:
                await upkeep.start(
                    serve_admin, ProxyView(self), admin, guard_for(self.config.admin, self.worker)
                )
            if self.worker is None:
                if admin is not None:
                    log.info("admin endpoint on %s", address_of(admin))
                log.info("wsproxy listening on %s", ", ".join(addresses))
            else:
                log.info("worker %d (pid %d) ready", self.worker, os.getpid())
            task_status.started(addresses)
            async with trio.open_nursery() as handlers:
                try:
                    async with trio.open_nursery() as accepting:
                        for each in listening:
                            accepting.start_soon(
                                accept_forever,
                                each.listener,
                                handlers,
                                functools.partial(self._handle, listening=each),
                                f"listener {address_of(each.listener)}",
                            )
                        await self._stopping.wait()
                        accepting.cancel_scope.cancel()
                finally:
                    for each in listening:
                        await trio.aclose_forcefully(each.listener)
                await self._drain(handlers)
            upkeep.cancel_scope.cancel()

    def _handle(self, tcp: trio.SocketStream, listening: Listening) -> Awaitable[None]:
        """The connection's task: admission, or a close if its peer is already gone. (Not a
        coroutine itself: the task runs admission's, one frame less held by every session.)"""
        try:
            peer = tcp.socket.getpeername()
        except OSError:
            return trio.aclose_forcefully(tcp)  # noqa: ASYNC105 (the task awaits it)
        return self.admission.handle(tcp, peer, listening)

    async def reload(self, load: Callable[[], Config]) -> bool:
        """Serve new sessions with the configuration `load` returns; sessions in flight keep
        theirs. An unusable one is logged and counted, and the current one stays. Reloads
        run one at a time; `stop()` abandons one still under way. A reload logs each change
        (`config_changes`), then applies the new `log` settings from the next line on."""
        async with self._switching:
            if self.stopping:
                log.warning("reload ignored: the proxy is draining")
                return False
            try:
                config, moved = restartless(self.config, load())
                if moved:
                    log.warning("reload: changes to %s take effect on restart", ", ".join(moved))
                snapshot = self._build(config)
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error("reload refused: %s", problem)
                log.error("reload refused: the configuration in use stays")
                self.registry.metrics.config_reloads.inc("failure")
                return False
            with trio.CancelScope() as self._reloading:
                self._upkeep_scope.cancel()  # the old pools' checks and lookups end here
                await resolve_names(snapshot, self._resolve)
                retire(old := self.snapshot, snapshot, self.servers)
                self.snapshot = snapshot
                batch_reads(config.relay.batch_window)
                if self._upkeep is not None:
                    self._upkeep_scope = await self._upkeep.start(self._keep_up, snapshot)
                self.registry.metrics.config_reloads.inc("success")
                log.info(
                    "configuration reloaded: %d routes, %d pools; sessions in flight keep theirs",
                    len(config.routes),
                    len(config.pools),
                )
                for change in config_changes(old.config, config) or ["nothing changed"]:
                    log.info("reload: %s", change)
                if config.log != old.config.log:  # after the lines above, in the old settings
                    change_logging(config.log.level, config.log.format, self.worker)
                    self.registry.interval_changed(old.config.log.session_interval)
                return True
            log.warning("reload abandoned: the proxy began draining while names were resolved")
            return False

    async def serve_until_signalled(
        self,
        load: Callable[[], Config] | None = None,
        *,
        reuse_port: bool = False,
        admin: trio.SocketListener | None = None,
    ) -> None:
        """`serve` until SIGTERM or SIGINT, which start the drain; a second one stops at once.
        SIGHUP reloads the configuration from `load`. `reuse_port` and `admin` are for
        workers: shared ports, and an admin listener of the supervisor's choosing."""
        with trio.open_signal_receiver(*SIGNALS) as signals:
            listeners, bound = await open_listeners(self.config, reuse_port=reuse_port)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.obey, signals, nursery.cancel_scope, load)
                await self.serve(listeners, admin=admin or bound)
                nursery.cancel_scope.cancel()

    async def obey(
        self,
        signals: AsyncIterator[int],
        scope: trio.CancelScope,
        load: Callable[[], Config] | None = None,
    ) -> None:
        """`obey` for this proxy: SIGHUP reloads from `load`; the first other signal starts
        the drain, and a second one cancels `scope` at once."""
        await obey(signals, ProxySignals(self, scope, load))

    async def _drain(self, handlers: trio.Nursery) -> None:
        shutdown = self.config.shutdown
        with trio.move_on_after(shutdown.drain_timeout):
            await self.registry.all_closed()
        if left := len(self.registry.sessions):
            window = shutdown.close_window
            log.info("drain time is over: closing %d sessions over %gs", left, window)
            await self.registry.close_paced(
                Close(shutdown.close_code, "proxy shutting down"), window
            )
        handlers.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT
