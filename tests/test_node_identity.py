"""A node's edgebind id is bound to the SuperNode key the SuperLink authenticated (``coordinator.identity``), not to its manifest."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.proto.node_pb2 import NodeInfo

from common.data.scenarios import Scenario
from coordinator.identity import check_identity, key_pem, node_id_of_key_file
from coordinator.store import open_store
from node_agent.data import fleet_layout, node_id_of
from tests.flower_grid import ManifestRewritingGrid, flower_env, in_process_campaign, synthetic_files  # noqa: F401  (flower_env: autouse fixture)


def _key(seed: int) -> str:
    """A SuperNode public key as the SuperLink holds it (PEM), as init-pki makes them (EC P-384); deterministic per seed."""
    return key_pem(ec.derive_private_key(10_000 + seed, ec.SECP384R1()).public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def test_a_claim_passes_only_with_the_key_bound_to_that_id():
    registered = {"n1": _key(1), "n2": _key(2)}
    keys = {11: _key(1), 12: _key(2), 13: _key(3)}
    check_identity("n1", 11, keys, registered)
    check_identity("n2", 12, keys, registered)
    with pytest.raises(ValueError, match="its SuperNode key is registered to node 'n1'"):
        check_identity("n2", 11, keys, registered)  # n1's key speaking as n2
    with pytest.raises(ValueError, match="bound to no node id"):
        check_identity("n3", 13, keys, registered)  # a key Flower admits that edgebind never bound to an id
    with pytest.raises(ValueError, match="no SuperNode key for Flower node 14"):
        check_identity("n1", 14, keys, registered)
    check_identity("anything", 14, {}, {})  # nothing bound: ids come from manifests (simulation, plain text)


def test_the_store_binds_one_key_to_one_id(tmp_path):
    with open_store(tmp_path / "c.db") as st:
        st.register_node_key("n1", _key(1))
        st.register_node_key("n1", _key(1), 2**64 - 1)  # a repeat (with Flower's id now, a uint64) changes nothing else
        with pytest.raises(ValueError, match="already bound to another SuperNode key"):
            st.register_node_key("n1", _key(2))
        with pytest.raises(ValueError, match="already bound to node 'n1'"):
            st.register_node_key("n2", _key(1))
        with pytest.raises(ValueError, match="must be PEM"):
            st.register_node_key("n3", "ecdsa-sha2-nistp384 AAAA")
        assert st.node_keys() == {"n1": _key(1)}
    assert node_id_of_key_file("/x/supernode-lab-000.pub") == "lab-000"
    with pytest.raises(ValueError, match="--node-id"):
        node_id_of_key_file("/x/node.pub")


def _claim_sb_001(m):
    m.node_id = "sb-001"


class KeyedGrid(ManifestRewritingGrid):
    """A grid that shows each node's SuperNode key, as the SuperLink does with --enable-supernode-auth (``keys``: Flower id -> PEM);
    node 101's manifest claims sb-001's id."""

    keys: dict[int, str] = {}
    mutate = staticmethod(_claim_sb_001)

    def get_nodes(self):
        return [NodeInfo(node_id=f, public_key=self.keys[f].encode()) for f in self.get_node_ids()]


def test_a_node_claiming_another_id_or_holding_an_unbound_key_is_left_out(tmp_path):
    _, scenario = synthetic_files(tmp_path)
    ids = [node_id_of(g, i) for g, i, _ in fleet_layout(Scenario.load(scenario), 7)]
    assert ids[1] == "sa-001" and ids[3] == "sb-001"
    store = tmp_path / "out" / "coordinator.db"
    store.parent.mkdir()
    with open_store(store) as st:
        for p, nid in enumerate(ids):
            st.register_node_key(nid, _key(p), 100 + p)
    keys = {100 + p: _key(p) for p in range(7)}
    keys[103] = _key(99)  # sb-001 connects with a key Flower admits but that is bound to no edgebind id
    grid_cls = type("Grid", (KeyedGrid,), {"keys": keys})
    res, _ = in_process_campaign(tmp_path, grid_cls=grid_cls, store=str(store))
    assert res["state"] == "done" and res["accuracy"]
    assert sorted(res["missing"]) == ["flower:101", "flower:103"]
    assert "claims id 'sb-001', but its SuperNode key is registered to node 'sa-001'" in res["missing"]["flower:101"]["reason"]
    assert "claims id 'sb-001', but its SuperNode key is bound to no node id" in res["missing"]["flower:103"]["reason"]
    assert sorted(res["nodes"]) == sorted(set(ids) - {"sa-001", "sb-001"})
