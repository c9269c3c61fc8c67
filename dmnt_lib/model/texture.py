"""Neural textures (one ``(D, S, S)`` memory of unit texels per category) and the background bank.

Both are memories updated without gradients (docs/design.md §8), stored as buffers so they
travel with ``state_dict`` and ``.to(device)``.

Under ``torch.distributed`` the caller passes ``reduce`` / ``gather`` callables (see
``train.py``): the texture update all-reduces its per-category sums and counts, the bank
gathers every rank's pushes in rank order, so all ranks hold bit-identical memories.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["NeuralTexture", "BackgroundBank"]


class NeuralTexture(nn.Module):
    """``C`` neural textures of ``D``-dimensional unit texels.

    Args:
        num_categories: ``C >= 1``.
        dim: ``D``. size: ``S`` (texture ``S x S``, docs/design.md §3 texel convention).
        momentum: ``m`` in ``[0, 1)`` of the update.
        seed: seeds the random unit initialisation.

    Buffers:
        texels: ``(C, D, S, S)`` float32, unit along ``D``.
        seen: ``(C, S, S)`` int64, how many image observations updated each texel.
    """

    def __init__(self, num_categories: int, dim: int = 128, size: int = 128, momentum: float = 0.9, seed: int = 0):
        super().__init__()
        for name, v in (("num_categories", num_categories), ("dim", dim), ("size", size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        g = torch.Generator().manual_seed(int(seed))
        self.register_buffer("texels", F.normalize(torch.randn(num_categories, dim, size, size, generator=g), dim=1))
        self.register_buffer("seen", torch.zeros(num_categories, size, size, dtype=torch.int64))

    @property
    def num_categories(self) -> int:
        return int(self.texels.shape[0])

    @property
    def dim(self) -> int:
        return int(self.texels.shape[1])

    @property
    def size(self) -> int:
        return int(self.texels.shape[2])

    @torch.no_grad()
    def update(self, labels: torch.Tensor, surface: torch.Tensor, visible: torch.Tensor,
               reduce: Callable[[torch.Tensor], None] | None = None) -> None:
        """Momentum update from a batch of transformed image features (docs/design.md §8):

        ``θ_c[t] <- normalize(m·θ_c[t] + (1-m)·normalize(mean_b F̂_b[t]))`` over the items ``b`` of
        category ``c`` with ``visible[b, t]``; texels no item sees are untouched. ``seen[c, t]``
        grows by the number of such items. (``normalize(mean) = normalize(sum)``, so the sum is used.)

        Args:
            labels: ``(B,)`` int64 category indices.
            surface: ``(B, D, S, S)`` ``image_to_uv`` output (detached here).
            visible: ``(B, S, S)`` bool, texels to update from each item.
            reduce: optional in-place sum over processes (``dist.all_reduce``); with it every rank
                applies the same global update. Called on a ``(C,)`` presence vector, then on the
                ``(P, D + 1, S, S)`` sums and counts of the ``P`` categories present anywhere.
        """
        C, D, S, _ = self.texels.shape
        if labels.dim() != 1 or surface.shape != (labels.shape[0], D, S, S) or visible.shape != (labels.shape[0], S, S):
            raise ValueError(f"update needs labels (B,), surface (B, {D}, {S}, {S}) and visible (B, {S}, {S}); got "
                             f"{tuple(labels.shape)}, {tuple(surface.shape)}, {tuple(visible.shape)}")
        if visible.dtype != torch.bool:
            raise TypeError(f"visible must be bool, got {visible.dtype}")
        labels = labels.to(self.texels.device)
        present = torch.zeros(C, dtype=torch.float32, device=self.texels.device)
        present[labels] = 1.0
        if reduce is not None:
            reduce(present)
        cats = present.nonzero()[:, 0]
        if len(cats) == 0:
            return
        slot = torch.full((C,), -1, dtype=torch.long, device=self.texels.device)
        slot[cats] = torch.arange(len(cats), device=self.texels.device)
        acc = torch.zeros(len(cats), D + 1, S, S, dtype=torch.float32, device=self.texels.device)
        vis = visible.to(acc)
        acc.index_add_(0, slot[labels], torch.cat([surface.detach().to(acc) * vis[:, None], vis[:, None]], dim=1))
        if reduce is not None:
            reduce(acc)
        sums, count = acc[:, :D], acc[:, D]
        old = self.texels[cats]
        new = F.normalize(self.momentum * old + (1 - self.momentum) * F.normalize(sums, dim=1), dim=1)
        self.texels[cats] = torch.where(count[:, None] > 0, new, old)
        self.seen[cats] += count.round().long()


class BackgroundBank(nn.Module):
    """A FIFO of ``K`` unit background features (docs/design.md §8).

    It starts full of random unit vectors (NeMo's memory initialisation), which the first
    ``K`` pushed features replace, oldest first.

    Args:
        size: ``K >= 1``. dim: ``D``. seed: seeds the random initial content.

    Buffers:
        memory: ``(K, D)`` ring buffer. ptr: ``()`` int64, next slot to write.
    """

    def __init__(self, size: int = 4096, dim: int = 128, seed: int = 0):
        super().__init__()
        for name, v in (("size", size), ("dim", dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        g = torch.Generator().manual_seed(int(seed) + 1)
        self.register_buffer("memory", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.int64))

    @property
    def features(self) -> torch.Tensor:
        """``(K, D)`` the bank's features, oldest first."""
        return torch.roll(self.memory, -int(self.ptr), dims=0)

    def mean(self) -> torch.Tensor:
        """``(D,)`` the normalized mean background feature ``β̄``."""
        return F.normalize(self.memory.mean(0), dim=0)

    @torch.no_grad()
    def push(self, features: torch.Tensor, gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Append ``features (N, D)`` (detached, normalized here), dropping the oldest entries.

        Args:
            gather: optional; maps this rank's ``(N, D)`` to all ranks' pushes concatenated in
                rank order (the same tensor on every rank), so all banks stay identical.
        """
        K, D = self.memory.shape
        if features.dim() != 2 or features.shape[1] != D:
            raise ValueError(f"features must be (N, {D}), got {tuple(features.shape)}")
        x = F.normalize(features.detach().to(self.memory), dim=1)
        if gather is not None:
            x = gather(x)
        n = len(x)
        if n == 0:
            return
        if n >= K:
            x, n = x[-K:], K
        idx = (int(self.ptr) + torch.arange(n, device=self.memory.device)) % K
        self.memory[idx] = x
        self.ptr.fill_((int(self.ptr) + n) % K)
