"""The layering of docs/architecture.md, checked on the source: every ``import`` statement of our packages (at
module level and inside functions; ``if TYPE_CHECKING:`` blocks count too, except for the cycle check, where they
cannot run) is read with ``ast`` and judged by these rules:

1. ``retina_core`` (the ground layer) imports nothing of ours.
2. ``enricher``, ``metrics_module`` and ``retina_operator`` never import ``retina_exporter`` (nobody imports the
   assembler).
3. ``retina_operator`` never imports ``enricher`` or ``metrics_module`` (it talks to agents over gRPC only).
4. ``enricher`` and ``metrics_module`` never import each other.
5. Another package's names come from its public surface: ``from enricher import X``, not
   ``from enricher.ipcache import X`` (``retina_core`` is a set of public modules: any module whose name has no
   leading underscore).
6. No generated protobuf module is imported by its bare proto path (``from flow import flow_pb2``): the generated
   code is the package ``retina_core.proto``.
7. No import circle, between packages or between modules.

The checker is run on a small tree with one violation of each kind first, so a checker that found nothing could
not pass.
"""

from __future__ import annotations

import ast
import pathlib
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("retina_core", "enricher", "metrics_module", "retina_operator", "retina_exporter", "dashboards")
GROUND = "retina_core"
ASSEMBLER = "retina_exporter"
SURFACE_ONLY = ("enricher", "metrics_module", "retina_operator")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "retina_core": tuple(p for p in PACKAGES if p != "retina_core"),
    "enricher": ("retina_exporter", "metrics_module", "retina_operator", "dashboards"),
    "metrics_module": ("retina_exporter", "enricher", "retina_operator", "dashboards"),
    "retina_operator": ("retina_exporter", "enricher", "metrics_module", "dashboards"),
    "dashboards": ("retina_exporter", "enricher", "metrics_module", "retina_operator"),
    "retina_exporter": ("dashboards",),
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "enricher.source"
    target: str  # the imported module, resolved to an absolute dotted name
    names: tuple[str, ...]  # names of a from-import ("ipcache_pb2", ...); () for "import x"
    line: int
    type_checking: bool

    def __str__(self) -> str:
        what = f"from {self.target} import {', '.join(self.names)}" if self.names else f"import {self.target}"
        return f"{self.module}:{self.line}: {what}"


