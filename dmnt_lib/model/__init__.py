"""Features, neural textures and contrastive training (docs/design.md §8, appendix A.3).

Modules (each importable on its own):
    backbone   ``FeatureNet``: torchvision ResNet/ResNeXt trunk + FPN-style head, unit features.
    texture    ``NeuralTexture`` (momentum-updated unit texels, per-texel seen counts),
               ``BackgroundBank`` (FIFO of background features).
    loss       ``contrastive_loss`` (the A.3 cross-entropy), ``sample_groups``, ``SampleCounts``.
    dmnt       ``DMNT`` (backbone + textures + bank + deformable meshes; save/load), ``ModelConfig``.
    train      ``train`` (single process or DDP under torchrun), ``TrainConfig``, the evaluation.
    cli        ``python -m dmnt_lib train``.
    viz        appendix Figure 3 (``figure3``), texture PCA, similarity maps.
"""

from .backbone import ARCHS, FeatureNet
from .dmnt import DMNT, ModelConfig, load_deformables
from .loss import DEFAULT_WEIGHTS, GROUPS, SampleCounts, contrastive_loss, sample_groups
from .texture import BackgroundBank, NeuralTexture

__all__ = ["ARCHS", "FeatureNet", "DMNT", "ModelConfig", "load_deformables", "DEFAULT_WEIGHTS", "GROUPS", "SampleCounts",
           "contrastive_loss", "sample_groups", "BackgroundBank", "NeuralTexture", "figure3"]


def figure3(*args, **kwargs):
    """Appendix Figure 3 drawn from the code: see ``dmnt_lib.model.viz.figure3``."""
    from .viz import figure3 as _figure3

    return _figure3(*args, **kwargs)
