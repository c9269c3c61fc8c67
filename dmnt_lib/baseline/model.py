"""Multi-task Mask R-CNN (docs/design.md §11, the paper's appendix A.4): torchvision's ``MaskRCNN``
plus a viewpoint-classification head on the RoI box features.

What is torchvision's and what is ours:

* torchvision (unchanged, with its losses): ``GeneralizedRCNNTransform`` (normalisation, resize to
  ``image_size``), the ResNet trunk and ``BackboneWithFPN``, the RPN (objectness + box losses),
  ``MultiScaleRoIAlign``, ``TwoMLPHead`` box head, ``FastRCNNPredictor`` (classification + box
  regression, ``fastrcnn_loss``), ``MaskRCNNHeads`` / ``MaskRCNNPredictor`` (``maskrcnn_loss``),
  proposal sampling and matching, detection post-processing and mask pasting.
* ours: ``PoseRoIHeads`` (a ``RoIHeads`` subclass) adds ``pose_predictor``, a linear layer on the
  same box-head features giving, **per class**, logits over azimuth, elevation and theta bins
  (``PoseBins``), and ``loss_pose``: cross-entropy of the ground-truth class's bins, only on sampled
  RoIs whose label is positive (matched to the ground-truth object with IoU >= ``box_fg_iou_thresh``),
  averaged over those RoIs and the three angles. At inference the pose of each detection is decoded
  at the bin centres of its predicted class (``pose``) and the per-class logits are kept
  (``pose_logits``) so the pose under any other class (the ground-truth one, PASCAL3D+ protocol) can
  be decoded too.

The total loss is torchvision's sum plus ``pose_weight * loss_pose``: ``L = L_cls + L_box + L_mask +
L_pose`` (+ the RPN's two terms), as in appendix A.4.

Why from scratch with GroupNorm by default: no downloads here, and with the small batches a CPU
affords BatchNorm statistics are noisy, while torchvision's default ``FrozenBatchNorm2d`` is the
identity without pretrained statistics (He et al., *Rethinking ImageNet pre-training*, train
detectors from scratch with GroupNorm). With ``weights`` (a torchvision weights name or a local
state-dict file of the ResNet) the standard ``FrozenBatchNorm2d`` is used instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..data.shapes import CATEGORIES

__all__ = ["AngleBins", "PoseBins", "BaselineConfig", "PoseRoIHeads", "MultiTaskMaskRCNN", "pose_loss",
           "build_model", "BACKBONES", "NUM_CLASSES"]

#: ResNet trunks the baseline accepts (the same family as DMNT's backbone).
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnext50_32x4d")
#: Background + the 12 categories; label ``k + 1`` is ``CATEGORIES[k]``.
NUM_CLASSES = len(CATEGORIES) + 1


# --------------------------------------------------------------------------- pose bins


@dataclass(frozen=True)
class AngleBins:
    """``n`` equal bins of one angle over ``[lo, hi)`` radians; ``circular`` angles wrap, others clamp.

    Bin ``k`` covers ``[lo + k w, lo + (k + 1) w)`` with ``w = (hi - lo) / n`` and decodes to its centre
    ``lo + (k + 0.5) w``: the decoding error is at most ``w / 2`` (circularly, for wrapping angles;
    for clamped ones, for angles inside ``[lo, hi]``).
    """

    lo: float
    hi: float
    n: int
    circular: bool

    def __post_init__(self):
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"the number of bins must be a positive int, got {self.n!r}")
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise ValueError(f"bin range must be finite with lo < hi, got [{self.lo}, {self.hi})")

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / self.n

    def encode(self, angle: torch.Tensor) -> torch.Tensor:
        """Bin indices ``(...)`` int64 of angles ``(...)`` (radians)."""
        x = angle.double() - self.lo
        if self.circular:
            x = torch.remainder(x, self.hi - self.lo)
        return torch.floor(x / self.width).long().clamp(0, self.n - 1)

    def decode(self, index: torch.Tensor) -> torch.Tensor:
        """Bin-centre angles ``(...)`` float32 (radians) of bin indices ``(...)``."""
        return (self.lo + (index.double() + 0.5) * self.width).float()


@dataclass(frozen=True)
class PoseBins:
    """The viewpoint bins (documented choice, StarMap/Tulsiani-Malik style classification):

    * azimuth: ``n_azimuth`` (default 24, 15°) circular bins over ``[0, 2π)``;
    * elevation: ``n_elevation`` (default 12, 15°) bins over ``[-π/2, π/2]``, clamped;
    * theta (in-plane): ``n_theta`` (default 24, 15°) circular bins over ``[-π, π)``.

    Decoding at bin centres errs by at most half a bin per angle, so the rotation error of a correctly
    classified pose is at most the sum of the three half widths (22.5° by default; the geodesic
    distance is bi-invariant and the pose is a product of rotations by each angle).
    """

    n_azimuth: int = 24
    n_elevation: int = 12
    n_theta: int = 24

    @property
    def angles(self) -> tuple[AngleBins, AngleBins, AngleBins]:
        return (AngleBins(0.0, 2 * math.pi, self.n_azimuth, True),
                AngleBins(-math.pi / 2, math.pi / 2, self.n_elevation, False),
                AngleBins(-math.pi, math.pi, self.n_theta, True))

    @property
    def total(self) -> int:
        return self.n_azimuth + self.n_elevation + self.n_theta

    @property
    def max_error(self) -> float:
        """Upper bound (radians) of the rotation error of a pose decoded from its own bins."""
        return sum(a.width / 2 for a in self.angles)

    def encode(self, pose: torch.Tensor) -> torch.Tensor:
        """``pose (N, 3)`` radians (azimuth, elevation, theta) -> bin indices ``(N, 3)`` int64."""
        if pose.dim() != 2 or pose.shape[1] != 3:
            raise ValueError(f"pose must have shape (N, 3), got {tuple(pose.shape)}")
        return torch.stack([a.encode(pose[:, i]) for i, a in enumerate(self.angles)], 1)

    def decode(self, index: torch.Tensor) -> torch.Tensor:
        """Bin indices ``(N, 3)`` -> bin-centre pose ``(N, 3)`` float32 radians."""
        return torch.stack([a.decode(index[:, i]) for i, a in enumerate(self.angles)], 1)

    def split(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(..., total)`` logits -> the azimuth, elevation and theta slices."""
        return tuple(logits.split([self.n_azimuth, self.n_elevation, self.n_theta], dim=-1))

    def decode_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``(N, total)`` logits -> ``(N, 3)`` radians at the most likely bins' centres."""
        return self.decode(torch.stack([part.argmax(-1) for part in self.split(logits)], 1))


