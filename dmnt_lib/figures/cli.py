"""``python -m dmnt_lib figures``: the paper's figures and the results table from two evaluated runs.

Reads ``RUN/eval/<name>/{predictions.jsonl,results.json}`` of the DMNT run and of the MT Mask
R-CNN run (written by ``evaluate``) and the test images, and writes into ``--out``:

================================  =========================================================
``training_loss.png``             Fig. 3, drawn by the model package (when it provides it)
``fig4_categories.png``           Fig. 4: one L0 image per category (its best correct prediction)
``fig5_occluded.png``             Fig. 5: one image per category and level L1-L3 (the same rule)
``fig5_comparison.png``           DMNT beside MT Mask R-CNN on the same occluded images
``fig6_failures.png``             Fig. 6: failure cases by the rule of ``figures.records``, captioned with their cause (``diagnose``)
``results.md``, ``results.png``   the L0-L3 table of both methods (and DMNT with the centre searched); each metric vs level
================================  =========================================================

Drawing needs each shown image's predicted pose and amodal mask. When ``predictions.jsonl``
does not store them (fields ``pose`` and ``amodal_mask``, see ``figures.records``), the run's
predictor is loaded and re-run on just the images the figures show.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..fileio import atomic_write_text
from .records import find_eval

__all__ = ["add_parser", "run", "make_figures", "load_evaluations", "searched_results", "fill_missing", "FIGURE_FILES"]

#: The table's names for DMNT evaluated with the object centre given (``--center known``) and searched, when both are.
GIVEN, SEARCHED = "DMNT, centre given", "DMNT, centre searched"

FIGURE_FILES = ["fig4_categories.png", "fig5_occluded.png", "fig5_comparison.png", "fig6_failures.png",
                "results.md", "results.png"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "figures", help="draw the paper's Figs. 3-6 and the L0-L3 results table from evaluated runs",
        description="Draw Figs. 3-6 (appendix B) and the DMNT vs MT Mask R-CNN table from the evaluation "
        "records of two runs (python -m dmnt_lib evaluate --run RUN ...).")
    p.add_argument("--run", type=Path, required=True, help="the DMNT run folder (with eval/<name>/)")
    p.add_argument("--baseline", type=Path, help="the MT Mask R-CNN run folder (omit: DMNT only, no comparison)")
    p.add_argument("--data", type=Path, required=True, help="the test dataset the runs were evaluated on")
    p.add_argument("--out", type=Path, default=Path("figures"), help="output folder (default figures/)")
    p.add_argument("--eval", dest="eval_name", help="which RUN/eval/<name> to read (default: the only one, else the newest)")
    p.add_argument("--search-eval", dest="search_eval_name",
                   help="an evaluation of the DMNT run with --center search (RUN/eval/<name>): a table row of its own")
    p.add_argument("--n-failures", type=int, default=4, help="failure cases per kind in Fig. 6 (default 4)")
    p.add_argument("--device", default="cpu", help="device for re-running a predictor when records lack poses/masks")
    p.set_defaults(func=run)
    return p


def _fig3(run_dir: Path, data, out: Path) -> list[Path]:
    """Fig. 3 (how the training loss is built) with the trained model, on the first L0 test image of
    its first category (car when it has one), by the model package's ``figure3``; nothing when the
    run has no ``model.pt`` (e.g. a baseline-only comparison)."""
    model_path = Path(run_dir) / "model.pt"
    if not model_path.is_file():
        return []
    import matplotlib.pyplot as plt

    from ..model import DMNT
    from ..model.viz import figure3

    from ..data import PoseDataset

    model = DMNT.load(model_path)
    cat = "car" if "car" in model.categories else model.categories[0]
    ds = PoseDataset(data, [cat], [0])
    plt.close(figure3(model, ds[0], out / "training_loss.png"))
    return [out / "training_loss.png"]


def fill_missing(records, run_dir: Path, images, device: str = "cpu", eval_name: str | None = None) -> int:
    """Re-run ``run_dir``'s predictor (with the options of its evaluation ``eval_name``, default the one
    ``find_eval`` picks) on the detected records that lack a pose or a mask (filling them in place);
    returns how many were re-run."""
    need = [r for r in {id(r): r for r in records}.values() if r.detected and (r.pose is None or r.amodal_mask is None)]
    if need:
        from .predict import predict_records

        predict_records(need, run_dir, images, device, eval_name=eval_name)
    return len(need)


def _read_results(folder: Path, data) -> dict:
    """``folder/results.json``, checked: an ``evaluate`` results file of the test set ``data``. A recorded test
    folder that no longer exists (a run moved or copied from another machine) is not held against it."""
    try:
        res = json.loads((folder / "results.json").read_text())
    except ValueError as e:
        raise ValueError(f"{folder / 'results.json'} is not valid JSON ({e}); re-run that evaluation") from None
    if not isinstance(res, dict) or not isinstance(res.get("evaluation", {}), dict):
        raise ValueError(f"{folder / 'results.json'} is not an evaluate results file; re-run that evaluation")
    rec = res.get("evaluation", {}).get("data")
    if rec is not None and Path(rec).exists() and Path(data).exists() and not os.path.samefile(rec, data):
        raise ValueError(f"the evaluation {folder} is of {rec}, not --data {data}; evaluate it on {data} or pass --eval NAME")
    return res


def searched_results(run_dir, name: str, data, reference: dict) -> tuple[Path, dict]:
    """``(folder, results)`` of the DMNT run's evaluation ``name`` (centre searched), checked like the others:
    of the test set ``data``, and of the levels and images of ``reference`` (the drawn evaluation's results)."""
    d = find_eval(run_dir, name)
    res = _read_results(d, data)
    pick = lambda r: {k: r.get("evaluation", {}).get(k) for k in ("levels", "per_category")}  # noqa: E731
    if pick(res) != pick(reference):
        raise ValueError(f"the searched evaluation {d.name} {pick(res)} differs from the drawn one {pick(reference)}; "
                         "evaluate both the same way")
    return d, res


def with_searched(results: dict, evals: dict, run_dir, data, search_eval_name=None) -> tuple[dict, dict]:
    """``(results, evals)`` for the table: with ``search_eval_name`` (an evaluation of the DMNT run with the object
    centre searched) the ``"DMNT"`` entry becomes ``GIVEN`` followed by ``SEARCHED``, the other methods after
    them; without it both dicts come back unchanged."""
    if search_eval_name is None:
        return results, evals
    d, searched = searched_results(run_dir, search_eval_name, data, results["DMNT"])
    rest = lambda m: {k: v for k, v in m.items() if k != "DMNT"}  # noqa: E731
    return ({GIVEN: results["DMNT"], SEARCHED: searched, **rest(results)},
            {GIVEN: evals["DMNT"], SEARCHED: d, **rest(evals)})


def load_evaluations(run_dir, data, baseline_dir=None, eval_name=None) -> dict:
    """Everything the figures read: ``{"images": TestImages, "runs", "evals", "results", "records"}``,
    the last four keyed by method name (``"DMNT"``, ``"MT Mask R-CNN"``)."""
    from . import paper
    from .records import load_records

    runs = {"DMNT": Path(run_dir)}
    if baseline_dir is not None:
        runs["MT Mask R-CNN"] = Path(baseline_dir)
    evals = {k: find_eval(v, eval_name) for k, v in runs.items()}
    results = {k: _read_results(d, data) for k, d in evals.items()}
    evs = [r.get("evaluation") for r in results.values()]
    if len(evs) == 2 and all(evs):
        (a, ra), (b, rb) = results.items()
        pick = lambda r: {k: r["evaluation"].get(k) for k in ("levels", "per_category")}  # noqa: E731
        if pick(ra) != pick(rb):
            raise ValueError(f"the evaluations differ: {a} {evals[a].name} {pick(ra)} vs {b} {evals[b].name} {pick(rb)}; "
                             "evaluate both the same way or pass --eval NAME")
    return {
        "images": paper.TestImages(data), "runs": runs, "evals": evals, "results": results,
        "records": {k: load_records(d / "predictions.jsonl") for k, d in evals.items()},
    }


def make_figures(run_dir, data, out, baseline_dir=None, eval_name=None, n_failures: int = 4, device: str = "cpu",
                 log=print, search_eval_name=None) -> list[Path]:
    """Write every figure of the module docstring into ``out``; returns the paths written. ``search_eval_name``:
    an evaluation of the DMNT run with the object centre searched (``evaluate --center search``), added to the
    table and the plot as the row "DMNT, centre searched" (the figures show the ``eval_name`` one)."""
    import matplotlib

    if "inline" not in matplotlib.get_backend():  # files only: no window, whatever the display
        matplotlib.use("Agg")
    from . import paper
    from .records import pick_successes, select_failures

    out = Path(out)
    ev = load_evaluations(run_dir, data, baseline_dir, eval_name)
    images, records, results, evals = ev["images"], ev["records"], ev["results"], ev["evals"]
    dm = records["DMNT"]
    base = records.get("MT Mask R-CNN")

    # The records the figures show (the same deterministic picks the figure functions make).
    shown = {"DMNT": [r for k in range(4) for r in pick_successes(dm, k)] + [r for _, r in select_failures(dm, n_failures)]}
    if base is not None:
        pairs = paper.comparison_picks(dm, base)
        shown["DMNT"] += [a for a, _ in pairs]
        shown["MT Mask R-CNN"] = [b for _, b in pairs]
    for k, recs in shown.items():
        n = fill_missing(recs, ev["runs"][k], images, device, eval_name=eval_name)
        if n:
            log(f"figures: re-ran the {k} predictor on {n} images (predictions.jsonl has no pose/mask)")

    written = _fig3(run_dir, data, out)
    written.append(paper.figure4(dm, images, out / "fig4_categories.png"))
    written.append(paper.figure5(dm, images, out / "fig5_occluded.png"))
    if base is not None:
        written.append(paper.comparison_figure(dm, base, images, out / "fig5_comparison.png"))
    failures = select_failures(dm, n_failures)
    causes = {}
    if (Path(run_dir) / "model.pt").is_file():  # a DMNT run: label each failure with its diagnosis
        from .predict import diagnose_records, failure_cause

        diags = diagnose_records([r for _, r in failures], run_dir, images, eval_name=eval_name, device=device)
        causes = {r.key: failure_cause(kind, diags[r.key], diags[r.key]["occlusion_ratio"])
                  for kind, r in failures if r.key in diags}
    written.append(paper.figure6(dm, images, out / "fig6_failures.png", n_per_kind=n_failures, causes=causes))
    results, evals = with_searched(results, evals, run_dir, data, search_eval_name)
    md = "# DMNT vs multi-task Mask R-CNN per occlusion level\n\n" + paper.results_markdown(results) + "\n" + \
        "".join(f"- {k}: `{evals[k]}`\n" for k in evals)
    atomic_write_text(out / "results.md", md)
    written.append(out / "results.md")
    written.append(paper.results_plot(results, out / "results.png"))
    return written


def run(args) -> int:
    if args.n_failures < 1:
        print("error: --n-failures must be >= 1", file=sys.stderr)
        return 2
    try:
        written = make_figures(args.run, args.data, args.out, args.baseline, args.eval_name, args.n_failures, args.device,
                               search_eval_name=args.search_eval_name)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} files to {args.out}: {', '.join(p.name for p in written)}")
    return 0
