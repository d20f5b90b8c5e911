"""common.binding: blocked exact top-k against dense, bounded memory, every rejection,
pair weights, label binding and class-name matching."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common import binding
from common.processes import reset_peak_rss, status_kib
from common.binding import (
    WEIGHT_RULES,
    TopMatches,
    PairWeighting,
    bind,
    bind_both_ways,
    choose_block_sizes,
    label_bind,
    label_bind_by_name,
    match_label_names,
    pair_weights,
)

CPU = torch.device("cpu")


def _dense_topk(q: torch.Tensor, g: torch.Tensor, k: int):
    return (F.normalize(q.double()) @ F.normalize(g.double()).T).topk(k, dim=1)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- bind -----------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("block_size", [None, 1, 7, (5, 13), (64, 3), 1000])
def test_blocked_bind_equals_dense_topk(k, block_size):
    q, g = _randn(53, 16, seed=1), _randn(41, 16, seed=2)  # 53 and 41 divide by none of the block sizes
    res = bind(q, g, k=k, block_size=block_size, device=CPU)
    ref = _dense_topk(q, g, k)
    assert isinstance(res, TopMatches)
    assert res.index.shape == (53, k) and res.index.dtype == torch.long
    assert res.similarity.shape == (53, k)
    assert torch.equal(res.index, ref.indices)
    torch.testing.assert_close(res.similarity.double(), ref.values, atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", [1, 3, 9])
@pytest.mark.parametrize("block_size", [(7, 1024), (64, 256), (13, 128), None])
def test_chunked_top_k_search_equals_dense(k, block_size):
    """Gallery blocks that are whole multiples of the chunk find the top-k through chunk maxima."""
    q, g = _randn(50, 8, seed=20), _randn(2300, 8, seed=21)  # 2300 leaves a ragged last block
    res = bind(q, g, k=k, block_size=block_size)
    ref = _dense_topk(q, g, k)
    assert torch.equal(res.index, ref.indices)
    torch.testing.assert_close(res.similarity.double(), ref.values, atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", [1, 4])
def test_bind_many_random_shapes_and_budgets(k):
    rng = np.random.default_rng(0)
    for trial in range(20):
        n, m, d = (int(v) for v in rng.integers(1, 90, size=3))
        if k > m:
            continue
        q, g = _randn(n, d, seed=trial), _randn(m, d, seed=100 + trial)
        budget = int(rng.integers(binding._block_bytes(1, 1, d, k, 4), 200_000))
        res = bind(q, g, k=k, max_block_bytes=budget)
        assert torch.equal(res.index, _dense_topk(q, g, k).indices), (n, m, d, budget)


def test_bind_scale_invariant_and_float64():
    q, g = _randn(30, 8, seed=3), _randn(20, 8, seed=4)
    a = bind(q, g, k=2, block_size=6)
    b = bind(q * 1e3, g * 1e-3, k=2, block_size=6)
    c = bind(q.double(), g, k=2, block_size=6)
    assert torch.equal(a.index, b.index) and torch.equal(a.index, c.index)
    assert c.similarity.dtype == torch.float64
    torch.testing.assert_close(a.similarity, b.similarity, atol=1e-5, rtol=0)


def test_bind_is_with_replacement():
    hub = _randn(1, 16, seed=5)
    q = hub + 0.01 * _randn(40, 16, seed=6)  # every query is near the hub
    g = torch.cat([_randn(10, 16, seed=7), hub, _randn(10, 16, seed=8)])
    res = bind(q, g, k=1, block_size=4)
    assert (res.index[:, 0] == 10).all()


def test_bind_accepts_tensors_that_require_grad():
    q = _randn(9, 4).requires_grad_()
    res = bind(q, _randn(6, 4, seed=1), k=2)
    assert not res.similarity.requires_grad


def test_zero_rows_have_similarity_zero():
    q = torch.zeros(3, 4)
    g = _randn(5, 4, seed=9)
    res = bind(q, g, k=2)
    assert torch.equal(res.similarity, torch.zeros(3, 2))


def test_bind_both_ways_deduplicates_mutual_matches():
    b = _randn(30, 12, seed=10)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    a = b[perm] + 1e-3 * _randn(30, 12, seed=11)  # a[i] and b[perm[i]] are mutual nearest neighbours
    both = bind_both_ways(a, b, k=1)
    i, j, s = both.i, both.j, both.similarity
    assert len(i) == 30
    assert torch.equal(j[torch.argsort(i)], perm)
    assert (s > 0.99).all()


def test_bind_both_ways_is_the_union_of_both_directions():
    a, b = _randn(25, 6, seed=12), _randn(18, 6, seed=13)
    pairs = bind_both_ways(a, b, k=2, block_size=5)
    ab, ba = bind(a, b, k=2), bind(b, a, k=2)
    expected = {(i, int(j)) for i in range(25) for j in ab.index[i]}
    expected |= {(int(i), j) for j in range(18) for i in ba.index[j]}
    got = list(zip(pairs.i.tolist(), pairs.j.tolist()))
    assert len(got) == len(set(got)), "a pair appears twice"
    assert set(got) == expected
    assert got == sorted(got)
    dense = F.normalize(a) @ F.normalize(b).T
    torch.testing.assert_close(pairs.similarity, dense[pairs.i, pairs.j], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "query, gallery, k, match",
    [
        (torch.zeros(5), torch.zeros(4, 5), 1, "query must be 2-D"),
        (torch.zeros(2, 3, 4), torch.zeros(4, 4), 1, "query must be 2-D"),
        (torch.zeros(3, 4), torch.zeros(4), 1, "gallery must be 2-D"),
        (torch.zeros(3, 4), torch.zeros(5, 6), 1, "query has dim 4 but gallery has dim 6"),
        (torch.zeros(0, 4), torch.zeros(5, 4), 1, "query is empty"),
        (torch.zeros(3, 4), torch.zeros(0, 4), 1, "gallery is empty"),
        (torch.zeros(3, 0), torch.zeros(5, 0), 1, "query is empty"),
        (torch.zeros(3, 4), torch.zeros(5, 4), 0, r"k must be an int in \[1, 5\]"),
        (torch.zeros(3, 4), torch.zeros(5, 4), 6, r"k must be an int in \[1, 5\]"),
    ],
)
def test_bind_rejects_bad_input(query, gallery, k, match):
    with pytest.raises(ValueError, match=match):
        bind(query, gallery, k=k)


def test_bind_names_side_and_rows_with_nan_or_inf():
    q, g = _randn(10, 4, seed=14), _randn(8, 4, seed=15)
    q[2, 1] = float("nan")
    q[7] = float("nan")
    with pytest.raises(ValueError, match=r"query has 2 of 10 rows with NaN or Inf"):
        bind(q, g)
    q, g = _randn(10, 4, seed=14), _randn(8, 4, seed=15)
    g[5, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"gallery has 1 of 8 rows with NaN or Inf"):
        bind(q, g)
    with pytest.raises(ValueError, match=r"gallery has 8 rows whose norm overflows"):
        bind(q, torch.full((8, 4), 3e38))


def test_bind_rejects_bad_settings():
    q, g = _randn(10, 4), _randn(8, 4)
    with pytest.raises(ValueError, match="index must be"):
        bind(q, g, index="annoy")
    with pytest.raises(ValueError, match="over max_block_bytes"):
        bind(q, g, block_size=8, max_block_bytes=64)
    with pytest.raises(ValueError, match="too small"):
        bind(q, g, max_block_bytes=16)


def test_faiss_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        bind(_randn(4, 3), _randn(5, 3), index="faiss")


def test_faiss_index_matches_blocked():
    pytest.importorskip("faiss")
    q, g = _randn(60, 16, seed=16), _randn(45, 16, seed=17)
    a = bind(q, g, k=3, block_size=7, index="faiss")
    assert torch.equal(a.index, _dense_topk(q, g, 3).indices)


def test_block_sizes_respect_the_budget():
    for budget in (10_000, 100_000, 2**20, 64 * 2**20, 2**30):
        for n, m, d, k in ((200_000, 200_000, 128, 1), (50, 300_000, 512, 5), (300_000, 7, 16, 3)):
            qb, gb = choose_block_sizes(n, m, d, k, budget)
            assert 1 <= qb <= n and 1 <= gb <= m
            assert binding._block_bytes(qb, gb, d, k, 4) <= budget


def test_bind_20k_by_20k_stays_in_its_memory_budget(monkeypatch):
    """Every score block fits the budget, the blocks cover all N x M pairs, and
    the process's peak RSS grows by far less than one dense N x M matrix (1.6 GB)."""
    n = m = 20_000
    budget = 4 * 2**20
    q, g = _randn(n, 16, seed=18), _randn(m, 16, seed=19)
    seen: list[int] = []
    real = binding._block_scores

    def recording(qb, gb, out):
        seen.append(out.numel())
        assert out.numel() * out.element_size() <= budget, f"a {tuple(out.shape)} score block is over budget"
        return real(qb, gb, out)

    monkeypatch.setattr(binding, "_block_scores", recording)
    rss0 = status_kib("VmRSS")
    can_measure = rss0 is not None and reset_peak_rss()
    res = bind(q, g, k=1, max_block_bytes=budget)
    peak = status_kib("VmHWM")
    assert n * m <= sum(seen) < 1.01 * n * m, "the recorded blocks do not cover all pairs (once)"
    assert max(seen) * 4 <= budget
    if can_measure and peak is not None:
        assert (peak - rss0) * 1024 < 8 * budget + 32 * 2**20, f"peak RSS grew by {(peak - rss0) / 1024:.0f} MB"
    sample = torch.arange(0, n, 997)
    ref = _dense_topk(q[sample], g, 1)
    assert torch.equal(res.index[sample], ref.indices)


