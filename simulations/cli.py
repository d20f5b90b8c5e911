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

from common.cli import command, parser
from common.binding import WEIGHT_RULES
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
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1); figures are mean, std and paired differences over them")
    p.add_argument("--out", type=Path, default=None, help="output folder for results.json and plots (default: runs/<experiment>-<scenario>)")
    p.add_argument("--quick", action="store_true", help="a small, fast run for tests and smoke checks")


def _objective(args) -> str:
    """The pretraining objective: ``--objective`` if given, else the scenario's own (chosen on its validation), else ""."""
    from common.data.scenarios import Scenario

    return args.objective or Scenario.load(args.scenario).objective


def experiment_mmbind(args, device) -> dict:
    from dataclasses import replace

    from simulations.experiments.mmbind import METHODS, MMBindSettings, run

    methods = tuple(args.methods.split(",")) if args.methods else METHODS
    st = replace(MMBindSettings.quick() if args.quick else MMBindSettings(), finetune_encoders=args.finetune_encoders)
    if objective := _objective(args):
        st = replace(st, pretrain=replace(st.pretrain, objective=objective))
    if args.pseudo_share is not None:
        st = replace(st, align=replace(st.align, pseudo_share=args.pseudo_share))
    if args.pair_rule:
        st = replace(st, weighting=replace(st.weighting, rule=args.pair_rule))
    if args.head_soup is not None:
        st = replace(st, head=replace(st.head, soup=args.head_soup), raw_head=replace(st.raw_head, soup=args.head_soup))
    return run(args.dataset, args.scenario, args.seeds, args.out or Path("runs") / f"mmbind-{Path(args.scenario).stem}", args.quick, device,
               methods=methods, settings=st)  # fmt: skip


def experiment_binding(args, device) -> dict:
    from dataclasses import replace

    from simulations.experiments.binding import run
    from simulations.experiments.mmbind import MMBindSettings

    st = MMBindSettings.quick() if args.quick else MMBindSettings()
    if objective := _objective(args):
        st = replace(st, pretrain=replace(st.pretrain, objective=objective))
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
    joint = {}
    for flag, kind in (("joint_temperatures", float), ("joint_epochs", int)):
        text = getattr(args, flag)
        if text:
            try:
                joint[flag] = [kind(v) for v in text.split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"--{flag.replace('_', '-')} takes comma-separated {'numbers' if kind is float else 'whole numbers'}, got {text!r}") from None
    settings = None
    if args.objective:
        from dataclasses import replace

        from simulations.experiments.babel import BabelSettings

        base = BabelSettings.quick() if args.quick else BabelSettings()
        settings = replace(base, pretrain=replace(base.pretrain, objective=args.objective))
    return run(args.dataset, args.plan, args.seeds, args.out or Path("runs") / f"babel-{Path(args.plan).stem}", args.quick, device, scenario=args.scenario,
               settings=settings, kd_weights=kd_weights, **joint)


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
    from simulations.fleet import resume_fleet, run_fleet

    if args.resume:
        return resume_fleet(args.resume, device)
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

    return run_deploy(nodes=args.nodes, dataset=args.dataset, scenario=args.scenario, out=args.out or Path("runs") / "deploy-local", quick=args.quick,
                      node_venv=args.node_venv, hold=args.hold, insecure=args.insecure)  # fmt: skip


def convert(args, device) -> dict:
    from common.data.converters import convert as run_convert

    path = run_convert(args.format, args.source, args.output)
    print(f"wrote {path}")
    return {"path": str(path)}


