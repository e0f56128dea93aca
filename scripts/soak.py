#!/usr/bin/env python3
"""Soak test: many long sessions through a real wsproxy process, checked message by message.

Starts `python -m wsproxy echo` backends and `python -m wsproxy serve` (a generated configuration,
free loopback ports) as child processes, opens --sessions WebSocket sessions through the proxy with
the `websockets` asyncio client, and has each send --rate numbered messages a second for
--duration seconds. Every message carries its session id, its sequence number, a CRC-32 of its
random payload and the payload; every echo is checked on arrival.

It reports messages sent and received; lost, reordered and corrupted messages; the proxy's resident
memory after --warmup seconds and at the end; and the proxy's open file descriptors before any
session, during, and after every session has closed. Exit 0 only if nothing was lost, reordered or
corrupted, every session lived to the end, the memory at the end is within 10 % of the memory
after warm-up, and the descriptors are back to where they started; 1 otherwise; 2 on bad usage.

    python scripts/soak.py                                   # 1,000 sessions for 10 minutes
    python scripts/soak.py --sessions 200 --duration 60 --warmup 15

Not a CI test: it takes as long as it is told to. Needs the `test` extra (`websockets`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

REPO = Path(__file__).resolve().parents[1]
HEAD = struct.Struct("!IQI")  # session id, sequence number, CRC-32 of the payload
ORIGIN = Origin("https://soak.example.test")
TOLERANCE = 0.10  # RSS at the end may differ from RSS after warm-up by this much


@dataclass
class Tally:
    sent: int = 0
    received: int = 0
    lost: int = 0
    reordered: int = 0
    corrupted: int = 0
    sessions_opened: int = 0
    sessions_failed: int = 0  # ended before the run did, or never opened
    failures: list[str] = field(default_factory=list)


@dataclass
class Figures:
    rss_warm: int = 0
    rss_end: int = 0
    fds_baseline: int = 0
    fds_during: int = 0
    fds_after: int = 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else max(soft, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target != resource.RLIM_INFINITY and target < needed:
        sys.exit(f"soak: {needed} file descriptors needed, the hard limit is {target}")


async def wait_accepting(port: int, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def write_config(path: Path, port: int, backends: list[int], sessions: int) -> None:
    servers = "\n".join(f'      - url: "ws://127.0.0.1:{p}"' for p in backends)
    limit = sessions * 2 + 100
    path.write_text(
        f"""\
listen:
  - address: 127.0.0.1:{port}
security:
  allowed_origins: ["{ORIGIN}"]
  max_connections: {limit}
  max_connections_per_ip: {limit}
routes:
  - {{path: /, pool: echo}}
pools:
  echo:
    servers:
{servers}
log:
  level: warning
