"""A rotated coordinator key reaches nodes with a campaign's push (the Flower path of ``common.rotation``), in process."""

from __future__ import annotations

import json

from common import codec
from coordinator.cli import keygen
from coordinator.keys import rotate_key
from tests.flower_grid import InProcessGrid, flower_env, in_process_campaign  # noqa: F401  (flower_env: autouse fixture)


def test_nodes_that_trust_the_old_key_follow_a_rotation_pushed_with_the_bundles(tmp_path):
    made = keygen(tmp_path / "coord")
    old_hex = codec.key_from_file(made["private_key_file"]).hex()
    rotated = rotate_key(tmp_path / "coord")

    class OldKeyGrid(InProcessGrid):
        """Every node was provisioned with the coordinator's key before the rotation (a simulated node derives its public key from it)."""

        def __init__(self, contexts, silent=frozenset()):
            for c in contexts.values():
                c.node_config["signing-key"] = old_hex
            super().__init__(contexts, silent)

    config = {"signing-key": "", "signing-key-file": rotated["private_key_file"]}
    res, _ = in_process_campaign(tmp_path, grid_cls=OldKeyGrid, **config)
    assert res["state"] == "done"
    push = res["phases"]["push"]
    assert push["nodes_refused"] == {} and push["nodes_applied"] == len(res["nodes"])
    for node in res["nodes"]:
        state = json.loads((tmp_path / "nodes" / node / "state.json").read_text())
        assert state["key_trust"]["rotated"] == {rotated["key_id"]: rotated["public_key"]}, node
        assert set(state["key_trust"]["retired"].values()) == {made["public_key"]}
