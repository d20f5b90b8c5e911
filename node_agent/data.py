"""What one node holds: its windows per modality, with labels where it has them.

``NodeData`` is the one interface the node's tasks read. ``DatasetNodeData`` is
a slice of a ``WindowDataset`` (a virtual node in a fleet simulation, or a node
replaying a dataset); ``StoreNodeData`` reads the node's own store (windows cut
from ingested sensor frames). ``node_spec_for`` turns a scenario and a Flower
partition id into the slice one virtual node holds, deterministically from the
seed, so that the union of all nodes is exactly the data of the central
experiment on the same scenario and seed.

Window ids name a time span, not a modality: windows of different modalities
that cover the same span have the same id, so the coordinator can rebuild a
node's natural multimodal samples from its uploads.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol, runtime_checkable

import numpy as np

from common.data.dataset import WindowDataset
from common.data.loading import load_dataset
from common.data.scenarios import Scenario, Split, split
from common.modalities import ModalitySpec

QUICK_LABELS = 12  # a subsampled group that is meant to have labels keeps at least this many


@runtime_checkable
class NodeData(Protocol):
    """The windows of one node. Labels are -1 where the node has none."""

    node_id: str

    def modalities(self) -> list[str]: ...

    def spec(self, modality: str) -> ModalitySpec: ...

    def windows(self, modality: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(window ids, (N, T, C) float32 windows, (N,) int64 labels with -1 for unlabelled)."""
        ...

    def subjects(self, modality: str) -> np.ndarray | None:
        """Subject per window (evaluation only), or None where unknown."""
        ...

    def classes(self) -> list[str]:
        """Names of the labels (label i is ``classes()[i]``), or [] where unknown."""
        ...


def _check_modality(node_id: str, held: list[str], modality: str) -> None:
    if modality not in held:
        raise KeyError(f"node {node_id!r} holds no modality {modality!r}; it holds {', '.join(held) or 'none'}")


