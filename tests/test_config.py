from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml

from wsproxy.config import (
    Admin,
    BackendTLS,
    Config,
    ConfigError,
    HealthCheck,
    Keepalive,
    Limits,
    Listener,
    ListenerTLS,
    Log,
    Metrics,
    PerIP,
    PerSession,
    Pool,
    Rebalance,
    Relay,
    Route,
    Security,
    Server,
    Shutdown,
    StickyCookie,
    Timeouts,
    load_config,
    parse_config,
    summary,
)

EXAMPLE = Path(__file__).parents[1] / "config.example.yaml"

# Security comes last so a test can add keys to it by appending "  key: value" lines.
MINIMAL = """\
listen:
  - address: 127.0.0.1:0
routes:
  - {path: /, pool: main}
pools:
  main:
    servers: [ws://127.0.0.1:9001]
security:
  allowed_origins: ["*"]
"""


def config_yaml(**sections: object) -> str:
    """A valid configuration with top-level `sections` replaced or added, as YAML."""
    data: dict[str, object] = {
        "listen": [{"address": "127.0.0.1:0"}],
        "security": {"allowed_origins": ["*"]},
        "routes": [{"path": "/", "pool": "main"}],
        "pools": {"main": {"servers": ["ws://127.0.0.1:9001"]}},
    }
    data.update(sections)
    return yaml.safe_dump(data, sort_keys=False)


def problems_of(text: str, env: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env or {})
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def pool_yaml(**keys: object) -> str:
    return config_yaml(pools={"main": {"servers": ["ws://127.0.0.1:9001"], **keys}})


# ---------------------------------------------------------------------------- the example


def test_config_example_parses_with_its_summary() -> None:
    config = load_config(str(EXAMPLE), {})
    assert summary(config) == "config OK: listening on 0.0.0.0:8080; 2 routes, 2 pools, 3 servers"
    assert config.listen == (Listener(address="0.0.0.0:8080", host="0.0.0.0", port=8080),)
    assert config.security.allowed_origins == (
        "http://127.0.0.1:8081",
        "http://localhost:8081",
        "https://*.example.com",
    )
    assert config.routes == (
        Route(host="chat.example.com", path="/chat", pool="chat"),
        Route(path="/", pool="default"),
    )
    assert list(config.pools) == ["default", "chat"]
    assert config.pools["default"].servers == (
        Server(url="ws://127.0.0.1:9001", host="127.0.0.1", port=9001),
        Server(url="ws://127.0.0.1:9002", host="127.0.0.1", port=9002, weight=2),
    )
    assert config.pools["chat"] == Pool(
        name="chat",
        balance="hash",
        hash_on="query:user",
        servers=(Server(url="ws://127.0.0.1:9002", host="127.0.0.1", port=9002),),
        retries=1,
    )
    assert config.pools["default"].health_check == HealthCheck(type="websocket")
    assert config.log.format == "text"


def test_config_example_states_the_defaults() -> None:
    """The example's values are the dataclass defaults, apart from the keys it is there to show."""
    config = load_config(str(EXAMPLE), {})
    assert dataclasses.replace(config.security, allowed_origins=()) == Security(allowed_origins=())
    assert (config.timeouts, config.keepalive) == (Timeouts(), Keepalive())
    assert (config.shutdown, config.log, config.metrics) == (Shutdown(), Log(), Metrics())
    assert config.limits == Limits()
    default = config.pools["default"]
    assert dataclasses.replace(default, health_check=None, servers=(), rebalance=None) == Pool(
        name="default", servers=()
    )
    assert default.rebalance == Rebalance()


def test_config_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    keys = {
        f.name
        for cls in (
            *(Config, Security, Timeouts, Keepalive, Route, Pool),
            *(HealthCheck, StickyCookie, Shutdown, Log, Metrics, Rebalance),
            *(Limits, PerSession, PerIP),
        )
        for f in dataclasses.fields(cls)
    } - {"name"}
    keys |= {"address", "url", "weight", "token"}
    for key in sorted(keys):
        assert re.search(rf"\b{key}:", text), key
    for cls in (ListenerTLS, BackendTLS):
        for f in dataclasses.fields(cls):
            assert re.search(rf"\b{f.name}:", text), f"{cls.__name__}.{f.name}"
    assert "${NAME}" in text
    assert "${NAME:-default}" in text


# ---------------------------------------------------------------------------- whole files


def test_config_minimal_takes_the_defaults() -> None:
    config = parse_config(MINIMAL, {})
    assert config == Config(
        listen=(Listener(address="127.0.0.1:0", host="127.0.0.1", port=0),),
        security=Security(allowed_origins=("*",)),
        routes=(Route(pool="main"),),
        pools=MappingProxyType(
            {
                "main": Pool(
                    name="main",
                    servers=(Server(url="ws://127.0.0.1:9001", host="127.0.0.1", port=9001),),
                )
            }
        ),
    )
    assert isinstance(config.pools, MappingProxyType)
    assert summary(config) == "config OK: listening on 127.0.0.1:0; 1 route, 1 pool, 1 server"


