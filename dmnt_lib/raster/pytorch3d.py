"""Visibility by PyTorch3D's ``MeshRasterizer`` (the reference backend; the default on CUDA).

One face per pixel, no blur, no back-face culling, naive kernel (``bin_size=0``), exactly the
settings the project used before the Embree backend existed. Only ``pix_to_face`` is kept; the
barycentrics and depth are recomputed by ``bary.barycentrics`` like every other backend's, so
values and gradients do not depend on the backend.
"""

from __future__ import annotations

import torch

__all__ = ["pytorch3d_pix_to_face"]


def pytorch3d_pix_to_face(verts: torch.Tensor, faces: torch.Tensor, cameras, h: int, w: int) -> torch.Tensor:
    """Nearest face per pixel centre from PyTorch3D's rasterizer.

    Args:
        verts: ``(V, 3)`` or ``(B, V, 3)``, on the cameras' device.
        faces: ``(F, 3)`` int64.
        cameras: PyTorch3D cameras, batch ``B``.
        h, w: image size.

    Returns:
        ``pix_to_face (B, H, W)`` int64, face index within the mesh (not packed), -1 off.
    """
    from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
    from pytorch3d.structures import Meshes

    b = len(cameras)
    n_faces = faces.shape[0]
    with torch.no_grad():
        vb = verts.detach().float()
        vb = vb.expand(b, -1, -1) if vb.dim() == 2 else vb
        meshes = Meshes(verts=vb, faces=faces[None].expand(b, -1, -1))
        settings = RasterizationSettings(image_size=(h, w), blur_radius=0.0, faces_per_pixel=1, bin_size=0)
        packed = MeshRasterizer(cameras=cameras, raster_settings=settings)(meshes).pix_to_face[..., 0]
    # Packed face index → index within the mesh (every mesh has F faces).
    return torch.where(packed >= 0, packed % n_faces, packed)
