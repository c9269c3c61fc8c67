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
``silhouette.soft_silhouette``. ``fit_latent`` (test time) lives in ``latent.py``.

Checkpoints (``torch.save``, written to a temp file then ``os.replace``) hold the step, the
net, the codes, Adam's state, the config (which includes the seed), the template and the
loss history; ``fit_category(..., checkpoint=path)`` resumes from one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..camera import pose_to_cameras
from ..mesh import UVMesh, cuboid_template, read_off
from .geometry import chamfer_distance, edge_length_loss, laplacian_smoothness, mesh_edges, offset_magnitude, sample_surface
from .net import DeformableMesh, DeformationNet
from .silhouette import hard_silhouette, silhouette_iou, soft_iou_loss, soft_silhouette

__all__ = [
    "CADModel",
    "load_cad_models",
    "make_template",
    "FitConfig",
    "FitResult",
    "view_cameras",
    "fit_category",
    "evaluate",
    "save_checkpoint",
    "load_checkpoint",
]

CHECKPOINT_FORMAT = "dmnt-deform-v1"


@dataclass(frozen=True)
class CADModel:
    """One CAD model: ``verts (V, 3)`` float32, ``faces (F, 3)`` int64, and its ``name`` (e.g. ``"01"``)."""

    name: str
    verts: torch.Tensor
    faces: torch.Tensor


def load_cad_models(data_dir: str | os.PathLike, category: str) -> list[CADModel]:
    """Read ``data_dir/CAD/<category>/*.off`` (sorted by name) with ``mesh.read_off``.

    Raises:
        FileNotFoundError: the folder is missing or holds no ``.off`` file.
    """
    folder = Path(data_dir) / "CAD" / category
    if not folder.is_dir():
        raise FileNotFoundError(f"no CAD folder for category {category!r}: {folder} does not exist")
    paths = sorted(folder.glob("*.off"))
    if not paths:
        raise FileNotFoundError(f"no .off files in {folder}")
    return [CADModel(p.stem, *read_off(p)) for p in paths]


def make_template(cad_models: list[CADModel], num_verts: int = 1000) -> UVMesh:
    """The category template: ``mesh.cuboid_template`` around all models' joint bounding box."""
    _check_models(cad_models)
    return cuboid_template(meshes_verts=[m.verts for m in cad_models], num_verts=num_verts)


def _check_models(cad_models) -> None:
    if not isinstance(cad_models, (list, tuple)) or not cad_models:
        raise ValueError("cad_models must be a non-empty list of CADModel")
    for i, m in enumerate(cad_models):
        if not isinstance(m, CADModel):
            raise TypeError(f"cad_models[{i}] must be a CADModel, got {type(m).__name__}")
        if m.verts.dim() != 2 or m.verts.shape[1] != 3 or m.faces.dim() != 2 or m.faces.shape[1] != 3 or len(m.faces) == 0:
            raise ValueError(f"cad_models[{i}] ({m.name}) needs verts (V, 3) and non-empty faces (F, 3)")


@dataclass(frozen=True)
class FitConfig:
    """Everything that determines a fit (stored in checkpoints; resuming requires equality).

    Views are ``(azimuth, elevation)`` pairs in **degrees** (PASCAL3D+ convention, theta 0).
    The full defaults follow the issue (8 × 256 net); ``FitConfig.quick()`` is the 2-core preset.

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
                    silhouette_batch=0, models_per_step=0, eval_image_size=8, eval_samples=1, checkpoint_every=1)
        for name, low in ints.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"FitConfig.{name} must be an int >= {low}, got {v!r}")
        for name in ("lr_net", "lr_latent", "lr_decay", "sigma"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"FitConfig.{name} must be a positive number, got {v!r}")
        for name in ("w_chamfer", "w_silhouette", "w_laplacian", "w_edge", "w_offset", "w_latent"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"FitConfig.{name} must be a non-negative number, got {v!r}")
        for name in ("views", "eval_views"):
            v = getattr(self, name)
            if not v or any(len(p) != 2 for p in v):
                raise ValueError(f"FitConfig.{name} must be a non-empty sequence of (azimuth, elevation) degrees, got {v!r}")
            object.__setattr__(self, name, tuple((float(a), float(e)) for a, e in v))
        object.__setattr__(self, "skip", tuple(int(s) for s in self.skip))

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
    ``steps`` done, and ``history`` (per-step loss terms, lists of floats)."""

    mesh: DeformableMesh
    config: FitConfig
    names: list[str]
    steps: int
    history: dict[str, list[float]] = field(default_factory=dict)


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


def _optimizer(mesh: DeformableMesh, config: FitConfig) -> torch.optim.Adam:
    return torch.optim.Adam([{"params": mesh.net.parameters(), "lr": config.lr_net}, {"params": [mesh.latents], "lr": config.lr_latent}])


def save_checkpoint(path, result: FitResult, optimizer: torch.optim.Optimizer, category: str = "") -> None:
    """Atomically write a resumable checkpoint of ``result`` (and Adam's state) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        torch.save(payload, tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the checkpoint private
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path, device="cpu") -> tuple[FitResult, dict, str]:
    """Load a checkpoint: ``(FitResult, optimizer_state_dict, category)``.

    Raises:
        FileNotFoundError: ``path`` is missing. ValueError: not a deformation checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable checkpoint ({e})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    config = FitConfig.from_dict(ck["config"])
    template = UVMesh(**ck["template"])
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the caller's RNG untouched
        net = DeformationNet(**ck["net_config"])
    mesh = DeformableMesh(template, len(ck["names"]), net)
    mesh.load_state_dict(ck["state"])
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
        cad_models: the ``N`` CAD models (``load_cad_models``).
        config: ``FitConfig``; ``config.steps`` is the total number of steps.
        template: default ``make_template(cad_models, config.template_verts)``.
        checkpoint: file to resume from (if it exists) and to save to every
            ``config.checkpoint_every`` steps and at the end. Its config and model names must match.
        category: a label stored in the checkpoint and shown on the progress bar.
        callback: ``callback(step_done, losses)`` after each step (after any checkpoint save).
        progress: show a tqdm bar.
        device: torch device.

    Returns:
        ``FitResult``.
    """
    from tqdm.auto import tqdm

    _check_models(cad_models)
    if not isinstance(config, FitConfig):
        raise TypeError(f"config must be a FitConfig, got {type(config).__name__}")
    names = [m.name for m in cad_models]
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
        optimizer = _optimizer(mesh, config)
        optimizer.load_state_dict(opt_state)
    else:
        mesh = _build(template, len(cad_models), config, device)
        optimizer = _optimizer(mesh, config)
        result = FitResult(mesh, config, names, 0, {})

    faces = mesh.template.faces.to(device)
    edges = mesh_edges(faces)
    scale2 = float(mesh.scale) ** 2
    radius = float(torch.linalg.vector_norm(mesh.template_verts, dim=1).max())
    n_views = len(config.views)
    targets = _cad_masks(cad_models, config.views, radius, config.image_size, device) if config.w_silhouette > 0 and config.silhouette_batch > 0 else None
    cad = [(m.verts.to(device).float(), m.faces.to(device)) for m in cad_models]
    base_lrs = [config.lr_net, config.lr_latent]

    bar = tqdm(range(result.steps, config.steps), initial=result.steps, total=config.steps, disable=not progress, desc=category or "deform", leave=False)
    for step in bar:
        g = _step_generator(config.seed, step, device)
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * config.lr_decay ** (step / max(config.steps, 1))
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
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
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
    _check_models(cad_models)
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
