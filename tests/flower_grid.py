"""An in-process Flower grid for the real ServerApp and ClientApp, and a small synthetic campaign on it (shared by the
campaign tests; a module of helpers, not of tests)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from common.data.dataset import WindowDataset
from coordinator.server_app import app as server_app
from node_agent.client_app import app as client_app


@pytest.fixture(autouse=True)
def flower_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
    # Messages take their run and sender from the process's task identity, which a SuperLink sets.
    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", SUPERLINK_NODE_ID)):
        monkeypatch.setattr(TaskIdentity, attr, value)


class InProcessGrid(Grid):
    """A Grid that runs the ClientApp in this process: one Context per node, replies kept until pulled.

    Nodes in ``silent`` never answer (a node that vanished without a word).
    """

    def __init__(self, contexts: dict[int, Context], silent: set[int] = frozenset()):
        self.contexts, self.silent = contexts, set(silent)
        self.replies: dict[str, Message] = {}
        self.sent: list[str] = []

    def set_run(self, run):  # pragma: no cover - not used by the ServerApp
        pass

    @property
    def run(self):  # pragma: no cover
        raise AttributeError("InProcessGrid holds no Flower Run: the ServerApp under test never reads grid.run")

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # pragma: no cover
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            mid = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid
            ids.append(mid)
            self.sent.append(msg.metadata.message_type)
            node = msg.metadata.dst_node_id
            if node in self.silent:
                continue
            try:
                reply = client_app(msg, self.contexts[node])
            except Exception as e:  # what the simulation engine does with a crashing ClientApp
                reply = Message(Error(code=2, reason=f"{type(e).__name__}: {e}"), reply_to=msg)
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.replies[mid] = reply
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages, *, timeout=None):
        """As Flower's grids: push, then pull what arrived in time (a silent node never replies; one that took longer than
        ``timeout`` to answer, as a straggler does, is not waited for)."""
        t0 = time.monotonic()
        ids = []
        for msg in messages:  # one at a time, so each node's own answering time is known
            start = time.monotonic()
            (mid,) = self.push_messages([msg])
            if timeout is not None and time.monotonic() - start > timeout:
                self.replies.pop(mid, None)
            ids.append(mid)
        self.waited = time.monotonic() - t0
        return self.pull_messages(ids)


class ManifestRewritingGrid(InProcessGrid):
    """Node 101's manifest is changed by ``mutate`` (a ``NodeManifest`` -> changed in place, or raw bytes to send instead),
    as a buggy or hostile node might send it."""

    @staticmethod
    def mutate(m):  # a subclass names what it changes
        return None

    def push_messages(self, messages):
        from proto import edgebind_pb2 as pb

        ids = super().push_messages(messages)
        for mid, msg in zip(ids, messages):
            if msg.metadata.message_type == "query.manifest" and msg.metadata.dst_node_id == 101 and mid in self.replies:
                rec = self.replies[mid].content["manifest"]
                m = pb.NodeManifest.FromString(rec["node-manifest"])
                raw = self.mutate(m)
                rec["node-manifest"] = raw if raw is not None else m.SerializeToString()
        return ids


def synthetic_files(tmp_path: Path, lab_nodes: int = 1) -> tuple[str, str]:
    """A small three-stream dataset (.npz) and a scenario (.toml) that binds through ``s``."""
    rng = np.random.default_rng(0)
    n, window = 360, 32
    y = rng.integers(0, 3, n)
    t = np.linspace(0, 2 * np.pi, window, dtype=np.float32)
    X = {m: (np.sin((y[:, None] + 1 + k) * t)[:, :, None] * np.ones(3) + 0.3 * rng.normal(size=(n, window, 3))).astype(np.float32) for k, m in enumerate("sab")}
    ds = WindowDataset(X=X, y=y, subject=np.repeat(np.arange(1, 13), 30), label_names=["x", "y", "z"], name="synth")
    data = ds.save(tmp_path / "synth.npz")
    scenario = tmp_path / "synth-bind.toml"
    scenario.write_text(
        'binding = "sensor"\nshared = "s"\n'
        '[[group]]\nname = "sa"\nmodalities = ["s", "a"]\nshare = 0.3\nnodes = 2\n'
        '[[group]]\nname = "sb"\nmodalities = ["s", "b"]\nshare = 0.3\nnodes = 2\n'
        '[[group]]\nname = "lab"\nmodalities = ["a", "b"]\nshare = 0.1\nlabelled = 0.5\n'
        f"nodes = {lab_nodes}\n"
        '[validation]\nmodalities = ["a", "b"]\nshare = 0.1\n[test]\nmodalities = ["a", "b"]\nshare = 0.2\n'
    )
    return str(data), str(scenario)


def in_process_campaign(
    tmp_path: Path, silent: set[int] = frozenset(), grid_cls: type[InProcessGrid] = InProcessGrid, lab_nodes: int = 1, id_base: int = 100,
    scenario_text: str = "", **config
) -> tuple[dict, InProcessGrid]:
    data, scenario = synthetic_files(tmp_path, lab_nodes)
    n = 6 + lab_nodes
    if scenario_text:  # another scenario on the same data
        Path(scenario).write_text(scenario_text)
        from common.data.scenarios import Scenario

        n = sum(g.nodes for g in Scenario.load(scenario).groups)
    run_config = {
        "dataset": data, "scenario": scenario, "seed": 0, "results-path": str(tmp_path / "out" / "results.json"),
        "state-dir": str(tmp_path / "nodes"), "expected-nodes": n, "discovery-timeout": 5.0, "round-timeout": 20.0,
        "pretrain-rounds": 2, "local-epochs": 1, "align-epochs": 2, "head-steps": 20, "head-finetune-steps": 20, "head-self-train-steps": 20,
        "coordinator-threads": 1,
        "finetune-rounds": 1, "finetune-steps": 5,
        "signing-key": "11" * 32, **config,
    }  # fmt: skip
    contexts = {
        id_base + p: Context(run_id=1, node_id=id_base + p, node_config={"partition-id": p, "num-partitions": n}, state=RecordDict(), run_config=run_config)
        for p in range(n)
    }
    grid = grid_cls(contexts, silent={id_base + p for p in silent})
    server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    return json.loads((tmp_path / "out" / "results.json").read_text()), grid
