"""The MMBind experiment: bind incomplete multimodal data through a shared
modality (or through labels) and compare against the baselines on held-out
subjects.

Every method uses the same split, the same self-supervised encoders, the same
few labelled windows and the same head procedure (step chosen on validation
subjects); the test figures are those of the chosen model.

By default the encoders stay frozen after pretraining and only the adapters,
the prototype net and the head learn, as in a federated campaign, where the
coordinator sees encoder features, never windows. With ``finetune_encoders``
(``--finetune-encoders``) the few-label step trains every method end to end on
the raw labelled windows (pseudo-pairs too, where the head sees them), as the
lower bound does from scratch: the comparison the MMBind paper makes.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from common.binding import BoundPairs, PairWeighting
from common.config import CampaignConfig
from common.data import load_dataset
from common.data.dataset import WindowDataset
from common.data.scenarios import Scenario, Split, split
from common.evaluate import HeadConfig, evaluate_subsets, fit_head
from common.files import write_json
from common.mmbind import AlignConfig, align, bound_pair_report, label_pseudo_pairs, pseudo_pair_samples, sensor_pseudo_pairs
from common.pretrain import PretrainConfig
from common.progress import Progress
from common.samples import RowStack, SampleSet
from common.towers import AlignedModel, TowerConfig
from simulations.experiments.common import Encoders, commit_of, fingerprint, fmt, mean_ci, mean_std, pretrain_encoders, seed_everything

log = logging.getLogger("edgebind")

METHODS = ("lower_bound", "self_trained_lower_bound", "unimodal", "incomplete", "imagebind", "mmbind", "upper_bound", "all_labels")
SCRATCH = ("lower_bound", "self_trained_lower_bound", "all_labels")  # supervised from scratch on raw windows: no pretraining, no alignment
PAIRED_AGAINST = ("lower_bound", "self_trained_lower_bound", "incomplete")


@dataclass
class MMBindSettings:
    tower: TowerConfig = field(default_factory=TowerConfig)
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(epochs=20))
    pretrain_windows: int | None = None  # at most this many (seeded) windows per encoder; None = every unlabelled training window
    align: AlignConfig = field(default_factory=lambda: AlignConfig(epochs=30))
    head: HeadConfig = field(default_factory=HeadConfig)
    raw_head: HeadConfig = field(default_factory=lambda: HeadConfig(finetune_steps=600, finetune_lr_scales=(1.0, 3.0)))  # every head trained on raw windows
    weighting: PairWeighting = field(default_factory=PairWeighting)
    k: int = 1
    label_pairs_per_sample: int = 4
    max_windows_per_group: int | None = None  # subsample for quick runs
    finetune_encoders: bool = False  # few-label step end to end on raw windows (else frozen encoders, on features)

    @classmethod
    def quick(cls) -> MMBindSettings:
        """The campaign's quick schedule (``CampaignConfig.QUICK``), centrally."""
        q = CampaignConfig.from_run_config({"quick": True})
        return cls(
            pretrain=PretrainConfig(epochs=q.pretrain_rounds * q.local_epochs),
            align=q.align(),
            head=q.head(),
            raw_head=HeadConfig(steps=q.head_steps, finetune_steps=60, self_train_steps=q.head_self_train_steps, self_train_rounds=q.head_self_train_rounds),
            max_windows_per_group=q.window_cap(),
        )


@dataclass
class SeedData:
    """One seed's split, turned into features and sample sets."""

    split: Split
    feats: dict[str, dict[str, np.ndarray]]  # group -> modality -> features
    rows: dict[str, np.ndarray]
    train_labels: dict[str, np.ndarray]  # group -> labels the learner may see (-1 elsewhere)


