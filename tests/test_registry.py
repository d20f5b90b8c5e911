"""coordinator.registry: a real gRPC server on 127.0.0.1, round trips and error codes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import grpc
import pytest
import torch

from common import codec
from common.towers import ConceptAdapter, PrototypeNet
from coordinator import phases
from coordinator.registry import serve
from coordinator.store import CoordinatorStore, open_store
from proto import edgebind_pb2 as pb
from proto import edgebind_pb2_grpc as pb_grpc

KEY, KEY_ID = b"k" * 32, "k1"


def signed(modality: str, version: int, seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    b = codec.bundle_from_modules(modality, version, ConceptAdapter(8, 16, 8), PrototypeNet(8, 16), campaign_id="c1")
    return codec.sign_bundle(b, KEY, KEY_ID).SerializeToString(deterministic=True)


def record(store: CoordinatorStore, modality: str, version: int) -> bytes:
    blob = signed(modality, version, seed=version)
    store.record_adapter_version(modality, version, "c1", blob, hashlib.sha256(blob).hexdigest())
    return blob


@pytest.fixture
def store() -> Iterator[CoordinatorStore]:
    s = open_store("sqlite://")
    s.upsert_node("n1", {"gyro": {"channels": 3}, "lin_acc": {"channels": 3}}, hardware="pi")
    s.upsert_node("n2", {"gravity": {"channels": 3}})
    s.create_campaign("c1", {"scenario": "sensor-bind"})
    yield s
    s.close()


@pytest.fixture
def stub(store) -> Iterator[pb_grpc.RegistryStub]:
    server, port = serve(store, port=0)
    assert port > 0
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.RegistryStub(channel)
    channel.close()
    server.stop(0).wait()


def test_latest_adapters_returns_the_newest_signed_bundle_newer_than_known(store, stub):
    assert list(stub.LatestAdapters(pb.LatestAdaptersRequest(node_id="n1"), timeout=5).bundles) == []
    record(store, "gyro", 1)
    newest_gyro = record(store, "gyro", 2)
    lin = record(store, "lin_acc", 1)
    record(store, "gravity", 1)  # n1 does not hold gravity: never sent to it

    reply = stub.LatestAdapters(pb.LatestAdaptersRequest(node_id="n1"), timeout=5)
    got = {b.modality: b for b in reply.bundles}
    assert {m: b.version for m, b in got.items()} == {"gyro": 2, "lin_acc": 1}
    assert got["gyro"].SerializeToString(deterministic=True) == newest_gyro
    assert got["lin_acc"].SerializeToString(deterministic=True) == lin
    codec.verify_bundle(got["gyro"], {KEY_ID: codec.public_key_of(KEY)})  # served exactly as signed

    req = pb.LatestAdaptersRequest(node_id="n1", modalities=["gyro", "lin_acc"], known_versions={"gyro": 2})
    assert [(b.modality, b.version) for b in stub.LatestAdapters(req, timeout=5).bundles] == [("lin_acc", 1)]
    req = pb.LatestAdaptersRequest(node_id="n1", modalities=["gyro"], known_versions={"gyro": 1})
    assert [(b.modality, b.version) for b in stub.LatestAdapters(req, timeout=5).bundles] == [("gyro", 2)]


def test_report_status_then_node_status_round_trip(store, stub):
    before = stub.NodeStatus(pb.NodeStatusRequest(node_id="n1"), timeout=5)
    assert (before.node_id, dict(before.adapter_versions), before.state) == ("n1", {}, "")
    ack = stub.ReportStatus(
        pb.NodeStatusReply(node_id="n1", adapter_versions={"gyro": 2, "lin_acc": 1}, state="running"), timeout=5
    )
    assert ack.ok
    after = stub.NodeStatus(pb.NodeStatusRequest(node_id="n1"), timeout=5)
    assert dict(after.adapter_versions) == {"gyro": 2, "lin_acc": 1}
    assert after.state == "running"
    assert after.last_seen_ns >= before.last_seen_ns
    assert store.node_status("n1").adapter_versions == {"gyro": 2, "lin_acc": 1}


@pytest.mark.parametrize(
    "call,request_,code,words",
    [
        ("LatestAdapters", pb.LatestAdaptersRequest(node_id="ghost"), grpc.StatusCode.NOT_FOUND, "unknown node 'ghost'"),
        ("LatestAdapters", pb.LatestAdaptersRequest(node_id=""), grpc.StatusCode.INVALID_ARGUMENT, "node_id is empty"),
        ("LatestAdapters", pb.LatestAdaptersRequest(node_id="n1", modalities=["ecg"]), grpc.StatusCode.INVALID_ARGUMENT, "unknown modality 'ecg'"),
        ("LatestAdapters", pb.LatestAdaptersRequest(node_id="n1", modalities=["gravity"]), grpc.StatusCode.INVALID_ARGUMENT, "it holds gyro, lin_acc"),
        ("LatestAdapters", pb.LatestAdaptersRequest(node_id="n1", modalities=["gyro", "gyro"]), grpc.StatusCode.INVALID_ARGUMENT, "repeat"),
        ("LatestAdapters", pb.LatestAdaptersRequest(node_id="n1", known_versions={"ecg": 1}), grpc.StatusCode.INVALID_ARGUMENT, "unknown modality 'ecg'"),
        ("LatestAdapters", pb.LatestAdaptersRequest(node_id="n1", modalities=["x"] * 100_000), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
        ("LatestAdapters", pb.LatestAdaptersRequest(node_id="n" * 1000), grpc.StatusCode.INVALID_ARGUMENT, "longer than"),
        ("NodeStatus", pb.NodeStatusRequest(node_id="ghost"), grpc.StatusCode.NOT_FOUND, "unknown node"),
        ("NodeStatus", pb.NodeStatusRequest(), grpc.StatusCode.INVALID_ARGUMENT, "node_id is empty"),
        ("ReportStatus", pb.NodeStatusReply(node_id="ghost", state="running"), grpc.StatusCode.NOT_FOUND, "unknown node"),
        ("ReportStatus", pb.NodeStatusReply(node_id="n1", adapter_versions={"ecg": 1}), grpc.StatusCode.INVALID_ARGUMENT, "unknown modality 'ecg'"),
        ("ReportStatus", pb.NodeStatusReply(node_id="n1", state="s" * 1000), grpc.StatusCode.INVALID_ARGUMENT, "state is longer"),
    ],
    ids=lambda v: v.name if isinstance(v, grpc.StatusCode) else None,
)
def test_bad_requests_get_a_status_code_and_change_nothing(store, stub, call, request_, code, words):
    stub.ReportStatus(pb.NodeStatusReply(node_id="n1", adapter_versions={"gyro": 1}, state="ok"), timeout=5)
    before = store.node_status("n1")
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, call)(request_, timeout=5)
    assert err.value.code() == code
    assert words in err.value.details()
    assert store.node_status("n1") == before
    assert store.node_status("ghost") is None


def test_a_stored_bundle_that_does_not_parse_is_an_internal_error(store, stub):
    blob = b"\xff" * 10
    store.record_adapter_version("gyro", 1, "c1", blob, hashlib.sha256(blob).hexdigest())
    with pytest.raises(grpc.RpcError) as err:
        stub.LatestAdapters(pb.LatestAdaptersRequest(node_id="n1", modalities=["gyro"]), timeout=5)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "does not parse" in err.value.details()


def test_coordinator_status_and_the_connection_flower_reads(tmp_path, monkeypatch, capsys):
    from flwr.cli.flower_config import read_superlink_connection

    from coordinator.cli import main, status, write_connection

    db = tmp_path / "coord.db"
    with open_store(db) as s:
        s.upsert_node("n1", {"gyro": {}}, hardware="pi")
        s.create_campaign("c1", {})
        s.report_node_status("n1", "running", {"gyro": 1})
        record(s, "gyro", 1)
    got = status(str(db), ["c1"])
    assert got["nodes"]["n1"]["adapters"] == {"gyro": 1} and got["nodes"]["n1"]["state"] == "running"
    assert got["adapters"] == {"gyro": 1}
    assert got["campaigns"]["c1"]["state"] == "created"
    assert got["nodes"]["n1"]["last_campaign"] == "absent" and got["nodes"]["n1"]["accuracy"] is None
    assert main(["status", "--store", str(db), "--campaign", "nope"]) == 2
    assert "no campaign 'nope'" in capsys.readouterr().err

    # a later campaign in which n1 took part and was scored, n2 went missing and n3 refused a message
    with open_store(db) as s:
        for n in ("n2", "n3"):
            s.upsert_node(n, {"gyro": {}})
        s.create_campaign("c2", {"seed": 1})
        s.record_metric("c2", "n1", "accuracy", 0.8, subset="gyro")
        s.record_metric("c2", "n1", "accuracy", 0.9, subset="gyro+lin_acc")
        s.save_report("c2", {"state": "done", "phases": {"manifest": {"seconds": 1.5}, "pretrain": {"seconds": 42.0}},
                             "nodes": {n: {"group": "phone", "role": "train", "modalities": ["gyro"]} for n in ("n1", "n2", "n3")},
                             "missing": {"n2": {"phase": "pretrain", "round": 2, "reason": "no reply within 600s"}},
                             "refused": [{"node": "n3", "phase": "collect", "round": 0, "reason": "ValueError: bad"}],
                             "accuracy": {"gyro+lin_acc": {"accuracy": 0.9, "macro_f1": 0.88, "n": 10, "nodes": ["n1"]}}})  # fmt: skip
        s.set_campaign_state("c2", "done")
    got = status(str(db))
    assert got["newest_campaign"] == "c2" and list(got["campaigns"]) == ["c2", "c1"]
    n1, n2, n3 = (got["nodes"][n] for n in ("n1", "n2", "n3"))
    assert (n1["group"], n1["role"], n1["last_campaign"]) == ("phone", "train", "ok")
    assert n1["accuracy"] == {"subset": "gyro+lin_acc", "value": 0.9}  # the fullest subset the node was scored on
    assert n2["last_campaign"] == "missing in pretrain: no reply within 600s"
    assert n3["last_campaign"].startswith("refused 1x, first in collect: ValueError: bad")
    c2 = got["campaigns"]["c2"]
    assert c2["phases"] == {"manifest": 1.5, "pretrain": 42.0} and (c2["missing"], c2["refused"]) == (1, 1)
    assert c2["accuracy"] == {"subset": "gyro+lin_acc", "accuracy": 0.9, "macro_f1": 0.88}
    assert main(["status", "--store", str(db)]) == 0
    text = capsys.readouterr().out
    assert "missing in pretrain" in text and "0.900 (gyro+lin_acc)" in text and "pretrain 42" in text
    assert main(["status", "--store", str(db), "--json", "--last", "1"]) == 0
    assert list(json.loads(capsys.readouterr().out)["campaigns"]) == ["c2"]

    write_connection(tmp_path / "flwr", "127.0.0.1:9093")
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    conn = read_superlink_connection()
    assert (conn.name, conn.address, conn.insecure) == ("edgebind", "127.0.0.1:9093", True)


def test_keygen_makes_a_key_pair_whose_public_half_verifies_what_the_private_half_signs(tmp_path):
    import os
    import stat

    from coordinator.cli import keygen, main

    out = keygen(tmp_path / "keys")
    priv = bytes.fromhex(open(out["private_key_file"]).read().strip())
    pub = bytes.fromhex(open(out["public_key_file"]).read().strip())
    assert stat.S_IMODE(os.stat(out["private_key_file"]).st_mode) == 0o600 and stat.S_IMODE(os.stat(tmp_path / "keys").st_mode) == 0o700
    assert codec.public_key_of(priv) == pub and out["key_id"] == codec.key_id_of(pub) == phases.signing_key(priv.hex(), "", {})[1]
    b = codec.sign_bundle(pb.AdapterBundle(modality="acc", version=1), priv, out["key_id"])
    codec.verify_bundle(b, {out["key_id"]: pub})
    assert main(["keygen", "--dir", str(tmp_path / "keys")]) == 2  # never overwrites a key


def test_with_mutual_tls_a_node_speaks_only_for_itself(store, tmp_path):
    """The Registry over mutual TLS (init-pki's files): no certificate, no connection; a node's certificate fetches and
    reports for that node only; the operator's reads any node's status."""
    from coordinator.cli import tls_files
    from coordinator.pki import init_pki
    from node_agent.runtime import registry_channel

    init_pki(tmp_path / "pki", ["n1", "n2"])
    pki = tmp_path / "pki"
    server, port = serve(store, port=0, tls=tls_files(pki))
    addr = f"127.0.0.1:{port}"
    who = lambda name: {"ca": str(pki / "ca.pem"), "cert": str(pki / f"{name}.pem"), "key": str(pki / f"{name}.key")}  # noqa: E731
    record(store, "gyro", 1)
    try:
        with registry_channel(addr, who("node-n1")) as ch:
            stub = pb_grpc.RegistryStub(ch)
            assert [b.version for b in stub.LatestAdapters(pb.LatestAdaptersRequest(node_id="n1"), timeout=10).bundles] == [1]
            assert stub.ReportStatus(pb.NodeStatusReply(node_id="n1", adapter_versions={"gyro": 1}, state="running"), timeout=10).ok
            for call, req in ((stub.LatestAdapters, pb.LatestAdaptersRequest(node_id="n2")), (stub.ReportStatus, pb.NodeStatusReply(node_id="n2", state="x")),
                              (stub.NodeStatus, pb.NodeStatusRequest(node_id="n2"))):  # fmt: skip
                with pytest.raises(grpc.RpcError) as err:
                    call(req, timeout=10)
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "names 'n1', the request node 'n2'" in err.value.details()
        assert store.node_status("n2").state == ""  # the refused report changed nothing
        with registry_channel(addr, who("operator")) as ch:
            assert pb_grpc.RegistryStub(ch).NodeStatus(pb.NodeStatusRequest(node_id="n1"), timeout=10).adapter_versions == {"gyro": 1}
        with grpc.insecure_channel(addr) as ch:  # plain text, or TLS without a client certificate: no connection at all
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.RegistryStub(ch).NodeStatus(pb.NodeStatusRequest(node_id="n1"), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
        with grpc.secure_channel(addr, creds) as ch:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.RegistryStub(ch).NodeStatus(pb.NodeStatusRequest(node_id="n1"), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0).wait()


def test_up_on_a_port_already_taken_says_so_and_stops_the_registry(tmp_path):
    """The SuperLink cannot bind its port: `up` fails at once naming the cause from the SuperLink's log, and the Registry it
    started is stopped (its port free again)."""
    import socket

    from common.processes import free_port
    from coordinator.cli import up

    reg_port = free_port()
    with socket.socket() as held:  # bound, not listening: as when an outgoing connection holds the port as its source port
        held.bind(("127.0.0.1", 0))
        with pytest.raises(RuntimeError, match=r"exited with status \d+ before listening on 127\.0\.0\.1:\d+: .*address already in use"):
            up(tmp_path / "coord", superlink_port=held.getsockname()[1], registry_port=reg_port, start_timeout=60)
    with socket.socket() as s:
        s.bind(("127.0.0.1", reg_port))
