"""YAML text to plain data: the config file's syntax, before anything reads meaning into it.

Invariants:
- Only plain data comes out: dicts with string keys, lists, str, int, float, bool and None. An
  alias is read again as a copy. No tag ever builds a Python object; an unknown tag is a problem.
- Scalars are YAML 1.2 core schema (`yes`/`on` and `1:30` stay strings, `012` is 12), not
  PyYAML's YAML 1.1.
- A duplicate key is a problem, not a silent overwrite.
- `${NAME}` / `${NAME:-default}` are substituted into string scalars after parsing, so the
  environment can never inject YAML structure, and a substituted value is never substituted again.
- Problems are collected, each led by its dotted path (`pools.chat.servers[1]`), and the walk goes
  on; a value with a reported problem comes back as `UNRESOLVED`. Text that is not one YAML
  document is the single exception: `ComposeError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

import yaml

_TAG: Final = "tag:yaml.org,2002:"
# YAML 1.2's core schema; PyYAML's own resolvers are YAML 1.1 (yes/on/off, 1:30 = 90, dates).
_SCALARS: Final = {
    "null": re.compile(r"~|null|Null|NULL|"),
    "bool": re.compile(r"true|True|TRUE|false|False|FALSE"),
    "int": re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+"),
    "float": re.compile(
        r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
        r"|\.(?:nan|NaN|NAN)"
    ),
}
_MAX_VALUES: Final = 100_000  # aliases of aliases could otherwise expand without bound
_REFERENCE: Final = re.compile(r"\$\{(?:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})?")


class ComposeError(Exception):
    """The text is not one YAML document; `problem` is the one sentence that says why."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class _Unresolved:
    """A value whose problem is already reported (an unset variable, a bad tag): skip it."""


UNRESOLVED: Final = _Unresolved()


def join(path: str, key: str) -> str:
    """The dotted path of `key` inside `path` (the top level's path is "")."""
    return f"{path}.{key}" if path else key


class Problems:
    """Collects problem lines into a shared list, each led by its dotted path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}" if path else message)


def read(text: str, env: Mapping[str, str], problems: list[str]) -> object:
    """The plain data of YAML `text` with `env` substituted; its problems go to `problems`.

    Raises `ComposeError` if the text is not one YAML document (a syntax error, a character YAML
    does not allow, or nothing but comments). An empty document (`---`, `~`) reads as None.
    """
    return _Reader(env, problems).value(_compose(text), "")


class _Loader(yaml.SafeLoader):
    """Composes nodes only (`_Reader` turns them into plain data), resolving YAML 1.2 scalars."""

    # Replaces the inherited YAML 1.1 table; the key None means "whatever the first character".
    yaml_implicit_resolvers = {  # noqa: RUF012
        None: [(_TAG + kind, re.compile(rf"(?:{p.pattern})\Z")) for kind, p in _SCALARS.items()]
    }


def _compose(text: str) -> yaml.Node:
    """The document's node tree; a syntax error or an empty file is a `ComposeError`."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        message = f"{exc.context}, {exc.problem}" if exc.context else str(exc.problem)
        mark = exc.problem_mark or exc.context_mark or yaml.Mark("", 0, 0, 0, None, 0)
        at = f"line {mark.line + 1}, column {mark.column + 1}"
        if text[mark.index : mark.index + 1] == "\t":
            message = "a tab character where YAML allows none: indent with spaces, not tabs"
        raise ComposeError(f"{at}: {message}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        raise ComposeError(
            f"line {line}, column {column}: character #x{exc.character:04x}: {exc.reason}"
        ) from None
    if node is None:
        raise ComposeError("the file is empty")
    return node


class _Reader(Problems):
    """Nodes → dicts, lists, str, int, float, bool and None; substitutes `${ENV}` into strings."""

    def __init__(self, env: Mapping[str, str], problems: list[str]) -> None:
        super().__init__(problems)
        self.env = env
        self.active: set[int] = set()  # ids of the nodes being read: an alias may not loop
        self.count = 0

    def value(self, node: yaml.Node, path: str) -> object:
        self.count += 1
        if self.count > _MAX_VALUES:
            if self.count == _MAX_VALUES + 1:
                self.problem(path, f"the file holds more than {_MAX_VALUES} values")
            return UNRESOLVED
        if id(node) in self.active:
            self.problem(path, "an alias refers to the value that contains it")
            return UNRESOLVED
        self.active.add(id(node))
        try:
            return self._value(node, path)
        finally:
            self.active.discard(id(node))

    def _value(self, node: yaml.Node, path: str) -> object:
        kind = node.tag.removeprefix(_TAG)
        if isinstance(node, yaml.MappingNode) and kind == "map":
            return self.mapping(node, path)
        if isinstance(node, yaml.SequenceNode) and kind == "seq":
            return [self.value(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        if isinstance(node, yaml.ScalarNode):
            text: str = node.value
            if kind == "str":
                return self.substitute(text, path)
            if kind == "null":
                return None
            pattern = _SCALARS.get(kind)
            if pattern is not None and pattern.fullmatch(text):
                if kind == "bool":
                    return text.lower() == "true"
                if kind == "int":
                    base = {"0o": 8, "0x": 16}.get(text[:2], 10)
                    return int(text[2:] if base != 10 else text, base)
                return float(text.replace(".", "") if text[-1].isalpha() else text)
            if pattern is not None:
                self.problem(path, f"{text!r} is not a valid !!{kind}")
                return UNRESOLVED
        shown = "!!" + kind if node.tag.startswith(_TAG) else node.tag
        self.problem(path, f"the YAML tag {shown} is not supported here")
        return UNRESOLVED

    def mapping(self, node: yaml.MappingNode, path: str) -> dict[str, object]:
        result: dict[str, object] = {}
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                self.problem(path, f"the key on line {line} is not a plain name")
                continue
            key: str = key_node.value
            if key in lines:
                self.problem(join(path, key), f"duplicate key (first on line {lines[key]})")
                continue
            lines[key] = key_node.start_mark.line + 1
            result[key] = self.value(value_node, join(path, key))
        return result

    def substitute(self, text: str, path: str) -> object:
        failed = False

        def replace(match: re.Match[str]) -> str:
            nonlocal failed
            name, default = match[1], match[2]
            if name is None:
                self.problem(path, "a '${' that is neither ${NAME} nor ${NAME:-default}")
            elif self.env.get(name) or (name in self.env and default is None):
                return self.env[name]
            elif default is not None:
                return default
            else:
                self.problem(path, f"environment variable {name} is not set")
            failed = True
            return ""

        result = _REFERENCE.sub(replace, text)
        return UNRESOLVED if failed else result
