"""Babel's expandable alignment: grow one embedding space modality by modality.

A ``GrowthPlan`` is an ordered list of binary stages. Stage 1 aligns two
modalities (the trunk) on data that pairs them; each later stage aligns a new
*branch* modality to a *connecting* modality already in the trunk. A stage
trains only the two towers' adapters and the shared prototype network, on
encoder *features* (what nodes upload; encoders stay frozen on the nodes), with
symmetric InfoNCE weighted per batch by the inverse gradient norm of each
direction. During growth the prototype is an exponential moving average of its
trained weights, and a distillation term keeps the trunk's embeddings close to
the previous stage's frozen model, so earlier stages are not forgotten.

Nothing here touches files except the optional per-stage checkpoints.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.config import ConfigError, load_toml, shipped
from common.losses import ContrastiveConfig, symmetric_info_nce
from common.samples import SampleSet
from common.towers import AlignedModel, ModelCard

log = logging.getLogger("edgebind")

STAGE_KINDS = ("grow", "enhance")
CHECKPOINT_FORMAT = 1


def base_modality(tower: str) -> str:
    """The sensor stream a tower reads: ``acc#2`` (a second acc encoder) reads ``acc``."""
    return tower.split("#", 1)[0]


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Stage:
    """One binary alignment stage: ``branch`` joins the trunk through ``connecting``.

    In stage 1 both modalities are new (they form the trunk). ``source`` names
    the data that pairs them: a scenario group or a party. ``kind="enhance"``
    aligns two towers of the same modality (e.g. ``acc`` and ``acc#2``).
    """

    source: str
    connecting: str
    branch: str
    kind: str = "grow"

    def __post_init__(self) -> None:
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"stage kind must be one of {STAGE_KINDS}, got {self.kind!r}")

    @property
    def pair(self) -> tuple[str, str]:
        return (self.connecting, self.branch)

    def describe(self) -> str:
        arrow = "<=>" if self.kind == "enhance" else "<->"
        return f"{self.connecting}{arrow}{self.branch} on {self.source!r}"


