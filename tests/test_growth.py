"""Babel growth: plans, adaptive weights, EMA, distillation, checkpoints, retrieval, and a quick real run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.evaluate import embed, recall_at_k, retrieval_recall
from common.growth import GrowthConfig, GrowthPlan, PairData, Stage, StageTrainer, grow, latest_checkpoint, load_checkpoint, shipped_plans
from common.losses import adaptive_weights, combine, ema_update, symmetric_info_nce
from common.modalities import inertial
from common.samples import SampleSet
from common.towers import AlignedModel, TowerConfig

TOWER = TowerConfig(width=8, feature_dim=16, adapter_hidden=32, embed_dim=16, prototype_hidden=32)
SOURCES = {"s1": {"gyro", "lin_acc"}, "s2": {"gyro", "gravity"}}


def model_of(mods=("gyro", "lin_acc", "gravity"), seed: int = 0) -> AlignedModel:
    torch.manual_seed(seed)
    return AlignedModel({m: inertial(m) for m in mods}, TOWER)


def plan_of(*stages: Stage) -> GrowthPlan:
    return GrowthPlan(list(stages), name="t")


def paired(n: int, mods: tuple[str, str], seed: int) -> PairData:
    """Two modalities that share a latent: pairs are learnable."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 6))
    feats = {m: (z @ rng.normal(size=(6, 16)) + 0.1 * rng.normal(size=(n, 16))).astype(np.float32) for m in mods}
    return PairData(feats)


def data_of(n: int = 96) -> dict[str, PairData]:
    return {"s1": paired(n, ("gyro", "lin_acc"), 1), "s2": paired(n, ("gyro", "gravity"), 2)}


# --------------------------------------------------------------------------- plans


def test_plan_validation_refuses_bad_plans_before_training():
    good = plan_of(Stage("s1", "gyro", "lin_acc"), Stage("s2", "gyro", "gravity"))
    good.validate(SOURCES)
    assert good.modalities == ["gyro", "lin_acc", "gravity"]
    assert good.trunk_before(1) == ["gyro", "lin_acc"]
    with pytest.raises(ValueError, match="connecting modality 'gravity' is not aligned yet"):
        plan_of(Stage("s1", "gyro", "lin_acc"), Stage("s2", "gravity", "acc")).validate()
    with pytest.raises(ValueError, match="branch modality 'lin_acc' is already in the trunk"):
        plan_of(Stage("s1", "gyro", "lin_acc"), Stage("s1", "gyro", "lin_acc")).validate()
    with pytest.raises(ValueError, match="'acc' is held by no source or party"):
        plan_of(Stage("s1", "gyro", "lin_acc"), Stage("s2", "gyro", "acc")).validate(SOURCES)
    with pytest.raises(ValueError, match="source 's1' holds gyro, lin_acc, not 'gravity'"):
        plan_of(Stage("s1", "gyro", "lin_acc"), Stage("s1", "gyro", "gravity")).validate(SOURCES)
    with pytest.raises(ValueError, match="no source named 's9'"):
        plan_of(Stage("s9", "gyro", "lin_acc")).validate(SOURCES)
    with pytest.raises(ValueError, match="has no stage"):
        plan_of().validate(SOURCES)
    with pytest.raises(ValueError, match="enhance stage aligns two towers of one modality"):
        plan_of(Stage("s1", "gyro", "lin_acc", kind="enhance")).validate(SOURCES)
    # a second tower of a modality is held wherever the modality is
    plan_of(Stage("s1", "gyro", "lin_acc"), Stage("s1", "gyro", "gyro#2", kind="enhance")).validate(SOURCES)


