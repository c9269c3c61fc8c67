"""Evaluation per occlusion level (docs/design.md §10), shared by DMNT and the Mask R-CNN baseline.

``python -m dmnt_lib evaluate --run RUN --data TESTDIR [--levels 0 1 2 3] [--per-category N]
[--center known|search] [--quick] [--device cpu]`` evaluates a trained run on a test set and writes,
under ``RUN/eval/<name>/`` (``<name>`` from the data folder and the options, see ``eval_name``):

* ``predictions.jsonl`` -- one JSON object per image, appended and flushed as soon as the image is
  done, so an interrupted evaluation resumes where it stopped (finished images are skipped; a
  truncated last line, from a kill mid-write, is cut off and redone);
* ``results.json`` (written atomically) -- ``summarize``'s output plus the method and its config::

      {"method": "baseline", "config": {...predictor config...}, "evaluation": {...options...},
       "levels": {"0": {"n", "acc_pi6", "acc_pi18", "median_deg", "cls_acc", "miou",
                        "acc_pi6_pred_cls", "n_undetected"}, "1": ...},
       "per_category": {"car": {"0": {...same keys..., "acc_pi6_flip"}, ...}, ...},
       "diagnostics": {"0": {"acc_pi6_flip"}, ...}}

* ``results.md`` and ``results.csv`` -- the level table (``markdown_table`` / ``csv_table``), also printed.

Metrics (PASCAL3D+ protocol): the pose error is the geodesic rotation error
(``camera.rotation_error`` of ``camera.pose_to_rotation``) of the pose estimated **under the
ground-truth category's model** (``acc_pi6`` = fraction < 30°, ``acc_pi18`` < 10°, ``median_deg``);
``acc_pi6_pred_cls`` uses the pose under the predicted category instead; ``cls_acc`` is top-1
classification accuracy; ``miou`` is the mean over images of the IoU of the predicted amodal mask
with the ground-truth amodal mask. An image without a detection counts as wrong on every task
(pose error 180°, IoU 0, class wrong) and is counted in ``n_undetected``. ``acc_pi6_flip``
(diagnostic) forgives a 180° azimuth flip: the smaller error of the pose and its azimuth + π.

**Runs and predictors.** A run directory holds ``run.json`` with at least ``{"kind": KIND}``
(``"baseline"``: written by ``baseline train``); a DMNT training folder has none and is recognised by
``dmnt_lib.inference.evaluate.detect`` (``model.pt``, or the ``checkpoint.pt`` of an unfinished run, and
``log.jsonl``). The kind selects
a loader in ``PREDICTORS`` (``register_predictor``); kinds in ``LAZY_PREDICTORS`` are imported on
first use from a module exposing ``load_predictor(run_dir, device, args)`` (a run without
``run.json`` is also offered to each such module's optional ``detect(run_dir) -> bool``).
A predictor has ``method`` (str), ``config`` (JSON-able dict) and ``predict(batch) -> list[dict]``.

``batch`` is a list of dicts with only the keys of ``PREDICTOR_INPUT_KEYS``: ``image`` ``(3, H, W)``
float32 in [0, 1], ``focal`` (pixels, scalar tensor), ``principal`` ``(2,)`` ``(x, y)`` pixels,
``id``, ``level``, and ``category`` (the ground-truth name: a predictor may use it **only** to
give ``pose_gt_category``). Each output dict:

====================  ==========================================================================
``category``          str, the predicted category (a name of ``data.CATEGORIES``)
``scores``            ``{category: float}`` (may be partial)
``pose``              ``(azimuth, elevation, theta)`` radians, under the predicted category
``pose_gt_category``  the same under the ground-truth category's model
``amodal_mask``       ``(H, W)`` bool ``np.ndarray`` at image resolution
``detected``          bool; when False the other fields may be None
``time_s``            float, seconds spent on this image
====================  ==========================================================================
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from .fileio import atomic_write_text

__all__ = [
    "PREDICTORS", "LAZY_PREDICTORS", "PREDICTOR_INPUT_KEYS", "METRIC_KEYS", "register_predictor", "run_kind",
    "load_predictor", "evaluate_run", "eval_name", "image_record", "read_predictions", "summarize",
    "markdown_table", "csv_table", "add_parser", "run",
]

#: kind -> loader(run_dir: Path, device: str, args: dict) -> predictor
PREDICTORS: dict = {}
#: kind -> module imported on first use; it registers its loader or exposes ``load_predictor``.
LAZY_PREDICTORS = {"baseline": "dmnt_lib.baseline.evaluate", "dmnt": "dmnt_lib.inference.evaluate"}
#: What a predictor sees of each test sample (the ground-truth pose and masks are withheld).
PREDICTOR_INPUT_KEYS = ("id", "level", "category", "image", "focal", "principal")
#: The per-level metrics of ``results.json``, in table order.
METRIC_KEYS = ("n", "acc_pi6", "acc_pi18", "median_deg", "cls_acc", "miou", "acc_pi6_pred_cls", "n_undetected")
_HEADERS = {"n": "n", "acc_pi6": "Acc@pi/6", "acc_pi18": "Acc@pi/18", "median_deg": "median (deg)",
            "cls_acc": "cls acc", "miou": "mIoU", "acc_pi6_pred_cls": "Acc@pi/6 (pred cls)", "n_undetected": "undetected"}


# --------------------------------------------------------------------------- predictors


def register_predictor(kind: str, loader) -> None:
    """Register ``loader(run_dir: Path, device: str, args: dict) -> predictor`` for runs of ``kind``."""
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"kind must be a non-empty str, got {kind!r}")
    if not callable(loader):
        raise TypeError(f"loader must be callable, got {type(loader).__name__}")
    PREDICTORS[kind] = loader


def _import_kind(kind: str):
    """Import the lazy module of ``kind``; None when it does not exist (yet)."""
    name = LAZY_PREDICTORS.get(kind)
    if name is None:
        return None
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            return None
        raise
    if kind not in PREDICTORS and hasattr(module, "load_predictor"):
        register_predictor(kind, module.load_predictor)
    return module


def run_kind(run_dir) -> str:
    """The kind of a run directory: ``run.json``'s ``"kind"``, else the first lazy module whose
    ``detect(run_dir)`` says yes. ``ValueError`` with what was looked for when nothing matches."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    marker = run_dir / "run.json"
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text()).get("kind")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as e:
            raise ValueError(f"{marker}: not a JSON object with a 'kind' field ({e})") from None
        if not isinstance(kind, str):
            raise ValueError(f"{marker}: missing or non-string 'kind' (expected one of {sorted(set(PREDICTORS) | set(LAZY_PREDICTORS))})")
        return kind
    for kind in LAZY_PREDICTORS:
        module = _import_kind(kind)
        detect = getattr(module, "detect", None)
        if detect is not None and detect(run_dir):
            return kind
    raise ValueError(f"{run_dir} is not a recognised run: it has no run.json with a 'kind' field "
                     f"(one of {sorted(set(PREDICTORS) | set(LAZY_PREDICTORS))}); train one with "
                     "`python -m dmnt_lib baseline train` or `python -m dmnt_lib train`")


