"""Pictures of render-and-compare (notebook 05): feature maps as colours, o/b maps, the score landscape,
refinement frames, predictions."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..camera import pose_to_cameras
from .config import InferenceConfig
from .grid import GridCache, grid_scores, known_offsets, pool_texture
from .raster import fragments
from .refine import _mesh_parts
from .score import background_map, object_map

__all__ = ["pca_rgb", "render_maps", "score_landscape", "trajectory_silhouettes", "plot_maps", "plot_landscape",
           "plot_trajectory", "plot_prediction"]


def pca_rgb(features: torch.Tensor, basis: torch.Tensor | None = None, mask: torch.Tensor | None = None):
    """``(D, h, w)`` features → ``(h, w, 3)`` colours in [0, 1] by their first 3 principal components.

    ``basis (D, 3)``: reuse the components of another map (so two maps get the same colours); ``mask``:
    pixels to black out. Returns ``(rgb, basis)``."""
    d, h, w = features.shape
    x = features.reshape(d, -1).t().double()
    if basis is None:
        xc = x - x.mean(0)
        basis = torch.linalg.svd(xc, full_matrices=False).Vh[:3].t()
    y = x @ basis.to(x.dtype)
    lo, hi = y.min(0).values, y.max(0).values
    rgb = ((y - lo) / (hi - lo).clamp(min=1e-8)).reshape(h, w, 3).float()
    if mask is not None:
        rgb = rgb * mask[..., None]
    return rgb.numpy(), basis


def render_maps(features, texture, mesh, background, pose: dict, focal, principal, stride: int):
    """Rendered features ``R (D,h,w)``, ``o (h,w)``, ``b (h,w)`` and the mask ``(h,w)`` at ``pose`` (image-pixel
    ``focal``, ``principal (x, y)``), for one image's ``features (1, D, h, w)``."""
    _, d, h, w = features.shape
    m0, _, _ = _mesh_parts(mesh, False)
    with torch.no_grad():
        cams = pose_to_cameras(*(torch.tensor([float(pose[k])]) for k in ("azimuth", "elevation", "theta", "distance")),
                               (h, w), focal=focal / stride, principal=torch.tensor(principal, dtype=torch.float32) / stride)
        fr = fragments(m0, cams, (h, w))
        from ..render import sample_texture

        R = F.normalize(sample_texture(texture[None], fr.uv), dim=1)[0] * fr.mask[0]
        o = object_map(features, texture, fr.uv, fr.mask)[0]
        b = background_map(features, F.normalize(torch.as_tensor(background).reshape(-1, d), dim=1))[0]
    return R, o, b, fr.mask[0]


def score_landscape(features, texture, mesh, background, distance, focal, principal, stride, azimuths=72,
                    elevations=None, theta=0.0, kinds=("normalized", "nemo")):
    """Grid scores over azimuth × elevation at one theta and distance, centre known (NeMo's loss landscape).

    Returns ``(az (A,), el (E,), {kind: (E, A) array})`` in radians."""
    _, d, h, w = features.shape
    els = tuple(elevations) if elevations is not None else tuple(np.radians(np.arange(-20, 61, 10)))
    m0, _, _ = _mesh_parts(mesh, False)
    r = float(m0.verts.norm(dim=-1).max())
    # The grid's distances come from "fills"; invert the formula for the requested distance.
    fill = 2 * (focal / stride) / (min(h, w) * math.sqrt(max((distance / r) ** 2 - 1, 1e-9)))
    cfg = InferenceConfig(azimuths=azimuths, elevations=els, thetas=(float(theta),), fills=(fill,))
    entry = GridCache().get(m0, cfg, focal / stride, (h, w))
    bg = F.normalize(torch.as_tensor(background).reshape(-1, d).float(), dim=1)
    off = known_offsets(torch.tensor([principal], dtype=torch.float64) / stride, entry.canvas)
    with torch.no_grad():
        sc = grid_scores(features, background_map(features, bg), entry, pool_texture(texture, None), off, kinds)
    a, e = entry.poses["azimuth"].reshape(azimuths, len(els)), entry.poses["elevation"].reshape(azimuths, len(els))
    return a[:, 0].numpy(), e[0].numpy(), {k: v[0].reshape(azimuths, len(els)).t().numpy() for k, v in sc.items()}


def trajectory_silhouettes(trajectory, mesh, focal, hw_feat, stride, every=1):
    """``(step, silhouette (h, w) bool, objective)`` along a recorded refinement (``Prediction.trajectory``,
    whose steps hold the angles, ``logd`` and the ``principal`` point in feature pixels)."""
    m0, _, _ = _mesh_parts(mesh, False)
    out = []
    for k, st in enumerate(trajectory):
        if k % every and k != len(trajectory) - 1:
            continue
        pp = st["principal"].reshape(1, 2).float()
        cams = pose_to_cameras(st["azimuth"].reshape(1), st["elevation"].reshape(1), st["theta"].reshape(1),
                               st["logd"].exp().reshape(1), hw_feat, focal=focal / stride, principal=pp)
        with torch.no_grad():
            out.append((k, fragments(m0, cams, hw_feat).mask[0], float(st["score"])))
    return out


