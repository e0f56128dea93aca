"""The configuration: YAML text in, one immutable, validated `Config` snapshot out.

Invariants:
- A `Config` is frozen all the way down (tuples, not lists; a read-only mapping of pools), so a
  snapshot can be shared by every task and swapped whole on reload.
- Field names are the YAML keys, so a problem's dotted path reads like the file
  (`pools.chat.servers[1].url`).
- Durations are float seconds and sizes int bytes. A duration of 0 where documented means "off".
- Reading the YAML into plain data (YAML 1.2 scalars, `${ENV}` substitution, duplicate keys)
  lives in `yamldata`; the syntax of single values (durations, sizes, addresses, URLs, origins)
  lives in `units`. This module turns that data into dataclasses.
- Validation collects every problem before failing, the reading's and its own:
  `ConfigError.problems` lists them all. A value `yamldata` already reported is not checked again.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, TypeVar

from wsproxy.units import (
    KIB,
    MIB,
    boolean,
    choice,
    describe,
    duration,
    hash_source,
    listen_address,
    origin,
    percentage,
    rate,
    rebalance_close_code,
    request_path,
    route_host,
    route_path,
    shutdown_close_code,
    size,
    tls_version,
    token,
    whole,
    workers,
    ws_url,
)
from wsproxy.yamldata import UNRESOLVED, ComposeError, Problems, join, read

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
D = TypeVar("D", bound="DataclassInstance")
Parse = Callable[[object, str], object]  # (value, its path) → the parsed value, or None


class ConfigError(Exception):
    """The configuration is unusable; `problems` holds one line per problem, each with its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerTLS:
    cert: str  # PEM file: the certificate, then its chain
    key: str  # PEM file: the private key
    min_version: str = "1.2"  # "1.2" | "1.3"


@dataclass(frozen=True, slots=True, kw_only=True)
class Listener:
    address: str  # as written, "HOST:PORT"
    host: str
    port: int
    proxy_protocol: bool = False  # a PROXY v1/v2 header first, from an L4 balancer
    tls: ListenerTLS | None = None  # None: plain ws://


@dataclass(frozen=True, slots=True, kw_only=True)
class Admin:
    address: str  # as written, "HOST:PORT"
    host: str
    port: int
    token: str = ""  # the Bearer token admin actions need; "": actions are refused


@dataclass(frozen=True, slots=True, kw_only=True)
class Security:
    # Required: there is no safe default for which pages may open sessions.
    allowed_origins: tuple[str, ...]
    require_origin: bool = True
    # nginx's default worker_connections is 512; 10,000 fits the 20,000-descriptor limit
    # of these machines with two descriptors per session.
    max_connections: int = 10_000
    max_connections_per_ip: int = 256
    max_message_size: int = 1 * MIB
    # h11 defaults to 16 KiB too, which is also nginx's large_client_header_buffers scale.
    max_header_size: int = 16 * KIB
    handshake_timeout: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    connect: float = 5.0  # each attempt: TCP (+TLS) and the WebSocket handshake with one server
    # All attempts of one handshake together; None = connect * (1 + the pool's retries).
    connect_total: float | None = None
    idle: float = 600.0  # 0 = never close a quiet session


