"""wsproxy/snapshot.py: one builder for what a configuration is served with, the settings a
reload cannot change, and the retirement of servers a new snapshot no longer lists."""

from __future__ import annotations

import dataclasses
import os

import pytest

from tests.conftest import proxy_config
from wsproxy.config import Config, ConfigError, parse_config
from wsproxy.servers import ServerStates
from wsproxy.snapshot import build_snapshot, restartless, retire


def two_pools(extra_listen: str = "", servers: str = "ws://10.0.0.1:9000") -> Config:
    return parse_config(
        f"""
listen:
  - address: 127.0.0.1:0
{extra_listen}
security: {{allowed_origins: ["*"]}}
routes: [{{path: /a, pool: a}}, {{path: /b, pool: b}}]
pools:
  a: {{servers: [{servers}]}}
  b: {{servers: ["wss://10.0.0.2:9443"]}}
""",
        os.environ,
    )


def test_snapshot_holds_a_balancer_per_pool_and_a_context_per_tls_need() -> None:
    servers = ServerStates()
    snapshot = build_snapshot(two_pools(), servers)
    assert sorted(snapshot.balancers) == ["a", "b"]
    assert snapshot.listener_tls == (None,)  # a plain listener
    assert sorted(snapshot.pool_tls) == ["b"]  # only the pool with wss:// servers
    assert len(servers) == 2  # the balancers keep their state in the registry given
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.config = two_pools()  # type: ignore[misc]
    with pytest.raises(TypeError):
        snapshot.balancers["c"] = snapshot.balancers["a"]  # type: ignore[index]


def test_snapshot_builder_refuses_an_unusable_certificate_with_its_setting() -> None:
    config = two_pools("  - {address: 127.0.0.1:1, tls: {cert: /nonexistent.pem, key: /no.key}}")
    with pytest.raises(ConfigError) as raised:
        build_snapshot(config)
    assert raised.value.problems == ["listen[1].tls: /nonexistent.pem: no such file"]


def test_snapshot_states_are_kept_across_two_builds_on_one_registry() -> None:
    servers = ServerStates()
    first = build_snapshot(two_pools(), servers)
    second = build_snapshot(two_pools(), servers)
    assert first.balancers["a"].servers[0] is second.balancers["a"].servers[0]


def test_snapshot_restartless_keeps_addresses_admin_and_workers() -> None:
    old = proxy_config("ws://127.0.0.1:9")
    moved = parse_config(
        """
listen: [{address: 127.0.0.1:8081}]
admin: {address: 127.0.0.1:0}
workers: 3
security: {allowed_origins: ["*"]}
routes: [{path: /, pool: main}]
pools: {main: {servers: ["ws://127.0.0.1:10"]}}
""",
        os.environ,
    )
    kept, names = restartless(old, moved)
    assert names == ["listen addresses", "admin", "workers"]
    assert (kept.listen, kept.admin, kept.workers) == (old.listen, old.admin, old.workers)
    assert kept.pools == moved.pools  # the rest is the new file's
    assert restartless(old, old) == (old, [])


def test_snapshot_retire_keeps_busy_servers_visible_and_drops_idle_ones() -> None:
    servers = ServerStates()
    old = build_snapshot(two_pools(servers='"ws://10.0.0.1:9000", "ws://10.0.0.3:9000"'), servers)
    busy, idle = old.balancers["a"].servers
    busy.sessions = 1
    new = build_snapshot(two_pools(servers='"ws://10.0.0.4:9000"'), servers)
    retire(old, new, servers)
    assert (busy.listed, idle.listed) == (False, False)
    assert new.balancers["a"].retired == [busy]  # counted in its pool until its session ends
    assert len(servers) == 3  # b's server, the new one and the busy one; the idle one dropped


@pytest.mark.parametrize(
    ("check", "forgotten"),
    [
        ("", True),  # no check at all
        ("health_check: {type: http}", True),  # a check, but no agent
        ("health_check: {type: http, agent: true}", False),
    ],
)
def test_snapshot_retire_forgets_what_agents_said_once_the_pool_reads_no_agent(
    check: str, forgotten: bool
) -> None:
    def config(pool_check: str) -> Config:
        text = f"""
listen: [{{address: 127.0.0.1:0}}]
security: {{allowed_origins: ["*"]}}
routes: [{{path: /, pool: main}}]
pools: {{main: {{servers: ["ws://10.0.0.1:9000", "ws://10.0.0.2:9000"], {pool_check}}}}}
"""
        return parse_config(text, os.environ)

    servers = ServerStates()
    old = build_snapshot(config("health_check: {type: http, agent: true}"), servers)
    reported, drained = old.balancers["main"].servers
    reported.agent_weight = 0
    reported.start_drain("agent", 30.0, 1012, 0.0)
    drained.start_drain("admin", 30.0, 1012, 0.0)
    new = build_snapshot(config(check), servers)
    retire(old, new, servers)
    assert (reported.agent_weight is None, reported.drain is None) == (forgotten, forgotten)
    assert drained.draining, "an operator's drain is no agent's to forget"
