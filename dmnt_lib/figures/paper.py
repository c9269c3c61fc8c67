"""The appendix's qualitative figures and the L0-L3 results table, drawn from evaluation records.

* ``figure4``: one L0 test image per category (``records.pick_successes``: its best correct prediction) —
  the image, the predicted pose as a shaded mesh overlay, the predicted amodal mask's contour, the
  predicted class and the measured errors.
* ``figure5``: the same rule at each of L1-L3 (one row per level, one column per category).
* ``comparison_figure``: the same occluded images, ground truth | DMNT | MT Mask R-CNN.
* ``figure6``: failure cases chosen by ``records.select_failures`` (rule documented there).
* ``results_markdown`` / ``results_plot``: the table of both methods per level and each metric
  against the occlusion level.

Every ``build_*`` returns a matplotlib ``Figure`` (tests count its image panels); the matching
function without ``build_`` saves it atomically and returns the path.

What is drawn: the pose the error is measured on (``evaluate``'s ``pred_pose``: estimated under
the ground-truth category's model, PASCAL3D+ protocol), rendered with the object's own CAD model
from the test data (or the caller's ``meshes[category]``), so a misaligned overlay is a pose
error, not a shape difference; the method's own shape shows in its amodal mask contour (yellow).
The caption gives the *predicted* class (red when wrong). Neither method's output includes the
distance, and evaluation uses the known object centre: the overlay puts the predicted rotation at
the true distance and centre (a pose dict may carry ``distance``/``principal`` to override).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..viz import save_figure
from .records import FAILURE_KINDS, Record, is_success, pick_per_category, pick_successes, select_failures

__all__ = [
    "TestImages", "render_overlay", "draw_panel", "build_figure4", "figure4", "build_figure5", "figure5",
    "build_comparison", "comparison_figure", "build_figure6", "figure6", "METRICS", "results_markdown",
    "build_results_plot", "results_plot", "image_panels",
]

#: (results.json key, column title, higher is better)
METRICS = [
    ("acc_pi6", "Acc@π/6", True),
    ("acc_pi18", "Acc@π/18", True),
    ("median_deg", "median error (°)", False),
    ("cls_acc", "class. accuracy", True),
    ("miou", "amodal mIoU", True),
]
_POSE_KEYS = ("azimuth", "elevation", "theta", "distance")


def _plt():
    # The backend is the caller's (inline in a notebook); the figures command selects Agg.
    import matplotlib.pyplot as plt

    return plt


class TestImages:
    """The test images (any layout ``data.Pascal3D`` reads), looked up by ``(id, level)``.

    Args:
        root: the test dataset folder (``evaluate --data``'s).
        levels: levels to index (default: every ``L{k}`` folder present, else level 0).
    """

    def __init__(self, root, levels=None):
        from ..data import Pascal3D

        root = Path(root)
        if levels is None:
            levels = [k for k in range(4) if (root / f"L{k}").is_dir()] or [0]
        self.source = Pascal3D(root, levels=levels)
        self._index = {(sid, level): i for i, (_, level, sid, _, _) in enumerate(self.source.items)}
        self._meshes: dict = {}

    def __contains__(self, key) -> bool:
        return tuple(key) in self._index

    def sample(self, sample_id: str, level: int):
        """The ``data.Sample`` (image ``(H, W, 3)`` uint8, annotation) of one test image."""
        key = (str(sample_id), int(level))
        if key not in self._index:
            raise KeyError(f"test image {key} is not in {self.source.root} (levels {self.source.levels})")
        return self.source[self._index[key]]

    def cad_mesh(self, category: str, cad_index: int = 1):
        """CAD model ``CAD/<category>/{cad_index:02d}.off`` as a ``UVMesh``."""
        from ..mesh import UVMesh

        key = (category, int(cad_index))
        if key not in self._meshes:
            verts, faces = self.source.cad(category, cad_index)
            self._meshes[key] = UVMesh(verts, faces, torch.zeros(1, 2), torch.zeros_like(faces))
        return self._meshes[key]


def render_overlay(image: np.ndarray, mesh, pose: dict, focal: float, color=(0.1, 0.75, 1.0), alpha: float = 0.55):
    """``image`` with ``mesh`` drawn at ``pose``: faces shaded by ``|n · view axis|`` and blended.

    Args:
        image: ``(H, W, 3)`` uint8. mesh: ``UVMesh``.
        pose: ``azimuth, elevation, theta`` (radians), ``distance``, ``principal`` ``(2,)`` pixels.
        focal: focal length in pixels.

    Returns:
        ``(H, W, 3)`` float in [0, 1] and the ``(H, W)`` bool silhouette of the drawn mesh.
    """
    from ..camera import pose_to_RT, pose_to_cameras
    from ..render import uv_fragment

    h, w = image.shape[:2]
    cams = pose_to_cameras(pose["azimuth"], pose["elevation"], pose["theta"], pose["distance"], (h, w),
                           focal=float(focal), principal=torch.as_tensor(pose["principal"], dtype=torch.float32))
    # uv_fragment's pix_to_face is (B, H, W), the face index within the mesh, whatever the backend.
    face = uv_fragment(mesh, cams, (h, w)).pix_to_face[0]
    v = mesh.verts[mesh.faces]  # (F, 3, 3)
    normals = torch.nn.functional.normalize(torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), dim=-1)
    R, _ = pose_to_RT(pose["azimuth"], pose["elevation"], pose["theta"], pose["distance"])
    shade = (normals @ R[0])[:, 2].abs()  # view-space z of each normal (row-vector convention)
    on = face >= 0
    out = image.astype(np.float32) / 255
    lit = (0.35 + 0.65 * shade[face.clamp(min=0)]).numpy()[..., None] * np.asarray(color, np.float32)
    m = on.numpy()
    out[m] = (1 - alpha) * out[m] + alpha * lit[m]
    return out.clip(0, 1), m


def _pose_for(record: Record, sample) -> dict | None:
    pose = record.pose
    if not pose:
        return None
    full = {k: float(pose[k]) if k in pose and pose[k] is not None else float(getattr(sample, k)) for k in _POSE_KEYS}
    full["principal"] = [float(x) for x in pose["principal"]] if pose.get("principal") is not None else \
        [float(x) for x in sample.principal]
    return full


def draw_panel(ax, record: Record, images: TestImages, meshes: dict | None = None, label: str | None = None,
               caption: str | None = None, mesh=None) -> None:
    """Draw one test image with ``record``'s prediction on ``ax``: the predicted pose as a shaded
    mesh overlay (module docstring), predicted amodal mask contour (yellow), ground-truth amodal
    contour (thin white, dashed), and a caption (predicted class, pose error, IoU). ``mesh``
    overrides the mesh drawn (default ``meshes[category]`` or the object's CAD model)."""
    s = images.sample(record.id, record.level)
    shown = s.image.astype(np.float32) / 255
    pose = _pose_for(record, s) if record.detected else None
    if pose is not None:
        mesh = mesh or (meshes or {}).get(s.category) or images.cad_mesh(s.category, s.cad_index)
        shown, _ = render_overlay(s.image, mesh, pose, s.focal)
    ax.imshow(shown)
    if s.mask is not None and s.mask.any():
        ax.contour(s.mask.astype(float), levels=[0.5], colors="white", linewidths=0.6, linestyles="dashed")
    if record.amodal_mask is not None and record.amodal_mask.any():
        ax.contour(record.amodal_mask.astype(float), levels=[0.5], colors="yellow", linewidths=1.0)
    if caption is None:
        pred = record.pred_category if record.detected else "nothing detected"
        err = "" if math.isnan(record.pose_error_deg) else f" {record.pose_error_deg:.0f}°"
        iou = "" if math.isnan(record.iou) else f" IoU {record.iou:.2f}"
        caption = f"{pred}{err}{iou}"
    ax.set_title(caption, fontsize=7, color="darkgreen" if record.correct_class else "firebrick", pad=2)
    if label:
        ax.set_ylabel(label, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(plt, rows: int, cols: int, cell: float = 1.45, title_lines: int = 2):
    # 0.25 in per line of the panel titles: images keep their aspect, so tight_layout alone let a row's
    # titles run over the row above.
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, (cell + 0.25 * title_lines) * rows + 0.5), squeeze=False)
    return fig, axes


def _finish(fig, axes, used: int, title: str):
    for ax in axes.ravel()[used:]:
        ax.axis("off")
    _title(fig, title)
    return fig


def _title(fig, title: str, size: int = 9):
    fig.suptitle(title, fontsize=size)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.35 / fig.get_size_inches()[1]))  # room for the title


