"""The proxy's lifecycle: listeners, the accept loop, limits, handshakes, sessions and the drain.

Invariants:
- Connection limits (whole proxy, per client IP) are counted from accept to close; a client over
  a limit still gets an HTTP answer (503 or 429), after its request head has been read.
- A request head is read whole, up to `max_header_size` bytes and within `handshake_timeout`,
  before anything is judged; bytes behind it belong to the WebSocket stream. On a
  `proxy_protocol` listener a valid PROXY header must come first, within the same timeout,
  and the client it names is the client for limits, forwarding headers, hashing and the log.
- Every refusal is an HTTP answer with a short plain-text body, then a polite close, and one
  INFO line on `wsproxy.refusals` (at most `REFUSAL_LINES_PER_SECOND`; then a count of those
  left out). A backend's own refusal, passed on to the client, is logged the same way.
- Shutdown: stop accepting, let sessions run for up to `shutdown.drain_timeout`, ask the rest to
  close with `shutdown.close_code` spread evenly over `shutdown.close_window`, and cancel what
  is left `CLOSE_TIMEOUT` after the last ask.
- Pools keep their server state in one `ServerStates` registry, and host names are resolved
  once before the first client is accepted; health checks and re-resolution run beside the
  accept loop for as long as `serve` does.
- On a TLS listener the handshake (after any PROXY header) completes by the same deadline as
  the request head; contexts are built with the configuration, never per connection.
- A reload swaps the configuration, balancers and TLS contexts whole, between two awaits, after
  the new names are resolved: a handshake takes one snapshot of them once its request head is
  read, and a session keeps the configuration it was opened under. Servers are kept by
  identity across the swap.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import random
import signal
import socket
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import h11
import trio

from wsproxy.admin import ProxyView, serve_admin
from wsproxy.balancer import PoolBalancer, PoolStatus, find_route
from wsproxy.changes import config_changes
from wsproxy.closes import Close
from wsproxy.config import Config, ConfigError
from wsproxy.discovery import Resolver, keep_resolving, resolve_pool, resolve_tcp
from wsproxy.frames import CLOSE_ABNORMAL
from wsproxy.handshake import (
    Reject,
    client_accept_response,
    judge_request,
)
from wsproxy.health import Probe, prober, watch_pool
from wsproxy.intake import (
    HeadTooLarge,
    Replayed,
    parse_request,
    pass_through,
    read_head,
    read_proxy_header,
    refuse,
    response_head,
)
from wsproxy.listening import accept_forever
from wsproxy.logs import (
    REFUSAL_LINES_PER_SECOND,
    AccessRecord,
    LineLimit,
    change_logging,
    iso_time,
    refusal_log,
    refusal_record,
    wall_time,
    write_access,
    write_refusal,
    write_refusals_suppressed,
)
from wsproxy.metrics import ProxyMetrics, close_code_label
from wsproxy.relay import CLOSE_TIMEOUT, Session
from wsproxy.servers import ServerState, ServerStates
from wsproxy.tls import contexts_for
from wsproxy.upstream import Dial, Passthrough, dial_tcp, open_backend

log = logging.getLogger(__name__)

_RETRY_AFTER: Final = ((b"retry-after", b"5"),)


class ListenError(Exception):
    """A configured address could not be bound (in use, not local, no permission)."""


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
        self.config = config
        self.worker = worker
        self._dial = dial
        self._resolve = resolve
        self._probe = probe
        self._rng = rng or random.Random()
        self.servers = ServerStates()
        self._cookie_secret = os.urandom(32)  # for cookie pools that configure no secret
        self._listener_tls, self._pool_tls = contexts_for(config)
        self.balancers = self._balancers_for(config)
        self.sessions: dict[Session, _Ready] = {}  # live ones, with what they were opened for
        self.metrics = ProxyMetrics()
        self.refusal_lines = LineLimit(REFUSAL_LINES_PER_SECOND)
        self._admin_listener: trio.SocketListener | None = None
        self._upkeep: trio.Nursery | None = None  # set once `serve` has begun upkeep
        self._upkeep_scope = trio.CancelScope()
        self._switching = trio.Lock()  # one reload (or serve's start) at a time
        self._reloading = trio.CancelScope()
        self.connections = 0
        self._per_ip: Counter[str] = Counter()
        self._stopping = trio.Event()
        self._all_closed = trio.Event()
        self._all_closed.set()

    def _balancers_for(self, config: Config) -> dict[str, PoolBalancer]:
        return {
            name: PoolBalancer(pool, self.servers, rng=self._rng, secret=self._cookie_secret)
            for name, pool in config.pools.items()
        }

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
        `admin` serves the admin endpoint (by default the one `open_listeners` bound, if any).
        """
        if listeners is None:
            listeners = await self.open_listeners()
        listening = [x if isinstance(x, Listening) else Listening(x) for x in listeners]
        admin = admin or self._admin_listener
        async with trio.open_nursery() as upkeep:
            async with self._switching:  # a reload waits until upkeep has begun
                for balancer in self.balancers.values():
                    await self._resolve_names(balancer)
                self._upkeep = upkeep
                self._upkeep_scope = await upkeep.start(
                    self._keep_up, self.balancers, self._pool_tls
                )
            addresses = [_address(x.listener) for x in listening]
            if admin is not None:
                await upkeep.start(serve_admin, ProxyView(self), admin)
            if self.worker is None:
                if admin is not None:
                    log.info("admin endpoint on %s", _address(admin))
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
                                f"listener {_address(each.listener)}",
                            )
                        await self._stopping.wait()
                        accepting.cancel_scope.cancel()
                finally:
                    for each in listening:
                        await trio.aclose_forcefully(each.listener)
                await self._drain(handlers)
            upkeep.cancel_scope.cancel()

    async def _resolve_names(self, balancer: PoolBalancer) -> None:
        if balancer.hostnames():
            await resolve_pool(balancer, self._resolve)

    async def _keep_up(
        self,
        balancers: dict[str, PoolBalancer],
        pool_tls: dict[str, ssl.SSLContext],
        *,
        task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Re-resolve names and check health for `balancers` until the scope given to
        `task_status` is cancelled (by a reload, or at the end of `serve`)."""
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                for balancer in balancers.values():
                    pool = balancer.pool
                    if balancer.hostnames() and pool.resolve_interval:
                        nursery.start_soon(
                            keep_resolving, balancer, self._resolve, pool.resolve_interval
                        )
                    if pool.health_check is not None:
                        probe = self._probe or prober(self._dial, pool_tls.get(balancer.name))
                        nursery.start_soon(
                            watch_pool, balancer, pool.health_check, probe, self._rng
                        )
                task_status.started(scope)

    # ---------------------------------------------------------------- reload

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
                config = self._restartless(load())
                listener_tls, pool_tls = contexts_for(config)
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error("reload refused: %s", problem)
                log.error("reload refused: the configuration in use stays")
                self.metrics.config_reloads.inc("failure")
                return False
            with trio.CancelScope() as self._reloading:
                balancers = self._balancers_for(config)
                self._upkeep_scope.cancel()  # the old pools' checks and lookups end here
                for balancer in balancers.values():
                    await self._resolve_names(balancer)
                self._retire(balancers)
                old = self.config
                self.config, self.balancers = config, balancers
                self._listener_tls, self._pool_tls = listener_tls, pool_tls
                if self._upkeep is not None:
                    self._upkeep_scope = await self._upkeep.start(
                        self._keep_up, balancers, pool_tls
                    )
                self.metrics.config_reloads.inc("success")
                log.info(
                    "configuration reloaded: %d routes, %d pools; sessions in flight keep theirs",
                    len(config.routes),
                    len(config.pools),
                )
                for change in config_changes(old, config) or ["nothing changed"]:
                    log.info("reload: %s", change)
                if config.log != old.log:  # after the lines above, which the old settings write
                    change_logging(config.log.level, config.log.format, self.worker)
                return True
            log.warning("reload abandoned: the proxy began draining while names were resolved")
            return False

    def _restartless(self, config: Config) -> Config:
        """`config` with what a reload cannot change (bound addresses, workers) kept as it is."""
        old = self.config
        listen_moved = [(x.host, x.port) for x in config.listen] != [
            (x.host, x.port) for x in old.listen
        ]
        kept = dataclasses.replace(
            config,
            listen=old.listen if listen_moved else config.listen,
            admin=old.admin,
            workers=old.workers,
        )
        moved = [
            name
            for name, changed in (
                ("listen addresses", listen_moved),
                ("admin", config.admin != old.admin),
                ("workers", config.workers != old.workers),
            )
            if changed
        ]
        if moved:
            log.warning("reload: changes to %s take effect on restart", ", ".join(moved))
        return kept

    def _retire(self, balancers: dict[str, PoolBalancer]) -> None:
        """Servers that the new `balancers` no longer list take no new sessions; those with
        sessions stay visible (and counted) in their pool until the last one ends."""
        listed = {id(s) for balancer in balancers.values() for s in balancer.servers}
        for name, old in self.balancers.items():
            gone = [s for s in (*old.servers, *old.retired) if id(s) not in listed]
            for state in gone:
                state.listed = False
            old.retired = [s for s in gone if s.load]
            for state in gone:
                if not state.load:
                    self.servers.drop(name, state)
            if name in balancers:
                balancers[name].retired += old.retired
        for balancer in balancers.values():
            if balancer.pool.health_check is None:
                for state in balancer.servers:
                    state.forget_checks()

    def status(self) -> list[PoolStatus]:
        """Each pool's servers: health, live sessions and totals (what `/status` shows)."""
        now = trio.current_time()
        return [balancer.status(now) for balancer in self.balancers.values()]

    async def open_listeners(self, *, reuse_port: bool = False) -> list[Listening]:
        """Bind every configured address, the admin one included (kept for `serve`); a
        failure is a `ListenError` naming the key and the address. With `reuse_port` the client
        listeners share their ports with other processes (SO_REUSEPORT)."""
        listening: list[Listening] = []
        admin = self.config.admin
        wanted = [
            (f"listen[{index}].address {listen.address}", listen.host, listen.port)
            for index, listen in enumerate(self.config.listen)
        ]
        if admin is not None:
            wanted.append((f"admin.address {admin.address}", admin.host, admin.port))
        for index, (address, host, port) in enumerate(wanted):
            shared = reuse_port and index < len(self.config.listen)
            try:
                if shared:
                    bound = [trio.SocketListener(sock) for sock in await bind_shared(host, port)]
                else:
                    bound = await trio.open_tcp_listeners(port, host=host)
            except OSError as exc:
                for each in listening:
                    await each.listener.aclose()
                raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from None
            if index == len(self.config.listen):
                self._admin_listener = bound[0]
                for extra in bound[1:]:
                    await extra.aclose()
            else:
                listening += [Listening(listener, position=index) for listener in bound]
        return listening

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
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            listeners = await self.open_listeners(reuse_port=reuse_port)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.obey, signals, nursery.cancel_scope, load)
                await self.serve(listeners, admin=admin)
                nursery.cancel_scope.cancel()

    async def obey(
        self,
        signals: AsyncIterator[int],
        scope: trio.CancelScope,
        load: Callable[[], Config] | None = None,
    ) -> None:
        """SIGHUP reloads from `load`; the first other signal starts the drain, and a second
        one cancels `scope` at once."""
        async with trio.open_nursery() as reloads:  # a slow reload never delays a drain
            await self._obey(signals, scope, load, reloads)
            reloads.cancel_scope.cancel()

    async def _obey(
        self,
        signals: AsyncIterator[int],
        scope: trio.CancelScope,
        load: Callable[[], Config] | None,
        reloads: trio.Nursery,
    ) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                if load is None:
                    log.warning("SIGHUP ignored: no configuration file to reload")
                else:
                    log.info("SIGHUP: reloading the configuration")
                    reloads.start_soon(self.reload, load)
                continue
            if self._stopping.is_set():
                log.warning("%s while draining: stopping now", name)
                scope.cancel()
                return
            drain = self.config.shutdown.drain_timeout
            log.info("%s: draining (sessions get up to %gs)", name, drain)
            self.stop()

    async def _drain(self, handlers: trio.Nursery) -> None:
        shutdown = self.config.shutdown
        with trio.move_on_after(shutdown.drain_timeout):
            await self._all_closed.wait()
        if self.sessions:
            left = list(self.sessions)
            window = shutdown.close_window
            log.info("drain time is over: closing %d sessions over %gs", len(left), window)
            close = Close(shutdown.close_code, "proxy shutting down")
            start = trio.current_time()
            async with trio.open_nursery() as closing:
                for when, session in zip(close_times(len(left), window), left, strict=True):
                    closing.start_soon(self._close_at, session, start + when, close)
        handlers.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT

    async def _close_at(self, session: Session, when: float, close: Close) -> None:
        await trio.sleep_until(when)
        if session in self.sessions:
            await session.shutdown(close)

    # ---------------------------------------------------------------- one connection

    async def _handle(self, tcp: trio.SocketStream, listening: Listening) -> None:
        try:
            peer = tcp.socket.getpeername()
        except OSError:
            await trio.aclose_forcefully(tcp)
            return
        stream: trio.abc.Stream = tcp
        position = listening.position  # the listener's settings now, a reload's included
        tls = None if position is None else self._listener_tls[position]
        proxy_protocol = (
            listening.proxy_protocol
            if position is None
            else self.config.listen[position].proxy_protocol
        )
        self.connections += 1
        self._all_closed = trio.Event() if self._all_closed.is_set() else self._all_closed
        deadline = trio.current_time() + self.config.security.handshake_timeout
        ip = ""
        try:
            early = b""
            if proxy_protocol:
                header = await read_proxy_header(stream, deadline)
                if isinstance(header, Reject):
                    await self._reject(stream, header, f"{peer[0]}:{peer[1]}")
                if not isinstance(header, tuple):
                    return
                client, early = header
                peer = client or peer
            if tls is not None:
                stream = trio.SSLStream(
                    Replayed(tcp, early) if early else tcp, tls, server_side=True
                )
                early = b""
                if not await _tls_handshake(stream, deadline):
                    return
            ip = str(peer[0])
            self._per_ip[ip] += 1
            ready = await self._handshake(
                stream, ip, early, deadline, secure=tls is not None, client=f"{ip}:{peer[1]}"
            )
            if ready is not None:
                await self._relay(stream, ready, f"{ip}:{peer[1]}")
        except Exception:
            log.exception("session of %s:%s failed", peer[0], peer[1])
        finally:
            self.connections -= 1
            if ip:
                self._per_ip[ip] -= 1
                if not self._per_ip[ip]:
                    del self._per_ip[ip]
            if not self.connections:
                self._all_closed.set()
            await trio.aclose_forcefully(stream)

    def _over_limit(self, ip: str) -> Reject | None:
        security = self.config.security
        if self.connections > security.max_connections:
            return Reject(503, "the proxy is at its connection limit", _RETRY_AFTER)
        if self._per_ip[ip] > security.max_connections_per_ip:
            return Reject(429, "too many connections from your address", _RETRY_AFTER)
        return None

    async def _handshake(
        self,
        stream: trio.abc.Stream,
        ip: str,
        early: bytes,
        deadline: float,
        *,
        secure: bool,
        client: str,
    ) -> _Ready | None:
        """Judge the request and reach a backend; refuse the client, or return the session.

        `early` holds bytes already read behind a PROXY header; the request head must be whole
        by `deadline`. `client` (IP:PORT) names the client in refusal lines.
        """
        over_limit = self._over_limit(ip)
        security = self.config.security
        with trio.move_on_at(deadline) as reading:
            try:
                head, trailing = await read_head(stream, security.max_header_size, early)
            except HeadTooLarge:
                await self._reject(stream, Reject(431, "request head too large"), client)
                return None
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
        if reading.cancelled_caught:
            await self._reject(stream, Reject(408, "request head not received in time"), client)
            return None
        if head is None:
            return None  # the client left before finishing its request
        # One snapshot from here on, the newest: a reload swaps all three together.
        config, balancers, pool_tls = self.config, self.balancers, self._pool_tls
        security = config.security
        request = parse_request(head)
        upgrade = request if isinstance(request, Reject) else judge_request(request, security)
        asked = None if isinstance(request, Reject) else request
        refusal = upgrade if isinstance(upgrade, Reject) else over_limit
        if refusal is not None:
            await self._reject(stream, refusal, client, asked)
            return None
        assert not isinstance(upgrade, Reject)
        route = find_route(config.routes, upgrade.host, upgrade.target.decode("latin-1"))
        if route is None:
            await self._reject(
                stream, Reject(404, "no route for this host and path"), client, asked
            )
            return None
        balancer = balancers[route.pool]
        pick = balancer.pick_for(upgrade, ip)
        result = await open_backend(
            balancer,
            upgrade,
            client_ip=ip,
            scheme="https" if secure else "http",
            connect_timeout=config.timeouts.connect,
            connect_total=config.timeouts.connect_total,
            max_head=security.max_header_size,
            dial=self._dial,
            pick=pick,
            tls=pool_tls.get(balancer.name),
        )
        if isinstance(result, Reject):
            await self._reject(stream, result, client, asked)
            return None
        if isinstance(result, Passthrough):
            self.metrics.rejections.inc(str(result.status))
            phrase = result.reason.decode("latin-1")
            reason = f"passed on from {result.server.key}" + (f": {phrase}" if phrase else "")
            self._log_refusal(result.status, reason, client, asked)
            await pass_through(stream, result)
            return None
        self.metrics.connect_seconds.observe(result.connect_seconds)
        accept = result.accept
        session = Session(
            config,
            stream,
            result.stream,
            compressed=accept.deflate,
            client_prefix=trailing,
            backend_prefix=result.trailing,
        )
        answer = client_accept_response(upgrade, accept)
        sticky = balancer.sticky_header(result.server, pick, secure=secure)
        switching = response_head(101, b"Switching Protocols", (*answer.headers, *sticky))
        return _Ready(
            session, switching, balancer, result.server, route.path, accept.subprotocol or ""
        )

    async def _reject(
        self,
        stream: trio.abc.Stream,
        reject: Reject,
        client: str,
        request: h11.Request | None = None,
    ) -> None:
        """Answer `reject`, counted and logged; `request` is the client's, once parsed."""
        self.metrics.rejections.inc(str(reject.status))
        self._log_refusal(reject.status, reject.reason, client, request)
        await refuse(stream, reject)

    def _log_refusal(
        self, status: int, reason: str, client: str, request: h11.Request | None
    ) -> None:
        if not refusal_log.isEnabledFor(logging.INFO):
            return
        now = trio.current_time()
        lines = self.refusal_lines
        if suppressed := lines.take_suppressed(now):
            write_refusals_suppressed(suppressed)
        if lines.admit(now):
            headers = {} if request is None else _joined_headers(request, b"origin", b"host")
            write_refusal(
                refusal_record(
                    status,
                    reason,
                    client,
                    origin=headers.get(b"origin"),
                    host=headers.get(b"host"),
                    target=None if request is None else request.target,
                )
            )
        elif lines.suppressed == 1 and self._upkeep is not None:  # the first left out
            end = lines.window_end
            assert end is not None
            self._upkeep.start_soon(self._report_suppressed, end)

    async def _report_suppressed(self, when: float) -> None:
        """Say how many refusal lines were left out, once their window is over, even if no
        refusal comes after it."""
        await trio.sleep_until(when)
        if suppressed := self.refusal_lines.take_suppressed(trio.current_time()):
            write_refusals_suppressed(suppressed)

    def _count_ended(self, session: Session, seconds: float) -> None:
        metrics = self.metrics
        messages_in, messages_out = session.messages
        metrics.messages.inc("in", amount=messages_in)
        metrics.messages.inc("out", amount=messages_out)
        metrics.bytes.inc("in", amount=session.client.bytes_in)
        metrics.bytes.inc("out", amount=session.backend.bytes_in)
        side = session.closed_by.value if session.closed_by else "unknown"
        code = session.close.code if session.close else CLOSE_ABNORMAL
        metrics.closes.inc(side, close_code_label(code, self.config.metrics.close_codes))
        metrics.session_seconds.observe(seconds)

    async def _relay(self, stream: trio.abc.Stream, ready: _Ready, client: str) -> None:
        session = ready.session
        started = trio.current_time()
        ready.balancer.started(ready.server)
        self.sessions[session] = ready
        self.metrics.sessions.inc(ready.route, ready.balancer.name)
        try:
            await stream.send_all(ready.switching)
            await session.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client left before its 101 was sent
        finally:
            del self.sessions[session]
            ready.balancer.ended(ready.server)
            self._count_ended(session, trio.current_time() - started)
            await trio.aclose_forcefully(session.backend.stream)
        close = session.close
        messages_in, messages_out = session.messages
        write_access(
            AccessRecord(
                time=iso_time(wall_time()),
                client=client,
                route=ready.route,
                pool=ready.balancer.name,
                server=ready.server.key,
                subprotocol=ready.subprotocol,
                duration=round(trio.current_time() - started, 3),
                messages_in=messages_in,
                messages_out=messages_out,
                bytes_in=session.client.bytes_in,
                bytes_out=session.backend.bytes_in,
                close_code=close.code if close else CLOSE_ABNORMAL,
                closed_by=session.closed_by.value if session.closed_by else "unknown",
            )
        )