class GroundTruth:
    """The true label of every window the seed's sample sets point into, by source array: what the simulation
    knows and the learner does not. It scores self-training's pseudo-labels (``fit_head``'s ``judge``); no
    choice reads it."""

    def __init__(self) -> None:
        self._of: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, source: np.ndarray, labels: np.ndarray) -> None:
        if len(labels) != len(source):
            raise ValueError(f"GroundTruth: {len(labels)} labels for {len(source)} windows")
        self._of[id(source)] = (source, np.asarray(labels, dtype=np.int64))  # the array is held, so its id stays its own

    def labels(self, source: np.ndarray | RowStack, rows: np.ndarray) -> np.ndarray:
        """The true labels of ``source[rows]`` (-1 for windows of an array never added)."""
        parts, starts = (source.parts, source.starts) if isinstance(source, RowStack) else ([source], np.array([0, len(source)]))
        out = np.full(len(rows), -1, dtype=np.int64)
        part = np.searchsorted(starts, rows, side="right") - 1
        for k in np.unique(part):
            known = self._of.get(id(parts[k]))
            if known is not None:
                hit = part == k
                out[hit] = known[1][rows[hit] - starts[k]]
        return out

    def judge(self, pseudo: SampleSet) -> dict:
        """How many pseudo-labels are right: the sample's label equals the true label of every window it holds (a
        pseudo-pair of two classes is right for neither); overall, on natural samples and on pseudo-pairs, and for
        pseudo-pairs also against each modality's window alone."""
        right, known = np.ones(len(pseudo), bool), np.ones(len(pseudo), bool)
        pairs, by_modality = pseudo.kind == 1, {}
        for m, idx in pseudo.index.items():
            present = idx >= 0
            truth = np.full(len(pseudo), -1, dtype=np.int64)
            truth[present] = self.labels(pseudo.sources[m], idx[present])
            known &= ~present | (truth >= 0)
            right &= ~present | (truth == pseudo.label)
            if (sel := pairs & present & (truth >= 0)).any():
                by_modality[m] = round(float((truth[sel] == pseudo.label[sel]).mean()), 4)
        out = {"judged": int(known.sum())}
        for name, sel in (("pseudo_label_accuracy", known), ("natural", known & ~pairs), ("pseudo_pairs", known & pairs)):
            if sel.any():
                out[name if name.startswith("pseudo_label") else f"pseudo_label_accuracy_{name}"] = round(float(right[sel].mean()), 4)
        if by_modality:
            out["pseudo_pairs_by_modality"] = by_modality  # a pair's label against its lin_acc window, its gravity window, ...
        return out


def _subsample(rows: np.ndarray, labelled: np.ndarray, cap: int | None, rng) -> tuple[np.ndarray, np.ndarray]:
    if cap is None or len(rows) <= cap:
        return rows, labelled
    keep = np.sort(rng.choice(len(rows), size=cap, replace=False))
    return rows[keep], labelled[keep]


def prepare(ds: WindowDataset, sc: Scenario, seed: int, st: MMBindSettings, device: torch.device, pretrain: bool = True) -> tuple[SeedData, Encoders | None]:
    """The seed's split and labels; with ``pretrain``, also the encoders and every group's features."""
    sp = split(sc, ds, seed)
    rng = np.random.default_rng(seed)
    rows, labels = {}, {}
    for name, part in sp.parts.items():
        r, lab = _subsample(part.rows, part.labelled, st.max_windows_per_group, rng)
        if part.group.role == "train" and part.group.labelled > 0 and not lab.any():
            lab[: min(len(lab), 12)] = True  # a quick run must keep a few labels
        rows[name] = r
        labels[name] = np.where(lab, ds.y[r], -1)
    train_groups = [p.group for p in sp.by_role("train")]
    if not pretrain:  # the from-scratch methods only: no encoder, no features
        return SeedData(sp, {}, rows, labels), None
    # Encoders learn from the unlabelled windows of the training nodes only.
    by_mod: dict[str, list[np.ndarray]] = {}
    for g in train_groups:
        for m in g.modalities:
            by_mod.setdefault(m, []).append(rows[g.name])
    for m in sc.modalities:  # a modality only the test nodes hold still needs an encoder
        by_mod.setdefault(m, [rows[g.name] for g in train_groups])
    pool = {m: np.concatenate(v) for m, v in by_mod.items()}
    cap = st.pretrain_windows
    if cap:
        pool = {m: np.sort(rng.choice(r, size=cap, replace=False)) if len(r) > cap else r for m, r in pool.items()}
    parties = [(g.modalities, rows[g.name] if not cap or len(rows[g.name]) <= cap else np.sort(rng.choice(rows[g.name], size=cap, replace=False))) for g in train_groups]
    enc = pretrain_encoders(ds, pool, st.tower, st.pretrain, device, seed, parties=parties)
    all_mods = sc.modalities
    feats = {name: enc.features(ds, rows[name], all_mods, device) for name in sp.parts}
    return SeedData(sp, feats, rows, labels), enc


