"""The Babel experiment: grow one embedding space stage by stage on real data.

Per seed: a subject-disjoint split of the plan's scenario; one frozen
self-supervised encoder per modality, pretrained on the training groups'
unlabelled windows; encoder features of every group (what nodes upload). Then
several ways to align the same features, each from the same untrained adapters:

- ``babel``: the plan, stage by stage (adaptive weights, EMA prototype, distillation);
- ``babel_reordered``: the same stages in another valid order (order invariance);
- ``babel_no_ema_kd`` (and ``babel_no_ema``, ``babel_no_kd``): the ablation (forgetting);
- ``joint``: the reference point, one stage-free MultiViewContrastive training on
  natural multi-modal samples of the same subjects (data no party really holds);
- ``unaligned``: the untrained adapters (what alignment starts from).

Each is scored the same way: one few-label fusion head for any subset of
modalities (trained on the labelled group's windows as single modalities and
all together, its step chosen on validation subjects), test accuracy and
macro-F1 of the chosen model for every subset; cross-modal retrieval recall@1
and @5 on test subjects for every pair of modalities, and after every stage.
Whether a model can use the space across modalities (``cross_modal``, test
subjects, every pair, the never-paired one included): label@1, window recall@1
that counts the overlapping windows of the same recording as hits
(``window@1``), the modality gap (``common.crossmodal.modality_gap``; the
``unaligned`` variant is the space before alignment), and cross-modal transfer:
a linear head trained on modality A's aligned embedding of the labelled
windows, scored on modality B's, for every ordered pair (``unaligned`` gives
the chance-level reference). ``summary.goals`` checks issue 10's goals seed by
seed.

The distillation weight (``GrowthConfig.kd_weight``) can be chosen on
validation subjects instead of taken from the configuration: with
``kd_weights`` (``--kd-weights 1,3,10,30``), per seed and after the shared
``prepare``, the ``babel`` plan is grown once per candidate weight from the same
untrained adapters, and each grown model is scored on the validation group's
features only. The criterion is the **mean over every pair of modalities of
validation label@1 retrieval** (``retrieval_recall`` with the validation
labels: how often the top cross-modal match, among every validation window,
shows the query's activity; mean of both directions). It rewards what
distillation is for: the trunk pair kept aligned while later stages add
modalities, without holding the new pairs back. One weight is chosen for all
seeds: the best mean of that score over seeds, ties going to the smaller
weight. Every variant that uses distillation (``babel``, ``babel_reordered``,
``babel_no_ema``) then runs with the chosen weight and is scored on test
subjects as above; the ``babel`` run of the chosen weight is the selection's
own (same seed, same start, same settings), so it is not grown twice. No
test-subject figure is computed before the choice is made.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from common.data import load_dataset
from common.data.dataset import WindowDataset
from common.data.scenarios import Scenario, split
from common.config import CampaignConfig
from common.crossmodal import cross_modal_transfer, modality_gaps, window_recall
from common.evaluate import HeadConfig, embed, evaluate_subsets, fit_head, pairs
from common.files import write_json
from common.growth import GrowthConfig, GrowthPlan, GrowthResult, PairData, StageRecord, grow
from common.pretrain import PretrainConfig
from common.processes import ensure_logging
from common.progress import Progress
from common.samples import SampleSet
from common.towers import AlignedModel, TowerConfig
from simulations.experiments.babel_joint import JOINT_CRITERION, check_joint_grid, joint_align, joint_candidates, retrieval_all
from simulations.experiments.babel_report import format_table, summarise
from simulations.experiments.common import Encoders, commit_of, fingerprint, mean_std, pretrain_encoders, seed_everything
from simulations.plots import plot_projections, plot_weights

log = logging.getLogger("edgebind")


@dataclass
class BabelSettings:
    tower: TowerConfig = field(default_factory=TowerConfig)
    # the encoders and the head of the MMBind experiment's recipe (MMBindSettings): 20 pretraining epochs on
    # every unlabelled training window; a late-fusion head, probed then fine-tuned with modality dropout
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(epochs=20))
    pretrain_windows: int | None = None  # per modality, drawn from the training groups' unlabelled windows; None = all
    growth: GrowthConfig = field(default_factory=lambda: GrowthConfig(epochs=15))
    joint_epochs: int = 15
    joint_temperature: float | None = None  # None: the growth stages' temperature
    head: HeadConfig = field(default_factory=HeadConfig)
    max_windows_per_group: int | None = None  # subsample every group (quick runs)
    projection_points: int = 200  # test windows per modality in the t-SNE plots
    tsne_iterations: int = 1000
    single_ablations: bool = True  # also EMA alone off and distillation alone off (besides both off)

    @classmethod
    def quick(cls) -> BabelSettings:
        return cls(
            pretrain=PretrainConfig(epochs=1),
            pretrain_windows=300,
            growth=GrowthConfig(epochs=3, batch_size=128),
            joint_epochs=3,
            head=CampaignConfig.from_run_config({"quick": True}).head(),  # the quick head of every experiment
            max_windows_per_group=300,
            projection_points=40,
            tsne_iterations=250,
            single_ablations=False,
        )


@dataclass
class SeedData:
    rows: dict[str, np.ndarray]  # group -> dataset rows it holds (after subsampling)
    labelled: dict[str, np.ndarray]  # group -> bool per row: label visible to the learner
    feats: dict[str, dict[str, np.ndarray]]  # group -> modality -> encoder features
    subjects: dict[str, list[int]]


def prepare(ds: WindowDataset, sc: Scenario, plan: GrowthPlan, seed: int, st: BabelSettings, device: torch.device) -> tuple[SeedData, Encoders]:
    """Split, pretrain the encoders on unlabelled training windows, and compute every group's features."""
    sp = split(sc, ds, seed)
    rng = np.random.default_rng(seed)
    rows, labelled = {}, {}
    for name, part in sp.parts.items():
        r, lab = part.rows, part.labelled
        cap = st.max_windows_per_group
        if cap is not None and len(r) > cap:
            keep = np.sort(rng.choice(len(r), size=cap, replace=False))
            r, lab = r[keep], lab[keep]
            if part.group.labelled > 0 and not lab.any():
                lab[: min(len(lab), 30)] = True  # a quick run must keep a few labels
        rows[name], labelled[name] = r, lab
    mods = plan.modalities
    by_mod: dict[str, list[np.ndarray]] = {m: [] for m in mods}
    for part in sp.by_role("train"):
        for m in part.modalities:
            if m in by_mod:
                by_mod[m].append(rows[part.group.name][~labelled[part.group.name]])
    pre_rows = {}
    for m, chunks in by_mod.items():
        r = np.concatenate(chunks) if chunks else np.empty(0, np.int64)
        if st.pretrain_windows is not None and len(r) > st.pretrain_windows:
            r = np.sort(rng.choice(r, size=st.pretrain_windows, replace=False))
        pre_rows[m] = r
    # cross-modal pretraining pairs only what the plan's stages pair, on their sources' unlabelled windows (a
    # stage source's two streams of one window are a free positive pair): the never-paired streams stay unpaired
    parties = [(list(s.pair), rows[s.source][~labelled[s.source]]) for s in plan.stages if s.kind == "grow"]
    enc = pretrain_encoders(ds, pre_rows, st.tower, st.pretrain, device, seed, parties=parties)
    # Stage sources get every plan modality too (only the joint reference reads the ones they do not hold),
    # as do the labelled, validation and test groups; other groups are not used.
    sources = {s.source for s in plan.stages}
    feats = {}
    for name, part in sp.parts.items():
        if part.group.role != "train" or name in sources or labelled[name].any():
            feats[name] = enc.features(ds, rows[name], mods, device)
    return SeedData(rows, labelled, feats, {k: p.subjects for k, p in sp.parts.items()}), enc


