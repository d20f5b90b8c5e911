"""The MMBind experiment end to end on real HAPT windows (quick settings) and on a generic .npz."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.data import load_dataset
from common.data.dataset import WindowDataset
from simulations.cli import main

pytestmark = pytest.mark.slow


def _check_results(out, methods, full):
    res = json.loads((out / "results.json").read_text())
    assert res["seeds"] == 1 and res["test_modalities"] == full
    assert set(res["summary"]["methods"]) == set(methods)
    seed = res["per_seed"][0]
    groups = list(seed["subjects"].values())
    assert sum(len(g) for g in groups) == len({s for g in groups for s in g})  # no subject in two groups
    for m in methods:
        r = res["summary"]["methods"][m]
        acc = r["headline_accuracy"]["mean"]
        assert 0.0 <= acc <= 1.0 and r["headline_accuracy"]["n"] == 1
    return res


def test_sensor_bind_quick(tmp_path, capsys):
    assert main(["experiment", "mmbind", "--dataset", "hapt", "--scenario", "sensor-bind", "--seeds", "1", "--quick", "--out", str(tmp_path)]) == 0
    res = _check_results(tmp_path, ["lower_bound", "self_trained_lower_bound", "unimodal", "incomplete", "imagebind", "mmbind", "upper_bound", "all_labels"], "gravity+lin_acc")
    # provenance and the paired yardstick
    assert len(res["commit"]) >= 40 and len(res["dataset_sha256"]) == 64 and res["settings"]["pretrain"]["epochs"] == 2
    paired = res["summary"]["paired_differences"]
    seed = res["per_seed"][0]["methods"]
    assert paired["mmbind - lower_bound"]["mean"] == pytest.approx(seed["mmbind"]["subsets"]["gravity+lin_acc"]["accuracy"] - seed["lower_bound"]["subsets"]["gravity+lin_acc"]["accuracy"])
    assert "mmbind - incomplete" in paired and paired["mmbind - incomplete"]["n"] == 1
    # every label of the training subjects, even on the quick schedule, is far above chance on six classes
    assert seed["all_labels"]["subsets"]["gravity+lin_acc"]["accuracy"] > 1 / 6 + 0.3
    pairs = res["per_seed"][0]["pairs"]
    assert pairs and pairs[0]["groups"] == ["gyro-linacc", "gyro-gravity"] and pairs[0]["pairs"] > 0
    # six activities: binding through gyro must beat chance clearly, but cannot be perfect
    assert 1 / 6 + 0.1 < pairs[0]["pair_accuracy"] < 1.0
    assert "MMBind on hapt / sensor-bind" in capsys.readouterr().out
    # self-training reads what each method aligned on: MMBind's pool holds the pseudo-pairs besides incomplete's windows
    pools = {m: seed[m]["validation"]["self_train"]["pool"] for m in ("incomplete", "mmbind")}
    assert pools["mmbind"] == pools["incomplete"] + pairs[0]["pairs"]
    assert "self_train" not in seed["lower_bound"]["validation"]  # the lower bound learns from its labels alone
    _check_pseudo_label_scores(seed, res["summary"]["methods"])
    # the self-trained lower bound reads the labelled node's own unlabelled windows: a pool smaller than incomplete's, which holds every node's
    own = seed["self_trained_lower_bound"]["validation"]["self_train"]
    assert 0 < own["pool"] < pools["incomplete"] and own["rounds"][0]["judged"] == own["rounds"][0]["pseudo_labelled"]
    assert {"self_trained_lower_bound - lower_bound", "mmbind - self_trained_lower_bound"} <= set(paired)


def _check_pseudo_label_scores(seed: dict, summary: dict) -> None:
    """Every pseudo-labelled sample is scored against the true labels of its windows. The quick schedule's heads are
    weak (test accuracy about 0.4; measured: natural pseudo-labels 0.44-0.52 right): a judge that compared a label with
    itself would say 1.0, one that compared it with a wrong window's label would sit near chance (1/6)."""
    for m in ("incomplete", "mmbind"):
        rounds = seed[m]["validation"]["self_train"]["rounds"]
        for r in rounds:
            assert r["judged"] == r["pseudo_labelled"] > 0
            assert 1 / 6 + 0.15 < r["pseudo_label_accuracy_natural"] < 0.8, r
        assert summary[m]["self_train"][0]["pseudo_label_accuracy"]["mean"] == rounds[0]["pseudo_label_accuracy"]
    for r in seed["mmbind"]["validation"]["self_train"]["rounds"]:
        # a pair is right only when both its windows are of its class: never more often than either window alone
        assert r["pseudo_label_accuracy_pseudo_pairs"] <= min(r["pseudo_pairs_by_modality"].values()), r