def load_predictor(run_dir, device: str = "cpu", **args):
    """The predictor of a run directory (see the module docstring)."""
    kind = run_kind(run_dir)
    if kind not in PREDICTORS:
        _import_kind(kind)
    if kind not in PREDICTORS:
        known = sorted(set(PREDICTORS) | set(LAZY_PREDICTORS))
        raise ValueError(f"{run_dir}: run kind {kind!r} has no predictor (known kinds: {known}"
                         + (f"; module {LAZY_PREDICTORS[kind]} is not available" if kind in LAZY_PREDICTORS else "") + ")")
    predictor = PREDICTORS[kind](Path(run_dir), device, dict(args))
    for attr in ("predict", "config", "method"):
        if not hasattr(predictor, attr):
            raise TypeError(f"the {kind!r} loader returned an object without {attr!r}")
    return predictor


# --------------------------------------------------------------------------- per-image metrics


def _pose_error_deg(gt: tuple, pred) -> float:
    import torch

    from .camera import pose_to_rotation, rotation_error

    r_gt = pose_to_rotation(*[torch.tensor([float(a)], dtype=torch.float64) for a in gt])
    r_pr = pose_to_rotation(*[torch.tensor([float(a)], dtype=torch.float64) for a in pred])
    return float(rotation_error(r_gt.double(), r_pr.double())[0]) * 180 / math.pi