@dataclass
class GrowthPlan:
    """An ordered list of stages; the first builds the trunk, each later one adds a branch."""

    stages: list[Stage]
    name: str = "plan"
    description: str = ""
    scenario: str | None = None  # the scenario whose groups the sources name, if any

    @property
    def modalities(self) -> list[str]:
        """Every tower the plan aligns, in the order they join."""
        out: list[str] = []
        for s in self.stages:
            for m in s.pair:
                if m not in out:
                    out.append(m)
        return out

    def trunk_before(self, k: int) -> list[str]:
        """The towers already aligned when stage ``k`` (0-based) starts."""
        out: list[str] = []
        for s in self.stages[:k]:
            for m in s.pair:
                if m not in out:
                    out.append(m)
        return out

    def validate(self, available: Mapping[str, Iterable[str]] | None = None) -> None:
        """Raise ValueError, before any training, for a plan that cannot be grown.

        ``available`` maps each source (scenario group or party) to the
        modalities it holds; a tower ``m#k`` is held wherever ``m`` is.
        """
        if not self.stages:
            raise ValueError(f"plan {self.name!r} has no stage; it needs at least one to build a trunk")
        avail = None if available is None else {s: set(mods) for s, mods in available.items()}
        trunk: list[str] = []
        for k, st in enumerate(self.stages):
            where = f"plan {self.name!r}, stage {k + 1} ({st.describe()})"
            if st.connecting == st.branch:
                raise ValueError(f"{where}: a stage needs two different towers, got {st.branch!r} twice")
            if st.kind == "enhance" and base_modality(st.connecting) != base_modality(st.branch):
                raise ValueError(
                    f"{where}: an enhance stage aligns two towers of one modality, but {st.connecting!r} "
                    f"reads {base_modality(st.connecting)!r} and {st.branch!r} reads {base_modality(st.branch)!r}"
                )
            if k > 0:
                if st.connecting not in trunk:
                    hint = " (it is the branch; swap branch and connecting)" if st.branch in trunk else ""
                    raise ValueError(
                        f"{where}: connecting modality {st.connecting!r} is not aligned yet{hint}; the trunk so far "
                        f"holds {', '.join(trunk)}. A later stage must connect through a modality an earlier stage aligned."
                    )
                if st.branch in trunk:
                    first = next(j for j, s in enumerate(self.stages) if st.branch in s.pair)
                    raise ValueError(
                        f"{where}: branch modality {st.branch!r} is already in the trunk (aligned at stage {first + 1}); "
                        "a stage must add a modality the trunk does not hold"
                    )
            if avail is not None:
                self._check_source(where, st, avail)
            for m in st.pair:
                if m not in trunk:
                    trunk.append(m)

    @staticmethod
    def _check_source(where: str, st: Stage, avail: dict[str, set[str]]) -> None:
        holders = lambda m: [s for s, mods in avail.items() if m in mods or base_modality(m) in mods]  # noqa: E731
        for m in st.pair:
            if not holders(m):
                raise ValueError(
                    f"{where}: modality {m!r} is held by no source or party "
                    f"(sources: {', '.join(f'{s}={sorted(v)}' for s, v in sorted(avail.items())) or 'none'})"
                )
        if st.source not in avail:
            raise ValueError(f"{where}: no source named {st.source!r}; known sources: {', '.join(sorted(avail)) or 'none'}")
        held = avail[st.source]
        for m in st.pair:
            if m not in held and base_modality(m) not in held:
                raise ValueError(
                    f"{where}: source {st.source!r} holds {', '.join(sorted(held))}, not {m!r}; "
                    f"sources that hold it: {', '.join(holders(m))}"
                )

    def reordered(self) -> GrowthPlan:
        """Another valid order of the same stages, as close to reversed as the trunk allows.

        Each stage is an edge between two towers; the reversed edge list is
        walked greedily, always taking the latest edge that touches the trunk.
        A one-stage plan comes back unchanged.
        """
        edges = [(s.source, set(s.pair), s.kind) for s in reversed(self.stages)]
        first = edges.pop(0)
        a, b = sorted(first[1], key=self.modalities.index)
        stages = [Stage(first[0], a, b, first[2])]
        trunk = {a, b}
        while edges:
            for i, (src, pair, kind) in enumerate(edges):
                if pair & trunk:
                    conn = next(m for m in self.modalities if m in pair and m in trunk)
                    (branch,) = pair - {conn}
                    stages.append(Stage(src, conn, branch, kind))
                    trunk |= pair
                    edges.pop(i)
                    break
            else:  # pragma: no cover - a validated plan is connected
                raise ValueError(f"plan {self.name!r} is not connected; cannot reorder it")
        return GrowthPlan(stages, name=f"{self.name}-reordered", description=f"{self.name} in another order", scenario=self.scenario)

    def to_dict(self) -> dict:
        out: dict = {"name": self.name}
        if self.description:
            out["description"] = self.description
        if self.scenario:
            out["scenario"] = self.scenario
        out["stage"] = []
        for k, s in enumerate(self.stages):
            d = {"trunk": [s.connecting, s.branch]} if k == 0 else {"branch": s.branch, "connecting": s.connecting}
            d["source"] = s.source
            if s.kind != "grow":
                d["kind"] = s.kind
            out["stage"].append(d)
        return out

    @classmethod
    def from_dict(cls, d: Mapping, name: str = "plan") -> GrowthPlan:
        d = dict(d)
        unknown = set(d) - {"name", "description", "scenario", "stage"}
        if unknown:
            raise ValueError(f"plan {name!r}: unknown keys {sorted(unknown)} (known: name, description, scenario, stage)")
        stages = []
        raw_stages = d.get("stage", [])
        if not isinstance(raw_stages, list):
            raise ConfigError(f"plan {name!r}: 'stage' must be an array of tables ([[stage]]), got {raw_stages!r}")
        for key in ("name", "description", "scenario"):
            if key in d and not isinstance(d[key], str):
                raise ConfigError(f"plan {name!r}: {key!r} must be str, got {d[key]!r}")
        for k, raw in enumerate(raw_stages):
            where = f"plan {d.get('name', name)!r}, stage {k + 1}"
            if not isinstance(raw, dict):
                raise ConfigError(f"{where}: expected a table, got {raw!r}")
            raw = dict(raw)
            for key, value in raw.items():
                ok = (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)) if key == "trunk" else isinstance(value, str)
                if not ok:
                    raise ConfigError(f"{where}: {key!r} must be {'a list of two modality names' if key == 'trunk' else 'str'}, got {value!r}")
            if "source" not in raw:
                raise ValueError(f"{where}: needs a source (the scenario group or party whose data pairs the two modalities)")
            kind = raw.pop("kind", "grow")
            if "trunk" in raw:
                if k > 0:
                    raise ValueError(f"{where}: only stage 1 names a trunk; later stages name branch and connecting")
                pair = list(raw.pop("trunk"))
                if len(pair) != 2:
                    raise ValueError(f"{where}: trunk must name two modalities, got {pair}")
                conn, branch = pair
            else:
                if "branch" not in raw or "connecting" not in raw:
                    need = "trunk = [a, b]" if k == 0 else "branch and connecting"
                    raise ValueError(f"{where}: needs {need}")
                conn, branch = raw.pop("connecting"), raw.pop("branch")
            source = raw.pop("source")
            if raw:
                raise ValueError(f"{where}: unknown keys {sorted(raw)}")
            stages.append(Stage(str(source), str(conn), str(branch), kind))
        return cls(stages=stages, name=str(d.get("name", name)), description=str(d.get("description", "")), scenario=d.get("scenario"))

    @classmethod
    def from_toml(cls, name_or_path: str | Path) -> GrowthPlan:
        """A shipped plan by name (``hapt-gyro-trunk``) or a TOML file by path."""
        table, name = load_toml("plans", "plan", name_or_path)
        return cls.from_dict(table, name=name)