@dataclass(frozen=True, slots=True)
class Listening:
    """A bound listener and what its configuration asks of each connection on it."""

    listener: trio.SocketListener
    proxy_protocol: bool = False  # only for a listener without a position
    position: int | None = None  # in `config.listen`, whose current settings apply


async def _tls_handshake(stream: trio.SSLStream[Any], deadline: float) -> bool:
    """Complete a client's TLS handshake by `deadline`; False (logged at debug) if it failed."""
    with trio.move_on_at(deadline):
        try:
            await stream.do_handshake()
            return True
        except trio.BrokenResourceError as exc:
            log.debug("TLS handshake failed: %s", exc.__cause__ or exc)
            return False
    log.debug("TLS handshake not done in time")
    return False


@dataclass(frozen=True, slots=True)
class _Ready:
    """A session whose backend said yes: all the relay and the access line need."""

    session: Session
    switching: bytes  # our 101 to the client
    balancer: PoolBalancer
    server: ServerState
    route: str
    subprotocol: str


def _joined_headers(request: h11.Request, *names: bytes) -> dict[bytes, bytes]:
    """The values of each of `names` that `request` has, several joined by ", "."""
    found: dict[bytes, list[bytes]] = {}
    for name, value in request.headers:
        if name in names:
            found.setdefault(name, []).append(value)
    return {name: b", ".join(values) for name, values in found.items()}