# --- pair weights -----------------------------------------------------------------


@pytest.mark.parametrize("rule", WEIGHT_RULES)
@pytest.mark.parametrize("threshold", [-1.0, 0.0, 0.5, 0.9])
def test_pair_weights_are_finite_bounded_monotone_and_drop_below_threshold(rule, threshold):
    s = torch.cat([torch.linspace(-1, 1, 2001), torch.tensor([-1.0, 0.0, threshold, 1.0, 1.0 + 1e-6, -1.0 - 1e-6])])
    s = s.sort().values
    w, keep = pair_weights(s, rule, threshold)
    assert torch.isfinite(w).all()
    assert ((w >= 0) & (w <= 1)).all()
    assert (w[1:] >= w[:-1]).all(), "weights must not decrease with similarity"
    assert torch.equal(keep, s >= threshold)
    assert (w[~keep] == 0).all()
    assert (w[keep] > 0).all()
    at_t = w[s == threshold]
    assert keep[s == threshold].all() and (at_t > 0).all()
    top = 1.0 if rule != "sigmoid" else torch.sigmoid(torch.tensor((1 - threshold) / 0.1)).item()
    assert w[s >= 1.0].tolist() == pytest.approx([top] * int((s >= 1.0).sum()))


def test_linear_weights_map_threshold_to_floor_and_one_to_one():
    w, keep = pair_weights(torch.tensor([-1.0, 0.0, 0.49, 0.5, 0.75, 1.0]), "linear", 0.5, w_min=0.1)
    torch.testing.assert_close(w, torch.tensor([0.0, 0.0, 0.0, 0.1, 0.55, 1.0]))
    assert keep.tolist() == [False, False, False, True, True, True]


