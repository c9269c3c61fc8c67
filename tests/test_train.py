"""Training: a tiny run learns, resume is bit-identical, 2-process DDP equals one process, bad inputs fail clearly."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dmnt_lib.model import DMNT, ModelConfig
from dmnt_lib.model.dmnt import load_deformables
from dmnt_lib.model.train import (FragmentCache, TrainConfig, augment_image, augmentation, clutter_loss,
                                  evaluate_correspondence, final_line, held_out_split, split_indices,
                                  train)

ROOT = Path(__file__).resolve().parent.parent
CATS = ("car", "chair")
FINAL = re.compile(r"^texel correspondence@5: trained=(\d\.\d{3}) untrained=(\d\.\d{3}); "
                   r"category match: trained=(\d\.\d{3}) untrained=(\d\.\d{3})$")

# A tiny configuration: 64 px images (16 x 16 features), D = 16, 32 x 32 textures, small sample counts (Com radius
# 16 texels of a 128 atlas: 4 at S = 32).
TINY_MODEL = dict(dim=16, texture_size=32, bank_size=256)
TINY_TRAIN = dict(batch_size=4, lr=2e-3, val_per_category=2, positives=150, com=150, com_min_distance=16.0,
                  class_negatives=30, bg=100, bank_push=16, eval_texels=150)


def _fit_deform(data: Path, out: Path, categories=CATS):
    from dmnt_lib.deform import FitConfig, fit_category, load_cad_models

    cfg = FitConfig.quick(steps=4, template_verts=200, hidden=32, depth=2, skip=(), num_samples=200, models_per_step=0,
                          silhouette_batch=0, checkpoint_every=4)
    for c in categories:
        fit_category(load_cad_models(data, c), cfg, checkpoint=out / f"{c}.pt", category=c, progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from dmnt_lib.data import generate_dataset

    root = tmp_path_factory.mktemp("train")
    data = root / "data"
    generate_dataset(data, 10, levels=(0,), seed=0, image_size=64, categories=list(CATS), progress=False)
    _fit_deform(data, root / "deform")
    return data, root / "deform"


def _run(tiny, out, epochs, **over):
    data, deform = tiny
    cfg = TrainConfig(epochs=epochs, **{**TINY_TRAIN, **over})
    return train(data, deform, out, cfg, ModelConfig(**TINY_MODEL), progress=False, echo=lambda *_: None, evaluate=False,
                 resume=(Path(out) / "checkpoint.pt").exists())


@pytest.mark.slow
def test_tiny_run_lowers_the_loss_and_learns_correspondences(tiny, tmp_path):
    from dmnt_lib.data import PoseDataset

    res = _run(tiny, tmp_path / "run", epochs=12)
    losses = [r["loss"] for r in res["history"]]
    assert len(losses) == 12 * 4  # 16 training images, batch 4
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.5, (first, last)
    model = res["model"]
    cfg = TrainConfig(epochs=1, **TINY_TRAIN)
    ds = PoseDataset(tiny[0], levels=(0,))
    train_idx, _ = split_indices(ds, ds.categories, cfg)
    frags = FragmentCache()
    trained = evaluate_correspondence(model, ds, train_idx, frags, cfg)
    fresh = DMNT(model.categories, {c: model.deformable(c) for c in model.categories}, model.cad_names, model.config)
    untrained = evaluate_correspondence(fresh, ds, train_idx, frags, cfg, candidates=model.textures.seen > 0)
    assert trained["texels"] == untrained["texels"] > 500
    assert trained["corr"] > untrained["corr"] + 0.1, (trained, untrained)
    assert trained["category"] > untrained["category"] + 0.2, (trained, untrained)
    # the files of a run
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == losses
    assert DMNT.load(tmp_path / "run" / "model.pt").config == model.config


def _state(path):
    m = DMNT.load(path)
    return m.state_dict()


@pytest.mark.slow
def test_resume_is_bit_identical(tiny, tmp_path):
    full = _run(tiny, tmp_path / "a", epochs=2)
    _run(tiny, tmp_path / "b", epochs=1)
    resumed = _run(tiny, tmp_path / "b", epochs=2)
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in full["history"]]
    sa, sb = _state(tmp_path / "a" / "checkpoint.pt"), _state(tmp_path / "b" / "checkpoint.pt")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    log = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert len(log) == len(full["history"])
    with pytest.raises(FileExistsError, match="--resume"):
        train(*tiny, tmp_path / "a", TrainConfig(epochs=3, **TINY_TRAIN), ModelConfig(**TINY_MODEL), progress=False, evaluate=False)
    with pytest.raises(ValueError, match="another training config"):
        train(*tiny, tmp_path / "a", TrainConfig(epochs=3, **{**TINY_TRAIN, "lr": 1e-4}), ModelConfig(**TINY_MODEL),
              progress=False, evaluate=False, resume=True)


def _cli(tiny, out, extra, nproc=None):
    data, deform = tiny
    args = ["-m", "dmnt_lib", "train", "--data", str(data), "--deform", str(deform), "--out", str(out), "--epochs", "2",
            "--batch-size", "4", "--no-progress", "--threads", "1", "--set", "norm=group"]
    for k, v in {**TINY_MODEL, **TINY_TRAIN}.items():
        if k != "batch_size":
            args += ["--set", f"{k}={v}"]
    if nproc:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] + args
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DMNT_DUMP_MEMORY": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args, *extra], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_on_the_same_global_batch(tiny, tmp_path):
    """GroupNorm (per-sample) so that the two runs compute the same function; tolerance: float32 sums in
    another order (gradients averaged by all_reduce, texture sums reduced across ranks) -> 1e-4 relative on
    the loss, 1e-4 absolute on the unit texels after 8 steps."""
    one = _cli(tiny, tmp_path / "one", [])
    two = _cli(tiny, tmp_path / "two", [], nproc=2)
    last = one.stdout.strip().splitlines()[-1]
    assert FINAL.match(last), last
    assert FINAL.match(two.stdout.strip().splitlines()[-1])
    l1 = [json.loads(x)["loss"] for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    l2 = [json.loads(x)["loss"] for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert len(l1) == len(l2) == 8
    assert l1 == pytest.approx(l2, rel=1e-4)
    r0, r1 = (torch.load(tmp_path / "two" / f"memory_rank{r}.pt") for r in (0, 1))
    for k in r0:  # every rank holds exactly the same memories
        assert torch.equal(r0[k], r1[k]), k
    single = torch.load(tmp_path / "one" / "memory_rank0.pt")
    assert torch.equal(single["seen"], r0["seen"]) and torch.equal(single["ptr"], r0["ptr"])
    assert torch.allclose(single["texels"], r0["texels"], atol=1e-4)
    assert torch.allclose(single["bank"], r0["bank"], atol=1e-4)


def test_final_line_format():
    line = final_line({"corr": 0.4321, "category": 0.95}, {"corr": 0.1, "category": 0.40049})
    assert line == "texel correspondence@5: trained=0.432 untrained=0.100; category match: trained=0.950 untrained=0.400"
    assert FINAL.match(line)


def test_bad_inputs_give_clear_errors(tiny, tmp_path):
    from dmnt_lib.__main__ import main
    from dmnt_lib.data import generate_dataset

    data, deform = tiny
    cfg, mcfg = TrainConfig(epochs=1, **TINY_TRAIN), ModelConfig(**TINY_MODEL)
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        train(tmp_path / "nope", deform, tmp_path / "r", cfg, mcfg, progress=False)
    # deformable meshes of other categories only
    other = tmp_path / "other"
    other.mkdir()
    (other / "car.pt").write_bytes((deform / "car.pt").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"no deformable-mesh checkpoint for \['chair'\]"):
        train(data, other, tmp_path / "r", cfg, mcfg, progress=False)
    (other / "chair.pt").write_bytes((deform / "car.pt").read_bytes())  # a car mesh under the chair's name
    with pytest.raises(ValueError, match="holds the deformable mesh of 'car', not 'chair'"):
        train(data, other, tmp_path / "r", cfg, mcfg, progress=False)
    # image size not divisible by the stride
    odd = tmp_path / "odd"
    generate_dataset(odd, 3, levels=(0,), seed=0, image_size=66, categories=["car"], progress=False)
    with pytest.raises(ValueError, match=r"image size \(66, 66\) is not divisible by the stride 4"):
        train(odd, deform, tmp_path / "r2", TrainConfig(epochs=1, **{**TINY_TRAIN, "val_per_category": 1}), mcfg, progress=False)
    # unknown architecture, through the CLI: exit 2 with the message
    code = main(["train", "--data", str(data), "--deform", str(deform), "--out", str(tmp_path / "r3"), "--set", "arch=vgg"])
    assert code == 2
    with pytest.raises(ValueError, match="unknown arch 'vgg'"):
        train(data, deform, tmp_path / "r3", cfg, ModelConfig(arch="vgg"), progress=False)
    assert main(["train", "--data", str(data), "--deform", str(deform), "--out", str(tmp_path / "r3"), "--set", "nope=1"]) == 2


def test_bench_train_prints_the_time_split(tiny, capsys):
    from dmnt_lib.__main__ import main
    from dmnt_lib.model.bench import PHASES

    data, deform = tiny
    sets = [x for k, v in {**TINY_MODEL, **TINY_TRAIN}.items() if k not in ("batch_size", "val_per_category")
            for x in ("--set", f"{k}={v}")]
    assert main(["bench", "train", "--data", str(data), "--deform", str(deform), "--quick", "--threads", "1", *sets]) == 0
    out = capsys.readouterr().out.splitlines()
    header = next(line for line in out if line.startswith("mode"))
    assert all(f"{p} ms" in header for p in PHASES)
    rows = {line[:20].strip(): line[20:].split() for line in out if line.startswith("fragments ")}
    assert set(rows) == {"fragments computed", "fragments cached"}
    for vals in rows.values():
        assert len(vals) == 2 + len(PHASES) and all(float(v) >= 0 for v in vals)


# ---------------------------------------------------------------------------- augmentations and the clutter term
def test_mirrored_sample_renders_onto_its_mirrored_mask(tiny):
    """A flipped item's fragment (the mesh at the mirrored pose, principal point mirrored) covers the mirror image
    of the item's own fragment: the procedural CAD models are left-right symmetric."""
    from dmnt_lib.data import PoseDataset

    data, deform = tiny
    ds = PoseDataset(data, None, (0,))
    model = DMNT(list(CATS), *load_deformables(deform, list(CATS)),
                 ModelConfig(**TINY_MODEL))
    frags = FragmentCache()
    for i in range(0, len(ds), 5):
        item = ds[i]
        uv, mask, _ = frags.get(model, item, i)
        uv_f, mask_f, _ = frags.get(model, item, i, flip=True)
        inter, union = int((mask_f & mask.flip(-1)).sum()), int((mask_f | mask.flip(-1)).sum())
        assert union and inter / union > 0.9, (i, inter / union)
        assert frags.get(model, item, i, flip=True)[1] is mask_f  # cached per (index, flip)
        # a strong in-plane rotation: the mirror image needs theta's sign flipped (the unflipped one fails)
        tilted = dict(item, theta=torch.tensor(0.6))
        m = FragmentCache().get(model, tilted)[1]
        m_f = FragmentCache().get(model, tilted, flip=True)[1]
        wrong = FragmentCache().get(model, dict(tilted, theta=torch.tensor(-0.6)), flip=True)[1]
        iou = lambda a, b: int((a & b).sum()) / max(int((a | b).sum()), 1)  # noqa: E731
        assert iou(m_f, m.flip(-1)) > 0.9 > iou(wrong, m.flip(-1)), (i, iou(m_f, m.flip(-1)), iou(wrong, m.flip(-1)))


