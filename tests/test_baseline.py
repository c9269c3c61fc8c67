"""Multi-task Mask R-CNN baseline: pose bins, the positive-only pose loss, a real overfit, resume, DDP, schema, errors."""

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dmnt_lib import evaluate as ev
from dmnt_lib.__main__ import main
from dmnt_lib.baseline import BaselineConfig, PoseBins, build_model, pose_loss
from dmnt_lib.baseline.model import AngleBins
from dmnt_lib.baseline.train import DetectionData, collate, load_run, train
from dmnt_lib.camera import pose_to_rotation, rotation_error
from dmnt_lib.data.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parent.parent
# A very small network for the tests that only need the mechanics (not the learning) to be right.
TINY = dict(image_size=32, fpn_channels=16, representation_size=32, mask_layers=(16,), mask_dim_reduced=16,
            rpn_pre_nms_top_n_train=50, rpn_post_nms_top_n_train=20, rpn_pre_nms_top_n_test=30,
            rpn_post_nms_top_n_test=10, rpn_batch_size_per_image=32, box_batch_size_per_image=16, batch_size=4,
            warmup_iters=2)


@pytest.fixture(scope="module")
def data8(tmp_path_factory):
    """8 training images: 4 categories x 2, 64 px (the same folder for every test of this module)."""
    root = tmp_path_factory.mktemp("bl") / "train8"
    generate_dataset(root, 2, (0,), seed=0, image_size=64, categories=("aeroplane", "bottle", "car", "chair"), progress=False)
    return root


@pytest.fixture(scope="module")
def data4(tmp_path_factory):
    root = tmp_path_factory.mktemp("bl") / "train4"
    generate_dataset(root, 2, (0, 2), seed=2, image_size=32, categories=("car", "sofa"), progress=False)
    return root


# --------------------------------------------------------------------------- bins


def _circ(a, b):
    d = torch.remainder(a - b, 2 * math.pi)
    return torch.minimum(d, 2 * math.pi - d)


def test_bins_round_trip_and_bin_centre_error_bound():
    bins = PoseBins()
    for ang in bins.angles:
        k = torch.arange(ang.n)
        assert torch.equal(ang.encode(ang.decode(k)), k)  # every centre falls in its own bin
    g = torch.Generator().manual_seed(0)
    pose = torch.stack([torch.rand(2000, generator=g) * 2 * math.pi,
                        (torch.rand(2000, generator=g) - 0.5) * math.pi,
                        (torch.rand(2000, generator=g) - 0.5) * 2 * math.pi], 1)
    dec = bins.decode(bins.encode(pose))
    az, el, th = bins.angles
    assert (_circ(dec[:, 0], pose[:, 0]) <= az.width / 2 + 1e-5).all()
    assert ((dec[:, 1] - pose[:, 1]).abs() <= el.width / 2 + 1e-5).all()
    assert (_circ(dec[:, 2], pose[:, 2]) <= th.width / 2 + 1e-5).all()
    err = rotation_error(pose_to_rotation(*pose.double().T).double(), pose_to_rotation(*dec.double().T).double())
    assert (err <= bins.max_error + 1e-5).all()
    assert err.max() > 0.5 * bins.max_error  # the bound is not vacuous
    # wrapping: angles outside the range land in the circular bin of their equivalent angle
    assert torch.equal(az.encode(torch.tensor([-0.01, 2 * math.pi + 0.01])), torch.tensor([az.n - 1, 0]))
    assert torch.equal(el.encode(torch.tensor([-2.0, 2.0])), torch.tensor([0, el.n - 1]))  # clamped
    logits = torch.full((1, bins.total), -5.0)
    logits[0, 3] = logits[0, bins.n_azimuth + 7] = logits[0, bins.n_azimuth + bins.n_elevation + 20] = 5.0
    assert torch.allclose(bins.decode_logits(logits), bins.decode(torch.tensor([[3, 7, 20]])))


