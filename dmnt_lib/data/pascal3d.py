"""PASCAL3D+ / OccludedPASCAL3D+ in NeMo's processed layout, and our synthetic data: reading and writing.

Two folder layouts are read into the same ``Sample`` structure:

* **NeMo** (what ``code/dataset/CreatePascal3DNeMo.py`` of Angtian/NeMo writes; one root per
  split: ``PASCAL3D_train_NeMo``, ``PASCAL3D_NeMo`` (test, L0), ``PASCAL3D_OCC_NeMo`` (test, L1–L3))::

      images/<cat>/<name>.JPEG            annotations/<cat>/<name>.npz       lists/<cat>/<subtype>.txt, lists/<cat>/meshNN.txt
      images/<cat>FGL1_BGL1/<name>.JPEG   annotations/<cat>FGL1_BGL1/...     lists/<cat>FGL1_BGL1/...   (level 1; 2, 3 alike)

  A list is a file ``lists/<name>.txt`` or a folder ``lists/<name>/`` of ``*.txt`` (NeMo's: one
  per PASCAL3D+ subtype and one per CAD model, ``meshNN.txt``), read as their union; an id in
  ``meshNN.txt`` must have ``cad_index == NN`` (checked when read).
* **ours** (written by ``synthetic``/``cli``)::

      L{k}/images/<cat>/<id>.png   L{k}/annotations/<cat>/<id>.npz   L{k}/lists/<cat>.txt
      CAD/<cat>/NN.off   meta.json

**Conventions.** Which one a folder uses is read from what it holds, never guessed: a folder
whose ``meta.json`` has ``format == DMNT_FORMAT`` is ours (whatever its folder names); any other
folder must hold NeMo's files, and an annotation there without NeMo's ``height``/``width``
fields fits neither and is refused (``ValueError`` naming the file). The two differ in the
camera of the stored image:

* ours: ``principal`` is in pixels of the stored image, the focal length is ``focal * viewport``
  pixels, the stored ``mask``/``occluder_mask`` are in stored pixels.
* NeMo: ``principal`` is in pixels of the **original** photo and ``focal``/``viewport`` are
  PASCAL3D+'s (1 and 3000). NeMo resized the photo by ``rate = 200 * distance / 1000`` (the
  object then looks as if at distance 5) to ``(int(H * rate), int(W * rate))`` and cut a fixed
  per-category window centred at ``c = int(principal * rate)`` (``numpy`` truncation),
  zero-padding outside the photo. So in the stored image (``nemo_crop_camera``)::

      principal_crop = principal * (int(W * rate) / W, int(H * rate) / H) - (c - (w // 2, h // 2))
      focal_crop     = focal * viewport * rate

  i.e. the crop centre ``(w // 2, h // 2)`` plus the truncation residual (in ``[0, 1)`` pixel;
  the per-axis resize factors ``int(W * rate) / W`` differ from ``rate`` by less than ``1 / W``,
  which moves a point of the crop by less than ``(w / 2) / int(W * rate)`` pixels — under half a
  pixel unless the crop is wider than the resized photo — so one isotropic focal length
  ``focal * viewport * rate`` is used, as NeMo's own renderer does). The stored
  ``principal`` is taken in our pixel convention (pixel ``(i, j)`` centred at ``(j + .5, i + .5)``);
  PASCAL3D+'s MATLAB annotations may be 1-based, which would put it half an *original* pixel
  (``rate / 2`` crop pixels) off, well below annotation accuracy. OccludedPASCAL3D+'s
  ``occ_mask`` is a bool array in original-photo pixels: it is resized (nearest) and cut out
  like the photo. NeMo's ``bbox`` is PASCAL3D+'s hand-drawn box in original pixels, not the
  amodal mask's: it is not returned (``Sample.bbox`` is None; ``PoseDataset`` boxes the mask).
  There are no amodal masks: ``PoseDataset`` renders them from the CAD model (appendix A.4).

**CAD frame.** CAD files are in PASCAL3D+'s on-disk frame (z up) — the real ones, and ours
(``shapes.write_cad_library``) — and ``Pascal3D.cad`` converts them to our y-up frame with
``mesh.z_up_to_y_up`` (NeMo's ``(x, y, z) → (x, z, −y)``). Our datasets of format version 1
(``meta.json`` without ``cad_frame``) stored y-up files and are read as such.

Annotation ``.npz`` fields (NeMo's names and units; ours writes all of them but the NeMo-only ones):

========================  =====================================================================
``category``              str (optional when reading; the folder gives it)
``cad_index``             int, 1-based: the CAD model is ``CAD/<cat>/{cad_index:02d}.off``
``azimuth, elevation,     float, **radians** (NeMo converts PASCAL3D+'s degrees)
theta``
``distance``              float, camera-to-origin distance in CAD units
``focal, viewport``       float; the focal length in pixels of the file's image is ``focal * viewport``
                          (PASCAL3D+: 1 and 3000)
``principal``             ``(2,)`` float, principal point ``(x, y)`` in pixels (stored image: ours;
                          original photo: NeMo)
``height, width``         NeMo only: the original photo's size (int)
``occ_mask``              NeMo only: ``(height, width)`` bool occluder mask in original pixels, or
                          ``None`` (a pickled object array: recognised from its header, never unpickled)
``bbox``                  ours: ``(4,)`` float ``(x0, y0, x1, y1)``, pixel edges, of the amodal mask (optional)
``mask``                  ``(H, W)`` bool amodal object mask (optional)
``occluder_mask``         ``(H, W)`` bool (optional; takes precedence over ``occ_mask``)
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
import json
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
    "nemo_lists", "npz_bytes", "level_folders", "detect_convention", "cad_is_z_up",
    "nemo_resize_rate", "nemo_crop_camera", "nemo_crop_mask", "REQUIRED_FIELDS", "OPTIONAL_FIELDS",
    "NEMO_FIELDS", "DMNT_FORMAT", "OCC_ROOT_NAME", "CAD_RELEASE_NAME",
]

DMNT_FORMAT = "dmnt-synthetic-pascal3d"  # meta.json "format" of our datasets: the convention marker
OCC_ROOT_NAME = "PASCAL3D_OCC_NeMo"  # NeMo's OccludedPASCAL3D+ root, looked for next to the L0 root
CAD_RELEASE_NAME = "PASCAL3D+_release1.1"  # the PASCAL3D+ release folder, whose CAD/ NeMo uses

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
        convention: ``"dmnt"`` or ``"nemo"`` (see the module docstring); the camera fields are
            always those of the stored image.
        crop: NeMo only, how the stored image was cut from the photo (``nemo_crop_camera``'s
            dict plus ``original_principal``); None for ours.
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
    convention: str = "dmnt"
    crop: dict | None = None


# --------------------------------------------------------------------------- writing


def npz_bytes(arrays: dict, allow_pickle: bool = False) -> bytes:
    """A compressed ``.npz`` (readable by ``np.load``) whose bytes depend only on ``arrays``
    (``np.savez_compressed`` stamps the current time into the zip). ``allow_pickle=True``
    writes object arrays as ``np.savez`` does (pickled) — only ``nemo_prep`` needs that, to
    write NeMo's ``occ_mask=None`` faithfully; nothing here ever reads such a member."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=allow_pickle)
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
NEMO_FIELDS = ("height", "width", "occ_mask")  # NeMo's, in original-photo pixels
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


