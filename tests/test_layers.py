"""The package layers and import rules of docs/development.md, checked on the source (no import is executed).

- No cycle between packages (a package's modules may import each other; two packages may not need each other).
- core/ and protocol/ are pure: they import neither os nor trio (nor anything that does I/O for them).
- host/ never imports runtime/: host effects do not know about the connection.
- No module name is used twice for different things (the file's base name is unique in the agent).
- Every package has a layer (LAYERS) and imports only packages of lower layers: nothing imports upwards, and the
  packages that share a layer do not import each other.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "agent" / "p0_ssh_agent"
PURE_PACKAGES = ("core", "protocol")
IMPURE_MODULES = {"os", "trio", "socket", "subprocess", "pathlib", "shutil", "pwd", "grp", "fcntl", "threading"}
FORBIDDEN_PACKAGE_IMPORTS = {"host": {"runtime", "cli", "provisioning", "diagnostics"}}
# docs/development.md draws these: a package may import only packages of a lower layer. A top-level module
# (errors.py, _version.py) counts as a package of its own.
LAYERS: dict[str, int] = {
    "_version": 0,
    "errors": 0,
    "adapters": 1,
    "config": 1,
    "core": 1,
    "identity": 1,
    "protocol": 1,
    "host": 2,
    "provisioning": 3,
    "agent_access": 3,
    "runtime": 4,
    "devbackend": 5,
    "diagnostics": 5,
    "cli": 6,
    "__init__": 7,
    "__main__": 7,
}


def _modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(PACKAGE_ROOT).with_suffix("").parts): path
        for path in sorted(PACKAGE_ROOT.rglob("*.py"))
    }


def _package(module: str) -> str:
    """The layer a module belongs to: its first dotted part; a top-level module counts as its own package."""
    return module.split(".", maxsplit=1)[0]


def _imports(path: Path) -> set[str]:
    """Every absolute module name the file imports, at any depth (function-local imports count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _internal_imports(path: Path, known: set[str]) -> set[str]:
    """The agent's own modules the file imports; importing a package (`from p0_ssh_agent.config import X`) counts as
    importing its __init__."""
    prefix = "p0_ssh_agent."
    found: set[str] = set()
    for name in _imports(path):
        if not name.startswith(prefix):
            continue
        module = name[len(prefix) :]
        if module in known:
            found.add(module)
        elif f"{module}.__init__" in known:
            found.add(f"{module}.__init__")
    return found


def package_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        source = _package(module)
        for target in _internal_imports(path, known):
            if _package(target) != source:
                graph[source].add(_package(target))
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    for start in sorted(graph):
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for target in sorted(graph.get(node, ())):
                if target == start:
                    found.append([*path, start])
                elif target not in path and target > start:  # each cycle once, from its smallest member
                    stack.append((target, [*path, target]))
    return found


def test_no_package_imports_a_package_that_imports_it_back() -> None:
    assert _cycles(package_graph()) == []


def test_core_and_protocol_do_no_io() -> None:
    offenders = {
        module: sorted({name.split(".")[0] for name in _imports(path)} & IMPURE_MODULES)
        for module, path in _modules().items()
        if _package(module) in PURE_PACKAGES
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_host_never_imports_the_layers_above_it() -> None:
    modules = _modules()
    known = set(modules)
    offenders = {
        module: sorted(_package(target) for target in _internal_imports(path, known) if _package(target) in banned)
        for module, path in modules.items()
        if (banned := FORBIDDEN_PACKAGE_IMPORTS.get(_package(module)))
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def _not_downward(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """Every package import that goes up a layer or sideways within one."""
    return sorted(f"{s} -> {t}" for s, targets in graph.items() for t in targets if layers[t] >= layers[s])


def test_every_package_imports_only_lower_layers() -> None:
    packages = {_package(module) for module in _modules()}
    assert sorted(packages - set(LAYERS)) == [], "a new package: give it a layer in LAYERS and docs/development.md"
    assert _not_downward(package_graph(), LAYERS) == []


def test_the_layer_rule_can_fail() -> None:
    assert _not_downward({"host": {"runtime"}, "core": {"config"}}, LAYERS) == ["core -> config", "host -> runtime"]


def test_no_module_name_is_used_twice() -> None:
    by_name: dict[str, list[str]] = defaultdict(list)
    for module in _modules():
        base = module.rsplit(".", 1)[-1]
        if base not in ("__init__", "__main__"):
            by_name[base].append(module)
    assert {name: places for name, places in by_name.items() if len(places) > 1} == {}


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The rule above must be able to fail: a two-package and a three-package cycle are both found."""
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
