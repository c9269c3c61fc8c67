"""PASCAL3D+ poses <-> cameras, rotation error and pose metrics.

Pose convention (NeMo's, which follows PASCAL3D+): all angles in **radians**.

* The camera centre sits on a sphere around the object's origin:
  ``C = distance * (cos(el) sin(az), sin(el), cos(el) cos(az))`` (object frame, y up).
* It looks at the origin with up vector ``+y`` (PyTorch3D's ``look_at_rotation``), which
  gives ``R_look`` whose columns are the camera's x, y, z axes in object coordinates.
* The in-plane rotation ``theta`` is applied in view space: ``R = R_look @ R_theta`` with
  ``R_theta = [[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]]``, and ``T = -R^T C``.

``R, T`` use PyTorch3D's row-vector convention: ``X_view = X_world @ R + T``; view space is
+X left, +Y up, +Z forward. Pixels: +x right, +y down, origin at the top-left corner of the
image, pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``; a view point projects to
``x = px - f X/Z``, ``y = py - f Y/Z`` (``f`` = focal length in pixels, ``(px, py)`` the
principal point in pixels, by default the image centre).

The singular poses ``elevation = ±π/2`` (camera on the up axis) have no defined azimuth;
``rotation_to_pose`` returns azimuth 0 there.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .sizes import size_hw

__all__ = [
    "camera_center",
    "pose_to_rotation",
    "pose_to_RT",
    "pose_to_cameras",
    "rotation_to_pose",
    "RT_to_pose",
    "project_points",
    "rotation_error",
    "pose_metrics",
]


def _as_batch(name: str, x, dtype=torch.float32, device=None) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=dtype if not torch.is_tensor(x) or not x.is_floating_point() else x.dtype, device=device)
    if t.dim() > 1:
        raise ValueError(f"{name} must be a scalar or a 1D batch, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    return t.reshape(-1)


def _broadcast(**named) -> list[torch.Tensor]:
    sizes = {k: v.numel() for k, v in named.items()}
    b = max(sizes.values())
    for k, n in sizes.items():
        if n not in (1, b):
            raise ValueError(f"{k} has batch size {n}, incompatible with batch size {b} ({sizes})")
    dtype = torch.float32
    for v in named.values():
        dtype = torch.promote_types(dtype, v.dtype)
    return [v.to(dtype).expand(b) for v in named.values()]


def camera_center(azimuth, elevation, distance) -> torch.Tensor:
    """Camera centres ``(B, 3)`` in the object frame for spherical angles (radians)."""
    az = _as_batch("azimuth", azimuth)
    el = _as_batch("elevation", elevation, device=az.device)
    dist = _as_batch("distance", distance, device=az.device)
    az, el, dist = _broadcast(azimuth=az, elevation=el, distance=dist)
    return torch.stack([dist * el.cos() * az.sin(), dist * el.sin(), dist * el.cos() * az.cos()], dim=-1)


def _look_at(center: torch.Tensor) -> torch.Tensor:
    """PyTorch3D's ``look_at_rotation(center, at=0, up=+y)``: columns = camera x, y, z axes."""
    z = torch.nn.functional.normalize(-center, dim=-1)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=center.dtype, device=center.device).expand_as(z)
    x = torch.nn.functional.normalize(torch.cross(up, z, dim=-1), dim=-1)
    # Camera on the up axis: the x axis is undefined. Use -x, the limit of azimuth = 0 as the
    # elevation goes to ±π/2 (rotation_to_pose returns azimuth 0 there).
    bad = torch.cross(up, z, dim=-1).norm(dim=-1) < 1e-12
    if bad.any():
        x = torch.where(bad[:, None], torch.tensor([-1.0, 0.0, 0.0], dtype=x.dtype, device=x.device), x)
    y = torch.nn.functional.normalize(torch.cross(z, x, dim=-1), dim=-1)
    return torch.stack([x, y, z], dim=-1)


def _rot_theta(theta: torch.Tensor) -> torch.Tensor:
    c, s = theta.cos(), theta.sin()
    zero, one = torch.zeros_like(theta), torch.ones_like(theta)
    return torch.stack([c, -s, zero, s, c, zero, zero, zero, one], dim=-1).reshape(-1, 3, 3)