def test_config_is_frozen_all_the_way_down() -> None:
    config = parse_config(MINIMAL, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.log = Log()  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.pools["other"] = config.pools["main"]  # type: ignore[index]
    assert isinstance(config.listen, tuple)
    assert isinstance(config.security.allowed_origins, tuple)
    assert isinstance(config.pools["main"].servers, tuple)


def test_config_every_section_parses() -> None:
    text = """\
listen:
  - address: 0.0.0.0:8080
  - address: "[::1]:8081"
security:
  allowed_origins: ["HTTPS://App.Example.com", "https://*.example.com:8443", "null"]
  require_origin: false
  max_connections: 100
  max_connections_per_ip: "10"
  max_message_size: 64KiB
  max_header_size: 8192
  handshake_timeout: 2.5
timeouts: {connect: 250ms, connect_total: 1s, idle: 0}
keepalive: {interval: 0, timeout: 1m}
routes:
  - {host: "*.Example.com", path: /chat, pool: chat}
  - {pool: main}
pools:
  main:
    balance: ROUND_ROBIN
    servers: ["ws://[::1]:9001", {url: ws://backend.internal, weight: "3"}]
    retries: 0
  chat:
    servers: [{url: ws://10.0.0.5:9002/}]
shutdown: {drain_timeout: 1h}
log: {level: WARNING, format: json}
"""
    config = parse_config(text, {})
    assert config.listen[1] == Listener(address="[::1]:8081", host="::1", port=8081)
    assert config.security == Security(
        allowed_origins=("https://app.example.com", "https://*.example.com:8443", "null"),
        require_origin=False,
        max_connections=100,
        max_connections_per_ip=10,
        max_message_size=65536,
        max_header_size=8192,
        handshake_timeout=2.5,
    )
    assert config.timeouts == Timeouts(connect=0.25, connect_total=1.0, idle=0.0)
    assert config.keepalive == Keepalive(interval=0.0, timeout=60.0)
    assert config.routes == (
        Route(host="*.example.com", path="/chat", pool="chat"),
        Route(pool="main"),
    )
    assert config.pools["main"] == Pool(
        name="main",
        servers=(
            Server(url="ws://[::1]:9001", host="::1", port=9001),
            Server(url="ws://backend.internal", host="backend.internal", port=80, weight=3),
        ),
        retries=0,
    )
    assert config.pools["chat"].servers[0].port == 9002
    assert config.shutdown == Shutdown(drain_timeout=3600.0)
    assert config.log == Log(level="warning", format="json")
    assert summary(config).startswith("config OK: listening on 0.0.0.0:8080, [::1]:8081; 2 routes")


def test_config_reports_every_problem_at_once() -> None:
    text = """\
listen:
  - address: localhost
security:
  allowed_origins: ["https://app.example.com/"]
  max_conections: 10
routes:
  - {path: chat, pool: chta}
pools:
  chat:
    servers: [ws://127.0.0.1:9001, {url: "ws://10.0.0.1/x", weight: 0}]
"""
    assert problems_of(text) == [
        "listen[0].address: expected HOST:PORT like 0.0.0.0:8080 or [::1]:8080, got 'localhost'",
        "security.max_conections: unknown key (did you mean 'max_connections'?)",
        "security.allowed_origins[0]: an origin has no path "
        "(did you mean 'https://app.example.com'?)",
        "routes[0].path: expected a path like / or /chat (no query), got 'chat'",
        "pools.chat.servers[1].url: a server URL takes no path (each client's path is passed on)",
        "pools.chat.servers[1].weight: must be at least 1, got 0",
        "routes[0].pool: no pool named 'chta' (did you mean 'chat'?)",
    ]


def test_config_required_sections_are_reported() -> None:
    assert problems_of("log: {level: info}\n") == [
        "listen: missing (required)",
        "security: missing (required)",
        "routes: missing (required)",
        "pools: missing (required)",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "- listen",
            "the top level must be a mapping (listen:, security:, routes:, pools:), got a list",
        ),
        ("42", "the top level must be a mapping (listen:, security:, routes:, pools:), got 42"),
        ("", "the file is empty"),
        ("# nothing but a comment\n", "the file is empty"),
        ("---\n", "the file is empty"),
        ("~", "the file is empty"),
    ],
)
def test_config_top_level_must_be_a_mapping(text: str, problem: str) -> None:
    assert problems_of(text) == [problem]


# ---------------------------------------------------------------------------- YAML and ${ENV}
# How the text becomes plain data is tested in test_yamldata.py; these are what config adds.


def test_config_reading_problems_are_reported_with_the_others() -> None:
    text = MINIMAL + "  max_connections: 10\n  max_connections: 20\n  max_conections: 1\n"
    assert problems_of(text) == [
        "security.max_connections: duplicate key (first on line 10)",
        "security.max_conections: unknown key (did you mean 'max_connections'?)",
    ]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("  require_origin: yes", "security.require_origin: expected true or false, got 'yes'"),
        (
            "  handshake_timeout: 1:30",
            "security.handshake_timeout: expected a duration like 250ms, 5s, 2m or 1h, got '1:30'",
        ),
        (
            "  handshake_timeout: .inf",
            "security.handshake_timeout: expected a duration like 250ms, 5s, 2m or 1h, got inf",
        ),
        (
            "  handshake_timeout: ~",
            "security.handshake_timeout: expected a duration like 250ms, 5s, 2m or 1h, got nothing",
        ),
    ],
)
def test_config_yaml_values_that_do_not_fit_their_field(line: str, problem: str) -> None:
    """YAML 1.2 reads these as a string, a float and None; the field then refuses them."""
    assert problems_of(MINIMAL + line + "\n") == [problem]


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("timeouts", "${TIMEOUTS}", "timeouts: environment variable TIMEOUTS is not set"),
        ("timeouts", "{idle: '${IDLE}'}", "timeouts.idle: environment variable IDLE is not set"),
        ("routes", "['${ROUTE}']", "routes[0]: environment variable ROUTE is not set"),
        ("pools", "{main: '${POOL}'}", "pools.main: environment variable POOL is not set"),
        ("log", "!!binary aGk=", "log: the YAML tag !!binary is not supported here"),
    ],
)
def test_config_unresolved_value_is_the_only_problem(key: str, value: str, problem: str) -> None:
    """A value the reading already reported is not checked again, so it is reported once."""
    text = config_yaml(**{key: None}).replace(f"{key}: null", f"{key}: {value}")
    assert problems_of(text) == [problem]


def test_config_env_top_level_unset() -> None:
    assert problems_of("${CONFIG}") == ["environment variable CONFIG is not set"]


@pytest.mark.parametrize(
    ("line", "env", "field", "expected"),
    [
        ("  max_connections: ${MAX}", {"MAX": "50"}, "max_connections", 50),
        ("  max_connections: !!str 9", {}, "max_connections", 9),
        ("  require_origin: ${REQ:-false}", {}, "require_origin", False),
        ("  max_message_size: ${SIZE}", {"SIZE": "2MiB"}, "max_message_size", 2 * 1024 * 1024),
        ("  handshake_timeout: ${T}", {"T": "1.5"}, "handshake_timeout", 1.5),
    ],
)
def test_config_strings_fill_typed_fields(
    line: str, env: dict[str, str], field: str, expected: object
) -> None:
    """`${ENV}` only ever produces strings, so a typed field takes a string that spells its type."""
    assert getattr(parse_config(MINIMAL + line + "\n", env).security, field) == expected


