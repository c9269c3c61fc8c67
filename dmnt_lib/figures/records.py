"""Per-image evaluation records as the figures read them, where they are (``find_eval``), and the
selection rules (the mask RLE they carry is ``dmnt_lib.rle``, re-exported here).

``evaluate`` writes one JSON object per test image to ``RUN/eval/<name>/predictions.jsonl``.
``normalize`` turns such an object into a ``Record``, accepting the field names below (the first
name is the one ``evaluate`` is asked to write; the others are read too):

==================  ======================================================  ====================
field               meaning                                                 also read as
==================  ======================================================  ====================
``id``              sample id (the same object at every level)             ``sample_id``
``level``           occlusion level 0-3
``category``        ground-truth category                                  ``gt_category``
``pred_category``   predicted category (``None``: nothing detected)        ``predicted_category``
``pose_error_deg``  rotation error in degrees, ground-truth category's      ``error_deg``, ``err_deg``
                    model (PASCAL3D+ protocol)
``iou``             amodal IoU with the ground-truth mask                   ``amodal_iou``, ``miou``
``detected``        bool (the baseline can miss; default True)
``pose``            predicted pose ``{"azimuth", "elevation", "theta"``     ``pred_pose``
                    (radians), ``"distance", "principal": [x, y]}``;
                    optional, for drawing
``amodal_mask``     predicted amodal mask as ``encode_mask`` RLE;           ``mask_rle``
                    optional, for drawing
==================  ======================================================  ====================

Failure-case rule (Fig. 6, ``select_failures``), documented in docs/reproduction.md:

* **class**: predicted category != ground truth, or nothing detected; ranked by occlusion level
  (lowest first: a wrong class on a visible object is the least excusable), then by pose error
  (largest first).
* **pose**: right class but pose error >= 30 deg (the object fails Acc@pi/6); ranked by pose error,
  largest first.
* **segmentation**: amodal IoU < 0.5; ranked by IoU, lowest first.

Success rule (Figs. 4 and 5, ``pick_successes``): per category and level, among the images whose class is
right and whose pose is within 30°, the one with the highest amodal IoU (ties: sample id); a category
without such an image shows its lowest-id image instead, and the panel's title says it failed.

Kinds are filled in that order with ``n_per_kind`` images each; an object (sample id) appears at
most once in the figure, and within a kind a category is repeated only when no other category
qualifies. Ties are broken by (sample id, level), so the choice is deterministic.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..rle import decode_mask, encode_mask

__all__ = [
    "Record", "normalize", "load_records", "find_eval", "encode_mask", "decode_mask",
    "FAILURE_KINDS", "POSE_FAIL_DEG", "IOU_FAIL", "failure_kinds", "failure_cases", "select_failures",
    "pick_per_category", "pick_successes", "is_success",
]

FAILURE_KINDS = ("class", "pose", "segmentation")
POSE_FAIL_DEG = 30.0  # pi/6: the object fails Acc@pi/6
IOU_FAIL = 0.5

_ALIASES = {
    "id": ("id", "sample_id"),
    "category": ("category", "gt_category"),
    "pred_category": ("pred_category", "predicted_category"),
    "pose_error_deg": ("pose_error_deg", "error_deg", "err_deg"),
    "iou": ("iou", "amodal_iou", "miou"),
    "pose": ("pred_pose", "pose"),
    "amodal_mask": ("amodal_mask", "mask_rle"),
}
_MISSING = object()


@dataclass
class Record:
    """One test image's evaluation, as the figures use it.

    Attributes:
        id, level, category: the sample (``category`` the ground truth).
        pred_category: predicted category, ``None`` when nothing was detected.
        pose_error_deg: rotation error in degrees (``nan`` when unknown; ``180`` when undetected).
        iou: amodal IoU in [0, 1] (``0`` when undetected).
        pose: predicted pose under the ground-truth category's model, a dict (``azimuth``,
            ``elevation``, ``theta`` radians; optional ``distance``, ``principal`` ``[x, y]``
            pixels, else the ground truth's), or ``None``.
        amodal_mask: predicted amodal mask ``(H, W)`` bool or ``None``.
        raw: the JSON object it came from.
    """

    id: str
    level: int
    category: str
    pred_category: str | None
    pose_error_deg: float
    iou: float
    detected: bool = True
    pose: dict | None = None
    amodal_mask: np.ndarray | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def key(self) -> tuple[str, int]:
        return (self.id, self.level)

    @property
    def correct_class(self) -> bool:
        return self.detected and self.pred_category == self.category


def _get(obj: dict, name: str, default=_MISSING):
    for alias in _ALIASES.get(name, (name,)):
        if alias in obj:
            return obj[alias]
    if default is _MISSING:
        raise ValueError(f"prediction record has no {name!r} field (also looked for {_ALIASES.get(name, ())}): "
                         f"keys {sorted(obj)}")
    return default


def _float(value, name: str) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"prediction field {name!r} must be a number, got {value!r}") from None


def normalize(obj: dict) -> Record:
    """A ``Record`` from one ``predictions.jsonl`` object (field names: module docstring)."""
    if not isinstance(obj, dict):
        raise TypeError(f"a prediction record must be a dict, got {type(obj).__name__}")
    detected = bool(obj.get("detected", True))
    pred = _get(obj, "pred_category", None)
    if pred is None:
        detected = False
    err = _float(_get(obj, "pose_error_deg", None), "pose_error_deg")
    iou = _float(_get(obj, "iou", None), "iou")
    if not detected:
        err = 180.0 if math.isnan(err) else err
        iou = 0.0 if math.isnan(iou) else iou
    mask = _get(obj, "amodal_mask", None)
    pose = _get(obj, "pose", None)
    if isinstance(pose, (list, tuple)) and len(pose) == 3:
        pose = dict(zip(("azimuth", "elevation", "theta"), (_float(a, "pred_pose") for a in pose)))
    if pose is not None and not isinstance(pose, dict):
        raise ValueError(f"prediction field 'pred_pose' must be 3 angles or a dict of them, got {pose!r}")
    return Record(
        id=str(_get(obj, "id")), level=int(_get(obj, "level")), category=str(_get(obj, "category")),
        pred_category=None if pred is None else str(pred), pose_error_deg=err, iou=iou, detected=detected,
        pose=pose, amodal_mask=decode_mask(mask) if isinstance(mask, dict) else None, raw=obj,
    )


def find_eval(run_dir: str | os.PathLike, name: str | None = None) -> Path:
    """The ``run_dir/eval/<name>`` folder holding ``results.json`` and ``predictions.jsonl``
    (default: the only one, else the newest by ``results.json``'s modification time, an evaluation with the
    object centre searched only when there is no other: ``reproduce`` writes that one last, beside the one the
    figures draw)."""
    run_dir = Path(run_dir)
    root = run_dir / "eval"
    found = sorted((p.parent for p in root.glob("*/results.json")),
                   key=lambda p: ("center-search" not in p.name, p.stat().st_mtime))
    if name is not None:
        if not (root / name / "results.json").is_file():
            raise FileNotFoundError(f"{root / name}/results.json not found (have: {[p.name for p in found]})")
        return root / name
    if not found:
        raise FileNotFoundError(f"no evaluation in {root} (run: python -m dmnt_lib evaluate --run {run_dir} --data ...)")
    return found[-1]


def load_records(path: str | os.PathLike) -> list[Record]:
    """Every record of a ``predictions.jsonl`` file (blank lines skipped; a later line for the same
    ``(id, level)`` replaces an earlier one, as a resumed evaluation may repeat an image)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions not found: {path}")
    out: dict[tuple[str, int], Record] = {}
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            # A run killed mid-write leaves a truncated last line; anything else is corruption.
            if n == len(lines):
                continue
            raise ValueError(f"{path}:{n}: not JSON ({e})") from None
        rec = normalize(obj)
        out[rec.key] = rec
    return list(out.values())


