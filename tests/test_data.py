"""Synthetic PASCAL3D+-style data: CAD models, scenes, occlusion levels, format, loader, CLI."""

import argparse
import dataclasses
import json
import math
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from dmnt_lib.camera import pose_to_cameras, pose_to_RT, project_points
from dmnt_lib.data import synthetic
from dmnt_lib.data.cache import ensure_dataset
from dmnt_lib.data.cli import add_parser, run
from dmnt_lib.data.viz import demo
from dmnt_lib.data.dataset import PoseDataset
from dmnt_lib.data.occlusion import LEVEL_RANGES, OcclusionError, place_occluders
from dmnt_lib.data.pascal3d import Pascal3D, read_annotation
from dmnt_lib.data.shapes import CATEGORIES, MATERIALS, NUM_CAD_MODELS, cad_model, cad_models, signed_volume, write_cad_library
from dmnt_lib.data.synthetic import MARKER, SceneConfig, generate_dataset
from dmnt_lib.mesh import UVMesh, read_off, write_off, y_up_to_z_up
from dmnt_lib.render import render_mask

CATS = ("car", "chair")
SIZE = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "ds"
    report = generate_dataset(root, 2, (0, 1, 2, 3), seed=3, image_size=SIZE, categories=CATS, progress=False)
    return root, report


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def _components(faces):
    parent = list(range(faces.max() + 1))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b, c in faces.tolist():
        parent[find(b)] = find(a)
        parent[find(c)] = find(a)
    roots = np.array([find(a) for a in faces[:, 0].tolist()])
    return [faces[roots == r] for r in np.unique(roots)]


# --------------------------------------------------------------------------- CAD models


def test_cad_models_are_closed_outward_unit_and_centred():
    for cat in CATEGORIES:
        models = cad_models(cat)
        assert len(models) == NUM_CAD_MODELS[cat]
        for m in models:
            f, v = m.faces.numpy(), m.verts.double().numpy()
            directed = Counter(map(tuple, np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).tolist()))
            # watertight and consistently oriented: each directed edge once, its reverse once
            assert all(n == 1 for n in directed.values()), (cat, m.index)
            assert all((b, a) in directed for a, b in directed), (cat, m.index)
            for comp in _components(f):
                assert signed_volume(v, comp) > 0, (cat, m.index)  # outward normals
            lo, hi = v.min(0), v.max(0)
            np.testing.assert_allclose((lo + hi) / 2, 0, atol=1e-6)
            assert abs((hi - lo).max() - 1) < 1e-6
            assert len(m.face_material) == len(f) == len(m.face_part)


def test_cad_models_are_deterministic_and_roundtrip_through_off(tmp_path):
    a = cad_model.__wrapped__("boat", 2, 0)  # bypass the cache: rebuild from the seed
    b = cad_model("boat", 2, 0)
    assert torch.equal(a.verts, b.verts) and torch.equal(a.faces, b.faces)
    assert not torch.equal(cad_model.__wrapped__("boat", 2, 1).verts, a.verts)
    paths = write_cad_library(tmp_path, ["bottle"])
    assert [p.name for p in paths] == [f"{i:02d}.off" for i in range(1, NUM_CAD_MODELS["bottle"] + 1)]
    for p, m in zip(paths, cad_models("bottle")):
        v, f = read_off(p, z_up=True)  # the files are in PASCAL3D+'s on-disk frame (z up) ...
        assert torch.equal(f, m.faces) and torch.equal(v, m.verts)  # ... and come back exactly
        raw, _ = read_off(p)
        assert torch.equal(raw, y_up_to_z_up(m.verts))  # z up on disk: what was our y is the file's z
        assert torch.equal(raw[:, 2], m.verts[:, 1]) and torch.equal(raw[:, 1], -m.verts[:, 2])


def _silhouette(model, az=math.radians(40), el=math.radians(15)):
    cams = pose_to_cameras(az, el, 0.0, 3.0, 64, focal=150.0)
    return render_mask(model.to_uvmesh(), cams, 64)[0].numpy()


def test_silhouettes_differ_between_and_within_categories():
    sil = {c: _silhouette(cad_model(c, 1)) for c in CATEGORIES}
    for i, a in enumerate(CATEGORIES):
        assert sil[a].sum() > 50
        for b in CATEGORIES[i + 1:]:
            assert _iou(sil[a], sil[b]) < 0.8, (a, b)
    for c in CATEGORIES:
        assert _iou(sil[c], _silhouette(cad_model(c, 2))) < 0.97, c


def _material_map(model, az, el=math.radians(12), size=64):
    """Per-pixel face material of ``model`` at azimuth ``az`` (-1 off the object), ``(size, size)``."""
    from dmnt_lib.render import uv_fragment

    cams = pose_to_cameras(az, el, 0.0, 3.2, size, focal=3.0 * size)
    face = uv_fragment(model.to_uvmesh(), cams, size).pix_to_face[0]
    return torch.where(face >= 0, model.face_material[face.clamp(min=0)], torch.full_like(face, -1)).numpy()


