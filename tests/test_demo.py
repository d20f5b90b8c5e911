"""The main job: the demo's quick form runs a whole simulated campaign on HAPT and writes its report."""

from __future__ import annotations

import json

import pytest
import torch

from simulations.demo import demo

pytestmark = pytest.mark.slow


def test_demo_quick_writes_a_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    result = demo(out=tmp_path, device=torch.device("cpu"), quick=True)
    table = result["table"]
    assert set(table) == {"gravity", "lin_acc", "gravity+lin_acc"}
    fed = "edgebind (federated, chosen)"
    for subset, row in table.items():
        assert fed in row and 0.0 <= row[fed]["accuracy"] <= 1.0
    full = table["gravity+lin_acc"]
    # six activities (chance about 1/6): the quick campaign measured 0.60 macro-F1 on both streams; one that learns nothing misses 0.4
    assert full[fed]["macro_f1"] >= 0.4, full[fed]
    for name in ("upper bound (central, natural pairs)", "lower bound (central, few labels)", "lower bound, self-trained (own node)",
                 "edgebind, head on features", "edgebind, fine-tuned"):  # fmt: skip
        assert name in full, name
    chosen = result["campaign"]["finetune"]["chosen_round"]
    assert full[fed]["accuracy"] == pytest.approx(full["edgebind, fine-tuned" if chosen else "edgebind, head on features"]["accuracy"])
    assert "unimodal (central)" in table["lin_acc"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["campaign"]["missing_nodes"] == []
    assert [s["stage"]["branch"] for s in saved["campaign"]["stages"]] == ["lin_acc", "gravity"]
    for name in ("report.md", "accuracy_vs_incompleteness.png", "projection_before.png", "projection_after.png", "weights_stage1.png", "weights_stage2.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    report = (tmp_path / "report.md").read_text()
    assert "![accuracy_vs_incompleteness.png](accuracy_vs_incompleteness.png)" in report
    gaps = saved["modality_gap"]
    assert set(gaps) == {"before", "after"} and set(gaps["after"]) == {"gravity-lin_acc"} and gaps["after"]["gravity-lin_acc"] >= 0
    assert "## Modality gap" in report and f"| gravity-lin_acc | {gaps['before']['gravity-lin_acc']:.2f} | {gaps['after']['gravity-lin_acc']:.2f} |" in report
    printed = capsys.readouterr().out
    assert "gravity+lin_acc" in printed and "edgebind minus the lower bound on gravity+lin_acc" in printed
    assert "edgebind minus the self-trained lower bound on gravity+lin_acc" in printed
    assert saved["reference"]["methods"]["self_trained_lower_bound"]["validation"]["self_train"]["pool"] > 0  # it read its node's windows