def shipped_plans() -> list[str]:
    return shipped("plans")


# --------------------------------------------------------------------------- data and settings


@dataclass
class PairData:
    """Encoder features of paired rows: row i of every array is one pair.

    ``weights`` (per pair, in [0, 1]) multiply each pair's loss, as MMBind's
    pseudo-pair weights do; ``labels`` are carried along but never trained on.
    """

    features: dict[str, np.ndarray]
    weights: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.features:
            raise ValueError("PairData holds no modality")
        self.features = {m: _as_numpy(x) for m, x in self.features.items()}
        n = {m: len(x) for m, x in self.features.items()}
        if len(set(n.values())) != 1:
            raise ValueError(f"PairData: modalities have different numbers of rows {n}; row i of each must be one pair")
        for m, x in self.features.items():
            if x.ndim != 2:
                raise ValueError(f"PairData: features of {m!r} must be (rows, feature_dim), got shape {x.shape}")
            if not np.isfinite(x).all():
                raise ValueError(f"PairData: features of {m!r} contain NaN or Inf")
        if self.weights is not None:
            self.weights = np.asarray(self.weights, dtype=np.float32)
            if self.weights.shape != (len(self),) or not np.isfinite(self.weights).all() or (self.weights < 0).any() or (self.weights > 1).any():
                raise ValueError(f"PairData: weights must be {len(self)} finite values in [0, 1]")

    def __len__(self) -> int:
        return len(next(iter(self.features.values())))

    @property
    def modalities(self) -> list[str]:
        return sorted(self.features)

    @classmethod
    def from_samples(cls, samples: SampleSet, modalities: Sequence[str]) -> PairData:
        """The samples of a SampleSet of *features* that hold every given modality (e.g. MMBind pseudo-pairs)."""
        both = np.stack([samples.index[m] >= 0 for m in modalities]).all(0)
        rows = np.flatnonzero(both)
        return cls(
            features={m: samples.sources[m][samples.index[m][rows]] for m in modalities},
            weights=samples.weight[rows],
            labels=samples.label[rows],
        )


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