def test_sensor_bind_end_to_end_self_trains_on_raw_pseudo_pairs(tmp_path):
    assert main(["experiment", "mmbind", "--scenario", "sensor-bind", "--seeds", "1", "--quick", "--out", str(tmp_path),
                 "--methods", "incomplete,mmbind", "--finetune-encoders"]) == 0  # fmt: skip
    res = _check_results(tmp_path, ["incomplete", "mmbind"], "gravity+lin_acc")
    seed = res["per_seed"][0]
    pools = {m: seed["methods"][m]["validation"]["self_train"]["pool"] for m in ("incomplete", "mmbind")}
    assert pools["mmbind"] == pools["incomplete"] + seed["pairs"][0]["pairs"]
    _check_pseudo_label_scores(seed["methods"], res["summary"]["methods"])  # the raw windows' true labels are known too


def test_ground_truth_scores_natural_samples_and_pseudo_pairs_by_every_window_they_hold():
    from common.samples import SampleSet
    from simulations.experiments.mmbind import GroundTruth

    x, y, unknown = np.zeros((4, 2), np.float32), np.zeros((3, 2), np.float32), np.zeros((2, 2), np.float32)
    truth = GroundTruth()
    truth.add(x, np.array([0, 1, 2, 3]))
    truth.add(y, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="2 labels for 3 windows"):
        truth.add(y, np.array([0, 1]))
    natural = SampleSet.natural({"x": x}, np.array([0, 1, 0, 3]))  # 3 of 4 right
    pairs = SampleSet({"x": x, "y": y}, {"x": np.array([0, 1]), "y": np.array([0, 2])}, np.ones(2), np.array([0, 1]), kind=np.ones(2, np.int8))
    stranger = SampleSet.natural({"x": unknown}, np.array([5, 5]))  # windows of an array never added: not judged
    pseudo = SampleSet.concat([natural, pairs, stranger])  # x's windows from two arrays: a RowStack
    got = truth.judge(pseudo)
    # the second pair joins a class-1 window to a class-2 one: labelled 1, it is right for neither
    assert got == {"judged": 6, "pseudo_label_accuracy": round(4 / 6, 4), "pseudo_label_accuracy_natural": 0.75, "pseudo_label_accuracy_pseudo_pairs": 0.5,
                   "pseudo_pairs_by_modality": {"x": 1.0, "y": 0.5}}  # fmt: skip


def test_pair_rule_and_pseudo_share_reach_the_run_and_its_record(tmp_path):
    out = tmp_path / "constant"
    assert main(["experiment", "mmbind", "--scenario", "sensor-bind", "--seeds", "1", "--quick", "--methods", "mmbind",
                 "--pair-rule", "constant", "--pseudo-share", "0.25", "--out", str(out)]) == 0  # fmt: skip
    res = _check_results(out, ["mmbind"], "gravity+lin_acc")
    assert res["settings"]["weighting"]["rule"] == "constant" and res["settings"]["align"]["pseudo_share"] == 0.25
    (pairs,) = res["per_seed"][0]["pairs"]
    assert pairs["mean_weight"] == 1.0 and set(pairs["report"]["weight"].values()) == {1.0}  # constant: every kept pair weighs 1