def pose_loss(pose_logits: torch.Tensor, labels: torch.Tensor, pose_targets: torch.Tensor, bins: PoseBins) -> torch.Tensor:
    """Cross-entropy of the viewpoint bins, on positive RoIs only.

    Args:
        pose_logits: ``(N, num_classes, bins.total)`` per-class logits of N sampled RoIs.
        labels: ``(N,)`` int64 class of each RoI's matched object (0 = background: not used).
        pose_targets: ``(N, 3)`` radians, the pose of each RoI's matched object (ignored where ``labels == 0``).

    Returns:
        Scalar: mean over positive RoIs of the mean over the three angles of the cross-entropy of
        the RoI's ground-truth class's bins; ``0`` (still attached to the graph) without positives,
        so every background RoI gets exactly zero gradient.
    """
    pos = torch.where(labels > 0)[0]
    if pos.numel() == 0:
        return pose_logits.sum() * 0.0
    logits = pose_logits[pos, labels[pos]]  # (P, total): the matched object's class
    target = bins.encode(pose_targets[pos])  # (P, 3)
    parts = bins.split(logits)
    return sum(F.cross_entropy(part, target[:, i]) for i, part in enumerate(parts)) / 3


# --------------------------------------------------------------------------- config


@dataclass
class BaselineConfig:
    """Everything that determines the model and its training (stored in ``run.json`` and checkpoints).

    Defaults are sized for a 2-core CPU at 128 px (a slim resnet18-FPN with few proposals);
    ``stock()`` gives torchvision's proposal and head sizes, e.g. with ``backbone="resnet50"``.
    """

    backbone: str = "resnet18"
    weights: str | None = None  # None: from scratch (GroupNorm); else torchvision weights name or state-dict file
    fpn_channels: int = 64
    image_size: int = 128  # the transform's min_size and max_size
    anchor_sizes: tuple | None = None  # one per FPN level (layer1-4 + pool); None: image_size / 8 * (1, 2, 4, 8, 16)
    rpn_pre_nms_top_n_train: int = 300
    rpn_post_nms_top_n_train: int = 100
    rpn_pre_nms_top_n_test: int = 150
    rpn_post_nms_top_n_test: int = 50
    rpn_batch_size_per_image: int = 64
    box_batch_size_per_image: int = 64
    box_detections_per_img: int = 10
    box_score_thresh: float = 0.05
    representation_size: int = 256  # box head (TwoMLPHead) width
    mask_layers: tuple = (64, 64)
    mask_dim_reduced: int = 64
    pose_bins: PoseBins = field(default_factory=PoseBins)
    pose_weight: float = 1.0
    # training
    epochs: int = 12
    batch_size: int = 8
    lr: float = 1e-3  # AdamW
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    hflip: bool = True
    color_jitter: float = 0.2
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.pose_bins, dict):
            self.pose_bins = PoseBins(**self.pose_bins)
        if isinstance(self.image_size, int) and not isinstance(self.image_size, bool) and self.anchor_sizes is None:
            self.anchor_sizes = tuple(max(1, self.image_size // 8) * 2 ** k for k in range(5))
        self.anchor_sizes = tuple(self.anchor_sizes or ())
        self.mask_layers = tuple(self.mask_layers)
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        for name in ("fpn_channels", "image_size", "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train",
                     "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "rpn_batch_size_per_image",
                     "box_batch_size_per_image", "box_detections_per_img", "representation_size",
                     "mask_dim_reduced", "epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "epochs" else 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if len(self.anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes must have 5 entries (FPN levels), got {self.anchor_sizes}")
        if not self.mask_layers:
            raise ValueError("mask_layers must not be empty")
        for name in ("lr", "weight_decay", "pose_weight", "color_jitter", "box_score_thresh"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    @classmethod
    def stock(cls, **overrides) -> "BaselineConfig":
        """torchvision's Mask R-CNN sizes (256-channel FPN, 1024 box head, 4x256 mask head, 2000/1000
        proposals, 512 RoIs per image) at our image size."""
        base = dict(fpn_channels=256, rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=2000,
                    rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000, rpn_batch_size_per_image=256,
                    box_batch_size_per_image=512, box_detections_per_img=100, representation_size=1024,
                    mask_layers=(256, 256, 256, 256), mask_dim_reduced=256)
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["anchor_sizes"], d["mask_layers"] = list(self.anchor_sizes), list(self.mask_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BaselineConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown baseline config fields {unknown}")
        return cls(**d)


# --------------------------------------------------------------------------- the model


class PoseRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` plus the per-class pose-bin head on the box-head features.

    Training: the box head's output for the sampled RoIs (captured by a forward hook, so torchvision's
    code runs unchanged) goes through ``pose_predictor``; ``loss_pose`` (``pose_loss``) uses the
    sampler's labels and matched ground-truth indices (captured from ``select_training_samples``).
    Targets carry ``"pose"`` ``(n_objects, 3)`` radians besides torchvision's ``boxes, labels, masks``.
    Inference: each detection's box is pooled again through the box head (as the mask branch does)
    and gets ``pose_logits (N, num_classes, bins.total)`` and ``pose (N, 3)`` (its class's bin centres).
    """

    def __init__(self, *args, pose_predictor: nn.Module, bins: PoseBins, num_classes: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.pose_predictor = pose_predictor
        self.bins = bins
        self.num_classes = num_classes
        self._box_features = None
        self.box_head.register_forward_hook(self._capture)
        self.last_sample = None  # (labels, matched_idxs) of the last training forward, for inspection

    def _capture(self, module, inputs, output):
        self._box_features = output

    def select_training_samples(self, proposals, targets):
        proposals, matched_idxs, labels, regression_targets = super().select_training_samples(proposals, targets)
        self.last_sample = (labels, matched_idxs)
        return proposals, matched_idxs, labels, regression_targets

    def _pose_logits(self, box_features: torch.Tensor) -> torch.Tensor:
        return self.pose_predictor(box_features).reshape(-1, self.num_classes, self.bins.total)

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training and (targets is None or any("pose" not in t for t in targets)):
            raise ValueError("training targets must each carry 'pose' (n_objects, 3) radians")
        result, losses = super().forward(features, proposals, image_shapes, targets)
        if self.training:
            labels, matched_idxs = self.last_sample
            pose_targets = torch.cat([t["pose"][m] for t, m in zip(targets, matched_idxs)])
            logits = self._pose_logits(self._box_features)
            losses["loss_pose"] = pose_loss(logits, torch.cat(labels), pose_targets, self.bins)
        else:
            boxes = [r["boxes"] for r in result]
            feats = self.box_head(self.box_roi_pool(features, boxes, image_shapes))
            logits = self._pose_logits(feats).split([len(b) for b in boxes])
            for r, lg in zip(result, logits):
                r["pose_logits"] = lg
                own = lg[torch.arange(len(lg)), r["labels"]] if len(lg) else lg.new_zeros(0, self.bins.total)
                r["pose"] = self.bins.decode_logits(own)
        self._box_features = None
        return result, losses


class MultiTaskMaskRCNN(MaskRCNN):
    """torchvision ``MaskRCNN`` whose ``roi_heads`` is a ``PoseRoIHeads`` (see the module docstring).

    Input: a list of ``(3, H, W)`` float images in [0, 1]; training targets ``{"boxes" (n, 4) float
    (x0, y0, x1, y1), "labels" (n,) int64 in 1..12, "masks" (n, H, W) uint8 amodal, "pose" (n, 3)
    radians}``. Output: losses (training) or per image ``{"boxes" (N, 4), "labels" (N,), "scores" (N,),
    "masks" (N, 1, H, W) probabilities, "pose" (N, 3), "pose_logits" (N, 13, bins.total)}``.
    """

    def __init__(self, config: BaselineConfig):
        c = config
        backbone = _backbone(c)
        anchor = AnchorGenerator(tuple((s,) for s in c.anchor_sizes), ((0.5, 1.0, 2.0),) * len(c.anchor_sizes))
        box_head = TwoMLPHead(c.fpn_channels * 7 * 7, c.representation_size)
        super().__init__(
            backbone, num_classes=None, min_size=c.image_size, max_size=c.image_size,
            rpn_anchor_generator=anchor,
            rpn_pre_nms_top_n_train=c.rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=c.rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=c.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=c.rpn_post_nms_top_n_test,
            rpn_batch_size_per_image=c.rpn_batch_size_per_image, box_batch_size_per_image=c.box_batch_size_per_image,
            box_detections_per_img=c.box_detections_per_img, box_score_thresh=c.box_score_thresh,
            box_head=box_head, box_predictor=FastRCNNPredictor(c.representation_size, NUM_CLASSES),
            mask_head=MaskRCNNHeads(c.fpn_channels, list(c.mask_layers), 1),
            mask_predictor=MaskRCNNPredictor(c.mask_layers[-1], c.mask_dim_reduced, NUM_CLASSES),
        )
        old = self.roi_heads  # rebuilt as PoseRoIHeads with the very same modules and settings
        self.roi_heads = PoseRoIHeads(
            old.box_roi_pool, old.box_head, old.box_predictor,
            old.proposal_matcher.high_threshold, old.proposal_matcher.low_threshold,
            old.fg_bg_sampler.batch_size_per_image, old.fg_bg_sampler.positive_fraction,
            old.box_coder.weights, old.score_thresh, old.nms_thresh, old.detections_per_img,
            mask_roi_pool=old.mask_roi_pool, mask_head=old.mask_head, mask_predictor=old.mask_predictor,
            pose_predictor=nn.Linear(c.representation_size, NUM_CLASSES * c.pose_bins.total),
            bins=c.pose_bins, num_classes=NUM_CLASSES,
        )
        self.config = config


def _norm_layer(config: BaselineConfig):
    if config.weights is not None:
        return misc_nn_ops.FrozenBatchNorm2d
    return lambda channels: nn.GroupNorm(min(32, channels // 4), channels)


def _backbone(config: BaselineConfig) -> BackboneWithFPN:
    """ResNet trunk (layers 1-4 returned) + FPN of ``fpn_channels`` + a max-pool level."""
    trunk = getattr(tv_resnet, config.backbone)(weights=None, norm_layer=_norm_layer(config))
    if config.weights is not None:
        _load_weights(trunk, config)
    in_stage2 = trunk.inplanes // 8
    return BackboneWithFPN(trunk, {f"layer{k}": str(k - 1) for k in (1, 2, 3, 4)},
                           [in_stage2 * 2 ** (k - 1) for k in (1, 2, 3, 4)], config.fpn_channels,
                           extra_blocks=LastLevelMaxPool())


def _load_weights(trunk: nn.Module, config: BaselineConfig) -> None:
    from pathlib import Path

    src = config.weights
    if Path(src).is_file():
        state = torch.load(src, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    else:
        try:
            state = tv_resnet.get_weight(src).get_state_dict(progress=False)
        except (ValueError, KeyError, AttributeError) as e:
            raise ValueError(f"weights must be a state-dict file or a torchvision weights name "
                             f"(e.g. ResNet18_Weights.IMAGENET1K_V1), got {src!r}: {e}") from None
    missing, unexpected = trunk.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing:
        raise ValueError(f"weights {src!r} do not fit {config.backbone}: missing {missing[:5]}...")


def build_model(config: BaselineConfig | None = None) -> MultiTaskMaskRCNN:
    """A ``MultiTaskMaskRCNN`` for ``config`` (default ``BaselineConfig()``), initialised from the global RNG."""
    config = config or BaselineConfig()
    if not isinstance(config, BaselineConfig):
        raise TypeError(f"config must be a BaselineConfig, got {type(config).__name__}")
    return MultiTaskMaskRCNN(config)
