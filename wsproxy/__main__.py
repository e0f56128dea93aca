"""`python -m wsproxy` is the same as the `wsproxy` command."""

from __future__ import annotations

from wsproxy.cli import main

raise SystemExit(main())
