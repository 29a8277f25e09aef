"""Every package's public face, in the style of trio's `_tests/test_exports.py`.

Read from the source with `ast` (nothing is imported for the import checks, so an import inside a function counts as
much as one at the top):
- no package imports another package's private module (a `_`-prefixed part of the module path; `__init__` and
  `__main__` are not private): other packages use `lodestore.storage`, never `lodestore.storage._transport` nor
  `lodestore.storage.datastore._client`;
- the layers point one way: storage <- actors <- coordinator <- the Store API (`lodestore/_store.py`) <- sim; bench
  may use any of them; nothing imports `tests`. The face `lodestore/__init__.py` re-exports the Store API and the
  public layers (it loads `lodestore.sim` by name, on first use);
- no package reaches into another package's private attributes (`server.datastores._gate`): a heuristic, since the
  type of an object is not in the source: `obj._name`, `obj` not `self` or `cls`, where `_name` is a private
  attribute, method or module-level name defined in another package and nowhere in the package that uses it;
- every name in an `__all__` resolves, and every public name a package's `__init__` imports is in its `__all__`.
Tests may reach into private modules (they test packages from inside); packages may not.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("storage", "actors", "coordinator", "sim", "bench", "lodestore")

# What each layer may import (besides itself). "store" is the Store API (`lodestore._store`, exported from the face
# `lodestore`); "face" is `lodestore/__init__.py`.
LAYERS = ("storage", "actors", "coordinator", "store", "sim", "bench")
ALLOWED = {
    "storage": set(),
    "actors": {"storage"},
    "coordinator": {"storage", "actors"},
    "store": {"storage", "actors", "coordinator"},
    "sim": {"storage", "actors", "coordinator", "store"},
    "bench": {"storage", "actors", "coordinator", "store", "sim"},
    "face": {"storage", "actors", "coordinator", "store"},
}


@dataclass(frozen=True)
class Module:
    name: str      # "lodestore.storage._world"
    path: Path
    is_package: bool

    @property
    def where(self) -> str:
        return str(self.path.relative_to(ROOT))


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] != "lodestore":
        parts.insert(0, "lodestore")   # setuptools maps storage/ to lodestore.storage, and so on
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _modules() -> list[Module]:
    found = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            name, is_package = _module_name(path)
            found.append(Module(name, path, is_package))
    return found


MODULES = _modules()
BY_NAME = {m.name: m for m in MODULES}


def package_of(module: str) -> str:
    """The package a module belongs to: "storage" for `lodestore.storage.datastore._client`, "lodestore" for the
    face and the Store API, "tests" for the tests, the module's own top name for anything else."""
    parts = module.split(".")
    if parts[0] != "lodestore":
        return parts[0]
    if len(parts) == 1 or parts[1] == "_store":
        return "lodestore"
    return parts[1]


def layer_of(module: str) -> str | None:
    """The layer of a lodestore module ("face" for `lodestore` itself), None for anything outside lodestore.
    Importing the face (`from lodestore import GameServer`) is importing the Store API: `target_layer`."""
    parts = module.split(".")
    if parts[0] != "lodestore":
        return None
    if len(parts) == 1:
        return "face"
    if parts[1] == "_store":
        return "store"
    return parts[1] if parts[1] in LAYERS else None


def target_layer(module: str) -> str | None:
    layer = layer_of(module)
    return "store" if layer == "face" else layer


def is_private(module: str) -> bool:
    return any(part.startswith("_") and part not in ("__init__", "__main__") for part in module.split(".")[1:])