def test_augmentation_is_seeded_and_bounded():
    cfg = TrainConfig(flip=0.5, color_jitter=0.2)
    draws = [augmentation(cfg, (0, s, k))
             for s in range(20) for k in range(4)]
    again = [augmentation(cfg, (0, s, k)) for s in range(20) for k in range(4)]
    assert draws == again
    assert 0.3 < sum(d[0] for d in draws) / len(draws) < 0.7
    assert all(0.8 <= d[1] <= 1.2 and 0.8 <= d[2] <= 1.2 for d in draws)
    img = torch.rand(3, 8, 8)
    assert torch.equal(augment_image(img, True, 1.0, 1.0), img.flip(-1))
    assert torch.equal(augment_image(img, False, 1.0, 1.0), img)
    off = TrainConfig()
    assert all(not augmentation(off, (0, s, 0))[0] for s in range(10))


def test_com_radius_scales_with_the_atlas():
    cfg = TrainConfig(com_min_distance=20.0, com_reference_size=128)
    assert cfg.com_radius(128) == 20.0 and cfg.com_radius(64) == 10.0 and cfg.com_radius(32) == 5.0
    assert cfg.counts_for(64).com_min_distance == 10.0 and cfg.counts.com_min_distance == 20.0
    assert TrainConfig(com_min_distance=20.0, com_reference_size=None).com_radius(64) == 20.0  # None: as given
    assert TrainConfig().com_radius(64) == 10.0  # the default scales the paper's 20 texels of a 128 atlas
    with pytest.raises(ValueError, match="com_reference_size"):
        TrainConfig(com_reference_size=0)
    with pytest.raises(ValueError, match="flip"):
        TrainConfig(flip=1.5)
    with pytest.raises(ValueError, match="w_clutter"):
        TrainConfig(w_clutter=-0.1)