def natural_samples(sd: SeedData, groups: list[str], with_all: bool = False, modalities: list[str] | None = None) -> SampleSet:
    """Real samples of the given groups: their own modalities, or all of them (``with_all``, the upper bound)."""
    sets = []
    for g in groups:
        mods = modalities or (list(sd.feats[g]) if with_all else sd.split.parts[g].modalities)
        sets.append(SampleSet.natural({m: sd.feats[g][m] for m in mods}, sd.train_labels[g]))
    return SampleSet.concat(sets)


def eval_set(sd: SeedData, ds: WindowDataset, role: str, raw: bool = False) -> SampleSet:
    """The validation or test subjects' samples: features, or raw windows (for the from-scratch lower bound)."""
    (part,) = sd.split.by_role(role)
    name = part.group.name
    rows = sd.rows[name]
    return SampleSet.natural({m: ds.X[m][rows] if raw else sd.feats[name][m] for m in part.modalities}, ds.y[rows])


def raw_labelled(sd: SeedData, ds: WindowDataset, groups: list[str], modalities: list[str], with_all: bool = False, unlabelled_too: bool = False,
                 truth: GroundTruth | None = None) -> SampleSet:
    """The labelled raw windows of the training groups, in the given modalities (of all of them: ``with_all``); every window with ``unlabelled_too``.

    With ``truth``, the windows' true labels are added to it."""
    sets = []
    for g in groups:
        lab = np.arange(len(sd.rows[g])) if unlabelled_too else np.flatnonzero(sd.train_labels[g] >= 0)
        mods = [m for m in (modalities if with_all else sd.split.parts[g].modalities) if m in modalities]
        if len(lab) and mods:
            rows = sd.rows[g][lab]
            X = {m: ds.X[m][rows] for m in mods}
            for x in X.values() if truth else ():
                truth.add(x, ds.y[rows])
            sets.append(SampleSet.natural(X, sd.train_labels[g][lab]))
    return SampleSet.concat(sets)