@dataclass
class GrowthConfig(ContrastiveConfig):
    """Settings of every stage (one set for the whole plan): the contrastive ones, then growth's own."""

    temperature: float = 0.07
    adaptive: bool = True  # inverse-gradient-norm weights per direction; off: 1/2 each
    ema: bool = True  # the prototype after a growth stage is the EMA of its trained weights
    ema_momentum: float = 0.996
    kd: bool = True  # distil the trunk's embeddings from the previous stage's frozen model
    kd_weight: float = 10.0  # on HAPT keeps the trunk's embeddings within about 1 % cosine distance of the previous stage's
    replay: int = 1024  # earlier stages' feature rows kept per trunk modality for distillation (0: none)
    min_batch: int = 16  # a last partial batch smaller than this is skipped
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("GrowthConfig: epochs must be >= 1 and batch_size >= 2")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ValueError(f"GrowthConfig: ema_momentum must be in [0, 1), got {self.ema_momentum}")
        if self.temperature <= 0 or self.kd_weight < 0 or self.replay < 0:
            raise ValueError("GrowthConfig: temperature must be > 0, kd_weight and replay >= 0")

    @classmethod
    def from_dict(cls, d: Mapping | None) -> GrowthConfig:
        d = dict(d or {})
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown growth setting(s) {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- adaptive weights


def adaptive_weights(
    l_ab: torch.Tensor,
    l_ba: torch.Tensor,
    params: Sequence[torch.Tensor],
    extra_params: Sequence[torch.Tensor] = (),
    retain_graph: bool = False,
    eps: float = 1e-12,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Babel's per-batch direction weights, w = 1/||dL/d(adapter params)||, normalised to sum to 1.

    Each direction is differentiated once, with ``torch.autograd.grad`` (no
    ``.grad`` is touched), with respect to ``params`` (the two towers'
    adapters: the norm set) and ``extra_params`` (e.g. the prototype). The
    returned gradients, in the order params + extra_params, are what the
    update is formed from (``combine``), so no further backward pass is needed.
    A direction whose gradient norm is zero or non-finite gives equal weights.
    """
    params, extra = list(params), list(extra_params)
    both = params + extra
    g_ab = _grads(l_ab, both, retain_graph=True)
    g_ba = _grads(l_ba, both, retain_graph=retain_graph)
    n_ab = _norm(g_ab[: len(params)])
    n_ba = _norm(g_ba[: len(params)])
    ok = torch.isfinite(n_ab) & torch.isfinite(n_ba) & (n_ab > eps) & (n_ba > eps)
    # 1/n_ab / (1/n_ab + 1/n_ba) = n_ba / (n_ab + n_ba)
    w_ab = torch.where(ok, n_ba / (n_ab + n_ba).clamp_min(eps), torch.full_like(n_ab, 0.5))
    return w_ab, 1.0 - w_ab, g_ab, g_ba


def combine(w_ab: torch.Tensor, w_ba: torch.Tensor, g_ab: Sequence[torch.Tensor], g_ba: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The gradient of L = (w_ab L_a<-b + w_ba L_b<-a) / 2 from the two directions' gradients."""
    return [(w_ab * a + w_ba * b) / 2 for a, b in zip(g_ab, g_ba)]


def _grads(loss: torch.Tensor, params: list[torch.Tensor], retain_graph: bool) -> tuple[torch.Tensor, ...]:
    gs = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, gs))


def _norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    if not grads:
        raise ValueError("adaptive_weights: the norm set (adapter parameters) is empty")
    return torch.sqrt(sum((g.detach().float() ** 2).sum() for g in grads))


# --------------------------------------------------------------------------- EMA and distillation


