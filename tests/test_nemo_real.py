"""Real PASCAL3D+ / OccludedPASCAL3D+ as NeMo prepares them, through the NeMo-preparation
emulator (``dmnt_lib.data.nemo_prep``): CAD frame, cropped-and-scaled cameras, lists, occluder
masks in original pixels, ``occ_mask=None`` never unpickled, rendered-mask cache."""

import math

import numpy as np
import pytest
import torch

from dmnt_lib.camera import pose_to_RT, project_points
from dmnt_lib.data import dataset as dataset_module
from dmnt_lib.data.dataset import PoseDataset
from dmnt_lib.data.nemo_prep import OUT_SHAPES, TOP_50_SIZE, out_shape, prepare_record, prepare_split, render_original
from dmnt_lib.data.pascal3d import Pascal3D, nemo_lists, nemo_resize_rate, read_annotation
from dmnt_lib.data.shapes import CATEGORIES, cad_model, signed_volume, write_cad_library
from dmnt_lib.mesh import read_off, y_up_to_z_up, z_up_to_y_up


def _project(cat, idx, pose, focal, principal):
    """Pixel positions ``(V, 2)`` float64 of a CAD model's vertices (our camera, no PyTorch3D)."""
    R, T = pose_to_RT(*(torch.tensor([pose[k]], dtype=torch.float64) for k in ("azimuth", "elevation", "theta", "distance")))
    xy, depth = project_points(cad_model(cat, idx).verts.double(), R, T, focal, torch.as_tensor(principal, dtype=torch.float64))
    assert (depth > 0).all()
    return xy[0].numpy()


def _placed(cat, idx, pose, corner, rate, viewport=3000.0, margin=6):
    """A photo size and principal point that put the object next to the top-left (``"tl"``) or
    bottom-right (``"br"``) corner, near enough that NeMo's window leaves the photo (padding)."""
    xy = _project(cat, idx, pose, viewport, np.zeros(2))
    lo, hi = xy.min(0), xy.max(0)
    half = np.array(out_shape(cat)[::-1]) / 2 / rate - 20  # the window's half size in photo pixels, less a bit
    if corner == "tl":
        p = np.minimum(-lo + margin, half)
        size = p + hi + margin + 30
    else:
        p = -lo + margin + 30
        size = p + np.minimum(hi + margin, half)
    size = np.ceil(size).astype(int)
    return p, (int(size[1]), int(size[0]))


@pytest.fixture(scope="module")
def nemo_split(tmp_path_factory):
    """Two photos per category, rate 0.8 near the top-left corner and 1.6 near the bottom-right,
    prepared as NeMo does into ``PASCAL3D_NeMo``; CAD files (z up) in ``PASCAL3D+_release1.1``."""
    base = tmp_path_factory.mktemp("nemo")
    write_cad_library(base / "PASCAL3D+_release1.1")
    rng = np.random.default_rng(11)
    records, poses = [], {}
    for cat in CATEGORIES:
        for case, distance, corner in (("near", 4.0, "tl"), ("far", 8.0, "br")):
            idx = int(rng.integers(1, 4))
            pose = dict(azimuth=rng.uniform(0, 2 * math.pi), elevation=math.radians(rng.uniform(0, 25)),
                        theta=math.radians(rng.uniform(-10, 10)), distance=distance)
            p, hw = _placed(cat, idx, pose, corner, 200 * distance / 1000)
            # anti-aliased photos where NeMo enlarges them (rate 1.6), or their staircases would be enlarged too
            rec, _ = render_original(cat, idx, f"n{cat}_{case}", hw, principal=p, seed=len(records),
                                     supersample=2 if distance > 5 else 1, **pose)
            records.append(rec)
            poses[rec.name] = (pose, p)
    infos = prepare_split(records, base / "PASCAL3D_NeMo")
    return base, records, {r.name: i for r, i in zip(records, infos)}, poses


# --------------------------------------------------------------------------- conventions


def test_out_shapes_are_nemos_top_50_sizes_rounded_up_to_32():
    for cat in CATEGORIES:
        h, w = out_shape(cat)
        assert h % 32 == 0 and w % 32 == 0 and 0 <= h - TOP_50_SIZE[cat][0] < 32 and 0 <= w - TOP_50_SIZE[cat][1] < 32
    assert OUT_SHAPES["car"] == (256, 672) and OUT_SHAPES["aeroplane"] == (320, 1024)  # the examples
    with pytest.raises(ValueError, match="category"):
        out_shape("cat")


