"""Simulate a whole fleet on one machine: the real ServerApp and ClientApp in Flower's simulation engine.

``run_fleet`` turns a dataset and a scenario into N virtual SuperNodes (each
one a partition: see ``node_agent.data.node_spec_for``), runs one campaign
with ``coordinator.server_app.app`` and ``node_agent.client_app.app`` - the
same objects a deployment runs, no separate code path - and returns the
campaign's results (also in ``out/results.json``).

Flower's public ``run_simulation`` gives the apps an empty run config, so the
fleet calls the function behind it (``flwr.simulation.run_simulation._run_simulation``,
as ``flwr run`` does) with the run config this campaign needs: the app
directory it writes holds the ``[tool.flwr.app]`` defaults a FAB would carry
and the run's overrides carry the per-campaign values (the signing key among
them, which so never touches the disk). This is pinned to flwr 1.41.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from common.config import CampaignConfig
from common.data import load_dataset
from common.data.scenarios import Scenario
from common.codec import new_signing_key
from common.files import private_file, write_json
from common.processes import ensure_logging
from node_agent.data import cached_dataset, cached_split, dropouts, fleet_layout, node_id_of, virtual_node
from simulations.experiments.common import commit_of, fingerprint

log = logging.getLogger("edgebind.fleet")


def fleet_config(
    dataset: str,
    scenario: str,
    nodes: int | None,
    seed: int,
    out: Path,
    quick: bool,
    dropout: float | None,
    device,
    **overrides,
) -> tuple[CampaignConfig, int, dict[str, int]]:
    """The campaign's run config, the number of virtual nodes, and the nodes planned to drop out (id -> round)."""
    sc = Scenario.load(scenario)
    layout = fleet_layout(sc, nodes)
    share = sc.dropout if dropout is None else dropout
    base = {
        "dataset": str(dataset), "scenario": str(scenario), "seed": int(seed), "quick": bool(quick),
        "campaign-id": f"fleet-{sc.name}-{len(layout)}n-s{seed}", "results-path": str(out / "results.json"),
        "store": str(out / "coordinator.db"), "state-dir": str(out / "nodes"), "device": str(device) if device else "",
        "expected-nodes": len(layout), "discovery-timeout": 120.0, "dropout": float(share),
        "coordinator-threads": 1,  # the virtual nodes share the cores; oversubscribed BLAS threads crawl
        "signing-key-file": str(_fleet_key(out)),
    }  # fmt: skip
    base.update({k.replace("_", "-"): v for k, v in overrides.items()})
    cfg = CampaignConfig.from_run_config(base)
    plan = dropouts(sc, len(layout), share, seed, cfg.pretrain_rounds) if share > 0 else {}
    planned = {node_id_of(layout[p][0], layout[p][1]): r for p, r in plan.items()}
    return cfg, len(layout), planned


def _fleet_key(out: Path) -> Path:
    """The simulated fleet's signing key: a 0600 file in its results folder, made once (a resumed fleet signs with it again)."""
    path = Path(out) / "signing.key"
    if not path.exists():
        private_file(path).write_text(new_signing_key().hex() + "\n")
    return path


def resume_fleet(out: Path, device=None, cpus: int = 2) -> dict:
    """Continue the simulated campaign whose store is ``out/coordinator.db`` (a run that was killed) with the very
    settings it started with; finished pretraining rounds, uploads and stages are not repeated."""
    from coordinator.store import open_store

    out = Path(out).resolve()
    if not (out / "coordinator.db").exists():
        raise FileNotFoundError(f"--resume {out}: no coordinator.db there (give the --out of the run to continue)")
    with open_store(out / "coordinator.db") as st:
        campaigns = st.campaigns()
    if not campaigns:
        raise ValueError(f"--resume {out}: its store holds no campaign")
    cfg = dict(campaigns[0].config)
    log.info("fleet: resuming campaign %s (state %s) from %s", campaigns[0].campaign_id, campaigns[0].state, out)
    fixed = {k: cfg.pop(k) for k in ("dataset", "scenario", "seed", "quick", "dropout", "device")}
    device = device or fixed["device"] or None
    return run_fleet(fixed["dataset"], fixed["scenario"], int(cfg["expected-nodes"]), int(fixed["seed"]), out, bool(fixed["quick"]), float(fixed["dropout"]),
                     device, cpus, resume=True, **{k.replace("-", "_"): v for k, v in cfg.items()})  # fmt: skip