def _need(records, what: str):
    if not records:
        raise ValueError(f"no records for {what}: is the evaluation complete for these levels?")


def build_figure4(records, images: TestImages, meshes=None, categories=None, ncols: int = 6, name: str = "DMNT"):
    """Fig. 4: ``pick_successes(records, level=0)`` as a grid of ``ncols`` columns: per category the correct
    prediction (right class, pose within 30°) with the highest IoU, else its lowest-id image."""
    plt = _plt()
    chosen = pick_successes(records, 0, categories)
    _need(chosen, "Fig. 4 (level 0)")
    ncols = min(ncols, len(chosen))
    fig, axes = _grid(plt, math.ceil(len(chosen) / ncols), ncols)
    for ax, r in zip(axes.ravel(), chosen):
        draw_panel(ax, r, images, meshes, caption=f"{r.category}\n" + _short(r))
    n_ok = sum(is_success(r) for r in chosen)
    return _finish(fig, axes, len(chosen), f"{name} on unoccluded test images (L0): per category the correct prediction "
                   f"(class right, pose < 30°) with the highest IoU ({n_ok} of {len(chosen)} categories have one; "
                   "the others show their first image) — pose (mesh), amodal mask (yellow; truth dashed), class")


def _short(r: Record) -> str:
    pred = r.pred_category if r.detected else "none"
    parts = [pred if pred != r.category else "✓"]
    if not math.isnan(r.pose_error_deg):
        parts.append(f"{r.pose_error_deg:.0f}°")
    if not math.isnan(r.iou):
        parts.append(f"IoU {r.iou:.2f}")
    return " ".join(parts)