def test_bad_bins_and_configs_are_refused():
    with pytest.raises(ValueError, match="bins"):
        AngleBins(0.0, 1.0, 0, True)
    with pytest.raises(ValueError, match="lo < hi"):
        AngleBins(1.0, 1.0, 4, False)
    with pytest.raises(ValueError, match="backbone"):
        BaselineConfig(backbone="vgg16")
    with pytest.raises(ValueError, match="batch_size"):
        BaselineConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        BaselineConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="unknown baseline config"):
        BaselineConfig.from_dict({"epochs": 1, "colour": 2})
    with pytest.raises(ValueError, match="shape"):
        PoseBins().encode(torch.zeros(3))
    with pytest.raises(ValueError, match="weights"):
        build_model(BaselineConfig(weights="NoSuchWeights.X"))
    with pytest.raises(TypeError, match="config"):
        build_model({"backbone": "resnet18"})


# --------------------------------------------------------------------------- pose loss


def test_pose_loss_has_zero_gradient_for_unmatched_rois():
    bins = PoseBins()
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 13, bins.total, generator=g, requires_grad=True)
    labels = torch.tensor([0, 3, 0, 0, 7, 0, 1, 0, 0, 12])
    targets = torch.rand(10, 3, generator=g)
    pose_loss(logits, labels, targets, bins).backward()
    bg = labels == 0
    assert logits.grad[bg].abs().max() == 0
    # positives: gradient only on their ground-truth class's row
    for i in torch.where(~bg)[0]:
        assert logits.grad[i, labels[i]].abs().sum() > 0
        others = [c for c in range(13) if c != labels[i]]
        assert logits.grad[i, others].abs().max() == 0
    # no positives: zero, and still differentiable (DDP needs every parameter in the graph)
    z = torch.randn(4, 13, bins.total, requires_grad=True)
    loss = pose_loss(z, torch.zeros(4, dtype=torch.long), torch.zeros(4, 3), bins)
    loss.backward()
    assert loss.item() == 0 and z.grad.abs().max() == 0


def test_model_pose_loss_uses_only_the_sampled_positive_rois(data4):
    torch.manual_seed(0)
    cfg = BaselineConfig(**TINY)
    model = build_model(cfg).train()
    images, targets = collate([DetectionData(data4, config=cfg, augment=False)[i] for i in range(2)])
    captured = []

    def keep(module, inputs, output):
        output.retain_grad()
        captured.append(output)

    model.roi_heads.box_head.register_forward_hook(keep)
    losses = model(images, targets)
    losses["loss_pose"].backward()
    labels = torch.cat(model.roi_heads.last_sample[0])
    grad = captured[0].grad
    assert grad.shape[0] == labels.shape[0] and (labels == 0).any() and (labels > 0).any()
    assert grad[labels == 0].abs().max() == 0
    assert grad[labels > 0].abs().sum(1).min() > 0
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg", "loss_pose"}


# --------------------------------------------------------------------------- data