def _holds_objects(blob: bytes) -> bool:
    """Whether a ``.npy`` member holds Python objects, from its header alone (nothing unpickled)."""
    fp = io.BytesIO(blob)
    version = np.lib.format.read_magic(fp)
    if version not in ((1, 0), (2, 0)):
        return False  # then read_array(allow_pickle=False) refuses objects, as a corrupt field
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read_header(fp)[2].hasobject


def _load_fields(path: Path) -> dict:
    """The known fields of an ``.npz`` as arrays; other members are never read."""
    raw = path.read_bytes()
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            _check_members(zf, raw)
            members = {n[:-4] if n.endswith(".npy") else n: n for n in zf.namelist()}  # np.savez adds .npy
            # zf.read verifies each member's CRC, so damaged data fails here, before any parsing
            blobs = {k: zf.read(members[k]) for k in REQUIRED_FIELDS + OPTIONAL_FIELDS + NEMO_FIELDS if k in members}
    except _ZIP_ERRORS as e:
        raise ValueError(f"corrupt annotation file {path}: {type(e).__name__}: {e}") from None
    data = {}
    for key, blob in blobs.items():
        try:
            if key == "occ_mask" and _holds_objects(blob):
                continue  # NeMo's occ_mask=None: an object array, pickled; absent for us, never unpickled
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
        ``category`` (str), ``level`` (int), and NeMo's ``height``, ``width`` (int) and
        ``occ_mask`` ``(height, width)`` bool; each None if absent (``occ_mask=None`` included;
        ``visible_mask`` and ``occlusion_ratio`` are derived from the other masks when those
        are present). The camera fields are as stored: for a NeMo file ``focal`` and
        ``principal`` are the original photo's (``nemo_crop_camera`` maps them to the crop).

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
    for key in ("height", "width"):
        out[key] = _integer(path, data, key) if key in data else None
        if out[key] is not None and out[key] < 1:
            raise ValueError(f"{path}: field {key!r} must be >= 1, got {out[key]}")
    occ = data.get("occ_mask")
    if occ is not None:
        occ = np.asarray(occ)
        want = (out["height"], out["width"])
        if occ.dtype.kind not in "biu" or occ.ndim != 2 or (None not in want and occ.shape != want):
            raise ValueError(f"{path}: field 'occ_mask' must be a bool mask of the original photo's size "
                             f"(height, width) = {want}, got shape {occ.shape} dtype {occ.dtype}")
        occ = occ.astype(bool)
    out["occ_mask"] = occ
    out["category"] = _string(path, data, "category") if "category" in data else None
    out["level"] = _integer(path, data, "level") if "level" in data else None
    if out["level"] is not None and out["level"] not in (0, 1, 2, 3):
        raise ValueError(f"{path}: field 'level' must be 0, 1, 2 or 3, got {out['level']}")
    return out