@torch.no_grad()
def ema_update(ema: nn.Module, online: nn.Module, momentum: float) -> None:
    """ema <- momentum * ema + (1 - momentum) * online, parameter by parameter."""
    for e, o in zip(ema.parameters(), online.parameters()):
        e.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
    for e, o in zip(ema.buffers(), online.buffers()):
        e.copy_(o)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance between the current and the frozen previous-stage embeddings."""
    return (1.0 - F.cosine_similarity(student, teacher.detach(), dim=-1)).mean()


# --------------------------------------------------------------------------- the stage trainer


@dataclass
class StageRecord:
    """What one stage did: steps, time, per-step direction weights, per-epoch loss terms, metrics."""

    index: int
    stage: dict
    steps: int = 0
    seconds: float = 0.0
    weights: list[list[float]] = field(default_factory=list)  # per step: [w_ab, w_ba]
    losses: list[dict[str, float]] = field(default_factory=list)  # per epoch: mean of each term
    metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class StageTrainer:
    """Trains one stage: the branch and connecting adapters and the prototype; all else frozen.

    ``trunk`` lists the towers aligned before this stage; if non-empty, the
    stage is a growth stage and the EMA prototype and distillation apply
    (when switched on). ``replay`` holds earlier stages' features of trunk
    towers other than the connecting one, distilled through the prototype.
    """

    def __init__(
        self,
        model: AlignedModel,
        stage: Stage,
        cfg: GrowthConfig,
        device: torch.device,
        trunk: Sequence[str] = (),
        replay: Mapping[str, torch.Tensor] | None = None,
        index: int = 0,
    ):
        missing = [m for m in stage.pair if m not in model.adapters]
        if missing:
            raise KeyError(f"stage {stage.describe()}: the model has no tower for {missing[0]!r} (it has {', '.join(model.modalities)})")
        self.model, self.stage, self.cfg, self.device, self.index = model, stage, cfg, torch.device(device), index
        self.growing = bool(trunk)
        self.use_kd = cfg.kd and cfg.kd_weight > 0 and self.growing
        self.use_ema = cfg.ema and self.growing
        a, b = stage.pair
        self.norm_params = list(model.adapters[a].parameters()) + list(model.adapters[b].parameters())
        self.extra_params = list(model.prototype.parameters())
        self.params = self.norm_params + self.extra_params
        self._requires = {p: p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        for p in self.params:
            p.requires_grad_(True)
        self.teacher = _frozen_copy(model) if self.use_kd else None
        self.ema = _frozen_copy(model.prototype) if self.use_ema else None
        self.replay = {m: x.to(self.device) for m, x in (replay or {}).items()} if self.use_kd else {}
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
        self.gen = torch.Generator().manual_seed(_stage_seed(cfg.seed, index))
        self.record = StageRecord(index=index, stage=asdict(stage))

    def step(self, fa: torch.Tensor, fb: torch.Tensor, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One update on a batch of paired features (connecting, branch); returns the named loss terms."""
        a, b = self.stage.pair
        z = self.model.embed_features({a: fa, b: fb})
        terms = symmetric_info_nce(z[a], z[b], self.cfg.temperature, weights)
        kd = self._distillation(fa, z[a]) if self.use_kd else None
        if self.cfg.adaptive:
            w_ab, w_ba, g_ab, g_ba = adaptive_weights(
                terms["a_from_b_loss"], terms["b_from_a_loss"], self.norm_params, self.extra_params, retain_graph=kd is not None
            )
            grads = combine(w_ab, w_ba, g_ab, g_ba)
        else:
            w_ab = w_ba = torch.tensor(0.5)
            grads = list(_grads((terms["a_from_b_loss"] + terms["b_from_a_loss"]) / 4, self.params, retain_graph=kd is not None))
        if kd is not None:
            for g, gk in zip(grads, _grads(self.cfg.kd_weight * kd, self.params, retain_graph=False)):
                g.add_(gk)
        for p, g in zip(self.params, grads):
            p.grad = g
        self.opt.step()
        for p in self.params:
            p.grad = None
        if self.ema is not None:
            ema_update(self.ema, self.model.prototype, self.cfg.ema_momentum)
        contrastive = (w_ab * terms["a_from_b_loss"] + w_ba * terms["b_from_a_loss"]).detach() / 2
        out = {
            "a_from_b_loss": terms["a_from_b_loss"].detach(),
            "b_from_a_loss": terms["b_from_a_loss"].detach(),
            "contrastive_loss": contrastive,
            "w_ab": w_ab.detach(),
            "w_ba": w_ba.detach(),
        }
        if kd is not None:
            out["kd_loss"] = kd.detach()
        out["total_loss"] = contrastive + (self.cfg.kd_weight * out["kd_loss"] if kd is not None else 0.0)
        self.record.weights.append([float(w_ab), float(w_ba)])
        self.record.steps += 1
        return out

    def _distillation(self, fa: torch.Tensor, za: torch.Tensor) -> torch.Tensor:
        """Keep the connecting tower's embeddings, and replayed earlier towers', where the previous stage put them."""
        a = self.stage.connecting
        with torch.no_grad():
            ta = self.teacher.embed_features({a: fa})[a]
        parts = [distillation_loss(za, ta)]
        if self.replay:
            n = min(len(fa), *(len(x) for x in self.replay.values()))
            for m, x in self.replay.items():
                rows = torch.randint(len(x), (n,), generator=self.gen).to(self.device)
                with torch.no_grad():
                    t = self.teacher.embed_features({m: x[rows]})[m]
                parts.append(distillation_loss(self.model.embed_features({m: x[rows]})[m], t))
        return torch.stack(parts).mean()

    def run(self, data: PairData) -> StageRecord:
        """Train for ``cfg.epochs`` epochs over ``data``; finish the EMA; return the record."""
        a, b = self.stage.pair
        missing = [m for m in (a, b) if m not in data.features]
        if missing:
            raise KeyError(f"stage {self.stage.describe()}: its data has no features of {missing[0]!r} (it has {', '.join(data.modalities)})")
        if len(data) < 2:
            raise ValueError(f"stage {self.stage.describe()}: needs at least 2 pairs, got {len(data)}")
        fa = torch.from_numpy(data.features[a]).to(self.device)
        fb = torch.from_numpy(data.features[b]).to(self.device)
        w = None if data.weights is None else torch.from_numpy(data.weights).to(self.device)
        t0 = time.perf_counter()
        try:
            for epoch in range(self.cfg.epochs):
                order = torch.randperm(len(fa), generator=self.gen).to(self.device)
                sums: dict[str, float] = {}
                steps = 0
                for i in range(0, len(order), self.cfg.batch_size):
                    rows = order[i : i + self.cfg.batch_size]
                    if len(rows) < min(self.cfg.min_batch, len(order)):
                        continue
                    terms = self.step(fa[rows], fb[rows], None if w is None else w[rows])
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    steps += 1
                means = {k: v / steps for k, v in sums.items()}
                self.record.losses.append(means)
                log.debug("stage %d epoch %d/%d %s", self.index + 1, epoch + 1, self.cfg.epochs, _fmt_terms(means))
        finally:
            self.finish()
        self.record.seconds = time.perf_counter() - t0
        return self.record

    def finish(self) -> None:
        """Put the EMA prototype in the model and restore which parameters were trainable."""
        if self.ema is not None:
            self.model.prototype.load_state_dict(self.ema.state_dict())
            self.ema = None
        for p, r in self._requires.items():
            p.requires_grad_(r)
        self.model.eval()


