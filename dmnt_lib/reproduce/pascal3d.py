"""``reproduce --pascal3d ROOT``: the paper's experiment on NeMo-prepared PASCAL3D+ and OccludedPASCAL3D+.

``ROOT`` is the folder NeMo's ``PrepareData.sh`` leaves (docs/pascal3d.md), found as the loader
(``data.pascal3d``) finds it: the CAD models in ``ROOT/PASCAL3D+_release1.1/CAD`` (or ``ROOT/CAD``),
levels 1-3 in ``ROOT/PASCAL3D_OCC_NeMo`` (or in the L0 test root itself)::

    ROOT/PASCAL3D+_release1.1/CAD/<category>/NN.off
    ROOT/PASCAL3D_train_NeMo/{images,annotations,lists}/<category>/...               training set, L0
    ROOT/PASCAL3D_NeMo/{images,annotations,lists}/<category>/...                     test set, L0
    ROOT/PASCAL3D_OCC_NeMo/{images,annotations,lists}/<category>FGL{k}_BGL{k}/...    test set, L1-L3

``survey`` checks all of it before any stage runs (every problem named with its path and what was
expected: ``Pascal3DLayoutError``) and counts what it found (``--dry-run`` prints it). The stages
are the synthetic run's (``stages.build_stages``), with the two data stages *importing* instead of
generating:

1. ``data-train``: the training crops of ``PASCAL3D_train_NeMo`` -> ``OUT/data/train``;
2. ``data-test``: ``PASCAL3D_NeMo`` (L0) and ``PASCAL3D_OCC_NeMo`` (L1-L3) -> ``OUT/data/test``;
3. ``deform`` on ``ROOT``'s CAD models; 4-8. ``train``, ``baseline``, ``evaluate-dmnt``,
   ``evaluate-baseline``, ``figures``, the same commands as the synthetic run.

**Import.** NeMo's crops have one size per category (256 x 672 for car, 544 x 384 for chair, ...)
and no masks. ``import_nemo`` writes each selected sample in our own format (``meta.json`` with
``format == DMNT_FORMAT``) at **one common square image size** ``S`` (the preset's ``image_size``):
exactly what ``PoseDataset(root, image_size=(S, S))`` gives for it, i.e. the crop scaled by
``min(S / h, S / w)`` and centred on a zero canvas, focal length and principal point following;
its amodal mask rendered from its CAD model at the annotated pose (appendix A.4: the ground truth
of the baseline's masks, and its boxes through them, and of the evaluation's mIoU); levels 1-3 with
OccludedPASCAL3D+'s occluder mask cut like the image. The CAD files are copied beside (z up, as
PASCAL3D+ stores them). So both methods train on the same images at the same size, and every
later stage reads a folder of the synthetic run's format, with nothing rendered twice.

Which samples: objects without a pose (NeMo's ``distance <= 0``) are left out (as the loader does)
and so is an object whose rendered mask is empty (none in a correct download); of the rest, up to
``per_category`` per category and level, the first in the order of ``sha256(f"{seed}:{id}")`` (the
same objects at every level where they exist), kept in list order; ``None``: all. An interrupted
import resumes (a sample is complete once its annotation is written; the job is recorded in a
marker file and a different job starts the folder afresh).

**Configs.** A data stage's config holds its source's listed counts and a digest of its lists (not
the path: a moved download is the same data), a deform stage's a digest of the CAD files: a changed
download is a changed config, refused like any other (``--redo``).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.pascal3d import CAD_RELEASE_NAME, DMNT_FORMAT, OCC_ROOT_NAME, _find_cad_root, detect_convention, read_list
from ..data.shapes import CATEGORIES
from ..fileio import atomic_write_bytes, atomic_write_text
from .pipeline import Stage
from .stages import _FIELDS, _positive_int, _resume, check_preset, cli_call

__all__ = ["PASCAL3D_PRESETS", "pascal3d_preset", "check_pascal3d_preset", "Pascal3DLayoutError", "Found", "survey",
           "import_nemo", "build_pascal3d_stages", "TRAIN_ROOT_NAME", "TEST_ROOT_NAME", "LAYOUT"]

TRAIN_ROOT_NAME = "PASCAL3D_train_NeMo"
TEST_ROOT_NAME = "PASCAL3D_NeMo"
MARKER = ".dmnt-importing.json"  # the import job, present while an import runs (or after it was interrupted)
_MANAGED = ("CAD", "L0", "L1", "L2", "L3", "meta.json", MARKER)

LAYOUT = f"""  ROOT/{CAD_RELEASE_NAME}/CAD/<category>/NN.off                                  CAD models
  ROOT/{TRAIN_ROOT_NAME}/{{images,annotations,lists}}/<category>/...              training set, L0
  ROOT/{TEST_ROOT_NAME}/{{images,annotations,lists}}/<category>/...                    test set, L0
  ROOT/{OCC_ROOT_NAME}/{{images,annotations,lists}}/<category>FGL{{k}}_BGL{{k}}/...   test set, L1-L3"""

#: ``pascal3d``: the paper's experiment sized for one GPU (``--device cuda``); ``pascal3d-cpu``: a subset
#: for 2 CPU cores; ``pascal3d-tiny``: the test suite's. The reasons and the expected times: docs/pascal3d.md.
PASCAL3D_PRESETS: dict[str, dict] = {
    "pascal3d": {
        "categories": list(CATEGORIES), "image_size": 256, "weights": None,
        # every training object; 100 test objects per category and level (4800 images: DMNT's
        # render-and-compare runs on the CPU, ~0.5 s per image at these 32 x 32 feature maps)
        "train_data": {"per_category": None, "seed": 0}, "test_data": {"per_category": 100, "seed": 0},
        "deform": {"quick": False, "seed": 0},
        # ResNet-50 at stride 8, NeMo's backbone; 256 / 8 = 32 x 32 features, where the measured texture
        # size is 64 (the full synthetic run's); 20 epochs, the training default (docs/design.md §8)
        "train": {"quick": False, "epochs": 20, "batch_size": 16,
                  "set": {"arch": "resnet50", "stride": 8, "texture_size": 64, "val_per_category": 20}},
        # torchvision's Mask R-CNN ResNet-50-FPN as it comes (stock sizes), its usual 12 epochs; no
        # augmentation, as DMNT (the fair comparison of the full synthetic run; docs/experiments.md T3-T4)
        "baseline": {"quick": False, "epochs": 12, "batch_size": 8, "backbone": "resnet50", "stock": True,
                     "augment": False},
        "evaluate": {"levels": [0, 1, 2, 3], "center": "known", "quick": False},
    },
    "pascal3d-cpu": {
        # four categories of different shapes (the deformation demo's) at the synthetic full run's size
        # and networks, whose throughputs were measured on 2 cores
        "categories": ["aeroplane", "bottle", "car", "chair"], "image_size": 128, "weights": None,
        "train_data": {"per_category": 300, "seed": 0}, "test_data": {"per_category": 25, "seed": 0},
        "deform": {"quick": True, "seed": 0},
        "train": {"quick": False, "epochs": 10, "batch_size": 16, "set": {"texture_size": 64, "val_per_category": 20}},
        "baseline": {"quick": False, "epochs": 7, "augment": False},
        "evaluate": {"levels": [0, 1, 2, 3], "center": "known", "quick": False},
    },
    "pascal3d-tiny": {
        # whatever categories the tree holds (null); what the test suite runs
        "categories": None, "image_size": 64, "weights": None,
        "train_data": {"per_category": 4, "seed": 0}, "test_data": {"per_category": 1, "seed": 0},
        "deform": {"quick": True, "steps": 2, "seed": 0},
        "train": {"quick": True, "epochs": 1, "batch_size": 4, "set": {"val_per_category": 1}},
        "baseline": {"quick": True, "epochs": 1, "augment": False},
        "evaluate": {"levels": [0, 1, 2, 3], "center": "known", "quick": True},
    },
}

_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnext50_32x4d")


def _count_or_all(v) -> bool:
    return v is None or _positive_int(v)


#: Every field of a PASCAL3D+ preset: ``(check, what it must be)`` (``stages._FIELDS``' form).
_P3D_FIELDS = {
    "categories": (lambda v: v is None or _FIELDS["categories"][0](v),
                   f"null (every category the download holds) or {_FIELDS['categories'][1]}"),
    "image_size": (lambda v: _positive_int(v) and v >= 32, "an integer >= 32 (the side of the common square image)"),
    "weights": (lambda v: v is None or (isinstance(v, str) and bool(v)),
                "null (from scratch) or ImageNet weights for both backbones: a torchvision weights name or a state-dict file"),
    "train_data.per_category": (_count_or_all, "null (all) or a positive integer"),
    "train_data.seed": _FIELDS["train_data.seed"],
    "test_data.per_category": (_count_or_all, "null (all) or a positive integer"),
    "test_data.seed": _FIELDS["test_data.seed"],
    **{k: v for k, v in _FIELDS.items() if k.split(".")[0] in ("deform", "train")},
    "baseline.quick": _FIELDS["baseline.quick"],
    "baseline.epochs": _FIELDS["baseline.epochs"],
    "baseline.augment": _FIELDS["baseline.augment"],
    "baseline.batch_size": (_positive_int, "a positive integer"),
    "baseline.backbone": (lambda v: v in _BACKBONES, f"one of {list(_BACKBONES)}"),
    "baseline.stock": (lambda v: isinstance(v, bool), "true or false"),
    "evaluate.levels": _FIELDS["evaluate.levels"],
    "evaluate.center": _FIELDS["evaluate.center"],
    "evaluate.quick": _FIELDS["evaluate.quick"],
}
_P3D_REQUIRED = ["categories", "image_size", "train_data.per_category", "train_data.seed", "test_data.per_category",
                 "test_data.seed", "deform.seed", "evaluate.levels", "evaluate.center"]


def pascal3d_preset(name: str) -> dict:
    """A deep copy of ``PASCAL3D_PRESETS[name]``."""
    if name not in PASCAL3D_PRESETS:
        raise ValueError(f"a PASCAL3D+ preset must be one of {sorted(PASCAL3D_PRESETS)}, got {name!r}")
    return copy.deepcopy(PASCAL3D_PRESETS[name])


def check_pascal3d_preset(config: dict) -> dict:
    """``config`` itself when it is a valid PASCAL3D+ preset (``stages.check_preset``'s rules with
    this module's fields), else a ``ValueError`` naming the field as ``--set KEY`` would."""
    check_preset(config, fields=_P3D_FIELDS, required=_P3D_REQUIRED)
    stride = config["train"].get("set", {}).get("stride", 4)
    try:
        stride = int(stride)
    except (TypeError, ValueError):
        raise ValueError(f"--set train.set: stride must be an integer, got {stride!r}") from None
    if config["image_size"] % stride:
        raise ValueError(f"--set image_size: {config['image_size']} is not divisible by DMNT's feature stride {stride} "
                         "(train.set.stride)")
    return config


# --------------------------------------------------------------------------- the survey


class Pascal3DLayoutError(ValueError):
    """The folder given to ``--pascal3d`` is not a complete NeMo-prepared PASCAL3D+ (the message lists
    every problem found, each with its path and what was expected)."""


def _pendix(level: int) -> str:
    return "" if level == 0 else f"FGL{level}_BGL{level}"


@dataclass
class Found:
    """What ``survey`` found under ``root``.

    Attributes:
        root: the folder holding the splits. cad_base: the folder holding ``CAD/``.
        sources: ``{"train": path, "L0": path, "L1": path, ...}``, the split root of each part.
        categories: the categories used (in ``CATEGORIES`` order). levels: the test levels.
        listed: ``{part: {category: ids listed}}``. digests: ``{part: {category: sha256 of the ids}}``.
        cad_models: ``{category: ["01", ...]}``. cad_digest: sha256 of the categories' CAD files.
        notes: things worth saying that are not errors.
    """

    root: Path
    cad_base: Path
    sources: dict
    categories: tuple
    levels: tuple
    listed: dict = field(default_factory=dict)
    digests: dict = field(default_factory=dict)
    cad_models: dict = field(default_factory=dict)
    cad_digest: str = ""
    notes: list = field(default_factory=list)

    def source_config(self, parts) -> dict:
        """The part of a data stage's config that describes its source: listed counts and list digests."""
        return {p: {"listed": dict(self.listed[p]), "lists": hashlib.sha256(
            json.dumps(self.digests[p], sort_keys=True).encode()).hexdigest()[:16]} for p in parts}

    def describe(self) -> str:
        """The ``--dry-run`` report: CAD models, categories and listed images per part."""
        lines = [f"PASCAL3D+ (NeMo's layout) in {self.root}:", *[f"  note: {n}" for n in self.notes]]
        cad = ", ".join(f"{c} {len(self.cad_models[c])}" for c in self.categories)
        lines.append(f"  {'CAD models':<10} {self.cad_base / 'CAD'}: {cad} ({sum(len(v) for v in self.cad_models.values())} models)")
        for part, path in self.sources.items():
            counts = ", ".join(f"{c} {self.listed[part][c]}" for c in self.categories)
            name = "train L0" if part == "train" else f"test {part}"
            lines.append(f"  {name:<10} {path}: {counts} ({sum(self.listed[part].values())} images listed)")
        return "\n".join(lines)


def _members(path: Path) -> set:
    """The field names of an ``.npz`` (from its directory only; nothing is decoded)."""
    with zipfile.ZipFile(path) as zf:
        return {n[:-4] if n.endswith(".npy") else n for n in zf.namelist()}


def _member_int(path: Path, key: str) -> int | None:
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            name = next((n for n in (f"{key}.npy", key) if n in names), None)
            if name is None:
                return None
            a = np.lib.format.read_array(io.BytesIO(zf.read(name)), allow_pickle=False)
        return int(np.asarray(a).reshape(-1)[0])
    except Exception:  # noqa: BLE001 -- any unreadable field: the loader will name it when it reads the file
        return None


_IMAGE_SUFFIXES = (".png", ".jpeg", ".jpg")


def survey(root, categories=None, levels=(0, 1, 2, 3)) -> Found:
    """Check the folder ``--pascal3d ROOT`` names and count what it holds; nothing is written.

    Args:
        root: the folder holding NeMo's split folders (a split folder itself is taken to mean its parent).
        categories: the categories to use; None: every category of ``PASCAL3D_train_NeMo/annotations``.
        levels: the test levels needed (0: ``PASCAL3D_NeMo``; 1-3: ``PASCAL3D_OCC_NeMo``).

    Returns:
        A ``Found``.

    Raises:
        Pascal3DLayoutError: every problem found (a missing folder, a missing level, an empty list,
            listed files that are missing, annotations of the wrong convention, missing CAD models),
            one line each naming the path and what was expected.
    """
    levels = tuple(int(k) for k in levels)
    root = Path(root)
    notes: list[str] = []
    if not root.is_dir():
        raise Pascal3DLayoutError(f"--pascal3d {root}: no such folder; expected the folder that holds NeMo's prepared "
                                  f"PASCAL3D+ side by side, as NeMo's PrepareData.sh leaves it:\n{LAYOUT}")
    if root.name in (TRAIN_ROOT_NAME, TEST_ROOT_NAME, OCC_ROOT_NAME):
        notes.append(f"{root} is one of NeMo's split folders: using the folder that holds it, {root.parent}")
        root = root.parent
    problems: list[str] = []

    def split_ok(path: Path, what: str) -> bool:
        if not path.is_dir():
            problems.append(f"missing folder {path}: {what}")
            return False
        try:
            convention, _ = detect_convention(path)
        except ValueError as e:
            problems.append(f"wrong convention: {e}")
            return False
        if convention == "dmnt":
            problems.append(f"wrong convention: {path} holds a dataset of our own format (its meta.json says "
                            f"{DMNT_FORMAT!r}), not NeMo's output; expected {what}")
            return False
        bad = [sub for sub in ("annotations", "images", "lists") if not (path / sub).is_dir()]
        if bad:
            problems.append(f"missing folder {path / bad[0]}: expected {path}/{{annotations,images,lists}}/<category>/ "
                            f"as NeMo's CreatePascal3DNeMo.py writes them ({what})")
            return False
        return True

    train = root / TRAIN_ROOT_NAME
    sources = {}
    if split_ok(train, "PASCAL3D+'s training set prepared by NeMo's CreatePascal3DNeMo.py"):
        sources["train"] = train
    if 0 in levels:
        test = root / TEST_ROOT_NAME
        if split_ok(test, "PASCAL3D+'s test set (L0) prepared by NeMo's CreatePascal3DNeMo.py; or leave L0 out "
                          "with --set evaluate.levels=[1,2,3]"):
            sources["L0"] = test
    occ_levels = [k for k in levels if k > 0]
    if occ_levels:
        occ = root / OCC_ROOT_NAME
        in_test = root / TEST_ROOT_NAME / "annotations"
        if not occ.is_dir() and in_test.is_dir() and any(p.name.endswith(_pendix(k)) for p in in_test.iterdir()
                                                         for k in occ_levels):
            occ = root / TEST_ROOT_NAME  # the loader's other place for levels 1-3: the L0 root itself
        if split_ok(occ, f"OccludedPASCAL3D+ (levels {', '.join(map(str, occ_levels))}) prepared by NeMo's "
                         "CreatePascal3DNeMo.py; or evaluate L0 only with --set evaluate.levels=[0]"):
            for k in occ_levels:
                sources[f"L{k}"] = occ

    if categories is None and "train" in sources:
        categories = [c for c in CATEGORIES if (train / "annotations" / c).is_dir()]
        if not categories:
            problems.append(f"no category folder in {train / 'annotations'}: expected one or more of {list(CATEGORIES)}")
    categories = tuple(c for c in CATEGORIES if c in (categories or ()))

    listed: dict = {}
    digests: dict = {}
    first_ids: dict = {}
    for part, base in sources.items():
        level = 0 if part == "train" else int(part[1:])
        annotations = base / "annotations"
        if level > 0 and not any((annotations / f"{c}{_pendix(level)}").is_dir() for c in CATEGORIES):
            have = sorted({k for k in (1, 2, 3) for c in CATEGORIES if (annotations / f"{c}{_pendix(k)}").is_dir()})
            problems.append(f"missing level {level}: {annotations} has no <category>{_pendix(level)} folder (levels found "
                            f"there: {have or 'none'}); expected OccludedPASCAL3D+ level {level} prepared by NeMo's "
                            f"CreatePascal3DNeMo.py, or leave it out with --set evaluate.levels="
                            f"[{','.join(str(k) for k in levels if k != level)}]")
            continue
        listed[part], digests[part] = {}, {}
        for cat in categories:
            name = f"{cat}{_pendix(level)}"
            ann_dir, img_dir = annotations / name, base / "images" / name
            lst = base / "lists" / name
            lst = lst if lst.is_dir() or not (base / "lists" / f"{name}.txt").is_file() else base / "lists" / f"{name}.txt"
            where = f"{cat} at level {level}" + (" (training set)" if part == "train" else "")
            missing = [p for p in (ann_dir, img_dir) if not p.is_dir()] + ([] if lst.exists() else [lst])
            if missing:
                hint = (" (to run on the categories present, --set categories=null)"
                        if part == "train" and not ann_dir.is_dir() else "")
                problems.append(f"missing folder {missing[0]}: {where}; expected NeMo's annotations/{name}/, images/{name}/ "
                                f"and lists/{name}/ in {base}{hint}")
                continue
            try:
                ids = read_list(lst)
            except FileNotFoundError:
                ids = []
            if not ids:
                problems.append(f"empty list: {lst} names no image ({where}); expected one image name per line in "
                                f"lists/{name}/*.txt, as NeMo's CreatePascal3DNeMo.py writes them")
                continue
            have_ann = {e.name[:-4] for e in os.scandir(ann_dir) if e.name.endswith(".npz")}
            have_img = {os.path.splitext(e.name)[0] for e in os.scandir(img_dir)
                        if os.path.splitext(e.name)[1].lower() in _IMAGE_SUFFIXES}
            for kind, have, folder in (("annotation", have_ann, ann_dir), ("image", have_img, img_dir)):
                gone = [i for i in ids if i not in have]
                if gone:
                    problems.append(f"{len(gone)} of the {len(ids)} ids listed in {lst} have no {kind} file in {folder} "
                                    f"(first: {', '.join(gone[:3])}): an incomplete download or preparation")
            if any(i not in have_ann or i not in have_img for i in ids):
                continue
            listed[part][cat] = len(ids)
            digests[part][cat] = hashlib.sha256("\n".join(ids).encode()).hexdigest()
            first = ann_dir / f"{ids[0]}.npz"
            first_ids[(part, cat)] = first
            try:
                fields = _members(first)
            except (OSError, zipfile.BadZipFile) as e:
                problems.append(f"unreadable annotation {first}: {type(e).__name__}: {e}; expected a NeMo .npz")
                continue
            lacking = [k for k in ("height", "width", "cad_index", "azimuth", "distance", "principal") if k not in fields]
            if lacking:
                problems.append(f"wrong convention: {first} lacks {lacking}; expected an annotation written by NeMo's "
                                "CreatePascal3DNeMo.py (PASCAL3D+'s pose, principal point in original-photo pixels, "
                                "the photo's height and width)")
            elif level > 0 and "occ_mask" not in fields:
                problems.append(f"wrong convention: {first} (level {level}) has no 'occ_mask'; expected OccludedPASCAL3D+'s "
                                "occluder mask in original-photo pixels, as NeMo's CreatePascal3DNeMo.py stores it")

    cad_base = _find_cad_root(train)
    cad_models: dict = {}
    h = hashlib.sha256()
    if not (cad_base / "CAD").is_dir():
        problems.append(f"missing folder {root / CAD_RELEASE_NAME / 'CAD'}: PASCAL3D+ release 1.1's CAD models, "
                        "CAD/<category>/NN.off (the loader also looks in ROOT/CAD)")
    else:
        for cat in categories:
            folder = cad_base / "CAD" / cat
            offs = sorted(folder.glob("*.off")) if folder.is_dir() else []
            if not offs:
                problems.append(f"missing CAD models: {folder} holds no NN.off file; expected PASCAL3D+'s CAD/{cat}/01.off, ...")
                continue
            cad_models[cat] = [p.stem for p in offs]
            for p in offs:
                h.update(f"{cat}/{p.name}\0".encode() + p.read_bytes())
        for (part, cat), first in first_ids.items():
            idx = _member_int(first, "cad_index")
            if cat in cad_models and idx is not None and f"{idx:02d}" not in cad_models[cat]:
                problems.append(f"missing CAD model {cad_base / 'CAD' / cat / f'{idx:02d}.off'}: {first} has cad_index "
                                f"{idx}; {cad_base / 'CAD' / cat} holds {cad_models[cat]}")
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise Pascal3DLayoutError(
            f"{root} is not a complete NeMo-prepared PASCAL3D+ ({len(problems)} problem{'s' * (len(problems) > 1)}); "
            "nothing was run:\n" + "\n".join(f"  - {p}" for p in problems[:20]) + more +
            f"\nExpected (docs/pascal3d.md):\n{LAYOUT}")
    return Found(root, cad_base, sources, categories, levels, listed, digests, cad_models, h.hexdigest()[:16], notes)


# --------------------------------------------------------------------------- the import


def _rank(seed: int, sid: str) -> str:
    return hashlib.sha256(f"{seed}:{sid}".encode()).hexdigest()


def _claim(out: Path, job: dict) -> dict | None:
    """Make ``out`` hold this import job: resume it (same job in the marker), start afresh (another job,
    or another finished import: only our own files are ever deleted), or refuse a folder that is not
    ours. Returns the ``meta.json`` dict when ``out`` already holds this very import, finished."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    marker = out / MARKER
    if names:
        try:
            old = json.loads(marker.read_text()) if marker.is_file() else None
        except (OSError, ValueError):
            old = {}
        try:
            meta = json.loads((out / "meta.json").read_text())
        except (OSError, ValueError):
            meta = None
        if old is None and isinstance(meta, dict) and meta.get("job") == job:
            return meta  # this very import, finished (its stage's manifest was lost): nothing to do
        ours = old is not None or (isinstance(meta, dict) and meta.get("format") == DMNT_FORMAT)
        foreign = [n for n in names if n not in _MANAGED and not (n.startswith(".") and n.endswith(".tmp"))]
        if not ours or foreign:
            raise FileExistsError(f"{out} holds {foreign[:5] or names[:5]}, which is not an import of ours; it is never "
                                  "deleted: move it or choose another --out")
        if old == job:
            return None  # resume
        for n in names:
            p = out / n
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    atomic_write_text(marker, json.dumps(job, indent=1, sort_keys=True) + "\n")
    return None


def import_nemo(out, found: Found, parts, image_size: int, per_category=None, seed: int = 0, echo=print) -> dict:
    """Write the ``parts`` of ``found`` (``"train"`` or ``"L0"``-``"L3"``) into ``out`` in our format (module
    docstring): ``L{k}/images/<cat>/<id>.png``, ``L{k}/annotations/<cat>/<id>.npz`` (pose, camera of the
    ``image_size`` x ``image_size`` image, amodal, visible and occluder masks), ``L{k}/lists/<cat>.txt``,
    ``CAD/<cat>/NN.off`` and ``meta.json`` (written last). ``echo`` gets one line per category and level.

    Returns:
        The ``meta.json`` dict.
    """
    import torch

    from ..data import PoseDataset
    from ..data.pascal3d import write_list, write_sample

    out = Path(out)
    size = int(image_size)
    parts = list(parts)
    levels = [0 if p == "train" else int(p[1:]) for p in parts]
    cats = list(found.categories)
    job = {"format": "dmnt-nemo-import-1", "sources": {p: str(found.sources[p]) for p in parts},
           "lists": found.source_config(parts), "categories": cats, "image_size": size,
           "per_category": per_category, "seed": int(seed), "cad": found.cad_digest}
    done = _claim(out, job)
    if done is not None:
        echo(f"  {out} already holds this import")
        return done
    t0 = time.perf_counter()
    for cat in cats:
        for name in found.cad_models[cat]:
            src, dst = found.cad_base / "CAD" / cat / f"{name}.off", out / "CAD" / cat / f"{name}.off"
            if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
                atomic_write_bytes(dst, src.read_bytes())
    counts, unposed, empty, n_images = {}, [], [], 0
    for part, level in zip(parts, levels):
        counts[f"L{level}"] = {}
        for cat in cats:
            ds = PoseDataset(found.sources[part], [cat], (level,), cad_root=found.cad_base, occ_root=found.sources[part],
                             mask_cache=False, image_size=(size, size))
            unposed += ds.source.unposed
            src = ds.source
            order = sorted(range(len(src)), key=lambda i: _rank(seed, src.items[i][2]))
            want = len(order) if per_category is None else min(int(per_category), len(order))
            chosen = []
            for i in order:
                if len(chosen) == want:
                    break
                sid = src.items[i][2]
                ann_path = out / f"L{level}" / "annotations" / cat / f"{sid}.npz"
                if ann_path.is_file():  # written by an interrupted run of this same job
                    chosen.append(i)
                    continue
                s = ds.fit(src[i])
                f32 = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731 -- as PoseDataset's items
                item = {"image": torch.zeros(3, size, size), "azimuth": f32(s.azimuth), "elevation": f32(s.elevation),
                        "theta": f32(s.theta), "distance": f32(s.distance), "focal": f32(s.focal),
                        "principal": f32(s.principal)}
                mask = s.mask if s.mask is not None else ds.rendered_mask(s, item)
                if not mask.any():
                    empty.append(f"L{level}/{cat}/{sid}")
                    continue
                occ = s.occluder_mask if s.occluder_mask is not None else np.zeros_like(mask)
                if level > 0 and s.occluder_mask is None:
                    raise ValueError(f"{s.annotation_path}: level {level} sample without an occluder mask ('occ_mask')")
                visible = mask & ~occ
                ann = {"category": cat, "level": level, "cad_index": int(s.cad_index), "azimuth": float(s.azimuth),
                       "elevation": float(s.elevation), "theta": float(s.theta), "distance": float(s.distance),
                       "focal": float(s.focal), "viewport": 1.0, "principal": np.asarray(s.principal, dtype=np.float64),
                       "mask": mask, "occluder_mask": occ, "visible_mask": visible,
                       "occlusion_ratio": float(1.0 - visible.sum() / mask.sum())}
                write_sample(out / f"L{level}", cat, sid, s.image, ann)  # the image first: an annotation means complete
                chosen.append(i)
            ids = [src.items[i][2] for i in sorted(chosen)]
            write_list(out / f"L{level}" / "lists" / f"{cat}.txt", ids)
            counts[f"L{level}"][cat] = len(ids)
            n_images += len(ids)
            echo(f"  import L{level} {cat}: {len(ids)} of {len(src)} posed objects from {found.sources[part]} "
                 f"({time.perf_counter() - t0:.0f} s)")
    if not n_images:
        raise ValueError(f"nothing to import from {[str(found.sources[p]) for p in parts]}: every object lacks a pose "
                         "or renders no mask")
    meta = {
        "format": DMNT_FORMAT, "version": 2, "convention": "dmnt", "cad_frame": "z_up", "source": "nemo",
        "imported_from": {f"L{k}": str(found.sources[p]) for p, k in zip(parts, levels)},
        "categories": cats, "levels": levels, "image_size": [size, size], "config": {"image_size": [size, size]},
        "per_category": per_category, "seed": int(seed), "counts": counts,
        "num_cad_models": {c: len(found.cad_models[c]) for c in cats},
        "left_out": {"unposed": unposed, "empty_mask": empty},
        "units": {"angles": "radians", "focal_pixels": "focal * viewport", "principal": "pixels (x, y)"},
        "job": job,
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    (out / MARKER).unlink()
    echo(f"  imported {n_images} images into {out} in {time.perf_counter() - t0:.1f} s")
    return meta


# --------------------------------------------------------------------------- the stages


def _flag(name: str, on) -> list[str]:
    return [name] if on else []


def _opt(name: str, value) -> list[str]:
    return [] if value is None else [name, str(value)]


def build_pascal3d_stages(out, config: dict, pascal3d, figures_dir=None, device: str = "cpu", log=print) -> list[Stage]:
    """The stages of the real-data run (module docstring) for a PASCAL3D+ preset ``config`` (see
    ``PASCAL3D_PRESETS``) on ``pascal3d`` (the ``--pascal3d`` folder, or a ``Found``), writing under ``out``.

    Raises:
        ValueError: a bad config (named). Pascal3DLayoutError: the folder is incomplete.
    """
    check_pascal3d_preset(config)
    found = pascal3d if isinstance(pascal3d, Found) else survey(pascal3d, config["categories"], config["evaluate"]["levels"])
    out = Path(out)
    figures_dir = Path(figures_dir) if figures_dir is not None else out / "figures"
    cats, size = list(found.categories), int(config["image_size"])
    levels = list(config["evaluate"]["levels"])
    train_dir, test_dir = out / "data" / "train", out / "data" / "test"
    deform_dir, dmnt_dir, base_dir = out / "deform", out / "dmnt", out / "baseline"
    weights = config.get("weights")  # both backbones or neither
    stages: list[Stage] = []

    def data_stage(name, folder, parts, section):
        sec = config[section]
        c = {"categories": cats, "image_size": size, "levels": [0 if p == "train" else int(p[1:]) for p in parts],
             "per_category": sec["per_category"], "seed": sec["seed"], "source": found.source_config(parts),
             "cad": found.cad_digest}

        def run():
            import_nemo(folder, found, parts, size, sec["per_category"], sec["seed"], echo=log)

        return Stage(name, c, run, outputs=[folder / "meta.json"], clear=[folder])

    stages.append(data_stage("data-train", train_dir, ["train"], "train_data"))
    stages.append(data_stage("data-test", test_dir, [f"L{k}" for k in sorted(levels)], "test_data"))

    d = {"categories": cats, "cad": found.cad_digest, **config["deform"]}
    deform_argv = ["deform", "--data", found.cad_base, "--checkpoint-dir", deform_dir, "--seed", d["seed"],
                   "--categories", *cats, *_flag("--quick", d.get("quick")), *_opt("--steps", d.get("steps")),
                   "--device", device]
    stages.append(Stage("deform", d, lambda: cli_call(deform_argv), outputs=[deform_dir / f"{c}.pt" for c in cats],
                        clear=[deform_dir]))

    # The data stage holds exactly the selected images: both learners take all of them (an explicit count,
    # since the commands' --quick would otherwise cut the images).
    n_train = config["train_data"]["per_category"] or max(found.listed["train"].values())
    t = {**config["train"], "weights": weights}
    sets = [x for k, v in sorted(t.get("set", {}).items()) for x in ("--set", f"{k}={v}")]
    train_argv = ["train", "--data", train_dir, "--deform", deform_dir, "--out", dmnt_dir, "--categories", *cats,
                  "--per-category", n_train, *sets, *_opt("--epochs", t.get("epochs")),
                  *_opt("--batch-size", t.get("batch_size")), *_flag("--quick", t.get("quick")),
                  *_opt("--weights", weights), "--device", device]
    stages.append(Stage("train", t, lambda: cli_call(train_argv + _resume(dmnt_dir)), outputs=[dmnt_dir / "model.pt"],
                        inputs=["data-train", "deform"], clear=[dmnt_dir]))

    b = {**config["baseline"], "weights": weights}
    base_argv = ["baseline", "train", "--data", train_dir, "--out", base_dir, "--categories", *cats,
                 "--per-category", n_train, *_opt("--epochs", b.get("epochs")), *_opt("--batch-size", b.get("batch_size")),
                 *_opt("--backbone", b.get("backbone")), *_flag("--stock", b.get("stock")), *_opt("--weights", weights),
                 *_flag("--quick", b.get("quick")), *_flag("--no-augment", b.get("augment") is False), "--device", device]
    stages.append(Stage("baseline", b, lambda: cli_call(base_argv + _resume(base_dir)),
                        outputs=[base_dir / "run.json"], inputs=["data-train"], clear=[base_dir]))

    e = dict(config["evaluate"])
    # data-test holds exactly the images to evaluate: all of them (an explicit count under --quick, whose
    # own default is 2 per category and level)
    n_test = config["test_data"]["per_category"]
    if n_test is None and e.get("quick"):
        n_test = max(n for k in levels for n in found.listed[f"L{k}"].values())
    from ..evaluate import eval_name

    ev_name = eval_name(test_dir, levels, n_test, bool(e.get("quick")), center=e["center"])
    for name, run_dir, upstream in (("evaluate-dmnt", dmnt_dir, "train"), ("evaluate-baseline", base_dir, "baseline")):
        argv = ["evaluate", "--run", run_dir, "--data", test_dir, "--levels", *levels, *_opt("--per-category", n_test),
                "--center", e["center"], "--batch-size", 8, *_flag("--quick", e.get("quick")), "--device", device]
        ev_dir = run_dir / "eval" / ev_name
        stages.append(Stage(name, e, lambda argv=argv: cli_call(argv),
                            outputs=[ev_dir / "results.json", ev_dir / "predictions.jsonl"],
                            inputs=["data-test", upstream], clear=[ev_dir]))

    def run_figures():
        from ..figures.cli import make_figures

        return make_figures(dmnt_dir, test_dir, figures_dir, base_dir, eval_name=ev_name, device=device)

    stages.append(Stage("figures", {"out": str(figures_dir.resolve())}, run_figures,
                        inputs=["data-test", "evaluate-dmnt", "evaluate-baseline"], movable=("out",)))
    return stages