def _check_pose(name: str, pose) -> tuple[float, float, float]:
    try:
        values = tuple(float(a) for a in pose)
    except (TypeError, ValueError):
        raise ValueError(f"prediction field {name!r} must be 3 angles (azimuth, elevation, theta), got {pose!r}") from None
    if len(values) != 3 or not all(math.isfinite(a) for a in values):
        raise ValueError(f"prediction field {name!r} must be 3 finite angles (radians), got {pose!r}")
    return values


def image_record(item: dict, pred: dict) -> dict:
    """One ``predictions.jsonl`` line from a dataset item (``data.PoseDataset``) and a prediction.

    Returns:
        ``{"key", "id", "level", "category", "pred_category", "detected", "pose_error_deg" (gt
        category's pose), "pose_error_pred_cls_deg", "pose_error_flip_deg" (azimuth + π forgiven),
        "iou", "time_s", "occlusion_ratio", "gt_pose", "pred_pose", "amodal_mask" (``rle.encode_mask``
        RLE, only when detected)}``; undetected: errors 180, IoU 0.
    """
    from .data import CATEGORIES

    if not isinstance(pred, dict):
        raise TypeError(f"a prediction must be a dict, got {type(pred).__name__}")
    gt_mask = np.asarray(item["mask"], dtype=bool)
    gt_pose = tuple(float(item[k]) for k in ("azimuth", "elevation", "theta"))
    rec = {"key": _key(item), "id": str(item["id"]), "level": int(item["level"]), "category": str(item["category"]),
           "occlusion_ratio": float(item["occlusion_ratio"]), "gt_pose": list(gt_pose),
           "time_s": float(pred.get("time_s") or 0.0), "detected": bool(pred.get("detected", False))}
    if not rec["detected"]:
        rec.update(pred_category=None, pose_error_deg=180.0, pose_error_pred_cls_deg=180.0, pose_error_flip_deg=180.0,
                   iou=0.0, pred_pose=None)
        return rec
    category = pred.get("category")
    if category not in CATEGORIES:
        raise ValueError(f"prediction field 'category' must be one of {CATEGORIES}, got {category!r}")
    pose = _check_pose("pose", pred.get("pose"))
    pose_gt = _check_pose("pose_gt_category", pred.get("pose_gt_category"))
    mask = pred.get("amodal_mask")
    mask = None if mask is None else np.asarray(mask)
    if mask is None or mask.shape != gt_mask.shape:
        raise ValueError(f"prediction field 'amodal_mask' must have the image's shape {gt_mask.shape}, "
                         f"got {None if mask is None else mask.shape}")
    mask = mask.astype(bool)
    union = (mask | gt_mask).sum()
    flip = (pose_gt[0] + math.pi, pose_gt[1], pose_gt[2])
    err = _pose_error_deg(gt_pose, pose_gt)
    rec.update(pred_category=category, pose_error_deg=err, pose_error_pred_cls_deg=_pose_error_deg(gt_pose, pose),
               pose_error_flip_deg=min(err, _pose_error_deg(gt_pose, flip)),
               iou=float((mask & gt_mask).sum() / union) if union else 1.0, pred_pose=list(pose_gt))
    from .rle import encode_mask  # the figures draw it (run-length, ~1 kB per 128 px image)

    rec["amodal_mask"] = encode_mask(mask)
    return rec


def _key(item) -> str:
    return f"L{int(item['level'])}/{item['category']}/{item['id']}"


# --------------------------------------------------------------------------- tables


def _metrics(records: list[dict]) -> dict:
    err = np.array([r["pose_error_deg"] for r in records], dtype=np.float64)
    err_pred = np.array([r["pose_error_pred_cls_deg"] for r in records], dtype=np.float64)
    return {
        "n": len(records),
        "acc_pi6": float((err < 30).mean()),
        "acc_pi18": float((err < 10).mean()),
        "median_deg": float(np.median(err)),
        "cls_acc": float(np.mean([r["detected"] and r["pred_category"] == r["category"] for r in records])),
        "miou": float(np.mean([r["iou"] for r in records])),
        "acc_pi6_pred_cls": float((err_pred < 30).mean()),
        "n_undetected": int(sum(not r["detected"] for r in records)),
    }