# ---------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            MINIMAL + "  max_conections: 1\n",
            "security.max_conections: unknown key (did you mean 'max_connections'?)",
        ),
        (MINIMAL + "route: []\n", "route: unknown key (did you mean 'routes'?)"),
        (
            MINIMAL + "timeouts: {conect: 1}\n",
            "timeouts.conect: unknown key (did you mean 'connect'?)",
        ),
        (
            MINIMAL.replace("- address", "- adress"),
            "listen[0].adress: unknown key (did you mean 'address'?)",
        ),
        (
            pool_yaml(helth_check={}),
            "pools.main.helth_check: unknown key (did you mean 'health_check'?)",
        ),
        (
            MINIMAL + "timeouts: {banana: 1}\n",
            "timeouts.banana: unknown key (known keys: connect, connect_total, idle)",
        ),
    ],
)
def test_config_unknown_key_has_did_you_mean(text: str, problem: str) -> None:
    assert problem in problems_of(text)


def test_config_workers() -> None:
    assert parse_config(config_yaml(), {}).workers == 1
    assert parse_config(config_yaml(workers=3), {}).workers == 3
    assert parse_config(config_yaml(workers="${WORKERS}"), {"WORKERS": "4"}).workers == 4
    assert parse_config(config_yaml(workers="auto"), {}).workers == len(os.sched_getaffinity(0))
    assert problems_of(config_yaml(workers=0)) == ["workers: must be at least 1, got 0"]
    assert problems_of(config_yaml(workers="many")) == [
        "workers: expected a number of processes or \"auto\", got 'many'"
    ]


def test_config_listener_tls() -> None:
    tls = {"cert": "/etc/wsproxy/tls.crt", "key": "/etc/wsproxy/tls.key"}
    config = parse_config(config_yaml(listen=[{"address": "0.0.0.0:443", "tls": tls}]), {})
    assert config.listen[0].tls == ListenerTLS(cert=tls["cert"], key=tls["key"], min_version="1.2")
    newest = {**tls, "min_version": 1.3}
    config = parse_config(config_yaml(listen=[{"address": "0.0.0.0:443", "tls": newest}]), {})
    assert config.listen[0].tls is not None
    assert config.listen[0].tls.min_version == "1.3"


@pytest.mark.parametrize(
    ("tls", "problem"),
    [
        ({}, "listen[0].tls.cert: missing (required)"),
        ({"cert": "a.pem"}, "listen[0].tls.key: missing (required)"),
        (
            {"cert": "a", "key": "b", "min_version": "1.1"},
            'listen[0].tls.min_version: expected "1.2" or "1.3", got \'1.1\'',
        ),
        ({"cert": "", "key": "b"}, "listen[0].tls.cert: expected a file path, got ''"),
        (
            {"cert": "a", "key": "b", "ciphers": "x"},
            "listen[0].tls.ciphers: unknown key (known keys: cert, key, min_version)",
        ),
    ],
)
def test_config_listener_tls_problems(tls: object, problem: str) -> None:
    assert problem in problems_of(config_yaml(listen=[{"address": "0.0.0.0:443", "tls": tls}]))


def test_config_wss_servers_and_pool_tls() -> None:
    tls = {"ca": "/etc/ssl/ca.pem", "verify": True, "cert": "c.pem", "key": "k.pem"}
    config = parse_config(
        config_yaml(pools={"main": {"servers": ["wss://chat.internal", "ws://b:1"], "tls": tls}}),
        {},
    )
    pool = config.pools["main"]
    assert [(s.host, s.port, s.secure) for s in pool.servers] == [
        ("chat.internal", 443, True),
        ("b", 1, False),
    ]
    assert pool.tls == BackendTLS(ca="/etc/ssl/ca.pem", verify=True, cert="c.pem", key="k.pem")


@pytest.mark.parametrize(
    ("pool", "problem"),
    [
        (
            {"servers": ["ws://a:1"], "tls": {"verify": False}},
            "pools.main.tls: only used with wss:// servers",
        ),
        (
            {"servers": ["wss://a:1"], "tls": {"cert": "c.pem"}},
            "pools.main.tls.key: missing: a client certificate needs both cert and key",
        ),
        (
            {"servers": ["wss://a:1"], "tls": {"verify": "no"}},
            "pools.main.tls.verify: expected true or false, got 'no'",
        ),
    ],
)
def test_config_pool_tls_problems(pool: object, problem: str) -> None:
    assert problem in problems_of(config_yaml(pools={"main": pool}))


def test_config_unknown_balance() -> None:
    assert problems_of(pool_yaml(balance="fastest")) == [
        "pools.main.balance: expected round_robin, least_connections, random, hash or cookie, "
        "got 'fastest'"
    ]


