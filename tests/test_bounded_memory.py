"""Binding and growth read the coordinator store in blocks: the same groups, pairs and model as reading it all at
once, with memory held to one stored batch rather than the fleet's uploads."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from common.mmbind import AlignConfig
from common.samples import RowStack, SampleSet
from common.towers import TowerConfig
from coordinator import phases as P
from coordinator.store import open_store
from node_agent.ingest import node_specs

MODS = ["gyro", "lin_acc"]


def _fleet(store, dim: int, nodes: int = 4, batches: int = 3, rows: int = 40, seed: int = 0) -> list[P.NodeInfo]:
    """Nodes of two groups: "sa" holds gyro + lin_acc (one window of each batch in gyro only), "sb" gyro alone;
    one node's lin_acc is int8 with scales; node 0 labels its windows."""
    rng = np.random.default_rng(seed)
    store.create_campaign("c", {})
    infos = []
    for k in range(nodes):
        nid, group = f"node-{k}", ("sa" if k % 2 == 0 else "sb")
        mods = MODS if group == "sa" else ["gyro"]
        infos.append(P.NodeInfo(nid, group, "train", mods))
        for b in range(batches):
            ids = [f"w{b}-{r}" for r in range(rows)]
            labels = rng.integers(0, 4, rows) if k == 0 else None
            for m in mods:
                x = rng.standard_normal((rows, dim)).astype(np.float32)
                keep = ids if m == "gyro" else ids[1:]
                lab = None if labels is None else (labels if m == "gyro" else labels[1:])
                if m == "lin_acc" and k == 2:
                    scales = np.abs(rng.standard_normal(dim)).astype(np.float32) / 50 + 1e-3
                    q = np.clip(np.round(x[: len(keep)] / scales), -127, 127).astype(np.int8)
                    store.add_embedding_batch(nid, "c", f"{m}-{b}", m, keep, q, labels=lab, scales=scales)
                else:
                    store.add_embedding_batch(nid, "c", f"{m}-{b}", m, keep, x[: len(keep)], labels=lab)
    return infos


def _all_at_once(store, infos: list[P.NodeInfo], group: str) -> P.GroupData:
    """What group_data read before: every modality's embeddings in memory, then the windows common to all."""
    members = [n for n in infos if n.group == group]
    mods = sorted(members[0].modalities)
    ids = [n.node_id for n in members]
    emb = {m: store.embeddings("c", m, node_ids=ids) for m in mods}
    pos = {m: {(n, w): i for i, (n, w) in enumerate(zip(e.node_ids.tolist(), e.window_ids.tolist()))} for m, e in emb.items()}
    common = [key for key in pos[mods[0]] if all(key in pos[m] for m in mods[1:])]
    feats, labels = {}, None
    for m, e in emb.items():
        sel = np.array([pos[m][key] for key in common])
        feats[m] = e.x[sel].astype(np.float32)
        labels = e.labels[sel] if labels is None else np.maximum(labels, e.labels[sel])
    return P.GroupData(group, "train", mods, np.array([k[0] for k in common]), np.array([k[1] for k in common]), feats, labels)


def test_group_data_read_in_blocks_is_what_reading_everything_at_once_gave():
    store = open_store("sqlite://")
    infos = _fleet(store, dim=16)
    groups = P.group_data(store, "c", infos)
    assert set(groups) == {"sa", "sb"}
    for name, g in groups.items():
        want = _all_at_once(store, infos, name)
        assert g.modalities == want.modalities
        np.testing.assert_array_equal(g.node_ids, want.node_ids)
        np.testing.assert_array_equal(g.window_ids, want.window_ids)
        np.testing.assert_array_equal(g.labels, want.labels)
        for m in g.modalities:
            assert isinstance(g.features[m], np.memmap)  # file-backed, not held in memory
            np.testing.assert_array_equal(np.asarray(g.features[m]), want.features[m])
    assert len(groups["sa"]) == 2 * 3 * 39  # the window each batch sent in gyro only is left out
    store.close()


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_group_data_holds_a_stored_batch_at_a_time_not_the_fleets_uploads():
    """Three times the uploads (same batch size) barely move group_data's peak; reading them all at once triples it."""
    dim, rows = 512, 200  # 0.4 MB per stored batch
    peaks, at_once, uploaded = [], [], []
    for batches in (4, 12):
        store = open_store("sqlite://")
        infos = _fleet(store, dim=dim, nodes=4, batches=batches, rows=rows)
        uploaded.append(4 * batches * rows * dim * 4)  # gyro alone
        peaks.append(_peak(lambda: P.group_data(store, "c", infos)))
        at_once.append(_peak(lambda: store.embeddings("c", "gyro")))
        store.close()
    more = uploaded[1] - uploaded[0]  # 13 MB more gyro, half as much again of lin_acc
    assert at_once[1] - at_once[0] > more  # the old way held every upload of a modality at once
    assert peaks[1] - peaks[0] < more / 4, f"group_data's peak grew by {(peaks[1] - peaks[0]) / 2**20:.1f} MiB for {more / 2**20:.1f} MiB more uploads"


