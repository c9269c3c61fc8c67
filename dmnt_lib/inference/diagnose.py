"""Why render-and-compare got an image wrong: per-image diagnostics, aggregated per category and level.

``python -m dmnt_lib diagnose --run RUN --data DIR [--levels 0 3] [--per-category N] [--set key=value]``
runs inference on a labelled set (the ground-truth category is refined too, as ``evaluate`` does) and
labels every failure by asking the score itself at the truth:

* **pose** (the ground-truth category's fitted pose, > 30° off): ``search`` when the fit objective
  (``config.fit_score``) at the ground-truth pose with the mean-code mesh beats the fitted pose's (the
  objective prefers the truth, the search missed it); else ``shape`` when it does with the image's own
  CAD shape (the mean shape is what misleads it); else ``score`` (the features/score prefer the wrong
  pose). ``pose_kind`` says whether the error is a 180° azimuth flip, a 90° confusion or other.
* **class** (wrong category): ``grid`` when the true category was not among the grid's ``top_k`` (it never
  competed), else the same three labels, comparing the winner's class score (``config.score``) with the
  ground-truth category's at its true pose (mean shape, then own shape).
  ``rank_init``/``rank_final`` are the true category's rank after the grid and after refinement,
  ``margin`` its score minus the best other category's.
* **segmentation ceiling**: amodal IoU of the mean-code silhouette at the ground-truth pose, of the
  image's own CAD shape there, and (``latent_steps > 0``) of a shape code fitted to the true mask there
  (``deform.fit_latent``); beside the IoU of the prediction and of every refined category's fit.
* **clutter**: the share of off-object feature pixels that some category's texture explains better than
  the background model (``vote.category_maps`` against ``b``), and which categories win them; on the
  visible object, the share won by its own category, by another, by the background.
* the pose-free **vote** per category (``vote.py``) and both render-and-compare scores of every refined
  category, so other class rules can be scored from one run (``rule_table``).

Everything is written to ``OUT/diagnostics.jsonl`` (one line per image, resumable), ``OUT/summary.json``
and ``OUT/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..camera import pose_to_cameras, pose_to_rotation, rotation_error
from ..fileio import atomic_write_text
from .config import InferenceConfig
from .engine import render_and_compare
from .raster import fragments
from .refine import evaluate_hypotheses
from .score import SCORE_KINDS, background_map, combine
from .vote import category_maps, vote_scores

__all__ = ["pose_error_deg", "score_at_pose", "silhouette", "diagnose_batch", "diagnose_model", "summarize",
           "markdown", "rule_table", "add_parser", "run"]

POSE_OK_DEG = 30.0
#: textures are average-pooled to this size for the per-pixel maxima of the vote and the clutter shares
VOTE_TEXTURE_SIZE = 32


def pose_error_deg(gt, pred) -> float:
    """Geodesic rotation error in degrees between two ``(azimuth, elevation, theta)`` poses (radians)."""
    r = [pose_to_rotation(*[torch.tensor([float(a)], dtype=torch.float64) for a in p]).double() for p in (gt, pred)]
    return float(rotation_error(r[0], r[1])[0]) * 180 / math.pi


def _pose_kind(gt, pred) -> tuple[str, float]:
    """``(kind, error°)``: ``ok`` (< 30°), ``flip`` (azimuth + π is within 30°), ``quarter`` (azimuth ± π/2 is),
    else ``other``."""
    err = pose_error_deg(gt, pred)
    if err < POSE_OK_DEG:
        return "ok", err
    for kind, shifts in (("flip", (math.pi,)), ("quarter", (math.pi / 2, -math.pi / 2))):
        if any(pose_error_deg(gt, (pred[0] + s, pred[1], pred[2])) < POSE_OK_DEG for s in shifts):
            return kind, err
    return "other", err


def score_at_pose(features, bgmap, texture, background, mesh, pose: dict, focal_f: float, principal_f, hw, config) -> dict:
    """Both scores (kind → float) of ``mesh`` at one pose on one image, exactly as refinement computes them.

    ``features (1, D, h, w)``, ``bgmap (1, h, w)``, ``texture (D, S, S)``, ``background (K, D)``, ``mesh`` a
    ``UVMesh``; ``pose`` with ``azimuth, elevation, theta, distance``; ``focal_f`` and ``principal_f (x, y)``
    in feature pixels; ``hw = (h, w)``."""
    p = {"image": torch.zeros(1, dtype=torch.int64), "focal": torch.tensor([float(focal_f)]),
         "principal": torch.as_tensor(principal_f, dtype=torch.float32).reshape(1, 2), "shift": torch.zeros(1, 2),
         "logd": torch.tensor([math.log(float(pose["distance"]))]), "code": None,
         **{k: torch.tensor([float(pose[k])]) for k in ("azimuth", "elevation", "theta")}}
    with torch.no_grad():
        terms, _ = evaluate_hypotheses(features.float(), bgmap.float(), texture.float(), background.float(), mesh, None,
                                       p, tuple(hw), config)
        return {k: float(combine(*terms, k)[0]) for k in SCORE_KINDS}


def silhouette(mesh, pose: dict, focal: float, principal, image_size, backend: str = "auto") -> torch.Tensor:
    """``(H, W)`` bool silhouette of ``mesh`` (a ``UVMesh``) at ``pose`` (image pixels)."""
    with torch.no_grad():
        cams = pose_to_cameras(*(torch.tensor([float(pose[k])]) for k in ("azimuth", "elevation", "theta", "distance")),
                               tuple(image_size), focal=float(focal), principal=torch.as_tensor(principal, dtype=torch.float32).reshape(1, 2))
        return fragments(mesh, cams, tuple(image_size), backend=backend).mask[0].cpu()


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return float(int((a & b).sum()) / union) if union else 1.0


def _rank(scores: dict, cat: str) -> int:
    """1-based rank of ``cat`` in ``scores`` (ties count against it)."""
    return 1 + sum(v >= scores[cat] for c, v in scores.items() if c != cat)


def _failure(best_other: float, at_truth_mean: float, at_truth_own: float | None) -> str:
    if at_truth_mean > best_other:
        return "search"
    if at_truth_own is not None and at_truth_own > best_other:
        return "shape"
    return "score"


def _latent_iou(deformable, pose, focal, principal, target: torch.Tensor, steps: int) -> float:
    """IoU at the true pose of a shape code fitted to the true amodal mask (``deform.fit_latent``), at half
    resolution (the soft rasterizer's cost grows with the image)."""
    from ..deform import fit_latent

    H, W = target.shape
    h, w = max(H // 2, 1), max(W // 2, 1)
    small = F.interpolate(target[None, None].float(), size=(h, w), mode="area")[0, 0] > 0.5
    if not small.any():
        return float("nan")
    pp = torch.as_tensor(principal, dtype=torch.float32).reshape(1, 2) * torch.tensor([w / W, h / H])
    cams = pose_to_cameras(*(torch.tensor([float(pose[k])]) for k in ("azimuth", "elevation", "theta", "distance")),
                           (h, w), focal=float(focal) * h / H, principal=pp)
    fit = fit_latent(deformable, cams, small[None], steps=steps)
    with torch.no_grad():
        mesh = deformable.deformed(fit.z)
    return _iou(silhouette(mesh, pose, focal, principal, (H, W)), target)


def diagnose_batch(features, textures: dict, meshes: dict, background, truths: list[dict], image_size, stride: int,
                   center: str = "known", config: InferenceConfig | None = None, own_meshes=None, deformables=None,
                   latent_steps: int = 0) -> list[dict]:
    """Run inference on a batch and diagnose every image (module docstring).

    Args:
        features: ``(B, D, h, w)`` unit features; textures, meshes, background: as ``render_and_compare``.
        truths: per image ``{"category", "azimuth", "elevation", "theta", "distance", "focal" (image px),
            "principal" (x, y image px), "mask" ((H, W) bool amodal), "visible_mask" ((H, W) bool), "key", "level"}``.
        image_size, stride, center, config: as ``render_and_compare`` (the ground-truth category is refined
            with ``include``; it never classifies).
        own_meshes: optional per-image ``UVMesh`` of the image's own shape (its CAD model's code), or None.
        deformables: category → ``DeformableMesh`` for the latent-fit ceiling (``latent_steps > 0``).

    Returns:
        one dict per image (see ``summarize`` for the fields it aggregates).
    """
    config = config or InferenceConfig()
    b = features.shape[0]
    if len(truths) != b:
        raise ValueError(f"truths must have one entry per image ({b}), got {len(truths)}")
    if own_meshes is not None and len(own_meshes) != b:
        raise ValueError(f"own_meshes must have one entry per image ({b}), got {len(own_meshes)}")
    unknown = sorted({t["category"] for t in truths} - set(textures))
    if unknown:
        raise ValueError(f"truths name categories without a texture: {unknown}")
    if latent_steps and deformables is None:
        raise ValueError("latent_steps > 0 needs deformables (category -> DeformableMesh)")
    H, W = (int(x) for x in image_size)
    focal = torch.tensor([float(t["focal"]) for t in truths])
    principal = torch.tensor([[float(x) for x in t["principal"]] for t in truths])
    preds = render_and_compare(features, textures, meshes, background, focal, principal, (H, W), stride,
                               center=center, config=config, include=[t["category"] for t in truths])
    from .engine import validate_inputs
    from .refine import _mesh_parts

    bg, *_ = validate_inputs(features, textures, meshes, background, focal, principal, (H, W), stride, center, config)
    cats = list(textures)
    h, w = features.shape[-2:]
    with torch.no_grad():
        bgmap = background_map(features.float(), bg.float())
        smaps = category_maps(features.float(), textures, VOTE_TEXTURE_SIZE)  # (B, C, h, w)
        votes = vote_scores(smaps, bgmap)
    mean_mesh = {c: _mesh_parts(meshes[c], False)[0] for c in cats}
    out = []
    for i, (t, p) in enumerate(zip(truths, preds)):
        gt = t["category"]
        fi, bi = features[i: i + 1], bgmap[i: i + 1]
        ff, pf = float(focal[i]) / stride, principal[i] / stride
        gt_pose = {k: float(t[k]) for k in ("azimuth", "elevation", "theta", "distance")}
        gt_angles = (gt_pose["azimuth"], gt_pose["elevation"], gt_pose["theta"])
        gpose = p.poses[gt]
        kind, err = _pose_kind(gt_angles, (gpose["azimuth"], gpose["elevation"], gpose["theta"]))
        at_mean = score_at_pose(fi, bi, textures[gt], bg, mean_mesh[gt], gt_pose, ff, pf, (h, w), config)
        own = own_meshes[i] if own_meshes is not None else None
        at_own = score_at_pose(fi, bi, textures[gt], bg, own, gt_pose, ff, pf, (h, w), config) if own is not None else None
        fit_pred = gpose["objective"]
        rec = {"key": t.get("key", str(i)), "category": gt, "level": int(t.get("level", 0)), "predicted": p.category,
               "correct": p.category == gt, "pose_error_deg": err, "pose_kind": kind,
               "objective_pred": fit_pred, "objective_gt_mean": at_mean[config.fit_score],
               "objective_gt_own": at_own[config.fit_score] if at_own else None,
               "score_gt_mean": at_mean[config.score], "score_gt_own": at_own[config.score] if at_own else None,
               "pose_failure": "ok" if kind == "ok" else _failure(fit_pred, at_mean[config.fit_score],
                                                                    at_own[config.fit_score] if at_own else None)}
        # class: ranks, margin, and what the score says at the truth
        rec["init_scores"] = dict(p.init_scores)
        rec["scores"] = {c: float(v) for c, v in p.scores.items()}
        rec["scores_both"] = {c: dict(v["scores"]) for c, v in p.poses.items() if v.get("refined")}
        rec["objectives"] = {c: float(v["objective"]) for c, v in p.poses.items() if v.get("refined")}
        rec["refined"] = list(p.refined)
        # the categories that competed for the class (the grid's top_k); the true one is refined beside them
        # (``include``) for its pose, so rules over refined scores must be limited to these
        rec["topk"] = sorted(p.init_scores, key=p.init_scores.get, reverse=True)[: config.top_k]
        rec["rank_init"] = _rank(p.init_scores, gt)
        rec["rank_final"] = _rank(rec["scores"], gt)
        others = [v for c, v in rec["scores"].items() if c != gt]
        rec["margin"] = rec["scores"][gt] - max(others) if others else float("inf")
        winner = p.scores[p.category]
        if rec["correct"]:
            rec["class_failure"] = "ok"
        elif gt not in rec["topk"]:  # the grid's ranking dropped it before refinement could compare
            rec["class_failure"] = "grid"
        else:
            rec["class_failure"] = _failure(winner, at_mean[config.score], at_own[config.score] if at_own else None)
        rec["vote"] = {c: float(votes[i, j]) for j, c in enumerate(cats)}
        rec["rank_vote"] = _rank(rec["vote"], gt)
        # segmentation: the prediction, every refined category's fit, and the ceilings at the truth
        truth_mask = torch.as_tensor(np.asarray(t["mask"]), dtype=torch.bool)
        rec["iou_pred"] = _iou(p.amodal_mask, truth_mask)
        rec["iou_fit"] = {}
        for c in p.refined:
            cp = p.poses[c]
            m = mean_mesh[c]
            if cp.get("code") is not None and hasattr(meshes[c], "deformed"):
                m = meshes[c].deformed(cp["code"].detach())
            rec["iou_fit"][c] = _iou(silhouette(m, cp, float(focal[i]), cp["principal"], (H, W), config.backend), truth_mask)
        rec["iou_gt_mean"] = _iou(silhouette(mean_mesh[gt], gt_pose, float(focal[i]), principal[i], (H, W), config.backend), truth_mask)
        rec["iou_gt_own"] = (_iou(silhouette(own, gt_pose, float(focal[i]), principal[i], (H, W), config.backend), truth_mask)
                             if own is not None else None)
        rec["iou_gt_latent"] = (_latent_iou(deformables[gt], gt_pose, float(focal[i]), principal[i], truth_mask, latent_steps)
                                if latent_steps else None)
        # clutter and the per-pixel vote, at feature resolution
        obj = F.avg_pool2d(truth_mask[None, None].float(), stride)[0, 0] > 0  # any object pixel in the cell
        vis = F.avg_pool2d(torch.as_tensor(np.asarray(t.get("visible_mask", t["mask"])), dtype=torch.bool)[None, None].float(),
                           stride)[0, 0] > 0.5
        best, arg = smaps[i].max(0)
        explained = best > bgmap[i]
        off = ~obj
        n_off = int(off.sum())
        rec["bg_explained"] = float((explained & off).sum()) / n_off if n_off else 0.0
        rec["bg_winners"] = {c: float(((arg == j) & explained & off).sum()) / n_off for j, c in enumerate(cats)
                             if n_off and bool(((arg == j) & explained & off).any())}
        n_vis = int(vis.sum())
        g = cats.index(gt)
        rec["fg_own"] = float(((arg == g) & explained & vis).sum()) / n_vis if n_vis else 0.0
        rec["fg_background"] = float((~explained & vis).sum()) / n_vis if n_vis else 0.0
        rec["fg_other"] = 1.0 - rec["fg_own"] - rec["fg_background"] if n_vis else 0.0
        rec["time_s"] = float(p.time_s)
        out.append(rec)
    return out


def _truth(item: dict, key: str) -> dict:
    t = {k: float(item[k]) for k in ("azimuth", "elevation", "theta", "distance", "focal")}
    t.update(category=str(item["category"]), principal=[float(x) for x in item["principal"]], key=key,
             level=int(item["level"]), mask=np.asarray(item["mask"], dtype=bool),
             visible_mask=np.asarray(item["visible_mask"], dtype=bool))
    return t


def diagnose_model(model, dataset, indices, config: InferenceConfig | None = None, center: str = "known",
                   batch_size: int = 8, latent_steps: int = 0, out_path=None, progress: bool = True) -> list[dict]:
    """``diagnose_batch`` over ``dataset[indices]`` (a ``data.PoseDataset``) with a trained ``DMNT``.

    The image's own shape is ``model.mesh(category, cad_index)``. With ``out_path`` each image's record is
    appended to that JSON-lines file as soon as it is done, and images already there are skipped (resume).
    """
    from tqdm.auto import tqdm

    from ..evaluate import read_predictions
    from .infer import model_inputs

    config = config or InferenceConfig()
    textures, meshes, bg = model_inputs(model, config)
    deformables = {c: model.deformable(c) for c in model.categories} if latent_steps else None
    done = {r["key"]: r for r in read_predictions(out_path)} if out_path is not None and Path(out_path).is_file() else {}
    keys = [_key(dataset, i) for i in indices]
    todo = [i for i, k in zip(indices, keys) if k not in done]
    fh = open(out_path, "a") if out_path is not None else None
    try:
        with tqdm(total=len(indices), initial=len(indices) - len(todo), disable=not progress, desc="diagnose", unit="img") as bar:
            for s in range(0, len(todo), batch_size):
                items = [dataset[i] for i in todo[s: s + batch_size]]
                truths = [_truth(it, _key(dataset, i)) for it, i in zip(items, todo[s: s + batch_size])]
                images = torch.stack([it["image"] for it in items])
                with torch.no_grad():
                    feats = model.features(images).float().cpu()
                own = [model.mesh(it["category"], int(it["cad_index"])) for it in items]
                recs = diagnose_batch(feats, textures, meshes, bg, truths, images.shape[-2:], int(model.stride), center,
                                      config, own_meshes=own, deformables=deformables, latent_steps=latent_steps)
                for r in recs:
                    done[r["key"]] = r
                    if fh is not None:
                        fh.write(json.dumps(r) + "\n")
                        fh.flush()
                bar.update(len(items))
    finally:
        if fh is not None:
            fh.close()
    return [done[k] for k in keys]


def _key(dataset, i) -> str:
    cat, level, sid, *_ = dataset.source.items[i]
    return f"L{level}/{cat}/{sid}"


# --------------------------------------------------------------------------- aggregation

def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(xs)) if xs else None


def _group(records) -> dict:
    n = len(records)
    wrong_pose = [r for r in records if r["pose_kind"] != "ok"]
    wrong_cls = [r for r in records if not r["correct"]]
    share = lambda rs, key, val: sum(r[key] == val for r in rs) / n  # noqa: E731 -- share of all images
    out = {"n": n, "cls_acc": sum(r["correct"] for r in records) / n,
           "acc_pi6": sum(r["pose_kind"] == "ok" for r in records) / n,
           "acc_pi18": sum(r["pose_error_deg"] < 10 for r in records) / n,
           "median_deg": float(np.median([r["pose_error_deg"] for r in records])),
           "cls_grid": share(wrong_cls, "class_failure", "grid"),
           "cls_search": share(wrong_cls, "class_failure", "search"), "cls_shape": share(wrong_cls, "class_failure", "shape"),
           "cls_score": share(wrong_cls, "class_failure", "score"),
           "in_top3_init": sum(r["rank_init"] <= 3 for r in records) / n,
           "rank1_vote": sum(r["rank_vote"] == 1 for r in records) / n,
           "pose_search": share(wrong_pose, "pose_failure", "search"), "pose_shape": share(wrong_pose, "pose_failure", "shape"),
           "pose_score": share(wrong_pose, "pose_failure", "score"),
           "pose_flip": share(wrong_pose, "pose_kind", "flip"), "pose_quarter": share(wrong_pose, "pose_kind", "quarter"),
           "miou": _mean(r["iou_pred"] for r in records), "iou_gt_mean": _mean(r["iou_gt_mean"] for r in records),
           "iou_gt_own": _mean(r["iou_gt_own"] for r in records), "iou_gt_latent": _mean(r["iou_gt_latent"] for r in records),
           "bg_explained": _mean(r["bg_explained"] for r in records), "fg_own": _mean(r["fg_own"] for r in records),
           "fg_other": _mean(r["fg_other"] for r in records), "fg_background": _mean(r["fg_background"] for r in records),
           "seconds": _mean(r["time_s"] for r in records)}
    winners: dict = {}
    for r in records:
        for c, v in r["bg_winners"].items():
            winners[c] = winners.get(c, 0.0) + v / n
    out["bg_winners"] = dict(sorted(winners.items(), key=lambda kv: -kv[1])[:3])
    confusions: dict = {}
    for r in wrong_cls:
        confusions[r["predicted"]] = confusions.get(r["predicted"], 0) + 1
    out["predicted_instead"] = dict(sorted(confusions.items(), key=lambda kv: -kv[1]))
    return out


def summarize(records) -> dict:
    """``{"levels": {level: group}, "per_category": {cat: {level: group}}}`` (levels as strings); a group
    holds shares of all its images: ``cls_acc``, ``cls_grid/search/shape/score`` (wrong class, by failure
    label), ``in_top3_init``, ``rank1_vote``, ``acc_pi6``, ``acc_pi18``, ``median_deg`` (degrees),
    ``pose_search/shape/score``, ``pose_flip/quarter``,
    ``miou``, the ceilings ``iou_gt_mean/own/latent``, ``bg_explained``, ``fg_own/other/background``, the top
    clutter winners, and the categories predicted instead."""
    if not records:
        raise ValueError("no records to summarize")
    levels = sorted({r["level"] for r in records})
    cats = sorted({r["category"] for r in records})
    return {"levels": {str(lv): _group([r for r in records if r["level"] == lv]) for lv in levels},
            "per_category": {c: {str(lv): _group(rs) for lv in levels
                                 if (rs := [r for r in records if r["category"] == c and r["level"] == lv])} for c in cats}}


_COLUMNS = [("n", "n", "{:d}"), ("cls_acc", "class", "{:.2f}"), ("cls_grid", "cls✗ grid", "{:.2f}"),
            ("cls_search", "cls✗ search", "{:.2f}"),
            ("cls_shape", "cls✗ shape", "{:.2f}"), ("cls_score", "cls✗ score", "{:.2f}"), ("in_top3_init", "top-3 init", "{:.2f}"),
            ("rank1_vote", "vote top-1", "{:.2f}"), ("acc_pi6", "Acc@π/6", "{:.2f}"), ("acc_pi18", "Acc@π/18", "{:.2f}"),
            ("median_deg", "median°", "{:.1f}"), ("pose_search", "pose✗ search", "{:.2f}"),
            ("pose_shape", "pose✗ shape", "{:.2f}"), ("pose_score", "pose✗ score", "{:.2f}"), ("pose_flip", "flip", "{:.2f}"),
            ("pose_quarter", "90°", "{:.2f}"), ("miou", "mIoU", "{:.2f}"), ("iou_gt_mean", "IoU mean@gt", "{:.2f}"),
            ("iou_gt_own", "IoU own@gt", "{:.2f}"), ("iou_gt_latent", "IoU fit@gt", "{:.2f}"), ("bg_explained", "bg→object", "{:.2f}"),
            ("fg_own", "fg own", "{:.2f}"), ("fg_other", "fg other", "{:.2f}")]


def _row(label: str, g: dict) -> str:
    cells = [label] + ["–" if g.get(k) is None else f.format(g[k]) for k, _, f in _COLUMNS]
    cells.append(", ".join(f"{c} {v:.2f}" for c, v in g["bg_winners"].items()) or "–")
    cells.append(", ".join(f"{c} {v}" for c, v in g["predicted_instead"].items()) or "–")
    return "| " + " | ".join(cells) + " |"


def markdown(summary: dict) -> str:
    """The summary as markdown: one table per level (all images, then one row per category)."""
    head = "| | " + " | ".join(t for _, t, _ in _COLUMNS) + " | bg won by | predicted instead |"
    sep = "|---" * (len(_COLUMNS) + 3) + "|"
    lines = ["Shares of all images of the row; ✗ = failures by label (grid: the true class was not among the grid's top "
             "k; search: the score prefers the truth, the search missed it; shape: only the image's own CAD shape beats the prediction; score: the score prefers the wrong "
             "answer even at the truth). IoU mean/own/fit@gt: silhouette ceilings at the true pose. bg→object: share of "
             "off-object feature pixels some category's texture explains better than the background.", ""]
    for lv, g in summary["levels"].items():
        lines += [f"### L{lv}", "", head, sep, _row("**all**", g)]
        lines += [_row(c, per[lv]) for c, per in summary["per_category"].items() if lv in per]
        lines.append("")
    return "\n".join(lines)


def _refined(r: dict, kind: str) -> dict:
    """The refined categories' ``kind`` scores, limited to those that competed (``topk``: the true category is
    refined for its pose even when the grid dropped it, and must not compete then)."""
    return {c: v[kind] for c, v in r["scores_both"].items() if c in r["topk"]}


def _top(d: dict, k: int) -> list:
    return sorted(d, key=d.get, reverse=True)[:k]


#: Class rules scored offline by ``rule_table`` (``diagnose --rules``): the render-and-compare scores over the
#: categories that competed (the grid's top k; all with ``--set top_k=12``), the pose-free vote over all, and the
#: vote's top three decided by a render-and-compare score (among those of them that were refined).
RULES = {
    "normalized": lambda r: _refined(r, "normalized"),
    "nemo (raw)": lambda r: _refined(r, "nemo"),
    "vote": lambda r: r["vote"],
    "vote top-3, then normalized": lambda r: {c: v for c, v in _refined(r, "normalized").items() if c in _top(r["vote"], 3)},
    "vote top-3, then nemo": lambda r: {c: v for c, v in _refined(r, "nemo").items() if c in _top(r["vote"], 3)},
}


def rule_table(records, rules: dict = RULES) -> str:
    """Classification accuracy and mIoU per level under other class rules, from one diagnosis run.

    ``rules``: name → ``f(record) -> {category: score}`` over the candidates it considers; the argmax is the
    class and that category's fitted silhouette (``iou_fit``; IoU 0 when it was not refined) the mask."""
    levels = sorted({r["level"] for r in records})
    lines = ["| rule | " + " | ".join(f"L{lv} class | L{lv} mIoU" for lv in levels) + " |",
             "|---" * (1 + 2 * len(levels)) + "|"]
    for name, f in rules.items():
        cells = [name]
        for lv in levels:
            rs = [r for r in records if r["level"] == lv]
            picks = [max(s, key=s.get) if (s := f(r)) else None for r in rs]  # no candidate: wrong
            cells.append(f"{np.mean([p == r['category'] for p, r in zip(picks, rs)]):.3f}")
            cells.append(f"{np.mean([r['iou_fit'].get(p, 0.0) for p, r in zip(picks, rs)]):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI

def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "diagnose", help="label render-and-compare's failures (search / shape / score) per category and level",
        description=__doc__.split("\n\n")[0] + " Writes OUT/diagnostics.jsonl (resumable), OUT/summary.json and OUT/summary.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="DMNT training folder (model.pt)")
    p.add_argument("--data", type=Path, required=True,
                   help="labelled data folder (e.g. a validation set: data --seed 2); its categories the model knows")
    p.add_argument("--levels", type=int, nargs="+", default=[0, 1, 2, 3], choices=[0, 1, 2, 3], help="levels (default 0 1 2 3)")
    p.add_argument("--per-category", type=int, help="first N images per category and level (default all)")
    p.add_argument("--center", choices=["known", "search"], default="known", help="object centre (default known)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="an InferenceConfig field, value as JSON (e.g. top_k=12, background_centroids=null); repeatable")
    p.add_argument("--rules", action="store_true", help="also score the class rules of RULES offline (OUT/rules.md)")
    p.add_argument("--latent-steps", type=int, default=0, help="Adam steps of the latent-fit IoU ceiling (default 0: off)")
    p.add_argument("--batch-size", type=int, default=8, help="images per inference call (default 8)")
    p.add_argument("--out", type=Path, help="output folder (default RUN/diagnose/<data>_L<levels>_n<N>[_<set>])")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)
    return p


def parse_sets(items: list[str]) -> dict:
    """``FIELD=VALUE`` strings → dict, each value parsed as JSON (else kept as a string); fields checked
    against ``InferenceConfig``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        if k not in InferenceConfig.__dataclass_fields__:
            raise ValueError(f"--set {k}: not an InferenceConfig field ({', '.join(InferenceConfig.__dataclass_fields__)})")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def run(args) -> int:
    from ..data import PoseDataset
    from ..evaluate import _select
    from .evaluate import model_path

    try:
        if args.per_category is not None and args.per_category < 1:
            raise ValueError(f"--per-category must be >= 1, got {args.per_category}")
        if args.latent_steps < 0:
            raise ValueError(f"--latent-steps must be >= 0, got {args.latent_steps}")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        sets = parse_sets(args.set)
        config = InferenceConfig.from_dict(sets)
        path = model_path(args.run)
        if path is None:
            raise FileNotFoundError(f"{args.run}: no model.pt or checkpoint.pt (train one with `python -m dmnt_lib train`)")
        if not args.data.is_dir():
            raise FileNotFoundError(f"--data folder not found: {args.data}")
        from ..model import DMNT

        model = DMNT.load(path)
        # only the categories the model knows (a model trained on a subset is diagnosed on that subset)
        dataset = PoseDataset(args.data, None, args.levels)
        known = [c for c in dataset.categories if c in model.categories]
        if not known:
            raise ValueError(f"{args.data} holds none of the model's categories {list(model.categories)}")
        dataset = PoseDataset(args.data, known, args.levels)
        indices = _select(dataset, args.per_category)
        if not indices:
            raise ValueError(f"{args.data} has no images at levels {args.levels}")
        name = f"{args.data.name}_L{''.join(map(str, args.levels))}_n{args.per_category or 'all'}_{args.center}"
        name += "".join(f"_{k}-{json.dumps(v, separators=(',', ':')).strip(chr(34))}" for k, v in sorted(sets.items()))
        out = args.out or Path(args.run) / "diagnose" / name
        out.mkdir(parents=True, exist_ok=True)
        cfg_path = out / "config.json"
        from ..evaluate import _data_digest

        want = {"inference": config.to_dict(), "center": args.center, "latent_steps": args.latent_steps,
                "model": str(path), "model_mtime_ns": path.stat().st_mtime_ns, "data": str(args.data.resolve()),
                "data_digest": _data_digest(args.data, args.levels)}
        if cfg_path.is_file() and json.loads(cfg_path.read_text()) != json.loads(json.dumps(want)):
            raise ValueError(f"{out} holds a diagnosis with another config, model or data set; delete it or choose --out")
        atomic_write_text(cfg_path, json.dumps(want, indent=1) + "\n")
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    records = diagnose_model(model, dataset, indices, config, args.center, args.batch_size, args.latent_steps,
                             out / "diagnostics.jsonl", progress=not args.no_progress)
    summary = summarize(records)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    md = markdown(summary)
    atomic_write_text(out / "summary.md", md)
    print(f"diagnosed {len(records)} images -> {out}")
    print(md)
    if args.rules:
        table = rule_table(records)
        atomic_write_text(out / "rules.md", table)
        print(table)
    return 0
