"""Oracle features: what a perfect backbone would output, for testing inference without a trained model.

A random smooth unit texture per category is rendered through the category's mesh at a known pose at
feature resolution; the rest of the map (and, optionally, an "occluder" covering part of the object) is
filled with background-like features (the background vector plus noise); everything gets noise and is
normalized. Used by the tests, notebook 05 (quick mode) and the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..camera import pose_to_cameras
from ..mesh import UVMesh
from ..render import sample_texture
from .raster import fragments

__all__ = ["random_texture", "random_background", "OracleImage", "oracle_features"]


def random_texture(dim: int, size: int, seed: int, cells: int = 8) -> torch.Tensor:
    """A smooth random unit texture ``(dim, size, size)``: Gaussian noise on a ``cells × cells`` grid,
    bicubically upsampled, normalized per texel (a trained texture is smooth at the feature scale)."""
    g = torch.Generator().manual_seed(int(seed))
    coarse = torch.randn(1, dim, cells, cells, generator=g)
    return F.normalize(F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0], dim=0)


def random_background(dim: int, seed: int, k: int = 1) -> torch.Tensor:
    """``(k, dim)`` random unit background features."""
    g = torch.Generator().manual_seed(int(seed) + 7919)
    return F.normalize(torch.randn(k, dim, generator=g), dim=1)


def _noise_like(x: torch.Tensor, scale: float, g: torch.Generator) -> torch.Tensor:
    n = torch.randn(x.shape, generator=g)
    return scale * F.normalize(n, dim=1)


@dataclass
class OracleImage:
    """``features (1, D, h, w)`` unit; ``mask (h, w)`` object pixels at feature resolution; ``occluded (h, w)``;
    ``amodal (H, W)`` and ``visible (H, W)`` bool at image resolution (``visible = amodal ∧ ¬occluder``)."""

    features: torch.Tensor
    mask: torch.Tensor
    occluded: torch.Tensor
    amodal: torch.Tensor
    visible: torch.Tensor


def oracle_features(texture: torch.Tensor, mesh: UVMesh, pose: dict, focal: float, principal, image_size, stride: int,
                    background: torch.Tensor, noise: float = 0.3, occlude: float = 0.0, seed: int = 0) -> OracleImage:
    """Oracle features of one image.

    Args:
        texture: ``(D, S, S)``; mesh: the object's mesh; pose: ``azimuth, elevation, theta, distance``.
        focal: image pixels; principal: ``(x, y)`` image pixels; image_size ``(H, W)``; stride ``s``.
        background: ``(K, D)``; pixels off the object get ``β_k + noise`` (a random ``k`` per pixel).
        noise: norm of the isotropic noise added to every feature before normalizing.
        occlude: fraction of the object's feature pixels replaced by background-like features — the object's
            pixels left of the column that splits them in this proportion (a contiguous occluder covering the
            image columns left of that feature column).
        seed: seeds the noise.
    """
    H, W = image_size
    h, w = H // stride, W // stride
    g = torch.Generator().manual_seed(int(seed))
    pp = torch.as_tensor(principal, dtype=torch.float32).reshape(1, 2)
    args = [torch.tensor([float(pose[k])]) for k in ("azimuth", "elevation", "theta", "distance")]
    with torch.no_grad():
        cams = pose_to_cameras(*args, (h, w), focal=focal / stride, principal=pp / stride)
        fr = fragments(mesh, cams, (h, w))
        obj = F.normalize(sample_texture(texture[None], fr.uv), dim=1)
        k = torch.randint(background.shape[0], (h, w), generator=g)
        bgf = background[k].permute(2, 0, 1)[None]
        mask = fr.mask[0]
        occ = torch.zeros(h, w, dtype=torch.bool)
        cut = 0
        if occlude > 0 and mask.any():
            cols = mask.nonzero()[:, 1].sort().values
            cut = int(cols[min(int(occlude * len(cols)), len(cols) - 1)])
            occ = mask & (torch.arange(w)[None] < cut)
        use_obj = mask & ~occ
        x = torch.where(use_obj[None, None], obj, bgf)
        feats = F.normalize(x + _noise_like(x, noise, g), dim=1)
        cams_img = pose_to_cameras(*args, (H, W), focal=focal, principal=pp)
        amodal = fragments(mesh, cams_img, (H, W)).mask[0]
        # The occluder covers the image columns left of the cut (feature column `cut` starts at x = cut * stride).
        occ_img = amodal & (torch.arange(W)[None] < cut * stride)
    return OracleImage(features=feats, mask=mask, occluded=occ, amodal=amodal, visible=amodal & ~occ_img)
