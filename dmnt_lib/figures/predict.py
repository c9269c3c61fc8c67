"""Re-run a run's predictor on the few images a figure shows, when ``predictions.jsonl`` lacks
the predicted pose or amodal mask (``evaluate`` decides what it stores; the figures only need
the images they draw)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .records import find_eval

__all__ = ["predict_records", "diagnose_records", "failure_cause"]


def _eval_options(run_dir: Path, eval_name: str | None = None) -> dict:
    """The options the run was evaluated with (``results.json``'s ``evaluation`` of ``RUN/eval/<eval_name>``,
    default ``find_eval``'s pick), if recorded."""
    try:
        res = json.loads((find_eval(run_dir, eval_name) / "results.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return res.get("evaluation", {}) if isinstance(res, dict) else {}


def predict_records(records, run_dir, images, device: str = "cpu", batch_size: int = 4, eval_name=None) -> None:
    """Fill ``pose`` (under the ground-truth category's model, the pose the error measures) and
    ``amodal_mask`` of each ``Record`` in place from ``run_dir``'s predictor.

    Args:
        records: ``Record`` list (``id``, ``level`` name the test images). images: ``paper.TestImages``.
        run_dir: the evaluated run; its predictor gets the options (``center``, ``quick``) of the evaluation
            ``eval_name`` (``RUN/eval/<eval_name>``; default ``find_eval``'s pick).
    """
    from ..data import PoseDataset
    from ..evaluate import PREDICTOR_INPUT_KEYS, load_predictor

    records = list(records)
    if not records:
        return
    opts = _eval_options(Path(run_dir), eval_name)
    predictor = load_predictor(run_dir, device, quick=bool(opts.get("quick", False)), **opts.get("predictor_args", {}))
    levels = sorted({r.level for r in records})
    ds = PoseDataset(images.source.root, None, levels)
    index = {(sid, level): i for i, (_, level, sid, _, _) in enumerate(ds.source.items)}
    for b in range(0, len(records), batch_size):
        chunk = records[b:b + batch_size]
        missing = [r.key for r in chunk if r.key not in index]
        if missing:
            raise KeyError(f"test images {missing} are not in {images.source.root}")
        items = [ds[index[r.key]] for r in chunk]
        preds = predictor.predict([{k: it[k] for k in PREDICTOR_INPUT_KEYS} for it in items])
        for r, pred in zip(chunk, preds):
            if not pred.get("detected", False):
                r.detected = False
                continue
            if r.pose is None and pred.get("pose_gt_category") is not None:
                az, el, th = (float(a) for a in pred["pose_gt_category"])
                r.pose = {"azimuth": az, "elevation": el, "theta": th}
            if r.amodal_mask is None and pred.get("amodal_mask") is not None:
                r.amodal_mask = np.asarray(pred["amodal_mask"], dtype=bool)


def failure_cause(kind: str, diag: dict, occlusion: float = 0.0) -> str:
    """A short caption of why a failure happened, from its ``inference.diagnose`` record ``diag`` (the failure
    labels there: ``grid`` the true class was not among the grid's top k, ``search`` the score preferred the truth
    and the search missed it, ``shape`` only the object's own CAD shape beats the prediction at the truth,
    ``score`` the features prefer the wrong answer); ``occlusion`` the hidden share of the object."""
    if kind == "class":
        label = diag["class_failure"]
        what = {"search": "search missed its class", "shape": "shape differs", "score": f"features say {diag['predicted']}"}
    else:
        label = diag["pose_failure"]
        what = {"search": "search missed its pose", "shape": "shape differs", "score": "features prefer this pose"}
    if kind == "class" and label == "grid":
        text = "its class left out by the grid"
    elif kind == "segmentation" and label == "ok":  # pose right, silhouette wrong: the mean shape
        text = f"mean shape: IoU {diag['iou_gt_mean']:.2f} at the truth"
    elif label == "ok":  # the re-run did not fail as the evaluation did (another config): say nothing wrong
        text = "not reproduced"
    else:
        text = what[label]
    if occlusion >= 0.5:
        text += f"; occluder hides {100 * occlusion:.0f}%"
    elif diag.get("bg_explained", 0) >= 0.5:
        text += "; clutter looks like objects"
    return text


def diagnose_records(records, run_dir, images, eval_name=None, device: str = "cpu") -> dict:
    """``{(id, level): inference.diagnose record}`` for ``records`` of a DMNT run, with the inference options of
    its evaluation ``eval_name`` (the same predictions, labelled); ``{}`` for a run that is not DMNT's."""
    import torch

    from ..data import PoseDataset
    from ..evaluate import load_predictor
    from ..inference.diagnose import _truth, diagnose_batch
    from ..inference.infer import model_inputs

    records = list(records)
    if not records:
        return {}
    opts = _eval_options(Path(run_dir), eval_name)
    predictor = load_predictor(run_dir, device, quick=bool(opts.get("quick", False)), **opts.get("predictor_args", {}))
    model = getattr(predictor, "model", None)
    if model is None or not hasattr(model, "texture"):
        return {}
    config = predictor.inference
    textures, meshes, bg = model_inputs(model, config)
    ds = PoseDataset(images.source.root, None, sorted({r.level for r in records}))
    index = {(cat, sid, level): i for i, (cat, level, sid, _, _) in enumerate(ds.source.items)}
    out = {}
    for r in records:
        i = index.get((r.category, r.id, r.level))
        if i is None or r.category not in model.categories:  # not a test image of a category the model knows
            continue
        it = ds[i]
        with torch.no_grad():
            feats = model.features(it["image"][None].to(device)).float().cpu()
        (d,) = diagnose_batch(feats, textures, meshes, bg, [_truth(it, f"L{r.level}/{r.category}/{r.id}")],
                              it["image"].shape[-2:], int(model.stride), predictor.center, config,
                              own_meshes=[model.mesh(it["category"], int(it["cad_index"]))])
        d["occlusion_ratio"] = float(it["occlusion_ratio"])
        out[r.key] = d
    return out
