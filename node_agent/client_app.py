"""The node's Flower ClientApp: thin handlers over ``node_agent.tasks``.

Messages (``message_type`` -> content in, content out):

- ``query.manifest``: nothing (or ``config`` with ``rejoin``: the coordinator
  asks a missing node whether it is back, ``coordinator.campaign.rejoin``) -> ``manifest`` (``node-manifest``: a serialised
  ``NodeManifest``: node id, group, role, class names, each modality's spec and
  counts, and each part the node holds, its own first) and ``adapter-versions``
  (the adapter version it holds per modality: numbering resumes above them after
  the coordinator's store was lost, ``coordinator.recovery``)
- ``train.pretrain``: ``config`` (round, epochs, batch-size, lr, seed, tower.*) and
  ``encoder.<m>`` / ``head.<m>`` arrays -> the trained arrays and ``metrics``
  (``n.<m>``, ``loss.<m>``); trained on the node's ``train`` part only
- ``query.collect``: ``config`` (campaign-id, dtype, upload-roles, tower.*, signing-key-id,
  and, for a key made for the campaign, signing-public-key, which only simulated nodes take) and ``encoder.<m>`` -> ``upload`` (``batches``:
  serialised EmbeddingBatches of the parts whose role is in upload-roles, each
  naming its group) and ``versions`` (encoder version per modality)
- ``train.finetune``: ``config`` (round, seed, tower.*, and the local settings of ``LocalFinetuneConfig.to_wire``: steps, batch-size, head-lr, tower-lr, encoder-lr, proximal-mu) and
  ``arrays`` (the whole model of the node's modalities, ``model.*``/``head.*``) -> ``arrays``
  trained end to end on the node's labelled windows and ``metrics`` (``num-examples``, losses),
  as Flower's strategies expect them
- ``query.validate``: ``config`` (role, tower.*) and ``arrays`` -> ``metrics`` (accuracy,
  macro_f1, n) of that candidate model on the part's labelled windows; nothing is installed
- ``train.apply``: ``bundles`` (serialised signed AdapterBundles, admitted through
  ``node_agent.runtime.install_bundles``), and after federated fine-tuning
  ``encoders`` (tower.*) with ``encoder.<m>`` arrays installed first -> ``applied``,
  ``rejected`` (``<modality> v<version>`` -> reason)
- ``evaluate``: ``config`` (role, default test) -> ``metrics`` (``<subset>/accuracy``,
  ``/macro_f1``, ``/n``, ``/confusion``) of the model the node serves, on that part's labelled windows

A message the node cannot use gets a reply with an ``error`` record (the
reason), never an exception. Who the node is comes from ``context.node_config``:
a deployed node names its store (``node-id``, ``store``, optional ``group``,
``role``, ``state-dir``, ``signing-public-key`` (the coordinator's, hex), and ``validation-subjects`` /
``test-subjects``, whose windows it holds out as parts of their own: a node can
hold its own training windows and the validation and test subjects of its
modalities, subject-disjoint); a simulated node has Flower's
``partition-id``/``num-partitions`` and takes dataset, scenario and seed from
the run config (see ``node_agent.data.node_spec_for``). The batches a node
hands over are written to its store's upload ledger (``tasks.upload_batches``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from common.codec import CodecError, key_from_file, key_id_of, public_key_of
from common.config import CampaignConfig
from common.evaluate import LocalFinetuneConfig
from common.pretrain import PretrainConfig
from common.towers import TowerConfig
from node_agent import tasks
from node_agent.data import NodeData, NodePart, StoreNodeData, cached_split, dropouts, node_parts, virtual_node
from node_agent.runtime import NodeRuntime, install_bundles
from node_agent.state_dir import StateDir

log = logging.getLogger("edgebind.node")

PHASES = ("manifest", "pretrain", "collect", "finetune", "validate", "apply", "evaluate")

app = ClientApp()


class NodeVanished(RuntimeError):
    """A simulated node dropping out of the campaign (fault injection, see ``dropout``)."""


@dataclass
class Node:
    node_id: str
    group: str
    role: str
    data: NodeData
    state_dir: StateDir
    key: bytes | None  # the coordinator's Ed25519 public key this node was provisioned with, if any
    key_id: str
    simulated: bool = False  # a simulated node shares the simulation's trust: it takes a campaign's public key in-band
    dropout: tuple | None = None  # (scenario, nodes, share, seed, partition id) when drop-outs are simulated
    stall: float = 0.0
    delay: float = 0.0  # a straggler (the scenario's ``stragglers``) answers every message this many seconds late
    parts: list[NodePart] = field(default_factory=list)  # the node's own windows first, then held-out subjects

    def __post_init__(self) -> None:
        if not self.parts:
            self.parts = [NodePart(self.group, self.role, self.data)]

    def part(self, role: str) -> NodePart:
        for p in self.parts:
            if p.role == role:
                return p
        raise ValueError(f"node {self.node_id} holds no {role} windows (it holds {', '.join(f'{p.group}:{p.role}' for p in self.parts)})")

    def drop_round(self, rounds: int) -> int | None:
        """The pretraining round in which this node vanishes, if it is one of the fleet's drop-outs."""
        if self.dropout is None:
            return None
        sc, n, share, seed, pid = self.dropout
        return dropouts(sc, n, share, seed, rounds).get(pid)

    def keys(self, announced_id: str = "") -> dict[str, bytes]:
        """Public keys bundles may be signed with: the provisioned one, and (simulated nodes only) one given in-band."""
        keys = self.state_dir.in_band_keys() if self.simulated else {}
        if self.key is not None:
            keys[key_id_of(self.key)] = self.key  # the coordinator's id for a key configured without one
            if self.key_id or announced_id:
                keys[self.key_id or announced_id] = self.key
        return keys

    def take_in_band_key(self, key_id: str, public_hex: str) -> None:
        """A simulated node without a provisioned key remembers a campaign's public key offered in a message; a deployed node never does."""
        if public_hex and self.key is None and self.simulated:
            self.state_dir.remember_key(key_id, public_hex)

    def runtime(self, announced_id: str = "") -> NodeRuntime:
        """The node's serving runtime over its state directory (loaded through the same checks as on a device)."""
        return NodeRuntime(self.state_dir.root, self.node_id, keys=self.keys(announced_id), store=self.state_dir.store)


