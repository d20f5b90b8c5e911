"""Scenarios: which node groups hold which modalities, of which subjects, with how many labels.

A scenario names modalities and gives subjects as shares, so the same file runs
on any dataset that has those modalities. Subjects are drawn from a seed, and
no subject is ever in two groups (validation and test included).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.config import ConfigError, load_toml, shipped, typed
from common.data.dataset import WindowDataset

ROLES = ("train", "validation", "test")


@dataclass
class GroupSpec:
    """One kind of node: its modalities, its share of subjects and of labels."""

    name: str
    modalities: list[str]
    share: float = 0.0
    subjects: list[int] | None = None
    labelled: float = 0.0  # a fraction of its windows (<= 1) or a count of windows (> 1)
    role: str = "train"
    nodes: int = 1
    subjects_per_node: int | None = None
    # settings that federated benchmarks vary (a fleet's training groups; see node_agent.data.node_spec_for)
    label_skew: float = 0.0  # Dirichlet alpha over labels: the group's windows spread over its nodes by label (0 = by subject)
    missing_modality: float = 0.0  # chance that a node of the group lacks each of its modalities (never all of them)
    label_noise: float = 0.0  # share of the group's visible labels flipped to another class, drawn uniformly
    stragglers: float = 0.0  # share of the group's nodes that answer every exchange late
    straggler_delay: float = 0.0  # seconds: each straggler's delay is drawn from [0.5, 1.5] x this

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"group {self.name!r}: role must be one of {ROLES}, got {self.role!r}")
        if not self.modalities:
            raise ValueError(f"group {self.name!r} holds no modality")
        if self.subjects is None and not (0 < self.share <= 1):
            raise ValueError(f"group {self.name!r}: share must be in (0, 1], got {self.share}")
        if self.labelled < 0:
            raise ValueError(f"group {self.name!r}: labelled must be >= 0, got {self.labelled}")
        if self.nodes < 1:
            raise ValueError(f"group {self.name!r}: nodes must be >= 1, got {self.nodes}")
        if self.label_skew < 0:
            raise ValueError(f"group {self.name!r}: label_skew (a Dirichlet alpha) must be > 0, or 0 for none, got {self.label_skew}")
        for key in ("missing_modality", "label_noise", "stragglers"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"group {self.name!r}: {key} must be in [0, 1), got {getattr(self, key)}")
        if self.straggler_delay < 0 or (self.stragglers > 0) != (self.straggler_delay > 0):
            raise ValueError(f"group {self.name!r}: stragglers and straggler_delay go together (a share and a delay > 0), got {self.stragglers}, {self.straggler_delay}")
        if self.role != "train" and self.fleet_settings():
            raise ValueError(f"group {self.name!r}: {', '.join(self.fleet_settings())} apply to training groups, not to {self.role} (scoring needs clean, complete data)")

    def fleet_settings(self) -> list[str]:
        """The federated-benchmark settings this group uses (they shape a fleet's nodes; central experiments refuse them)."""
        return [k for k in ("label_skew", "missing_modality", "label_noise", "stragglers") if getattr(self, k) > 0]


@dataclass
class Scenario:
    name: str
    groups: list[GroupSpec]
    shared: str | None = None
    description: str = ""
    binding: str = "sensor"  # "sensor" (through `shared`) or "label"
    dropout: float = 0.0  # share of nodes that vanish mid-round in a fleet run
    objective: str = ""  # the encoders' self-supervised objective chosen on this scenario's validation ("": the settings' own)

    def __post_init__(self) -> None:
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"scenario {self.name!r}: group names repeat: {names}")
        for role in ("validation", "test"):
            if not any(g.role == role for g in self.groups):
                raise ValueError(f"scenario {self.name!r} has no {role} group")
        if self.binding not in ("sensor", "label"):
            raise ValueError(f"scenario {self.name!r}: binding must be 'sensor' or 'label'")
        if self.binding == "sensor" and not self.shared:
            raise ValueError(f"scenario {self.name!r}: sensor binding needs a shared modality")
        total = sum(g.share for g in self.groups if g.subjects is None)
        if total > 1 + 1e-9:
            raise ValueError(f"scenario {self.name!r}: group shares add up to {total:.3f} > 1, so groups would overlap")
        explicit: dict[int, str] = {}
        for g in self.groups:
            for s in g.subjects or []:
                if s in explicit:
                    raise ValueError(f"scenario {self.name!r}: subject {s} is in both {explicit[s]!r} and {g.name!r}")
                explicit[s] = g.name
        if not 0 <= self.dropout < 1:
            raise ValueError(f"scenario {self.name!r}: dropout must be in [0, 1), got {self.dropout}")
        if self.objective:
            from common.pretrain import OBJECTIVES

            if self.objective not in OBJECTIVES:
                raise ValueError(f"scenario {self.name!r}: objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")

    @property
    def modalities(self) -> list[str]:
        return sorted({m for g in self.groups for m in g.modalities})

    def require_central(self) -> None:
        """Refuse fleet-only settings: a central experiment pools each group's windows, so it cannot honour them."""
        used = {g.name: g.fleet_settings() for g in self.groups if g.fleet_settings()}
        if used:
            name, keys = next(iter(used.items()))
            raise ValueError(f"scenario {self.name!r}, group {name!r}: {', '.join(keys)} shape a fleet's nodes; run it with `edgebind-sim run`, not a central experiment")

    def group(self, name: str) -> GroupSpec:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"scenario {self.name!r} has no group {name!r}")

    def check_dataset(self, ds: WindowDataset) -> None:
        """Refuse, before any training, a scenario that the dataset cannot serve."""
        for g in self.groups:
            missing = [m for m in g.modalities if m not in ds.X]
            if missing:
                raise ValueError(
                    f"scenario {self.name!r}, group {g.name!r} names modality {missing[0]!r}, "
                    f"which dataset {ds.name!r} does not have (it has {', '.join(ds.modalities)})"
                )
        if self.shared and self.shared not in ds.X:
            raise ValueError(f"scenario {self.name!r}: shared modality {self.shared!r} is not in dataset {ds.name!r}")
        known = set(ds.subjects.tolist())
        for g in self.groups:
            unknown = sorted(set(g.subjects or []) - known)
            if unknown:
                raise ValueError(f"scenario {self.name!r}, group {g.name!r}: subjects {unknown} are not in {ds.name!r}")
        n_share_groups = sum(1 for g in self.groups if g.subjects is None)
        free = len(known) - sum(len(g.subjects or []) for g in self.groups)
        if free < n_share_groups:
            raise ValueError(
                f"scenario {self.name!r} needs at least one subject per group, but {ds.name!r} has only {free} to share among {n_share_groups} groups"
            )

    @classmethod
    def from_dict(cls, d: dict, name: str = "scenario") -> Scenario:
        """From a table (a scenario TOML): every key and type checked, errors name the scenario, the group and the key."""
        d = dict(d)
        raw_groups = d.pop("group", [])
        if not isinstance(raw_groups, list):
            raise ConfigError(f"scenario {name!r}: 'group' must be an array of tables ([[group]]), got {raw_groups!r}")
        groups = [GroupSpec(**typed(g, GroupSpec, f"scenario {name!r}, group {k + 1}")) for k, g in enumerate(raw_groups)]
        for role in ("validation", "test"):
            if role in d:
                groups.append(GroupSpec(name=role, role=role, **typed(d.pop(role), GroupSpec, f"scenario {name!r}, [{role}]", exclude=("name", "role"))))
        d.setdefault("name", name)
        d = typed(d, cls, f"scenario {name!r}", exclude=("groups",))
        return cls(groups=groups, **d)

    @classmethod
    def load(cls, name_or_path: str | Path) -> Scenario:
        """A shipped scenario by name (``sensor-bind``) or a TOML file by path."""
        table, name = load_toml("scenarios", "scenario", name_or_path)
        return cls.from_dict(table, name=name)