@dataclass(frozen=True)
class Import:
    importer: Module
    line: int
    target: str    # the module imported, as resolved: `from X import name` is `X.name` when that is a module

    def __str__(self) -> str:
        return f"{self.importer.where}:{self.line} ({self.importer.name}) imports {self.target}"


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    if not module.is_package:
        base.pop()
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: Module) -> list[Import]:
    tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(module, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            targets = {f"{source}.{alias.name}" if f"{source}.{alias.name}" in BY_NAME else source
                       for alias in node.names}
            found += [Import(module, node.lineno, target) for target in sorted(targets)]
    return found


IMPORTS = [i for m in MODULES for i in imports_of(m)]

def test_the_modules_are_found():
    names = set(BY_NAME)
    assert {"lodestore", "lodestore._store", "lodestore.storage", "lodestore.storage._world",
            "lodestore.storage.datastore._client", "lodestore.actors._host", "lodestore.coordinator",
            "lodestore.sim._runner", "lodestore.bench.budget"} <= names
    assert any(i.target == "lodestore.storage.datastore._messages" for i in IMPORTS)   # `from pkg import _module`


def private_imports() -> list[Import]:
    return [i for i in IMPORTS if i.target.startswith("lodestore") and is_private(i.target)
            and package_of(i.target) != package_of(i.importer.name)]


def test_no_package_imports_another_packages_private_module():
    offenders = [f"{i}, a private module of {package_of(i.target)}" for i in private_imports()]
    assert offenders == [], "\n".join(["use the package's public face instead:"] + offenders)


def test_the_layers_point_one_way():
    offenders = []
    for i in IMPORTS:
        own, target = layer_of(i.importer.name), target_layer(i.target)
        if i.target == "tests" or i.target.startswith("tests."):
            offenders.append(f"{i}: no package imports the tests")
        elif target is not None and target != own and target not in ALLOWED[own]:
            allowed = ", ".join(sorted(ALLOWED[own])) or "nothing above it"
            offenders.append(f"{i}: {own} may import only {allowed}, not {target}")
    assert offenders == [], "\n".join(offenders)


def _is_private_name(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_names(module: Module) -> set[str]:
    """The private names `module` defines: module-level functions, classes and variables, and in its classes the
    methods and the attributes set on `self`."""
    tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for node in ast.walk(cls):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id == "self"):
                names.add(node.attr)
    return {n for n in names if _is_private_name(n)}


def private_reaches() -> list[tuple[Module, int, str, set[str]]]:
    """(module, line, expression, packages that define the name) for every `obj._name` outside `obj`'s package."""
    defined: dict[str, set[str]] = {}
    for module in MODULES:
        for name in _private_names(module):
            defined.setdefault(name, set()).add(package_of(module.name))
    found = []
    for module in MODULES:
        own = package_of(module.name)
        tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _is_private_name(node.attr)):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            owners = defined.get(node.attr, set())
            if owners and own not in owners:
                found.append((module, node.lineno, ast.unparse(node), owners))
    return found


def test_no_package_reaches_into_another_packages_private_attributes():
    offenders = [f"{m.where}:{line} ({m.name}) uses {expr}, private to {', '.join(sorted(owners))}"
                 for m, line, expr, owners in private_reaches()]
    assert offenders == [], "\n".join(["use a public method of the owning package instead:"] + offenders)


def _declared_all(module: Module) -> list[str] | None:
    tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)):
            return list(ast.literal_eval(node.value))
    return None


WITH_ALL = [m for m in MODULES if _declared_all(m) is not None]


@pytest.mark.parametrize("module", WITH_ALL, ids=lambda m: m.name)
def test_every_name_in_all_resolves_once(module):
    declared = _declared_all(module)
    imported = importlib.import_module(module.name)
    assert list(imported.__all__) == declared
    twice = sorted({n for n in declared if declared.count(n) > 1})
    assert twice == [], f"{module.where}: __all__ names {twice} more than once"
    missing = [n for n in declared if not hasattr(imported, n)]
    assert missing == [], f"{module.where}: __all__ names {missing}, which {module.name} does not define"


PACKAGES = [m for m in MODULES if m.is_package]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda m: m.name)
def test_every_public_name_a_package_imports_is_in_its_all(package):
    """A package's `__init__` is its public face: what it imports for users it declares in `__all__`."""
    declared = set(_declared_all(package) or ())
    tree = ast.parse(package.path.read_text(encoding="utf-8"), str(package.path))
    public = [alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom)
              and node.module != "__future__" and (node.module or "").startswith("lodestore")
              for alias in node.names if not (alias.asname or alias.name).startswith("_")]
    undeclared = [n for n in public if n not in declared]
    assert undeclared == [], f"{package.where} imports {undeclared} without naming them in __all__"