def pseudo_pairs(sd: SeedData, sc: Scenario, ds: WindowDataset, st: MMBindSettings, seed: int, device,
                 truth: GroundTruth | None = None) -> tuple[SampleSet | None, list[dict], SampleSet | None]:
    """Pseudo-pairs between every two training groups that hold different modalities.

    Returns the pairs as feature samples, what was bound, and (with
    ``st.finetune_encoders``) the same pairs as raw-window samples, whose windows' true labels go to ``truth``.
    """
    groups = [p.group for p in sd.split.by_role("train")]
    sets, info, raw_sets = [], [], []
    for ga, gb in combinations(groups, 2):
        if set(ga.modalities) == set(gb.modalities):
            continue
        a = {m: sd.feats[ga.name][m] for m in ga.modalities}
        b = {m: sd.feats[gb.name][m] for m in gb.modalities}
        ya, yb = ds.y[sd.rows[ga.name]], ds.y[sd.rows[gb.name]]
        if sc.binding == "sensor":
            if sc.shared not in ga.modalities or sc.shared not in gb.modalities:
                continue
            pairs = sensor_pseudo_pairs(a[sc.shared], b[sc.shared], st.weighting, k=st.k, device=device)
            samples = pseudo_pair_samples(a, b, pairs, keep_shared=sc.shared)
        else:
            la, lb = sd.train_labels[ga.name], sd.train_labels[gb.name]
            ia, ib = np.flatnonzero(la >= 0), np.flatnonzero(lb >= 0)
            lp = label_pseudo_pairs(la[ia], lb[ib], st.label_pairs_per_sample, seed)
            pairs = BoundPairs(ia[lp.i], ib[lp.j], lp.similarity, lp.weight)
            samples = pseudo_pair_samples(a, b, pairs)
            samples.label = la[pairs.i]  # label binding pairs same-class windows: the class is known
        if st.finetune_encoders and len(pairs):  # label-bound pairs train the head; sensor-bound ones, its self-training
            raw_a, raw_b = ({m: ds.X[m][sd.rows[g.name]] for m in g.modalities} for g in (ga, gb))
            for side, y in ((raw_a, ya), (raw_b, yb)) if truth else ():
                for x in side.values():
                    truth.add(x, y)
            raw = pseudo_pair_samples(raw_a, raw_b, pairs, **({"keep_shared": sc.shared} if sc.binding == "sensor" else {}))
            raw.label = samples.label
            raw_sets.append(raw)
        info.append({
            "groups": [ga.name, gb.name],
            "pairs": len(pairs),
            "pair_accuracy": pairs.label_agreement(ya, yb),
            "mean_similarity": float(pairs.similarity.mean()) if len(pairs) else float("nan"),
            "mean_weight": float(pairs.weight.mean()) if len(pairs) else float("nan"),
            "report": bound_pair_report(pairs, ya, yb, ds.n_classes, *((a[sc.shared], b[sc.shared]) if sc.binding == "sensor" else ())),
        })
        if len(pairs):
            sets.append(samples)
    return (SampleSet.concat(sets) if sets else None), info, (SampleSet.concat(raw_sets) if raw_sets else None)


def _fresh(enc: Encoders, ds: WindowDataset, mods: list[str], st: MMBindSettings, seed: int) -> AlignedModel:
    torch.manual_seed(seed)
    model = AlignedModel({m: ds.spec(m) for m in mods}, st.tower)
    for m in mods:
        model.encoders[m].load_state_dict(enc.modules[m].state_dict())
    return model


