"""Fitting a category's deformable mesh to its CAD models, and a shape code to a silhouette.

``fit_category`` learns the ``DeformationNet`` and one code per CAD model (auto-decoder) by
minimising with Adam, over the CAD models ``n`` drawn for each step:

    L =   w_chamfer    · CD(S(template + δ_n), S(CAD_n)) / s²     surface samples, by area
        + w_silhouette · (1 − softIoU)                             a few (model, view) pairs
        + w_laplacian  · ‖L δ‖² / s²   + w_edge · Σ((ℓ−ℓ⁰)/ℓ⁰)²   + w_offset · ‖δ‖² / s²
        + w_latent     · ‖z‖²

where ``s`` is the template's scale (max |coordinate|) so the weights do not depend on the
units. Each step draws ``models_per_step`` of the models (all if 0), fresh surface samples
and ``silhouette_batch`` of their (model, view) pairs from a generator seeded by
``(seed, step)``: a resumed run repeats exactly what an uninterrupted one does. Silhouette
targets are the CAD models' hard masks from ``views``; the soft renders use
``silhouette.soft_silhouette``. Only the drawn models' codes move at a step (``optim.CodeAdam``:
per-code Adam), the net with ``torch.optim.Adam``. ``fit_latent`` (test time) lives in ``latent.py``.

CAD models are ``dmnt_lib.data.CADModel`` (``load_cad_models`` reads them from ``.off`` files,
``dmnt_lib.data.cad_models`` builds the procedural ones), or any objects with ``verts (V, 3)``
float and ``faces (F, 3)`` int64 tensors. Their names are their ``index`` as ``"%02d"`` (the
``NN.off`` file name), else their 1-based position.

Checkpoints (``torch.save`` through ``fileio.atomic_path``: temp file, then ``os.replace``)
hold the step, the net, the codes, both optimisers' states, the config (which includes the
seed), the template and the loss history; ``fit_category(..., checkpoint=path)`` resumes from one.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..camera import camera_center, pose_to_cameras
from ..data.shapes import CADModel
from ..fileio import atomic_path
from ..mesh import UVMesh, cuboid_template, read_off
from .geometry import chamfer_distance, edge_length_loss, laplacian_smoothness, mesh_edges, offset_magnitude, sample_surface
from .net import DeformableMesh, DeformationNet
from .optim import FitOptimizer
from .silhouette import hard_silhouette, silhouette_iou, soft_iou_loss, soft_silhouette

__all__ = [
    "load_cad_models",
    "model_names",
    "make_template",
    "FitConfig",
    "FitResult",
    "view_cameras",
    "fit_category",
    "evaluate",
    "save_checkpoint",
    "load_checkpoint",
]

# v2: the optimizer entry holds {"net": Adam, "codes": CodeAdam} (v1 had one Adam for both).
CHECKPOINT_FORMAT = "dmnt-deform-v2"
_CHECKPOINT_KEYS = ("format", "category", "step", "config", "names", "template", "net_config", "state", "optimizer", "history")


def load_cad_models(data_dir: str | os.PathLike, category: str, z_up: bool | None = None) -> list[CADModel]:
    """Read ``data_dir/CAD/<category>/NN.off`` (by index) as ``dmnt_lib.data.CADModel``.

    ``.off`` files hold geometry only, so every face gets material 0 and part 0 (``"mesh"``).
    ``index`` is ``NN``. Vertices are returned in our frame (y up, ``dmnt_lib.data.shapes``):
    files stored in PASCAL3D+'s on-disk frame (z up) are converted with NeMo's
    ``(x, y, z) → (x, z, −y)`` (a proper rotation; winding kept).

    Args:
        data_dir: a dataset folder holding ``CAD/``.
        category: the folder name under ``CAD/``.
        z_up: whether the files are stored z up; ``None``: as ``data.pascal3d.cad_is_z_up`` says
            (z up, PASCAL3D+'s frame and the generator's, unless our ``meta.json`` says otherwise).

    Raises:
        FileNotFoundError: the folder is missing or holds no ``.off`` file. ValueError: a file
        not named ``NN.off`` (digits), or a bad ``meta.json``.
    """
    if z_up is not None and not isinstance(z_up, bool):
        raise TypeError(f"z_up must be a bool or None, got {type(z_up).__name__}")
    data_dir = Path(data_dir)
    folder = data_dir / "CAD" / category
    if not folder.is_dir():
        raise FileNotFoundError(f"no CAD folder for category {category!r}: {folder} does not exist")
    paths = list(folder.glob("*.off"))
    if not paths:
        raise FileNotFoundError(f"no .off files in {folder}")
    bad = [p.name for p in paths if not p.stem.isdigit()]
    if bad:
        raise ValueError(f"CAD files must be named NN.off (the 1-based cad_index), got {sorted(bad)} in {folder}")
    indices = sorted(int(p.stem) for p in paths)
    if len(set(indices)) != len(indices) or indices[0] < 1:
        raise ValueError(f"CAD file names in {folder} must be distinct 1-based indices NN.off, got {sorted(p.name for p in paths)}")
    if z_up is None:
        from ..data.pascal3d import cad_is_z_up

        z_up = cad_is_z_up(data_dir)
    models = []
    for p in sorted(paths, key=lambda p: int(p.stem)):
        verts, faces = read_off(p, z_up=z_up)
        zeros = torch.zeros(len(faces), dtype=torch.int64)
        models.append(CADModel(category, int(p.stem), verts, faces, zeros, zeros.clone(), ("mesh",)))
    return models


def make_template(cad_models: list[CADModel], num_verts: int = 1000) -> UVMesh:
    """The category template: ``mesh.cuboid_template`` around all models' joint bounding box."""
    model_names(cad_models)
    return cuboid_template(meshes_verts=[m.verts.float() for m in cad_models], num_verts=num_verts)