def _fresh(enc: Encoders, ds: WindowDataset, mods: list[str], st: BabelSettings, seed: int) -> AlignedModel:
    torch.manual_seed(seed)
    model = AlignedModel({m: ds.spec(m) for m in mods}, st.tower)
    for m in mods:
        model.encoders[m].load_state_dict(enc.modules[m].state_dict())
    return model.eval()


def cross_modal(model: AlignedModel, sd: SeedData, ds: WindowDataset, lab_groups: list[str], test: str, mods: list[str], seed: int) -> dict:
    """Can a model use the aligned space across modalities? Figures on the test subjects, per pair of modalities.

    ``window_recall``: recall@1 with overlapping windows of the same recording
    counted as hits (``neighbours``) beside plain recall@1 (``strict``);
    ``modality_gap``: ``common.crossmodal.modality_gap``; ``transfer``: a linear
    head trained on modality A's aligned embedding of the labelled windows,
    scored on modality B's of the test subjects, per ordered pair ``A->B``.
    """
    if ds.recording is None:
        raise ValueError(f"dataset {ds.name!r} gives no recording and start per window: window recall with overlapping neighbours needs them")
    rows = sd.rows[test]
    z = embed(model, {m: sd.feats[test][m] for m in mods})
    wr = {f"{a}-{b}": window_recall(z[a], z[b], ds.recording[rows], ds.start[rows], ds.X[a].shape[1]) for a, b in pairs(mods)}
    lab = [(g, np.flatnonzero(sd.labelled[g])) for g in lab_groups]
    z_train = embed(model, {m: np.concatenate([sd.feats[g][m][r] for g, r in lab]) for m in mods})
    y_train = np.concatenate([ds.y[sd.rows[g][r]] for g, r in lab])
    return {"window_recall": wr, "modality_gap": modality_gaps(z),
            "transfer": cross_modal_transfer(z_train, y_train, z, ds.y[rows], ds.n_classes, seed=seed)}