def test_grow_validates_before_training():
    model = model_of()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = plan_of(Stage("s1", "gyro", "lin_acc"), Stage("s2", "lin_acc", "gravity"))
    with pytest.raises(ValueError, match="s2.*holds gravity, gyro, not 'lin_acc'"):
        grow(model, bad, data_of(), GrowthConfig(epochs=1))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_shipped_plans_load_from_toml_and_round_trip(tmp_path):
    assert {"hapt-gyro-trunk", "hapt-gyro-trunk-reversed"} <= set(shipped_plans())
    p = GrowthPlan.from_toml("hapt-gyro-trunk")
    assert [s.pair for s in p.stages] == [("gyro", "lin_acc"), ("gyro", "gravity")]
    assert [s.source for s in p.stages] == ["stage1", "stage2"]
    r = GrowthPlan.from_toml("hapt-gyro-trunk-reversed")
    assert [s.pair for s in r.stages] == [("gyro", "gravity"), ("gyro", "lin_acc")]
    assert [s.pair for s in p.reordered().stages] == [s.pair for s in r.stages]
    assert GrowthPlan.from_dict(p.to_dict()).to_dict() == p.to_dict()
    f = tmp_path / "mine.toml"
    f.write_text('name = "mine"\n[[stage]]\ntrunk = ["a", "b"]\nsource = "x"\n[[stage]]\nbranch = "c"\nconnecting = "a"\nsource = "y"\n')
    assert [s.pair for s in GrowthPlan.from_toml(f).stages] == [("a", "b"), ("a", "c")]
    f.write_text('[[stage]]\ntrunk = ["a", "b"]\nsource = "x"\n[[stage]]\nbranch = "c"\nsource = "y"\n')
    with pytest.raises(ValueError, match="stage 2: needs branch and connecting"):
        GrowthPlan.from_toml(f)
    with pytest.raises(ValueError, match="no shipped plan 'nope'"):
        GrowthPlan.from_toml("nope")


# --------------------------------------------------------------------------- adaptive weights


def _stage_losses(model: AlignedModel, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    fa, fb = torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)
    z = model.embed_features({"gyro": fa, "lin_acc": fb})
    t = symmetric_info_nce(z["gyro"], z["lin_acc"], 0.07)
    return t["a_from_b"], t["b_from_a"]


def _groups(model: AlignedModel):
    norm = list(model.adapters["gyro"].parameters()) + list(model.adapters["lin_acc"].parameters())
    return norm, list(model.prototype.parameters())


def test_adaptive_weights_are_finite_sum_to_one_and_leave_no_grad():
    model = model_of()
    norm, extra = _groups(model)
    l_ab, l_ba = _stage_losses(model)
    w_ab, w_ba, g_ab, g_ba = adaptive_weights(l_ab, l_ba, norm, extra)
    assert torch.isfinite(w_ab) and torch.isfinite(w_ba)
    assert 0 < float(w_ab) < 1 and float(w_ab + w_ba) == pytest.approx(1.0, abs=1e-6)
    assert len(g_ab) == len(g_ba) == len(norm) + len(extra)
    assert all(p.grad is None for p in model.parameters())  # the probe touched no .grad
    # w = 1/||g|| over the two adapters, normalised
    n_ab = torch.sqrt(sum((g**2).sum() for g in g_ab[: len(norm)]))
    n_ba = torch.sqrt(sum((g**2).sum() for g in g_ba[: len(norm)]))
    assert float(w_ab) == pytest.approx(float((1 / n_ab) / (1 / n_ab + 1 / n_ba)), rel=1e-5)


def test_zero_gradient_norm_falls_back_to_equal_weights():
    p = torch.nn.Parameter(torch.ones(3))
    l_ab = (p * 0).sum()
    l_ba = (p**2).sum()
    w_ab, w_ba, _, _ = adaptive_weights(l_ab, l_ba, [p])
    assert float(w_ab) == float(w_ba) == 0.5


def test_update_is_the_weighted_sum_of_the_two_directions_gradients():
    model = model_of()
    norm, extra = _groups(model)
    params = norm + extra
    # separately computed reference: each direction on its own graph
    ref_ab = torch.autograd.grad(_stage_losses(model)[0], params)
    ref_ba = torch.autograd.grad(_stage_losses(model)[1], params)
    l_ab, l_ba = _stage_losses(model)
    w_ab, w_ba, g_ab, g_ba = adaptive_weights(l_ab, l_ba, norm, extra)
    upd = combine(w_ab, w_ba, g_ab, g_ba)
    for u, a, b in zip(upd, ref_ab, ref_ba):
        torch.testing.assert_close(u, (w_ab * a + w_ba * b) / 2, rtol=1e-5, atol=1e-7)
    # and it is the gradient of the weighted loss (w held fixed)
    l_ab, l_ba = _stage_losses(model)
    direct = torch.autograd.grad((w_ab * l_ab + w_ba * l_ba) / 2, params)
    for u, d in zip(upd, direct):
        torch.testing.assert_close(u, d, rtol=1e-5, atol=1e-7)


