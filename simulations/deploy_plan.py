"""What a local deployment will run, decided before anything starts: its timeouts and which node holds what.

Nodes. Every training group of the scenario needs a node of its own: for
``sensor-bind`` the two unlabelled groups bound through the gyroscope
(gyro+lin_acc, gyro+gravity) and the labelled group (lin_acc+gravity). The
validation and test subjects (the head's step is chosen on the first, only the
second is scored) are held out on a node that already holds their modalities,
here the labelled node, as parts of their own (``edgebind-node up
--validation-subjects/--test-subjects``): test windows never leave that node.
So ``sensor-bind`` and ``label-bind`` run on 3 nodes, ``babel-hapt`` on 4, and
fewer is refused with that explanation before anything starts. With more nodes
the held-out parts move to nodes of their own, and from one node per group on
the groups are rescaled exactly as the fleet simulator does
(``node_agent.data.fleet_layout``): node ``p`` holds the windows of the
simulator's partition ``p``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = ".edgebind-deploy-local"  # an out dir with this file is ours to clear
OWNED = ("logs", "nodes", "coordinator", "mosquitto", "campaign", "summary.json", "deployment.json", "pki")

@dataclass
class Timeouts:
    """Seconds every wait may take at most."""

    broker: float = 20.0  # mosquitto listening
    coordinator: float = 180.0  # `edgebind-coordinator up` ready (SuperLink + Registry)
    node: float = 180.0  # a node agent subscribed to its sensor topics
    replay: float = 300.0  # a replay's PUBACKs, per node
    ingest: float = 120.0  # every node stored every frame replayed to it
    campaign: float = 900.0  # the whole campaign
    round: float = 300.0  # one exchange in the campaign (run config round-timeout)
    discovery: float = 120.0  # the campaign waiting for the nodes to connect
    loaded: float = 120.0  # every node agent publishing predictions with the new adapters
    stop: float = 30.0  # SIGTERM -> SIGKILL

    @classmethod
    def for_run(cls, quick: bool) -> Timeouts:
        return cls() if quick else cls(ingest=900.0, campaign=7200.0, round=1800.0, replay=900.0)


@dataclass
class PartPlan:
    """Windows of one fleet partition that a node holds: its own group's, or held-out subjects'."""

    partition_id: int
    group: str
    role: str
    subjects: list[int]
    labels_visible: bool  # replay registers the windows' labels (and subjects) in the node's store


@dataclass
class NodePlan:
    """One node of the deployment: who it is, what it holds, where its files go."""

    node_id: str
    parts: list[PartPlan]  # its own group first, then held-out validation/test subjects
    fleet: int  # the size of the fleet layout the partition ids refer to
    modalities: list[str]
    store: Path
    state_dir: Path
    flwr_home: Path
    log: Path
    replay_log: Path
    window: int = 128
    rate_hz: float = 50.0

    @property
    def group(self) -> str:
        return self.parts[0].group

    @property
    def role(self) -> str:
        return "+".join(p.role for p in self.parts)

    @property
    def subjects(self) -> list[int]:
        return sorted(s for p in self.parts for s in p.subjects)

    def held_out(self, role: str) -> list[int]:
        return [s for p in self.parts[1:] if p.role == role for s in p.subjects]


def plan_nodes(scenario: str, dataset: str, nodes: int, seed: int, out: Path) -> tuple[list[NodePlan], Any]:
    """The deployment's nodes: the fleet simulator's partitions of ``scenario``, held-out parts merged as ``node_layout`` says."""
    from common.data import load_dataset
    from common.data.scenarios import split
    from node_agent.data import node_spec_for

    sc = check_fleet(scenario, nodes)
    fleet, layout = node_layout(sc, nodes)
    ds = load_dataset(dataset)
    sp = split(sc, ds, seed)
    plans = []
    for pids in layout:
        specs = [node_spec_for(sc, ds, seed, p, fleet, split_=sp) for p in pids]
        for spec in specs:
            if len(spec.rows) == 0:
                raise ValueError(f"node {spec.node_id} of {sc.name!r} over {nodes} nodes holds no window; use fewer nodes")
        node_id, mods = specs[0].node_id, list(specs[0].modalities)
        shapes = {(ds.spec(m).window, ds.spec(m).rate_hz) for m in mods}
        if len(shapes) != 1:
            raise ValueError(f"node {node_id}: its modalities differ in window or rate ({shapes}); `edgebind-node up` takes one of each")
        window, rate = shapes.pop()
        root = out / "nodes" / node_id
        parts = [PartPlan(p, s.group, s.role, list(s.subjects), bool(s.labelled.any())) for p, s in zip(pids, specs)]
        plans.append(NodePlan(
            node_id=node_id, parts=parts, fleet=fleet, modalities=mods, store=root / "store.db",
            state_dir=root / "state", flwr_home=root / "flwr-home", log=out / "logs" / f"node-{node_id}.log",
            replay_log=out / "logs" / f"replay-{node_id}.log", window=int(window), rate_hz=float(rate),
        ))  # fmt: skip
    return plans, sc


def node_layout(sc, nodes: int) -> tuple[int, list[list[int]]]:
    """(fleet size, the fleet's partition ids each node holds, its own first).

    From one node per scenario group on, node ``p`` is partition ``p`` of a
    fleet of ``nodes``. With fewer, the fleet has one partition per group and
    the validation and test groups are held out on a node whose own group
    holds the same modalities (a labelled training group first), or share one
    node of their own; ``nodes`` above that minimum gives held-out groups
    nodes of their own again, validation first.
    """
    groups = sc.groups
    if nodes >= len(groups):
        return nodes, [[p] for p in range(nodes)]
    hosts = [[i] for i, g in enumerate(groups) if g.role == "train"]
    for i, g in enumerate(groups):
        if g.role == "train":
            continue
        same = [h for h in hosts if set(groups[h[0]].modalities) == set(g.modalities) and not any(groups[j].role == g.role for j in h)]
        same.sort(key=lambda h: (groups[h[0]].role != "train", not groups[h[0]].labelled))
        if same:
            same[0].append(i)
        else:
            hosts.append([i])
    if nodes < len(hosts):
        raise ValueError(_too_few(sc, nodes, len(hosts)))
    while len(hosts) < nodes:
        host = next(h for h in hosts if len(h) > 1)  # a node holding held-out subjects gives one group a node of its own
        hosts.append([host.pop(1)])
    return len(groups), sorted(hosts)


def _too_few(sc, nodes: int, need: int) -> str:
    groups = ", ".join(f"{g.name} ({g.role}: {'+'.join(sorted(g.modalities))})" for g in sc.groups)
    why = "binding pairs two training groups through " + repr(sc.shared) if sc.binding == "sensor" else "label binding pairs two labelled training groups"
    return (f"--nodes {nodes}: scenario {sc.name!r} needs at least {need} nodes. Its groups are {groups}; every training group "
            f"needs a node of its own ({why}), and the validation and test subjects are held out on a node that holds their "
            f"modalities, or on one of their own: run with --nodes {need} or more")


def check_fleet(scenario: str, nodes: int):
    """The scenario, if ``nodes`` nodes can run a campaign on it; else ValueError saying why not."""
    from common.data.scenarios import Scenario

    sc = Scenario.load(scenario)
    node_layout(sc, nodes)
    return sc


def prepare_out(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()) and not (out / MARKER).exists():
        raise ValueError(f"{out} is not empty and was not made by deploy-local: give an empty or new --out")
    for name in OWNED:  # a previous deployment's stores, broker queue and logs would leak into this one
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    (out / MARKER).write_text("made by edgebind-sim deploy-local; its subfolders are replaced on the next run\n")