@dataclass(frozen=True, slots=True, kw_only=True)
class Keepalive:
    # 20 s sits under the 30-60 s idle cut-offs of common NATs and cloud load balancers.
    interval: float = 20.0  # 0 = no keepalive pings
    timeout: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Relay:
    # Under load, a worker waits up to this long between rounds of reads, so each round relays
    # more frames for fewer wake-ups (see `batching`); 0 = every read at once.
    batch_window: float = 0.0001


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    host: str | None = None  # exact, or "*.suffix"; None matches any host
    path: str = "/"  # prefix
    pool: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Server:
    url: str  # as written, "ws://HOST:PORT" or "wss://HOST:PORT"
    host: str
    port: int
    weight: int = 1

    @property
    def secure(self) -> bool:
        return self.url[:4].lower() == "wss:"


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck:
    type: str = "tcp"  # tcp | http | websocket
    path: str = "/"  # requested by http and websocket checks
    # HAProxy checks every 2 s and Envoy's examples every 5 s; 5 s finds a dead server in
    # 15 s with the default unhealthy_after, while a dead server's sessions fail faster anyway.
    interval: float = 5.0
    timeout: float = 2.0  # may exceed the interval: the next probe waits for the one in flight
    healthy_after: int = 2  # HAProxy's rise is 2
    unhealthy_after: int = 3  # HAProxy's fall is 3
    agent: bool = False  # honour the answers' Wsproxy-Weight and Wsproxy-Drain headers


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendTLS:
    """How a pool speaks TLS to its wss:// servers (SNI is always the URL's host)."""

    ca: str | None = None  # PEM file of trusted CAs; None: the system's
    verify: bool = True  # False: accept any certificate (tests, and nothing else)
    cert: str | None = None  # PEM file of a client certificate, with `key`
    key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StickyCookie:
    name: str = "wsproxy_server"
    # None: a secret made up at start, so cookies stick only to this process. Replicas
    # behind one address need the same configured secret.
    secret: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Rebalance:
    """Moving sessions after the pool's servers change (see `rebalance`)."""

    tolerance: float = 0.25  # a fraction: 25% above its weighted share makes a server overloaded
    rate: float = 10.0  # closes per second, per pool (shared by the workers)
    min_age: float = 30.0  # younger sessions are never closed
    close_code: int = 1012  # 1012 (service restart) or 1013 (try again later)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pool:
    name: str
    balance: str = "round_robin"  # round_robin | least_connections | random | hash | cookie
    servers: tuple[Server, ...]
    retries: int = 2  # other servers tried after a failed connect
    hash_on: str | None = None  # see units.hash_source; required by, and only for, balance: hash
    cookie: StickyCookie = field(default_factory=StickyCookie)
    health_check: HealthCheck | None = None  # None: passive health only
    max_connections_per_server: int = 0  # 0 = no limit
    # Envoy's strict_dns refreshes every 5 s and nginx re-resolves at the record's TTL; 30 s
    # follows the SPEC's example. 0 = resolve once, at start.
    resolve_interval: float = 30.0
    tls: BackendTLS | None = None  # for wss:// servers; None: the system's CAs, verified
    rebalance: Rebalance | None = None  # None: sessions stay where they were placed


@dataclass(frozen=True, slots=True, kw_only=True)
class Shutdown:
    drain_timeout: float = 30.0
    # Sessions still open after the drain are closed spread over this window, so their clients
    # do not all reconnect in the same instant (a thundering herd on the remaining replicas).
    close_window: float = 5.0  # 0 = all at once
    # 1001 "going away" (RFC 6455), or 1012 "service restart", which tells clients to reconnect.
    close_code: int = 1001


@dataclass(frozen=True, slots=True, kw_only=True)
class PerSession:
    """Token buckets on what each client sends (at least one of the two rates is given)."""

    messages_per_second: int | None = None  # None: messages are not limited
    burst: int | None = None  # messages at once; None: messages_per_second
    bytes_per_second: int | None = None  # None: bytes are not limited; the bucket holds 1 s
    action: str = "throttle"  # throttle (stop reading: back-pressure) | close (1008)


@dataclass(frozen=True, slots=True, kw_only=True)
class PerIP:
    handshakes_per_second: int
    burst: int | None = None  # handshakes at once; None: handshakes_per_second


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    per_session: PerSession | None = None  # None: a session's client is never held back
    per_ip: PerIP | None = None  # None: handshakes are limited only by the connection limits


@dataclass(frozen=True, slots=True, kw_only=True)
class Log:
    level: str = "info"  # debug | info | warning | error
    format: str = "text"  # text | json
    session_interval: float = 0.0  # a progress line per older session each interval; 0 = none