def _flip(records) -> dict:
    return {"acc_pi6_flip": float(np.mean([r["pose_error_flip_deg"] < 30 for r in records]))}


def summarize(records) -> dict:
    """Per-level metrics (``METRIC_KEYS``), per category and level (plus ``acc_pi6_flip``), and the
    per-level flip-forgiven diagnostic, from ``image_record`` dicts.

    Returns:
        ``{"levels": {"0": {...}, ...}, "per_category": {cat: {"0": {...}}}, "diagnostics": {"0": {...}}}``
        (levels as strings, sorted; only levels and categories present in ``records``).
    """
    records = list(records)
    if not records:
        raise ValueError("records must not be empty")
    by_level: dict[int, list] = {}
    by_cat: dict[str, dict[int, list]] = {}
    for r in records:
        by_level.setdefault(int(r["level"]), []).append(r)
        by_cat.setdefault(r["category"], {}).setdefault(int(r["level"]), []).append(r)
    return {
        "levels": {str(k): _metrics(by_level[k]) for k in sorted(by_level)},
        "per_category": {c: {str(k): {**_metrics(v[k]), **_flip(v[k])} for k in sorted(v)} for c, v in sorted(by_cat.items())},
        "diagnostics": {str(k): _flip(by_level[k]) for k in sorted(by_level)},
    }


def _rows(results) -> tuple[list[str], list[list[str]]]:
    many = isinstance(results, (list, tuple))
    runs = list(results) if many else [results]
    header = (["method"] if many else []) + ["level"] + [_HEADERS[k] for k in METRIC_KEYS]
    rows = []
    for res in runs:
        for level, m in res["levels"].items():
            cells = [f"L{level}"] + [str(m[k]) if k in ("n", "n_undetected") else
                                     (f"{m[k]:.1f}" if k == "median_deg" else f"{m[k]:.3f}") for k in METRIC_KEYS]
            rows.append(([str(res.get("method", ""))] if many else []) + cells)
    return header, rows


def markdown_table(results) -> str:
    """The level table of one ``results`` dict (or of a list of them, with a method column) as markdown."""
    header, rows = _rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_table(results) -> str:
    """The same table as ``markdown_table``, as CSV text."""
    header, rows = _rows(results)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


# --------------------------------------------------------------------------- the evaluation loop


def read_predictions(path) -> list[dict]:
    """The records of a ``predictions.jsonl``; a truncated last line (interrupted write) is cut off
    the file. ``ValueError`` for a corrupt line elsewhere."""
    path = Path(path)
    if not path.is_file():
        return []
    raw = path.read_bytes()
    records, good = [], 0
    lines = raw.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if not line.strip():
            if not last:
                good += len(line) + 1
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or "key" not in rec:
                raise ValueError("not a record")
        except ValueError as e:
            if last:  # the partial line of an interrupted write: drop it, the image is redone
                break
            raise ValueError(f"{path}: line {i + 1} is corrupt ({e}); delete the file to start over") from None
        if last:  # complete JSON without its newline: keep it, and give it its newline back
            good += len(line)
            records.append(rec)
            with open(path, "r+b") as f:
                f.truncate(good)
                f.seek(good)
                f.write(b"\n")
            return records
        records.append(rec)
        good += len(line) + 1
    if good != len(raw):
        with open(path, "r+b") as f:
            f.truncate(good)
    return records


def eval_name(data, levels, per_category, quick=False, **predictor_args) -> str:
    """The ``RUN/eval/<name>`` folder name: data folder name, levels, images per category, options."""
    parts = [Path(data).name or "data", "L" + "".join(str(k) for k in levels), f"n{per_category}" if per_category else "all"]
    parts += [f"{k}-{v}" for k, v in sorted(predictor_args.items()) if v is not None]
    if quick:
        parts.append("quick")
    return "_".join(str(p).replace(os.sep, "-") for p in parts)


def _select(dataset, per_category):
    """Indices of the first ``per_category`` samples of each (category, level) (all when None)."""
    counts: dict = {}
    keep = []
    for i, (cat, level, *_rest) in enumerate(dataset.source.items):
        n = counts.get((cat, level), 0)
        if per_category is None or n < per_category:
            keep.append(i)
        counts[(cat, level)] = n + 1
    return keep