# --------------------------------------------------------------------------- NeMo's crop


def nemo_resize_rate(distance: float, bbox=None) -> float:
    """NeMo's resize factor of a photo: ``200 * distance / 1000``, or when that is ``<= 0``
    (PASCAL3D+ has a few objects without a distance) ``224 / min(box side)`` of the integer
    box ``int(bbox)`` (``bbox = (x0, y0, x1, y1)`` original pixels; required then)."""
    rate = float(200 * float(distance) / 1000)  # NeMo's exact expression (its float rounding included)
    if rate <= 0:
        if bbox is None:
            raise ValueError(f"distance {distance} <= 0: NeMo's fallback rate needs the PASCAL3D+ bbox")
        b = np.asarray(bbox, dtype=np.float64).astype(np.int32)  # BboxTools.from_numpy truncates
        side = min(int(b[3]) - int(b[1]), int(b[2]) - int(b[0]))
        if side <= 0:
            raise ValueError(f"bbox {list(bbox)} has no area: no resize rate")
        rate = 224 / side
    return rate


def nemo_crop_camera(principal, distance: float, focal_px: float, original_hw, crop_hw, bbox=None) -> dict:
    """Where NeMo's crop of a photo lies, and the camera of the crop (module docstring).

    Args:
        principal: ``(2,)`` ``(x, y)`` principal point in original-photo pixels.
        distance: the annotation's distance (gives the rate, ``nemo_resize_rate``).
        focal_px: ``focal * viewport`` (PASCAL3D+: 3000).
        original_hw: ``(H, W)`` of the photo (the annotation's ``height``, ``width``).
        crop_hw: ``(h, w)`` of the stored crop.
        bbox: for the fallback rate only.

    Returns:
        ``{"rate": float, "resized_hw": (int(H rate), int(W rate)), "scale": (sx, sy)`` the
        per-axis resize factors, ``"origin": (x0, y0)`` ints, the crop's top-left corner in the
        resized photo (negative or beyond it where NeMo zero-padded), ``"principal": (2,)``
        float64 in crop pixels, ``"focal": focal_px * rate``}.
    """
    h0, w0 = (int(x) for x in original_hw)
    h, w = (int(x) for x in crop_hw)
    rate = nemo_resize_rate(distance, bbox)
    rh, rw = int(h0 * rate), int(w0 * rate)  # cv2.resize(dsize=(int(W * rate), int(H * rate)))
    if rh < 1 or rw < 1:
        raise ValueError(f"resize rate {rate} leaves no pixel of a {h0}x{w0} photo")
    p = np.asarray(principal, dtype=np.float64).reshape(2)
    cx, cy = (p * rate).astype(int)  # NeMo: (principal[::-1] * rate).astype(int), truncation to zero
    x0, y0 = int(cx) - w // 2, int(cy) - h // 2  # BboxTools.box_by_shape: [c - s // 2, c - s // 2 + s)
    scale = (rw / w0, rh / h0)
    return {"rate": rate, "resized_hw": (rh, rw), "scale": scale, "origin": (x0, y0),
            "principal": np.array([p[0] * scale[0] - x0, p[1] * scale[1] - y0]), "focal": float(focal_px) * rate}