def test_clutter_term_reaches_only_clutter_pixels():
    """The regulariser's gradient is non-zero exactly on the sampled off-object pixels, equals the mean seen
    texel there (up to the 1/n of the mean), and lowering the loss moves those features away from the texels."""
    g = torch.Generator().manual_seed(0)
    C, D, S, h, w = 2, 8, 4, 6, 6
    texels = torch.nn.functional.normalize(torch.randn(C, D, S, S, generator=g), dim=1)
    seen = torch.zeros(C, S, S, dtype=torch.bool)
    seen[0, :2] = True
    seen[1, 3, 3] = True
    feats = torch.nn.functional.normalize(torch.randn(1, D, h, w, generator=g), dim=1).requires_grad_(True)
    background = torch.zeros(1, h, w, dtype=torch.bool)
    background[0, :, :2] = True  # 12 clutter pixels
    cfg = TrainConfig(clutter_pixels=100)
    loss = clutter_loss(feats, background, texels, seen, cfg, [(0, (0, 0, 0))])
    loss.backward()
    grad = feats.grad[0]
    assert (grad[:, ~background[0]] == 0).all() and (grad[:, background[0]].norm(dim=0) > 0).all()
    centre = texels.permute(1, 0, 2, 3)[:, seen].mean(1)
    torch.testing.assert_close(grad[:, background[0]], centre[:, None].expand(D, 12) / 12)
    with torch.no_grad():
        moved = feats - 0.5 * feats.grad
    assert clutter_loss(moved, background, texels, seen, cfg, [(0, (0, 0, 0))]) < loss
    # at most clutter_pixels pixels are sampled
    feats.grad = None
    clutter_loss(feats, background, texels, seen, TrainConfig(clutter_pixels=5), [(0, (0, 0, 0))]).backward()
    assert int((feats.grad[0].norm(dim=0) > 0).sum()) == 5