def test_label_bind_on_a_generic_npz(tmp_path):
    hapt = load_dataset("hapt", virtual=False)
    rng = np.random.default_rng(0)
    rows = np.sort(np.concatenate([rng.choice(np.flatnonzero(hapt.subject == s), 20, replace=False) for s in hapt.subjects]))
    small = WindowDataset(X={m: hapt.X[m][rows] for m in ("acc", "gyro")}, y=hapt.y[rows], subject=hapt.subject[rows],
                          label_names=hapt.label_names, rates=hapt.rates)
    path = small.save(tmp_path / "small.npz")
    out = tmp_path / "out"
    assert main(["experiment", "mmbind", "--dataset", str(path), "--scenario", "label-bind", "--seeds", "1", "--quick", "--out", str(out),
                 "--methods", "unimodal,incomplete,mmbind,upper_bound"]) == 0
    res = _check_results(out, ["unimodal", "incomplete", "mmbind", "upper_bound"], "acc+gyro")
    # label binding pairs same-class windows only
    assert res["per_seed"][0]["pairs"][0]["pair_accuracy"] == 1.0
    assert res["few_label_step"] == "frozen encoders, on features"
    # the same, with the few-label step end to end on raw windows (pseudo-pairs as raw windows too)
    assert main(["experiment", "mmbind", "--dataset", str(path), "--scenario", "label-bind", "--seeds", "1", "--quick", "--out", str(out / "e2e"),
                 "--methods", "unimodal,mmbind,upper_bound", "--finetune-encoders"]) == 0
    tuned = _check_results(out / "e2e", ["unimodal", "mmbind", "upper_bound"], "acc+gyro")
    assert tuned["few_label_step"] == "end to end on raw windows (encoders fine-tuned)"
    assert tuned["per_seed"][0]["pairs"] == res["per_seed"][0]["pairs"]  # same split, same encoders, same pairs


def test_bad_input_is_refused_before_training(tmp_path, capsys):
    assert main(["experiment", "mmbind", "--scenario", "no-such", "--quick", "--out", str(tmp_path)]) == 2
    assert "no shipped scenario 'no-such'" in capsys.readouterr().err
    (tmp_path / "s.toml").write_text(
        'binding = "sensor"\nshared = "gyro"\n[[group]]\nname = "a"\nmodalities = ["gyro", "mmwave"]\nshare = 0.5\n'
        '[validation]\nmodalities = ["acc"]\nshare = 0.1\n[test]\nmodalities = ["acc"]\nshare = 0.2\n'
    )
    assert main(["experiment", "mmbind", "--scenario", str(tmp_path / "s.toml"), "--quick", "--out", str(tmp_path)]) == 2
    assert "'mmwave', which dataset 'hapt' does not have" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, X_acc=np.full((4, 8, 3), np.nan, np.float32), y=np.zeros(4, int), subject=np.arange(4))
    assert main(["experiment", "mmbind", "--dataset", str(bad), "--quick", "--out", str(tmp_path)]) == 2
    assert "NaN or Inf" in capsys.readouterr().err
    assert main(["experiment", "mmbind", "--methods", "magic", "--quick", "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "results.json").exists()


def test_binding_check_quick(tmp_path, capsys):
    assert main(["experiment", "binding", "--scenario", "sensor-bind", "--seeds", "1", "--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["experiment"] == "binding" and len(res["commit"]) >= 40 and res["seeds"] == 1
    entry = res["per_seed"][0]["pairs"][0]
    assert sorted(entry["groups"]) == ["gyro-gravity", "gyro-linacc"]
    for name in ("raw", "centred"):
        rep = entry[name]
        assert 1 / 6 + 0.1 < rep["pair_accuracy"] < 1.0  # through gyro: far above chance, never perfect
        assert sum(map(sum, rep["confusion"])) == rep["pairs"] and len(rep["per_class_accuracy"]) == 6
        assert rep["weight"]["q10"] <= rep["weight"]["q50"] <= rep["weight"]["q90"]
    assert "Sensor binding on hapt / sensor-bind" in capsys.readouterr().out
    assert main(["experiment", "binding", "--scenario", "label-bind", "--seeds", "1", "--quick", "--out", str(tmp_path / "x")]) == 2
    assert "binds by label" in capsys.readouterr().err


def test_from_scratch_methods_alone_skip_pretraining(tmp_path, monkeypatch):
    from simulations.experiments import mmbind

    def no_pretraining(*a, **k):
        raise AssertionError("the from-scratch methods need no encoders")

    monkeypatch.setattr(mmbind, "pretrain_encoders", no_pretraining)
    assert main(["experiment", "mmbind", "--scenario", "fleet-labelled", "--methods", "all_labels", "--seeds", "1", "--quick", "--out", str(tmp_path)]) == 0
    res = _check_results(tmp_path, ["all_labels"], "gravity+gyro+lin_acc")
    assert res["per_seed"][0]["pairs"] == []
    assert res["per_seed"][0]["methods"]["all_labels"]["subsets"]["gravity+gyro+lin_acc"]["accuracy"] > 1 / 6 + 0.3  # every label: far above chance