@dataclass
class DatasetNodeData:
    """Rows of a WindowDataset that one node holds, in some of its modalities."""

    node_id: str
    dataset: WindowDataset
    rows: np.ndarray
    held: list[str]
    labelled: np.ndarray  # bool per row: may this node see the row's label?
    observed: np.ndarray | None = None  # the labels the node sees (-1 where hidden; a scenario's label noise flips some); None = the dataset's

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, dtype=np.int64)
        self.labelled = np.asarray(self.labelled, dtype=bool)
        if self.labelled.shape != self.rows.shape:
            raise ValueError(f"node {self.node_id!r}: {len(self.labelled)} labelled flags for {len(self.rows)} rows")
        if self.observed is not None:
            self.observed = np.asarray(self.observed, dtype=np.int64)
            if self.observed.shape != self.rows.shape or ((self.observed >= 0) != self.labelled).any():
                raise ValueError(f"node {self.node_id!r}: observed labels must give one label per row, exactly where labelled")
        for m in self.held:
            self.dataset.require(m)

    def modalities(self) -> list[str]:
        return sorted(self.held)

    def spec(self, modality: str) -> ModalitySpec:
        _check_modality(self.node_id, self.held, modality)
        return self.dataset.spec(modality)

    def window_ids(self) -> list[str]:
        return [f"{self.dataset.name}:{r}" for r in self.rows.tolist()]

    def labels(self) -> np.ndarray:
        if self.observed is not None:
            return self.observed.copy()
        return np.where(self.labelled, self.dataset.y[self.rows], -1).astype(np.int64)

    def windows(self, modality: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        _check_modality(self.node_id, self.held, modality)
        return self.window_ids(), self.dataset.X[modality][self.rows], self.labels()

    def subjects(self, modality: str) -> np.ndarray | None:
        _check_modality(self.node_id, self.held, modality)
        return self.dataset.subject[self.rows].astype(np.int64)

    def classes(self) -> list[str]:
        return list(self.dataset.label_names)


class StoreNodeData:
    """The windows in a node's own store (``node_agent.store.NodeStore``).

    The store names a window ``<modality>:<sensor>:<run>:<offset>``; the
    leading modality is dropped so that windows of several modalities cut from
    the same span of one sensor share an id.
    """

    def __init__(self, node_id: str, store, rate_hz: float = 50.0, classes: list[str] | None = None):
        self.node_id = node_id
        self.store = store
        self.rate_hz = rate_hz
        self._classes = list(classes or [])

    def classes(self) -> list[str]:
        return list(self._classes)

    def modalities(self) -> list[str]:
        return [m for m in self.store.modalities() if self.store.count_windows(m) > 0]

    def spec(self, modality: str) -> ModalitySpec:
        _check_modality(self.node_id, self.modalities(), modality)
        w = self.store.windows(modality, limit=1)
        return ModalitySpec(modality, channels=int(w.data.shape[2]), rate_hz=self.rate_hz, window=int(w.data.shape[1]))

    def windows(self, modality: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        _check_modality(self.node_id, self.modalities(), modality)
        w = self.store.windows(modality)
        return [span_id(i, modality) for i in w.ids], w.data, w.labels

    def subjects(self, modality: str) -> np.ndarray | None:
        _check_modality(self.node_id, self.modalities(), modality)
        ids = self.store.windows(modality).ids
        subj = self.store.window_subjects(modality, ids)
        return None if (subj < 0).all() else subj


def span_id(window_id: str, modality: str) -> str:
    """A store window id without its leading ``<modality>:``."""
    prefix = f"{modality}:"
    return window_id[len(prefix) :] if window_id.startswith(prefix) else window_id


# --- parts: a node's own windows and held-out subjects --------------------------------------


@dataclass
class NodePart:
    """Windows of one scenario group on a node: its own (``train`` and the like), or held-out subjects."""

    group: str
    role: str
    data: NodeData


class SubjectSubset:
    """The windows of a NodeData whose subject is (``keep=True``) or is not (``keep=False``) in ``subjects``."""

    def __init__(self, base: NodeData, subjects: set[int], keep: bool):
        self.base, self.node_id, self.chosen, self.keep = base, base.node_id, set(subjects), keep

    def _mask(self, modality: str, subj: np.ndarray | None = None) -> np.ndarray:
        subj = self.base.subjects(modality) if subj is None else subj
        if subj is None:
            raise ValueError(f"node {self.node_id!r}: its {modality!r} windows carry no subject, so subjects {sorted(self.chosen)} cannot be held out")
        return np.isin(subj, list(self.chosen)) == self.keep

    def modalities(self) -> list[str]:
        return self.base.modalities()

    def spec(self, modality: str) -> ModalitySpec:
        return self.base.spec(modality)

    def windows(self, modality: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        ids, x, y = self.base.windows(modality)
        sel = np.flatnonzero(self._mask(modality))
        return [ids[i] for i in sel], x[sel], y[sel]

    def subjects(self, modality: str) -> np.ndarray | None:
        subj = self.base.subjects(modality)
        return None if subj is None else subj[self._mask(modality, subj)]

    def classes(self) -> list[str]:
        return self.base.classes()


def node_parts(data: NodeData, group: str, role: str, holdouts: dict[str, list[int]] | None = None) -> list[NodePart]:
    """The node's own part (every window of no held-out subject) and one part per held-out role.

    ``holdouts`` maps a role (``validation``, ``test``) to its subjects; that
    part's group is named after the role, as in a scenario. The node's own
    part comes first; it may be empty (a node holding only held-out subjects).
    """
    holdouts = {r: sorted(set(s)) for r, s in (holdouts or {}).items() if s}
    if not holdouts:
        return [NodePart(group, role, data)]
    for r in holdouts:
        if r not in ("validation", "test"):
            raise ValueError(f"node {data.node_id!r}: subjects can be held out for validation or test, not {r!r}")
        if r == role:
            raise ValueError(f"node {data.node_id!r} is itself a {role} node; it cannot also hold out {role} subjects")
    seen: dict[int, str] = {}
    for r, subs in holdouts.items():
        for s in subs:
            if s in seen:
                raise ValueError(f"node {data.node_id!r}: subject {s} is held out for both {seen[s]} and {r}")
            seen[s] = r
    parts = [NodePart(group, role, SubjectSubset(data, set(seen), keep=False))]
    return parts + [NodePart(r, r, SubjectSubset(data, set(subs), keep=True)) for r, subs in holdouts.items()]


# --- a fleet of virtual nodes ------------------------------------------------------------


@dataclass
class NodeSpec:
    """One virtual node of a scenario: its group, role, subjects, modalities and rows."""

    node_id: str
    partition_id: int
    group: str
    role: str
    subjects: list[int]
    modalities: list[str]
    rows: np.ndarray
    labelled: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))  # as the node sees them: -1 hidden, some flipped by label noise
    delay: float = 0.0  # a straggler's delay before each reply, seconds (0: answers at once)
    lost: list[str] = field(default_factory=list)  # modalities its group holds that this node lacks (missing_modality)

    @property
    def n_labelled(self) -> int:
        return int(self.labelled.sum())

    def data(self, ds: WindowDataset) -> DatasetNodeData:
        return DatasetNodeData(self.node_id, ds, self.rows, list(self.modalities), self.labelled, self.labels)


def group_node_counts(scenario: Scenario, num_partitions: int | None = None) -> dict[str, int]:
    """Nodes per group: the scenario's counts, or rescaled to ``num_partitions`` nodes in all.

    Rescaling keeps the groups' proportions (largest remainder) and at least
    one node per group.
    """
    counts = {g.name: g.nodes for g in scenario.groups}
    total = sum(counts.values())
    if num_partitions is None or num_partitions == total:
        return counts
    if num_partitions < len(counts):
        raise ValueError(
            f"scenario {scenario.name!r} has {len(counts)} groups, so it needs at least {len(counts)} nodes, got {num_partitions}"
        )
    raw = np.array([c * num_partitions / total for c in counts.values()])
    alloc = np.maximum(np.floor(raw).astype(int), 1)
    while alloc.sum() > num_partitions:
        alloc[np.argmax(alloc)] -= 1
    for i in np.argsort(-(raw - np.floor(raw)), kind="stable"):
        if alloc.sum() >= num_partitions:
            break
        alloc[i] += 1
    return dict(zip(counts, alloc.tolist()))


def fleet_layout(scenario: Scenario, num_partitions: int | None = None) -> list[tuple[str, int, int]]:
    """(group, index in group, nodes in group) for every partition id, groups in scenario order."""
    out = []
    for name, n in group_node_counts(scenario, num_partitions).items():
        out += [(name, i, n) for i in range(n)]
    return out


def node_id_of(group: str, index: int) -> str:
    return f"{group}-{index:03d}"


def _subsample(rows: np.ndarray, labelled: np.ndarray, cap: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if cap is None or len(rows) <= cap:
        return rows, labelled
    keep = np.sort(rng.choice(len(rows), size=cap, replace=False))
    return rows[keep], labelled[keep]


def group_rows(sp: Split, seed: int, max_windows_per_group: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each group's (rows, labelled) after the optional per-group cap.

    The same draws as the central experiments (``simulations.experiments``),
    so a fleet and a central run on one scenario and seed see the same windows.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, part in sp.parts.items():
        rows, lab = _subsample(part.rows, part.labelled, max_windows_per_group, rng)
        if part.group.role == "train" and part.group.labelled > 0 and not lab.any():
            lab = lab.copy()
            lab[: min(len(lab), QUICK_LABELS)] = True
        out[name] = (rows, lab)
    return out


def _holders(n_subjects: int, n_nodes: int, per_node: int | None) -> list[list[int]]:
    """Subject indices held by each node: every subject by at least one node."""
    if per_node is None:
        if n_nodes <= n_subjects:
            return [list(c) for c in np.array_split(np.arange(n_subjects), n_nodes)]
        return [[j % n_subjects] for j in range(n_nodes)]
    if per_node < 1:
        raise ValueError(f"subjects_per_node must be >= 1, got {per_node}")
    k = min(per_node, n_subjects)
    held = [sorted({(j * k + t) % n_subjects for t in range(k)}) for j in range(n_nodes)]
    missed = set(range(n_subjects)) - {s for h in held for s in h}
    for s in sorted(missed):  # fewer nodes x subjects than subjects: spread the rest
        held[s % n_nodes].append(s)
    return held


def node_spec_for(
    scenario: Scenario,
    ds: WindowDataset,
    seed: int,
    partition_id: int,
    num_partitions: int | None = None,
    max_windows_per_group: int | None = None,
    split_: Split | None = None,
) -> NodeSpec:
    """The node behind Flower partition ``partition_id`` of a fleet of ``num_partitions`` nodes.

    Each group's subjects are spread over its nodes (one or several subjects
    per node, ``subjects_per_node``); where several nodes hold one subject,
    that subject's windows are cut into contiguous spans, one per node (the
    same person recorded at different times). Nothing is held twice.
    """
    layout = fleet_layout(scenario, num_partitions)
    if not 0 <= partition_id < len(layout):
        raise ValueError(f"partition id {partition_id} is outside the fleet of {len(layout)} nodes")
    name, index, n_nodes = layout[partition_id]
    sp = split_ if split_ is not None else split(scenario, ds, seed)
    rows, lab = group_rows(sp, seed, max_windows_per_group)[name]
    g = sp.parts[name].group
    gi = [x.name for x in scenario.groups].index(name)
    if g.label_skew > 0:
        take = label_skew_rows(ds.y[rows], n_nodes, g.label_skew, seed * 1000 + gi)[index]
    else:
        take = _subject_span_rows(ds.subject[rows], n_nodes, index, g.subjects_per_node, np.random.default_rng([seed, gi]))
    held = sorted(g.modalities)
    if g.missing_modality > 0:
        held = kept_modalities(held, g.missing_modality, np.random.default_rng([seed, gi, index, 0x4D]))
    labels = np.where(lab[take], ds.y[rows[take]], -1).astype(np.int64)
    if g.label_noise > 0:
        labels = flip_labels(labels, g.label_noise, ds.n_classes, np.random.default_rng([seed, gi, index, 0x4E]))
    delay = 0.0
    if g.stragglers > 0:
        r = np.random.default_rng([seed, gi, index, 0x53])
        delay = float(g.straggler_delay * r.uniform(0.5, 1.5)) if r.random() < g.stragglers else 0.0
    return NodeSpec(
        node_id=node_id_of(name, index),
        partition_id=partition_id,
        group=name,
        role=g.role,
        subjects=sorted(int(x) for x in np.unique(ds.subject[rows[take]])),
        modalities=held,
        rows=rows[take],
        labelled=lab[take],
        labels=labels,
        delay=delay,
        lost=sorted(set(g.modalities) - set(held)),
    )


def _subject_span_rows(subject: np.ndarray, n_nodes: int, index: int, per_node: int | None, rng: np.random.Generator) -> np.ndarray:
    """The positions (into a group's rows) node ``index`` holds when subjects are spread over the nodes in contiguous spans."""
    subjects = sorted(int(s) for s in np.unique(subject))
    shuffled = [subjects[i] for i in rng.permutation(len(subjects))]
    holders = _holders(len(shuffled), n_nodes, per_node)
    mine = []
    for si, subj in enumerate(shuffled):
        nodes_of = [j for j, h in enumerate(holders) if si in h]
        if index in nodes_of:
            chunk = np.array_split(np.flatnonzero(subject == subj), len(nodes_of))[nodes_of.index(index)]
            if len(chunk):
                mine.append(chunk)
    return np.sort(np.concatenate(mine)) if mine else np.zeros(0, dtype=np.int64)


def label_skew_rows(labels: np.ndarray, n_nodes: int, alpha: float, seed: int) -> list[np.ndarray]:
    """A group's windows spread over its nodes by a Dirichlet over labels (``flwr-datasets``' ``DirichletPartitioner``).

    Smaller ``alpha`` gives each node fewer classes; every node gets at least
    ``SKEW_MIN_WINDOWS`` windows (fewer windows than nodes is refused). Returns each node's
    positions into ``labels``, sorted.
    """
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    if len(labels) < n_nodes:
        raise ValueError(f"label skew: {len(labels)} windows cannot be spread over {n_nodes} nodes")
    key = (labels.tobytes(), n_nodes, float(alpha), seed)
    if key not in _SKEW_CACHE:
        data = Dataset.from_dict({"label": labels.astype(np.int64), "pos": np.arange(len(labels))})
        part = DirichletPartitioner(num_partitions=n_nodes, partition_by="label", alpha=float(alpha),
                                    min_partition_size=min(SKEW_MIN_WINDOWS, len(labels) // n_nodes), self_balancing=False, seed=seed)  # fmt: skip
        part.dataset = data
        try:
            with warnings.catch_warnings():  # it warns on every redraw; a draw that never fits raises below
                warnings.simplefilter("ignore", UserWarning)
                _SKEW_CACHE[key] = [np.sort(np.asarray(part.load_partition(i)["pos"], dtype=np.int64)) for i in range(n_nodes)]
        except ValueError as e:
            raise ValueError(f"label skew with alpha {alpha} over {n_nodes} nodes, at least {SKEW_MIN_WINDOWS} windows each: {e}") from e
        while len(_SKEW_CACHE) > 8:
            _SKEW_CACHE.pop(next(iter(_SKEW_CACHE)))
    return _SKEW_CACHE[key]


_SKEW_CACHE: dict[tuple, list[np.ndarray]] = {}
SKEW_MIN_WINDOWS = 2  # every node of a label-skewed group holds at least this many windows


def kept_modalities(held: list[str], p: float, rng: np.random.Generator) -> list[str]:
    """Each modality lost with chance ``p``, independently; when all would be lost, one drawn at random stays."""
    kept = [m for m in held if rng.random() >= p]
    return kept or [held[int(rng.integers(len(held)))]]


def flip_labels(labels: np.ndarray, share: float, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``share`` of the visible labels (>= 0) flipped to another class drawn uniformly (symmetric label noise)."""
    out = labels.copy()
    visible = np.flatnonzero(out >= 0)
    n = int(round(share * len(visible)))
    if n == 0 or n_classes < 2:
        return out
    chosen = rng.choice(visible, size=n, replace=False)
    out[chosen] = (out[chosen] + rng.integers(1, n_classes, size=n)) % n_classes
    return out


def dropouts(scenario: Scenario, num_partitions: int | None, dropout: float, seed: int, rounds: int) -> dict[int, int]:
    """Partition id -> the pretraining round (1-based) in which that node vanishes.

    ``round(dropout * nodes)`` nodes are drawn from training groups with more
    than one node, never the last node of a group: a campaign must lose
    nodes, not whole groups (without its only test node it could not score).
    """
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    layout = fleet_layout(scenario, num_partitions)
    want = int(round(dropout * len(layout)))
    if want == 0:
        return {}
    roles = {g.name: g.role for g in scenario.groups}
    rng = np.random.default_rng([seed, 0xD0])
    candidates = [p for p, (g, _, n) in enumerate(layout) if roles[g] == "train" and n > 1]
    left = {g: n for g, _, n in layout}
    chosen: dict[int, int] = {}
    for p in rng.permutation(candidates).tolist():
        if len(chosen) == want:
            break
        g = layout[p][0]
        if left[g] > 1:
            left[g] -= 1
            chosen[p] = 1 + int(rng.integers(max(rounds, 1)))
    return dict(sorted(chosen.items()))


@lru_cache(maxsize=4)
def cached_dataset(name: str) -> WindowDataset:
    """One copy of a dataset per process (a simulation runs many virtual nodes in few processes)."""
    return load_dataset(name)


@lru_cache(maxsize=8)
def cached_split(dataset: str, scenario: str, seed: int) -> tuple[Scenario, Split]:
    sc = Scenario.load(scenario)
    return sc, split(sc, cached_dataset(dataset), seed)


def virtual_node(dataset: str, scenario: str, seed: int, partition_id: int, num_partitions: int, max_windows_per_group: int | None = None) -> tuple[NodeSpec, DatasetNodeData]:
    """The spec and data of one virtual node, with the dataset and split cached per process."""
    ds = cached_dataset(dataset)
    sc, sp = cached_split(dataset, scenario, seed)
    spec = node_spec_for(sc, ds, seed, partition_id, num_partitions, max_windows_per_group, split_=sp)
    return spec, spec.data(ds)


__all__ = [
    "DatasetNodeData",
    "NodeData",
    "NodePart",
    "NodeSpec",
    "SubjectSubset",
    "StoreNodeData",
    "dropouts",
    "fleet_layout",
    "group_node_counts",
    "group_rows",
    "node_parts",
    "node_spec_for",
    "virtual_node",
]