# ---------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("sections", "problem"),
    [
        ({"listen": {"address": "0.0.0.0:1"}}, "listen: expected a list, got a mapping"),
        ({"listen": []}, "listen: must not be empty"),
        ({"listen": ["0.0.0.0:1"]}, "listen[0]: expected a mapping, got '0.0.0.0:1'"),
        ({"listen": [{}]}, "listen[0].address: missing (required)"),
        ({"listen": [{"address": 8080}]}, "listen[0].address: expected a string, got 8080"),
        ({"security": None}, "security: expected a mapping, got nothing"),
        ({"security": {}}, "security.allowed_origins: missing (required)"),
        (
            {"security": {"allowed_origins": "*"}},
            "security.allowed_origins: expected a list, got '*'",
        ),
        ({"timeouts": ["5s"]}, "timeouts: expected a mapping, got a list"),
        ({"routes": {"path": "/"}}, "routes: expected a list, got a mapping"),
        ({"routes": []}, "routes: must not be empty"),
        ({"routes": [{"path": "/"}]}, "routes[0].pool: missing (required)"),
        ({"routes": [{"pool": 5}]}, "routes[0].pool: expected a pool name, got 5"),
        ({"pools": ["main"]}, "pools: expected a mapping of pool names to pools, got a list"),
        ({"pools": {}}, "pools: expected a mapping of pool names to pools"),
        ({"pools": {"main": None}}, "pools.main: expected a mapping, got nothing"),
        ({"pools": {"main": {}}}, "pools.main.servers: missing (required)"),
        ({"pools": {"main": {"servers": []}}}, "pools.main.servers: must not be empty"),
        (
            {"pools": {"main": {"servers": "ws://a"}}},
            "pools.main.servers: expected a list, got 'ws://a'",
        ),
        (
            {"pools": {"main": {"servers": [5]}}},
            "pools.main.servers[0]: expected a ws:// or wss:// URL, or a mapping {url, weight}, "
            "got 5",
        ),
        (
            {"pools": {"main": {"servers": [{"weight": 1}]}}},
            "pools.main.servers[0].url: missing (required)",
        ),
        (
            {"pools": {"main": {"servers": [{"url": "ws://a", "wieght": 2}]}}},
            "pools.main.servers[0].wieght: unknown key (did you mean 'weight'?)",
        ),
        (
            {"pools": {"main": {"servers": [{"url": "ws://a", "weight": 1.5}]}}},
            "pools.main.servers[0].weight: expected a whole number, got 1.5",
        ),
        (
            {"pools": {"main": {"servers": ["ws://a"], "retries": -1}}},
            "pools.main.retries: must be at least 0, got -1",
        ),
        (
            {"pools": {"main": {"servers": ["ws://a"], "retries": True}}},
            "pools.main.retries: expected a whole number, got true",
        ),
        (
            {"log": {"level": "verbose"}},
            "log.level: expected debug, info, warning or error, got 'verbose'",
        ),
        ({"log": {"format": "xml"}}, "log.format: expected text or json, got 'xml'"),
        ({"log": {"format": 1}}, "log.format: expected text or json, got 1"),
        (
            {"shutdown": {"drain_timeout": "-1s"}},
            "shutdown.drain_timeout: must not be negative, got '-1s'",
        ),
        ({"keepalive": {"timeout": 0}}, "keepalive.timeout: must be greater than 0, got 0"),
        ({"timeouts": {"connect": "0s"}}, "timeouts.connect: must be greater than 0, got '0s'"),
        (
            {"timeouts": {"connect_total": "0s"}},
            "timeouts.connect_total: must be greater than 0, got '0s'",
        ),
        (
            {"timeouts": {"connect_total": "soon"}},
            "timeouts.connect_total: expected a duration like 250ms, 5s, 2m or 1h, got 'soon'",
        ),
    ],
)
def test_config_wrong_shapes_and_values(sections: dict[str, object], problem: str) -> None:
    assert problems_of(config_yaml(**sections)) == [problem]


@pytest.mark.parametrize(
    ("security", "problem"),
    [
        ({"max_connections": 0}, "security.max_connections: must be at least 1, got 0"),
        (
            {"max_connections_per_ip": "lots"},
            "security.max_connections_per_ip: expected a whole number, got 'lots'",
        ),
        ({"max_message_size": 0}, "security.max_message_size: must be at least 1 byte, got 0"),
        (
            {"max_header_size": "512"},
            "security.max_header_size: must be at least 1024 bytes, got '512'",
        ),
        (
            {"max_message_size": "64KB"},
            "security.max_message_size: expected a size like 512, 64KiB, 1MiB or 1GiB, got '64KB' "
            "(sizes are binary: use KiB/MiB/GiB, e.g. '64KiB')",
        ),
        (
            {"max_message_size": "1.5MiB"},
            "security.max_message_size: expected a size like 512, 64KiB, 1MiB or 1GiB, "
            "got '1.5MiB'",
        ),
        (
            {"handshake_timeout": "5 parsecs"},
            "security.handshake_timeout: expected a duration like 250ms, 5s, 2m or 1h, "
            "got '5 parsecs'",
        ),
        (
            {"handshake_timeout": True},
            "security.handshake_timeout: expected a duration like 250ms, 5s, 2m or 1h, got true",
        ),
        (
            {"require_origin": "maybe"},
            "security.require_origin: expected true or false, got 'maybe'",
        ),
        (
            {"allowed_origins": ["*", "ftp://x"]},
            "security.allowed_origins[1]: expected '*' or an origin like https://app.example.com "
            "or https://*.example.com, got 'ftp://x'",
        ),
    ],
)
def test_config_security_values(security: dict[str, object], problem: str) -> None:
    assert problems_of(config_yaml(security={"allowed_origins": ["*"], **security})) == [problem]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (1.5, 1.5),
        ("250ms", 0.25),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("30", 30.0),
        (0, 0.0),
    ],
)
def test_config_durations(value: object, seconds: float) -> None:
    assert parse_config(config_yaml(timeouts={"idle": value}), {}).timeouts.idle == seconds


@pytest.mark.parametrize(
    ("value", "size"),
    [(512, 512), ("512", 512), ("64KiB", 65536), ("1MiB", 1 << 20), ("1GiB", 1 << 30)],
)
def test_config_sizes(value: object, size: int) -> None:
    config = parse_config(
        config_yaml(security={"allowed_origins": ["*"], "max_message_size": value}), {}
    )
    assert config.security.max_message_size == size


# ---------------------------------------------------------------------------- listen, routes, pools


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("0.0.0.0:8080", "0.0.0.0", 8080),
        ("[::1]:8080", "::1", 8080),
        ("[::]:0", "::", 0),
        ("localhost:65535", "localhost", 65535),
    ],
)
def test_config_listen_addresses(address: str, host: str, port: int) -> None:
    config = parse_config(config_yaml(listen=[{"address": address}]), {})
    assert config.listen == (Listener(address=address, host=host, port=port),)


def test_config_admin_address() -> None:
    config = parse_config(config_yaml(admin={"address": "127.0.0.1:9090"}), {})
    assert config.admin == Admin(address="127.0.0.1:9090", host="127.0.0.1", port=9090)
    assert parse_config(config_yaml(), {}).admin is None
    assert problems_of(config_yaml(admin={})) == ["admin.address: missing (required)"]
    assert problems_of(config_yaml(admin="127.0.0.1:9090")) == [
        "admin: expected a mapping, got '127.0.0.1:9090'"
    ]
    assert problems_of(config_yaml(admin={"address": "nowhere"})) == [
        "admin.address: expected HOST:PORT like 0.0.0.0:8080 or [::1]:8080, got 'nowhere'"
    ]


