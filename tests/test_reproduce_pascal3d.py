"""``reproduce --pascal3d ROOT`` on data laid out as NeMo writes it (``data.nemo_prep``'s emulation of
``CreatePascal3DNeMo.py``: 2 categories, 5 training and 2 test objects each, OccludedPASCAL3D+ at
L1-L3, PASCAL3D+-frame CAD files): the tiny preset end to end with a rerun that does nothing, the
import against the loader, and each partial download refused before any stage runs."""

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dmnt_lib.__main__ import main
from dmnt_lib.data.nemo_prep import prepare_split, render_original
from dmnt_lib.data.shapes import write_cad_library
from dmnt_lib.reproduce import pascal3d as p3d

CATS = ("car", "chair")
CROPS = {"car": (96, 128), "chair": (128, 96)}  # one crop size per category, as NeMo's (smaller, for speed)


def make_nemo_tree(base: Path, n_train: int = 5, n_test: int = 2) -> Path:
    """NeMo's folders side by side: ``PASCAL3D+_release1.1/CAD``, ``PASCAL3D_train_NeMo``,
    ``PASCAL3D_NeMo`` and ``PASCAL3D_OCC_NeMo`` (the L0 test objects behind a grey occluder that
    hides more of them at each level), every file written by the NeMo-preparation emulator."""
    write_cad_library(base / "PASCAL3D+_release1.1", list(CATS))
    rng = np.random.default_rng(3)

    def record(cat, name, seed):
        pose = dict(azimuth=rng.uniform(0, 2 * math.pi), elevation=math.radians(rng.uniform(0, 30)),
                    theta=math.radians(rng.uniform(-8, 8)), distance=6.0)
        return render_original(cat, int(rng.integers(1, 4)), name, (140, 180), principal=(90.0, 70.0), seed=seed,
                               viewport=300.0, **pose)

    for cat in CATS:
        prepare_split([record(cat, f"{cat}_tr{i}", i)[0] for i in range(n_train)], base / "PASCAL3D_train_NeMo",
                      crop_hw=CROPS[cat])
        test = [record(cat, f"{cat}_te{i}", 100 + i) for i in range(n_test)]
        prepare_split([r for r, _ in test], base / "PASCAL3D_NeMo", crop_hw=CROPS[cat])
        for k in (1, 2, 3):
            occluded = []
            for r, mask in test:
                ys, xs = np.nonzero(mask)
                occ = np.zeros_like(mask)
                occ[max(ys.min() - 2, 0):ys.max() + 3, max(xs.min() - 2, 0):xs.min() + int((xs.max() + 1 - xs.min()) * (0.2 + 0.2 * k))] = True
                occluded.append(replace(r, image=np.where(occ[..., None], np.uint8(140), r.image), occluder_mask=occ))
            prepare_split(occluded, base / "PASCAL3D_OCC_NeMo", level=k, crop_hw=CROPS[cat])
    return base


@pytest.fixture(scope="module")
def nemo_tree(tmp_path_factory):
    return make_nemo_tree(tmp_path_factory.mktemp("nemo_tree"))


@pytest.fixture
def broken(nemo_tree, tmp_path):
    """A copy of the tree to damage."""
    return Path(shutil.copytree(nemo_tree, tmp_path / "data"))