def test_constant_weights_are_one_for_kept_pairs():
    w, keep = pair_weights(torch.tensor([0.2, 0.3, 0.99]), "constant", 0.3)
    assert w.tolist() == [0.0, 1.0, 1.0] and keep.tolist() == [False, True, True]


def test_pair_weights_reject_nan_and_unknown_rule():
    with pytest.raises(ValueError, match="1 of 3 similarities are NaN"):
        pair_weights(torch.tensor([0.1, float("nan"), 0.9]))
    with pytest.raises(ValueError, match="linear, sigmoid, constant"):
        pair_weights(torch.tensor([0.5]), rule="log")
    with pytest.raises(ValueError, match="threshold"):
        pair_weights(torch.tensor([0.5]), threshold=1.0)
    with pytest.raises(ValueError, match="temperature"):
        pair_weights(torch.tensor([0.5]), rule="sigmoid", temperature=0.0)


def test_pair_weighting_from_dict_and_apply():
    pw = PairWeighting.from_dict({"rule": "sigmoid", "threshold": 0.3, "temperature": 0.05, "w-min": 0.2})
    assert pw == PairWeighting(rule="sigmoid", threshold=0.3, w_min=0.2, temperature=0.05)
    s = torch.linspace(-1, 1, 11)
    w1, k1 = pw.apply(s)
    w2, k2 = pair_weights(s, "sigmoid", 0.3, w_min=0.2, temperature=0.05)
    assert torch.equal(w1, w2) and torch.equal(k1, k2)
    assert PairWeighting.from_dict(pw.to_dict()) == pw
    with pytest.raises(ValueError, match="unknown settings"):
        PairWeighting.from_dict({"rule": "linear", "treshold": 0.4})
    with pytest.raises(ValueError, match="must be one of"):
        PairWeighting.from_dict({"rule": "exp"})