def few_label(model: AlignedModel, sd: SeedData, ds: WindowDataset, lab_groups: list[str], val: str, test: str, mods: list[str], head: HeadConfig, device, seed: int) -> dict:
    """One fusion head for any subset: trained on labelled windows as each single modality and as all together."""

    def views(feats: dict[str, np.ndarray], y: np.ndarray) -> SampleSet:
        sets = [SampleSet.natural({m: feats[m]}, y) for m in mods]
        if len(mods) > 1:
            sets.append(SampleSet.natural({m: feats[m] for m in mods}, y))
        return SampleSet.concat(sets)

    train_sets = []
    for g in lab_groups:
        r = np.flatnonzero(sd.labelled[g])
        train_sets.append(views({m: sd.feats[g][m][r] for m in mods}, ds.y[sd.rows[g][r]]))
    train = SampleSet.concat(train_sets)
    val_set = views(sd.feats[val], ds.y[sd.rows[val]])
    test_set = SampleSet.natural({m: sd.feats[test][m] for m in mods}, ds.y[sd.rows[test]])
    chosen_model, h, choice = fit_head(model, train, val_set, ds.n_classes, head, device, seed=seed, features=True)
    res = evaluate_subsets(chosen_model, h, test_set, device, features=True)
    return {"subsets": res, "validation": {k: v for k, v in choice.items() if k != "val_history"}}


KD_CRITERION = ("mean over every pair of modalities of validation label@1 retrieval of the grown babel model "
                "(top cross-modal match among every validation window has the query's activity; mean of both directions); "
                "validation subjects only")


def _group_of(sc: Scenario, role: str) -> str:
    (name,) = [g.name for g in sc.groups if g.role == role]
    return name


def _stage_data(ds: WindowDataset, sc: Scenario, plan: GrowthPlan, sd: SeedData) -> dict[str, PairData]:
    """Each stage source's paired features (the only data growth trains on)."""
    mods = plan.modalities
    return {s: PairData({m: sd.feats[s][m] for m in sc.group(s).modalities if m in mods}, labels=ds.y[sd.rows[s]])
            for s in sorted({s.source for s in plan.stages})}


@dataclass
class Candidate:
    """The babel plan grown with one candidate distillation weight, and its validation figures."""

    kd_weight: float
    result: GrowthResult
    snapshots: list[AlignedModel]  # the model right after each stage (to score the chosen one on test later)
    validation: dict  # score, retrieval per pair, forgetting of the trunk pair (validation subjects only)
    seconds: float


