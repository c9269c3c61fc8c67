"""DMNT's predictor for the shared evaluation (``dmnt_lib.evaluate``, docs/design.md §10).

``python -m dmnt_lib evaluate --run RUN ...`` finds this module through the run kind ``"dmnt"``
(``RUN/run.json``) or ``detect`` (a folder holding a DMNT ``model.pt``) and calls
``load_predictor(run_dir, device, args)``. The predictor runs ``infer`` (backbone + render-and-compare)
on each batch; the ground-truth category a sample carries is used only to refine that category too
(``include``), whose pose is reported as ``pose_gt_category`` (the PASCAL3D+ protocol) — it never enters
the classification.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .config import InferenceConfig
from .infer import infer

__all__ = ["DMNTPredictor", "load_predictor", "detect", "model_path", "QUICK_CONFIG"]

#: A faster configuration for ``--quick`` evaluations (fewer grid elevations, fewer steps).
QUICK_CONFIG = dict(elevations=(0.0, 0.35), thetas=(0.0,), steps=15)


def model_path(run_dir) -> Path | None:
    """The model file of a run: ``model.pt`` (final), else ``checkpoint.pt`` (an unfinished run); None if neither."""
    run_dir = Path(run_dir)
    for name in ("model.pt", "checkpoint.pt"):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def detect(run_dir) -> bool:
    """True for a DMNT training folder without ``run.json``: it holds ``model.pt`` or ``checkpoint.pt``
    and a training log."""
    run_dir = Path(run_dir)
    return model_path(run_dir) is not None and (run_dir / "log.jsonl").is_file()


class DMNTPredictor:
    """``predict(batch)`` for ``dmnt_lib.evaluate``.

    Args:
        model: a ``DMNT``. config: ``InferenceConfig``. center: ``"known"`` or ``"search"``.
        device: where the backbone runs (the render-and-compare engine runs on the CPU).
        source: the model file (recorded in ``config``).
    """

    method = "dmnt"

    def __init__(self, model, config: InferenceConfig, center: str = "known", device: str = "cpu", source: str = ""):
        if center not in ("known", "search"):
            raise ValueError(f"center must be 'known' or 'search', got {center!r}")
        self.model = model.to(device).eval()
        self.inference = config
        self.center = center
        self.device = device
        self.config = {"center": center, "inference": config.to_dict(), "model": str(source),
                       "model_config": model.config.to_dict() if hasattr(model.config, "to_dict") else {}}

    def predict(self, batch: list[dict]) -> list[dict]:
        """One output dict per sample (see ``dmnt_lib.evaluate``): category, scores, pose, pose_gt_category,
        amodal_mask, detected, time_s — plus visible_mask, scores_both and timings for diagnostics."""
        if not isinstance(batch, (list, tuple)) or not batch:
            raise ValueError("batch must be a non-empty list of sample dicts")
        sizes = {tuple(s["image"].shape) for s in batch}
        if len(sizes) > 1:  # different image sizes: one at a time
            return [out for s in batch for out in self.predict([s])]
        images = torch.stack([torch.as_tensor(s["image"]).float() for s in batch]).to(self.device)
        focal = torch.tensor([float(s["focal"]) for s in batch])
        principal = torch.stack([torch.as_tensor(s["principal"], dtype=torch.float32).reshape(2) for s in batch])
        include = [s.get("category") for s in batch]
        include = [c if c in self.model.categories else None for c in include]
        preds = infer(self.model, images, focal, principal, center=self.center, config=self.inference, include=include)
        out = []
        for s, p, gt in zip(batch, preds, include):
            pose = (p.azimuth, p.elevation, p.theta)
            g = p.poses.get(gt) if gt is not None else None
            out.append({
                "category": p.category,
                "scores": {c: float(v) for c, v in p.scores.items()},
                "pose": pose,
                "pose_gt_category": (g["azimuth"], g["elevation"], g["theta"]) if g is not None else pose,
                "amodal_mask": p.amodal_mask.numpy().astype(bool),
                "visible_mask": p.visible_mask.numpy().astype(bool),
                "scores_both": {c: v.get("scores", {}) for c, v in p.poses.items() if v.get("refined")},
                "detected": True,
                "time_s": float(p.time_s),
                "timings": dict(p.timings),
            })
        return out


def _config_from_args(args: dict) -> InferenceConfig:
    """``InferenceConfig`` from the loader's args: ``config`` (a dict or a JSON file path, or the env var
    ``DMNT_INFER_CONFIG``), ``quick`` (``QUICK_CONFIG`` on top), and any ``InferenceConfig`` field given directly."""
    spec = args.get("config") or os.environ.get("DMNT_INFER_CONFIG")
    fields = {}
    if isinstance(spec, (str, Path)) and spec:
        fields = json.loads(Path(spec).read_text())
    elif isinstance(spec, dict):
        fields = dict(spec)
    if args.get("quick"):
        fields = {**QUICK_CONFIG, **fields}
    for k, v in args.items():
        if k in InferenceConfig.__dataclass_fields__ and v is not None:
            fields[k] = v
    return InferenceConfig.from_dict(fields)


def load_predictor(run_dir, device: str = "cpu", args: dict | None = None) -> DMNTPredictor:
    """The DMNT predictor of a training run folder (``model.pt``, or ``checkpoint.pt`` if unfinished).

    Args:
        run_dir: the run folder. device: torch device for the backbone.
        args: ``center`` ("known" default, or "search"), ``quick``, ``config`` (see ``_config_from_args``).
    """
    from ..model import DMNT

    args = dict(args or {})
    path = model_path(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir}: no model.pt or checkpoint.pt (train one with `python -m dmnt_lib train`)")
    model = DMNT.load(path, map_location=device)
    return DMNTPredictor(model, _config_from_args(args), center=args.get("center") or "known", device=device, source=str(path))

