"""After the coordinator's store is lost, adapter numbering resumes above what the nodes hold (``coordinator.recovery``)."""

from __future__ import annotations

import json

import pytest

from common.codec import MAX_VERSION_JUMP
from coordinator.cli import main as coordinator_main
from coordinator.recovery import choose_floor, held_versions, recover, resume_numbering
from coordinator.store import open_store
from tests.flower_grid import flower_env, in_process_campaign  # noqa: F401  (flower_env: autouse fixture)


def test_the_floor_is_what_most_nodes_can_follow():
    assert choose_floor([]) == 0 and choose_floor([0, 0]) == 0
    assert choose_floor([57, 57, 56, 0]) == 57  # a node that missed the last push takes 58 too
    assert choose_floor([57, 57, 2**62]) == 57  # one node claiming a huge version does not pin the others
    assert choose_floor([1, 5000, 5000]) == 5000  # nor does one claiming a tiny one hold them back
    assert choose_floor([10, 10 + MAX_VERSION_JUMP]) == 10 + MAX_VERSION_JUMP  # a tie: the higher


def test_held_versions_are_checked():
    assert held_versions({"a": 3}, ["a", "b"]) == {"a": 3}
    with pytest.raises(ValueError, match="a modality the node does not hold"):
        held_versions({"c": 3}, ["a", "b"])
    for bad in (0, -1, 2**63, 1.5, True, "3"):
        with pytest.raises(ValueError, match=r"integer in \[1, 2\^63-1\]"):
            held_versions({"a": bad}, ["a"])


def test_numbering_is_raised_never_lowered(tmp_path):
    with open_store(tmp_path / "c.db") as st:
        assert resume_numbering(st, ["a", "b"], [{"a": 57}, {"a": 57, "b": 3}]) == {"a": {"was": 0, "now": 57}, "b": {"was": 0, "now": 3}}
        assert st.next_adapter_version("a") == 58
        assert resume_numbering(st, ["a"], [{"a": 40}]) == {}  # an intact store is ahead: nothing changes
        assert st.next_adapter_version("a") == 59
        assert recover(st, {"b": 10, "a": 5}) == {"b": {"was": 3, "now": 10}}
        st.upsert_node("n1", {"c": {}})
        st.report_node_status("n1", "running", {"c": 12})  # what a node reports to the Registry
        assert recover(st, from_nodes=True) == {"c": {"was": 0, "now": 12}}


def test_the_recover_command(tmp_path, capsys):
    store = str(tmp_path / "c.db")
    assert coordinator_main(["recover", "--store", store, "--floor", "gyro=57"]) == 0
    assert json.loads(capsys.readouterr().out) == {"gyro": {"was": 0, "now": 57}}
    assert coordinator_main(["recover", "--store", store, "--floor", "gyro"]) != 0
    assert "expected MODALITY=VERSION" in capsys.readouterr().err


def test_a_campaign_after_the_store_was_lost_numbers_above_what_the_nodes_hold(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    quick = {"state-dir": str(tmp_path / "nodes"), "finetune-rounds": 0, "pretrain-rounds": 1}  # the same nodes (their state) both times
    first, _ = in_process_campaign(tmp_path / "one", **quick)
    held = {m: b["version"] for m, b in first["bundles"].items()}
    assert first["phases"]["push"]["nodes_applied"] == len(first["nodes"])
    # the coordinator's store is gone: a new one (a new results folder) would number from 1, which every node refuses as a replay
    second, _ = in_process_campaign(tmp_path / "two", **quick)
    push = second["phases"]["push"]
    assert push["numbering_resumed"] == {m: {"was": 0, "now": v} for m, v in held.items()}
    assert push["nodes_refused"] == {} and push["nodes_applied"] == len(second["nodes"])
    assert {m: b["version"] for m, b in second["bundles"].items()} == {m: v + 1 for m, v in held.items()}
