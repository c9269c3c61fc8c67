"""Render-and-compare inference (docs/design.md §9): class, pose, amodal and visible masks.

* ``render_and_compare(features, textures, meshes, background, focal, principal, image_size, stride,
  center="known", config=None) -> list[Prediction]`` — the engine on explicit tensors (``engine.py``);
* ``infer(model, images, focal, principal=None, ...)`` — a trained ``DMNT``'s backbone + the engine
  (``infer.py``);
* ``InferenceConfig`` (``config.py``), the grid cache (``grid.py``), the score (``score.py``), Adam
  refinement (``refine.py``), oracle features for tests (``oracle.py``), the evaluation predictor
  (``evaluate.py``).
"""

from .config import InferenceConfig, nemo_slow_config
from .engine import Prediction, render_and_compare
from .grid import GRID_CACHE, GridCache
from .infer import infer

__all__ = ["InferenceConfig", "nemo_slow_config", "Prediction", "render_and_compare", "GRID_CACHE", "GridCache", "infer"]
