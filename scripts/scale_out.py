#!/usr/bin/env python3
"""Scale-out, end to end: a pool of 2 echo servers with --per-server sessions each, a third
server added by SIGHUP, and rebalancing moving sessions onto it.

Starts three `python -m wsproxy echo` backends and `python -m wsproxy serve` (a generated
configuration with `rebalance: {tolerance, rate, min_age}`, free loopback ports) as child
processes, and opens the sessions through the proxy with the `websockets` asyncio client; a
client that hears 1012 reconnects at once. --hup-after seconds after the sessions are open, the
configuration gains the third server and the proxy gets SIGHUP.

It prints a timeline, one line a second from the SIGHUP: the sessions per server (the proxy's
`/status`), the closes the proxy made that second (its own log lines), the 1012s clients heard
and the reconnections they made. Then the checks: every server within the tolerance of its share,
no second with more closes than the rate, every moved client heard 1012 and came back, and no
session younger than min_age closed (ages as the proxy logs them). Exit 0 if all hold, 1 if
not, 2 on bad usage.

    python scripts/scale_out.py                          # the issue's example: 2 x 150, 10/s
    python scripts/scale_out.py --per-server 30 --rate 20 --min-age 2 --hup-after 1

Not a CI test (tests/test_rebalancing.py is): it takes min_age + per-server / rate + a few
seconds. Needs the `test` extra (`websockets`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

ORIGIN = Origin("http://127.0.0.1")
CLOSE_LINE = re.compile(
    r"^(\S+) DEBUG wsproxy\.rebalancing: rebalance: closing session \S+ on \S+, ([0-9.]+)s old"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def config_text(port: int, admin: int, backends: list[int], args: argparse.Namespace) -> str:
    servers = ", ".join(f"ws://127.0.0.1:{p}" for p in backends)
    return f"""
listen: [{{address: 127.0.0.1:{port}}}]
admin: {{address: 127.0.0.1:{admin}}}
security:
  allowed_origins: ["{ORIGIN}"]
  max_connections_per_ip: 100000
  max_connections: 100000
routes: [{{path: /, pool: main}}]
pools:
  main:
    servers: [{servers}]
    rebalance: {{tolerance: {args.tolerance}%, rate: {args.rate}/s, min_age: {args.min_age}s}}
log: {{level: debug}}
"""


@dataclass
class Client:
    opened: list[float] = field(default_factory=list)  # when each of its sessions opened
    heard: list[tuple[float, int]] = field(default_factory=list)  # (when, close code)

    async def run(self, url: str, ready: asyncio.Event, stop: asyncio.Event) -> None:
        while not stop.is_set():
            async with connect(url, origin=ORIGIN, proxy=None, open_timeout=30) as ws:
                self.opened.append(time.time())
                ready.set()
                with contextlib.suppress(ConnectionClosed):
                    await ws.recv()  # the echo server says nothing unasked: until the close
            code = ws.close_code or 1006
            if stop.is_set():
                return
            self.heard.append((time.time(), code))
            if code != 1012:
                return


class ProxyLog:
    """The proxy's stderr, read on a thread: its rebalancing closes (wall time, age)."""

    def __init__(self, stream: IO[bytes] | None) -> None:
        self.closes: list[tuple[float, float]] = []
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes] | None) -> None:
        for raw in stream or ():
            line = raw.decode(errors="replace").rstrip()
            if "listening on" in line or "configuration reloaded" in line:
                self.lines.append(line)
                self.ready.set()
            if match := CLOSE_LINE.match(line):
                when = datetime.fromisoformat(match[1].replace("Z", "+00:00")).timestamp()
                self.closes.append((when, float(match[2])))


def status(admin: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=5) as answer:
        document: dict[str, Any] = json.loads(answer.read())
        return document


def per_server(document: dict[str, Any]) -> tuple[list[tuple[int, float]], bool, int]:
    """(sessions, share) of each server of the one pool, whether it rebalances, its closes."""
    (pool,) = document["pools"]
    servers = [(int(s["sessions"]), float(s["share"])) for s in pool["servers"]]
    return servers, bool(pool["rebalancing"]), int(pool["rebalance_closes"])


