"""``DMNT``: the feature net, the neural textures, the background bank and the category
deformable meshes (with one shape code per CAD model), saved and loaded as one file.

File format ``dmnt-model-v2`` (``torch.save`` of a dict, written with ``fileio.atomic_path``):
``format``, ``config`` (``ModelConfig`` as a dict), ``categories``, ``deform`` (per category:
template tensors, ``net_config``, CAD model names), ``state`` (the ``state_dict``) and
``extra`` (whatever the caller adds: the training loop stores its optimizer and history there).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from ..fileio import atomic_path
from ..mesh import UVMesh
from .backbone import FeatureNet
from .texture import BackgroundBank, NeuralTexture

__all__ = ["ModelConfig", "DMNT", "MODEL_FORMAT", "load_deformables"]

MODEL_FORMAT = "dmnt-model-v2"


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a ``DMNT`` (docs/design.md §8 defaults).

    Attributes:
        arch, dim, stride, norm: the ``FeatureNet``'s. texture_size: ``S``. momentum: texture ``m``.
        bank_size: background FIFO length. seed: seeds the net, textures and bank initialisation.
    """

    arch: str = "resnet18"
    dim: int = 128
    stride: int = 4
    norm: str = "batch"
    texture_size: int = 128
    momentum: float = 0.9
    bank_size: int = 4096
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}")
        return cls(**d)


def load_deformables(deform_dir: str | os.PathLike, categories: Sequence[str]):
    """Read ``deform_dir/<category>.pt`` (the ``deform`` CLI's ``--checkpoint-dir``) for each category.

    Returns:
        ``({category: DeformableMesh}, {category: [CAD model names]})``.

    Raises:
        FileNotFoundError: the folder or a category's checkpoint is missing (the message lists
        the categories that are there). ValueError: a checkpoint of another category.
    """
    from ..deform import load_checkpoint

    deform_dir = Path(deform_dir)
    if not deform_dir.is_dir():
        raise FileNotFoundError(f"deform folder not found: {deform_dir} (make it with `python -m dmnt_lib deform --data DIR --checkpoint-dir {deform_dir}`)")
    have = sorted(p.stem for p in deform_dir.glob("*.pt"))
    missing = [c for c in categories if c not in have]
    if missing:
        raise FileNotFoundError(f"no deformable-mesh checkpoint for {missing} in {deform_dir} (it has {have}); "
                                f"fit them with `python -m dmnt_lib deform --categories {' '.join(missing)} --checkpoint-dir {deform_dir}`")
    meshes, names = {}, {}
    for c in categories:
        result, _, cat = load_checkpoint(deform_dir / f"{c}.pt")
        if cat and cat != c:
            raise ValueError(f"{deform_dir / (c + '.pt')} holds the deformable mesh of {cat!r}, not {c!r}")
        meshes[c], names[c] = result.mesh, list(result.names)
    return meshes, names


