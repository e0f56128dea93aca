"""wsproxy/changes.py: the lines a reload logs about what changed between two configurations."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import yaml

from wsproxy.changes import config_changes, duration_text, show, size_text
from wsproxy.config import Config, parse_config

Data = dict[str, object]

BASE: Data = {
    "listen": [{"address": "127.0.0.1:8080"}],
    "security": {"allowed_origins": ["https://a.example.com", "https://b.example.com"]},
    "routes": [
        {"host": "chat.example.com", "path": "/chat", "pool": "chat"},
        {"path": "/", "pool": "main"},
    ],
    "pools": {
        "main": {"servers": ["ws://127.0.0.1:9001", {"url": "ws://127.0.0.1:9002", "weight": 2}]},
        "chat": {"servers": ["ws://127.0.0.1:9003"]},
    },
}


def config(change: Callable[[Data], object] | None = None) -> Config:
    """BASE, edited in place by `change`, parsed as a file would be."""
    data = copy.deepcopy(BASE)
    if change is not None:
        change(data)
    return parse_config(yaml.safe_dump(data, sort_keys=False), {})


def section(data: Data, name: str) -> Data:
    value = data.setdefault(name, {})
    assert isinstance(value, dict)
    return value


def pool(data: Data, name: str) -> Data:
    value = section(data, "pools")[name]
    assert isinstance(value, dict)
    return value


def changes(change: Callable[[Data], object]) -> list[str]:
    return config_changes(config(), config(change))


def test_changes_none_between_equal_configurations() -> None:
    assert config_changes(config(), config()) == []


# ---------------------------------------------------------------- limits and timeouts


@pytest.mark.parametrize(
    ("key", "value", "line"),
    [
        ("max_message_size", "2MiB", "security.max_message_size: 1MiB -> 2MiB"),
        ("max_header_size", 20000, "security.max_header_size: 16KiB -> 20000"),
        ("max_connections", 500, "security.max_connections: 10000 -> 500"),
        ("max_connections_per_ip", 8, "security.max_connections_per_ip: 256 -> 8"),
        ("require_origin", False, "security.require_origin: true -> false"),
        ("handshake_timeout", "250ms", "security.handshake_timeout: 10s -> 250ms"),
    ],
)
def test_changes_security_limits(key: str, value: object, line: str) -> None:
    assert changes(lambda d: section(d, "security").update({key: value})) == [line]


@pytest.mark.parametrize(
    ("name", "key", "value", "line"),
    [
        ("timeouts", "connect", "1.5s", "timeouts.connect: 5s -> 1.5s"),
        ("timeouts", "idle", 0, "timeouts.idle: 10m -> 0"),
        ("timeouts", "idle", "2h", "timeouts.idle: 10m -> 2h"),
        ("keepalive", "interval", "90s", "keepalive.interval: 20s -> 90s"),
        ("keepalive", "timeout", "1m", "keepalive.timeout: 10s -> 1m"),
        ("relay", "batch_window", 0, "relay.batch_window: 0.1ms -> 0"),
        ("relay", "batch_window", "2.5ms", "relay.batch_window: 0.1ms -> 2.5ms"),
        ("shutdown", "close_code", 1012, "shutdown.close_code: 1001 -> 1012"),
        ("shutdown", "drain_timeout", "45s", "shutdown.drain_timeout: 30s -> 45s"),
        ("log", "level", "debug", "log.level: info -> debug"),
        ("log", "format", "json", "log.format: text -> json"),
    ],
)
def test_changes_other_sections_key_by_key(name: str, key: str, value: object, line: str) -> None:
    assert changes(lambda d: section(d, name).update({key: value})) == [line]


def test_changes_several_keys_come_in_the_files_order() -> None:
    def edit(data: Data) -> None:
        section(data, "log").update({"level": "warning"})
        section(data, "timeouts").update({"connect": "2s"})
        section(data, "security").update({"max_message_size": "64KiB"})

    assert changes(edit) == [
        "security.max_message_size: 1MiB -> 64KiB",
        "timeouts.connect: 5s -> 2s",
        "log.level: info -> warning",
    ]


@pytest.mark.parametrize(
    ("origins", "line"),
    [
        (
            ["https://a.example.com", "https://b.example.com", "https://c.example.com"],
            "security.allowed_origins: added https://c.example.com",
        ),
        (["https://b.example.com"], "security.allowed_origins: removed https://a.example.com"),
        (
            ["https://c.example.com", "https://b.example.com"],
            "security.allowed_origins: added https://c.example.com; removed https://a.example.com",
        ),
        (
            ["https://b.example.com", "https://a.example.com"],
            "security.allowed_origins: [https://a.example.com, https://b.example.com] -> "
            "[https://b.example.com, https://a.example.com]",
        ),
    ],
)
def test_changes_allowed_origins_added_and_removed(origins: list[str], line: str) -> None:
    assert changes(lambda d: section(d, "security").update({"allowed_origins": origins})) == [line]


# ---------------------------------------------------------------- listeners, admin, workers


def test_changes_a_listener_key() -> None:
    def edit(data: Data) -> None:
        data["listen"] = [{"address": "127.0.0.1:8080", "proxy_protocol": True}]

    assert changes(edit) == ["listen[0].proxy_protocol: false -> true"]


def test_changes_the_second_listener_only() -> None:
    two = [{"address": "127.0.0.1:8080"}, {"address": "127.0.0.1:8081"}]
    after = [{"address": "127.0.0.1:8080"}, {"address": "127.0.0.1:8081", "proxy_protocol": True}]
    before = config(lambda d: d.update(listen=two))
    assert config_changes(before, config(lambda d: d.update(listen=after))) == [
        "listen[1].proxy_protocol: false -> true"
    ]


def test_changes_a_listener_gets_tls() -> None:
    def edit(data: Data) -> None:
        data["listen"] = [{"address": "127.0.0.1:8080", "tls": {"cert": "/c.pem", "key": "/k.pem"}}]

    assert changes(edit) == ["listen[0].tls: none -> {cert: /c.pem, key: /k.pem, min_version: 1.2}"]


def test_changes_a_listener_added_is_the_list_whole() -> None:
    def edit(data: Data) -> None:
        data["listen"] = [{"address": "127.0.0.1:8080"}, {"address": "127.0.0.1:8081"}]

    [line] = changes(edit)
    assert line.startswith("listen: [{address: 127.0.0.1:8080, host: 127.0.0.1, port: 8080, ")
    assert "{address: 127.0.0.1:8081, " in line


def test_changes_an_admin_token_is_never_shown() -> None:
    secret = "0123456789abcdef-first"

    def first(data: Data) -> None:
        data["admin"] = {"address": "127.0.0.1:9090", "token": secret}

    def second(data: Data) -> None:
        data["admin"] = {"address": "127.0.0.1:9090", "token": secret + "-second"}

    assert config_changes(config(first), config(second)) == ["admin.token: changed (not shown)"]
    assert all(secret not in line for line in changes(first))


def test_changes_admin_and_workers() -> None:
    def edit(data: Data) -> None:
        data["admin"] = {"address": "127.0.0.1:9090"}
        data["workers"] = 2

    assert changes(edit) == [
        "admin: none -> {address: 127.0.0.1:9090, host: 127.0.0.1, port: 9090, token: (not shown)}",
        "workers: 1 -> 2",
    ]


# ---------------------------------------------------------------- routes


def test_changes_a_route_added() -> None:
    def edit(data: Data) -> None:
        data["routes"] = [*BASE["routes"], {"path": "/new", "pool": "chat"}]  # type: ignore[misc]

    assert changes(edit) == ["routes: added /new (pool chat)"]


def test_changes_a_route_removed() -> None:
    assert changes(lambda d: d.update(routes=[{"path": "/", "pool": "main"}])) == [
        "routes: removed chat.example.com/chat (pool chat)"
    ]


def test_changes_a_route_to_another_pool() -> None:
    def edit(data: Data) -> None:
        data["routes"] = [
            {"host": "chat.example.com", "path": "/chat", "pool": "main"},
            {"path": "/", "pool": "main"},
        ]

    assert changes(edit) == ["routes: chat.example.com/chat: pool chat -> main"]


def test_changes_routes_in_another_order() -> None:
    def edit(data: Data) -> None:
        data["routes"] = [
            {"path": "/", "pool": "main"},
            {"host": "chat.example.com", "path": "/chat", "pool": "chat"},
        ]

    assert changes(edit) == [
        "routes: order changed (the first match wins): /, chat.example.com/chat"
    ]


def test_changes_routes_that_hide_each_other_still_say_routes_changed() -> None:
    def twice(pool_name: str) -> Callable[[Data], None]:
        def edit(data: Data) -> None:
            data["routes"] = [{"path": "/", "pool": pool_name}, {"path": "/", "pool": "main"}]

        return edit

    assert config_changes(config(twice("main")), config(twice("chat"))) == ["routes: changed"]


# ---------------------------------------------------------------- pools and servers


def test_changes_a_pool_added() -> None:
    def edit(data: Data) -> None:
        section(data, "pools")["extra"] = {
            "balance": "least_connections",
            "servers": ["ws://127.0.0.1:9004", "ws://127.0.0.1:9005"],
        }

    assert changes(edit) == ["pools.extra: added (least_connections, 2 servers)"]


def test_changes_a_pool_removed() -> None:
    def edit(data: Data) -> None:
        data["routes"] = [{"path": "/", "pool": "main"}]
        del section(data, "pools")["chat"]

    assert changes(edit) == [
        "routes: removed chat.example.com/chat (pool chat)",
        "pools.chat: removed",
    ]


def test_changes_servers_added_and_removed() -> None:
    def edit(data: Data) -> None:
        pool(data, "main")["servers"] = [
            "ws://127.0.0.1:9001",
            "ws://127.0.0.1:9006",
            "ws://127.0.0.1:9007",
        ]
        pool(data, "chat")["servers"] = ["ws://127.0.0.1:9008"]

    assert changes(edit) == [
        "pools.main.servers: added ws://127.0.0.1:9006, ws://127.0.0.1:9007",
        "pools.main.servers: removed ws://127.0.0.1:9002",
        "pools.chat.servers: added ws://127.0.0.1:9008",
        "pools.chat.servers: removed ws://127.0.0.1:9003",
    ]


def test_changes_a_servers_weight() -> None:
    def edit(data: Data) -> None:
        pool(data, "main")["servers"] = [
            {"url": "ws://127.0.0.1:9001", "weight": 3},
            "ws://127.0.0.1:9002",
        ]

    assert changes(edit) == [
        "pools.main.servers: ws://127.0.0.1:9001 weight 1 -> 3",
        "pools.main.servers: ws://127.0.0.1:9002 weight 2 -> 1",
    ]


def test_changes_servers_reordered() -> None:
    def edit(data: Data) -> None:
        pool(data, "main")["servers"] = [
            {"url": "ws://127.0.0.1:9002", "weight": 2},
            "ws://127.0.0.1:9001",
        ]

    assert changes(edit) == [
        "pools.main.servers: order changed: ws://127.0.0.1:9002, ws://127.0.0.1:9001"
    ]


@pytest.mark.parametrize(
    ("keys", "line"),
    [
        ({"retries": 0}, "pools.main.retries: 2 -> 0"),
        ({"balance": "random"}, "pools.main.balance: round_robin -> random"),
        ({"balance": "hash", "hash_on": "ip"}, "pools.main.balance: round_robin -> hash"),
        ({"max_connections_per_server": 50}, "pools.main.max_connections_per_server: 0 -> 50"),
        ({"resolve_interval": 0}, "pools.main.resolve_interval: 30s -> 0"),
        (
            {"health_check": {"type": "http", "path": "/health"}},
            "pools.main.health_check: none -> {type: http, path: /health, interval: 5s, "
            "timeout: 2s, healthy_after: 2, unhealthy_after: 3, agent: false}",
        ),
        (
            {"rebalance": {}},
            "pools.main.rebalance: none -> {tolerance: 25%, rate: 10/s, min_age: 30s, "
            "close_code: 1012}",
        ),
    ],
)
def test_changes_pool_keys(keys: Data, line: str) -> None:
    assert line in changes(lambda d: pool(d, "main").update(keys))


def test_changes_hash_on_and_balance_together() -> None:
    assert changes(lambda d: pool(d, "main").update(balance="hash", hash_on="query:user")) == [
        "pools.main.balance: round_robin -> hash",
        "pools.main.hash_on: none -> query:user",
    ]


def test_changes_one_health_check_key() -> None:
    def check(interval: str) -> Callable[[Data], None]:
        check = {"interval": interval, "timeout": "100ms"}
        return lambda d: pool(d, "main").update(health_check=check)

    assert config_changes(config(check("5s")), config(check("250ms"))) == [
        "pools.main.health_check.interval: 5s -> 250ms"
    ]


def test_changes_rebalance_keys_as_the_file_writes_them() -> None:
    def rebalance(**keys: object) -> Callable[[Data], None]:
        return lambda d: pool(d, "main").update(rebalance=keys)

    assert config_changes(
        config(rebalance()), config(rebalance(tolerance="12.5%", rate="600/m", min_age="2m"))
    ) == [
        "pools.main.rebalance.tolerance: 25% -> 12.5%",
        "pools.main.rebalance.min_age: 30s -> 2m",
    ]
    assert config_changes(config(rebalance()), config(rebalance(rate="0.5/s"))) == [
        "pools.main.rebalance.rate: 10/s -> 0.5/s"
    ]


def test_changes_never_show_a_cookie_secret() -> None:
    def sticky(secret: str) -> Callable[[Data], None]:
        return lambda d: pool(d, "main").update(
            balance="cookie", cookie={"name": "s", "secret": secret}
        )

    before = config(sticky("0123456789abcdef-old"))
    assert config_changes(before, config(sticky("0123456789abcdef-new"))) == [
        "pools.main.cookie.secret: changed (not shown)"
    ]
    lines = config_changes(config(), before)
    assert "pools.main.cookie.secret: changed (not shown)" in lines
    assert not any("0123456789abcdef" in line for line in lines)


def test_changes_never_show_a_secret_inside_a_section_shown_whole() -> None:
    assert (
        show(
            "cookie",
            config(
                lambda d: pool(d, "main").update(
                    balance="cookie", cookie={"secret": "0123456789abcdef-x"}
                )
            )
            .pools["main"]
            .cookie,
        )
        == "{name: wsproxy_server, secret: (not shown)}"
    )


# ---------------------------------------------------------------- values as the file writes them


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0"),
        (512, "512"),
        (1024, "1KiB"),
        (1536, "1536"),
        (16384, "16KiB"),
        (1048576, "1MiB"),
        (3 * 1024**3, "3GiB"),
        (1024**3 + 1024, "1048577KiB"),
    ],
)
def test_changes_size_text(size: int, text: str) -> None:
    assert size_text(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0"),
        (0.25, "250ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (90.0, "90s"),
        (120.0, "2m"),
        (3600.0, "1h"),
        (5400.0, "90m"),
        (0.0005, "0.5ms"),
        (0.0001, "0.1ms"),
    ],
)
def test_changes_duration_text(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [
        ("x", None, "none"),
        ("x", True, "true"),
        ("x", 7, "7"),
        ("max_message_size", 2048, "2KiB"),
        ("x", ("a", "b"), "[a, b]"),
        ("x", "text", "text"),
        ("x", 2.0, "2s"),
    ],
)
def test_changes_show(name: str, value: object, text: str) -> None:
    assert show(name, value) == text
