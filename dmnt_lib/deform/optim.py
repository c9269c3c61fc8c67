"""Optimisers of ``fit_category``: Adam for the net, per-code Adam for the auto-decoder codes.

Each step of ``fit_category`` draws a few CAD models; only their codes enter the loss. A plain
``torch.optim.Adam`` over the whole ``(N, D)`` code table would still move the codes that were
not drawn (their gradient is a zero row, but Adam's momentum keeps pushing them, and the code
prior, computed on drawn codes only, never pulls them back) and it would share one
bias-correction step count among all codes. ``CodeAdam`` treats every row as its own Adam
problem: a step updates only the rows it is given, and only their moments and step counts
advance, so a code drawn ``k`` times has taken exactly ``k`` Adam steps on its own gradients.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["CodeAdam", "FitOptimizer"]


def _check_lr(lr) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    return float(lr)


class CodeAdam:
    """Adam in which every row of a ``(N, D)`` code table is optimised on its own.

    For each row ``r`` given to ``step`` (gradient ``g = codes.grad[r]``), with the exact
    operations of ``torch.optim.Adam`` (so one row drawn at every step follows ``torch.optim.Adam``
    on that row bit for bit)::

        t_r += 1;  m_r ← lerp(m_r, g, 1−β1);  v_r ← β2·v_r + (1−β2)·g²
        z_r ← z_r − lr/(1−β1^t_r) · m_r / (√v_r / √(1−β2^t_r) + ε)

    Rows not given keep their value, moments and step count bit for bit.

    Args:
        codes: the ``(N, D)`` float parameter (``DeformableMesh.latents``).
        lr: learning rate (change it through the ``lr`` attribute, e.g. for a schedule).
        betas, eps: Adam's constants (torch's defaults).

    Attributes:
        step_count: ``(N,)`` int64, Adam steps taken by each row.
        exp_avg, exp_avg_sq: ``(N, D)``, same dtype as ``codes``: the per-row moments.
    """

    def __init__(self, codes: nn.Parameter, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if not isinstance(codes, torch.Tensor) or codes.dim() != 2 or not codes.is_floating_point():
            raise TypeError(f"codes must be a floating-point (N, D) tensor, got {getattr(codes, 'shape', type(codes))}")
        self.codes = codes
        self.lr = _check_lr(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.step_count = torch.zeros(codes.shape[0], dtype=torch.int64)
        self.exp_avg = torch.zeros_like(codes, memory_format=torch.contiguous_format).detach()
        self.exp_avg_sq = torch.zeros_like(self.exp_avg)

    def zero_grad(self) -> None:
        self.codes.grad = None

    @torch.no_grad()
    def step(self, rows) -> None:
        """One Adam step for each row index in ``rows`` (distinct ints in ``[0, N)``); needs ``codes.grad``."""
        rows = [int(r) for r in rows]
        n = self.codes.shape[0]
        if len(set(rows)) != len(rows) or any(not 0 <= r < n for r in rows):
            raise ValueError(f"rows must be distinct indices in [0, {n}), got {rows}")
        if self.codes.grad is None:
            raise RuntimeError("CodeAdam.step: codes has no gradient (call backward first)")
        beta1, beta2 = self.betas
        # A Python loop over the drawn rows (a handful per step): each row gets its own
        # bias correction as a Python float, exactly as torch.optim.Adam computes it.
        for r in rows:
            self.step_count[r] += 1
            t = int(self.step_count[r])
            g, m, v = self.codes.grad[r], self.exp_avg[r], self.exp_avg_sq[r]
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(self.eps)
            self.codes[r].addcdiv_(m, denom, value=-self.lr / (1 - beta1**t))

    def state_dict(self) -> dict:
        """Copies of the state: ``{"lr", "betas", "eps", "step_count", "exp_avg", "exp_avg_sq"}``."""
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "step_count": self.step_count.clone(),
                "exp_avg": self.exp_avg.detach().cpu().clone(), "exp_avg_sq": self.exp_avg_sq.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` output; raises ``ValueError`` on a missing key or a shape mismatch."""
        missing = {"lr", "betas", "eps", "step_count", "exp_avg", "exp_avg_sq"} - set(state)
        if missing:
            raise ValueError(f"CodeAdam state is missing {sorted(missing)}")
        shape = tuple(self.codes.shape)
        if tuple(state["exp_avg"].shape) != shape or tuple(state["exp_avg_sq"].shape) != shape or tuple(state["step_count"].shape) != shape[:1]:
            raise ValueError(f"CodeAdam state is for a table of shape {tuple(state['exp_avg'].shape)}, not {shape}")
        self.lr = _check_lr(state["lr"])
        self.betas = (float(state["betas"][0]), float(state["betas"][1]))
        self.eps = float(state["eps"])
        self.step_count = state["step_count"].to(torch.int64).clone()
        self.exp_avg = state["exp_avg"].to(self.codes).clone()
        self.exp_avg_sq = state["exp_avg_sq"].to(self.codes).clone()


class FitOptimizer:
    """``fit_category``'s optimiser: ``torch.optim.Adam`` on the net's parameters and ``CodeAdam``
    on ``mesh.latents``, with one learning-rate schedule.

    Args:
        mesh: the ``DeformableMesh`` being fitted.
        lr_net, lr_latent: base learning rates; ``set_lr_factor(f)`` scales both.
    """

    def __init__(self, mesh, lr_net: float, lr_latent: float):
        self.base_lrs = (_check_lr(lr_net), _check_lr(lr_latent))
        self.net = torch.optim.Adam(mesh.net.parameters(), lr=self.base_lrs[0])
        self.codes = CodeAdam(mesh.latents, self.base_lrs[1])

    def set_lr_factor(self, factor: float) -> None:
        for group in self.net.param_groups:
            group["lr"] = self.base_lrs[0] * factor
        self.codes.lr = self.base_lrs[1] * factor

    def zero_grad(self) -> None:
        self.net.zero_grad(set_to_none=True)
        self.codes.zero_grad()

    def step(self, rows) -> None:
        """Update the net, and the codes of ``rows`` only (the models drawn at this step)."""
        self.net.step()
        self.codes.step(rows)

    def state_dict(self) -> dict:
        """``{"net": torch Adam's state_dict, "codes": CodeAdam's state_dict}``."""
        return {"net": self.net.state_dict(), "codes": self.codes.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` output; raises ``ValueError`` if it does not fit this mesh."""
        if not isinstance(state, dict) or set(state) != {"net", "codes"}:
            raise ValueError(f"optimizer state must have the keys 'net' and 'codes', got {sorted(state) if isinstance(state, dict) else type(state).__name__}")
        try:
            self.net.load_state_dict(state["net"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise ValueError(f"optimizer state does not fit the net: {e}") from None
        self.codes.load_state_dict(state["codes"])
