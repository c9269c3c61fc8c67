"""The contrastive loss of appendix A.3 on explicit tensors, and the sampler of its groups.

``contrastive_loss`` is the formula of docs/design.md §8:

    L = mean_n  −log( W_ML e^{z+_n} / (W_ML e^{z+_n} + Σ_g W_g Σ_{k valid} e^{z_{g,n,k}}) ),
    z+_n = <f_n, pos_n> / T,   z_{g,n,k} = <f_n, neg_{g,n,k}> / T.

The group weights multiply the exponentials, i.e. ``log W`` is added to the logits (NeMo's
convention); a weight of 0 removes its group. It is written as one ``logsumexp`` over the
concatenated logits (``torch.nn.functional.cross_entropy`` cannot mask per-row negatives).

``sample_groups`` draws, for one image, the positives and the three negative groups
(``"Com"``, ``"Class"``, ``"BG"``) from the image's transformed features, the neural
textures and the background bank, with a caller-given ``torch.Generator``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["GROUPS", "DEFAULT_WEIGHTS", "contrastive_loss", "SampleCounts", "Groups", "sample_groups"]

GROUPS = ("Com", "Class", "BG")
#: The appendix's weights: W_ML = W_Com = W_Class = 1, W_BG = 0.1.
DEFAULT_WEIGHTS = {"ML": 1.0, "Com": 1.0, "Class": 1.0, "BG": 0.1}


def _check_weights(weights) -> dict[str, float]:
    if weights is None:
        return dict(DEFAULT_WEIGHTS)
    if not isinstance(weights, dict):
        raise TypeError(f"weights must be a dict with keys {tuple(DEFAULT_WEIGHTS)} or None, got {type(weights).__name__}")
    unknown = set(weights) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"weights has unknown keys {sorted(unknown)}; allowed: {tuple(DEFAULT_WEIGHTS)}")
    out = dict(DEFAULT_WEIGHTS)
    for k, v in weights.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
            raise ValueError(f"weights[{k!r}] must be a finite number >= 0, got {v!r}")
        out[k] = float(v)
    if out["ML"] <= 0:
        raise ValueError(f"weights['ML'] must be > 0 (the positive's weight), got {out['ML']}")
    return out


def contrastive_loss(f: torch.Tensor, pos: torch.Tensor, negatives: dict, weights: dict | None = None, T: float = 0.07) -> torch.Tensor:
    """The A.3 cross-entropy with weighted negative groups (see the module docstring).

    Args:
        f: ``(N, D)`` unit image features of the ``N >= 1`` positives (differentiable).
        pos: ``(N, D)`` unit texture features at the positives' texels.
        negatives: dict from group name (``"Com"``, ``"Class"``, ``"BG"``; any subset) to
            ``(n, valid)``: ``n`` of shape ``(N, K, D)`` (per positive) or ``(K, D)`` (shared by
            all positives), ``K >= 0``; ``valid`` a ``(N, K)`` bool mask of the entries that count,
            or ``None`` (all count).
        weights: dict with any of ``"ML"``, ``"Com"``, ``"Class"``, ``"BG"`` (defaults 1, 1, 1, 0.1);
            ``"ML"`` must be > 0, the others >= 0 (0 removes the group).
        T: temperature ``> 0``.

    Returns:
        Scalar tensor: the mean over the ``N`` positives.

    Raises:
        TypeError / ValueError naming the argument.
    """
    if not isinstance(f, torch.Tensor) or not isinstance(pos, torch.Tensor):
        raise TypeError(f"f and pos must be tensors, got {type(f).__name__} and {type(pos).__name__}")
    if f.dim() != 2 or f.shape[0] < 1:
        raise ValueError(f"f must be (N, D) with N >= 1, got {tuple(f.shape)}")
    if not f.is_floating_point():
        raise TypeError(f"f must be floating point, got {f.dtype}")
    if pos.shape != f.shape:
        raise ValueError(f"pos must have the shape of f {tuple(f.shape)}, got {tuple(pos.shape)}")
    if isinstance(T, bool) or not isinstance(T, numbers.Real) or not math.isfinite(T) or T <= 0:
        raise ValueError(f"T must be a finite number > 0, got {T!r}")
    if not isinstance(negatives, dict):
        raise TypeError(f"negatives must be a dict {{group: (n, valid)}}, got {type(negatives).__name__}")
    unknown = set(negatives) - set(GROUPS)
    if unknown:
        raise ValueError(f"negatives has unknown groups {sorted(unknown)}; allowed: {GROUPS}")
    w = _check_weights(weights)
    N, D = f.shape
    z_pos = (f * pos.to(f)).sum(-1) / T + math.log(w["ML"])  # (N,)
    logits = [z_pos[:, None]]
    for g in GROUPS:
        if g not in negatives:
            continue
        entry = negatives[g]
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise TypeError(f"negatives[{g!r}] must be a pair (n, valid), got {type(entry).__name__}")
        n, valid = entry
        if not isinstance(n, torch.Tensor):
            raise TypeError(f"negatives[{g!r}] n must be a tensor, got {type(n).__name__}")
        if n.dim() == 2 and n.shape[1] == D:
            k = n.shape[0]
        elif n.dim() == 3 and n.shape[0] == N and n.shape[2] == D:
            k = n.shape[1]
        else:
            raise ValueError(f"negatives[{g!r}] n must be ({N}, K, {D}) or (K, {D}), got {tuple(n.shape)}")
        if valid is not None:
            if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or tuple(valid.shape) != (N, k):
                raise ValueError(f"negatives[{g!r}] valid must be a ({N}, {k}) bool tensor or None, got "
                                 f"{getattr(valid, 'dtype', type(valid).__name__)} {tuple(getattr(valid, 'shape', ()))}")
        if w[g] == 0 or k == 0:
            continue
        n = n.to(f)
        z = f @ n.T if n.dim() == 2 else torch.einsum("nd,nkd->nk", f, n)
        z = z / T + math.log(w[g])
        if valid is not None:
            z = z.masked_fill(~valid.to(z.device), float("-inf"))
        logits.append(z)
    all_logits = torch.cat(logits, dim=1)
    return (torch.logsumexp(all_logits, dim=1) - z_pos).mean()


@dataclass(frozen=True)
class SampleCounts:
    """How many samples ``sample_groups`` draws per image (the appendix's counts by default).

    Attributes:
        positives: visible texels used as positives (at most; all if fewer are visible).
        com: texels of the image's own texture (seen ones) as "Com" negatives.
        com_min_distance: Com negatives nearer than this (texels, Euclidean on the texel grid)
            to a positive are masked out for that positive.
        class_: texels of the other categories' textures ("Class").
        bg: background-bank features ("BG").
    """

    positives: int = 1000
    com: int = 1000
    com_min_distance: float = 20.0
    class_: int = 200
    bg: int = 2000

    def __post_init__(self):
        for name in ("positives", "com", "class_", "bg"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if self.positives < 1:
            raise ValueError(f"positives must be >= 1, got {self.positives}")
        if isinstance(self.com_min_distance, bool) or not isinstance(self.com_min_distance, numbers.Real) or self.com_min_distance < 0:
            raise ValueError(f"com_min_distance must be a number >= 0, got {self.com_min_distance!r}")


class Groups(NamedTuple):
    """``sample_groups``'s output: ``f (N, D)``, ``pos (N, D)``, ``negatives`` (for ``contrastive_loss``),
    ``texel_index (N, 2)`` and ``com_index (K_c, 2)`` int64 ``(row, column)`` of the positives and Com negatives."""

    f: torch.Tensor
    pos: torch.Tensor
    negatives: dict
    texel_index: torch.Tensor
    com_index: torch.Tensor


def _choose(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``min(k, n)`` distinct indices in ``[0, n)`` in random order (CPU int64)."""
    return torch.randperm(n, generator=generator)[:k]


def sample_groups(surface: torch.Tensor, visible: torch.Tensor, label: int, texels: torch.Tensor, seen: torch.Tensor,
                  bank: torch.Tensor, counts: SampleCounts, generator: torch.Generator):
    """Positives and negative groups of one image, ready for ``contrastive_loss``.

    Args:
        surface: ``(D, S, S)`` the image's features moved to UV (``image_to_uv``; differentiable).
        visible: ``(S, S)`` bool, texels eligible as positives (visible and on the object).
        label: index of the image's category in ``texels``.
        texels: ``(C, D, S, S)`` unit neural textures (the memory; no gradient).
        seen: ``(C, S, S)`` bool, texels ever updated. Com negatives come from the image's own
            seen texels; Class negatives from the other categories' seen texels (all of their
            texels while none is seen yet).
        bank: ``(K, D)`` background features.
        counts: ``SampleCounts``.
        generator: a CPU ``torch.Generator``: every random choice comes from it.

    Returns:
        ``Groups(f, pos, negatives, texel_index, com_index)`` or ``None`` when no texel is visible: ``f (N, D)``
        unit (``normalize(surface[:, t])``), ``pos (N, D)`` = ``texels[label][:, t]``,
        ``negatives`` the dict ``contrastive_loss`` takes (``"Com"``: shared ``(K_c, D)`` with a
        ``(N, K_c)`` distance mask; ``"Class"``, ``"BG"``: shared, ``valid=None``), and
        ``texel_index (N, 2)``, ``com_index (K_c, 2)`` int64 ``(row, column)`` of the positives and Com negatives.
    """
    C, D, S, S2 = texels.shape
    dev = surface.device
    vis = visible.nonzero().cpu()  # (V, 2) row-major order: deterministic
    if len(vis) == 0:
        return None
    t = vis[_choose(len(vis), counts.positives, generator)]  # (N, 2)
    ti, tj = t[:, 0].to(dev), t[:, 1].to(dev)
    f = F.normalize(surface[:, ti, tj].T, dim=1)
    pos = texels[label][:, ti, tj].T
    negatives = {}
    # Com: the image's own texture, seen texels, masked near each positive.
    own = seen[label].nonzero().cpu()
    c = own[_choose(len(own), counts.com, generator)] if counts.com else own[:0]
    ci, cj = c[:, 0].to(dev), c[:, 1].to(dev)
    d2 = (ti[:, None] - ci[None]).float() ** 2 + (tj[:, None] - cj[None]).float() ** 2
    negatives["Com"] = (texels[label][:, ci, cj].T, d2 >= float(counts.com_min_distance) ** 2)
    # Class: the other categories' textures.
    others = torch.ones(C, dtype=torch.bool)
    others[label] = False
    pool = seen.cpu() & others[:, None, None]
    if not pool.any():
        pool = others[:, None, None].expand(C, S, S2)
    cand = pool.nonzero()
    k = cand[_choose(len(cand), counts.class_, generator)] if counts.class_ and len(cand) else cand[:0]
    kc, ki, kj = (k[:, i].to(dev) for i in range(3))
    negatives["Class"] = (texels[kc, :, ki, kj], None)
    b = _choose(len(bank), counts.bg, generator).to(bank.device) if counts.bg else torch.zeros(0, dtype=torch.long)
    negatives["BG"] = (bank[b], None)
    return Groups(f, pos, negatives, t, c)
