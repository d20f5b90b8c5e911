"""The cross-modal figures of an aligned space: modality gap, window recall with overlapping neighbours, transfer."""

from __future__ import annotations

import numpy as np
import pytest

from common.crossmodal import cross_modal_transfer, modality_gap, modality_gaps, ordered_pairs, overlapping, window_recall


def test_modality_gap_on_a_constructed_case():
    za = np.array([[1.0, 0.0], [0.0, 1.0]])
    zb = -za
    g = modality_gap(za, zb)
    # centroids (0.5, 0.5) and (-0.5, -0.5): distance sqrt(2); each row lies sqrt(0.5) from its centroid
    assert g["distance"] == pytest.approx(np.sqrt(2))
    assert g["spread_a"] == pytest.approx(np.sqrt(0.5)) and g["spread_b"] == pytest.approx(np.sqrt(0.5))
    assert g["gap"] == pytest.approx(2.0)
    # rows are L2-normalised first: scaling a row changes nothing
    assert modality_gap(za * np.array([[3.0], [0.5]]), zb)["gap"] == pytest.approx(2.0)


def test_modality_gap_is_small_for_one_distribution_and_large_for_shifted_clouds():
    rng = np.random.default_rng(0)
    same = modality_gap(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)))["gap"]
    shift = np.zeros(8)
    shift[0] = 6.0
    apart = modality_gap(rng.normal(size=(400, 8)) + shift, rng.normal(size=(400, 8)) - shift)["gap"]
    assert same < 0.3 and apart > 2.0
    gaps = modality_gaps({"b": rng.normal(size=(5, 3)), "a": rng.normal(size=(6, 3)), "c": rng.normal(size=(4, 3))})
    assert list(gaps) == ["a-b", "a-c", "b-c"]
    with pytest.raises(ValueError, match="all zero"):
        modality_gap(np.zeros((2, 3)), np.ones((2, 3)))


def test_window_recall_counts_overlapping_windows_of_the_same_recording_only():
    # six windows of length 4: recording 0 starts at samples 0, 2, 4; recording 1 at 4, 6, 10
    recording = np.array([0, 0, 0, 1, 1, 1])
    start = np.array([0, 2, 4, 4, 6, 10])
    assert overlapping(recording, start, 4, np.array([0, 0, 0, 3, 4]), np.array([1, 2, 3, 5, 5])).tolist() == [True, False, False, False, False]
    eye = np.eye(6, dtype=np.float32)
    # each query's top match in the other modality: 0->1 (neighbour), 1->2 (neighbour), 2->3 (same start, other
    # recording: a miss), 3->3 (itself), 4->5 (same recording, 4 samples apart: no overlap), 5->4 (likewise)
    match = [1, 2, 3, 3, 5, 4]
    zb = np.zeros_like(eye)
    for q, m in enumerate(match):
        zb[m, q] = 1.0
    r = window_recall(eye, zb, recording, start, window=4)
    assert r["a_to_b_strict"] == pytest.approx(1 / 6)  # only query 3 finds itself
    assert r["a_to_b_neighbours"] == pytest.approx(3 / 6)  # 0 and 1 find a neighbour, 3 itself
    assert r["neighbours"] == pytest.approx((r["a_to_b_neighbours"] + r["b_to_a_neighbours"]) / 2)
    # identical embeddings: every query finds itself
    assert window_recall(eye, eye, recording, start, 4)["strict"] == 1.0
    with pytest.raises(ValueError, match="one value per row"):
        window_recall(eye, eye, recording[:5], start, 4)


def test_cross_modal_transfer_reads_the_other_modality_only_through_a_shared_space():
    rng = np.random.default_rng(0)
    k, d = 4, 16
    centres = rng.normal(size=(k, d)) * 3

    def cloud(y):
        return centres[y] + rng.normal(size=(len(y), d))

    y_tr, y_te = rng.integers(0, k, 120), rng.integers(0, k, 300)
    t = cross_modal_transfer({"a": cloud(y_tr), "b": cloud(y_tr)}, y_tr, {"a": cloud(y_te), "b": cloud(y_te)}, y_te, k, seed=0)
    assert set(t) == {"a->a", "a->b", "b->a", "b->b"}
    assert t["a->b"]["accuracy"] > 0.9 and t["b->a"]["accuracy"] > 0.9
    # the second modality in its own region (its class centres permuted and shifted): the head trained on a cannot read b
    perm = np.roll(np.arange(k), 1)
    apart_tr = {"a": cloud(y_tr), "b": centres[perm][y_tr] + rng.normal(size=(120, d))}
    apart_te = {"a": cloud(y_te), "b": centres[perm][y_te] + rng.normal(size=(300, d))}
    t2 = cross_modal_transfer(apart_tr, y_tr, apart_te, y_te, k, seed=0)
    assert t2["a->a"]["accuracy"] > 0.9 and t2["b->b"]["accuracy"] > 0.9  # each modality alone is easy
    assert t2["a->b"]["accuracy"] < 0.2 and t2["b->a"]["accuracy"] < 0.2  # across them the labels are shifted by one class
    assert cross_modal_transfer(apart_tr, y_tr, apart_te, y_te, k, seed=0) == t2  # seeded
    assert ordered_pairs(["b", "a"]) == [("a", "b"), ("b", "a")]
    with pytest.raises(ValueError, match="train holds"):
        cross_modal_transfer(apart_tr, y_tr, {"a": apart_te["a"]}, y_te, k)


def test_projection_plots_carry_the_modality_gap_before_and_after_in_their_titles(tmp_path, monkeypatch):
    import torch

    from common.evaluate import embed
    from common.modalities import inertial
    from common.towers import AlignedModel, TowerConfig
    from simulations import plots

    tower = TowerConfig(width=8, feature_dim=16, adapter_hidden=32, embed_dim=16, prototype_hidden=32)
    torch.manual_seed(0)
    before = AlignedModel({m: inertial(m) for m in ("gyro", "lin_acc")}, tower)
    after = AlignedModel({m: inertial(m) for m in ("gyro", "lin_acc")}, tower)
    after.adapters["lin_acc"].load_state_dict(after.adapters["gyro"].state_dict())  # one space: no gap
    x = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    feats = {"gyro": x, "lin_acc": x}
    gaps = plots.gaps_before_after(before, after, feats, ["gyro", "lin_acc"])
    z = embed(before, feats)
    assert gaps["before"]["gyro-lin_acc"] == pytest.approx(modality_gap(z["gyro"], z["lin_acc"])["gap"]) and gaps["before"]["gyro-lin_acc"] > 0.5
    assert gaps["after"]["gyro-lin_acc"] == pytest.approx(0.0, abs=1e-5)
    titles = {}
    real = plots.pyplot()
    monkeypatch.setattr(real.Figure, "savefig", lambda fig, path, **kw: titles.__setitem__(path.name, fig._suptitle.get_text()))
    files = plots.plot_projections(before, after, feats, np.arange(40) % 3, ["a", "b", "c"], ["gyro", "lin_acc"], 30, 250, 0, tmp_path)
    assert [f.name for f in files] == ["projection_before.png", "projection_after.png"]
    assert f"gyro-lin_acc {gaps['before']['gyro-lin_acc']:.2f}" in titles["projection_before.png"]
    assert "gyro-lin_acc 0.00" in titles["projection_after.png"] and "modality gap after" in titles["projection_after.png"]
