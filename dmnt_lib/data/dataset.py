"""A ``torch.utils.data.Dataset`` over PASCAL3D+-layout data (real or synthetic).

Items are dicts of tensors (plus strings), so ``torch.utils.data.default_collate`` batches them
when the images share a size (always for synthetic data; NeMo's crops only within a category,
or for any mix with ``image_size``):

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
``UVMesh`` for ``render.*`` (in our y-up frame, converted from the z-up files). Real PASCAL3D+ has
no masks: with ``render_missing_masks=True`` the amodal mask is rendered from the CAD model at the
annotated pose (the appendix's amodal ground truth, A.4) and the occluder mask is empty at level 0
(OccludedPASCAL3D+'s ``occ_mask`` at levels 1–3, cut like its image). Rendering a NeMo crop
(up to 608 x 608 or 480 x 1120 pixels) costs about a second on a CPU, so rendered masks are cached
on disk (``mask_cache``), keyed by the annotation's and the CAD file's bytes: a later epoch, a
DataLoader worker or another run reads them back instead of rendering again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..camera import pose_to_cameras
from ..mesh import UVMesh
from ..render import render_mask
from ..fileio import atomic_write_bytes
from . import _checks
from .pascal3d import Pascal3D, Sample, npz_bytes
from .shapes import CATEGORIES

__all__ = ["PoseDataset", "cameras_for", "default_mask_cache"]

_MASK_CACHE_VERSION = b"dmnt-rendered-mask-v1"


def default_mask_cache() -> Path:
    """``$DMNT_CACHE_DIR/masks`` if that variable is set, else ``~/.cache/dmnt_lib/masks``."""
    base = os.environ.get("DMNT_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "dmnt_lib") / "masks"


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
        mask_cache: folder for rendered masks (str or path); None: ``default_mask_cache()``;
            False: keep them in memory only (this dataset object, this process).
        occ_root: as ``Pascal3D`` (NeMo's OccludedPASCAL3D+ root).
        image_size: None (images as stored) or ``(H, W)``: every image is scaled by
            ``min(H / h, W / w)`` (bilinear; stored masks nearest) and centred on a zero canvas
            of that size, the camera scaled and shifted with it (so rendered masks are exact).
            NeMo's crops differ per category (256 x 672 for car, 544 x 384 for chair, ...):
            this is what lets one batch mix categories, and what makes them affordable on a CPU.
    """

    def __init__(self, root, categories=None, levels=(0,), cad_root=None, render_missing_masks: bool = True,
                 mask_cache=None, occ_root=None, image_size=None):
        if not isinstance(render_missing_masks, bool):
            raise TypeError(f"render_missing_masks must be a bool, got {type(render_missing_masks).__name__}")
        if mask_cache is not None and mask_cache is not False and not isinstance(mask_cache, (str, os.PathLike)):
            raise TypeError(f"mask_cache must be a folder (str or path), None or False, got {type(mask_cache).__name__}")
        self.image_size = None if image_size is None else _checks.image_hw("image_size", image_size, minimum=8, allow_int=False)
        self.source = Pascal3D(root, categories, levels, cad_root, occ_root)
        self.render_missing_masks = render_missing_masks
        self.mask_cache = None if mask_cache is False else Path(mask_cache) if mask_cache is not None else default_mask_cache()
        self._meshes: dict = {}
        self._cad_digest: dict = {}
        self._memory: dict = {}

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

    def fit(self, s: Sample) -> Sample:
        """``s`` scaled and centred into ``image_size`` (see the class docstring); ``s`` itself if None.

        The image ``(h, w, 3)`` is resized to ``(round(h c), round(w c))``, ``c = min(H / h, W / w)``,
        and pasted at ``((W - w') // 2, (H - h') // 2)``; ``focal`` becomes ``focal * c`` and the
        principal point ``principal * (w' / w, h' / h) + offset`` (the rounding of ``w'``, ``h'``
        makes the two factors differ from ``c`` by less than ``1 / (2 w)``, moving no pixel by
        more than a quarter). ``bbox`` is dropped (recomputed from the mask); the occlusion
        ratio is the stored image's.
        """
        if self.image_size is None:
            return s
        from dataclasses import replace

        from PIL import Image

        (h, w), (H, W) = s.image.shape[:2], self.image_size
        c = min(H / h, W / w)
        nh, nw = max(1, min(H, round(h * c))), max(1, min(W, round(w * c)))
        ox, oy = (W - nw) // 2, (H - nh) // 2

        def place(a, resample):
            canvas = np.zeros((H, W) + a.shape[2:], dtype=a.dtype)
            im = Image.fromarray(a if a.dtype == np.uint8 else a.astype(np.uint8) * 255)
            r = np.asarray(im.resize((nw, nh), resample))
            canvas[oy:oy + nh, ox:ox + nw] = r if a.dtype == np.uint8 else r > 127
            return canvas

        masks = {k: None if getattr(s, k) is None else place(getattr(s, k), Image.NEAREST)
                 for k in ("mask", "visible_mask", "occluder_mask")}
        return replace(s, image=place(s.image, Image.BILINEAR), focal=s.focal * c, bbox=None,
                       principal=np.asarray(s.principal, dtype=np.float64) * (nw / w, nh / h) + (ox, oy),
                       **masks, crop={**(s.crop or {}), "fit": {"stored_hw": (h, w), "scale": c, "offset": (ox, oy)}})

    def _cache_key(self, s: Sample) -> str:
        """What the rendered mask depends on: the annotation's bytes, the CAD file's bytes and
        frame, the image size (stored and fitted) and the convention (sha256, hex)."""
        key = (s.category, s.cad_index)
        if key not in self._cad_digest:
            self._cad_digest[key] = hashlib.sha256(self.source.cad_path(*key).read_bytes()).digest()
        h = hashlib.sha256(_MASK_CACHE_VERSION)
        for part in (s.annotation_path.read_bytes(), self._cad_digest[key],
                     f"{self.source.cad_z_up} {s.image.shape[:2]} {s.convention} {(s.crop or {}).get('fit')}".encode()):
            h.update(len(part).to_bytes(8, "little") + part)
        return h.hexdigest()

    def rendered_mask(self, s: Sample, item: dict) -> np.ndarray:
        """The amodal mask ``(H, W)`` bool of ``s``'s CAD model at its pose (item's cameras), from
        the cache when there (``mask_cache``), else rendered and stored (atomically)."""
        key = self._cache_key(s)
        hw = s.image.shape[:2]
        path = None if self.mask_cache is None else self.mask_cache / key[:2] / f"{key}.npz"
        packed = self._memory.get(key)
        if packed is None and path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if tuple(z["shape"]) == tuple(hw):
                        packed = z["bits"]
            except (OSError, ValueError, KeyError):
                packed = None  # a damaged entry: render again and replace it
        if packed is not None:
            return np.unpackbits(packed, count=hw[0] * hw[1]).reshape(hw).astype(bool)
        mask = render_mask(self.cad_mesh(s.category, s.cad_index), cameras_for(item), hw)[0].numpy()
        bits = np.packbits(mask.reshape(-1))
        if path is None:
            self._memory[key] = bits
        else:
            atomic_write_bytes(path, npz_bytes({"shape": np.array(hw, dtype=np.int64), "bits": bits}))
        return mask

    def _masks(self, s: Sample, item: dict):
        h, w = s.image.shape[:2]
        mask = s.mask
        if mask is None:
            if not self.render_missing_masks:
                raise ValueError(f"{s.annotation_path}: no 'mask' field (pass render_missing_masks=True to render it)")
            mask = self.rendered_mask(s, item)
        occ = s.occluder_mask
        if occ is None:
            if s.level != 0:
                raise ValueError(f"{s.annotation_path}: level {s.level} sample without an occluder mask "
                                 "('occluder_mask', or NeMo's 'occ_mask' in original pixels)")
            occ = np.zeros((h, w), bool)
        visible = s.visible_mask if s.visible_mask is not None else mask & ~occ
        ratio = s.occlusion_ratio
        if ratio is None:
            ratio = 1.0 - visible.sum() / mask.sum() if mask.any() else 0.0
        return mask, visible, occ, ratio

    def __getitem__(self, i: int) -> dict:
        s = self.fit(self.source[i])
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
