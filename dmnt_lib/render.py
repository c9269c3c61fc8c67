"""Rasterization → UV fragment, texture sampling, and mask/feature rendering.

The **UV fragment** (appendix A.1) is the per-pixel texture coordinate of a rendered mesh: a
rasterizer (``raster.rasterize``: Embree ray casting on CPU, PyTorch3D on CUDA; docs/design.md §7)
finds one face per pixel (no blur), and the UVs of that face's three corners (looked up through
``faces_uvs``, so seams are exact) are interpolated with the perspective-correct barycentric
weights — the same interpolation PyTorch3D's ``TexturesUV`` does.

``sample_texture`` is the one way texture is read in this project (docs/design.md §3): bilinear
``F.grid_sample(texture, 2*uv - 1, align_corners=False)``, so texel ``(i, j)`` has its centre at
``u = (j + 0.5)/S_w``, ``v = (i + 0.5)/S_h`` and ``v = 0`` is row 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .mesh import UVMesh
from .raster import Fragments, rasterize, rasterize_hits, scatter_hits, visibility

__all__ = ["Fragments", "UVFragment", "rasterize", "uv_fragment", "sample_texture", "render_mask", "render_texture"]


@dataclass
class UVFragment:
    """Per-pixel rasterization output.

    Attributes:
        uv: ``(B, H, W, 2)`` float32 texture coordinates ``(u, v)`` in ``[0, 1]``; 0 off the mask.
        mask: ``(B, H, W)`` bool, pixel covered by the mesh.
        pix_to_face: ``(B, H, W)`` int64 face index *within the mesh* (``0..F-1``), -1 off the mask.
        bary: ``(B, H, W, 3)`` float32 perspective-correct barycentric weights; 0 off the mask.
        zbuf: ``(B, H, W)`` float32 view-space depth; -1 off the mask.
        chart: ``(B, H, W)`` int64 UV chart of the pixel's face (``mesh.face_charts()``), -1 off.
    """

    uv: torch.Tensor
    mask: torch.Tensor
    pix_to_face: torch.Tensor
    bary: torch.Tensor
    zbuf: torch.Tensor
    chart: torch.Tensor


def uv_fragment(mesh: UVMesh, cameras, image_size, backend: str = "auto") -> UVFragment:
    """The UV fragment of ``mesh`` seen by each camera.

    Args:
        mesh: ``UVMesh`` with ``F`` faces; ``verts (V, 3)`` or ``(B, V, 3)`` (one shape per camera).
        cameras: PyTorch3D cameras, batch ``B``.
        image_size: ``H`` or ``(H, W)``.
        backend: ``raster.rasterize``'s: ``"auto"``, ``"embree"`` or ``"pytorch3d"``.

    Returns:
        ``UVFragment`` with ``uv (B, H, W, 2)``, ``mask``, ``pix_to_face``, ``bary``, ``zbuf``,
        ``chart``; ``uv`` is differentiable in the vertices and camera parameters.
    """
    face, flat_pix, hit_face, bary, zbuf = rasterize_hits(mesh, cameras, image_size, backend=backend)
    mask = face >= 0
    device = face.device
    corner_uvs = mesh.verts_uvs.to(device=device, dtype=bary.dtype)[mesh.faces_uvs.to(device)]  # (F, 3, 2)
    # Interpolate per hit, then scatter. Perspective-correct barycentrics can leave [0, 1] by a
    # rounding error at face edges, hence the clamp.
    uv = (bary[:, :, None] * corner_uvs[hit_face]).sum(1).clamp(0, 1)
    chart = mesh.face_charts().to(device)[hit_face]
    return UVFragment(
        uv=scatter_hits(uv, flat_pix, face, 0.0),
        mask=mask,
        pix_to_face=face,
        bary=scatter_hits(bary, flat_pix, face, 0.0),
        zbuf=scatter_hits(zbuf, flat_pix, face, -1.0),
        chart=scatter_hits(chart, flat_pix, face, -1),
    )


def sample_texture(texture: torch.Tensor, uv: torch.Tensor, mask: torch.Tensor | None = None, padding_mode: str = "zeros") -> torch.Tensor:
    """Bilinearly read a texture at per-pixel UVs.

    Exactly ``F.grid_sample(texture, 2*uv - 1, mode="bilinear", padding_mode, align_corners=False)``,
    then zero where ``mask`` is False.

    Args:
        texture: ``(B, C, S_h, S_w)`` (or ``(1, C, S_h, S_w)``, broadcast over the batch).
        uv: ``(B, H, W, 2)`` with ``u`` → column, ``v`` → row.
        mask: optional ``(B, H, W)`` bool.
        padding_mode: ``grid_sample``'s; ``"zeros"`` (docs/design.md §3) or ``"border"``.

    Returns:
        ``(B, C, H, W)`` sampled features, differentiable in ``texture`` and ``uv``.
    """
    if not torch.is_tensor(texture) or texture.dim() != 4:
        raise ValueError(f"texture must be a (B, C, S_h, S_w) tensor, got {getattr(texture, 'shape', type(texture))}")
    if not torch.is_tensor(uv) or uv.dim() != 4 or uv.shape[-1] != 2:
        raise ValueError(f"uv must be a (B, H, W, 2) tensor, got {getattr(uv, 'shape', type(uv))}")
    b = uv.shape[0]
    if texture.shape[0] not in (1, b):
        raise ValueError(f"texture batch {texture.shape[0]} must be 1 or match uv batch {b}")
    if mask is not None and mask.shape != uv.shape[:3]:
        raise ValueError(f"mask must have shape {tuple(uv.shape[:3])}, got {tuple(mask.shape)}")
    texture = texture.expand(b, -1, -1, -1)
    out = F.grid_sample(texture, 2 * uv.to(texture.dtype) - 1, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    if mask is not None:
        out = out * mask[:, None].to(out.dtype)
    return out


def render_mask(mesh: UVMesh, cameras, image_size, backend: str = "auto") -> torch.Tensor:
    """Silhouette ``(B, H, W)`` bool: pixels covered by the mesh (``backend`` as in ``rasterize``)."""
    return visibility(mesh, cameras, image_size, backend=backend) >= 0


def render_texture(mesh: UVMesh, texture: torch.Tensor, cameras, image_size, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Render a (neural) texture through the mesh: ``(B, C, H, W)`` features and the ``(B, H, W)`` mask.

    Args:
        texture: ``(1 or B, C, S_h, S_w)``; gradients flow to it (and, through the UVs, to the
            vertices and cameras).
        backend: as in ``rasterize``.
    """
    frag = uv_fragment(mesh, cameras, image_size, backend=backend)
    return sample_texture(texture, frag.uv, frag.mask), frag.mask
