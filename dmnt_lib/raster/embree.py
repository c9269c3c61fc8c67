"""Visibility by Embree ray casting (CPU): which face covers each pixel centre.

One ray per pixel centre and camera, from the camera centre through PyTorch3D's NDC pixel centre
(``bary.pixel_centers_ndc``) unprojected with the camera's own matrices, in the mesh's object
(world) frame. Embree 4 (``embreex``, the binding trimesh uses) returns the nearest hit triangle,
front or back facing (PyTorch3D does not cull back faces by default either), only in front of the
camera (``t > 0``). Scenes are built in robust (watertight) mode so a ray through a shared edge
cannot slip between its two faces.

Scene cache: a scene is built once per distinct vertex set and reused across cameras and calls.
The key is a 128-bit BLAKE2 digest of the float32 vertex bytes and the int32 face bytes, so a new
tensor with the same content (``detach()``, a copy, ``mesh.to("cpu")``) hits the cache and an
in-place edit of the vertices misses it; no identity or ``_version`` bookkeeping can go stale.
Hashing ~1000 vertices costs microseconds. The cache keeps the ``CACHE_SIZE`` most recently
used scenes.

Hand-written ray generation (numpy, float64, vectorized over cameras and pixels) rather than
PyTorch3D's ``unproject_points``: it must hit PyTorch3D's pixel centres exactly and be cheap for
hundreds of cameras at once.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch

from .bary import camera_transforms, pixel_centers_ndc

__all__ = ["CACHE_SIZE", "embree_pix_to_face", "camera_rays", "clear_cache"]

CACHE_SIZE = 64
MAX_RAYS_PER_CALL = 1 << 20  # bounds the ray buffers (~50 MB) for large batches
_SCENES: "OrderedDict[bytes, tuple]" = OrderedDict()


def clear_cache() -> None:
    """Drop every cached Embree scene."""
    _SCENES.clear()


def _scene(verts: np.ndarray, faces: np.ndarray):
    """The cached Embree scene of ``verts (V, 3) float32`` and ``faces (F, 3) int32``."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.asarray(verts.shape + faces.shape, dtype=np.int64).tobytes())
    digest.update(verts.tobytes())
    digest.update(faces.tobytes())
    key = digest.digest()
    hit = _SCENES.get(key)
    if hit is not None:
        _SCENES.move_to_end(key)
        return hit[0]
    from embreex import mesh_construction, rtcore_scene

    scene = rtcore_scene.EmbreeScene(robust=True)
    geom = mesh_construction.TriangleMesh(scene, verts, faces)
    _SCENES[key] = (scene, geom, verts, faces)  # keep the buffers alive with the scene
    while len(_SCENES) > CACHE_SIZE:
        _SCENES.popitem(last=False)
    return scene


def _camera_matrices(cameras, transforms=None) -> tuple[np.ndarray, np.ndarray]:
    """World→view ``M (B, 4, 4)`` and view→NDC ``P (B, 4, 4)`` (row-vector convention), float64."""
    world_to_view, view_to_ndc = transforms if transforms is not None else camera_transforms(cameras)
    b = len(cameras)
    m = world_to_view.detach().double().cpu().numpy().reshape(-1, 4, 4)
    p = view_to_ndc.detach().double().cpu().numpy().reshape(-1, 4, 4)
    return np.broadcast_to(m, (b, 4, 4)), np.broadcast_to(p, (b, 4, 4))


