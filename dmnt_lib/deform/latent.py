"""Test-time shape fitting: a latent code from silhouettes, the network frozen, the pose given."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .net import DeformableMesh
from .silhouette import hard_silhouette, silhouette_iou, soft_iou_loss, soft_silhouette

__all__ = ["LatentFit", "fit_latent"]


@dataclass
class LatentFit:
    """Output of ``fit_latent``: the fitted code ``z (D,)``, the starting code ``init (D,)``,
    hard-silhouette IoU against the target for both (mean over views), and the loss history."""

    z: torch.Tensor
    init: torch.Tensor
    iou_init: float
    iou_fit: float
    history: list[float]


def fit_latent(
    mesh: DeformableMesh,
    cameras,
    target_mask: torch.Tensor,
    *,
    steps: int = 100,
    lr: float = 0.05,
    init: torch.Tensor | None = None,
    prior_weight: float = 1e-3,
    sigma: float = 0.1,
    progress: bool = False,
) -> LatentFit:
    """Fit one shape code to silhouettes with the net frozen and the poses given.

    Minimises ``(1 − softIoU(render(z), target)) + prior_weight·‖z − z̄‖²`` with Adam, ``z̄`` the
    mean learned code (the starting point unless ``init`` is given). All ``B`` views show the
    same object, so one code is shared by them.

    Args:
        mesh: a fitted ``DeformableMesh`` (its parameters are not modified).
        cameras: PyTorch3D cameras, batch ``B``, the known poses.
        target_mask: ``(B, H, W)`` bool silhouettes (amodal masks).
        steps, lr: Adam iterations (int ``>= 0``) and learning rate (``> 0``) for ``z``.
        init: optional ``(D,)`` float, finite starting code (cast to the mesh's dtype).
        prior_weight: weight ``>= 0`` of the pull towards the mean code.
        sigma: soft-silhouette softness ``> 0`` in squared pixels (``soft_silhouette``).

    Returns:
        ``LatentFit``.

    Raises:
        TypeError / ValueError naming the argument, before any optimisation step.
    """
    from tqdm.auto import tqdm

    if not isinstance(mesh, DeformableMesh):
        raise TypeError(f"mesh must be a DeformableMesh, got {type(mesh).__name__}")
    if not isinstance(target_mask, torch.Tensor) or target_mask.dim() != 3:
        raise ValueError(f"target_mask must be a (B, H, W) tensor, got {getattr(target_mask, 'shape', type(target_mask))}")
    if target_mask.dtype != torch.bool:
        raise TypeError(f"target_mask must be bool, got {target_mask.dtype}")
    if not hasattr(cameras, "get_world_to_view_transform") or len(cameras) != target_mask.shape[0]:
        raise ValueError(f"cameras must be PyTorch3D cameras with batch {target_mask.shape[0]} (one per target mask)")
    if not target_mask.flatten(1).any(1).all():
        raise ValueError("target_mask: every view needs at least one object pixel")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    for name, v, positive in (("lr", lr, True), ("prior_weight", prior_weight, False), ("sigma", sigma, True)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(v).__name__}")
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {v!r}")
    d = mesh.net.latent_dim
    mean = mesh.mean_code()
    if init is not None:
        if not isinstance(init, torch.Tensor):
            raise TypeError(f"init must be a (D,) torch.Tensor or None, got {type(init).__name__}")
        if not init.is_floating_point():
            raise TypeError(f"init must be floating point, got {init.dtype}")
        if tuple(init.shape) != (d,):
            raise ValueError(f"init must have shape ({d},), got {tuple(init.shape)}")
        if not torch.isfinite(init).all():
            raise ValueError("init contains NaN or inf")
    start = mean if init is None else init.detach().to(mean)
    size = tuple(target_mask.shape[1:])
    b = target_mask.shape[0]
    faces = mesh.template.faces.to(mesh.template_verts.device)
    target_mask = target_mask.to(mesh.template_verts.device)

    def hard_iou(code):
        with torch.no_grad():
            v = mesh.deformed_verts(code)[None].expand(b, -1, -1)
            return float(silhouette_iou(hard_silhouette(v, faces, cameras, size), target_mask).mean())

    z = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    flags = [p.requires_grad for p in mesh.parameters()]
    for p in mesh.parameters():
        p.requires_grad_(False)
    history = []
    try:
        for _ in tqdm(range(steps), disable=not progress, desc="fit_latent", leave=False):
            v = mesh.deformed_verts(z)[None].expand(b, -1, -1)
            loss = soft_iou_loss(soft_silhouette(v, faces, cameras, size, sigma), target_mask)
            loss = loss + prior_weight * ((z - mean) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(loss.item())
    finally:
        for p, f in zip(mesh.parameters(), flags):
            p.requires_grad_(f)
    z = z.detach()
    return LatentFit(z=z, init=start.clone(), iou_init=hard_iou(start), iou_fit=hard_iou(z), history=history)
