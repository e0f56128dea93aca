"""The one accept loop behind every listener wsproxy runs: the proxy's, the admin endpoint's and
the echo backend's.

Invariants:
- Each accepted stream is handed at once to its handler, started in the handlers' nursery; the
  loop itself never waits on a connection.
- Only a capacity error (EMFILE, ENFILE, ENOBUFS, ENOMEM: out of descriptors or memory, which
  connections ending will free) is retried: logged at error, then accept again after
  `CAPACITY_PAUSE` seconds. A listener closed under the loop (the owner shutting down) ends it
  quietly. Any other `OSError` propagates: it is a bug to surface, not a state to wait out.
  (`trio.SocketListener.accept` already retries the harmless ones itself, such as a client
  that reset its connection while it was queued.)
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import trio

log = logging.getLogger(__name__)

CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
CAPACITY_PAUSE: Final = 0.1  # seconds; as `trio.serve_listeners` waits

StreamT = TypeVar("StreamT", bound=trio.abc.AsyncResource)


async def accept_forever(
    listener: trio.abc.Listener[StreamT],
    handlers: trio.Nursery,
    handle: Callable[[StreamT], Awaitable[object]],
    name: str,
) -> None:
    """Accept on `listener` and start `handle(stream)` in `handlers` for each connection, until
    cancelled or the listener is closed. `name` says whose listener it is in the log."""
    while True:
        try:
            stream = await listener.accept()
        except trio.ClosedResourceError:
            log.debug("%s: the listener was closed, accepting ends", name)
            return
        except OSError as exc:
            if exc.errno not in CAPACITY_ERRNOS:
                raise
            log.error(
                "%s: accept failed with %s (%s); retrying in %gs",
                name,
                errno.errorcode[exc.errno],
                os.strerror(exc.errno),
                CAPACITY_PAUSE,
            )
            await trio.sleep(CAPACITY_PAUSE)
            continue
        handlers.start_soon(handle, stream)
