"""common.codec: quantisation bounds, payload sizes, every rejection path, bundle signing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common import codec
from common.codec import BundleRejected, CodecError
from proto import edgebind_pb2 as pb

N, D = 64, 16


@pytest.fixture
def emb() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)


def _ids(n: int = N) -> list[str]:
    return [f"w{i}" for i in range(n)]


def _batch(emb: np.ndarray, **kw) -> pb.EmbeddingBatch:
    args = dict(node_id="n1", campaign_id="c1", batch_id="b1", modality="acc", window_ids=_ids(len(emb)))
    args.update(kw)
    return codec.encode_embeddings(embeddings=emb, **args)


# --- tensors -----------------------------------------------------------------


def test_float32_round_trip_is_exact(emb):
    msg = codec.tensor_to_proto(emb, name="x", dtype="float32")
    assert len(msg.data) == 4 * N * D
    np.testing.assert_array_equal(codec.tensor_from_proto(msg), emb)


def test_float16_round_trip_and_size(emb):
    msg = codec.tensor_to_proto(torch.from_numpy(emb), dtype="float16")
    assert len(msg.data) == 2 * N * D
    assert not msg.scale
    back = codec.tensor_from_proto(msg)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, emb, rtol=1e-3, atol=1e-7)


def test_int8_round_trip_within_half_a_step_and_size(emb):
    emb[:, 3] *= 100  # columns on very different scales get their own step
    msg = codec.tensor_to_proto(emb, dtype="int8")
    assert len(msg.data) + 4 * len(msg.scale) == N * D + 4 * D
    scale = np.asarray(msg.scale, dtype=np.float32)
    np.testing.assert_allclose(scale, np.abs(emb).max(axis=0) / 127, rtol=1e-6)
    err = np.abs(codec.tensor_from_proto(msg) - emb)
    assert (err <= scale / 2 * (1 + 1e-5) + 1e-7).all()


def test_int8_zero_column_and_higher_rank():
    x = np.random.default_rng(1).standard_normal((3, 5, 4)).astype(np.float32)
    x[..., 2] = 0
    msg = codec.tensor_to_proto(x, dtype="int8")
    assert list(msg.shape) == [3, 5, 4] and len(msg.scale) == 4 and msg.scale[2] == 0
    back = codec.tensor_from_proto(msg)
    assert back.shape == x.shape and np.all(back[..., 2] == 0)
    assert np.abs(back - x).max() <= max(msg.scale) / 2 * (1 + 1e-5)


def test_unknown_dtype_is_refused(emb):
    with pytest.raises(CodecError, match="unknown dtype 'bfloat16'"):
        codec.tensor_to_proto(emb, dtype="bfloat16")
    msg = codec.tensor_to_proto(emb)
    for bad in (pb.Tensor.DTYPE_UNSPECIFIED, 99):
        msg.dtype = bad
        with pytest.raises(CodecError, match=f"unknown dtype {bad}"):
            codec.tensor_from_proto(msg)


def test_shape_disagreeing_with_data_length(emb):
    msg = codec.tensor_to_proto(emb, dtype="float16")
    msg.shape[:] = [N, D + 1]
    with pytest.raises(CodecError, match=r"as float16 needs 2176 bytes, data has 2048"):
        codec.tensor_from_proto(msg)
    msg.shape[:] = [N, -D]
    with pytest.raises(CodecError, match="negative dimension"):
        codec.tensor_from_proto(msg)


def test_int8_scale_count_must_match_last_dim(emb):
    msg = codec.tensor_to_proto(emb, dtype="int8")
    del msg.scale[-1]
    with pytest.raises(CodecError, match=f"needs {D} scales.*got {D - 1}"):
        codec.tensor_from_proto(msg)


def test_oversized_tensor(emb):
    msg = codec.tensor_to_proto(emb)
    with pytest.raises(CodecError, match=r"payload of 4096 bytes exceeds max_bytes=4095"):
        codec.tensor_from_proto(msg, max_bytes=4095)
    assert codec.tensor_from_proto(msg, max_bytes=4096).shape == (N, D)


@pytest.mark.parametrize("bad, what", [(np.nan, "2 NaN and 0 Inf"), (np.inf, "0 NaN and 2 Inf")])
def test_non_finite_values_are_counted(emb, bad, what):
    emb[0, 0] = emb[5, 3] = bad
    with pytest.raises(CodecError, match=what):
        codec.tensor_to_proto(emb)
    # and on the way in, from a sender that did not check
    raw = pb.Tensor(name="x", dtype=pb.Tensor.FLOAT32, shape=emb.shape, data=emb.tobytes())
    with pytest.raises(CodecError, match=what):
        codec.tensor_from_proto(raw)


def test_float16_overflow_is_refused():
    with pytest.raises(CodecError, match="float16 range"):
        codec.tensor_to_proto(np.array([1e5], dtype=np.float32), dtype="float16")


def test_state_dict_round_trip_loads_into_a_fresh_module():
    torch.manual_seed(0)
    src, dst = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    tensors = codec.state_dict_to_tensors(src.state_dict())
    assert [t.name for t in tensors] == ["weight", "bias"]
    assert all(t.dtype == pb.Tensor.FLOAT32 for t in tensors)
    dst.load_state_dict(codec.tensors_to_state_dict(tensors))
    x = torch.randn(3, 8)
    assert torch.equal(src(x), dst(x))


def test_state_dict_names_must_be_present_and_unique():
    t = codec.tensor_to_proto(np.zeros(2), name="w")
    with pytest.raises(CodecError, match="'w' appears twice"):
        codec.tensors_to_state_dict([t, t])
    with pytest.raises(CodecError, match="without a name"):
        codec.tensors_to_state_dict([codec.tensor_to_proto(np.zeros(2))])


# --- embedding batches ---------------------------------------------------------


def test_embeddings_round_trip_through_bytes(emb):
    labels = np.where(np.arange(N) % 3 == 0, np.arange(N) % 5, -1)
    msg = _batch(emb, labels=labels, timestamps_ns=np.arange(N) * 10**9, subjects=[7] * N, encoder_version="e1")
    got = codec.decode_embeddings(
        codec.parse_embedding_batch(msg.SerializeToString()), expected_dim=D, known_modalities={"acc", "gyro"}
    )
    assert (got.node_id, got.campaign_id, got.batch_id, got.modality) == ("n1", "c1", "b1", "acc")
    assert got.window_ids == _ids() and len(got) == N
    assert got.dtype == "float16" and got.encoder_version == "e1"
    np.testing.assert_allclose(got.embeddings, emb, rtol=1e-3, atol=1e-7)
    np.testing.assert_array_equal(got.labels, labels)
    np.testing.assert_array_equal(got.timestamps_ns, np.arange(N) * 10**9)
    np.testing.assert_array_equal(got.subjects, [7] * N)


def test_unlabelled_batch_decodes_to_minus_one(emb):
    got = codec.decode_embeddings(_batch(emb, dtype="int8"))
    np.testing.assert_array_equal(got.labels, np.full(N, -1))
    assert got.timestamps_ns is None and got.subjects is None and got.dtype == "int8"


def test_batch_sizes_on_the_wire(emb):
    fp16, int8 = _batch(emb), _batch(emb, dtype="int8")
    assert len(fp16.embeddings.data) == 2 * N * D
    assert len(int8.embeddings.data) + 4 * len(int8.embeddings.scale) == N * D + 4 * D
    assert int8.ByteSize() < fp16.ByteSize() < _batch(emb, dtype="float32").ByteSize()


def test_truncated_and_garbage_bytes(emb):
    data = _batch(emb).SerializeToString()
    with pytest.raises(CodecError, match="EmbeddingBatch: malformed bytes"):
        codec.parse_embedding_batch(data[: len(data) // 2])
    with pytest.raises(CodecError, match="malformed bytes"):
        codec.parse_embedding_batch(b"\xff\xff\xff\xff\xff")


def test_oversized_batch(emb):
    data = _batch(emb).SerializeToString()
    with pytest.raises(CodecError, match=f"payload of {len(data)} bytes exceeds max_bytes=1000"):
        codec.parse_embedding_batch(data, max_bytes=1000)
    with pytest.raises(CodecError, match="exceeds max_bytes=1000"):
        codec.decode_embeddings(_batch(emb), max_bytes=1000)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(window_ids=_ids(N - 1)), f"{N - 1} window ids for {N} rows"),
        (dict(window_ids=["same"] * N), "duplicate window ids"),
        (dict(labels=[1, 2, 3]), f"3 labels for {N} rows"),
        (dict(timestamps_ns=[1]), f"1 timestamps_ns for {N} rows"),
        (dict(subjects=[1, 2]), f"2 subjects for {N} rows"),
        (dict(labels=[-2] * N), "labels below -1"),
        (dict(modality=""), "empty modality"),
        (dict(node_id=""), "empty node id"),
    ],
)
def test_bad_batches_are_refused_on_encode_and_decode(emb, kw, match):
    with pytest.raises(CodecError, match=match):
        _batch(emb, **kw)
    # a sender that does not use encode_embeddings is caught on decode
    msg = _batch(emb)
    for field, value in kw.items():
        if isinstance(value, list):
            msg.ClearField(field)
            getattr(msg, field).extend(value)
        else:
            setattr(msg, field, value)
    with pytest.raises(CodecError, match=match):
        codec.decode_embeddings(msg)


def test_embeddings_must_be_two_dimensional(emb):
    with pytest.raises(CodecError, match=r"must be \(rows, dim\), got shape \(64, 4, 4\)"):
        _batch(emb.reshape(N, 4, 4))
    msg = _batch(emb)
    msg.ClearField("embeddings")
    with pytest.raises(CodecError, match="no embeddings tensor"):
        codec.decode_embeddings(msg)


def test_unknown_modality_and_wrong_dim(emb):
    msg = _batch(emb)
    with pytest.raises(CodecError, match="unknown modality 'acc'"):
        codec.decode_embeddings(msg, known_modalities={"gyro"})
    with pytest.raises(CodecError, match=f"dim {D}, expected 32"):
        codec.decode_embeddings(msg, expected_dim=32)


def test_nan_in_a_received_batch_is_counted(emb):
    msg = _batch(emb, dtype="float32")
    bad = emb.copy()
    bad[1, 1] = np.nan
    msg.embeddings.data = bad.tobytes()
    with pytest.raises(CodecError, match="1 NaN and 0 Inf"):
        codec.decode_embeddings(msg)


# --- sensor frames -------------------------------------------------------------

KNOWN = {"acc": 3, "gyro": 3, "ecg": 1}


def _frame(**kw) -> pb.SensorFrame:
    args = dict(
        node_id="n1",
        sensor_id="imu0",
        modality="acc",
        seq=0,
        timestamp_ns=1_700_000_000_000_000_000,
        rate_hz=50.0,
        channels=3,
        samples=np.arange(12, dtype=np.float32).tolist(),
    )
    args.update(kw)
    return pb.SensorFrame(**args)


def test_valid_frame_becomes_time_by_channels():
    x = codec.validate_sensor_frame(_frame(), KNOWN)
    assert x.shape == (4, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(x[1], [3, 4, 5])


@pytest.mark.parametrize(
    "frame, match",
    [
        (_frame(samples=[0.0] * 10), "10 samples is not a multiple of 3 channels"),
        (_frame(channels=6, samples=[0.0] * 12), "6 channels, modality 'acc' has 3"),
        (_frame(samples=[0.0, float("nan"), 1.0]), "1 NaN and 0 Inf"),
        (_frame(samples=[float("inf"), 0.0, 1.0]), "0 NaN and 1 Inf"),
        (_frame(seq=None), "seq missing"),
        (_frame(modality="lidar"), "unknown modality 'lidar'"),
        (_frame(modality=""), "empty modality"),
        (_frame(node_id=""), "empty node id"),
        (_frame(sensor_id=""), "empty sensor id"),
        (_frame(timestamp_ns=0), "timestamp_ns missing"),
        (_frame(rate_hz=0.0), "rate_hz must be positive"),
        (_frame(samples=[]), "no samples"),
        (_frame(samples=[0.0] * 3000), "3000 samples exceed max_samples=2048"),
    ],
)
def test_bad_frames_are_refused(frame, match):
    with pytest.raises(CodecError, match=match):
        codec.validate_sensor_frame(frame, KNOWN, max_samples=2048)


# --- adapter bundles -------------------------------------------------------------

KEY, OTHER = b"k" * 32, b"o" * 32  # Ed25519 private keys (seeds): the coordinator's, and somebody else's
PUB, OTHER_PUB = codec.public_key_of(KEY), codec.public_key_of(OTHER)  # what nodes hold


@pytest.fixture
def bundle() -> pb.AdapterBundle:
    torch.manual_seed(0)
    b = codec.bundle_from_modules(
        "acc",
        5,
        torch.nn.Linear(4, 4),
        torch.nn.Linear(4, 2).state_dict(),
        head=torch.nn.Linear(4, 3),
        head_classes=["walk", "sit", "lie"],
        campaign_id="c1",
        encoder_version="e1",
    )
    return codec.sign_bundle(b, KEY, "k1")


def test_bundle_states_round_trip(bundle):
    assert len(bundle.signature) == 64 and bundle.key_id == "k1" and bundle.expires_ns > bundle.created_ns > 0
    wire = codec.parse_message(bundle.SerializeToString(), pb.AdapterBundle)
    codec.verify_bundle(wire, {"k1": PUB}, min_version=4)
    states = codec.bundle_to_states(wire)
    assert (states.modality, states.version, states.head_classes) == ("acc", 5, ["walk", "sit", "lie"])
    assert set(states.adapter) == set(states.prototype) == set(states.head) == {"weight", "bias"}
    assert states.adapter["weight"].shape == (4, 4) and states.head["weight"].shape == (3, 4)
    torch.nn.Linear(4, 4).load_state_dict(states.adapter)


def test_bundle_without_head_and_bad_version():
    b = codec.bundle_from_modules("acc", 1, {"w": torch.ones(2)}, {"p": torch.zeros(1)})
    assert codec.bundle_to_states(b).head is None
    with pytest.raises(CodecError, match="version must be >= 1"):
        codec.bundle_from_modules("acc", 0, {}, {})
    with pytest.raises(CodecError, match="empty modality"):
        codec.bundle_from_modules("", 1, {}, {})


def test_signing_is_canonical(bundle):
    again = pb.AdapterBundle()
    again.CopyFrom(bundle)
    assert codec.sign_bundle(again, KEY, "k1").signature == bundle.signature


def _rejected(bundle, reason, keys=None, min_version=None, now_ns=None):
    with pytest.raises(BundleRejected) as info:
        codec.verify_bundle(bundle, keys or {"k1": PUB}, min_version=min_version, now_ns=now_ns)
    assert info.value.reason == reason


def test_tampered_tensor_byte_is_rejected(bundle):
    data = bytearray(bundle.tensors[0].data)
    data[0] ^= 1
    bundle.tensors[0].data = bytes(data)
    _rejected(bundle, "bad-signature")


def test_tampered_metadata_is_rejected(bundle):
    bundle.version = 99  # trying to get past the replay check
    _rejected(bundle, "bad-signature")


def test_wrong_key_is_rejected(bundle):
    _rejected(bundle, "bad-signature", keys={"k1": OTHER_PUB})
    bundle.key_id = "k2"  # claiming another known key does not help
    _rejected(bundle, "bad-signature", keys={"k1": PUB, "k2": OTHER_PUB})
    forged = codec.sign_bundle(pb.AdapterBundle.FromString(bundle.SerializeToString()), OTHER, "k1")  # somebody else's key, our key id
    _rejected(forged, "bad-signature")


def test_unknown_key_id_is_rejected(bundle):
    _rejected(bundle, "unknown-key", keys={"k2": PUB})


def test_unsigned_is_rejected(bundle):
    bundle.ClearField("signature")
    _rejected(bundle, "unsigned")


@pytest.mark.parametrize("known", [5, 6])
def test_replay_is_rejected(bundle, known):
    _rejected(bundle, "replay", min_version=known)


def test_expired_and_far_ahead_bundles_are_rejected(bundle):
    _rejected(bundle, "expired", now_ns=bundle.expires_ns + 1)
    codec.verify_bundle(bundle, {"k1": PUB}, now_ns=bundle.expires_ns)  # valid up to its expiry
    _rejected(bundle, "version-jump", min_version=5 - codec.MAX_VERSION_JUMP - 1)  # v5 is too far past what the node holds
    codec.verify_bundle(bundle, {"k1": PUB}, min_version=5 - codec.MAX_VERSION_JUMP)


def test_the_public_key_cannot_sign_and_keys_are_checked():
    with pytest.raises(ValueError, match="32 bytes"):
        codec.sign_bundle(pb.AdapterBundle(), b"", "k1")
    with pytest.raises(ValueError, match="empty key id"):
        codec.sign_bundle(pb.AdapterBundle(), KEY, "")
    b = codec.sign_bundle(pb.AdapterBundle(modality="acc", version=1), PUB, "k1")  # a node's public key used as a seed: another key
    _rejected(b, "bad-signature")
    assert codec.key_id_of(PUB) != codec.key_id_of(OTHER_PUB) and len(codec.new_signing_key()) == 32


def test_manifest_round_trips_and_refuses_what_it_cannot_trust():
    from common.codec import decode_manifest, encode_manifest, manifest_specs
    from common.modalities import ModalitySpec

    specs = {"gyro": ModalitySpec("gyro", 3, 50.0, 128), "lin_acc": ModalitySpec("lin_acc", 3, 50.0, 128)}
    m = encode_manifest("phone-7", "phone", "train", specs, {"gyro": (40, 10), "lin_acc": (38, 9)}, ["walk", "sit"],
                        [("phone", "train", 40, 10), ("validation", "validation", 12, 12)])  # fmt: skip
    back = decode_manifest(m.SerializeToString())
    assert back == m and manifest_specs(back) == specs
    bad = {
        "rate": lambda x: setattr(x.modalities[0], "rate_hz", float("nan")),
        "more labelled": lambda x: setattr(x.modalities[1], "n_labelled", 39),
        "role": lambda x: setattr(x, "role", "boss"),
        "twice": lambda x: x.modalities.add(name="gyro", channels=3, rate_hz=50.0, window=128),
        "first part": lambda x: setattr(x.parts[0], "group", "other"),
        "printable": lambda x: setattr(x, "group", "pho\nne"),
        "no modality": lambda x: x.ClearField("modalities"),
    }
    for name, mutate in bad.items():
        x = type(m)()
        x.CopyFrom(m)
        mutate(x)
        with pytest.raises(codec.CodecError):
            decode_manifest(x.SerializeToString())
    with pytest.raises(codec.CodecError, match="exceeds max_bytes"):
        decode_manifest(b"\0" * (codec.MAX_MANIFEST_BYTES + 1))


@pytest.mark.parametrize("dtype, wire_dtype", [("int8", np.int8), ("float16", np.float16), ("float32", np.float32)])
def test_a_decoded_batch_keeps_its_wire_array_and_scales(dtype, wire_dtype):
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    msg = codec.encode_embeddings(node_id="n", campaign_id="c", batch_id="b", modality="acc", window_ids=[str(i) for i in range(5)], embeddings=x, dtype=dtype)
    d = codec.decode_embeddings(pb.EmbeddingBatch.FromString(msg.SerializeToString()))
    assert d.wire.dtype == wire_dtype and d.wire.tobytes() == msg.embeddings.data  # the bytes as sent, not re-encoded
    assert (d.scales is not None) == (dtype == "int8")
    np.testing.assert_array_equal(d.embeddings, codec.dequantize(d.wire, d.scales))
    np.testing.assert_allclose(d.embeddings, x, atol=0.02 if dtype == "int8" else 2e-3)


# --- key rotation (common.rotation) ---------------------------------------------------------


def test_a_rotation_the_trusted_key_signed_moves_trust_to_the_new_key():
    from common.rotation import KeyTrust, follow_rotations, make_rotation

    k2 = b"t" * 32
    pub2 = codec.public_key_of(k2)
    provisioned = {codec.key_id_of(PUB): PUB, "k1": PUB}  # one key under two ids, as a node files its --signing-public-key
    trust, refused = follow_rotations([make_rotation(KEY, pub2, issued_ns=10)], provisioned, KeyTrust(), now_ns=20)
    assert refused == {} and trust.last_issued_ns == 10
    assert trust.signing_keys(provisioned) == {codec.key_id_of(pub2): pub2}  # the old key signs no new bundle, under either id
    assert set(trust.serving_keys(provisioned).values()) == {PUB, pub2}  # but what it signed before still loads
    assert KeyTrust.from_state({"key_trust": trust.to_state()}) == trust  # as state.json keeps it
    again, refused = follow_rotations([make_rotation(KEY, pub2, issued_ns=10)], provisioned, trust, now_ns=20)
    assert again == trust and refused == {}  # a record to a key already taken is nothing new
    by_hand = {"k2": pub2}  # a node re-provisioned with the new key: the chain before it is history, not a refusal
    assert follow_rotations([make_rotation(OTHER, PUB, issued_ns=5), make_rotation(KEY, pub2, issued_ns=10)], by_hand, KeyTrust(), now_ns=20) == (KeyTrust(), {})


def test_rotations_signed_by_another_key_replayed_tampered_or_from_the_future_are_refused():
    from common.rotation import MAX_CLOCK_SKEW_NS, KeyTrust, follow_rotations, make_rotation

    k2, k3 = b"t" * 32, b"u" * 32
    pub2, pub3 = codec.public_key_of(k2), codec.public_key_of(k3)
    provisioned = {"k1": PUB}
    name = lambda old, new: f"rotation {codec.key_id_of(old)} -> {codec.key_id_of(new)}"  # noqa: E731

    def refused(rec, trust=KeyTrust()):
        after, why = follow_rotations([rec], provisioned, trust, now_ns=100)
        assert after == trust  # nothing taken
        return why

    assert refused(make_rotation(OTHER, pub2, issued_ns=10)) == {name(OTHER_PUB, pub2): "rotation-unknown-key"}
    forged = make_rotation(OTHER, pub2, issued_ns=10)
    forged.old_key_id = codec.key_id_of(PUB)  # somebody else's key, claiming to be the trusted one
    assert refused(forged) == {name(PUB, pub2): "rotation-bad-signature"}
    moved = make_rotation(KEY, pub2, issued_ns=10)
    moved.new_public_key = pub3  # the trusted key's record, pointing at another key
    assert refused(moved) == {f"rotation {codec.key_id_of(PUB)} -> {codec.key_id_of(pub2)}": "rotation-malformed"}
    assert refused(make_rotation(KEY, pub2, issued_ns=100 + MAX_CLOCK_SKEW_NS + 1)) == {name(PUB, pub2): "rotation-future"}
    # k1 -> k2 -> k3 taken; then the older k1 -> k2 again, a new record by the replaced k2, and one issued before the last
    trust, why = follow_rotations([make_rotation(KEY, pub2, issued_ns=10), make_rotation(k2, pub3, issued_ns=20)], provisioned, KeyTrust(), now_ns=100)
    assert why == {} and trust.signing_keys(provisioned) == {codec.key_id_of(pub3): pub3}
    assert follow_rotations([make_rotation(KEY, pub2, issued_ns=10)], provisioned, trust, now_ns=100) == (trust, {})  # history: changes nothing
    assert refused(make_rotation(KEY, OTHER_PUB, issued_ns=40), trust) == {name(PUB, OTHER_PUB): "rotation-replay"}  # the replaced k1 signing again
    assert refused(make_rotation(k2, OTHER_PUB, issued_ns=30), trust) == {name(pub2, OTHER_PUB): "rotation-replay"}
    assert refused(make_rotation(k3, OTHER_PUB, issued_ns=15), trust) == {name(pub3, OTHER_PUB): "rotation-replay"}
    taken, why = follow_rotations([make_rotation(k3, OTHER_PUB, issued_ns=30)], provisioned, trust, now_ns=100)
    assert why == {} and taken.signing_keys(provisioned) == {codec.key_id_of(OTHER_PUB): OTHER_PUB}


def test_a_bundle_signs_the_rotations_it_carries(bundle):
    from common.rotation import make_rotation

    rec = make_rotation(OTHER, PUB, issued_ns=1)
    b = codec.sign_bundle(pb.AdapterBundle.FromString(bundle.SerializeToString()), KEY, "k1", rotations=[rec])
    codec.verify_bundle(b, {"k1": PUB})
    b.rotations[0].issued_ns = 2
    _rejected(b, "bad-signature")