def _module_name(root: pathlib.Path, path: pathlib.Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def collect(root: pathlib.Path, packages: tuple[str, ...] = PACKAGES) -> tuple[set[str], list[Import]]:
    """Every module of ``packages`` under ``root`` and every import statement in them (generated protobuf code,
    ``retina_core/proto/<package>/``, is not ours to judge)."""
    modules: set[str] = set()
    imports: list[Import] = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).parts
            if rel[:2] == ("retina_core", "proto") and len(rel) > 3:
                continue
            name = _module_name(root, path)
            modules.add(name)
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            guarded: set[int] = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                    guarded |= {id(n) for n in ast.walk(node)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        imports.append(Import(name, alias.name, (), node.lineno, id(node) in guarded))
                elif isinstance(node, ast.ImportFrom):
                    target = node.module or ""
                    if node.level:
                        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                        base = base[: len(base) - (node.level - 1)]
                        target = ".".join(base + ([node.module] if node.module else []))
                    imports.append(Import(name, target, tuple(a.name for a in node.names), node.lineno,
                                          id(node) in guarded))
    return modules, imports


def _package(dotted: str) -> str:
    return dotted.split(".")[0]


def violations(root: pathlib.Path, packages: tuple[str, ...] = PACKAGES,
               proto_packages: tuple[str, ...] | None = None) -> list[str]:
    """One line per broken rule (module docstring), empty when the tree keeps them all."""
    modules, imports = collect(root, packages)
    if proto_packages is None:
        proto_dir = root / "proto"
        proto_packages = tuple(sorted(p.name for p in proto_dir.iterdir() if p.is_dir())) if proto_dir.is_dir() else ()
    # Our generated modules by their bare names (``import flow_pb2``); third-party generated code (the
    # OpenTelemetry protos) is imported by its own package path and is fine.
    generated_modules = {f"{p.stem}{suffix}" for p in (root / "proto").rglob("*.proto")
                         for suffix in ("_pb2", "_pb2_grpc")} if (root / "proto").is_dir() else set()
    out: list[str] = []
    for imp in imports:
        src, dst = _package(imp.module), _package(imp.target)
        if dst in FORBIDDEN.get(src, ()):
            out.append(f"{imp}: {src} must not import {dst}")
        if dst in SURFACE_ONLY and dst != src and imp.target != dst:
            out.append(f"{imp}: import {dst}'s public surface (from {dst} import ...), not its module {imp.target}")
        if dst == GROUND and src != GROUND and any(p.startswith("_") for p in imp.target.split(".")[1:]):
            out.append(f"{imp}: {imp.target} is private to {GROUND}")
        if dst in proto_packages or dst in generated_modules:
            out.append(f"{imp}: generated protobuf code is imported from retina_core.proto, not by its proto path")
    # Circles: package graph (every import) and module graph (imports that run: not under TYPE_CHECKING).
    pkg_edges: dict[str, set[str]] = {}
    mod_edges: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        src, dst = _package(imp.module), _package(imp.target)
        if dst in packages and dst != src:
            pkg_edges.setdefault(src, set()).add(dst)
        if imp.type_checking:
            continue
        submodules = [f"{imp.target}.{n}" for n in imp.names if f"{imp.target}.{n}" in modules]
        targets = submodules if imp.names and len(submodules) == len(imp.names) else [imp.target, *submodules]
        for target in targets:
            # A module's own enclosing packages are being imported already (the parent runs first).
            if target in modules and target != imp.module and not imp.module.startswith(target + "."):
                mod_edges[imp.module].add(target)
    out += [f"package circle: {' -> '.join(c)}" for c in _circles(pkg_edges)]
    out += [f"module circle: {' -> '.join(c)}" for c in _circles(mod_edges)]
    return out


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_tree_keeps_every_rule():
    assert violations(ROOT) == []


def _write(root: pathlib.Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_each_kind_of_violation(tmp_path):
    _write(tmp_path, {
        "retina_core/__init__.py": "",
        "retina_core/record.py": "import enricher\n",  # rule 1
        "retina_core/_private.py": "",
        "enricher/__init__.py": "",
        "enricher/a.py": "from retina_exporter.agent import Agent\n",  # rule 2
        "enricher/b.py": "def f():\n    from metrics_module import MetricsModule\n",  # rule 4, inside a function
        "enricher/c.py": "from enricher.d import x\n",  # module circle c <-> d
        "enricher/d.py": "from enricher import c\n",
        "metrics_module/__init__.py": "",
        "retina_operator/__init__.py": "",
        "retina_operator/x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import enricher\n",  # rule 3
        "retina_exporter/__init__.py": "",
        "retina_exporter/agent.py": ("from enricher.ipcache import IPCache\n"  # rule 5
                                     "from retina_core._private import y\n"  # rule 5 (ground)
                                     "from flow import flow_pb2\n"),  # rule 6
        "retina_exporter/old.py": "import flow_pb2\nfrom opentelemetry.proto.common.v1 import common_pb2\n",
        "dashboards/__init__.py": "",
        "proto/flow/flow.proto": "",
    })
    found = violations(tmp_path)
    expected = [
        "retina_core.record:1: import enricher: retina_core must not import enricher",
        "enricher.a:1: from retina_exporter.agent import Agent: enricher must not import retina_exporter",
        "enricher.b:2: from metrics_module import MetricsModule: enricher must not import metrics_module",
        "retina_operator.x:3: import enricher: retina_operator must not import enricher",
        "retina_exporter.agent:1: from enricher.ipcache import IPCache: import enricher's public surface "
        "(from enricher import ...), not its module enricher.ipcache",
        "retina_exporter.agent:2: from retina_core._private import y: retina_core._private is private to retina_core",
        "retina_exporter.agent:3: from flow import flow_pb2: generated protobuf code is imported from "
        "retina_core.proto, not by its proto path",
        "retina_exporter.old:1: import flow_pb2: generated protobuf code is imported from retina_core.proto, not by "
        "its proto path",
        "package circle: enricher -> retina_core -> retina_exporter",
        "module circle: enricher.c -> enricher.d",
    ]
    assert sorted(found) == sorted(expected)


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "dashboards"])
def test_each_package_has_a_documented_public_surface(package):
    """Each package's ``__init__`` says what it holds (a docstring), and what it lists in ``__all__`` exists."""
    import importlib

    mod = importlib.import_module(package)
    assert (mod.__doc__ or "").strip(), f"{package}/__init__.py has no docstring"
    for name in getattr(mod, "__all__", ()):
        assert getattr(mod, name) is not None, f"{package}.{name}"
