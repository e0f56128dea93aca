"""The `wsproxy` command: serve, check, client, echo, demo, admin and --version, with their exit
codes.

Invariants:
- This is the only module that turns exceptions into exit codes: 0 clean stop, 2 bad
  configuration or arguments, 1 anything else.
- A user's mistake (bad YAML, missing file, port in use) is one sentence on stderr, never a
  traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final

import trio

from wsproxy import __version__
from wsproxy.adminapi import (
    CLOSE_CODE,
    DRAIN_CODE,
    MAX_LIMIT,
    Action,
    BadRequest,
    CloseSession,
    Drain,
    SessionQuery,
    Undrain,
    action_body,
    action_target,
    parse_action,
)
from wsproxy.adminclient import (
    AdminError,
    act,
    find_endpoint,
    list_sessions,
    needs_config,
    sessions_table,
)
from wsproxy.client import ClientError, parse_url, run_client
from wsproxy.config import Config, ConfigError, load_config, read_config, summary
from wsproxy.demo import DemoPorts, demo_config, run_demo
from wsproxy.echo import parse_address, run_echo
from wsproxy.listening import ListenError
from wsproxy.logs import setup_logging
from wsproxy.server import Proxy
from wsproxy.snapshot import build_snapshot
from wsproxy.units import duration
from wsproxy.workers import Supervisor, for_worker, run_worker

log = logging.getLogger("wsproxy")


SERVE_DESCRIPTION: Final = """\
Run the proxy: accept WebSocket clients on every listen address, route each one to a server of
its pool and relay its frames both ways, until a signal stops it. Logs go to stderr."""

SERVE_EPILOG: Final = """\
signals:
  SIGTERM, SIGINT  drain: stop accepting, let sessions run for shutdown.drain_timeout, then
                   close the rest with shutdown.close_code over shutdown.close_window;
                   a second SIGTERM or SIGINT during the drain stops at once
  SIGHUP           reload the configuration file; sessions in flight keep theirs

exit codes:
  0  stopped by a signal, cleanly
  1  could not run (a port in use, a worker that failed to start, anything else)
  2  bad configuration or arguments"""


DEFAULT: Final = "wsproxy.yaml"  # the configuration file without -c or $WSPROXY_CONFIG


class UsageError(Exception):
    """Bad arguments: exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        try:
            return int(args.run(args))
        except BaseExceptionGroup as group:
            raise _single(group) from None
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"wsproxy: {problem}", file=sys.stderr)
        return 2
    except (UsageError, AdminError) as exc:
        print(f"wsproxy: {exc}", file=sys.stderr)
        return 2
    except (ListenError, ClientError) as exc:
        print(f"wsproxy: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error a group of nested nurseries carries, or the group itself."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsproxy", description="A WebSocket-aware reverse proxy and load balancer."
    )
    parser.add_argument("--version", action="version", version=f"wsproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the proxy",
        description=SERVE_DESCRIPTION,
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "-c", "--config", help="configuration file ($WSPROXY_CONFIG, ./wsproxy.yaml)"
    )
    serve.set_defaults(run=_serve)

    check = commands.add_parser("check", help="validate a configuration file and exit")
    check.add_argument(
        "-c", "--config", help="configuration file ($WSPROXY_CONFIG, ./wsproxy.yaml)"
    )
    check.set_defaults(run=_check)

    client = commands.add_parser(
        "client",
        help="a line-based WebSocket client: stdin lines out, messages in to stdout",
        description="Send each line of stdin as a text message and print each message "
        "received; at the end of stdin close the session (exit 0 after a clean close). "
        "A refused handshake or a lost connection exits 1, a bad URL 2.",
    )
    client.add_argument("url", metavar="URL", help="ws://HOST[:PORT]/PATH or wss://...")
    client.add_argument("--origin", help="the Origin header to send (a proxy may require one)")
    client.set_defaults(run=_client)

    echo = commands.add_parser("echo", help="run the built-in echo backend")
    echo.add_argument("--listen", default="127.0.0.1:9001", metavar="HOST:PORT")
    echo.set_defaults(run=_echo)

    demo = commands.add_parser(
        "demo",
        help="two echo backends behind the proxy, and a page to try it from a browser",
        description="Two echo backends, the proxy in front of them (config.example.yaml's "
        "routes and pools, on 127.0.0.1) and a page that opens a session from a browser, "
        "until Ctrl-C. It needs no file.",
    )
    defaults = DemoPorts()
    demo.add_argument("--port", type=_port, default=defaults.proxy, help="the proxy's port")
    demo.add_argument("--page-port", type=_port, default=defaults.page, help="the page's port")
    demo.add_argument("--admin-port", type=_port, default=defaults.admin, help="the status page's")
    demo.add_argument(
        "--echo-ports",
        type=_two_ports,
        default=defaults.echoes,
        metavar="PORT,PORT",
        help="the two echo backends' ports",
    )
    demo.set_defaults(run=_demo)

    _admin_parser(commands)

    # Started by `serve` when `workers` > 1; not for people (see wsproxy.workers).
    worker = commands.add_parser("worker")
    worker.add_argument("-c", "--config", required=True)
    worker.add_argument("--index", type=int, required=True)
    worker.add_argument("--ports", required=True)
    worker.add_argument("--control", required=True)
    worker.add_argument("--supervisor", type=int, required=True)
    worker.set_defaults(run=_worker)
    return parser


