"""Real HAPT windows, virtual streams, the generic format, converters and scenarios."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.io import savemat

from common.data import WindowDataset, load_dataset
from common.data.converters import convert, convert_pamap2, convert_utd_mhad
from common.data.scenarios import Scenario, shipped_scenarios, split
from common.data.transforms import add_virtual_streams


@pytest.fixture(scope="module")
def hapt():
    return load_dataset("hapt")


def test_hapt_windows_are_real_and_complete(hapt):
    assert len(hapt) == 10017  # six basic activities, 128-sample windows, 50 % overlap, one label per window
    assert sorted(hapt.subjects.tolist()) == list(range(1, 31))
    assert hapt.modalities == ["acc", "gravity", "gyro", "lin_acc"]
    assert all(x.shape == (len(hapt), 128, 3) for x in hapt.X.values())
    assert np.bincount(hapt.y).tolist() == [1660, 1468, 1317, 1736, 1926, 1910]
    assert hapt.label_names[5] == "lying"
    # a waist phone at rest feels about 1 g
    assert 0.9 < np.linalg.norm(hapt.X["acc"][hapt.y == 5].mean(1), axis=-1).mean() < 1.1


def test_virtual_streams_split_acc_into_gravity_and_motion(hapt):
    np.testing.assert_allclose(hapt.X["gravity"] + hapt.X["lin_acc"], hapt.X["acc"], atol=1e-5)
    # gravity is slow: far less sample-to-sample change than raw acceleration
    assert np.abs(np.diff(hapt.X["gravity"], axis=1)).mean() < 0.1 * np.abs(np.diff(hapt.X["acc"], axis=1)).mean()
    # walking moves; lying does not
    assert hapt.X["lin_acc"][hapt.y == 0].std() > 5 * hapt.X["lin_acc"][hapt.y == 5].std()


def test_virtual_streams_need_acc_at_a_rate():
    ds = WindowDataset(X={"gyro": np.zeros((2, 16, 3), np.float32)}, y=[0, 1], subject=[1, 2])
    assert add_virtual_streams(ds) is ds
    ds = WindowDataset(X={"acc": np.ones((2, 64, 3), np.float32)}, y=[0, 1], subject=[1, 2], rates={"acc": 50.0})
    out = add_virtual_streams(ds)
    assert set(out.X) == {"acc", "gravity", "lin_acc"}
    np.testing.assert_allclose(out.X["gravity"], 1.0, atol=1e-4)


def test_npz_round_trip_and_load_dataset(tmp_path):
    rng = np.random.default_rng(0)
    ds = WindowDataset(X={"acc": rng.normal(size=(6, 32, 3)).astype(np.float32), "skel": rng.normal(size=(6, 16, 9)).astype(np.float32)},
                       y=[0, 1, 2, 0, 1, 2], subject=[1, 1, 2, 2, 3, 3], label_names=["a", "b", "c"], rates={"acc": 50.0})
    path = ds.save(tmp_path / "d.npz")
    back = WindowDataset.load(path)
    assert back.label_names == ["a", "b", "c"] and back.rates == {"acc": 50.0}
    np.testing.assert_array_equal(back.X["skel"], ds.X["skel"])
    full = load_dataset(path)
    assert {"gravity", "lin_acc"} <= set(full.X)
    with pytest.raises(ValueError, match="'hapt' or a path to a .npz"):
        load_dataset(tmp_path / "d.csv")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(X={"acc": np.zeros((3, 8, 3), np.float64)}), "float32"),
        (dict(X={"acc": np.zeros((3, 8), np.float32)}), "windows x time x channels"),
        (dict(X={"acc": np.zeros((2, 8, 3), np.float32)}), "has 2 windows but y has 3"),
        (dict(X={"acc": np.full((3, 8, 3), np.nan, np.float32)}), "NaN or Inf in 3 windows"),
        (dict(X={}), "no modality"),
    ],
)
def test_bad_datasets_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WindowDataset(y=[0, 1, 2], subject=[1, 2, 3], **kwargs)


def test_npz_missing_arrays(tmp_path):
    np.savez(tmp_path / "bad.npz", X_acc=np.zeros((2, 4, 3), np.float32))
    with pytest.raises(ValueError, match="missing array"):
        WindowDataset.load(tmp_path / "bad.npz")


def test_utd_mhad_converter(tmp_path):
    rng = np.random.default_rng(1)
    for a, s, t in [(1, 1, 1), (2, 1, 1), (1, 2, 1), (27, 2, 2)]:
        T = int(rng.integers(100, 180))
        savemat(tmp_path / f"a{a}_s{s}_t{t}_inertial.mat", {"d_iner": rng.normal(size=(T, 6))})
        savemat(tmp_path / f"a{a}_s{s}_t{t}_skeleton.mat", {"d_skel": rng.normal(size=(20, 3, T // 2))})
    out = convert("utd-mhad", tmp_path, tmp_path / "utd.npz")
    ds = WindowDataset.load(out)
    assert ds.X["acc"].shape == (4, 128, 3) and ds.X["skeleton"].shape == (4, 64, 60)
    assert sorted(ds.y.tolist()) == [0, 0, 1, 26] and sorted(set(ds.subject.tolist())) == [1, 2]
    assert ds.label_names[26] == "squat"
    savemat(tmp_path / "a3_s1_t1_inertial.mat", {"wrong": np.zeros((10, 6))})
    savemat(tmp_path / "a3_s1_t1_skeleton.mat", {"d_skel": np.zeros((20, 3, 10))})
    with pytest.raises(ValueError, match="no variable 'd_iner'"):
        convert_utd_mhad(tmp_path)


def _pamap2_rows(n: int, activity: int, rng) -> np.ndarray:
    rows = rng.normal(size=(n, 54))
    rows[:, 0] = np.arange(n) / 100.0
    rows[:, 1] = activity
    rows[:, 2] = np.nan  # heart rate is mostly missing in the real files
    return rows


def test_pamap2_converter(tmp_path):
    rng = np.random.default_rng(2)
    for sid in (101, 102):
        rows = np.concatenate([_pamap2_rows(600, 4, rng), _pamap2_rows(300, 0, rng), _pamap2_rows(600, 24, rng)])
        rows[650, 5] = np.nan  # inside the transient part: that span is dropped anyway
        np.savetxt(tmp_path / f"subject{sid}.dat", rows, fmt="%.5f")
    ds = convert_pamap2(tmp_path)
    assert {"acc", "gyro", "hand_acc", "ankle_gyro"} <= set(ds.X)
    assert set(ds.label_names[i] for i in np.unique(ds.y)) == {"walking", "rope jumping"}
    assert ds.X["acc"].shape[1:] == (128, 3) and set(ds.subject.tolist()) == {101, 102}
    np.savetxt(tmp_path / "subject103.dat", np.zeros((10, 12)))
    with pytest.raises(ValueError, match="54 columns"):
        convert_pamap2(tmp_path)


def test_shipped_scenarios_split_by_subject(hapt):
    assert {"sensor-bind", "label-bind"} <= set(shipped_scenarios())
    for name in ("sensor-bind", "label-bind"):
        sc = Scenario.load(name)
        a, b = split(sc, hapt, seed=3), split(sc, hapt, seed=3)
        seen: set[int] = set()
        for part in a.parts.values():
            assert part.subjects and not (seen & set(part.subjects))
            seen |= set(part.subjects)
            assert set(hapt.subject[part.rows]) == set(part.subjects)
            np.testing.assert_array_equal(part.rows, b.parts[part.group.name].rows)
        assert seen == set(range(1, 31))
    assert split(sc, hapt, 0).parts["test"].subjects != split(sc, hapt, 1).parts["test"].subjects
    lab = split(Scenario.load("sensor-bind"), hapt, 0).parts["labelled"]
    assert lab.labelled.sum() == 120


def test_bad_scenarios_are_refused_before_training(hapt, tmp_path):
    base = Scenario.load("sensor-bind")
    bad = Scenario(name="x", groups=base.groups[:2] + [base.group("validation"), base.group("test")], shared="gyro")
    bad.groups[0].modalities = ["gyro", "magnetometer"]
    with pytest.raises(ValueError, match="'magnetometer', which dataset 'hapt' does not have"):
        bad.check_dataset(hapt)
    with pytest.raises(ValueError, match="subject 3 is in both"):
        Scenario.from_dict({"shared": "gyro", "group": [{"name": "a", "modalities": ["gyro"], "subjects": [1, 3]}, {"name": "b", "modalities": ["gyro"], "subjects": [3]}],
                            "validation": {"modalities": ["gyro"], "share": 0.1}, "test": {"modalities": ["gyro"], "share": 0.1}})
    with pytest.raises(ValueError, match="add up to 1.300"):
        Scenario.from_dict({"shared": "gyro", "group": [{"name": "a", "modalities": ["gyro"], "share": 0.8}],
                            "validation": {"modalities": ["gyro"], "share": 0.3}, "test": {"modalities": ["gyro"], "share": 0.2}})
    with pytest.raises(ValueError, match="no test group"):
        Scenario.from_dict({"shared": "gyro", "group": [{"name": "a", "modalities": ["gyro"], "share": 0.5}], "validation": {"modalities": ["gyro"], "share": 0.1}})
    (tmp_path / "s.toml").write_text('shared = "gyro"\nbogus = 1\n')
    with pytest.raises(ValueError, match="unknown keys"):
        Scenario.load(tmp_path / "s.toml")
    with pytest.raises(ValueError, match="no shipped scenario 'nope'"):
        Scenario.load("nope")


def test_a_scenarios_objective_is_checked_and_followed_by_fleets_and_experiments(tmp_path):
    import argparse

    from simulations.cli import _objective
    from simulations.fleet import fleet_config

    tables = {"shared": "gyro", "group": [{"name": "a", "modalities": ["gyro"], "share": 0.5}],
              "validation": {"modalities": ["gyro"], "share": 0.1}, "test": {"modalities": ["gyro"], "share": 0.1}}  # fmt: skip
    with pytest.raises(ValueError, match="objective must be one of contrastive, masked, cross-modal, got 'simclr'"):
        Scenario.from_dict({**tables, "objective": "simclr"})
    assert Scenario.from_dict(tables).objective == ""  # none named: the settings' own
    assert Scenario.load("sensor-bind").objective == "cross-modal"  # chosen on its validation (docs/results.md)
    cfg, _, _ = fleet_config("hapt", "sensor-bind", None, 0, tmp_path, True, None, None)
    assert cfg.objective_for(Scenario.load("sensor-bind").objective) == "cross-modal"  # what CampaignState.start runs and records
    cfg, _, _ = fleet_config("hapt", "sensor-bind", None, 0, tmp_path, True, None, None, pretrain_objective="masked")
    assert cfg.objective_for(Scenario.load("sensor-bind").objective) == "masked"  # a run config given wins
    cfg, _, _ = fleet_config("hapt", "fleet-labelled", None, 0, tmp_path, True, None, None)
    assert cfg.objective_for(Scenario.load("fleet-labelled").objective) == "contrastive"
    with pytest.raises(ValueError, match="pretraining objective must be one of"):
        fleet_config("hapt", "sensor-bind", None, 0, tmp_path, True, None, None, pretrain_objective="simclr")
    assert _objective(argparse.Namespace(objective="", scenario="sensor-bind")) == "cross-modal"
    assert _objective(argparse.Namespace(objective="masked", scenario="sensor-bind")) == "masked"
    assert _objective(argparse.Namespace(objective="", scenario="label-bind")) == ""
