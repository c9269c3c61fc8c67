"""Shared test settings: deterministic, quiet, CPU-friendly."""

import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("DMNT_QUICK", "1")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny trained DMNT run, shared by the inference and diagnose tests (2 categories, 64 px images, a few epochs) and an L0+L1 test set."""
    model_mod = pytest.importorskip("dmnt_lib.model", reason="dmnt_lib.model (the training issue) is not in this checkout")
    pytest.importorskip("dmnt_lib.evaluate", reason="dmnt_lib.evaluate (the evaluation issue) is not in this checkout")
    from dmnt_lib.data import generate_dataset
    from dmnt_lib.deform import FitConfig, fit_category, load_cad_models
    from dmnt_lib.model.train import TrainConfig, train

    cats = ["car", "chair"]
    root = tmp_path_factory.mktemp("infer_eval")
    generate_dataset(root / "train", 6, levels=(0,), seed=0, image_size=64, categories=cats, progress=False)
    generate_dataset(root / "test", 2, levels=(0, 1), seed=1, image_size=64, categories=cats, progress=False)
    cfg = FitConfig.quick(steps=4, template_verts=200, hidden=32, depth=2, skip=(), num_samples=200, models_per_step=0,
                          silhouette_batch=0, checkpoint_every=4)
    for c in cats:
        fit_category(load_cad_models(root / "train", c), cfg, checkpoint=root / "deform" / f"{c}.pt", category=c, progress=False)
    tcfg = TrainConfig(epochs=2, batch_size=4, lr=2e-3, val_per_category=1, positives=150, com=150, com_min_distance=16.0,
                       class_negatives=30, bg=100, bank_push=16, eval_texels=150)
    train(root / "train", root / "deform", root / "run", tcfg, model_mod.ModelConfig(dim=16, texture_size=32, bank_size=256),
          progress=False, echo=lambda *_: None, evaluate=False)
    return root / "run", root / "test"
