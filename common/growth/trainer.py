"""The stage trainer and ``grow``, which runs a whole plan stage by stage (with checkpoints to resume from)."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from common.losses import symmetric_info_nce
from common.towers import AlignedModel

from common.growth.checkpoints import check_resumable, jsonable, latest_checkpoint, read_checkpoint, restore_state, save_checkpoint
from common.growth.plan import GrowthConfig, GrowthPlan, PairData, Stage, StageRecord
from common.losses import adaptive_weights, combine, distillation_loss, ema_update, grads_of

log = logging.getLogger("edgebind")


# --------------------------------------------------------------------------- the stage trainer


class StageTrainer:
    """Trains one stage: the branch and connecting adapters and the prototype; all else frozen.

    ``trunk`` lists the towers aligned before this stage; if non-empty, the
    stage is a growth stage and the EMA prototype and distillation apply
    (when switched on). ``replay`` holds earlier stages' features of trunk
    towers other than the connecting one, distilled through the prototype.
    """

    def __init__(
        self,
        model: AlignedModel,
        stage: Stage,
        cfg: GrowthConfig,
        device: torch.device,
        trunk: Sequence[str] = (),
        replay: Mapping[str, torch.Tensor] | None = None,
        index: int = 0,
    ):
        missing = [m for m in stage.pair if m not in model.adapters]
        if missing:
            raise KeyError(f"stage {stage.describe()}: the model has no tower for {missing[0]!r} (it has {', '.join(model.modalities)})")
        self.model, self.stage, self.cfg, self.device, self.index = model, stage, cfg, torch.device(device), index
        self.growing = bool(trunk)
        self.use_kd = cfg.kd and cfg.kd_weight > 0 and self.growing
        self.use_ema = cfg.ema and self.growing
        a, b = stage.pair
        self.norm_params = list(model.adapters[a].parameters()) + list(model.adapters[b].parameters())
        self.extra_params = list(model.prototype.parameters())
        self.params = self.norm_params + self.extra_params
        self._requires = {p: p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        for p in self.params:
            p.requires_grad_(True)
        self.teacher = _frozen_copy(model) if self.use_kd else None
        self.ema = _frozen_copy(model.prototype) if self.use_ema else None
        self.replay = {m: x.to(self.device) for m, x in (replay or {}).items()} if self.use_kd else {}
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
        self.gen = torch.Generator().manual_seed(_stage_seed(cfg.seed, index))
        self.record = StageRecord(index=index, stage=asdict(stage))

    def step(self, fa: torch.Tensor, fb: torch.Tensor, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One update on a batch of paired features (connecting, branch); returns the named terms.

        The objective stepped on is ``total``, the sum of the ``*_loss`` terms (the
        weighted contrastive term and, when distilling, ``kd_weight`` times the distance ``kd``).
        """
        a, b = self.stage.pair
        z = self.model.embed_features({a: fa, b: fb})
        terms = symmetric_info_nce(z[a], z[b], self.cfg.temperature, weights)
        kd = self._distillation(fa, z[a]) if self.use_kd else None
        if self.cfg.adaptive:
            w_ab, w_ba, g_ab, g_ba = adaptive_weights(
                terms["a_from_b"], terms["b_from_a"], self.norm_params, self.extra_params, retain_graph=kd is not None
            )
            grads = combine(w_ab, w_ba, g_ab, g_ba)
        else:
            w_ab = w_ba = torch.tensor(0.5)
            grads = list(grads_of((terms["a_from_b"] + terms["b_from_a"]) / 4, self.params, retain_graph=kd is not None))
        if kd is not None:
            for g, gk in zip(grads, grads_of(self.cfg.kd_weight * kd, self.params, retain_graph=False)):
                g.add_(gk)
        for p, g in zip(self.params, grads):
            p.grad = g
        self.opt.step()
        for p in self.params:
            p.grad = None
        if self.ema is not None:
            ema_update(self.ema, self.model.prototype, self.cfg.ema_momentum)
        contrastive = (w_ab * terms["a_from_b"] + w_ba * terms["b_from_a"]).detach() / 2
        out = {
            "a_from_b": terms["a_from_b"].detach(),
            "b_from_a": terms["b_from_a"].detach(),
            "contrastive_loss": contrastive,
            "w_ab": w_ab.detach(),
            "w_ba": w_ba.detach(),
        }
        if kd is not None:
            out["kd"] = kd.detach()  # the distance itself; the term the step added is kd_loss
            out["kd_loss"] = self.cfg.kd_weight * out["kd"]
        out["total"] = contrastive + (out["kd_loss"] if kd is not None else 0.0)
        self.record.weights.append([float(w_ab), float(w_ba)])
        self.record.steps += 1
        return out

    def _distillation(self, fa: torch.Tensor, za: torch.Tensor) -> torch.Tensor:
        """Keep the connecting tower's embeddings, and replayed earlier towers', where the previous stage put them."""
        a = self.stage.connecting
        with torch.no_grad():
            ta = self.teacher.embed_features({a: fa})[a]
        parts = [distillation_loss(za, ta)]
        if self.replay:
            n = min(len(fa), *(len(x) for x in self.replay.values()))
            for m, x in self.replay.items():
                rows = torch.randint(len(x), (n,), generator=self.gen).to(self.device)
                with torch.no_grad():
                    t = self.teacher.embed_features({m: x[rows]})[m]
                parts.append(distillation_loss(self.model.embed_features({m: x[rows]})[m], t))
        return torch.stack(parts).mean()

    def run(self, data: PairData) -> StageRecord:
        """Train for ``cfg.epochs`` epochs over ``data``; finish the EMA; return the record."""
        a, b = self.stage.pair
        missing = [m for m in (a, b) if m not in data.features]
        if missing:
            raise KeyError(f"stage {self.stage.describe()}: its data has no features of {missing[0]!r} (it has {', '.join(data.modalities)})")
        if len(data) < 2:
            raise ValueError(f"stage {self.stage.describe()}: needs at least 2 pairs, got {len(data)}")
        fa = torch.from_numpy(data.features[a]).to(self.device)
        fb = torch.from_numpy(data.features[b]).to(self.device)
        w = None if data.weights is None else torch.from_numpy(data.weights).to(self.device)
        t0 = time.perf_counter()
        try:
            for epoch in range(self.cfg.epochs):
                order = torch.randperm(len(fa), generator=self.gen).to(self.device)
                sums: dict[str, float] = {}
                steps = 0
                for i in range(0, len(order), self.cfg.batch_size):
                    rows = order[i : i + self.cfg.batch_size]
                    if len(rows) < min(self.cfg.min_batch, len(order)):
                        continue
                    terms = self.step(fa[rows], fb[rows], None if w is None else w[rows])
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    steps += 1
                means = {k: v / steps for k, v in sums.items()}
                self.record.losses.append(means)
                log.debug("stage %d epoch %d/%d %s", self.index + 1, epoch + 1, self.cfg.epochs, _fmt_terms(means))
        finally:
            self.finish()
        self.record.seconds = time.perf_counter() - t0
        return self.record

    def finish(self) -> None:
        """Put the EMA prototype in the model and restore which parameters were trainable."""
        if self.ema is not None:
            self.model.prototype.load_state_dict(self.ema.state_dict())
            self.ema = None
        for p, r in self._requires.items():
            p.requires_grad_(r)
        self.model.eval()