def model_names(cad_models) -> list[str]:
    """Check CAD models and return their names (see the module docstring).

    Args:
        cad_models: a non-empty list of objects with ``verts (V, 3)`` float and non-empty
            ``faces (F, 3)`` int64 tensors (indices in ``[0, V)``, finite coordinates).

    Raises:
        ValueError / TypeError naming ``cad_models[i]``.
    """
    if not isinstance(cad_models, (list, tuple)) or not cad_models:
        raise ValueError(f"cad_models must be a non-empty list of CAD models, got {type(cad_models).__name__}")
    names = []
    for i, m in enumerate(cad_models):
        verts, faces = getattr(m, "verts", None), getattr(m, "faces", None)
        if not isinstance(verts, torch.Tensor) or not isinstance(faces, torch.Tensor):
            raise TypeError(f"cad_models[{i}] must have tensor attributes verts and faces (a CADModel), got {type(m).__name__}")
        if verts.dim() != 2 or verts.shape[1] != 3 or not verts.is_floating_point() or len(verts) == 0:
            raise ValueError(f"cad_models[{i}].verts must be a float (V, 3) tensor, got {verts.dtype} {tuple(verts.shape)}")
        if faces.dim() != 2 or faces.shape[1] != 3 or faces.dtype != torch.int64 or len(faces) == 0:
            raise ValueError(f"cad_models[{i}].faces must be a non-empty int64 (F, 3) tensor, got {faces.dtype} {tuple(faces.shape)}")
        if faces.min() < 0 or faces.max() >= len(verts):
            raise ValueError(f"cad_models[{i}].faces indices must lie in [0, {len(verts)})")
        if not torch.isfinite(verts).all():
            raise ValueError(f"cad_models[{i}].verts contains NaN or inf")
        index = getattr(m, "index", None)
        if isinstance(index, int) and not isinstance(index, bool):
            names.append(f"{index:02d}")
        else:
            names.append(f"{i + 1:02d}")
    return names


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _views(name: str, v) -> tuple[tuple[float, float], ...]:
    """Validate a sequence of ``(azimuth, elevation)`` degree pairs and return it as float tuples."""
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_number(a) and math.isfinite(a) for a in p) for p in v)
    if not ok:
        raise ValueError(f"FitConfig.{name} must be a non-empty sequence of finite (azimuth, elevation) degree pairs, got {v!r}")
    return tuple((float(a), float(e)) for a, e in v)


