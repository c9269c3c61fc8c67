"""Execute the notebooks and (optionally) write them back with their outputs embedded.

``make notebooks`` runs ``python -m dmnt_lib.notebooks``: every ``notebooks/*.ipynb`` top to
bottom in its **non-quick** configuration (``DMNT_QUICK=0``), seeded, with the inline backend so
figures are embedded (as JPEG, to keep the repository light), each written back atomically — so
the repository shows the pictures without running anything. The test suite runs the same notebooks in quick mode and
never writes them back (``tests/test_notebooks.py``).

Reproducibility: before the first cell, a seed cell (not kept in the notebook) seeds
``random``, NumPy and torch with ``seed``; ``PYTHONHASHSEED`` is fixed; execution timing and
widget state and widget views (random model ids; dead without a live kernel) are dropped, so re-running gives the same cells and pictures
(text that reports wall times naturally differs).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from .fileio import atomic_write_text

__all__ = ["execute_notebook", "main", "runs_env", "SEED_SOURCE"]

SEED_SOURCE = (
    "import random as _r, numpy as _np, torch as _t\n"
    "_r.seed({seed}); _np.random.seed({seed}); _t.manual_seed({seed})\n"
    "del _r, _np, _t\n"
    # JPEG at quality 85 instead of PNG: the notebooks' figures are mostly rendered images, which
    # PNG stores at 3-5x the size (notebook 00: 1.29 MB as PNG).
    "get_ipython().run_line_magic('config', \"InlineBackend.figure_formats = ['jpeg']\")\n"
    "get_ipython().run_line_magic('config', \"InlineBackend.print_figure_kwargs = "
    "{{'bbox_inches': 'tight', 'pil_kwargs': {{'quality': 85}}}}\")"
)
_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


@contextlib.contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def runs_env(runs) -> dict[str, str]:
    """The environment that points notebooks 04-07 at a finished ``reproduce`` folder ``runs``.

    Without it, notebooks 04 and 06 train small models of their own and 05 uses oracle features;
    with it they show the run's DMNT (``DMNT_RUN``, its training data ``DMNT_TRAIN_DATA``), the
    run's test set (``DMNT_DATA``, ``DMNT_TEST_DATA``), its validation set when it has one (``DMNT_VAL_DATA``) and its baseline (``DMNT_BASELINE_RUN``);
    07 reads the whole folder (``DMNT_RUNS``). Paths are absolute (notebooks run in their folder).

    Raises:
        FileNotFoundError: ``runs`` lacks one of the finished parts (naming it): the manifests of the
            data, train and baseline stages, ``dmnt/model.pt``, ``baseline/run.json``.
    """
    runs = Path(runs).resolve()
    parts = {"DMNT_RUN": runs / "dmnt", "DMNT_TRAIN_DATA": runs / "data" / "train", "DMNT_DATA": runs / "data" / "test",
             "DMNT_TEST_DATA": runs / "data" / "test", "DMNT_BASELINE_RUN": runs / "baseline"}
    # A stage's manifest is written only once it finished (reproduce.pipeline); run.json alone is not proof.
    needed = [runs / "manifest" / f"{stage}.json" for stage in ("data-train", "data-test", "train", "baseline")]
    needed += [runs / "dmnt" / "model.pt", runs / "baseline" / "run.json"]
    for path in needed:
        if not path.is_file():
            raise FileNotFoundError(f"runs: {path} not found (is {runs} a finished `reproduce` folder?)")
    if (runs / "data" / "val").is_dir():  # DMNT's held-out check images (train --val-data), notebook 04
        parts["DMNT_VAL_DATA"] = runs / "data" / "val"
    return {**{k: str(v) for k, v in parts.items()}, "DMNT_RUNS": str(runs)}


def execute_notebook(path, quick: bool = False, write: bool = True, seed: int = 0, timeout: int = 1800,
                     kernel_name: str = "python3"):
    """Run the notebook at ``path`` top to bottom in its folder.

    Args:
        quick: set ``DMNT_QUICK=1`` (the tests' mode) instead of ``0``.
        write: write the executed notebook (outputs embedded) back to ``path`` atomically.
        seed: the seed cell's seed. timeout: seconds per cell.

    Returns:
        The executed ``nbformat.NotebookNode``.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell failed (nothing is written).
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    if not path.is_file() or path.suffix != ".ipynb":
        raise FileNotFoundError(f"not a notebook: {path}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    nb = nbformat.read(path, as_version=4)
    seed_cell = nbformat.v4.new_code_cell(SEED_SOURCE.format(seed=seed))
    nb.cells.insert(0, seed_cell)
    # The inline backend embeds figures; MPLBACKEND=Agg (the tests' setting) would drop them.
    with _env(DMNT_QUICK="1" if quick else "0", PYTHONHASHSEED="0",
              MPLBACKEND=os.environ.get("MPLBACKEND") if quick else None):
        client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, record_timing=False,
                                store_widget_state=True, resources={"metadata": {"path": str(path.parent.resolve())}})
        try:
            client.execute()
        finally:
            nb.cells.pop(0)
    count = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        outputs = []
        for out in cell.get("outputs", []):
            data = out.get("data")
            if data and _WIDGET_MIME in data:
                data.pop(_WIDGET_MIME)  # a random model id, and dead without a live kernel
                if not data:
                    continue
            if "execution_count" in out:
                out["execution_count"] = count + 1
            outputs.append(out)
        cell.outputs = outputs
        count += 1
        cell.execution_count = count
    nb.metadata.pop("widgets", None)
    if write:
        atomic_write_text(path, nbformat.writes(nb) + "\n")
    return nb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dmnt_lib.notebooks",
                                description="Execute notebooks (seeded) and write them back with outputs embedded.")
    p.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    p.add_argument("--quick", action="store_true", help="DMNT_QUICK=1 instead of the full configuration")
    p.add_argument("--no-write", action="store_true", help="execute only; leave the files as they are")
    p.add_argument("--seed", type=int, default=0, help="seed of random, NumPy and torch (default 0)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    p.add_argument("--runs", type=Path, help="a finished `reproduce` folder (e.g. runs/full) for notebooks 04-07 "
                   "to show instead of training small models of their own")
    args = p.parse_args(argv)
    try:
        extra = runs_env(args.runs) if args.runs is not None else {}
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = args.paths or sorted(Path("notebooks").glob("*.ipynb"))
    if not paths:
        print("error: no notebooks found", file=sys.stderr)
        return 2
    total = 0
    for path in paths:
        t0 = time.perf_counter()
        with _env(**extra):
            execute_notebook(path, quick=args.quick, write=not args.no_write, seed=args.seed, timeout=args.timeout)
        size = path.stat().st_size
        total += size
        print(f"{path}: {time.perf_counter() - t0:.0f} s, {size / 1e3:.0f} kB", flush=True)
    print(f"{len(paths)} notebooks, {total / 1e6:.2f} MB in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