def test_every_bottle_model_has_a_defined_azimuth():
    """Issue 13: a surface of revolution in random colours has no azimuth. Every bottle carries a
    front-only label (its own material): its material map changes under a 90° and a 180°
    azimuth change, while the same model without label (and handle) does not."""
    for m in cad_models("bottle"):
        names = m.part_names
        assert "label" in names and MATERIALS[int(m.face_material[m.face_part == names.index("label")][0])] == "light"
        plain = m.subset([i for i, n in enumerate(names) if n not in ("label", "handle")])
        body = plain.verts[plain.faces[plain.face_part == names.index("bottle")].unique()]
        axis = body.mean(0) * torch.tensor([1.0, 0.0, 1.0])  # the rings' centre: on the revolution axis
        plain = dataclasses.replace(plain, verts=plain.verts - axis)
        for az in (math.radians(30), math.radians(200)):
            for delta in (math.pi / 2, math.pi):
                a, b = _material_map(m, az), _material_map(m, az + delta)
                changed = ((a != b) & ((a >= 0) | (b >= 0))).sum() / ((a >= 0) | (b >= 0)).sum()
                pa, pb = _material_map(plain, az), _material_map(plain, az + delta)
                control = ((pa != pb) & ((pa >= 0) | (pb >= 0))).sum() / ((pa >= 0) | (pb >= 0)).sum()
                assert changed > 0.1, (m.index, az, delta, changed)
                assert control < 0.05, (m.index, az, delta, control)  # only the label and handle break the symmetry


# --------------------------------------------------------------------------- generated data


def test_layout_lists_and_meta(dataset):
    root, report = dataset
    meta = json.loads((root / "meta.json").read_text())
    assert meta["seed"] == 3 and meta["image_size"] == [SIZE, SIZE] and meta["levels"] == [0, 1, 2, 3]
    assert meta["counts"] == {f"L{k}": {c: 2 for c in CATS} for k in range(4)}
    assert report["images"] == 2 * len(CATS) * 4
    for k in range(4):
        for c in CATS:
            ids = (root / f"L{k}" / "lists" / f"{c}.txt").read_text().split()
            assert ids == [f"{c}_00000", f"{c}_00001"]
            for sid in ids:
                assert (root / f"L{k}" / "images" / c / f"{sid}.png").is_file()
        assert not list(root.rglob("*.tmp"))
    for c in CATS:
        assert len(list((root / "CAD" / c).glob("*.off"))) == NUM_CAD_MODELS[c]