def _view_dirs(views) -> torch.Tensor:
    """Unit directions ``(n, 3)`` float64 from the origin to cameras at ``(azimuth°, elevation°)``
    (``camera.camera_center`` at distance 1): 360° apart azimuths, or any azimuth at a pole,
    give the same direction."""
    a, e = torch.tensor(views, dtype=torch.float64).deg2rad().unbind(-1)
    return camera_center(a, e, torch.ones((), dtype=torch.float64))


@dataclass(frozen=True)
class FitConfig:
    """Everything that determines a fit (stored in checkpoints; resuming requires equality).

    Views are ``(azimuth, elevation)`` pairs in **degrees** (PASCAL3D+ convention, theta 0).
    ``eval_views`` must be held out: one that looks from the direction of a training view
    (``views``) is a ``ValueError``. The full defaults follow the issue (8 × 256 net);
    ``FitConfig.quick()`` is the 2-core preset.

    Loss weights (terms as in the module docstring; chamfer, Laplacian and offset are divided
    by the template scale², so these are unit-free):

    * ``w_chamfer = 1``: the main term; after fitting it is ~1e-3 (normalised).
    * ``w_silhouette = 0.01``: the soft IoU loss is ~0.1–0.3, so this adds ~1e-3: a refinement
      of the outline. Larger weights (0.02+) made training-view IoU *worse* in our runs
      because of the soft-silhouette bias described at ``sigma``.
    * ``w_laplacian = 1``: ~1e-3 at the end; 10 visibly smooths but costs ~40 % chamfer.
    * ``w_edge = w_offset = 1e-3``: both reach ~0.1–0.2 (the cuboid must shrink a lot to
      become a chair), so they act as weak tie-breakers that keep triangles from collapsing.
    * ``w_latent = 1e-4``: DeepSDF's code prior; keeps the codes O(1).
    """

    steps: int = 600
    template_verts: int = 1000
    latent_dim: int = 32
    hidden: int = 256
    depth: int = 8
    skip: tuple[int, ...] = (4,)
    num_freqs: int = 4
    lr_net: float = 1e-3
    lr_latent: float = 1e-2
    lr_decay: float = 0.1  # learning rates fall exponentially to this factor at the last step
    num_samples: int = 3000  # surface points per mesh per step
    models_per_step: int = 0  # CAD models per step (a random subset, auto-decoder style); 0 = all
    image_size: int = 128  # soft silhouettes; see below for why not lower
    views: tuple[tuple[float, float], ...] = ((0.0, 5.0), (90.0, 5.0), (45.0, 30.0), (0.0, 80.0))
    silhouette_batch: int = 8  # (model, view) pairs rendered per step
    # Soft silhouettes come out ~σ-dependent fractions of a pixel fatter than the hard ones (every
    # face within the blur adds to the product); against a hard target the optimum then shrinks
    # the mesh: for a thin ellipsoid by 10 % at 48 px/σ=0.5, 1.5 % at 128 px/σ=0.1 (measured).
    # Hence a sharp σ at a fine resolution, and a small weight next to the chamfer term.
    sigma: float = 0.1  # soft silhouette softness, squared pixels
    w_chamfer: float = 1.0
    w_silhouette: float = 0.01
    w_laplacian: float = 1.0
    w_edge: float = 1e-3
    w_offset: float = 1e-3
    w_latent: float = 1e-4
    eval_views: tuple[tuple[float, float], ...] = ((30.0, 20.0), (120.0, 20.0), (210.0, 20.0), (300.0, 20.0))
    eval_image_size: int = 64
    eval_samples: int = 4000
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self):
        ints = dict(steps=0, template_verts=8, latent_dim=1, hidden=1, depth=1, num_freqs=0, num_samples=1, image_size=8,
                    silhouette_batch=0, models_per_step=0, eval_image_size=8, eval_samples=1, checkpoint_every=1, seed=0)
        for name, low in ints.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"FitConfig.{name} must be an int, got {v!r}")
            if v < low:
                raise ValueError(f"FitConfig.{name} must be >= {low}, got {v!r}")
        for name in ("lr_net", "lr_latent", "lr_decay", "sigma"):
            v = getattr(self, name)
            if not (_is_number(v) and math.isfinite(v) and v > 0):
                raise ValueError(f"FitConfig.{name} must be a positive number, got {v!r}")
        for name in ("w_chamfer", "w_silhouette", "w_laplacian", "w_edge", "w_offset", "w_latent"):
            v = getattr(self, name)
            if not (_is_number(v) and math.isfinite(v) and v >= 0):
                raise ValueError(f"FitConfig.{name} must be a non-negative number, got {v!r}")
        for name in ("views", "eval_views"):
            object.__setattr__(self, name, _views(name, getattr(self, name)))
        skip = self.skip
        if not isinstance(skip, (list, tuple)) or any(not isinstance(k, int) or isinstance(k, bool) or not 0 < k < self.depth for k in skip):
            raise ValueError(f"FitConfig.skip must be a sequence of ints in [1, depth={self.depth}), got {skip!r}")
        object.__setattr__(self, "skip", tuple(skip))
        # "Held-out" IoU must not be measured from a direction the silhouette term trained on.
        train_dirs = _view_dirs(self.views)
        for k, d in enumerate(_view_dirs(self.eval_views)):
            close = (train_dirs @ d) > math.cos(math.radians(1e-3))
            if close.any():
                j = int(close.nonzero()[0, 0])
                raise ValueError(f"FitConfig.eval_views[{k}] = {self.eval_views[k]} coincides with the training view "
                                 f"views[{j}] = {self.views[j]}: evaluation views must be held out")

    @classmethod
    def quick(cls, **overrides) -> "FitConfig":
        """The 2-CPU-core preset: 6 × 128 net, ~640-vertex template, 4 models and 4 silhouettes
        (96 px) per step, 200 steps: about 20 s per category of ≤ 10 models on one core."""
        base = dict(steps=200, template_verts=642, hidden=128, depth=6, skip=(3,), lr_net=2e-3, lr_latent=2e-2,
                    num_samples=800, models_per_step=4, image_size=96, silhouette_batch=4)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: [list(x) for x in v] if k in ("views", "eval_views") else list(v) if k == "skip" else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "FitConfig":
        return cls(**d)