def run_seed(ds: WindowDataset, sc: Scenario, seed: int, st: MMBindSettings, device: torch.device, methods: tuple[str, ...]) -> dict:
    seed_everything(seed)
    t0 = time.time()
    scratch_only = set(methods) <= set(SCRATCH)  # nothing reads encoders: skip pretraining, features and binding
    sd, enc = prepare(ds, sc, seed, st, device, pretrain=not scratch_only)
    truth = GroundTruth()  # to score self-training's pseudo-labels, never to choose
    train_groups = [p.group.name for p in sd.split.by_role("train")]
    test = eval_set(sd, ds, "test", raw=scratch_only)
    val = eval_set(sd, ds, "validation", raw=scratch_only)
    test_mods = test.modalities
    all_mods = sc.modalities
    if scratch_only:
        natural = labelled = pseudo = pseudo_raw = None
        pair_info: list[dict] = []
    else:
        natural = natural_samples(sd, train_groups)
        labelled = natural.take(np.flatnonzero(natural.label >= 0))
        for g, by_mod in sd.feats.items():
            for x in by_mod.values():
                truth.add(x, ds.y[sd.rows[g]])
        pseudo, pair_info, pseudo_raw = pseudo_pairs(sd, sc, ds, st, seed, device, truth)
    tune = st.finetune_encoders
    if tune:  # the few-label step on raw windows, every tower trainable
        v_raw, t_raw = eval_set(sd, ds, "validation", raw=True), eval_set(sd, ds, "test", raw=True)
        labelled_raw = raw_labelled(sd, ds, train_groups, all_mods)
        natural_raw = raw_labelled(sd, ds, train_groups, all_mods, unlabelled_too=True, truth=truth)  # what self-training reads: ``natural`` as raw windows
    n_classes = ds.n_classes
    out: dict = {"seed": seed, "subjects": {k: p.subjects for k, p in sd.split.parts.items()}, "pairs": pair_info, "methods": {}}
    for p in pair_info:
        log.info("  bound %s <-> %s: %d pairs, pair accuracy %.3f, mean weight %.2f", *p["groups"], p["pairs"], p["pair_accuracy"], p["mean_weight"])

    def finish(name: str, model: AlignedModel, train: SampleSet, features: bool = True, v=val, t=test, unlabelled: SampleSet | None = None) -> dict:
        cfg = st.head if features else st.raw_head  # one recipe per kind of input, whatever the method
        m, head, choice = fit_head(model, train, v, n_classes, cfg, device, seed=seed, features=features, unlabelled=unlabelled, judge=truth.judge)
        res = {"subsets": evaluate_subsets(m, head, t, device, features=features), "validation": {k: choice[k] for k in ("stage", "step", "val_macro_f1", "val_accuracy", "self_train") if k in choice}}
        full = "+".join(sorted(t.modalities))
        log.info("  %-12s test %s: acc %.3f  macro-F1 %.3f  (%s step %d chosen on validation)", name, full, res["subsets"][full]["accuracy"], res["subsets"][full]["macro_f1"], choice["stage"], choice["step"])
        return res

    for method in methods:
        if method == "imagebind" and sc.binding != "sensor":
            continue
        if method in SCRATCH:
            # supervised from scratch on raw windows, no pretraining: the few labelled windows (lower bound; self-trained
            # on the labelled nodes' own unlabelled windows, as a user without edgebind could add), or every training
            # window's label in the test modalities (all_labels: full supervision)
            torch.manual_seed(seed)
            model = AlignedModel({m: ds.spec(m) for m in test_mods}, st.tower)
            v_raw, t_raw = eval_set(sd, ds, "validation", raw=True), eval_set(sd, ds, "test", raw=True)
            own = None
            if method == "all_labels":
                rows = np.concatenate([sd.rows[g] for g in train_groups])
                train = SampleSet.natural({m: ds.X[m][rows] for m in test_mods}, ds.y[rows])
            else:
                train = raw_labelled(sd, ds, train_groups, test_mods)
                if method == "self_trained_lower_bound":
                    holders = [g for g in train_groups if sd.split.parts[g].group.labelled > 0]
                    own = raw_labelled(sd, ds, holders, test_mods, unlabelled_too=True, truth=truth)
            out["methods"][method] = finish(method, model, train, features=False, v=v_raw, t=t_raw, unlabelled=own)
        elif method == "unimodal":
            per = {}
            for m in test_mods:
                model = _fresh(enc, ds, [m], st, seed)
                if tune:
                    per[m] = finish(f"unimodal:{m}", model, labelled_raw.restrict([m]), features=False, v=v_raw.restrict([m]), t=t_raw.restrict([m]), unlabelled=natural_raw.restrict([m]))
                else:
                    per[m] = finish(f"unimodal:{m}", model, labelled.restrict([m]), v=val.restrict([m]), t=test.restrict([m]), unlabelled=natural)
            best = max(per, key=lambda m: per[m]["validation"]["val_macro_f1"])  # chosen on validation
            out["methods"][method] = {"per_modality": per, "chosen": best, "subsets": {k: v for m in per for k, v in per[m]["subsets"].items()}}
        else:
            model = _fresh(enc, ds, all_mods, st, seed)
            if method == "incomplete":
                train = natural
            elif method == "imagebind":
                anchor_groups = [g for g in train_groups if sc.shared in sd.split.parts[g].modalities]
                train = natural_samples(sd, anchor_groups)
            elif method == "mmbind":
                train = natural if pseudo is None else SampleSet.concat([natural, pseudo])
            elif method == "upper_bound":
                train = natural_samples(sd, train_groups, with_all=True)
            else:
                raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
            if tune:  # the samples ``train`` holds, as raw windows: what self-training reads end to end
                pool = natural_raw
                if method in ("imagebind", "upper_bound"):
                    pool = raw_labelled(sd, ds, anchor_groups if method == "imagebind" else train_groups, all_mods, with_all=method == "upper_bound",
                                        unlabelled_too=True, truth=truth)  # fmt: skip
                elif method == "mmbind" and pseudo_raw is not None:
                    pool = SampleSet.concat([natural_raw, pseudo_raw])
            cfg = copy.copy(st.align)
            if method == "imagebind":
                cfg.train_modalities = [m for m in train.modalities if m != sc.shared]
            t1 = time.time()
            align(model, train, cfg, device, seed)
            log.debug("  %s aligned in %.1fs", method, time.time() - t1)
            head_train = labelled_raw if tune else labelled
            if sc.binding == "label" and pseudo is not None and method != "upper_bound":
                # label-bound pairs are labelled fused samples: every method's head sees them, so heads differ only by alignment
                head_train = SampleSet.concat([head_train, pseudo_raw if tune else pseudo])
            if method == "upper_bound":  # natural pairs in the test modalities: the head sees what it is scored on
                if tune:
                    head_train = raw_labelled(sd, ds, train_groups, test_mods, with_all=True)
                else:
                    head_train = natural_samples(sd, train_groups, modalities=test_mods)
                    head_train = head_train.take(np.flatnonzero(head_train.label >= 0))
            # self-training reads the samples the method aligned on (st.head / st.raw_head.self_train_steps)
            out["methods"][method] = finish(method, model, head_train, features=not tune, unlabelled=pool if tune else train, **({"v": v_raw, "t": t_raw} if tune else {}))
    out["seconds"] = time.time() - t0
    return out