@dataclass(frozen=True, slots=True, kw_only=True)
class Metrics:
    # Application close codes (3000-4999) counted under their own `code` label; the others
    # are counted as "3xxx" or "4xxx", so clients cannot add series at will.
    close_codes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    listen: tuple[Listener, ...]
    admin: Admin | None = None  # None: no admin endpoint
    workers: int = 1  # processes sharing the listen ports; "auto" is parsed to the CPU count
    security: Security
    timeouts: Timeouts = field(default_factory=Timeouts)
    keepalive: Keepalive = field(default_factory=Keepalive)
    relay: Relay = field(default_factory=Relay)
    routes: tuple[Route, ...]
    pools: Mapping[str, Pool] = field(default_factory=lambda: MappingProxyType({}))
    shutdown: Shutdown = field(default_factory=Shutdown)
    limits: Limits = field(default_factory=Limits)
    log: Log = field(default_factory=Log)
    metrics: Metrics = field(default_factory=Metrics)


def parse_config(text: str, env: Mapping[str, str]) -> Config:
    """Parse YAML `text` into a `Config`, substituting from `env`; raise `ConfigError`."""
    return _parse(text, env, "")


def load_config(path: str, env: Mapping[str, str]) -> Config:
    """Read and parse the file at `path`; an unreadable file is a `ConfigError` too."""
    return read_config(path, env)[1]


