"""The node agent's import boundary: what `edgebind-node` loads must come from `edgebind[node]` alone.

A Raspberry Pi installs the node profile only, so no module the node agent
imports may pull in a simulation, plotting, language-model or PostgreSQL
package. Checked in a fresh interpreter, since this test process has them all
loaded; CI also runs a whole deployment from a node-only environment
(tests/e2e/test_deploy_local.py).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIM_ONLY = ("ray", "scipy", "sklearn", "matplotlib", "transformers", "sentence_transformers", "psycopg", "flwr_datasets", "datasets", "pandas")
NODE_MODULES = ("node_agent.cli", "node_agent.client_app", "node_agent.runtime", "node_agent.ingest", "node_agent.publish", "node_agent.store", "node_agent.tasks")


def test_node_agent_imports_nothing_outside_the_node_profile() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {NODE_MODULES!r}: importlib.import_module(m)\n"
        f"print(','.join(sorted({{k.split('.')[0] for k in sys.modules}} & set({SIM_ONLY!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
    assert out == "", f"the node agent imports packages outside edgebind[node]: {out}"


def test_the_node_profile_lists_no_simulation_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    extras = project["optional-dependencies"]
    assert extras["node"] == []  # the node needs the base dependencies only
    for pkg in ("simulation", "scipy", "scikit-learn", "matplotlib", "transformers", "psycopg", "flwr-datasets", "kcc2020"):
        assert pkg not in base, f"{pkg} is a base dependency, so every node would install it"
    assert any("flwr[simulation]" in d for d in extras["sim"]) and "edgebind[coordinator,sim]" in extras["all"]