def headline(res: dict, full: str) -> float:
    if "chosen" in res:
        return res["per_modality"][res["chosen"]]["subsets"][res["chosen"]]["accuracy"]
    return res["subsets"][full]["accuracy"]


def summarise(seeds: list[dict], full: str) -> dict:
    methods = sorted({m for s in seeds for m in s["methods"]}, key=lambda m: METHODS.index(m))
    summary: dict = {}
    for m in methods:
        runs = [s["methods"][m] for s in seeds if m in s["methods"]]
        subsets = sorted({k for r in runs for k in r["subsets"]})
        summary[m] = {
            "subsets": {k: {metric: mean_std([r["subsets"][k][metric] for r in runs if k in r["subsets"]]) for metric in ("accuracy", "macro_f1")} for k in subsets},
            "headline_accuracy": mean_std([headline(r, full) for r in runs]),
        }
        if m == "unimodal":
            summary[m]["headline_macro_f1"] = mean_std([r["per_modality"][r["chosen"]]["subsets"][r["chosen"]]["macro_f1"] for r in runs])
            summary[m]["chosen"] = [r["chosen"] for r in runs]
        else:
            summary[m]["headline_macro_f1"] = mean_std([r["subsets"][full]["macro_f1"] for r in runs])
        if st_rounds := [r["validation"]["self_train"]["rounds"] for r in runs if "self_train" in r.get("validation", {})]:
            summary[m]["self_train"] = [  # per round, over the seeds that reached it: how many samples were pseudo-labelled, how many rightly
                {k: mean_std([float(rs[i][k]) for rs in st_rounds if len(rs) > i and k in rs[i]]) for k in ("pseudo_labelled", "pseudo_label_accuracy")}
                for i in range(max(map(len, st_rounds)))
            ]
    paired = {}
    for r, ref in enumerate(PAIRED_AGAINST):
        for m in methods:
            both = [s for s in seeds if m in s["methods"] and ref in s["methods"]]
            if m != ref and m not in PAIRED_AGAINST[:r] and both:  # each pair of references once (B - A, not A - B too)
                paired[f"{m} - {ref}"] = mean_ci([headline(s["methods"][m], full) - headline(s["methods"][ref], full) for s in both])
    pair_acc = [p["pair_accuracy"] for s in seeds for p in s["pairs"]]
    summary_pairs = {"pair_accuracy": mean_std(pair_acc), "pairs": mean_std([float(p["pairs"]) for s in seeds for p in s["pairs"]])}
    gap = None
    if {"unimodal", "mmbind", "upper_bound"} <= set(summary):
        gaps = []
        for s in seeds:
            u, mm, ub = (headline(s["methods"][k], full) for k in ("unimodal", "mmbind", "upper_bound"))
            gaps.append((mm - u) / (ub - u) if ub != u else float("nan"))
        gap = mean_std(gaps)
    return {"methods": summary, "paired_differences": paired, "pseudo_pairs": summary_pairs, "gap_closed": gap}