def test_rerendering_cad_from_annotation_gives_stored_mask(dataset):
    root, _ = dataset
    src = Pascal3D(root, levels=(0, 1, 2, 3))
    assert len(src) == 2 * len(CATS) * 4
    for s in src:
        v, f = read_off(root / "CAD" / s.category / f"{s.cad_index:02d}.off", z_up=True)
        mesh = UVMesh(v, f, torch.zeros(1, 2), torch.zeros_like(f))
        cams = pose_to_cameras(s.azimuth, s.elevation, s.theta, s.distance, s.image.shape[:2], focal=s.focal,
                               principal=torch.tensor(s.principal, dtype=torch.float32))
        rendered = render_mask(mesh, cams, s.image.shape[:2])[0].numpy()
        # Exact, not approximate: the stored mask is PyTorch3D's coverage of the same float32
        # triangles at the same pixel centres. The generator's two differences only matter at
        # float rounding: culled back faces (closed shells seen from outside: same silhouette)
        # and its bbox window (a principal point shifted by whole pixels), which moves edges by
        # ~1e-5 px, and no pixel centre of these samples lies that close to an edge.
        np.testing.assert_array_equal(rendered, s.mask, err_msg=f"{s.id} L{s.level}")
        ys, xs = np.nonzero(s.mask)
        np.testing.assert_array_equal(s.bbox, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        # the whole object is in the frame and the pose is in the documented ranges
        assert not (s.mask[0].any() or s.mask[-1].any() or s.mask[:, 0].any() or s.mask[:, -1].any())
        assert math.radians(-10) <= s.elevation <= math.radians(40) and abs(s.theta) <= math.radians(15)
        assert s.focal == 3.0 * SIZE


def test_occlusion_levels_are_measured_and_share_object_and_pose(dataset):
    root, _ = dataset
    src = Pascal3D(root, levels=(0, 1, 2, 3))
    by_id = {}
    for s in src:
        by_id.setdefault(s.id, {})[s.level] = s
    for sid, levels in by_id.items():
        l0 = levels[0]
        assert not l0.occluder_mask.any() and l0.occlusion_ratio == 0.0
        for k, s in levels.items():
            np.testing.assert_array_equal(s.visible_mask, s.mask & ~s.occluder_mask)
            assert s.occlusion_ratio == 1.0 - s.visible_mask.sum() / s.mask.sum()
            if k:
                lo, hi = LEVEL_RANGES[k]
                assert lo <= s.occlusion_ratio < hi, (sid, k, s.occlusion_ratio)
            # same object and pose at every level; only occluder pixels change
            for f in ("cad_index", "azimuth", "elevation", "theta", "distance", "focal"):
                assert getattr(s, f) == getattr(l0, f)
            np.testing.assert_array_equal(s.principal, l0.principal)
            np.testing.assert_array_equal(s.mask, l0.mask)
            np.testing.assert_array_equal(s.image[~s.occluder_mask], l0.image[~s.occluder_mask])


def test_place_occluders_hits_every_level_on_random_masks():
    yy, xx = np.mgrid[0:48, 0:48]
    for seed in range(6):
        rng = np.random.default_rng(seed)
        c, r = rng.uniform(15, 33, 2), rng.uniform(4, 14, 2)
        mask = ((xx - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 <= 1
        for k, (lo, hi) in LEVEL_RANGES.items():
            occ, tex, ratio = place_occluders(mask, (lo, hi), np.random.default_rng([seed, k]))
            assert lo <= ratio < hi and ratio == 1 - (mask & ~occ).sum() / mask.sum()
            assert tex.shape == (48, 48, 3) and occ.dtype == bool
    with pytest.raises(ValueError, match="mask"):
        place_occluders(np.zeros((8, 8), bool), (0.2, 0.4), np.random.default_rng(0))
    with pytest.raises(ValueError, match="ratio_range"):
        place_occluders(mask, (0.5, 0.4), np.random.default_rng(0))


def test_place_occluders_on_tiny_masks_succeeds_exactly_when_a_ratio_is_reachable():
    for n in range(1, 13):
        mask = np.zeros((6, 6), bool)
        mask.flat[np.random.default_rng(n).choice(36, n, replace=False)] = True
        for k, (lo, hi) in LEVEL_RANGES.items():
            # hiding m of n pixels gives 1 - (n - m) / n; some m must land in [lo, hi)
            if any(lo <= 1 - (n - m) / n < hi for m in range(1, n + 1)):
                occ, _, ratio = place_occluders(mask, (lo, hi), np.random.default_rng([n, k]))
                assert lo <= ratio < hi and ratio == 1 - (mask & ~occ).sum() / n
            else:  # e.g. 3 pixels at L2: refused up front, naming the mask, not a RuntimeError
                with pytest.raises(ValueError, match=f"mask has {n} pixels.*ratio_range"):
                    place_occluders(mask, (lo, hi), np.random.default_rng(0))


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    kw = dict(levels=(0, 2), image_size=48, categories=("bus",), progress=False)
    generate_dataset(tmp_path / "a", 1, seed=5, **kw)
    # The copy comes from a fresh process: another clock, and no lru_cache of CAD models.
    code = (f"from dmnt_lib.data.synthetic import generate_dataset; "
            f"generate_dataset({str(tmp_path / 'b')!r}, 1, seed=5, **{kw!r})")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    generate_dataset(tmp_path / "c", 1, seed=6, **kw)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    img = Path("L0/images/bus/bus_00000.png")
    assert a[img] != c[img]
    npz = [k for k in a if k.suffix == ".npz"]
    assert len(npz) == 2
    for k in npz:  # no clock in the files: every zip member carries the fixed DOS epoch
        with zipfile.ZipFile(tmp_path / "a" / k) as zf:
            assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def _tree(root):
    return {p.relative_to(root): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_existing_dataset_is_never_overwritten_silently(tmp_path):
    kw = dict(levels=(0,), image_size=32, categories=("tvmonitor",), progress=False)
    out = tmp_path / "ds"
    generate_dataset(out, 1, seed=0, **kw)
    assert not (out / MARKER).exists()
    with pytest.raises(FileExistsError, match="already holds a dmnt dataset; pass --overwrite"):
        generate_dataset(out, 1, seed=1, **kw)
    before = (out / "L0/images/tvmonitor/tvmonitor_00000.png").read_bytes()
    generate_dataset(out, 1, seed=1, overwrite=True, **kw)
    assert (out / "L0/images/tvmonitor/tvmonitor_00000.png").read_bytes() != before
    (out / "notes.txt").write_text("mine")  # a dataset folder with a user's file in it is not emptied
    with pytest.raises(FileExistsError, match="notes.txt"):
        generate_dataset(out, 1, overwrite=True, **kw)
    assert (out / "notes.txt").read_text() == "mine"


def test_overwrite_only_deletes_dmnt_datasets(tmp_path):
    """The review's example: a folder shaped like ours (CAD/, L1/) without our meta.json."""
    kw = dict(levels=(0,), image_size=32, categories=("tvmonitor",), progress=False)
    mine = tmp_path / "mine"
    (mine / "CAD" / "car").mkdir(parents=True)
    (mine / "CAD" / "car" / "my_real_model.off").write_text("OFF\n0 0 0\n")
    (mine / "L1").mkdir()
    (mine / "L1" / "notes.txt").write_text("precious")
    before = _tree(mine)
    for meta in (None, '{"format": "someone-else", "version": 1}', "{not json"):
        if meta is not None:
            (mine / "meta.json").write_text(meta)
            before = _tree(mine)
        for overwrite in (False, True):
            with pytest.raises(FileExistsError, match="is not a dmnt dataset") as err:
                generate_dataset(mine, 1, overwrite=overwrite, **kw)
            assert str(mine) in str(err.value)
        with pytest.raises(FileExistsError, match="is not a dmnt dataset"):  # the demo/notebook path too
            ensure_dataset(mine, 1, levels=(0,), image_size=32, categories=("tvmonitor",))
        assert _tree(mine) == before
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="is not a dmnt dataset"):
        generate_dataset(home, 1, overwrite=True, **kw)
    assert (home / "thesis.tex").read_text() == "precious"


def test_failed_generation_is_marked_and_replaced_only_with_overwrite(tmp_path, monkeypatch, capsys):
    parser = argparse.ArgumentParser(prog="dmnt_lib")
    add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "d"
    argv = ["data", "--out", str(out), "--per-category", "1", "--levels", "0", "1", "--seed", "4",
            "--image-size", "32", "--categories", "sofa", "--no-progress"]

    def no_placement(mask, ratio_range, rng, max_tries=50):
        raise OcclusionError("could not place occluders (simulated)")

    def failing_run(extra=()):
        with monkeypatch.context() as m:
            m.setattr(synthetic, "place_occluders", no_placement)
            assert run(parser.parse_args(argv + list(extra))) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: sofa_00000 at level L1: could not place")
        assert "--overwrite" in err
        # what an interrupted run leaves: the claim marker, never a meta.json that looks complete
        assert (out / MARKER).is_file() and not (out / "meta.json").exists()

    failing_run()
    assert run(parser.parse_args(argv)) == 2
    assert "already holds an interrupted dmnt generation; pass --overwrite" in capsys.readouterr().err
    assert run(parser.parse_args(argv + ["--overwrite"])) == 0
    assert not (out / MARKER).exists() and (out / "meta.json").is_file()
    failing_run(["--overwrite"])  # an overwrite failing half-way is still recognised as ours
    assert run(parser.parse_args(argv + ["--overwrite"])) == 0
    generate_dataset(tmp_path / "fresh", 1, levels=(0, 1), seed=4, image_size=32, categories=("sofa",), progress=False)
    assert _files(out) == _files(tmp_path / "fresh")  # nothing of the failed runs is left behind


def _gen(out, per_category=1, **kw):
    return generate_dataset(out, per_category, **{"levels": (0,), "categories": ("car",), "image_size": 32,
                                                  "progress": False, **kw})


# (call, exception, message pattern): every bad value is named, and nothing is written before
BAD_GENERATE = [
    (dict(levels=0), TypeError, "levels must be a sequence of ints"),
    (dict(levels=(4,)), ValueError, "levels must be a non-empty subset"),
    (dict(levels=(1.0,)), TypeError, "levels must contain ints"),
    (dict(image_size=64.0), TypeError, "image_size must be an int or"),
    (dict(image_size=(64,)), ValueError, "image_size must be an int or .* got 1 values"),
    (dict(image_size="64"), TypeError, "image_size"),
    (dict(image_size=8), ValueError, "image_size must be at least 16"),
    (dict(categories="car"), TypeError, "categories must be a sequence of names"),
    (dict(categories=("cat",)), ValueError, "unknown categories"),
    (dict(per_category=0), ValueError, "per_category must be >= 1"),
    (dict(per_category=True), TypeError, "per_category must be an int"),
    (dict(per_category=1.5), TypeError, "per_category must be an int"),
    (dict(seed=-1), ValueError, "seed must be >= 0"),
    (dict(seed=1.0), TypeError, "seed must be an int"),
    (dict(config={"image_size": (32, 32)}), TypeError, "config must be a SceneConfig"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_GENERATE, ids=[f"{k}={v!r}" for c in BAD_GENERATE for k, v in c[0].items()])
def test_generate_dataset_names_bad_arguments_before_writing(tmp_path, kwargs, error, match):
    out = tmp_path / "ds"
    with pytest.raises(error, match=match):
        _gen(out, **kwargs)
    assert not out.exists()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n_distractors=(3, 1)), ValueError, "n_distractors must satisfy 0 <= low <= high"),
    (dict(n_clutter=(1.5, 3)), TypeError, "n_clutter must be a .* pair of ints"),
    (dict(focal_factor=0), ValueError, "focal_factor must be finite and > 0"),
    (dict(focal_factor=-1), ValueError, "focal_factor"),
    (dict(focal_factor=float("nan")), ValueError, "focal_factor"),
    (dict(focal_factor="3"), TypeError, "focal_factor must be a number"),
    (dict(elevation_deg=(40, -10)), ValueError, "elevation_deg must satisfy -90 < low <= high < 90"),
    (dict(elevation_deg=(-95, 10)), ValueError, "elevation_deg"),
    (dict(theta_deg=5), TypeError, "theta_deg must be a sequence"),
    (dict(fill=(0.5, 1.0)), ValueError, "fill must satisfy 0 < low <= high < 1"),
    (dict(image_size=64), TypeError, r"image_size must be \(H, W\)"),
    (dict(image_size=(8, 64)), ValueError, "image_size must be at least 16"),
    (dict(cad_seed=-1), ValueError, "cad_seed must be >= 0"),
])
def test_scene_config_names_bad_fields(kwargs, error, match):
    with pytest.raises(error, match=match):
        SceneConfig(**kwargs)


