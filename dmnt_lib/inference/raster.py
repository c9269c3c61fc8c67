"""Fragments for inference through ``render.rasterize`` (docs/design.md §7), with per-batch vertices.

Inference needs, per camera, the face index of each pixel and differentiable barycentrics (so that
gradients reach the pose through the cameras and the shape code through the vertices), from which
the uv map is interpolated exactly as ``render.uv_fragment`` does. ``render.rasterize`` is called with
the configured ``backend`` when it accepts one (the Embree backend on CPU); an older
``render.rasterize`` without ``backend`` returns PyTorch3D ``Fragments`` and takes one mesh for all
cameras, so batched vertices then go to PyTorch3D's ``MeshRasterizer`` directly (same settings).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from .. import render
from ..mesh import UVMesh

__all__ = ["Frags", "fragments"]


@dataclass
class Frags:
    """``pix_to_face (B,H,W)`` int64 (-1 off), ``bary (B,H,W,3)``, ``mask (B,H,W)`` bool, ``uv (B,H,W,2)``
    (0 off the mask) and ``chart (B,H,W)`` int64 (-1 off; None when ``UVMesh`` has no ``face_charts``)."""

    pix_to_face: torch.Tensor
    bary: torch.Tensor
    mask: torch.Tensor
    uv: torch.Tensor
    chart: torch.Tensor | None = None


def _new_api() -> bool:
    try:
        return "backend" in inspect.signature(render.rasterize).parameters
    except (TypeError, ValueError):
        return False


def _pytorch3d(mesh: UVMesh, verts: torch.Tensor | None, cameras, hw):
    from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
    from pytorch3d.structures import Meshes

    b = len(cameras)
    v = mesh.verts if verts is None else verts
    v = v.float().to(cameras.device)
    faces = mesh.faces.to(cameras.device)
    meshes = Meshes(verts=v.expand(b, -1, -1) if v.dim() == 2 else v, faces=faces.expand(b, -1, -1))
    settings = RasterizationSettings(image_size=hw, blur_radius=0.0, faces_per_pixel=1, bin_size=0)
    fr = MeshRasterizer(cameras=cameras, raster_settings=settings)(meshes)
    packed = fr.pix_to_face[..., 0]
    mask = packed >= 0
    face = torch.where(mask, packed % mesh.num_faces, torch.full_like(packed, -1))
    bary = torch.where(mask[..., None], fr.bary_coords[..., 0, :], torch.zeros_like(fr.bary_coords[..., 0, :]))
    return face, bary, mask, None


def fragments(mesh: UVMesh, cameras, image_size, verts: torch.Tensor | None = None, backend: str = "auto") -> Frags:
    """Rasterize ``mesh`` (or ``mesh`` with ``verts`` ``(V,3)``/``(B,V,3)``) for ``B`` cameras.

    Args:
        mesh: ``UVMesh`` (faces and UV atlas; its ``verts`` unless ``verts`` is given).
        cameras: PyTorch3D cameras, batch ``B`` (gradients flow to their ``R``, ``T``, focal, principal).
        image_size: ``(H, W)``.
        verts: optional ``(V, 3)`` or ``(B, V, 3)`` vertex positions (e.g. a deformed mesh per camera).
        backend: ``render.rasterize``'s backend (ignored by a rasterizer without backends).

    Returns:
        ``Frags`` with uv interpolated from ``mesh.verts_uvs`` by the (differentiable) barycentrics.
    """
    hw = (int(image_size[0]), int(image_size[1]))
    chart = None
    if _new_api():
        m = mesh
        if verts is not None:
            if verts.dim() == 2:
                m = mesh.with_verts(verts)
            else:
                m = UVMesh(verts, mesh.faces, mesh.verts_uvs, mesh.faces_uvs)
        fr = render.rasterize(m, cameras, hw, backend=backend)
        face, bary, mask = fr.pix_to_face, fr.bary, fr.mask
        if face.dim() == 4:  # PyTorch3D layout (B, H, W, 1)
            face, bary = face[..., 0], bary[..., 0, :]
        if hasattr(mesh, "face_charts"):
            chart = torch.where(mask, mesh.face_charts().to(face.device)[face.clamp(min=0)], torch.full_like(face, -1))
    else:
        face, bary, mask, _ = _pytorch3d(mesh, verts, cameras, hw)
    corner_uvs = mesh.verts_uvs.to(face.device)[mesh.faces_uvs.to(face.device)]  # (F, 3, 2)
    uv = (bary[..., :, None].to(corner_uvs.dtype) * corner_uvs[face.clamp(min=0)]).sum(-2)
    # Perspective-correct barycentrics can leave [0, 1] by a rounding error at face edges.
    uv = torch.where(mask[..., None], uv.clamp(0, 1), torch.zeros_like(uv))
    return Frags(pix_to_face=face, bary=bary, mask=mask, uv=uv, chart=chart)