def test_trainer_step_applies_that_update_and_trains_only_its_towers():
    model = model_of()
    st = Stage("s1", "gyro", "lin_acc")
    cfg = GrowthConfig(lr=1e-2, weight_decay=0.0, ema=False, kd=False)
    trainer = StageTrainer(model, st, cfg, "cpu")
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("encoders.", "adapters.gravity"))}
    g = torch.Generator().manual_seed(3)
    fa, fb = torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)
    # expected: one AdamW step on the combined gradient, computed on a copy
    import copy

    twin = copy.deepcopy(model)
    z = twin.embed_features({"gyro": fa, "lin_acc": fb})
    t = symmetric_info_nce(z["gyro"], z["lin_acc"], cfg.temperature)
    norm, extra = _groups(twin)
    w_ab, w_ba, g_ab, g_ba = adaptive_weights(t["a_from_b"], t["b_from_a"], norm, extra)
    opt = torch.optim.AdamW(norm + extra, lr=cfg.lr, weight_decay=0.0)
    for p, u in zip(norm + extra, combine(w_ab, w_ba, g_ab, g_ba)):
        p.grad = u
    opt.step()
    terms = trainer.step(fa, fb)
    assert float(terms["w_ab"]) == pytest.approx(float(w_ab))
    assert trainer.record.weights == [[pytest.approx(float(w_ab)), pytest.approx(float(w_ba))]]
    for (k, v), (_, v2) in zip(model.state_dict().items(), twin.state_dict().items()):
        torch.testing.assert_close(v, v2, rtol=1e-5, atol=1e-6, msg=k)
    for k, v in frozen.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert all(p.grad is None for p in model.parameters())


def test_distillation_term_pulls_the_connecting_tower_back():
    """With distillation, the connecting tower's embeddings drift less during a growth stage."""
    data = data_of(128)
    plan1 = plan_of(Stage("s1", "gyro", "lin_acc"))
    base = model_of()
    grow(base, plan1, {"s1": data["s1"]}, GrowthConfig(epochs=3, batch_size=32))
    x = data["s1"].features["gyro"]
    z0 = embed(base, {"gyro": x})["gyro"]
    drift = {}
    for kd in (False, True):
        import copy

        m = copy.deepcopy(base)
        tr = StageTrainer(m, Stage("s2", "gyro", "gravity"), GrowthConfig(epochs=4, batch_size=32, kd=kd, kd_weight=10.0, ema=False), "cpu", trunk=["gyro", "lin_acc"], index=1)
        rec = tr.run(data["s2"])
        assert ("kd_loss" in rec.losses[-1]) == kd
        drift[kd] = float(1 - (embed(m, {"gyro": x})["gyro"] * z0).sum(1).mean())
    assert drift[True] < 0.5 * drift[False]


# --------------------------------------------------------------------------- EMA


def test_ema_arithmetic_on_a_tiny_module():
    ema, online = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        ema.weight.fill_(1.0)
        ema.bias.fill_(0.0)
        online.weight.fill_(3.0)
        online.bias.fill_(-2.0)
    ema_update(ema, online, 0.9)
    torch.testing.assert_close(ema.weight, torch.full((1, 2), 0.9 * 1 + 0.1 * 3))
    torch.testing.assert_close(ema.bias, torch.tensor([0.1 * -2.0]))
    ema_update(ema, online, 0.9)
    torch.testing.assert_close(ema.weight, torch.full((1, 2), 0.9 * 1.2 + 0.1 * 3))