# --------------------------------------------------------------------------- selection rules


def failure_kinds(r: Record) -> list[str]:
    """The failure kinds ``r`` qualifies for (module docstring), in ``FAILURE_KINDS`` order."""
    kinds = []
    if not r.correct_class:
        kinds.append("class")
    elif not math.isnan(r.pose_error_deg) and r.pose_error_deg >= POSE_FAIL_DEG:
        kinds.append("pose")
    if not math.isnan(r.iou) and r.iou < IOU_FAIL:
        kinds.append("segmentation")
    return kinds


def _rank(kind: str, r: Record):
    err = -1.0 if math.isnan(r.pose_error_deg) else r.pose_error_deg
    if kind == "class":
        return (r.level, -err, r.id, r.level)
    if kind == "pose":
        return (-err, r.id, r.level)
    return (r.iou, r.id, r.level)


def failure_cases(records, kind: str, level: int | None = None) -> list[Record]:
    """All records of one failure ``kind`` (optionally at one ``level``), worst first."""
    if kind not in FAILURE_KINDS:
        raise ValueError(f"kind must be one of {FAILURE_KINDS}, got {kind!r}")
    chosen = [r for r in records if kind in failure_kinds(r) and (level is None or r.level == level)]
    return sorted(chosen, key=lambda r: _rank(kind, r))