@dataclass
class FitResult:
    """Output of ``fit_category``: the fitted ``mesh``, its ``config``, the model ``names``,
    ``steps`` done, ``history`` (per-step loss terms, lists of floats) and the live
    ``optimizer`` (``optim.FitOptimizer``; ``None`` in a ``load_checkpoint`` result, whose
    optimizer state is returned separately)."""

    mesh: DeformableMesh
    config: FitConfig
    names: list[str]
    steps: int
    history: dict[str, list[float]] = field(default_factory=dict)
    optimizer: FitOptimizer | None = field(default=None, repr=False)


def view_cameras(views, radius: float, image_size: int, device="cpu"):
    """Cameras looking at the origin from ``views`` (``(azimuth°, elevation°)`` pairs, theta 0).

    Focal length ``2·S`` pixels; distance ``4.76·radius`` so a sphere of ``radius`` fills about
    86 % of the frame width. Returns PyTorch3D cameras with one entry per view.
    """
    v = torch.as_tensor(views, dtype=torch.float32).reshape(-1, 2) * (math.pi / 180)
    focal = 2.0 * image_size
    distance = focal * radius / (0.42 * image_size)
    return pose_to_cameras(v[:, 0], v[:, 1], 0.0, distance, image_size, focal=focal, device=device)


def _index_cameras(views, idx, radius, image_size, device):
    return view_cameras([views[i] for i in idx], radius, image_size, device)