def figure4(records, images: TestImages, path, **kw) -> Path:
    return save_figure(build_figure4(records, images, **kw), path, dpi=110)


def build_figure5(records, images: TestImages, meshes=None, levels=(1, 2, 3), categories=None, name: str = "DMNT"):
    """Fig. 5: the ``pick_successes`` object of each category at each of ``levels`` (one row per level, one
    column per category): the best correct prediction at that level, else the category's first image."""
    plt = _plt()
    rows = [pick_successes(records, k, categories) for k in levels]
    rows = [(k, r) for k, r in zip(levels, rows) if r]
    _need(rows, f"Fig. 5 (levels {tuple(levels)})")
    cols = max(len(r) for _, r in rows)
    fig, axes = _grid(plt, len(rows), cols)
    used = 0
    for i, (k, row) in enumerate(rows):
        for j, r in enumerate(row):
            draw_panel(axes[i, j], r, images, meshes, label=f"L{k}" if j == 0 else None,
                       caption=(f"{r.category}\n" if i == 0 else "") + _short(r))
            used += 1
        for ax in axes[i, len(row):]:
            ax.axis("off")
    n_ok = sum(is_success(r) for _, row in rows for r in row)
    _title(fig, f"{name} on occluded test images (rows L{', L'.join(str(k) for k, _ in rows)}): per category and level "
           f"the correct prediction (class right, pose < 30°) with the highest IoU ({n_ok} of "
           f"{sum(len(row) for _, row in rows)} panels have one; the others show the first image)")
    return fig