def test_targets_from_masks_and_pose_consistent_flip(data4):
    from dmnt_lib.data import PoseDataset
    from dmnt_lib.render import render_mask

    cfg = BaselineConfig(**TINY)
    plain = DetectionData(data4, config=cfg, augment=False)
    aug = DetectionData(data4, config=cfg, augment=True)
    ds = PoseDataset(data4)
    flipped = 0
    for epoch in range(6):
        aug.set_epoch(epoch)
        for i in range(len(plain)):
            im0, t0 = plain[i]
            im1, t1 = aug[i]
            m0, m1 = t0["masks"][0].bool(), t1["masks"][0].bool()
            ys, xs = torch.nonzero(m1, as_tuple=True)
            assert t1["boxes"][0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            if torch.equal(m1, m0.flip(-1)) and not torch.equal(m1, m0):
                flipped += 1
                # the mirrored pose renders the mirrored silhouette (symmetric CAD models)
                item = dict(ds[i])
                w = item["image"].shape[-1]
                item.update(azimuth=t1["pose"][0, 0], theta=t1["pose"][0, 2],
                            principal=torch.tensor([w - float(item["principal"][0]), float(item["principal"][1])]))
                r = render_mask(ds.cad_mesh(item["category"], int(item["cad_index"])), ds.cameras(item), (w, w))[0]
                assert (r & m1).sum() / (r | m1).sum() > 0.95
            else:
                assert torch.equal(m1, m0) and torch.equal(t1["pose"], t0["pose"])
    assert 0 < flipped < 6 * len(plain)
    # the same (seed, epoch, image) gives the same augmentation
    aug.set_epoch(3)
    a, b = aug[1], aug[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["pose"], b[1]["pose"])


def test_dataset_without_masks_is_a_clear_error(data4, tmp_path):
    import shutil

    from dmnt_lib.data.pascal3d import npz_bytes

    root = tmp_path / "nomask"
    shutil.copytree(data4, root)
    for f in (root / "L0" / "annotations").rglob("*.npz"):
        with np.load(f) as z:
            arrays = {k: z[k] for k in z.files if k not in ("mask", "visible_mask", "occluder_mask", "occlusion_ratio")}
        f.write_bytes(npz_bytes(arrays))
    with pytest.raises(ValueError, match="no 'mask' field"):
        DetectionData(root, render_missing_masks=False)[0]
    # with rendering (the default, as the paper does) the mask is the CAD projection
    rendered = DetectionData(root, config=BaselineConfig(**TINY), augment=False)[0][1]["masks"]
    original = DetectionData(data4, config=BaselineConfig(**TINY), augment=False)[0][1]["masks"]
    assert (rendered & original).sum() / (rendered | original).sum() > 0.95
    shutil.rmtree(root / "CAD")
    with pytest.raises(FileNotFoundError):
        DetectionData(root)[0]


# --------------------------------------------------------------------------- training


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_resume_is_bit_identical(data4, tmp_path):
    cfg = BaselineConfig(**TINY, epochs=2)
    h_full = train(data4, tmp_path / "full", cfg, progress=False, echo=None)
    cfg1 = BaselineConfig(**TINY, epochs=1)
    train(data4, tmp_path / "part", cfg1, progress=False, echo=None)
    with pytest.raises(FileExistsError, match="resume"):
        train(data4, tmp_path / "part", cfg1, progress=False, echo=None)
    with pytest.raises(ValueError, match="another config"):
        train(data4, tmp_path / "part", BaselineConfig(**{**TINY, "lr": 0.1}, epochs=2), resume=True, progress=False, echo=None)
    with pytest.raises(ValueError, match="other data"):
        train(data4, tmp_path / "part", cfg, resume=True, per_category=1, progress=False, echo=None)
    h_res = train(data4, tmp_path / "part", cfg, resume=True, progress=False, echo=None)
    full, _, meta_full = load_run(tmp_path / "full")
    part, _, meta_part = load_run(tmp_path / "part")
    a, b = full.state_dict(), part.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert h_full["iterations"] == h_res["iterations"]  # losses and learning rates, step by step
    assert meta_full["epochs_done"] == meta_part["epochs_done"] == 2
    init = build_model(cfg).state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a)  # it did train


@pytest.mark.slow
def test_tiny_overfit_learns_class_pose_and_amodal_mask(data8, tmp_path):
    """8 images, no augmentation: the network memorises them (class, pose bins, amodal mask)."""
    cfg = BaselineConfig(image_size=64, epochs=50, batch_size=8, lr=3e-3, warmup_iters=10, hflip=False, color_jitter=0.0)
    history = train(data8, tmp_path / "run", cfg, progress=False, echo=None)
    assert history["epochs"][-1]["loss"] < 0.25 * history["epochs"][0]["loss"]
    res = ev.evaluate_run(tmp_path / "run", data8, levels=(0,), progress=False, echo=None)
    m = res["levels"]["0"]
    assert m["n"] == 8 and m["n_undetected"] == 0
    # At most one of 8 wrong (chance: 2 of 8). Which image is last to be memorised depends on the CPU's
    # float rounding: CI's machine once left one of 8 wrong at epoch 50 where this machine had none.
    assert m["cls_acc"] >= 7 / 8
    assert m["median_deg"] <= 20
    assert m["miou"] >= 0.6
    assert res["method"] == "baseline" and res["config"]["epochs_done"] == 50


