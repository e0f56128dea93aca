"""Active health checks: probe each server of a pool every `interval`, and count the results.

Invariants:
- One watcher per pool that has a `health_check`, and under it one loop per listed server.
  A server's loop probes it, waits for the probe to end (each probe is bounded by `timeout`),
  then sleeps `interval` give or take `JITTER` before the next, as HAProxy's `inter` and
  Envoy's `interval` do: a server never has two probes in flight, a `timeout` longer than the
  `interval` is fine, and a slow server delays only its own probes. The jitter lets replicas
  and servers started together drift apart instead of probing in step.
- Every server's first probe starts at once; a server listed later (by DNS) gets its loop from
  the watcher's next look, at most `interval` (plus `JITTER`) later, and a loop whose server is
  no longer listed ends before its next probe.
- A probe never raises for anything a backend does: it returns None (passed) or one sentence
  saying what failed. Its connection is its own; it never counts as a session or as a passive
  failure.
- The verdict flips only after `healthy_after` / `unhealthy_after` results in a row (counted by
  `ServerState.checked`), and each flip is logged once, at INFO.
- tcp passes when the connection opens; http when `GET path` answers 2xx or 3xx; websocket when
  the upgrade on `path` gets a valid 101, a ping gets its pong, and the close handshake
  completes.
- With `agent: true`, every answer a probe got (an http answer of any status; the upgrade's 101
  or refusal) is the server's agent report (`agent.agent_report`), handed to `Agent`; a probe
  that got no answer (no connection, no valid head in time) changes nothing: the last report
  stands. Without `agent`, the headers are not read.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import h11
import trio
import wsproto
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
)

from wsproxy import __version__
from wsproxy.agent import AgentReport, agent_report
from wsproxy.balancer import PoolBalancer
from wsproxy.config import HealthCheck
from wsproxy.handshake import Headers
from wsproxy.http1 import NoAnswer, read_response, send_get
from wsproxy.servers import ServerState
from wsproxy.upstream import Dial, connect

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Probed:
    """One probe's result: None (passed) or what failed, and the answer's headers if any came."""

    problem: str | None
    headers: Headers | None = None  # None: no answer (tcp, or none came)


Probe = Callable[[ServerState, HealthCheck], Awaitable[Probed]]
# What to do with an agent report: (pool's balancer, server, report).
Agent = Callable[[PoolBalancer, ServerState, AgentReport], None]

JITTER: Final = 0.1  # each wait is interval * (1 +- JITTER)
PING_PAYLOAD: Final = b"wsproxy health check"
_CHUNK: Final = 16384
_USER_AGENT: Final = f"wsproxy/{__version__} health-check".encode()


async def watch_pool(
    balancer: PoolBalancer,
    check: HealthCheck,
    probe: Probe,
    rng: random.Random,
    agent: Agent | None = None,
) -> None:
    """Probe the pool's servers forever, each on its own loop; every first probe starts at once.
    With `check.agent`, `agent` gets each answer's report."""
    watched: set[ServerState] = set()
    async with trio.open_nursery() as loops:
        while True:
            for server in balancer.servers:
                if server not in watched:
                    watched.add(server)
                    loops.start_soon(
                        _watch_server, balancer, server, check, probe, rng, watched, agent
                    )
            await trio.sleep(_pause(check, rng))


async def _watch_server(
    balancer: PoolBalancer,
    server: ServerState,
    check: HealthCheck,
    probe: Probe,
    rng: random.Random,
    watched: set[ServerState],
    agent: Agent | None,
) -> None:
    """Probe `server` while its pool lists it, each probe `interval` after the last one ended."""
    try:
        while server in balancer.servers:
            await _check_one(balancer, server, check, probe, agent)
            await trio.sleep(_pause(check, rng))
    finally:
        watched.discard(server)


def _pause(check: HealthCheck, rng: random.Random) -> float:
    return check.interval * rng.uniform(1 - JITTER, 1 + JITTER)


async def _check_one(
    balancer: PoolBalancer,
    server: ServerState,
    check: HealthCheck,
    probe: Probe,
    agent: Agent | None,
) -> None:
    pool = balancer.name
    try:
        probed = await probe(server, check)
    except Exception as exc:  # a bug here must not stop the checks, nor the proxy
        log.exception("pool %s: health check of %s failed unexpectedly", pool, server.key)
        probed = Probed(f"health check: {type(exc).__name__}")
    problem = probed.problem
    if check.agent and agent is not None and probed.headers is not None:
        agent(balancer, server, agent_report(probed.headers))
    if server.checked(problem, check):
        if server.checked_up:
            log.info("pool %s: server %s is up (health check passed)", pool, server.key)
        else:
            log.info("pool %s: server %s is down (%s)", pool, server.key, problem)


