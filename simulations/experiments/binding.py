"""How good sensor-bound pseudo-pairs are, and whether any signal could weight them.

For each seed, on the scenario's split: the shared modality's encoder is
pretrained as the MMBind experiment does it (its objective and schedule, on the
training groups' unlabelled windows; with the cross-modal objective, beside the
streams each group holds with it), every two training groups that hold the
shared modality are bound through it, and the pairs are checked against the
labels no learner sees. Reported per seed and over seeds: pair accuracy
overall and per class, the confusion of bound classes, similarity and weight
quantiles, and the accuracy of pairs split by each signal a weight rule could
use (similarity, the margin over the second-best match, mutual nearest
neighbours), on raw and on centred features (each group's features minus the
pooled mean of the shared modality).

This is the cheap half of ``experiment mmbind``: no alignment, no heads.
"""

from __future__ import annotations

import logging
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from common.data import load_dataset
from common.data.scenarios import Scenario, split
from common.files import write_json
from common.mmbind import bound_pair_report, sensor_pseudo_pairs
from common.progress import Progress
from simulations.experiments.common import commit_of, fingerprint, mean_std, pretrain_encoders, seed_everything
from simulations.experiments.mmbind import MMBindSettings

log = logging.getLogger("edgebind")

def run_seed(ds, sc: Scenario, seed: int, st: MMBindSettings, device: torch.device) -> dict:
    seed_everything(seed)
    sp = split(sc, ds, seed)
    groups = [p for p in sp.by_role("train") if sc.shared in p.group.modalities]
    rng = np.random.default_rng(seed)
    rows = {}
    for p in groups:
        r = p.rows
        if st.max_windows_per_group and len(r) > st.max_windows_per_group:
            r = np.sort(rng.choice(r, size=st.max_windows_per_group, replace=False))
        rows[p.group.name] = r
    if st.pretrain.objective == "cross-modal":  # the shared encoder learns beside the streams each group holds with it
        mods = sorted({m for p in groups for m in p.group.modalities})
        pool = {m: np.concatenate([rows[p.group.name] for p in groups if m in p.group.modalities]) for m in mods}
        enc = pretrain_encoders(ds, pool, st.tower, st.pretrain, device, seed, parties=[(p.group.modalities, rows[p.group.name]) for p in groups])
    else:
        enc = pretrain_encoders(ds, {sc.shared: np.concatenate(list(rows.values()))}, st.tower, st.pretrain, device, seed)
    feats = {g: enc.features(ds, r, [sc.shared], device)[sc.shared] for g, r in rows.items()}
    mean = np.concatenate(list(feats.values())).mean(0)
    out: dict = {"seed": seed, "pairs": []}
    for ga, gb in combinations(sorted(rows), 2):
        ya, yb = ds.y[rows[ga]], ds.y[rows[gb]]
        entry: dict = {"groups": [ga, gb]}
        for name, shift in (("raw", 0.0), ("centred", mean)):
            a, b = feats[ga] - shift, feats[gb] - shift
            pairs = sensor_pseudo_pairs(a, b, st.weighting, k=st.k, device=device)
            entry[name] = bound_pair_report(pairs, ya, yb, ds.n_classes, a, b)
        rep = entry["raw"]
        log.info("  %s <-> %s: %d pairs, accuracy %.3f raw, %.3f centred; top-1 with a wide / narrow margin %.3f / %.3f, mutual / one-way %.3f / %.3f",
                 ga, gb, rep["pairs"], rep["pair_accuracy"], entry["centred"]["pair_accuracy"], rep["top1"]["accuracy_by_margin"]["wide_half"],
                 rep["top1"]["accuracy_by_margin"]["narrow_half"], rep["top1"]["accuracy_mutual"], rep["top1"]["accuracy_one_way"])  # fmt: skip
        out["pairs"].append(entry)
    return out


