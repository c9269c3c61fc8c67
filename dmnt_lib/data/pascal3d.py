"""PASCAL3D+ / OccludedPASCAL3D+ in NeMo's processed layout: reading and writing.

Two folder layouts are read into the same ``Sample`` structure:

* **NeMo** (one split, e.g. ``PASCAL3D_NeMo/val``)::

      images/<cat>/<id>.JPEG              annotations/<cat>/<id>.npz       lists/<cat>.txt
      images/<cat>FGL1_BGL1/<id>.JPEG     annotations/<cat>FGL1_BGL1/...   lists/<cat>FGL1_BGL1.txt   (level 1; 2, 3 alike)
      CAD/<cat>/01.off ...                (in the split folder or its parent)

* **ours** (written by ``synthetic``/``cli``)::

      L{k}/images/<cat>/<id>.png   L{k}/annotations/<cat>/<id>.npz   L{k}/lists/<cat>.txt
      CAD/<cat>/NN.off   meta.json

A list file holds one id per line (an image extension, if present, is stripped); a folder
``lists/<name>/`` of ``*.txt`` files (NeMo's per-CAD-model lists) is read as their union.

Annotation ``.npz`` fields (NeMo's names and units; ours writes all of them):

========================  =====================================================================
``category``              str (optional when reading; the folder gives it)
``cad_index``             int, 1-based: the CAD model is ``CAD/<cat>/{cad_index:02d}.off``
``azimuth, elevation,     float, **radians** (NeMo converts PASCAL3D+'s degrees)
theta``
``distance``              float, camera-to-origin distance in CAD units
``focal, viewport``       float; the focal length in **pixels** is ``focal * viewport``
                          (PASCAL3D+: 1 and 3000)
``principal``             ``(2,)`` float, principal point ``(x, y)`` in pixels of the stored image
``bbox``                  ``(4,)`` float ``(x0, y0, x1, y1)``, pixel edges, of the amodal mask (optional)
``mask``                  ``(H, W)`` bool amodal object mask (optional)
``occluder_mask``         ``(H, W)`` bool (optional)
``visible_mask``          ``(H, W)`` bool, ``mask & ~occluder_mask`` (optional; derived if absent)
``occlusion_ratio``       float, ``1 - |visible_mask| / |mask|`` (optional; derived if absent)
``level``                 int 0–3 (optional; the folder gives it)
========================  =====================================================================

Writes are atomic (temp file + ``os.replace``) and deterministic: ``.npz`` members carry a fixed
timestamp, so the same arrays give the same bytes.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_bytes
from ..mesh import read_off
from .shapes import CATEGORIES

__all__ = [
    "Sample", "Pascal3D", "read_annotation", "read_image", "write_sample", "write_list", "read_list",
    "atomic_write_bytes", "npz_bytes", "level_folders", "REQUIRED_FIELDS",
]

REQUIRED_FIELDS = ("cad_index", "azimuth", "elevation", "theta", "distance", "focal", "viewport", "principal")
_IMAGE_EXTS = (".png", ".JPEG", ".jpg", ".jpeg", ".PNG", ".JPG")


@dataclass
class Sample:
    """One image with its annotation, from either layout.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        focal: focal length in **pixels** (``focal * viewport`` of the file).
        principal: ``(2,)`` float64 ``(x, y)`` pixels. Angles in radians.
        bbox: ``(4,)`` float64 or None. mask, visible_mask, occluder_mask: ``(H, W)`` bool or None.
        occlusion_ratio: float or None (unknown without masks).
    """

    id: str
    category: str
    level: int
    image: np.ndarray
    cad_index: int
    azimuth: float
    elevation: float
    theta: float
    distance: float
    focal: float
    principal: np.ndarray
    bbox: np.ndarray | None
    mask: np.ndarray | None
    visible_mask: np.ndarray | None
    occluder_mask: np.ndarray | None
    occlusion_ratio: float | None
    image_path: Path
    annotation_path: Path


# --------------------------------------------------------------------------- writing


def npz_bytes(arrays: dict) -> bytes:
    """A compressed ``.npz`` (readable by ``np.load``) whose bytes depend only on ``arrays``
    (``np.savez_compressed`` stamps the current time into the zip)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_sample(level_dir: str | os.PathLike, category: str, sample_id: str, image: np.ndarray, annotation: dict) -> tuple[Path, Path]:
    """Write ``level_dir/images/<category>/<id>.png`` and ``.../annotations/<category>/<id>.npz``.

    Args:
        image: ``(H, W, 3)`` uint8.
        annotation: the fields of the module table (arrays or Python scalars; ``category`` str).

    Returns:
        The image and annotation paths.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    missing = [k for k in REQUIRED_FIELDS if k not in annotation]
    if missing:
        raise ValueError(f"annotation is missing {missing}")
    level_dir = Path(level_dir)
    img_path = level_dir / "images" / category / f"{sample_id}.png"
    ann_path = level_dir / "annotations" / category / f"{sample_id}.npz"
    atomic_write_bytes(img_path, _png_bytes(image))
    atomic_write_bytes(ann_path, npz_bytes({k: np.asarray(v) for k, v in annotation.items()}))
    return img_path, ann_path


def write_list(path: str | os.PathLike, ids) -> None:
    """Write ids one per line (atomically)."""
    atomic_write_bytes(path, "".join(f"{i}\n" for i in ids).encode())


# --------------------------------------------------------------------------- reading


def read_list(path: str | os.PathLike) -> list[str]:
    """Ids from a list file, or the union of ``*.txt`` in a list folder (order kept, no duplicates)."""
    path = Path(path)
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"list not found: {path}")
    ids: dict[str, None] = {}
    for f in files:
        for line in f.read_text().splitlines():
            name = line.strip().split()[0] if line.strip() else ""
            for ext in _IMAGE_EXTS:
                if name.endswith(ext):
                    name = name[: -len(ext)]
            if name:
                ids.setdefault(name, None)
    return list(ids)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB; ``ValueError`` if it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"corrupt image file {path}: {e}") from None


def _scalar(path, data, key, kind=float):
    a = np.asarray(data[key])
    if a.size != 1 or a.dtype.kind not in "biuf":
        raise ValueError(f"{path}: field {key!r} must be a single number, got shape {a.shape} dtype {a.dtype}")
    x = kind(a.reshape(-1)[0])
    if not np.isfinite(x):
        raise ValueError(f"{path}: field {key!r} is not finite ({x})")
    return x


def read_annotation(path: str | os.PathLike, image_shape: tuple[int, int] | None = None) -> dict:
    """Read and validate one annotation ``.npz`` (see the module table).

    Args:
        image_shape: ``(H, W)`` the masks must have, if known.

    Returns:
        A dict with ``cad_index`` (int), ``azimuth, elevation, theta, distance`` (float),
        ``focal`` (float, **pixels**), ``principal`` ``(2,)`` float64, and ``bbox``, ``mask``,
        ``visible_mask``, ``occluder_mask``, ``occlusion_ratio``, ``category``, ``level`` (None if absent).

    Raises:
        FileNotFoundError: no such file. ValueError: unreadable file, missing or malformed field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        raise ValueError(f"corrupt annotation file {path}: {e}") from None
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        raise ValueError(f"{path}: missing annotation fields {missing}")
    out = {k: _scalar(path, data, k) for k in ("azimuth", "elevation", "theta", "distance", "focal", "viewport")}
    out["focal"] *= out.pop("viewport")
    if out["distance"] <= 0 or out["focal"] <= 0:
        raise ValueError(f"{path}: distance and focal * viewport must be positive")
    out["cad_index"] = _scalar(path, data, "cad_index", int)
    if out["cad_index"] < 1:
        raise ValueError(f"{path}: cad_index is 1-based, got {out['cad_index']}")
    principal = np.asarray(data["principal"], dtype=np.float64).reshape(-1)
    if principal.shape != (2,) or not np.isfinite(principal).all():
        raise ValueError(f"{path}: principal must be 2 finite numbers (x, y), got {data['principal']!r}")
    out["principal"] = principal
    out["bbox"] = np.asarray(data["bbox"], dtype=np.float64).reshape(4) if "bbox" in data else None
    for key in ("mask", "visible_mask", "occluder_mask"):
        m = data.get(key)
        if m is not None:
            m = np.asarray(m)
            if m.ndim != 2 or (image_shape is not None and m.shape != tuple(image_shape)):
                raise ValueError(f"{path}: {key} must have the image's shape {image_shape}, got {m.shape}")
            m = m.astype(bool)
        out[key] = m
    if out["visible_mask"] is None and out["mask"] is not None and out["occluder_mask"] is not None:
        out["visible_mask"] = out["mask"] & ~out["occluder_mask"]
    out["occlusion_ratio"] = _scalar(path, data, "occlusion_ratio") if "occlusion_ratio" in data else None
    if out["occlusion_ratio"] is None and out["mask"] is not None and out["visible_mask"] is not None and out["mask"].any():
        out["occlusion_ratio"] = 1.0 - out["visible_mask"].sum() / out["mask"].sum()
    out["category"] = str(data["category"]) if "category" in data else None
    out["level"] = _scalar(path, data, "level", int) if "level" in data else None
    return out


