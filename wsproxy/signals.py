"""The one reading of a process's signals, for a proxy and for a supervisor of workers alike.

Invariants:
- `obey` is the only place that maps signals to actions: SIGTERM or SIGINT begins the drain,
  another one while draining stops at once, SIGHUP reloads. What each action does (and logs)
  is the process's own (`ProxySignals` for a proxy, `workers.Supervisor` for a supervisor).
- A slow reload never delays a drain: `hang_up` may start it in a nursery of `obey`'s, which
  ends with `obey`.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final, Protocol

import trio

from wsproxy.config import Config

log = logging.getLogger("wsproxy.server")  # a proxy's lines, as they have always been named

SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # what `obey` acts on


class Signalled(Protocol):
    """A process as `obey` drives it: a proxy, or a supervisor and its workers."""

    @property
    def stopping(self) -> bool:
        """True once the drain has begun."""

    def drain(self, signum: signal.Signals) -> None:
        """The first SIGTERM or SIGINT: begin the drain."""

    def stop_now(self, signum: signal.Signals) -> None:
        """A SIGTERM or SIGINT during the drain: stop at once."""

    def hang_up(self, reloads: trio.Nursery) -> None:
        """SIGHUP: reload; a reload that takes time runs in `reloads`, never delaying a drain."""


async def obey(signals: AsyncIterator[int], process: Signalled) -> None:
    """The one reading of signals: SIGTERM or SIGINT drains, another one while draining stops
    at once, SIGHUP reloads. Runs until `signals` ends or it is cancelled."""
    async with trio.open_nursery() as reloads:
        async for signum in signals:
            received = signal.Signals(signum)
            if received == signal.SIGHUP:
                process.hang_up(reloads)
            elif process.stopping:
                process.stop_now(received)
            else:
                process.drain(received)
        reloads.cancel_scope.cancel()


class Signallable(Protocol):
    """A proxy as its signals act on it (`server.Proxy`)."""

    @property
    def stopping(self) -> bool: ...

    @property
    def config(self) -> Config: ...

    def stop(self) -> None: ...

    async def reload(self, load: Callable[[], Config]) -> bool: ...


@dataclass(frozen=True, slots=True)
class ProxySignals:
    """One proxy process as `obey` drives it."""

    proxy: Signallable
    scope: trio.CancelScope  # cancelled by a second SIGTERM or SIGINT
    load: Callable[[], Config] | None  # what SIGHUP reloads; None: nothing to reload

    @property
    def stopping(self) -> bool:
        return self.proxy.stopping

    def drain(self, signum: signal.Signals) -> None:
        drain = self.proxy.config.shutdown.drain_timeout
        log.info("%s: draining (sessions get up to %gs)", signum.name, drain)
        self.proxy.stop()

    def stop_now(self, signum: signal.Signals) -> None:
        log.warning("%s while draining: stopping now", signum.name)
        self.scope.cancel()

    def hang_up(self, reloads: trio.Nursery) -> None:
        if self.load is None:
            log.warning("SIGHUP ignored: no configuration file to reload")
        else:
            log.info("SIGHUP: reloading the configuration")
            reloads.start_soon(self.proxy.reload, self.load)