def grow_candidates(plan: GrowthPlan, data: dict[str, PairData], init: AlignedModel, val_feats: dict[str, np.ndarray],
                    val_y: np.ndarray, weights: Sequence[float], cfg: GrowthConfig, device: torch.device) -> list[Candidate]:
    """Grow ``plan`` from ``init`` once per distillation weight; score each on validation features only.

    Takes the validation group's features and labels and nothing of the test
    group, so no test figure can enter the choice.
    """
    mods = plan.modalities
    out = []
    for w in weights:
        t1 = time.time()
        model = copy.deepcopy(init)
        snaps: list[AlignedModel] = []

        def after_stage(rec: StageRecord, m: AlignedModel, snaps=snaps) -> dict:
            snaps.append(copy.deepcopy(m))
            aligned = plan.trunk_before(rec.index + 1)
            return {"val_retrieval": {k: {q: v[q] for q in ("R@1", "R@5", "label@1")} for k, v in retrieval_all(m, val_feats, aligned, val_y).items()}}

        result = grow(model, plan, data, replace(cfg, kd_weight=float(w)), device, progress=after_stage)
        retr = {k: {q: v[q] for q in ("R@1", "R@5", "label@1")} for k, v in retrieval_all(model, val_feats, mods, val_y).items()}
        score = float(np.mean([v["label@1"] for v in retr.values()]))
        a, b = sorted(plan.stages[0].pair)
        first, last = result.records[0].metrics["val_retrieval"][f"{a}-{b}"], result.records[-1].metrics["val_retrieval"][f"{a}-{b}"]
        fg = {"pair": f"{a}-{b}", "after_stage1_label@1": first["label@1"], "after_last_label@1": last["label@1"],
              "drop_label@1": first["label@1"] - last["label@1"]}
        out.append(Candidate(float(w), result, snaps, {"score": score, "retrieval": retr, "forgetting": fg}, time.time() - t1))
        log.info("  kd_weight %-8g validation: mean label@1 over pairs %.4f (trunk %s label@1 %.3f -> %.3f) (%.1fs)",
                 w, score, fg["pair"], fg["after_stage1_label@1"], fg["after_last_label@1"], out[-1].seconds)
    return out


def choose_kd_weight(per_seed_scores: list[dict[float, float]]) -> tuple[float, dict[float, float]]:
    """The weight with the best mean validation score over seeds; ties (within 1e-9) go to the smaller weight."""
    weights = sorted(per_seed_scores[0])
    means = {w: float(np.mean([s[w] for s in per_seed_scores])) for w in weights}
    best = max(means.values())
    return next(w for w in weights if means[w] >= best - 1e-9), means