async def scale_out(args: argparse.Namespace, work: Path) -> int:
    children: list[subprocess.Popen[bytes]] = []

    def spawn(*command: str, stderr: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(
            [sys.executable, "-m", "wsproxy", *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        children.append(child)
        return child

    try:
        backends = [free_port() for _ in range(3)]
        for port in backends:
            spawn("echo", "--listen", f"127.0.0.1:{port}")
        port, admin = free_port(), free_port()
        config = work / "wsproxy.yaml"
        config.write_text(config_text(port, admin, backends[:2], args))
        proxy = spawn("serve", "-c", str(config), stderr=subprocess.PIPE)
        log = ProxyLog(proxy.stderr)
        if not await asyncio.to_thread(log.ready.wait, 30):
            print("scale_out: the proxy did not start", file=sys.stderr)
            return 1
        await asyncio.sleep(0.5)  # the echo backends start as fast; give them a moment

        stop = asyncio.Event()
        clients = [Client() for _ in range(2 * args.per_server)]
        tasks = []
        opening = time.time()
        for client in clients:  # one at a time: round robin puts them evenly on the two
            ready = asyncio.Event()
            tasks.append(asyncio.create_task(client.run(f"ws://127.0.0.1:{port}/", ready, stop)))
            await ready.wait()
        opened = time.time()
        print(
            f"{len(clients)} sessions opened in {opened - opening:.1f}s: "
            f"{[n for n, _ in per_server(status(admin))[0]]} per server; "
            f"SIGHUP in {args.hup_after:g}s"
        )
        await asyncio.sleep(args.hup_after)
        config.write_text(config_text(port, admin, backends, args))
        log.ready.clear()
        hup = time.time()
        proxy.send_signal(signal.SIGHUP)
        await asyncio.to_thread(log.ready.wait, 30)

        print(f"\nSIGHUP at t=0 (sessions {hup - opened:.1f}s to {hup - opening:.1f}s old)")
        print(" t(s)  sessions per server   closes  heard 1012  reconnected  rebalancing")
        calm = 0
        second = 0
        limit = args.min_age + 2 * args.per_server / args.rate + 30
        while second < limit:
            second += 1
            await asyncio.sleep(max(0.0, hup + second - time.time()))
            servers, rebalancing, _ = per_server(status(admin))
            window = (hup + second - 1, hup + second)
            closes = sum(1 for when, _ in log.closes if window[0] <= when < window[1])
            heard = sum(1 for c in clients for when, _ in c.heard if window[0] <= when < window[1])
            back = sum(1 for c in clients for when in c.opened[1:] if window[0] <= when < window[1])
            if closes or heard or back or rebalancing or second <= 2 or calm < 2:
                counts = " ".join(f"{n:4d}" for n, _ in servers)
                print(
                    f"{second:5d}  {counts:19s}  {closes:6d}  {heard:10d}  {back:11d}  "
                    f"{'yes' if rebalancing else 'no'}"
                )
            calm = calm + 1 if not rebalancing and log.closes and not closes else 0
            if calm >= 3:
                break

        servers, rebalancing, total = per_server(status(admin))
        stop.set()
        moved = [c for c in clients if c.heard]
        per_second_made = Counter(math.floor(when - hup) for when, _ in log.closes)
        sliding = max(
            (sum(1 for t, _ in log.closes if start <= t < start + 1.0) for start, _ in log.closes),
            default=0,
        )
        first = min((when for when, _ in log.closes), default=math.nan)
        last = max((when for when, _ in log.closes), default=math.nan)
        youngest = min((age for _, age in log.closes), default=math.nan)
        within = all(  # within the tolerance, or within one session of the share
            min((1 - t) * share, math.floor(share)) - 1e-3
            <= n
            <= max((1 + t) * share, math.ceil(share)) + 1e-3
            for t in [args.tolerance / 100]
            for n, share in servers
        )
        checks = {
            "every server within tolerance of its share": within,
            f"no second with more than {args.rate:g} closes": sliding <= args.rate,
            "every moved client heard 1012": all(
                [code for _, code in c.heard] == [1012] for c in moved
            ),
            "every moved client reconnected": all(len(c.opened) == 2 for c in moved),
            f"no session younger than min_age ({args.min_age:g}s) closed": youngest >= args.min_age,
            "the proxy's count of closes agrees": total == len(log.closes) == len(moved),
        }
        print(
            f"\nfinal: {[n for n, _ in servers]} sessions, shares "
            f"{[round(s, 1) for _, s in servers]}, rebalancing: {rebalancing}"
        )
        print(
            f"closes: {len(log.closes)} from t={first - hup:.2f}s to t={last - hup:.2f}s "
            f"({last - first:.1f}s); most in any 1-second window: {sliding}; per second: "
            f"{dict(sorted(per_second_made.items()))}"
        )
        print(
            f"clients moved: {len(moved)}, reconnected: "
            f"{sum(1 for c in moved if len(c.opened) == 2)}; youngest session closed: "
            f"{youngest:.3f}s old (min_age {args.min_age:g}s)"
        )
        for name, passed in checks.items():
            print(f"  {'ok  ' if passed else 'FAIL'} {name}")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return 0 if all(checks.values()) else 1
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-server", type=int, default=150, help="sessions on each of 2")
    parser.add_argument("--rate", type=float, default=10.0, help="closes per second")
    parser.add_argument("--min-age", type=float, default=30.0, help="seconds")
    parser.add_argument("--tolerance", type=float, default=25.0, help="percent")
    parser.add_argument("--hup-after", type=float, default=20.0, help="seconds after opening")
    args = parser.parse_args()
    if args.per_server < 1 or args.rate <= 0 or args.min_age < 0 or args.tolerance < 0:
        parser.error("--per-server must be at least 1; --rate above 0; the others not negative")
    with tempfile.TemporaryDirectory(prefix="wsproxy-scale-out.") as work:
        return asyncio.run(scale_out(args, Path(work)))


if __name__ == "__main__":
    sys.exit(main())
