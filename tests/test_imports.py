"""Every ``from X import name`` in the library resolves, the lazy ones inside functions included.

Commands import their heavy dependencies inside the function that needs them (so ``--help`` stays
fast), which means a renamed or moved function only breaks when that code path runs. A stale lazy
import once broke ``make demo``'s training stage while every test passed; this test reads the
source with ``ast`` and resolves each such import without running the code around it.
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
