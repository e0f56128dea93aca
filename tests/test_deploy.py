"""deploy/kubernetes.yaml: the configuration it carries is valid, and its ports, probe paths and
grace period agree with that configuration."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from wsproxy.config import Config, parse_config
from wsproxy.relay import CLOSE_TIMEOUT

MANIFEST = Path(__file__).parents[1] / "deploy" / "kubernetes.yaml"


def documents() -> dict[str, dict[str, Any]]:
    """The manifest's documents by kind."""
    found = {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}
    assert sorted(found) == ["ConfigMap", "Deployment", "Service"]
    return found


@pytest.fixture
def manifest() -> dict[str, dict[str, Any]]:
    return documents()


@pytest.fixture
def config(manifest: dict[str, dict[str, Any]]) -> Config:
    return parse_config(manifest["ConfigMap"]["data"]["config.yaml"], {})


@pytest.fixture
def container(manifest: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = manifest["Deployment"]["spec"]["template"]["spec"]["containers"]
    return dict(only)


def port_of(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


def test_deploy_configmap_is_a_valid_config_with_an_admin_endpoint(config: Config) -> None:
    assert config.admin is not None
    assert config.admin.host == "0.0.0.0", "the kubelet probes the pod's address"
    (listen,) = config.listen
    assert listen.host == "0.0.0.0"


def test_deploy_container_ports_are_the_configured_ones(
    config: Config, container: dict[str, Any]
) -> None:
    assert config.admin is not None
    assert port_of(container, "ws") == config.listen[0].port
    assert port_of(container, "admin") == config.admin.port


def test_deploy_probes_use_the_admin_endpoint(container: dict[str, Any]) -> None:
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}


def test_deploy_the_config_is_mounted_where_the_command_reads_it(
    manifest: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    args = container["args"]
    assert args[:2] == ["serve", "-c"]
    config_path = Path(args[2])
    (mount,) = container["volumeMounts"]
    assert Path(mount["mountPath"]) == config_path.parent
    (volume,) = manifest["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert volume["name"] == mount["name"]
    assert volume["configMap"]["name"] == manifest["ConfigMap"]["metadata"]["name"]
    assert config_path.name in manifest["ConfigMap"]["data"]


def test_deploy_grace_period_outlasts_prestop_drain_and_paced_closes(
    manifest: dict[str, dict[str, Any]], config: Config, container: dict[str, Any]
) -> None:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    needed = float(command[1]) + config.shutdown.drain_timeout + config.shutdown.close_window
    grace = manifest["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > needed + CLOSE_TIMEOUT


def test_deploy_service_sends_to_the_proxy_port_only(
    manifest: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    service = manifest["Service"]["spec"]
    assert service["selector"] == manifest["Deployment"]["spec"]["selector"]["matchLabels"]
    assert [p["targetPort"] for p in service["ports"]] == ["ws"], "the admin port stays private"
    assert [p["name"] for p in container["ports"]] == ["ws", "admin"]


def dockerfile_user() -> tuple[str, int]:
    """The Dockerfile's last `USER`, and the uid its `useradd --uid` gives that user."""
    dockerfile = (MANIFEST.parents[1] / "Dockerfile").read_text()
    instructions = [line.strip().partition(" ")[::2] for line in dockerfile.splitlines()]
    name = [rest.strip() for word, rest in instructions if word == "USER"][-1]
    uids: dict[str, int] = {}
    for word, rest in instructions:
        for command in rest.split("&&") if word == "RUN" else ():
            args = shlex.split(command)
            if args[:1] == ["useradd"]:
                uids[args[-1]] = int(args[args.index("--uid") + 1])
    return name, uids[name]


def test_deploy_runs_as_the_images_non_root_user(manifest: dict[str, dict[str, Any]]) -> None:
    """The pod runs as the uid the image creates its user with, and that uid is not root's."""
    _, uid = dockerfile_user()
    assert uid != 0
    context = manifest["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == uid