# --- handlers ----------------------------------------------------------------------------------


@app.query("manifest")
def manifest(msg: Message, context: Context) -> Message:
    def work(node: Node) -> RecordDict:
        m = tasks.manifest(node.node_id, node.group, node.role, node.data, [(p.group, p.role, p.data) for p in node.parts])
        return RecordDict({"manifest": ConfigRecord({"node-manifest": m.SerializeToString()}), "adapter-versions": ConfigRecord(node.state_dir.adapter_versions())})

    return _handle(msg, context, "manifest", work)


@app.train("pretrain")
def pretrain(msg: Message, context: Context) -> Message:
    def work(node: Node) -> RecordDict:
        cfg = msg.content["config"]
        pcfg = PretrainConfig(objective=str(cfg["objective"]), epochs=int(cfg["epochs"]), batch_size=int(cfg["batch-size"]), lr=float(cfg["lr"]))
        mods = _modalities_in(msg, node, "encoder.")
        given = {m: (msg.content[f"encoder.{m}"].to_torch_state_dict(), msg.content[f"head.{m}"].to_torch_state_dict()) for m in mods}
        trained, metrics = tasks.pretrain_round(given, node.part("train").data, pcfg, node.node_id, int(cfg["seed"]), int(cfg["round"]), torch.device("cpu"), _tower(cfg))
        out = RecordDict()
        for m, states in trained.items():
            out[f"encoder.{m}"], out[f"head.{m}"] = ArrayRecord(states["encoder"]), ArrayRecord(states["head"])
        out["metrics"] = MetricRecord(metrics)
        return out

    return _handle(msg, context, "pretrain", work)


@app.query("collect")
def collect(msg: Message, context: Context) -> Message:
    def work(node: Node) -> RecordDict:
        cfg = msg.content["config"]
        mods = _modalities_in(msg, node, "encoder.")
        states = {m: msg.content[f"encoder.{m}"].to_torch_state_dict() for m in mods}
        versions = node.state_dir.install_encoders(states, {m: node.data.spec(m) for m in mods}, _tower(cfg))
        node.take_in_band_key(str(cfg.get("signing-key-id", "")), str(cfg.get("signing-public-key", "")))
        parts = [(p.group, p.data) for p in (node.part(str(role)) for role in cfg["upload-roles"])]  # the roles the coordinator takes; test stays here
        batches = tasks.upload_batches(node.state_dir, parts, node.node_id, str(cfg["campaign-id"]), str(cfg["dtype"]), versions)
        return RecordDict({"upload": ConfigRecord({"batches": batches} if batches else {}), "versions": ConfigRecord(versions)})

    return _handle(msg, context, "collect", work)


