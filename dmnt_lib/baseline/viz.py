"""Figures of notebook 06: the architecture table, the pose bins, training curves, predictions vs ground truth."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..data.shapes import CATEGORIES

__all__ = ["architecture_rows", "plot_bins", "plot_history", "prediction_grid"]


def architecture_rows(model) -> list[tuple[str, str, str, int]]:
    """``[(part, module class, origin, parameters)]`` of a ``MultiTaskMaskRCNN``: which parts are
    torchvision's and which one is ours."""
    rh = model.roi_heads
    parts = [("transform", model.transform, "torchvision"), ("backbone.body (ResNet)", model.backbone.body, "torchvision"),
             ("backbone.fpn", model.backbone.fpn, "torchvision"), ("rpn", model.rpn, "torchvision"),
             ("roi_heads.box_head", rh.box_head, "torchvision"), ("roi_heads.box_predictor", rh.box_predictor, "torchvision"),
             ("roi_heads.mask_head", rh.mask_head, "torchvision"), ("roi_heads.mask_predictor", rh.mask_predictor, "torchvision"),
             ("roi_heads.pose_predictor", rh.pose_predictor, "ours (pose bins)")]
    return [(name, type(m).__name__, origin, sum(p.numel() for p in m.parameters())) for name, m, origin in parts]


def plot_bins(bins, ax=None):
    """The azimuth bins on a circle and the bin-centre decoding error of each angle (a sawtooth)."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig = plt.figure(figsize=(11, 3.4))
        ax = [fig.add_subplot(1, 3, 1, projection="polar"), fig.add_subplot(1, 3, 2), fig.add_subplot(1, 3, 3)]
    az = bins.angles[0]
    edges = az.lo + np.arange(az.n + 1) * az.width
    for e in edges:
        ax[0].plot([e, e], [0, 1], color="0.6", lw=0.8)
    centres = az.decode(torch.arange(az.n)).numpy()
    ax[0].scatter(centres, np.full(az.n, 0.85), s=12, color="C0")
    ax[0].set_yticks([])
    ax[0].set_title(f"azimuth: {az.n} bins of {math.degrees(az.width):.0f} deg")
    names = ("azimuth", "elevation", "theta")
    for i, (name, a) in enumerate(zip(names, bins.angles)):
        x = torch.linspace(a.lo, a.hi - 1e-6, 2000)
        err = (a.decode(a.encode(x)) - x).abs()
        ax[1].plot(np.degrees(x.numpy()), np.degrees(err.numpy()), label=f"{name} ({a.n} bins)", lw=1)
    ax[1].set_xlabel("angle (deg)")
    ax[1].set_ylabel("|bin centre - angle| (deg)")
    ax[1].legend(fontsize=8)
    from ..camera import pose_to_rotation, rotation_error

    g = torch.Generator().manual_seed(0)
    pose = torch.stack([torch.rand(4000, generator=g) * 2 * math.pi, (torch.rand(4000, generator=g) * 50 - 10) * math.pi / 180,
                        (torch.rand(4000, generator=g) * 30 - 15) * math.pi / 180], 1)
    dec = bins.decode(bins.encode(pose))
    e = rotation_error(pose_to_rotation(*pose.double().T).double(), pose_to_rotation(*dec.double().T).double())
    ax[2].hist(np.degrees(e.numpy()), bins=40, color="C2")
    ax[2].axvline(math.degrees(bins.max_error), color="k", ls="--", lw=1, label="bound: sum of half widths")
    ax[2].set_xlabel("rotation error of the bin-centre pose (deg)")
    ax[2].legend(fontsize=8)
    return ax


def plot_history(history, ax=None):
    """Per-iteration losses (each term and the total) of ``train``'s history, log scale."""
    import matplotlib.pyplot as plt

    its = history["iterations"]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    keys = [k for k in its[0] if k.startswith("loss")]
    x = np.arange(1, len(its) + 1)
    for k in keys:
        ax.plot(x, [r[k] for r in its], lw=1.5 if k == "loss" else 0.9, label=k, color="k" if k == "loss" else None)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7, ncol=2)
    return ax


def _contour(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(bool)
    inner = m.copy()
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~inner


def prediction_grid(items: list[dict], preds: list[dict], records: list[dict] | None = None, columns: int = 4):
    """Test images with the ground-truth amodal mask (green contour) and the predicted one (red fill),
    titled with the level, true and predicted class and the pose error.

    Args:
        items: ``data.PoseDataset`` items. preds: evaluate-format predictions of them. records:
            their ``evaluate.image_record`` dicts (for the errors; computed when None).
    """
    import matplotlib.pyplot as plt

    from ..evaluate import image_record

    records = records or [image_record(it, p) for it, p in zip(items, preds)]
    rows = math.ceil(len(items) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, it, p, r in zip(axes.ravel(), items, preds, records):
        img = it["image"].permute(1, 2, 0).numpy().copy()
        if p.get("detected"):
            m = p["amodal_mask"]
            img[m] = 0.55 * img[m] + 0.45 * np.array([1.0, 0.2, 0.2])
        img[_contour(it["mask"].numpy())] = (0.1, 1.0, 0.1)
        ax.imshow(img)
        pred = p.get("category") or "none"
        ok = "ok" if pred == it["category"] else "WRONG"
        ax.set_title(f"L{int(it['level'])} {it['category']} -> {pred} ({ok})\npose err {r['pose_error_deg']:.0f} deg, "
                     f"IoU {r['iou']:.2f}", fontsize=8)
    fig.tight_layout()
    return fig