def run_seed(ds: WindowDataset, sc: Scenario, plan: GrowthPlan, alt: GrowthPlan, seed: int, st: BabelSettings, device: torch.device, out: Path | None,
             prepared: tuple[SeedData, Encoders, float] | None = None, chosen: Candidate | None = None) -> dict:
    """One seed's variants. ``prepared`` (seed data, encoders, seconds) skips ``prepare``; ``chosen`` is the babel run to reuse."""
    seed_everything(seed)
    t0 = time.time()
    if prepared is None:
        sd, enc = prepare(ds, sc, plan, seed, st, device)
        prep_seconds = time.time() - t0
    else:
        sd, enc, prep_seconds = prepared
    mods = plan.modalities
    sources = sorted({s.source for s in plan.stages})
    val = _group_of(sc, "validation")
    test = _group_of(sc, "test")
    lab_groups = [g.name for g in sc.groups if g.role == "train" and sd.labelled[g.name].any() and set(mods) <= set(sd.feats[g.name])]
    if not lab_groups:
        raise ValueError(f"scenario {sc.name!r}: no training group with labels holds every modality of plan {plan.name!r} ({', '.join(mods)})")
    data = _stage_data(ds, sc, plan, sd)
    test_feats = sd.feats[test]
    test_y = ds.y[sd.rows[test]]
    init = _fresh(enc, ds, mods, st, seed)
    timing = {"prepare": prep_seconds}
    res: dict = {"seed": seed, "subjects": sd.subjects, "pairs_per_source": {s: len(d) for s, d in data.items()}, "variants": {}}

    def score(name: str, model: AlignedModel, extra: dict | None = None) -> dict:
        t1 = time.time()
        r = {"few_label": few_label(model, sd, ds, lab_groups, val, test, mods, st.head, device, seed), "retrieval": retrieval_all(model, test_feats, mods, test_y),
             "cross_modal": cross_modal(model, sd, ds, lab_groups, test, mods, seed)}
        for p, w in r["cross_modal"]["window_recall"].items():
            r["retrieval"][p]["window@1"] = w["neighbours"]  # beside label@1: overlapping neighbour windows count as hits
        r.update(extra or {})
        full = "+".join(sorted(mods))
        r1 = np.mean([v["window@1"] for v in r["retrieval"].values()])
        l1 = np.mean([v["label@1"] for v in r["retrieval"].values()])
        tr = np.mean([v["accuracy"] for k, v in r["cross_modal"]["transfer"].items() if k.split("->")[0] != k.split("->")[1]])
        gap = np.mean([v["gap"] for v in r["cross_modal"]["modality_gap"].values()])
        log.info("  %-16s test %s acc %.3f macro-F1 %.3f; mean over pairs: window@1 %.4f label@1 %.3f transfer acc %.3f modality gap %.2f (%.1fs)", name, full,
                 r["few_label"]["subsets"][full]["accuracy"], r["few_label"]["subsets"][full]["macro_f1"], r1, l1, tr, gap, time.time() - t1)
        res["variants"][name] = r
        return r

    score("unaligned", init)
    runs = {
        "babel": (plan, st.growth),
        "babel_reordered": (alt, st.growth),
        "babel_no_ema_kd": (plan, replace(st.growth, ema=False, kd=False)),
    }
    if st.single_ablations:
        runs["babel_no_ema"] = (plan, replace(st.growth, ema=False))
        runs["babel_no_kd"] = (plan, replace(st.growth, kd=False))
    grown = {}
    for name, (p, cfg) in runs.items():
        t1 = time.time()
        model = copy.deepcopy(init)
        cfg = replace(cfg, seed=seed)

        def after_stage(rec: StageRecord, m: AlignedModel, p=p) -> dict:
            aligned = p.trunk_before(rec.index + 1)
            return {"test_retrieval": {k: {q: v[q] for q in ("R@1", "R@5", "label@1")} for k, v in retrieval_all(m, test_feats, aligned, test_y).items()}}

        if name == "babel" and chosen is not None:
            # the selection already grew this very run (same start, same settings); score its stages on test now
            if chosen.kd_weight != cfg.kd_weight:
                raise ValueError(f"the reused babel run has kd_weight {chosen.kd_weight}, the settings {cfg.kd_weight}")
            result, model = chosen.result, chosen.result.model
            for rec, snap in zip(result.records, chosen.snapshots):
                rec.metrics.update(after_stage(rec, snap))
            timing["babel_reused_from_selection"] = chosen.seconds
        else:
            result = grow(model, p, data, cfg, device, progress=after_stage)
        timing[name] = time.time() - t1
        grown[name] = result
        stages = [{"stage": r.stage, "steps": r.steps, "seconds": r.seconds, "mean_weights": np.mean(r.weights, axis=0).tolist(),
                   "last_losses": r.losses[-1], "test_retrieval": r.metrics["test_retrieval"]}
                  | ({"val_retrieval": r.metrics["val_retrieval"]} if "val_retrieval" in r.metrics else {}) for r in result.records]
        score(name, model, {"plan": p.name, "stages": stages, "forgetting": forgetting(p, result.records)})
    t1 = time.time()
    joint = copy.deepcopy(init)
    natural = {m: np.concatenate([sd.feats[s][m] for s in sources]) for m in mods}
    jl = joint_align(joint, natural, replace(st.growth, seed=seed, temperature=st.joint_temperature or st.growth.temperature), st.joint_epochs, device)
    timing["joint"] = time.time() - t1
    score("joint", joint, {"samples": len(natural[mods[0]]), "last_loss": jl[-1]})
    if out is not None:
        t1 = time.time()
        files = plot_weights(grown["babel"].records, out) + plot_projections(init, grown["babel"].model, test_feats, ds.y[sd.rows[test]], ds.label_names, mods, st.projection_points, st.tsne_iterations, seed, out)
        res["files"] = [f.name for f in files]
        timing["plots"] = time.time() - t1
    res["seconds"] = {k: round(v, 2) for k, v in timing.items()} | {"total": round(time.time() - t0, 2)}
    return res


