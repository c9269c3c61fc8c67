"""``python -m dmnt_lib deform``: fit each category's deformable mesh to its CAD models and report
template-vs-deformed chamfer distance and silhouette IoU; plus the ``make demo`` hook.

Numbers: per category, the mean over its CAD models of ``deform.evaluate``'s metrics (chamfer:
squared, object units, 4000 area-uniform samples; IoU: hard silhouettes from 4 held-out views
at 64 px). A ``total`` row gives the summed model count and wall time; the final line,
``mean chamfer template=<x> deformed=<y>; silhouette IoU template=<a> deformed=<b>``,
averages the categories with equal weight and is always the last line printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .fit import CHECKPOINT_FORMAT, FitConfig, evaluate, fit_category, load_cad_models
from .viz import deformation_figure

__all__ = ["add_parser", "run", "fit_categories", "demo", "DEMO_CATEGORIES"]

#: Categories the quick demo fits (shapes as different as the budget of ~90 s allows).
DEMO_CATEGORIES = ("aeroplane", "car", "chair", "bottle")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "deform",
        help="fit deformable category meshes to CAD models",
        description="Fit one deformable cuboid template per category to DATA/CAD/<category>/NN.off "
        "(deformation MLP + one latent code per CAD model) and print template-vs-deformed chamfer and silhouette IoU.",
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder holding CAD/<category>/NN.off")
    p.add_argument("--categories", nargs="+", metavar="CATEGORY", help="categories to fit (default: every folder in DATA/CAD)")
    p.add_argument("--steps", type=_int_at_least(0), help="optimisation steps per category (default 600; 200 with --quick)")
    p.add_argument("--quick", action="store_true", default=os.environ.get("DMNT_QUICK") == "1",
                   help="2-core preset: 6x128 net, 642-vertex template, 200 steps of 4 models (default from DMNT_QUICK=1)")
    p.add_argument("--checkpoint-dir", type=Path, help="save <dir>/<category>.pt and resume from it when present")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of every random choice (default 0)")
    p.add_argument("--device", type=_device, default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    p.add_argument("--threads", type=_int_at_least(1), help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run)
    return p


def _int_at_least(low: int):
    """argparse type: an int ``>= low`` (anything else is a usage error, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"int>={low}"  # argparse names the type in its messages
    return parse


def _device(text: str) -> str:
    """argparse type: a string ``torch.device`` accepts (availability is checked in ``run``)."""
    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (e.g. cpu, cuda, cuda:0)") from None
    return text


def _device_problem(text: str) -> str | None:
    """Why ``text`` cannot be used here (one line), or None when it can."""
    dev = torch.device(text)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device {text}: no CUDA GPU is available here (torch.cuda.is_available() is False); use --device cpu"
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) are visible"
        return None
    if dev.type == "cpu":
        return None
    try:
        torch.empty(0, device=dev)
    except Exception as e:  # noqa: BLE001 -- any backend failure becomes the one-line message
        return f"--device {text}: not usable here ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
    return None


def _categories(data_dir: Path, wanted) -> list[str]:
    cad = Path(data_dir) / "CAD"
    if not cad.is_dir():
        raise FileNotFoundError(f"{cad} does not exist: give --data a dataset folder with CAD/<category>/NN.off "
                                "(e.g. one made by `python -m dmnt_lib data --out DIR`)")
    found = sorted(p.name for p in cad.iterdir() if p.is_dir())
    if wanted:
        missing = [c for c in wanted if c not in found]
        if missing:
            raise FileNotFoundError(f"no CAD folder for {missing} in {cad} (found: {found})")
        return list(wanted)
    if not found:
        raise FileNotFoundError(f"{cad} holds no category folders")
    return found