def test_config_admin_token() -> None:
    token = "0123456789abcdef"
    config = parse_config(config_yaml(admin={"address": "127.0.0.1:1", "token": token}), {})
    assert config.admin is not None
    assert config.admin.token == token
    env = {"WSPROXY_ADMIN_TOKEN": token + "-from-env"}
    from_env = config_yaml(admin={"address": "127.0.0.1:1", "token": "${WSPROXY_ADMIN_TOKEN}"})
    admin = parse_config(from_env, env).admin
    assert admin is not None
    assert admin.token == token + "-from-env"
    unset = config_yaml(admin={"address": "127.0.0.1:1", "token": "${WSPROXY_ADMIN_TOKEN:-}"})
    admin = parse_config(unset, {}).admin
    assert admin is not None
    assert admin.token == ""  # no token: the actions answer 403
    expected = (
        "admin.token: expected a string of at least 16 characters without spaces or control "
        "characters (e.g. ${WSPROXY_ADMIN_TOKEN} from the environment)"
    )
    for bad in ("short", token + " x", token + "\t", token + "\u00e9", 1234567890123456789, True):
        assert problems_of(config_yaml(admin={"address": "127.0.0.1:1", "token": bad})) == [
            expected
        ], bad


def test_config_listen_proxy_protocol() -> None:
    listen = [{"address": "127.0.0.1:1", "proxy_protocol": True}, {"address": "127.0.0.1:2"}]
    config = parse_config(config_yaml(listen=listen), {})
    assert [listener.proxy_protocol for listener in config.listen] == [True, False]
    assert problems_of(config_yaml(listen=[{"address": ":1", "proxy_protocol": "yes"}])) == [
        "listen[0].address: missing host in ':1' (0.0.0.0 means every IPv4 address)",
        "listen[0].proxy_protocol: expected true or false, got 'yes'",
    ]


def test_config_listen_ipv6_needs_brackets() -> None:
    assert problems_of(config_yaml(listen=[{"address": "::1:8080"}])) == [
        "listen[0].address: put an IPv6 address in brackets, like [::1]:8080, got '::1:8080'"
    ]


def test_config_listen_duplicates_are_refused() -> None:
    listen = [
        {"address": "127.0.0.1:8080"},
        {"address": "[::1]:8080"},
        {"address": "127.0.0.1:8080"},
    ]
    assert problems_of(config_yaml(listen=listen)) == ["listen[2]: duplicate of listen[0]"]


def test_config_allowed_origins_empty_needs_require_origin_false() -> None:
    assert problems_of(config_yaml(security={"allowed_origins": []})) == [
        "security.allowed_origins: empty, so every session would be refused (list origins or "
        "'*', or set require_origin: false to let only clients that send no Origin through)"
    ]
    config = parse_config(
        config_yaml(security={"allowed_origins": [], "require_origin": False}), {}
    )
    assert config.security.allowed_origins == ()


@pytest.mark.parametrize(
    ("route", "problem"),
    [
        (
            {"host": "chat.example.com:8080", "pool": "main"},
            "routes[0].host: expected a host like chat.example.com or *.example.com (no port), "
            "got 'chat.example.com:8080'",
        ),
        (
            {"path": "/chat?room=1", "pool": "main"},
            "routes[0].path: expected a path like / or /chat (no query), got '/chat?room=1'",
        ),
        ({"path": "/", "pool": "zzz"}, "routes[0].pool: no pool named 'zzz'"),
        (
            {"path": "/", "pool": "mian"},
            "routes[0].pool: no pool named 'mian' (did you mean 'main'?)",
        ),
    ],
)
def test_config_routes(route: dict[str, object], problem: str) -> None:
    assert problems_of(config_yaml(routes=[{"path": "/", "pool": "main"}, route])) == [
        problem.replace("routes[0]", "routes[1]")
    ]


def test_config_route_to_an_unknown_pool_is_not_checked_when_pools_are_broken() -> None:
    assert problems_of(config_yaml(pools=["main"])) == [
        "pools: expected a mapping of pool names to pools, got a list"
    ]


def test_config_pools_keep_their_order() -> None:
    names = ["zeta", "alpha", "mid-1", "under_score"]
    pools = {name: {"servers": [f"ws://127.0.0.1:{9000 + i}"]} for i, name in enumerate(names)}
    config = parse_config(config_yaml(pools=pools, routes=[{"pool": "zeta"}]), {})
    assert list(config.pools) == names
    assert [pool.name for pool in config.pools.values()] == names


def test_config_pool_names_are_plain() -> None:
    pools = {"main": {"servers": ["ws://a"]}, "my pool": {"servers": ["ws://b"]}}
    assert problems_of(config_yaml(pools=pools)) == [
        "pools.my pool: a pool name takes only letters, digits, '_' and '-'"
    ]


def test_config_pool_servers_duplicates_are_refused() -> None:
    servers = ["ws://Backend:80", {"url": "ws://backend/", "weight": 2}]
    assert problems_of(pool_yaml(servers=servers)) == [
        "pools.main.servers[1]: duplicate of pools.main.servers[0]"
    ]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://a:80", "expected a URL like ws://10.0.0.5:9001, got 'http://a:80'"),
        ("ws://a:1/?x=1", "a server URL takes no query or fragment"),
        ("ws://user:pw@a:1", "a server URL takes no user or password"),
        ("ws://a:0", "port must be a number from 1 to 65535, got 0"),
        ("ws://a:70000", "'ws://a:70000' is not a valid URL (check its host and port)"),
    ],
)
def test_config_server_urls(url: str, problem: str) -> None:
    assert problems_of(pool_yaml(servers=[url])) == [f"pools.main.servers[0]: {problem}"]


# ---------------------------------------------------------------------------- pool modes


def pool_of(**keys: object) -> Pool:
    return parse_config(pool_yaml(**keys), {}).pools["main"]


@pytest.mark.parametrize("balance", ["round_robin", "least_connections", "random", "Random "])
def test_config_balance_modes_without_extra_keys(balance: str) -> None:
    assert pool_of(balance=balance).balance == balance.strip().lower()


@pytest.mark.parametrize(
    ("hash_on", "stored"),
    [
        ("ip", "ip"),
        ("path", "path"),
        ("header:X-User-Id", "header:x-user-id"),
        ("cookie:SID", "cookie:SID"),
        ("query:user", "query:user"),
    ],
)
def test_config_hash_on_is_normalised(hash_on: str, stored: str) -> None:
    pool = pool_of(balance="hash", hash_on=hash_on)
    assert (pool.balance, pool.hash_on) == ("hash", stored)


