"""``FeatureNet``: a torchvision ResNet/ResNeXt trunk with an FPN-style upsampling head.

The trunk (stem, ``layer1``-``layer3``; ``layer4`` is dropped: at 128 px it would be 4x4) is
torchvision's own module, so its pretrained weights load unchanged. The head is a top-down
path (FPN): 1x1 lateral convolutions of ``layer3``, ``layer2``, ``layer1`` to ``hidden``
channels, each upsampled (bilinear) and added to the next finer one down to the output
stride, then ``3x3 conv - norm - ReLU - 1x1 conv`` to ``D`` channels and unit length per pixel.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FeatureNet", "ARCHS", "STRIDES"]

#: torchvision constructors we accept; the value is the channel count of (layer1, layer2, layer3).
ARCHS = {
    "resnet18": (64, 128, 256),
    "resnet34": (64, 128, 256),
    "resnet50": (256, 512, 1024),
    "resnet101": (256, 512, 1024),
    "resnext50_32x4d": (256, 512, 1024),
    "resnext101_32x8d": (256, 512, 1024),
}
#: Output strides and the trunk levels (layer1 = 4, layer2 = 8, layer3 = 16) they combine.
STRIDES = (4, 8, 16)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _norm_layer(norm: str):
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "group":
        return lambda c: nn.GroupNorm(min(32, c // 4), c)
    raise ValueError(f"norm must be 'batch' or 'group', got {norm!r}")


class FeatureNet(nn.Module):
    """Unit-length dense features ``(B, D, H/s, W/s)`` of ``(B, 3, H, W)`` images in ``[0, 1]``.

    Args:
        arch: a key of ``ARCHS`` (torchvision name).
        dim: ``D`` output channels.
        stride: output stride ``s`` in ``STRIDES``.
        weights: ``None`` (random init, the default: nothing is downloaded), a torchvision weights
            name for ``arch`` (e.g. ``"IMAGENET1K_V1"``, downloaded by torchvision), or the path of a
            local state-dict file of the full torchvision model (``torch.save(model.state_dict())``).
        norm: ``"batch"`` (torchvision's BatchNorm, needed for pretrained weights) or ``"group"``
            (GroupNorm: per-sample, so a distributed run equals one process exactly; see train.py).
        hidden: channels of the head's top-down path (default ``max(128, dim)``).

    Images are normalized with the ImageNet mean/std inside ``forward``.
    """

    def __init__(self, arch: str = "resnet18", dim: int = 128, stride: int = 4, weights: str | os.PathLike | None = None,
                 norm: str = "batch", hidden: int | None = None):
        super().__init__()
        import torchvision

        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
        if stride not in STRIDES:
            raise ValueError(f"stride must be one of {STRIDES}, got {stride!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        norm_layer = _norm_layer(norm)
        if weights is not None and norm != "batch":
            raise ValueError("pretrained weights need norm='batch'")
        self.arch, self.dim, self.stride, self.norm = arch, dim, stride, norm
        path = Path(weights) if weights is not None and (Path(weights).suffix in (".pt", ".pth") or Path(weights).exists()) else None
        if path is not None:
            if not path.is_file():
                raise FileNotFoundError(f"weights file not found: {path}")
            net = torchvision.models.get_model(arch, weights=None)
            state = torch.load(path, map_location="cpu", weights_only=True)
            try:
                net.load_state_dict(state)
            except RuntimeError as e:
                raise ValueError(f"weights {path} is not a {arch} state dict: {str(e).splitlines()[0]}") from None
        else:
            kw = {} if weights is not None else {"norm_layer": norm_layer}
            try:
                net = torchvision.models.get_model(arch, weights=weights, **kw)
            except (KeyError, ValueError) as e:  # torchvision: a name of another architecture's weights enum
                names = [f"{w.__class__.__name__}.{w.name}" for w in torchvision.models.get_model_weights(arch)]
                raise ValueError(f"weights {weights!r} is not a torchvision weights name for {arch} "
                                 f"(its names: {', '.join(names)}): {e}") from None
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        levels = {4: 1, 8: 2, 16: 3}[stride]
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3])
        chans = ARCHS[arch]
        hidden = hidden or max(128, dim)
        self.laterals = nn.ModuleList([nn.Conv2d(chans[i], hidden, 1) for i in range(levels - 1, 3)])
        self.head = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), norm_layer(hidden), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, dim, 1))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, 3, H, W)`` float in [0, 1], ``H`` and ``W`` divisible by the stride →
        ``(B, D, H/s, W/s)`` unit vectors along ``D``."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {getattr(images, 'shape', type(images).__name__)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be floating point in [0, 1], got {images.dtype}")
        h, w = images.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"image size {(h, w)} is not divisible by the stride {self.stride}")
        x = self.stem((images - self.mean) / self.std)
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        first = len(feats) - len(self.laterals)
        y = None
        for lat, fmap in zip(reversed(self.laterals), reversed(feats[first:])):
            l = lat(fmap)
            y = l if y is None else l + F.interpolate(y, size=l.shape[-2:], mode="bilinear", align_corners=False)
        y = self.head(y)
        if y.shape[-2:] != (h // self.stride, w // self.stride):  # odd sizes: the trunk rounds up
            y = F.interpolate(y, size=(h // self.stride, w // self.stride), mode="bilinear", align_corners=False)
        return F.normalize(y, dim=1)
