"""Admission of one client connection, read top to bottom: PROXY header, TLS, request head,
judgement, limits, route, backend, then the 101 and the relay (`registry`).

Invariants:
- Connection limits (whole proxy, per client IP) are counted from accept to close; a client over
  a limit still gets an HTTP answer (503 or 429), after its request head has been read.
- A request head is read whole, up to `max_header_size` bytes and within `handshake_timeout`,
  before anything is judged; bytes behind it belong to the WebSocket stream. On a
  `proxy_protocol` listener a valid PROXY header must come first, within the same timeout,
  and the client it names is the client for limits, forwarding headers, hashing and the log.
- On a TLS listener the handshake (after any PROXY header) completes by the same deadline as
  the request head, with the context of the snapshot in use when the connection came.
- A handshake takes one snapshot (configuration, balancers, TLS contexts) once its request head
  is read, and its session keeps that configuration.
- `limits.per_ip` takes a handshake from the client IP's bucket as its connection is judged
  for the connection limits; an empty bucket is a 429 whose `Retry-After` says when the next
  handshake would pass (whole seconds, at least 1). The buckets outlive reloads, not the process.
- Every refusal is an HTTP answer with a short plain-text body, then a polite close, and one
  INFO line on `wsproxy.refusals` (at most `REFUSAL_LINES_PER_SECOND`; then a count of those
  left out). A backend's own refusal, passed on to the client, is logged the same way.
- The client's address comes as an argument: nothing here asks a socket, so the whole flow runs
  on any `trio.abc.Stream`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from wsproxy.balancer import find_route
from wsproxy.config import PerIP
from wsproxy.handshake import Reject, RequestHead, client_accept_headers, judge_request
from wsproxy.http1 import response_head
from wsproxy.intake import (
    HeadTooLarge,
    HeadTooSlow,
    Replayed,
    parse_request,
    pass_through,
    read_head,
    read_proxy_header,
    refuse,
)
from wsproxy.listening import Listening
from wsproxy.logs import (
    REFUSAL_LINES_PER_SECOND,
    LineLimit,
    refusal_log,
    refusal_record,
    write_refusal,
    write_refusals_suppressed,
)
from wsproxy.ratelimit import HandshakeLimit, retry_after
from wsproxy.registry import LiveSession, Registry
from wsproxy.relay import Session
from wsproxy.snapshot import Snapshot
from wsproxy.upstream import Dial, Passthrough, open_backend
from wsproxy.wire import close_forcefully

log = logging.getLogger("wsproxy.server")  # its lines keep the logger name they always had


class Admission:
    """Admits the client connections of one process and hands their sessions to `registry`."""

    def __init__(self, registry: Registry, current: Callable[[], Snapshot], *, dial: Dial) -> None:
        """`current` gives the snapshot in use now (a reload swaps it)."""
        self.registry = registry
        self._current = current
        self._dial = dial
        self.refusal_lines = LineLimit(REFUSAL_LINES_PER_SECOND)
        self.handshakes = HandshakeLimit()  # `limits.per_ip`: a bucket per client IP
        self.reports: trio.Nursery | None = None  # where a count of left-out lines waits

    async def handle(self, tcp: trio.abc.Stream, peer: Any, listening: Listening) -> None:
        """Serve one connection from `peer` (its (host, port, ...) address) to its end, and
        close it."""
        registry = self.registry
        stream: trio.abc.Stream = tcp
        position = listening.position  # the listener's settings now, a reload's included
        first = self._current()
        tls = None if position is None else first.listener_tls[position]
        proxy_protocol = (
            listening.proxy_protocol
            if position is None
            else first.config.listen[position].proxy_protocol
        )
        registry.opened()
        deadline = trio.current_time() + first.config.security.handshake_timeout
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
            registry.identified(ip)
            live = await self.admit(
                stream, ip, early, deadline, secure=tls is not None, client=f"{ip}:{peer[1]}"
            )
            if live is not None:
                await registry.relay(live)
        except Exception:
            log.exception("session of %s:%s failed", peer[0], peer[1])
        finally:
            registry.closed(ip)
            await close_forcefully(stream)

    async def admit(
        self,
        stream: trio.abc.Stream,
        ip: str,
        early: bytes,
        deadline: float,
        *,
        secure: bool,
        client: str,
    ) -> LiveSession | None:
        """Judge the request and reach a backend; refuse the client, or return the session.

        `early` holds bytes already read behind a PROXY header; the request head must be whole
        by `deadline`. `client` (IP:PORT) names the client in refusal lines.
        """
        first = self._current().config
        security = first.security
        over_limit = self.registry.over_limit(ip, security) or self._too_fast(
            ip, first.limits.per_ip
        )
        try:
            head, trailing = await read_head(
                stream, security.max_header_size, early, arrived=True, deadline=deadline
            )
        except HeadTooLarge:
            await self._reject(stream, Reject(431, "request head too large"), client)
            return None
        except HeadTooSlow:
            await self._reject(stream, Reject(408, "request head not received in time"), client)
            return None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if head is None:
            return None  # the client left before finishing its request
        snapshot = self._current()  # one snapshot from here on, the newest
        config = snapshot.config
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
        balancer = snapshot.balancers[route.pool]
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
            tls=snapshot.pool_tls.get(balancer.name),
        )
        if isinstance(result, Reject):
            await self._reject(stream, result, client, asked)
            return None
        if isinstance(result, Passthrough):
            self.registry.metrics.rejections.inc(str(result.status))
            phrase = result.reason.decode("latin-1")
            reason = f"passed on from {result.server.key}" + (f": {phrase}" if phrase else "")
            self._log_refusal(result.status, reason, client, asked)
            await pass_through(stream, result)
            return None
        self.registry.metrics.connect_seconds.observe(result.connect_seconds)
        accept = result.accept
        session = Session(
            config,
            stream,
            result.stream,
            compressed=accept.deflate,
            client_prefix=trailing,
            backend_prefix=result.trailing,
        )
        sticky = balancer.sticky_header(result.server, pick, secure=secure)
        switching = response_head(
            101, b"Switching Protocols", (*client_accept_headers(upgrade, accept), *sticky)
        )
        return LiveSession(
            id=self.registry.new_id(),
            client=client,
            session=session,
            switching=switching,
            balancer=balancer,
            server=result.server,
            pick=pick,
            route=route.path,
            subprotocol=accept.subprotocol or "",
            started=trio.current_time(),
        )

    # ---------------------------------------------------------------- refusals

    def _too_fast(self, ip: str, per_ip: PerIP | None) -> Reject | None:
        """The refusal due to a handshake from `ip` by `limits.per_ip`, if any."""
        if per_ip is None:
            return None
        rate = per_ip.handshakes_per_second
        wait = self.handshakes.take(ip, trio.current_time(), rate, per_ip.burst or rate)
        if not wait:
            return None
        after = b"%d" % retry_after(wait)
        return Reject(429, "too many handshakes from your address", ((b"retry-after", after),))

    async def _reject(
        self,
        stream: trio.abc.Stream,
        reject: Reject,
        client: str,
        request: RequestHead | None = None,
    ) -> None:
        """Answer `reject`, counted and logged; `request` is the client's, once parsed."""
        self.registry.metrics.rejections.inc(str(reject.status))
        self._log_refusal(reject.status, reject.reason, client, request)
        await refuse(stream, reject)

    def _log_refusal(
        self, status: int, reason: str, client: str, request: RequestHead | None
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
        elif lines.suppressed == 1 and self.reports is not None:  # the first left out
            end = lines.window_end
            assert end is not None
            self.reports.start_soon(self._report_suppressed, end)

    async def _report_suppressed(self, when: float) -> None:
        """Say how many refusal lines were left out, once their window is over, even if no
        refusal comes after it."""
        await trio.sleep_until(when)
        if suppressed := self.refusal_lines.take_suppressed(trio.current_time()):
            write_refusals_suppressed(suppressed)


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


def _joined_headers(request: RequestHead, *names: bytes) -> dict[bytes, bytes]:
    """The values of each of `names` that `request` has, several joined by ", "."""
    found: dict[bytes, list[bytes]] = {}
    for name, value in request.headers:
        if name in names:
            found.setdefault(name, []).append(value)
    return {name: b", ".join(values) for name, values in found.items()}
