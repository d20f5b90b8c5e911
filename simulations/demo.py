"""``edgebind-sim demo``: the main job, on the bundled real data, with nothing to start by hand.

1. A federated campaign over a simulated fleet (Flower's simulation engine,
   the real ServerApp and ClientApp) on UCI HAPT, scenario ``sensor-bind``:
   nodes pretrain encoders by FedAvg, upload features, the coordinator grows
   the aligned space with Babel (gyro<->lin_acc, then gravity through gyro),
   binds lin_acc and gravity with MMBind pseudo-pairs, fits the few-label
   head on features, fine-tunes the whole model on the labelled node
   (federated, rounds chosen on the validation node), pushes signed adapters;
   test nodes evaluate locally.
2. Reference points on the same split and seed, trained centrally: the lower
   bound (a model trained from scratch on the same few labels: what a user
   would do without edgebind), unimodal (each modality alone) and the upper
   bound (the true natural pairs).
3. A report folder: results.json, plots and report.md.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from common.codec import bundle_to_states, parse_message
from common.config import CampaignConfig
from common.data import load_dataset
from common.data.scenarios import Scenario
from common.files import write_json
from common.towers import AlignedModel
from proto import edgebind_pb2 as pb

log = logging.getLogger("edgebind")

SCENARIO = "sensor-bind"
PLAN = "sensor-bind-growth"
# One schedule for the campaign and the central references, sized so the demo
# stays well under 5 minutes on 2 CPU cores (shorter than the experiments':
# the report names it).
DEMO_WINDOWS = 1500
QUICK_WINDOWS = 240


def _campaign_overrides(quick: bool) -> dict:
    if quick:  # the campaign's one quick schedule, on a few more windows per group
        return {**CampaignConfig.QUICK, "max_windows_per_group": QUICK_WINDOWS}
    return {"max_windows_per_group": DEMO_WINDOWS, "pretrain_rounds": 3, "local_epochs": 2, "align_epochs": 20, "head_steps": 300, "head_finetune_steps": 200,
            "finetune_rounds": 4, "finetune_steps": 60}  # fmt: skip


def _reference_settings(quick: bool):
    from common.evaluate import HeadConfig
    from common.mmbind import AlignConfig
    from common.pretrain import PretrainConfig
    from simulations.experiments.mmbind import MMBindSettings

    o = _campaign_overrides(quick)
    objective = CampaignConfig().objective_for(Scenario.load(SCENARIO).objective)  # the campaign's rule (coordinator.state), so both run one objective
    return MMBindSettings(
        pretrain=PretrainConfig(objective=objective, epochs=o["pretrain_rounds"] * o["local_epochs"]),
        align=AlignConfig(epochs=o["align_epochs"]),
        head=CampaignConfig(**o).head(),  # the campaign's own few-label step, self-training included
        raw_head=HeadConfig(steps=o["head_steps"] // 2, finetune_steps=o["finetune_rounds"] * o["finetune_steps"], finetune_lr_scales=(3.0,)),
        max_windows_per_group=o["max_windows_per_group"],
    )


def demo(out: Path = Path("runs/demo"), device: torch.device | None = None, quick: bool = False, seed: int = 0) -> dict:
    from simulations.experiments.mmbind import run_seed
    from simulations.fleet import run_fleet

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = device or torch.device("cpu")
    t0 = time.time()
    log.info("edgebind demo: a simulated fleet on UCI HAPT (scenario %s, seed %d)%s; report in %s", SCENARIO, seed, " [quick]" if quick else "", out)

    log.info("[1/3] federated campaign: pretrain (FedAvg) -> collect -> bind -> grow (Babel plan %s + MMBind) -> head -> finetune -> push -> evaluate", PLAN)
    campaign = run_fleet("hapt", SCENARIO, None, seed, out / "campaign", quick, None, device, growth_plan=PLAN, **_campaign_overrides(quick))
    if campaign.get("state") != "done":
        raise RuntimeError(f"the campaign did not finish: {campaign.get('error', campaign.get('state'))}")

    log.info("[2/3] reference points on the same split and seed, trained centrally: lower bound (alone and self-trained), unimodal and upper bound")
    ds = load_dataset("hapt")
    sc = Scenario.load(SCENARIO)
    ref = run_seed(ds, sc, seed, _reference_settings(quick), device, ("lower_bound", "self_trained_lower_bound", "unimodal", "upper_bound"))

    log.info("[3/3] report")
    table = results_table(campaign, ref)
    plots, gaps = make_plots(campaign, ref, ds, out, seed)
    result = {
        "scenario": SCENARIO,
        "plan": PLAN,
        "seed": seed,
        "quick": quick,
        "table": table,
        "campaign": {k: campaign.get(k) for k in ("campaign_id", "accuracy", "phases", "pairs", "stages", "validation", "finetune", "missing_nodes", "bundles", "seconds", "fleet")},
        "schedule": _campaign_overrides(quick),
        "reference": ref,
        "plots": [p.name for p in plots],
        "modality_gap": gaps,
        "seconds": time.time() - t0,
    }
    write_json(out / "results.json", result)
    (out / "report.md").write_text(report_markdown(result, campaign))
    text = format_table(table)
    gains = [f"edgebind minus the {name} on {g[0]}: {g[1]:+.3f} accuracy"
             for row, name in ((LOWER, "lower bound"), (SELF_TRAINED, "self-trained lower bound")) if (g := gain_over(table, row))]  # fmt: skip
    if gains:
        text += "\n\n" + "\n".join(gains) + "\n(one seed; docs/results.md has the 5-seed figures)"
    print(text)
    print(f"\nreport: {out / 'report.md'}   ({time.time() - t0:.0f} s)")
    return result


EDGEBIND = "edgebind (federated, chosen)"
LOWER = "lower bound (central, few labels)"
SELF_TRAINED = "lower bound, self-trained (own node)"  # what a user without edgebind can add to the few labels
METHODS = [EDGEBIND, "edgebind, head on features", "edgebind, fine-tuned", LOWER, SELF_TRAINED, "unimodal (central)",
           "upper bound (central, natural pairs)"]  # fmt: skip


def results_table(campaign: dict, ref: dict) -> dict:
    """Accuracy and macro-F1 per modality subset: the campaign (both of its paths) against the central references."""
    rows: dict[str, dict] = {}
    for subset, m in (campaign.get("accuracy") or {}).items():
        rows.setdefault(subset, {})[EDGEBIND] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    full = "+".join(sorted(m for n in (campaign.get("nodes") or {}).values() if n["role"] == "test" for m in n["modalities"]))
    for path, name in (("head_on_features", "edgebind, head on features"), ("finetuned", "edgebind, fine-tuned")):
        m = ((campaign.get("finetune") or {}).get("test") or {}).get(path)
        if m and full:
            rows.setdefault(full, {})[name] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    for method, name in (("lower_bound", LOWER), ("self_trained_lower_bound", SELF_TRAINED)):
        for subset, m in ref["methods"].get(method, {}).get("subsets", {}).items():
            rows.setdefault(subset, {})[name] = m
    uni = ref["methods"].get("unimodal", {})
    for mod, r in uni.get("per_modality", {}).items():
        rows.setdefault(mod, {})["unimodal (central)"] = r["subsets"][mod]
    for subset, m in ref["methods"].get("upper_bound", {}).get("subsets", {}).items():
        rows.setdefault(subset, {})["upper bound (central, natural pairs)"] = m
    return {s: rows[s] for s in sorted(rows, key=lambda s: (s.count("+"), s))}


def format_table(table: dict) -> str:
    lines = ["test accuracy / macro-F1 per modality subset (held-out subjects; every choice made on validation subjects)",
             f"{'method':<38}" + "".join(f"{s:>18}" for s in table)]  # fmt: skip
    for m in METHODS:
        cells = [f"{table[s][m]['accuracy']:.3f} / {table[s][m]['macro_f1']:.3f}" if m in table[s] else "-" for s in table]
        lines.append(f"{m:<38}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def gain_over(table: dict, reference: str) -> tuple[str, float] | None:
    """(subset, campaign accuracy minus ``reference``'s) on the test nodes' full subset."""
    full = max(table, key=lambda s: s.count("+"), default=None)
    row = table.get(full, {})
    if EDGEBIND not in row or reference not in row:
        return None
    return full, row[EDGEBIND]["accuracy"] - row[reference]["accuracy"]


def _final_model(campaign_dir: Path, campaign: dict) -> tuple[AlignedModel, AlignedModel, dict[str, np.ndarray], np.ndarray, list[str]]:
    """The campaign's model before and after alignment, and the validation nodes' uploaded features."""
    from common.growth import latest_checkpoint, load_checkpoint
    from coordinator.store import open_store

    ck = latest_checkpoint(campaign_dir / "checkpoints")
    if ck is None:
        raise FileNotFoundError(f"no growth checkpoint under {campaign_dir / 'checkpoints'}")
    after, _state = load_checkpoint(ck)
    before = AlignedModel(after.specs, after.cfg)
    before.encoders.load_state_dict(after.encoders.state_dict())
    store = open_store(campaign_dir / "coordinator.db")
    try:
        for m in after.modalities:
            latest = store.latest_adapter(m)
            if latest is None:
                continue
            states = bundle_to_states(parse_message(latest[1], pb.AdapterBundle))
            after.adapters[m].load_state_dict(states.adapter)
            after.prototype.load_state_dict(states.prototype)
        val_nodes = sorted(n for n, v in campaign["nodes"].items() if v["role"] == "validation")
        val_mods = sorted({m for n in val_nodes for m in campaign["nodes"][n]["modalities"]})
        per = {m: store.embeddings(campaign["campaign_id"], m, node_ids=val_nodes) for m in val_mods}
    finally:
        store.close()
    common_ids = sorted(set.intersection(*(set(e.window_ids) for e in per.values())))
    feats, labels = {}, None
    for m, e in per.items():
        pos = {w: i for i, w in enumerate(e.window_ids)}
        idx = np.array([pos[w] for w in common_ids])
        feats[m] = e.x[idx]
        labels = e.labels[idx]
    return before, after, feats, labels, val_mods


def make_plots(campaign: dict, ref: dict, ds, out: Path, seed: int) -> tuple[list[Path], dict[str, dict[str, float]]]:
    """The report's plots, and the modality gap of every pair before and after alignment (on the validation nodes' windows)."""
    from common.growth import latest_checkpoint, load_checkpoint
    from simulations.plots import gaps_before_after, plot_projections, plot_weights, pyplot

    files: list[Path] = []
    campaign_dir = out / "campaign"
    ck = latest_checkpoint(campaign_dir / "checkpoints")
    if ck is not None:
        _m, state = load_checkpoint(ck)
        files += plot_weights(state["records"], out)
    before, after, feats, labels, mods = _final_model(campaign_dir, campaign)
    gaps = gaps_before_after(before, after, feats, mods)
    files += plot_projections(before, after, feats, labels, ds.label_names, mods, n=300, iterations=500, seed=seed, out=out, gaps=gaps)
    plt = pyplot()
    table = results_table(campaign, ref)
    methods = [EDGEBIND, LOWER, SELF_TRAINED, "unimodal (central)", "upper bound (central, natural pairs)"]
    fig, ax = plt.subplots(figsize=(8, 4))
    subsets = list(table)
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        vals = [table[s][m]["accuracy"] if m in table[s] else np.nan for s in subsets]
        ax.bar(np.arange(len(subsets)) + i * width, vals, width, label=m)
    ax.set_xticks(np.arange(len(subsets)) + width * (len(methods) - 1) / 2, subsets)
    ax.set(ylabel="test accuracy", ylim=(0, 1), title="accuracy as modalities go missing at the test nodes")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = out / "accuracy_vs_incompleteness.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return files + [path], gaps


def report_markdown(result: dict, campaign: dict) -> str:
    c = result["campaign"]
    lines = [
        "# edgebind demo report", "",
        f"Scenario `{result['scenario']}` on UCI HAPT, seed {result['seed']}{' (quick)' if result['quick'] else ''}. "
        f"Growth plan `{result['plan']}`, then MMBind pseudo-pairs through gyro. Total {result['seconds']:.0f} s.", "",
        "## Accuracy per modality subset (test subjects)", "", "```", format_table(result["table"]), "```", "",
        "The edgebind rows are the federated campaign: encoders pretrained by FedAvg on the nodes, only features uploaded, "
        "a head fitted on those features, then the whole model fine-tuned on the labelled node over federated rounds; the "
        "validation node chose between the two (the 'chosen' row is what the test nodes run). The reference rows are trained "
        "centrally on the same split; the lower bound is a model trained from scratch on the same few labels, and the "
        "self-trained lower bound the same model self-trained on its own (labelled) node's unlabelled windows: what a user "
        "could do without edgebind.", "",
        f"Schedule (shorter than the experiments', to stay within minutes on 2 cores): `{result['schedule']}`.", "",
        "## Fleet", "",
        f"{len(campaign.get('nodes', {}))} virtual nodes; missing: {', '.join(c.get('missing_nodes') or []) or 'none'}.", "",
        "| phase | seconds |", "|---|---|",
    ]  # fmt: skip
    for name, fig in (c.get("phases") or {}).items():
        secs = fig.get("seconds") if isinstance(fig, dict) else None
        lines.append(f"| {name} | {secs:.1f} |" if secs is not None else f"| {name} | - |")
    lines += ["", "## Binding", ""]
    for p in c.get("pairs") or []:
        lines.append(f"- {p['groups'][0]} <-> {p['groups'][1]}: {p['pairs']} pseudo-pairs, mean weight {p['mean_weight']:.2f}")
    gaps = result.get("modality_gap") or {}
    if gaps:
        lines += ["", "## Modality gap", "",
                  "Distance between the centroids of two modalities' L2-normalised aligned embeddings, divided by the root mean of "
                  "their spreads (root mean squared distance of a modality's embeddings to its own centroid), on the validation "
                  "nodes' windows: near 0, the modalities share one region; above about 2, they sit apart.", "",
                  "| pair | before alignment | after alignment |", "|---|---|---|"]
        lines += [f"| {p} | {gaps['before'][p]:.2f} | {gaps['after'][p]:.2f} |" for p in gaps["after"]]
    lines += ["", "## Plots", ""]
    for name in result["plots"]:
        lines.append(f"![{name}]({name})")
    return "\n".join(lines) + "\n"