def pose_to_rotation(azimuth, elevation, theta) -> torch.Tensor:
    """World→view rotations ``R (B, 3, 3)`` (row-vector convention) for PASCAL3D+ angles."""
    az = _as_batch("azimuth", azimuth)
    el = _as_batch("elevation", elevation, device=az.device)
    th = _as_batch("theta", theta, device=az.device)
    az, el, th = _broadcast(azimuth=az, elevation=el, theta=th)
    return _look_at(camera_center(az, el, 1.0)) @ _rot_theta(th)


def pose_to_RT(azimuth, elevation, theta, distance) -> tuple[torch.Tensor, torch.Tensor]:
    """``R (B, 3, 3)`` and ``T (B, 3)`` such that ``X_view = X_world @ R + T`` (radians)."""
    az = _as_batch("azimuth", azimuth)
    el, th, dist = (_as_batch(n, x, device=az.device) for n, x in (("elevation", elevation), ("theta", theta), ("distance", distance)))
    az, el, th, dist = _broadcast(azimuth=az, elevation=el, theta=th, distance=dist)
    if not (dist > 0).all():
        raise ValueError("distance must be positive")
    R = pose_to_rotation(az, el, th)
    T = -(R.transpose(1, 2) @ camera_center(az, el, dist)[:, :, None])[:, :, 0]
    return R, T


def pose_to_cameras(
    azimuth,
    elevation,
    theta,
    distance,
    image_size: int | Sequence[int],
    focal: float | Sequence[float] | torch.Tensor = 3000.0,
    principal: Sequence[float] | torch.Tensor | None = None,
    device: torch.device | str | None = None,
):
    """Batched PyTorch3D ``PerspectiveCameras`` (screen space) for PASCAL3D+ poses.

    Args:
        azimuth, elevation, theta: radians, scalars or ``(B,)``.
        distance: camera-to-origin distance, scalar or ``(B,)``, positive.
        image_size: ``H`` (square) or ``(H, W)`` in pixels.
        focal: focal length in **pixels**, scalar or ``(B,)``. PASCAL3D+ annotations store
            ``focal`` (1) and ``viewport`` (3000); their product is this value.
        principal: principal point ``(px, py)`` in pixels, ``(2,)`` or ``(B, 2)``; default the
            image centre ``(W/2, H/2)``.
        device: device of the cameras.

    Returns:
        ``pytorch3d.renderer.PerspectiveCameras`` with ``B`` cameras, ``in_ndc=False``.
    """
    from pytorch3d.renderer import PerspectiveCameras

    h, w = size_hw(image_size, "image_size")
    R, T = pose_to_RT(azimuth, elevation, theta, distance)
    b = R.shape[0]
    f = _as_batch("focal", focal)
    if f.numel() not in (1, b) or not (f > 0).all():
        raise ValueError(f"focal must be positive, scalar or (B,), got shape {tuple(f.shape)}")
    f = f.expand(b)
    if principal is None:
        pp = torch.tensor([[w / 2.0, h / 2.0]]).expand(b, 2)
    else:
        pp = torch.as_tensor(principal, dtype=torch.float32).reshape(-1, 2)
        if pp.shape[0] not in (1, b):
            raise ValueError(f"principal must have shape (2,) or (B, 2), got {tuple(pp.shape)}")
        pp = pp.expand(b, 2)
    return PerspectiveCameras(
        focal_length=torch.stack([f, f], dim=-1),
        principal_point=pp,
        R=R,
        T=T,
        image_size=torch.tensor([[h, w]]).expand(b, 2),
        in_ndc=False,
        device=device if device is not None else "cpu",
    )


