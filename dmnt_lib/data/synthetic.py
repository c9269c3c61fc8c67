"""Synthetic PASCAL3D+-style scenes: a CAD model at a random pose on clutter, plus occluders.

Camera and pose (all angles in radians, NeMo's convention, ``camera.py``):

* focal length ``f = 3 * min(H, W)`` pixels (stored as ``focal = 1`` and ``viewport = f``, the
  PASCAL3D+ split; a field of view of ~19°, a moderate telephoto like most photos);
* ``azimuth ~ U[0, 2π)``; ``elevation ~ U[-10°, 40°]`` (PASCAL3D+ photos are mostly taken
  from about eye height, looking level or down); ``theta ~ U[-15°, 15°]`` (camera roll is small
  in PASCAL3D+);
* ``distance`` puts the model's bounding sphere (radius ``r``) at a projected diameter of
  ``fill * min(H, W)`` with ``fill ~ U[0.7, 0.98]``: ``f r / sqrt(d² - r²) = fill * min(H, W) / 2``;
* the principal point is the image centre shifted by at most ``0.4 (1 - fill) min(H, W)`` per
  axis, so the whole object stays in the frame (the amodal mask is never truncated).

Appearance: one random colour and solid (3D) pattern per material (``shapes.MATERIALS``),
Lambertian plus a little Blinn–Phong shading from a random light on the camera side, flat
per-face normals. Background: a procedural texture, a few textured random shapes, and one or
two *pieces* (random part subsets) of other categories' models at random poses. Images are
hard-edged (no anti-aliasing), so the stored amodal mask is exactly the object's pixels.

Rasterization is ``render.rasterize`` (one face per pixel, no blur; Embree ray casting on CPU,
exact to PyTorch3D, docs/design.md §7); only the object's projected bounding box is rasterized
(a camera with a shifted principal point). ``tests/test_data.py`` checks that re-rendering the
stored CAD file with ``render.render_mask`` gives back the stored mask.

Randomness: everything comes from ``numpy.random.SeedSequence(seed, spawn_key=...)`` keyed by
``(category, index)`` (and the level for occluders), so a sample does not depend on how many
others are generated, and the same seed gives the same bytes.

Train and test data are two runs with different seeds (different seeds give independent
objects and poses; the CAD library, ``SceneConfig.cad_seed``, is shared, as PASCAL3D+'s is):

* training data, unoccluded as in the paper: ``python -m dmnt_lib data --out data/train --levels 0 --seed 0``;
* test data at every occlusion level: ``python -m dmnt_lib data --out data/test --levels 0 1 2 3 --seed 1``.

``CAD/<category>/NN.off`` is written in PASCAL3D+'s on-disk frame (z up, ``shapes.write_cad_library``)
and ``meta.json`` says so (``cad_frame``) and marks the folder as ours (``format``), which is how
``pascal3d.Pascal3D`` tells our stored-image cameras from NeMo's cropped ones.

Output folders are claimed with a ``.dmnt-generating`` marker written before anything else and
removed after ``meta.json``: ``overwrite`` only ever deletes a folder whose ``meta.json`` has
``format == FORMAT`` or that carries the marker (an interrupted run), never anything else.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..camera import pose_to_cameras, pose_to_RT, project_points
from . import _checks
from .occlusion import LEVEL_RANGES, OcclusionError, place_occluders, procedural_texture, random_color, random_shape_field
from .pascal3d import DMNT_FORMAT, atomic_write_bytes, write_list, write_sample
from .shapes import CATEGORIES, MATERIALS, NUM_CAD_MODELS, CADModel, cad_model, write_cad_library

__all__ = [
    "SceneConfig", "Scene", "sample_pose", "render_model", "render_scene", "occlude", "bbox_of",
    "generate_dataset", "check_dataset_args", "dataset_meta", "sample_id", "FORMAT", "VERSION", "MARKER",
]

# Version 2: CAD files in PASCAL3D+'s on-disk frame (z up; "cad_frame" in meta.json). Version 1
# stored them y up; pascal3d.Pascal3D reads both.
FORMAT, VERSION = DMNT_FORMAT, 2
MARKER = ".dmnt-generating"  # present while a generation runs (or after one was interrupted)


@dataclass(frozen=True)
class SceneConfig:
    """Generator settings (all stored in ``meta.json``); every field is checked on creation
    (``TypeError``/``ValueError`` naming it) and numbers are normalised to ``int``/``float``.

    Attributes:
        image_size: ``(H, W)`` ints, each >= 16 pixels.
        focal_factor: focal length in pixels divided by ``min(H, W)``; finite, > 0.
        elevation_deg: ``(lo, hi)`` sampling range in degrees, ``-90 < lo <= hi < 90``.
        theta_deg: ``(lo, hi)`` in degrees, ``-180 <= lo <= hi <= 180`` (the annotations store radians).
        fill: ``(lo, hi)``, bounding sphere's projected diameter / ``min(H, W)``, ``0 < lo <= hi < 1``.
        n_distractors, n_clutter: inclusive ``(lo, hi)`` int ranges, ``0 <= lo <= hi``, of
            distractor model pieces / clutter shapes.
        cad_seed: int >= 0, seed of the procedural CAD library (``shapes.cad_model``).
    """

    image_size: tuple[int, int] = (128, 128)
    focal_factor: float = 3.0
    elevation_deg: tuple[float, float] = (-10.0, 40.0)
    theta_deg: tuple[float, float] = (-15.0, 15.0)
    fill: tuple[float, float] = (0.7, 0.98)
    n_distractors: tuple[int, int] = (1, 2)
    n_clutter: tuple[int, int] = (2, 6)
    cad_seed: int = 0

    def __post_init__(self):
        checked = {
            "image_size": _checks.image_hw("image_size", self.image_size, minimum=16, allow_int=False),
            "focal_factor": _checks.positive("focal_factor", self.focal_factor),
            "elevation_deg": _checks.number_range("elevation_deg", self.elevation_deg, -90, 90, open_lo=True, open_hi=True),
            "theta_deg": _checks.number_range("theta_deg", self.theta_deg, -180, 180),
            "fill": _checks.number_range("fill", self.fill, 0, 1, open_lo=True, open_hi=True),
            "n_distractors": _checks.number_range("n_distractors", self.n_distractors, 0, integer_valued=True),
            "n_clutter": _checks.number_range("n_clutter", self.n_clutter, 0, integer_valued=True),
            "cad_seed": _checks.seed("cad_seed", self.cad_seed),
        }
        for k, v in checked.items():
            object.__setattr__(self, k, v)  # frozen: normalised once, here

    @property
    def focal_px(self) -> float:
        return self.focal_factor * min(self.image_size)

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class Scene:
    """An unoccluded (L0) sample.

    Attributes:
        image: ``(H, W, 3)`` uint8. mask: ``(H, W)`` bool amodal object mask.
        annotation: the pose fields, NeMo style (see ``pascal3d.write_sample``).
    """

    category: str
    index: int
    image: np.ndarray
    mask: np.ndarray
    annotation: dict


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in key)))


def sample_pose(rng: np.random.Generator, radius: float, config: SceneConfig) -> dict:
    """A PASCAL3D+-style pose for a model with bounding-sphere ``radius`` (see module docstring).

    Returns:
        ``{azimuth, elevation, theta (radians), distance, focal (1.0), viewport (pixels),
        principal (np.ndarray (2,) float64, pixels (x, y))}``.
    """
    h, w = config.image_size
    s, f = min(h, w), config.focal_px
    fill = rng.uniform(*config.fill)
    distance = radius * math.sqrt(1 + (2 * f / (fill * s)) ** 2)
    jitter = 0.4 * (1 - fill) * s
    return {
        "azimuth": rng.uniform(0, 2 * math.pi),
        "elevation": math.radians(rng.uniform(*config.elevation_deg)),
        "theta": math.radians(rng.uniform(*config.theta_deg)),
        "distance": distance,
        "focal": 1.0,
        "viewport": f,
        "principal": np.array([w / 2 + rng.uniform(-jitter, jitter), h / 2 + rng.uniform(-jitter, jitter)]),
    }


def _material_looks(rng):
    """Per-material colour ``(M, 3)`` and solid pattern parameters."""
    boxes = {"body": ((0.3, 0.9), (0.35, 0.95)), "secondary": ((0.1, 0.8), (0.3, 0.9)), "dark": ((0.0, 0.3), (0.05, 0.2)),
             "glass": ((0.2, 0.5), (0.12, 0.4)), "metal": ((0.0, 0.1), (0.5, 0.85)), "light": ((0.0, 0.3), (0.85, 1.0))}
    colors = np.stack([random_color(rng, *boxes[m]) for m in MATERIALS])
    kind = rng.integers(0, 4, len(MATERIALS))
    kind[[MATERIALS.index("glass"), MATERIALS.index("metal"), MATERIALS.index("light")]] = 0
    dirs = rng.normal(size=(len(MATERIALS), 2, 3))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    return colors, kind, dirs, rng.uniform(4, 14, len(MATERIALS)), rng.uniform(0.15, 0.45, len(MATERIALS))


def _pattern(p, kind, dirs, freq, amp):
    """Solid texture factor ``(N,)`` around 1 at object points ``p (N, 3)``."""
    a, b = (p * dirs[:, 0]).sum(-1) * freq, (p * dirs[:, 1]).sum(-1) * freq
    out = np.zeros(len(p))
    out = np.where(kind == 1, (np.sin(a) > 0) - 0.5, out)
    out = np.where(kind == 2, (np.floor(a / 2) + np.floor(b / 2)) % 2 - 0.5, out)
    out = np.where(kind == 3, 0.5 * np.sin(a) * np.sin(b), out)
    return 1 + amp * out


def render_model(model: CADModel, pose: dict, image_size, rng: np.random.Generator):
    """Shade ``model`` at ``pose`` (``sample_pose``'s dict) into a full frame.

    Args:
        image_size: ``(H, W)``.
        rng: draws the colours, patterns and light.

    Returns:
        ``rgb (H, W, 3)`` float32 in [0, 1] (0 off the object) and ``mask (H, W)`` bool.
    """
    h, w = image_size
    rgb, mask = np.zeros((h, w, 3), np.float32), np.zeros((h, w), bool)
    colors, kind, dirs, freq, amp = _material_looks(rng)
    light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(0.0, 0.9), -1.0])
    light /= np.linalg.norm(light)
    ambient, ks = rng.uniform(0.25, 0.45), rng.uniform(0.0, 0.3)
    angles = [torch.tensor([float(pose[k])], dtype=torch.float64) for k in ("azimuth", "elevation", "theta", "distance")]
    R, T = pose_to_RT(*angles)
    f = float(pose["focal"]) * float(pose["viewport"])
    pp = np.asarray(pose["principal"], dtype=np.float64)
    verts = model.verts.double()
    xy, depth = project_points(verts, R, T, f, torch.as_tensor(pp))
    if (depth <= 0).any():
        raise ValueError("the camera is inside the model's bounding box; increase distance")
    lo, hi = xy[0].min(0).values.numpy(), xy[0].max(0).values.numpy()
    x0, y0 = max(int(math.floor(lo[0])) - 1, 0), max(int(math.floor(lo[1])) - 1, 0)
    x1, y1 = min(int(math.ceil(hi[0])) + 1, w), min(int(math.ceil(hi[1])) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return rgb, mask
    from ..raster import rasterize

    tri = verts[model.faces]  # (F, 3, 3)
    normals = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    cams = pose_to_cameras(*[a.float() for a in angles], image_size=(y1 - y0, x1 - x0), focal=f,
                           principal=torch.tensor(pp - [x0, y0], dtype=torch.float32))
    # No back-face culling needed: from outside, the nearest hit on closed shells is a front face,
    # and the whole mesh keeps one cached Embree scene per model across samples.
    with torch.no_grad():
        frags = rasterize(model.to_uvmesh(), cams, (y1 - y0, x1 - x0))
    p2f = frags.pix_to_face[0]
    win = frags.mask[0].numpy()
    face = p2f[frags.mask[0]].numpy()
    bary = frags.bary[0][frags.mask[0]].double().numpy()
    points = (bary[:, :, None] * tri.numpy()[face]).sum(1)
    n_view = (normals.numpy()[face] @ R[0].numpy())
    n_view /= np.linalg.norm(n_view, axis=-1, keepdims=True) + 1e-12
    diffuse = np.clip(n_view @ light, 0, None)
    half = light + np.array([0.0, 0.0, -1.0])
    spec = ks * np.clip(n_view @ (half / np.linalg.norm(half)), 0, None) ** 20
    mat = model.face_material.numpy()[face]
    albedo = colors[mat] * _pattern(points, kind[mat], dirs[mat], freq[mat], amp[mat])[:, None]
    shaded = np.clip(albedo * (ambient + (1 - ambient) * diffuse[:, None]) + spec[:, None], 0, 1)
    rgb[y0:y1, x0:x1][win] = shaded
    mask[y0:y1, x0:x1] = win
    return rgb, mask


def _background(rng, category, config: SceneConfig):
    h, w = config.image_size
    img = procedural_texture(rng, h, w)
    for _ in range(int(rng.integers(config.n_clutter[0], config.n_clutter[1] + 1))):
        field = random_shape_field(rng, h, w, rng.uniform(0, 1, 2) * (w, h), rng.uniform(0.1, 0.5) * min(h, w))
        sel = field <= 1
        img[sel] = procedural_texture(rng, h, w)[sel]
    others = [c for c in CATEGORIES if c != category]
    for _ in range(int(rng.integers(config.n_distractors[0], config.n_distractors[1] + 1))):
        cat = others[int(rng.integers(0, len(others)))]
        model = cad_model(cat, int(rng.integers(1, NUM_CAD_MODELS[cat] + 1)), config.cad_seed)
        parts = [i for i in range(len(model.part_names)) if rng.uniform() < 0.6] or [0]
        pose = sample_pose(rng, float(model.verts.norm(dim=1).max()), config)
        pose["distance"] *= rng.uniform(1.3, 2.5)  # smaller than the object, mostly
        pose["principal"] = rng.uniform(0.1, 0.9, 2) * (w, h)
        rgb, m = render_model(model.subset(parts), pose, (h, w), rng)
        img[m] = rgb[m]
    return img


def bbox_of(mask: np.ndarray) -> np.ndarray:
    """Tight box ``(4,)`` float64 ``(x0, y0, x1, y1)`` in pixels (pixel edges: ``x1 = last column + 1``)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("mask is empty")
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def render_scene(category: str, index: int, seed: int, config: SceneConfig = SceneConfig()) -> Scene:
    """The L0 sample ``index`` (0-based) of ``category`` for ``seed``.

    The CAD model (``cad_index``, 1-based) and pose are drawn from the sample's own RNG; the
    returned annotation holds ``category, cad_index, azimuth, elevation, theta, distance,
    focal, viewport, principal, bbox``.
    """
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
    index, seed = _checks.integer("index", index, 0), _checks.seed("seed", seed)
    if not isinstance(config, SceneConfig):
        raise TypeError(f"config must be a SceneConfig, got {type(config).__name__}")
    rng = _rng(seed, 0, CATEGORIES.index(category), index)
    cad_index = int(rng.integers(1, NUM_CAD_MODELS[category] + 1))
    model = cad_model(category, cad_index, config.cad_seed)
    pose = sample_pose(rng, float(model.verts.norm(dim=1).max()), config)
    rgb, mask = render_model(model, pose, config.image_size, rng)
    if not mask.any():
        raise RuntimeError(f"{category} sample {index}: the object is not visible (should not happen)")
    img = _background(rng, category, config)
    img[mask] = rgb[mask]
    image = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    annotation = {"category": category, "cad_index": cad_index, **pose, "bbox": bbox_of(mask)}
    return Scene(category, index, image, mask, annotation)


def occlude(scene: Scene, level: int, seed: int):
    """Level ``level`` of ``scene``: the same image with occluders pasted on (L0: none).

    Returns:
        ``image (H, W, 3)`` uint8, ``occluder_mask (H, W)`` bool, ``occlusion_ratio`` float
        (measured: ``1 - |mask & ~occluder_mask| / |mask|``).

    Raises:
        OcclusionError: no placement in the level's range was found for this mask.
    """
    level, seed = _checks.integer("level", level), _checks.seed("seed", seed)
    if level == 0:
        return scene.image, np.zeros_like(scene.mask), 0.0
    if level not in LEVEL_RANGES:
        raise ValueError(f"level must be one of 0, {', '.join(map(str, LEVEL_RANGES))}; got {level}")
    rng = _rng(seed, 1, CATEGORIES.index(scene.category), scene.index, level)
    try:
        occ, tex, ratio = place_occluders(scene.mask, LEVEL_RANGES[level], rng)
    except (OcclusionError, ValueError) as e:  # say which sample could not be occluded
        raise type(e)(f"{sample_id(scene.category, scene.index)} at level L{level}: {e}") from None
    image = scene.image.copy()
    image[occ] = np.round(np.clip(tex[occ], 0, 1) * 255).astype(np.uint8)
    return image, occ, ratio


# --------------------------------------------------------------------------- whole datasets

_MANAGED = re.compile(r"^(CAD|L[0-3]|meta\.json|\.dmnt-generating|\..*\.tmp)$")  # what generate_dataset writes


def sample_id(category: str, index: int) -> str:
    """File stem of sample ``index`` (0-based): unique across categories, like PASCAL3D+ ids."""
    return f"{category}_{index:05d}"


def dataset_meta(per_category: int, levels, seed: int, categories, config: SceneConfig) -> dict:
    """The ``meta.json`` content (no timestamps, so it is reproducible byte for byte)."""
    return {
        "format": FORMAT, "version": VERSION, "seed": int(seed), "per_category": int(per_category),
        "levels": list(levels), "categories": list(categories), "image_size": list(config.image_size),
        "counts": {f"L{k}": {c: int(per_category) for c in categories} for k in levels},
        "num_cad_models": {c: NUM_CAD_MODELS[c] for c in categories},
        "level_ranges": {f"L{k}": list(LEVEL_RANGES[k]) for k in levels if k},
        "config": config.to_json(),
        # the convention marker pascal3d.detect_convention reads: principal and focal * viewport
        # are the stored image's; CAD files are z up on disk, like PASCAL3D+'s
        "convention": "dmnt", "cad_frame": "z_up",
        "units": {"angles": "radians", "focal_pixels": "focal * viewport", "principal": "pixels (x, y)",
                  "bbox": "pixels (x0, y0, x1, y1), pixel edges"},
    }


def check_dataset_args(per_category, levels, seed, categories, image_size=None, config=None):
    """Validate ``generate_dataset``'s arguments (``TypeError``/``ValueError`` naming the bad one).

    Returns:
        ``(per_category, levels, seed, categories, config)``: ints, a sorted list of levels, a
        list of category names, and the ``SceneConfig`` with ``image_size`` applied (if given).
    """
    per_category = _checks.integer("per_category", per_category, 1)
    levels = _checks.int_list("levels", levels, (0, 1, 2, 3))
    seed = _checks.seed("seed", seed)
    categories = _checks.names("categories", categories, CATEGORIES)
    if config is None:
        config = SceneConfig()
    elif not isinstance(config, SceneConfig):
        raise TypeError(f"config must be a SceneConfig or None, got {type(config).__name__}")
    if image_size is not None:
        config = replace(config, image_size=_checks.image_hw("image_size", image_size, minimum=16))
    return per_category, levels, seed, categories, config


def _is_dmnt_dataset(out: Path) -> bool:
    if (out / MARKER).is_file():
        return True
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):  # absent, unreadable or not JSON: not known to be ours
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Make ``out`` an empty folder claimed by ``MARKER``, or refuse (``FileExistsError``).

    Only a folder known to be ours (``meta.json`` with our format, or the marker of an
    interrupted run) holding nothing but what we write is ever emptied, and only with
    ``overwrite``. The marker is written before anything is deleted, so an interrupted
    overwrite still shows as ours (and never as complete: ``meta.json`` goes first).
    """
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out {out} exists and is not a folder")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if names:
        if not _is_dmnt_dataset(out):
            raise FileExistsError(
                f"out {out} is not empty and is not a dmnt dataset (no meta.json with format {FORMAT!r} and no "
                f"{MARKER} marker); it is never deleted, even with --overwrite: choose another folder")
        foreign = [n for n in names if not _MANAGED.match(n)]
        if foreign:
            raise FileExistsError(f"out {out} holds a dmnt dataset and also {foreign[:5]}, which generation never "
                                  "deletes: move them or choose another folder")
        if not overwrite:
            what = "an interrupted dmnt generation" if (out / MARKER).is_file() else "a dmnt dataset"
            raise FileExistsError(f"out {out} already holds {what}; pass --overwrite (overwrite=True) to replace it")
    atomic_write_bytes(out / MARKER, b"dmnt_lib.data.generate_dataset is writing this folder (or was interrupted); "
                                     b"meta.json appears when it is complete\n")
    if names:
        (out / "meta.json").unlink(missing_ok=True)
        for n in names:
            p = out / n
            if n != MARKER:
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


@contextmanager
def _torch_threads(n: int):
    # The tensors here are tiny: intra-op threads only add synchronisation (several x slower).
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def generate_dataset(out, per_category: int, levels=(0, 1, 2, 3), seed: int = 0, image_size=None,
                     categories=CATEGORIES, overwrite: bool = False, config: SceneConfig | None = None,
                     progress: bool = True) -> dict:
    """Generate a synthetic PASCAL3D+-style dataset in ``out`` (layout: ``pascal3d`` module).

    Every argument is checked before anything is written (``TypeError``/``ValueError`` naming it).

    Args:
        out: destination folder (str or path); must be empty or absent. With ``overwrite`` a
            previous dmnt dataset there (its ``meta.json`` has ``format == FORMAT``) or an
            interrupted generation (``MARKER`` present) is replaced; anything else is refused
            with ``FileExistsError``, whatever ``overwrite`` says.
        per_category: samples per category, int >= 1 (each exists at every level in ``levels``).
        levels: non-empty sequence from ``0, 1, 2, 3``; level ``k > 0`` shows the L0 sample
            with occluders.
        seed: scene seed, int >= 0; the same seed gives byte-identical files, different seeds
            independent objects and poses (train: ``levels=(0,), seed=0``; test: ``seed=1``).
        image_size: ``H`` or ``(H, W)`` (ints >= 16) overriding ``config.image_size``; None
            keeps the config's (default ``(128, 128)``).
        categories: sequence of names from ``CATEGORIES`` (not a bare str).
        config: other generator settings (``SceneConfig``; None = defaults).
        progress: show a tqdm bar.

    Returns:
        ``{"images", "samples", "seconds", "images_per_s", "bytes", "meta"}``.

    Raises:
        OcclusionError: a sample's mask admits no occluders in its level's range (the folder is
            left marked as interrupted, without ``meta.json``).
    """
    per_category, levels, seed, categories, config = check_dataset_args(
        per_category, levels, seed, categories, image_size, config)
    out = _checks.path("out", out)
    _prepare_out(out, overwrite)
    from tqdm.auto import tqdm

    start = time.perf_counter()
    with _torch_threads(1):
        write_cad_library(out, categories, config.cad_seed)
        jobs = [(c, i) for c in categories for i in range(per_category)]
        for cat, i in tqdm(jobs, desc="generating", unit="sample", disable=not progress):
            scene = render_scene(cat, i, seed, config)
            for k in levels:
                image, occ, ratio = occlude(scene, k, seed)
                ann = {**scene.annotation, "mask": scene.mask, "visible_mask": scene.mask & ~occ,
                       "occluder_mask": occ, "occlusion_ratio": ratio, "level": k}
                write_sample(out / f"L{k}", cat, sample_id(cat, i), image, ann)
        for k in levels:
            for cat in categories:
                write_list(out / f"L{k}" / "lists" / f"{cat}.txt", [sample_id(cat, i) for i in range(per_category)])
        meta = dataset_meta(per_category, levels, seed, categories, config)
        atomic_write_bytes(out / "meta.json", (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        (out / MARKER).unlink()  # complete: from now on meta.json is what marks the folder as ours
    seconds = time.perf_counter() - start
    n_images = len(jobs) * len(levels)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"images": n_images, "samples": len(jobs), "seconds": seconds, "images_per_s": n_images / seconds,
            "bytes": size, "meta": meta}
