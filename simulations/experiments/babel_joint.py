"""The joint reference of the Babel experiment: one stage-free training on natural multi-modal samples, and the
choice of its temperature and schedule on validation subjects.

Issue 10 asks why joint training on natural triples is not the best aligner. With ``joint_temperatures`` and
``joint_epochs`` (``--joint-temperatures 0.07,0.2,0.5 --joint-epochs 15,45``) the experiment trains the joint
reference once per temperature for the longest schedule, scores the model after each candidate number of epochs
on the validation group's features (the distillation weight's criterion: mean validation label@1 over every pair),
and runs the test-subject variant with the best (epochs, temperature) over seeds. The learning rate is constant,
so the model after e epochs of the longest run is the one a run of e epochs gives.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from common.crossmodal import modality_gaps
from common.evaluate import embed, pairs, retrieval_recall
from common.growth import GrowthConfig
from common.losses import MultiViewContrastive
from common.towers import AlignedModel

log = logging.getLogger("edgebind")

JOINT_CRITERION = ("mean over every pair of modalities of validation label@1 retrieval of the joint model (as for the distillation weight); "
                   "validation subjects only")


def joint_align(model: AlignedModel, feats: dict[str, np.ndarray], cfg: GrowthConfig, epochs: int, device: torch.device,
                after_epoch: Callable[[int, AlignedModel], None] | None = None) -> list[float]:
    """The stage-free reference: adapters and prototype trained at once on natural multi-modal samples.

    ``after_epoch(e, model)`` is called after epoch e (1-based), e.g. to score the model on validation.
    """
    loss_fn = MultiViewContrastive(cfg.temperature)
    params = list(model.adapters.parameters()) + list(model.prototype.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    x = {m: torch.from_numpy(v).to(device) for m, v in feats.items()}
    n = len(next(iter(x.values())))
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    model.to(device)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=gen).to(device)
        total, steps = 0.0, 0
        for i in range(0, n, cfg.batch_size):
            rows = order[i : i + cfg.batch_size]
            if len(rows) < min(cfg.min_batch, n):
                continue
            z = model.embed_features({m: v[rows] for m, v in x.items()})
            masks = {m: torch.ones(len(rows), dtype=torch.bool, device=device) for m in z}
            loss = loss_fn(z, masks)["contrastive_loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
        losses.append(total / max(steps, 1))
        if after_epoch is not None:
            after_epoch(epoch, model)
    model.eval()
    return losses


def retrieval_all(model: AlignedModel, feats: dict[str, np.ndarray], mods: list[str], labels: np.ndarray | None = None) -> dict[str, dict]:
    return {f"{a}-{b}": retrieval_recall(model, {a: feats[a]}, {b: feats[b]}, labels=labels) for a, b in pairs(mods)}


def joint_candidates(init: AlignedModel, natural: dict[str, np.ndarray], val_feats: dict[str, np.ndarray], val_y: np.ndarray,
                     temperatures: Sequence[float], epochs: Sequence[int], cfg: GrowthConfig, device: torch.device) -> dict[tuple[int, float], dict]:
    """Validation figures of the joint reference per (epochs, temperature): ``score`` (the criterion), ``retrieval`` and ``modality_gap``.

    Reads the validation group's features and labels and nothing of the test group.
    """
    mods = sorted(val_feats)
    out: dict[tuple[int, float], dict] = {}
    for t in temperatures:
        model = copy.deepcopy(init)

        def after_epoch(e: int, m: AlignedModel, t=t) -> None:
            if e in epochs:
                retr = {k: {q: v[q] for q in ("R@1", "R@5", "label@1")} for k, v in retrieval_all(m, val_feats, mods, val_y).items()}
                gaps = {k: g["gap"] for k, g in modality_gaps(embed(m, val_feats)).items()}
                out[(e, float(t))] = {"score": float(np.mean([v["label@1"] for v in retr.values()])), "retrieval": retr, "modality_gap": gaps}
                log.info("  joint temperature %-6g %3d epochs: validation mean label@1 over pairs %.4f, mean modality gap %.2f",
                         t, e, out[(e, float(t))]["score"], np.mean(list(gaps.values())))

        joint_align(model, natural, replace(cfg, temperature=float(t)), max(epochs), device, after_epoch=after_epoch)
    return out


def check_joint_grid(temperatures: Sequence[float] | None, epochs: Sequence[int] | None) -> tuple[list[float], list[int]] | None:
    """Both candidate lists, sorted and without repeats, or None when neither is given; bad values raise naming them."""
    if temperatures is None and epochs is None:
        return None
    if not temperatures or not epochs:
        raise ValueError(f"the joint reference's choice needs candidate temperatures and epochs both, got {temperatures} and {epochs}")
    ts, es = sorted({float(t) for t in temperatures}), sorted({int(e) for e in epochs})
    if any(not np.isfinite(t) or t <= 0 for t in ts) or any(int(e) != e or e < 1 for e in epochs):
        raise ValueError(f"joint temperatures must be finite and > 0, joint epochs whole numbers >= 1; got {list(temperatures)} and {list(epochs)}")
    return ts, es
