"""Towers, losses, samples, pretraining, heads and the MMBind pieces, on small seeded inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.binding import PairWeighting
from common.evaluate import HeadConfig, evaluate_subsets, fit_head, subsets
from common.losses import MultiViewContrastive, info_nce
from common.mmbind import AlignConfig, align, pseudo_pair_samples, sensor_pseudo_pairs
from common.modalities import ModalitySpec, default_registry
from common.pretrain import PretrainConfig, pretrain_encoder
from common.samples import SampleSet
from common.towers import AlignedModel, ModelCard, count_parameters, fuse

CPU = torch.device("cpu")


@pytest.fixture
def model():
    torch.manual_seed(0)
    reg = default_registry()
    return AlignedModel({m: reg.get(m) for m in ("gyro", "lin_acc", "gravity")})


def test_towers_are_small_and_dict_in_dict_out(model):
    assert count_parameters(model.encoders["gyro"]) < 300_000
    out = model({"gyro": torch.randn(4, 128, 3)})
    assert list(out) == ["gyro"] and out["gyro"].shape == (4, model.cfg.embed_dim)
    torch.testing.assert_close(out["gyro"].norm(dim=-1), torch.ones(4))
    with pytest.raises(KeyError, match="unknown modality 'skeleton'"):
        model({"skeleton": torch.randn(2, 128, 3)})
    with pytest.raises(ValueError, match=r"takes \(batch, time, 3\) windows, got \(2, 128, 6\)"):
        model({"gyro": torch.randn(2, 128, 6)})
    rebuilt = ModelCard.of(model).build()
    assert rebuilt.modalities == model.modalities


def test_spec_checks_window_shape():
    spec = ModalitySpec("acc", channels=3, rate_hz=50)
    spec.check_window((5, 128, 3))
    with pytest.raises(ValueError, match=r"expected windows of shape \(N, 128, 3\)"):
        spec.check_window((5, 64, 3), where="upload")
    with pytest.raises(KeyError, match="unknown modality 'depth'; known: acc, gravity, gyro, lin_acc"):
        default_registry().get("depth")


def test_fuse_ignores_absent_modalities():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    masks = {"a": torch.tensor([True, True, False]), "b": torch.tensor([True, False, True])}
    garbage = b.clone()
    garbage[1] = 1e6  # row 1 has no b: whatever stands there must not count
    fused = fuse({"a": a, "b": garbage}, masks)
    torch.testing.assert_close(fused[0], (a[0] + b[0]) / 2)
    torch.testing.assert_close(fused[1], a[1])
    torch.testing.assert_close(fused[2], b[2])
    with pytest.raises(ValueError, match="no modality present"):
        fuse({"a": a}, {"a": torch.tensor([True, False, True])})


def test_multiview_loss_is_mask_aware_and_weighted():
    torch.manual_seed(0)
    z = {m: torch.nn.functional.normalize(torch.randn(6, 8), dim=-1).requires_grad_() for m in ("x", "y", "s")}
    masks = {"x": torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool), "y": torch.tensor([1, 0, 1, 1, 1, 1], dtype=torch.bool), "s": torch.ones(6, dtype=torch.bool)}
    loss_fn = MultiViewContrastive(0.1)
    loss = loss_fn(z, masks)["contrastive_loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert z["x"].grad[3].abs().sum() == 0 and z["y"].grad[1].abs().sum() == 0  # absent views take no part
    changed = {m: v.detach().clone() for m, v in z.items()}
    changed["x"][3] = 5.0
    torch.testing.assert_close(loss_fn(changed, masks)["contrastive_loss"], loss.detach())
    w = torch.tensor([1, 1, 1, 1, 1, 0.0])
    drop_last = {m: v.detach()[:5] for m, v in z.items()}
    # a sample weighted 0 still serves as a negative for others, but its own loss does not count
    assert not torch.isclose(loss_fn({m: v.detach() for m, v in z.items()}, masks, w)["contrastive_loss"], loss.detach())
    assert torch.isfinite(loss_fn(drop_last, {m: k[:5] for m, k in masks.items()})["contrastive_loss"])


def _multiview_by_hand(z, masks, keys, weights, t):
    """The documented loss, one anchor view at a time: positives are the views of windows the
    anchor's sample holds (other than the anchor's own window), the denominator every view but
    the anchor's own window's copies."""
    views = [(r, m, int(keys[m][masks[m][: r + 1].sum() - 1]), z[m][r]) for m in sorted(z) for r in range(len(masks[m])) if masks[m][r]]
    held = {r: {(m, k) for (rr, m, k, _) in views if rr == r} for r in range(len(weights))}
    losses, ws = [], []
    for r, m, k, v in views:
        others = [(rr, mm, kk, u) for (rr, mm, kk, u) in views if (mm, kk) != (m, k)]
        logits = torch.stack([v @ u / t for (*_, u) in others])
        log_prob = logits - torch.logsumexp(logits, 0)
        pos = [i for i, (rr, mm, kk, _) in enumerate(others) if (mm, kk) in held[r]]
        if pos:
            losses.append(-log_prob[pos].mean() * weights[r])
            ws.append(weights[r])
    return torch.stack(losses).sum() / torch.stack(ws).sum()


def test_a_window_several_samples_hold_is_a_positive_of_each_not_a_negative():
    torch.manual_seed(1)
    g = {"x": torch.nn.functional.normalize(torch.randn(5, 8), dim=-1), "y": torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)}
    # rows 0 and 1 hold the same y-window (2); row 3 holds x-window 0 again (as a natural sample and a pseudo-pair would)
    keys = {"x": torch.tensor([0, 1, 4, 0]), "y": torch.tensor([2, 2, 3])}
    masks = {"x": torch.tensor([1, 1, 1, 1]).bool(), "y": torch.tensor([1, 1, 0, 1]).bool()}
    z = {"x": g["x"][keys["x"]], "y": torch.zeros(4, 8)}
    z["y"][masks["y"]] = g["y"][keys["y"]]
    w = torch.tensor([1.0, 0.5, 1.0, 0.8])
    loss_fn = MultiViewContrastive(0.1)
    got = loss_fn(z, masks, w, keys)["contrastive_loss"]
    torch.testing.assert_close(got, _multiview_by_hand(z, masks, keys, w, 0.1))
    assert not torch.isclose(got, loss_fn(z, masks, w)["contrastive_loss"])  # by row, the shared window was a negative
    distinct = {"x": torch.arange(4), "y": torch.arange(3) + 10}  # every window distinct: keys change nothing
    torch.testing.assert_close(loss_fn(z, masks, w, distinct)["contrastive_loss"], loss_fn(z, masks, w)["contrastive_loss"])


def test_sample_sets_keep_a_shared_source_once_so_its_windows_keep_one_key():
    x = {"a": np.arange(8, dtype=np.float32).reshape(4, 2), "b": np.arange(8, dtype=np.float32).reshape(4, 2) + 50}
    natural = SampleSet.natural(x)
    bound = SampleSet({"a": x["a"]}, {"a": np.array([2, 2, 0])}, np.ones(3), np.full(3, -1))  # the same array object
    other = SampleSet.natural({"a": x["a"].copy()})  # equal values, another array: other windows
    s = SampleSet.concat([natural, bound, other])
    assert len(s.sources["a"]) == 8 and len(s.sources["b"]) == 4
    b = s.batch(np.array([2, 4, 6, 0, 8]), CPU)  # natural rows 2 and 0, bound rows 0 and 2 (windows 2, 0), the copy's row 1
    k = b.keys["a"].tolist()
    assert k[0] == k[1] and k[2] == k[3] and len(set(k)) == 3  # the copy (k[4]) is a window of its own
    np.testing.assert_array_equal(b.inputs["a"].numpy(), np.stack([x["a"][i] for i in (2, 2, 0, 0, 1)]))
    assert s.take(np.array([4, 2])).batch(np.arange(2), CPU).keys["a"].tolist() == [k[0], k[0]]  # keys survive take
    assert s.restrict(["a"]).batch(np.array([2, 4]), CPU).keys["a"].tolist() == [k[0], k[0]]  # and restrict
    assert SampleSet.natural({"a": x["a"]}).keys["a"].tolist() == natural.keys["a"].tolist()  # the same array, the same keys


def test_info_nce_prefers_matching_rows():
    a = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1)
    assert info_nce(a, a) < info_nce(a, a.roll(1, 0))
    with pytest.raises(ValueError, match="equal shapes"):
        info_nce(a, a[:3])


def test_sample_sets_never_materialise_absent_modalities():
    x = {"a": np.arange(4 * 2, dtype=np.float32).reshape(4, 2)}
    y = {"b": np.arange(3 * 2, dtype=np.float32).reshape(3, 2) + 100}
    s = SampleSet.concat([SampleSet.natural(x, np.array([0, 1, -1, 1])), SampleSet.natural(y)])
    assert len(s) == 7 and s.modalities == ["a", "b"]
    b = s.batch(np.array([2, 5, 6]), CPU)
    assert b.inputs["a"].shape == (1, 2) and b.inputs["b"].shape == (2, 2)
    assert b.masks["a"].tolist() == [True, False, False] and b.masks["b"].tolist() == [False, True, True]
    assert b.label.tolist() == [-1, -1, -1]
    only_b = s.restrict(["b"])
    assert len(only_b) == 3
    with pytest.raises(ValueError, match="hold no modality"):
        SampleSet({"a": x["a"]}, {"a": np.array([0, -1])}, np.ones(2), np.zeros(2))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        SampleSet.natural(x, weight=1.5)


@pytest.mark.parametrize("objective", ["contrastive", "masked"])
def test_pretraining_learns(objective):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    t = np.linspace(0, 8 * np.pi, 128, dtype=np.float32)
    freq = rng.uniform(0.5, 2.0, size=(96, 1, 1)).astype(np.float32)
    windows = np.sin(freq * t[None, :, None] + rng.uniform(0, 6, size=(96, 1, 3))).astype(np.float32)
    enc = AlignedModel({"acc": ModalitySpec("acc", 3, 50.0)}).encoders["acc"]
    first = pretrain_encoder(enc, windows, PretrainConfig(objective=objective, epochs=1, batch_size=32), CPU, seed=0)
    later = pretrain_encoder(enc, windows, PretrainConfig(objective=objective, epochs=6, batch_size=32), CPU, seed=0)
    key = "contrastive_loss" if objective == "contrastive" else "reconstruction_loss"
    assert later[key] < first[key]
    with pytest.raises(ValueError, match="NaN"):
        pretrain_encoder(enc, np.full((4, 128, 3), np.nan, np.float32), PretrainConfig(objective=objective, epochs=1), CPU)
    with pytest.raises(ValueError, match="objective"):
        PretrainConfig(objective="jigsaw")


def _clustered_features(rng, n_per_class: int, classes: int, dim: int = 128, noise: float = 0.3):
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    y = np.repeat(np.arange(classes), n_per_class)
    return centres, y, lambda: (centres[y] + noise * rng.normal(size=(len(y), dim))).astype(np.float32)


def test_sensor_pseudo_pairs_bind_through_the_shared_modality(model):
    rng = np.random.default_rng(0)
    centres, y, draw = _clustered_features(rng, 20, 4)
    shared_a, shared_b = draw(), draw()
    pairs = sensor_pseudo_pairs(shared_a, shared_b, PairWeighting(threshold=0.5))
    assert len(pairs) >= len(y)  # both directions
    assert pairs.label_agreement(y, y) > 0.95
    assert np.all((pairs.weight > 0) & (pairs.weight <= 1)) and np.all(pairs.similarity >= 0.5)
    strict = sensor_pseudo_pairs(shared_a, shared_b, PairWeighting(threshold=0.999))
    assert len(strict) < len(pairs)
    samples = pseudo_pair_samples({"gyro": shared_a, "lin_acc": draw()}, {"gyro": shared_b, "gravity": draw()}, pairs, keep_shared="gyro")
    assert samples.modalities == ["gravity", "gyro", "lin_acc"] and (samples.kind == 1).all()
    np.testing.assert_array_equal(samples.index["gravity"], pairs.j)


def test_align_then_head_learns_and_selects_on_validation(model):
    rng = np.random.default_rng(1)
    _, y, draw = _clustered_features(rng, 30, 3, dim=model.cfg.feature_dim, noise=0.5)
    natural = SampleSet.natural({"gyro": draw(), "lin_acc": draw()}, np.where(rng.random(len(y)) < 0.3, y, -1))
    hist = align(model, natural, AlignConfig(epochs=8, batch_size=32), CPU, seed=0)
    assert hist[-1]["contrastive_loss"] < hist[0]["contrastive_loss"]
    assert all(not p.requires_grad for p in model.parameters())
    val = SampleSet.natural({"gyro": draw(), "lin_acc": draw()}, y)
    test = SampleSet.natural({"gyro": draw(), "lin_acc": draw()}, y)
    m, head, choice = fit_head(model, natural, val, 3, HeadConfig(steps=60, eval_every=10), CPU, features=True)
    assert choice["val_macro_f1"] == max(h["val_macro_f1"] for h in choice["val_history"])
    res = evaluate_subsets(m, head, test, CPU, features=True)
    assert set(res) == {"gyro", "lin_acc", "gyro+lin_acc"}
    assert res["gyro+lin_acc"]["accuracy"] > 0.8
    with pytest.raises(ValueError, match="validation samples must all be labelled"):
        fit_head(model, natural, natural, 3, HeadConfig(steps=2), CPU, features=True)
    assert subsets(["b", "a"]) == [("a",), ("b",), ("a", "b")]
