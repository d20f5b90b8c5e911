"""SIGKILL one node's SuperNode while a campaign's pretraining round runs, in a real local deployment.

mosquitto, the coordinator (SuperLink + Registry), three node agents (each
with ingest and a SuperNode it supervises) and ``edgebind-coordinator
campaign``, all as processes on 127.0.0.1 (``simulations.deploy_local``'s
steps, plain-text SuperLink link to save the PKI's time). One training node's
SuperNode (and the ClientApp it runs) is killed mid-round: the round ends
with the other two; its agent keeps ingesting and restarts the SuperNode with
back-off; the restarted SuperNode comes back under a new Flower id, and the
same campaign takes it back at its next phase (``coordinator.campaign.rejoin``):
it uploads its windows, each exactly once, and gets the campaign's adapters.
What it missed stays on record (``rejoined`` in results.json).

Takes a few minutes (a quick campaign on HAPT). Needs mosquitto (skipped
without it, except with CI=true).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from coordinator.store import open_store
from simulations.deploy_local import Deployment
from simulations.deploy_plan import plan_nodes, prepare_out
from simulations.supervisor import descendants, read_log, script_path
from tests.e2e.test_deploy_local import flower_env, mosquitto, node_venv  # noqa: F401  (fixtures)


def wait(cond, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


@contextmanager
def running_deployment(tmp_path: Path, node_venv) -> Iterator[Deployment]:
    """``Deployment.run``'s steps up to the campaign (broker, coordinator, three sensor-bind node agents over plain text,
    replay, every window ingested); everything stopped on the way out."""
    out = tmp_path / "deploy"
    prepare_out(out)
    d = Deployment(3, "hapt", "sensor-bind", out, True, 0, None, None, node_venv, insecure=True)
    try:
        d.plans, d.sc = plan_nodes(d.scenario, d.dataset, d.n, d.seed, d.out)
        d.app_dir = Path(__file__).resolve().parents[2]
        d.start_broker()
        d.start_coordinator_and_nodes()
        d.replay()
        d.wait_ingested()
        yield d
    finally:
        d.shutdown()


# The quick schedule (CampaignConfig.QUICK, which ``quick`` would impose over any setting) with one pretraining round and
# no federated fine-tuning: what these tests kill and resume is in the phases before.
QUICKER = {"pretrain-rounds": 1, "local-epochs": 1, "align-epochs": 4, "head-steps": 60, "head-finetune-steps": 40, "head-self-train-steps": 40, "finetune-rounds": 0,
           "max-windows-per-group": 160}  # fmt: skip


def start_campaign(d: Deployment, campaign_id: str, resume: bool = False, **extra):
    """``edgebind-coordinator campaign`` against the deployment, as ``Deployment.run_campaign`` starts it (``QUICKER``, one thread)."""
    results = d.out / campaign_id / "results.json"
    rc = {"dataset": d.dataset, "scenario": d.scenario, "seed": d.seed, "results-path": str(results), "expected-nodes": d.n, "min-nodes": d.n,
          "discovery-timeout": d.t.discovery, "coordinator-threads": 1, **QUICKER, **({} if resume else {"campaign-id": campaign_id}), **extra}  # fmt: skip
    cmd = [script_path("edgebind-coordinator"), "campaign", "--superlink", d.superlink, "--app", str(d.app_dir), "--store", d.coordinator_info["store"],
           "--flwr-home", d.coordinator_info["flwr_home"], "--timeout", str(int(d.t.campaign)), "--insecure", *(["--resume", campaign_id] if resume else [])]  # fmt: skip
    for k, v in rc.items():
        cmd += ["-c", f"{k}={json.dumps(v)}"]
    name = f"campaign {campaign_id}{' resumed' if resume else ''}"
    return d.sup.start(name, cmd, d.out / "logs" / f"{name.replace(' ', '-')}.log", d.env()), results


def finish(child, results: Path, timeout: float) -> dict:
    wait(lambda: child.proc.poll() is not None, timeout, f"{child.name} to finish", every=1.0)
    assert results.exists(), f"{child.name} wrote no results (exit {child.proc.returncode}):\n{read_log(child.log)[-3000:]}"
    return json.loads(results.read_text())


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_a_supernode_killed_mid_round_costs_that_round_only_and_the_node_rejoins_the_same_campaign(tmp_path, flower_env, mosquitto, node_venv):  # noqa: F811
    with running_deployment(tmp_path, node_venv) as d:
        # a training node that holds no other part (the labelled node also holds validation and test)
        victim = next(p for p in d.plans if len(p.parts) == 1 and p.parts[0].role == "train")
        agent = d.nodes[victim.node_id]

        first, first_results = start_campaign(d, "killed", **{"round-timeout": 120.0})
        wait(lambda: re.search(r"\[pretrain\]", read_log(first.log)), 300, "pretraining to start")
        supernodes = wait(lambda: [p for p, cmd in descendants(agent.proc.pid) if cmd == "flower-supernode"], 30, f"node {victim.node_id}'s SuperNode")
        os.killpg(supernodes[0], signal.SIGKILL)  # the SuperNode and the ClientApp it runs, with no chance to say goodbye
        wait(lambda: "the SuperNode: restart 1" in read_log(victim.log), 120, "the agent to restart the SuperNode")
        res = finish(first, first_results, 600)
        assert res["state"] == "done", res.get("error")
        assert agent.proc.poll() is None, "the node agent died with its SuperNode"
        log = read_log(victim.log)
        assert re.search(r"the SuperNode exited with status -?\d+; restarting in", log), log[-3000:]
        # missed the pretraining round, back at collect: not missing at the end, and what it missed is on record
        assert res["missing_nodes"] == [], res["missing"]
        (back,) = res["rejoined"]
        assert back["node"] == victim.node_id and back["missed"]["phase"] == "pretrain" and back["missed"]["reason"], back
        assert back["phase"] == "collect", back
        assert res["phases"]["push"]["nodes_applied"] == d.n  # it serves this campaign's adapters too

        store = open_store(d.coordinator_info["store"])
        try:
            for m in victim.modalities:
                ids = store.embeddings("killed", m, node_ids=[victim.node_id]).window_ids.tolist()
                assert len(ids) == len(set(ids)), f"{m}: a window of node {victim.node_id} stored twice"
                assert len(ids) == d.ingested[victim.node_id]["windows"], (m, len(ids), d.ingested[victim.node_id])
        finally:
            store.close()
