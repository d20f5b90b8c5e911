"""``edgebind-sim probe``: the encoder sanity figures, re-made from the same encoders, on real HAPT windows."""

from __future__ import annotations

import json

import pytest

from simulations.cli import main

pytestmark = pytest.mark.slow


def test_probe_quick_on_hapt(tmp_path, capsys):
    assert main(["probe", "--quick", "--seeds", "1", "--modalities", "lin_acc", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["experiment"] == "probe" and res["seeds"] == 1 and len(res["dataset_sha256"]) == 64 and res["commit"]
    split = res["per_seed"][0]["subjects"]
    assert not set(split["train"]) & set(split["test"]) and not set(split["validation"]) & set(split["test"])
    r = res["per_seed"][0]["modalities"]["lin_acc"]
    for name in ("probe", "random", "supervised"):
        assert r[name]["accuracy"] > 1 / 6 + 0.15  # six activities: a broken encoder or head sits at chance
    assert 0.0 < r["view_accuracy"] <= 1.0
    assert r["probe_minus_supervised"] == pytest.approx(r["probe"]["accuracy"] - r["supervised"]["accuracy"])
    assert "Encoder probe on hapt" in capsys.readouterr().out
    assert main(["probe", "--quick", "--modalities", "ecg", "--out", str(tmp_path)]) == 2
    assert "has no modality 'ecg'" in capsys.readouterr().err
