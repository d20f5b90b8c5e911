"""Aggregating the nodes' updates (``coordinator.aggregation``): FedAvg, fine-tuning's per-block strategies taken reply
by reply, and the robust rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.config import CampaignConfig
from coordinator import aggregation as A


def test_fedavg_is_the_weighted_mean():
    a = {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 6.0]), "steps": torch.tensor(9)}
    avg = A.fedavg([a, b], [1, 3])
    assert torch.allclose(avg["w"], torch.tensor([2.5, 5.0]))
    assert avg["steps"].item() == 5  # integer entries are not averaged
    assert torch.equal(A.fedavg([a], [7])["w"], a["w"])
    with pytest.raises(ValueError, match="keys"):
        A.fedavg([a, {"w": a["w"]}], [1, 1])
    with pytest.raises(ValueError, match="shape"):
        A.fedavg([a, {"w": torch.zeros(3), "steps": torch.tensor(1)}], [1, 1])
    with pytest.raises(ValueError, match="not all zero"):
        A.fedavg([a, b], [0, 0])


def test_finetune_aggregation_is_per_block_over_the_nodes_that_hold_it():
    cur = {"model.prototype.net.0.weight": torch.zeros(2, 2), "model.encoders.a.w": torch.zeros(3), "model.encoders.b.w": torch.zeros(3)}
    only_a = ({"model.prototype.net.0.weight": torch.ones(2, 2), "model.encoders.a.w": torch.ones(3)}, 1.0)
    only_b = ({"model.prototype.net.0.weight": 3 * torch.ones(2, 2), "model.encoders.b.w": 2 * torch.ones(3)}, 3.0)
    out = A.FinetuneAggregator(CampaignConfig()).aggregate(1, cur, [only_a, only_b])
    assert torch.allclose(out["model.prototype.net.0.weight"], torch.full((2, 2), 2.5))  # weighted by labelled windows
    assert torch.allclose(out["model.encoders.a.w"], torch.ones(3)) and torch.allclose(out["model.encoders.b.w"], 2 * torch.ones(3))
    adam = A.FinetuneAggregator(CampaignConfig(finetune_strategy="fedadam", finetune_server_lr=0.1))
    step1 = adam.aggregate(1, cur, [only_a, only_b])
    assert 0 < float(step1["model.encoders.a.w"][0]) <= 0.1 + 1e-6  # a server step towards the nodes, of about eta
    assert set(adam.strategies) == {"a", "b", "shared"}
    with pytest.raises(ValueError, match="shape"):
        A.FinetuneAggregator(CampaignConfig()).aggregate(1, cur, [({"model.encoders.a.w": torch.ones(4), "model.prototype.net.0.weight": torch.ones(2, 2)}, 1.0)])
    with pytest.raises(ValueError, match="non-finite"):
        A.FinetuneAggregator(CampaignConfig()).aggregate(1, cur, [({"model.encoders.a.w": torch.full((3,), float("nan")), "model.prototype.net.0.weight": torch.ones(2, 2)}, 1.0)])
    with pytest.raises(ValueError, match="finetune-strategy"):
        CampaignConfig.from_run_config({"finetune-strategy": "fedmagic"})


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam", "fedyogi", "fedmedian"])
def test_finetune_round_taken_reply_by_reply_equals_the_strategy_on_the_whole_round(name):
    """Streaming (a running mean per block, one reply held at a time) gives what the Flower strategy gives on every reply."""
    g = torch.Generator().manual_seed(3)
    cur = {"model.prototype.net.0.weight": torch.randn(4, 4, generator=g), "model.encoders.a.w": torch.randn(5, generator=g), "model.encoders.b.w": torch.randn(5, generator=g)}
    cfg = CampaignConfig(finetune_strategy=name, finetune_server_lr=0.1)
    streamed = A.FinetuneAggregator(cfg)
    assert streamed.streaming == (name != "fedmedian")
    by_hand = {}
    for rnd in (1, 2):  # two rounds: a server optimiser's moments carry over
        replies = []
        for i in range(7):
            held = ["model.prototype.net.0.weight", "model.encoders.a.w" if i % 3 else "model.encoders.b.w"]
            replies.append(({k: cur[k] + torch.randn(cur[k].shape, generator=g) for k in held}, float(1 + i)))
        streamed.begin(cur)
        for state, n in replies:
            streamed.add(state, n)
        out = streamed.finish(rnd)
        blocks = {"shared": ["model.prototype.net.0.weight"], "a": ["model.encoders.a.w"], "b": ["model.encoders.b.w"]}
        expect = dict(cur)
        for b, keys in blocks.items():
            strategy = by_hand.setdefault(b, A.make_strategy(name, cfg))
            holders = [({k: s[k] for k in keys}, n) for s, n in replies if keys[0] in s]
            expect.update(A.strategy_average(strategy, rnd, {k: cur[k] for k in keys}, holders))
        for k in cur:
            assert torch.allclose(out[k], expect[k], atol=1e-5), (name, rnd, k)
            assert not torch.allclose(out[k], cur[k])  # every block moved
        cur = out
    assert streamed.sums == {} and streamed.kept == {}  # nothing of a finished round is held (an empty dict, not empty means)


def test_a_bad_finetune_reply_leaves_the_round_as_it_was():
    cur = {"model.prototype.net.0.weight": torch.zeros(2, 2), "model.encoders.a.w": torch.zeros(3)}
    agg = A.FinetuneAggregator(CampaignConfig())
    agg.begin(cur)
    agg.add({"model.prototype.net.0.weight": torch.ones(2, 2), "model.encoders.a.w": torch.ones(3)}, 2.0)
    with pytest.raises(ValueError, match="non-finite"):  # its shared block is fine, its encoder is not: neither is taken
        agg.add({"model.prototype.net.0.weight": 9 * torch.ones(2, 2), "model.encoders.a.w": torch.full((3,), float("inf"))}, 5.0)
    out = agg.finish(1)
    assert torch.allclose(out["model.prototype.net.0.weight"], torch.ones(2, 2)) and torch.allclose(out["model.encoders.a.w"], torch.ones(3))


@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg"])
def test_robust_aggregation_is_not_dragged_by_one_poisoned_node(name):
    cfg = CampaignConfig.from_run_config({"pretrain-strategy": name, "finetune-strategy": name, "trim-fraction": 0.2})
    rng = np.random.default_rng(0)
    current = {"w": torch.zeros(4, 3), "steps": torch.zeros((), dtype=torch.int64)}
    honest = [({"w": torch.from_numpy(rng.normal(0, 0.01, (4, 3)).astype(np.float32)), "steps": torch.tensor(3)}, 10.0) for _ in range(4)]
    poisoned = ({"w": torch.full((4, 3), 1e3), "steps": torch.tensor(3)}, 10.0)  # finite, well-formed, and hostile
    robust = A.strategy_average(A.make_strategy(name, cfg), 1, current, [*honest, poisoned])
    plain = A.fedavg([s for s, _ in [*honest, poisoned]], [n for _, n in [*honest, poisoned]])
    assert robust["w"].abs().max() < 0.05 and plain["w"].abs().min() > 100  # the plain mean follows the poison, the robust one does not
    assert robust["w"].dtype == torch.float32 and robust["steps"].dtype == torch.int64
    with pytest.raises(ValueError, match="pretrain-strategy"):
        CampaignConfig.from_run_config({"pretrain-strategy": "fedprox"})
