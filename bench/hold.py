#!/usr/bin/env python3
"""Hold many idle sessions through one `wsproxy serve` with workers, then prove each still echoes.

    bench/hold.py                          # 40,000 sessions, held 60 s (a few minutes in all)
    bench/hold.py --sessions 2000 --hold 5 # a quick check of the set-up

What it starts, every process by its PID (all on loopback, all bounded in time):
- --echo-procs echo backends: the shared benchmark's load generator in `echo` mode, each on a
  port of its own; the proxy's pool lists them all (round robin), so each holds an even share
  and stays under the per-process open-files limit, and each backend address gets its own
  ephemeral ports from the proxy (which dials from 127.0.0.1).
- `wsproxy serve` from this checkout with `workers: --workers` (a generated configuration in
  --out): each worker holds 2 descriptors per session, so a worker tops out near half the
  open-files limit and 40,000 sessions need 5 workers here (hard limit 20,000).
- --loadgens load generators in `idle` mode, each dialling from 250 source addresses of its own
  (127.0.10.1+250, 127.0.11.1+250, ... as the shared benchmark's idle ramp does): each session is
  verified by one echo (connection id, sequence number, pattern, byte for byte) when it opens.

Then it holds every session --hold seconds (the load generators read nothing meanwhile, so the
proxy's keepalive and idle clocks are set longer than the ramp and the hold together), samples
the proxy's resident memory (supervisor and workers) and each worker's sessions (admin /status)
and descriptors, releases the load generators, which send one more echo on every session and
close it, and prints sessions opened / held by the proxy / still echoing, the proxy's RSS and
RSS per session. Exit 0 only when every one of --sessions opened, was held, and still echoed
with no corrupted echo and no worker restarted; 1 otherwise; 2 when the plan cannot fit the
machine's limits (open files, ephemeral ports), before anything starts.

ip_local_port_range is widened to 10000-65000 only when one backend address would need more
ephemeral ports than it offers, and restored at exit. Needs the shared benchmark beside this
repository (../shared or $WSPROXY_SHARED) to find or build its load generator, or --wsbench.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import importlib.util
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
WIDE_RANGE = (10000, 65000)
SOURCES_PER_LOADGEN = 250
PROBE = ["-conns", "20", "-duration", "0.5s", "-warmup", "0.2s"]
FD_SPARE = 200  # descriptors each process needs besides its sessions
WORKER_SKEW = 1.1  # the kernel spreads connections over workers by a hash: allow 10 % above even


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Plan:
    sessions: int
    hold: float
    workers: int
    echo_procs: int
    loadgens: int
    ramp_bound: float
    nofile: int

    def workers_needed(self) -> int:
        return math.ceil(self.sessions * 2 * WORKER_SKEW / (self.nofile - FD_SPARE))

    def problems(self) -> list[str]:
        """Why this plan cannot run within the open-files limit, one line each."""
        found = []
        per_worker = math.ceil(self.sessions / self.workers * WORKER_SKEW) * 2 + FD_SPARE
        if per_worker > self.nofile:
            found.append(
                f"{self.workers} workers hold up to {per_worker:,} descriptors each "
                f"(2 per session, 10 % skew), over the open-files limit {self.nofile:,}: "
                f"use --workers {self.workers_needed()}"
            )
        for what, count in (("echo process", self.echo_procs), ("load generator", self.loadgens)):
            need = math.ceil(self.sessions / count) + FD_SPARE
            if need > self.nofile:
                found.append(f"each {what} would hold {need:,} descriptors: over {self.nofile:,}")
        return found


@dataclass
class Children:
    """Every process this script started, stopped by PID at exit; settings to restore."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: list[int] = field(default_factory=list)  # the proxy's workers (its children)
    restore: list[tuple[Path, str]] = field(default_factory=list)

    def start(
        self,
        command: list[str],
        log_path: Path,
        *,
        pipes: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else log_file,
                stderr=log_file,
                start_new_session=True,
                env=env,
            )
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if process in self.processes:
            self.processes.remove(process)

    def cleanup(self) -> None:
        for process in reversed(self.processes[:]):
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self.stop(process, 10.0)
        for pid in self.workers:  # a worker outlives a killed supervisor by up to half a second
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.workers.clear()
        for path, value in self.restore:
            with contextlib.suppress(OSError):
                path.write_text(value)
                log(f"restored {path} to {value}")
        self.restore.clear()


def shared_dir() -> Path:
    return Path(os.environ.get("WSPROXY_SHARED", REPO.parent / "shared"))