def forgetting(plan: GrowthPlan, records: list[StageRecord]) -> dict:
    """The trunk pair's test retrieval right after stage 1 and after the last stage."""
    a, b = sorted(plan.stages[0].pair)
    key = f"{a}-{b}"
    first = records[0].metrics["test_retrieval"][key]
    last = records[-1].metrics["test_retrieval"][key]
    return {"pair": key, **{f"after_stage1_{k}": first[k] for k in first}, **{f"after_last_{k}": last[k] for k in last},
            **{f"drop_{k}": first[k] - last[k] for k in first}}


# --------------------------------------------------------------------------- entry point


def run(dataset: str, plan: str, seeds: int, out: Path, quick: bool, device: torch.device, scenario: str | None = None, settings: BabelSettings | None = None,
        kd_weights: Sequence[float] | None = None, joint_temperatures: Sequence[float] | None = None, joint_epochs: Sequence[int] | None = None) -> dict:
    """Run the Babel experiment; write ``out/results.json`` and the PNGs, print a table, return the results.

    ``results.json`` holds ``settings``, ``plan`` and ``alternative_plan``,
    ``per_seed`` (every variant's ``few_label`` subsets, ``retrieval`` per
    pair with ``window@1``, ``cross_modal`` (``window_recall``,
    ``modality_gap``, ``transfer``), per-stage ``test_retrieval``,
    ``forgetting``) and ``summary`` (mean and std over seeds, ``modality_gap``
    and ``transfer`` per variant, ``order_invariance``, ``forgetting``,
    ``never_paired``, ``goals``).

    With ``kd_weights`` (candidate distillation weights) the weight is chosen
    on validation subjects first (see the module docstring) and
    ``kd_selection`` records ``criterion``, ``rule``, ``candidates``,
    ``per_seed`` validation figures per candidate (``score``, ``retrieval``,
    ``forgetting``; validation subjects only), ``mean_validation_score`` and
    ``chosen``; ``settings.growth.kd_weight`` is then the chosen weight.
    Without it the configured ``kd_weight`` is used, as before. Likewise
    ``joint_temperatures`` and ``joint_epochs`` choose the joint reference's
    temperature and schedule on validation subjects (``babel_joint``), recorded
    in ``joint_selection``.
    """
    out = Path(out)
    ensure_logging()
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # the per-step work is small: one intra-op thread avoids the stalls of spinning
        # threads when other processes share the cores, and costs little otherwise
        torch.set_num_threads(1)
    try:
        return _run(dataset, plan, seeds, out, quick, device, scenario, settings, kd_weights, check_joint_grid(joint_temperatures, joint_epochs))
    finally:
        torch.set_num_threads(threads)


def _check_kd_weights(kd_weights: Sequence[float] | None) -> list[float] | None:
    if kd_weights is None:
        return None
    ws = sorted({float(w) for w in kd_weights})
    if not ws or any(not np.isfinite(w) or w < 0 for w in ws):
        raise ValueError(f"kd_weights must be one or more finite weights >= 0, got {list(kd_weights)}")
    return ws


