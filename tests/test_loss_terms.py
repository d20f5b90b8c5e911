"""open_clip's convention for loss dicts: the ``*_loss`` terms, summed, are exactly the objective a trainer steps on.

Each trainer below runs one step with ``torch.Tensor.backward`` (or, for the Babel stage
trainer, ``grads_of``) watched, so the value that was actually differentiated is compared
with the sum of the ``*_loss`` terms it reports. A diagnostic named ``*_loss`` (a direction of
a symmetric loss, an unweighted distance, a running total) would make the sum too large.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import common.growth.trainer as trainer_module
from common.evaluate import LocalFinetuneConfig, finetune_local
from common.growth import GrowthConfig, Stage, StageTrainer
from common.losses import MultiViewContrastive, objective, symmetric_info_nce
from common.mmbind import AlignConfig, align
from common.modalities import inertial
from common.pretrain import PretrainConfig, pretrain_encoder, pretrain_jointly
from common.samples import SampleSet
from common.towers import AlignedModel, FusionHead, TowerConfig, build_encoder

TOWER = TowerConfig(width=8, feature_dim=16, adapter_hidden=32, embed_dim=16, prototype_hidden=32)
WINDOW = 32


def summed(terms) -> float:
    return sum(float(v) for k, v in terms.items() if k.endswith("_loss"))


@pytest.fixture
def backprops(monkeypatch):
    """The value of every tensor ``backward`` is called on, in order."""
    seen: list[float] = []
    original = torch.Tensor.backward

    def watched(self, *args, **kwargs):
        seen.append(float(self.detach()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", watched)
    return seen


def windows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, WINDOW, 3)).astype(np.float32)


def test_objective_sums_the_loss_terms_only_and_refuses_a_dict_without_one():
    t = {"a_loss": torch.tensor(1.5), "b": torch.tensor(10.0), "c_loss": torch.tensor(0.25)}
    assert float(objective(t)) == 1.75
    with pytest.raises(ValueError, match="no \\*_loss term"):
        objective({"accuracy": torch.tensor(1.0)})


def test_symmetric_info_nce_sums_to_the_mean_of_its_two_directions():
    g = torch.Generator().manual_seed(0)
    a, b = torch.nn.functional.normalize(torch.randn(8, 4, generator=g), dim=-1), torch.nn.functional.normalize(torch.randn(8, 4, generator=g), dim=-1)
    t = symmetric_info_nce(a, b, 0.1)
    assert summed(t) == pytest.approx(float((t["a_from_b"] + t["b_from_a"]) / 2), rel=1e-6)
    assert summed(MultiViewContrastive(0.1)({"x": a, "y": b}, {"x": torch.ones(8), "y": torch.ones(8)})) > 0


@pytest.mark.parametrize("kind", ["contrastive", "masked"])
def test_pretrain_encoder_reports_what_it_backpropagates(backprops, kind):
    spec = inertial("gyro", window=WINDOW)
    torch.manual_seed(0)
    enc = build_encoder(spec, TOWER)
    terms = pretrain_encoder(enc, windows(16, 1), PretrainConfig(objective=kind, epochs=1, batch_size=16), torch.device("cpu"), seed=0)
    assert len(backprops) == 1  # one batch, one step: the reported means are that step's terms
    assert summed(terms) == pytest.approx(backprops[0], rel=1e-6)
    assert terms["total"] == pytest.approx(backprops[0], rel=1e-6)


def test_cross_modal_pretraining_reports_what_it_backpropagates(backprops):
    torch.manual_seed(0)
    encoders = {m: build_encoder(inertial(m, window=WINDOW), TOWER) for m in ("gyro", "acc")}
    party = {"gyro": windows(16, 1), "acc": windows(16, 2)}
    terms = pretrain_jointly(encoders, [party], PretrainConfig(objective="cross-modal", epochs=1, batch_size=16), torch.device("cpu"), seed=0)
    assert len(backprops) == 1 and {"view_loss", "cross_loss"} <= set(terms)
    assert summed(terms) == pytest.approx(backprops[0], rel=1e-6)
    assert terms["total"] == pytest.approx(backprops[0], rel=1e-6)


def test_mmbind_alignment_reports_what_it_backpropagates(backprops):
    torch.manual_seed(0)
    model = AlignedModel({m: inertial(m, window=WINDOW) for m in ("gyro", "acc")}, TOWER)
    rng = np.random.default_rng(0)
    feats = {m: rng.normal(size=(16, TOWER.feature_dim)).astype(np.float32) for m in ("gyro", "acc")}
    history = align(model, SampleSet.natural(feats), AlignConfig(epochs=1, batch_size=16), torch.device("cpu"), seed=0)
    assert len(backprops) == 1
    assert summed(history[-1]) == pytest.approx(backprops[0], rel=1e-6)


def test_local_finetuning_reports_what_it_backpropagates(backprops):
    torch.manual_seed(0)
    model = AlignedModel({"gyro": inertial("gyro", window=WINDOW)}, TOWER)
    head = FusionHead({"gyro": model.head_dim}, 3)
    samples = SampleSet.natural({"gyro": windows(16, 3)}, np.arange(16) % 3)
    terms = finetune_local(model, head, samples, LocalFinetuneConfig(steps=1, batch_size=16, proximal_mu=1.0), torch.device("cpu"), seed=0)
    assert len(backprops) == 1
    assert summed(terms) == pytest.approx(backprops[0], rel=1e-6)


@pytest.mark.parametrize("adaptive", [False, True])
def test_a_babel_stage_step_reports_what_it_steps_on(monkeypatch, adaptive):
    """Without adaptive weights the step differentiates each term it adds (``grads_of``); with them, the
    contrastive gradient is ``combine``d from the two directions with the weights it reports."""
    stepped: list[float] = []
    original = trainer_module.grads_of

    def watched(loss, params, retain_graph):
        stepped.append(float(loss.detach()))
        return original(loss, params, retain_graph)

    monkeypatch.setattr(trainer_module, "grads_of", watched)
    torch.manual_seed(0)
    model = AlignedModel({m: inertial(m, window=WINDOW) for m in ("gyro", "lin_acc", "gravity")}, TOWER)
    cfg = GrowthConfig(adaptive=adaptive, kd=True, kd_weight=3.0, replay=0)
    tr = StageTrainer(model, Stage("s2", "gyro", "gravity"), cfg, "cpu", trunk=["gyro", "lin_acc"], index=1)
    g = torch.Generator().manual_seed(1)
    batch = lambda: (torch.randn(16, TOWER.feature_dim, generator=g), torch.randn(16, TOWER.feature_dim, generator=g))  # noqa: E731
    tr.step(*batch())  # the first step starts at the teacher: its distance is zero
    stepped.clear()
    out = tr.step(*batch())
    assert {"contrastive_loss", "kd_loss", "kd", "a_from_b", "b_from_a", "total"} <= set(out)
    assert summed(out) == pytest.approx(float(out["total"]), rel=1e-6)
    assert float(out["kd_loss"]) == pytest.approx(3.0 * float(out["kd"]), rel=1e-6) and float(out["kd"]) > 0
    weighted = (float(out["w_ab"]) * float(out["a_from_b"]) + float(out["w_ba"]) * float(out["b_from_a"])) / 2
    assert float(out["contrastive_loss"]) == pytest.approx(weighted, rel=1e-6)
    if not adaptive:
        assert len(stepped) == 2  # the contrastive term, then the weighted distillation
        assert sum(stepped) == pytest.approx(summed(out), rel=1e-6)