def close_times(count: int, window: float) -> list[float]:
    """When each of `count` sessions is closed, in seconds from the start of `window`: evenly
    spaced, the first at once and the last a step before the window's end."""
    return [window * index / count for index in range(count)]


async def bind_shared(host: str, port: int, *, listen: bool = True) -> list[trio.socket.SocketType]:
    """Listeners on every address `host` resolves to, each with SO_REUSEPORT, so that other
    processes doing the same share the port and the kernel spreads connections among them.
    With `listen` False the sockets are bound only: they hold the port and take no clients."""
    infos = await trio.socket.getaddrinfo(
        host or None, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE
    )
    bound: list[trio.socket.SocketType] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(
            (info[0], info[1], info[2], "", info[4]) for info in infos
        ):
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
                if family == trio.socket.AF_INET6:
                    sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                if listen:
                    sock.listen(socket.SOMAXCONN)
            except BaseException:
                sock.close()
                raise
            bound.append(sock)
    except BaseException:
        for each in bound:
            each.close()
        raise
    return bound


def _address(listener: trio.SocketListener) -> str:
    name = listener.socket.getsockname()
    if isinstance(name, str):  # a Unix socket: a worker's admin
        return name
    return host_port(name[0], name[1])


def host_port(host: str, port: int) -> str:
    """`HOST:PORT` as written in the configuration and the logs (`[::1]:8080` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