def _run(dataset: str, plan: str, seeds: int, out: Path, quick: bool, device: torch.device, scenario: str | None, settings: BabelSettings | None,
         kd_weights: Sequence[float] | None = None, joint_grid: tuple[list[float], list[int]] | None = None) -> dict:
    t0 = time.time()
    kd_weights = _check_kd_weights(kd_weights)
    gp = GrowthPlan.from_toml(plan)
    sc_name = scenario or gp.scenario
    if not sc_name:
        raise ValueError(f"plan {gp.name!r} names no scenario; pass one")
    sc = Scenario.load(sc_name)
    sc.require_central()
    alt = gp.reordered()
    available = {g.name: set(g.modalities) for g in sc.groups if g.role == "train"}
    gp.validate(available)
    alt.validate(available)
    for g in sc.groups:
        if g.role != "train" and not set(gp.modalities) <= set(g.modalities):
            raise ValueError(f"scenario {sc.name!r}: the {g.role} group holds {g.modalities}, not every modality of plan {gp.name!r} ({gp.modalities})")
    ds = load_dataset(dataset)
    sc.check_dataset(ds)
    st = settings or (BabelSettings.quick() if quick else BabelSettings())
    log.info("Babel experiment: dataset %s (%d windows, %d subjects), plan %s [%s], reordered [%s], scenario %s, %d seed(s)%s, device %s",
             ds.name, len(ds), len(ds.subjects), gp.name, "; ".join(s.describe() for s in gp.stages), "; ".join(s.describe() for s in alt.stages),
             sc.name, seeds, " [quick]" if quick else "", device)
    per_seed = []
    selection = joint_sel = None
    if kd_weights is None and joint_grid is None:
        shown = Progress(seeds, "babel experiment", unit="seed", bar=False, every=0)  # a line with the time left after each seed
        for seed in range(seeds):
            log.info("seed %d/%d", seed + 1, seeds)
            per_seed.append(run_seed(ds, sc, gp, alt, seed, st, device, out if seed == 0 else None))
            shown.update()
            log.info("seed %d done in %.0fs", seed + 1, per_seed[-1]["seconds"]["total"])
    else:
        selection, joint_sel, st = _select_and_run(ds, sc, gp, alt, seeds, st, device, out, kd_weights, joint_grid, per_seed)
    result = {
        "experiment": "babel",
        "dataset": ds.name,
        "scenario": sc.name,
        "plan": gp.to_dict(),
        "alternative_plan": alt.to_dict(),
        "modalities": gp.modalities,
        "seeds": seeds,
        "quick": quick,
        "device": str(device),
        "protocol": ("subject-disjoint split per seed; frozen self-supervised encoders; adapters and prototype aligned on encoder features; "
                     "one late-fusion head per variant on the labelled group's few labels (probe, then adapters and prototype fine-tuned too; the MMBind experiment's fit_head and HeadConfig), its stage and step chosen on validation subjects; "
                     "test figures of the chosen model; retrieval on every test window of the pair (gallery = all test windows), window@1 counting windows of "
                     "the same recording that overlap the query's as hits; modality gap = distance between the modality centroids of the L2-normalised "
                     "test embeddings / root mean of the two within-modality mean squared distances to the centroid; transfer = a linear head on "
                     "modality A's aligned embedding of the labelled windows, test accuracy on modality B's; mean and sample std over seeds"),
        "settings": _settings_dict(st),
        "commit": commit_of(),
        "dataset_sha256": fingerprint(ds),
        **({"kd_selection": selection} if selection is not None else {}),
        **({"joint_selection": joint_sel} if joint_sel is not None else {}),
        "summary": summarise(per_seed, gp),
        "per_seed": per_seed,
        "files": per_seed[0].get("files", []),
        "seconds": round(time.time() - t0, 1),
    }
    write_json(out / "results.json", result)
    print(format_table(result))
    log.info("wrote %s in %.0fs", out / "results.json", result["seconds"])
    return result