TOWER = TowerConfig(width=8, feature_dim=16, adapter_hidden=32, embed_dim=16, prototype_hidden=32)


def _spilled_and_in_memory(store) -> tuple[dict[str, P.GroupData], dict[str, P.GroupData]]:
    """The groups as group_data reads them (file-backed blocks), and the same groups copied into memory."""
    spilled = P.group_data(store, "c", _fleet(store, dim=16))
    in_memory = {n: P.GroupData(g.name, g.role, g.modalities, g.node_ids, g.window_ids, {m: np.array(x) for m, x in g.features.items()}, g.labels)
                 for n, g in spilled.items()}  # fmt: skip
    return spilled, in_memory


def test_bind_and_grow_on_store_backed_features_equal_the_in_memory_run():
    store = open_store("sqlite://")
    spilled, in_memory = _spilled_and_in_memory(store)
    specs = node_specs(MODS)
    cfg = AlignConfig(epochs=2, batch_size=32)
    settings = P.BindSettings("sensor", "gyro", k=2)
    out = []
    for groups in (spilled, in_memory):
        bound = P.bind(groups, settings, seed=3)
        natural = SampleSet.concat([g.samples() for g in groups.values()])
        model = P.new_model(specs, TOWER, 3, {})
        report = P.align_mmbind(model, natural, bound.samples, cfg, torch.device("cpu"), 3)
        out.append((bound, report, model.state_dict()))
    (b1, r1, s1), (b2, r2, s2) = out
    assert b1.info == b2.info and b1.n_pairs > 0
    assert r1["final_contrastive_loss"] == r2["final_contrastive_loss"]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    store.close()


def test_babel_growth_on_store_backed_features_equals_the_in_memory_run(tmp_path):
    store = open_store("sqlite://")
    spilled, in_memory = _spilled_and_in_memory(store)
    plan = tmp_path / "plan.toml"
    plan.write_text('name = "trunk"\n[[stage]]\ntrunk = ["gyro", "lin_acc"]\nsource = "sa"\n')
    out = []
    for groups in (spilled, in_memory):
        model = P.new_model(node_specs(MODS), TOWER, 3, {})
        report = P.grow_babel(model, str(plan), groups, AlignConfig(epochs=2, batch_size=32), torch.device("cpu"), 3)
        out.append((report, model.state_dict()))
    (r1, s1), (r2, s2) = out
    assert r1["pairs"] == r2["pairs"] == {"sa": len(in_memory["sa"])} and r1["pairs"]["sa"] > 0
    assert [st["last_losses"] for st in r1["stages"]] == [st["last_losses"] for st in r2["stages"]]
    assert [st["mean_weights"] for st in r1["stages"]] == [st["mean_weights"] for st in r2["stages"]]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    store.close()


def test_a_row_stack_gathers_what_concatenating_would():
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 3)).astype(np.float32) for n in (5, 1, 7)]
    stack, flat = RowStack([parts[0], RowStack(parts[1:])]), np.concatenate(parts)
    rows = rng.integers(0, 13, 40)
    np.testing.assert_array_equal(stack[rows], flat[rows])
    assert len(stack) == 13 and stack.shape == (13, 3)
    with pytest.raises(IndexError, match=r"rows must be in \[0, 13\)"):
        stack[np.array([13])]
    with pytest.raises(ValueError, match="share their row shape"):
        RowStack([parts[0], np.zeros((2, 4), np.float32)])
    shared = SampleSet.natural({"gyro": parts[0]})
    both = SampleSet.concat([shared, shared.take(np.array([4, 0]))])
    assert both.sources["gyro"] is parts[0]  # sets pointing into the same windows share them
    np.testing.assert_array_equal(both.sources["gyro"][both.index["gyro"]], parts[0][[0, 1, 2, 3, 4, 4, 0]])


def test_a_rounds_model_is_serialised_once_per_kind_of_node_not_once_per_node():
    from coordinator.campaign import for_node, records_for

    flat = {"model.encoders.gyro.w": torch.randn(64, 32), "model.encoders.lin_acc.w": torch.randn(64, 32), "model.prototype.w": torch.randn(8, 8)}
    nodes = {f: P.NodeInfo(f"node-{f}", "sa" if f % 2 else "sb", "train", ["gyro", "lin_acc"] if f % 2 else ["gyro"]) for f in range(1, 301)}
    tracemalloc.start()
    arrays = records_for(flat, nodes)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len({id(a) for a in arrays.values()}) == 2  # one record per set of modalities
    one = sum(v.numel() * v.element_size() for v in flat.values())
    assert held < 4 * one  # 300 nodes' messages, about two models' worth (one per per-node copy would be 150 times this)
    for f, n in nodes.items():  # and each node still gets exactly its own part
        assert sorted(arrays[f].keys()) == sorted(for_node(flat, n))
        assert all(np.array_equal(arrays[f][k].numpy(), for_node(flat, n)[k].numpy()) for k in arrays[f].keys())