def test_config_hash_needs_hash_on() -> None:
    assert problems_of(pool_yaml(balance="hash")) == [
        "pools.main.hash_on: missing: balance: hash needs it (ip, path, header:NAME, "
        "cookie:NAME or query:NAME)"
    ]


def test_config_bad_hash_on() -> None:
    assert problems_of(pool_yaml(balance="hash", hash_on="header:")) == [
        "pools.main.hash_on: expected one of ip, path, header:NAME, cookie:NAME, query:NAME, "
        "got 'header:'"
    ]


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"hash_on": "ip"}, "pools.main.hash_on: only used with balance: hash"),
        (
            {"balance": "cookie", "hash_on": "ip"},
            "pools.main.hash_on: only used with balance: hash",
        ),
        ({"cookie": {"name": "x"}}, "pools.main.cookie: only used with balance: cookie"),
        (
            {"balance": "hash", "hash_on": "ip", "cookie": {}},
            "pools.main.cookie: only used with balance: cookie",
        ),
    ],
)
def test_config_mode_keys_need_their_mode(keys: dict[str, object], problem: str) -> None:
    assert problems_of(pool_yaml(**keys)) == [problem]


def test_config_rebalance_is_off_unless_given_and_takes_its_defaults() -> None:
    assert pool_of().rebalance is None
    assert pool_of(rebalance={}).rebalance == Rebalance(
        tolerance=0.25, rate=10.0, min_age=30.0, close_code=1012
    )
    given = {"tolerance": "10%", "rate": "600/m", "min_age": "2m", "close_code": 1013}
    assert pool_of(rebalance=given).rebalance == Rebalance(
        tolerance=0.1, rate=10.0, min_age=120.0, close_code=1013
    )


@pytest.mark.parametrize(
    ("rebalance", "problem"),
    [
        ({"tolerance": 0.25}, "tolerance: expected a percentage like 25%, got 0.25"),
        ({"tolerance": "-5%"}, "tolerance: expected a percentage like 25%, got '-5%'"),
        ({"rate": "0/s"}, "rate: expected a rate above 0 like 10/s or 600/m, got '0/s'"),
        ({"rate": "10/d"}, "rate: expected a rate above 0 like 10/s or 600/m, got '10/d'"),
        ({"min_age": "-1s"}, "min_age: must not be negative, got '-1s'"),
        (
            {"close_code": 1001},
            "close_code: expected 1012 (service restart) or 1013 (try again later), got 1001",
        ),
        ({"rates": "10/s"}, "rates: unknown key (did you mean 'rate'?)"),
        (True, "expected a mapping, got true"),
    ],
)
def test_config_rebalance_bad_values_say_what_is_wrong(rebalance: object, problem: str) -> None:
    path = "pools.main.rebalance" + ("." if isinstance(rebalance, dict) else ": ")
    assert problems_of(pool_yaml(rebalance=rebalance)) == [path + problem]


def test_config_cookie_defaults_and_values() -> None:
    assert pool_of(balance="cookie").cookie == StickyCookie()
    assert StickyCookie() == StickyCookie(name="wsproxy_server", secret=None)
    pool = pool_of(balance="cookie", cookie={"name": "sticky", "secret": "s" * 16})
    assert pool.cookie == StickyCookie(name="sticky", secret="s" * 16)


def test_config_cookie_secret_from_the_environment() -> None:
    text = pool_yaml(balance="cookie", cookie={"secret": "${SECRET}"})
    config = parse_config(text, {"SECRET": "0123456789abcdef0123"})
    assert config.pools["main"].cookie.secret == "0123456789abcdef0123"


@pytest.mark.parametrize(
    ("cookie", "problem"),
    [
        (
            {"secret": "hunter2-is-short"[:15]},
            "pools.main.cookie.secret: expected a string of at least 16 characters (e.g. "
            "${WSPROXY_COOKIE_SECRET} from the environment)",
        ),
        (
            {"secret": 1234567890123456789},
            "pools.main.cookie.secret: expected a string of at least 16 characters (e.g. "
            "${WSPROXY_COOKIE_SECRET} from the environment)",
        ),
        (
            {"name": "my cookie"},
            "pools.main.cookie.name: expected a name of letters, digits, '-' or '_', got "
            "'my cookie'",
        ),
        ({"nmae": "x"}, "pools.main.cookie.nmae: unknown key (did you mean 'name'?)"),
        ("sticky", "pools.main.cookie: expected a mapping, got 'sticky'"),
    ],
)
def test_config_bad_cookie(cookie: object, problem: str) -> None:
    assert problems_of(pool_yaml(balance="cookie", cookie=cookie)) == [problem]


def test_config_short_secret_is_never_shown() -> None:
    problems = problems_of(pool_yaml(balance="cookie", cookie={"secret": "hunter2"}))
    assert "hunter2" not in "\n".join(problems)


def test_config_health_check_defaults() -> None:
    assert pool_of(health_check={}).health_check == HealthCheck()
    assert HealthCheck() == HealthCheck(
        type="tcp",
        path="/",
        interval=5.0,
        timeout=2.0,
        healthy_after=2,
        unhealthy_after=3,
        agent=False,
    )
    assert pool_of().health_check is None


def test_config_health_check_every_key() -> None:
    check = {
        "type": "WebSocket",
        "path": "/health?deep=1",
        "interval": "10s",
        "timeout": "1500ms",
        "healthy_after": 1,
        "unhealthy_after": "5",
        "agent": "true",
    }
    assert pool_of(health_check=check).health_check == HealthCheck(
        type="websocket",
        path="/health?deep=1",
        interval=10.0,
        timeout=1.5,
        healthy_after=1,
        unhealthy_after=5,
        agent=True,
    )
    http = pool_of(health_check={"type": "http", "agent": True}).health_check
    assert http == HealthCheck(type="http", agent=True)