""",
        encoding="utf-8",
    )


def message(session: int, sequence: int, payload: bytes) -> bytes:
    return HEAD.pack(session, sequence, zlib.crc32(payload)) + payload


class Session:
    """One client session: sends numbered messages and checks every echo as it comes back."""

    def __init__(self, index: int, tally: Tally, size: int) -> None:
        self.index = index
        self.tally = tally
        self.size = size
        self.next_sequence = 0  # the next to send
        self.expected = 0  # the next we should receive
        self.missing: set[int] = set()  # skipped over: lost, unless they turn up later
        self.drained = asyncio.Event()

    def check(self, data: bytes | str) -> None:
        tally = self.tally
        if not isinstance(data, bytes) or len(data) < HEAD.size:
            tally.corrupted += 1
            return
        session, sequence, crc = HEAD.unpack_from(data)
        payload = data[HEAD.size :]
        if session != self.index or zlib.crc32(payload) != crc or len(payload) != self.size:
            tally.corrupted += 1
            return
        tally.received += 1
        if sequence == self.expected:
            self.expected += 1
        elif sequence > self.expected:
            self.missing.update(range(self.expected, sequence))
            self.expected = sequence + 1
        elif sequence in self.missing:  # arrived after later ones
            self.missing.discard(sequence)
            tally.reordered += 1
        else:  # a duplicate
            tally.corrupted += 1
        if self.expected == self.next_sequence:
            self.drained.set()

    async def receive(self, ws: ClientConnection) -> None:
        async for data in ws:
            self.check(data)

    async def send(self, ws: ClientConnection, rate: float, stop: asyncio.Event) -> None:
        period = 1.0 / rate
        rng = random.Random(self.index)
        await asyncio.sleep(rng.random() * period)  # spread the sessions over the period
        next_at = asyncio.get_running_loop().time()
        while not stop.is_set():
            self.drained.clear()
            payload = rng.randbytes(self.size)
            await ws.send(message(self.index, self.next_sequence, payload))
            self.next_sequence += 1
            self.tally.sent += 1
            next_at += period
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), max(0.0, next_at - asyncio.get_running_loop().time())
                )

    async def run(
        self, url: str, rate: float, opened: asyncio.Semaphore, stop: asyncio.Event
    ) -> None:
        try:
            async with opened:
                ws = await connect(
                    url, origin=ORIGIN, max_size=None, compression=None, open_timeout=30
                )
            self.tally.sessions_opened += 1
            async with ws:
                receiving = asyncio.create_task(self.receive(ws))
                try:
                    await self.send(ws, rate, stop)
                    if self.expected != self.next_sequence:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.drained.wait(), 15)
                finally:
                    receiving.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await receiving
        except (OSError, ConnectionClosed, TimeoutError) as exc:
            self.tally.sessions_failed += 1
            if len(self.tally.failures) < 5:
                self.tally.failures.append(f"session {self.index}: {exc!r}")
        finally:
            self.tally.lost += len(self.missing) + max(0, self.next_sequence - self.expected)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def soak(args: argparse.Namespace, work: Path) -> tuple[Tally, Figures, float]:
    tally, figures = Tally(), Figures()
    children: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []

    def spawn(name: str, *command: str) -> subprocess.Popen[bytes]:
        log = open(work / f"{name}.log", "wb")  # noqa: SIM115 (closed at the end)
        logs.append(log)
        child = subprocess.Popen(
            [sys.executable, "-m", "wsproxy", *command],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        children.append(child)
        return child

    try:
        backends = []
        for number in range(args.backends):
            port = free_port()
            child = spawn(f"echo-{number}", "echo", "--listen", f"127.0.0.1:{port}")
            await wait_accepting(port, child, 30)
            backends.append(port)
        proxy_port = free_port()
        write_config(work / "wsproxy.yaml", proxy_port, backends, args.sessions)
        proxy = spawn("proxy", "serve", "-c", str(work / "wsproxy.yaml"))
        await wait_accepting(proxy_port, proxy, 30)
        await asyncio.sleep(0.5)  # let the probe connection above be closed and forgotten
        figures.fds_baseline = open_fds(proxy.pid)
        print(
            f"soak: proxy pid {proxy.pid} on 127.0.0.1:{proxy_port}, {args.backends} echo "
            f"backends; {figures.fds_baseline} fds open; logs in {work}",
            flush=True,
        )

        stop = asyncio.Event()
        opened = asyncio.Semaphore(50)  # sessions being opened at once
        url = f"ws://127.0.0.1:{proxy_port}/soak"
        sessions = [Session(index, tally, args.payload) for index in range(args.sessions)]
        started = time.monotonic()
        tasks = [asyncio.create_task(s.run(url, args.rate, opened, stop)) for s in sessions]

        warm_at, end_at = started + args.warmup, started + args.duration
        next_report = started + 10
        while (now := time.monotonic()) < end_at:
            if not figures.rss_warm and now >= warm_at:
                figures.rss_warm = rss(proxy.pid)
                print(
                    f"soak: warm-up over: proxy RSS {figures.rss_warm / 2**20:.1f} MiB", flush=True
                )
            if now >= next_report:
                next_report += 10
                fds = open_fds(proxy.pid)
                figures.fds_during = max(figures.fds_during, fds)
                live = tally.sessions_opened - tally.sessions_failed
                print(
                    f"soak: {now - started:5.0f} s  sessions {live}  sent {tally.sent}"
                    f"  received {tally.received}  lost {tally.lost}  corrupted {tally.corrupted}"
                    f"  RSS {rss(proxy.pid) / 2**20:.1f} MiB  fds {fds}",
                    flush=True,
                )
            if proxy.poll() is not None:
                raise RuntimeError(f"the proxy exited with {proxy.returncode}")
            await asyncio.sleep(min(1.0, end_at - now))
        figures.rss_end = rss(proxy.pid)
        figures.fds_during = max(figures.fds_during, open_fds(proxy.pid))
        stop.set()
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started

        # The proxy closes its side of each session soon after; polling another process's /proc
        # is all there is to wait on.
        deadline = time.monotonic() + 15
        while (fds := open_fds(proxy.pid)) > figures.fds_baseline and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        figures.fds_after = fds
        if proxy.poll() is not None:
            raise RuntimeError(f"the proxy exited with {proxy.returncode}")
        return tally, figures, elapsed
    finally:
        for child in reversed(children):
            stop_process(child)
        for log in logs:
            log.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--sessions", type=int, default=1000, help="sessions open at once")
    parser.add_argument("--duration", type=float, default=600, help="seconds of traffic")
    parser.add_argument("--rate", type=float, default=1.0, help="messages a second per session")
    parser.add_argument("--warmup", type=float, default=30, help="seconds before RSS is taken")
    parser.add_argument("--payload", type=int, default=256, help="random bytes per message")
    parser.add_argument("--backends", type=int, default=2, help="echo backend processes")
    args = parser.parse_args()
    if args.sessions < 1 or args.rate <= 0 or args.payload < 0 or args.backends < 1:
        parser.error("--sessions, --rate and --backends must be positive, --payload >= 0")
    if not 0 < args.warmup < args.duration:
        parser.error("--warmup must be between 0 and --duration")
    raise_fd_limit(args.sessions * 2 + 256)

    work = Path(tempfile.mkdtemp(prefix="wsproxy-soak."))
    tally, figures, elapsed = asyncio.run(soak(args, work))

    change = (figures.rss_end - figures.rss_warm) / figures.rss_warm
    checks = {
        "lost": tally.lost == 0,
        "reordered": tally.reordered == 0,
        "corrupted": tally.corrupted == 0,
        "sessions": tally.sessions_failed == 0 and tally.sessions_opened == args.sessions,
        "received": tally.received == tally.sent,
        "rss": abs(change) <= TOLERANCE,
        "fds": figures.fds_after <= figures.fds_baseline,
    }
    traceback = "Traceback" in (work / "proxy.log").read_text(errors="replace")
    checks["proxy log"] = not traceback
    mark = {True: "ok", False: "FAIL"}
    mib = 2**20
    rows = [
        (
            "sessions",
            f"{tally.sessions_opened} opened, {tally.sessions_failed} failed (of {args.sessions})",
            checks["sessions"],
        ),
        (
            "duration",
            f"{elapsed:.0f} s at {args.rate:g} msg/s per session, {args.payload} B payloads",
            True,
        ),
        ("messages sent", str(tally.sent), True),
        ("messages received", str(tally.received), checks["received"]),
        ("lost", str(tally.lost), checks["lost"]),
        ("reordered", str(tally.reordered), checks["reordered"]),
        ("corrupted", str(tally.corrupted), checks["corrupted"]),
        (
            "proxy RSS after warm-up",
            f"{figures.rss_warm / mib:.1f} MiB (at {args.warmup:g} s)",
            True,
        ),
        ("proxy RSS at the end", f"{figures.rss_end / mib:.1f} MiB ({change:+.1%})", checks["rss"]),
        (
            "proxy fds",
            f"{figures.fds_baseline} before, {figures.fds_during} during (max), "
            f"{figures.fds_after} after",
            checks["fds"],
        ),
        ("proxy log", "a traceback" if traceback else "no traceback", checks["proxy log"]),
    ]
    print()
    print("| figure | value | check |")
    print("|---|---|---|")
    for name, value, ok in rows:
        print(f"| {name} | {value} | {mark[ok]} |")
    for failure in tally.failures:
        print(f"soak: {failure}")
    passed = all(checks.values())
    print(f"\nsoak: {'PASSED' if passed else 'FAILED'} (logs in {work})")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
