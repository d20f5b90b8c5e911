"""The campaign's phases and the node's tasks, without Flower: fleets of virtual
nodes, FedAvg, idempotent collection, binding, growth, signed bundles and
pooled evaluation, on a small synthetic dataset (and the shipped run config)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from common.data.dataset import WindowDataset
from common.data.scenarios import Scenario, split
from common import codec
from common.codec import public_key_of
from common.config import CampaignConfig
from common.evaluate import HeadConfig
from common.mmbind import AlignConfig
from common.pretrain import PretrainConfig
from common.samples import SampleSet
from common.towers import AlignedModel, TowerConfig
from coordinator import aggregation as A
from coordinator import phases as P
from coordinator.store import open_store
from node_agent import tasks
from node_agent.data import dropouts, fleet_layout, group_node_counts, node_spec_for
from node_agent.runtime import NodeRuntime, install_bundles
from node_agent.state_dir import StateDir

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
TOWER = TowerConfig(width=8, feature_dim=16, adapter_hidden=32, embed_dim=16, prototype_hidden=32)


def synthetic(n_subjects: int = 12, per_subject: int = 30, window: int = 32, seed: int = 0) -> WindowDataset:
    """Three streams of three classes: ``s`` is shared, ``a`` and ``b`` each tell the class apart."""
    rng = np.random.default_rng(seed)
    n = n_subjects * per_subject
    y = rng.integers(0, 3, n)
    t = np.linspace(0, 2 * np.pi, window, dtype=np.float32)
    X = {}
    for k, m in enumerate(("s", "a", "b")):
        freq = (y[:, None] + 1 + k).astype(np.float32)
        base = np.sin(freq * t[None, :])[:, :, None] * np.array([1.0, 0.5, -0.5], np.float32)
        X[m] = (base + 0.3 * rng.normal(size=(n, window, 3))).astype(np.float32)
    return WindowDataset(X=X, y=y, subject=np.repeat(np.arange(1, n_subjects + 1), per_subject), label_names=["x", "y", "z"], name="synth")


SCENARIO = {
    "name": "synth-bind",
    "binding": "sensor",
    "shared": "s",
    "group": [
        {"name": "sa", "modalities": ["s", "a"], "share": 0.3, "nodes": 2},
        {"name": "sb", "modalities": ["s", "b"], "share": 0.3, "nodes": 2},
        {"name": "lab", "modalities": ["a", "b"], "share": 0.1, "labelled": 0.5, "nodes": 1},
    ],
    "validation": {"modalities": ["a", "b"], "share": 0.1},
    "test": {"modalities": ["a", "b"], "share": 0.2},
}


@pytest.fixture(scope="module")
def ds() -> WindowDataset:
    return synthetic()


@pytest.fixture(scope="module")
def sc() -> Scenario:
    return Scenario.from_dict(SCENARIO)


# --- the fleet's nodes ----------------------------------------------------------------


def test_nodes_partition_the_split_without_overlap(ds, sc):
    sp = split(sc, ds, seed=3)
    for n in (None, 7, 12, 40):
        specs = [node_spec_for(sc, ds, 3, p, n, split_=sp) for p in range(len(fleet_layout(sc, n)))]
        rows = np.concatenate([s.rows for s in specs])
        assert len(rows) == len(set(rows.tolist())), "a window is held by two nodes"
        assert sorted(rows.tolist()) == sorted(np.concatenate([p.rows for p in sp.parts.values()]).tolist())
        for s in specs:
            assert set(s.subjects) <= set(sp.parts[s.group].subjects)
            assert s.role == sp.parts[s.group].group.role
        assert len({s.node_id for s in specs}) == len(specs)
    again = node_spec_for(sc, ds, 3, 1, None, split_=sp)
    assert np.array_equal(again.rows, node_spec_for(sc, ds, 3, 1, None).rows)


def test_group_counts_rescale_keep_every_group(sc):
    assert group_node_counts(sc) == {"sa": 2, "sb": 2, "lab": 1, "validation": 1, "test": 1}
    for n in (5, 6, 9, 100, 1000):
        counts = group_node_counts(sc, n)
        assert sum(counts.values()) == n and min(counts.values()) >= 1
    with pytest.raises(ValueError, match="at least 5 nodes"):
        group_node_counts(sc, 4)


def test_several_subjects_per_node(ds):
    d = dict(SCENARIO)
    d["group"] = [dict(g) for g in SCENARIO["group"]]
    d["group"][0].update(nodes=3, subjects_per_node=2)
    sc = Scenario.from_dict(d)
    sp = split(sc, ds, 0)
    specs = [node_spec_for(sc, ds, 0, p, split_=sp) for p in range(3)]
    assert all(len(s.subjects) == 2 for s in specs)
    assert len(set(np.concatenate([s.rows for s in specs]).tolist())) == len(sp.parts["sa"].rows)


def test_dropouts_are_deterministic_and_spare_the_last_node_of_a_group(sc):
    plan = dropouts(sc, 20, 0.2, seed=1, rounds=3)
    assert plan == dropouts(sc, 20, 0.2, seed=1, rounds=3) and len(plan) == 4
    layout = fleet_layout(sc, 20)
    roles = {g.name: g.role for g in sc.groups}
    for p, rnd in plan.items():
        assert roles[layout[p][0]] == "train" and 1 <= rnd <= 3
    for g, n in group_node_counts(sc, 20).items():
        assert sum(layout[p][0] == g for p in plan) < n
    assert dropouts(sc, 20, 0.0, 1, 3) == {}


# --- pretrain ----------------------------------------------------------------------------


def test_local_pretrain_round_trip_and_fedavg(ds, sc):
    sp = split(sc, ds, 0)
    specs = [node_spec_for(sc, ds, 0, p, split_=sp) for p in range(2)]  # the two "sa" nodes
    cfg = PretrainConfig(epochs=1, batch_size=32)
    glob = P.initial_encoders({"s": ds.spec("s")}, TOWER, 0, cfg)["s"]
    outs = [tasks.local_pretrain("s", glob["encoder"], glob["head"], s.data(ds), cfg, CPU, seed=i, tower=TOWER) for i, s in enumerate(specs)]
    assert [n for _, n, _ in outs] == [len(s.rows) for s in specs]
    assert all(np.isfinite(t["contrastive_loss"]) for _, _, t in outs)
    new = A.fedavg([o[0]["encoder"] for o in outs], [o[1] for o in outs])
    assert set(new) == set(glob["encoder"]) and not torch.equal(new["net.0.0.weight"], glob["encoder"]["net.0.0.weight"])
    with pytest.raises(KeyError, match="holds no modality 'b'"):
        tasks.local_pretrain("b", glob["encoder"], glob["head"], specs[0].data(ds), cfg, CPU, tower=TOWER)
    with pytest.raises(ValueError, match="does not fit"):
        tasks.local_pretrain("s", {"bogus": torch.zeros(1)}, glob["head"], specs[0].data(ds), cfg, CPU, tower=TOWER)


def test_local_cross_modal_round_trains_the_streams_a_node_holds_together(ds, sc):
    spec = node_spec_for(sc, ds, 0, 0, split_=split(sc, ds, 0))  # an (s, a) node
    cfg = PretrainConfig(objective="cross-modal", epochs=2, batch_size=32)
    glob = P.initial_encoders({m: ds.spec(m) for m in ("s", "a")}, TOWER, 0, cfg)
    states, n, terms = tasks.local_pretrain_joint({m: (glob[m]["encoder"], glob[m]["head"]) for m in ("s", "a")}, spec.data(ds), cfg, CPU, seed=0, tower=TOWER)
    assert n == len(spec.rows) and set(states) == {"s", "a"}
    assert np.isfinite(terms["cross_loss"]) and np.isfinite(terms["view_loss"]) and 0 <= terms["cross_accuracy"] <= 1
    for m in ("s", "a"):
        assert set(states[m]["encoder"]) == set(glob[m]["encoder"])
        assert not torch.equal(states[m]["encoder"]["net.0.0.weight"], glob[m]["encoder"]["net.0.0.weight"])
    with pytest.raises(ValueError, match="does not fit"):
        tasks.local_pretrain_joint({"s": ({"bogus": torch.zeros(1)}, glob["s"]["head"]), "a": (glob["a"]["encoder"], glob["a"]["head"])},
                                   spec.data(ds), cfg, CPU, tower=TOWER)



def test_a_handlers_round_seeds_by_node_and_round_reports_the_objective_and_keeps_the_ledger(ds, sc, tmp_path):
    """What ``client_app``'s handlers hand to ``tasks``: the seed is picked from the campaign's seed, the round and who
    trains; ``loss.<m>`` is the objective of the round; every batch handed over is in the node's upload ledger."""
    from node_agent.store import open_store as open_node_store

    assert tasks.round_seed(5, 2, "n1s") == tasks.round_seed(5, 2, "n1s")
    assert len({tasks.round_seed(5, 2, "n1s"), tasks.round_seed(5, 3, "n1s"), tasks.round_seed(5, 2, "n2s"), tasks.round_seed(6, 2, "n1s")}) == 4
    spec = node_spec_for(sc, ds, 0, 0, split_=split(sc, ds, 0))  # an (s, a) node
    cfg = PretrainConfig(objective="cross-modal", epochs=1, batch_size=32)
    glob = P.initial_encoders({m: ds.spec(m) for m in ("a", "s")}, TOWER, 0, cfg)
    given = {m: (glob[m]["encoder"], glob[m]["head"]) for m in ("a", "s")}
    trained, metrics = tasks.pretrain_round(given, spec.data(ds), cfg, spec.node_id, 5, 2, CPU, TOWER)
    _, n, terms = tasks.local_pretrain_joint(given, spec.data(ds), cfg, CPU, tasks.round_seed(5, 2, spec.node_id + "a+s"), TOWER)
    assert metrics == {"n.a": n, "loss.a": terms["total"], "n.s": n, "loss.s": terms["total"]}
    assert terms["total"] == pytest.approx(terms["view_loss"] + terms["cross_loss"], rel=1e-6)
    store = open_node_store(tmp_path / "node.db")
    sd = StateDir(tmp_path / "state", store=store)
    versions = sd.install_encoders({m: trained[m]["encoder"] for m in ("a", "s")}, {m: ds.spec(m) for m in ("a", "s")}, TOWER)
    blobs = tasks.upload_batches(sd, [(spec.group, spec.data(ds))], spec.node_id, "c9", "float16", versions)
    sent = [codec.parse_embedding_batch(b) for b in blobs]
    assert sent and {b.group for b in sent} == {spec.group} and {b.encoder_version for b in sent} == set(versions.values())
    assert store.uploaded("c9") == {b.batch_id for b in sent}
    assert tasks.upload_batches(sd, [], spec.node_id, "c9", "float16", versions) == []

