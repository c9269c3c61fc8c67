"""``render_and_compare``: class, pose and amodal/visible masks from a feature map (docs/design.md §9).

Pipeline per batch: (1) background map ``b``; (2) per category, the init grid's fragments (cached, see
``grid.py``), the centre (known, or searched as a 2D shift by correlation), grid scores without
gradients; (3) the ``top_k`` categories by init score (plus any ``include``\\ d ones) get ``hypotheses``
poses each (NMS over rotation), refined by Adam in one batch (``refine.py``); (4) category = argmax of the
refined class scores (``config.score``; poses are fitted with ``config.fit_score``); (5) the fitted mesh
rendered at image resolution gives the amodal mask and, with ``o > b`` there, the visible mask.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..camera import pose_to_cameras
from ..deform import DeformableMesh
from ..mesh import UVMesh
from .config import CENTERS, InferenceConfig
from .grid import (GRID_CACHE, GridCache, focal_key, grid_scores, known_offsets, offsets_to_principal, pool_texture,
                   search_offsets, select_hypotheses)
from .raster import fragments
from .refine import Hypotheses, _mesh_parts, refine
from .score import background_map, combine, object_map, uv_terms

__all__ = ["Prediction", "render_and_compare", "validate_inputs"]


@dataclass
class Prediction:
    """One image's result. Angles in radians, ``principal`` ``(x, y)`` image pixels.

    Attributes:
        category, azimuth, elevation, theta, distance, principal: the best refined hypothesis.
        score: its score; ``scores``: category → score (refined for the refined categories, else the
            init grid score); ``refined``: the categories that were refined; ``init_scores``: category →
            its best grid score (``config.score`` at its grid hypotheses): the ``top_k`` of them are refined.
        poses: category → ``{"azimuth", "elevation", "theta", "distance", "principal", "score" (config.score),
            "init_score", "objective" (config.fit_score), "refined"}`` for the best-fitting hypothesis of each
            category; refined ones add ``"scores"`` (both kinds, at the kept pose), ``"init_objective"`` (at the
            init pose) and ``"final_objective"`` (Adam's last step), and ``"code"`` with ``fit_shape``.
        amodal_mask, visible_mask: ``(H, W)`` bool CPU tensors.
        time_s: seconds for this image (batch time / B, plus the backbone when ``infer`` ran it);
            ``timings``: the same split into ``init``, ``refine``, ``masks`` (and ``backbone``).
    """

    category: str
    azimuth: float
    elevation: float
    theta: float
    distance: float
    principal: tuple[float, float]
    score: float
    scores: dict
    amodal_mask: torch.Tensor
    visible_mask: torch.Tensor
    time_s: float
    poses: dict = field(default_factory=dict)
    refined: tuple = ()
    init_scores: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    trajectory: list | None = None


def _as_focal(focal, b) -> torch.Tensor:
    f = torch.as_tensor(focal, dtype=torch.float64).reshape(-1)
    if f.numel() not in (1, b):
        raise ValueError(f"focal must be a scalar or (B,) = ({b},), got shape {tuple(f.shape)}")
    if not torch.isfinite(f).all() or not (f > 0).all():
        raise ValueError("focal must be positive and finite (image pixels)")
    return f.expand(b).clone()


def validate_inputs(features, textures, meshes, background, focal, principal, image_size, stride, center, config):
    """Check every argument of ``render_and_compare``; returns normalized ``(background (K,D), focal (B,),
    principal (B,2) or None, (H, W), config)``."""
    if not torch.is_tensor(features) or features.dim() != 4:
        raise ValueError(f"features must be a (B, D, h, w) tensor, got {getattr(features, 'shape', type(features))}")
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point, got {features.dtype}")
    b, d, h, w = features.shape
    if config is None:
        config = InferenceConfig()
    if not isinstance(config, InferenceConfig):
        raise TypeError(f"config must be an InferenceConfig, got {type(config).__name__}")
    if center not in CENTERS:
        raise ValueError(f"center must be one of {CENTERS}, got {center!r}")
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    try:
        H, W = (int(x) for x in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (H, W), got {image_size!r}") from None
    if H != h * stride or W != w * stride:
        raise ValueError(f"features are {h}x{w} but image_size {(H, W)} / stride {stride} = "
                         f"{H / stride:g}x{W / stride:g}: h must equal H/stride and w W/stride")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features contains NaN or inf")
    norms = features.norm(dim=1)
    err = float((norms - 1).abs().max()) if norms.numel() else 0.0
    if err > 1e-3:
        raise ValueError(f"features must be unit length per pixel (max |‖F‖ − 1| = {err:.3g}); normalize them along dim 1")
    if not isinstance(textures, dict) or not textures:
        raise TypeError("textures must be a non-empty dict category -> (D, S, S) tensor")
    if not isinstance(meshes, dict):
        raise TypeError("meshes must be a dict category -> UVMesh or DeformableMesh")
    missing = sorted(set(textures) - set(meshes))
    extra = sorted(set(meshes) - set(textures))
    if missing or extra:
        raise ValueError(f"textures and meshes must have the same categories: no mesh for {missing}, no texture for {extra}")
    for cat, t in textures.items():
        if not torch.is_tensor(t) or t.dim() != 3:
            raise ValueError(f"textures[{cat!r}] must be a (D, S, S) tensor, got {getattr(t, 'shape', type(t))}")
        if t.shape[0] != d:
            raise ValueError(f"textures[{cat!r}] has feature dim {t.shape[0]} but features have D = {d}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"textures[{cat!r}] contains NaN or inf")
        m = meshes[cat]
        if not isinstance(m, (UVMesh, DeformableMesh)):
            raise TypeError(f"meshes[{cat!r}] must be a UVMesh or DeformableMesh, got {type(m).__name__}")
    if config.fit_shape and not any(isinstance(m, DeformableMesh) for m in meshes.values()):
        raise ValueError("config.fit_shape needs deformable meshes (deform.DeformableMesh) in meshes")
    bg = torch.as_tensor(background)
    if bg.dim() == 1:
        bg = bg[None]
    if bg.dim() != 2 or bg.shape[1] != d:
        raise ValueError(f"background must be (D,) or (K, D) with D = {d}, got {tuple(torch.as_tensor(background).shape)}")
    if not bool(torch.isfinite(bg).all()) or not bool((bg.norm(dim=1) > 0).all()):
        raise ValueError("background must be finite and non-zero")
    bg = F.normalize(bg.to(features.dtype), dim=1)
    f = _as_focal(focal, b)
    pp = None
    if center == "known":
        if principal is None:
            raise ValueError("principal (B, 2) is required with center='known' (or use center='search')")
        pp = torch.as_tensor(principal, dtype=torch.float64)
        if pp.dim() == 1:
            pp = pp[None]
        if pp.shape[-1] != 2 or pp.shape[0] not in (1, b) or pp.dim() != 2:
            raise ValueError(f"principal must be (B, 2) = ({b}, 2) image pixels (x, y), got {tuple(pp.shape)}")
        if not torch.isfinite(pp).all():
            raise ValueError("principal contains NaN or inf")
        pp = pp.expand(b, 2).clone()
    return bg, f, pp, (H, W), config


def render_and_compare(features: torch.Tensor, textures: dict, meshes: dict, background, focal, principal,
                       image_size, stride: int, center: str = "known", config: InferenceConfig | None = None,
                       include=None, cache: GridCache | None = None, record: bool = False) -> list[Prediction]:
    """Render-and-compare inference on explicit tensors (docs/design.md §9).

    Args:
        features: ``(B, D, h, w)`` unit features (``h = H/stride``, ``w = W/stride``).
        textures: category → ``(D, S, S)`` neural texture (unit texels).
        meshes: category → ``UVMesh``, or ``deform.DeformableMesh`` (its mean-code shape; its code is
            optimized when ``config.fit_shape``).
        background: ``(D,)`` or ``(K, D)`` background features (``b = max_k <F, β_k>``).
        focal: focal length in image pixels, scalar or ``(B,)``.
        principal: ``(B, 2)`` principal points ``(x, y)`` in image pixels; ignored with ``center="search"``.
        image_size: ``(H, W)`` of the images.
        stride: feature stride ``s``.
        center: ``"known"`` or ``"search"`` (a 2D shift of the rendered maps by correlation, then refined).
        config: ``InferenceConfig`` (default: the recommended one).
        include: optional per-image category (or list) refined in addition to the ``top_k``, for its pose in
            ``Prediction.poses`` (e.g. the ground-truth category, for the PASCAL3D+ pose protocol); it never
            enters the classification, which is the argmax over the ``top_k`` categories only.
        cache: the grid-fragment cache (default: the module-wide ``GRID_CACHE``); ``GridCache(0)``-like
            fresh caches give the uncached path.
        record: keep the refinement trajectory in ``Prediction.trajectory``.

    Returns:
        ``B`` ``Prediction``\\ s.
    """
    bg, focal_px, pp, (H, W), config = validate_inputs(features, textures, meshes, background, focal, principal,
                                                       image_size, stride, center, config)
    cache = GRID_CACHE if cache is None else cache
    b, d, h, w = features.shape
    if include is not None and len(include) != b:
        raise ValueError(f"include must have one entry (a category, a list, or None) per image, got {len(include)} for {b}")
    cats = list(textures)
    for inc in include or []:
        for c in ([] if inc is None else [inc] if isinstance(inc, str) else inc):
            if c not in textures:
                raise ValueError(f"include names category {c!r}, which has no texture")
    features = features.detach()
    with torch.no_grad():
        bgmap = background_map(features, bg)
    focal_f = focal_px / stride
    pp_f = pp / stride if pp is not None else None

    # ---- init: grid scores per category, from cached fragments ----
    t0 = time.perf_counter()
    kinds = tuple(dict.fromkeys((config.fit_score, config.score)))
    init = {}  # cat -> {"fit": (B,G), "cls": (B,G), "offsets": (B,G,2), "entries": [per image]}
    with torch.no_grad():
        for cat in cats:
            mesh0, _, _ = _mesh_parts(meshes[cat], False)
            tex = pool_texture(textures[cat].to(features.dtype), config.init_texture_size)
            sc = {k: torch.empty(b, config.num_grid_poses, dtype=features.dtype) for k in kinds}
            offs = torch.empty(b, config.num_grid_poses, 2, dtype=torch.int64)
            entries = []
            for i in range(b):  # images may differ in focal length: one cache entry per focal
                entry = cache.get(mesh0, config, focal_key(float(focal_f[i]), config.focal_tolerance), (h, w))
                entries.append(entry)
                fi = features[i: i + 1]
                if center == "known":
                    o = known_offsets(pp_f[i: i + 1], entry.canvas)[:, None].expand(1, entry.num_poses, 2)
                else:
                    o = search_offsets(fi, entry, tex, config.search_radius)
                if config.compare == "uv":
                    got = _grid_scores_uv(fi, entry, tex, bg, o[0], (h, w), config, kinds)
                else:
                    got = {k: v[0] for k, v in grid_scores(fi, bgmap[i: i + 1], entry, tex, o, kinds).items()}
                for k in kinds:
                    sc[k][i] = got[k]
                offs[i] = o[0]
            init[cat] = {"fit": sc[config.fit_score], "cls": sc[config.score], "offsets": offs, "entries": entries}

    # ---- choose hypotheses (by the fit score) and categories (by the class score at those hypotheses) ----
    refine_pp = config.refine_principal if config.refine_principal is not None else center == "search"
    cfg = config.replace(refine_principal=refine_pp, patience=config.search_patience if refine_pp else config.patience)
    picks = {cat: [select_hypotheses(init[cat]["fit"][i], init[cat]["entries"][i].geodesic, config.hypotheses,
                                     math.radians(config.nms_deg)) for i in range(b)] for cat in cats}
    best_init = torch.tensor([[float(init[c]["cls"][i, picks[c][i]].max()) for c in cats] for i in range(b)])  # (B, C)
    chosen, topk = [], []  # refined categories; the top-k among them (only these compete for the class)
    hyps: dict[str, dict[str, list]] = {}
    for i in range(b):
        order = torch.argsort(best_init[i], descending=True).tolist()
        sel = [cats[j] for j in order[: config.top_k]]
        topk.append(list(sel))
        inc = [] if include is None or include[i] is None else [include[i]] if isinstance(include[i], str) else list(include[i])
        sel += [c for c in inc if c not in sel]
        chosen.append(sel)
        for cat in sel:
            it, entry = init[cat], init[cat]["entries"][i]
            lst = hyps.setdefault(cat, {k: [] for k in ("image", "azimuth", "elevation", "theta", "distance", "principal", "focal")})
            scale = float(focal_f[i]) / entry.focal  # the grid's distances at this image's focal (grid.focal_key)
            for g in picks[cat][i]:
                lst["image"].append(i)
                for k in ("azimuth", "elevation", "theta"):
                    lst[k].append(float(entry.poses[k][g]))
                lst["distance"].append(float(entry.poses["distance"][g]) * scale)
                if center == "known":
                    lst["principal"].append(pp_f[i].tolist())
                else:
                    lst["principal"].append(offsets_to_principal(it["offsets"][i, g], entry.canvas).tolist())
                lst["focal"].append(float(focal_f[i]))
    hyp_objs = {cat: Hypotheses(image=torch.tensor(v["image"]), azimuth=torch.tensor(v["azimuth"]),
                                elevation=torch.tensor(v["elevation"]), theta=torch.tensor(v["theta"]),
                                distance=torch.tensor(v["distance"]), principal=torch.tensor(v["principal"]),
                                focal=torch.tensor(v["focal"])) for cat, v in hyps.items()}
    t_init = time.perf_counter() - t0

    # ---- refine ----
    t0 = time.perf_counter()
    feats = features.float()
    res = refine(feats, bgmap.float(), bg.float(), {c: textures[c].float() for c in hyp_objs}, meshes, hyp_objs,
                 (h, w), cfg, record=record)
    t_refine = time.perf_counter() - t0

    # ---- per image: best hypothesis per category and the prediction ----
    t0 = time.perf_counter()
    per_image = []  # (poses, scores, refined, best)
    for i in range(b):
        poses, scores = {}, {}
        for cat in cats:
            if cat in chosen[i]:
                r, hy = res[cat], hyp_objs[cat]
                rows = (hy.image == i).nonzero()[:, 0]
                j = int(rows[r.objective[rows].argmax()])  # the category's pose: best fit
                poses[cat] = _refined_pose(r, j, stride, config)
                poses[cat].update(init_score=float(r.init_scores[config.score][j]), init_objective=float(r.init_objective[j]),
                                  final_objective=float(r.final_objective[j]), _row=j)
            else:
                g = picks[cat][i][0]
                entry = init[cat]["entries"][i]
                prin = pp_f[i] if center == "known" else offsets_to_principal(init[cat]["offsets"][i, g], entry.canvas)
                poses[cat] = {**{k: float(entry.poses[k][g]) for k in ("azimuth", "elevation", "theta")},
                              "distance": float(entry.poses["distance"][g]) * float(focal_f[i]) / entry.focal,
                              "principal": tuple(float(x) * stride for x in prin), "score": float(init[cat]["cls"][i, g]),
                              "init_score": float(init[cat]["cls"][i, g]), "objective": float(init[cat]["fit"][i, g]),
                              "refined": False, "code": None}
            scores[cat] = poses[cat]["score"]
        refined = [c for c in cats if c in chosen[i]]
        # `include`d categories never enter the classification
        best = max(topk[i], key=lambda c: scores[c])
        per_image.append((poses, scores, refined, best))

    # ---- masks ----
    preds = []
    for i, (poses, scores, refined, best) in enumerate(per_image):
        amodal, visible = _masks(features[i], bg, textures[best], meshes[best], poses[best], float(focal_px[i]),
                                 (H, W), stride, config)
        traj = None
        if record:
            r = res[best]
            j = poses[best]["_row"]
            traj = [{k: (v[j].clone() if torch.is_tensor(v) else v) for k, v in step.items()} for step in r.trajectory]
        for p in poses.values():
            p.pop("_row", None)
        pb = poses[best]
        preds.append(Prediction(category=best, azimuth=pb["azimuth"], elevation=pb["elevation"], theta=pb["theta"],
                                distance=pb["distance"], principal=pb["principal"], score=pb["score"], scores=scores,
                                amodal_mask=amodal, visible_mask=visible, time_s=0.0, poses=poses,
                                refined=tuple(refined), init_scores={c: float(best_init[i, j]) for j, c in enumerate(cats)},
                                trajectory=traj))
    t_masks = time.perf_counter() - t0
    per = {"init": t_init / b, "refine": t_refine / b, "masks": t_masks / b}
    for p in preds:
        p.timings = dict(per)
        p.time_s = sum(per.values())
    return preds


def _grid_scores_uv(fi, entry, tex, bg, offsets, hw, config, kinds, chunk: int = 64) -> dict:
    """UV-mode grid scores kind → ``(G,)`` for one image ``fi (1,D,h,w)`` at ``offsets (G, 2)``: dense uv crops of the
    cached canvas fragments, then ``uv_score`` against the pooled texture."""
    h, w = hw
    hc, wc = entry.canvas
    out = {k: [] for k in kinds}
    for s in range(0, entry.num_poses, chunk):
        sl = slice(s, s + chunk)
        pix, valid, uvs = entry.pix[sl], entry.valid[sl], entry.uv[sl]
        n = pix.shape[0]
        fa = pix // wc - offsets[sl, 0, None]
        fb = pix % wc - offsets[sl, 1, None]
        inside = valid & (fa >= 0) & (fa < h) & (fb >= 0) & (fb < w)
        flat = (fa.clamp(0, h - 1) * w + fb.clamp(0, w - 1)).where(inside, torch.full_like(fa, h * w))
        uv = torch.zeros(n, h * w + 1, 2, dtype=fi.dtype)
        mask = torch.zeros(n, h * w + 1, dtype=torch.bool)
        uv.scatter_(1, flat[..., None].expand(-1, -1, 2), uvs.to(fi.dtype))
        mask.scatter_(1, flat, inside)
        uv, mask = uv[:, :-1].reshape(n, h, w, 2), mask[:, :-1].reshape(n, h, w)
        chart = None
        if entry.chart is not None:
            chart = torch.full((n, h * w + 1), -1, dtype=torch.int64)
            chart.scatter_(1, flat, entry.chart[sl].where(inside, torch.full_like(flat, -1)))
            chart = chart[:, :-1].reshape(n, h, w)
        terms = uv_terms(fi.expand(n, -1, -1, -1), tex, bg, uv, mask, config.seam_threshold, chart)
        for k in kinds:
            out[k].append(combine(*terms, k))
    return {k: torch.cat(v) for k, v in out.items()}


def _refined_pose(r, j: int, stride: int, config) -> dict:
    """The pose dict of row ``j`` of a ``RefineResult`` (principal point in image pixels)."""
    return {"azimuth": float(r.azimuth[j]), "elevation": float(r.elevation[j]), "theta": float(r.theta[j]),
            "distance": float(r.distance[j]), "principal": tuple(float(x) * stride for x in r.principal[j]),
            "score": float(r.scores[config.score][j]), "scores": {k: float(v[j]) for k, v in r.scores.items()},
            "objective": float(r.objective[j]), "refined": True, "code": r.code[j] if r.code is not None else None}


def _masks(feat, bg, texture, mesh, pose, focal, hw, stride, config):
    """Amodal mask (the fitted mesh's silhouette at image resolution) and visible mask (amodal ∧ o > b),
    with ``o``/``b`` from the features upsampled (nearest) to the image."""
    H, W = hw
    m0, deformable, _ = _mesh_parts(mesh, False)
    verts = None
    if isinstance(mesh, DeformableMesh) and pose.get("code") is not None:
        with torch.no_grad():
            verts = mesh.deformed_verts(pose["code"].detach())
        m0 = mesh.template
    with torch.no_grad():
        cams = pose_to_cameras(pose["azimuth"], pose["elevation"], pose["theta"], pose["distance"], (H, W),
                               focal=focal, principal=torch.tensor(pose["principal"], dtype=torch.float32))
        fr = fragments(m0, cams, (H, W), verts=verts, backend=config.backend)
        up = feat.float().repeat_interleave(stride, 1).repeat_interleave(stride, 2)[None]
        o = object_map(up, texture.float(), fr.uv, fr.mask)[0]
        b = background_map(up, bg.float())[0]
        amodal = fr.mask[0].cpu()
        visible = (amodal & (o > b).cpu())
    return amodal, visible
