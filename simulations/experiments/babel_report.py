"""The Babel experiment's summary over seeds and its printed table (``simulations.experiments.babel`` runs it)."""

from __future__ import annotations

import numpy as np

from common.evaluate import pairs, subsets
from common.growth import GrowthPlan
from simulations.experiments.common import fmt, mean_std

GROWN = ("babel", "babel_reordered", "babel_no_ema_kd", "babel_no_ema", "babel_no_kd")
VARIANTS = ("unaligned", *GROWN, "joint")
RETRIEVAL = ("R@1", "R@5", "label@1", "window@1")  # window@1: recall@1 with overlapping neighbour windows counted as hits


def summarise(per_seed: list[dict], plan: GrowthPlan) -> dict:
    mods = plan.modalities
    subs = ["+".join(s) for s in subsets(mods)]
    prs = [f"{a}-{b}" for a, b in pairs(mods)]
    variants = [v for v in VARIANTS if all(v in s["variants"] for s in per_seed)]
    out: dict = {"variants": {}}
    for v in variants:
        runs = [s["variants"][v] for s in per_seed]
        out["variants"][v] = {
            "few_label": {k: {mt: mean_std([r["few_label"]["subsets"][k][mt] for r in runs]) for mt in ("accuracy", "macro_f1")} for k in subs},
            "retrieval": {p: {k: mean_std([r["retrieval"][p][k] for r in runs]) for k in RETRIEVAL if k in runs[0]["retrieval"][p]} for p in prs},
        }
        if "cross_modal" in runs[0]:
            cm = [r["cross_modal"] for r in runs]
            out["variants"][v]["modality_gap"] = {p: {k: mean_std([c["modality_gap"][p][k] for c in cm]) for k in cm[0]["modality_gap"][p]} for p in prs}
            out["variants"][v]["transfer"] = {t: {mt: mean_std([c["transfer"][t][mt] for c in cm]) for mt in ("accuracy", "macro_f1")} for t in cm[0]["transfer"]}
        if "forgetting" in runs[0]:
            out["variants"][v]["forgetting"] = {"pair": runs[0]["forgetting"]["pair"]} | {
                k: mean_std([r["forgetting"][k] for r in runs]) for k in runs[0]["forgetting"] if k != "pair"}

    def diff(a: str, b: str, get) -> dict:
        return mean_std([get(s["variants"][a]) - get(s["variants"][b]) for s in per_seed])

    out["order_invariance"] = {
        "plans": [plan.name, per_seed[0]["variants"]["babel_reordered"]["plan"]],
        "accuracy_difference": {k: diff("babel", "babel_reordered", lambda r, k=k: r["few_label"]["subsets"][k]["accuracy"]) for k in subs},
        "recall_at_1_difference": {p: diff("babel", "babel_reordered", lambda r, p=p: r["retrieval"][p]["R@1"]) for p in prs},
        "label_at_1_difference": {p: diff("babel", "babel_reordered", lambda r, p=p: r["retrieval"][p]["label@1"]) for p in prs},
    }
    out["forgetting"] = {v: out["variants"][v]["forgetting"] for v in GROWN if v in out["variants"] and v != "babel_reordered"}
    never = [p for p in prs if not any(set(p.split("-")) == set(s.pair) for s in plan.stages)]
    out["never_paired"] = {p: {v: out["variants"][v]["retrieval"][p] for v in variants} for p in never}
    if "cross_modal" in per_seed[0]["variants"].get("babel", {}) and "joint" in variants:
        out["goals"] = goals(per_seed, never, prs)
    return out


def goals(per_seed: list[dict], never: list[str], prs: list[str]) -> dict:
    """Issue 10's Babel goals, seed by seed: never-paired label@1 >= 0.60, transfer across the never-paired pair >= 0.50
    each way, and joint training at least as good as Babel (label@1) on every pair it saw (joint sees every pair)."""

    def check(values: list[float], at_least: float) -> dict:
        return {"per_seed": values, "mean": float(np.mean(values)), "at_least": at_least, "met_every_seed": bool(all(x >= at_least for x in values))}

    babel = [s["variants"]["babel"] for s in per_seed]
    joint = [s["variants"]["joint"] for s in per_seed]
    out: dict = {"never_paired_label@1": {p: check([r["retrieval"][p]["label@1"] for r in babel], 0.60) for p in never}}
    out["never_paired_transfer_accuracy"] = {
        t: check([r["cross_modal"]["transfer"][t]["accuracy"] for r in babel], 0.50) for p in never for t in (p.replace("-", "->"), "->".join(p.split("-")[::-1]))}
    out["joint_minus_babel_label@1"] = {p: check([j["retrieval"][p]["label@1"] - b["retrieval"][p]["label@1"] for j, b in zip(joint, babel)], 0.0) for p in prs}
    return out