def read_config(path: str, env: Mapping[str, str]) -> tuple[str, Config]:
    """`load_config`, and the text it parsed (which the workers' supervisor hands on)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read it ({exc.strerror or exc})"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    return text, _parse(text, env, f"{path}: ")


def summary(config: Config) -> str:
    """One line for `wsproxy check`: listeners, routes, pools and servers counted."""
    addresses = ", ".join(listener.address for listener in config.listen)
    servers = sum(len(pool.servers) for pool in config.pools.values())
    counts = [(len(config.routes), "route"), (len(config.pools), "pool"), (servers, "server")]
    return f"config OK: listening on {addresses}; " + ", ".join(
        f"{n} {noun}{'' if n == 1 else 's'}" for n, noun in counts
    )


# ------------------------------------------------------------------------------- data to Config

BALANCE_MODES: Final = ("round_robin", "least_connections", "random", "hash", "cookie")
HEALTH_CHECK_TYPES: Final = ("tcp", "http", "websocket")
LIMIT_ACTIONS: Final = ("throttle", "close")
MIN_SESSION_INTERVAL: Final = 1.0  # seconds; each walk writes a line per older session
MAX_BATCH_WINDOW: Final = 0.01  # seconds; longer would add more latency than it saves CPU
MIN_COOKIE_SECRET: Final = 16  # characters; shorter secrets are guessable
MIN_ADMIN_TOKEN: Final = 16  # characters, for the same reason
TOKEN_CHARACTERS: Final = re.compile(r"[\x21-\x7e]+")  # what an Authorization header carries
_POOL_NAME: Final = re.compile(r"[A-Za-z0-9_-]+")


class _Checker(Problems):
    """Plain data → dataclasses. Every problem is recorded and the walk goes on; a value with a
    problem comes back as None, and so does each section around it."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems)
        self.pool_names: list[str] | None = None  # None: the pools section itself is unusable
        self.pool_refs: list[tuple[str, str]] = []  # (path, name) of each route's pool

    def parse(self, parse: Callable[[object, str], T | None], raw: object, path: str) -> T | None:
        return None if raw is UNRESOLVED else parse(raw, path)

    def scalar(self, convert: Callable[[object], T]) -> Callable[[object, str], T | None]:
        """A parser from a `units` function, whose `ValueError` says what is wrong."""

        def parse(raw: object, path: str) -> T | None:
            try:
                return convert(raw)
            except ValueError as exc:
                self.problem(path, str(exc))
                return None

        return parse

    def section(
        self,
        raw: object,
        path: str,
        known: tuple[str, ...],
        later: tuple[str, ...] = (),
        expected: str = "a mapping",
    ) -> Mapping[str, object] | None:
        """A mapping whose keys are all `known`; each other key is a problem."""
        if not isinstance(raw, dict):
            self.problem(path, f"expected {expected}, got {describe(raw)}")
            return None
        for key in raw:
            if key in later:
                self.problem(join(path, key), "not supported by this version")
            elif key not in known:
                close = difflib.get_close_matches(key, known + later, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join(known)
                self.problem(join(path, key), f"unknown key ({hint})")
        return raw

    def build(
        self,
        cls: type[D],
        raw: object,
        path: str,
        parsers: Mapping[str, Parse],
        later: tuple[str, ...] = (),
        required: tuple[str, ...] = (),
        **given: object,
    ) -> D | None:
        """A dataclass whose fields are the mapping's keys. An absent key takes the field's
        default; a field with none, or one named in `required`, is a problem when absent."""
        mapping = self.section(raw, path, tuple(parsers), later)
        if mapping is None:
            return None
        values = dict(given)
        complete = True
        for spec in fields(cls):
            child = join(path, spec.name)
            if spec.name in mapping:
                value = self.parse(parsers[spec.name], mapping[spec.name], child)
                values[spec.name] = value
                complete = complete and value is not None
            elif spec.name in required or (
                spec.name not in given and spec.default is spec.default_factory is MISSING
            ):
                self.problem(child, "missing (required)")
                complete = False
        return cls(**values) if complete else None

    def items(
        self,
        raw: object,
        path: str,
        parse: Callable[[object, str], T | None],
        *,
        nonempty: bool = True,
        same: Callable[[T], object] | None = None,
    ) -> tuple[T, ...] | None:
        """A list all of whose items parse; two items with equal `same` keys are a problem."""
        if not isinstance(raw, list):
            self.problem(path, f"expected a list, got {describe(raw)}")
            return None
        if nonempty and not raw:
            self.problem(path, "must not be empty")
            return None
        values: list[T] = []
        first: dict[object, str] = {}
        for i, item in enumerate(raw):
            child = f"{path}[{i}]"
            value = self.parse(parse, item, child)
            if value is None:
                continue
            if same is None or (seen := first.setdefault(same(value), child)) == child:
                values.append(value)
            else:
                self.problem(child, f"duplicate of {seen}")
        return tuple(values) if len(values) == len(raw) else None

    # ---- the sections

    def config(self, raw: object) -> Config | None:
        scalar = self.scalar
        parsers: dict[str, Parse] = {
            "listen": lambda v, p: self.items(v, p, self.listener, same=_host_port),
            "admin": self.admin,
            "security": self.security,
            "timeouts": lambda v, p: self.build(
                Timeouts,
                v,
                p,
                {
                    "connect": scalar(_positive),
                    "connect_total": scalar(_positive),
                    "idle": scalar(duration),
                },
            ),
            "keepalive": lambda v, p: self.build(
                Keepalive, v, p, {"interval": scalar(duration), "timeout": scalar(_positive)}
            ),
            "relay": lambda v, p: self.build(Relay, v, p, {"batch_window": scalar(_batch_window)}),
            "routes": lambda v, p: self.items(v, p, self.route),
            "pools": self.pools,
            "shutdown": lambda v, p: self.build(
                Shutdown,
                v,
                p,
                {
                    "drain_timeout": scalar(duration),
                    "close_window": scalar(duration),
                    "close_code": scalar(shutdown_close_code),
                },
            ),
            "limits": self.limits,
            "log": lambda v, p: self.build(
                Log,
                v,
                p,
                {
                    "level": scalar(_level),
                    "format": scalar(_format),
                    "session_interval": scalar(_session_interval),
                },
            ),
            "workers": scalar(workers),
            "metrics": lambda v, p: self.build(
                Metrics,
                v,
                p,
                {
                    "close_codes": lambda v, p: self.items(
                        v, p, scalar(_application_close_code), nonempty=False, same=int
                    )
                },
            ),
        }
        config = self.build(Config, raw, "", parsers, (), ("pools",))
        for path, name in self.pool_refs:
            if self.pool_names is not None and name not in self.pool_names:
                close = difflib.get_close_matches(name, self.pool_names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.problem(path, f"no pool named {name!r}{hint}")
        return config

    def listener(self, raw: object, path: str) -> Listener | None:
        mapping = self.section(raw, path, ("address", "proxy_protocol", "tls"))
        if mapping is not None and "address" not in mapping:
            self.problem(f"{path}.address", "missing (required)")
        elif mapping is not None:
            parsed = self.parse(self.scalar(listen_address), mapping["address"], f"{path}.address")
            proxy_protocol = self.parse(
                self.scalar(boolean),
                mapping.get("proxy_protocol", False),
                f"{path}.proxy_protocol",
            )
            tls = None
            if "tls" in mapping:
                parsers: dict[str, Parse] = {
                    "cert": self.scalar(_file_path),
                    "key": self.scalar(_file_path),
                    "min_version": self.scalar(tls_version),
                }
                tls = self.build(ListenerTLS, mapping["tls"], f"{path}.tls", parsers)
                if tls is None:
                    return None
            if parsed is not None and proxy_protocol is not None:
                return Listener(
                    address=parsed[0],
                    host=parsed[1],
                    port=parsed[2],
                    proxy_protocol=proxy_protocol,
                    tls=tls,
                )
        return None

    def admin(self, raw: object, path: str) -> Admin | None:
        mapping = self.section(raw, path, ("address", "token"))
        if mapping is not None and "address" not in mapping:
            self.problem(f"{path}.address", "missing (required)")
        elif mapping is not None:
            parsed = self.parse(self.scalar(listen_address), mapping["address"], f"{path}.address")
            token = self.parse(self.scalar(_admin_token), mapping.get("token", ""), f"{path}.token")
            if parsed is not None and token is not None:
                return Admin(address=parsed[0], host=parsed[1], port=parsed[2], token=token)
        return None

    def security(self, raw: object, path: str) -> Security | None:
        at_least_1 = self.scalar(_at_least_1)
        parsers: dict[str, Parse] = {
            "allowed_origins": lambda v, p: self.items(v, p, self.scalar(origin), nonempty=False),
            "require_origin": self.scalar(boolean),
            "max_connections": at_least_1,
            "max_connections_per_ip": at_least_1,
            "max_message_size": self.scalar(lambda v: size(v, minimum=1)),
            "max_header_size": self.scalar(lambda v: size(v, minimum=KIB)),
            "handshake_timeout": self.scalar(_positive),
        }
        security = self.build(Security, raw, path, parsers)
        if security and security.require_origin and not security.allowed_origins:
            self.problem(
                f"{path}.allowed_origins",
                "empty, so every session would be refused (list origins or '*', or set "
                "require_origin: false to let only clients that send no Origin through)",
            )
        return security

    def limits(self, raw: object, path: str) -> Limits | None:
        at_least_1 = self.scalar(_at_least_1)
        per_session: dict[str, Parse] = {
            "messages_per_second": at_least_1,
            "burst": at_least_1,
            "bytes_per_second": self.scalar(lambda v: size(v, minimum=1)),
            "action": self.scalar(lambda v: choice(v, LIMIT_ACTIONS)),
        }
        per_ip: dict[str, Parse] = {"handshakes_per_second": at_least_1, "burst": at_least_1}
        limits = self.build(
            Limits,
            raw,
            path,
            {
                "per_session": lambda v, p: self.build(PerSession, v, p, per_session),
                "per_ip": lambda v, p: self.build(PerIP, v, p, per_ip),
            },
        )
        session = limits.per_session if limits is not None else None
        if session is not None:
            where = join(path, "per_session")
            if session.messages_per_second is None and session.bytes_per_second is None:
                self.problem(
                    where, "limits nothing: give messages_per_second, bytes_per_second or both"
                )
                return None
            if session.burst is not None and session.messages_per_second is None:
                self.problem(join(where, "burst"), "only used with messages_per_second")
                return None
        return limits

    def route(self, raw: object, path: str) -> Route | None:
        parsers: dict[str, Parse] = {
            "host": self.scalar(route_host),
            "path": self.scalar(route_path),
            "pool": self.pool_ref,
        }
        return self.build(Route, raw, path, parsers)

    def pool_ref(self, raw: object, path: str) -> str | None:
        if not isinstance(raw, str):
            self.problem(path, f"expected a pool name, got {describe(raw)}")
            return None
        self.pool_refs.append((path, raw))
        return raw

    def pools(self, raw: object, path: str) -> Mapping[str, Pool] | None:
        if not isinstance(raw, dict) or not raw:
            got = f", got {describe(raw)}" if raw else ""
            self.problem(path, f"expected a mapping of pool names to pools{got}")
            return None
        self.pool_names = list(raw)
        parsers: dict[str, Parse] = {
            "balance": self.scalar(lambda v: choice(v, BALANCE_MODES)),
            "servers": lambda v, p: self.items(v, p, self.server, same=_host_port),
            "retries": self.scalar(whole),
            "hash_on": self.scalar(hash_source),
            "cookie": self.sticky_cookie,
            "health_check": self.health_check,
            "max_connections_per_server": self.scalar(whole),
            "resolve_interval": self.scalar(duration),
            "tls": self.backend_tls,
            "rebalance": lambda v, p: self.build(
                Rebalance,
                v,
                p,
                {
                    "tolerance": self.scalar(percentage),
                    "rate": self.scalar(rate),
                    "min_age": self.scalar(duration),
                    "close_code": self.scalar(rebalance_close_code),
                },
            ),
        }
        pools: dict[str, Pool] = {}
        for name, value in raw.items():
            child = join(path, name)
            if not _POOL_NAME.fullmatch(name):
                self.problem(child, "a pool name takes only letters, digits, '_' and '-'")
            elif value is not UNRESOLVED:
                pool = self.build(Pool, value, child, parsers, name=name)
                self.pool_modes(value, child)
                if pool is not None:
                    pools[name] = pool
        return MappingProxyType(pools) if len(pools) == len(raw) else None

    def pool_modes(self, raw: object, path: str) -> None:
        """Keys that belong to one balance mode: required by it, refused without it. Read from
        the raw mapping, so these problems are reported beside any others in the pool."""
        if not isinstance(raw, dict):
            return
        balance = raw.get("balance", "round_robin")
        balance = balance.strip().lower() if isinstance(balance, str) else balance
        if balance not in BALANCE_MODES:
            return  # reported as a bad balance already
        if balance == "hash" and "hash_on" not in raw:
            self.problem(
                join(path, "hash_on"),
                "missing: balance: hash needs it (ip, path, header:NAME, cookie:NAME or "
                "query:NAME)",
            )
        for key, mode in (("hash_on", "hash"), ("cookie", "cookie")):
            if key in raw and balance != mode:
                self.problem(join(path, key), f"only used with balance: {mode}")
        servers = raw.get("servers")
        if "tls" in raw and isinstance(servers, list):
            urls = [s.get("url") if isinstance(s, dict) else s for s in servers]
            if not any(isinstance(url, str) and url[:4].lower() == "wss:" for url in urls):
                self.problem(join(path, "tls"), "only used with wss:// servers")

    def backend_tls(self, raw: object, path: str) -> BackendTLS | None:
        parsers: dict[str, Parse] = {
            "ca": self.scalar(_file_path),
            "verify": self.scalar(boolean),
            "cert": self.scalar(_file_path),
            "key": self.scalar(_file_path),
        }
        tls = self.build(BackendTLS, raw, path, parsers)
        if tls is not None and (tls.cert is None) != (tls.key is None):
            missing = "key" if tls.key is None else "cert"
            self.problem(
                join(path, missing), "missing: a client certificate needs both cert and key"
            )
            return None
        return tls

    def sticky_cookie(self, raw: object, path: str) -> StickyCookie | None:
        parsers: dict[str, Parse] = {
            "name": self.scalar(token),
            "secret": self.scalar(_cookie_secret),
        }
        return self.build(StickyCookie, raw, path, parsers)

    def health_check(self, raw: object, path: str) -> HealthCheck | None:
        at_least_1 = self.scalar(_at_least_1)
        parsers: dict[str, Parse] = {
            "type": self.scalar(lambda v: choice(v, HEALTH_CHECK_TYPES)),
            "path": self.scalar(request_path),
            "interval": self.scalar(_positive),
            "timeout": self.scalar(_positive),
            "healthy_after": at_least_1,
            "unhealthy_after": at_least_1,
            "agent": self.scalar(boolean),
        }
        check = self.build(HealthCheck, raw, path, parsers)
        if check is not None and check.type == "tcp" and isinstance(raw, dict) and "path" in raw:
            self.problem(join(path, "path"), "a tcp check sends no request (use http or websocket)")
        if check is not None and check.type == "tcp" and check.agent:
            self.problem(
                join(path, "agent"), "a tcp check gets no answer to read (use http or websocket)"
            )
        return check

    def server(self, raw: object, path: str) -> Server | None:
        """A bare `ws://` URL, or a mapping {url, weight}."""
        mapping = {"url": raw} if isinstance(raw, str) else raw
        expected = "a ws:// or wss:// URL, or a mapping {url, weight}"
        mapping = self.section(mapping, path, ("url", "weight"), expected=expected)
        url_path = path if isinstance(raw, str) else f"{path}.url"
        if mapping is not None and "url" not in mapping:
            self.problem(url_path, "missing (required)")
        elif mapping is not None:
            parsed = self.parse(self.scalar(ws_url), mapping["url"], url_path)
            weight = self.parse(
                self.scalar(_at_least_1), mapping.get("weight", 1), f"{path}.weight"
            )
            if parsed is not None and weight is not None:
                return Server(url=parsed[0], host=parsed[1], port=parsed[2], weight=weight)
        return None


def _cookie_secret(value: object) -> str:
    if not isinstance(value, str) or len(value) < MIN_COOKIE_SECRET:
        raise ValueError(
            f"expected a string of at least {MIN_COOKIE_SECRET} characters (e.g. "
            "${WSPROXY_COOKIE_SECRET} from the environment)"
        )
    return value


def _admin_token(value: object) -> str:
    if value == "":
        return ""  # as `${WSPROXY_ADMIN_TOKEN:-}` gives when the variable is not set: no actions
    if (
        not isinstance(value, str)
        or len(value) < MIN_ADMIN_TOKEN
        or not TOKEN_CHARACTERS.fullmatch(value)
    ):
        raise ValueError(
            f"expected a string of at least {MIN_ADMIN_TOKEN} characters without spaces or "
            "control characters (e.g. ${WSPROXY_ADMIN_TOKEN} from the environment)"
        )
    return value


def _file_path(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a file path, got {describe(value)}")
    return value


def _application_close_code(value: object) -> int:
    code = whole(value)
    if not 3000 <= code <= 4999:
        raise ValueError(f"expected an application close code from 3000 to 4999, got {code}")
    return code


def _positive(value: object) -> float:
    return duration(value, positive=True)


def _at_least_1(value: object) -> int:
    return whole(value, minimum=1)


def _session_interval(value: object) -> float:
    seconds = duration(value)
    if 0 < seconds < MIN_SESSION_INTERVAL:
        raise ValueError(f"expected 0 (no progress lines) or at least 1s, got {describe(value)}")
    return seconds


def _batch_window(value: object) -> float:
    seconds = duration(value)
    if seconds > MAX_BATCH_WINDOW:
        raise ValueError(f"expected 0 (off) up to 10ms, got {describe(value)}")
    return seconds


def _level(value: object) -> str:
    return choice(value, ("debug", "info", "warning", "error"))


def _format(value: object) -> str:
    return choice(value, ("text", "json"))


def _host_port(item: Listener | Server) -> tuple[str, int]:
    return item.host.lower(), item.port


def _parse(text: str, env: Mapping[str, str], where: str) -> Config:
    problems: list[str] = []
    try:
        data = read(text, env, problems)
    except ComposeError as exc:
        raise ConfigError([where + exc.problem]) from None
    if data is None:  # only `---`, or `~`
        problems.append(f"{where}the file is empty")
    elif not isinstance(data, dict) and data is not UNRESOLVED:
        problems.append(
            f"{where}the top level must be a mapping (listen:, security:, routes:, pools:), "
            f"got {describe(data)}"
        )
    if not isinstance(data, dict):
        raise ConfigError(problems)
    config = _Checker(problems).config(data)
    if config is None or problems:
        raise ConfigError(problems)
    return config
