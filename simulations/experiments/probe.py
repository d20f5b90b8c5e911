"""Encoder sanity figures: how much a self-supervised encoder knows, against the same encoder trained supervised.

For each modality, on one subject-disjoint split per seed (70 % training, 10 %
validation, 20 % test subjects):

- ``probe``: the encoder pretrained without labels (the experiments' own
  objective and schedule) and frozen; a linear head on every training label;
- ``random``: the same linear probe on a randomly initialised encoder;
- ``supervised``: the same architecture trained end to end on every training
  label, from scratch, with the lower bound's recipe;
- ``view_accuracy``: on test windows, how often an augmented view of a window
  finds its own other view among the batch (the contrastive objective's own check).

Every head's step is chosen on the validation subjects; the figures are test
accuracy and macro-F1. ``edgebind-sim probe`` re-makes the figures in docs/.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.data import load_dataset
from common.data.dataset import WindowDataset
from common.evaluate import HeadConfig, evaluate_subsets, fit_head
from common.files import write_json
from common.pretrain import PretrainConfig, augment
from common.progress import Progress
from common.samples import SampleSet
from common.towers import AlignedModel, TowerConfig
from simulations.experiments.common import commit_of, fingerprint, fmt, mean_ci, mean_std, pretrain_encoders, seed_everything

log = logging.getLogger("edgebind")

SHARES = (0.7, 0.1, 0.2)  # training, validation, test subjects


@dataclass
class ProbeSettings:
    tower: TowerConfig = field(default_factory=TowerConfig)
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(epochs=20))
    probe_head: HeadConfig = field(default_factory=lambda: HeadConfig(mode="linear", steps=600, batch_size=256))
    supervised_head: HeadConfig = field(default_factory=lambda: HeadConfig(steps=100, finetune_steps=1500, batch_size=128, finetune_lr_scales=(3.0,)))
    max_windows: int | None = None  # per role, for quick runs

    @classmethod
    def quick(cls) -> ProbeSettings:
        return cls(
            pretrain=PretrainConfig(epochs=2),
            probe_head=HeadConfig(mode="linear", steps=60, batch_size=128),
            supervised_head=HeadConfig(steps=20, finetune_steps=60, finetune_lr_scales=(3.0,)),
            max_windows=400,
        )


def subject_split(ds: WindowDataset, seed: int, cap: int | None = None) -> dict[str, np.ndarray]:
    """Rows of the training, validation and test subjects (disjoint, drawn from ``seed``)."""
    subs = np.random.default_rng(seed).permutation(ds.subjects)
    n_train = int(round(SHARES[0] * len(subs)))
    n_val = max(1, int(round(SHARES[1] * len(subs))))
    if len(subs) < n_train + n_val + 1:
        raise ValueError(f"{ds.name} has {len(subs)} subjects; a probe needs at least 3 (training, validation, test)")
    groups = {"train": subs[:n_train], "validation": subs[n_train : n_train + n_val], "test": subs[n_train + n_val :]}
    rng = np.random.default_rng(seed)
    out = {}
    for role, s in groups.items():
        rows = np.flatnonzero(np.isin(ds.subject, s) & (ds.y >= 0))
        if cap and len(rows) > cap:
            rows = np.sort(rng.choice(rows, size=cap, replace=False))
        out[role] = rows
    return out


@torch.no_grad()
def view_accuracy(encoder: torch.nn.Module, windows: np.ndarray, seed: int, batch: int = 256) -> float:
    """Share of windows whose augmented view picks its own other view among ``batch`` windows, by cosine of encoder features."""
    gen = torch.Generator().manual_seed(seed)
    hits, total = 0, 0
    for i in range(0, len(windows) - 1, batch):
        x = torch.from_numpy(np.ascontiguousarray(windows[i : i + batch]))
        if len(x) < 2:
            break
        za, zb = (encoder(augment(x, gen)) for _ in range(2))
        logits = F.normalize(za, dim=-1) @ F.normalize(zb, dim=-1).T
        hits += int((logits.argmax(1) == torch.arange(len(x))).sum())
        total += len(x)
    return hits / max(total, 1)


def run_seed(ds: WindowDataset, modalities: list[str], seed: int, st: ProbeSettings, device: torch.device) -> dict:
    seed_everything(seed)
    rows = subject_split(ds, seed, st.max_windows)
    enc = pretrain_encoders(ds, {m: rows["train"] for m in modalities}, st.tower, st.pretrain, device, seed, parties=[(modalities, rows["train"])])
    sets = {role: {m: SampleSet.natural({m: ds.X[m][r]}, ds.y[r]) for m in modalities} for role, r in rows.items()}
    out: dict = {"seed": seed, "subjects": {role: sorted(set(ds.subject[r].tolist())) for role, r in rows.items()}, "modalities": {}}
    for m in modalities:
        res = {}
        for name in ("probe", "random", "supervised"):
            torch.manual_seed(seed)
            model = AlignedModel({m: ds.spec(m)}, st.tower)
            if name == "probe":
                model.encoders[m].load_state_dict(enc.modules[m].state_dict())
            cfg = st.supervised_head if name == "supervised" else st.probe_head
            fitted, head, choice = fit_head(model, sets["train"][m], sets["validation"][m], ds.n_classes, cfg, device, seed=seed)
            res[name] = {**evaluate_subsets(fitted, head, sets["test"][m], device)[m], "validation": {k: choice[k] for k in ("stage", "step", "val_macro_f1")}}
        res["view_accuracy"] = view_accuracy(enc.modules[m], ds.X[m][rows["test"]], seed)
        res["probe_minus_supervised"] = res["probe"]["accuracy"] - res["supervised"]["accuracy"]
        log.info("  %-8s probe %.3f  random %.3f  supervised %.3f  (probe - supervised %+.3f; view accuracy %.3f)", m, res["probe"]["accuracy"],
                 res["random"]["accuracy"], res["supervised"]["accuracy"], res["probe_minus_supervised"], res["view_accuracy"])  # fmt: skip
        out["modalities"][m] = res
    return out


def run(dataset: str, seeds: int, out: Path, quick: bool, device: torch.device, modalities: list[str] | None = None, settings: ProbeSettings | None = None) -> dict:
    """Probe every modality's encoder on ``seeds`` splits; write ``out/results.json`` and print a table."""
    ds = load_dataset(dataset)
    mods = modalities or ds.modalities
    unknown = [m for m in mods if m not in ds.X]
    if unknown:
        raise ValueError(f"dataset {ds.name!r} has no modality {unknown[0]!r} (it has {', '.join(ds.modalities)})")
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    st = settings or (ProbeSettings.quick() if quick else ProbeSettings())
    log.info("encoder probe: dataset %s (%d windows), modalities %s, objective %s, %d seed(s)%s", ds.name, len(ds), ",".join(mods), st.pretrain.objective,
             seeds, " [quick]" if quick else "")  # fmt: skip
    provenance = {"commit": commit_of(), "dataset_sha256": fingerprint(ds), "settings": st, "device": str(device)}
    per_seed = []
    t0 = time.time()
    shown = Progress(seeds, "probe experiment", unit="seed", bar=False, every=0)  # a line with the time left after each seed
    for seed in range(seeds):
        log.info("seed %d/%d", seed + 1, seeds)
        per_seed.append(run_seed(ds, mods, seed, st, device))
        shown.update()
        summary = {}
        for m in mods:
            runs = [s["modalities"][m] for s in per_seed]
            summary[m] = {k: mean_std([r[k]["accuracy"] for r in runs]) for k in ("probe", "random", "supervised")}
            summary[m]["view_accuracy"] = mean_std([r["view_accuracy"] for r in runs])
            summary[m]["probe_minus_supervised"] = mean_ci([r["probe_minus_supervised"] for r in runs])
        result = {"experiment": "probe", "dataset": ds.name, "quick": quick, "seeds": len(per_seed), "seeds_planned": seeds, **provenance,
                  "protocol": "per seed, subjects split 70/10/20 into training, validation and test; every label of the training subjects; "
                              "head step chosen on validation; test accuracy",
                  "summary": summary, "per_seed": per_seed, "seconds": time.time() - t0}  # fmt: skip
        write_json(Path(out) / "results.json", result)
    print(format_table(result))
    return result


def format_table(result: dict) -> str:
    lines = [f"Encoder probe on {result['dataset']} ({result['seeds']} seed(s)), test accuracy with every training label",
             f"{'modality':<10}{'probe':>16}{'random':>16}{'supervised':>16}{'probe - sup.':>16}{'view acc.':>16}"]
    for m, r in result["summary"].items():
        d = r["probe_minus_supervised"]
        lines.append(f"{m:<10}{fmt(r['probe']):>16}{fmt(r['random']):>16}{fmt(r['supervised']):>16}{d['mean']:>+16.3f}{fmt(r['view_accuracy']):>16}")
    return "\n".join(lines)
