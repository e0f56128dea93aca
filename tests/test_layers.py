"""The dependency direction of STYLE.md section 2: imports only point down the layers.

Layers: (1) config, units, yamldata; (2) the pure modules; (3) the per-connection I/O
modules; (4) the process modules; (5) cli and `__main__`. A module may import from its own
layer or below, and nothing but `__main__` imports `cli`. The pure modules (layers 1 and 2)
must not pull in trio or socket: that is checked statically here, and for real by importing
each one in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parent.parent
PACKAGE: Final = ROOT / "wsproxy"

# The package's `__init__` holds only the version string: anything may import it.
LAYERS: Final = {
    "__init__": 0,
    "config": 1,
    "units": 1,
    "yamldata": 1,
    "frames": 2,
    "closes": 2,
    "handshake": 2,
    "balancer": 2,
    "affinity": 2,
    "agent": 2,
    "servers": 2,
    "logs": 2,
    "metrics": 2,
    "proxyproto": 2,
    "changes": 2,
    "adminapi": 2,  # the admin endpoint's sessions and actions as data
    "page": 2,  # the status page's HTML text
    "history": 2,  # the ring of session samples behind the page's chart
    "rebalance": 2,
    "ratelimit": 2,  # token buckets for the rate limits
    "keepalive": 2,  # a session's keepalive and idle clocks, decided
    "batching": 2,  # when the parker's next round of reads may start, decided
    "wire": 3,
    "legs": 3,  # one connection of a session, as the relay keeps it
    "relay": 3,
    "upstream": 3,
    "intake": 3,
    "http1": 3,
    "timers": 3,  # every session's keepalive and idle clocks (STYLE.md's keepalive.py)
    "parking": 3,  # idle sessions, parked without their pump tasks
    "health": 3,
    "discovery": 3,
    "tls": 3,
    "listening": 3,
    "signals": 3,
    "snapshot": 3,
    "registry": 3,
    "admission": 3,
    "drains": 3,
    "actions": 3,  # the admin endpoint's actions on one process
    "rebalancing": 3,
    "server": 4,
    "echo": 4,
    "admin": 4,
    "fleet": 4,
    "workers": 4,
    "client": 4,
    "demo": 4,
    "adminclient": 4,  # `wsproxy admin`'s side of the endpoint
    "cli": 5,
    "__main__": 5,
}
PURE_LAYER: Final = 2
# Modules that do I/O: the pure layers may not import them, even indirectly.
IO_MODULES: Final = ("trio", "socket", "ssl", "selectors", "asyncio")

MODULES: Final = sorted(path.stem for path in PACKAGE.glob("*.py"))
PURE: Final = [name for name in MODULES if LAYERS.get(name, 99) <= PURE_LAYER]


def wsproxy_imports(source: str, submodules: set[str]) -> list[tuple[int, str]]:
    """(line, module) for every import of a wsproxy module in `source`, however it is written.

    `module` is the name within the package (`"__init__"` for the package itself); imports
    inside functions and `if TYPE_CHECKING:` blocks count too.
    """
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "wsproxy":
                    found.append((node.lineno, parts[1] if len(parts) > 1 else "__init__"))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module is not None:
                parts = node.module.split(".")
                if parts[0] != "wsproxy":
                    continue
                parts = parts[1:]
            else:  # relative: `from . import x` or `from .x import y`
                parts = node.module.split(".") if node.module else []
            if parts:
                found.append((node.lineno, parts[0]))
                continue
            for alias in node.names:
                name = alias.name if alias.name in submodules else "__init__"
                found.append((node.lineno, name))
    return found


def external_imports(source: str) -> set[str]:
    """The top-level names of every absolute import in `source` (`trio` for `trio.socket`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            names.add(node.module.split(".")[0])
    return names


def imports_of(name: str) -> list[tuple[int, str]]:
    source = (PACKAGE / f"{name}.py").read_text(encoding="utf-8")
    return wsproxy_imports(source, set(MODULES))


# --- the checker itself ------------------------------------------------------------------------


def test_layers_checker_sees_every_import_form() -> None:
    source = """
import wsproxy
import wsproxy.relay
import wsproxy.server as srv
from wsproxy import __version__, cli
from wsproxy.config import Config
from . import frames
from .echo import serve_echo
import trio

def later():
    from wsproxy.upstream import open_backend
"""
    found = wsproxy_imports(source, {"relay", "server", "cli", "config", "frames", "echo"})
    assert sorted(found) == [
        (2, "__init__"),
        (3, "relay"),
        (4, "server"),
        (5, "__init__"),
        (5, "cli"),
        (6, "config"),
        (7, "frames"),
        (8, "echo"),
        (12, "upstream"),
    ]
    assert external_imports(source) == {"wsproxy", "trio"}


def test_layers_the_expected_modules_exist() -> None:
    expected = {"config", "units", "frames", "closes", "handshake", "balancer", "logs"}
    assert expected <= set(PURE)
    assert {"wire", "relay", "upstream", "server", "echo", "cli", "__main__"} <= set(MODULES)


# --- the rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODULES)
def test_layers_every_module_has_a_layer(name: str) -> None:
    assert name in LAYERS, f"wsproxy/{name}.py has no layer: place it in STYLE.md section 2"


@pytest.mark.parametrize("name", MODULES)
def test_layers_imports_point_down(name: str) -> None:
    layer = LAYERS.get(name, 0)
    upward = [
        f"wsproxy/{name}.py:{line} imports {target} (layer {LAYERS.get(target)})"
        for line, target in imports_of(name)
        if LAYERS.get(target, 99) > layer
    ]
    assert not upward, f"{name} is in layer {layer}; " + "; ".join(upward)


def test_layers_nothing_but_main_imports_cli() -> None:
    importers = {name for name in MODULES if any(t == "cli" for _, t in imports_of(name))}
    assert importers <= {"__main__"}
    assert not [name for name in MODULES if any(t == "__main__" for _, t in imports_of(name))]


def test_layers_package_init_imports_no_module() -> None:
    assert imports_of("__init__") == []


@pytest.mark.parametrize("name", PURE)
def test_layers_pure_module_imports_no_io_module(name: str) -> None:
    source = (PACKAGE / f"{name}.py").read_text(encoding="utf-8")
    assert not external_imports(source) & set(IO_MODULES)


@pytest.mark.parametrize("name", PURE)
def test_layers_pure_module_loads_no_trio_or_socket(name: str) -> None:
    """Imported alone in a fresh interpreter, a pure module leaves trio and socket unloaded."""
    module = "wsproxy" if name == "__init__" else f"wsproxy.{name}"
    io_layers = [f"wsproxy.{n}" for n, layer in LAYERS.items() if layer > PURE_LAYER]
    code = (
        "import importlib, json, sys\n"
        f"module = importlib.import_module({module!r})\n"
        f"loaded = [m for m in {[*IO_MODULES, *io_layers]!r} if m in sys.modules]\n"
        "print(json.dumps([module.__file__, loaded]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    path, loaded = json.loads(done.stdout)
    assert Path(path).resolve().parent == PACKAGE  # this checkout, not an installed copy
    assert "trio" not in loaded
    assert loaded == []