# --- label binding -----------------------------------------------------------------


def _labels(seed: int, n: int, classes: list[int]) -> np.ndarray:
    return np.random.default_rng(seed).choice(classes, size=n)


def test_label_bind_same_class_capped_distinct_and_reproducible():
    la = _labels(0, 300, [0, 1, 2, 3])
    lb = np.concatenate([_labels(1, 200, [0, 1, 2, 5]), [3, 3]])  # class 3: only two B-samples
    ia, ib = label_bind(la, lb, max_pairs_per_sample=4, rng=np.random.default_rng(7))
    assert ia.dtype == np.int64 and ib.dtype == np.int64
    assert (la[ia] == lb[ib]).all()
    counts = np.bincount(ia, minlength=len(la))
    for c in (0, 1, 2):
        assert (counts[la == c] == 4).all()
    assert (counts[la == 3] == 2).all()
    assert len(set(zip(ia.tolist(), ib.tolist()))) == len(ia), "an A-sample got the same B-sample twice"
    ia2, ib2 = label_bind(la, lb, max_pairs_per_sample=4, rng=np.random.default_rng(7))
    assert np.array_equal(ia, ia2) and np.array_equal(ib, ib2)
    _, ib3 = label_bind(la, lb, max_pairs_per_sample=4, rng=np.random.default_rng(8))
    assert not np.array_equal(ib, ib3)


def test_label_bind_classes_on_one_side_and_unlabelled_give_no_pairs():
    la = np.array([0, 0, 1, 2, -1, -1])
    lb = np.array([1, 1, 3, -1, -1])
    ia, ib = label_bind(la, lb, max_pairs_per_sample=3, rng=np.random.default_rng(0))
    assert ia.tolist() == [2, 2] and sorted(ib.tolist()) == [0, 1]
    ia, ib = label_bind(np.array([5]), np.array([6]), rng=np.random.default_rng(0))
    assert len(ia) == len(ib) == 0


def test_label_bind_has_no_cartesian_blow_up():
    la, lb = np.zeros(20_000, dtype=int), np.zeros(30_000, dtype=int)
    ia, ib = label_bind(la, lb, max_pairs_per_sample=2, rng=np.random.default_rng(0))
    assert len(ia) == 40_000
    assert len(np.unique(ib)) > 15_000  # spread over B, not a few favourites


def test_label_bind_string_labels_and_bad_cap():
    ia, ib = label_bind(np.array(["sit", "walk"]), np.array(["walk", "walk", "run"]), 1, rng=np.random.default_rng(0))
    assert ia.tolist() == [1] and ib[0] in (0, 1)
    with pytest.raises(ValueError, match="max_pairs_per_sample"):
        label_bind(np.array([0]), np.array([0]), 0, rng=np.random.default_rng(0))


class _NoModel:
    def encode(self, texts):
        raise AssertionError(f"the model should not be used, asked for {texts}")


class _TableModel:
    """Deterministic stand-in for a sentence encoder: a fixed vector per text."""

    def __init__(self, table: dict[str, list[float]]):
        self.table = table

    def encode(self, texts):
        return np.array([self.table[t] for t in texts], dtype=np.float32)


