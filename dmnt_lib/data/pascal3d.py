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

Reading checks every one of these fields (whole numbers for ``cad_index``/``level``; ``category``
as str or bytes; ``category`` and ``level`` must match the folder; a stored ``occlusion_ratio``
must agree with the stored masks) and names the file and field in its ``ValueError``. Any other
field is ignored and never decoded: NeMo's files also carry ``name``, ``box``, ``cropped_kp_list``,
``visible``, ..., possibly as pickled object arrays, which are never loaded.

Writes are atomic (temp file + ``os.replace``) and deterministic: ``.npz`` members carry a fixed
timestamp, so the same arrays give the same bytes.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_bytes
from ..mesh import read_off
from . import _checks
from .shapes import CATEGORIES

__all__ = [
    "Sample", "Pascal3D", "read_annotation", "read_image", "write_sample", "write_list", "read_list",
    "atomic_write_bytes", "npz_bytes", "level_folders", "REQUIRED_FIELDS", "OPTIONAL_FIELDS",
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


# Fields read_annotation uses; any other field (NeMo's name, box, cropped_kp_list, ..., even a
# pickled object array) is never read: members are decoded one by one, only for these names.
OPTIONAL_FIELDS = ("category", "level", "bbox", "mask", "visible_mask", "occluder_mask", "occlusion_ratio")
# What zipfile raises on a damaged archive (structure, deflate stream, CRC, flag bits that
# claim encryption or an unknown compression method).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, KeyError, NotImplementedError,
               RuntimeError, struct.error)


def _check_members(zf: zipfile.ZipFile, raw: bytes) -> None:
    """Structural checks that decode no member: a flipped byte in the central directory can
    hide or rename members without any zipfile error (the fields would silently go missing)."""
    end = raw.rfind(b"PK\x05\x06")  # end-of-central-directory record, holding the entry count
    total = struct.unpack("<H", raw[end + 10:end + 12])[0] if 0 <= end <= len(raw) - 12 else None
    if total is not None and total != 0xFFFF and total != len(zf.infolist()):
        raise zipfile.BadZipFile(f"the central directory lists {len(zf.infolist())} of {total} members")
    for info in zf.infolist():
        zf.open(info).close()  # reads only the local header: magic, flags, name must match


def _load_fields(path: Path) -> dict:
    """The known fields of an ``.npz`` as arrays; other members are never read."""
    raw = path.read_bytes()
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            _check_members(zf, raw)
            members = {n[:-4] if n.endswith(".npy") else n: n for n in zf.namelist()}  # np.savez adds .npy
            # zf.read verifies each member's CRC, so damaged data fails here, before any parsing
            blobs = {k: zf.read(members[k]) for k in REQUIRED_FIELDS + OPTIONAL_FIELDS if k in members}
    except _ZIP_ERRORS as e:
        raise ValueError(f"corrupt annotation file {path}: {type(e).__name__}: {e}") from None
    data = {}
    for key, blob in blobs.items():
        try:
            data[key] = np.lib.format.read_array(io.BytesIO(blob), allow_pickle=False)
        except Exception as e:  # noqa: BLE001 -- an intact member that numpy cannot parse (its header parser
            # raises SyntaxError, TokenError, ValueError, ...; pickled objects are refused): a corrupt field
            raise ValueError(f"corrupt annotation file {path}: field {key!r} is not a readable array "
                             f"({type(e).__name__}: {e})") from None
    return data


def _number(path, data, key) -> float:
    a = np.asarray(data[key])
    if a.size != 1 or a.dtype.kind not in "iuf":
        raise ValueError(f"{path}: field {key!r} must be a single number, got shape {a.shape} dtype {a.dtype}")
    x = float(a.reshape(-1)[0])
    if not np.isfinite(x):
        raise ValueError(f"{path}: field {key!r} is not finite ({x})")
    return x


def _integer(path, data, key) -> int:
    x = _number(path, data, key)
    if x != int(x):
        raise ValueError(f"{path}: field {key!r} must be a whole number, got {x}")
    return int(np.asarray(data[key]).reshape(-1)[0])


def _string(path, data, key) -> str:
    a = np.asarray(data[key])
    if a.size != 1 or a.dtype.kind not in "US":
        raise ValueError(f"{path}: field {key!r} must be a single string, got shape {a.shape} dtype {a.dtype}")
    value = a.reshape(-1)[0]
    if isinstance(value, bytes):  # dtype S: how some tools (and Python 2 pickles) store text
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path}: field {key!r} is not UTF-8 text: {value!r}") from None
    return str(value)


def _vector(path, data, key, n) -> np.ndarray:
    a = np.asarray(data[key])
    if a.dtype.kind not in "iuf" or a.size != n:
        raise ValueError(f"{path}: field {key!r} must be {n} numbers, got shape {a.shape} dtype {a.dtype}")
    a = a.astype(np.float64).reshape(n)
    if not np.isfinite(a).all():
        raise ValueError(f"{path}: field {key!r} is not finite ({a})")
    return a