class DMNT(nn.Module):
    """Backbone + neural textures + background bank + deformable meshes of ``categories``.

    Args:
        categories: category names (order = texture index = label order of the model).
        deformables: ``{category: DeformableMesh}`` (fitted; frozen here).
        cad_names: ``{category: [CAD model names]}``, row ``i`` of the codes is model ``names[i]``
            (``"01"`` = ``CAD/<category>/01.off`` = dataset ``cad_index`` 1).
        config: ``ModelConfig``.
        weights: backbone weights (``FeatureNet``'s ``weights``); not stored in the config.

    Attributes:
        backbone (``FeatureNet``), textures (``NeuralTexture``, ``C`` textures), bank
        (``BackgroundBank``), meshes (``nn.ModuleDict`` of ``DeformableMesh``).
    """

    def __init__(self, categories: Sequence[str], deformables: Mapping[str, nn.Module], cad_names: Mapping[str, Sequence[str]],
                 config: ModelConfig = ModelConfig(), weights=None):
        super().__init__()
        from ..deform import DeformableMesh

        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        categories = tuple(categories)
        if not categories or len(set(categories)) != len(categories):
            raise ValueError(f"categories must be a non-empty list of distinct names, got {categories}")
        for c in categories:
            if c not in deformables or not isinstance(deformables[c], DeformableMesh):
                raise ValueError(f"deformables must hold a DeformableMesh for every category; missing or wrong for {c!r}")
            if c not in cad_names or len(cad_names[c]) != deformables[c].num_models:
                raise ValueError(f"cad_names[{c!r}] must list the {deformables[c].num_models} CAD models of its codes")
        self.categories = categories
        self.config = config
        self.cad_names = {c: [str(n) for n in cad_names[c]] for c in categories}
        with torch.random.fork_rng(devices=[]):  # the init depends on config.seed only
            torch.manual_seed(config.seed)
            self.backbone = FeatureNet(config.arch, config.dim, config.stride, weights=weights, norm=config.norm)
        self.textures = NeuralTexture(len(categories), config.dim, config.texture_size, config.momentum, seed=config.seed)
        self.bank = BackgroundBank(config.bank_size, config.dim, seed=config.seed)
        # A list, not a ModuleDict keyed by category: "train" is a category and also nn.Module.train.
        self.meshes = nn.ModuleList([deformables[c] for c in categories])
        for p in self.meshes.parameters():
            p.requires_grad_(False)

    # ----------------------------------------------------------------- accessors
    @property
    def stride(self) -> int:
        return self.config.stride

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def texture_size(self) -> int:
        return self.config.texture_size

    def label(self, category: str) -> int:
        """Index of ``category`` in ``categories`` (texture index)."""
        if category not in self.categories:
            raise ValueError(f"unknown category {category!r}; this model has {self.categories}")
        return self.categories.index(category)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, 3, H, W)`` in [0, 1] → unit features ``(B, D, H/s, W/s)`` (call ``eval()`` first
        for inference: in train mode BatchNorm normalizes with the batch's statistics)."""
        return self.backbone(images)

    def texture(self, category: str) -> torch.Tensor:
        """The neural texture ``(D, S, S)`` of ``category`` (a view of the memory)."""
        return self.textures.texels[self.label(category)]

    def seen(self, category: str) -> torch.Tensor:
        """``(S, S)`` bool, texels of ``category`` updated at least once."""
        return self.textures.seen[self.label(category)] > 0

    def deformable(self, category: str):
        """The category's ``DeformableMesh`` (e.g. to optimise a shape code)."""
        return self.meshes[self.label(category)]

    def codes(self, category: str) -> torch.Tensor:
        """``(M, Z)`` the learned shape codes of the category's CAD models (detached)."""
        return self.deformable(category).latents.detach()

    def code_index(self, category: str, cad_index: int) -> int:
        """Row of ``codes(category)`` for the dataset's 1-based ``cad_index`` (file ``NN.off``)."""
        names = self.cad_names[category]
        for key in (f"{int(cad_index):02d}", str(int(cad_index))):
            if key in names:
                return names.index(key)
        raise ValueError(f"category {category!r} has no CAD model {cad_index} (models: {names})")

    @torch.no_grad()
    def mesh(self, category: str, cad_index: int | None = None) -> UVMesh:
        """The deformed mesh of CAD model ``cad_index`` (1-based, as in the dataset), or with
        ``None`` the mean-code shape (what inference uses)."""
        dm = self.deformable(category)
        z = dm.mean_code() if cad_index is None else dm.latents[self.code_index(category, cad_index)]
        return dm.deformed(z.detach())

    # ----------------------------------------------------------------- files
    def _deform_meta(self) -> dict:
        out = {}
        for c in self.categories:
            dm = self.meshes[self.label(c)]
            t = dm.template
            out[c] = {"template": {k: getattr(t, k).detach().cpu() for k in ("verts", "faces", "verts_uvs", "faces_uvs")},
                      "net_config": dm.net.config(), "names": list(self.cad_names[c])}
        return out

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> None:
        """Atomically write the model (and ``extra``, e.g. training state) to ``path``."""
        payload = {"format": MODEL_FORMAT, "config": self.config.to_dict(), "categories": list(self.categories),
                   "deform": self._deform_meta(), "state": {k: v.detach().cpu() for k, v in self.state_dict().items()},
                   "extra": extra or {}}
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location="cpu", return_extra: bool = False):
        """Load a model written by ``save`` (or a training checkpoint: same format).

        Returns:
            the ``DMNT`` on ``map_location`` in eval mode (BatchNorm uses its running statistics;
            ``train`` switches back itself), and with ``return_extra`` also the ``extra`` dict.

        Raises:
            FileNotFoundError; ValueError for a file that is not a ``dmnt-model-v2`` model or has a bad entry.
        """
        from ..deform import DeformableMesh, DeformationNet

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 -- truncated or foreign file
            raise ValueError(f"{path}: not a readable model file ({e})") from None
        if not isinstance(ck, dict) or ck.get("format") != MODEL_FORMAT:
            raise ValueError(f"{path}: not a {MODEL_FORMAT} file (format: {ck.get('format') if isinstance(ck, dict) else None!r})")
        entry = "config"
        try:
            config = ModelConfig.from_dict(ck["config"])
            entry = "deform"
            meshes, names = {}, {}
            for c in ck["categories"]:
                m = ck["deform"][c]
                with torch.random.fork_rng(devices=[]):
                    net = DeformationNet(**m["net_config"])
                meshes[c] = DeformableMesh(UVMesh(**m["template"]), len(m["names"]), net)
                names[c] = m["names"]
            entry = "state"
            with torch.random.fork_rng(devices=[]):
                model = cls(ck["categories"], meshes, names, config)
            model.load_state_dict(ck["state"])
        except (TypeError, ValueError, KeyError, RuntimeError) as e:
            raise ValueError(f"{path}: bad model entry {entry!r}: {e}") from None
        model = model.to(map_location).eval()
        return (model, ck.get("extra", {})) if return_extra else model