def project_points(points: torch.Tensor, R: torch.Tensor, T: torch.Tensor, focal, principal) -> torch.Tensor:
    """Pixel coordinates ``(B, N, 2)`` (x right, y down) and depth of object points.

    Args:
        points: ``(N, 3)`` or ``(B, N, 3)``.
        R: ``(B, 3, 3)``; T: ``(B, 3)`` (see ``pose_to_RT``).
        focal: pixels, scalar or ``(B,)``. principal: ``(2,)`` or ``(B, 2)`` pixels.

    Returns:
        ``xy (B, N, 2)`` and ``depth (B, N)``; matches PyTorch3D's ``transform_points_screen``.
    """
    if points.dim() == 2:
        points = points[None].expand(R.shape[0], -1, -1)
    view = points @ R + T[:, None, :]
    f = torch.as_tensor(focal, dtype=view.dtype, device=view.device).reshape(-1, 1)
    pp = torch.as_tensor(principal, dtype=view.dtype, device=view.device).reshape(-1, 1, 2)
    z = view[..., 2]
    xy = pp - f[..., None] * view[..., :2] / z[..., None]
    return xy, z


def rotation_to_pose(R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Invert ``pose_to_rotation``: ``R (B, 3, 3)`` → ``(azimuth, elevation, theta)``, each ``(B,)``.

    Azimuth and theta are returned in ``(-π, π]``, elevation in ``[-π/2, π/2]``.
    """
    if R.dim() != 3 or R.shape[1:] != (3, 3):
        raise ValueError(f"R must have shape (B, 3, 3), got {tuple(R.shape)}")
    z_axis = R[:, :, 2]  # unaffected by the in-plane rotation
    c = -z_axis  # unit camera centre direction
    pole = c[:, [0, 2]].norm(dim=-1) < 1e-12
    c = torch.where(pole[:, None], torch.stack([torch.zeros_like(c[:, 1]), c[:, 1].sign(), torch.zeros_like(c[:, 1])], -1), c)
    elevation = torch.asin(c[:, 1].clamp(-1, 1))
    azimuth = torch.where(pole, torch.zeros_like(c[:, 0]), torch.atan2(c[:, 0], c[:, 2]))
    rt = _look_at(c).transpose(1, 2) @ R
    theta = torch.atan2(rt[:, 1, 0], rt[:, 0, 0])
    return azimuth, elevation, theta


def RT_to_pose(R: torch.Tensor, T: torch.Tensor):
    """``(azimuth, elevation, theta, distance)`` from ``R (B, 3, 3)``, ``T (B, 3)``."""
    az, el, th = rotation_to_pose(R)
    center = -(R @ T[:, :, None])[:, :, 0]
    return az, el, th, center.norm(dim=-1)


def rotation_error(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Geodesic distance ``‖logm(R1ᵀ R2)‖_F / √2`` in radians, ``(B,)``, in ``[0, π]``.

    Computed as ``atan2(|sin|, cos)`` of the relative rotation, accurate near 0 and π.
    """
    if R1.shape != R2.shape or R1.shape[-2:] != (3, 3):
        raise ValueError(f"R1 and R2 must both have shape (..., 3, 3), got {tuple(R1.shape)} and {tuple(R2.shape)}")
    rel = R1.transpose(-1, -2) @ R2
    cos = (rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    vee = torch.stack([rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0], rel[..., 1, 0] - rel[..., 0, 1]], -1)
    sin = vee.norm(dim=-1) / 2
    return torch.atan2(sin, cos)


def pose_metrics(errors) -> dict[str, float]:
    """PASCAL3D+ pose metrics from rotation errors (radians).

    Returns:
        ``{"acc_pi_6": fraction with error < π/6, "acc_pi_18": fraction < π/18,
        "median_deg": median error in degrees, "n": count}``.
    """
    e = torch.as_tensor(errors, dtype=torch.float64).reshape(-1)
    if e.numel() == 0:
        raise ValueError("errors must not be empty")
    if not torch.isfinite(e).all() or (e < 0).any():
        raise ValueError("errors must be finite and non-negative (radians)")
    return {
        "acc_pi_6": float((e < math.pi / 6).double().mean()),
        "acc_pi_18": float((e < math.pi / 18).double().mean()),
        "median_deg": float(torch.quantile(e, 0.5) * 180 / math.pi),
        "n": int(e.numel()),
    }
