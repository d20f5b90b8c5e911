"""Property-based tests over every decoder: random and mutated input gives a named error (CodecError / ValueError), never a crash,
and never a change to data already stored."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from common import codec
from common.config import CampaignConfig, ConfigError
from common.data.dataset import WindowDataset
from common.data.scenarios import Scenario
from common.growth import GrowthPlan
from common.modalities import ModalitySpec
from common.towers import FusionHead, TowerConfig, build_encoder
from coordinator import phases
from node_agent.ingest import Ingest, node_specs, sensor_topic
from node_agent.runtime import admit_bundles
from node_agent.store import open_store
from proto import edgebind_pb2 as pb

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def mutated(draw, valid: bytes) -> bytes:
    """A valid payload with bytes flipped, cut, inserted or repeated (what a broken link or a hostile peer sends)."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
        if not data:
            data += draw(st.binary(min_size=1, max_size=8))
            continue
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[i : i + draw(st.integers(1, 16))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            data += data[i : i + draw(st.integers(1, 64))]
    return bytes(data)


def payloads(valid: bytes):
    return st.one_of(st.binary(max_size=256), mutated(valid))


# --- sensor frames: the node's ingest ------------------------------------------------------------

NODE, SPECS = "n1", node_specs(["acc"], window=8)
FRAME = pb.SensorFrame(node_id=NODE, sensor_id="s1", modality="acc", seq=1, timestamp_ns=10**18, rate_hz=50.0, channels=3,
                       samples=[0.1] * 24).SerializeToString()  # fmt: skip


@FUZZ
@given(payload=payloads(FRAME))
def test_ingest_takes_any_payload_without_crashing_or_losing_a_frame(payload):
    with open_store("sqlite://") as store:
        ingest = Ingest(NODE, store, SPECS)
        assert ingest.handle(sensor_topic(NODE, "acc"), FRAME) == "accepted"
        before = {(f.sensor_id, f.seq): f.samples for f in store.frames("acc")}
        outcome = ingest.handle(sensor_topic(NODE, "acc"), payload)
        assert isinstance(outcome, str) and outcome  # accepted, duplicate, or the reason it was refused
        after = {(f.sensor_id, f.seq): f.samples for f in store.frames("acc")}
        assert all(k in after and np.array_equal(after[k], v) for k, v in before.items())  # nothing accepted before is lost or changed
        assert len(after) == len(before) + (outcome == "accepted")
        assert all(np.isfinite(x).all() for x in after.values())


# --- embedding batches: the coordinator's collect --------------------------------------------------

BATCH = codec.encode_embeddings(node_id="n1", campaign_id="c1", batch_id="acc-00000", modality="acc", window_ids=["w0", "w1", "w2"],
                                embeddings=np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32), labels=np.array([0, -1, 2]),
                                dtype="int8").SerializeToString()  # fmt: skip


@FUZZ
@given(payload=payloads(BATCH))
def test_an_embedding_batch_decodes_or_is_refused_by_name(payload):
    try:
        d = codec.decode_embeddings(codec.parse_embedding_batch(payload), expected_dim=8, known_modalities={"acc"})
    except codec.CodecError:
        return
    assert d.embeddings.shape == (len(d.window_ids), 8) and np.isfinite(d.embeddings).all()
    assert len(d.labels) == len(d.window_ids) and d.labels.min(initial=-1) >= -1


@FUZZ
@given(payload=payloads(BATCH))
def test_collect_stores_nothing_from_a_bad_upload_and_keeps_what_it_had(payload):
    store = phases_store()
    rep = phases.collect(store, "c1", [("n1", payload)], ["acc"], expected_dim=8)
    assert rep.stored + len(rep.rejected) + rep.duplicates == 1
    good = phases.collect(store, "c1", [("n1", BATCH)], ["acc"], expected_dim=8)  # the good batch still goes in, once
    assert good.stored + good.duplicates == 1
    store.close()


def phases_store():
    from coordinator.store import open_store as open_coordinator_store

    s = open_coordinator_store("sqlite://")
    s.create_campaign("c1", {})
    return s


# --- adapter bundles: the node's one gate -----------------------------------------------------------

TOWER = TowerConfig(width=8, feature_dim=16, adapter_hidden=16, embed_dim=8, prototype_hidden=16)
KEY, KEY_ID = b"k" * 32, "k1"


def _bundle() -> bytes:
    from common.towers import AlignedModel

    spec = ModalitySpec("acc", 3, 50.0, 16)
    torch.manual_seed(0)
    model = AlignedModel({"acc": spec}, TOWER)
    head = FusionHead({"acc": TOWER.feature_dim + TOWER.embed_dim}, 3)
    b = codec.bundle_from_modules("acc", 1, model.adapters["acc"], model.prototype, head, head_classes=["a", "b", "c"], campaign_id="c1")
    codec.sign_bundle(b, KEY, KEY_ID)
    return b.SerializeToString()


BUNDLE = _bundle()
STATE = {"encoders": {"acc": {"version": "e1", "file": "", "spec": {}}}, "adapters": {}, "tower": TOWER.to_dict()}