@pytest.mark.parametrize(
    ("check", "problem"),
    [
        ({"type": "icmp"}, "type: expected tcp, http or websocket, got 'icmp'"),
        ({"type": "http", "path": "health"}, "path: expected a path like /health, got 'health'"),
        (
            {"type": "tcp", "path": "/x"},
            "path: a tcp check sends no request (use http or websocket)",
        ),
        ({"interval": 0}, "interval: must be greater than 0, got 0"),
        ({"timeout": "0s"}, "timeout: must be greater than 0, got '0s'"),
        ({"healthy_after": 0}, "healthy_after: must be at least 1, got 0"),
        ({"unhealthy_after": -1}, "unhealthy_after: must be at least 1, got -1"),
        ({"intervall": "5s"}, "intervall: unknown key (did you mean 'interval'?)"),
        ({"type": "http", "agent": "yes"}, "agent: expected true or false, got 'yes'"),
        (
            {"agent": True},
            "agent: a tcp check gets no answer to read (use http or websocket)",
        ),
    ],
)
def test_config_bad_health_check(check: dict[str, object], problem: str) -> None:
    assert problems_of(pool_yaml(health_check=check)) == [f"pools.main.health_check.{problem}"]


def test_config_health_check_timeout_may_exceed_the_interval() -> None:
    """As in HAProxy and Envoy: the next probe of a server waits for the one in flight."""
    check = {"interval": "250ms", "timeout": "1s"}
    assert pool_of(health_check=check).health_check == HealthCheck(interval=0.25, timeout=1.0)


def test_config_health_check_must_be_a_mapping() -> None:
    assert problems_of(pool_yaml(health_check="websocket")) == [
        "pools.main.health_check: expected a mapping, got 'websocket'"
    ]


@pytest.mark.parametrize(("value", "stored"), [(0, 0), (5000, 5000), ("12", 12)])
def test_config_max_connections_per_server(value: object, stored: int) -> None:
    assert pool_of(max_connections_per_server=value).max_connections_per_server == stored


def test_config_max_connections_per_server_not_negative() -> None:
    assert problems_of(pool_yaml(max_connections_per_server=-1)) == [
        "pools.main.max_connections_per_server: must be at least 0, got -1"
    ]


@pytest.mark.parametrize(("value", "seconds"), [(0, 0.0), ("30s", 30.0), ("2m", 120.0)])
def test_config_resolve_interval(value: object, seconds: float) -> None:
    assert pool_of(resolve_interval=value).resolve_interval == seconds
    assert pool_of().resolve_interval == 30.0


def test_config_pool_problems_are_all_reported_at_once() -> None:
    text = pool_yaml(
        balance="hash",
        health_check={"type": "ping", "timeout": "9s"},
        max_connections_per_server="lots",
        cookie={},
    )
    assert problems_of(text) == [
        "pools.main.health_check.type: expected tcp, http or websocket, got 'ping'",
        "pools.main.max_connections_per_server: expected a whole number, got 'lots'",
        "pools.main.hash_on: missing: balance: hash needs it (ip, path, header:NAME, "
        "cookie:NAME or query:NAME)",
        "pools.main.cookie: only used with balance: cookie",
    ]


def test_config_shutdown_close_window_and_code() -> None:
    config = parse_config(
        config_yaml(shutdown={"drain_timeout": "10s", "close_window": "2m", "close_code": 1012}), {}
    )
    assert config.shutdown == Shutdown(drain_timeout=10.0, close_window=120.0, close_code=1012)
    assert Shutdown() == Shutdown(drain_timeout=30.0, close_window=5.0, close_code=1001)
    assert problems_of(config_yaml(shutdown={"close_code": 1011, "close_window": -1})) == [
        "shutdown.close_window: must not be negative, got -1",
        "shutdown.close_code: expected 1001 (going away), 1012 (service restart), 1013 (try "
        "again later), 1000 or an application code from 4000 to 4999, got 1011",
    ]


def test_config_metrics_close_codes() -> None:
    assert parse_config(MINIMAL, {}).metrics == Metrics(close_codes=())
    config = parse_config(config_yaml(metrics={"close_codes": [4001, "4002", 3000, 4999]}), {})
    assert config.metrics == Metrics(close_codes=(4001, 4002, 3000, 4999))
    assert parse_config(config_yaml(metrics={}), {}).metrics == Metrics()


@pytest.mark.parametrize(
    ("metrics", "problems"),
    [
        (
            {"close_codes": [2999, 4001, 5000, 1000]},
            [
                "metrics.close_codes[0]: expected an application close code from 3000 to 4999, "
                "got 2999",
                "metrics.close_codes[2]: expected an application close code from 3000 to 4999, "
                "got 5000",
                "metrics.close_codes[3]: expected an application close code from 3000 to 4999, "
                "got 1000",
            ],
        ),
        (
            {"close_codes": [4001, True, "x", 4001]},
            [
                "metrics.close_codes[1]: expected a whole number, got true",
                "metrics.close_codes[2]: expected a whole number, got 'x'",
                "metrics.close_codes[3]: duplicate of metrics.close_codes[0]",
            ],
        ),
        ({"close_codes": 4001}, ["metrics.close_codes: expected a list, got 4001"]),
        ({"close_code": [4001]}, ["metrics.close_code: unknown key (did you mean 'close_codes'?)"]),
        ([4001], ["metrics: expected a mapping, got a list"]),
    ],
)
def test_config_bad_metrics(metrics: object, problems: list[str]) -> None:
    assert problems_of(config_yaml(metrics=metrics)) == problems


# ---------------------------------------------------------------------------- load_config


def test_config_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert caught.value.problems == [f"{path}: no such file"]


def test_config_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path), {})
    assert caught.value.problems == [f"{tmp_path}: is a directory, not a file"]


def test_config_load_other_os_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "config.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert caught.value.problems == [f"{path}: cannot read it (Not a directory)"]


def test_config_load_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"listen: \xff\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert caught.value.problems == [f"{path}: not UTF-8 text"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the file is empty"),
        ("a: b: c\n", "line 1, column 5: mapping values are not allowed here"),
        (
            "[1]\n",
            "the top level must be a mapping (listen:, security:, routes:, pools:), got a list",
        ),
    ],
)
def test_config_load_file_problems_name_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert caught.value.problems == [f"{path}: {problem}"]


TAB_HINT = "a tab character where YAML allows none: indent with spaces, not tabs"