ADMIN_DESCRIPTION: Final = """\
Ask a running proxy's admin endpoint: list its live sessions, close one, drain a server (no
new sessions; its sessions closed over a window) or undrain it. The endpoint's address and
token come from the configuration file (found as `serve` finds it); --url and --token, or
$WSPROXY_ADMIN_TOKEN, override them. Actions need the token (admin.token); listing does not."""

ADMIN_EPILOG: Final = """\
examples:
  wsproxy admin sessions --pool chat --limit 20
  wsproxy admin close 3fa2c1-1b --code 4000 --reason "please reconnect"
  wsproxy admin drain chat ws://10.0.0.7:9000 --window 60s
  wsproxy admin --url http://127.0.0.1:9090 undrain chat ws://10.0.0.7:9000

exit codes:
  0  done (an action is under way once it is reported)
  2  bad arguments, the endpoint unreachable, or refused (401, 403, 404, 400)"""


def _admin_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admin = commands.add_parser(
        "admin",
        help="list live sessions, close one, drain or undrain a server",
        description=ADMIN_DESCRIPTION,
        epilog=ADMIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    admin.add_argument(
        "-c", "--config", help="configuration file ($WSPROXY_CONFIG, ./wsproxy.yaml)"
    )
    admin.add_argument("--url", help="the admin endpoint, http://HOST:PORT (admin.address)")
    admin.add_argument("--token", help="the admin token ($WSPROXY_ADMIN_TOKEN, admin.token)")
    admin.set_defaults(run=_admin)
    actions = admin.add_subparsers(dest="action", required=True, metavar="ACTION")
    sessions = actions.add_parser("sessions", help="list live sessions, the oldest first")
    sessions.add_argument("--pool", default="", help="only this pool's sessions")
    sessions.add_argument("--server", default="", help="only this server's (its URL)")
    sessions.add_argument(
        "--limit", type=int, default=1000, help=f"at most this many (1-{MAX_LIMIT})"
    )
    close = actions.add_parser("close", help="close one session")
    close.add_argument("id", metavar="ID", help="the session's id, as `sessions` lists it")
    close.add_argument("--code", type=int, default=CLOSE_CODE, help="the close code")
    close.add_argument("--reason", default="", help="the close reason (at most 123 bytes)")
    drain = actions.add_parser("drain", help="no new sessions to a server; close its sessions")
    undrain = actions.add_parser("undrain", help="let a drained server take new sessions")
    for each in (drain, undrain):
        each.add_argument("pool", metavar="POOL")
        each.add_argument("server", metavar="SERVER", help="the server's URL, as /status names it")
    drain.add_argument("--window", default="30s", help="close its sessions over this time")
    drain.add_argument("--code", type=int, default=DRAIN_CODE, help="the close code")


def _config_path(given: str | None) -> str:
    path = given or os.environ.get("WSPROXY_CONFIG") or DEFAULT
    if not given and path == DEFAULT and not Path(path).exists():
        raise UsageError(
            "no configuration: there is no ./wsproxy.yaml here; "
            "give a file with -c FILE or $WSPROXY_CONFIG"
        )
    return path


def _load(given: str | None) -> Config:
    return load_config(_config_path(given), os.environ)


def _admin(args: argparse.Namespace) -> int:
    acting = args.action != "sessions"
    admin = None
    if needs_config(args.url, args.token, os.environ, acting=acting) and (
        not args.url or args.config or os.environ.get("WSPROXY_CONFIG") or Path(DEFAULT).exists()
    ):  # with --url, a token is looked for in a file only if there is one
        admin = _load(args.config).admin
    endpoint = find_endpoint(args.url, args.token, os.environ, admin)
    if args.action == "sessions":
        query = SessionQuery(args.pool, args.server, args.limit)
        if not 1 <= query.limit <= MAX_LIMIT:
            raise UsageError(f"--limit must be from 1 to {MAX_LIMIT}, got {query.limit}")
        print(sessions_table(list_sessions(endpoint, query)))
        return 0
    print(act(endpoint, _action(args)))
    return 0


def _action(args: argparse.Namespace) -> Action:
    """The action the arguments ask for, checked as the endpoint will check it."""
    action: Action
    if args.action == "close":
        action = CloseSession(args.id, args.code, args.reason)
    elif args.action == "undrain":
        action = Undrain(args.pool, args.server)
    else:
        try:
            window = duration(args.window)
        except ValueError as exc:
            raise UsageError(f"--window: {exc}") from None
        action = Drain(args.pool, args.server, window, args.code)
    try:
        parse_action(action_target(action).encode(), action_body(action))
    except BadRequest as exc:
        raise UsageError(str(exc)) from None
    return action


def _check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    build_snapshot(config)  # the certificates and keys load, too
    print(summary(config))
    return 0


def _serve(args: argparse.Namespace) -> int:
    path = _config_path(args.config)

    def load() -> Config:
        return load_config(path, os.environ)

    text, config = read_config(path, os.environ)
    setup_logging(config.log.level, config.log.format)
    if config.workers > 1:
        build_snapshot(config)  # a bad certificate stops the start, not each worker
        return int(trio.run(Supervisor(path, text, config).run))
    proxy = Proxy(config)
    trio.run(proxy.serve_until_signalled, load)
    return 0


def _worker(args: argparse.Namespace) -> int:
    ports = [int(port) for port in args.ports.split(",")]

    def load() -> Config:
        return for_worker(load_config(args.config, os.environ), ports)

    config = load()
    setup_logging(config.log.level, config.log.format, args.index)
    proxy = Proxy(config, worker=args.index)
    trio.run(run_worker, proxy, load, args.control, args.supervisor)
    return 0


def _client(args: argparse.Namespace) -> int:
    try:
        parse_url(args.url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    trio.run(run_client, args.url, args.origin)
    return 0


def _echo(args: argparse.Namespace) -> int:
    _address(args.listen)  # a bad address is a usage error, before anything starts
    setup_logging("info", "text")
    trio.run(_until_signalled, lambda: run_echo(args.listen))
    return 0


def _demo(args: argparse.Namespace) -> int:
    ports = DemoPorts(args.port, args.page_port, args.admin_port, args.echo_ports)
    config = demo_config(ports)
    setup_logging(config.log.level, config.log.format)
    trio.run(run_demo, ports)
    return 0


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return int(text)


def _two_ports(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two ports, as in 9001,9002, got {text!r}")
    return _port(parts[0]), _port(parts[1])


async def _until_signalled(serve: Callable[[], Awaitable[object]]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