def figure5(records, images: TestImages, path, **kw) -> Path:
    return save_figure(build_figure5(records, images, **kw), path, dpi=110)


def comparison_picks(records_a, records_b, levels=(1, 2, 3), per_level: int = 4) -> list[tuple[Record, Record]]:
    """Images both methods were evaluated on, ``per_level`` per level: categories taken in turn
    (level ``k`` starts ``per_level`` categories after level ``k-1``), each its smallest sample id."""
    by_b = {r.key: r for r in records_b}
    out = []
    for i, k in enumerate(levels):
        row = [r for r in pick_per_category(records_a, k) if r.key in by_b]
        if not row:
            continue
        start = (i * per_level) % len(row)
        for j in range(min(per_level, len(row))):
            r = row[(start + j) % len(row)]
            out.append((r, by_b[r.key]))
    return out


def build_comparison(records_a, records_b, images: TestImages, meshes_a=None, meshes_b=None, levels=(1, 2, 3),
                     per_level: int = 4, names=("DMNT", "MT Mask R-CNN")):
    """The same occluded images for both methods: one column per image, rows ground truth | A | B."""
    plt = _plt()
    pairs = comparison_picks(records_a, records_b, levels, per_level)
    _need(pairs, "the comparison (images evaluated by both methods)")
    fig, axes = _grid(plt, 3, len(pairs))
    for j, (ra, rb) in enumerate(pairs):
        s = images.sample(ra.id, ra.level)
        gt = Record(ra.id, ra.level, ra.category, ra.category, 0.0, 1.0, True,
                    pose={k: getattr(s, k) for k in _POSE_KEYS} | {"principal": list(s.principal)},
                    amodal_mask=None)
        draw_panel(axes[0, j], gt, images, None, label="ground truth" if j == 0 else None,
                   caption=f"L{ra.level} {ra.category} ({(s.occlusion_ratio or 0) * 100:.0f}% hidden)")
        draw_panel(axes[1, j], ra, images, meshes_a, label=names[0] if j == 0 else None, caption=_short(ra))
        draw_panel(axes[2, j], rb, images, meshes_b, label=names[1] if j == 0 else None, caption=_short(rb))
    return _finish(fig, axes, 3 * len(pairs), f"{names[0]} vs {names[1]} on the same occluded images "
                   "(ground-truth row: the object's CAD model at the true pose)")


def comparison_figure(records_a, records_b, images: TestImages, path, **kw) -> Path:
    return save_figure(build_comparison(records_a, records_b, images, **kw), path, dpi=110)


def _failure_caption(kind: str, r: Record, cause: str | None = None) -> str:
    if kind == "class":
        what = f"class: {r.category}→{r.pred_category if r.detected else 'none'}"
    elif kind == "pose":
        what = f"pose: {r.pose_error_deg:.0f}° off"
    else:
        what = f"segm.: IoU {r.iou:.2f}"
    # one line per clause of the cause: a panel is too narrow for "features say X; clutter looks like objects"
    return f"L{r.level} {r.category}\n{what}" + ("\n" + cause.replace("; ", "\n") if cause else "")