def test_growth_stage_ends_with_the_ema_prototype():
    import copy

    base = model_of()
    data = data_of(64)
    st = Stage("s2", "gyro", "gravity")
    cfg = GrowthConfig(epochs=1, batch_size=32, kd=False, ema=True, ema_momentum=0.5)
    m = copy.deepcopy(base)
    tr = StageTrainer(m, st, cfg, "cpu", trunk=["gyro", "lin_acc"], index=1)
    expected = copy.deepcopy(base.prototype)
    fa = torch.from_numpy(data["s2"].features["gyro"])
    fb = torch.from_numpy(data["s2"].features["gravity"])
    for i in (0, 32):
        tr.step(fa[i : i + 32], fb[i : i + 32])
        ema_update(expected, m.prototype, 0.5)
    online = copy.deepcopy(m.prototype.state_dict())
    tr.finish()
    for k, v in m.prototype.state_dict().items():
        torch.testing.assert_close(v, expected.state_dict()[k])
        assert not torch.equal(v, online[k])
    assert all(p.requires_grad for p in m.parameters())  # finish() restores what was trainable


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_and_resume_equals_an_uninterrupted_run(tmp_path):
    plan = plan_of(Stage("s1", "gyro", "lin_acc"), Stage("s2", "gyro", "gravity"))
    data = data_of(80)
    cfg = GrowthConfig(epochs=2, batch_size=32, seed=5)

    full = model_of()
    res_full = grow(full, plan, data, cfg, checkpoint_dir=tmp_path / "a")
    assert [p.name for p in sorted((tmp_path / "a").glob("*.pt"))] == ["stage-1.pt", "stage-2.pt"]

    # interrupted after stage 1: only its checkpoint exists
    part = model_of()
    grow(part, plan_of(plan.stages[0]), {"s1": data["s1"]}, cfg, checkpoint_dir=tmp_path / "tmp")
    ck, state = load_checkpoint(tmp_path / "tmp" / "stage-1.pt")
    assert state["stage"] == 1 and state["aligned"] == ["gyro", "lin_acc"]
    assert isinstance(state["plan"], GrowthPlan) and isinstance(state["config"], GrowthConfig)
    assert len(state["weight_history"]["1"]) == res_full.records[0].steps
    for k, v in part.state_dict().items():  # the round trip gives the same model
        torch.testing.assert_close(ck.state_dict()[k], v)

    # resume from a copy of the full run's stage-1 checkpoint
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "stage-1.pt").write_bytes((tmp_path / "a" / "stage-1.pt").read_bytes())
    resumed = model_of(seed=99)  # different init: the checkpoint must override it
    resumed.encoders.load_state_dict(full.encoders.state_dict())
    res = grow(resumed, plan, data, cfg, checkpoint_dir=tmp_path / "b")
    assert res.resumed_from == 1 and len(res.records) == 2
    assert latest_checkpoint(tmp_path / "b").name == "stage-2.pt"
    for k, v in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    assert res.records[1].weights == res_full.records[1].weights
    assert res.records[0].weights == res_full.records[0].weights

    with pytest.raises(ValueError, match="other growth settings"):
        grow(model_of(), plan, data, GrowthConfig(epochs=3, batch_size=32, seed=5), checkpoint_dir=tmp_path / "b")


# --------------------------------------------------------------------------- pair weights and retrieval


def test_pair_weights_multiply_the_loss_and_pseudo_pairs_feed_a_stage():
    feats = {"gyro": np.random.default_rng(0).normal(size=(10, 16)).astype(np.float32), "lin_acc": np.random.default_rng(1).normal(size=(8, 16)).astype(np.float32)}
    s = SampleSet(sources=feats, index={"gyro": np.array([0, 1, 2, 3, -1]), "lin_acc": np.array([5, 4, -1, 0, 1])}, weight=np.array([1.0, 0.5, 1.0, 0.0, 1.0]), label=np.full(5, -1))
    pd = PairData.from_samples(s, ["gyro", "lin_acc"])
    assert len(pd) == 3
    np.testing.assert_array_equal(pd.weights, [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(pd.features["lin_acc"][1], feats["lin_acc"][4])
    with pytest.raises(ValueError, match="weights must be"):
        PairData({"a": np.zeros((2, 3))}, weights=np.array([0.5, 2.0]))
    # the trainer's loss is the pair-weighted InfoNCE
    model = model_of()
    tr = StageTrainer(model, Stage("p", "gyro", "lin_acc"), GrowthConfig(), "cpu")
    fa, fb = torch.randn(4, 16), torch.randn(4, 16)
    w = torch.tensor([1.0, 0.5, 1.0, 0.0])
    with torch.no_grad():
        z = model.embed_features({"gyro": fa, "lin_acc": fb})
        expected = symmetric_info_nce(z["gyro"], z["lin_acc"], 0.07, w)
        unweighted = symmetric_info_nce(z["gyro"], z["lin_acc"], 0.07)
    out = tr.step(fa, fb, w)
    assert out["a_from_b"].item() == pytest.approx(expected["a_from_b"].item(), rel=1e-6)
    assert out["a_from_b"].item() != pytest.approx(unweighted["a_from_b"].item(), rel=1e-5)  # 100x looser than the match above


def test_recall_at_k_on_a_constructed_case():
    # query i is e_i, so its scores are column i of zb; own-row ranks are 0, 1 (a tie does not count), 1, 0
    za = torch.eye(4)
    zb = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.5, 0, 0], [0.8, 0.6, 0.4, 0], [0.7, 0.5, 0.45, 0.3]])
    for block in (1, 3, 1024):
        assert recall_at_k(za, zb, ks=(1, 2), block=block) == {"R@1": 0.5, "R@2": 1.0}
    # identical embeddings retrieve perfectly; a shuffled gallery at chance
    x = torch.nn.functional.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert recall_at_k(x, x, ks=(1,), block=7)["R@1"] == 1.0
    assert recall_at_k(x, x[torch.arange(49, -1, -1)], ks=(1,))["R@1"] < 0.2