@FUZZ
@given(payload=payloads(BUNDLE))
def test_the_bundle_gate_admits_only_what_is_signed_and_fits(payload):
    admitted, refused = admit_bundles([payload], STATE, {KEY_ID: codec.public_key_of(KEY)})
    assert len(admitted) + len(refused) == 1
    if admitted:  # then it is, byte for byte, what the coordinator signed (a flip anywhere breaks the signature)
        assert admitted["acc"].SerializeToString() == pb.AdapterBundle.FromString(BUNDLE).SerializeToString()
    else:
        assert set(refused.values()) <= {"malformed", "unsigned", "unknown-key", "bad-signature", "expired", "replay", "version-jump", "unknown-modality", "encoder-mismatch", "bad-shape"}


def test_the_unmutated_bundle_is_admitted():
    admitted, refused = admit_bundles([BUNDLE], STATE, {KEY_ID: codec.public_key_of(KEY)})
    assert list(admitted) == ["acc"] and refused == {}
    assert build_encoder(ModalitySpec("acc", 3, 50.0, 16), TOWER) is not None


# --- manifests ----------------------------------------------------------------------------------

MANIFEST = codec.encode_manifest("n1", "g", "train", {"acc": ModalitySpec("acc", 3, 50.0, 128)}, {"acc": (10, 2)}, ["x", "y"],
                                 [("g", "train", 10, 2)]).SerializeToString()  # fmt: skip


@FUZZ
@given(payload=payloads(MANIFEST))
def test_a_manifest_reads_or_is_refused_by_name(payload):
    try:
        info, specs, classes = phases.read_manifest(payload, 7)
    except ValueError:  # CodecError is one
        return
    assert info.node_id and set(specs) == set(info.modalities) and info.flower_id == 7
    assert all(1 <= s.channels <= codec.MAX_CHANNELS and 1 <= s.window <= codec.MAX_WINDOW and 0 < s.rate_hz for s in specs.values())


# --- settings: scenarios, plans, run configs ------------------------------------------------------

values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
SCENARIO_KEYS = ["name", "shared", "binding", "dropout", "description", "group", "validation", "test", "modalities", "share", "nodes", "labelled",
                 "subjects", "role", "subjects_per_node", "bogus"]  # fmt: skip


PLAN_KEYS = ["name", "description", "scenario", "stage", "bogus"]
STAGE_KEYS = ["trunk", "branch", "connecting", "source", "kind", "bogus"]


@pytest.mark.parametrize("load, keys, inner, inner_keys", [(Scenario.from_dict, SCENARIO_KEYS, "group", SCENARIO_KEYS), (GrowthPlan.from_dict, PLAN_KEYS, "stage", STAGE_KEYS)],
                         ids=["scenario", "plan"])  # fmt: skip
@FUZZ
@given(data=st.data())
def test_a_scenario_or_plan_table_loads_or_is_refused_by_name(load, keys, inner, inner_keys, data):
    table = data.draw(st.dictionaries(st.sampled_from(keys), values, max_size=6))
    rows = data.draw(st.lists(st.dictionaries(st.sampled_from(inner_keys), values, max_size=5), max_size=3))
    try:
        load({**table, inner: rows} if rows else table, name="fuzz")
    except ValueError:  # ConfigError is one: a named refusal, never TypeError, KeyError or AttributeError
        pass


@FUZZ
@given(config=st.dictionaries(st.sampled_from([*CampaignConfig.keys()[:40], "bogus-key"]), values, max_size=5))
def test_a_run_config_parses_or_is_refused_by_name(config):
    try:
        cfg = CampaignConfig.from_run_config(config)
    except ValueError:
        return
    assert cfg.round_timeout > 0 and cfg.discovery_timeout > 0
    assert isinstance(ConfigError("x"), ValueError)


# --- .npz datasets ----------------------------------------------------------------------------------

arrays = st.sampled_from([
    np.array([0, 1, 2]), np.array([0.0, 1.0, float("nan")]), np.array([1e30, 0, 0]), np.array([-5, 0, 1]), np.array(["a", "b", "c"]),
    np.array([0, 1]), np.zeros((3, 2)), np.array(True), np.array(-50.0), np.array([50.0, 60.0]), np.zeros((3, 8, 3), np.float32),
    np.full((3, 8, 3), np.inf, np.float32), np.zeros((3, 8), np.float32), np.array(50.0),
])  # fmt: skip


@FUZZ
@given(content=st.dictionaries(st.sampled_from(["y", "subject", "X_acc", "X_gyro", "rate_acc", "label_names", "recording", "start"]), arrays, max_size=8))
@example(content={"subject": np.array([0, 1, 2]), "y": np.array(50.0)})  # a scalar y once raised numpy's own TypeError
def test_an_npz_loads_or_is_refused_by_name(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("npz") / "d.npz"
    np.savez(path, **content)
    try:
        ds = WindowDataset.load(path)
    except ValueError:
        return
    assert ds.y.dtype == np.int64 and (ds.y >= -1).all() and all(math.isfinite(r) and r > 0 for r in ds.rates.values())
    assert all(np.isfinite(x).all() for x in ds.X.values())


@pytest.mark.parametrize("payload", [b"", b"PK\x03\x04 not a zip", b"\x93NUMPY garbage"])
def test_a_file_that_is_not_an_npz_is_refused_by_name(tmp_path, payload):
    path = tmp_path / "d.npz"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match="not a dataset in edgebind's .npz format"):
        WindowDataset.load(path)