def level_folders(root: str | os.PathLike, category: str, level: int) -> tuple[Path, Path, Path]:
    """``(images_dir, annotations_dir, list_path)`` of one category and level, in whichever
    layout ``root`` uses (ours ``L{k}/...`` first, then NeMo's ``<cat>FGL{k}_BGL{k}``)."""
    root = Path(root)
    ours = root / f"L{level}"
    if (ours / "annotations" / category).is_dir():
        return ours / "images" / category, ours / "annotations" / category, ours / "lists" / f"{category}.txt"
    name = category if level == 0 else f"{category}FGL{level}_BGL{level}"
    if (root / "annotations" / name).is_dir():
        lst = root / "lists" / f"{name}.txt"
        return root / "images" / name, root / "annotations" / name, lst if lst.exists() else root / "lists" / name
    raise FileNotFoundError(
        f"no {category} level {level} data under {root}: expected {ours / 'annotations' / category} (ours) "
        f"or {root / 'annotations' / name} (NeMo)"
    )


class Pascal3D:
    """An index over a PASCAL3D+-layout folder (either layout), read lazily.

    Args:
        root: the split folder (NeMo) or the dataset folder (ours).
        categories: default: every category of ``CATEGORIES`` present at all ``levels``.
        levels: occlusion levels to include (0 = unoccluded).
        cad_root: folder holding ``CAD/``; default ``root``, else ``root``'s parent.
    """

    def __init__(self, root, categories=None, levels=(0,), cad_root=None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
        self.levels = tuple(int(k) for k in levels)
        if not self.levels or any(k not in (0, 1, 2, 3) for k in self.levels):
            raise ValueError(f"levels must be a non-empty subset of 0, 1, 2, 3; got {levels}")
        if categories is None:
            categories = [c for c in CATEGORIES if all(self._has(c, k) for k in self.levels)]
            if not categories:
                raise FileNotFoundError(f"no category has data at levels {self.levels} under {self.root}")
        bad = [c for c in categories if c not in CATEGORIES]
        if bad:
            raise ValueError(f"unknown categories {bad}; expected names from {CATEGORIES}")
        self.categories = tuple(categories)
        self.items: list[tuple[str, int, str, Path, Path]] = []
        for cat in self.categories:
            for level in self.levels:
                img_dir, ann_dir, lst = level_folders(self.root, cat, level)
                for sid in read_list(lst):
                    self.items.append((cat, level, sid, img_dir, ann_dir / f"{sid}.npz"))
        if cad_root is None:
            cad_root = self.root if (self.root / "CAD").is_dir() else self.root.parent
        self.cad_root = Path(cad_root)
        self._cad_cache: dict = {}

    def _has(self, category, level) -> bool:
        try:
            level_folders(self.root, category, level)
            return True
        except FileNotFoundError:
            return False

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        cat, level, sid, img_dir, ann_path = self.items[i]
        img_path = next((img_dir / f"{sid}{e}" for e in _IMAGE_EXTS if (img_dir / f"{sid}{e}").is_file()), None)
        if img_path is None:
            raise FileNotFoundError(f"image for id {sid!r} not found in {img_dir} (tried {', '.join(_IMAGE_EXTS)})")
        image = read_image(img_path)
        ann = read_annotation(ann_path, image.shape[:2])
        if ann["category"] is not None and ann["category"] != cat:
            raise ValueError(f"{ann_path}: category {ann['category']!r} does not match its folder ({cat!r})")
        return Sample(
            id=sid, category=cat, level=level, image=image, cad_index=ann["cad_index"],
            azimuth=ann["azimuth"], elevation=ann["elevation"], theta=ann["theta"], distance=ann["distance"],
            focal=ann["focal"], principal=ann["principal"], bbox=ann["bbox"], mask=ann["mask"],
            visible_mask=ann["visible_mask"], occluder_mask=ann["occluder_mask"],
            occlusion_ratio=ann["occlusion_ratio"], image_path=img_path, annotation_path=ann_path,
        )

    def cad_path(self, category: str, cad_index: int) -> Path:
        return self.cad_root / "CAD" / category / f"{int(cad_index):02d}.off"

    def cad(self, category: str, cad_index: int):
        """The CAD model ``(verts (V, 3) float32, faces (F, 3) int64)`` (cached)."""
        key = (category, int(cad_index))
        if key not in self._cad_cache:
            self._cad_cache[key] = read_off(self.cad_path(category, cad_index))
        return self._cad_cache[key]

