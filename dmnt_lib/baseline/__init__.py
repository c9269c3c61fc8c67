"""Multi-task Mask R-CNN baseline (docs/design.md §11, appendix A.4).

* ``model``    -- ``MultiTaskMaskRCNN`` (torchvision ``MaskRCNN`` + a per-class pose-bin head), ``PoseBins``,
  ``BaselineConfig``, ``pose_loss``;
* ``train``    -- data pipeline (targets from the annotations, augmentations), resumable (DDP) training;
* ``evaluate`` -- the predictor the shared ``dmnt_lib.evaluate`` uses for ``"kind": "baseline"`` runs;
* ``viz``      -- notebook 06's figures;
* ``cli``      -- ``python -m dmnt_lib baseline {train,bench}``.

The names below are imported from ``model`` on first use, so ``python -m dmnt_lib --help`` does not
load torchvision.
"""

import importlib

__all__ = ["BACKBONES", "NUM_CLASSES", "AngleBins", "BaselineConfig", "MultiTaskMaskRCNN", "PoseBins", "build_model",
           "pose_loss"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module(".model", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
