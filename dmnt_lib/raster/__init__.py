"""Rasterization backends, fast on CPU and exact to PyTorch3D (docs/design.md §7).

``rasterize(mesh, cameras, image_size, backend="auto")`` returns ``Fragments``: which face
covers each pixel centre (``pix_to_face``) and its perspective-correct barycentrics and depth.

* ``"pytorch3d"``: PyTorch3D's ``MeshRasterizer`` (the reference; the default for CUDA tensors).
* ``"embree"``: Embree 4 ray casting through the pixel centres (``raster.embree``); CPU only, the
  default on CPU. Tens to hundreds of times faster than PyTorch3D's naive CPU kernel.

Visibility carries no gradient. ``bary`` and ``zbuf`` are always recomputed in torch from the
projected corners of the hit faces with PyTorch3D's formulas (``raster.bary``), so both backends
give the same values and gradients (to vertices and camera parameters, hence to the pose angles
through ``camera.pose_to_cameras``). Backends can only disagree on pixels whose centre lies on a
shared edge (ties).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sizes import size_hw
from ..mesh import UVMesh
from .bary import barycentrics, camera_transforms, hit_barycentrics, pixel_centers_ndc, project_verts, scatter_hits

__all__ = ["Fragments", "BACKENDS", "rasterize", "rasterize_hits", "visibility", "scatter_hits", "resolve_backend", "barycentrics", "project_verts", "pixel_centers_ndc"]

BACKENDS = ("auto", "embree", "pytorch3d")


@dataclass
class Fragments:
    """One face per pixel.

    Attributes:
        pix_to_face: ``(B, H, W)`` int64 face index within the mesh, -1 off the mesh. No gradient.
        bary: ``(B, H, W, 3)`` float32 perspective-correct barycentric weights; 0 off the mesh.
        zbuf: ``(B, H, W)`` float32 view-space depth; -1 off the mesh.
        mask: ``(B, H, W)`` bool, ``pix_to_face >= 0``.
    """

    pix_to_face: torch.Tensor
    bary: torch.Tensor
    zbuf: torch.Tensor
    mask: torch.Tensor


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"auto"`` → ``"embree"`` on CPU, ``"pytorch3d"`` elsewhere; validates the name."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "embree" if device.type == "cpu" else "pytorch3d"
    if backend == "embree" and device.type != "cpu":
        raise ValueError(f"backend='embree' needs CPU tensors (Embree runs on the CPU), got device {device}")
    return backend


def _check_inputs(mesh, cameras) -> tuple[torch.Tensor, int]:
    """Validated vertices ``(V, 3)`` or ``(B, V, 3)`` on the cameras' device, and ``B``."""
    if not isinstance(mesh, UVMesh):
        raise TypeError(f"mesh must be a dmnt_lib.mesh.UVMesh, got {type(mesh).__name__}")
    from pytorch3d.renderer.cameras import CamerasBase

    if not isinstance(cameras, CamerasBase):
        raise TypeError(f"cameras must be PyTorch3D cameras (see camera.pose_to_cameras), got {type(cameras).__name__}")
    if not cameras.is_perspective():
        raise ValueError(f"cameras must be perspective cameras, got {type(cameras).__name__}")
    b = len(cameras)
    verts = mesh.verts
    if verts.dim() not in (2, 3) or verts.shape[-1] != 3:
        raise ValueError(f"mesh.verts must have shape (V, 3) or (B, V, 3), got {tuple(verts.shape)}")
    if verts.dim() == 3 and verts.shape[0] != b:
        raise ValueError(f"mesh.verts has a batch of {verts.shape[0]} vertex sets but cameras has {b} cameras")
    if not torch.isfinite(verts).all():
        raise ValueError("mesh.verts contains NaN or inf")
    return verts.to(cameras.device), b


def _pix_to_face(verts, faces, cameras, h, w, backend, transforms=None) -> torch.Tensor:
    name = resolve_backend(backend, verts.device)
    if faces.shape[0] == 0:  # a mesh without faces covers nothing (neither library accepts it)
        return torch.full((len(cameras), h, w), -1, dtype=torch.int64, device=verts.device)
    if name == "embree":
        from .embree import embree_pix_to_face

        return embree_pix_to_face(verts, faces, cameras, h, w, transforms)
    from .pytorch3d import pytorch3d_pix_to_face

    return pytorch3d_pix_to_face(verts, faces, cameras, h, w)


def visibility(mesh: UVMesh, cameras, image_size, backend: str = "auto") -> torch.Tensor:
    """Only ``rasterize``'s ``pix_to_face (B, H, W)`` (int64, -1 off): for masks and face-id maps,
    without the barycentric step. Same arguments and checks as ``rasterize``."""
    verts, _ = _check_inputs(mesh, cameras)
    h, w = size_hw(image_size, "image_size")
    return _pix_to_face(verts, mesh.faces.to(verts.device), cameras, h, w, backend)


def rasterize_hits(mesh: UVMesh, cameras, image_size, backend: str = "auto"):
    """``rasterize`` before scattering to images (for callers that interpolate per hit).

    Returns:
        ``pix_to_face (B, H, W)`` and ``hit_barycentrics``' ``(flat_pix, face, bary, zbuf)``.
    """
    verts, b = _check_inputs(mesh, cameras)
    h, w = size_hw(image_size, "image_size")
    faces = mesh.faces.to(verts.device)
    transforms = camera_transforms(cameras)
    pix_to_face = _pix_to_face(verts, faces, cameras, h, w, backend, transforms)
    return (pix_to_face,) + hit_barycentrics(project_verts(verts.float(), cameras, transforms), faces, pix_to_face)


def rasterize(mesh: UVMesh, cameras, image_size, backend: str = "auto") -> Fragments:
    """Rasterize ``mesh`` once per camera: the nearest face at every pixel centre.

    Args:
        mesh: ``UVMesh`` with ``F`` faces; ``verts (V, 3)`` (the same shape for every camera) or
            ``(B, V, 3)`` (one shape per camera, e.g. deformed meshes).
        cameras: PyTorch3D perspective cameras, batch ``B`` (``camera.pose_to_cameras``).
        image_size: ``H`` or ``(H, W)``.
        backend: ``"auto"`` (Embree on CPU, PyTorch3D on CUDA), ``"embree"`` or ``"pytorch3d"``.

    Returns:
        ``Fragments`` with ``(B, H, W)`` / ``(B, H, W, 3)`` fields; ``bary`` and ``zbuf`` are
        differentiable in ``mesh.verts`` and in the camera parameters.
    """
    pix_to_face, flat_pix, _, bary, zbuf = rasterize_hits(mesh, cameras, image_size, backend)
    return Fragments(
        pix_to_face=pix_to_face,
        bary=scatter_hits(bary, flat_pix, pix_to_face, 0.0),
        zbuf=scatter_hits(zbuf, flat_pix, pix_to_face, -1.0),
        mask=pix_to_face >= 0,
    )
