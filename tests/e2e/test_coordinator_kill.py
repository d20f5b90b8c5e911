"""SIGKILL the coordinator's ServerApp process during growth in a real local deployment, and resume the campaign.

The same deployment as ``test_supernode_kill.py`` (mosquitto, SuperLink +
Registry, three node agents, all processes on 127.0.0.1). One campaign runs
to its end as the reference; a second, of the same seed, has the process that
runs its phases (``flwr-serverapp``, started by the SuperLink) killed once
growth has begun, and is continued with ``edgebind-coordinator campaign
--resume ID``: it must not repeat pretraining or collect, and must end with
the reference's bound pairs, validation choice and accuracy.

Takes a few minutes. Needs mosquitto (skipped without it, except with CI=true).
"""

from __future__ import annotations

import os
import re
import signal

import pytest

from coordinator.store import open_store
from simulations.supervisor import descendants, read_log
from tests.e2e.test_deploy_local import flower_env, mosquitto, node_venv  # noqa: F401  (fixtures)
from tests.e2e.test_supernode_kill import finish, running_deployment, start_campaign, wait

SAME = ("pairs", "validation", "accuracy")  # what the campaign learnt and scored, free of timings


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_a_coordinator_killed_during_growth_resumes_to_the_uninterrupted_result(tmp_path, flower_env, mosquitto, node_venv):  # noqa: F811
    settings = {"round-timeout": 300.0, "align-epochs": 40}  # growth long enough (tens of seconds) to be killed in
    with running_deployment(tmp_path, node_venv) as d:
        ref, ref_results = start_campaign(d, "whole", **settings)
        whole = finish(ref, ref_results, 600)
        assert whole["state"] == "done" and not whole["missing_nodes"], whole.get("error") or whole["missing"]

        cut, cut_results = start_campaign(d, "cut", **settings)
        wait(lambda: re.search(r"\[grow\] \.\.\.", read_log(cut.log)), 600, "growth to begin", every=0.2)
        apps = [pid for pid, cmd in descendants(d.coordinator.proc.pid) if cmd == "flwr-serverapp"]
        assert len(apps) == 1, apps
        os.kill(apps[0], signal.SIGKILL)
        wait(lambda: cut.proc.poll() is not None or not any(p == apps[0] for p, _ in descendants(d.coordinator.proc.pid)), 30, "the ServerApp to die")
        d.sup.stop([cut], 20)  # `flwr run` may follow a dead run's logs until its timeout
        with open_store(d.coordinator_info["store"]) as st:
            state = next(c for c in st.campaigns() if c.campaign_id == "cut").state
        assert state in ("grow", "bind"), f"the campaign was killed in state {state!r}, not during growth"

        again, again_results = start_campaign(d, "cut", resume=True, **settings)
        resumed = finish(again, again_results, 600)
        assert resumed["state"] == "done" and not resumed["missing_nodes"], resumed.get("error") or resumed["missing"]
        assert resumed["phases"]["collect"].get("resumed"), resumed["phases"]["collect"]  # uploads from the store, no node asked again
        assert "resumed_after_round" in resumed["phases"]["pretrain"] or resumed["phases"]["pretrain"].get("resumed"), resumed["phases"]["pretrain"]
        for key in SAME:
            assert resumed[key] == whole[key], f"{key}: {resumed[key]} after the kill and resume, {whole[key]} without"