def find_wsbench(given: str | None) -> str:
    """The shared benchmark's load generator: the build of its current source, built if missing."""
    if given:
        return given
    bench_py = shared_dir() / "bench" / "bench.py"
    if not bench_py.is_file():
        sys.exit(f"hold: no {bench_py}: set WSPROXY_SHARED to the shared directory, or --wsbench")
    source = bench_py.parent / "wsbench" / "main.go"
    cache = Path(os.environ.get("WSBENCH_CACHE", Path.home() / ".cache" / "wsbench"))
    built = cache / f"wsbench-{hashlib.sha256(source.read_bytes()).hexdigest()[:12]}"
    if built.exists():
        return str(built)
    spec = importlib.util.spec_from_file_location("shared_bench", bench_py)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.build_wsbench())


def wsproxy_command(given: str | None) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if given:
        return given.split(), env
    venv = REPO / ".venv" / "bin" / "wsproxy"
    if venv.exists():
        return [str(venv)], env
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return [sys.executable, "-m", "wsproxy"], env


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard if hard != resource.RLIM_INFINITY else 1 << 20


def ensure_port_range(needed: int, children: Children) -> str:
    """Make sure one destination can take `needed` connections from one source address."""
    low, high = (int(x) for x in PORT_RANGE.read_text().split())
    if high - low + 1 >= needed:
        return f"{low}-{high} (unchanged)"
    if WIDE_RANGE[1] - WIDE_RANGE[0] + 1 < needed:
        sys.exit(
            f"hold: {needed:,} connections to one backend exceed any port range: more --echo-procs"
        )
    try:
        PORT_RANGE.write_text(f"{WIDE_RANGE[0]} {WIDE_RANGE[1]}")
    except OSError as exc:
        sys.exit(
            f"hold: {needed:,} ports per backend needed, range {low}-{high}, cannot widen: {exc}"
        )
    children.restore.append((PORT_RANGE, f"{low} {high}"))
    return f"{WIDE_RANGE[0]}-{WIDE_RANGE[1]} (was {low}-{high}; restored at exit)"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"hold: {process.args!r} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"hold: nothing listens on 127.0.0.1:{port} after {seconds} s")


def admin_status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as answer:
            document: dict[str, Any] = json.load(answer)
            return document
    except (OSError, ValueError):
        return None


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def rss_kib(pid: int) -> int:
    try:
        return int((Path("/proc") / str(pid) / "statm").read_text().split()[1]) * PAGE_KIB
    except (OSError, ValueError):
        return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def write_config(path: Path, port: int, admin: int, backends: list[int], plan: Plan) -> None:
    # The load generators read nothing while they hold, so they never answer a ping: the
    # keepalive and idle clocks run, but longer than the ramp and the hold together.
    quiet = int(plan.ramp_bound + plan.hold + 600)
    servers = "\n".join(f'      - "ws://127.0.0.1:{p}"' for p in backends)
    limit = plan.sessions * 2 + 1000
    path.write_text(
        f"""\
# Generated by bench/hold.py.
listen:
  - address: "127.0.0.1:{port}"
admin:
  address: "127.0.0.1:{admin}"
workers: {plan.workers}
security:
  allowed_origins: ["*"]
  max_connections: {limit}
  max_connections_per_ip: {limit}
timeouts:
  connect: 10s
  idle: {quiet}s
keepalive:
  interval: {quiet}s
  timeout: 10s
routes:
  - path: /
    pool: hold
pools:
  hold:
    balance: round_robin
    servers:
{servers}
shutdown:
  drain_timeout: 0s
  close_window: 0s
log:
  level: warning
""",
        encoding="utf-8",
    )