def run(dataset: str, scenario: str, seeds: int, out: Path, quick: bool, device: torch.device, methods: tuple[str, ...] = METHODS, settings: MMBindSettings | None = None) -> dict:
    """Run the MMBind experiment for ``seeds`` seeds; write ``out/results.json`` and print a table."""
    ds = load_dataset(dataset)
    sc = Scenario.load(scenario)
    sc.require_central()
    sc.check_dataset(ds)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    st = settings or (MMBindSettings.quick() if quick else MMBindSettings())
    log.info("MMBind experiment: dataset %s (%d windows, %d subjects), scenario %s, %d seed(s)%s, device %s",
             ds.name, len(ds), len(ds.subjects), sc.name, seeds, " [quick]" if quick else "", device)
    (tp,) = [g for g in sc.groups if g.role == "test"]
    full = "+".join(sorted(tp.modalities))
    per_seed: list[dict] = []
    provenance = {"commit": commit_of(), "dataset_sha256": fingerprint(ds), "settings": st, "device": str(device)}
    shown = Progress(seeds, "mmbind experiment", unit="seed", bar=False, every=0)  # a line with the time left after each seed
    for seed in range(seeds):
        log.info("seed %d/%d", seed + 1, seeds)
        per_seed.append(run_seed(ds, sc, seed, st, device, methods))
        shown.update()
        # written after every seed, so a long run that is stopped keeps the seeds it finished
        result = {
            "experiment": "mmbind",
            "dataset": ds.name,
            "scenario": sc.name,
            "test_modalities": full,
            "seeds": len(per_seed),
            "seeds_planned": seeds,
            "quick": quick,
            "few_label_step": "end to end on raw windows (encoders fine-tuned)" if st.finetune_encoders else "frozen encoders, on features",
            "protocol": "subject-disjoint split per seed; head step chosen on validation subjects; final chosen model's test figures; mean and sample std over seeds",
            **provenance,
            "summary": summarise(per_seed, full),
            "per_seed": per_seed,
        }
        write_json(Path(out) / "results.json", result)
    print(format_table(result))
    return result


def format_table(result: dict) -> str:
    s = result["summary"]
    names = {m: m + (" (best single, by val)" if m == "unimodal" else "") for m in s["methods"]}
    w = max(14, *(len(n) + 2 for n in names.values()))
    lines = [f"MMBind on {result['dataset']} / {result['scenario']}: test on {result['test_modalities']} ({result['seeds']} seed(s))",
             f"{'method':<{w}}{'accuracy':>18}{'macro-F1':>18}"]
    for m, r in s["methods"].items():
        lines.append(f"{names[m]:<{w}}{fmt(r['headline_accuracy']):>18}{fmt(r['headline_macro_f1']):>18}")
    if paired := s.get("paired_differences"):
        lines.append("paired differences in test accuracy over seeds (mean, 95 % interval):")
        kw = max(28, *(len(k) + 2 for k in paired))
        for k, d in paired.items():
            lines.append(f"  {k:<{kw}}{d['mean']:+.3f}  [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]  (n={d['n']})")
    for m, r in s["methods"].items():
        for i, rnd in enumerate(r.get("self_train", [])):
            if rnd["pseudo_label_accuracy"]["n"]:
                lines.append(f"{m} self-training round {i + 1}: {rnd['pseudo_labelled']['mean']:.0f} samples pseudo-labelled, "
                             f"{fmt(rnd['pseudo_label_accuracy'])} of them rightly")  # fmt: skip
    pp = s["pseudo_pairs"]
    if pp["pairs"]["n"]:
        lines.append(f"pseudo-pairs per binding: {pp['pairs']['mean']:.0f}, pair accuracy {fmt(pp['pair_accuracy'])}")
    if s.get("gap_closed"):
        lines.append(f"share of the unimodal -> upper-bound gap closed by MMBind: {fmt(s['gap_closed'])}")
    return "\n".join(lines)