def format_table(result: dict) -> str:
    s = result["summary"]
    vs = list(s["variants"])
    short = {"unaligned": "unaligned", "babel": "babel", "babel_reordered": "reordered", "babel_no_ema_kd": "no EMA+KD",
             "babel_no_ema": "no EMA", "babel_no_kd": "no KD", "joint": "joint"}
    w = 15
    head = lambda first: f"{first:<30}" + "".join(f"{short.get(v, v):>{w}}" for v in vs)  # noqa: E731
    lines = [f"Babel on {result['dataset']}, plan {result['plan']['name']} (scenario {result['scenario']}), {result['seeds']} seed(s); mean ± std over seeds"]
    sel = result.get("kd_selection")
    if sel:
        scores = ", ".join(f"{w:g}: {fmt(sel['mean_validation_score'][f'{w:g}'])}" for w in sel["candidates"])
        lines.append(f"distillation weight {sel['chosen']:g}, chosen on VALIDATION subjects (never test) from {', '.join(f'{w:g}' for w in sel['candidates'])} "
                     f"by mean validation label@1 over pairs, one weight for every seed (ties to the smaller); validation score per weight: {scores}")
    else:
        lines.append(f"distillation weight {result['settings']['growth']['kd_weight']:g} (configured, not selected)")
    lines += ["few-label test accuracy (one head for every subset, its step chosen on validation subjects):", head("subset")]
    for k in next(iter(s["variants"].values()))["few_label"]:
        lines.append(f"{k:<30}" + "".join(f"{fmt(s['variants'][v]['few_label'][k]['accuracy']):>{w}}" for v in vs))
    for metric, what in (("R@1", "recall@1"), ("R@5", "recall@5"), ("label@1", "top match has the query's activity"),
                         ("window@1", "recall@1, overlapping windows of the same recording count as hits")):
        if metric not in next(iter(next(iter(s["variants"].values()))["retrieval"].values())):
            continue
        lines.append(f"test cross-modal retrieval, {what} (mean of both directions):")
        lines.append(head("pair"))
        for p in next(iter(s["variants"].values()))["retrieval"]:
            tag = " (never paired)" if p in s["never_paired"] else ""
            lines.append(f"{(p + tag):<30}" + "".join(f"{fmt(s['variants'][v]['retrieval'][p][metric]):>{w}}" for v in vs))
    if "transfer" in s["variants"].get("babel", {}):
        lines.append("cross-modal transfer: linear head on A's aligned embedding (labelled windows), test accuracy on B's (A->A: same modality):")
        lines.append(head("A->B"))
        for t in s["variants"]["babel"]["transfer"]:
            lines.append(f"{t:<30}" + "".join(f"{fmt(s['variants'][v]['transfer'][t]['accuracy']):>{w}}" for v in vs))
        lines.append("modality gap: centroid distance / pooled spread of L2-normalised test embeddings (0: one region):")
        lines.append(head("pair"))
        for p in s["variants"]["babel"]["modality_gap"]:
            lines.append(f"{p:<30}" + "".join(f"{fmt(s['variants'][v]['modality_gap'][p]['gap']):>{w}}" for v in vs))
    for name, checks in s.get("goals", {}).items():
        for k, c in checks.items():
            seeds = " ".join(f"{x:.3f}" for x in c["per_seed"])
            lines.append(f"goal {name} {k} >= {c['at_least']:g}: per seed {seeds} -> {'met on every seed' if c['met_every_seed'] else 'NOT met on every seed'}")
    lines.append("forgetting: the trunk pair's test retrieval right after stage 1 -> after the last stage:")
    for v, f in s["forgetting"].items():
        lines.append(f"  {short.get(v, v):<10} {f['pair']:<14} recall@1 {f['after_stage1_R@1']['mean']:.4f} -> {f['after_last_R@1']['mean']:.4f}"
                     f"   label@1 {f['after_stage1_label@1']['mean']:.3f} -> {f['after_last_label@1']['mean']:.3f} (drop {fmt(f['drop_label@1'])})")
    oi = s["order_invariance"]
    acc = [abs(d["mean"]) for d in oi["accuracy_difference"].values()]
    rec = [abs(d["mean"]) for d in oi["label_at_1_difference"].values()]
    lines.append(f"order invariance ({oi['plans'][0]} vs {oi['plans'][1]}): mean |accuracy difference| over subsets {np.mean(acc):.3f}, "
                 f"mean |label@1 difference| over pairs {np.mean(rec):.3f}")
    return "\n".join(lines)