def _frozen_copy(module: nn.Module) -> nn.Module:
    c = copy.deepcopy(module)
    for p in c.parameters():
        p.requires_grad_(False)
    return c.eval()


def _stage_seed(seed: int, index: int) -> int:
    return int(seed) * 1009 + int(index) + 17


def _fmt_terms(terms: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in terms.items())


# --------------------------------------------------------------------------- growing a whole plan


@dataclass
class GrowthResult:
    model: AlignedModel
    plan: GrowthPlan
    records: list[StageRecord]
    resumed_from: int = 0  # stages restored from a checkpoint instead of trained

    @property
    def aligned(self) -> list[str]:
        return self.plan.modalities


ProgressFn = Callable[[StageRecord, AlignedModel], "dict | None"]


def grow(
    model: AlignedModel,
    plan: GrowthPlan,
    data: Mapping[str, PairData],
    cfg: GrowthConfig | None = None,
    device: torch.device | str = "cpu",
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: ProgressFn | None = None,
) -> GrowthResult:
    """Grow ``model``'s aligned space stage by stage (in place) and return the per-stage records.

    ``data`` maps each source named by the plan to its paired features. With
    ``checkpoint_dir`` a checkpoint is written after every stage; with
    ``resume`` an existing one for the same plan and settings is picked up and
    training continues from the next stage. ``progress(record, model)`` is
    called after each stage; a dict it returns is kept as that stage's metrics.
    """
    cfg = cfg or GrowthConfig()
    device = torch.device(device)
    plan.validate({s: set(d.features) for s, d in data.items()})
    missing = [m for m in plan.modalities if m not in model.adapters]
    if missing:
        raise KeyError(f"plan {plan.name!r} aligns {missing[0]!r}, but the model has no tower for it (it has {', '.join(model.modalities)})")
    model.to(device)
    records: list[StageRecord] = []
    start = 0
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckdir is not None and resume:
        latest = latest_checkpoint(ckdir)
        if latest is not None:
            state = _read(latest)
            _check_resumable(state, plan, cfg, latest)
            _load_state(model, state)
            records = [StageRecord(**r) for r in state["records"]]
            start = int(state["stage"])
            log.info("resuming plan %s after stage %d of %d from %s", plan.name, start, len(plan.stages), latest)
    for k in range(start, len(plan.stages)):
        st = plan.stages[k]
        trunk = plan.trunk_before(k)
        replay = _replay(plan, data, k, cfg) if cfg.kd and trunk else None
        trainer = StageTrainer(model, st, cfg, device, trunk=trunk, replay=replay, index=k)
        rec = trainer.run(data[st.source])
        last = rec.losses[-1] if rec.losses else {}
        w = np.array(rec.weights) if rec.weights else np.full((1, 2), np.nan)
        log.info(
            "stage %d/%d %s: %d pairs, %d steps in %.1fs; last epoch %s; mean weights a<-b %.3f b<-a %.3f",
            k + 1, len(plan.stages), st.describe(), len(data[st.source]), rec.steps, rec.seconds, _fmt_terms(last), w[:, 0].mean(), w[:, 1].mean(),
        )
        if progress is not None:
            extra = progress(rec, model)
            if extra:
                rec.metrics.update(_plain(extra))
        records.append(rec)
        if ckdir is not None:
            save_checkpoint(ckdir / f"stage-{k + 1}.pt", model, plan, k + 1, cfg, records)
    return GrowthResult(model=model, plan=plan, records=records, resumed_from=start)