def build_parser() -> argparse.ArgumentParser:
    ap = parser("edgebind-sim", __doc__, "edgebind-sim demo", "edgebind-sim run --scenario fleet-few-labels --seed 0",
                "edgebind-sim experiment mmbind --scenario sensor-bind --seeds 5")  # fmt: skip
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when present, else CPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's choice)")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ex = command(sub, "experiment", "central experiments on real data (MMBind, pair binding, Babel)", "edgebind-sim experiment mmbind --help")
    ex = ex.add_subparsers(dest="which", required=True, metavar="EXPERIMENT")
    p = command(ex, "mmbind", "MMBind against its baselines (lower bound, unimodal, incomplete, ImageBind-style, upper bound, all labels)",
                "edgebind-sim experiment mmbind --scenario sensor-bind --seeds 5 --out runs/mmbind",
                "edgebind-sim experiment mmbind --scenario label-bind --methods lower_bound,incomplete,mmbind --quick")  # fmt: skip
    _common(p)
    p.add_argument("--scenario", default="sensor-bind", help="shipped scenario name or a .toml path")
    p.add_argument("--methods", default="", help="comma-separated subset of methods (default: all)")
    p.add_argument("--finetune-encoders", action="store_true",
                   help="train the few-label step end to end on raw windows (default: frozen encoders, as a federated campaign)")
    p.add_argument("--objective", default="", choices=["", *OBJECTIVES],
                   help="self-supervised encoder objective (default: the scenario's own, else the settings' own; see docs/results.md for which won on validation)")
    p.add_argument("--pseudo-share", type=float, default=None, metavar="S",
                   help="pseudo-pairs holding at most S views per view of the natural samples in MMBind's alignment, a seeded draw (default: the settings' own; 0 = all)")
    p.add_argument("--pair-rule", default="", choices=["", *WEIGHT_RULES],
                   help="how a sensor-bound pair's similarity becomes its weight (default: the settings' own, linear)")
    p.add_argument("--head-soup", type=int, default=None, metavar="K",
                   help="the few-label head is a greedy soup of its K checkpoints best on validation (default: the settings' own, off)")
    p.set_defaults(func=experiment_mmbind)
    p = command(ex, "binding", "how accurate sensor-bound pseudo-pairs are, and whether similarity, margin or mutual matches tell the good ones",
                "edgebind-sim experiment binding --seeds 5 --objective cross-modal")  # fmt: skip
    _common(p)
    p.add_argument("--scenario", default="sensor-bind", help="shipped scenario name or a .toml path (sensor binding)")
    p.add_argument("--objective", default="", choices=["", *OBJECTIVES], help="self-supervised objective of the shared encoder (default: the scenario's own, else the experiments' own)")
    p.set_defaults(func=experiment_binding)
    p = command(ex, "babel", "Babel expandable alignment", "edgebind-sim experiment babel --plan hapt-gyro-trunk --seeds 3 --kd-weights 1,3,10,30")
    _common(p)
    p.add_argument("--plan", default="hapt-gyro-trunk", help="shipped plan name or a .toml path")
    p.add_argument("--scenario", default=None, help="scenario whose groups the plan's stages use (default: the plan's)")
    p.add_argument("--kd-weights", default="",
                   help="comma-separated candidate distillation weights (e.g. 1,3,10,30): choose one on validation subjects "
                        "(mean validation label@1 over pairs) before the test figures (default: the configured kd_weight)")  # fmt: skip
    p.add_argument("--joint-temperatures", default="", help="comma-separated candidate temperatures of the joint reference (e.g. 0.07,0.2,0.5), "
                   "chosen on validation subjects with --joint-epochs (default: the growth temperature)")
    p.add_argument("--joint-epochs", default="", help="comma-separated candidate epochs of the joint reference (e.g. 15,45), chosen on "
                   "validation subjects with --joint-temperatures (default: the configured joint_epochs)")
    p.add_argument("--objective", default="", choices=["", *OBJECTIVES],
                   help="self-supervised encoder objective; cross-modal pairs the two streams of each stage on its source's windows, "
                        "nothing else (default: the settings' own, contrastive)")  # fmt: skip
    p.set_defaults(func=experiment_babel)

    p = command(sub, "probe", "encoder sanity figures: all-label linear probe per modality against the same encoder trained supervised",
                "edgebind-sim probe --seeds 3", "edgebind-sim probe --modalities gravity,gyro --quick")  # fmt: skip
    p.add_argument("--dataset", default="hapt", help="'hapt' (bundled UCI HAPT) or a path to a .npz in the generic format")
    p.add_argument("--seeds", type=int, default=3, help="number of subject splits")
    p.add_argument("--modalities", default="", help="comma-separated modalities (default: every one the dataset has)")
    p.add_argument("--objective", default="", choices=["", *OBJECTIVES], help="self-supervised objective (default: the experiments' own)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/probe)")
    p.add_argument("--quick", action="store_true", help="a small, fast run for tests and smoke checks")
    p.set_defaults(func=probe)

    p = command(sub, "demo", "the main job: a small simulated fleet on HAPT, central reference points and a report",
                "edgebind-sim demo", "edgebind-sim demo --quick --out /tmp/demo")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="report folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="the campaign's quick schedule on fewer windows (a smoke check, about a minute)")
    p.set_defaults(func=demo)

    p = command(sub, "run", "a federated campaign over a simulated fleet of any size (Flower's simulation engine, the real apps)",
                "edgebind-sim run --scenario fleet-labelled --seed 0",
                "edgebind-sim run --scenario sensor-bind --nodes 100 -c finetune-strategy=fedprox --quick",
                "edgebind-sim run --resume runs/fleet")  # fmt: skip
    p.add_argument("--dataset", default="hapt", help="'hapt' (bundled UCI HAPT) or a path to a .npz in the generic format")
    p.add_argument("--scenario", default="sensor-bind", help="shipped scenario name or a .toml path")
    p.add_argument("--nodes", type=int, default=None, help="number of virtual nodes (default: the scenario's)")
    p.add_argument("--seed", type=int, default=0, help="draws the subject split, the nodes' data and every random choice")
    p.add_argument("--dropout", type=float, default=None, help="share of nodes that vanish mid-round (default: none)")
    p.add_argument("-c", "--config", action="append", default=[], metavar="KEY=VALUE",
                   help="a run config setting (see [tool.flwr.app.config] in pyproject.toml), e.g. -c finetune-strategy=fedprox; repeatable")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: runs/fleet)")
    p.add_argument("--quick", action="store_true", help="the campaign's quick schedule on at most 160 windows per group")
    p.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="continue the campaign a killed run left in DIR (its --out), with the settings it started with")
    p.set_defaults(func=run)

    p = command(sub, "deploy-local", "mosquitto + coordinator + SuperNodes on 127.0.0.1, one whole campaign, then everything stopped",
                "edgebind-sim deploy-local --nodes 3 --quick", "edgebind-sim deploy-local --quick --hold",
                "edgebind-sim deploy-local --scenario babel-hapt --nodes 4")  # fmt: skip
    p.add_argument("--nodes", type=int, default=3,
                   help="node agents: one per training group at least, validation and test subjects held out on a node with their "
                        "modalities (3 for sensor-bind and label-bind, 4 for babel-hapt)")  # fmt: skip
    p.add_argument("--dataset", default="hapt", help="'hapt' (bundled UCI HAPT) or a path to a .npz in the generic format")
    p.add_argument("--scenario", default="sensor-bind", help="shipped scenario name or a .toml path")
    p.add_argument("--out", type=Path, default=None, help="folder for logs, stores and summary.json (default: runs/deploy-local)")
    p.add_argument("--quick", action="store_true", help="the quick schedule on 64 windows per node (default: 400)")
    p.add_argument("--node-venv", type=Path, default=None,
                   help="run the node agents from this virtual environment, e.g. one made with pip install '.[node]' (default: this one)")
    p.add_argument("--insecure", action="store_true",
                   help="run the SuperLink link in plain text (default: TLS, with a CA made for the run in OUT/pki)")
    p.add_argument("--hold", action="store_true",
                   help="after the campaign keep everything running until Ctrl-C, to explore (endpoints in OUT/deployment.json)")
    p.set_defaults(func=deploy_local)

    p = command(sub, "convert", "convert a published dataset to the generic .npz format",
                "edgebind-sim convert pamap2 PAMAP2_Dataset/Protocol pamap2.npz", "edgebind-sim convert utd-mhad UTD-MHAD/ utd.npz")  # fmt: skip
    p.add_argument("format", choices=["utd-mhad", "pamap2"], help="the published format of SOURCE")
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
