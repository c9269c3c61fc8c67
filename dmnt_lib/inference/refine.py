"""Adam refinement of pose hypotheses, batched over hypotheses, images and categories (docs/design.md §9).

Each hypothesis ``i`` (an image, a category, an init pose) has parameters azimuth, elevation, theta,
``log(distance)`` (log: the step is then relative to the object's size), optionally a principal-point
shift in feature pixels and a shape code. All of them go to one Adam (NeMo's lr 0.05, betas (0.4, 0.6))
with an exponential learning-rate decay to ``lr_final_ratio`` of the start over ``steps``; Adam is
per-element, so one optimizer over all categories is exactly one optimizer per hypothesis. The loss is
``−Σ_i objective_i`` (``config.fit_score``; + the shape prior); every step renders each category's hypotheses in one rasterizer
call. The best-scoring parameters seen (step 0 = the init pose included) are returned. Early stopping is
**per hypothesis**: a hypothesis whose best score has not improved by more than ``tol`` in ``patience``
steps stops (its kept parameters no longer change), and the loop ends when every hypothesis has stopped.
So a hypothesis's result depends only on its own trajectory: not on which other images share the batch,
nor on the extra hypotheses of a category added with ``include`` (the ground-truth category evaluation
refines for the pose metrics), which a loop-wide stopping rule would let keep every other category's
refinement running (and so change the classification).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..camera import pose_to_cameras
from ..deform import DeformableMesh
from .raster import fragments
from .score import SCORE_KINDS, combine, image_terms, uv_terms

__all__ = ["Hypotheses", "RefineResult", "refine"]


@dataclass
class Hypotheses:
    """Hypotheses of one category: ``image (P,)`` int64 image index, ``azimuth, elevation, theta, distance (P,)``,
    ``principal (P, 2)`` feature pixels ``(x, y)``, ``focal (P,)`` feature pixels."""

    image: torch.Tensor
    azimuth: torch.Tensor
    elevation: torch.Tensor
    theta: torch.Tensor
    distance: torch.Tensor
    principal: torch.Tensor
    focal: torch.Tensor


@dataclass
class RefineResult:
    """Per category, each ``(P,)`` unless noted: the kept (best-objective) ``azimuth, elevation, theta, distance``,
    ``principal (P, 2)`` feature pixels, ``code (P, Z)`` or None; ``objective`` its fit score (``config.fit_score``),
    ``init_objective`` at step 0 (the init pose), ``final_objective`` at the last step (Adam's own end point,
    not the best); ``scores`` kind → ``(P,)`` both scores at the kept pose, ``init_scores`` at the init pose; ``trajectory`` per-step dicts of
    ``(P,)`` tensors when recorded; ``steps`` run."""

    azimuth: torch.Tensor
    elevation: torch.Tensor
    theta: torch.Tensor
    distance: torch.Tensor
    principal: torch.Tensor
    code: torch.Tensor | None
    objective: torch.Tensor
    init_objective: torch.Tensor
    final_objective: torch.Tensor
    scores: dict
    init_scores: dict
    trajectory: list
    steps: int


@contextlib.contextmanager
def _frozen(module):
    """Temporarily stop gradients to a module's parameters (the shape net is not trained here)."""
    if module is None:
        yield
        return
    flags = [p.requires_grad for p in module.parameters()]
    try:
        for p in module.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


def _mesh_parts(mesh, fit_shape: bool):
    """``(template UVMesh, deformable or None, mean code or None)`` for a ``UVMesh`` or ``DeformableMesh``."""
    if isinstance(mesh, DeformableMesh):
        code = mesh.mean_code()
        if fit_shape:
            return mesh.template, mesh, code
        with torch.no_grad():
            return mesh.template.with_verts(mesh.deformed_verts(code).detach()), None, None
    return mesh, None, None


def evaluate_hypotheses(features, bgmap, texture, background, mesh, deformable, params, hw, config):
    """``(o, b, mask)`` terms (differentiable; see ``score.combine``) and the fragments of hypotheses ``params``
    (dict of tensors) of one category."""
    cams = pose_to_cameras(params["azimuth"], params["elevation"], params["theta"], params["logd"].exp(), hw,
                           focal=params["focal"], principal=params["principal"] + params["shift"])
    verts = deformable.deformed_verts(params["code"]) if deformable is not None else None
    fr = fragments(mesh, cams, hw, verts=verts, backend=config.backend)
    feats = features[params["image"]]
    if config.compare == "uv":
        return uv_terms(feats, texture, background, fr.uv, fr.mask, config.seam_threshold, fr.chart), fr
    return image_terms(feats, bgmap[params["image"]], texture, fr.uv, fr.mask), fr