@pytest.mark.slow
def test_tiny_run_with_every_option_trains(tiny, tmp_path):
    """Flip, jitter, the clutter term and the scaled radius together: the run trains and lowers its loss."""
    res = _run(tiny, tmp_path / "run", epochs=4, flip=0.5, color_jitter=0.2, w_clutter=0.1, com_reference_size=64,
               com_min_distance=8.0)
    losses = [r["loss"] for r in res["history"]]
    assert all(map(lambda x: x == x, losses)) and sum(losses[-4:]) < sum(losses[:4])


def test_weights_initialise_the_backbone(tiny, tmp_path):
    """``train(weights=FILE)`` (``train --weights``) starts the backbone from a state-dict file of the torchvision model."""
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        net.conv1.weight.fill_(0.125)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    data, deform = tiny
    train(data, deform, tmp_path / "run", TrainConfig(epochs=0, **TINY_TRAIN), ModelConfig(**TINY_MODEL), progress=False,
          echo=lambda *_: None, evaluate=False, weights=str(tmp_path / "w.pt"))
    model = DMNT.load(tmp_path / "run" / "model.pt")
    assert (model.backbone.stem[0].weight == 0.125).all()
    with pytest.raises(FileNotFoundError, match="weights file"):
        train(data, deform, tmp_path / "run2", TrainConfig(epochs=0, **TINY_TRAIN), ModelConfig(**TINY_MODEL),
              progress=False, echo=lambda *_: None, evaluate=False, weights=str(tmp_path / "missing.pt"))