@app.train("finetune")
def finetune(msg: Message, context: Context) -> Message:
    def work(node: Node) -> RecordDict:
        cfg = msg.content["config"]
        flat = msg.content["arrays"].to_torch_state_dict()
        states, metrics = tasks.finetune_round(flat, node.part("train").data, LocalFinetuneConfig.from_wire(cfg), node.node_id, int(cfg["seed"]), int(cfg["round"]),
                                               torch.device("cpu"), _tower(cfg))  # fmt: skip
        return RecordDict({"arrays": ArrayRecord(states), "metrics": MetricRecord(metrics)})

    return _handle(msg, context, "finetune", work)


@app.query("validate")
def validate(msg: Message, context: Context) -> Message:
    def work(node: Node) -> RecordDict:
        cfg = msg.content["config"]
        res = tasks.local_validate(msg.content["arrays"].to_torch_state_dict(), node.part(str(cfg.get("role", "validation"))).data, torch.device("cpu"), _tower(cfg))
        return RecordDict({"metrics": MetricRecord(res)})

    return _handle(msg, context, "validate", work)


@app.train("apply")
def apply(msg: Message, context: Context) -> Message:
    def work(node: Node) -> RecordDict:
        if msg.content.config_records.get("encoders") is not None:  # fine-tuned encoders come before the adapters aligned on them
            mods = _modalities_in(msg, node, "encoder.")
            states = {m: msg.content[f"encoder.{m}"].to_torch_state_dict() for m in mods}
            node.state_dir.install_encoders(states, {m: node.data.spec(m) for m in mods}, _tower(msg.content["encoders"]))
        rec = msg.content["bundles"]
        blobs = list(rec.get("bundles", []))
        result = install_bundles(node.state_dir, blobs, node.keys(str(rec.get("signing-key-id", ""))), node.node_id)
        return RecordDict({"applied": ConfigRecord(result["applied"]), "rejected": ConfigRecord(result["rejected"])})

    return _handle(msg, context, "apply", work)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    def work(node: Node) -> RecordDict:
        cfg = msg.content.config_records.get("config", ConfigRecord())
        res = tasks.evaluate_local(node.part(str(cfg.get("role", "test"))).data, node.runtime(), torch.device("cpu"))
        flat: dict = {}
        for subset, m in res.items():
            for k in ("accuracy", "macro_f1", "n", "confusion"):
                flat[f"{subset}/{k}"] = m[k]
        return RecordDict({"metrics": MetricRecord(flat)})

    return _handle(msg, context, "evaluate", work)


# --- plumbing ---------------------------------------------------------------------------------


def _handle(msg: Message, context: Context, phase: str, work) -> Message:
    """Resolve the node, inject a configured drop-out, run ``work``; a bad message gets an error record."""
    simulated = "partition-id" in context.node_config
    cfg = _run_config(tuple(sorted(context.run_config.items()))) if simulated else None
    node = node_for(context, cfg)
    _maybe_vanish(node, msg, phase)
    if node.delay:
        time.sleep(node.delay)
    threads = int(context.node_config.get("threads", cfg.client_threads if cfg is not None else 0))
    if threads > 0:  # a deployed node keeps torch's default unless its config says otherwise
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        content = work(node)
        content["timing"] = MetricRecord({"compute-seconds": time.perf_counter() - t0})  # the learning work, for the books
    except (CodecError, KeyError, ValueError, TypeError) as e:
        log.warning("node %s: bad %s message: %s", node.node_id, phase, e)
        content = RecordDict({"error": ConfigRecord({"reason": f"{type(e).__name__}: {e}", "phase": phase})})
    return Message(content, reply_to=msg)


def _maybe_vanish(node: Node, msg: Message, phase: str) -> None:
    cfg = msg.content.config_records.get("config", ConfigRecord())
    drop = node.drop_round(int(cfg.get("rounds", 1)))
    if drop is None:
        return
    asked_back = phase == "manifest" and cfg.get("rejoin", False)  # the coordinator asks a missing node whether it is back: a vanished one is not
    before_drop = PHASES.index(phase) < PHASES.index("pretrain") or (phase == "pretrain" and int(cfg.get("round", 0)) < drop)
    if before_drop and not asked_back:
        return
    if node.stall:
        time.sleep(node.stall)
    raise NodeVanished(f"node {node.node_id} dropped out in pretraining round {drop} (now: {phase})")


def _modalities_in(msg: Message, node: Node, prefix: str) -> list[str]:
    held = set(node.data.modalities())
    named = sorted(k[len(prefix) :] for k in msg.content.array_records if k.startswith(prefix))
    unknown = [m for m in named if m not in held]
    if unknown:
        raise ValueError(f"node {node.node_id} holds no {unknown[0]!r} (it holds {sorted(held)})")
    return named