@pytest.mark.slow
def test_cli_train_and_evaluate_write_the_shared_schema(data4, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DMNT_QUICK", "0")
    run = tmp_path / "run"
    assert main(["baseline", "train", "--data", str(data4), "--out", str(run), "--epochs", "1", "--batch-size", "2",
                 "--no-progress"]) == 0
    assert "trained" in capsys.readouterr().out
    assert json.loads((run / "run.json").read_text())["kind"] == "baseline"
    assert main(["evaluate", "--run", str(run), "--data", str(data4), "--levels", "0", "2", "--no-progress"]) == 0
    out = run / "eval" / ev.eval_name(data4, [0, 2], None, False, center="known")
    res = json.loads((out / "results.json").read_text())
    # exactly the schema every method writes (dmnt_lib.evaluate builds it from the records)
    assert set(res) == {"method", "config", "evaluation", "levels", "per_category", "diagnostics"}
    assert list(res["levels"]) == ["0", "2"]
    assert all(tuple(m) == ev.METRIC_KEYS for m in res["levels"].values())
    assert res["levels"]["0"]["n"] == 4 and res["config"]["backbone"] == "resnet18"
    assert ev.summarize(ev.read_predictions(out / "predictions.jsonl")) == {k: res[k] for k in ("levels", "per_category", "diagnostics")}
    # resume by epochs; errors are one line, exit 2
    assert main(["baseline", "train", "--data", str(data4), "--out", str(run), "--epochs", "1", "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["baseline", "train", "--data", str(data4), "--out", str(tmp_path / "r2"), "--backbone", "vgg",
                 "--no-progress"]) == 2
    assert "backbone must be one of" in capsys.readouterr().err
    assert main(["baseline", "train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r3"), "--no-progress"]) == 2


@pytest.mark.slow
def test_two_process_gloo_training_keeps_ranks_identical(data4, tmp_path):
    script = tmp_path / "ddp.py"
    # each rank records the model it trains; DDP must leave the two identical (and equal to the checkpoint)
    script.write_text(
        "import hashlib, os, sys, torch\n"
        "from dmnt_lib.baseline import BaselineConfig\n"
        "from dmnt_lib.baseline import train as T\n"
        "torch.set_num_threads(1)\n"
        "seen, build = {}, T.build_model\n"
        "T.build_model = lambda c: seen.setdefault('model', build(c))\n"
        f"T.train(sys.argv[1], sys.argv[2], BaselineConfig(**{TINY!r}, epochs=1), progress=False, echo=None)\n"
        "sd = seen['model'].state_dict()\n"
        "h = hashlib.sha256(b''.join(v.detach().numpy().tobytes() for v in sd.values())).hexdigest()\n"
        "open(os.path.join(sys.argv[2], 'rank' + os.environ['RANK'] + '.txt'), 'w').write(h)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(data4), str(run)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((run / "run.json").read_text())
    assert meta["epochs_done"] == 1 and meta["n_images"] == 4
    hist = json.loads((run / "history.json").read_text())
    assert len(hist["iterations"]) == 1  # 4 images, global batch 4 over 2 ranks: one step
    h0, h1 = (run / "rank0.txt").read_text(), (run / "rank1.txt").read_text()
    assert h0 == h1
    sd = load_run(run)[0].state_dict()
    assert hashlib.sha256(b"".join(v.numpy().tobytes() for v in sd.values())).hexdigest() == h0
    torch.manual_seed(0)
    init = build_model(BaselineConfig(**TINY)).state_dict()
    assert any(not torch.equal(init[k], sd[k]) for k in sd)


@pytest.mark.parametrize("argv", [["baseline"], ["baseline", "train"], ["baseline", "bench"], ["evaluate"]])
def test_subcommands_have_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--help"])
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out