def build_figure6(records, images: TestImages, meshes=None, n_per_kind: int = 4, name: str = "DMNT", causes=None):
    """Fig. 6: ``select_failures(records, n_per_kind)``, one row per failure kind that has cases; ``causes``
    (``{(id, level): text}``, e.g. ``predict.failure_cause`` of the diagnostics) adds a line to a caption."""
    plt = _plt()
    chosen = select_failures(records, n_per_kind)
    _need(chosen, "Fig. 6 (no record fails any rule)")
    kinds = [k for k in FAILURE_KINDS if any(kind == k for kind, _ in chosen)]
    cols = max(sum(1 for kind, _ in chosen if kind == k) for k in kinds)
    captions = {r.key: _failure_caption(k, r, (causes or {}).get(r.key)) for k, r in chosen}
    fig, axes = _grid(plt, len(kinds), cols, cell=1.6, title_lines=max(c.count("\n") + 1 for c in captions.values()))
    for i, k in enumerate(kinds):
        row = [r for kind, r in chosen if kind == k]
        for j, r in enumerate(row):
            draw_panel(axes[i, j], r, images, meshes, label=k if j == 0 else None, caption=captions[r.key])
        for ax in axes[i, len(row):]:
            ax.axis("off")
    _title(fig, f"{name} failure cases (rule: wrong class, then pose error ≥ 30° worst first, "
           "then amodal IoU < 0.5 lowest first; one image per object)" +
           ("; last line: the cause, from `diagnose`" if causes else ""), size=8)
    return fig


def figure6(records, images: TestImages, path, **kw) -> Path:
    return save_figure(build_figure6(records, images, **kw), path, dpi=110)


# --------------------------------------------------------------------------- results table / plot


def _levels_of(results: dict) -> list[str]:
    levels: set[str] = set()
    for name, res in results.items():
        if "levels" not in res or not isinstance(res["levels"], dict):
            raise ValueError(f"results of {name!r} have no 'levels' dict (a results.json of evaluate?)")
        levels |= set(res["levels"])
    return sorted(levels, key=int)


def results_markdown(results: dict) -> str:
    """The L0-L3 table: one row per (level, method) from ``{method name: results.json dict}``."""
    if not results:
        raise ValueError("results must name at least one method")
    head = "| level | method | n | " + " | ".join(t for _, t, _ in METRICS) + " |"
    lines = [head, "|" + "---|" * (3 + len(METRICS))]
    for level in _levels_of(results):
        for name, res in results.items():
            row = res["levels"].get(level)
            if row is None:
                continue
            cells = []
            for key, _, _ in METRICS:
                v = row.get(key)
                cells.append("–" if v is None else (f"{v:.1f}" if key == "median_deg" else f"{100 * v:.1f}"))
            extra = f" ({row['n_undetected']} undetected)" if row.get("n_undetected") else ""
            lines.append(f"| L{level} | {name}{extra} | {row.get('n', '–')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nAccuracies and mIoU in %, median rotation error in degrees " \
        "(ground-truth category's model, PASCAL3D+ protocol).\n"


def build_results_plot(results: dict):
    """Each metric against the occlusion level, one line per method."""
    plt = _plt()
    levels = _levels_of(results)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(2.6 * len(METRICS), 2.6), squeeze=False)
    for ax, (key, title, higher) in zip(axes[0], METRICS):
        for name, res in results.items():
            xs = [int(k) for k in levels if k in res["levels"] and res["levels"][k].get(key) is not None]
            ys = [res["levels"][str(k)][key] * (1 if key == "median_deg" else 100) for k in xs]
            ax.plot(xs, ys, marker="o", label=name)
        ax.set_title(title + ("" if higher else " ↓"), fontsize=9)
        if key == "median_deg":
            ax.set_ylabel("degrees", fontsize=8)
            ax.set_ylim(bottom=0)
        else:
            ax.set_ylabel("%", fontsize=8)
            ax.set_ylim(-3, 103)
        ax.set_xticks([int(k) for k in levels], [f"L{k}" for k in levels])
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("metric vs occlusion level", fontsize=10)
    fig.tight_layout()
    return fig


def results_plot(results: dict, path) -> Path:
    return save_figure(build_results_plot(results), path, dpi=100)


def image_panels(fig) -> int:
    """How many axes of ``fig`` show an image (what the tests count as panels)."""
    return sum(1 for ax in fig.axes if ax.images)
