"""Campaigns over the in-process grid with the settings federated benchmarks vary (label skew, missing modalities,
noisy labels, stragglers), uploads collected in waves, and a coordinator that dies and resumes."""

from __future__ import annotations

import pytest
import torch

from coordinator import phases as P
from tests.flower_grid import flower_env, in_process_campaign  # noqa: F401  (flower_env: autouse)


SKEWED_FLEET = """binding = "sensor"
shared = "s"
[[group]]
name = "phone"
modalities = ["s", "a", "b"]
share = 0.7
nodes = 6
labelled = 0.5
label_skew = 0.5
missing_modality = 0.3
label_noise = 0.1
stragglers = 0.5
straggler_delay = 0.05
[validation]
modalities = ["a", "b"]
share = 0.1
[test]
modalities = ["a", "b"]
share = 0.2
"""


def test_a_campaign_over_nodes_with_label_skew_missing_modalities_noisy_labels_and_stragglers(tmp_path):
    from node_agent.data import node_spec_for
    from common.data import load_dataset
    from common.data.scenarios import Scenario

    res, _ = in_process_campaign(tmp_path, scenario_text=SKEWED_FLEET)
    assert res["state"] == "done" and res["missing_nodes"] == []
    sc = Scenario.load(res["config"]["scenario"])
    ds = load_dataset(res["config"]["dataset"])
    specs = [node_spec_for(sc, ds, 0, p) for p in range(6)]
    assert any(s.lost for s in specs) and any(s.delay > 0 for s in specs)  # the draws this test relies on happened
    for s in specs:  # every node announced what it holds after losing modalities, and nothing it lost
        assert res["nodes"][s.node_id]["modalities"] == s.modalities, s.node_id
    assert all(m["accuracy"] >= 0.8 for m in res["accuracy"].values()), res["accuracy"]  # chance is 1/3


def test_stragglers_slower_than_the_round_timeout_are_recorded_missing(tmp_path):
    from node_agent.data import node_spec_for
    from common.data import load_dataset
    from common.data.scenarios import Scenario

    text = SKEWED_FLEET.replace("straggler_delay = 0.05", "straggler_delay = 4.0")
    res, _ = in_process_campaign(tmp_path, scenario_text=text, **{"round-timeout": 1.5})
    sc = Scenario.load(res["config"]["scenario"])
    ds = load_dataset(res["config"]["dataset"])
    late = {f"flower:{100 + p}" for p in range(6) if node_spec_for(sc, ds, 0, p).delay > 1.5}  # silent from the first exchange: named by Flower id
    assert late and res["state"] == "done" and res["accuracy"]
    assert set(res["missing_nodes"]) == late
    assert all(m["reason"] == "no reply within 1.5s" for m in res["missing"].values())


def test_uploads_collected_in_waves_store_the_same_as_all_at_once(tmp_path):
    """collect-wave bounds how many nodes' uploads the coordinator holds at once; what is stored does not change."""
    (tmp_path / "whole").mkdir()
    (tmp_path / "waves").mkdir()
    whole, _ = in_process_campaign(tmp_path / "whole")
    waves, grid = in_process_campaign(tmp_path / "waves", **{"collect-wave": 2})
    a, b = whole["phases"]["collect"], waves["phases"]["collect"]
    assert (a["waves"], b["waves"]) == (1, 4)  # 7 nodes, 2 at a time
    assert {k: a[k] for k in ("stored", "windows", "bytes", "nodes")} == {k: b[k] for k in ("stored", "windows", "bytes", "nodes")}
    assert b["stored"] > 0 and not b["rejected"] and grid.sent.count("query.collect") == 7
    assert waves["accuracy"] == whole["accuracy"]


