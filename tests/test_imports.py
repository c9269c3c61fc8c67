"""The library's imports: every ``from X import name`` resolves, and the import graph is layered.

**Resolution.** Commands import their heavy dependencies inside the function that needs them (so
``--help`` stays fast), which means a renamed or moved function only breaks when that code path
runs. A stale lazy import once broke ``make demo``'s training stage while every test passed; this
test reads the source with ``ast`` and resolves each such import without running the code around it.

**Layering.** A *unit* is a subpackage (``dmnt_lib/model/``) or a top-level module
(``dmnt_lib/render.py``). Units are stacked in ``LAYERS``, bottom first; a unit may import units of
its own layer or below, never above, and no two modules and no two units may import each other,
directly or through others (no cycles). Every ``import``/``from ... import`` statement counts, the
lazy ones inside functions included. The layers, bottom first:

 0. ``dmnt_lib`` (the package's ``__init__``), ``fileio``, ``sizes``, ``rle``: leaves, no dmnt_lib imports
 1. ``mesh``, ``camera``: UV meshes and PASCAL3D+ cameras
 2. ``cuda``: the C++/CUDA kernels of the image->UV op
 3. ``transform``: the image->UV op (appendix A.1)
 4. ``raster``: rasterization backends and the differentiable barycentrics
 5. ``render``: UV fragments, texture sampling, masks (built on ``raster``)
 6. ``viz``: shared drawing helpers
 7. ``data``: CAD models, synthetic scenes, the real-data loader
 8. ``deform``: deformable meshes (appendix A.2)
 9. ``model``: backbone, neural textures, contrastive training (never imports ``inference``)
10. ``evaluate``: metrics, predictions, the ``evaluate`` command; predictors register by name
11. ``inference``, ``baseline``: the two methods' predictors (import ``evaluate``, not each other)
12. ``figures``: the paper's figures from evaluated runs
13. ``bench``, ``bench_raster``, ``demo``, ``notebooks``: benchmarks, the demo, the notebook runner
14. ``__main__``: the command-line dispatcher
15. ``reproduce``: runs the stage commands through ``__main__.main``

Not seen, on purpose: modules loaded by *name* at run time (``importlib.import_module`` of the
strings in ``__main__._SUBCOMMAND_MODULES`` and ``evaluate.LAZY_PREDICTORS``): they are registries
that a lower layer consults without importing the code, which is how ``evaluate`` loads the
``inference`` and ``baseline`` predictors. The implicit import of a module's parent packages is not
an edge either (``from .x import y`` runs ``package/__init__`` but depends on ``x``).
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import dmnt_lib

PACKAGE_DIR = Path(dmnt_lib.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _from_imports(path: Path, module: str):
    """``(lineno, absolute module, names)`` of every ``from ... import ...`` in ``path`` (module ``module``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            yield node.lineno, target, [a.name for a in node.names]


def unresolved(path: Path, module: str) -> list[str]:
    """The ``dmnt_lib`` names that ``path``'s ``from`` imports ask for and that do not exist."""
    missing = []
    for lineno, target, names in _from_imports(path, module):
        if not target.startswith("dmnt_lib"):
            continue  # third-party names are the pinned stack's business (and its install's)
        mod = importlib.import_module(target)
        for name in names:
            if name == "*" or hasattr(mod, name):
                continue
            try:  # `from package import submodule`
                importlib.import_module(f"{target}.{name}")
            except ModuleNotFoundError:
                missing.append(f"line {lineno}: from {target} import {name}")
    return missing


SOURCES = sorted(PACKAGE_DIR.rglob("*.py"))


def test_a_stale_lazy_import_is_reported(tmp_path):
    src = tmp_path / "stale.py"
    src.write_text("from .cache import ensure_dataset\n\n\ndef stage():\n"
                   "    from ..model.viz import demo, ensure_dataset\n    return demo, ensure_dataset\n")
    assert unresolved(src, "dmnt_lib.data.stale") == ["line 5: from dmnt_lib.model.viz import ensure_dataset"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_every_from_import_resolves(path):
    missing = unresolved(path, _module_name(path))
    assert not missing, f"{path.relative_to(PACKAGE_DIR)}: unresolved imports:\n" + "\n".join(missing)


# --------------------------------------------------------------------------- the import graph

LAYERS = [
    ["dmnt_lib", "fileio", "sizes", "rle"],
    ["mesh", "camera"],
    ["cuda"],
    ["transform"],
    ["raster"],
    ["render"],
    ["viz"],
    ["data"],
    ["deform"],
    ["model"],
    ["evaluate"],
    ["inference", "baseline"],
    ["figures"],
    ["bench", "bench_raster", "demo", "notebooks"],
    ["__main__"],
    ["reproduce"],
]


def import_graph(package_dir: Path) -> dict[str, dict[str, str]]:
    """``{module: {imported module: "file:line"}}`` over the package in ``package_dir``: every
    ``import``/``from ... import`` of one of its own modules, wherever it stands in the file."""
    package_dir = Path(package_dir)
    root = package_dir.parent
    files = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        out = graph.setdefault(module, {})
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
                if node.level:
                    base = package.split(".")
                    base = ".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
                else:
                    base = node.module
                # ``from pkg import sub`` depends on the submodule, ``from pkg import name`` on pkg.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:  # ``import pkg.mod.attr`` -> the module
                    target = target.rpartition(".")[0]
                if target and target != module:
                    out.setdefault(target, f"{path.relative_to(root)}:{node.lineno}")
    return graph


def unit_of(module: str) -> str:
    """``dmnt_lib.model.dmnt`` -> ``model``; ``dmnt_lib.render`` -> ``render``; ``dmnt_lib`` -> ``dmnt_lib``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def unit_graph(graph) -> dict[str, dict[str, str]]:
    """The module graph collapsed to units (one example import per pair of units)."""
    units = {}
    for module, targets in graph.items():
        out = units.setdefault(unit_of(module), {})
        for target, where in targets.items():
            if unit_of(target) != unit_of(module):
                out.setdefault(unit_of(target), where)
    return units


def cycles(graph) -> list[str]:
    """One line per strongly connected component of more than one node: a cycle through it, each
    edge with the import that makes it."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):  # Tarjan; the graphs are small
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    lines = []
    for comp in found:
        start = min(comp)
        paths, queue = {start: [start]}, [start]
        while queue:  # shortest way back to start inside the component
            v = queue.pop(0)
            nxt = [w for w in sorted(graph.get(v, {})) if w in comp]
            if start in nxt:
                path = paths[v] + [start]
                break
            for w in nxt:
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    queue.append(w)
        lines.append(" -> ".join(f"{a} ({graph[a][b]})" for a, b in zip(path, path[1:])) + f" -> {start}")
    return lines


def upward_imports(units, layers) -> list[str]:
    """Each import of a unit from a higher layer, and each unit no layer names."""
    level = {u: i for i, layer in enumerate(layers) for u in layer}
    bad = [f"{u}: in no layer (add it to LAYERS)" for u in sorted(units) if u not in level]
    for u, targets in sorted(units.items()):
        for t, where in sorted(targets.items()):
            if u in level and t in level and level[t] > level[u]:
                bad.append(f"{u} (layer {level[u]}) imports {t} (layer {level[t]}) at {where}")
    return bad


GRAPH = import_graph(PACKAGE_DIR)


def test_layers_name_each_unit_once():
    named = [u for layer in LAYERS for u in layer]
    assert len(named) == len(set(named))
    assert set(named) >= set(unit_graph(GRAPH)), "every subpackage and top-level module has a layer"


def test_no_import_cycle_between_modules():
    assert cycles(GRAPH) == []


def test_no_import_cycle_between_subpackages():
    assert cycles(unit_graph(GRAPH)) == []


def test_no_upward_import():
    assert upward_imports(unit_graph(GRAPH), LAYERS) == []


def test_the_layering_checks_catch_a_lazy_upward_import_and_cycles(tmp_path):
    """A planted package: ``low.a`` imports ``high`` inside a function (upward, and a cycle with
    ``high.b``'s top-level import of ``low.a``); ``high.c`` and ``high.d`` import each other."""
    pkg = tmp_path / "pkg"
    for d in (pkg, pkg / "low", pkg / "high"):
        d.mkdir()
        (d / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("import math\n\n\ndef f():\n    from ..high.b import g\n    return g\n")
    (pkg / "high" / "b.py").write_text("from ..low import a\n\n\ndef g():\n    return a\n")
    (pkg / "high" / "c.py").write_text("from . import d\n")
    (pkg / "high" / "d.py").write_text("import pkg.high.c\n")
    graph = import_graph(pkg)
    assert graph["pkg.low.a"] == {"pkg.high.b": "pkg/low/a.py:5"}
    assert sorted(cycles(graph)) == [
        "pkg.high.b (pkg/high/b.py:1) -> pkg.low.a (pkg/low/a.py:5) -> pkg.high.b",
        "pkg.high.c (pkg/high/c.py:1) -> pkg.high.d (pkg/high/d.py:1) -> pkg.high.c",
    ]
    units = unit_graph(graph)
    assert cycles(units) == ["high (pkg/high/b.py:1) -> low (pkg/low/a.py:5) -> high"]
    assert upward_imports(units, [["pkg"], ["low"], ["high"]]) == ["low (layer 1) imports high (layer 2) at pkg/low/a.py:5"]
    assert upward_imports(units, [["pkg"], ["low"]]) == ["high: in no layer (add it to LAYERS)"]
    assert upward_imports(units, [["pkg"], ["high"], ["low"]]) == ["high (layer 1) imports low (layer 2) at pkg/high/b.py:1"]
