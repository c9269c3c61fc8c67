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

from .bary import pixel_centers_ndc

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


def _camera_matrices(cameras) -> tuple[np.ndarray, np.ndarray]:
    """World→view ``M (B, 4, 4)`` and view→NDC ``P (B, 4, 4)`` (row-vector convention), float64."""
    from pytorch3d.renderer.cameras import try_get_projection_transform

    with torch.no_grad():
        m = cameras.get_world_to_view_transform().get_matrix()
        proj = try_get_projection_transform(cameras, {})
        if proj is None:
            raise ValueError(f"cameras: the embree backend needs cameras with a projection matrix, got {type(cameras).__name__}")
        p = proj.compose(cameras.get_ndc_camera_transform()).get_matrix()
    b = len(cameras)
    return m.double().cpu().numpy().reshape(-1, 4, 4).repeat(b // len(m), 0), p.double().cpu().numpy().reshape(-1, 4, 4).repeat(b // len(p), 0)


def camera_rays(cameras, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Rays through PyTorch3D's pixel centres, in the world frame.

    Args:
        cameras: PyTorch3D perspective cameras, batch ``B``.
        h, w: image size.

    Returns:
        ``origins (B, 3)`` (camera centres) and ``directions (B, H, W, 3)``, float64; a direction
        has view-space ``z = 1``, so the hit distance along it is the view-space depth.
    """
    m, p = _camera_matrices(cameras)
    xs, ys = pixel_centers_ndc(h, w, dtype=torch.float32)
    xn = xs.double().numpy()[None, None, :]  # (1, 1, W)
    yn = ys.double().numpy()[None, :, None]  # (1, H, 1)
    P = p[:, None, None]  # (B, 1, 1, 4, 4)
    # A view point (dx, dy, 1) projects to NDC (h0/h3, h1/h3), h = [dx, dy, 1, 1] @ P. Solve the
    # 2x2 linear system h0 - xn h3 = 0, h1 - yn h3 = 0 for (dx, dy) per pixel (Cramer's rule).
    a11 = P[..., 0, 0] - xn * P[..., 0, 3]
    a12 = P[..., 1, 0] - xn * P[..., 1, 3]
    a21 = P[..., 0, 1] - yn * P[..., 0, 3]
    a22 = P[..., 1, 1] - yn * P[..., 1, 3]
    r1 = xn * (P[..., 2, 3] + P[..., 3, 3]) - (P[..., 2, 0] + P[..., 3, 0])
    r2 = yn * (P[..., 2, 3] + P[..., 3, 3]) - (P[..., 2, 1] + P[..., 3, 1])
    det = a11 * a22 - a12 * a21
    dx = (r1 * a22 - r2 * a12) / det
    dy = (a11 * r2 - a21 * r1) / det
    minv = np.linalg.inv(m)  # view→world
    origins = minv[:, 3, :3] / minv[:, 3, 3:4]
    rot = minv[:, None, None, :3, :3]  # direction [dx, dy, 1, 0] @ minv
    dirs = dx[..., None] * rot[..., 0, :] + dy[..., None] * rot[..., 1, :] + rot[..., 2, :]
    return origins, dirs


def embree_pix_to_face(verts: torch.Tensor, faces: torch.Tensor, cameras, h: int, w: int) -> torch.Tensor:
    """Nearest face hit through each pixel centre.

    Args:
        verts: ``(V, 3)`` (one shape for every camera) or ``(B, V, 3)`` (one per camera), CPU.
        faces: ``(F, 3)`` int64, CPU.
        cameras: PyTorch3D perspective cameras on the CPU, batch ``B``.
        h, w: image size.

    Returns:
        ``pix_to_face (B, H, W)`` int64, face index within the mesh, -1 where no face is hit.
    """
    b = len(cameras)
    origins, dirs = camera_rays(cameras, h, w)
    faces_np = np.ascontiguousarray(faces.detach().numpy().astype(np.int32))
    v = verts.detach().float().numpy()
    if v.ndim == 2:
        groups = {0: (v, list(range(b)))}
    else:  # per-camera shapes: one scene per distinct vertex set
        groups = {}
        for i in range(b):
            key = v[i].tobytes()
            groups.setdefault(key, (v[i], []))[1].append(i)
    out = np.empty((b, h * w), dtype=np.int64)
    per_call = max(1, MAX_RAYS_PER_CALL // (h * w))
    for vi, cams in groups.values():
        scene = _scene(np.ascontiguousarray(vi, dtype=np.float32), faces_np)
        for s in range(0, len(cams), per_call):
            idx = np.asarray(cams[s : s + per_call])
            d = np.ascontiguousarray(dirs[idx].reshape(-1, 3), dtype=np.float32)
            o = np.ascontiguousarray(np.repeat(origins[idx], h * w, axis=0), dtype=np.float32)
            out[idx] = scene.run(o, d).reshape(len(idx), h * w)
    return torch.from_numpy(out).reshape(b, h, w)