def _cad_masks(cad_models, views, radius, image_size, device) -> torch.Tensor:
    """``(N, n_views, H, W)`` bool target silhouettes."""
    cams = view_cameras(views, radius, image_size, device)
    out = []
    for m in cad_models:
        v = m.verts.to(device).float()[None].expand(len(views), -1, -1)
        out.append(hard_silhouette(v, m.faces.to(device), cams, image_size))
    return torch.stack(out)


def _step_generator(seed: int, step: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + int(step))


def _build(template: UVMesh, n: int, config: FitConfig, device) -> DeformableMesh:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = DeformationNet(config.latent_dim, config.hidden, config.depth, config.skip, config.num_freqs)
    return DeformableMesh(template, n, net, seed=config.seed).to(device)


def save_checkpoint(path, result: FitResult, optimizer: FitOptimizer, category: str = "") -> None:
    """Atomically write a resumable checkpoint of ``result`` and ``optimizer``'s state to ``path``
    (``fileio.atomic_path``: if writing fails, a previous file at ``path`` is left intact)."""
    if not isinstance(result, FitResult):
        raise TypeError(f"result must be a FitResult, got {type(result).__name__}")
    if not isinstance(optimizer, FitOptimizer):
        raise TypeError(f"optimizer must be a FitOptimizer, got {type(optimizer).__name__}")
    t = result.mesh.template
    payload = {
        "format": CHECKPOINT_FORMAT,
        "category": category,
        "step": result.steps,
        "config": result.config.to_dict(),
        "names": list(result.names),
        "template": {"verts": t.verts.cpu(), "faces": t.faces.cpu(), "verts_uvs": t.verts_uvs.cpu(), "faces_uvs": t.faces_uvs.cpu()},
        "net_config": result.mesh.net.config(),
        "state": {k: v.detach().cpu() for k, v in result.mesh.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "history": result.history,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path, device="cpu") -> tuple[FitResult, dict, str]:
    """Load a checkpoint: ``(FitResult, optimizer_state_dict, category)``.

    ``optimizer_state_dict`` is ``FitOptimizer.state_dict()`` of the run that wrote it.

    Raises:
        FileNotFoundError: ``path`` is missing. ValueError: not a deformation checkpoint, or
        one with a missing or inconsistent entry (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable checkpoint ({e})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        found = ck.get("format") if isinstance(ck, dict) else None
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (format: {found!r})")
    missing = [k for k in _CHECKPOINT_KEYS if k not in ck]
    if missing:
        raise ValueError(f"{path}: checkpoint is missing the entries {missing}")
    entry = "config"
    try:  # a damaged entry gets a ValueError naming it, not a TypeError/KeyError from deep inside
        config = FitConfig.from_dict(ck["config"])
        entry = "template"
        template = UVMesh(**ck["template"])
        entry = "net_config"
        with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the caller's RNG untouched
            net = DeformationNet(**ck["net_config"])
        entry = "state"
        mesh = DeformableMesh(template, len(ck["names"]), net)
        mesh.load_state_dict(ck["state"])
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"{path}: bad checkpoint entry {entry!r}: {e}") from None
    result = FitResult(mesh.to(device), config, list(ck["names"]), int(ck["step"]), ck["history"])
    return result, ck["optimizer"], ck["category"]


def fit_category(
    cad_models: list[CADModel],
    config: FitConfig = FitConfig(),
    *,
    template: UVMesh | None = None,
    checkpoint: str | os.PathLike | None = None,
    category: str = "",
    callback: Callable[[int, dict], None] | None = None,
    progress: bool = True,
    device="cpu",
) -> FitResult:
    """Fit one category's deformable mesh to its CAD models (see the module docstring).

    Args:
        cad_models: the ``N`` CAD models (``load_cad_models``, ``dmnt_lib.data.cad_models``, or
            any objects with ``verts``/``faces``: see ``model_names``).
        config: ``FitConfig``; ``config.steps`` is the total number of steps.
        template: default ``make_template(cad_models, config.template_verts)``.
        checkpoint: file to resume from (if it exists) and to save to every
            ``config.checkpoint_every`` steps and at the end. Its config and model names must match.
        category: a label stored in the checkpoint and shown on the progress bar.
        callback: ``callback(step_done, losses)`` after each step (after any checkpoint save).
        progress: show a tqdm bar.
        device: torch device.

    Returns:
        ``FitResult`` (with the live ``optimizer``).
    """
    from tqdm.auto import tqdm

    names = model_names(cad_models)
    if not isinstance(config, FitConfig):
        raise TypeError(f"config must be a FitConfig, got {type(config).__name__}")
    if template is not None and not isinstance(template, UVMesh):
        raise TypeError(f"template must be a dmnt_lib.mesh.UVMesh, got {type(template).__name__}")
    if template is None:
        template = make_template(cad_models, config.template_verts)
    if checkpoint is not None and Path(checkpoint).is_file():
        result, opt_state, _ = load_checkpoint(checkpoint, device)
        if result.config != config:
            diff = {k: (v, config.to_dict()[k]) for k, v in result.config.to_dict().items() if config.to_dict()[k] != v}
            raise ValueError(f"checkpoint {checkpoint} was written with a different config (saved, given): {diff}")
        if result.names != names:
            raise ValueError(f"checkpoint {checkpoint} is for models {result.names}, not {names}")
        if not torch.equal(result.mesh.template.faces, template.faces.cpu()) or not torch.allclose(result.mesh.template.verts, template.verts.cpu()):
            raise ValueError(f"checkpoint {checkpoint} was fitted with a different template")
        mesh = result.mesh
        optimizer = FitOptimizer(mesh, config.lr_net, config.lr_latent)
        try:
            optimizer.load_state_dict(opt_state)
        except ValueError as e:
            raise ValueError(f"checkpoint {checkpoint}: bad 'optimizer' entry: {e}") from None
        result.optimizer = optimizer
    else:
        mesh = _build(template, len(cad_models), config, device)
        optimizer = FitOptimizer(mesh, config.lr_net, config.lr_latent)
        result = FitResult(mesh, config, names, 0, {}, optimizer)

    faces = mesh.template.faces.to(device)
    edges = mesh_edges(faces)
    scale2 = float(mesh.scale) ** 2
    radius = float(torch.linalg.vector_norm(mesh.template_verts, dim=1).max())
    n_views = len(config.views)
    targets = _cad_masks(cad_models, config.views, radius, config.image_size, device) if config.w_silhouette > 0 and config.silhouette_batch > 0 else None
    cad = [(m.verts.to(device).float(), m.faces.to(device)) for m in cad_models]

    bar = tqdm(range(result.steps, config.steps), initial=result.steps, total=config.steps, disable=not progress, desc=category or "deform", leave=False)
    for step in bar:
        g = _step_generator(config.seed, step, device)
        optimizer.set_lr_factor(config.lr_decay ** (step / max(config.steps, 1)))
        n_models = len(cad_models)
        if 0 < config.models_per_step < n_models:
            batch = torch.randperm(n_models, generator=g, device=device)[: config.models_per_step].sort().values.tolist()
        else:
            batch = list(range(n_models))
        codes = mesh.latents[batch]
        offsets = mesh.offsets(codes)  # (M, V, 3)
        verts = mesh.template_verts + offsets
        pred = sample_surface(verts, faces, config.num_samples, g)
        tgt = torch.stack([sample_surface(*cad[n], config.num_samples, g) for n in batch])
        terms = {"chamfer": chamfer_distance(pred, tgt).mean() / scale2}
        if targets is not None:
            pick = torch.randperm(len(batch) * n_views, generator=g, device=device)[: config.silhouette_batch].cpu()
            mi, vi = (pick // n_views).tolist(), (pick % n_views).tolist()
            cams = _index_cameras(config.views, vi, radius, config.image_size, device)
            soft = soft_silhouette(verts[mi], faces, cams, config.image_size, config.sigma)
            terms["silhouette"] = soft_iou_loss(soft, targets[[batch[i] for i in mi], vi])
        terms["laplacian"] = laplacian_smoothness(offsets, edges) / scale2
        terms["edge"] = edge_length_loss(verts, mesh.template_verts, edges)
        terms["offset"] = offset_magnitude(offsets) / scale2
        terms["latent"] = (codes**2).sum(-1).mean()
        loss = sum(getattr(config, f"w_{k}") * v for k, v in terms.items())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step(batch)  # codes outside the batch keep their value and Adam state
        losses = {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}
        for k, v in losses.items():
            result.history.setdefault(k, []).append(v)
        result.steps = step + 1
        bar.set_postfix(chamfer=f"{losses['chamfer']:.2e}", sil=f"{losses.get('silhouette', float('nan')):.3f}")
        if checkpoint is not None and (result.steps % config.checkpoint_every == 0 or result.steps == config.steps):
            save_checkpoint(checkpoint, result, optimizer, category)
        if callback is not None:
            callback(result.steps, losses)
    if checkpoint is not None and not Path(checkpoint).is_file():
        save_checkpoint(checkpoint, result, optimizer, category)
    return result


@torch.no_grad()
def evaluate(mesh: DeformableMesh, cad_models: list[CADModel], config: FitConfig, device="cpu") -> dict[str, list[float]]:
    """Template-vs-deformed quality per CAD model (model ``n`` uses its learned code ``n``).

    Chamfer: ``geometry.chamfer_distance`` on ``config.eval_samples`` area-uniform surface
    points per mesh (fixed seed), in squared object units. IoU: hard silhouettes from
    ``config.eval_views`` (held out from the training views) at ``config.eval_image_size``,
    averaged over views.

    Returns:
        ``{"chamfer_template", "chamfer_deformed", "iou_template", "iou_deformed"}``, each a
        list of ``N`` floats.
    """
    if not isinstance(mesh, DeformableMesh):
        raise TypeError(f"mesh must be a DeformableMesh, got {type(mesh).__name__}")
    if not isinstance(config, FitConfig):
        raise TypeError(f"config must be a FitConfig, got {type(config).__name__}")
    model_names(cad_models)
    if len(cad_models) != mesh.num_models:
        raise ValueError(f"mesh has {mesh.num_models} codes but {len(cad_models)} CAD models were given")
    faces = mesh.template.faces.to(device)
    radius = float(torch.linalg.vector_norm(mesh.template_verts, dim=1).max())
    size, nv = config.eval_image_size, len(config.eval_views)
    cams = view_cameras(config.eval_views, radius, size, device)
    # Template and deformed meshes are sampled with the same random numbers (the identity
    # deformation then scores exactly the template's numbers); each CAD model with its own.
    mesh_gen = lambda: torch.Generator(device=device).manual_seed(config.seed + 7919)  # noqa: E731
    tmpl = mesh.template_verts
    tmpl_pts = sample_surface(tmpl, faces, config.eval_samples, mesh_gen())
    tmpl_mask = hard_silhouette(tmpl[None].expand(nv, -1, -1), faces, cams, size)
    out = {"chamfer_template": [], "chamfer_deformed": [], "iou_template": [], "iou_deformed": []}
    for n, m in enumerate(cad_models):
        cv, cf = m.verts.to(device).float(), m.faces.to(device)
        cad_pts = sample_surface(cv, cf, config.eval_samples, torch.Generator(device=device).manual_seed(config.seed + 104729 + n))[None]
        cad_mask = hard_silhouette(cv[None].expand(nv, -1, -1), cf, cams, size)
        dv = mesh.deformed_verts(n)
        def_pts = sample_surface(dv, faces, config.eval_samples, mesh_gen())
        out["chamfer_template"].append(float(chamfer_distance(tmpl_pts[None], cad_pts)[0]))
        out["chamfer_deformed"].append(float(chamfer_distance(def_pts[None], cad_pts)[0]))
        out["iou_template"].append(float(silhouette_iou(tmpl_mask, cad_mask).mean()))
        out["iou_deformed"].append(float(silhouette_iou(hard_silhouette(dv[None].expand(nv, -1, -1), faces, cams, size), cad_mask).mean()))
    return out