def nemo_crop_mask(mask: np.ndarray, crop: dict, crop_hw) -> np.ndarray:
    """A mask in original-photo pixels, resized (nearest) and cut out like NeMo's image.

    Args:
        mask: ``(H, W)`` bool. crop: ``nemo_crop_camera``'s dict. crop_hw: ``(h, w)``.

    Returns:
        ``(h, w)`` bool; False where the window leaves the photo (NeMo's zero padding).
    """
    from PIL import Image

    rh, rw = crop["resized_hw"]
    # PIL's NEAREST samples the source at (j + 0.5) / s - 0.5 rounded: the pixel-centre mapping
    # of cv2.resize, so the mask lands on the pixels the image's content does.
    resized = np.asarray(Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize((rw, rh), Image.NEAREST)) > 127
    return crop_window(resized, crop["origin"], crop_hw)


def crop_window(array: np.ndarray, origin, size) -> np.ndarray:
    """``array[y0:y0 + h, x0:x0 + w]`` with zeros where the window leaves it (any origin).

    ``array (H, W, ...)``; ``origin (x0, y0)`` ints; ``size (h, w)``; returns ``(h, w, ...)``.
    """
    x0, y0 = (int(v) for v in origin)
    h, w = (int(v) for v in size)
    out = np.zeros((h, w) + array.shape[2:], dtype=array.dtype)
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + h, array.shape[0]), min(x0 + w, array.shape[1])
    if ye > ys and xe > xs:
        out[ys - y0:ye - y0, xs - x0:xe - x0] = array[ys:ye, xs:xe]
    return out


# --------------------------------------------------------------------------- folders


def detect_convention(root: str | os.PathLike) -> tuple[str, dict | None]:
    """``("dmnt", meta)`` if ``root/meta.json`` marks the folder as ours (``format ==
    DMNT_FORMAT``), else ``("nemo", None)``: then every annotation must be NeMo's (checked per
    file, ``ValueError`` for one that fits neither). An unreadable ``meta.json`` is an error."""
    path = Path(root) / "meta.json"
    if not path.exists():
        return "nemo", None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not readable JSON ({e}): cannot tell whose data {root} holds") from None
    if isinstance(meta, dict) and meta.get("format") == DMNT_FORMAT:
        return "dmnt", meta
    raise ValueError(f"{path} does not mark a dmnt dataset (format {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                     f"expected {DMNT_FORMAT!r}) and NeMo's folders have no meta.json: {root} fits neither convention")


def cad_is_z_up(root: str | os.PathLike) -> bool:
    """Whether the CAD files a folder goes with are stored z up (PASCAL3D+'s on-disk frame):
    always, except for our format-version-1 datasets (``meta.json`` without ``cad_frame``) and
    a ``meta.json`` of ours saying ``"cad_frame": "y_up"``. For every reader of ``CAD/``."""
    convention, meta = detect_convention(root)
    if convention != "dmnt":
        return True
    frame = meta.get("cad_frame", "y_up" if meta.get("version", 1) == 1 else None)
    if frame not in ("z_up", "y_up"):
        raise ValueError(f"{Path(root) / 'meta.json'}: 'cad_frame' must be 'z_up' or 'y_up', got {frame!r}")
    return frame == "z_up"


def level_folders(root: str | os.PathLike, category: str, level: int, occ_root=None) -> tuple[Path, Path, Path]:
    """``(images_dir, annotations_dir, list_path)`` of one category and level, in whichever
    layout ``root`` uses (ours ``L{k}/...`` first, then NeMo's ``<cat>`` / ``<cat>FGL{k}_BGL{k}``
    in ``root``, then for ``level >= 1`` in ``occ_root``, NeMo's separate OccludedPASCAL3D+ root)."""
    root = Path(root)
    ours = root / f"L{level}"
    if (ours / "annotations" / category).is_dir():
        return ours / "images" / category, ours / "annotations" / category, ours / "lists" / f"{category}.txt"
    name = category if level == 0 else f"{category}FGL{level}_BGL{level}"
    tried = [ours / "annotations" / category]
    for base in [root] + ([Path(occ_root)] if occ_root is not None and level > 0 else []):
        tried.append(base / "annotations" / name)
        if (base / "annotations" / name).is_dir():
            lst = base / "lists" / f"{name}.txt"
            return base / "images" / name, base / "annotations" / name, lst if lst.exists() else base / "lists" / name
    raise FileNotFoundError(f"no {category} level {level} data: none of {', '.join(map(str, tried))} exists")