def _fingerprint(obj) -> str:
    """A short digest of a JSON-able object (non-JSON leaves by ``str``), independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _checkpoint_stats(run) -> list:
    """``(name, size, mtime_ns)`` of a run folder's checkpoint files (``*.pt``): retraining in place changes them."""
    if not isinstance(run, (str, os.PathLike)):
        return []
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(run).glob("*.pt"))]


def _data_digest(data: Path, levels) -> str:
    """Digest of the test set's annotation files (names and bytes) at ``levels`` and of its ``meta.json``."""
    h = hashlib.sha256()
    for p in [data / "meta.json"] + sorted(q for q in data.rglob("*.npz") if "annotations" in q.parts):
        if p.is_file():
            h.update(str(p.relative_to(data)).encode() + b"\0" + p.read_bytes())
    h.update(json.dumps(list(levels)).encode())
    return h.hexdigest()[:16]

def _check_options(levels, per_category, device):
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
        raise TypeError(f"levels must be a sequence of ints from 0-3, got {levels!r}")
    levels = list(levels)
    if not levels or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k not in (0, 1, 2, 3) for k in levels):
        raise ValueError(f"levels must be a non-empty sequence of ints from 0-3, got {levels!r}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"levels must not repeat, got {levels!r}")
    if per_category is not None and (isinstance(per_category, bool) or not isinstance(per_category, (int, np.integer))
                                     or per_category < 1):
        raise ValueError(f"per_category must be a positive int or None, got {per_category!r}")
    if not isinstance(device, str):
        raise TypeError(f"device must be a str such as 'cpu' or 'cuda', got {type(device).__name__}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is available here; use 'cpu'")
    return [int(k) for k in levels], None if per_category is None else int(per_category)


def evaluate_run(run, data, levels=(0, 1, 2, 3), per_category=None, quick=False, device="cpu", out=None,
                 batch_size=1, progress=True, echo=print, **predictor_args) -> dict:
    """Evaluate a run (a directory, or a predictor object when ``out`` is given) on a test set.

    Args:
        run: run directory (see the module docstring), or a predictor object.
        data: test dataset folder (``data --levels 0 1 2 3``) or NeMo split folder.
        levels: occlusion levels to evaluate. per_category: first N samples per category and level
            (``None``: all; ``quick`` without it: 2).
        quick: small evaluation (also passed to the predictor loader as ``args["quick"]``).
        device: torch device string for the predictor. out: output folder (default
            ``RUN/eval/<eval_name(...)>``). batch_size: images per ``predict`` call.
        progress: tqdm bar. echo: receives the markdown table (None: silent).
        **predictor_args: passed to the loader (e.g. ``center="known"``); part of the folder name.

    Returns:
        The ``results.json`` dict.
    """
    from tqdm.auto import tqdm

    from .data import PoseDataset

    levels, per_category = _check_options(levels, per_category, device)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if quick and per_category is None:
        per_category = 2
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"test data folder not found: {data}")
    if isinstance(run, (str, os.PathLike)):
        predictor = load_predictor(run, device, quick=bool(quick), **predictor_args)
        if out is None:
            out = Path(run) / "eval" / eval_name(data, levels, per_category, quick, **predictor_args)
    else:
        predictor = run
        if not all(hasattr(predictor, a) for a in ("predict", "config", "method")):
            raise TypeError("run must be a run directory or a predictor (with predict, config and method)")
        if out is None:
            raise ValueError("out is required when run is a predictor object")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    options = {"data": str(data.resolve()), "levels": levels, "per_category": per_category, "quick": bool(quick),
               "predictor_args": {k: v for k, v in sorted(predictor_args.items())}}
    # Resuming must never mix predictions of two models or two test sets under one name: the folder also
    # records what was evaluated (the predictor's method and config, the run's checkpoint files) and a
    # digest of the test annotations, and refuses to continue when either changed.
    identity = {"predictor": _fingerprint({"method": predictor.method, "config": predictor.config,
                                           "checkpoints": _checkpoint_stats(run)}),
                "data": _data_digest(data, levels)}
    opt_path = out / "options.json"
    if opt_path.is_file():
        saved = json.loads(opt_path.read_text())
        saved_identity = saved.pop("identity", None)
        if saved != options:
            raise ValueError(f"{out} holds an evaluation with other options ({saved}); choose another out folder")
        for what in ("predictor", "data"):
            if saved_identity is None or saved_identity.get(what) != identity[what]:
                thing = "model (run checkpoint or predictor config)" if what == "predictor" else "test data"
                raise ValueError(f"{out} holds predictions of another {thing} than this evaluation's; "
                                 f"delete that folder or choose another out folder")
    else:
        atomic_write_text(opt_path, json.dumps({**options, "identity": identity}, indent=1) + "\n")

    dataset = PoseDataset(data, None, levels)
    indices = _select(dataset, per_category)
    pred_path = out / "predictions.jsonl"
    done = {r["key"]: r for r in read_predictions(pred_path)}
    todo = [i for i in indices if _key_of(dataset, i) not in done]
    start = time.perf_counter()
    with open(pred_path, "a") as f, tqdm(total=len(indices), initial=len(indices) - len(todo), disable=not progress,
                                          desc=f"evaluate {predictor.method}", unit="img") as bar:
        for b in range(0, len(todo), batch_size):
            items = [dataset[i] for i in todo[b:b + batch_size]]
            preds = predictor.predict([{k: it[k] for k in PREDICTOR_INPUT_KEYS} for it in items])
            if not isinstance(preds, (list, tuple)) or len(preds) != len(items):
                raise ValueError(f"predictor.predict must return one dict per image ({len(items)}), got "
                                 f"{len(preds) if isinstance(preds, (list, tuple)) else type(preds).__name__}")
            for it, pred in zip(items, preds):
                rec = image_record(it, pred)
                f.write(json.dumps(rec) + "\n")
                f.flush()  # one finished image is never lost
                done[rec["key"]] = rec
                bar.update(1)
    wanted = {_key_of(dataset, i) for i in indices}
    records = [r for k, r in done.items() if k in wanted]
    results = {"method": predictor.method, "config": predictor.config,
               "evaluation": {**options, "n_images": len(records), "wall_s_this_call": time.perf_counter() - start,
                              "mean_time_s": float(np.mean([r["time_s"] for r in records]))},
               **summarize(records)}
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    table = markdown_table(results)
    atomic_write_text(out / "results.md", table)
    atomic_write_text(out / "results.csv", csv_table(results))
    if echo is not None:
        echo(f"{predictor.method} on {data} ({len(records)} images) -> {out}")
        echo(table)
    return results


