"""The state of one campaign, declared in one place: everything its phases read and set.

A phase (``coordinator.campaign``) is a plain function over a ``CampaignState``.
The dataclass has slots, so a phase that sets anything not declared here fails
at once (``tests/test_layers.py`` also checks it statically); each learned
field names the phase that sets it.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import Message

from common.config import CampaignConfig
from common.data.scenarios import Scenario
from common.device import pick_device
from common.files import atomic_write
from common.modalities import ModalitySpec
from common.samples import SampleSet
from common.towers import AlignedModel, FusionHead, TowerConfig
from coordinator import phases
from coordinator.keys import rotations_for
from coordinator.phases import NodeInfo
from coordinator.store import CoordinatorStore

log = logging.getLogger("edgebind.campaign")

Send = Callable[..., dict[int, Message]]  # (phase, message type, {flower id: content}, round) -> the replies that carry content


@dataclass(slots=True)
class CampaignState:
    """The books of one campaign (nodes, who went missing, per-phase figures) and what its phases learn."""

    cfg: CampaignConfig
    campaign_id: str
    results_path: Path
    scenario: Scenario  # read and checked before any node is asked for anything
    device: torch.device
    key: bytes  # Ed25519 private key the bundles are signed with (``phases.signing_key``)
    key_id: str
    key_source: str
    send: Send  # the exchange with the nodes: ``server_app.send`` over Flower's grid
    node_ids: Callable[[], list[int]]  # the Flower ids of the nodes connected now
    grid: Any = None  # Flower's grid: the keys the SuperLink authenticated each node with (``identity.identity_check``)
    rotations: list = field(default_factory=list)  # how nodes that trust an earlier signing key reach this one (``keys.rotations_for``)
    tower: TowerConfig = field(default_factory=TowerConfig)
    results: dict = field(default_factory=dict)  # what goes to results-path
    # the books
    nodes: dict[int, NodeInfo] = field(default_factory=dict)  # flower id -> manifest
    missing: dict[str, dict] = field(default_factory=dict)  # node id -> phase, round, reason
    rejoined: list[dict] = field(default_factory=list)  # nodes that went missing and came back: what they missed, where they came back
    refused: list[dict] = field(default_factory=list)  # nodes that answered with an error record (alive, but could not do it)
    bad_replies: list[dict] = field(default_factory=list)  # replies refused on arrival (malformed, non-finite, implausible): that node's part in that step only
    node_compute: float = 0.0  # seconds of learning work the nodes report in the current phase
    done_before: dict[str, dict] = field(default_factory=dict)  # run, with resume: the phases earlier runs of this campaign finished (their report)
    store: CoordinatorStore | None = None  # run: opened when the campaign starts
    # what the phases learn, each set by the phase named (so a phase reads nothing undeclared)
    flower_ids: list[int] = field(default_factory=list)  # discover
    specs: dict[str, ModalitySpec] = field(default_factory=dict)  # manifest
    classes: list[str] = field(default_factory=list)  # manifest
    global_states: dict[str, dict[str, dict[str, torch.Tensor]]] = field(default_factory=dict)  # pretrain: modality -> encoder/head state
    encoder_versions: dict[str, str] = field(default_factory=dict)  # collect (what the nodes encoded with), push (fine-tuned encoders)
    binding: str = ""  # bind: "sensor" or "label"
    groups: dict[str, phases.GroupData] = field(default_factory=dict)  # bind
    bound: phases.BoundSamples | None = None  # bind
    natural: SampleSet | None = None  # grow: every natural training sample
    model: AlignedModel | None = None  # grow, then head and finetune
    n_classes: int = 0  # head
    fusion_head: FusionHead | None = None  # head, then finetune
    finetuned: bool = False  # finetune: a fine-tuned round beat the head on features on validation

    @classmethod
    def start(cls, cfg: CampaignConfig, run_id: int, send: Send, node_ids: Callable[[], list[int]], grid: Any = None) -> CampaignState:
        """A new campaign's state: its id, results path, device and signing key; the scenario and growth plan checked."""
        campaign_id = cfg.campaign_id or f"campaign-{run_id}"
        device = pick_device(cfg.device or None)
        scenario = Scenario.load(cfg.scenario)
        cfg.pretrain_objective = cfg.objective_for(scenario.objective)  # recorded resolved, so a resume runs the same objective
        config = {k: v for k, v in cfg.to_run_config().items() if k not in ("signing-key", "resume")}
        key, key_id, key_source = phases.signing_key(cfg.signing_key, cfg.signing_key_id, os.environ, cfg.signing_key_file)
        if cfg.growth_plan:
            from common.growth import GrowthPlan

            GrowthPlan.from_toml(cfg.growth_plan)
        return cls(
            cfg=cfg, campaign_id=campaign_id, results_path=Path(cfg.results_path or Path("edgebind-results") / campaign_id / "results.json"),
            scenario=scenario, device=device, key=key, key_id=key_id, key_source=key_source, send=send,
            node_ids=node_ids, results={"campaign_id": campaign_id, "config": config, "phases": {}}, grid=grid,
            rotations=rotations_for(cfg.signing_key_file, os.environ, key),
        )  # fmt: skip

    @property
    def checkpoints(self) -> Path:
        """Pretraining rounds and growth stages, for resume."""
        return self.results_path.parent / "checkpoints"

    def live(self, role: str | None = None) -> dict[int, NodeInfo]:
        """The nodes not missing (holding a part of ``role``, if given), by Flower id."""
        return {f: n for f, n in self.nodes.items() if n.node_id not in self.missing and (role is None or role in n.roles)}

    def who(self, f: int) -> str:
        return self.nodes[f].node_id if f in self.nodes else f"flower:{f}"

    def bad_reply(self, f: int, phase: str, rnd: int, error: Exception) -> None:
        """Leave one node's reply out of one step, with the reason on record; the campaign goes on."""
        reason = f"{type(error).__name__}: {error}"
        self.bad_replies.append({"node": self.who(f), "phase": phase, "round": rnd, "reason": reason})
        log.warning("[%s] round %d: left out the reply of node %s: %s", phase, rnd, self.who(f), reason)

    def tower_config(self) -> dict:
        """The tower settings as a message's ``tower.*`` config entries."""
        return {f"tower.{k.replace('_', '-')}": int(v) for k, v in self.tower.to_dict().items()}

    def checkpoint(self, name: str, obj: Any) -> None:
        """Write a checkpoint atomically: a coordinator killed while writing leaves the previous one whole."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(obj, buf)
        atomic_write(self.checkpoints / name, buf.getvalue())

    def report(self, phase: str = "") -> dict:
        """What ``edgebind-coordinator status`` shows of this campaign."""
        r = self.results
        return {
            "state": r.get("state") or f"{phase} done",
            # phases an earlier run finished stay on record, so a resumed run that dies again still knows them
            "phases": {**self.done_before, **{p: {k: f[k] for k in ("seconds", "node_compute_seconds") if k in f} for p, f in r["phases"].items()}},
            "nodes": {nid: {k: n[k] for k in ("group", "role", "modalities") if k in n} for nid, n in r.get("nodes", {}).items()},
            "missing": self.missing,
            "rejoined": self.rejoined,
            "refused": self.refused,
            "accuracy": {sub: {k: m[k] for k in ("accuracy", "macro_f1", "n", "nodes") if k in m} for sub, m in r.get("accuracy", {}).items()},
        }