def test_retrieval_recall_between_towers_and_embed_shapes():
    model = model_of()
    x = np.random.default_rng(0).normal(size=(30, 16)).astype(np.float32)
    # the same features through two towers with identical adapters retrieve each other perfectly
    model.adapters["lin_acc"].load_state_dict(model.adapters["gyro"].state_dict())
    r = retrieval_recall(model, {"gyro": x}, {"lin_acc": x}, ks=(1, 5), block=8)
    assert r["R@1"] == 1.0 and r["gyro_to_lin_acc"]["R@5"] == 1.0
    z = embed(model, {"gyro": x, "gravity": x[:7]}, batch_size=4)
    assert z["gyro"].shape == (30, 16) and z["gravity"].shape == (7, 16)
    np.testing.assert_allclose(np.linalg.norm(z["gyro"], axis=1), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------- the experiment


@pytest.mark.slow
def test_quick_experiment_writes_results_and_plots(tmp_path):
    from simulations.experiments.babel import run

    res = run("hapt", "hapt-gyro-trunk", 1, tmp_path, True, torch.device("cpu"))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["experiment"] == "babel" and on_disk["seeds"] == 1
    s = on_disk["summary"]
    for v in ("unaligned", "babel", "babel_reordered", "babel_no_ema_kd", "joint"):
        assert v in s["variants"], v
        fl = s["variants"][v]["few_label"]
        assert set(fl) == {"gravity", "gyro", "lin_acc", "gravity+gyro", "gravity+lin_acc", "gyro+lin_acc", "gravity+gyro+lin_acc"}
        assert 0 <= fl["gyro"]["accuracy"]["mean"] <= 1 and "macro_f1" in fl["gyro"]
        assert set(s["variants"][v]["retrieval"]) == {"gravity-gyro", "gravity-lin_acc", "gyro-lin_acc"}
        assert {"R@1", "R@5", "label@1", "window@1"} <= set(s["variants"][v]["retrieval"]["gravity-lin_acc"])
        assert set(s["variants"][v]["modality_gap"]) == {"gravity-gyro", "gravity-lin_acc", "gyro-lin_acc"} and len(s["variants"][v]["transfer"]) == 9
    assert "gravity-lin_acc" in s["never_paired"]
    g = s["goals"]
    assert set(g["never_paired_transfer_accuracy"]) == {"gravity->lin_acc", "lin_acc->gravity"} and set(g["never_paired_label@1"]) == {"gravity-lin_acc"}
    c = g["never_paired_label@1"]["gravity-lin_acc"]
    assert c["per_seed"] == [on_disk["per_seed"][0]["variants"]["babel"]["retrieval"]["gravity-lin_acc"]["label@1"]] and c["met_every_seed"] == (c["per_seed"][0] >= 0.6)
    for v in ("babel", "joint"):  # neighbours count on top of the window itself
        for p, w in on_disk["per_seed"][0]["variants"][v]["cross_modal"]["window_recall"].items():
            assert w["neighbours"] >= w["strict"] and on_disk["per_seed"][0]["variants"][v]["retrieval"][p]["window@1"] == w["neighbours"]
    assert {"babel", "babel_no_ema_kd"} <= set(s["forgetting"])
    f = s["forgetting"]["babel"]
    assert f["pair"] == "gyro-lin_acc" and {"after_stage1_R@1", "after_last_R@1", "drop_R@1"} <= set(f)
    assert set(s["order_invariance"]) >= {"accuracy_difference", "recall_at_1_difference"}
    stages = on_disk["per_seed"][0]["variants"]["babel"]["stages"]
    assert len(stages) == 2 and "gyro-lin_acc" in stages[0]["test_retrieval"]
    for name in ("weights_stage1.png", "weights_stage2.png", "projection_before.png", "projection_after.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert set(on_disk["files"]) >= {"weights_stage1.png", "projection_after.png"}
    assert res["summary"]["variants"].keys() == s["variants"].keys()


def test_cross_modal_pretraining_in_babel_pairs_only_what_the_stages_pair(monkeypatch):
    """lin_acc and gravity are never paired in hapt-gyro-trunk: cross-modal pretraining must not pair them either."""
    from dataclasses import replace

    from common.data import load_dataset
    from common.data.scenarios import Scenario
    from common.growth.plan import GrowthPlan
    from simulations.experiments import babel

    seen = {}

    class Stop(Exception):
        pass

    def capture(ds, rows, tower, cfg, device, seed, parties=None):
        seen.update(objective=cfg.objective, parties=parties)
        raise Stop

    monkeypatch.setattr(babel, "pretrain_encoders", capture)
    st = babel.BabelSettings.quick()
    st = replace(st, pretrain=replace(st.pretrain, objective="cross-modal"))
    gp = GrowthPlan.from_toml("hapt-gyro-trunk")
    with pytest.raises(Stop):
        babel.prepare(load_dataset("hapt"), Scenario.load(gp.scenario), gp, 0, st, torch.device("cpu"))
    assert seen["objective"] == "cross-modal"
    assert [sorted(mods) for mods, _ in seen["parties"]] == [["gyro", "lin_acc"], ["gravity", "gyro"]]
    assert all(len(rows) > 0 for _, rows in seen["parties"])


def test_kd_weight_choice_takes_the_best_mean_and_ties_go_to_the_smaller_weight():
    from simulations.experiments.babel import choose_kd_weight

    assert choose_kd_weight([{1.0: 0.5, 3.0: 0.6, 10.0: 0.55}, {1.0: 0.5, 3.0: 0.4, 10.0: 0.55}])[0] == 10.0
    assert choose_kd_weight([{30.0: 0.5, 3.0: 0.5, 10.0: 0.4}])[0] == 3.0
    chosen, means = choose_kd_weight([{1.0: 0.2, 3.0: 0.3}, {1.0: 0.4, 3.0: 0.3}])
    assert chosen == 1.0 and means == pytest.approx({1.0: 0.3, 3.0: 0.3})


def test_candidate_growth_is_the_plain_growth_and_reads_validation_features_only():
    from simulations.experiments.babel import grow_candidates

    plan = plan_of(Stage("s1", "gyro", "lin_acc"), Stage("s2", "gyro", "gravity"))
    cfg = GrowthConfig(epochs=2, batch_size=32, replay=32)
    val = paired(40, ("gyro", "lin_acc"), 3).features | {"gravity": paired(40, ("gravity", "x"), 4).features["gravity"]}
    val_y = np.arange(40) % 4
    init = model_of()
    cands = grow_candidates(plan, data_of(), init, val, val_y, [0.5, 20.0], cfg, "cpu")
    assert [c.kd_weight for c in cands] == [0.5, 20.0] and all(len(c.snapshots) == 2 for c in cands)
    for c in cands:
        assert set(c.validation) == {"score", "retrieval", "forgetting"}
        assert c.validation["score"] == pytest.approx(np.mean([v["label@1"] for v in c.validation["retrieval"].values()]))
        assert all("val_retrieval" in r.metrics and "test_retrieval" not in r.metrics for r in c.result.records)
        # the candidate is exactly what a plain growth with that weight gives, so the experiment reuses it
        plain = copy.deepcopy(init)
        grow(plain, plan, data_of(), GrowthConfig(epochs=2, batch_size=32, replay=32, kd_weight=c.kd_weight), "cpu")
        for a, b in zip(plain.state_dict().values(), c.result.model.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        for a, b in zip(c.snapshots[-1].state_dict().values(), c.result.model.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not all(torch.equal(a, b) for a, b in zip(cands[0].result.model.state_dict().values(), cands[1].result.model.state_dict().values()))


def _keys(obj) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


@pytest.mark.slow
def test_quick_experiment_chooses_the_distillation_weight_on_validation(tmp_path, capsys):
    from simulations.cli import main

    assert main(["experiment", "babel", "--plan", "hapt-gyro-trunk", "--seeds", "1", "--quick", "--kd-weights", "10,3", "--out", str(tmp_path),
                 "--joint-temperatures", "0.5,0.07", "--joint-epochs", "2,1"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    js = res["joint_selection"]
    assert js["temperatures"] == [0.07, 0.5] and js["epochs"] == [1, 2] and "validation label@1" in js["criterion"]
    jscores = {k: v["score"] for k, v in js["per_seed"][0]["validation"].items()}
    assert set(jscores) == {"1x0.07", "1x0.5", "2x0.07", "2x0.5"} and not any("test" in k for k in _keys(js["per_seed"]))
    order = ["1x0.07", "1x0.5", "2x0.07", "2x0.5"]  # fewer epochs first, then the lower temperature
    best = next(k for k in order if jscores[k] >= max(jscores.values()) - 1e-9)
    assert f"{js['chosen']['epochs']}x{js['chosen']['temperature']:g}" == best
    assert (res["settings"]["joint_epochs"], res["settings"]["joint_temperature"]) == (js["chosen"]["epochs"], js["chosen"]["temperature"])
    sel = res["kd_selection"]
    assert sel["candidates"] == [3.0, 10.0] and sel["chosen"] in sel["candidates"] and "validation label@1" in sel["criterion"]
    (seed,) = sel["per_seed"]
    scores = {float(w): v["score"] for w, v in seed["validation"].items()}
    assert set(scores) == {3.0, 10.0}
    best = max(scores.values())
    assert sel["chosen"] == min(w for w, s in scores.items() if s == best)  # the argmax, ties to the smaller weight
    assert sel["mean_validation_score"]["3"]["mean"] == scores[3.0]
    # nothing of the test group in the selection: only validation figures, validation subjects disjoint from the test ones
    assert not any("test" in k for k in _keys(sel["per_seed"]))
    subjects = res["per_seed"][0]["subjects"]
    test_group = next(g for g in subjects if g == "test" or g.startswith("test"))
    assert seed["validation_subjects"] == subjects[seed["validation_group"]] and not set(seed["validation_subjects"]) & set(subjects[test_group])
    # every variant that distils used the chosen weight; the test figures are reported as before
    assert res["settings"]["growth"]["kd_weight"] == sel["chosen"]
    for v in ("babel", "babel_reordered", "babel_no_ema_kd", "joint"):
        assert v in res["summary"]["variants"], v
    stages = res["per_seed"][0]["variants"]["babel"]["stages"]
    assert len(stages) == 2 and all("test_retrieval" in s and "val_retrieval" in s for s in stages)
    assert {"babel", "babel_no_ema_kd"} <= set(res["summary"]["forgetting"])
    assert "chosen on VALIDATION" in capsys.readouterr().out


def test_cross_modal_figures_read_the_test_windows_and_train_transfer_on_the_labelled_windows_only():
    from common.crossmodal import cross_modal_transfer
    from common.data.dataset import WindowDataset
    from simulations.experiments.babel import SeedData, cross_modal

    rng = np.random.default_rng(0)
    n_lab, n_test, k = 40, 60, 3
    y = np.concatenate([np.arange(n_lab) % k, np.arange(n_test) % k])
    centres = rng.normal(size=(k, 16)) * 2
    shared = (centres[y] + 0.3 * rng.normal(size=(len(y), 16))).astype(np.float32)
    feats_all = {"gyro": shared, "lin_acc": shared, "gravity": rng.normal(size=(len(y), 16)).astype(np.float32)}
    model = model_of()
    model.adapters["lin_acc"].load_state_dict(model.adapters["gyro"].state_dict())  # gyro and lin_acc share one space
    # one recording per group, windows of 8 samples every 4: each overlaps the one before and after
    ds = WindowDataset(X={m: np.zeros((len(y), 8, 3), np.float32) for m in feats_all}, y=y, subject=np.zeros(len(y), np.int64),
                       recording=np.repeat([0, 1], [n_lab, n_test]), start=np.concatenate([np.arange(n_lab), np.arange(n_test)]) * 4)
    rows = {"lab": np.arange(n_lab), "test": np.arange(n_lab, n_lab + n_test)}
    labelled = {"lab": np.arange(n_lab) < 12, "test": np.zeros(n_test, bool)}
    sd = SeedData(rows, labelled, {g: {m: f[r] for m, f in feats_all.items()} for g, r in rows.items()}, {})
    out = cross_modal(model, sd, ds, ["lab"], "test", ["gravity", "gyro", "lin_acc"], seed=0)
    assert set(out["window_recall"]) == set(out["modality_gap"]) == {"gravity-gyro", "gravity-lin_acc", "gyro-lin_acc"}
    assert out["window_recall"]["gyro-lin_acc"]["strict"] == 1.0 and out["modality_gap"]["gyro-lin_acc"]["gap"] < 1e-5
    assert len(out["transfer"]) == 9 and out["transfer"]["gyro->lin_acc"] == out["transfer"]["gyro->gyro"]
    # the heads learn from the 12 labelled windows only
    z_lab = embed(model, {m: feats_all[m][:12] for m in feats_all})
    z_test = embed(model, {m: feats_all[m][n_lab:] for m in feats_all})
    assert out["transfer"] == cross_modal_transfer(z_lab, y[:12], z_test, y[n_lab:], k, seed=0)
    ds.recording = ds.start = None
    with pytest.raises(ValueError, match="no recording and start"):
        cross_modal(model, sd, ds, ["lab"], "test", ["gyro", "lin_acc"], seed=0)


def test_the_babel_experiment_uses_the_mmbind_experiments_encoders_and_head():
    from simulations.experiments.babel import BabelSettings
    from simulations.experiments.mmbind import MMBindSettings

    for babel, mmbind in ((BabelSettings(), MMBindSettings()), (BabelSettings.quick(), MMBindSettings.quick())):
        assert babel.head == mmbind.head and babel.head.mode == "finetune"
    assert BabelSettings().pretrain == MMBindSettings().pretrain and BabelSettings().pretrain_windows is None


def test_joint_candidates_are_plain_joint_runs_scored_on_validation_features_only():
    from simulations.experiments.babel_joint import check_joint_grid, joint_align, joint_candidates, retrieval_all

    natural = paired(64, ("gyro", "lin_acc"), 1).features | {"gravity": paired(64, ("gravity", "x"), 2).features["gravity"]}
    val = paired(30, ("gyro", "lin_acc"), 3).features | {"gravity": paired(30, ("gravity", "x"), 4).features["gravity"]}
    val_y = np.arange(30) % 3
    cfg = GrowthConfig(epochs=1, batch_size=32, seed=5)
    init = model_of()
    cands = joint_candidates(init, natural, val, val_y, [0.1, 0.5], [1, 3], cfg, "cpu")
    assert set(cands) == {(1, 0.1), (3, 0.1), (1, 0.5), (3, 0.5)}
    for (e, t), c in cands.items():
        plain = copy.deepcopy(init)  # the snapshot after e epochs of the longer run is a run of e epochs (constant learning rate)
        joint_align(plain, natural, GrowthConfig(epochs=1, batch_size=32, seed=5, temperature=t), e, "cpu")
        r = retrieval_all(plain, val, ["gravity", "gyro", "lin_acc"], val_y)
        assert c["score"] == pytest.approx(np.mean([v["label@1"] for v in r.values()]))
        assert set(c["modality_gap"]) == {"gravity-gyro", "gravity-lin_acc", "gyro-lin_acc"}
    assert cands[(1, 0.1)]["score"] != cands[(3, 0.1)]["score"] or cands[(1, 0.1)]["modality_gap"] != cands[(3, 0.1)]["modality_gap"]
    assert check_joint_grid(None, None) is None and check_joint_grid([0.5, 0.1, 0.1], [3, 1]) == ([0.1, 0.5], [1, 3])
    for bad in (([0.1], None), ([0.0], [1]), ([0.1], [0]), ([0.1], [1.5])):
        with pytest.raises(ValueError, match="joint"):
            check_joint_grid(*bad)