def _replay(plan: GrowthPlan, data: Mapping[str, PairData], k: int, cfg: GrowthConfig) -> dict[str, torch.Tensor]:
    """A seeded sample of earlier stages' features of each trunk tower other than stage k's connecting one."""
    if cfg.replay == 0:
        return {}
    out = {}
    rng = np.random.default_rng(_stage_seed(cfg.seed, k))
    for m in plan.trunk_before(k):
        if m == plan.stages[k].connecting:
            continue
        chunks = [data[s.source].features[m] for s in plan.stages[:k] if m in s.pair]
        x = np.concatenate(chunks)
        if len(x) > cfg.replay:
            x = x[np.sort(rng.choice(len(x), cfg.replay, replace=False))]
        out[m] = torch.from_numpy(np.ascontiguousarray(x))
    return out


# --------------------------------------------------------------------------- checkpoints


def encoder_digest(module: nn.Module) -> str:
    """A short sha256 of a module's state, to tell which encoder made a set of features."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(path: str | Path, model: AlignedModel, plan: GrowthPlan, stage: int, cfg: GrowthConfig, records: Sequence[StageRecord]) -> Path:
    """Everything needed to resume or to serve: plan, stage reached, towers, settings, history (atomic write)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    aligned = plan.trunk_before(stage)
    state = {
        "format": CHECKPOINT_FORMAT,
        "plan": plan.to_dict(),
        "stage": int(stage),
        "stages_total": len(plan.stages),
        "aligned": aligned,
        "model_card": asdict(ModelCard.of(model)),
        "adapters": {m: _cpu_state(model.adapters[m]) for m in model.adapters},
        "prototype": _cpu_state(model.prototype),
        "encoders": {m: {"digest": encoder_digest(e), "family": model.specs[m].family, "state": _cpu_state(e)} for m, e in model.encoders.items()},
        "config": cfg.to_dict(),
        "records": [r.to_dict() for r in records],
        "weight_history": {str(r.index + 1): r.weights for r in records},
        "metrics": {str(r.index + 1): r.metrics for r in records},
    }
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = []
    for p in Path(directory).glob("stage-*.pt"):
        m = re.fullmatch(r"stage-(\d+)\.pt", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def load_checkpoint(path: str | Path, model: AlignedModel | None = None, device: torch.device | str = "cpu") -> tuple[AlignedModel, dict]:
    """The model a checkpoint describes (built from its card, or loaded into ``model``) and its state dict.

    The state holds ``plan`` (a GrowthPlan), ``stage`` (stages done),
    ``aligned``, ``config`` (a GrowthConfig), ``records`` (StageRecords) and
    ``weight_history``.
    """
    state = _read(Path(path))
    if model is None:
        model = ModelCard(**state["model_card"]).build()
        for m, e in state["encoders"].items():
            model.encoders[m].load_state_dict(e["state"])
    _load_state(model, state)
    model.to(device)
    out = dict(state)
    out["plan"] = GrowthPlan.from_dict(state["plan"])
    out["config"] = GrowthConfig.from_dict(state["config"])
    out["records"] = [StageRecord(**r) for r in state["records"]]
    return model, out


def _read(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a growth checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def _check_resumable(state: dict, plan: GrowthPlan, cfg: GrowthConfig, path: Path) -> None:
    if state["plan"] != plan.to_dict():
        raise ValueError(f"{path} is a checkpoint of plan {state['plan'].get('name')!r} with other stages; use another checkpoint_dir or resume=False")
    if state["config"] != cfg.to_dict():
        diff = sorted(k for k, v in cfg.to_dict().items() if state["config"].get(k) != v)
        raise ValueError(f"{path} was written with other growth settings ({', '.join(diff)}); resuming would not reproduce the run")


def _load_state(model: AlignedModel, state: dict) -> None:
    for m, sd in state["adapters"].items():
        if m not in model.adapters:
            raise KeyError(f"checkpoint has an adapter for {m!r}, which the model lacks")
        model.adapters[m].load_state_dict(sd)
    model.prototype.load_state_dict(state["prototype"])
    for m, e in state["encoders"].items():
        if m in model.encoders and encoder_digest(model.encoders[m]) != e["digest"]:
            log.warning("encoder %r differs from the one the checkpoint was grown with (digest %s)", m, e["digest"])


def _plain(obj):
    """Python scalars, lists and dicts only, so a checkpoint loads with weights_only."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.generic, torch.Tensor)):
        return obj.item()
    return obj


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------- use after growth


@torch.no_grad()
def embed(model: AlignedModel, features: Mapping[str, np.ndarray | torch.Tensor], batch_size: int = 4096, device: torch.device | str | None = None) -> dict[str, np.ndarray]:
    """L2-normalised aligned embeddings of each modality's encoder features, in batches."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    out = {}
    for m, x in features.items():
        x = torch.as_tensor(_as_numpy(x))
        chunks = [model.embed_features({m: x[i : i + batch_size].to(device)})[m].cpu() for i in range(0, len(x), batch_size)]
        out[m] = torch.cat(chunks).numpy() if chunks else np.empty((0, model.cfg.embed_dim), np.float32)
    return out


@torch.no_grad()
def recall_at_k(za: np.ndarray | torch.Tensor, zb: np.ndarray | torch.Tensor, ks: Sequence[int] = (1, 5), block: int = 1024) -> dict[str, float]:
    """Share of rows of ``za`` whose own row of ``zb`` ranks within the top k by dot product.

    Row i of each is a true pair. Ties count against the query (rank = number
    of gallery rows scoring strictly higher). Computed in query x gallery
    blocks, so memory stays bounded.
    """
    za, zb = torch.as_tensor(za, dtype=torch.float32), torch.as_tensor(zb, dtype=torch.float32)
    if za.shape != zb.shape:
        raise ValueError(f"recall_at_k needs paired rows of equal shape, got {tuple(za.shape)} and {tuple(zb.shape)}")
    n = len(za)
    if n == 0:
        return {f"R@{k}": float("nan") for k in ks}
    higher = torch.zeros(n, dtype=torch.long)
    for i in range(0, n, block):
        q = za[i : i + block]
        own = q @ zb[i : i + block].T  # the true pair's score comes from the same product as the others'
        t = own.diagonal()
        for j in range(0, n, block):
            s = own if j == i else q @ zb[j : j + block].T
            higher[i : i + block] += (s > t[:, None]).sum(1)
    return {f"R@{k}": float((higher < k).float().mean()) for k in ks}


def retrieval_recall(
    model: AlignedModel,
    feats_a: Mapping[str, np.ndarray],
    feats_b: Mapping[str, np.ndarray],
    ks: Sequence[int] = (1, 5),
    block: int = 1024,
    labels: np.ndarray | None = None,
) -> dict:
    """Cross-modal retrieval between two aligned towers; each argument is ``{modality: features}`` of paired rows.

    Returns recall@k in each direction and their mean (``R@k``). With
    ``labels`` (one per row) also ``label@1``: how often the top match has the
    query's label, the semantic counterpart of recall@1.
    """
    if len(feats_a) != 1 or len(feats_b) != 1:
        raise ValueError("retrieval_recall takes one {modality: features} mapping per side")
    (a, fa), (b, fb) = next(iter(feats_a.items())), next(iter(feats_b.items()))
    if a == b:
        raise ValueError(f"retrieval_recall needs two different towers, got {a!r} twice")
    z = embed(model, {a: fa, b: fb})
    ab = recall_at_k(z[a], z[b], ks, block)
    ba = recall_at_k(z[b], z[a], ks, block)
    out: dict = {f"R@{k}": (ab[f"R@{k}"] + ba[f"R@{k}"]) / 2 for k in ks}
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels))
        hits = [float((y[_top1(z[q], z[g], block)] == y).float().mean()) for q, g in ((a, b), (b, a))]
        out["label@1"] = sum(hits) / 2
        ab["label@1"], ba["label@1"] = hits
    out[f"{a}_to_{b}"] = ab
    out[f"{b}_to_{a}"] = ba
    return out


@torch.no_grad()
def _top1(za: np.ndarray, zb: np.ndarray, block: int) -> torch.Tensor:
    za, zb = torch.as_tensor(za), torch.as_tensor(zb)
    return torch.cat([(za[i : i + block] @ zb.T).argmax(1) for i in range(0, len(za), block)])


def pairs(modalities: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of towers, sorted."""
    return list(itertools.combinations(sorted(modalities), 2))