@pytest.mark.parametrize(
    ("text", "place"),
    [
        ("listen:\n\t- address: 127.0.0.1:0\n", "line 2, column 1"),  # a tab-indented item
        (MINIMAL.replace("  allowed_origins", "\tallowed_origins"), "line 9, column 1"),
        (MINIMAL.replace("  allowed_origins", "  \tallowed_origins"), "line 9, column 3"),
        (MINIMAL + "log:\n  level: info\n\tformat: json\n", "line 12, column 1"),
        ("routes: [{path: /,\n\tpool: main}]\n", "line 2, column 1"),  # inside a flow mapping
    ],
)
def test_config_load_a_tab_in_the_indentation_says_to_indent_with_spaces(
    tmp_path: Path, text: str, place: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert caught.value.problems == [f"{path}: {place}: {TAB_HINT}"]


def test_config_a_tab_inside_a_quoted_value_is_no_indentation_problem() -> None:
    problems = problems_of(MINIMAL + 'log: {format: "te\txt"}\n')
    assert problems == ["log.format: expected text or json, got 'te\\txt'"]


def test_config_load_problems_inside_the_file_have_dotted_paths(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(MINIMAL + "log: {level: '${LEVEL}'}\n")
    assert load_config(str(path), {"LEVEL": "debug"}).log.level == "debug"
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {"LEVEL": "loud"})
    assert caught.value.problems == [
        "log.level: expected debug, info, warning or error, got 'loud'"
    ]


# ---------------------------------------------------------------------------- limits and progress


def test_config_limits_parse_with_their_defaults() -> None:
    config = parse_config(
        config_yaml(
            limits={
                "per_session": {"messages_per_second": 100, "bytes_per_second": "1MiB"},
                "per_ip": {"handshakes_per_second": "20", "burst": 40},
            },
            log={"session_interval": "5m"},
        ),
        {},
    )
    assert config.limits == Limits(
        per_session=PerSession(messages_per_second=100, bytes_per_second=1024 * 1024),
        per_ip=PerIP(handshakes_per_second=20, burst=40),
    )
    assert config.limits.per_session is not None
    assert config.limits.per_session.action == "throttle"
    assert config.log.session_interval == 300.0
    assert parse_config(MINIMAL, {}).limits == Limits()
    assert parse_config(MINIMAL, {}).log.session_interval == 0.0


def test_config_limits_close_action_and_burst() -> None:
    limits = parse_config(
        config_yaml(
            limits={"per_session": {"messages_per_second": 5, "burst": 50, "action": "CLOSE"}}
        ),
        {},
    ).limits
    assert limits == Limits(per_session=PerSession(messages_per_second=5, burst=50, action="close"))


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        (
            {"per_session": {}},
            "limits.per_session: limits nothing: give messages_per_second, bytes_per_second "
            "or both",
        ),
        (
            {"per_session": {"bytes_per_second": "1MiB", "burst": 10}},
            "limits.per_session.burst: only used with messages_per_second",
        ),
        (
            {"per_session": {"messages_per_second": 0}},
            "limits.per_session.messages_per_second: must be at least 1, got 0",
        ),
        (
            {"per_session": {"messages_per_second": 10, "burst": "lots"}},
            "limits.per_session.burst: expected a whole number, got 'lots'",
        ),
        (
            {"per_session": {"bytes_per_second": "1MB"}},
            "limits.per_session.bytes_per_second: expected a size like 512, 64KiB, 1MiB or "
            "1GiB, got '1MB' (sizes are binary: use KiB/MiB/GiB, e.g. '1MiB')",
        ),
        (
            {"per_session": {"messages_per_second": 10, "action": "drop"}},
            "limits.per_session.action: expected throttle or close, got 'drop'",
        ),
        (
            {"per_session": {"messages_per_second": 10, "brust": 5}},
            "limits.per_session.brust: unknown key (did you mean 'burst'?)",
        ),
        ({"per_ip": {"burst": 10}}, "limits.per_ip.handshakes_per_second: missing (required)"),
        (
            {"per_ip": {"handshakes_per_second": -1}},
            "limits.per_ip.handshakes_per_second: must be at least 1, got -1",
        ),
        ({"per_ip": 20}, "limits.per_ip: expected a mapping, got 20"),
        (
            {"per_connection": {}},
            "limits.per_connection: unknown key (did you mean 'per_session'?)",
        ),
    ],
)
def test_config_limits_problems(limits: dict[str, object], problem: str) -> None:
    assert problems_of(config_yaml(limits=limits)) == [problem]


def test_config_session_interval_problems() -> None:
    assert problems_of(config_yaml(log={"session_interval": "often"})) == [
        "log.session_interval: expected a duration like 250ms, 5s, 2m or 1h, got 'often'"
    ]
    # Each interval writes a line per older session: less than a second apart is a mistake.
    assert problems_of(config_yaml(log={"session_interval": "1ms"})) == [
        "log.session_interval: expected 0 (no progress lines) or at least 1s, got '1ms'"
    ]
    assert problems_of(config_yaml(log={"session_interval": 0.999})) == [
        "log.session_interval: expected 0 (no progress lines) or at least 1s, got 0.999"
    ]
    assert parse_config(config_yaml(log={"session_interval": "1s"}), {}).log.session_interval == 1
    assert parse_config(config_yaml(log={"session_interval": 0}), {}).log.session_interval == 0


@pytest.mark.parametrize(
    ("value", "seconds"), [("0.1ms", 0.0001), ("0", 0.0), (0, 0.0), ("2ms", 0.002), ("10ms", 0.01)]
)
def test_config_relay_batch_window(value: object, seconds: float) -> None:
    config = parse_config(config_yaml(relay={"batch_window": value}), {})
    assert config.relay == Relay(batch_window=seconds)


def test_config_relay_batch_window_defaults_to_a_tenth_of_a_millisecond() -> None:
    assert parse_config(MINIMAL, {}).relay == Relay(batch_window=0.0001)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("11ms", "expected 0 (off) up to 10ms, got '11ms'"),
        ("1s", "expected 0 (off) up to 10ms, got '1s'"),
        ("-1ms", "must not be negative, got '-1ms'"),
        ("soon", "expected a duration like 250ms, 5s, 2m or 1h, got 'soon'"),
    ],
)
def test_config_relay_batch_window_problems(value: object, problem: str) -> None:
    assert problems_of(config_yaml(relay={"batch_window": value})) == [
        f"relay.batch_window: {problem}"
    ]
