"""What a reload changed: two `Config` snapshots in, one readable line per change out.

Invariants:
- Pure: no I/O, no logging; `config_changes(old, new)` is `[]` exactly when `old == new`.
- Each line starts with the dotted path of what changed, as the YAML file spells it
  (`security.max_message_size: 1MiB -> 2MiB`), and shows values as the file would write them:
  sizes in KiB/MiB/GiB, durations in ms/s/m/h, percentages with %, rates per second,
  booleans as true/false, absent as none.
- Routes are matched by host and path, pools by name and servers by URL, so an added or
  removed one is named as such rather than as a list that differs.
- A secret is never shown, only that it changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Final, TypeGuard

from wsproxy.config import Config, Pool, Route, Server
from wsproxy.units import GIB, KIB, MIB

_SECRETS: Final = frozenset({"secret", "token"})
_SIZE_UNITS: Final = ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB"))
_TIME_UNITS: Final = ((3600.0, "h"), (60.0, "m"), (1.0, "s"))


def config_changes(old: Config, new: Config) -> list[str]:
    """One line per difference between `old` and `new`, in the order of the file's sections."""
    lines: list[str] = []
    for item in dataclasses.fields(Config):
        before, after = getattr(old, item.name), getattr(new, item.name)
        if before == after:
            continue
        if item.name == "routes":
            found = list(_routes(before, after))
        elif item.name == "pools":
            found = list(_pools(before, after))
        else:
            found = list(_value(item.name, item.name, before, after))
        # Two routes (or servers) with the same host and path (or URL) hide each other.
        lines += found or [f"{item.name}: changed"]
    return lines


def _routes(old: tuple[Route, ...], new: tuple[Route, ...]) -> Iterator[str]:
    before = {(r.host, r.path): r for r in old}
    after = {(r.host, r.path): r for r in new}
    for key, route in after.items():
        if key not in before:
            yield f"routes: added {_route(route)} (pool {route.pool})"
        elif before[key].pool != route.pool:
            yield f"routes: {_route(route)}: pool {before[key].pool} -> {route.pool}"
    for key, route in before.items():
        if key not in after:
            yield f"routes: removed {_route(route)} (pool {route.pool})"
    kept_before = [key for key in before if key in after]
    kept_after = [key for key in after if key in before]
    if kept_before != kept_after:
        order = ", ".join(_route(after[key]) for key in kept_after)
        yield f"routes: order changed (the first match wins): {order}"


def _route(route: Route) -> str:
    return f"{route.host}{route.path}" if route.host else route.path


def _pools(old: Mapping[str, Pool], new: Mapping[str, Pool]) -> Iterator[str]:
    for name, pool in new.items():
        path = f"pools.{name}"
        if name not in old:
            servers = _count(len(pool.servers), "server")
            yield f"{path}: added ({pool.balance}, {servers})"
            continue
        previous = old[name]
        yield from _servers(f"{path}.servers", previous.servers, pool.servers)
        for item in dataclasses.fields(Pool):
            if item.name in ("name", "servers"):
                continue
            before, after = getattr(previous, item.name), getattr(pool, item.name)
            if before != after:
                yield from _value(f"{path}.{item.name}", item.name, before, after)
    for name in old:
        if name not in new:
            yield f"pools.{name}: removed"


def _servers(path: str, old: tuple[Server, ...], new: tuple[Server, ...]) -> Iterator[str]:
    before = {server.url: server for server in old}
    after = {server.url: server for server in new}
    added = [url for url in after if url not in before]
    removed = [url for url in before if url not in after]
    if added:
        yield f"{path}: added {', '.join(added)}"
    if removed:
        yield f"{path}: removed {', '.join(removed)}"
    for url, server in after.items():
        if url in before and before[url].weight != server.weight:
            yield f"{path}: {url} weight {before[url].weight} -> {server.weight}"
    if [url for url in before if url in after] != [url for url in after if url in before]:
        yield f"{path}: order changed: {', '.join(after)}"


def _value(path: str, name: str, old: object, new: object) -> Iterator[str]:
    """The lines for one field that differs: a section field by field, anything else whole."""
    if name in _SECRETS:
        yield f"{path}: changed (not shown)"
    elif _is_section(old) and _is_section(new) and type(old) is type(new):
        for item in dataclasses.fields(old):  # type: ignore[arg-type]
            before, after = getattr(old, item.name), getattr(new, item.name)
            if before != after:
                yield from _value(f"{path}.{item.name}", item.name, before, after)
    elif _is_list_of_sections(old) and _is_list_of_sections(new) and len(old) == len(new):
        for index, (before, after) in enumerate(zip(old, new, strict=True)):
            if before != after:
                yield from _value(f"{path}[{index}]", name, before, after)
    elif _is_list_of_text(old) and _is_list_of_text(new) and set(old) != set(new):
        added = [item for item in new if item not in old]
        removed = [item for item in old if item not in new]
        parts = ([f"added {', '.join(added)}"] if added else []) + (
            [f"removed {', '.join(removed)}"] if removed else []
        )
        yield f"{path}: {'; '.join(parts)}"
    else:
        yield f"{path}: {show(name, old)} -> {show(name, new)}"


def _is_section(value: object) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _is_list_of_sections(value: object) -> TypeGuard[tuple[object, ...]]:
    return isinstance(value, tuple) and all(_is_section(item) for item in value)


def _is_list_of_text(value: object) -> TypeGuard[tuple[str, ...]]:
    return isinstance(value, tuple) and all(isinstance(item, str) for item in value)


def show(name: str, value: object) -> str:
    """`value` of the field `name` as the configuration file would write it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and name == "tolerance":
        return f"{value * 100:g}%"
    if isinstance(value, float) and name == "rate":
        return f"{value:g}/s"
    if isinstance(value, float):
        return duration_text(value)
    if isinstance(value, int) and name.endswith("_size"):
        return size_text(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(show(name, item) for item in value) + "]"
    if _is_section(value):
        shown = (
            f"{item.name}: "
            + (
                "(not shown)"
                if item.name in _SECRETS
                else show(item.name, getattr(value, item.name))
            )
            for item in dataclasses.fields(value)  # type: ignore[arg-type]
        )
        return "{" + ", ".join(shown) + "}"
    return str(value)


def size_text(size: int) -> str:
    """Bytes in the largest binary unit that divides them: 1048576 → "1MiB", 1000 → "1000"."""
    for unit, suffix in _SIZE_UNITS:
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def duration_text(seconds: float) -> str:
    """Seconds in the largest unit that divides them (600.0 → "10m"), under a second in
    milliseconds (0.25 → "250ms", 0.0001 → "0.1ms"), else in seconds (1.5 → "1.5s")."""
    if seconds == 0:
        return "0"
    for unit, suffix in _TIME_UNITS:
        count = seconds / unit
        if count >= 1 and count == int(count):
            return f"{int(count)}{suffix}"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
