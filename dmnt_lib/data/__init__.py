"""Data without downloads (docs/design.md §5): procedural CAD models, synthetic PASCAL3D+-style scenes
with OccludedPASCAL3D+ levels L0–L3, and a loader for real PASCAL3D+ in NeMo's layout.

* ``shapes``     – the 12 categories' procedural CAD models (``CAD/<category>/NN.off``);
* ``occlusion``  – procedural textures, random shapes, occluder placement by measured ratio;
* ``synthetic``  – poses, shading, clutter, and ``generate_dataset``;
* ``pascal3d``   – the on-disk format (NeMo's), reading either layout and convention into ``Sample``;
* ``nemo_prep``  – NeMo's preparation of PASCAL3D+ (resize, crop, npz, lists), emulated for tests;
* ``dataset``    – ``PoseDataset`` (torch) and ``cameras_for``;
* ``cli``        – ``python -m dmnt_lib data``, ``demo`` and the figure builders.
"""

from .dataset import PoseDataset, cameras_for
from .occlusion import LEVEL_RANGES, OcclusionError, place_occluders
from .nemo_prep import OUT_SHAPES, OriginalRecord, prepare_split, render_original
from .pascal3d import Pascal3D, Sample, cad_is_z_up, detect_convention, read_annotation
from .shapes import CATEGORIES, NUM_CAD_MODELS, CADModel, cad_model, cad_models, write_cad_library
from .synthetic import SceneConfig, generate_dataset, occlude, render_scene

__all__ = [
    "CATEGORIES", "NUM_CAD_MODELS", "CADModel", "cad_model", "cad_models", "write_cad_library",
    "LEVEL_RANGES", "OcclusionError", "place_occluders", "SceneConfig", "render_scene", "occlude", "generate_dataset",
    "Pascal3D", "Sample", "read_annotation", "detect_convention", "cad_is_z_up", "PoseDataset", "cameras_for",
    "OUT_SHAPES", "OriginalRecord", "render_original", "prepare_split",
]