def test_equal_names_match_without_a_model(monkeypatch):
    monkeypatch.setattr(binding, "load_label_encoder", lambda: _NoModel())
    out = match_label_names(["Walking", "sit_down", "run"], ["run", "walking", "sit down"])
    assert out == {"Walking": "walking", "sit_down": "sit down", "run": "run"}


def test_unmatched_names_fall_below_threshold():
    model = _TableModel({"walk": [1, 0, 0], "cook": [0, 0, 1], "walking": [0.9, 0.1, 0], "jump": [0, 1, 0]})
    out = match_label_names(["walk", "cook"], ["walking", "jump"], model=model, threshold=0.5)
    assert out == {"walk": "walking", "cook": None}


def test_label_bind_by_name_translates_classes():
    model = _TableModel({"walking": [1, 0], "lying": [0, 1], "walk": [0.95, 0.05], "lie": [0.1, 0.9]})
    names_a, names_b = ["walking", "lying", "cooking"], ["lie", "walk"]
    model.table["cooking"] = [-1, -1]
    la = np.array([0, 1, 2, 0])
    lb = np.array([1, 0, 0, 1, 1])
    ia, ib = label_bind_by_name(la, names_a, lb, names_b, 2, rng=np.random.default_rng(0), model=model)
    got = {(int(a), int(b)) for a, b in zip(ia, ib)}
    assert all(names_b[lb[b]] == {"walking": "walk", "lying": "lie"}[names_a[la[a]]] for a, b in got)
    assert 2 not in ia  # "cooking" matches nothing
    assert np.bincount(ia, minlength=4).tolist() == [2, 2, 0, 2]


@pytest.fixture(scope="module")
def minilm():
    return binding.load_label_encoder()


@pytest.mark.timeout(10, func_only=True)
def test_match_label_names_with_minilm(minilm):
    out = match_label_names(["walking", "sitting", "lying down"], ["walk", "sit", "lay", "jump rope"], model=minilm)
    assert out == {"walking": "walk", "sitting": "sit", "lying down": "lay"}
    assert match_label_names(["cooking"], ["walk", "sit", "lay", "jump rope"], model=minilm) == {"cooking": None}
    assert binding.load_label_encoder() is minilm, "the encoder is loaded once"


def test_bound_pair_report_counts_what_the_labels_say():
    from common.binding import BoundPairs
    from common.mmbind import bound_pair_report

    ya, yb = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 2])
    pairs = BoundPairs(i=np.array([0, 1, 2, 3, 4]), j=np.array([0, 1, 2, 3, 3]), similarity=np.array([0.9, 0.1, 0.8, 0.2, 0.7], dtype=np.float32),
                        weight=np.array([1.0, 0.2, 0.9, 0.3, 0.8], dtype=np.float32))  # fmt: skip
    rep = bound_pair_report(pairs, ya, yb, 3)
    assert rep["pairs"] == 5 and rep["pair_accuracy"] == pytest.approx(0.6)  # pairs 0, 2 and 4 agree
    assert rep["per_class_accuracy"] == [0.5, 0.5, 1.0]
    assert rep["confusion"] == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert rep["accuracy_by_similarity"] == {"upper_half": 1.0, "lower_half": 0.0}  # the three most similar are the right ones
    assert rep["weight"]["q50"] == pytest.approx(0.8) and "top1" not in rep
    # with the shared features: A's top-1 matches, their margins and whether they are mutual
    a = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.75, 0.65]])
    b = torch.tensor([[1.0, 0.05], [0.05, 1.0], [0.6, 0.8], [0.8, 0.6]])
    rep = bound_pair_report(pairs, ya, yb, 3, a, b)
    top = rep["top1"]
    assert top["accuracy"] == 1.0  # every A window finds a B window of its class
    assert top["mutual_share"] == pytest.approx(0.6)  # a1 and a3 lose their partner to a0 and a2, the closer ones
    assert set(top["accuracy_by_margin"]) == {"wide_half", "narrow_half"}


# --- pseudo-pairs in alignment: how many, and how they are batched -------------------------------


