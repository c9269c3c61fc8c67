"""Synthetic PASCAL3D+-style data: CAD models, scenes, occlusion levels, format, loader, CLI."""

import argparse
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from dmnt_lib.camera import pose_to_cameras
from dmnt_lib.data.cli import add_parser, demo, run
from dmnt_lib.data.dataset import PoseDataset, cameras_for
from dmnt_lib.data.occlusion import LEVEL_RANGES, place_occluders
from dmnt_lib.data.pascal3d import Pascal3D, read_annotation
from dmnt_lib.data.shapes import CATEGORIES, NUM_CAD_MODELS, cad_model, cad_models, signed_volume, write_cad_library
from dmnt_lib.data.synthetic import generate_dataset
from dmnt_lib.mesh import UVMesh, read_off
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
        v, f = read_off(p)
        assert torch.equal(f, m.faces)
        torch.testing.assert_close(v, m.verts, atol=1e-7, rtol=0)


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
        v, f = read_off(root / "CAD" / s.category / f"{s.cad_index:02d}.off")
        mesh = UVMesh(v, f, torch.zeros(1, 2), torch.zeros_like(f))
        cams = pose_to_cameras(s.azimuth, s.elevation, s.theta, s.distance, s.image.shape[:2], focal=s.focal,
                               principal=torch.tensor(s.principal, dtype=torch.float32))
        rendered = render_mask(mesh, cams, s.image.shape[:2])[0].numpy()
        assert _iou(rendered, s.mask) >= 0.99, (s.id, s.level)
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


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    kw = dict(levels=(0, 2), image_size=48, categories=("bus",), progress=False)
    generate_dataset(tmp_path / "a", 1, seed=5, **kw)
    generate_dataset(tmp_path / "b", 1, seed=5, **kw)
    generate_dataset(tmp_path / "c", 1, seed=6, **kw)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    img = Path("L0/images/bus/bus_00000.png")
    assert a[img] != c[img]


def test_existing_dataset_is_never_overwritten_silently(tmp_path):
    kw = dict(levels=(0,), image_size=32, categories=("tvmonitor",), progress=False)
    out = tmp_path / "ds"
    generate_dataset(out, 1, seed=0, **kw)
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate_dataset(out, 1, seed=1, **kw)
    before = (out / "L0/images/tvmonitor/tvmonitor_00000.png").read_bytes()
    generate_dataset(out, 1, seed=1, overwrite=True, **kw)
    assert (out / "L0/images/tvmonitor/tvmonitor_00000.png").read_bytes() != before
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a dmnt dataset"):
        generate_dataset(foreign, 1, overwrite=True, **kw)
    assert (foreign / "thesis.tex").read_text() == "precious"
    with pytest.raises(ValueError, match="per_category"):
        generate_dataset(tmp_path / "x", 0, **kw)
    with pytest.raises(ValueError, match="levels"):
        generate_dataset(tmp_path / "x", 1, levels=(4,), image_size=32)


# --------------------------------------------------------------------------- loader


def _to_nemo(ours: Path, nemo: Path, cats) -> None:
    """Copy our layout into NeMo's naming (split folder + CAD in the parent), ids with .png in lists."""
    shutil.copytree(ours / "CAD", nemo.parent / "CAD")
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


def test_real_style_fixture_without_masks(tmp_path):
    """PASCAL3D+ proper: JPEG images, NeMo fields only (no masks), occluded level with masks only."""
    from PIL import Image

    root = tmp_path / "val"
    write_cad_library(tmp_path, ["car"])
    rng = np.random.default_rng(0)
    img = (rng.uniform(0, 255, (40, 56, 3))).astype(np.uint8)
    for name in ("car", "carFGL1_BGL1"):
        (root / "images" / name).mkdir(parents=True)
        (root / "annotations" / name).mkdir(parents=True)
        Image.fromarray(img).save(root / "images" / name / "n0001.JPEG", quality=95)
        fields = dict(azimuth=1.2, elevation=0.2, theta=-0.1, distance=4.5, focal=1.0, viewport=150.0,
                      principal=np.array([28.0, 20.0]), cad_index=3, box_obj=np.array([1, 2, 3, 4]))
        if name != "car":
            mask = np.zeros((40, 56), bool)
            mask[10:30, 10:40] = True
            occ = np.zeros_like(mask)
            occ[10:30, 10:22] = True
            fields.update(mask=mask, occluder_mask=occ)
        np.savez(root / "annotations" / name / "n0001.npz", **fields)
    (root / "lists").mkdir()
    (root / "lists" / "car.txt").write_text("n0001\n")
    (root / "lists" / "carFGL1_BGL1").mkdir()  # NeMo keeps per-CAD-model lists in a folder
    (root / "lists" / "carFGL1_BGL1" / "mesh03.txt").write_text("n0001.JPEG\n")
    src = Pascal3D(root, levels=(0, 1))
    s0, s1 = src[0], src[1]
    decoded = np.asarray(Image.open(root / "images" / "car" / "n0001.JPEG").convert("RGB"))
    np.testing.assert_array_equal(s0.image, decoded)
    assert s0.focal == 150.0 and s0.cad_index == 3 and s0.mask is None and s0.occlusion_ratio is None
    assert s1.occlusion_ratio == pytest.approx(12 / 30) and s1.visible_mask.sum() == 20 * 18
    ds = PoseDataset(root, levels=(0,))
    item = ds[0]
    expect = render_mask(ds.cad_mesh("car", 3), cameras_for(item), (40, 56))[0]
    assert item["mask"].any() and torch.equal(item["mask"], expect)
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
    ann.write_bytes(b"not a zip file")
    src = Pascal3D(copy, categories=["car"])
    with pytest.raises(ValueError, match="corrupt annotation"):
        src[0]
    fields = {k: v for k, v in np.load(root / "L0/annotations/car/car_00000.npz").items() if k != "distance"}
    np.savez(ann, **fields)
    with pytest.raises(ValueError, match="distance"):
        src[0]
    np.savez(ann, **{**fields, "distance": good["distance"], "mask": np.zeros((3, 3), bool)})
    with pytest.raises(ValueError, match="mask"):
        src[0]
    np.savez(ann, **{**fields, "distance": good["distance"], "cad_index": 0})
    with pytest.raises(ValueError, match="cad_index"):
        src[0]
    np.savez(ann, **{**fields, "distance": good["distance"], "category": "bus"})
    with pytest.raises(ValueError, match="category"):
        src[0]
    img = copy / "L0" / "images" / "car" / "car_00001.png"
    img.write_bytes(img.read_bytes()[:40])
    with pytest.raises(ValueError, match="corrupt image"):
        src[1]
    img.unlink()
    with pytest.raises(FileNotFoundError, match="car_00001"):
        src[1]
    with pytest.raises(IndexError):
        src[len(src)]


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
        assert _iou(render_mask(mesh, cams[i], SIZE)[0], batch["mask"][i]) >= 0.99
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
