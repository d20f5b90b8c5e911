"""Growth plans (ordered binary stages), their settings, and the paired feature data a stage trains on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from common.config import ConfigError, load_toml, shipped
from common.losses import ContrastiveConfig
from common.samples import SampleSet


STAGE_KINDS = ("grow", "enhance")


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
            if not all(np.isfinite(x[r : r + 4096]).all() for r in range(0, len(x), 4096)):  # in blocks: x may be file-backed
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