@dataclass
class Loadgen:
    process: subprocess.Popen[bytes]
    ready: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None

    def read(self) -> None:
        stdout: IO[bytes] | None = self.process.stdout
        assert stdout is not None
        for raw in stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("READY"):
                self.ready.append(line)
            elif line.startswith("{"):
                self.result = json.loads(line)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.write(b"go\n")
            self.process.stdin.flush()

    def held(self) -> int:
        fields = dict(part.split("=", 1) for part in self.ready[-1].split()[2:] if "=" in part)
        return int(fields.get("held", 0))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=40000, help="sessions to open (40000)")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds to hold them (60)")
    parser.add_argument(
        "--workers", type=int, help="wsproxy workers (default: 1 per 8,000 sessions, at least 2)"
    )
    parser.add_argument("--echo-procs", type=int, help="echo backends (default: 1 per 10,000, +1)")
    parser.add_argument("--loadgens", type=int, help="load generators (default: 1 per 10,000)")
    parser.add_argument("--dial-concurrency", type=int, default=16, help="per load generator (16)")
    parser.add_argument("--wsproxy", help="wsproxy command (default: this checkout's)")
    parser.add_argument("--wsbench", help="the load generator binary (default: the shared one's)")
    parser.add_argument(
        "--out", help="folder for the configuration and logs (/tmp/wsproxy-hold-TIME)"
    )
    parser.add_argument(
        "--max-total", type=float, default=1800, help="abort after this many s (1800)"
    )
    args = parser.parse_args()
    if not 1 <= args.sessions <= 100000 or not 0 <= args.hold <= 1800:
        parser.error("--sessions is 1..100000 and --hold 0..1800 seconds")

    nofile = raise_nofile()
    plan = Plan(
        sessions=args.sessions,
        hold=args.hold,
        workers=args.workers or max(2, math.ceil(args.sessions / 8000)),
        echo_procs=args.echo_procs or math.ceil(args.sessions / 10000) + 1,
        loadgens=args.loadgens or math.ceil(args.sessions / 10000),
        ramp_bound=60 + args.sessions / 50,
        nofile=nofile,
    )
    if plan.loadgens > 100:
        parser.error("at most 100 load generators (source addresses 127.0.10.x to 127.0.109.x)")
    if problems := plan.problems():
        for problem in problems:
            log(f"hold: {problem}")
        return 2

    children = Children()
    atexit.register(children.cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def abort(*_: object) -> None:
        log(f"hold: --max-total {args.max_total} s reached, aborting")
        children.cleanup()
        os._exit(124)

    signal.signal(signal.SIGALRM, abort)
    signal.alarm(int(args.max_total))

    wsbench = find_wsbench(args.wsbench)
    proxy_command, proxy_env = wsproxy_command(args.wsproxy)
    out = Path(args.out or f"/tmp/wsproxy-hold-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    port_range = ensure_port_range(math.ceil(args.sessions / plan.echo_procs) + 1000, children)
    log(f"hold: {plan}; port range {port_range}; output in {out}")
    bound = f"{int(args.max_total)}s"

    echo_ports = [free_port() for _ in range(plan.echo_procs)]
    echoes = [
        children.start(
            [wsbench, "echo", "-listen", f"127.0.0.1:{port}", "-max-time", bound],
            out / f"echo{i}.log",
        )
        for i, port in enumerate(echo_ports)
    ]
    for port, echo in zip(echo_ports, echoes, strict=True):
        wait_port(port, echo, 10)

    port, admin = free_port(), free_port()
    config = out / "wsproxy.yaml"
    write_config(config, port, admin, echo_ports, plan)
    proxy = children.start(
        [*proxy_command, "serve", "-c", str(config)], out / "wsproxy.log", env=proxy_env
    )
    deadline = time.monotonic() + 60
    while True:
        status = admin_status(admin)
        workers = (status or {}).get("workers", [])
        if status and status.get("ready") and all(w.get("running") for w in workers):
            break
        if proxy.poll() is not None or time.monotonic() > deadline:
            log(f"hold: wsproxy did not become ready (see {out / 'wsproxy.log'})")
            return 1
        time.sleep(0.1)
    children.workers = [int(w["pid"]) for w in workers]
    proxy_pids = [proxy.pid, *children.workers]
    log(f"hold: wsproxy ready: supervisor {proxy.pid}, workers {children.workers}")

    # a short probe, so first-session allocations are in the baseline, not in the per-session figure
    subprocess.run(
        [wsbench, "load", "-url", f"ws://127.0.0.1:{port}/", "-mode", "throughput", *PROBE],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )
    time.sleep(1.0)
    rss_base = sum(rss_kib(pid) for pid in proxy_pids)

    hold_max = f"{int(plan.ramp_bound + args.hold + 120)}s"
    loadgens: list[Loadgen] = []
    t0 = time.monotonic()
    for i in range(plan.loadgens):
        share = args.sessions // plan.loadgens + (1 if i < args.sessions % plan.loadgens else 0)
        command = [wsbench, "load", "-url", f"ws://127.0.0.1:{port}/", "-mode", "idle"]
        command += ["-size", "32", "-conns", str(share), "-id-offset", str(i * 1000000)]
        command += ["-src", f"127.0.{10 + i}.1+{SOURCES_PER_LOADGEN}", "-hold-max", hold_max]
        command += ["-dial-concurrency", str(args.dial_concurrency), "-max-fail", "64"]
        command += ["-dial-timeout", "10s"]
        loadgen = Loadgen(children.start(command, out / f"loadgen{i}.log", pipes=True))
        threading.Thread(target=loadgen.read, daemon=True).start()
        loadgens.append(loadgen)

    last_note = t0
    while not all(lg.ready or lg.process.poll() is not None for lg in loadgens):
        if time.monotonic() - t0 > plan.ramp_bound:
            log(f"hold: the ramp took longer than {plan.ramp_bound:.0f} s")
            return 1
        if time.monotonic() - last_note >= 15:
            last_note = time.monotonic()
            now = (admin_status(admin) or {}).get("sessions", 0)
            log(f"hold: ramp {last_note - t0:.0f} s: {now:,} sessions on the proxy")
        time.sleep(0.2)
    ramp_s = time.monotonic() - t0
    opened = sum(lg.held() for lg in loadgens if lg.ready)
    log(f"hold: {opened:,} sessions opened (each echoed once) in {ramp_s:.0f} s")
    log(f"hold: holding them {args.hold:g} s")

    time.sleep(args.hold)
    status = admin_status(admin) or {}
    rss_workers = {pid: rss_kib(pid) for pid in children.workers}
    rss_total = rss_kib(proxy.pid) + sum(rss_workers.values())
    fds = {pid: open_fds(pid) for pid in children.workers}
    held = int(status.get("sessions", 0))
    per_worker = status.get("workers", [])

    for loadgen in loadgens:
        loadgen.release()
    for loadgen in loadgens:
        try:
            loadgen.process.wait(60 + args.sessions / 200)
        except subprocess.TimeoutExpired:
            log(f"hold: load generator {loadgen.process.pid} did not finish; stopping it")
        children.stop(loadgen.process)
    time.sleep(0.5)  # the reader threads take the last line
    results = [lg.result or {} for lg in loadgens]
    echoing = sum(int(r.get("alive_after_hold", 0)) for r in results)
    bad_echoes = sum(int(r.get("verify_errors", 0)) for r in results)
    dial_errors = sum(int(r.get("dial_errors", 0)) for r in results)
    first_error = next((r["first_dial_error"] for r in results if r.get("first_dial_error")), "")
    hold_s = min((float(r.get("hold_s", 0)) for r in results), default=0.0)
    restarts = sum(int(w.get("restarts", 0)) for w in per_worker)

    children.stop(proxy)
    for echo in echoes:
        children.stop(echo)

    ok = opened == held == echoing == args.sessions and not bad_echoes and not restarts
    growth = rss_total - rss_base
    lines = [
        f"wsproxy hold: {args.sessions:,} idle sessions, held {args.hold:g} s",
        f"machine: {os.cpu_count()} CPUs, {mem_gib():.0f} GiB, Linux {os.uname().release}; "
        f"open-files limit {nofile:,}; ip_local_port_range {port_range}",
        f"wsproxy: {' '.join(proxy_command)} ({commit()}), workers {plan.workers}; "
        f"{plan.echo_procs} echo processes; {plan.loadgens} load generators x "
        f"{SOURCES_PER_LOADGEN} source addresses (127.0.10.1 and up)",
        "",
        f"sessions opened (each echoed once): {opened:,} / {args.sessions:,} in {ramp_s:.0f} s "
        f"({opened / ramp_s if ramp_s else 0:,.0f}/s); dial failures {dial_errors}"
        + (f" (first: {first_error})" if first_error else ""),
        f"sessions held by the proxy after {hold_s:.0f} s: {held:,}",
        f"sessions still echoing after the hold: {echoing:,}; corrupted echoes: {bad_echoes}",
        f"proxy RSS at the hold: {rss_total / 1024:,.0f} MiB in {1 + len(rss_workers)} processes "
        f"(baseline {rss_base / 1024:,.0f} MiB); per session: "
        f"{growth / max(held, 1):.1f} KiB above the baseline, "
        f"{rss_total / max(held, 1):.1f} KiB all in",
        "per worker (pid: sessions, open fds, RSS MiB, restarts): "
        + "; ".join(
            f"{w.get('pid')}: {w.get('sessions', 0):,}, {fds.get(w.get('pid', 0), 0):,}, "
            f"{rss_workers.get(w.get('pid', 0), 0) / 1024:,.0f}, {w.get('restarts', 0)}"
            for w in per_worker
        ),
        f"result: {'PASS' if ok else 'FAIL'}",
    ]
    print("\n".join(lines), flush=True)
    (out / "result.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0 if ok else 1


def mem_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown"
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "wsproxy"], check=False
    )
    return f"commit {head}" + (" + uncommitted changes" if dirty.returncode else "")


if __name__ == "__main__":
    sys.exit(main())
