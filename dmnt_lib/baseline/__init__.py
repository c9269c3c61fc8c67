"""Multi-task Mask R-CNN baseline (docs/design.md §11, appendix A.4).

* ``model``    -- ``MultiTaskMaskRCNN`` (torchvision ``MaskRCNN`` + a per-class pose-bin head), ``PoseBins``,
  ``BaselineConfig``;
* ``train``    -- data pipeline (targets from the annotations, augmentations), resumable (DDP) training;
* ``evaluate`` -- the predictor the shared ``dmnt_lib.evaluate`` uses for ``"kind": "baseline"`` runs;
* ``cli``      -- ``python -m dmnt_lib baseline {train}``.
"""

from .model import BACKBONES, NUM_CLASSES, AngleBins, BaselineConfig, MultiTaskMaskRCNN, PoseBins, build_model, pose_loss

__all__ = ["BACKBONES", "NUM_CLASSES", "AngleBins", "BaselineConfig", "MultiTaskMaskRCNN", "PoseBins", "build_model",
           "pose_loss"]
