"""A ``torch.utils.data.Dataset`` over PASCAL3D+-layout data (real or synthetic).

Items are dicts of tensors (plus strings), so ``torch.utils.data.default_collate`` batches them
when the images share a size (always for synthetic data, and for NeMo's fixed-size crops):

====================  ================================================================
``image``             ``(3, H, W)`` float32 in [0, 1]
``mask``              ``(H, W)`` bool amodal object mask
``visible_mask``      ``(H, W)`` bool, ``mask & ~occluder_mask``
``occluder_mask``     ``(H, W)`` bool
``occlusion_ratio``   float32 scalar, ``1 - |visible| / |mask|``
``azimuth, elevation, theta``  float32 scalars, radians
``distance``          float32 scalar (CAD units)
``focal``             float32 scalar, **pixels**
``principal``         ``(2,)`` float32, ``(x, y)`` pixels
``bbox``              ``(4,)`` float32 ``(x0, y0, x1, y1)`` pixel edges of ``mask``
``label``             int64 index into ``shapes.CATEGORIES``; ``category`` the name (str)
``cad_index``         int64, 1-based; ``level`` int64 (0–3); ``id`` str
====================  ================================================================

``cameras(item_or_batch)`` turns these fields into the PyTorch3D cameras that reproduce the
image (``camera.pose_to_cameras``); ``cad_mesh(category, cad_index)`` gives the CAD model as a
``UVMesh`` for ``render.*``. Real PASCAL3D+ (level 0) has no masks: with
``render_missing_masks=True`` the amodal mask is rendered from the CAD model at the annotated
pose (what the paper does for its Mask R-CNN baseline) and the occluder mask is empty.
"""

from __future__ import annotations

import numpy as np
import torch

from ..camera import pose_to_cameras
from ..mesh import UVMesh
from ..render import render_mask
from .pascal3d import Pascal3D, Sample
from .shapes import CATEGORIES

__all__ = ["PoseDataset", "cameras_for"]


def cameras_for(item: dict, device=None):
    """PyTorch3D cameras for a dataset item (one camera) or a collated batch (``B`` cameras)."""
    for key in ("azimuth", "elevation", "theta", "distance", "focal", "principal", "image"):
        if key not in item:
            raise ValueError(f"item must contain {key!r} (a PoseDataset item or batch)")
    image = item["image"]
    batched = image.dim() == 4
    def vec(k):
        return item[k].reshape(-1) if batched else item[k].reshape(1)
    principal = item["principal"].reshape(-1, 2)
    return pose_to_cameras(vec("azimuth"), vec("elevation"), vec("theta"), vec("distance"),
                           tuple(image.shape[-2:]), focal=vec("focal"), principal=principal, device=device)


class PoseDataset(torch.utils.data.Dataset):
    """Images, masks and poses from a PASCAL3D+-layout folder (see ``pascal3d.Pascal3D``).

    Args:
        root: dataset folder (ours) or split folder (NeMo's layout).
        categories, levels, cad_root: as ``Pascal3D``.
        render_missing_masks: render the amodal mask from the CAD model when the annotation has
            none; otherwise such samples raise ``ValueError``.
    """

    def __init__(self, root, categories=None, levels=(0,), cad_root=None, render_missing_masks: bool = True):
        self.source = Pascal3D(root, categories, levels, cad_root)
        self.render_missing_masks = render_missing_masks
        self._meshes: dict = {}

    def __len__(self) -> int:
        return len(self.source)

    @property
    def categories(self) -> tuple[str, ...]:
        return self.source.categories

    def cad_mesh(self, category: str, cad_index: int) -> UVMesh:
        """CAD model ``CAD/<category>/{cad_index:02d}.off`` as a ``UVMesh`` (one-texel atlas)."""
        key = (category, int(cad_index))
        if key not in self._meshes:
            verts, faces = self.source.cad(category, cad_index)
            self._meshes[key] = UVMesh(verts, faces, torch.zeros(1, 2), torch.zeros_like(faces))
        return self._meshes[key]

    def _masks(self, s: Sample, item: dict):
        h, w = s.image.shape[:2]
        mask = s.mask
        if mask is None:
            if not self.render_missing_masks:
                raise ValueError(f"{s.annotation_path}: no 'mask' field (pass render_missing_masks=True to render it)")
            mask = render_mask(self.cad_mesh(s.category, s.cad_index), cameras_for(item), (h, w))[0].numpy()
        occ = s.occluder_mask
        if occ is None:
            if s.level != 0:
                raise ValueError(f"{s.annotation_path}: level {s.level} sample without 'occluder_mask'")
            occ = np.zeros((h, w), bool)
        visible = s.visible_mask if s.visible_mask is not None else mask & ~occ
        ratio = s.occlusion_ratio
        if ratio is None:
            ratio = 1.0 - visible.sum() / mask.sum() if mask.any() else 0.0
        return mask, visible, occ, ratio

    def __getitem__(self, i: int) -> dict:
        s = self.source[i]
        f32 = lambda x: torch.tensor(x, dtype=torch.float32)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1).float() / 255,
            "azimuth": f32(s.azimuth), "elevation": f32(s.elevation), "theta": f32(s.theta),
            "distance": f32(s.distance), "focal": f32(s.focal), "principal": f32(s.principal),
        }
        mask, visible, occ, ratio = self._masks(s, item)
        if s.bbox is not None:
            bbox = s.bbox
        elif mask.any():
            ys, xs = np.nonzero(mask)
            bbox = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
        else:
            bbox = np.zeros(4)
        item.update({
            "mask": torch.from_numpy(mask), "visible_mask": torch.from_numpy(visible), "occluder_mask": torch.from_numpy(occ),
            "occlusion_ratio": f32(ratio), "bbox": f32(bbox), "label": torch.tensor(CATEGORIES.index(s.category)),
            "category": s.category, "cad_index": torch.tensor(s.cad_index), "level": torch.tensor(s.level), "id": s.id,
        })
        return item

    def cameras(self, item_or_batch: dict, device=None):
        """The cameras that reproduce ``item_or_batch``'s image(s); see ``cameras_for``."""
        return cameras_for(item_or_batch, device)
