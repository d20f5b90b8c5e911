"""Modality towers: a small encoder per modality, a concept-alignment adapter,
a prototype network shared by all modalities, and a dict-in, dict-out model.

A modality that is absent from the input dict is absent from the output: it is
never zero-filled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from common.modalities import ModalitySpec


@dataclass
class TowerConfig:
    """Sizes of one modality's tower (small enough for a Raspberry Pi)."""

    width: int = 32
    feature_dim: int = 96  # what a node uploads per window: 96 x fp16 is 8x smaller than a raw 128 x 3 float32 window
    adapter_hidden: int = 256
    embed_dim: int = 128
    prototype_hidden: int = 256

    @classmethod
    def from_dict(cls, d: dict | None) -> TowerConfig:
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown tower setting(s) {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def _block(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, k, stride=stride, padding=k // 2), nn.GroupNorm(4, cout), nn.GELU())


class InertialEncoder(nn.Module):
    """1-D CNN over (batch, time, channels) windows, pooled to one feature vector."""

    def __init__(self, spec: ModalitySpec, cfg: TowerConfig | None = None):
        super().__init__()
        cfg = cfg or TowerConfig()
        w = cfg.width
        self.spec = spec
        self.out_dim = cfg.feature_dim
        self.net = nn.Sequential(
            _block(spec.channels, w, 5, 2),
            _block(w, 2 * w, 5, 2),
            _block(2 * w, 3 * w, 5, 2),
            _block(3 * w, cfg.feature_dim, 3, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.spec.channels:
            raise ValueError(
                f"encoder for {self.spec.name!r} takes (batch, time, {self.spec.channels}) windows, got {tuple(x.shape)}"
            )
        h = self.net(x.transpose(1, 2))
        return h.mean(dim=-1)


ENCODER_FAMILIES: dict[str, type[nn.Module]] = {"inertial": InertialEncoder}


def build_encoder(spec: ModalitySpec, cfg: TowerConfig | None = None) -> nn.Module:
    try:
        family = ENCODER_FAMILIES[spec.family]
    except KeyError:
        raise ValueError(f"no encoder for modality family {spec.family!r} ({spec.name}); known: {sorted(ENCODER_FAMILIES)}") from None
    return family(spec, cfg)


class ConceptAdapter(nn.Module):
    """Babel's concept-alignment module: a small MLP from encoder features to the shared space."""

    def __init__(self, in_dim: int, hidden: int = 256, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class PrototypeNet(nn.Module):
    """A residual MLP shared by every modality, applied after each adapter."""

    def __init__(self, dim: int = 128, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.net(z)


class AlignedModel(nn.Module):
    """Towers keyed by modality name; dict in, dict out over the modalities present."""

    def __init__(self, specs: dict[str, ModalitySpec], cfg: TowerConfig | None = None, prototype: bool = True):
        super().__init__()
        self.cfg = cfg or TowerConfig()
        self.specs = dict(specs)
        self.encoders = nn.ModuleDict({m: build_encoder(s, self.cfg) for m, s in specs.items()})
        self.adapters = nn.ModuleDict(
            {m: ConceptAdapter(self.encoders[m].out_dim, self.cfg.adapter_hidden, self.cfg.embed_dim) for m in specs}
        )
        self.prototype = PrototypeNet(self.cfg.embed_dim, self.cfg.prototype_hidden) if prototype else nn.Identity()

    @property
    def modalities(self) -> list[str]:
        return sorted(self.encoders)

    def _check(self, inputs: dict[str, torch.Tensor]) -> None:
        unknown = [m for m in inputs if m not in self.encoders]
        if unknown:
            raise KeyError(f"unknown modality {unknown[0]!r}; this model has {', '.join(self.modalities)}")

    def features(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._check(inputs)
        return {m: self.encoders[m](x) for m, x in inputs.items()}

    def embed_features(self, feats: dict[str, torch.Tensor], normalize: bool = True) -> dict[str, torch.Tensor]:
        out = {}
        for m, h in feats.items():
            z = self.prototype(self.adapters[m](h))
            out[m] = F.normalize(z, dim=-1) if normalize else z
        return out

    def forward(self, inputs: dict[str, torch.Tensor], normalize: bool = True) -> dict[str, torch.Tensor]:
        return self.embed_features(self.features(inputs), normalize=normalize)

    def encode(self, inputs: dict[str, torch.Tensor], normalize: bool = True) -> dict[str, torch.Tensor]:
        return self.forward(inputs, normalize=normalize)


def fuse(embeddings: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean of the embeddings present for each sample; absent ones do not count.

    ``masks[m]`` (bool per sample) says where modality m is present; without
    masks every given modality is present for every sample.
    """
    if not embeddings:
        raise ValueError("fuse() needs at least one modality")
    zs = torch.stack(list(embeddings.values()))  # (M, B, d)
    if masks is None:
        return zs.mean(0)
    w = torch.stack([masks[m].to(zs.dtype) for m in embeddings]).unsqueeze(-1)
    count = w.sum(0)
    if (count == 0).any():
        raise ValueError("a sample has no modality present")
    return (zs * w).sum(0) / count


class FusionHead(nn.Module):
    """A classifier on the fused embedding of whatever subset of modalities is present."""

    def __init__(self, dim: int, n_classes: int, hidden: int = 0):
        super().__init__()
        self.net = nn.Linear(dim, n_classes) if hidden == 0 else nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, n_classes))

    def forward(self, embeddings: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.net(fuse(embeddings, masks))


def head_for_state(state: dict[str, torch.Tensor], dim: int) -> FusionHead:
    """A FusionHead shaped like ``state`` (linear, or one hidden layer), for loading a pushed head."""
    if "net.weight" in state:
        return FusionHead(dim, int(state["net.weight"].shape[0]))
    if "net.0.weight" in state and "net.2.weight" in state:
        return FusionHead(dim, int(state["net.2.weight"].shape[0]), hidden=int(state["net.0.weight"].shape[0]))
    raise ValueError(f"head state has unexpected keys {sorted(state)[:4]}")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()
    return module


@dataclass
class ModelCard:
    """What it takes to rebuild an AlignedModel: specs and sizes."""

    specs: dict[str, dict] = field(default_factory=dict)
    tower: dict = field(default_factory=dict)

    @classmethod
    def of(cls, model: AlignedModel) -> ModelCard:
        return cls(specs={m: asdict(s) for m, s in model.specs.items()}, tower=model.cfg.to_dict())

    def build(self) -> AlignedModel:
        return AlignedModel({m: ModalitySpec(**s) for m, s in self.specs.items()}, TowerConfig.from_dict(self.tower))