def shipped_scenarios() -> list[str]:
    return shipped("scenarios")


@dataclass
class Part:
    """The windows one group holds after a split."""

    group: GroupSpec
    rows: np.ndarray
    labelled: np.ndarray  # bool per row: may the learner see this row's label?
    subjects: list[int] = field(default_factory=list)

    @property
    def modalities(self) -> list[str]:
        return self.group.modalities

    def data(self, ds: WindowDataset) -> dict[str, np.ndarray]:
        return {m: ds.X[m][self.rows] for m in self.group.modalities}


@dataclass
class Split:
    scenario: Scenario
    seed: int
    parts: dict[str, Part]

    def by_role(self, role: str) -> list[Part]:
        return [p for p in self.parts.values() if p.group.role == role]

    def subjects_of(self, name: str) -> list[int]:
        return self.parts[name].subjects


def split(scenario: Scenario, ds: WindowDataset, seed: int) -> Split:
    """Assign subjects to groups (disjoint, seeded), then pick labelled windows."""
    scenario.check_dataset(ds)
    rng = np.random.default_rng(seed)
    taken = {s for g in scenario.groups for s in (g.subjects or [])}
    free = [s for s in ds.subjects.tolist() if s not in taken]
    free = list(rng.permutation(free))
    share_groups = [g for g in scenario.groups if g.subjects is None]
    # largest-remainder allocation, at least one subject each
    raw = np.array([g.share for g in share_groups]) * len(free)
    counts = np.maximum(np.floor(raw).astype(int), 1)
    while counts.sum() > len(free):
        counts[np.argmax(counts)] -= 1
    remainder = raw - np.floor(raw)
    total_share = sum(g.share for g in share_groups)
    budget = int(round(total_share * len(free)))
    for i in np.argsort(-remainder):
        if counts.sum() >= min(budget, len(free)):
            break
        counts[i] += 1
    assigned: dict[str, list[int]] = {}
    pos = 0
    for g, c in zip(share_groups, counts):
        assigned[g.name] = sorted(int(s) for s in free[pos : pos + c])
        pos += c
    parts = {}
    for g in scenario.groups:
        subs = sorted(g.subjects) if g.subjects is not None else assigned[g.name]
        rows = np.flatnonzero(np.isin(ds.subject, subs))
        labelled = np.zeros(len(rows), dtype=bool)
        if g.role != "train":
            labelled[:] = True  # validation and test labels are for scoring only
        elif g.labelled > 0:
            n_lab = int(round(g.labelled * len(rows))) if g.labelled <= 1 else int(min(g.labelled, len(rows)))
            labelled[rng.choice(len(rows), size=n_lab, replace=False)] = True
        parts[g.name] = Part(group=g, rows=rows, labelled=labelled, subjects=subs)
    return Split(scenario=scenario, seed=seed, parts=parts)
