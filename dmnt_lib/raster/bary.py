"""Differentiable barycentrics from fixed visibility, shared by every rasterization backend.

A backend only decides *which* face covers each pixel centre (``pix_to_face``, not
differentiable). The perspective-correct barycentrics and the depth are then recomputed here, in
torch, from the projected corners of those faces, with exactly the formulas of PyTorch3D's mesh
rasterizer (``rasterize_meshes``, naive kernel, ``blur_radius=0``, ``perspective_correct=True``):

* vertices go to PyTorch3D's NDC space as ``MeshRasterizer.transform`` does (world → view →
  projection → NDC, then the view-space ``z`` kept as the third coordinate);
* pixel ``(i, j)`` has its centre at PyTorch3D's non-square NDC point
  (``pix_to_non_square_ndc(W-1-j, W, H)``, ``pix_to_non_square_ndc(H-1-i, H, W)``): +X left, +Y up;
* screen-space barycentrics are edge functions over the face area plus ``1e-8`` (PyTorch3D's
  ``kEpsilon``), then the perspective correction ``w_k ∝ b_k · Π_{l≠k} z_l``, and the depth
  ``zbuf = Σ_k w_k z_k``.

Autograd through these few elementwise ops reproduces PyTorch3D's hand-written backward
(``RasterizeMeshesBackward``) to float rounding, so gradients reach vertices, camera parameters
and everything upstream of them identically whichever backend found the faces. Written by hand
(not PyTorch3D's kernel) because that kernel couples visibility with the barycentrics, and only
its naive, slow CPU version exists.
"""

from __future__ import annotations

import torch

__all__ = ["K_EPSILON", "pixel_centers_ndc", "camera_transforms", "project_verts", "hit_barycentrics", "scatter_hits", "barycentrics"]

K_EPSILON = 1e-8  # PyTorch3D's rasterize_meshes kEpsilon


def _pix_to_non_square_ndc(i: torch.Tensor, s1: int, s2: int) -> torch.Tensor:
    """PyTorch3D's ``PixToNonSquareNdc`` (the smaller side spans [-1, 1]), in ``i``'s dtype."""
    ndc_range = torch.tensor(2.0, dtype=i.dtype)
    if s1 > s2:
        ndc_range = (s1 * ndc_range) / s2
    offset = ndc_range / 2.0
    return -offset + (ndc_range * i + offset) / s1


