"""wsproxy: a WebSocket-aware reverse proxy and load balancer built on trio."""

from __future__ import annotations

__version__ = "0.1.0"
