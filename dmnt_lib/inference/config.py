"""Configuration of render-and-compare inference (docs/design.md §9) and its validation."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, replace

__all__ = ["InferenceConfig", "nemo_slow_config", "SCORES", "COMPARES", "CENTERS"]

SCORES = ("normalized", "nemo")
COMPARES = ("image", "uv")
CENTERS = ("known", "search")


def _deg(*values) -> tuple[float, ...]:
    return tuple(math.radians(v) for v in values)


@dataclass(frozen=True)
class InferenceConfig:
    """Every knob of ``render_and_compare``; the defaults are the recommended configuration.

    Score:
        score: the score that compares categories (classification, top-k, ``Prediction.score(s)``):
            ``"normalized"`` (default) ``Σ_{p∈mask} (max(o,b) − b) / |mask|``, or ``"nemo"``, NeMo's
            ``mean_p max(o,b) − mean_p b`` over the whole feature map (o = 0 off the mask). The raw
            score prefers categories with a large rendered area (docs/design.md §9).
        fit_score: the objective that ranks poses within a category (grid) and that Adam maximizes:
            ``"nemo"`` (default) or ``"normalized"``. Measured on oracle features: the normalised score
            lets a smaller (farther) mask slide inside the object when the centre is free (``center=
            "search"``: 5/10 poses within 5° against 10/10 with ``"nemo"``), because it rewards purity
            and not coverage; the raw score rewards explaining every object pixel. Both are reported.
        background_centroids: the background model ``b = max_k <F, β_k>`` of a trained model (``infer``) uses
            this many spherical k-means centroids of its background bank (``infer.model_background``); ``None``:
            the bank's normalized mean (K = 1, NeMo's). Default 128, chosen on the validation set
            (docs/experiments.md E2-E3): with the mean alone 97 % of the clutter pixels were explained better by
            some object texture than by the background, and the score preferred wrong poses and categories.
        compare: ``"image"`` (default) compares rendered texture and features per pixel; ``"uv"`` moves the
            features onto the texture with ``transform.image_to_uv`` and compares per texel.

    Init grid (scored without gradients from cached fragments):
        azimuths: number of azimuths, uniform over ``[0, 2π)``.
        elevations, thetas: radians.
        fills: projected diameter of the mesh's bounding sphere as a fraction of ``min(H, W)``; each
            gives one grid distance ``r·sqrt(1 + (2f/(fill·min(H,W)))²)`` for a mesh of radius ``r``.
        init_texture_size: the texture is average-pooled to this size for the grid scores (a feature
            pixel covers several texels, and the per-category similarity matmul shrinks 4x per halving);
            ``None`` keeps the full texture.
        focal_tolerance: the grid is rendered at the focal length rounded to geometric bins of this relative
            width and its distances rescaled per image (``grid.focal_key``), so per-image focal lengths share
            a cache entry; 0 renders at every exact focal.
        search_radius: with ``center="search"``, the principal point is searched within this many
            feature pixels of the image centre (``None``: anywhere on the feature map).
        hypotheses: poses per category kept from the grid for refinement (greedy non-maximum
            suppression by rotation, ``nms_deg`` apart: keeps the 180° flip as a second hypothesis).

    Refinement (Adam, NeMo's lr 0.05 and betas (0.4, 0.6), exponential decay to ``lr_final_ratio``):
        steps: at most this many steps; ``patience``/``tol``: a hypothesis stops when it has not improved
            its best score by more than ``tol`` in ``patience`` steps (each on its own; the loop ends when
            all have stopped). ``steps=0`` disables refinement. ``search_patience`` replaces ``patience``
            when the principal point is refined too (``center="search"``): the shift converges more slowly,
            and measured on the oracle test (10 poses) 5 steps gave 7/10 within 5°, 10 steps 9/10.
        top_k: categories refined after the init (by init score); the others keep their init score.
        principal_lr: the learning rate of the principal-point shift, in feature pixels (the angles' lr
            in radians is too small a step for a shift).
        refine_principal: also optimize a principal-point shift (feature pixels); ``None`` = only with
            ``center="search"`` (a known centre is kept exact).
        fit_shape: optimize the shape code of deformable meshes (``deform.DeformableMesh``), with an L2
            prior ``shape_prior`` towards the mean code.
        backend: rasterizer backend passed to ``render.rasterize`` where it accepts one.
    """

    score: str = "normalized"
    fit_score: str = "nemo"
    background_centroids: int | None = 128
    compare: str = "image"
    azimuths: int = 12
    elevations: tuple[float, ...] = _deg(-10.0, 5.0, 20.0, 35.0)
    thetas: tuple[float, ...] = _deg(-10.0, 0.0, 10.0)
    fills: tuple[float, ...] = (0.65, 0.8, 0.95)
    init_texture_size: int | None = 64
    focal_tolerance: float = 0.05
    search_radius: float | None = None
    hypotheses: int = 2
    nms_deg: float = 60.0
    top_k: int = 3
    steps: int = 30
    lr: float = 0.05
    betas: tuple[float, float] = (0.4, 0.6)
    lr_final_ratio: float = 0.2
    patience: int = 5
    search_patience: int = 10
    tol: float = 5e-4
    principal_lr: float = 0.5
    refine_principal: bool | None = None
    fit_shape: bool = False
    shape_prior: float = 1.0
    backend: str = "auto"
    seam_threshold: float = 0.2

    def __post_init__(self) -> None:
        def choice(name, options):
            if getattr(self, name) not in options:
                raise ValueError(f"config.{name} must be one of {options}, got {getattr(self, name)!r}")

        def integer(name, lo):
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < lo:
                raise ValueError(f"config.{name} must be an int >= {lo}, got {v!r}")

        def positive(name, allow_zero=False):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
                raise ValueError(f"config.{name} must be a {'non-negative' if allow_zero else 'positive'} finite number, got {v!r}")

        def angles(name):
            v = getattr(self, name)
            if not isinstance(v, (tuple, list)) or not v or not all(isinstance(a, numbers.Real) and math.isfinite(a) for a in v):
                raise ValueError(f"config.{name} must be a non-empty tuple of finite numbers (radians), got {v!r}")
            object.__setattr__(self, name, tuple(float(a) for a in v))

        choice("score", SCORES)
        choice("fit_score", SCORES)
        choice("compare", COMPARES)
        if self.background_centroids is not None:
            integer("background_centroids", 1)
        integer("azimuths", 1)
        angles("elevations")
        angles("thetas")
        angles("fills")
        if not all(0 < f < 10 for f in self.fills):
            raise ValueError(f"config.fills must lie in (0, 10), got {self.fills}")
        if any(abs(e) >= math.pi / 2 for e in self.elevations):
            raise ValueError(f"config.elevations must lie in (-π/2, π/2), got {self.elevations}")
        if self.init_texture_size is not None:
            integer("init_texture_size", 2)
        positive("focal_tolerance", allow_zero=True)
        if self.search_radius is not None:
            positive("search_radius", allow_zero=True)
        integer("hypotheses", 1)
        positive("nms_deg", allow_zero=True)
        integer("top_k", 1)
        integer("steps", 0)
        positive("lr")
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise ValueError(f"config.betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        positive("lr_final_ratio")
        integer("patience", 1)
        integer("search_patience", 1)
        positive("tol", allow_zero=True)
        positive("principal_lr")
        if self.refine_principal not in (None, True, False):
            raise ValueError(f"config.refine_principal must be None, True or False, got {self.refine_principal!r}")
        if not isinstance(self.fit_shape, bool):
            raise ValueError(f"config.fit_shape must be a bool, got {self.fit_shape!r}")
        positive("shape_prior", allow_zero=True)
        if not isinstance(self.backend, str):
            raise ValueError(f"config.backend must be a string, got {self.backend!r}")
        positive("seam_threshold")

    def replace(self, **changes) -> "InferenceConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InferenceConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown inference config fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @property
    def num_grid_poses(self) -> int:
        return self.azimuths * len(self.elevations) * len(self.thetas) * len(self.fills)


def nemo_slow_config(**changes) -> InferenceConfig:
    """NeMo's schedule for the side-by-side benchmark: 300 steps, all categories refined, full texture,
    PyTorch3D rasterizer, no early stop."""
    base = dict(steps=300, top_k=12, patience=10**9, search_patience=10**9, init_texture_size=None, backend="pytorch3d")
    base.update(changes)
    return InferenceConfig(**base)

