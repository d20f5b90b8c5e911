"""The committed generated modules match edgebind.proto, and every message round-trips."""

from __future__ import annotations

import pickle

import pytest
from google.protobuf.message import Message

from proto import build
from proto import edgebind_pb2 as pb
from proto import edgebind_pb2_grpc as pb_grpc


def test_generated_modules_match_the_proto(tmp_path):
    written = build.build(tmp_path)
    assert sorted(p.name for p in written) == sorted(build.GENERATED)
    for name in build.GENERATED:
        fresh = (tmp_path / name).read_bytes()
        committed = (build.PROTO_DIR / name).read_bytes()
        assert fresh == committed, f"proto/{name} is stale: run `python -m proto.build` and commit"


def test_grpc_module_imports_messages_from_the_package():
    source = (build.PROTO_DIR / "edgebind_pb2_grpc.py").read_text()
    assert "from proto import edgebind_pb2" in source
    assert pb_grpc.proto_dot_edgebind__pb2 is pb


def _tensor() -> pb.Tensor:
    return pb.Tensor(name="w", dtype=pb.Tensor.INT8, shape=[2, 2], data=b"\x01\x02\x03\x04", scale=[0.5, 0.25])


def _bundle() -> pb.AdapterBundle:
    return pb.AdapterBundle(
        modality="acc",
        version=3,
        campaign_id="c1",
        encoder_version="enc-1",
        tensors=[_tensor()],
        created_ns=1_700_000_000_000_000_000,
        expires_ns=1_702_592_000_000_000_000,
        key_id="k1",
        signature=b"\x00" * 32,
        prototype=[_tensor()],
        head_tensors=[_tensor()],
        head_classes=["walk", "sit"],
        rotations=[_rotation()],
    )


def _rotation() -> pb.KeyRotation:
    return pb.KeyRotation(old_key_id="k0", new_key_id="k1", new_public_key=b"\x01" * 32, issued_ns=1_699_000_000_000_000_000, signature=b"\x02" * 64)


def _status() -> pb.NodeStatusReply:
    return pb.NodeStatusReply(
        node_id="n1", last_seen_ns=5, adapter_versions={"acc": 3}, windows_uploaded=100, state="idle"
    )


EXAMPLES: list[Message] = [
    pb.SensorFrame(
        node_id="n1",
        sensor_id="imu0",
        modality="acc",
        seq=7,
        timestamp_ns=1_700_000_000_000_000_000,
        rate_hz=50.0,
        channels=3,
        samples=[0.5, -1.0, 2.0, 0.25, 0.0, 1.5],
        boot_id=0x2B,
    ),
    _tensor(),
    pb.EmbeddingBatch(
        node_id="n1",
        campaign_id="c1",
        batch_id="b1",
        modality="acc",
        window_ids=["w1", "w2"],
        timestamps_ns=[1, 2],
        labels=[3, -1],
        subjects=[9, 9],
        embeddings=pb.Tensor(name="acc", dtype=pb.Tensor.FLOAT32, shape=[2, 1], data=bytes(8)),
        encoder_version="enc-1",
        group="validation",
    ),
    _bundle(),
    _rotation(),
    pb.ModalityInfo(name="acc", channels=3, rate_hz=50.0, window=128, n_windows=10, n_labelled=2),
    pb.NodeManifest(
        node_id="n1",
        modalities=[pb.ModalityInfo(name="acc", channels=3, rate_hz=50.0, window=128, n_windows=10, n_labelled=2)],
        hardware="raspberry-pi-5",
        agent_version="0.1.0",
        group="gyro-linacc",
        role="train",
        classes=["walking", "sitting"],
        parts=[pb.NodePartInfo(group="gyro-linacc", role="train", n_windows=10, n_labelled=2)],
    ),
    pb.NodePartInfo(group="validation", role="validation", n_windows=4, n_labelled=4),
    pb.LatestAdaptersRequest(node_id="n1", modalities=["acc", "gyro"], known_versions={"acc": 2, "gyro": 1}),
    pb.LatestAdaptersReply(bundles=[_bundle()]),
    pb.NodeStatusRequest(node_id="n1"),
    _status(),
    pb.Ack(ok=True, message="stored"),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: m.DESCRIPTOR.name)
def test_every_message_round_trips(msg):
    # The example sets every field, so a field added to the .proto shows up here.
    set_fields = {f.name for f, _ in msg.ListFields()}
    assert set_fields == set(msg.DESCRIPTOR.fields_by_name)
    back = type(msg).FromString(msg.SerializeToString())
    assert back == msg
    assert pickle.loads(pickle.dumps(msg)) == msg


def test_every_top_level_message_has_an_example():
    assert set(pb.DESCRIPTOR.message_types_by_name) == {m.DESCRIPTOR.name for m in EXAMPLES}


def test_sensor_frame_seq_has_presence():
    frame = pb.SensorFrame()
    assert not frame.HasField("seq")
    frame.seq = 0
    assert pb.SensorFrame.FromString(frame.SerializeToString()).HasField("seq")


def test_registry_service_shape():
    service = pb.DESCRIPTOR.services_by_name["Registry"]
    methods = {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
    assert methods == {
        "LatestAdapters": ("LatestAdaptersRequest", "LatestAdaptersReply"),
        "NodeStatus": ("NodeStatusRequest", "NodeStatusReply"),
        "ReportStatus": ("NodeStatusReply", "Ack"),
    }
    assert hasattr(pb_grpc, "RegistryStub")
    assert hasattr(pb_grpc, "add_RegistryServicer_to_server")