def select_failures(records, n_per_kind: int = 4, levels=None) -> list[tuple[str, Record]]:
    """The Fig. 6 selection (rule in the module docstring): ``[(kind, record), ...]``, kinds in
    ``FAILURE_KINDS`` order, at most ``n_per_kind`` each; ``levels`` restricts the candidates."""
    if not isinstance(n_per_kind, int) or n_per_kind < 1:
        raise ValueError(f"n_per_kind must be a positive int, got {n_per_kind!r}")
    records = [r for r in records if levels is None or r.level in set(levels)]
    used_ids: set[str] = set()
    out: list[tuple[str, Record]] = []
    for kind in FAILURE_KINDS:
        ranked = [r for r in failure_cases(records, kind) if r.id not in used_ids]
        picked: list[Record] = []
        seen_cats: set[str] = set()
        for diverse in (True, False):  # first one per category, then fill with the rest
            for r in ranked:
                if len(picked) == n_per_kind:
                    break
                if r in picked or r.id in {p.id for p in picked} or (diverse and r.category in seen_cats):
                    continue
                picked.append(r)
                seen_cats.add(r.category)
        picked.sort(key=lambda r: _rank(kind, r))
        used_ids.update(r.id for r in picked)
        out.extend((kind, r) for r in picked)
    return out


def is_success(r: Record) -> bool:
    """Right class, pose within ``POSE_FAIL_DEG``."""
    return r.detected and r.pred_category == r.category and r.pose_error_deg < POSE_FAIL_DEG


def pick_successes(records, level: int, categories=None) -> list[Record]:
    """One record per category at ``level`` by the success rule (module docstring): the correct prediction
    (``is_success``) with the highest IoU, else the ``pick_per_category`` one. Order as ``pick_per_category``."""
    fallback = {r.category: r for r in pick_per_category(records, level, categories)}
    best: dict[str, Record] = {}
    for r in records:
        if r.level == level and is_success(r):
            b = best.get(r.category)
            if b is None or (r.iou, b.id) > (b.iou, r.id):
                best[r.category] = r
    return [best.get(c, r) for c, r in fallback.items()]


def pick_per_category(records, level: int, categories=None) -> list[Record]:
    """One record per category at ``level``: the one with the smallest sample id (a fixed,
    uncurated choice, so the same object is shown at every level). Order: ``categories`` if
    given (missing ones skipped), else sorted by name."""
    best: dict[str, Record] = {}
    for r in records:
        if r.level == level and (r.category not in best or r.id < best[r.category].id):
            best[r.category] = r
    order = list(categories) if categories is not None else sorted(best)
    return [best[c] for c in order if c in best]