def _summary(per_seed: list[dict], label_names: list[str]) -> dict:
    out = {}
    for name in ("raw", "centred"):
        reps = [e[name] for s in per_seed for e in s["pairs"]]
        if not reps:
            continue
        out[name] = {
            "pair_accuracy": mean_std([r["pair_accuracy"] for r in reps]),
            "per_class_accuracy": {c: mean_std([r["per_class_accuracy"][k] for r in reps]) for k, c in enumerate(label_names)},
            "similarity_upper_half": mean_std([r["accuracy_by_similarity"]["upper_half"] for r in reps]),
            "similarity_lower_half": mean_std([r["accuracy_by_similarity"]["lower_half"] for r in reps]),
            "margin_wide_half": mean_std([r["top1"]["accuracy_by_margin"]["wide_half"] for r in reps]),
            "margin_narrow_half": mean_std([r["top1"]["accuracy_by_margin"]["narrow_half"] for r in reps]),
            "mutual": mean_std([r["top1"]["accuracy_mutual"] for r in reps]),
            "one_way": mean_std([r["top1"]["accuracy_one_way"] for r in reps]),
            "mutual_share": mean_std([r["top1"]["mutual_share"] for r in reps]),
            "weight_q10_q90": [mean_std([r["weight"]["q10"] for r in reps]), mean_std([r["weight"]["q90"] for r in reps])],
        }
    return out


def run(dataset: str, scenario: str, seeds: int, out: Path, quick: bool, device: torch.device, settings: MMBindSettings | None = None) -> dict:
    """Bind every seed's split through the shared modality; write ``out/results.json`` and print a table."""
    ds = load_dataset(dataset)
    sc = Scenario.load(scenario)
    sc.require_central()
    if sc.binding != "sensor":
        raise ValueError(f"scenario {sc.name!r} binds by {sc.binding}: pair quality is a question for sensor binding only")
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    st = settings or (MMBindSettings.quick() if quick else MMBindSettings())
    log.info("binding check: dataset %s, scenario %s (shared %s), objective %s, %d seed(s)%s", ds.name, sc.name, sc.shared, st.pretrain.objective, seeds,
             " [quick]" if quick else "")  # fmt: skip
    provenance = {"commit": commit_of(), "dataset_sha256": fingerprint(ds), "settings": st, "device": str(device)}
    per_seed, t0 = [], time.time()
    shown = Progress(seeds, "binding experiment", unit="seed", bar=False, every=0)  # a line with the time left after each seed
    for seed in range(seeds):
        log.info("seed %d/%d", seed + 1, seeds)
        per_seed.append(run_seed(ds, sc, seed, st, device))
        shown.update()
        result = {"experiment": "binding", "dataset": ds.name, "scenario": sc.name, "quick": quick, "seeds": len(per_seed), "seeds_planned": seeds,
                  **provenance, "summary": _summary(per_seed, ds.label_names), "per_seed": per_seed, "seconds": time.time() - t0}  # fmt: skip
        write_json(Path(out) / "results.json", result)
    print(format_table(result))
    return result


def format_table(result: dict) -> str:
    s = result["summary"]
    lines = [f"Sensor binding on {result['dataset']} / {result['scenario']} ({result['seeds']} seed(s)): accuracy of bound pairs"]
    rows = [("all pairs", "pair_accuracy"), ("more similar half", "similarity_upper_half"), ("less similar half", "similarity_lower_half"),
            ("top-1, wide margin half", "margin_wide_half"), ("top-1, narrow margin half", "margin_narrow_half"),
            ("top-1, mutual", "mutual"), ("top-1, one-way", "one_way")]  # fmt: skip
    lines.append(f"{'':<28}{'raw':>16}{'centred':>16}")
    for label, key in rows:
        lines.append(f"{label:<28}" + "".join(f"{_fmt(s[n][key]) if n in s else '-':>16}" for n in ("raw", "centred")))
    if "raw" in s:
        lines.append("per class (raw): " + ", ".join(f"{c} {_fmt(v)}" for c, v in s["raw"]["per_class_accuracy"].items()))
    return "\n".join(lines)


def _fmt(ms: dict) -> str:
    return f"{ms['mean']:.3f} ± {ms['std']:.3f}"