def test_cad_frame_conversion_is_exact(tmp_path):
    v = torch.randn(50, 3) * 3
    y = z_up_to_y_up(v)
    assert torch.equal(y[:, 0], v[:, 0]) and torch.equal(y[:, 1], v[:, 2]) and torch.equal(y[:, 2], -v[:, 1])
    assert torch.equal(y_up_to_z_up(y), v) and torch.equal(z_up_to_y_up(y_up_to_z_up(v)), v)
    # a proper rotation: orientation (winding) kept
    m = cad_model("car", 1)
    assert signed_volume(y_up_to_z_up(m.verts), m.faces) == pytest.approx(signed_volume(m.verts, m.faces), rel=1e-9)
    # a file as PASCAL3D+ stores it (z up, fused header): the car's roof (our +y) is the file's +z
    (tmp_path / "a.off").write_text("OFF3 1 0\n0.5 -0.25 0.125\n1 2 3\n-1 0 0.75\n3 0 1 2\n")
    verts, faces = read_off(tmp_path / "a.off", z_up=True)
    assert torch.equal(verts, torch.tensor([[0.5, 0.125, 0.25], [1, 3, -2], [-1, 0.75, 0]]))
    assert torch.equal(read_off(tmp_path / "a.off")[0], torch.tensor([[0.5, -0.25, 0.125], [1, 2, 3], [-1, 0, 0.75]]))
    with pytest.raises(TypeError, match="z_up"):
        read_off(tmp_path / "a.off", z_up="yes")
    write_cad_library(tmp_path, ["car"])  # ours are written z up: the same reader gives the model back
    for k in (1, 2):
        assert torch.equal(read_off(tmp_path / "CAD" / "car" / f"{k:02d}.off", z_up=True)[0], cad_model("car", k).verts)


def test_nemo_resize_rate_and_its_fallback():
    assert nemo_resize_rate(5.0) == 1.0 and nemo_resize_rate(4.0) == 0.8 and nemo_resize_rate(8.0) == 1.6
    assert nemo_resize_rate(0.0, bbox=(10.7, 20.2, 110.9, 70.5)) == 224 / 50  # int box: 100 wide, 50 high
    with pytest.raises(ValueError, match="bbox"):
        nemo_resize_rate(0.0)


# --------------------------------------------------------------------------- the crops