def _reproduce(root, out, *extra):
    return main(["reproduce", "--pascal3d", str(root), "--preset", "pascal3d-tiny", "--out", str(out), *extra])


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_reproduce_pascal3d_tiny_end_to_end(nemo_tree, tmp_path, capsys):
    from dmnt_lib.figures.cli import FIGURE_FILES

    out = tmp_path / "run"
    assert _reproduce(nemo_tree, out) == 0
    log = capsys.readouterr().out
    assert sum(line.startswith("[") and "running" in line for line in log.splitlines()) == 8
    assert "re-ran" not in log  # evaluate stored each shown image's pose and mask
    keys = {"n", "acc_pi6", "acc_pi18", "median_deg", "cls_acc", "miou", "acc_pi6_pred_cls", "n_undetected"}
    for run in ("dmnt", "baseline"):
        (res_path,) = (out / run / "eval").glob("*/results.json")
        res = json.loads(res_path.read_text())
        assert {"method", "config", "levels"} <= set(res) and sorted(res["levels"]) == ["0", "1", "2", "3"]
        for level, row in res["levels"].items():
            assert keys <= set(row), (run, level, keys - set(row))
            assert row["n"] == 2  # 2 categories x 1 object per level
    for f in FIGURE_FILES + ["training_loss.png"]:
        assert (out / "figures" / f).stat().st_size > 0, f
    # both methods trained on the same imported images, at the one common size
    meta = json.loads((out / "data" / "train" / "meta.json").read_text())
    assert meta["image_size"] == [64, 64] and meta["counts"] == {"L0": {"car": 4, "chair": 4}}
    from PIL import Image

    assert {Image.open(p).size for p in (out / "data").rglob("*.png")} == {(64, 64)}
    base_run = json.loads((out / "baseline" / "run.json").read_text())
    assert base_run["config"]["image_size"] == 64, base_run["config"]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["stages"]] == ["ran"] * 8 and summary["pascal3d"] == str(nemo_tree)
    # A rerun does nothing: every stage skipped, no file touched.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if "summary" not in p.name}
    assert _reproduce(nemo_tree, out) == 0
    assert [r["status"] for r in json.loads((out / "summary.json").read_text())["stages"]] == ["skipped"] * 8
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if "summary" not in p.name} == before
    # ... and a changed config is refused, as in the synthetic run
    capsys.readouterr()
    assert _reproduce(nemo_tree, out, "--set", "train.epochs=2") == 3
    assert "train: epochs: 1 -> 2" in capsys.readouterr().err


# --------------------------------------------------------------------------- the import


def test_import_is_what_the_loader_gives_at_the_common_size(nemo_tree, tmp_path, monkeypatch):
    """Every imported sample equals ``PoseDataset(NeMo root, image_size=(S, S))``'s item (image, masks
    rendered from the CAD model, camera); an interrupted import resumes to the same bytes; another job
    starts afresh; a folder that is not ours is refused."""
    from dmnt_lib.data import PoseDataset

    found = p3d.survey(nemo_tree)
    out = tmp_path / "test"
    p3d.import_nemo(out, found, ["L0", "L2"], 48, None, 0, echo=lambda *_: None)
    got = PoseDataset(out, None, (0, 2), mask_cache=False)
    assert len(got) == 8
    for level, root in ((0, nemo_tree / "PASCAL3D_NeMo"), (2, nemo_tree / "PASCAL3D_OCC_NeMo")):
        ref = PoseDataset(root, list(CATS), (level,), cad_root=found.cad_base, occ_root=root, image_size=(48, 48),
                          mask_cache=False)
        by_id = {ref.source.items[i][2]: ref[i] for i in range(len(ref))}
        for j in range(len(got)):
            a = got[j]
            if int(a["level"]) != level:
                continue
            b = by_id[a["id"]]
            for k in ("image", "mask", "visible_mask", "occluder_mask", "azimuth", "elevation", "theta", "distance",
                      "focal", "principal", "bbox", "cad_index", "label"):
                assert torch.equal(a[k], b[k]), (a["id"], level, k)
            assert a["mask"].any() and (level == 0) == (not a["occluder_mask"].any())

    # interrupted after two samples, then resumed: the same files as the uninterrupted import
    clean = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    import dmnt_lib.data.pascal3d as loader  # import_nemo takes write_sample from here when it runs

    calls = []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return original(*args, **kw)

    original = loader.write_sample
    monkeypatch.setattr(loader, "write_sample", failing)
    again = tmp_path / "again"
    with pytest.raises(KeyboardInterrupt):
        p3d.import_nemo(again, found, ["L0", "L2"], 48, None, 0, echo=lambda *_: None)
    assert (again / p3d.MARKER).is_file() and not (again / "meta.json").exists()
    monkeypatch.setattr(loader, "write_sample", original)
    p3d.import_nemo(again, found, ["L0", "L2"], 48, None, 0, echo=lambda *_: None)
    assert {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file()} == clean

    # the same job on a finished folder does nothing; another job starts afresh; a subset keeps the same
    # objects at every level
    before = {p: p.stat().st_mtime_ns for p in again.rglob("*")}
    p3d.import_nemo(again, found, ["L0", "L2"], 48, None, 0, echo=lambda *_: None)
    assert {p: p.stat().st_mtime_ns for p in again.rglob("*")} == before
    p3d.import_nemo(again, found, ["L0", "L1"], 48, 1, 0, echo=lambda *_: None)
    lists = {p.relative_to(again): p.read_text() for p in again.rglob("lists/*.txt")}
    assert sorted(map(str, lists)) == [f"L{k}/lists/{c}.txt" for k in (0, 1) for c in CATS]
    assert lists[Path("L0/lists/car.txt")] == lists[Path("L1/lists/car.txt")] and lists[Path("L0/lists/car.txt")].count("\n") == 1
    assert not (again / "L2").exists()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        p3d.import_nemo(tmp_path / "foreign", found, ["L0"], 48, 1, 0, echo=lambda *_: None)
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- what was found, and what is missing