def _select_and_run(ds: WindowDataset, sc: Scenario, gp: GrowthPlan, alt: GrowthPlan, seeds: int, st: BabelSettings, device: torch.device, out: Path,
                    kd_weights: list[float] | None, joint_grid: tuple[list[float], list[int]] | None, per_seed: list[dict]) -> tuple[dict | None, dict | None, BabelSettings]:
    """Choose the distillation weight and/or the joint reference's (epochs, temperature) on validation subjects over every seed,
    then run every variant with them (appends to ``per_seed``)."""
    val, test = _group_of(sc, "validation"), _group_of(sc, "test")
    prepared, cands, sel_seeds, joint_seeds = [], [], [], []
    for seed in range(seeds):
        joint_text = f"temperatures {', '.join(f'{t:g}' for t in joint_grid[0])} x epochs {', '.join(map(str, joint_grid[1]))}" if joint_grid else "-"
        log.info("seed %d/%d: choosing on validation subjects: distillation weight among %s, joint reference among %s", seed + 1, seeds,
                 ", ".join(f"{w:g}" for w in kd_weights or []) or "-", joint_text)
        seed_everything(seed)
        t0 = time.time()
        sd, enc = prepare(ds, sc, gp, seed, st, device)
        prepared.append((sd, enc, time.time() - t0))
        init = _fresh(enc, ds, gp.modalities, st, seed)
        val_feats, val_y = sd.feats[val], ds.y[sd.rows[val]]
        about = {"seed": seed, "validation_group": val, "validation_subjects": sd.subjects[val], "validation_windows": int(len(sd.rows[val]))}
        if kd_weights is not None:
            t1 = time.time()
            cs = grow_candidates(gp, _stage_data(ds, sc, gp, sd), init, val_feats, val_y, kd_weights, replace(st.growth, seed=seed), device)
            cands.append({c.kd_weight: c for c in cs})
            sel_seeds.append(about | {"seconds": round(time.time() - t1, 2), "validation": {f"{c.kd_weight:g}": c.validation for c in cs}})
        if joint_grid is not None:
            t1 = time.time()
            natural = {m: np.concatenate([sd.feats[s][m] for s in sorted({s.source for s in gp.stages})]) for m in gp.modalities}
            jc = joint_candidates(init, natural, val_feats, val_y, *joint_grid, replace(st.growth, seed=seed), device)
            joint_seeds.append(about | {"seconds": round(time.time() - t1, 2), "validation": {f"{e}x{t:g}": v for (e, t), v in jc.items()}})
    selection = joint_sel = None
    if kd_weights is not None:
        chosen, means = choose_kd_weight([{w: c.validation["score"] for w, c in cs.items()} for cs in cands])
        log.info("distillation weight %g chosen on validation subjects (mean validation label@1 over pairs and seeds: %s)",
                 chosen, ", ".join(f"{w:g} {m:.4f}" for w, m in means.items()))
        selection = {
            "criterion": KD_CRITERION,
            "rule": "one weight for every seed: the best mean validation score over seeds; ties (within 1e-9) go to the smaller weight",
            "data": f"validation group {val!r} only; the test group {test!r} is not read before the choice",
            "candidates": kd_weights,
            "per_seed": sel_seeds,
            "mean_validation_score": {f"{w:g}": mean_std([s["validation"][f"{w:g}"]["score"] for s in sel_seeds]) for w in kd_weights},
            "chosen": chosen,
        }
        st = replace(st, growth=replace(st.growth, kd_weight=chosen))
    if joint_grid is not None:
        keys = [(e, t) for e in joint_grid[1] for t in joint_grid[0]]
        (e, t), _ = choose_kd_weight([{k: s["validation"][f"{k[0]}x{k[1]:g}"]["score"] for k in keys} for s in joint_seeds])
        log.info("joint reference: %d epochs at temperature %g chosen on validation subjects", e, t)
        joint_sel = {
            "criterion": JOINT_CRITERION,
            "rule": "one (epochs, temperature) for every seed: the best mean validation score over seeds; ties go to fewer epochs, then the lower temperature",
            "data": f"validation group {val!r} only; the test group {test!r} is not read before the choice",
            "temperatures": joint_grid[0], "epochs": joint_grid[1],
            "per_seed": joint_seeds,
            "mean_validation_score": {f"{k[0]}x{k[1]:g}": mean_std([s["validation"][f"{k[0]}x{k[1]:g}"]["score"] for s in joint_seeds]) for k in keys},
            "chosen": {"epochs": e, "temperature": t},
        }
        st = replace(st, joint_epochs=e, joint_temperature=t)
    for seed in range(seeds):
        log.info("seed %d/%d with kd_weight %g, joint %d epochs at temperature %g", seed + 1, seeds, st.growth.kd_weight, st.joint_epochs,
                 st.joint_temperature or st.growth.temperature)
        r = run_seed(ds, sc, gp, alt, seed, st, device, out if seed == 0 else None, prepared=prepared[seed],
                     chosen=cands[seed][st.growth.kd_weight] if kd_weights is not None else None)
        for name, sel in (("kd_selection", sel_seeds), ("joint_selection", joint_seeds)):
            if sel:
                r["seconds"][name] = sel[seed]["seconds"]
        per_seed.append(r)
        log.info("seed %d done in %.0fs", seed + 1, r["seconds"]["total"])
        prepared[seed] = None  # free the seed's features and candidate models
        if cands:
            cands[seed] = None
    return selection, joint_sel, st


def _settings_dict(st: BabelSettings) -> dict:
    from dataclasses import asdict

    return {k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in vars(st).items()}