def pixel_centers_ndc(h: int, w: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """NDC coordinates of the pixel centres: ``x (W,)`` for columns, ``y (H,)`` for rows.

    Column ``j`` is at ``x[j]``, row ``i`` at ``y[i]`` (PyTorch3D's +X left, +Y up, so both
    decrease with the index).
    """
    cols = torch.arange(w - 1, -1, -1, dtype=dtype)
    rows = torch.arange(h - 1, -1, -1, dtype=dtype)
    return _pix_to_non_square_ndc(cols, w, h).to(device), _pix_to_non_square_ndc(rows, h, w).to(device)


def camera_transforms(cameras) -> tuple[torch.Tensor, torch.Tensor]:
    """World→view and view→NDC matrices ``(1 or B, 4, 4)`` (row-vector convention) of PyTorch3D
    cameras, as ``MeshRasterizer.transform`` composes them (the projection composed with the
    screen→NDC map), differentiable in the camera parameters. Computed once per ``rasterize``
    call and shared by ray generation and ``project_verts`` (PyTorch3D recomposes its
    ``Transform3d`` chains on every use)."""
    from pytorch3d.renderer.cameras import try_get_projection_transform

    proj = try_get_projection_transform(cameras, {})
    if proj is None:
        raise ValueError(f"cameras must have a projection matrix, got {type(cameras).__name__}")
    return cameras.get_world_to_view_transform().get_matrix(), proj.compose(cameras.get_ndc_camera_transform()).get_matrix()


def _transform_points(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``Transform3d.transform_points`` with a given matrix, op for op (homogeneous bmm, divide)."""
    pts = points[None] if points.dim() == 2 else points
    pts = torch.cat([pts, torch.ones(*pts.shape[:2], 1, dtype=pts.dtype, device=pts.device)], dim=2)
    if len(pts) != len(matrix):
        pts, matrix = (pts.expand(len(matrix), -1, -1), matrix) if len(pts) == 1 else (pts, matrix.expand(len(pts), -1, -1))
    out = pts.bmm(matrix)
    return out[..., :3] / out[..., 3:]


def project_verts(verts: torch.Tensor, cameras, transforms=None) -> torch.Tensor:
    """Vertices in PyTorch3D's rasterizer space, exactly as ``MeshRasterizer.transform`` makes them.

    The same operations as its two ``transform_points`` calls, bit for bit: the barycentrics of
    small faces are ill-conditioned (edge functions of nearby points), and merely composing the
    two matrices or reordering a sum moves them by up to 1e-4.

    Args:
        verts: ``(V, 3)`` (the same for every camera) or ``(B, V, 3)`` world (object-frame)
            positions.
        cameras: PyTorch3D cameras with a projection matrix, batch ``B``.
        transforms: optional ``camera_transforms(cameras)``, if already computed.

    Returns:
        ``(B, V, 3)``: NDC ``x, y`` and view-space ``z``; differentiable in ``verts`` and in the
        camera parameters.
    """
    world_to_view, view_to_ndc = transforms if transforms is not None else camera_transforms(cameras)
    verts_view = _transform_points(verts, world_to_view)
    xy = _transform_points(verts_view, view_to_ndc)[..., :2]
    return torch.cat([xy, verts_view[..., 2:]], dim=-1)


def _edge(px, py, ax, ay, bx, by):
    """PyTorch3D's ``EdgeFunctionForward(p, a, b)``."""
    return (px - ax) * (by - ay) - (py - ay) * (bx - ax)


def hit_barycentrics(verts_ndc: torch.Tensor, faces: torch.Tensor, pix_to_face: torch.Tensor, dense: bool | None = None):
    """The barycentric step on the covered pixels only (memory and time ∝ hits).

    Args: as ``barycentrics``; ``dense``: compute every pixel (default: on CUDA only).

    Returns:
        ``flat_pix (N,)`` indices into the flattened ``(B*H*W)`` image, ``face (N,)``,
        ``bary (N, 3)``, ``zbuf (N,)``. Dense (the default on CUDA), every pixel is returned
        (``N = B*H*W``, faces clamped to 0 off the mesh), which avoids the host sync of
        ``nonzero``; ``scatter_hits`` masks them with ``pix_to_face >= 0``.
    """
    b, h, w = pix_to_face.shape
    v = verts_ndc.shape[1]
    dtype, device = verts_ndc.dtype, verts_ndc.device
    if dense is None:
        dense = device.type == "cuda"
    if dense:
        flat_pix = torch.arange(b * h * w, device=device)
        face = pix_to_face.reshape(-1).clamp(min=0)
    else:
        flat_pix = (pix_to_face.reshape(-1) >= 0).nonzero()[:, 0]
        face = pix_to_face.reshape(-1)[flat_pix]
    bi = flat_pix // (h * w)
    yi = (flat_pix // w) % h
    xi = flat_pix % w
    xs, ys = pixel_centers_ndc(h, w, device=device, dtype=dtype)
    px, py = xs[xi], ys[yi]
    corner = faces.to(device)[face] + (bi * v)[:, None]  # (N, 3) rows of the flattened verts
    fv = verts_ndc.reshape(-1, 3)[corner.reshape(-1)].reshape(-1, 3, 3)
    x0, y0, z0 = fv[:, 0].unbind(-1)
    x1, y1, z1 = fv[:, 1].unbind(-1)
    x2, y2, z2 = fv[:, 2].unbind(-1)
    area = _edge(x2, y2, x0, y0, x1, y1) + K_EPSILON
    b0 = _edge(px, py, x1, y1, x2, y2) / area
    b1 = _edge(px, py, x2, y2, x0, y0) / area
    b2 = _edge(px, py, x0, y0, x1, y1) / area
    t0, t1, t2 = b0 * z1 * z2, b1 * z0 * z2, b2 * z0 * z1
    denom = (t0 + t1 + t2).clamp_min(K_EPSILON)
    bary = torch.stack([t0, t1, t2], dim=-1) / denom[:, None]
    zbuf = (bary * fv[..., 2]).sum(-1)
    return flat_pix, face, bary, zbuf


def scatter_hits(values: torch.Tensor, flat_pix: torch.Tensor, pix_to_face: torch.Tensor, fill: float) -> torch.Tensor:
    """Per-hit ``values (N, ...)`` from ``hit_barycentrics`` → a ``(B, H, W, ...)`` map, ``fill`` off the mesh."""
    shape = tuple(pix_to_face.shape) + tuple(values.shape[1:])
    if values.shape[0] == pix_to_face.numel():  # every pixel was computed (dense, or all covered)
        on = (pix_to_face >= 0).reshape((-1,) + (1,) * (values.dim() - 1))
        return torch.where(on, values, torch.full_like(values, fill)).reshape(shape)
    out = torch.full((pix_to_face.numel(),) + tuple(values.shape[1:]), fill, dtype=values.dtype, device=values.device)
    return out.index_put((flat_pix,), values).reshape(shape)


def barycentrics(
    verts_ndc: torch.Tensor,
    faces: torch.Tensor,
    pix_to_face: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Perspective-correct barycentrics and depth of the given faces at the pixel centres.

    Args:
        verts_ndc: ``(B, V, 3)`` from ``project_verts`` (float32 to match PyTorch3D; float64 for
            gradcheck).
        faces: ``(F, 3)`` int64.
        pix_to_face: ``(B, H, W)`` int64 face index within the mesh, -1 where nothing is hit.
            Treated as a constant (no gradient).

    Returns:
        ``bary (B, H, W, 3)`` (0 where ``pix_to_face < 0``) and ``zbuf (B, H, W)`` (-1 there),
        both differentiable in ``verts_ndc``.
    """
    flat_pix, _, bary, zbuf = hit_barycentrics(verts_ndc, faces, pix_to_face)
    return scatter_hits(bary, flat_pix, pix_to_face, 0.0), scatter_hits(zbuf, flat_pix, pix_to_face, -1.0)