def fit_categories(data_dir, categories=None, config=None, checkpoint_dir=None, device="cpu", progress=True, echo=print):
    """Fit and evaluate every category; returns ``[(category, FitResult, cad_models, metrics, seconds)]``.

    ``echo`` receives the table, one line at a time: the header, a row per category, a
    ``total`` row (models, wall seconds), and last the ``mean chamfer ...`` line.
    """
    config = config or FitConfig()
    start = time.perf_counter()
    cats = _categories(Path(data_dir), categories)
    echo(f"{'category':<12} {'models':>6} {'chamfer tmpl':>12} {'chamfer def':>12} {'IoU tmpl':>8} {'IoU def':>8} {'time s':>7}")
    rows = []
    for cat in tqdm(cats, desc="categories", disable=not progress):
        t0 = time.perf_counter()
        models = load_cad_models(data_dir, cat)
        ckpt = Path(checkpoint_dir) / f"{cat}.pt" if checkpoint_dir is not None else None
        result = fit_category(models, config, checkpoint=ckpt, category=cat, progress=progress, device=device)
        metrics = evaluate(result.mesh, models, config, device=device)
        secs = time.perf_counter() - t0
        m = {k: sum(v) / len(v) for k, v in metrics.items()}
        echo(f"{cat:<12} {len(models):>6} {m['chamfer_template']:>12.4g} {m['chamfer_deformed']:>12.4g} "
             f"{m['iou_template']:>8.3f} {m['iou_deformed']:>8.3f} {secs:>7.1f}")
        rows.append((cat, result, models, metrics, secs))
    mean = {k: sum(sum(r[3][k]) / len(r[3][k]) for r in rows) / len(rows) for k in rows[0][3]}
    blank = f"{'':>12} {'':>12} {'':>8} {'':>8}"
    echo(f"{'total':<12} {sum(len(r[2]) for r in rows):>6} {blank} {time.perf_counter() - start:>7.1f}")
    echo(f"mean chamfer template={mean['chamfer_template']:.4g} deformed={mean['chamfer_deformed']:.4g}; "
         f"silhouette IoU template={mean['iou_template']:.3f} deformed={mean['iou_deformed']:.3f}")
    return rows


def _config(quick: bool, steps: int | None, seed: int):
    over = {"seed": seed}
    if steps is not None:
        if steps < 0:
            raise ValueError(f"--steps must be >= 0, got {steps}")
        over["steps"] = steps
    return FitConfig.quick(**over) if quick else FitConfig(**over)


def run(args) -> int:
    problem = _device_problem(args.device)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = _config(args.quick, args.steps, args.seed)
    fit_categories(args.data, args.categories, config, args.checkpoint_dir, args.device, progress=True, echo=tqdm.write)
    return 0


def demo(figures_dir: Path, data_dir: Path, cache_dir: Path, quick: bool) -> list[Path]:
    """Fit (or reuse cached fits of) ``DEMO_CATEGORIES`` on ``data_dir/CAD`` with the 2-core preset
    (``FitConfig.quick``; 100 steps when ``quick``, else its 200) and write
    ``figures_dir/deformation.png``: about 40 s / 70 s on 2 cores. The full 8 × 256 config on all
    categories is the CLI's job (``python -m dmnt_lib deform --data DIR``). Checkpoints live in
    ``cache_dir/deform/<config hash>/``, so a second run only re-evaluates.

    Raises:
        FileNotFoundError: ``data_dir/CAD`` is missing.
    """
    data_dir = Path(data_dir)
    if not (data_dir / "CAD").is_dir():
        raise FileNotFoundError(f"{data_dir / 'CAD'} does not exist: the deformation demo needs the CAD models "
                                "(generate a dataset first, e.g. `python -m dmnt_lib data --out DIR`)")
    config = _config(True, 100 if quick else None, 0)
    # The format is part of the key: a cache written by an older version is not reused (nor an error).
    key = hashlib.sha1(json.dumps({"format": CHECKPOINT_FORMAT, **config.to_dict()}, sort_keys=True).encode()).hexdigest()[:12]
    categories = [c for c in DEMO_CATEGORIES if (data_dir / "CAD" / c).is_dir()]
    rows = fit_categories(data_dir, categories or None, config, Path(cache_dir) / "deform" / key, progress=False)
    path = deformation_figure([(c, r, m, met) for c, r, m, met, _ in rows], Path(figures_dir) / "deformation.png")
    return [path]