def _ndc_to_view_dirs(p: np.ndarray, xn: np.ndarray, yn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """View directions ``(dx, dy, 1)`` whose points project to NDC ``(xn, yn)`` under ``P``.

    A view point ``(dx, dy, 1)`` projects to ``(h0/h3, h1/h3)`` with ``h = [dx, dy, 1, 1] @ P``;
    solve the 2x2 linear system ``h0 - xn h3 = 0``, ``h1 - yn h3 = 0`` (Cramer's rule).
    ``p (B, 1, 4, 4)`` broadcasts against ``xn, yn (B or 1, N)``.
    """
    a11 = p[..., 0, 0] - xn * p[..., 0, 3]
    a12 = p[..., 1, 0] - xn * p[..., 1, 3]
    a21 = p[..., 0, 1] - yn * p[..., 0, 3]
    a22 = p[..., 1, 1] - yn * p[..., 1, 3]
    r1 = xn * (p[..., 2, 3] + p[..., 3, 3]) - (p[..., 2, 0] + p[..., 3, 0])
    r2 = yn * (p[..., 2, 3] + p[..., 3, 3]) - (p[..., 2, 1] + p[..., 3, 1])
    det = a11 * a22 - a12 * a21
    return (r1 * a22 - r2 * a12) / det, (a11 * r2 - a21 * r1) / det


def camera_rays(cameras, h: int, w: int, transforms=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through PyTorch3D's pixel centres, in the world frame.

    Args:
        cameras: PyTorch3D perspective cameras, batch ``B``.
        h, w: image size.
        transforms: optional ``bary.camera_transforms(cameras)``, if already computed.

    Returns:
        ``origins (B, 3)`` (camera centres) and ``directions (B, H, W, 3)``, float32; a direction
        has view-space ``z = 1``, so the hit distance along it is the view-space depth.
    """
    m, p = _camera_matrices(cameras, transforms)
    b = len(m)
    xs, ys = pixel_centers_ndc(h, w, dtype=torch.float32)
    minv = np.linalg.inv(m)  # view→world
    origins = minv[:, 3, :3] / minv[:, 3, 3:4]
    if np.abs(p[:, :2, 3]).max() == 0:
        # w = const·z (every PyTorch3D perspective camera): the view direction is affine in the
        # NDC point, dir = [xn, yn, 1] @ G with G (3, 3) per camera, so the rays are one batched
        # matmul. G from three NDC points with the general solver, in float64.
        pts_x, pts_y = np.array([[0.0, 1.0, 0.0]]), np.array([[0.0, 0.0, 1.0]])
        dx, dy = _ndc_to_view_dirs(p[:, None], pts_x, pts_y)  # (B, 3)
        d = np.stack([dx, dy, np.ones_like(dx)], -1)  # (B, 3 points, 3)
        k = np.stack([d[:, 1] - d[:, 0], d[:, 2] - d[:, 0], d[:, 0]], 1)  # rows: xn, yn, 1
        g = torch.from_numpy(k @ minv[:, :3, :3]).float()  # (B, 3, 3)
        pix = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None], torch.ones(1, 1)), -1)  # (H, W, 3)
        dirs = (pix.reshape(1, -1, 3) @ g).reshape(b, h, w, 3)
    else:  # a general projective camera: solve per pixel
        xn = xs.double().numpy()[None, None, :]
        yn = ys.double().numpy()[None, :, None]
        dx, dy = _ndc_to_view_dirs(p[:, None, None], xn, yn)
        rot = minv[:, None, None, :3, :3]
        dirs = torch.from_numpy(dx[..., None] * rot[..., 0, :] + dy[..., None] * rot[..., 1, :] + rot[..., 2, :]).float()
    return torch.from_numpy(origins).float(), dirs


def embree_pix_to_face(verts: torch.Tensor, faces: torch.Tensor, cameras, h: int, w: int, transforms=None) -> torch.Tensor:
    """Nearest face hit through each pixel centre.

    Args:
        verts: ``(V, 3)`` (one shape for every camera) or ``(B, V, 3)`` (one per camera), CPU.
        faces: ``(F, 3)`` int64, CPU.
        cameras: PyTorch3D perspective cameras on the CPU, batch ``B``.
        h, w: image size.
        transforms: optional ``bary.camera_transforms(cameras)``, if already computed.

    Returns:
        ``pix_to_face (B, H, W)`` int64, face index within the mesh, -1 where no face is hit.
    """
    b = len(cameras)
    if faces.shape[0] == 0:  # nothing to hit (Embree needs at least one triangle)
        return torch.full((b, h, w), -1, dtype=torch.int64)
    origins, dirs = camera_rays(cameras, h, w, transforms)
    faces_np = np.ascontiguousarray(faces.detach().numpy().astype(np.int32))
    v = verts.detach().float().numpy()
    if v.ndim == 2:
        groups = {0: (v, list(range(b)))}
    else:  # per-camera shapes: one scene per distinct vertex set
        groups = {}
        for i in range(b):
            key = v[i].tobytes()
            groups.setdefault(key, (v[i], []))[1].append(i)
    out = torch.empty((b, h * w), dtype=torch.int64)
    per_call = max(1, MAX_RAYS_PER_CALL // (h * w))
    dirs = dirs.reshape(b, h * w, 3)
    for vi, cams in groups.values():
        scene = _scene(np.ascontiguousarray(vi, dtype=np.float32), faces_np)
        for s in range(0, len(cams), per_call):
            idx = cams[s : s + per_call]
            sel = slice(idx[0], idx[-1] + 1) if idx[-1] - idx[0] + 1 == len(idx) else torch.tensor(idx)
            d = dirs[sel].reshape(-1, 3).contiguous().numpy()
            o = origins[sel][:, None, :].expand(-1, h * w, -1).reshape(-1, 3).contiguous().numpy()
            out[sel] = torch.from_numpy(scene.run(o, d).astype(np.int64)).reshape(len(idx), h * w)
    return out.reshape(b, h, w)
