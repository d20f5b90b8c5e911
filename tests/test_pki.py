"""TLS for the SuperLink link: a CA made by ``edgebind-coordinator init-pki``, and plain text only when asked for."""

from __future__ import annotations

import ipaddress
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.cli import main as coordinator_main
from coordinator.cli import tls_files, write_connection
from coordinator.pki import init_pki
from node_agent.cli import main as node_main


def test_init_pki_makes_a_ca_a_server_certificate_and_one_per_node(tmp_path, capsys):
    assert coordinator_main(["init-pki", str(tmp_path / "pki"), "--nodes", "n1,n2", "--host", "127.0.0.1", "--host", "coord.lan"]) == 0
    made = json.loads(capsys.readouterr().out)
    ca = x509.load_pem_x509_certificate(Path(made["ca"]).read_bytes())
    server = x509.load_pem_x509_certificate(Path(made["coordinator_cert"]).read_bytes())
    server.verify_directly_issued_by(ca)  # raises unless the CA signed it
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")] and sans.get_values_for_type(x509.DNSName) == ["coord.lan"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for n in ("n1", "n2"):
        cert = x509.load_pem_x509_certificate(Path(made[f"node:{n}"]).read_bytes())
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == n
    for key in (tmp_path / "pki").glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE((tmp_path / "pki").stat().st_mode) == 0o700
    assert tls_files(tmp_path / "pki")["cert"] == made["coordinator_cert"]
    with pytest.raises(ValueError, match="already holds a CA"):
        init_pki(tmp_path / "pki", ["n3"])
    with pytest.raises(ValueError, match="ca.pem does not exist .make the folder with `edgebind-coordinator init-pki"):
        tls_files(tmp_path)


def test_the_flower_connection_is_tls_when_given_the_ca(tmp_path, monkeypatch):
    from flwr.cli.flower_config import read_superlink_connection

    init_pki(tmp_path / "pki")
    write_connection(tmp_path / "flwr", "127.0.0.1:9093", root_certificates=tmp_path / "pki" / "ca.pem")
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    conn = read_superlink_connection()
    assert conn.address == "127.0.0.1:9093" and not conn.insecure and conn.root_certificates == str(tmp_path / "pki" / "ca.pem")


@pytest.mark.parametrize("argv,expected", [
    (["up", "--dir", "X"], "TLS by default: give --tls-dir DIR"),
    (["up", "--dir", "X", "--tls-dir", "T", "--insecure"], "not both"),
    (["campaign", "--store", "s.db"], "give --root-certificates CA_PEM, or --insecure"),
])  # fmt: skip
def test_the_coordinator_will_not_run_in_plain_text_unless_asked(tmp_path, capsys, monkeypatch, argv, expected):
    monkeypatch.chdir(tmp_path)
    assert coordinator_main(argv) == 2
    assert expected in capsys.readouterr().err


def test_a_node_will_not_reach_the_superlink_in_plain_text_unless_asked(tmp_path, capsys):
    argv = ["up", "--node-id", "n1", "--store", str(tmp_path / "n.db"), "--modalities", "gyro", "--superlink", "127.0.0.1:1", "--state-dir", str(tmp_path / "s")]
    assert node_main(argv) == 2
    assert "TLS by default: give --root-certificates CA_PEM" in capsys.readouterr().err
    assert not (tmp_path / "n.db").exists()  # refused before anything was started or written


def test_init_pki_keys_are_ec_p256(tmp_path):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    made = init_pki(tmp_path / "pki", ["n1"])
    key = load_pem_private_key(Path(made["coordinator_key"]).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


@pytest.mark.e2e
def test_over_tls_the_superlink_admits_registered_supernodes_only(tmp_path):
    """A SuperNode whose key was not registered is refused (and the SuperLink logs it); once registered it joins."""
    import os
    import subprocess
    import threading
    import time

    from common.processes import free_port, stop_process_group
    from coordinator.cli import register_node, up

    pki = tmp_path / "pki"
    init_pki(pki, ["n1"])
    stop, ready = threading.Event(), tmp_path / "ready.json"
    t = threading.Thread(target=up, args=(tmp_path / "coord",), daemon=True,
                         kwargs={"superlink_port": 0, "registry_port": 0, "ready_file": str(ready), "stop": stop, "tls_dir": pki})  # fmt: skip
    t.start()
    try:
        deadline = time.monotonic() + 90
        while not ready.exists():
            assert time.monotonic() < deadline, "the coordinator did not come up"
            time.sleep(0.2)
        superlink = json.loads(ready.read_text())["superlink"]
        env = {**os.environ, "FLWR_HOME": str(tmp_path / "node-home"), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
        node = ["flower-supernode", "--root-certificates", str(pki / "ca.pem"), "--superlink", superlink,
                "--auth-supernode-private-key", str(pki / "supernode-n1.key")]  # fmt: skip
        with open(tmp_path / "refused.log", "wb") as out:  # its SuperExec child outlives it: wait for the SuperNode itself, then end the group
            refused = subprocess.Popen([*node, "--port", str(free_port()), "--max-retries", "1"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip
            try:
                assert refused.wait(120) != 0
            finally:
                stop_process_group(refused, grace=10)
        assert "Failed to activate SuperNode" in (tmp_path / "refused.log").read_text()
        log = (tmp_path / "coord" / "superlink.log").read_text()
        assert "No SuperNode found with the given public key" in log
        node_id = register_node(tmp_path / "coord", pki / "supernode-n1.pub")
        joined = subprocess.Popen([*node, "--port", str(free_port())], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while "Activated node_id" not in (tmp_path / "coord" / "superlink.log").read_text():
                assert time.monotonic() < deadline and joined.poll() is None, "the registered SuperNode did not join"
                time.sleep(0.3)
        finally:
            stop_process_group(joined, grace=10)
        assert node_id
        # the key the SuperLink authenticates the node with (what a ServerApp reads in NodeInfo.public_key) is, byte for byte,
        # the one register-node bound to the node's id in the coordinator store: so a campaign can take the id from the key
        import sqlite3

        from coordinator.identity import key_pem
        from coordinator.store import open_store

        with sqlite3.connect(tmp_path / "coord" / "superlink.db") as db:
            held = [bytes(k) for (k,) in db.execute("SELECT public_key FROM node")]
        pem = key_pem((pki / "supernode-n1.pub").read_bytes())
        with open_store(tmp_path / "coord" / "coordinator.db") as st:
            assert st.node_keys() == {"n1": pem}
        assert held == [pem.encode()]
    finally:
        stop.set()
        t.join(60)
