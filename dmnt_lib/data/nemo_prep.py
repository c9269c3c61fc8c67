"""NeMo's preparation of PASCAL3D+ / OccludedPASCAL3D+, emulated: for tests, and for users who
want to check a loader (ours or theirs) against files shaped exactly like NeMo's.

NeMo (Wang et al., ICLR 2021) does not use PASCAL3D+'s photos directly: its script
``code/dataset/CreatePascal3DNeMo.py`` (github.com/Angtian/NeMo, read at commit
``1ad41be15aff441c66770461dd7fd56c581b0ba6``) writes, per object,

1. ``rate = float(200 * distance / 1000)``; if that is ``<= 0``, ``224 / min(box side)``;
2. the photo resized to ``(int(H * rate), int(W * rate))`` (``cv2.resize``, bilinear);
3. a window of the category's ``out_shape`` centred at ``c = (principal * rate).astype(int)``:
   rows ``[c_y - h // 2, c_y - h // 2 + h)``, columns alike (BboxTools' ``box_by_shape``), the
   resized photo zero-padded first where the window leaves it; ``out_shape`` is
   ``top_50_size_dict[category]`` (``code/dataset/kp_list.py``, read at commit
   ``24f74fb53a5530ddba13f67ff39fb749d96bc4e3``) with each side rounded up to a
   multiple of 32 (``OUT_SHAPES``: car 256 x 672, aeroplane 320 x 1024, ...);
4. ``images/<cat><pendix>/<name>.JPEG`` (PIL, quality 75) and ``annotations/<cat><pendix>/<name>.npz``
   (``np.savez``) with ``name, box, box_ori, box_obj, cropped_kp_list, visible, occ_mask`` and
   PASCAL3D+'s ``azimuth, elevation, theta`` (radians), ``distance, focal, principal, viewport,
   height, width, cad_index, bbox`` (original-photo units), ``occ_mask`` being ``None`` for
   PASCAL3D+ and OccludedPASCAL3D+'s ``occluder_mask`` (original pixels) for ``pendix =
   FGL{k}_BGL{k}``;
5. ``lists/<cat><pendix>/<subtype>.txt`` and ``lists/<cat><pendix>/meshNN.txt`` (``name.JPEG`` per
   line; one ``meshNN`` file for every CAD model, empty ones included).

This module does the same from an ``OriginalRecord`` (a photo with its PASCAL3D+ annotation),
step by step as NeMo's code does (padding, then cropping), independently of the loader's closed
form (``pascal3d.nemo_crop_camera``), except for NeMo's own rate formula, which both share
(``pascal3d.nemo_resize_rate``). Two deliberate differences, neither geometric: the resize is
PIL's bilinear (``cv2`` is not in the stack; both map pixel centres the same way, PIL also
antialiases when shrinking), and keypoints are not emulated (``cropped_kp_list``, ``visible``
are empty). ``render_original`` makes synthetic photos for it: one of our CAD models at a
PASCAL3D+ camera (focal 1, viewport 3000, principal anywhere), bright on a dark background, so a
test can read the object's pixels back from the JPEG crop.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_bytes
from . import _checks
from .pascal3d import nemo_resize_rate, npz_bytes, write_list
from .shapes import CATEGORIES, NUM_CAD_MODELS, cad_model

__all__ = [
    "TOP_50_SIZE", "OUT_SHAPES", "out_shape", "PASCAL3D_FOCAL", "PASCAL3D_VIEWPORT", "OriginalRecord",
    "render_original", "prepare_record", "write_lists", "prepare_split", "pendix",
]

# NeMo's top_50_size_dict (code/dataset/kp_list.py, Angtian/NeMo): (height, width) before rounding.
TOP_50_SIZE = {
    "car": (256.0, 672.0), "aeroplane": (320.0, 1024.0), "bicycle": (600.0, 600.0), "boat": (455.0, 1120.0),
    "bottle": (512.0, 720.0), "bus": (320.0, 800.0), "chair": (530.0, 370.0), "diningtable": (320.0, 800.0),
    "motorbike": (512.0, 512.0), "sofa": (337.0, 720.0), "train": (240.0, 600.0), "tvmonitor": (468.0, 463.0),
}


def out_shape(category: str) -> tuple[int, int]:
    """NeMo's crop ``(h, w)`` of a category: ``top_50_size_dict`` rounded up to multiples of 32."""
    if category not in TOP_50_SIZE:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
    return tuple(int(((s - 1) // 32 + 1) * 32) for s in TOP_50_SIZE[category])


OUT_SHAPES = {c: out_shape(c) for c in CATEGORIES}
PASCAL3D_FOCAL, PASCAL3D_VIEWPORT = 1.0, 3000.0  # every PASCAL3D+ annotation's


def pendix(level: int) -> str:
    """NeMo's folder suffix of an occlusion level: ``""`` for 0, ``"FGL{k}_BGL{k}"`` for 1–3."""
    level = _checks.integer("level", level)
    if level not in (0, 1, 2, 3):
        raise ValueError(f"level must be 0, 1, 2 or 3, got {level}")
    return "" if level == 0 else f"FGL{level}_BGL{level}"


@dataclass
class OriginalRecord:
    """A PASCAL3D+ photo and its object annotation (one object), NeMo's input.

    Attributes:
        name: the image name (no extension). category: one of ``CATEGORIES``.
        image: ``(H, W, 3)`` uint8, the photo (for a level ≥ 1, the occluded photo).
        cad_index: 1-based. azimuth, elevation, theta: radians. distance: CAD units (``<= 0``
            gives NeMo's fallback rate).
        principal: ``(2,)`` float ``(x, y)``, original pixels, anywhere (even off the photo).
        bbox: ``(4,)`` float ``(x0, y0, x1, y1)``, original pixels (PASCAL3D+'s box).
        focal, viewport: PASCAL3D+'s (1 and 3000): the focal length is ``focal * viewport`` pixels.
        subtype: the PASCAL3D+ subtype the image is listed under.
        occluder_mask: ``(H, W)`` bool, OccludedPASCAL3D+'s mask, or None (level 0).
    """

    name: str
    category: str
    image: np.ndarray
    cad_index: int
    azimuth: float
    elevation: float
    theta: float
    distance: float
    principal: np.ndarray
    bbox: np.ndarray
    focal: float = PASCAL3D_FOCAL
    viewport: float = PASCAL3D_VIEWPORT
    subtype: str = "default"
    occluder_mask: np.ndarray | None = None


def render_original(category: str, cad_index: int, name: str, image_hw, azimuth: float, elevation: float,
                    theta: float, distance: float, principal, seed: int = 0, cad_seed: int = 0,
                    subtype: str = "default", viewport: float = PASCAL3D_VIEWPORT,
                    supersample: int = 1) -> tuple[OriginalRecord, np.ndarray]:
    """A synthetic PASCAL3D+ photo: CAD model ``cad_index`` of ``category`` (``shapes.cad_model``)
    at the given pose with PASCAL3D+'s camera (focal 1, viewport 3000, ``principal`` (x, y)
    anywhere), drawn bright (values 230–240) on a dark background (15–25).

    Args:
        image_hw: ``(H, W)`` of the photo. seed: the noise's seed.
        viewport: PASCAL3D+'s 3000; smaller values give small objects for quick tests.
        supersample: ``k`` renders ``k x k`` samples per pixel and blends by coverage (an
            anti-aliased photo, as a camera's is; the returned mask is coverage >= 1/2). Matters
            when NeMo enlarges the photo (rate > 1): 1-sample staircases would be enlarged too.

    Returns:
        The record (``bbox`` = the object's box in the photo, pixel edges) and its amodal mask
        ``(H, W)`` bool in the photo (clipped by the frame, as a photo is).
    """
    from .synthetic import render_model  # the generator's shading rasterizer (bbox window, culled back faces)

    h, w = _checks.image_hw("image_hw", image_hw, minimum=1, allow_int=False)
    model = cad_model(category, cad_index, cad_seed)
    rng = np.random.default_rng(np.random.SeedSequence(_checks.seed("seed", seed)))
    pose = {"azimuth": azimuth, "elevation": elevation, "theta": theta, "distance": distance,
            "focal": PASCAL3D_FOCAL, "viewport": _checks.positive("viewport", viewport), "principal": np.asarray(principal, dtype=np.float64)}
    k = _checks.integer("supersample", supersample, 1)
    # k x k samples per pixel: the same camera in a k times finer pixel grid (pixel edges at 0)
    fine = {**pose, "viewport": pose["viewport"] * k, "principal": pose["principal"] * k}
    _, hit = render_model(model, fine, (h * k, w * k), rng)
    cover = hit.reshape(h, k, w, k).mean((1, 3))
    if not cover.any():
        raise ValueError(f"{category} model {cad_index} is not in the {h}x{w} photo at principal {list(principal)}")
    # faint noise only: strong per-pixel noise would make JPEG ring along the object's outline
    dark, bright = rng.integers(15, 26, (h, w, 3)), rng.integers(230, 241, (h, w, 3))
    image = np.round(dark + cover[..., None] * (bright - dark)).astype(np.uint8)
    mask = cover >= 0.5
    ys, xs = np.nonzero(cover)
    bbox = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
    record = OriginalRecord(name, category, image, int(cad_index), float(azimuth), float(elevation), float(theta),
                            float(distance), np.asarray(principal, dtype=np.float64).copy(), bbox,
                            viewport=float(viewport), subtype=subtype)
    return record, mask


def _bbt(y0, y1, x0, x1, boundary) -> np.ndarray:
    """A box in BboxTools' ``numpy()`` form: ``[y0, y1, x0, x1, H, W]`` float32."""
    return np.array([y0, y1, x0, x1, boundary[0], boundary[1]], dtype=np.float32)


def prepare_record(record: OriginalRecord, out_root, level: int = 0, crop_hw=None) -> dict:
    """NeMo's steps 1–4 for one record: write its JPEG crop and ``.npz`` under ``out_root``.

    Args:
        record: the photo and annotation. out_root: the split folder (``PASCAL3D_NeMo``, ...).
        level: 0 (PASCAL3D+) or 1–3 (OccludedPASCAL3D+: ``record.occluder_mask`` is required and
            stored as ``occ_mask``). crop_hw: ``(h, w)``; default ``out_shape(record.category)``.

    Returns:
        ``{"image_path", "annotation_path", "rate", "resized_hw": (rh, rw), "padding": ((top,
        bottom), (left, right)), "origin": (x, y), "valid": (h, w) bool}``: ``origin`` is the
        crop's top-left corner in the resized, unpadded photo; ``valid`` marks the crop's pixels
        that come from the photo (the rest is NeMo's zero padding).
    """
    from PIL import Image

    if not isinstance(record, OriginalRecord):
        raise TypeError(f"record must be an OriginalRecord, got {type(record).__name__}")
    sfx = pendix(level)
    if (level > 0) != (record.occluder_mask is not None):
        raise ValueError(f"record {record.name}: level {level} needs "
                         + ("an occluder_mask (OccludedPASCAL3D+)" if level else "no occluder_mask"))
    h, w = out_shape(record.category) if crop_hw is None else _checks.image_hw("crop_hw", crop_hw, allow_int=False)
    img = np.asarray(record.image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"record.image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    h0, w0 = img.shape[:2]
    # 1. the rate; box as BboxTools holds it (ints, truncated)
    bx0, by0, bx1, by1 = (int(v) for v in np.asarray(record.bbox, dtype=np.float64).astype(np.int32))
    rate = nemo_resize_rate(record.distance, record.bbox)
    box_ori = _bbt(max(by0, 0), min(by1, h0), max(bx0, 0), min(bx1, w0), (h0, w0))
    box = [int(by0 * rate), int(by1 * rate), int(bx0 * rate), int(bx1 * rate)]  # Bbox2D * rate
    # 2. resize
    rw, rh = int(w0 * rate), int(h0 * rate)
    img = np.asarray(Image.fromarray(img).resize((rw, rh), Image.BILINEAR))
    valid = np.ones((rh, rw), bool)
    # 3. centre, pad, crop (NeMo's code, step by step)
    cy, cx = (np.asarray(record.principal, dtype=np.float64)[::-1] * rate).astype(int)
    top, left = int(cy) - h // 2, int(cx) - w // 2
    pad = ((max(h // 2 - cy, 0), max(h // 2 + cy - rh, 0)), (max(w // 2 - cx, 0), max(w // 2 + cx - rw, 0)))
    pad = tuple((int(a), int(b)) for a, b in pad)
    if any(v > 0 for p in pad for v in p):
        img = np.pad(img, pad + ((0, 0),), mode="constant")
        valid = np.pad(valid, pad, mode="constant")
        box = [box[0] + pad[0][0], box[1] + pad[0][0], box[2] + pad[1][0], box[3] + pad[1][0]]
        top, left = top + pad[0][0], left + pad[1][0]
    y0, y1 = max(top, 0), min(top + h, img.shape[0])  # box1.set_boundary(img.shape)
    x0, x1 = max(left, 0), min(left + w, img.shape[1])
    crop, valid = img[y0:y1, x0:x1], valid[y0:y1, x0:x1]
    if crop.shape[:2] != (h, w):  # cannot happen for even sides (NeMo's are multiples of 32)
        raise ValueError(f"crop of {record.name} is {crop.shape[:2]}, expected {(h, w)} (odd crop sides?)")
    box_obj = _bbt(min(max(box[0] - y0, 0), h), min(max(box[1] - y0, 0), h),
                   min(max(box[2] - x0, 0), w), min(max(box[3] - x0, 0), w), (h, w))
    # 4. files
    occ = None if record.occluder_mask is None else np.asarray(record.occluder_mask, dtype=bool)
    if occ is not None and occ.shape != (h0, w0):
        raise ValueError(f"record {record.name}: occluder_mask must be {(h0, w0)}, got {occ.shape}")
    fields = {
        "name": record.name, "box": _bbt(y0, y1, x0, x1, img.shape[:2]), "box_ori": box_ori, "box_obj": box_obj,
        "cropped_kp_list": [], "visible": [], "occ_mask": occ,
        "azimuth": float(record.azimuth), "elevation": float(record.elevation), "distance": float(record.distance),
        "focal": float(record.focal), "theta": float(record.theta),
        "principal": np.asarray(record.principal, dtype=np.float64), "viewport": float(record.viewport),
        "height": int(h0), "width": int(w0), "cad_index": int(record.cad_index),
        "bbox": np.asarray(record.bbox, dtype=np.float64),
    }
    folder = f"{record.category}{sfx}"
    image_path = Path(out_root) / "images" / folder / f"{record.name}.JPEG"
    ann_path = Path(out_root) / "annotations" / folder / f"{record.name}.npz"
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(crop)).save(buf, format="JPEG")  # PIL's default quality, 75, as NeMo
    atomic_write_bytes(image_path, buf.getvalue())
    atomic_write_bytes(ann_path, npz_bytes(fields, allow_pickle=True))  # occ_mask=None pickles, as np.savez does
    return {"image_path": image_path, "annotation_path": ann_path, "rate": rate, "resized_hw": (rh, rw),
            "padding": pad, "origin": (x0 - pad[1][0], y0 - pad[0][0]), "valid": valid}


def write_lists(out_root, category: str, records, level: int = 0) -> list[Path]:
    """NeMo's step 5: ``lists/<cat><pendix>/<subtype>.txt`` and ``meshNN.txt`` (every model).

    Args:
        records: the category's ``OriginalRecord`` s, in list order.
    """
    folder = Path(out_root) / "lists" / f"{category}{pendix(level)}"
    by_subtype, by_mesh = defaultdict(list), defaultdict(list)
    for r in records:
        if r.category != category:
            raise ValueError(f"record {r.name} is a {r.category}, not a {category}")
        by_subtype[r.subtype].append(f"{r.name}.JPEG")
        by_mesh[r.cad_index].append(f"{r.name}.JPEG")
    paths = []
    for subtype, names in by_subtype.items():
        write_list(folder / f"{subtype}.txt", names)
        paths.append(folder / f"{subtype}.txt")
    for k in range(1, NUM_CAD_MODELS[category] + 1):
        write_list(folder / f"mesh{k:02d}.txt", by_mesh.get(k, []))
        paths.append(folder / f"mesh{k:02d}.txt")
    return paths


def prepare_split(records, out_root, level: int = 0, crop_hw=None, progress: bool = False) -> list[dict]:
    """``prepare_record`` for every record, then ``write_lists`` per category.

    Args:
        records: sequence of ``OriginalRecord``. out_root: the split folder (str or path).
        level: 0–3 (see ``prepare_record``). crop_hw: None (NeMo's per-category shapes) or ``(h, w)``.
        progress: a tqdm bar.

    Returns:
        ``prepare_record``'s dicts, in order.
    """
    from tqdm.auto import tqdm

    out_root = _checks.path("out_root", out_root)
    records = list(records)
    out = [prepare_record(r, out_root, level, crop_hw) for r in tqdm(records, desc="NeMo crops", disable=not progress)]
    by_cat = defaultdict(list)
    for r in records:
        by_cat[r.category].append(r)
    for cat, rs in by_cat.items():
        write_lists(out_root, cat, rs, level)
    return out