def prober(dial: Dial, tls: ssl.SSLContext | None = None) -> Probe:
    """The real probe, reaching servers through `dial` (and `tls` for wss:// ones)."""

    async def probe(server: ServerState, check: HealthCheck) -> Probed:
        return await probe_answer(server, check, dial, tls)

    return probe


async def probe_server(
    server: ServerState, check: HealthCheck, dial: Dial, tls: ssl.SSLContext | None = None
) -> str | None:
    """One check of one server: None if it passed, else what went wrong."""
    return (await probe_answer(server, check, dial, tls)).problem


async def probe_answer(
    server: ServerState, check: HealthCheck, dial: Dial, tls: ssl.SSLContext | None = None
) -> Probed:
    """One check of one server: its verdict, and the headers of the answer it got, if any."""
    answered: list[Headers] = []  # the answer's head, once it came
    problem = await _probe(server, check, dial, tls, answered)
    return Probed(problem, answered[0] if answered else None)


async def _probe(
    server: ServerState,
    check: HealthCheck,
    dial: Dial,
    tls: ssl.SSLContext | None,
    answered: list[Headers],
) -> str | None:
    with trio.move_on_after(check.timeout):
        try:
            stream = await connect(server, dial, tls)
        except OSError as exc:
            return f"health check: connect to {server.address}:{server.port}: {exc.strerror or exc}"
        try:
            if check.type == "http":
                return await _http(stream, server, check.path, answered)
            if check.type == "websocket":
                return await _websocket(stream, server, check.path, answered)
            return None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return f"health check: {server.address}:{server.port} reset the connection"
        finally:
            await trio.aclose_forcefully(stream)
    return f"health check: no answer within {check.timeout:g}s"


def _host(server: ServerState) -> bytes:
    host = f"[{server.host}]" if ":" in server.host else server.host
    return f"{host}:{server.port}".encode("idna")


async def _http(
    stream: trio.abc.Stream, server: ServerState, path: str, answered: list[Headers]
) -> str | None:
    headers = ((b"Host", _host(server)), (b"User-Agent", _USER_AGENT), (b"Connection", b"close"))
    conn = await send_get(stream, path.encode("latin-1"), headers)
    try:
        response = await read_response(stream, conn)
    except NoAnswer:
        return f"health check: GET {path} got no answer"
    except h11.RemoteProtocolError:
        return f"health check: GET {path} got an answer that is not valid HTTP"
    answered.append(tuple(response.headers))
    if 200 <= response.status_code < 400:
        return None
    return f"health check: GET {path} answered {response.status_code}"


async def _websocket(
    stream: trio.abc.Stream, server: ServerState, path: str, answered: list[Headers]
) -> str | None:
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    host = _host(server).decode("ascii")
    await stream.send_all(ws.send(Request(host=host, target=path)))
    step = "the upgrade"
    try:
        while True:
            data = bytes(await stream.receive_some(_CHUNK))
            if not data:
                return f"health check: the connection closed during {step}"
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    answered.append(tuple(event.extra_headers))
                    step = "the ping"
                    await stream.send_all(ws.send(Ping(PING_PAYLOAD)))
                elif isinstance(event, RejectConnection):
                    answered.append(tuple(event.headers))
                    return f"health check: the upgrade on {path} answered {event.status_code}"
                elif isinstance(event, CloseConnection):
                    if step == "the close":
                        return None
                    why = f"{event.code}: {event.reason}" if event.reason else f"{event.code}"
                    return f"health check: the session closed ({why}) before {step}"
                elif step == "the close":
                    continue  # our close is sent: nothing else gets an answer
                elif isinstance(event, Ping):
                    await stream.send_all(ws.send(event.response()))
                elif isinstance(event, Pong) and event.payload == PING_PAYLOAD:
                    step = "the close"
                    await stream.send_all(ws.send(CloseConnection(code=1000)))
    except (wsproto.utilities.RemoteProtocolError, h11.RemoteProtocolError) as exc:
        return f"health check: {step} on {path} broke the protocol ({exc})"
