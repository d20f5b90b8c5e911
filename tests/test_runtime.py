"""node_agent.runtime: verified atomic adapter swaps, inference shapes, events, a rebooted node's fetch."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import torch
from paho.mqtt.enums import CallbackAPIVersion

from common import codec
from common.codec import key_id_of
from common.modalities import ModalitySpec
from common.towers import ConceptAdapter, FusionHead, PrototypeNet, TowerConfig, build_encoder
from coordinator import phases
from coordinator.registry import serve
from coordinator.store import open_store as open_coordinator_store
from node_agent.publish import Publisher
from node_agent.runtime import NodeRuntime, load_keys
from node_agent.state_dir import StateDir
from node_agent.store import open_store
from proto import edgebind_pb2 as pb
from tests.test_ingest import broker  # noqa: F401  (the real-broker fixture)

KEY, KEY_ID = b"s" * 32, "k1"  # the coordinator's Ed25519 private key (seed)
PUB = codec.public_key_of(KEY)  # what the node holds
TOWER = TowerConfig(width=8, feature_dim=16, adapter_hidden=32, embed_dim=16, prototype_hidden=32)
SPECS = {m: ModalitySpec(m, channels=3, rate_hz=50.0, window=128) for m in ("gyro", "lin_acc")}
CLASSES = ["walk", "sit", "lie"]
N = 5


def make_bundle(modality: str, version: int, encoder_version: str, seed: int | None = None, head: bool = True) -> pb.AdapterBundle:
    torch.manual_seed(version if seed is None else seed)
    return codec.bundle_from_modules(
        modality, version,
        ConceptAdapter(TOWER.feature_dim, TOWER.adapter_hidden, TOWER.embed_dim),
        PrototypeNet(TOWER.embed_dim, TOWER.prototype_hidden),
        head=FusionHead({m: TOWER.feature_dim + TOWER.embed_dim for m in SPECS}, len(CLASSES)) if head else None,
        head_classes=CLASSES if head else (), campaign_id="c1", encoder_version=encoder_version,
    )  # fmt: skip


def sign(b: pb.AdapterBundle) -> pb.AdapterBundle:
    return codec.sign_bundle(b, KEY, KEY_ID)


@pytest.fixture
def windows() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {m: rng.standard_normal((N, 128, 3)).astype(np.float32) for m in SPECS}


@pytest.fixture
def rt(tmp_path) -> Iterator[NodeRuntime]:
    torch.manual_seed(0)
    store = open_store(tmp_path / "node.db")
    r = NodeRuntime(tmp_path / "state", "n1", keys={KEY_ID: PUB}, store=store)
    r.install_encoders({m: build_encoder(s, TOWER).state_dict() for m, s in SPECS.items()}, SPECS, TOWER)
    yield r
    store.close()


def bundles_for(rt: NodeRuntime, version: int, **kw) -> list[pb.AdapterBundle]:
    enc = rt.state_dir.encoder_versions()
    return [sign(make_bundle(m, version, enc[m], **kw)) for m in SPECS]


def test_without_adapters_there_is_nothing_to_run(rt, windows):
    assert rt.modalities == [] and rt.adapter_versions == {}
    with pytest.raises(RuntimeError, match="no encoder with an adapter"):
        rt.infer(windows)


def test_inference_shapes_for_every_subset(rt, windows):
    assert rt.install(bundles_for(rt, 1)) == {"applied": {"gyro": 1, "lin_acc": 1}, "rejected": {}}
    for mods in (["gyro"], ["lin_acc"], ["gyro", "lin_acc"]):
        out = rt.infer({m: windows[m] for m in mods}, window_ids=[f"w{i}" for i in range(N)])
        assert out.modalities == mods
        assert {m: e.shape for m, e in out.embeddings.items()} == {m: (N, TOWER.embed_dim) for m in mods}
        np.testing.assert_allclose(np.linalg.norm(out.embeddings[mods[0]], axis=1), 1, rtol=1e-5)
        assert out.fused.shape == (N, TOWER.embed_dim)
        assert out.logits.shape == (N, len(CLASSES))
        assert out.predictions.shape == (N,) and set(out.labels()) <= set(CLASSES)
        assert out.adapter_versions == {m: 1 for m in mods}
    with pytest.raises(ValueError, match="no adapter for 'acc'"):
        rt.infer({"acc": windows["gyro"]})
    with pytest.raises(ValueError, match=r"expected windows of shape \(N, 128, 3\)"):
        rt.infer({"gyro": windows["gyro"][:, :64]})
    with pytest.raises(ValueError, match="same number of windows"):
        rt.infer({"gyro": windows["gyro"], "lin_acc": windows["lin_acc"][:2]})


def _tamper(b: pb.AdapterBundle) -> pb.AdapterBundle:
    t = pb.AdapterBundle()
    t.CopyFrom(b)
    data = bytearray(t.tensors[0].data)
    data[0] ^= 1
    t.tensors[0].data = bytes(data)
    return t


def _rejects(rt: NodeRuntime) -> list[tuple[str, object, str]]:
    enc = rt.state_dir.encoder_versions()
    good2 = sign(make_bundle("gyro", 2, enc["gyro"]))
    unsigned = make_bundle("gyro", 3, enc["gyro"])
    other_key = codec.sign_bundle(make_bundle("gyro", 3, enc["gyro"]), b"x" * 32, "k9")
    wrong_encoder = sign(make_bundle("gyro", 3, "0123456789abcdef"))
    wrong_shape = sign(codec.bundle_from_modules("gyro", 3, ConceptAdapter(8, 8, 8), PrototypeNet(8, 8), encoder_version=enc["gyro"]))
    unknown = sign(make_bundle("ecg", 3, ""))
    return [
        ("replay", sign(make_bundle("gyro", 1, enc["gyro"], seed=7)), "gyro v1"),  # same version, other weights
        ("replay", good2.SerializeToString(), "gyro v2"),  # v2 a second time
        ("unsigned", unsigned, "gyro v3"),
        ("unknown-key", other_key, "gyro v3"),
        ("bad-signature", _tamper(sign(make_bundle("gyro", 3, enc["gyro"]))), "gyro v3"),
        ("malformed", b"\x0a\xff\xff not a bundle", "bundle-0"),
        ("unknown-modality", unknown, "ecg v3"),
        ("encoder-mismatch", wrong_encoder, "gyro v3"),
        ("bad-shape", wrong_shape, "gyro v3"),
    ]


def test_rejected_bundles_are_counted_and_the_old_adapters_kept(rt, windows):
    rt.install(bundles_for(rt, 1))
    rt.install([bundles_for(rt, 2)[0]])  # gyro v2
    before = rt.infer(windows)
    state_before = (rt.root / "state.json").read_bytes()
    for reason, bundle, name in _rejects(rt):
        assert rt.install([bundle]) == {"applied": {}, "rejected": {name: reason}}, reason
        assert rt.rejected[reason] >= 1
        after = rt.infer(windows)
        assert after.adapter_versions == {"gyro": 2, "lin_acc": 1}
        np.testing.assert_array_equal(after.fused, before.fused)
        assert (rt.root / "state.json").read_bytes() == state_before
    assert rt.store.current_adapter("gyro")[0] == 2


def test_a_first_bundle_whose_version_would_pin_the_node_is_refused(rt):
    enc = rt.state_dir.encoder_versions()
    pinned = sign(make_bundle("gyro", 2**63 - 1, enc["gyro"]))  # validly signed: a buggy or stolen signer
    assert rt.install([pinned]) == {"applied": {}, "rejected": {f"gyro v{2**63 - 1}": "version-jump"}}
    assert rt.install([sign(make_bundle("gyro", codec.MAX_FIRST_VERSION, enc["gyro"]))])["applied"] == {"gyro": codec.MAX_FIRST_VERSION}
    assert rt.install(bundles_for(rt, 1))["applied"] == {"lin_acc": 1}  # gyro v1 is now a replay


def test_good_bundles_in_a_mixed_batch_still_go_in(rt):
    rt.install(bundles_for(rt, 1))
    enc = rt.state_dir.encoder_versions()
    result = rt.install([make_bundle("gyro", 5, enc["gyro"]), sign(make_bundle("lin_acc", 4, enc["lin_acc"]))])
    assert result == {"applied": {"lin_acc": 4}, "rejected": {"gyro v5": "unsigned"}}
    assert rt.adapter_versions == {"gyro": 1, "lin_acc": 4}


def test_an_interrupted_write_leaves_the_old_adapters(rt, windows, monkeypatch):
    rt.install(bundles_for(rt, 1))
    before = rt.infer(windows)
    state_before = (rt.root / "state.json").read_bytes()
    real_replace = os.replace

    def crash(src, dst):  # the disk fills up as the new bundle is renamed into place
        if "adapters" in str(dst):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    result = rt.install(bundles_for(rt, 2))
    monkeypatch.undo()
    assert result["applied"] == {} and set(result["rejected"].values()) == {"write-failed"}
    assert (rt.root / "state.json").read_bytes() == state_before
    assert not [p for p in (rt.root / "adapters").iterdir() if p.name.startswith(".")]  # no temp file left
    np.testing.assert_array_equal(rt.infer(windows).fused, before.fused)
    fresh = NodeRuntime(rt.root, "n1", keys={KEY_ID: PUB})
    assert fresh.adapter_versions == {"gyro": 1, "lin_acc": 1}


def test_a_truncated_bundle_file_is_never_loaded(rt, windows):
    rt.install(bundles_for(rt, 1))
    before = rt.infer(windows)
    # A writer that is not atomic names v2 in state.json before its file is whole.
    blob = bundles_for(rt, 2)[0].SerializeToString(deterministic=True)
    (rt.root / "adapters" / "gyro-v2.pb").write_bytes(blob[: len(blob) // 2])
    state = json.loads((rt.root / "state.json").read_text())
    state["adapters"]["gyro"] = {"version": 2, "file": "adapters/gyro-v2.pb", "sha256": hashlib.sha256(blob).hexdigest()}
    (rt.root / "state.json").write_text(json.dumps(state))

    after = rt.infer(windows)  # the running runtime refuses the swap and keeps v1
    assert after.adapter_versions == {"gyro": 1, "lin_acc": 1}
    np.testing.assert_array_equal(after.fused, before.fused)
    rt.infer(windows)
    assert rt.rejected["corrupt"] == 1  # counted once, not once per inference

    rebooted = NodeRuntime(rt.root, "n1", keys={KEY_ID: PUB})  # a reboot loads nothing rather than half a bundle
    assert rebooted.adapter_versions == {} and rebooted.rejected["corrupt"] == 1
    with pytest.raises(RuntimeError):
        rebooted.infer(windows)


def test_an_altered_file_with_a_matching_hash_fails_its_signature(rt):
    rt.install(bundles_for(rt, 1))
    forged = _tamper(bundles_for(rt, 2)[0]).SerializeToString(deterministic=True)
    (rt.root / "adapters" / "gyro-v2.pb").write_bytes(forged)
    state = json.loads((rt.root / "state.json").read_text())
    state["adapters"]["gyro"] = {"version": 2, "file": "adapters/gyro-v2.pb", "sha256": hashlib.sha256(forged).hexdigest()}
    (rt.root / "state.json").write_text(json.dumps(state))
    assert not rt.refresh()
    assert rt.adapter_versions == {"gyro": 1, "lin_acc": 1} and rt.rejected["bad-signature"] == 1


def test_a_swap_by_the_client_app_is_picked_up_by_the_next_inference(rt, windows):
    rt.install(bundles_for(rt, 1))
    v1 = rt.infer(windows)
    writer = StateDir(rt.root)  # what the ClientApp holds for the same directory
    writer.swap_in({b.modality: b for b in bundles_for(rt, 2)})
    v2 = rt.infer(windows)
    assert v2.adapter_versions == {"gyro": 2, "lin_acc": 2}
    assert not np.allclose(v1.fused, v2.fused)


def test_load_keys(tmp_path):
    f = tmp_path / "keys.json"
    f.write_text(json.dumps({"k1": PUB.hex()}))
    assert load_keys(f, "ab" * 32, "k2") == {"k1": PUB, "k2": b"\xab" * 32}
    assert load_keys(None, PUB.hex()) == {key_id_of(PUB): PUB}
    assert key_id_of(PUB) == phases.signing_key(KEY.hex(), "", {})[1]  # the coordinator's default id is its public key's
    with pytest.raises(ValueError, match="32"):
        load_keys(None, "ab" * 16)


# --- with real servers ----------------------------------------------------------------


@pytest.mark.e2e
def test_events_are_published_on_the_node_topic(rt, windows, broker):  # noqa: F811
    rt.install(bundles_for(rt, 1))
    got: list[dict] = []
    done, subscribed = threading.Event(), threading.Event()

    def on_message(_c, _u, msg):
        assert msg.topic == "edgebind/n1/events"
        got.append(json.loads(msg.payload))
        if len(got) == N:
            done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-events")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.connect(*broker.address)
    sub.subscribe("edgebind/n1/events", qos=1)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        with Publisher(broker.address, "n1-events") as pub:
            rt.publisher = pub
            out = rt.infer(windows, window_ids=[f"w{i}" for i in range(N)])
        assert done.wait(10)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert [e["window_id"] for e in got] == [f"w{i}" for i in range(N)]
    assert [e["prediction"] for e in got] == out.predictions.tolist()
    assert {e["label"] for e in got} <= set(CLASSES)
    assert all(e["node_id"] == "n1" and e["adapter_versions"] == {"gyro": 1, "lin_acc": 1} for e in got)
    assert all(0 < e["confidence"] <= 1 for e in got)


@pytest.mark.e2e
def test_a_rebooted_node_fetches_newer_bundles_from_the_registry(rt, windows):
    rt.install(bundles_for(rt, 1))
    coord = open_coordinator_store("sqlite://")
    coord.upsert_node("n1", {m: {} for m in SPECS})
    coord.create_campaign("c1", {})
    for b in bundles_for(rt, 1) + bundles_for(rt, 3):
        blob = b.SerializeToString(deterministic=True)
        coord.record_adapter_version(b.modality, b.version, "c1", blob, hashlib.sha256(blob).hexdigest())
    server, port = serve(coord)
    try:
        rebooted = NodeRuntime(rt.root, "n1", keys={KEY_ID: PUB}, store=rt.store)
        assert rebooted.adapter_versions == {"gyro": 1, "lin_acc": 1}
        result = rebooted.fetch_latest(f"127.0.0.1:{port}")
        assert result == {"applied": {"gyro": 3, "lin_acc": 3}, "rejected": {}}
        assert rebooted.infer(windows).adapter_versions == {"gyro": 3, "lin_acc": 3}
        assert rebooted.fetch_latest(f"127.0.0.1:{port}") == {"applied": {}, "rejected": {}}
        assert rebooted.report_status(f"127.0.0.1:{port}").ok
        assert coord.node_status("n1").adapter_versions == {"gyro": 3, "lin_acc": 3}
        assert rt.store.current_adapter("gyro")[0] == 3
    finally:
        server.stop(0).wait()
        coord.close()


def test_encoder_directory_round_trip(tmp_path):
    from node_agent.runtime import read_encoder_dir

    sd = build_encoder(SPECS["gyro"], TOWER).state_dict()
    torch.save(sd, tmp_path / "gyro.pt")
    got = read_encoder_dir(tmp_path)
    assert list(got) == ["gyro"] and all(torch.equal(got["gyro"][k], sd[k]) for k in sd)
    with pytest.raises(FileNotFoundError, match="no encoder lin_acc.pt"):
        read_encoder_dir(tmp_path, ["gyro", "lin_acc"])


# --- the command line ---------------------------------------------------------------------


def test_cli_infer_and_status(rt, windows, tmp_path, capsys):
    from node_agent.cli import main

    rt.install(bundles_for(rt, 1))
    npz = tmp_path / "w.npz"
    np.savez(npz, X_gyro=windows["gyro"], X_lin_acc=windows["lin_acc"])
    args = ["infer", "--state-dir", str(rt.root), "--node-id", "n1", "--npz", str(npz), "--signing-public-key", PUB.hex(), "--signing-key-id", KEY_ID]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "# node n1, modalities gyro+lin_acc, adapters {'gyro': 1, 'lin_acc': 1}"
    assert [line.split("\t")[0] for line in out[1 : 1 + N]] == [str(i) for i in range(N)]
    assert {line.split("\t")[1] for line in out[1 : 1 + N]} <= set(CLASSES)

    assert main(args + ["--json", "--modalities", "gyro"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(events) == N and all(e["modalities"] == ["gyro"] for e in events)

    assert main(["infer", "--state-dir", str(rt.root), "--node-id", "n1", "--npz", str(npz)]) == 2  # no key: nothing loads
    assert "no adapters" in capsys.readouterr().err

    assert main(["status", "--store", str(tmp_path / "node.db"), "--state-dir", str(rt.root)]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["adapters"] == {"gyro": 1, "lin_acc": 1} and set(st["encoders"]) == {"gyro", "lin_acc"}
    assert st["store"]["adapters"] == {"gyro": 1, "lin_acc": 1}


def test_up_publishes_a_prediction_for_every_new_window_once(rt, windows):
    from node_agent.cli import _publish_new
    from node_agent.ingest import Ingest, sensor_topic
    from node_agent.publish import window_frames

    class Sink:
        def __init__(self):
            self.events = []

        def publish(self, topic, payload):
            self.events.append((topic, json.loads(payload)))

    ing = Ingest("n1", rt.store, SPECS)
    published: set[str] = set()
    rt.publisher = Sink()
    feed = lambda lo, hi: [ing.handle(sensor_topic("n1", m), f.SerializeToString()) for m in SPECS  # noqa: E731
                           for f in window_frames("n1", m, windows[m][lo:hi], 50.0, seq0=3 * lo)]  # fmt: skip
    feed(0, 3)
    ing.cut()
    assert _publish_new(rt, rt.store, list(SPECS), published) == 0  # no adapters yet
    rt.install(bundles_for(rt, 1))
    assert _publish_new(rt, rt.store, list(SPECS), published) == 3
    feed(3, N)
    ing.cut()
    assert _publish_new(rt, rt.store, list(SPECS), published) == N - 3
    assert _publish_new(rt, rt.store, list(SPECS), published) == 0
    ids = [e["window_id"] for _, e in rt.publisher.events]
    assert ids == [f"replay:{3 * i}:0" for i in range(N)]
    assert {t for t, _ in rt.publisher.events} == {"edgebind/n1/events"}
    assert all(e["modalities"] == ["gyro", "lin_acc"] for _, e in rt.publisher.events)


def test_a_key_offered_in_band_is_trusted_by_simulated_nodes_only(tmp_path):
    from node_agent.client_app import Node

    offered = codec.public_key_of(b"o" * 32)
    deployed = Node("n1", "g", "train", None, StateDir(tmp_path / "d"), PUB, "")
    simulated = Node("n2", "g", "train", None, StateDir(tmp_path / "s"), None, "", simulated=True)
    for node in (deployed, simulated):
        node.state_dir.remember_key("campaign-key", offered.hex())  # as if a collect message had carried it
    assert deployed.keys() == {codec.key_id_of(PUB): PUB}  # only what it was provisioned with
    assert simulated.keys() == {"campaign-key": offered}
    assert NodeRuntime(tmp_path / "d", "n1", keys=deployed.keys()).keys() == deployed.keys()  # the runtime adds nothing from state


def test_after_rotate_key_a_node_follows_the_new_key_with_the_next_bundles_and_refuses_the_old_one(rt, windows, tmp_path):
    from coordinator.cli import keygen
    from coordinator.keys import rotate_key, rotations_for

    made = keygen(tmp_path / "coord")
    old = codec.key_from_file(made["private_key_file"])
    provisioned = {KEY_ID: PUB, made["key_id"]: codec.public_key_of(old)}  # the node was given the coordinator's public key by hand
    node = NodeRuntime(rt.root, "n1", keys=provisioned, store=rt.store)
    enc = node.state_dir.encoder_versions()
    signed = lambda v, key, chain=(): [codec.sign_bundle(make_bundle(m, v, enc[m]), key, codec.key_id_of(codec.public_key_of(key)), rotations=chain) for m in SPECS]  # noqa: E731
    assert node.install(signed(1, old))["applied"] == {"gyro": 1, "lin_acc": 1}
    first, second = rotate_key(tmp_path / "coord"), rotate_key(tmp_path / "coord")  # twice: the node missed the first
    assert (tmp_path / "coord" / "signing.pub").read_text().strip() == second["public_key"] and first["replaces"] == made["key_id"]
    assert oct((tmp_path / "coord" / "signing.key").stat().st_mode & 0o777) == "0o600"
    assert codec.key_from_file(first["retired_key_file"]) == old  # each replaced private key is kept (0600) beside the new one
    assert codec.key_id_of(codec.public_key_of(codec.key_from_file(second["retired_key_file"]))) == first["key_id"]
    new = codec.key_from_file(tmp_path / "coord" / "signing.key")
    chain = rotations_for(str(tmp_path / "coord" / "signing.key"), {}, new)
    assert [r.new_key_id for r in chain] == [first["key_id"], second["key_id"]]
    assert node.install(signed(2, new))["rejected"] == {"gyro v2": "unknown-key", "lin_acc v2": "unknown-key"}  # without the chain: not trusted
    assert node.install(signed(2, new, chain)) == {"applied": {"gyro": 2, "lin_acc": 2}, "rejected": {}}
    assert json.loads((rt.root / "state.json").read_text())["key_trust"]["rotated"] == {second["key_id"]: second["public_key"]}
    rebooted = NodeRuntime(rt.root, "n1", keys=provisioned, store=rt.store)  # the pin outlives a restart: the provisioned keys are retired
    assert rebooted.infer(windows).adapter_versions == {"gyro": 2, "lin_acc": 2}
    assert rebooted.install(signed(3, old))["rejected"] == {"gyro v3": "unknown-key", "lin_acc v3": "unknown-key"}
    assert rebooted.install(signed(3, new, chain))["applied"] == {"gyro": 3, "lin_acc": 3}
    # the Registry path takes the same chain, through the same gate: a node that never saw a push follows it too
    fresh = NodeRuntime(tmp_path / "fresh", "n2", keys=provisioned)
    fresh.install_encoders({m: rt.state_dir.encoders()[m].state_dict() for m in SPECS}, SPECS, TOWER)
    coord = open_coordinator_store("sqlite://")
    coord.upsert_node("n2", {m: {} for m in SPECS})
    coord.create_campaign("c1", {})
    for b in signed(4, new, chain):
        blob = b.SerializeToString(deterministic=True)
        coord.record_adapter_version(b.modality, b.version, "c1", blob, hashlib.sha256(blob).hexdigest())
    server, port = serve(coord)
    try:
        assert fresh.fetch_latest(f"127.0.0.1:{port}") == {"applied": {"gyro": 4, "lin_acc": 4}, "rejected": {}}
    finally:
        server.stop(0).wait()
        coord.close()
    assert json.loads((tmp_path / "fresh" / "state.json").read_text())["key_trust"]["rotated"] == {second["key_id"]: second["public_key"]}


def test_a_broken_rotation_chain_is_named_before_anything_is_signed(tmp_path):
    from coordinator.cli import keygen
    from coordinator.keys import rotate_key, rotations_for

    keygen(tmp_path / "c")
    for _ in range(3):
        rotate_key(tmp_path / "c")
    key_file = tmp_path / "c" / "signing.key"
    key = codec.key_from_file(key_file)
    assert len(rotations_for(str(key_file), {}, key)) == 3
    with pytest.raises(ValueError, match="a rotation did not finish"):  # a key that is not where the chain ends
        rotations_for("", {"EDGEBIND_SIGNING_KEY_FILE": str(key_file)}, b"z" * 32)
    sorted((tmp_path / "c" / "rotations").glob("*.pb"))[1].unlink()  # the middle record lost: the third no longer chains on
    with pytest.raises(ValueError, match="the chain is broken"):
        rotations_for(str(key_file), {}, key)
    with pytest.raises(ValueError, match="the chain is broken"):
        rotate_key(tmp_path / "c")  # nor is a fourth rotation written onto it
    with pytest.raises(FileNotFoundError, match="keygen"):
        rotate_key(tmp_path / "none")
