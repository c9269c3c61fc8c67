"""The baseline's predictor for the shared ``dmnt_lib.evaluate`` (runs with ``run.json`` ``"kind": "baseline"``).

The top-scoring detection of an image gives its class, pose and amodal mask: ``category`` is its
label, ``pose`` its class's bin centres, ``pose_gt_category`` the bin centres of the ground-truth
class's logits of the same detection (the pose head is per class), ``amodal_mask`` its mask
probability ``> 0.5`` pasted at image resolution (torchvision's ``paste_masks_in_image``),
``scores`` the best detection score of each detected class. No detection above
``box_score_thresh`` means ``detected = False``. The ``center`` option is ignored: a detector finds
the object itself.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..data.shapes import CATEGORIES
from .train import load_run

__all__ = ["BaselinePredictor", "load_predictor", "top_detection"]


def top_detection(output: dict, bins, gt_label: int | None = None) -> dict:
    """The evaluate-format prediction from one image's ``MultiTaskMaskRCNN`` output.

    Args:
        output: ``{"boxes" (N, 4), "labels" (N,), "scores" (N,), "masks" (N, 1, H, W), "pose" (N, 3),
            "pose_logits" (N, 13, bins.total)}`` (after ``model.transform.postprocess``).
        bins: the model's ``PoseBins`` (``model.roi_heads.bins``).
        gt_label: ground-truth label (1..12) whose bins give ``pose_gt_category``; None: the predicted one.
    """
    if len(output["scores"]) == 0:
        return {"detected": False, "category": None, "scores": {}, "pose": None, "pose_gt_category": None,
                "amodal_mask": None, "box": None}
    top = int(output["scores"].argmax())
    label = int(output["labels"][top])
    scores: dict = {}
    for lab, sc in zip(output["labels"].tolist(), output["scores"].tolist()):
        name = CATEGORIES[lab - 1]
        scores[name] = max(scores.get(name, 0.0), sc)
    pose = output["pose"][top].tolist()
    pose_gt = pose
    if gt_label is not None and gt_label != label:
        pose_gt = bins.decode_logits(output["pose_logits"][top, gt_label][None])[0].tolist()
    return {"detected": True, "category": CATEGORIES[label - 1], "scores": scores, "pose": tuple(pose),
            "pose_gt_category": tuple(pose_gt), "amodal_mask": (output["masks"][top, 0] > 0.5).cpu().numpy(),
            "box": output["boxes"][top].tolist()}


class BaselinePredictor:
    """``predict(batch)`` for ``dmnt_lib.evaluate`` with a trained ``MultiTaskMaskRCNN``."""

    method = "baseline"

    def __init__(self, model, config: dict, device="cpu"):
        self.model = model.to(device).eval()
        self.config = config
        self.device = torch.device(device)

    @torch.no_grad()
    def predict(self, batch: list[dict]) -> list[dict]:
        start = time.perf_counter()
        outputs = self.model([b["image"].to(self.device) for b in batch])
        seconds = (time.perf_counter() - start) / max(1, len(batch))
        preds = []
        for b, o in zip(batch, outputs):
            o = {k: v.cpu() for k, v in o.items()}
            gt = CATEGORIES.index(b["category"]) + 1 if b.get("category") in CATEGORIES else None
            p = top_detection(o, self.model.roi_heads.bins, gt)
            p["time_s"] = seconds
            preds.append(p)
        return preds


def load_predictor(run_dir, device="cpu", args=None) -> BaselinePredictor:
    """``dmnt_lib.evaluate`` loader: the run's final checkpoint on ``device`` (``args`` are ignored)."""
    model, config, meta = load_run(run_dir, device)
    return BaselinePredictor(model, {**config.to_dict(), "epochs_done": meta.get("epochs_done"),
                                     "n_train_images": meta.get("n_images")}, device)