def _frozen_copy(module: nn.Module) -> nn.Module:
    c = copy.deepcopy(module)
    for p in c.parameters():
        p.requires_grad_(False)
    return c.eval()


def _stage_seed(seed: int, index: int) -> int:
    return int(seed) * 1009 + int(index) + 17


def _fmt_terms(terms: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in terms.items())


# --------------------------------------------------------------------------- growing a whole plan


@dataclass
class GrowthResult:
    model: AlignedModel
    plan: GrowthPlan
    records: list[StageRecord]
    resumed_from: int = 0  # stages restored from a checkpoint instead of trained

    @property
    def aligned(self) -> list[str]:
        return self.plan.modalities


ProgressFn = Callable[[StageRecord, AlignedModel], "dict | None"]


def grow(
    model: AlignedModel,
    plan: GrowthPlan,
    data: Mapping[str, PairData],
    cfg: GrowthConfig | None = None,
    device: torch.device | str = "cpu",
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: ProgressFn | None = None,
) -> GrowthResult:
    """Grow ``model``'s aligned space stage by stage (in place) and return the per-stage records.

    ``data`` maps each source named by the plan to its paired features. With
    ``checkpoint_dir`` a checkpoint is written after every stage; with
    ``resume`` an existing one for the same plan and settings is picked up and
    training continues from the next stage. ``progress(record, model)`` is
    called after each stage; a dict it returns is kept as that stage's metrics.
    """
    cfg = cfg or GrowthConfig()
    device = torch.device(device)
    plan.validate({s: set(d.features) for s, d in data.items()})
    missing = [m for m in plan.modalities if m not in model.adapters]
    if missing:
        raise KeyError(f"plan {plan.name!r} aligns {missing[0]!r}, but the model has no tower for it (it has {', '.join(model.modalities)})")
    model.to(device)
    records: list[StageRecord] = []
    start = 0
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckdir is not None and resume:
        latest = latest_checkpoint(ckdir)
        if latest is not None:
            state = read_checkpoint(latest)
            check_resumable(state, plan, cfg, latest)
            restore_state(model, state)
            records = [StageRecord(**r) for r in state["records"]]
            start = int(state["stage"])
            log.info("resuming plan %s after stage %d of %d from %s", plan.name, start, len(plan.stages), latest)
    for k in range(start, len(plan.stages)):
        st = plan.stages[k]
        trunk = plan.trunk_before(k)
        replay = _replay(plan, data, k, cfg) if cfg.kd and trunk else None
        trainer = StageTrainer(model, st, cfg, device, trunk=trunk, replay=replay, index=k)
        rec = trainer.run(data[st.source])
        last = rec.losses[-1] if rec.losses else {}
        w = np.array(rec.weights) if rec.weights else np.full((1, 2), np.nan)
        log.info(
            "stage %d/%d %s: %d pairs, %d steps in %.1fs; last epoch %s; mean weights a<-b %.3f b<-a %.3f",
            k + 1, len(plan.stages), st.describe(), len(data[st.source]), rec.steps, rec.seconds, _fmt_terms(last), w[:, 0].mean(), w[:, 1].mean(),
        )
        if progress is not None:
            extra = progress(rec, model)
            if extra:
                rec.metrics.update(jsonable(extra))
        records.append(rec)
        if ckdir is not None:
            save_checkpoint(ckdir / f"stage-{k + 1}.pt", model, plan, k + 1, cfg, records)
    return GrowthResult(model=model, plan=plan, records=records, resumed_from=start)


def _replay(plan: GrowthPlan, data: Mapping[str, PairData], k: int, cfg: GrowthConfig) -> dict[str, torch.Tensor]:
    """A seeded sample of earlier stages' features of each trunk tower other than stage k's connecting one."""
    if cfg.replay == 0:
        return {}
    out = {}
    rng = np.random.default_rng(_stage_seed(cfg.seed, k))
    for m in plan.trunk_before(k):
        if m == plan.stages[k].connecting:
            continue
        chunks = [data[s.source].features[m] for s in plan.stages[:k] if m in s.pair]
        x = np.concatenate(chunks)
        if len(x) > cfg.replay:
            x = x[np.sort(rng.choice(len(x), cfg.replay, replace=False))]
        out[m] = torch.from_numpy(np.ascontiguousarray(x))
    return out