def _key_of(dataset, i) -> str:
    cat, level, sid, *_ = dataset.source.items[i]
    return f"L{level}/{cat}/{sid}"


# --------------------------------------------------------------------------- CLI


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``evaluate`` on an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "evaluate", help="evaluate a trained run (DMNT or baseline) per occlusion level",
        description="Pose (Acc@pi/6, Acc@pi/18, median), classification and amodal mIoU per occlusion level of a "
        "test set, for a DMNT or a multi-task Mask R-CNN run (recognised from RUN/run.json). Writes "
        "RUN/eval/<name>/{predictions.jsonl,results.json,results.md,results.csv}; rerunning resumes.")
    p.add_argument("--run", type=Path, required=True, help="run directory (holds run.json)")
    p.add_argument("--data", type=Path, required=True, help="test data folder, e.g. from `data --levels 0 1 2 3 --seed 1`")
    p.add_argument("--levels", type=int, nargs="+", default=[0, 1, 2, 3], choices=[0, 1, 2, 3], help="levels (default 0 1 2 3)")
    p.add_argument("--per-category", type=int, help="first N images per category and level (default: all; 2 with --quick)")
    p.add_argument("--center", choices=["known", "search"], default="known",
                   help="object centre: the annotated principal point, or searched (DMNT; the baseline ignores it)")
    p.add_argument("--quick", action="store_true", default=os.environ.get("DMNT_QUICK") == "1",
                   help="small evaluation (default from DMNT_QUICK=1)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--batch-size", type=int, default=1, help="images per predictor call (default 1)")
    p.add_argument("--out", type=Path, help="output folder (default RUN/eval/<name>)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Run ``evaluate``; exit status 2 with a one-line message for bad arguments or runs."""
    try:
        evaluate_run(args.run, args.data, args.levels, args.per_category, args.quick, args.device, args.out,
                     batch_size=args.batch_size, progress=not args.no_progress, center=args.center)
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