def read_annotation(path: str | os.PathLike, image_shape: tuple[int, int] | None = None) -> dict:
    """Read and validate one annotation ``.npz`` (see the module table).

    Only ``REQUIRED_FIELDS`` and ``OPTIONAL_FIELDS`` are loaded; other fields (NeMo's ``name``,
    ``box``, ``cropped_kp_list``, ..., object arrays included) are ignored without being read.

    Args:
        path: the ``.npz`` file (str or path).
        image_shape: ``(H, W)`` ints the masks must have, if known.

    Returns:
        A dict with ``cad_index`` (int), ``azimuth, elevation, theta, distance`` (float),
        ``focal`` (float, **pixels**), ``principal`` ``(2,)`` float64, ``bbox`` ``(4,)`` float64,
        ``mask``, ``visible_mask``, ``occluder_mask`` ``(H, W)`` bool, ``occlusion_ratio`` (float),
        ``category`` (str), ``level`` (int); each None if absent (``visible_mask`` and
        ``occlusion_ratio`` are derived from the other masks when those are present).

    Raises:
        FileNotFoundError: no such file. TypeError: bad argument. ValueError: unreadable
        file, missing or malformed field (the message names the file and the field), or a
        stored ``occlusion_ratio`` that disagrees with the stored masks.
    """
    path = _checks.path("path", path)
    if image_shape is not None:
        image_shape = _checks.image_hw("image_shape", image_shape, allow_int=False)
    if not path.is_file():
        raise FileNotFoundError(f"annotation not found: {path}")
    data = _load_fields(path)
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        raise ValueError(f"{path}: missing annotation fields {missing}")
    out = {k: _number(path, data, k) for k in ("azimuth", "elevation", "theta", "distance", "focal", "viewport")}
    out["focal"] *= out.pop("viewport")
    if out["distance"] <= 0 or out["focal"] <= 0:
        raise ValueError(f"{path}: fields 'distance' and 'focal' * 'viewport' must be positive")
    out["cad_index"] = _integer(path, data, "cad_index")
    if out["cad_index"] < 1:
        raise ValueError(f"{path}: field 'cad_index' is 1-based, got {out['cad_index']}")
    out["principal"] = _vector(path, data, "principal", 2)
    out["bbox"] = _vector(path, data, "bbox", 4) if "bbox" in data else None
    if out["bbox"] is not None and not (out["bbox"][0] <= out["bbox"][2] and out["bbox"][1] <= out["bbox"][3]):
        raise ValueError(f"{path}: field 'bbox' must be (x0, y0, x1, y1) with x0 <= x1, y0 <= y1, got {out['bbox']}")
    shape = image_shape
    for key in ("mask", "visible_mask", "occluder_mask"):
        m = data.get(key)
        if m is not None:
            m = np.asarray(m)
            if m.dtype.kind not in "biuf" or m.ndim != 2 or (shape is not None and m.shape != tuple(shape)):
                want = f"shape {shape} (the image's and the other masks')" if shape is not None else "2 dimensions"
                raise ValueError(f"{path}: field {key!r} must be a bool mask with {want}, got shape {m.shape} dtype {m.dtype}")
            m = m.astype(bool)
            shape = m.shape  # the masks must agree with each other too
        out[key] = m
    if out["visible_mask"] is None and out["mask"] is not None and out["occluder_mask"] is not None:
        out["visible_mask"] = out["mask"] & ~out["occluder_mask"]
    measured = None
    if out["mask"] is not None and out["visible_mask"] is not None and out["mask"].any():
        measured = 1.0 - out["visible_mask"].sum() / out["mask"].sum()
    stored = _number(path, data, "occlusion_ratio") if "occlusion_ratio" in data else None
    if stored is not None and not 0 <= stored <= 1:
        raise ValueError(f"{path}: field 'occlusion_ratio' must be in [0, 1], got {stored}")
    if stored is not None and measured is not None and abs(stored - measured) > 1e-6:
        raise ValueError(f"{path}: field 'occlusion_ratio' ({stored}) disagrees with the masks "
                         f"(1 - |visible_mask| / |mask| = {measured})")
    out["occlusion_ratio"] = stored if stored is not None else measured
    out["category"] = _string(path, data, "category") if "category" in data else None
    out["level"] = _integer(path, data, "level") if "level" in data else None
    if out["level"] is not None and out["level"] not in (0, 1, 2, 3):
        raise ValueError(f"{path}: field 'level' must be 0, 1, 2 or 3, got {out['level']}")
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
        root: the split folder (NeMo) or the dataset folder (ours); str or path.
        categories: sequence of names from ``CATEGORIES`` (not a bare str); default: every
            category present at all ``levels``.
        levels: sequence of occlusion levels from ``0, 1, 2, 3`` to include (0 = unoccluded),
            in this order.
        cad_root: folder holding ``CAD/``; default ``root``, else ``root``'s parent.

    Raises:
        TypeError / ValueError: a bad argument (named). FileNotFoundError: missing folders or lists.
    """

    def __init__(self, root, categories=None, levels=(0,), cad_root=None):
        self.root = _checks.path("root", root)
        self.levels = tuple(_checks.int_list("levels", levels, (0, 1, 2, 3), sort=False))
        if categories is not None:
            categories = _checks.names("categories", categories, CATEGORIES)
        cad_root = None if cad_root is None else _checks.path("cad_root", cad_root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
        if categories is None:
            categories = [c for c in CATEGORIES if all(self._has(c, k) for k in self.levels)]
            if not categories:
                raise FileNotFoundError(f"no category has data at levels {self.levels} under {self.root}")
        self.categories = tuple(categories)
        self.items: list[tuple[str, int, str, Path, Path]] = []
        for cat in self.categories:
            for level in self.levels:
                img_dir, ann_dir, lst = level_folders(self.root, cat, level)
                if not lst.exists():
                    raise FileNotFoundError(f"list not found: {lst} (the samples in {ann_dir} are indexed by it, "
                                            "one id per line; nothing is guessed from the folder's contents)")
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
        i = _checks.integer("index", i)
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
        if ann["level"] is not None and ann["level"] != level:
            raise ValueError(f"{ann_path}: level {ann['level']} does not match its folder (level {level})")
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

