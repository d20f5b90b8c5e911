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
    window_stats: bool = True  # encoders also read each channel's level and log spread (see ``InertialEncoder``)

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


def window_stats(x: torch.Tensor) -> torch.Tensor:
    """Each channel's mean and log standard deviation over a (batch, time, channels) window: (batch, 2 * channels)."""
    return torch.cat([x.mean(dim=1), torch.log(x.std(dim=1, correction=0) + 1e-3)], dim=-1)


class InertialEncoder(nn.Module):
    """1-D CNN over (batch, time, channels) windows, pooled to one feature vector.

    The GroupNorm inside the convolutions keeps each window's shape but not its
    level or scale, and those are what a gravity stream carries: posture in its
    level, motion in a spread some 50 times smaller than the level's range
    across windows. With ``window_stats`` (the default) a linear map of each
    channel's mean and log spread (``window_stats``) is added to the pooled
    feature, so a probe on the feature can read both.
    """

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
        self.stats = nn.Linear(2 * spec.channels, cfg.feature_dim) if cfg.window_stats else None

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """The feature sequence before pooling: (batch, feature_dim, time / 16)."""
        if x.ndim != 3 or x.shape[-1] != self.spec.channels:
            raise ValueError(
                f"encoder for {self.spec.name!r} takes (batch, time, {self.spec.channels}) windows, got {tuple(x.shape)}"
            )
        return self.net(x.transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.sequence(x).mean(dim=-1)
        return pooled if self.stats is None else pooled + self.stats(window_stats(x))


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

    def head_inputs(self, inputs: dict[str, torch.Tensor], features: bool = False) -> dict[str, torch.Tensor]:
        """Per modality, what a FusionHead reads: encoder features beside the aligned embedding.

        ``inputs`` are raw windows, or encoder features with ``features``.
        """
        feats = inputs if features else self.features(inputs)
        return head_inputs(feats, self.embed_features(feats))

    @property
    def head_dim(self) -> int:
        """Width of one modality's head input."""
        return self.cfg.feature_dim + self.cfg.embed_dim

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


def head_inputs(feats: dict[str, torch.Tensor], embeddings: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a head reads per modality: the encoder features and the aligned embedding, side by side.

    Alignment keeps what the streams share; the features keep what each adds.
    """
    return {m: torch.cat([feats[m], embeddings[m]], dim=-1) for m in embeddings}


class Standardise(nn.Module):
    """Fixed per-dimension centring and scaling, measured once on training inputs (kept in the state dict)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> Standardise:
        """Centre and scale to ``x``'s statistics; a dimension that barely varies is scaled by a tenth of the
        median spread instead, so a small later change of the towers cannot blow it up."""
        self.mean.copy_(x.mean(0))
        if len(x) > 1:
            std = x.std(0, unbiased=False)
            self.std.copy_(std.clamp_min(max(1e-4, 0.1 * float(std.median()))))
        else:
            self.std.fill_(1.0)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class FusionHead(nn.Module):
    """Late fusion over whatever subset of modalities is present.

    Each modality has its own classifier on its standardised head input
    (``head_inputs``); a sample's logits are the mean over its present
    modalities. For linear classifiers this is one linear head on the
    concatenation, yet every single modality is served on its own, and a
    missing modality is absent, never zero-filled.
    """

    def __init__(self, dims: dict[str, int], n_classes: int, hidden: int = 0):
        super().__init__()
        if not dims:
            raise ValueError("FusionHead needs at least one modality")
        self.n_classes = n_classes
        self.scalers = nn.ModuleDict({m: Standardise(d) for m, d in dims.items()})

        def classifier(d: int) -> nn.Module:
            return nn.Linear(d, n_classes) if hidden == 0 else nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, n_classes))

        self.heads = nn.ModuleDict({m: classifier(d) for m, d in dims.items()})

    @property
    def modalities(self) -> list[str]:
        return sorted(self.heads)

    def per_modality(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        unknown = [m for m in inputs if m not in self.heads]
        if unknown:
            raise KeyError(f"this head was trained for {', '.join(self.modalities)}, not {unknown[0]!r}")
        return {m: self.heads[m](self.scalers[m](x)) for m, x in inputs.items()}

    def forward(self, inputs: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return fuse(self.per_modality(inputs), masks)


def head_for_state(state: dict[str, torch.Tensor]) -> FusionHead:
    """A FusionHead shaped like ``state`` (per modality: linear, or one hidden layer), for loading a pushed head."""
    dims, hidden, classes = {}, 0, None
    for key, v in state.items():
        parts = key.split(".")
        if parts[0] == "scalers" and len(parts) == 3 and parts[2] == "mean":
            dims[parts[1]] = int(v.shape[0])
        elif parts[0] == "heads" and parts[-1] == "weight":
            if len(parts) == 3:
                classes = int(v.shape[0])
            elif len(parts) == 4 and parts[2] == "0":
                hidden = int(v.shape[0])
            elif len(parts) == 4 and parts[2] == "2":
                classes = int(v.shape[0])
    if not dims or classes is None:
        raise ValueError(f"head state has unexpected keys {sorted(state)[:4]}")
    return FusionHead(dims, classes, hidden=hidden)


def load_strict(module: nn.Module, state, what: str) -> None:
    """Load ``state`` into ``module`` exactly (no missing or extra keys, same shapes), or raise ValueError naming ``what``."""
    try:
        module.load_state_dict(dict(state), strict=True)
    except (RuntimeError, KeyError) as e:
        raise ValueError(f"{what}: the state does not fit ({str(e).splitlines()[0]})") from e


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


# --- the whole model as one flat state, as federated fine-tuning sends it -------------------------

SHARED_BLOCK = "shared"


def flat_state(model: AlignedModel, head: FusionHead, modalities: list[str] | None = None) -> dict[str, torch.Tensor]:
    """``model.*`` and ``head.*`` tensors of the given modalities (all by default) and the shared prototype."""
    mods = set(modalities if modalities is not None else model.modalities)
    out = {}
    for prefix, module in (("model", model), ("head", head)):
        for k, v in module.state_dict().items():
            if block_of(f"{prefix}.{k}") in mods | {SHARED_BLOCK}:
                out[f"{prefix}.{k}"] = v.detach().cpu().clone()
    return out


def block_of(key: str) -> str:
    """The modality a flat key belongs to, or ``shared`` (the prototype network)."""
    parts = key.split(".")
    if len(parts) >= 3 and (parts[:2] in (["model", "encoders"], ["model", "adapters"], ["head", "scalers"], ["head", "heads"])):
        return parts[2]
    if parts[:2] == ["model", "prototype"]:
        return SHARED_BLOCK
    raise ValueError(f"{key!r} is not a key of a flat model state (model.encoders|adapters|prototype.*, head.scalers|heads.*)")


def model_from_flat(flat: dict[str, torch.Tensor], specs: dict[str, ModalitySpec], cfg: TowerConfig) -> tuple[AlignedModel, FusionHead]:
    """Rebuild the towers and head of the modalities a flat state holds (``specs`` gives their shapes)."""
    mods = sorted({b for b in map(block_of, flat) if b != SHARED_BLOCK})
    missing = [m for m in mods if m not in specs]
    if missing:
        raise ValueError(f"the state holds {missing[0]!r}, which this node has no spec for")
    model = AlignedModel({m: specs[m] for m in mods}, cfg)
    head = head_for_state({k[5:]: v for k, v in flat.items() if k.startswith("head.")})
    for prefix, module in (("model.", model), ("head.", head)):
        load_strict(module, {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}, f"the {prefix[:-1]}")
    return model, head