@pytest.mark.slow
def test_val_data_holds_out_another_folder(tiny, tmp_path):
    """``train(val_data=DIR)`` (``train --val-data``): every image of ``data`` trains and the final check reads the
    first ``val_per_category`` images per category of the other folder."""
    from dmnt_lib.data import generate_dataset

    data, deform = tiny
    generate_dataset(tmp_path / "val", 3, levels=(0,), seed=2, image_size=64, categories=list(CATS), progress=False)
    cfg = TrainConfig(epochs=1, **TINY_TRAIN)  # val_per_category=2
    res = train(data, deform, tmp_path / "run", cfg, ModelConfig(**TINY_MODEL), progress=False, echo=lambda *_: None,
                val_data=tmp_path / "val")
    assert len(res["history"]) == 20 // cfg.batch_size  # all 10 images per category train
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["val_images"] == 2 * len(CATS)
    assert res["trained"]["images"] == 2 * len(CATS)
    # held_out_split (what notebook 04 shows) gives exactly the images this run trained on and checked
    from dmnt_lib.data import PoseDataset

    _, extra = DMNT.load(tmp_path / "run" / "checkpoint.pt", return_extra=True)
    ds = PoseDataset(data, levels=(0,))
    train_idx, val_set, val_idx = held_out_split(ds, list(CATS), cfg, extra["val_data"])
    assert train_idx == extra["split"]["train"] and val_idx == extra["split"]["val"] and len(val_idx) == 2 * len(CATS)
    assert Path(val_set.source.root).resolve() == (tmp_path / "val").resolve()
    assert held_out_split(ds, list(CATS), cfg)[1] is ds  # without val_data the check images come from data
    with pytest.raises(FileNotFoundError, match="val_data"):
        train(data, deform, tmp_path / "run2", cfg, ModelConfig(**TINY_MODEL), progress=False, echo=lambda *_: None,
              val_data=tmp_path / "nope")
    # resuming without the held-out folder would move images into training: refused
    with pytest.raises(ValueError, match="val-data"):
        train(data, deform, tmp_path / "run", TrainConfig(epochs=2, **TINY_TRAIN), ModelConfig(**TINY_MODEL),
              progress=False, echo=lambda *_: None, resume=True)
