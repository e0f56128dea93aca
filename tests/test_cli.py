"""The `wsproxy` command as an operator runs it: real processes, real sockets, the real clock.

Every test starts `python -m wsproxy ...` (or the installed `wsproxy` script) with a configuration
written to `tmp_path`, and talks to it with the `websockets` client (an independent
implementation) or with raw sockets. Rules:
- Ports are 0 where the process reports what it bound (`serve` logs it); elsewhere a free port is
  found by binding port 0 and closing it.
- Every wait is bounded: `CAP` seconds for a process to answer, start or stop.
- Every process is killed in a `finally` by its own handle, so a failing test leaks nothing.
- When the test run measures coverage, the child processes are measured too (see `_child_env`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import coverage
import pytest
import trio
from coverage.config import CoverageConfig
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect
from websockets.typing import Origin

from tests.conftest import ORIGIN, Backend
from wsproxy import __version__
from wsproxy.cli import main
from wsproxy.demo import DemoPorts
from wsproxy.logs import ACCESS_FIELDS

CAP: Final = 10.0  # seconds: the longest any single wait in this module may take
REPO: Final = Path(__file__).parents[1]
EXAMPLE: Final = REPO / "config.example.yaml"
PYTHON_M: Final = (sys.executable, "-m", "wsproxy")
ISO_TIME: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


# ------------------------------------------------------------------------------ helpers


def _child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: ours without $WSPROXY_CONFIG, plus `extra`.

    Under `pytest --cov` the child is measured too, into parallel data files that pytest-cov
    combines at the end: what coverage's `patch = subprocess` setting would do.
    """
    env = {name: value for name, value in os.environ.items() if name != "WSPROXY_CONFIG"}
    measuring = coverage.Coverage.current()
    if measuring is not None:
        config = CoverageConfig.deserialize(measuring.config.serialize())
        config.parallel = True
        env["COVERAGE_PROCESS_CONFIG"] = config.serialize()
    env.update(extra or {})
    return env


