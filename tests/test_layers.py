"""The package layering the design promises: ``common`` (the learning library) pulls in no Flower, MQTT, gRPC or database."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("flwr", "paho", "grpc", "sqlalchemy", "psycopg")
SQL_BASE = "node_agent.sqlbase"  # the SQL plumbing both stores share; the one node_agent module the coordinator may import


def _imports(path: Path) -> list[str]:
    """Every module an import statement in ``path`` names, at any level (inside functions and ``TYPE_CHECKING`` too)."""
    import ast

    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def _package_files(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if not p.name.endswith(("_pb2.py", "_pb2_grpc.py")))


def test_common_imports_no_flower_mqtt_grpc_or_database():
    modules = sorted(m.name for m in pkgutil.walk_packages(common.__path__, "common."))
    assert "common.codec" in modules and "common.growth" in modules and "common.config" in modules
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted({{n.split('.')[0] for n in sys.modules}} & set({list(FORBIDDEN)!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_no_import_statement_in_common_names_flower_mqtt_grpc_or_a_database():
    """Also the imports a run above would not execute: inside functions, behind ``TYPE_CHECKING``, in rarely used modules."""
    files = _package_files("common")
    assert ROOT / "common" / "codec.py" in files and ROOT / "common" / "growth" / "trainer.py" in files
    found = {str(p.relative_to(ROOT)): sorted({m for m in _imports(p) if m.split(".")[0] in FORBIDDEN}) for p in files}
    assert not {f: m for f, m in found.items() if m}, "common/ must not import these"


def test_the_node_agent_and_the_coordinator_import_each_other_only_through_the_sql_base():
    node_uses = {str(p.relative_to(ROOT)): [m for m in _imports(p) if m.split(".")[0] == "coordinator"] for p in _package_files("node_agent")}
    assert not {f: m for f, m in node_uses.items() if m}, "the node agent imports nothing of the coordinator"
    coord_uses = {str(p.relative_to(ROOT)): sorted({m for m in _imports(p) if m.split(".")[0] == "node_agent"}) for p in _package_files("coordinator")}
    assert {f: m for f, m in coord_uses.items() if m} == {f"coordinator/{f}.py": [SQL_BASE] for f in ("store", "store_schema", "store_trust")}


def test_only_the_stores_use_the_sql_base():
    users = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("*/**/*.py") if "tests" not in p.parts and SQL_BASE in _imports(p))
    assert users == ["coordinator/store.py", "coordinator/store_schema.py", "coordinator/store_trust.py", "node_agent/store.py"]


def test_no_file_holds_more_than_600_lines():
    """A file that grows past 600 lines holds more than one idea; generated protobuf modules are exempt."""
    long = {str(p.relative_to(ROOT)): n for p in ROOT.glob("*/**/*.py")
            if not p.name.endswith(("_pb2.py", "_pb2_grpc.py")) and p.relative_to(ROOT).parts[0] in ("common", "node_agent", "coordinator", "proto", "simulations", "tests", "benchmarks")
            and (n := len(p.read_text().splitlines())) > 600}  # fmt: skip
    assert not long, f"split these by idea: {long}"


def test_no_import_cycles_in_the_project_packages():
    """Every ``from <package module> import`` (also inside functions) as a graph: it has no cycle."""
    import ast

    packages = ("common", "node_agent", "coordinator", "simulations")
    modules = {}
    for p in ROOT.glob("*/**/*.py"):
        rel = p.relative_to(ROOT)
        if rel.parts[0] in packages:
            name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            modules[name] = p
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m, p in modules.items():
        tree = ast.parse(p.read_text())
        typing_only = {id(n) for f in ast.walk(tree) if isinstance(f, ast.If) and getattr(f.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(f)}
        for node in ast.walk(tree):
            if id(node) in typing_only:  # annotations only, never run
                continue
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[m] |= {t for t in targets if t in modules and t != m and not m.startswith(t + ".")}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n) :] + [n]))  # on the stack: in the path
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_campaign_declares_up_front_everything_its_phases_set():
    """A phase may only set what ``CampaignState`` declares, so every piece of a campaign's state is found in one place:
    checked in the source (every ``st.<name> = ...`` in the phases and the ServerApp, every ``self.<name> = ...`` in the
    state's own methods) and at run time (the dataclass has slots, so setting anything else raises)."""
    import ast
    import dataclasses

    from coordinator.state import CampaignState

    declared = {f.name for f in dataclasses.fields(CampaignState)}
    set_in = {}
    for path, owner in (("campaign.py", "st"), ("server_app.py", "st"), ("state.py", "self")):
        for n in ast.walk(ast.parse((ROOT / "coordinator" / path).read_text())):
            if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) and getattr(n.value, "id", "") == owner:
                set_in.setdefault(n.attr, path)
    assert {"flower_ids", "specs", "global_states", "model", "fusion_head", "finetuned", "store"} <= set(set_in), "the walk found the phases' writes"
    undeclared = {a: f for a, f in set_in.items() if a not in declared}
    assert not undeclared, f"declare these in CampaignState: {undeclared}"
    st = object.__new__(CampaignState)
    st.model = None  # a declared field takes a value
    try:
        st.learned_on_the_side = 1
    except AttributeError:
        pass
    else:
        raise AssertionError("CampaignState took an undeclared attribute: it must be a dataclass with slots")