def test_dry_run_lists_what_was_found_and_writes_nothing(nemo_tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DMNT_QUICK", "1")  # with --pascal3d and no --preset: pascal3d-tiny
    out = tmp_path / "run"
    assert main(["reproduce", "--pascal3d", str(nemo_tree), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert f"CAD models {nemo_tree / 'PASCAL3D+_release1.1' / 'CAD'}: car 10, chair 10 (20 models)" in text
    assert f"train L0   {nemo_tree / 'PASCAL3D_train_NeMo'}: car 5, chair 5 (10 images listed)" in text
    for k in (1, 2, 3):
        assert f"test L{k}    {nemo_tree / 'PASCAL3D_OCC_NeMo'}: car 2, chair 2 (4 images listed)" in text
    assert "preset pascal3d-tiny: categories car, chair; training up to 4 per category, test up to 1" in text
    assert text.count("run: not finished") == 8 and not out.exists()
    # a split folder given instead of the folder holding it is understood
    assert main(["reproduce", "--pascal3d", str(nemo_tree / "PASCAL3D_NeMo"), "--out", str(out), "--dry-run"]) == 0
    assert "using the folder that holds it" in capsys.readouterr().out


def _no_occ(root):
    shutil.rmtree(root / "PASCAL3D_OCC_NeMo")


def _no_level_2(root):
    for sub in ("annotations", "images", "lists"):
        for c in CATS:
            shutil.rmtree(root / "PASCAL3D_OCC_NeMo" / sub / f"{c}FGL2_BGL2")


def _no_chair_level_3(root):
    shutil.rmtree(root / "PASCAL3D_OCC_NeMo" / "annotations" / "chairFGL3_BGL3")


def _empty_list(root):
    for f in (root / "PASCAL3D_NeMo" / "lists" / "chair").glob("*.txt"):
        f.write_text("")


def _missing_image(root):
    (root / "PASCAL3D_train_NeMo" / "images" / "car" / "car_tr1.JPEG").unlink()


def _ours_not_nemos(root):
    (root / "PASCAL3D_NeMo" / "meta.json").write_text(json.dumps({"format": "dmnt-synthetic-pascal3d"}))


def _annotation_without_photo_size(root):
    path = root / "PASCAL3D_train_NeMo" / "annotations" / "chair" / "chair_tr0.npz"
    with np.load(path, allow_pickle=True) as z:
        fields = {k: z[k] for k in z.files if k not in ("height", "width")}
    np.savez(path, **fields)


def _occ_without_occ_mask(root):
    path = root / "PASCAL3D_OCC_NeMo" / "annotations" / "carFGL1_BGL1" / "car_te0.npz"
    with np.load(path, allow_pickle=True) as z:
        fields = {k: z[k] for k in z.files if k != "occ_mask"}
    np.savez(path, **fields)


def _no_cad(root):
    shutil.rmtree(root / "PASCAL3D+_release1.1")


def _no_chair_cad(root):
    shutil.rmtree(root / "PASCAL3D+_release1.1" / "CAD" / "chair")


@pytest.mark.parametrize("damage, expected", [
    (_no_occ, r"missing folder {root}/PASCAL3D_OCC_NeMo: OccludedPASCAL3D\+ \(levels 1, 2, 3\).*evaluate.levels=\[0\]"),
    (_no_level_2, r"missing level 2: {root}/PASCAL3D_OCC_NeMo/annotations has no <category>FGL2_BGL2 folder \(levels found "
                  r"there: \[1, 3\]\).*evaluate.levels=\[0,1,3\]"),
    (_no_chair_level_3, r"missing folder {root}/PASCAL3D_OCC_NeMo/annotations/chairFGL3_BGL3: chair at level 3"),
    (_empty_list, r"empty list: {root}/PASCAL3D_NeMo/lists/chair names no image \(chair at level 0\); expected one image "
                  r"name per line"),
    (_missing_image, r"1 of the 5 ids listed in {root}/PASCAL3D_train_NeMo/lists/car have no image file in "
                     r"{root}/PASCAL3D_train_NeMo/images/car \(first: car_tr1\)"),
    (_ours_not_nemos, r"wrong convention: {root}/PASCAL3D_NeMo holds a dataset of our own format"),
    (_annotation_without_photo_size, r"wrong convention: {root}/PASCAL3D_train_NeMo/annotations/chair/chair_tr0.npz lacks "
                                     r"\['height', 'width'\]; expected an annotation written by NeMo's"),
    (_occ_without_occ_mask, r"wrong convention: {root}/PASCAL3D_OCC_NeMo/annotations/carFGL1_BGL1/car_te0.npz \(level 1\) "
                            r"has no 'occ_mask'"),
    (_no_cad, r"missing folder {root}/PASCAL3D\+_release1.1/CAD: PASCAL3D\+ release 1.1's CAD models"),
    (_no_chair_cad, r"missing CAD models: {root}/PASCAL3D\+_release1.1/CAD/chair holds no NN.off file"),
])
def test_a_partial_download_is_refused_before_any_stage_runs(broken, tmp_path, capsys, damage, expected):
    import re

    damage(broken)
    out = tmp_path / "run"
    for extra in ([], ["--dry-run"]):
        assert _reproduce(broken, out, *extra) == 2
        err = capsys.readouterr().err
        assert re.search(expected.format(root=re.escape(str(broken))), err), err
        assert "(1 problem); nothing was run" in err and "PASCAL3D_OCC_NeMo/{images,annotations,lists}" in err
        assert not out.exists()


def test_missing_levels_can_be_left_out_and_every_problem_is_listed(broken, tmp_path, capsys):
    _no_occ(broken)
    assert _reproduce(broken, tmp_path / "run", "--dry-run", "--set", "evaluate.levels=[0]") == 0
    assert "test L1" not in capsys.readouterr().out
    _empty_list(broken)
    _no_chair_cad(broken)
    assert _reproduce(broken, tmp_path / "run", "--dry-run") == 2
    err = capsys.readouterr().err
    assert "(3 problems)" in err and "empty list" in err and "missing CAD models" in err and "PASCAL3D_OCC_NeMo:" in err
    assert _reproduce(tmp_path / "nowhere", tmp_path / "run") == 2
    assert f"--pascal3d {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err


# --------------------------------------------------------------------------- presets and arguments


def test_presets_pass_their_check_and_arguments_are_checked(nemo_tree, tmp_path, capsys):
    for name in p3d.PASCAL3D_PRESETS:
        assert p3d.check_pascal3d_preset(p3d.pascal3d_preset(name)) == p3d.PASCAL3D_PRESETS[name]
    out = ["--out", str(tmp_path / "run")]
    cases = [
        (["reproduce", "--preset", "pascal3d", *out], "--preset pascal3d runs on real data: give --pascal3d ROOT"),
        (["reproduce", "--pascal3d", str(nemo_tree), "--preset", "tiny", *out], "--preset tiny is a synthetic-data preset"),
        (["reproduce", "--pascal3d", str(nemo_tree), "--quick", *out], "--quick selects the synthetic quick preset"),
        (["reproduce", "--pascal3d", str(nemo_tree), "--preset", "pascal3d-tiny", "--set", "train_data.per_categroy=3", *out],
         "--set train_data.per_categroy: unknown preset field"),
        (["reproduce", "--pascal3d", str(nemo_tree), "--preset", "pascal3d-tiny", "--set", "image_size=66", *out],
         "--set image_size: 66 is not divisible by DMNT's feature stride 4"),
        (["reproduce", "--pascal3d", str(nemo_tree), "--preset", "pascal3d-tiny", "--set", "baseline.backbone=vgg", *out],
         "--set baseline.backbone: must be one of"),
        (["reproduce", "--pascal3d", str(nemo_tree), "--preset", "pascal3d-tiny", "--set", 'categories=["car","bus"]', *out],
         "missing folder"),
    ]
    for argv, message in cases:
        assert main(argv + ["--dry-run"]) == 2, argv
        assert message in capsys.readouterr().err, argv


@pytest.mark.parametrize("name", sorted(p3d.PASCAL3D_PRESETS))
def test_every_stage_command_line_is_accepted(name, nemo_tree, tmp_path, monkeypatch):
    """Each real stage's argv parses with the registered CLI, for every PASCAL3D+ preset (on the tree's
    two categories), and reaches the device."""
    from dmnt_lib.__main__ import build_parser

    calls = []
    monkeypatch.setattr(p3d, "cli_call", lambda argv: calls.append([str(a) for a in argv]))
    config = p3d.pascal3d_preset(name)
    config["categories"] = list(CATS)
    stages = p3d.build_pascal3d_stages(tmp_path, config, nemo_tree, device="cuda:1")
    assert [s.name for s in stages] == ["data-train", "data-test", "deform", "train", "baseline", "evaluate-dmnt",
                                        "evaluate-baseline", "figures"]
    for s in stages[2:7]:
        s.run()
    parser = build_parser()
    for argv in calls:
        parser.parse_args(argv)  # SystemExit(2) on an unknown or malformed option
        assert argv[argv.index("--device") + 1] == "cuda:1", argv
    assert [c[0] for c in calls] == ["deform", "train", "baseline", "evaluate", "evaluate"]
    assert calls[0][calls[0].index("--data") + 1] == str(nemo_tree / "PASCAL3D+_release1.1")  # deform on the download's CAD
    if name == "pascal3d":
        assert "--stock" in calls[2] and calls[2][calls[2].index("--backbone") + 1] == "resnet50"
        assert "arch=resnet50" in calls[1] and "stride=8" in calls[1]
    assert "--weights" not in calls[1] and "--weights" not in calls[2]  # from scratch unless asked
    assert "--no-augment" in calls[2]  # neither learner augments (the full synthetic run's fair comparison)
    calls.clear()
    config["weights"] = "w.pt"  # ImageNet weights go to both backbones
    for s in p3d.build_pascal3d_stages(tmp_path, config, nemo_tree, device="cuda:1")[3:5]:
        s.run()
    assert all(c[c.index("--weights") + 1] == "w.pt" for c in calls) and len(calls) == 2
    parser.parse_args(calls[0])
