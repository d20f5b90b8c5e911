"""``edgebind-sim deploy-local`` end to end: real mosquitto, SuperLink, Registry and node agents on 127.0.0.1.

One quick campaign of sensor-bind on three nodes with three modality sets: the
two unlabelled training groups bound through the gyroscope, and the labelled
(lin_acc, gravity) node, which also holds the validation and test subjects out
as parts of their own. Every node must ingest its replayed windows and upload
embeddings (never the test part's), MMBind must bind pairs, the labelled node
must score its test subjects, and every node must hold, report and run the
adapters the campaign pushed; afterwards no process it started may still run.
Too few nodes is refused before anything starts.

With ``EDGEBIND_TEST_NODE_VENV`` set to a virtual environment made with
``pip install '.[node]'`` (CI makes one), the node agents, their SuperNodes and
ClientApps run from that node-only install, which must hold none of the
simulation, plotting or language-model packages.

Needs mosquitto (skipped without it, except with CI=true, where it fails; CI
also requires the node-only environment). Takes about five minutes on a loaded
2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
from itertools import combinations
from pathlib import Path

import pytest

from simulations.deploy_local import deploy_local
from simulations.deploy_plan import node_layout
from simulations.supervisor import find_mosquitto, process_running

NODES = 3  # sensor-bind's three modality sets; validation and test held out on the labelled node
SIM_ONLY = ("ray", "scipy", "sklearn", "matplotlib", "transformers", "sentence_transformers", "psycopg", "flwr_datasets")  # not in edgebind[node]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def flower_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "flwr-home"
    home.mkdir()
    monkeypatch.setenv("FLWR_HOME", str(home))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
    return home


@pytest.fixture
def mosquitto() -> str:
    exe = find_mosquitto()
    if exe is None:
        if _in_ci():
            pytest.fail("mosquitto is not installed, and CI=true requires the end-to-end deployment to run", pytrace=False)
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    return exe


@pytest.fixture
def node_venv() -> Path | None:
    """The node-only environment to run the node agents from, if one is given (CI requires it)."""
    value = os.environ.get("EDGEBIND_TEST_NODE_VENV", "")
    if not value:
        if _in_ci():
            pytest.fail("CI=true requires EDGEBIND_TEST_NODE_VENV (a venv with pip install '.[node]'; .ci/run makes one)", pytrace=False)
        return None
    venv = Path(value)
    probe = "import importlib.util as u; print(','.join(m for m in %r if u.find_spec(m)))" % (SIM_ONLY,)
    found = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert not found, f"the node-only environment {venv} has packages a node must not need: {found}"
    return venv


def _processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line names ``text`` (the deployment's folder), as 'pid: command'."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmd and state not in ("Z", "X"):
            found.append(f"{entry}: {cmd[:200]}")
    return found


def test_too_few_nodes_is_refused_before_anything_starts(tmp_path: Path) -> None:
    out = tmp_path / "deploy"
    with pytest.raises(ValueError, match=r"needs at least 3 nodes.*every training group needs a node of its own.*--nodes 3"):
        deploy_local(nodes=2, dataset="hapt", scenario="sensor-bind", out=out, quick=True)
    assert not out.exists()


def test_node_layout_holds_validation_and_test_out_on_a_node_with_their_modalities() -> None:
    from common.data.scenarios import Scenario

    sensor, label, babel = (Scenario.load(n) for n in ("sensor-bind", "label-bind", "babel-hapt"))
    # groups in scenario order; a fleet of one partition per group below one node per group
    assert node_layout(sensor, 3) == (5, [[0], [1], [2, 3, 4]])  # labelled (lin_acc+gravity) also holds validation and test
    assert node_layout(sensor, 4) == (5, [[0], [1], [2, 4], [3]])  # one more node: validation gets its own
    assert node_layout(sensor, 5) == (5, [[p] for p in range(5)])
    assert node_layout(label, 3) == (4, [[0], [1], [2, 3]])  # no training group holds acc+gyro: validation and test share one
    assert node_layout(babel, 4) == (6, [[0], [1], [2], [3, 4, 5]])
    for sc, need in ((sensor, 3), (label, 3), (babel, 4)):
        with pytest.raises(ValueError, match=rf"needs at least {need} nodes"):
            node_layout(sc, need - 1)


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_deploy_local_runs_a_whole_campaign_and_stops_everything(tmp_path: Path, flower_env: Path, mosquitto: str, node_venv: Path | None) -> None:
    out = tmp_path / "deploy"
    error: BaseException | None = None
    try:
        summary = deploy_local(nodes=NODES, dataset="hapt", scenario="sensor-bind", out=out, quick=True, node_venv=node_venv)
    except Exception as e:  # check for stray processes first, then fail
        error = e

    written = json.loads((out / "summary.json").read_text())
    started = written["processes"]
    running = [p for p in started if process_running(p["pid"], p["start"])]
    assert not running, f"processes deploy-local started still run: {running}"
    strays = _processes_mentioning(str(out))
    assert not strays, f"processes working in {out} still run: {strays}"
    names = {p["name"] for p in started}
    assert {"mosquitto", "coordinator", "campaign"} <= names
    assert sum(n.startswith("node ") and "/" not in n for n in names) == NODES
    assert all((out / "logs" / f"replay-{n[5:]}.log").exists() for n in names if n.startswith("node ") and "/" not in n)
    if error is not None:
        raise error
    assert summary["state"] == "done"
    assert written["state"] == "done" and written["campaign_id"] == summary["campaign_id"]

    nodes = {n["node_id"]: n for n in summary["nodes"]}
    assert len(nodes) == NODES
    assert len({tuple(n["modalities"]) for n in nodes.values()}) == 3  # gyro+lin_acc, gravity+gyro, gravity+lin_acc
    assert sorted(n["role"] for n in nodes.values()) == ["train", "train", "train+validation+test"]
    (host,) = [n for n in nodes.values() if len(n["parts"]) == 3]
    assert [q["group"] for q in host["parts"]] == ["labelled", "validation", "test"]
    held = [set(q["subjects"]) for q in host["parts"]]
    assert not (held[0] & held[1] or held[0] & held[2] or held[1] & held[2])  # subject-disjoint parts
    for nid, n in nodes.items():
        assert n["windows_ingested"] > 0 and n["windows_ingested"] == n["windows_replayed"], nid
        assert n["adapters"] and set(n["adapters"]) == set(n["modalities"]), nid
        assert all(v >= 1 for v in n["adapters"].values()), (nid, n["adapters"])
        assert n["registry"]["adapter_versions"] == n["adapters"], nid  # reported at push, read back from the Registry
        assert n["loaded"]["adapter_versions"] == n["adapters"], nid  # the running agent predicts with them
        assert n["loaded"]["predictions"] > 0, nid
        assert set(n["encoders"]) == set(n["modalities"]), nid
        assert sum(n["embeddings_uploaded"].values()) > 0, nid
    if node_venv is not None:  # every node agent started its SuperNode from the node-only environment
        supernode = str(node_venv.resolve() / "bin" / "flower-supernode")
        for nid in nodes:
            assert f"starting {supernode} " in (out / "logs" / f"node-{nid}.log").read_text(), nid
    assert [nid for nid, n in nodes.items() if n["labelled_windows"] > 0] == [host["node_id"]]  # the unlabelled groups see no label

    prot = summary["protections"]
    assert prot["superlink_tls"] and prot["registry_mutual_tls"] and prot["supernode_auth"] and prot["mqtt_tls_and_acl"] and prot["signed_bundles"]
    # (each node's adapters, read back below from the Registry, were reported by the node over mutual TLS with its own certificate)
    for nid in nodes:  # every SuperNode reached the SuperLink over TLS, verified against the run's CA
        assert f"--root-certificates {out / 'pki' / 'ca.pem'}" in (out / "logs" / f"node-{nid}.log").read_text(), nid
    deployment = json.loads((out / "deployment.json").read_text())  # what an operator (or --hold) is given
    assert Path(deployment["ca_certificate"]).exists() and all(Path(n["credentials"]["key"]).stat().st_mode & 0o777 == 0o600 for n in deployment["nodes"])
    assert deployment["state"] == "stopped" and deployment["campaign_id"] == summary["campaign_id"]
    for name in ("broker", "superlink", "registry"):
        assert f"{deployment[name]['host']}:{deployment[name]['port']}" == summary["addresses"][name], name
    assert sorted(n["node_id"] for n in deployment["nodes"]) == sorted(nodes)
    key_file = Path(deployment["coordinator"]["signing_key_file"])
    assert key_file.stat().st_mode & 0o777 == 0o600  # the private key reached the coordinator as a 0600 file's path

    assert summary["embeddings"]["batches"] > 0 and sum(summary["embeddings"]["windows"].values()) > 0
    assert summary["pairs"]["total"] > 0
    assert [sorted(p["groups"]) for p in summary["pairs"]["by_groups"] if p["pairs"] > 0] == [["gyro-gravity", "gyro-linacc"]]
    assert summary["stages"] and all(s["status"] == "done" for s in summary["stages"])
    assert set(summary["adapters"]) == {"gravity", "gyro", "lin_acc"}

    # the host uploaded its own and its validation windows, never its test part's
    test_windows = summary["uploads_by_group"][host["node_id"]]
    assert set(test_windows) == {"labelled", "validation"}, test_windows
    (test_node,) = [n for n in nodes.values() if "test" in n["role"]]
    mods = sorted(test_node["modalities"])
    subsets = {"+".join(c) for k in range(1, len(mods) + 1) for c in combinations(mods, k)}
    assert subsets <= set(summary["accuracy"]), (subsets, summary["accuracy"])
    for subset in subsets:
        m = summary["accuracy"][subset]
        assert 0.0 <= m["accuracy"] <= 1.0 and m["n"] > 0 and m["nodes"] == [test_node["node_id"]], (subset, m)
