"""What an operator may do to one proxy process through its admin endpoint: close one live
session, drain or undrain one server.

Invariants:
- Every action begins in the background (in `nursery`, the proxy's upkeep, once it serves) and
  returns at once, so a slow client never holds the asker; an action that names nothing known
  returns False and changes nothing. Closes go through `Registry.ask_to_close`, so none can
  fail the nursery.
"""

from __future__ import annotations

import trio

from wsproxy.closes import Close
from wsproxy.drains import Drains
from wsproxy.registry import Registry


class Actions:
    """The admin endpoint's actions on one process."""

    def __init__(self, registry: Registry, drains: Drains) -> None:
        self._registry = registry
        self._drains = drains
        self.nursery: trio.Nursery | None = None  # where closes run; set once the proxy serves

    def close_session(self, session_id: str, close: Close) -> bool:
        """Ask the live session `session_id` to close with `close`; False if there is none."""
        live = self._registry.find(session_id)
        if live is None or self.nursery is None:
            return False
        self.nursery.start_soon(self._registry.ask_to_close, live.session, close)
        return True

    def drain(self, pool: str, server: str, window: float, code: int) -> bool:
        """No new sessions to `server` of `pool` (its identity, or its URL: every address of
        it), and its sessions closed with `code` spread over `window` seconds; False if there
        is no such server (`Drains.drain`)."""
        return self._drains.drain(pool, server, window, code)

    def undrain(self, pool: str, server: str) -> bool:
        """New sessions may go to that server again; False if there is no such server."""
        return self._drains.undrain(pool, server)