def test_finetune_settings_travel_to_the_node_unchanged():
    from common.evaluate import LocalFinetuneConfig

    cfg = CampaignConfig.from_run_config({"finetune-lr": 1e-3, "finetune-head-lr": 3e-3, "finetune-steps": 7, "finetune-strategy": "fedprox", "finetune-mu": 0.2})
    local = cfg.local_finetune()
    assert (local.tower_lr, local.encoder_lr, local.head_lr, local.steps, local.proximal_mu) == (1e-3, 1e-3, 3e-3, 7, 0.2)
    assert LocalFinetuneConfig.from_wire(local.to_wire()) == local
    assert LocalFinetuneConfig.from_wire({"steps": 3}) == LocalFinetuneConfig(steps=3)  # what a message lacks keeps its default
    for bad in ({"finetune-fraction": 0}, {"finetune-fraction": 1.5}, {"finetune-lr": 0}, {"finetune-head-lr": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CampaignConfig.from_run_config(bad)


def test_local_finetune_round_trip_and_validation(ds, sc):
    from common.evaluate import LocalFinetuneConfig
    from common.towers import FusionHead, flat_state

    sp = split(sc, ds, 0)
    lab = node_spec_for(sc, ds, 0, 4, split_=sp)  # the labelled (a, b) node
    assert lab.group == "lab"
    torch.manual_seed(0)
    model = AlignedModel({m: ds.spec(m) for m in ("a", "b")}, TOWER)
    head = FusionHead({m: model.head_dim for m in ("a", "b")}, ds.n_classes)
    flat = flat_state(model, head)
    states, n, terms = tasks.local_finetune(flat, lab.data(ds), LocalFinetuneConfig(steps=5, batch_size=16), CPU, seed=0, tower=TOWER)
    assert set(states) == set(flat) and n == int(lab.labelled.sum()) > 0
    assert np.isfinite(terms["cross_entropy_loss"]) and terms["proximal_loss"] == 0.0
    assert not torch.equal(states["model.encoders.a.net.0.0.weight"], flat["model.encoders.a.net.0.0.weight"])
    assert torch.equal(states["head.scalers.a.mean"], flat["head.scalers.a.mean"])  # statistics are fixed, not trained
    res = tasks.local_validate(states, lab.data(ds), CPU, TOWER)
    assert 0 <= res["accuracy"] <= 1 and sum(res["confusion"]) == res["n"] == n
    prox, _, t = tasks.local_finetune(flat, lab.data(ds), LocalFinetuneConfig(steps=5, batch_size=16, proximal_mu=1.0), CPU, seed=0, tower=TOWER)
    assert t["proximal_loss"] > 0
    fixed, _, _ = tasks.local_finetune(flat, lab.data(ds), LocalFinetuneConfig(steps=5, batch_size=16, head_lr=0.0), CPU, seed=0, tower=TOWER)
    assert all(torch.equal(fixed[k], flat[k]) for k in flat if k.startswith("head."))  # head-lr 0: the head stays as sent (FedBABU)
    assert not torch.equal(fixed["model.encoders.a.net.0.0.weight"], flat["model.encoders.a.net.0.0.weight"])
    with pytest.raises(ValueError, match="holds no 's'"):
        tasks.local_finetune(flat_state(AlignedModel({"s": ds.spec("s")}, TOWER), FusionHead({"s": model.head_dim}, ds.n_classes)), lab.data(ds),
                             LocalFinetuneConfig(steps=1), CPU, tower=TOWER)  # fmt: skip


# --- one campaign's data path, without Flower ------------------------------------------------


@pytest.fixture(scope="module")
def campaign(ds, sc, tmp_path_factory):
    """Nodes with installed encoders and uploads collected into a store, as after the collect phase."""
    sp = split(sc, ds, 0)
    specs = [node_spec_for(sc, ds, 0, p, split_=sp) for p in range(len(fleet_layout(sc)))]
    cfg = PretrainConfig(epochs=1)
    glob = P.initial_encoders({m: ds.spec(m) for m in sc.modalities}, TOWER, 0, cfg)
    store = open_store("sqlite://")
    store.create_campaign("c1", {"scenario": sc.name})
    root = tmp_path_factory.mktemp("nodes")
    runtimes, uploads = {}, []
    for s in specs:
        rt = StateDir(root / s.node_id)
        versions = rt.install_encoders({m: glob[m]["encoder"] for m in s.modalities}, {m: ds.spec(m) for m in s.modalities}, TOWER)
        runtimes[s.node_id] = rt
        if s.role != "test":
            packed = tasks.encode_and_pack(s.data(ds), rt.encoders(), s.node_id, "c1", batch_rows=50, encoder_versions=versions)
            uploads += [(s.node_id, b.SerializeToString()) for b in packed]
    report = P.collect(store, "c1", uploads, sc.modalities, expected_dim=TOWER.feature_dim)
    infos = [P.NodeInfo(s.node_id, s.group, s.role, s.modalities) for s in specs]
    return {"specs": specs, "glob": glob, "store": store, "runtimes": runtimes, "uploads": uploads, "report": report, "infos": infos}


def test_collect_stores_each_batch_once(campaign, sc):
    store, uploads, first = campaign["store"], campaign["uploads"], campaign["report"]
    assert first.stored == len(uploads) and first.duplicates == 0 and not first.rejected
    before = {m: len(store.embeddings("c1", m)) for m in sc.modalities}
    again = P.collect(store, "c1", uploads, sc.modalities, expected_dim=TOWER.feature_dim)
    assert again.stored == 0 and again.duplicates == len(uploads)
    assert {m: len(store.embeddings("c1", m)) for m in sc.modalities} == before
    sender, blob = uploads[0]
    bad = P.collect(store, "c1", [("someone-else", blob), (sender, b"\x00garbage"), (sender, blob[:-7])], sc.modalities)
    assert bad.stored == 0 and len(bad.rejected) == 3
    assert "claims node" in bad.rejected[0]
    other = P.collect(store, "c2-not-this-one", [(sender, blob)], sc.modalities)
    assert other.stored == 0 and "campaign" in other.rejected[0]
    assert {m: len(store.embeddings("c1", m)) for m in sc.modalities} == before


def test_group_data_rebuilds_natural_samples(campaign, ds):
    groups = P.group_data(campaign["store"], "c1", campaign["infos"])
    assert set(groups) == {"sa", "sb", "lab", "validation"}  # the test node uploads nothing
    by_group = {}
    for s in campaign["specs"]:
        by_group.setdefault(s.group, []).append(s)
    for name, g in groups.items():
        assert len(g) == sum(len(s.rows) for s in by_group[name])
        assert set(g.features) == set(g.modalities)
        rows = np.array([int(w.split(":")[1]) for w in g.window_ids])
        lab = g.labels >= 0
        assert np.array_equal(g.labels[lab], ds.y[rows][lab])  # labels travel with their windows
    assert (groups["validation"].labels >= 0).all() and (groups["sa"].labels < 0).all()
    assert (groups["lab"].labels >= 0).any()


def test_a_node_holding_out_subjects_uploads_each_part_under_its_group(campaign, ds, sc):
    """One node holding the labelled group's windows and the validation subjects' (as a part of its own):
    each window lands in the group its batch names; a group the node did not announce is refused."""
    from node_agent.data import DatasetNodeData, node_parts

    by_group = {s.group: s for s in campaign["specs"]}
    lab, val = by_group["lab"], by_group["validation"]
    rows = np.concatenate([lab.rows, val.rows])
    both = DatasetNodeData("host", ds, rows, list(lab.modalities), np.concatenate([lab.labelled, val.labelled]))
    parts = node_parts(both, "lab", "train", {"validation": val.subjects})
    assert [(q.group, q.role) for q in parts] == [("lab", "train"), ("validation", "validation")]
    assert [len(q.data.windows("a")[0]) for q in parts] == [len(lab.rows), len(val.rows)]
    rt = campaign["runtimes"][lab.node_id]
    uploads = [("host", b.SerializeToString()) for q in parts for b in tasks.encode_and_pack(q.data, rt.encoders(), "host", "c3", group=q.group)]
    store = open_store("sqlite://")
    store.create_campaign("c3", {})
    rep = P.collect(store, "c3", uploads, sc.modalities, expected_dim=TOWER.feature_dim, groups={"host": {"lab", "validation"}})
    assert rep.stored == len(uploads) and not rep.rejected
    info = P.NodeInfo("host", "lab", "train", list(lab.modalities), parts=[P.NodePart("lab", "train"), P.NodePart("validation", "validation")])
    groups = P.group_data(store, "c3", [info])
    assert {g: (d.role, len(d)) for g, d in groups.items()} == {"lab": ("train", len(lab.rows)), "validation": ("validation", len(val.rows))}
    assert np.array_equal(np.sort([int(w.split(":")[1]) for w in groups["validation"].window_ids]), np.sort(val.rows))
    assert P.group_data(store, "c3", [info], roles=("train",)).keys() == {"lab"}
    (test_part,) = node_parts(both, "lab", "train", {"test": val.subjects})[1:]
    blob = tasks.encode_and_pack(test_part.data, rt.encoders(), "host", "c3", group="test")[0].SerializeToString()
    refused = P.collect(store, "c3", [("host", blob)], sc.modalities, groups={"host": {"lab", "validation"}})
    assert refused.stored == 0 and "group 'test', which that node did not announce" in refused.rejected[0]
    with pytest.raises(ValueError, match="subject .* held out for both"):
        node_parts(both, "lab", "train", {"validation": val.subjects, "test": val.subjects[:1]})
    with pytest.raises(ValueError, match="itself a validation node"):
        node_parts(both, "validation", "validation", {"validation": val.subjects})


def test_a_node_stores_no_more_windows_than_its_manifest_announced(campaign, ds, sc):
    """Per-node upload quotas: per group and modality, the windows announced, counting what earlier waves stored;
    a batch beyond it is refused by name and stores nothing, a batch stored before is still a duplicate."""
    from node_agent.data import DatasetNodeData

    spec = next(s for s in campaign["specs"] if s.group == "lab")
    data = DatasetNodeData(spec.node_id, ds, spec.rows, list(spec.modalities), spec.labelled)
    rt = campaign["runtimes"][spec.node_id]
    batches = tasks.encode_and_pack(data, rt.encoders(), spec.node_id, "cq", group="lab", batch_rows=8)
    per_mod = {m: [b for b in batches if b.modality == m] for m in spec.modalities}
    m = sorted(per_mod)[0]
    assert len(per_mod[m]) >= 3
    store = open_store("sqlite://")
    store.create_campaign("cq", {})
    quota = {spec.node_id: {"lab": 8 + 8}}  # two batches' worth of windows per modality
    first = P.collect(store, "cq", [(spec.node_id, per_mod[m][0].SerializeToString())], sc.modalities, quotas=quota)  # an earlier wave
    assert first.stored == 1 and not first.rejected
    rest = [(spec.node_id, b.SerializeToString()) for b in per_mod[m]]
    rep = P.collect(store, "cq", rest, sc.modalities, quotas=quota)
    assert rep.stored == 1 and rep.duplicates == 1 and len(rep.rejected) == len(per_mod[m]) - 2
    assert "more than the 16 its manifest announced" in rep.rejected[0] and f"{m} windows of group 'lab'" in rep.rejected[0]
    assert store.stored_rows("cq", spec.node_id) == {("lab", m): 16}
    again = P.collect(store, "cq", rest[:2], sc.modalities, quotas=quota)  # what was stored is a duplicate, not over the quota
    assert again.duplicates == 2 and not again.rejected
    other = P.collect(store, "cq", [(spec.node_id, per_mod[m][0].SerializeToString())], sc.modalities, quotas={})  # announced nothing
    assert other.duplicates == 1  # stored before: a duplicate whatever the quota
    fresh = open_store("sqlite://")
    fresh.create_campaign("cq", {})
    none = P.collect(fresh, "cq", rest[:1], sc.modalities, quotas={})
    assert none.stored == 0 and "more than the 0 its manifest announced" in none.rejected[0]
    unnamed = tasks.encode_and_pack(data, rt.encoders(), spec.node_id, "cq", batch_rows=8)[0].SerializeToString()
    refused = P.collect(fresh, "cq", [(spec.node_id, unnamed)], sc.modalities, quotas=quota)
    assert refused.stored == 0 and "names no group" in refused.rejected[0]


def test_bind_grow_head_bundles_apply_and_evaluate(campaign, ds, sc):
    store, runtimes = campaign["store"], campaign["runtimes"]
    groups = P.group_data(store, "c1", campaign["infos"])
    bs = P.BindSettings("sensor", "s", CampaignConfig().weighting(), k=1)
    bound = P.bind(groups, bs, seed=0, store=store, campaign_id="c1")
    (info,) = bound.info
    assert info["groups"] == ["sa", "sb"] and info["pairs"] > 0 and 0 <= info["mean_weight"] <= 1
    stored = store.pairs("c1", info["stage"])
    assert len(stored) == info["pairs"]
    row = lambda w: int(w.split(":")[1])  # noqa: E731  (window ids name the dataset row)
    same = np.mean([ds.y[row(a)] == ds.y[row(b)] for a, b in zip(stored.src_window_ids, stored.dst_window_ids)])
    assert same >= 0.8  # bound through "s", the pairs mostly join windows of one class (chance: 1/3)
    assert set(bound.samples.modalities) == {"s", "a", "b"}
    specs = {m: ds.spec(m) for m in sc.modalities}
    model = P.new_model(specs, TOWER, 0, {m: s["encoder"] for m, s in campaign["glob"].items()})
    natural = SampleSet.concat([g.samples() for g in groups.values() if g.role == "train"])
    out = P.align_mmbind(model, natural, bound.samples, AlignConfig(epochs=2, batch_size=64), CPU, 0, store=store, campaign_id="c1")
    assert out["samples"] == len(natural) + info["pairs"] and np.isfinite(out["final_contrastive_loss"])
    assert store.stages("c1")[0].status == "done"
    labelled = natural.take(np.flatnonzero(natural.label >= 0))
    model, head, choice = P.fit_head(model, labelled, groups["validation"].samples(), 3, HeadConfig(steps=20, eval_every=5), CPU, 0)
    assert 0 <= choice["val_accuracy"] <= 1

    key, key_id, source = P.signing_key("", "", {})
    pub = public_key_of(key)  # what a node is provisioned with; the private key stays with the coordinator
    assert source == "generated" and len(key) == 32
    test_spec = next(s for s in campaign["specs"] if s.role == "test")
    rt = runtimes[test_spec.node_id]
    versions = rt.encoder_versions()
    bundles = P.make_bundles(model, head, ["a", "b", "s"], store, "c1", key, key_id, ds.label_names, versions)
    assert [b.version for b in bundles] == [1, 1, 1] and all(b.signature for b in bundles)
    assert store.latest_adapter("a")[0] == 1
    blobs = [b.SerializeToString() for b in bundles]
    res = install_bundles(rt, blobs, {key_id: pub})
    assert res["applied"] == {"a": 1, "b": 1} and res["rejected"] == {"s v1": "unknown-modality"}
    assert install_bundles(rt, blobs, {key_id: pub})["rejected"]["a v1"] == "replay"
    fresh = StateDir(rt.root.parent / "fresh")
    fresh.install_encoders({m: campaign["glob"][m]["encoder"] for m in ("a", "b")}, {m: ds.spec(m) for m in ("a", "b")}, TOWER)
    assert install_bundles(fresh, blobs, {"other": pub})["rejected"]["a v1"] == "unknown-key"
    assert install_bundles(fresh, blobs, {key_id: public_key_of(b"x" * 32)})["rejected"]["a v1"] == "bad-signature"
    tampered = bundles[0].__class__()
    tampered.CopyFrom(bundles[0])
    tampered.version = 9
    assert install_bundles(fresh, [tampered], {key_id: pub})["rejected"]["a v9"] == "bad-signature"
    assert fresh.adapter_versions() == {}  # nothing refused was swapped in

    serving = NodeRuntime(rt.root, test_spec.node_id, keys={key_id: pub})
    metrics = tasks.evaluate_local(test_spec.data(ds), serving, CPU)
    assert set(metrics) == {"a", "b", "a+b"}
    # what evaluate_local scores is what the node serves: infer's predictions give the same confusion matrix
    windows, labels = tasks.shared_windows(test_spec.data(ds), ["a", "b"])
    served = serving.infer(windows, publish=False)
    assert np.bincount(labels * 3 + served.predictions, minlength=9).tolist() == metrics["a+b"]["confusion"]
    for m in metrics.values():
        assert sum(m["confusion"]) == m["n"] == len(test_spec.rows)
    pooled = P.summarise({"t1": metrics, "t2": metrics}, 3)
    assert pooled["a+b"]["n"] == 2 * len(test_spec.rows)
    assert pooled["a+b"]["accuracy"] == pytest.approx(metrics["a+b"]["accuracy"])
    assert pooled["a+b"]["macro_f1"] == pytest.approx(metrics["a+b"]["macro_f1"])


def test_label_binding_pairs_same_class_windows(campaign):
    groups = P.group_data(campaign["store"], "c1", campaign["infos"])
    g = {k: groups[k] for k in ("sa", "lab")}
    g["sa"].labels = np.full(len(g["sa"]), -1)
    g["sa"].labels[::3] = np.random.default_rng(0).integers(0, 3, len(g["sa"].labels[::3]))  # as if "sa" had labels
    store = open_store("sqlite://")
    store.create_campaign("lb", {})
    bound = P.bind(g, P.BindSettings("label", k=1, label_pairs_per_sample=2), seed=0, store=store, campaign_id="lb")
    (info,) = bound.info
    assert info["pairs"] > 0 and bound.samples.label.min() >= 0
    label_of = {w: int(y) for d in g.values() for w, y in zip(d.window_ids, d.labels)}
    stored = store.pairs("lb", info["stage"])
    assert len(stored) == info["pairs"]
    pair_labels = [(label_of[a], label_of[b]) for a, b in zip(stored.src_window_ids, stored.dst_window_ids)]
    assert all(a == b >= 0 for a, b in pair_labels)  # every pair joins two windows of one class, never an unlabelled one
    assert len({a for a, _ in pair_labels}) == 3  # and every class is bound


def test_macro_f1_is_computed_once_and_matches_sklearn():
    from common.evaluate import confusion_metrics, metrics

    rng = np.random.default_rng(0)
    parts = [(rng.integers(0, 4, 50), rng.integers(0, 4, 50)) for _ in range(3)]
    parts.append((np.zeros(10, int), np.ones(10, int)))
    parts.append((np.full(5, 5), np.full(5, 5)))  # class 4 never occurs: it takes no part in the macro average
    conf = sum(np.bincount(t * 6 + p, minlength=36).reshape(6, 6) for t, p in parts)
    y, p = np.concatenate([t for t, _ in parts]), np.concatenate([p for _, p in parts])
    m = confusion_metrics(conf)
    assert m["accuracy"] == pytest.approx((y == p).mean())
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    assert metrics(y, p) == pytest.approx(m)  # from predictions: the same numbers
    assert metrics(np.array([1, 1]), np.array([0, 0]))["macro_f1"] == 0.0


# --- the run config ---------------------------------------------------------------------------


def test_pyproject_run_config_matches_the_campaign_config():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    app = project["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "coordinator.server_app:app", "clientapp": "node_agent.client_app:app"}
    cfg = CampaignConfig.from_run_config(app["config"])
    assert cfg.to_run_config() == app["config"], "pyproject.toml and CampaignConfig defaults drifted apart"
    assert sorted(app["config"]) == sorted(CampaignConfig.keys())


def test_run_config_is_checked():
    with pytest.raises(ValueError, match="unknown run config key 'epochs'"):
        CampaignConfig.from_run_config({"epochs": 3})
    with pytest.raises(ValueError, match="must be int"):
        CampaignConfig.from_run_config({"seed": "zero"})
    with pytest.raises(ValueError, match="bounded"):
        CampaignConfig.from_run_config({"round-timeout": 0.0})
    assert CampaignConfig.from_run_config({"head-soup": 4}).head().soup == 4  # the campaign's head takes the experiments' recipe
    with pytest.raises(ValueError, match="soup must be >= 0"):
        CampaignConfig.from_run_config({"head-soup": -1})  # refused with the rest of the run config, before any work
    quick = CampaignConfig.from_run_config({"quick": True, "align-epochs": 99, "seed": 3})  # quick wins
    assert (quick.align_epochs, quick.pretrain_rounds, quick.seed) == (4, 2, 3)
    key, key_id, source = P.signing_key("", "", {"EDGEBIND_SIGNING_KEY": "ab" * 32})
    assert (key, source) == (b"\xab" * 32, "env") and key_id.startswith("k-")
    with pytest.raises(ValueError, match="an Ed25519 private key is 32"):
        P.signing_key("ab" * 16, "", {})
    with pytest.raises(ValueError, match="not hex"):
        P.signing_key("zz", "", {})


def test_the_signing_key_is_read_from_a_file_only_its_owner_can_read(tmp_path):
    from coordinator.cli import keygen

    made = keygen(tmp_path / "coord")
    path = made["private_key_file"]
    key, key_id, source = P.signing_key("", "", {"EDGEBIND_SIGNING_KEY_FILE": path, "EDGEBIND_SIGNING_KEY": "cd" * 32})
    assert source == "env file" and key_id == made["key_id"] and codec.public_key_of(key).hex() == made["public_key"]  # a file wins over hex
    assert P.signing_key("", "", {}, config_key_file=path)[2] == "run-config file"
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match=r"is readable by others \(mode 644\): chmod 600"):
        P.signing_key("", "", {}, config_key_file=path)
    with pytest.raises(ValueError, match="signing private key file .*nope"):
        P.signing_key("", "", {"EDGEBIND_SIGNING_KEY_FILE": str(tmp_path / "nope")})
    assert codec.key_from_file(made["public_key_file"], "public") == bytes.fromhex(made["public_key"])  # a public key may be world-readable


def test_a_babel_plan_grows_stage_by_stage_on_node_groups(campaign, ds, sc, tmp_path):
    pytest.importorskip("common.growth")
    groups = P.group_data(campaign["store"], "c1", campaign["infos"])
    plan = tmp_path / "synth-plan.toml"
    plan.write_text('name = "synth-plan"\n[[stage]]\ntrunk = ["s", "a"]\nsource = "sa"\n[[stage]]\nbranch = "b"\nconnecting = "s"\nsource = "sb"\n')
    model = P.new_model({m: ds.spec(m) for m in sc.modalities}, TOWER, 0, {m: s["encoder"] for m, s in campaign["glob"].items()})
    before = {k: v.clone() for k, v in model.adapters["b"].state_dict().items()}
    store = open_store("sqlite://")
    store.create_campaign("g1", {})
    out = P.grow_babel(model, str(plan), groups, AlignConfig(epochs=1, batch_size=32, temperature=0.2, lr=2e-3), CPU, 0, store, "g1", tmp_path / "ck")
    from common.growth import load_checkpoint

    grown = load_checkpoint(tmp_path / "ck" / "stage-2.pt")[1]["config"]  # the stages trained on every alignment setting given
    assert (grown.temperature, grown.lr, grown.batch_size, grown.epochs) == (0.2, 2e-3, 32, 1)
    assert out["pairs"] == {"sa": len(groups["sa"]), "sb": len(groups["sb"])}
    assert [st["stage"]["source"] for st in out["stages"]] == ["sa", "sb"]
    assert [r.name for r in store.stages("g1")] == ["s<->a@sa", "s<->b@sb"]
    assert any(not torch.equal(before[k], v) for k, v in model.adapters["b"].state_dict().items())
    with pytest.raises(ValueError, match="uploaded nothing"):
        P.grow_babel(model, str(plan), {"sa": groups["sa"]}, AlignConfig(epochs=1), CPU, 0)


def test_store_node_data_lines_up_modalities_by_span(ds):
    from node_agent.data import StoreNodeData
    from node_agent.store import open_store as open_node_store

    st = open_node_store("sqlite://")
    x = {m: ds.X[m][:5] for m in ("s", "a")}
    for m in ("s", "a"):
        ids = [f"{m}:phone:0:{i * 16}" for i in range(5)]
        st.add_windows(m, ids, np.arange(5) * 10**9, x[m], labels=[0, -1, 2, -1, 1], subjects=[3] * 5)
    data = StoreNodeData("n1", st, classes=["x", "y", "z"])
    assert data.modalities() == ["a", "s"] and data.classes() == ["x", "y", "z"]
    ids_s, xs, ys = data.windows("s")
    ids_a, xa, _ = data.windows("a")
    assert ids_s == ids_a == [f"phone:0:{i * 16}" for i in range(5)]
    assert np.array_equal(xs, x["s"]) and ys.tolist() == [0, -1, 2, -1, 1]
    assert data.spec("a").window == ds.X["a"].shape[1] and data.subjects("s").tolist() == [3] * 5
    with pytest.raises(KeyError, match="holds no modality 'b'"):
        data.windows("b")
    enc = {m: tasks.build_encoder(data.spec(m), TOWER) for m in ("a", "s")}
    batches = tasks.encode_and_pack(data, enc, "n1", "c9")
    assert {b.modality for b in batches} == {"a", "s"} and list(batches[0].window_ids) == ids_s


def test_the_schedules_match_the_central_experiments():
    from simulations.experiments.mmbind import MMBindSettings

    for cfg, st in ((CampaignConfig(), MMBindSettings()), (CampaignConfig.from_run_config({"quick": True}), MMBindSettings.quick())):
        assert cfg.pretrain_rounds * cfg.local_epochs == st.pretrain.epochs
        assert (cfg.align_epochs, cfg.head_steps, cfg.pretrain().objective) == (st.align.epochs, st.head.steps, st.pretrain.objective)
        assert cfg.head() == st.head
        assert (cfg.bind_k, cfg.label_pairs_per_sample, cfg.weighting()) == (st.k, st.label_pairs_per_sample, st.weighting)
    assert CampaignConfig.from_run_config({"quick": True}).window_cap() == MMBindSettings.quick().max_windows_per_group == 160
    assert CampaignConfig.from_run_config({"quick": True, "max-windows-per-group": 40}).window_cap() == 40
