"""Scenario settings that federated benchmarks vary: label skew, missing modalities, noisy labels, stragglers.

Each shapes the nodes of a training group (``node_agent.data.node_spec_for``);
these tests check each on a synthetic dataset: nothing held twice or lost,
the effect is the one asked for, the draws are seeded, and bad values are
refused by name. A whole campaign with all of them is in test_flower_sim.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from common.data.dataset import WindowDataset
from common.data.scenarios import Scenario, split
from node_agent.data import fleet_layout, flip_labels, kept_modalities, label_skew_rows, node_spec_for

N_CLASSES = 6


def _dataset(n_subjects: int = 20, per_subject: int = 60) -> WindowDataset:
    rng = np.random.default_rng(0)
    n = n_subjects * per_subject
    X = {m: rng.normal(size=(n, 16, 3)).astype(np.float32) for m in ("a", "b", "c")}
    return WindowDataset(X=X, y=rng.integers(0, N_CLASSES, n), subject=np.repeat(np.arange(1, n_subjects + 1), per_subject),
                         label_names=[f"k{i}" for i in range(N_CLASSES)], name="synth")  # fmt: skip


def _scenario(**phone) -> Scenario:
    group = {"name": "phone", "modalities": ["a", "b", "c"], "share": 0.6, "nodes": 12, "labelled": 1.0, **phone}
    return Scenario.from_dict({"binding": "sensor", "shared": "a", "group": [group], "validation": {"modalities": ["a", "b", "c"], "share": 0.1},
                               "test": {"modalities": ["a", "b", "c"], "share": 0.3}}, name="synth-fleet")  # fmt: skip


def _phone_specs(sc: Scenario, ds: WindowDataset, seed: int = 0):
    sp = split(sc, ds, seed)
    return [node_spec_for(sc, ds, seed, p, split_=sp) for p, (g, _, _) in enumerate(fleet_layout(sc)) if g == "phone"], sp


def _classes_per_node(specs, ds) -> float:
    return float(np.mean([len(np.unique(ds.y[s.rows])) for s in specs]))


def test_label_skew_spreads_every_window_once_with_fewer_classes_per_node_the_smaller_alpha() -> None:
    ds = _dataset()
    specs, sp = _phone_specs(_scenario(label_skew=0.1), ds)
    rows = np.concatenate([s.rows for s in specs])
    assert len(rows) == len(np.unique(rows)) == len(sp.parts["phone"].rows)  # every window of the group, none twice
    assert all(len(s.rows) > 0 for s in specs)
    skewed = _classes_per_node(specs, ds)
    mild = _classes_per_node(_phone_specs(_scenario(label_skew=100.0), ds)[0], ds)
    by_subject = _classes_per_node(_phone_specs(_scenario(), ds)[0], ds)
    assert skewed < 4.5 and mild >= 5.5 and by_subject >= 5.5, (skewed, mild, by_subject)
    again, _ = _phone_specs(_scenario(label_skew=0.1), ds)
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(specs, again))  # seeded
    other, _ = _phone_specs(_scenario(label_skew=0.1), ds, seed=1)
    assert not all(np.array_equal(np.sort(ds.y[a.rows]), np.sort(ds.y[b.rows])) for a, b in zip(specs, other))


def test_label_skew_uses_flower_datasets_partitioner_and_refuses_too_few_windows() -> None:
    labels = np.repeat(np.arange(3), 20)
    parts = label_skew_rows(labels, 4, 0.5, seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(60))
    with pytest.raises(ValueError, match="3 windows cannot be spread over 4 nodes"):
        label_skew_rows(labels[:3], 4, 0.5, seed=3)


def test_missing_modality_removes_whole_modalities_never_all() -> None:
    ds = _dataset()
    specs, _ = _phone_specs(_scenario(missing_modality=0.6), ds)
    assert all(1 <= len(s.modalities) <= 3 for s in specs)
    assert any(s.lost for s in specs) and any(len(s.modalities) < 3 for s in specs)
    for s in specs:
        assert sorted(s.modalities + s.lost) == ["a", "b", "c"]
        data = s.data(ds)
        assert data.modalities() == s.modalities
        for m in s.lost:  # absent, not zero-filled
            with pytest.raises(KeyError, match=f"holds no modality {m!r}"):
                data.windows(m)
    rng = np.random.default_rng(0)
    assert all(kept_modalities(["a", "b"], 0.999, rng) in (["a"], ["b"]) for _ in range(50))


def test_label_noise_flips_the_asked_share_of_visible_labels_to_another_class() -> None:
    ds = _dataset()
    specs, _ = _phone_specs(_scenario(label_noise=0.3, labelled=0.5), ds)
    visible = sum(int((s.labels >= 0).sum()) for s in specs)
    flipped = sum(int(((s.labels >= 0) & (s.labels != ds.y[s.rows])).sum()) for s in specs)
    assert visible == sum(s.n_labelled for s in specs) and abs(flipped / visible - 0.3) < 0.02
    for s in specs:
        assert ((s.labels >= 0) == s.labelled).all()  # hidden labels stay hidden
        assert np.array_equal(s.data(ds).labels(), s.labels)  # what the node's data serves
    y = np.array([0, 1, 2, -1, 0, 1, 2, 0] * 10)
    out = flip_labels(y, 0.5, 3, np.random.default_rng(1))
    changed = out != y
    assert (out[y < 0] == -1).all() and changed.sum() == round(0.5 * (y >= 0).sum()) and (out[changed] >= 0).all()


def test_stragglers_get_a_drawn_delay() -> None:
    ds = _dataset()
    specs, _ = _phone_specs(_scenario(stragglers=0.5, straggler_delay=2.0), ds)
    late = [s.delay for s in specs if s.delay > 0]
    assert 2 <= len(late) <= 10 and all(1.0 <= d <= 3.0 for d in late) and len(set(late)) == len(late)


@pytest.mark.parametrize("setting, message", [
    ({"label_skew": -1.0}, "label_skew"),
    ({"missing_modality": 1.0}, "missing_modality must be in"),
    ({"label_noise": 1.5}, "label_noise must be in"),
    ({"stragglers": 0.5}, "stragglers and straggler_delay go together"),
])  # fmt: skip
def test_bad_settings_are_refused_by_name(setting: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _scenario(**setting)


def test_settings_are_for_training_groups_and_fleets_only() -> None:
    with pytest.raises(ValueError, match="label_noise apply to training groups, not to test"):
        Scenario.from_dict({"binding": "sensor", "shared": "a", "group": [{"name": "g", "modalities": ["a"], "share": 0.5}],
                            "validation": {"modalities": ["a"], "share": 0.1}, "test": {"modalities": ["a"], "share": 0.2, "label_noise": 0.1}})  # fmt: skip
    with pytest.raises(ValueError, match="run it with `edgebind-sim run`"):
        _scenario(label_skew=0.5).require_central()
    _scenario().require_central()