def _natural_and_pairs(n_nat: int = 1000, n_pairs: int = 400, hub_copies: int = 40, seed: int = 0):
    from common.mmbind import pseudo_pair_samples
    from common.samples import SampleSet

    rng = np.random.default_rng(seed)
    X = {"a": rng.normal(size=(n_nat, 4)).astype(np.float32), "b": rng.normal(size=(n_nat, 4)).astype(np.float32)}
    nat = SampleSet.natural(X)
    i = np.arange(n_pairs) % n_nat
    j = np.where(np.arange(n_pairs) < hub_copies, 7, rng.integers(0, n_nat, n_pairs))  # window b[7] is the best match of hub_copies windows
    w = np.linspace(0.2, 1.0, n_pairs, dtype=np.float32)
    pairs = binding.BoundPairs(i, j, w, w)
    return nat, SampleSet.concat([nat, pseudo_pair_samples({"a": X["a"]}, {"b": X["b"]}, pairs)])


def _most_copies_in_a_batch(s, order: np.ndarray, batch: int) -> int:
    held = s.keys["b"][s.index["b"]]
    return max(int(np.unique(held[order[k : k + batch]], return_counts=True)[1].max()) for k in range(0, len(order), batch))


def test_batches_keep_the_samples_holding_one_window_apart():
    nat, both = _natural_and_pairs()
    count, rank = both.copies()
    hub = count == 41  # the 40 pairs and the natural sample that hold b[7]
    assert hub.sum() == 41 and sorted(rank[hub]) == list(range(41))
    # natural samples alone: the order is rng.permutation's, draw for draw (so runs without pairs are unchanged)
    assert (nat.spread_order(np.random.default_rng(3)) == np.random.default_rng(3).permutation(len(nat))).all()
    spread = [_most_copies_in_a_batch(both, both.spread_order(np.random.default_rng(s)), 64) for s in range(20)]
    plain = [_most_copies_in_a_batch(both, np.random.default_rng(s).permutation(len(both)), 64) for s in range(20)]
    for s in range(3):
        order = both.spread_order(np.random.default_rng(s))
        assert sorted(order) == list(range(len(both)))
    # 41 copies in 1400 samples are about 34 apart: two or three in a batch of 64, where a plain shuffle puts four or five
    assert max(spread) <= 4 and np.mean(spread) < 3.2 and np.mean(plain) > np.mean(spread) + 0.8, (spread, plain)


def test_pseudo_pairs_are_capped_by_share_of_the_natural_samples():
    from common.mmbind import cap_pseudo_pairs
    from common.samples import SampleSet

    nat, both = _natural_and_pairs(n_nat=100, n_pairs=400, hub_copies=0)
    assert cap_pseudo_pairs(both, 0.0) is both and cap_pseudo_pairs(both, 5.0) is both  # 0: no cap; 800 views <= 1000
    kept = cap_pseudo_pairs(both, 1.5, seed=1)
    assert (kept.kind == 1).sum() == 150 and (kept.kind == 0).sum() == 100
    # views, not samples: natural samples of one stream each (200 views) against pairs of two
    single = SampleSet.concat([SampleSet.natural({"a": nat.sources["a"]}), SampleSet.natural({"b": nat.sources["b"]})])
    pairs = both.take(np.flatnonzero(both.kind == 1))
    by_view = cap_pseudo_pairs(SampleSet.concat([single, pairs]), 1.5, seed=1)
    assert (by_view.kind == 0).sum() == 200 and (by_view.kind == 1).sum() == 150  # 300 views of pairs, not 300 pairs
    assert (kept.index["a"][kept.kind == 0] == nat.index["a"]).all()  # every natural sample, in its order
    again = cap_pseudo_pairs(both, 1.5, seed=1)
    assert (again.index["b"] == kept.index["b"]).all() and (again.weight == kept.weight).all()  # seeded
    assert not (cap_pseudo_pairs(both, 1.5, seed=2).index["b"] == kept.index["b"]).all()
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="pseudo-pair share"):
            cap_pseudo_pairs(both, bad)


def test_pseudo_share_is_a_checked_run_config_setting():
    from common.config import CampaignConfig

    assert CampaignConfig.from_run_config({"pseudo-share": 1.0}).align().pseudo_share == 1.0
    with pytest.raises(ValueError, match="pseudo-share"):
        CampaignConfig.from_run_config({"pseudo-share": -1.0})
