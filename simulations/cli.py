"""``edgebind-sim``: experiments, the demo, fleet simulations and a local deployment.

Subcommands are thin over library functions of the same names.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

from common.pretrain import OBJECTIVES
from common.processes import setup_logging


def _setup(args) -> torch.device:
    setup_logging(args.verbose, brief=True)
    for noisy in ("flwr", "ray", "urllib3", "matplotlib", "sentence_transformers", "httpx", "alembic", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    from common.device import pick_device

    return pick_device(args.device)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="hapt", help="'hapt' (bundled UCI HAPT) or a path to a .npz in the generic format")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1); figures are mean, std and paired differences over them (default: 5)")
    p.add_argument("--out", type=Path, default=None, help="output folder (results.json and plots)")
    p.add_argument("--quick", action="store_true", help="a small, fast run for tests and smoke checks")


def experiment_mmbind(args, device) -> dict:
    from dataclasses import replace

    from simulations.experiments.mmbind import METHODS, MMBindSettings, run

    methods = tuple(args.methods.split(",")) if args.methods else METHODS
    st = replace(MMBindSettings.quick() if args.quick else MMBindSettings(), finetune_encoders=args.finetune_encoders)
    if args.objective:
        st = replace(st, pretrain=replace(st.pretrain, objective=args.objective))
    return run(args.dataset, args.scenario, args.seeds, args.out or Path("runs") / f"mmbind-{Path(args.scenario).stem}", args.quick, device,
               methods=methods, settings=st)  # fmt: skip


def experiment_binding(args, device) -> dict:
    from dataclasses import replace

    from simulations.experiments.binding import run
    from simulations.experiments.mmbind import MMBindSettings

    st = MMBindSettings.quick() if args.quick else MMBindSettings()
    if args.objective:
        st = replace(st, pretrain=replace(st.pretrain, objective=args.objective))
    return run(args.dataset, args.scenario, args.seeds, args.out or Path("runs") / f"binding-{Path(args.scenario).stem}", args.quick, device, settings=st)


def experiment_babel(args, device) -> dict:
    from simulations.experiments.babel import run

    kd_weights = None
    if args.kd_weights:
        try:
            kd_weights = [float(w) for w in args.kd_weights.split(",") if w.strip()]
        except ValueError:
            raise ValueError(f"--kd-weights takes comma-separated numbers, got {args.kd_weights!r}") from None
        if not kd_weights:
            raise ValueError("--kd-weights names no weight")
    return run(args.dataset, args.plan, args.seeds, args.out or Path("runs") / f"babel-{Path(args.plan).stem}", args.quick, device, scenario=args.scenario,
               kd_weights=kd_weights)


def probe(args, device) -> dict:
    from dataclasses import replace

    from simulations.experiments.probe import ProbeSettings, run as run_probe

    st = ProbeSettings.quick() if args.quick else ProbeSettings()
    if args.objective:
        st = replace(st, pretrain=replace(st.pretrain, objective=args.objective))
    mods = [m for m in args.modalities.split(",") if m] or None
    return run_probe(args.dataset, args.seeds, args.out or Path("runs") / "probe", args.quick, device, modalities=mods, settings=st)


def demo(args, device) -> dict:
    from simulations.demo import demo as run_demo

    return run_demo(out=args.out or Path("runs") / "demo", device=device, quick=args.quick)


def run(args, device) -> dict:
    from simulations.fleet import run_fleet

    return run_fleet(args.dataset, args.scenario, args.nodes, args.seed, args.out or Path("runs") / "fleet", args.quick, args.dropout, device,
                     **_run_config_pairs(args.config))  # fmt: skip


def _run_config_pairs(pairs: list[str]) -> dict:
    """``KEY=VALUE`` run config overrides (values read as JSON where they parse, else as text)."""
    import json

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"-c takes KEY=VALUE (a run config key of pyproject.toml's [tool.flwr.app.config]), got {pair!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def deploy_local(args, device) -> dict:
    from simulations.deploy_local import deploy_local as run_deploy

    return run_deploy(nodes=args.nodes, dataset=args.dataset, scenario=args.scenario, out=args.out or Path("runs") / "deploy-local", quick=args.quick)


def convert(args, device) -> dict:
    from common.data.converters import convert as run_convert

    path = run_convert(args.format, args.source, args.output)
    print(f"wrote {path}")
    return {"path": str(path)}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgebind-sim", description=__doc__)
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when present, else CPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("experiment", help="central experiments on real data").add_subparsers(dest="which", required=True)
    p = ex.add_parser("mmbind", help="MMBind against its baselines")
    _common(p)
    p.add_argument("--scenario", default="sensor-bind", help="shipped scenario name or a .toml path")
    p.add_argument("--methods", default="", help="comma-separated subset of methods (default: all)")
    p.add_argument("--finetune-encoders", action="store_true",
                   help="train the few-label step end to end on raw windows (default: frozen encoders, as a federated campaign)")
    p.add_argument("--objective", default="", choices=["", *OBJECTIVES],
                   help="self-supervised encoder objective (default: the settings' own, see docs/results.md for which won on validation)")
    p.set_defaults(func=experiment_mmbind)
    p = ex.add_parser("binding", help="how accurate sensor-bound pseudo-pairs are, and whether similarity, margin or mutual matches tell the good ones")
    _common(p)
    p.add_argument("--scenario", default="sensor-bind", help="shipped scenario name or a .toml path (sensor binding)")
    p.add_argument("--objective", default="", choices=["", *OBJECTIVES], help="self-supervised objective of the shared encoder (default: the experiments' own)")
    p.set_defaults(func=experiment_binding)
    p = ex.add_parser("babel", help="Babel expandable alignment")
    _common(p)
    p.add_argument("--plan", default="hapt-gyro-trunk", help="shipped plan name or a .toml path")
    p.add_argument("--scenario", default=None, help="scenario whose groups the plan's stages use (default: the plan's)")
    p.add_argument("--kd-weights", default="",
                   help="comma-separated candidate distillation weights (e.g. 1,3,10,30): choose one on validation subjects "
                        "(mean validation label@1 over pairs) before the test figures (default: the configured kd_weight)")  # fmt: skip
    p.set_defaults(func=experiment_babel)

    p = sub.add_parser("probe", help="encoder sanity figures: all-label linear probe per modality against the same encoder trained supervised")
    p.add_argument("--dataset", default="hapt", help="'hapt' (bundled UCI HAPT) or a path to a .npz in the generic format")
    p.add_argument("--seeds", type=int, default=3, help="number of subject splits (default: 3)")
    p.add_argument("--modalities", default="", help="comma-separated modalities (default: every one the dataset has)")
    p.add_argument("--objective", default="", choices=["", *OBJECTIVES], help="self-supervised objective (default: the experiments' own)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/probe)")
    p.add_argument("--quick", action="store_true", help="a small, fast run for tests and smoke checks")
    p.set_defaults(func=probe)

    p = sub.add_parser("demo", help="the main job: a small simulated fleet on HAPT, with a report")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true")
    p.set_defaults(func=demo)

    p = sub.add_parser("run", help="a federated campaign over a simulated fleet of any size")
    p.add_argument("--dataset", default="hapt")
    p.add_argument("--scenario", default="sensor-bind")
    p.add_argument("--nodes", type=int, default=None, help="number of virtual nodes (default: the scenario's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dropout", type=float, default=None, help="share of nodes that vanish mid-round")
    p.add_argument("-c", "--config", action="append", default=[], metavar="KEY=VALUE",
                   help="a run config setting (see [tool.flwr.app.config] in pyproject.toml), e.g. -c finetune-strategy=fedprox; repeatable")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true")
    p.set_defaults(func=run)

    p = sub.add_parser("deploy-local", help="mosquitto + coordinator + SuperNodes on 127.0.0.1, one whole campaign")
    p.add_argument("--nodes", type=int, default=3,
                   help="node agents: one per training group at least, validation and test subjects held out on a node with their "
                        "modalities (3 for sensor-bind and label-bind, 4 for babel-hapt)")  # fmt: skip
    p.add_argument("--dataset", default="hapt")
    p.add_argument("--scenario", default="sensor-bind")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true")
    p.set_defaults(func=deploy_local)

    p = sub.add_parser("convert", help="convert a published dataset to the generic .npz format")
    p.add_argument("format", choices=["utd-mhad", "pamap2"])
    p.add_argument("source", type=Path, help="folder (or file) in the published format")
    p.add_argument("output", type=Path, help="the .npz to write")
    p.set_defaults(func=convert)
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    device = _setup(args)
    try:
        args.func(args, device)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"edgebind-sim: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgebind-sim: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