@pytest.mark.parametrize("kill_in", ["pretrain", "bind", "head", "finetune"])
def test_a_campaign_killed_mid_way_resumes_without_repeating_what_it_finished(tmp_path, monkeypatch, kill_in):
    """The coordinator dies in pretraining round 2 (or in bind, after every upload is stored, or fitting the head, after
    the alignment stage's checkpoint, or in fine-tuning round 3 of 3, under FedAdam, whose moments carry over rounds);
    run again with resume, it goes on from the store and its checkpoints, asks no node for what it already has, and
    ends where an uninterrupted campaign of the same seed ends."""
    from coordinator import server_app

    (tmp_path / "whole").mkdir()
    (tmp_path / "killed").mkdir()
    settings = {"pretrain-rounds": 3, **({"finetune-rounds": 3, "finetune-strategy": "fedadam", "lab-nodes": 3} if kill_in == "finetune" else {})}
    lab_nodes = settings.pop("lab-nodes", 1)
    whole, whole_grid = in_process_campaign(tmp_path / "whole", lab_nodes=lab_nodes, **settings)
    real_send, real_bind, real_head = server_app.send, P.bind, P.fit_head

    def dying_send(grid, st, phase, kind, contents, rnd=0, **kw):
        if (phase, rnd) == (kill_in, 2 if kill_in == "pretrain" else 3):
            raise RuntimeError("coordinator killed")
        return real_send(grid, st, phase, kind, contents, rnd, **kw)

    def dying(*a, **kw):
        raise RuntimeError("coordinator killed")

    if kill_in in ("pretrain", "finetune"):
        monkeypatch.setattr(server_app, "send", dying_send)
    else:
        monkeypatch.setattr(P, kill_in if kill_in == "bind" else "fit_head", dying)
    with pytest.raises(RuntimeError, match="coordinator killed"):
        in_process_campaign(tmp_path / "killed", lab_nodes=lab_nodes, **settings)
    monkeypatch.setattr(server_app, "send", real_send)
    monkeypatch.setattr(P, "bind", real_bind)
    monkeypatch.setattr(P, "fit_head", real_head)
    res, grid = in_process_campaign(tmp_path / "killed", lab_nodes=lab_nodes, **settings, resume=True)
    assert res["state"] == "done" and res["missing_nodes"] == []
    per_round = whole_grid.sent.count("train.pretrain") // 3
    if kill_in == "pretrain":  # round 1 was kept; rounds 2 and 3 run now
        assert res["phases"]["pretrain"]["resumed_after_round"] == 1 and grid.sent.count("train.pretrain") == 2 * per_round
        assert grid.sent.count("query.collect") == 7
    else:  # every round and every upload was kept
        assert grid.sent.count("train.pretrain") == 0 and grid.sent.count("query.collect") == 0 and res["phases"]["collect"]["resumed"]
    assert res["phases"]["grow"].get("resumed", False) == (kill_in in ("head", "finetune"))  # the alignment stage was loaded, not trained again
    if kill_in == "finetune":  # rounds 1 and 2 were kept: only round 3 asks the nodes to train, and it ends as the whole run's did
        tuned = whole_grid.sent.count("train.finetune")
        assert tuned >= 6 and grid.sent.count("train.finetune") == tuned // 3
        assert res["finetune"]["resumed_after_round"] == 2 and res["phases"]["head"]["resumed"]  # the head was not fitted again
        assert res["validation"]["val_macro_f1"] == whole["validation"]["val_macro_f1"]
        assert [r["macro_f1"] for r in res["finetune"]["rounds"]] == [r["macro_f1"] for r in whole["finetune"]["rounds"]]
        assert res["finetune"]["test"] == whole["finetune"]["test"]
        a, b = (torch.load(d / "out" / "checkpoints" / "finetune.pt", weights_only=True) for d in (tmp_path / "whole", tmp_path / "killed"))
        assert a["round"] == b["round"] == 3 and all(torch.equal(a["current"][k], b["current"][k]) for k in a["current"])  # round 3's model, bit for bit
    assert res["accuracy"] == whole["accuracy"]  # the same end as without the kill


def test_resume_needs_the_campaign_in_the_store(tmp_path):
    with pytest.raises(ValueError, match="no campaign 'campaign-1' in the store to resume"):
        in_process_campaign(tmp_path, resume=True)