def plot_maps(features, R, o, b, mask, title=""):
    """Four panels: features (PCA colours), rendered features (same colours), o, b, and o > b on the mask."""
    import matplotlib.pyplot as plt

    rgb, basis = pca_rgb(features[0])
    rgb_r, _ = pca_rgb(R, basis, mask)
    fig, ax = plt.subplots(1, 5, figsize=(15, 3.2))
    ax[0].imshow(rgb), ax[0].set_title("features F (PCA)")
    ax[1].imshow(rgb_r), ax[1].set_title("rendered texture R")
    im = ax[2].imshow(o.numpy(), cmap="viridis", vmin=-1, vmax=1)
    ax[2].set_title("o = <F, R>")
    ax[3].imshow(b.numpy(), cmap="viridis", vmin=-1, vmax=1), ax[3].set_title("b = <F, β>")
    ax[4].imshow((mask & (o > b)).numpy(), cmap="gray"), ax[4].set_title("mask ∧ o > b")
    for a in ax:
        a.axis("off")
    fig.colorbar(im, ax=ax[2:4], shrink=0.8)
    fig.suptitle(title, y=1.02)
    return fig


def plot_landscape(az, el, scores: dict, truth: dict | None = None):
    """Heat maps of ``score_landscape``; the true pose as a cross, the best cell as a circle."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, len(scores), figsize=(6 * len(scores), 3.2), squeeze=False)
    for a, (k, s) in zip(ax[0], scores.items()):
        im = a.imshow(s, origin="lower", aspect="auto", cmap="magma",
                      extent=[np.degrees(az[0]), np.degrees(az[-1]), np.degrees(el[0]), np.degrees(el[-1])])
        i, j = np.unravel_index(np.argmax(s), s.shape)
        a.plot(np.degrees(az[j]), np.degrees(el[i]), "o", mfc="none", mec="cyan", ms=10, label="best")
        if truth is not None:
            a.plot(np.degrees(truth["azimuth"]) % 360, np.degrees(truth["elevation"]), "x", c="lime", ms=10, label="truth")
        a.set_xlabel("azimuth (deg)"), a.set_ylabel("elevation (deg)"), a.set_title(f"score: {k}")
        a.legend(loc="upper right", fontsize=8)
        fig.colorbar(im, ax=a)
    return fig


def plot_trajectory(features, frames, truth_mask=None, cols=6):
    """Silhouette contours over the features' PCA colours, one panel per recorded step."""
    import matplotlib.pyplot as plt

    rgb, _ = pca_rgb(features[0])
    n = len(frames)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, ax = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for a in ax.ravel():
        a.axis("off")
    for a, (k, m, s) in zip(ax.ravel(), frames):
        a.imshow(rgb)
        if truth_mask is not None:
            a.contour(truth_mask.numpy().astype(float), levels=[0.5], colors="lime", linewidths=1)
        a.contour(m.numpy().astype(float), levels=[0.5], colors="red", linewidths=1.5)
        a.set_title(f"step {k}: {s:.3f}", fontsize=9)
    return fig


def plot_prediction(pred, amodal_gt=None, visible_gt=None, image=None, title=""):
    """Amodal and visible masks of a ``Prediction`` beside the ground truth (if given), over the image."""
    import matplotlib.pyplot as plt

    panels = [("predicted amodal", pred.amodal_mask), ("predicted visible", pred.visible_mask)]
    if amodal_gt is not None:
        panels.append(("true amodal", amodal_gt))
    if visible_gt is not None:
        panels.append(("true visible", visible_gt))
    fig, ax = plt.subplots(1, len(panels) + (image is not None), figsize=(3.2 * (len(panels) + 1), 3.2))
    ax = np.atleast_1d(ax)
    k = 0
    if image is not None:
        ax[0].imshow(image), ax[0].set_title("image")
        k = 1
    for a, (name, m) in zip(ax[k:], panels):
        a.imshow(np.asarray(m), cmap="gray"), a.set_title(name)
    for a in ax:
        a.axis("off")
    fig.suptitle(title or f"{pred.category}: az {math.degrees(pred.azimuth) % 360:.0f}°, el {math.degrees(pred.elevation):.0f}°, "
                 f"θ {math.degrees(pred.theta):.0f}°, score {pred.score:.3f}", y=1.02)
    fig.tight_layout()
    return fig


def plot_diagnosis(summary: dict, title: str = ""):
    """Stacked bars per level from ``diagnose.summarize``: the class (right / search / shape / score failures)
    and the pose under the true category (within 30° / search / shape / score), plus the silhouette ceilings
    beside the achieved mIoU. Returns the figure."""
    import matplotlib.pyplot as plt

    levels = list(summary["levels"])
    groups = [summary["levels"][lv] for lv in levels]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    colors = {"ok": "#4c9a2a", "search": "#e3a21a", "shape": "#7a5195", "score": "#c0392b"}
    x = np.arange(len(levels))
    for ax, (what, ok_key, prefix) in zip(axes[:2], (("class", "cls_acc", "cls_"), ("pose (Acc@π/6)", "acc_pi6", "pose_"))):
        bottom = np.zeros(len(levels))
        for label in ("ok", "search", "shape", "score"):
            v = np.array([g[ok_key] if label == "ok" else g[prefix + label] for g in groups])
            ax.bar(x, v, bottom=bottom, color=colors[label], label=label)
            bottom += v
        ax.set_xticks(x, [f"L{lv}" for lv in levels])
        ax.set_ylim(0, 1)
        ax.set_title(what)
    axes[0].legend(fontsize=8, loc="lower left")
    for key, label in (("miou", "prediction"), ("iou_gt_mean", "mean shape at the true pose"),
                       ("iou_gt_own", "own CAD shape at the true pose"), ("iou_gt_latent", "shape fitted to the mask")):
        vals = [g.get(key) for g in groups]
        if all(v is not None for v in vals):
            axes[2].plot(x, vals, marker="o", label=label)
    axes[2].set_xticks(x, [f"L{lv}" for lv in levels])
    axes[2].set_ylim(0, 1)
    axes[2].set_title("amodal IoU and its ceilings")
    axes[2].legend(fontsize=8, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