def nemo_lists(folder: str | os.PathLike) -> dict:
    """NeMo's list folder ``lists/<cat>/``: ``{"subtypes": {name: [ids]}, "meshes": {NN: [ids]}}``
    (``meshNN.txt`` lists the images of CAD model ``NN``; any other ``*.txt`` is a subtype)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"list folder not found: {folder}")
    out = {"subtypes": {}, "meshes": {}}
    for f in sorted(folder.glob("*.txt")):
        stem = f.stem
        if stem.startswith("mesh") and stem[4:].isdigit():
            out["meshes"][int(stem[4:])] = read_list(f)
        else:
            out["subtypes"][stem] = read_list(f)
    return out


def _find_cad_root(root: Path) -> Path:
    """Where ``CAD/`` is: ``root``, its parent, or ``PASCAL3D+_release1.1`` next to it (first found;
    the parent if none, so that the error names a path)."""
    for base in (root, root.parent, root.parent / CAD_RELEASE_NAME):
        if (base / "CAD").is_dir():
            return base
    return root.parent



def _has_pose(ann_path: Path) -> bool:
    """Whether a NeMo annotation has a pose (``distance > 0``); a missing or unreadable file counts as
    posed here, so that reading the sample reports the real problem. Only the ``distance`` member is
    read: OccludedPASCAL3D+'s files also hold a photo-sized ``occ_mask`` (~0.2 MB, stored
    uncompressed), which indexing a whole level would otherwise read in full."""
    try:
        with zipfile.ZipFile(ann_path) as zf:
            names = set(zf.namelist())
            name = next((n for n in ("distance.npy", "distance") if n in names), None)
            if name is None:
                return True
            d = np.lib.format.read_array(io.BytesIO(zf.read(name)), allow_pickle=False)
        return float(np.asarray(d).reshape(-1)[0]) > 0
    except (*_ZIP_ERRORS, IndexError, TypeError):
        return True

class Pascal3D:
    """An index over a PASCAL3D+-layout folder (either layout, either convention), read lazily.

    Args:
        root: our dataset folder, or a NeMo root (``PASCAL3D_train_NeMo``, ``PASCAL3D_NeMo``);
            str or path.
        categories: sequence of names from ``CATEGORIES`` (not a bare str); default: every
            category present at all ``levels``.
        levels: sequence of occlusion levels from ``0, 1, 2, 3`` to include (0 = unoccluded),
            in this order.
        cad_root: folder holding ``CAD/``; default the first of ``root``, its parent and
            ``<parent>/PASCAL3D+_release1.1`` that has one.
        occ_root: NeMo's OccludedPASCAL3D+ root for levels 1–3 when ``root`` lacks them;
            default ``<parent>/PASCAL3D_OCC_NeMo`` if it exists.

    Attributes:
        convention: ``"dmnt"`` or ``"nemo"`` (``detect_convention``). cad_z_up: whether the CAD
            files are stored z up (converted on load). items: ``(category, level, id,
            images_dir, annotation_path)`` per sample. unposed: ``"L{level}/{category}/{id}"`` of
            NeMo-listed objects left out because their annotation has no pose (``distance <= 0``).

    Raises:
        TypeError / ValueError: a bad argument (named), or a folder that fits no convention.
        FileNotFoundError: missing folders or lists.
    """

    def __init__(self, root, categories=None, levels=(0,), cad_root=None, occ_root=None):
        self.root = _checks.path("root", root)
        self.levels = tuple(_checks.int_list("levels", levels, (0, 1, 2, 3), sort=False))
        if categories is not None:
            categories = _checks.names("categories", categories, CATEGORIES)
        cad_root = None if cad_root is None else _checks.path("cad_root", cad_root)
        occ_root = None if occ_root is None else _checks.path("occ_root", occ_root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
        self.convention, _ = detect_convention(self.root)
        self.cad_z_up = cad_is_z_up(self.root)
        if occ_root is None and (self.root.parent / OCC_ROOT_NAME).is_dir() and self.root.name != OCC_ROOT_NAME:
            occ_root = self.root.parent / OCC_ROOT_NAME
        self.occ_root = occ_root
        if categories is None:
            categories = [c for c in CATEGORIES if all(self._has(c, k) for k in self.levels)]
            if not categories:
                raise FileNotFoundError(f"no category has data at levels {self.levels} under {self.root}"
                                        + (f" or {self.occ_root}" if self.occ_root else ""))
        self.categories = tuple(categories)
        self.items: list[tuple[str, int, str, Path, Path]] = []
        self._list_cad: dict[int, int] = {}  # item -> the cad_index its meshNN.txt list gives
        # NeMo also crops objects whose annotation has no pose (distance <= 0; it resizes them by its
        # 224 / box fallback): they are left out of the samples, by id, so an evaluation never stops on one.
        self.unposed: list[str] = []
        for cat in self.categories:
            for level in self.levels:
                img_dir, ann_dir, lst = level_folders(self.root, cat, level, self.occ_root)
                if not lst.exists():
                    raise FileNotFoundError(f"list not found: {lst} (the samples in {ann_dir} are indexed by it, "
                                            "one id per line; nothing is guessed from the folder's contents)")
                by_mesh = nemo_lists(lst)["meshes"] if lst.is_dir() else {}
                cad_of = {sid: k for k, ids in by_mesh.items() for sid in ids}
                for sid in read_list(lst):
                    ann_path = ann_dir / f"{sid}.npz"
                    if self.convention == "nemo" and not _has_pose(ann_path):
                        self.unposed.append(f"L{level}/{cat}/{sid}")
                        continue
                    if sid in cad_of:
                        self._list_cad[len(self.items)] = cad_of[sid]
                    self.items.append((cat, level, sid, img_dir, ann_path))
        self.cad_root = Path(cad_root) if cad_root is not None else _find_cad_root(self.root)
        self._cad_cache: dict = {}

    def _has(self, category, level) -> bool:
        try:
            level_folders(self.root, category, level, self.occ_root)
            return True
        except FileNotFoundError:
            return False

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Sample:
        i = _checks.integer("index", i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        i %= len(self)
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
        if i in self._list_cad and self._list_cad[i] != ann["cad_index"]:
            raise ValueError(f"{ann_path}: cad_index {ann['cad_index']} but the id is listed in "
                             f"mesh{self._list_cad[i]:02d}.txt")
        focal, principal, bbox, occ, crop = ann["focal"], ann["principal"], ann["bbox"], ann["occluder_mask"], None
        if self.convention == "nemo":
            missing = [k for k in ("height", "width") if ann[k] is None]
            if missing:
                raise ValueError(
                    f"{ann_path} fits neither convention: {self.root} has no meta.json marking it as dmnt data "
                    f"(format {DMNT_FORMAT!r}), so its annotations must be NeMo's, but this one lacks NeMo's "
                    f"{missing} (the original photo's size, which places the crop)")
            crop = nemo_crop_camera(principal, ann["distance"], focal, (ann["height"], ann["width"]), image.shape[:2])
            crop["original_principal"] = principal
            focal, principal, bbox = crop["focal"], crop["principal"], None
            if occ is None and ann["occ_mask"] is not None:
                occ = nemo_crop_mask(ann["occ_mask"], crop, image.shape[:2])
        visible, ratio = ann["visible_mask"], ann["occlusion_ratio"]
        if occ is not ann["occluder_mask"] and ann["mask"] is not None:
            visible = ann["mask"] & ~occ
            ratio = 1.0 - visible.sum() / ann["mask"].sum() if ann["mask"].any() else 0.0
        return Sample(
            id=sid, category=cat, level=level, image=image, cad_index=ann["cad_index"],
            azimuth=ann["azimuth"], elevation=ann["elevation"], theta=ann["theta"], distance=ann["distance"],
            focal=focal, principal=principal, bbox=bbox, mask=ann["mask"],
            visible_mask=visible, occluder_mask=occ, occlusion_ratio=ratio,
            image_path=img_path, annotation_path=ann_path, convention=self.convention, crop=crop,
        )

    def cad_path(self, category: str, cad_index: int) -> Path:
        return self.cad_root / "CAD" / category / f"{int(cad_index):02d}.off"

    def cad(self, category: str, cad_index: int):
        """The CAD model ``(verts (V, 3) float32, faces (F, 3) int64)`` in our y-up frame (cached;
        converted from PASCAL3D+'s z-up files, ``mesh.read_off(..., z_up=True)``)."""
        key = (category, int(cad_index))
        if key not in self._cad_cache:
            self._cad_cache[key] = read_off(self.cad_path(category, cad_index), z_up=self.cad_z_up)
        return self._cad_cache[key]