def refine(features, bgmap, background, textures: dict, meshes: dict, hyps: dict, hw, config,
           record: bool = False) -> dict:
    """Refine ``hyps`` (category → ``Hypotheses``) against ``features (B,D,h,w)``; returns category → ``RefineResult``.

    ``bgmap (B,h,w)``, ``background (K,D)``, ``textures`` category → ``(D,S,S)``, ``meshes`` category →
    ``UVMesh``/``DeformableMesh``; ``hw = (h, w)``. ``record`` keeps every step's poses and scores.
    """
    refine_pp = config.refine_principal
    state = {}
    leaves, shift_leaves = [], []
    for cat, hy in hyps.items():
        mesh, deformable, code0 = _mesh_parts(meshes[cat], config.fit_shape)
        p = {
            "image": hy.image,
            "focal": hy.focal.float(),
            "principal": hy.principal.float(),
            "azimuth": hy.azimuth.float().clone().requires_grad_(True),
            "elevation": hy.elevation.float().clone().requires_grad_(True),
            "theta": hy.theta.float().clone().requires_grad_(True),
            "logd": hy.distance.double().log().float().clone().requires_grad_(True),
            "shift": torch.zeros(len(hy.image), 2).requires_grad_(bool(refine_pp)),
            "code": None,
        }
        trainable = ["azimuth", "elevation", "theta", "logd"] + (["shift"] if refine_pp else [])
        if deformable is not None:
            p["code"] = code0[None].expand(len(hy.image), -1).clone().requires_grad_(True)
            trainable.append("code")
        leaves += [p[k] for k in trainable if k != "shift"]
        if "shift" in trainable:
            shift_leaves.append(p["shift"])
        state[cat] = {"p": p, "mesh": mesh, "deformable": deformable, "code0": code0, "trainable": trainable,
                      "best": None, "best_score": None, "init": None, "last": None, "traj": [],
                      "since": torch.zeros(len(hy.image), dtype=torch.int64),  # steps since the last improvement
                      "active": torch.ones(len(hy.image), dtype=torch.bool)}
    steps = config.steps
    groups = [{"params": leaves}] + ([{"params": shift_leaves, "lr": config.principal_lr}] if shift_leaves else [])
    opt = torch.optim.Adam(groups, lr=config.lr, betas=config.betas) if steps > 0 else None
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=config.lr_final_ratio ** (1.0 / max(steps, 1))) if opt else None
    done = 0
    for step in range(steps + 1):
        last = step == steps
        for cat, st in state.items():
            if not bool(st["active"].any()):
                continue  # every hypothesis of this category stopped: no grad, so Adam leaves it alone
            p = st["p"]
            with _frozen(st["deformable"]), torch.set_grad_enabled(not last):
                terms, _ = evaluate_hypotheses(features, bgmap, textures[cat], background, st["mesh"], st["deformable"],
                                               p, hw, config)
                score = combine(*terms, config.fit_score)
                loss = -score.sum()
                if st["deformable"] is not None and config.shape_prior > 0:
                    loss = loss + config.shape_prior * ((p["code"] - st["code0"]) ** 2).sum()
                if not last:
                    loss.backward()
            s = score.detach()
            snap = {k: p[k].detach().clone() for k in ("azimuth", "elevation", "theta", "logd", "shift")}
            snap["code"] = p["code"].detach().clone() if p["code"] is not None else None
            if st["best"] is None:
                st["init"] = s.clone()
                st["init_scores"] = {k: combine(*(t.detach() for t in terms), k) for k in SCORE_KINDS}
                st["best"], st["best_score"] = snap, s.clone()
            else:
                active = st["active"]
                better = (s > st["best_score"]) & active
                improved = (s > st["best_score"] + config.tol) & active
                for k, v in snap.items():
                    if v is not None:
                        m = better.reshape(-1, *([1] * (v.dim() - 1)))
                        st["best"][k] = torch.where(m, v, st["best"][k])
                st["best_score"] = torch.where(better, s, st["best_score"])
                st["since"] = torch.where(improved, 0, st["since"] + 1)
                st["active"] = active & (st["since"] < config.patience)
            st["last"] = torch.where(st["active"], s, st["last"]) if st["last"] is not None else s
            if record:
                st["traj"].append({**{k: v.clone() for k, v in snap.items() if v is not None}, "score": s.clone(),
                                   "principal": (p["principal"] + snap["shift"]).clone()})
        done = step
        if last or not any(bool(st["active"].any()) for st in state.values()):
            break  # the parameters just scored are the last ones: nothing is left unscored
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
    out = {}
    for cat, st in state.items():
        b = st["best"]
        p = dict(st["p"], **{k: v for k, v in b.items()})
        with torch.no_grad():  # both scores at the kept pose
            terms, _ = evaluate_hypotheses(features, bgmap, textures[cat], background, st["mesh"], st["deformable"], p, hw, config)
        scores = {k: combine(*terms, k) for k in SCORE_KINDS}
        out[cat] = RefineResult(
            azimuth=b["azimuth"], elevation=b["elevation"], theta=b["theta"], distance=b["logd"].exp(),
            principal=st["p"]["principal"] + b["shift"], code=b["code"], objective=st["best_score"],
            init_objective=st["init"], final_objective=st["last"], scores=scores, init_scores=st["init_scores"], trajectory=st["traj"], steps=done)
    return out