@pytest.mark.slow
def test_emulated_nemo_crops_rerender_inside_the_crop(nemo_split, tmp_path):
    """Every category, rate 0.8 and 1.6, principal point near a corner (NeMo pads): the loader's
    camera re-renders the object where the crop shows it (IoU >= 0.95 over the photo's pixels),
    and projects every CAD vertex where NeMo's resize and crop put it (< 1 pixel)."""
    base, records, infos, poses = nemo_split
    ds = PoseDataset(base / "PASCAL3D_NeMo", mask_cache=tmp_path / "masks")
    assert ds.source.convention == "nemo" and ds.source.cad_root == base / "PASCAL3D+_release1.1"
    assert ds.categories == CATEGORIES and len(ds) == len(records)
    seen, by_name, ious, errors = set(), {r.name: r for r in records}, [], []
    for i in range(len(ds)):
        s, item = ds.source[i], ds[i]
        info = infos[s.id]
        pose, p = poses[s.id]
        h, w = out_shape(s.category)
        assert s.image.shape == (h, w, 3) and item["mask"].shape == (h, w)
        assert s.bbox is None and s.occluder_mask is None and not item["occluder_mask"].any()
        pad = info["padding"]
        assert (pad[0][0] or pad[1][0]) if info["rate"] < 1 else (pad[0][1] or pad[1][1]), (s.id, pad)
        # the object's pixels, read back from the JPEG crop (bright on dark; padding is black)
        truth = s.image.astype(np.float64).mean(-1) > 128
        valid = info["valid"]
        mask = item["mask"].numpy()
        iou = (mask & truth & valid).sum() / ((mask | truth) & valid).sum()
        assert iou >= 0.95, (s.id, iou)
        ious.append((iou, s.id))
        # the camera: crop centre + truncation residual, focal 3000 * rate
        assert s.focal == pytest.approx(3000 * info["rate"], rel=1e-12)
        # the crop centre to a pixel (NeMo truncates c = principal * rate; the per-axis resize
        # factor differs from the rate by < 1 / W); the vertex check below is the exact one
        assert np.abs(s.principal - (w // 2, h // 2) - 0.5).max() < 1.0, s.principal
        assert s.crop["origin"] == info["origin"] and s.crop["rate"] == info["rate"]
        (rh, rw), (h0, w0) = info["resized_hw"], by_name[s.id].image.shape[:2]
        expected = _project(s.category, s.cad_index, pose, 3000.0, p) * (rw / w0, rh / h0) - info["origin"]
        got = _project(s.category, s.cad_index, pose, s.focal, s.principal)
        assert np.abs(got - expected).max() < 1.0, (s.id, np.abs(got - expected).max())
        errors.append(np.abs(got - expected).max())
        seen.add((s.category, info["rate"] < 1))
    assert seen == {(c, r) for c in CATEGORIES for r in (True, False)}
    print(f"\nNeMo crops: IoU min {min(ious)[0]:.4f} ({min(ious)[1]}) median {np.median([i for i, _ in ious]):.4f}; vertex error max {max(errors):.3f} px")


# --------------------------------------------------------------------------- small crops for the rest


def _small_record(name, cat="car", idx=2, corner="tl", distance=6.0, subtype="default", seed=0):
    """A quick photo: viewport 300 (objects ~60 px after the resize), for a 96 x 128 crop."""
    pose = dict(azimuth=1.0 + seed, elevation=0.3, theta=0.05, distance=distance)
    rate = 200 * distance / 1000
    xy = _project(cat, idx, pose, 300.0, np.zeros(2))
    lo, hi = xy.min(0), xy.max(0)
    p = -lo + 4 if corner == "tl" else -lo + 30
    size = np.ceil(p + hi + (30 if corner == "tl" else 4)).astype(int)
    rec, mask = render_original(cat, idx, name, (int(size[1]), int(size[0])), principal=p, seed=seed,
                                viewport=300.0, subtype=subtype, **pose)
    return rec, mask, rate


def test_occluded_root_occ_mask_is_resized_and_cut_like_the_image(tmp_path):
    """OccludedPASCAL3D+: a separate root next to the L0 one, ``<cat>FGL1_BGL1`` folders, the
    occluder mask in original-photo pixels; the loader cuts it like the image."""
    write_cad_library(tmp_path, ["car"])
    rec, mask, rate = _small_record("n01", corner="tl")
    ys, xs = np.nonzero(mask)
    occ = np.zeros_like(mask)
    occ[max(ys.min() - 3, 0):ys.max() + 4, max(xs.min() - 3, 0):(xs.min() + xs.max()) // 2] = True  # left half
    occluded = np.where(occ[..., None], np.uint8(140), rec.image)  # a mid-grey occluder
    prepare_split([rec], tmp_path / "PASCAL3D_NeMo", crop_hw=(96, 128))
    from dataclasses import replace
    info = prepare_split([replace(rec, image=occluded, occluder_mask=occ)], tmp_path / "PASCAL3D_OCC_NeMo", level=1,
                         crop_hw=(96, 128))[0]
    ann = read_annotation(info["annotation_path"])
    assert ann["occ_mask"].shape == mask.shape and ann["height"] == mask.shape[0]  # original pixels, as NeMo stores it
    src = Pascal3D(tmp_path / "PASCAL3D_NeMo", levels=(0, 1))
    assert src.occ_root == tmp_path / "PASCAL3D_OCC_NeMo" and [(s.id, s.level) for s in src] == [("n01", 0), ("n01", 1)]
    s0, s1 = src[0], src[1]
    np.testing.assert_array_equal(s0.principal, s1.principal)
    assert s0.occluder_mask is None and s1.occluder_mask.shape == (96, 128)
    grey = (np.abs(s1.image.astype(float) - 140).max(-1) < 40) & info["valid"]  # the occluder, read from the crop

    def iou(shift):
        m = np.roll(s1.occluder_mask, shift, (0, 1))
        return (grey & m).sum() / (grey | m).sum()

    assert iou((0, 0)) > 0.9, iou((0, 0))
    assert iou((0, 0)) >= max(iou(d) for d in ((0, 1), (0, -1), (1, 0), (-1, 0)))  # aligned to the pixel
    assert info["padding"][0][0] or info["padding"][1][0]  # the window left the photo
    ds = PoseDataset(tmp_path / "PASCAL3D_NeMo", levels=(0, 1), mask_cache=tmp_path / "masks")
    a, b = ds[0], ds[1]
    assert torch.equal(a["mask"], b["mask"]) and not a["occluder_mask"].any()
    assert torch.equal(b["visible_mask"], b["mask"] & ~b["occluder_mask"])
    assert 0.2 < float(b["occlusion_ratio"]) < 0.8 and float(a["occlusion_ratio"]) == 0
    with pytest.raises(FileNotFoundError, match="carFGL2_BGL2"):
        Pascal3D(tmp_path / "PASCAL3D_NeMo", categories=["car"], levels=(2,))
    with pytest.raises(FileNotFoundError, match="no category has data at levels \\(2,\\).*PASCAL3D_OCC_NeMo"):
        Pascal3D(tmp_path / "PASCAL3D_NeMo", levels=(2,))


_TRIPPED = []


def _tripwire():
    _TRIPPED.append(True)


class _Trap:
    """Unpickling this calls ``_tripwire``: proof that a loader unpickled."""

    def __reduce__(self):
        return (_tripwire, ())


def test_occ_mask_none_and_other_object_arrays_are_never_unpickled(tmp_path):
    write_cad_library(tmp_path, ["car"])
    rec, _, _ = _small_record("n01")
    info = prepare_record(rec, tmp_path / "PASCAL3D_NeMo", crop_hw=(96, 128))
    from dmnt_lib.data.nemo_prep import write_lists
    write_lists(tmp_path / "PASCAL3D_NeMo", "car", [rec])
    path = info["annotation_path"]
    with np.load(path) as z:  # as NeMo wrote it: occ_mask=None is a pickled object array
        assert "occ_mask" in z.files
        with pytest.raises(ValueError, match="pickle"):
            z["occ_mask"]
        fields = {k: z[k] for k in z.files if k not in ("occ_mask", "cropped_kp_list")}
    np.savez(path, **fields, occ_mask=np.array(_Trap(), dtype=object),
             cropped_kp_list=np.array([_Trap(), [1, 2]], dtype=object))
    ann = read_annotation(path)
    assert ann["occ_mask"] is None and not _TRIPPED
    s = Pascal3D(tmp_path / "PASCAL3D_NeMo")[0]
    item = PoseDataset(tmp_path / "PASCAL3D_NeMo", mask_cache=tmp_path / "masks")[0]
    assert s.occluder_mask is None and not item["occluder_mask"].any() and item["mask"].any() and not _TRIPPED
    with np.load(path, allow_pickle=True) as z:  # the trap works: it is the loader that never unpickles
        z["occ_mask"]
    assert _TRIPPED


def test_lists_subtypes_and_meshes_are_read_and_checked(tmp_path):
    write_cad_library(tmp_path, ["car"])
    recs = [_small_record("n03", idx=2, subtype="sedan", seed=1)[0], _small_record("n01", idx=1, subtype="suv", seed=2)[0],
            _small_record("n02", idx=2, subtype="sedan", seed=3)[0]]
    root = tmp_path / "PASCAL3D_NeMo"
    prepare_split(recs, root, crop_hw=(96, 128))
    folder = root / "lists" / "car"
    assert sorted(p.name for p in folder.iterdir()) == [f"mesh{k:02d}.txt" for k in range(1, 11)] + ["sedan.txt", "suv.txt"]
    assert (folder / "sedan.txt").read_text() == "n03.JPEG\nn02.JPEG\n" and (folder / "mesh03.txt").read_text() == ""
    lists = nemo_lists(folder)
    assert lists["subtypes"] == {"sedan": ["n03", "n02"], "suv": ["n01"]}
    assert lists["meshes"][1] == ["n01"] and lists["meshes"][2] == ["n03", "n02"] and lists["meshes"][7] == []
    src = Pascal3D(root)
    assert [s.id for s in src] == ["n01", "n03", "n02"]  # mesh01, mesh02, then the subtype lists add nothing new
    assert [s.cad_index for s in src] == [1, 2, 2]
    (folder / "mesh01.txt").write_text("")
    (folder / "mesh04.txt").write_text("n01.JPEG\n")  # listed under the wrong CAD model
    with pytest.raises(ValueError, match="mesh04"):
        Pascal3D(root)[2]


def test_fallback_rate_crops_are_written_but_have_no_pose(tmp_path):
    rec, _, _ = _small_record("n01")
    from dataclasses import replace
    info = prepare_record(replace(rec, distance=0.0), tmp_path / "PASCAL3D_NeMo", crop_hw=(96, 128))
    b = rec.bbox.astype(np.int32)
    assert info["rate"] == 224 / min(b[3] - b[1], b[2] - b[0])
    with np.load(info["annotation_path"]) as z:
        assert z["distance"] == 0.0 and z["height"] == rec.image.shape[0]
    with pytest.raises(ValueError, match="distance"):
        read_annotation(info["annotation_path"])


def test_rendered_masks_are_cached_on_disk(tmp_path, monkeypatch):
    write_cad_library(tmp_path, ["car"])
    recs = [_small_record(f"n{i}", seed=i)[0] for i in range(2)]
    prepare_split(recs, tmp_path / "PASCAL3D_NeMo", crop_hw=(96, 128))
    cache = tmp_path / "masks"
    first = [PoseDataset(tmp_path / "PASCAL3D_NeMo", mask_cache=cache)[i]["mask"] for i in range(2)]
    files = sorted(cache.rglob("*.npz"))
    assert len(files) == 2 and all(m.any() for m in first)

    def refuse(*args, **kwargs):
        raise AssertionError("rendered although cached")

    monkeypatch.setattr(dataset_module, "render_mask", refuse)
    again = PoseDataset(tmp_path / "PASCAL3D_NeMo", mask_cache=cache)
    assert all(torch.equal(again[i]["mask"], first[i]) for i in range(2))
    monkeypatch.undo()
    for f in files:
        f.write_bytes(b"damaged")  # a damaged entry is rendered again and replaced
    fresh = PoseDataset(tmp_path / "PASCAL3D_NeMo", mask_cache=cache)
    assert all(torch.equal(fresh[i]["mask"], first[i]) for i in range(2))
    assert all(np.load(f)["bits"].size for f in files)
    mem = PoseDataset(tmp_path / "PASCAL3D_NeMo", mask_cache=False)
    assert torch.equal(mem[0]["mask"], first[0]) and mem.mask_cache is None
    with pytest.raises(TypeError, match="mask_cache"):
        PoseDataset(tmp_path / "PASCAL3D_NeMo", mask_cache=3)


def test_image_size_fits_crops_of_any_shape_into_one_batch(tmp_path):
    """NeMo's crops differ per category; ``image_size`` scales and centres them into one size,
    with the camera following: the re-rendered mask still lies on the object's pixels."""
    from dmnt_lib.data.nemo_prep import write_lists

    write_cad_library(tmp_path, ["car", "chair"])
    root = tmp_path / "PASCAL3D_NeMo"
    for cat, idx, hw in (("car", 2, (96, 128)), ("chair", 1, (128, 96))):
        rec = _small_record(f"n{cat}", cat=cat, idx=idx)[0]
        prepare_record(rec, root, crop_hw=hw)
        write_lists(root, cat, [rec])
    ds = PoseDataset(root, image_size=(64, 80), mask_cache=tmp_path / "masks")
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 64, 80) and batch["mask"].shape == (2, 64, 80)
    for i in range(2):
        truth = batch["image"][i].mean(0) > 0.5  # the bright object, after the resize
        mask = batch["mask"][i]
        assert (truth & mask).sum() / (truth | mask).sum() > 0.9
    plain = PoseDataset(root, mask_cache=tmp_path / "masks")
    for i in range(2):
        a, b = plain.source[i], ds.fit(plain.source[i])
        c = b.crop["fit"]["scale"]
        assert b.focal == pytest.approx(a.focal * c) and c == min(64 / a.image.shape[0], 80 / a.image.shape[1])
    with pytest.raises(TypeError, match="image_size"):
        PoseDataset(root, image_size=64.5)


def test_image_size_keeps_our_synthetic_data_consistent(tmp_path):
    from dmnt_lib.data.synthetic import generate_dataset
    from dmnt_lib.render import render_mask

    generate_dataset(tmp_path / "ds", 1, (0, 1), seed=5, image_size=(48, 64), categories=["sofa", "boat"], progress=False)
    ds = PoseDataset(tmp_path / "ds", levels=(0, 1), image_size=(40, 40), mask_cache=False)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 40, 40)
        rendered = render_mask(ds.cad_mesh(item["category"], int(item["cad_index"])), ds.cameras(item), (40, 40))[0]
        stored = item["mask"]  # the stored mask, resized (nearest) like the image
        assert (rendered & stored).sum() / (rendered | stored).sum() > 0.85
        assert torch.equal(item["visible_mask"], item["visible_mask"] & item["mask"])