def run_wsproxy(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    command: tuple[str, ...] = PYTHON_M,
) -> subprocess.CompletedProcess[str]:
    """Run a command that ends by itself (check, --version, a refusal) and capture its output."""
    return subprocess.run(
        [*command, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_child_env(env),
        timeout=CAP,
        check=False,
    )


@dataclass
class Lines:
    """The text lines of a child's pipe, read as they come."""

    stream: trio.abc.ReceiveStream
    lines: list[str] = field(default_factory=list)
    eof: bool = False
    _partial: bytes = b""
    _cursor: int = 0  # lines before it have been matched by `until`

    async def _read(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            self.eof = True
            if self._partial:
                self.lines.append(self._partial.decode())
            return
        *complete, self._partial = (self._partial + data).split(b"\n")
        self.lines += [line.decode() for line in complete]

    async def until(self, needle: str, seconds: float = CAP) -> str:
        """The next line containing `needle`, waiting at most `seconds` for it."""
        with trio.move_on_after(seconds):
            while True:
                for index in range(self._cursor, len(self.lines)):
                    if needle in self.lines[index]:
                        self._cursor = index + 1
                        return self.lines[index]
                if self.eof:
                    break
                await self._read()
        raise AssertionError(f"no line with {needle!r} within {seconds}s; got {self.lines}")

    async def count(self, needle: str, count: int, seconds: float = CAP) -> None:
        """Wait until `count` lines, however early, contain `needle`."""
        with trio.move_on_after(seconds):
            while sum(needle in line for line in self.lines) < count and not self.eof:
                await self._read()
        found = sum(needle in line for line in self.lines)
        assert found >= count, f"{found} lines with {needle!r}, not {count}; got {self.lines}"

    async def rest(self, seconds: float = CAP) -> list[str]:
        """Every line, once the pipe has reached its end (the process has exited)."""
        with trio.fail_after(seconds):
            while not self.eof:
                await self._read()
        return self.lines


@dataclass
class Child:
    """A running wsproxy process and its output."""

    process: trio.Process
    stdout: Lines
    stderr: Lines

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    async def exit_code(self, seconds: float = CAP) -> int:
        with trio.fail_after(seconds):
            return await self.process.wait()

    async def echo_port(self) -> int:
        """Wait for `wsproxy echo` to announce its listener; return its port."""
        line = await self.stderr.until("echo backend listening on")
        [port] = re.findall(r"ws://127\.0\.0\.1:(\d+)$", line)
        return int(port)

    async def ready_ports(self) -> list[int]:
        """Wait for the line naming the addresses the proxy listens on; return their ports."""
        line = await self.stderr.until("listening on")
        return [int(port) for port in re.findall(r"127\.0\.0\.1:(\d+)", line)]


@asynccontextmanager
async def started(
    *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> AsyncIterator[Child]:
    """Start `python -m wsproxy *args`; kill it on the way out if it is still running."""
    process = await trio.lowlevel.open_process(
        [*PYTHON_M, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=_child_env(env),
    )
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        yield Child(process, Lines(process.stdout), Lines(process.stderr))
    finally:
        process.kill()  # does nothing if it has exited
        with trio.CancelScope(shield=True), trio.move_on_after(CAP):
            await process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                await trio.aclose_forcefully(pipe)


def free_port() -> int:
    """A port nothing listens on right now (bound to 0, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def occupied_port() -> Iterator[int]:
    """A port that another socket is listening on for the duration."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def write_config(
    path: Path,
    *servers: str,
    listen: tuple[str, ...] = ("127.0.0.1:0",),
    extra: str = "",
) -> Path:
    addresses = "\n".join(f"  - address: {address}" for address in listen)
    urls = "\n".join(f"      - {url}" for url in servers or ("ws://127.0.0.1:9",))
    path.write_text(
        f"""\
listen:
{addresses}
security:
  allowed_origins: ["{ORIGIN}"]
routes:
  - {{path: /, pool: main}}
pools:
  main:
    servers:
{urls}
{extra}
""",
        encoding="utf-8",
    )
    return path


def assert_one_sentence(stderr: str) -> str:
    """A user's mistake is one line on stderr, and never a traceback."""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("wsproxy: ")
    return lines[0]


async def echo_once(url: str, text: str, origin: Origin = ORIGIN) -> None:
    async with connect(url, origin=origin, proxy=None) as ws:
        await ws.send(text)
        assert await ws.recv() == text


async def refusing(port: int) -> None:
    """Wait until nothing accepts connections on `port` any more. A poll, bounded by the
    caller: another process closing its listener is nothing this one can await."""
    while True:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            return
        await stream.aclose()
        await trio.sleep(0.01)


# ------------------------------------------------------------------- --version and usage


@pytest.mark.parametrize("how", ["script", "python -m"])
def test_cli_version_prints_name_and_version_and_exits_0(how: str) -> None:
    script = Path(sysconfig.get_path("scripts")) / "wsproxy"
    if how == "script" and not script.exists():
        pytest.skip("the wsproxy script is not installed (pip install -e .)")
    result = run_wsproxy("--version", command=(str(script),) if how == "script" else PYTHON_M)
    assert result.returncode == 0
    assert result.stdout == f"wsproxy {__version__}\n"
    assert result.stderr == ""


@pytest.mark.parametrize("args", [(), ("frobnicate",), ("serve", "--bogus")])
def test_cli_bad_arguments_exit_2_with_usage(args: tuple[str, ...]) -> None:
    result = run_wsproxy(*args)
    assert result.returncode == 2
    assert "usage: wsproxy" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_main_returns_the_exit_code_instead_of_exiting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The `wsproxy` script is `wsproxy.cli:main`: it must return 0/1/2, not raise SystemExit."""
    assert main(["check", "-c", str(EXAMPLE)]) == 0
    assert main(["check", "-c", str(tmp_path / "missing.yaml")]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("config OK: ")
    assert err == f"wsproxy: {tmp_path / 'missing.yaml'}: no such file\n"


# ------------------------------------------------------------------------------ check


def test_cli_check_example_config_exits_0_with_a_one_line_summary() -> None:
    result = run_wsproxy("check", "-c", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "config OK: listening on 0.0.0.0:8080; 2 routes, 2 pools, 3 servers"
    ]
    assert result.stderr == ""


def test_cli_check_bad_config_exits_2_naming_each_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        """\
listen:
  - address: 127.0.0.1:notaport
security:
  allowed_origins: ["https://app.example.com"]
  max_conections: 5
routes:
  - {path: /, pool: nope}
pools:
  main:
    servers: [ws://127.0.0.1:9001]
""",
        encoding="utf-8",
    )
    result = run_wsproxy("check", "-c", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    problems = result.stderr.splitlines()
    assert len(problems) == 3, problems
    assert problems[0].startswith("wsproxy: listen[0].address: ")
    assert "notaport" in problems[0]
    assert problems[1].startswith("wsproxy: security.max_conections: ")
    assert "max_connections" in problems[1]  # the did-you-mean hint
    assert problems[2].startswith("wsproxy: routes[0].pool: ")
    assert "nope" in problems[2]


def test_cli_check_missing_file_exits_2_in_one_sentence(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = run_wsproxy("check", "-c", str(missing))
    assert result.returncode == 2
    assert str(missing) in assert_one_sentence(result.stderr)


def test_cli_check_bad_yaml_exits_2_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("listen: [\n  - address: 127.0.0.1:0\n", encoding="utf-8")
    result = run_wsproxy("check", "-c", str(config))
    assert result.returncode == 2
    line = assert_one_sentence(result.stderr)
    assert "line 2" in line  # where the parser gave up


def test_cli_check_reads_wsproxy_config_when_c_is_absent(tmp_path: Path) -> None:
    config = write_config(tmp_path / "from-env.yaml", listen=("127.0.0.1:7001",))
    (tmp_path / "wsproxy.yaml").write_text("not: [valid", encoding="utf-8")  # not the one used
    result = run_wsproxy("check", cwd=tmp_path, env={"WSPROXY_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert "listening on 127.0.0.1:7001" in result.stdout


def test_cli_check_c_wins_over_wsproxy_config(tmp_path: Path) -> None:
    config = write_config(tmp_path / "given.yaml", listen=("127.0.0.1:7002",))
    env = {"WSPROXY_CONFIG": str(tmp_path / "missing.yaml")}
    result = run_wsproxy("check", "-c", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert "listening on 127.0.0.1:7002" in result.stdout


def test_cli_check_falls_back_to_wsproxy_yaml_in_the_working_directory(tmp_path: Path) -> None:
    write_config(tmp_path / "wsproxy.yaml", listen=("127.0.0.1:7003",))
    result = run_wsproxy("check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "listening on 127.0.0.1:7003" in result.stdout


@pytest.mark.parametrize("command", ["check", "serve"])
def test_cli_without_any_config_exits_2_hinting_at_c_and_wsproxy_config(
    tmp_path: Path, command: str
) -> None:
    result = run_wsproxy(command, cwd=tmp_path)  # no -c, no $WSPROXY_CONFIG, no ./wsproxy.yaml
    assert result.returncode == 2
    assert assert_one_sentence(result.stderr) == (
        "wsproxy: no configuration: there is no ./wsproxy.yaml here; "
        "give a file with -c FILE or $WSPROXY_CONFIG"
    )


def test_cli_serve_help_says_what_it_does_its_signals_and_exit_codes() -> None:
    result = run_wsproxy("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines as the terminal allows
    assert "Run the proxy: accept WebSocket clients" in text
    assert "SIGTERM, SIGINT drain: stop accepting" in text
    assert "a second SIGTERM or SIGINT during the drain stops at once" in text
    assert "SIGHUP reload the configuration file" in text
    assert "exit codes: 0 stopped by a signal, cleanly 1 could not run" in text
    assert "2 bad configuration or arguments" in text


# ------------------------------------------------------------------------------ serve


async def test_cli_serve_logs_one_ready_line_naming_every_address(
    tmp_path: Path, backend: Backend
) -> None:
    addresses = (f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    config = write_config(tmp_path / "c.yaml", backend.url, listen=addresses)
    async with started("serve", "-c", str(config)) as child:
        ports = await child.ready_ports()
        assert [f"127.0.0.1:{port}" for port in ports] == list(addresses)
        for port in ports:
            with trio.fail_after(CAP):
                await echo_once(f"ws://127.0.0.1:{port}/", f"hello via {port}")
        child.signal(signal.SIGTERM)
        assert await child.exit_code() == 0
        lines = await child.stderr.rest()
    assert len([line for line in lines if "listening on" in line]) == 1


async def test_cli_serve_relays_a_websocket_client_to_the_backend(
    tmp_path: Path, backend: Backend
) -> None:
    config = write_config(tmp_path / "c.yaml", backend.url)
    async with started("serve", "-c", str(config)) as child:
        [port] = await child.ready_ports()
        with trio.fail_after(CAP):
            async with connect(
                f"ws://127.0.0.1:{port}/chat?room=1", origin=ORIGIN, proxy=None
            ) as ws:
                for message in ("hello", b"\x00\x01binary", "x" * 100_000):
                    await ws.send(message)
                    assert await ws.recv() == message
        assert backend.requests[0].path == "/chat?room=1"
        child.signal(signal.SIGTERM)
        assert await child.exit_code() == 0


def test_cli_serve_port_in_use_exits_1_in_one_sentence(tmp_path: Path) -> None:
    with occupied_port() as port:
        listen = ("127.0.0.1:0", f"127.0.0.1:{port}")
        config = write_config(tmp_path / "c.yaml", listen=listen)
        result = run_wsproxy("serve", "-c", str(config))
    assert result.returncode == 1
    assert f"listen[1].address 127.0.0.1:{port}" in assert_one_sentence(result.stderr)


@pytest.mark.parametrize("workers", [1, 2])
def test_cli_serve_admin_port_in_use_names_admin_address(tmp_path: Path, workers: int) -> None:
    with occupied_port() as port:
        extra = f"admin: {{address: 127.0.0.1:{port}}}\nworkers: {workers}"
        config = write_config(tmp_path / "c.yaml", extra=extra)
        result = run_wsproxy("serve", "-c", str(config))
    assert result.returncode == 1
    sentence = assert_one_sentence(result.stderr)
    assert sentence.startswith(f"wsproxy: cannot listen on admin.address 127.0.0.1:{port}: ")


def test_cli_serve_bad_config_exits_2_without_serving(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", extra="shutdown: {drain_timeout: soon}")
    result = run_wsproxy("serve", "-c", str(config))
    assert result.returncode == 2
    assert "shutdown.drain_timeout" in assert_one_sentence(result.stderr)


async def test_cli_serve_sigterm_drains_sessions_then_closes_them_with_1001(
    tmp_path: Path, backend: Backend
) -> None:
    """Timeline: SIGTERM at 0; the port refuses at once; the session still echoes; 1001 at ~1 s."""
    config = write_config(tmp_path / "c.yaml", backend.url, extra="shutdown: {drain_timeout: 1s}")
    async with started("serve", "-c", str(config)) as child:
        [port] = await child.ready_ports()
        with trio.fail_after(CAP):
            async with connect(f"ws://127.0.0.1:{port}/", origin=ORIGIN, proxy=None) as ws:
                await ws.send("before")
                assert await ws.recv() == "before"
                child.signal(signal.SIGTERM)
                signalled = trio.current_time()
                await child.stderr.until("SIGTERM: draining")
                with trio.fail_after(0.5):  # the listener closes at once
                    await refusing(port)
                await ws.send("during")
                assert await ws.recv() == "during"
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
                waited = trio.current_time() - signalled
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
        assert 0.9 <= waited < 3.0
        assert await child.exit_code() == 0
        assert backend.connections[0].close_code == 1001  # the backend leg got 1001 too


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_cli_serve_admin_endpoint_answers_and_turns_unready_on_sigterm(
    tmp_path: Path, backend: Backend
) -> None:
    admin = free_port()
    extra = f"admin: {{address: 127.0.0.1:{admin}}}\nshutdown: {{drain_timeout: 30s}}"
    config = write_config(tmp_path / "c.yaml", backend.url, extra=extra)
    async with started("serve", "-c", str(config)) as child:
        [port] = await child.ready_ports()
        with trio.fail_after(CAP):
            assert await http_get(admin, "/healthz") == (200, b"ok\n")
            assert await http_get(admin, "/readyz") == (200, b"ready\n")
            async with connect(f"ws://127.0.0.1:{port}/", origin=ORIGIN, proxy=None) as ws:
                child.signal(signal.SIGTERM)
                await child.stderr.until("SIGTERM: draining")
                assert await http_get(admin, "/readyz") == (503, b"not ready: draining\n")
                assert (await http_get(admin, "/healthz"))[0] == 200
                await ws.send("still here")
                assert await ws.recv() == "still here"
            assert await child.exit_code() == 0
    assert f"admin endpoint on 127.0.0.1:{admin}" in "\n".join(child.stderr.lines)


async def test_cli_serve_drain_ends_when_the_last_session_closes(
    tmp_path: Path, backend: Backend
) -> None:
    config = write_config(tmp_path / "c.yaml", backend.url, extra="shutdown: {drain_timeout: 30s}")
    async with started("serve", "-c", str(config)) as child:
        [port] = await child.ready_ports()
        with trio.fail_after(CAP):
            async with connect(f"ws://127.0.0.1:{port}/", origin=ORIGIN, proxy=None) as ws:
                child.signal(signal.SIGTERM)
                await child.stderr.until("SIGTERM: draining")
                await ws.send("last words")
                assert await ws.recv() == "last words"
            closed_at = trio.current_time()  # the client's close handshake is done
        assert await child.exit_code() == 0
        assert trio.current_time() - closed_at < 2.0


async def test_cli_serve_sigterm_without_sessions_exits_0_promptly(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", extra="shutdown: {drain_timeout: 30s}")
    async with started("serve", "-c", str(config)) as child:
        await child.ready_ports()
        child.signal(signal.SIGTERM)
        assert await child.exit_code(seconds=2.0) == 0
        assert "Traceback" not in "\n".join(await child.stderr.rest())


async def test_cli_serve_second_sigint_during_the_drain_stops_at_once(
    tmp_path: Path, backend: Backend
) -> None:
    config = write_config(tmp_path / "c.yaml", backend.url, extra="shutdown: {drain_timeout: 30s}")
    async with started("serve", "-c", str(config)) as child:
        [port] = await child.ready_ports()
        with trio.fail_after(CAP):
            async with connect(f"ws://127.0.0.1:{port}/", origin=ORIGIN, proxy=None) as ws:
                await ws.send("hello")
                assert await ws.recv() == "hello"
                child.signal(signal.SIGINT)
                await child.stderr.until("SIGINT: draining")
                child.signal(signal.SIGINT)
                assert await child.exit_code(seconds=3.0) == 0
        lines = await child.stderr.rest()
    assert any("SIGINT while draining: stopping now" in line for line in lines), lines
    assert "Traceback" not in "\n".join(lines)


# ------------------------------------------------------------------------------- echo


async def test_cli_echo_serves_a_websocket_echo_until_sigterm() -> None:
    async with started("echo", "--listen", "127.0.0.1:0") as child:
        with trio.fail_after(CAP):
            port = await child.echo_port()
            await echo_once(f"ws://127.0.0.1:{port}/any/path", "ping?")
        child.signal(signal.SIGTERM)
        assert await child.exit_code() == 0


def test_cli_echo_bad_listen_address_exits_2_in_one_sentence() -> None:
    result = run_wsproxy("echo", "--listen", "nonsense")
    assert result.returncode == 2
    assert "nonsense" in assert_one_sentence(result.stderr)


def test_cli_echo_port_in_use_exits_1_in_one_sentence() -> None:
    with occupied_port() as port:
        result = run_wsproxy("echo", "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in assert_one_sentence(result.stderr)


# ------------------------------------------------------------------------------- demo


def demo_ports() -> DemoPorts:
    return DemoPorts(free_port(), free_port(), free_port(), (free_port(), free_port()))


def demo_args(ports: DemoPorts) -> tuple[str, ...]:
    return (
        "demo",
        "--port",
        str(ports.proxy),
        "--page-port",
        str(ports.page),
        "--admin-port",
        str(ports.admin),
        "--echo-ports",
        f"{ports.echoes[0]},{ports.echoes[1]}",
    )


async def test_cli_demo_runs_outside_the_repository_and_says_how_to_connect(
    tmp_path: Path,
) -> None:
    """From an empty directory: no config.example.yaml to read, the demo carries its own."""
    ports = demo_ports()
    async with started(*demo_args(ports), cwd=tmp_path) as child:
        summary = await child.stdout.until("wsproxy demo:")
        first, second = ports.echoes
        assert summary == (
            f"wsproxy demo: echo backends on 127.0.0.1:{first}, 127.0.0.1:{second}; "
            f"the proxy on 127.0.0.1:{ports.proxy}."
        )
        page = await child.stdout.until("in a browser")
        assert page.startswith(f"Open http://127.0.0.1:{ports.page}/ in a browser")
        command = (await child.stdout.until("  wsproxy client ws:")).split()
        assert command == [
            "wsproxy",
            "client",
            f"ws://127.0.0.1:{ports.proxy}/",
            "--origin",
            f"http://127.0.0.1:{ports.page}",
        ]
        await child.stdout.until("Ctrl-C stops.")
        origin = Origin(command[4])
        with trio.fail_after(CAP):
            for n in range(3):  # round robin over both echo backends
                await echo_once(command[2], f"hello {n}", origin)
            printed = await trio.run_process(
                [*PYTHON_M, *command[1:]],
                stdin=b"typed\n",
                capture_stdout=True,
                capture_stderr=True,
                cwd=tmp_path,
                env=_child_env(),
            )
        assert (printed.stdout, printed.stderr) == (b"typed\n", b"")
        child.signal(signal.SIGINT)
        assert await child.exit_code() == 0
        assert "Traceback" not in "\n".join(await child.stderr.rest())


async def test_cli_demo_second_sigint_during_the_drain_stops_at_once(tmp_path: Path) -> None:
    ports = demo_ports()
    async with started(*demo_args(ports), cwd=tmp_path) as child:
        await child.stdout.until("Ctrl-C stops.")
        with trio.fail_after(CAP):
            origin = Origin(f"http://127.0.0.1:{ports.page}")
            url = f"ws://127.0.0.1:{ports.proxy}/"
            async with connect(url, origin=origin, proxy=None) as ws:
                await ws.send("hello")
                assert await ws.recv() == "hello"
                child.signal(signal.SIGINT)
                await refusing(ports.proxy)  # draining: the demo's drain_timeout is 5 s
                child.signal(signal.SIGINT)
                assert await child.exit_code(seconds=3.0) == 0
        assert "Traceback" not in "\n".join(await child.stderr.rest())


@pytest.mark.parametrize("taken", ["proxy", "page", "admin", "backend"])
def test_cli_demo_port_in_use_exits_1_in_one_sentence(taken: str) -> None:
    with occupied_port() as port:
        ports = demo_ports()
        if taken == "backend":
            ports = dataclasses.replace(ports, echoes=(port, ports.echoes[1]))
        elif taken == "page":
            ports = dataclasses.replace(ports, page=port)
        elif taken == "admin":
            ports = dataclasses.replace(ports, admin=port)
        else:
            ports = dataclasses.replace(ports, proxy=port)
        result = run_wsproxy(*demo_args(ports))
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in assert_one_sentence(result.stderr)


@pytest.mark.parametrize(
    ("option", "value"),
    [("--port", "0"), ("--port", "http"), ("--page-port", "70000"), ("--echo-ports", "9001")],
)
def test_cli_demo_bad_port_exits_2(option: str, value: str) -> None:
    result = run_wsproxy("demo", option, value)
    assert result.returncode == 2
    assert f"argument {option}: expected" in result.stderr


# ------------------------------------------------------------------------- access log


async def one_logged_session(tmp_path: Path, backend: Backend, form: str) -> tuple[list[str], int]:
    """Serve with `log.format: form`; one session: 2 messages, closed by the client with 4000.

    Returns every stderr line and the client's port. Compression is off so that the wire sizes
    are known: client to backend 11 + 13 + 8 bytes (masked), backend to client 7 + 9 + 4.
    """
    config = write_config(tmp_path / "c.yaml", backend.url, extra=f"log: {{format: {form}}}")
    async with started("serve", "-c", str(config)) as child:
        [port] = await child.ready_ports()
        with trio.fail_after(CAP):
            async with connect(
                f"ws://127.0.0.1:{port}/", origin=ORIGIN, proxy=None, compression=None
            ) as ws:
                client_port = int(ws.local_address[1])
                for message in ("hello", "world!!"):
                    await ws.send(message)
                    assert await ws.recv() == message
                await ws.aclose(4000)
        await child.stderr.until("access")
        child.signal(signal.SIGTERM)
        assert await child.exit_code() == 0
        return await child.stderr.rest(), client_port


async def test_cli_serve_json_access_log_is_one_object_per_session(
    tmp_path: Path, backend: Backend
) -> None:
    lines, client_port = await one_logged_session(tmp_path, backend, "json")
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    access = [entry for entry in entries if entry.get("type") == "access"]
    assert len(access) == 1, lines
    [entry] = access
    assert list(entry) == ["type", *ACCESS_FIELDS]
    assert ISO_TIME.fullmatch(entry["time"])
    assert isinstance(entry["duration"], float)
    assert 0 <= entry["duration"] < CAP
    assert {k: v for k, v in entry.items() if k not in ("time", "duration")} == {
        "type": "access",
        "client": f"127.0.0.1:{client_port}",
        "route": "/",
        "pool": "main",
        "server": backend.url,
        "subprotocol": "",
        "messages_in": 2,
        "messages_out": 2,
        "bytes_in": 11 + 13 + 8,
        "bytes_out": 7 + 9 + 4,
        "close_code": 4000,
        "closed_by": "client",
    }


async def test_cli_serve_text_access_log_is_key_value_pairs(
    tmp_path: Path, backend: Backend
) -> None:
    lines, client_port = await one_logged_session(tmp_path, backend, "text")
    access = [line for line in lines if " access " in line]
    assert len(access) == 1, lines
    stamp, rest = access[0].split(" access ", 1)
    assert ISO_TIME.fullmatch(stamp)
    pairs = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)(?: |$)', rest)
    assert " ".join(f"{k}={v}" for k, v in pairs) == rest  # nothing else on the line
    fields = dict(pairs)
    assert tuple(fields) == ACCESS_FIELDS
    assert fields["time"] == stamp
    assert re.fullmatch(r"\d+\.\d{3}", fields["duration"])
    assert fields["client"] == f"127.0.0.1:{client_port}"
    assert fields["server"] == backend.url
    assert fields["subprotocol"] == '""'
    assert fields["close_code"] == "4000"
    assert fields["closed_by"] == "client"
    assert (fields["messages_in"], fields["messages_out"]) == ("2", "2")


# ------------------------------------------------------------------------------ admin

ADMIN_TOKEN: Final = "0123456789abcdef-cli"


async def admin_command(
    *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """`wsproxy admin *args`, run to its end without blocking the backends of this process."""
    with trio.fail_after(CAP):
        return await trio.run_process(
            [*PYTHON_M, "admin", *args],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=cwd,
            env=_child_env(env),
        )


async def test_cli_admin_lists_sessions_and_closes_one_with_the_token_of_the_file(
    tmp_path: Path, backend: Backend
) -> None:
    admin = free_port()
    extra = f'admin: {{address: 127.0.0.1:{admin}, token: "${{WSPROXY_ADMIN_TOKEN}}"}}'
    env = {"WSPROXY_ADMIN_TOKEN": ADMIN_TOKEN}
    config = write_config(tmp_path / "wsproxy.yaml", backend.url, extra=extra)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    async with started("serve", "-c", str(config), env=env) as child:
        [port] = await child.ready_ports()
        with trio.fail_after(CAP):
            ws_url = f"ws://127.0.0.1:{port}/"
            async with connect(ws_url, origin=ORIGIN, proxy=None, compression=None) as ws:
                await ws.send("hello")
                assert await ws.recv() == "hello"
                client = "{}:{}".format(*ws.local_address[:2])
                listing = await admin_command("sessions", cwd=tmp_path, env=env)
                header, row = listing.stdout.decode().splitlines()
                session_id = row.split()[0]
                url = f"--url=http://127.0.0.1:{admin}"
                by_url = await admin_command(url, "sessions", "--pool", "main", cwd=elsewhere)
                other_pool = await admin_command(url, "sessions", "--pool", "x", cwd=elsewhere)
                unguarded = await admin_command(url, "close", session_id, cwd=elsewhere)
                wrong = await admin_command(
                    "-c", str(config), "--token", "wrong", "close", session_id, env=env
                )
                closing = await admin_command(
                    "close", session_id, "--code", "4001", "--reason", "see you", cwd=tmp_path,
                    env=env,
                )  # fmt: skip
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
            again = await admin_command(
                url, "--token", ADMIN_TOKEN, "close", session_id, cwd=elsewhere
            )
    assert listing.returncode == 0, listing.stderr
    assert header.split() == [
        "ID", "CLIENT", "POOL", "SERVER", "ROUTE", "AGE",
        "MSGS", "IN", "MSGS", "OUT", "BYTES", "IN", "BYTES", "OUT",
    ]  # fmt: skip
    assert row.split()[1:5] == [client, "main", backend.url, "/"]
    assert row.split()[6:] == ["1", "1", "11", "7"]  # "hello" each way: masked in, plain out

    def without_age(line: str) -> list[str]:
        cells = line.split()
        return cells[:5] + cells[6:]

    assert [without_age(line) for line in by_url.stdout.decode().splitlines()[1:]] == [
        without_age(row)
    ]
    assert [line.split() for line in other_pool.stdout.decode().splitlines()] == [header.split()]
    assert (unguarded.returncode, wrong.returncode) == (2, 2)
    assert assert_one_sentence(unguarded.stderr.decode()) == (
        "wsproxy: the admin endpoint answered 401: "
        "this action needs the header Authorization: Bearer <admin.token>"
    )
    assert assert_one_sentence(wrong.stderr.decode()) == (
        "wsproxy: the admin endpoint answered 403: wrong admin token"
    )
    assert closing.returncode == 0, closing.stderr
    assert closing.stdout.decode() == f"closing session {session_id} with 4001 ('see you')\n"
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "see you")
    assert again.returncode == 2
    assert assert_one_sentence(again.stderr.decode()) == (
        f"wsproxy: the admin endpoint answered 404: no live session {session_id!r}"
    )


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (
            ("--url", "http://127.0.0.1:@PORT@", "sessions"),
            "cannot reach the admin endpoint at http://127.0.0.1:@PORT@: Connection refused",
        ),
        (("--url", "https://a:1", "sessions"), "--url must be http://HOST:PORT, got 'https://a:1'"),
        (("--url", "http://[::1", "sessions"), "--url must be http://HOST:PORT, got 'http://[::1'"),
        (
            ("--url", "http://127.0.0.1:@PORT@", "--token", "\u20ac" * 16, "close", "x"),
            "the admin token (--token, $WSPROXY_ADMIN_TOKEN) must be printable ASCII "
            "without spaces, as admin.token is",
        ),
        (
            ("--url", "http://a:1", "--token", "t", "close", "x", "--code", "1005"),
            "code must be a close code that may be sent (1000-1003, 1007-1014, 3000-4999), "
            "got 1005",
        ),
        (
            ("--url", "http://a:1", "--token", "t", "close", "x", "--reason", "x" * 124),
            "reason must be a string of at most 123 bytes of UTF-8",
        ),
        (
            ("--url", "http://a:1", "--token", "t", "drain", "p", "s", "--window", "soon"),
            "--window: expected a duration like 250ms, 5s, 2m or 1h, got 'soon'",
        ),
        (
            ("--url", "http://a:1", "sessions", "--limit", "0"),
            "--limit must be from 1 to 10000, got 0",
        ),
        (
            ("sessions",),
            "no configuration: there is no ./wsproxy.yaml here; "
            "give a file with -c FILE or $WSPROXY_CONFIG",
        ),
        (
            ("-c", "@CONFIG@", "sessions"),
            "the configuration has no admin.address: give --url http://HOST:PORT",
        ),
    ],
)  # fmt: skip
def test_cli_admin_failures_are_one_sentence_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], sentence: str
) -> None:
    port = str(free_port())
    config = str(write_config(tmp_path / "c.yaml"))
    args = tuple(arg.replace("@PORT@", port).replace("@CONFIG@", config) for arg in args)
    done = run_wsproxy("admin", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert assert_one_sentence(done.stderr) == "wsproxy: " + sentence.replace("@PORT@", port)


def test_cli_admin_help_names_every_action() -> None:
    done = run_wsproxy("admin", "--help")
    assert done.returncode == 0
    for action in ("sessions", "close", "drain", "undrain", "$WSPROXY_ADMIN_TOKEN"):
        assert action in done.stdout


async def test_cli_admin_drains_and_undrains_a_server(tmp_path: Path, backend: Backend) -> None:
    admin = free_port()
    extra = f'admin: {{address: 127.0.0.1:{admin}, token: "{ADMIN_TOKEN}"}}'
    config = str(write_config(tmp_path / "c.yaml", backend.url, extra=extra))
    async with started("serve", "-c", config) as child:
        [port] = await child.ready_ports()
        with trio.fail_after(CAP):
            async with connect(f"ws://127.0.0.1:{port}/", origin=ORIGIN, proxy=None) as ws:
                await ws.send("hello")
                assert await ws.recv() == "hello"
                drain = await admin_command("-c", config, "drain", "main", backend.url)
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
            undrain = await admin_command("-c", config, "undrain", "main", backend.url)
            unknown = await admin_command("-c", config, "undrain", "main", "ws://nowhere:1")
    assert drain.returncode == 0, drain.stderr
    assert drain.stdout.decode() == (
        f"draining {backend.url} in pool main: its sessions closed with 1012 over 30s\n"
    )
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1012  # the first of a drain's closes is at once
    assert undrain.returncode == 0, undrain.stderr
    assert undrain.stdout.decode() == f"{backend.url} in pool main takes new sessions again\n"
    assert unknown.returncode == 2
    assert assert_one_sentence(unknown.stderr.decode()) == (
        "wsproxy: the admin endpoint answered 404: no server 'ws://nowhere:1' in pool 'main'"
    )