def test_other_entry_points_name_bad_arguments(dataset):
    root, _ = dataset
    mask = np.zeros((16, 16), bool)
    mask[4:12, 4:12] = True
    rng = np.random.default_rng(0)
    cases = [
        (lambda: Pascal3D(root, levels=0), TypeError, "levels must be a sequence of ints"),
        (lambda: Pascal3D(root, categories="car"), TypeError, "categories must be a sequence of names"),
        (lambda: Pascal3D(5), TypeError, "root must be a path"),
        (lambda: Pascal3D(root)[1.5], TypeError, "index must be an int"),
        (lambda: place_occluders(mask, (0.2, 0.4), rng=0), TypeError, "rng must be a numpy.random.Generator"),
        (lambda: place_occluders(mask, 0.3, rng), TypeError, "ratio_range must be a sequence"),
        (lambda: place_occluders(mask, (0.2, 0.4), rng, max_tries=0), ValueError, "max_tries must be >= 1"),
        (lambda: place_occluders(mask.astype(str), (0.2, 0.4), rng), TypeError, "mask must be a bool"),
        (lambda: read_annotation(root / "L0/annotations/car/car_00000.npz", 64), TypeError, r"image_shape must be \(H, W\)"),
        (lambda: read_annotation(None), TypeError, "path must be a path"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


def test_numpy_integers_are_accepted_and_give_the_same_bytes(tmp_path):
    _gen(tmp_path / "py", 1, levels=[0, 1], seed=2, image_size=(32, 40))
    _gen(tmp_path / "np", np.int64(1), levels=np.array([1, 0]), seed=np.int64(2), image_size=(np.int64(32), np.int32(40)))
    assert _files(tmp_path / "py") == _files(tmp_path / "np")


def test_image_size_none_keeps_the_configs(tmp_path):
    config = SceneConfig(image_size=(48, 96))
    _gen(tmp_path / "a", image_size=None, config=config)
    assert Pascal3D(tmp_path / "a")[0].image.shape == (48, 96, 3)
    report = _gen(tmp_path / "b", image_size=(40, 32), config=config)  # an explicit size still wins
    assert report["meta"]["image_size"] == [40, 32] and Pascal3D(tmp_path / "b")[0].image.shape == (40, 32, 3)


def test_rejected_run_leaves_the_folder_usable(tmp_path):
    """The review's F5: a bad seed used to fail after CAD/ was written, and the next run was refused."""
    out = tmp_path / "ds"
    with pytest.raises(ValueError, match="seed"):
        _gen(out, seed=-1)
    with pytest.raises(ValueError, match="focal_factor"):  # was "focal must be positive" from camera.py, mid-run
        _gen(out, config=SceneConfig(focal_factor=0))
    assert not out.exists()
    _gen(out, seed=0)
    assert (out / "meta.json").is_file()


# --------------------------------------------------------------------------- loader


def _to_nemo(ours: Path, nemo: Path, cats) -> None:
    """Copy our layout into NeMo's naming (split folder + CAD in the parent), ids with .png in lists;
    our meta.json goes along: it is what says the cameras are the stored images' (ours)."""
    shutil.copytree(ours / "CAD", nemo.parent / "CAD")
    nemo.mkdir(parents=True)
    shutil.copy(ours / "meta.json", nemo / "meta.json")
    for k in range(4):
        for c in cats:
            name = c if k == 0 else f"{c}FGL{k}_BGL{k}"
            shutil.copytree(ours / f"L{k}" / "images" / c, nemo / "images" / name)
            shutil.copytree(ours / f"L{k}" / "annotations" / c, nemo / "annotations" / name)
            ids = (ours / f"L{k}" / "lists" / f"{c}.txt").read_text().split()
            (nemo / "lists").mkdir(parents=True, exist_ok=True)
            (nemo / "lists" / f"{name}.txt").write_text("".join(f"{i}.png\n" for i in ids))


def test_nemo_and_our_layouts_give_the_same_samples(dataset, tmp_path):
    root, _ = dataset
    nemo = tmp_path / "PASCAL3D_NeMo" / "val"
    _to_nemo(root, nemo, CATS)
    a, b = Pascal3D(root, levels=(0, 1, 2, 3)), Pascal3D(nemo, levels=(0, 1, 2, 3))
    assert a.categories == b.categories == CATS and len(a) == len(b)
    for sa, sb in zip(a, b):
        for f in ("id", "category", "level", "cad_index", "azimuth", "elevation", "theta", "distance", "focal", "occlusion_ratio"):
            assert getattr(sa, f) == getattr(sb, f)
        for f in ("image", "principal", "bbox", "mask", "visible_mask", "occluder_mask"):
            np.testing.assert_array_equal(getattr(sa, f), getattr(sb, f))
    assert b.cad(CATS[0], 1)[0].shape[1] == 3 and b.cad_root == nemo.parent
    assert a.convention == b.convention == "dmnt" and a.cad_z_up and b.cad_z_up
    (nemo / "meta.json").unlink()  # now the folder claims to be NeMo's, and its files are not
    with pytest.raises(ValueError, match="fits neither convention.*lacks NeMo's"):
        Pascal3D(nemo)[0]
    (nemo / "meta.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="fits neither convention"):
        Pascal3D(nemo)


def test_version_1_datasets_keep_their_y_up_cad_files(dataset, tmp_path):
    """Our format version 1 wrote y-up CAD files and no cad_frame: still read as they are."""
    root, _ = dataset
    old = tmp_path / "v1"
    shutil.copytree(root, old)
    meta = json.loads((old / "meta.json").read_text())
    del meta["cad_frame"]
    meta["version"] = 1
    (old / "meta.json").write_text(json.dumps(meta))
    m = cad_model(CATS[0], 1)
    write_off(old / "CAD" / CATS[0] / "01.off", m.verts, m.faces)  # y up, as version 1 wrote
    src = Pascal3D(old)
    assert not src.cad_z_up and torch.equal(src.cad(CATS[0], 1)[0], m.verts)
    assert torch.equal(Pascal3D(root).cad(CATS[0], 1)[0], m.verts)  # version 2: z up on disk, same model
    meta["version"], meta["cad_frame"] = 2, "sideways"
    (old / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="cad_frame"):
        Pascal3D(old)


def _projected_silhouette(verts, faces, pose, hw, margin=1e-3):
    """An independent silhouette: pixel centres inside projected triangles (``pose_to_RT`` +
    ``project_points`` in float64, a 2D inside test; no PyTorch3D). Returns the centres inside
    by more than ``margin`` pixels (``strict``) and inside or within ``margin`` (``loose``)."""
    az, el, th, dist, focal, principal = pose
    R, T = pose_to_RT(*(torch.tensor([x], dtype=torch.float64) for x in (az, el, th, dist)))
    xy, depth = project_points(verts.double(), R, T, focal, torch.as_tensor(principal, dtype=torch.float64))
    assert (depth > 0).all()
    tri = xy[0].numpy()[faces.numpy()]  # (F, 3, 2)
    e = np.roll(tri, -1, axis=1) - tri  # edges
    area = e[:, 0, 0] * e[:, 1, 1] - e[:, 0, 1] * e[:, 1, 0]
    keep = np.abs(area) > 1e-9  # zero-area faces cover no pixel centre
    tri, e, sign = tri[keep], e[keep], np.sign(area[keep])
    h, w = hw
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    p = np.stack([xs.ravel(), ys.ravel()], -1)
    strict, loose = np.zeros(h * w, bool), np.zeros(h * w, bool)
    for i in range(0, len(tri), 128):
        t, ed, sg = tri[i:i + 128], e[i:i + 128], sign[i:i + 128]
        rel = p[None, None] - t[:, :, None]  # (f, 3, P, 2)
        cross = ed[:, :, None, 0] * rel[..., 1] - ed[:, :, None, 1] * rel[..., 0]
        dist_in = (cross * sg[:, None, None] / np.linalg.norm(ed, axis=-1)[..., None]).min(1)  # (f, P)
        strict |= (dist_in > margin).any(0)
        loose |= (dist_in > -margin).any(0)
    return strict.reshape(h, w), loose.reshape(h, w)


def _nemo_fields(rng, sid, cad_index, **pose):
    """An annotation with NeMo's extra fields next to the ones we read, including an object
    array (``occ_mask=None``, which ``np.savez`` pickles)."""
    return dict(
        name=f"{sid}.JPEG", source=f"Annotations/car_imagenet/{sid}.mat", box=np.array([3.0, 5.0, 50.0, 36.0]),
        box_ori=np.array([30.0, 50.0, 500.0, 360.0]), box_obj=np.array([1, 2, 3, 4]),
        cropped_kp_list=rng.uniform(0, 40, (12, 2)), visible=rng.integers(0, 2, 12), occ_mask=None,
        resize_rate=0.1, padding=np.array([[0, 0], [0, 0]]), azimuth_coarse=60.0, elevation_coarse=10.0,
        px=280.0, py=200.0, error=0.0, interval_azimuth=15.0, interval_elevation=5.0, num_anchor=12,
        cad_index=cad_index, focal=1.0, **pose,
    )


def test_nemo_fixture_with_extra_fields_list_folders_and_no_masks(tmp_path):
    """PASCAL3D+ proper in NeMo's layout: JPEG images, NeMo's field set (extra fields, one
    pickled), no masks at L0, L0 lists as a folder of per-CAD-model lists, masks at L1.
    The cameras are NeMo's: principal in a 400 x 600 original photo, PASCAL3D+'s focal 1 with a
    viewport that gives 150 pixels after NeMo's resize by 200 * distance / 1000, so the
    40 x 56 crop's camera is focal 150 at its centre (28, 20) (tests/test_nemo_real.py covers
    crops of every kind through the NeMo-preparation emulator)."""
    from PIL import Image

    root = tmp_path / "val"
    write_cad_library(tmp_path, ["car"])  # CAD/ in the split's parent, as in NeMo
    rng = np.random.default_rng(0)
    poses = {"n0001": (3, dict(azimuth=1.2, elevation=0.2, theta=-0.1, distance=4.5)),
             "n0002": (1, dict(azimuth=4.0, elevation=0.4, theta=0.15, distance=5.0))}
    for name in ("car", "carFGL1_BGL1"):
        (root / "images" / name).mkdir(parents=True)
        (root / "annotations" / name).mkdir(parents=True)
        for sid, (cad, pose) in poses.items():
            Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(root / "images" / name / f"{sid}.JPEG")
            rate = 200 * pose["distance"] / 1000
            fields = _nemo_fields(rng, sid, cad, viewport=150.0 / rate, principal=np.array([300.0, 200.0]),
                                  height=400, width=600, **pose)
            if name != "car":
                mask = np.zeros((40, 56), bool)
                mask[10:30, 10:40] = True
                occ = np.zeros_like(mask)
                occ[10:30, 10:22] = True
                fields.update(mask=mask, occluder_mask=occ)
            np.savez(root / "annotations" / name / f"{sid}.npz", **fields)
    (root / "lists" / "car").mkdir(parents=True)  # L0: NeMo's per-CAD-model list folder
    (root / "lists" / "car" / "mesh01.txt").write_text("n0002.JPEG\n")
    (root / "lists" / "car" / "mesh03.txt").write_text("n0001.JPEG\n")
    (root / "lists" / "carFGL1_BGL1.txt").write_text("n0001.JPEG\nn0002.JPEG\n")
    src = Pascal3D(root, levels=(0, 1))
    assert [(s.id, s.level) for s in src] == [("n0002", 0), ("n0001", 0), ("n0001", 1), ("n0002", 1)]
    s0 = src[1]
    decoded = np.asarray(Image.open(root / "images" / "car" / "n0001.JPEG").convert("RGB"))
    np.testing.assert_array_equal(s0.image, decoded)
    assert s0.focal == pytest.approx(150.0, rel=1e-12) and s0.cad_index == 3 and s0.azimuth == 1.2 and s0.bbox is None
    np.testing.assert_allclose(s0.principal, [28.0, 20.0], atol=1e-9)
    assert s0.convention == "nemo" and s0.crop["rate"] == 0.9 and s0.crop["origin"] == (270 - 28, 180 - 20)
    assert s0.mask is None and s0.occlusion_ratio is None and src.cad_root == tmp_path
    s1 = src[2]
    assert s1.occlusion_ratio == pytest.approx(12 / 30, abs=1e-12) and s1.visible_mask.sum() == 20 * 18
    ds = PoseDataset(root, levels=(0,), mask_cache=tmp_path / "masks")
    for i, sid in enumerate(("n0002", "n0001")):
        item = ds[i]
        cad, pose = poses[sid]
        verts, faces = read_off(tmp_path / "CAD" / "car" / f"{cad:02d}.off", z_up=True)
        strict, loose = _projected_silhouette(verts, faces, (*pose.values(), 150.0, (28.0, 20.0)), (40, 56))
        mask = item["mask"].numpy()
        assert strict.sum() > 100 and (loose & ~strict).sum() <= 2  # the band of doubt is tiny
        assert (mask | ~strict).all() and (loose | ~mask).all(), sid  # strict <= rendered mask <= loose
        assert not item["occluder_mask"].any() and item["occlusion_ratio"] == 0
    with pytest.raises(ValueError, match="render_missing_masks"):
        PoseDataset(root, levels=(0,), render_missing_masks=False)[0]


def test_bad_paths_and_corrupt_files_give_clear_errors(dataset, tmp_path):
    root, _ = dataset
    with pytest.raises(FileNotFoundError, match="dataset root not found"):
        Pascal3D(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="FGL2_BGL2"):
        Pascal3D(root, categories=["bus"], levels=(2,))
    with pytest.raises(ValueError, match="unknown categories"):
        Pascal3D(root, categories=["cat"])
    with pytest.raises(ValueError, match="levels"):
        Pascal3D(root, levels=(5,))
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    ann = copy / "L0" / "annotations" / "car" / "car_00000.npz"
    good = read_annotation(ann)
    src = Pascal3D(copy, categories=["car"])
    raw = ann.read_bytes()
    ann.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="corrupt annotation"):
        src[0]
    damaged = bytearray(raw)  # the review's case: damaged deflate data inside a member
    damaged[200:260] = bytes(b ^ 0xFF for b in damaged[200:260])
    ann.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="corrupt annotation"):
        src[0]
    fields = dict(np.load(root / "L0/annotations/car/car_00000.npz"))
    drop = object()

    def check(error=None, match=None, **changes):
        np.savez(ann, **{k: v for k, v in {**fields, **changes}.items() if v is not drop})
        if error is None:
            return src[0]
        with pytest.raises(error, match=match) as err:
            src[0]
        assert str(ann) in str(err.value)  # every message names the file

    check(ValueError, "'distance'", distance=drop)
    check(ValueError, "'distance'", distance=-1.0)
    check(ValueError, "'azimuth' is not finite", azimuth=np.nan)
    check(ValueError, "'mask' must be a bool mask", mask=np.zeros((3, 3), bool))
    check(ValueError, "'mask'", mask=None)  # a field we read stored as a pickled object
    check(ValueError, "'cad_index' is 1-based", cad_index=0)
    check(ValueError, "'cad_index' must be a whole number", cad_index=2.7)
    check(ValueError, "category 'bus' does not match", category="bus")
    check(ValueError, "'bbox' must be 4 numbers", bbox=np.array([1.0, 2.0, 3.0]))
    check(ValueError, "'principal' must be 2 numbers", principal=np.array(["28", "20"]))
    check(ValueError, "level 2 does not match its folder", level=2)
    check(ValueError, "'occlusion_ratio' .* disagrees with the masks", occlusion_ratio=0.3)
    assert check(category=np.bytes_(b"car")).category == "car"  # bytes, as older tools write it
    assert check(cad_index=float(good["cad_index"])).cad_index == good["cad_index"]
    extra = check(occ_mask=None, name="car_00000.JPEG", cropped_kp_list=np.zeros((3, 2)))  # ignored, unread
    for k in ("cad_index", "azimuth", "distance", "focal", "occlusion_ratio", "level", "category"):
        assert getattr(extra, k) == good[k]
    np.testing.assert_array_equal(extra.mask, good["mask"])
    (copy / "L0" / "lists" / "car.txt").unlink()
    with pytest.raises(FileNotFoundError, match="list not found: .*car.txt"):
        Pascal3D(copy, categories=["car"])
    img = copy / "L0" / "images" / "car" / "car_00001.png"
    img.write_bytes(img.read_bytes()[:40])
    with pytest.raises(ValueError, match="corrupt image"):
        src[1]
    img.unlink()
    with pytest.raises(FileNotFoundError, match="car_00001"):
        src[1]
    with pytest.raises(IndexError):
        src[len(src)]


def test_every_flipped_byte_is_detected_or_harmless(dataset, tmp_path):
    """Flip bytes across a whole annotation (members, local headers, central directory): reading
    either raises ValueError or returns exactly the original values, never partial fields."""
    root, _ = dataset
    src_path = root / "L2" / "annotations" / "chair" / "chair_00001.npz"
    raw, good = src_path.read_bytes(), read_annotation(src_path)
    path = tmp_path / "a.npz"
    caught = 0
    for off in range(0, len(raw), 5):
        damaged = bytearray(raw)
        damaged[off] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            got = read_annotation(path)
        except ValueError:
            caught += 1
            continue
        for k, v in good.items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(got[k], v, err_msg=f"byte {off}, field {k}")
            else:
                assert got[k] == v, (off, k)
    assert caught > len(raw) // 10  # most flips hit checked data


# --------------------------------------------------------------------------- dataset, CLI, demo


def test_pose_dataset_batches_and_cameras_reproduce_masks(dataset):
    root, _ = dataset
    ds = PoseDataset(root, levels=(0, 3))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))
    b = len(ds)
    assert batch["image"].shape == (b, 3, SIZE, SIZE) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (b, SIZE, SIZE) and batch["mask"].dtype == torch.bool
    assert batch["principal"].shape == (b, 2) and batch["label"].dtype == torch.int64
    assert sorted(set(batch["category"])) == list(CATS)
    cams = ds.cameras(batch)
    for i in range(b):
        mesh = ds.cad_mesh(batch["category"][i], int(batch["cad_index"][i]))
        one = pose_to_cameras(batch["azimuth"][i], batch["elevation"][i], batch["theta"][i], batch["distance"][i],
                              SIZE, focal=batch["focal"][i], principal=batch["principal"][i])
        torch.testing.assert_close(cams.R[i], one.R[0])
        # exact for the reason given in test_rerendering_cad_from_annotation_gives_stored_mask
        assert torch.equal(render_mask(mesh, cams[i], SIZE)[0], batch["mask"][i])
    assert torch.equal(batch["visible_mask"], batch["mask"] & ~batch["occluder_mask"])