def test_every_run_config_key_is_read_by_the_code_it_configures():
    """A run-config key nothing reads would be a setting that silently changes nothing: each must be read outside
    ``CampaignConfig``'s own parsing and checking (directly, or through one of its builders that the code calls)."""
    import ast
    import dataclasses
    import re

    from common.config import CampaignConfig

    tree = ast.parse((ROOT / "common" / "config.py").read_text())
    (cls,) = [c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "CampaignConfig"]
    reads = {f.name: {n.attr for n in ast.walk(f) if isinstance(n, ast.Attribute) and getattr(n.value, "id", "") == "self"}
             for f in cls.body if isinstance(f, ast.FunctionDef) and f.name not in ("check", "to_run_config", "from_run_config", "keys")}  # fmt: skip
    code = "\n".join(p.read_text() for p in ROOT.glob("*/**/*.py") if p.relative_to(ROOT).parts[0] in ("common", "node_agent", "coordinator", "simulations")
                     and p != ROOT / "common" / "config.py")  # fmt: skip
    used = lambda name: re.search(rf"\.{name}\b", code) is not None  # noqa: E731
    dead = [f.name for f in dataclasses.fields(CampaignConfig)
            if not used(f.name) and not any(f.name in attrs and used(builder) for builder, attrs in reads.items())]  # fmt: skip
    assert not dead, f"run-config keys nothing reads: {dead}"


def test_the_client_handlers_only_unpack_call_and_pack():
    """Each Flower handler of the node is under 30 lines and does no work of its own: no arithmetic (a seed is picked
    by ``tasks.round_seed``), no loss names (``tasks`` reports the objective), no store writes (``tasks`` keeps the ledger)."""
    import ast

    tree = ast.parse((ROOT / "node_agent" / "client_app.py").read_text())
    handlers = [f for f in tree.body if isinstance(f, ast.FunctionDef)
                and any(isinstance(d, ast.Call) and getattr(getattr(d.func, "value", None), "id", "") == "app" for d in f.decorator_list)]  # fmt: skip
    assert {f.name for f in handlers} == {"manifest", "pretrain", "collect", "finetune", "validate", "apply", "evaluate"}
    problems = {}
    for f in handlers:
        found = []
        if f.end_lineno - f.lineno + 1 >= 30:
            found.append(f"{f.end_lineno - f.lineno + 1} lines")
        for n in ast.walk(f):
            if isinstance(n, (ast.BinOp, ast.AugAssign)) and not isinstance(getattr(n, "op", None), ast.Mod):
                found.append(f"arithmetic at line {n.lineno}")
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and "loss" in n.value:
                found.append(f"a loss name {n.value!r} at line {n.lineno}")
            if isinstance(n, ast.Attribute) and n.attr in ("store", "record_upload", "crc32"):
                found.append(f".{n.attr} at line {n.lineno}")
        if found:
            problems[f.name] = found
    assert not problems, f"move this work into node_agent/tasks.py: {problems}"
