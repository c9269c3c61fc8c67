"""Deformable category meshes (appendix A.2): a deformation MLP, fitting templates to CAD
models, and fitting a shape code to silhouettes.

DMNT deforms one UV-mapped template per category to each instance, so its neural texture
stays valid (same faces, same UV atlas) while the shape adapts. The paper's Figure 2 (the
deformation network) is not available; ``net.py`` documents the design we chose and
``viz.draw_architecture`` draws it from the module.

Modules:
    net         ``positional_encoding``, ``DeformationNet``, ``DeformableMesh``.
    geometry    PyTorch3D's area-uniform surface sampling (seeded), chamfer distance and
                Laplacian, with the edge-length / offset regularizers.
    silhouette  soft (SoftRas) and hard silhouettes of vertex batches, IoU.
    fit         ``load_cad_models`` (``.off`` files as ``dmnt_lib.data.CADModel``),
                ``fit_category`` (net + per-model codes, checkpointed and resumable),
                ``evaluate`` (template vs deformed: chamfer and silhouette IoU).
    optim       ``CodeAdam`` (per-code Adam: undrawn codes stay put), ``FitOptimizer``.
    latent      ``fit_latent`` (a code from masks, net frozen, pose given).
    viz         shaded renders, Figure 2, the template-vs-deformed and latent-fit figures.
    cli         ``python -m dmnt_lib deform`` and the ``make demo`` stage.
"""

from .fit import (
    FitConfig,
    FitResult,
    evaluate,
    fit_category,
    load_cad_models,
    load_checkpoint,
    make_template,
    model_names,
    save_checkpoint,
    view_cameras,
)
from .latent import LatentFit, fit_latent
from .optim import CodeAdam, FitOptimizer
from .geometry import (
    chamfer_distance,
    edge_length_loss,
    laplacian_smoothness,
    mesh_edges,
    offset_magnitude,
    sample_surface,
    uniform_laplacian,
)
from .net import DeformableMesh, DeformationNet, positional_encoding
from .silhouette import hard_silhouette, silhouette_iou, soft_iou_loss, soft_silhouette

__all__ = [
    "FitConfig", "FitResult", "LatentFit", "evaluate", "fit_category", "fit_latent",
    "load_cad_models", "load_checkpoint", "make_template", "model_names", "save_checkpoint", "view_cameras",
    "CodeAdam", "FitOptimizer",
    "chamfer_distance", "edge_length_loss", "laplacian_smoothness", "mesh_edges", "offset_magnitude", "sample_surface", "uniform_laplacian",
    "DeformableMesh", "DeformationNet", "positional_encoding",
    "hard_silhouette", "silhouette_iou", "soft_iou_loss", "soft_silhouette",
]