def test_cli_generates_prints_speed_and_refuses_to_overwrite(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="dmnt_lib")
    add_parser(parser.add_subparsers(dest="command"))
    argv = ["data", "--out", str(tmp_path / "d"), "--per-category", "1", "--levels", "0", "1",
            "--seed", "2", "--image-size", "32", "--categories", "sofa", "--no-progress"]
    args = parser.parse_args(argv)
    assert args.func is run and run(args) == 0
    assert "images/s" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["CAD", "L0", "L1", "meta.json"]
    assert run(parser.parse_args(argv)) == 2 and "--overwrite" in capsys.readouterr().err
    assert run(parser.parse_args(argv + ["--overwrite"])) == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "--out", "x", "--levels", "4"])


@pytest.mark.slow
def test_demo_writes_small_figures_and_reuses_its_cache(tmp_path):
    paths = demo(tmp_path / "figures", tmp_path / "cache", quick=True)
    assert [p.name for p in paths] == ["cad_models.png", "dataset_samples.png"]
    assert all(0 < p.stat().st_size < 300_000 for p in paths)
    meta = tmp_path / "cache" / "synthetic_demo" / "meta.json"
    stamp = meta.stat().st_mtime_ns
    demo(tmp_path / "figures", tmp_path / "cache", quick=True)
    assert meta.stat().st_mtime_ns == stamp  # reused, not regenerated