def _tower(cfg: ConfigRecord) -> TowerConfig:
    return TowerConfig.from_dict({k[6:].replace("-", "_"): int(v) for k, v in cfg.items() if k.startswith("tower.")})


def node_for(context: Context, cfg: CampaignConfig | None = None) -> Node:
    """The node a message is for: a deployed one (its node config names a store) or a simulated one (a partition of the scenario).

    The run config is read as the coordinator reads it (``CampaignConfig``:
    unknown keys and wrong types are errors); for a simulated node a node
    config value overrides the run config's. A deployed node takes the
    coordinator's public key from its own node config only, never from the run config or a message.
    """
    nc = context.node_config
    if "store" in nc:
        holdouts = tuple((r, str(nc.get(f"{r}-subjects", ""))) for r in ("validation", "test"))
        return _store_node(context.run_id, str(nc["node-id"]), str(nc["store"]), str(nc.get("group", "")), str(nc.get("role", "train")),
                           str(nc.get("state-dir", "")), str(nc.get("signing-public-key", "")), str(nc.get("signing-key-id", "")), holdouts)  # fmt: skip
    if "partition-id" not in nc:
        raise ValueError("node_config names neither a store (node-id, store) nor a partition-id")
    cfg = cfg or _run_config(tuple(sorted(context.run_config.items())))
    get = lambda k, d: nc.get(k, d)  # noqa: E731
    return _virtual_node(
        context.run_id, str(get("dataset", cfg.dataset)), str(get("scenario", cfg.scenario)), int(get("seed", cfg.seed)),
        int(nc["partition-id"]), int(nc["num-partitions"]), cfg.window_cap(), cfg.state_dir,
        str(get("signing-key", cfg.signing_key or _simulation_key(cfg.signing_key_file))), str(get("signing-key-id", cfg.signing_key_id)),
        cfg.dropout, cfg.dropout_mode, cfg.round_timeout,
    )  # fmt: skip


def _simulation_key(path: str) -> str:
    """The coordinator's private key as hex, for a simulated node to derive the public key from (one trust domain)."""
    path = path or os.environ.get("EDGEBIND_SIGNING_KEY_FILE", "")
    if path:
        return key_from_file(path, "private").hex()
    return os.environ.get("EDGEBIND_SIGNING_KEY", "")


@lru_cache(maxsize=64)
def _run_config(items: tuple) -> CampaignConfig:
    """A run's settings, parsed once per run rather than once per message (a run config does not change during its run)."""
    return CampaignConfig.from_run_config(dict(items))


@lru_cache(maxsize=4096)
def _virtual_node(run_id, dataset, scenario, seed, pid, n, cap, state_dir, key, key_id, dropout, mode, timeout) -> Node:
    spec, data = virtual_node(dataset, scenario, seed, pid, n, cap or None)
    sc, _ = cached_split(dataset, scenario, seed)
    drop = (sc, n, dropout, seed, pid) if dropout > 0 else None
    root = Path(state_dir) / spec.node_id if state_dir else Path(tempfile.gettempdir()) / "edgebind-nodes" / f"run-{run_id}" / spec.node_id
    public = public_key_of(bytes.fromhex(key)) if key else None  # the simulation's run config holds the coordinator's private key
    return Node(spec.node_id, spec.group, spec.role, data, StateDir(root), public, key_id, True,
                drop, (timeout + 1.0) if mode == "stall" else 0.0, spec.delay)  # fmt: skip


@lru_cache(maxsize=16)
def _store_node(run_id, node_id, url, group, role, state_dir, key, key_id, holdouts=()) -> Node:
    """A deployed node: its store, and the subjects it holds out (``(role, "1,2,3")`` pairs) as parts of their own."""
    from node_agent.store import open_store

    subjects = {r: _subject_list(f"{r}-subjects", v) for r, v in holdouts}
    store = open_store(url)
    data = StoreNodeData(node_id, store)
    group = group or "+".join(data.modalities())
    root = Path(state_dir) if state_dir else Path(tempfile.gettempdir()) / "edgebind-nodes" / node_id
    return Node(node_id, group, role, data, StateDir(root, store=store), bytes.fromhex(key) if key else None, key_id,
                parts=node_parts(data, group, role, subjects))  # fmt: skip


def _subject_list(key: str, text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"node config {key}={text!r}: expected comma-separated subject numbers") from None