def run_fleet(
    dataset: str = "hapt",
    scenario: str = "sensor-bind",
    nodes: int | None = None,
    seed: int = 0,
    out: Path = Path("fleet-results"),
    quick: bool = False,
    dropout: float | None = None,
    device=None,
    cpus: int = 2,
    **overrides,
) -> dict:
    """Run one campaign over a simulated fleet; return its results and write ``out/results.json``.

    ``nodes`` rescales the scenario's groups to that many nodes (default: the
    scenario's own counts); ``dropout`` (default: the scenario's) is the share
    of nodes that vanish mid-pretraining; ``overrides`` are further run config
    keys (``round_timeout=30``, ``dropout_mode="stall"``, ...). ``device``
    (a name or a torch.device) is the coordinator's; virtual nodes run on the CPU.
    """
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ensure_logging()
    cfg, n, planned = fleet_config(dataset, scenario, nodes, seed, out, quick, dropout, device, **overrides)
    run_config = cfg.to_run_config()
    app_dir = _write_app_dir(out / "flower-app")
    log.info("fleet: %d virtual nodes, scenario %s on %s, seed %d%s%s; results in %s", n, cfg.scenario, cfg.dataset, seed,
             " [quick]" if cfg.quick else "", f", {len(planned)} planned drop-out(s)" if planned else "", out)  # fmt: skip
    commit = commit_of()  # the code that runs, read before it runs: a commit made meanwhile is not this run's
    t0 = time.time()
    _simulate(run_config, n, app_dir, cpus)
    wall = time.time() - t0
    results = json.loads((out / "results.json").read_text())
    results["fleet"] = {
        "nodes": n,
        "planned_dropouts": planned,
        "wall_seconds": round(wall, 3),
        "campaign_seconds": results.get("seconds"),
        "engine": f"flwr simulation (ray), {cpus} CPUs, 1 CPU per virtual node",
        "commit": commit,
        "dataset_sha256": fingerprint(load_dataset(dataset)),
        "scenario_settings": fleet_shape(cfg.dataset, cfg.scenario, seed, n, cfg.window_cap()),
    }
    write_json(out / "results.json", results)
    log.info("fleet: done in %.1fs (campaign %.1fs, the rest is Flower/Ray start-up and shut-down)", wall, results.get("seconds") or 0.0)
    return results


def fleet_shape(dataset: str, scenario: str, seed: int, n: int, cap: int | None) -> dict:
    """The federated-benchmark settings each group uses, and what they did to its nodes (for results.json)."""
    sc, _ = cached_split(dataset, scenario, seed)
    out = {}
    for g in sc.groups:
        if not g.fleet_settings():
            continue
        specs = [virtual_node(dataset, scenario, seed, p, n, cap or None)[0] for p, (name, _, _) in enumerate(fleet_layout(sc, n)) if name == g.name]
        ds = cached_dataset(dataset)
        classes = [len(np.unique(ds.y[s.rows])) for s in specs if len(s.rows)]
        visible = [(s.labels >= 0) for s in specs]
        flipped = sum(int(((s.labels >= 0) & (s.labels != ds.y[s.rows])).sum()) for s in specs)
        out[g.name] = {
            "settings": {k: getattr(g, k) for k in ("label_skew", "missing_modality", "label_noise", "stragglers", "straggler_delay")},
            "nodes": len(specs),
            "classes_per_node": {"mean": float(np.mean(classes)) if classes else 0.0, "min": int(min(classes, default=0)), "max": int(max(classes, default=0))},
            "windows_per_node": {"min": int(min((len(s.rows) for s in specs), default=0)), "max": int(max((len(s.rows) for s in specs), default=0))},
            "lost_modalities": {s.node_id: s.lost for s in specs if s.lost},
            "labels_flipped": flipped, "labels_visible": int(sum(v.sum() for v in visible)),
            "stragglers": {s.node_id: round(s.delay, 2) for s in specs if s.delay > 0},
        }  # fmt: skip
    return out


def _write_app_dir(app_dir: Path) -> Path:
    """A Flower app directory with this project's ``[tool.flwr.app]`` (what a FAB of edgebind carries)."""
    cfg = CampaignConfig().to_run_config()
    lines = [
        "[project]", 'name = "edgebind"', 'version = "0.1.0"', 'description = "edgebind fleet simulation"', 'license = "Apache-2.0"', "",
        "[tool.flwr.app]", 'publisher = "edgebind"', "", "[tool.flwr.app.components]",
        'serverapp = "coordinator.server_app:app"', 'clientapp = "node_agent.client_app:app"', "", "[tool.flwr.app.config]",
    ]  # fmt: skip
    lines += [f"{k} = {json.dumps(v)}" for k, v in cfg.items()]
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return app_dir


def _simulate(run_config: dict, num_nodes: int, app_dir: Path, cpus: int) -> None:
    from flwr.app import Context, RecordDict
    from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    from coordinator.server_app import app as server_app
    from node_agent.client_app import app as client_app

    # Ray starts its workers at nice 15; here they are the campaign's main work (the virtual
    # nodes), and on a shared machine niced actors starve. An explicit setting wins.
    os.environ.setdefault("RAY_worker_niceness", "0")
    run_id = generate_rand_int_from_bytes(RUN_ID_NUM_BYTES)
    run = Run.create_empty(run_id=run_id)
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    run.override_config = dict(run_config)  # what the virtual nodes see, over the app dir's defaults
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID
    context = Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))
    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False, "logging_level": "WARNING"},
    }
    _run_simulation(
        num_supernodes=num_nodes,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        backend_name="ray",
        backend_config=backend,
        server_app_context=context,
        app_dir=str(app_dir),
        run=run,
        is_app=True,
    )
