"""MMBind: pseudo-pairs through a shared modality (or through labels), and the
weighted, mask-aware multi-view contrastive alignment that learns from them.

Everything here works on encoder features (what nodes upload), with the
encoders frozen: only the concept adapters and the prototype network train.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from common.binding import BoundPairs, PairWeighting, bind, bind_both_ways, label_bind
from common.losses import ContrastiveConfig, MultiViewContrastive, objective
from common.samples import SampleSet, scatter
from common.towers import AlignedModel

log = logging.getLogger(__name__)


def sensor_pseudo_pairs(
    shared_a: np.ndarray | torch.Tensor,
    shared_b: np.ndarray | torch.Tensor,
    weighting: PairWeighting,
    k: int = 1,
    device: torch.device | None = None,
) -> BoundPairs:
    """Bind two parties through their shared-modality features, both directions, top-k.

    Pairs below the weighting's threshold are dropped; the rest carry a weight
    in [0, 1] that grows with their similarity.
    """
    a = torch.as_tensor(shared_a, dtype=torch.float32)
    b = torch.as_tensor(shared_b, dtype=torch.float32)
    both = bind_both_ways(a, b, k=k, device=device)
    i, j, s = (np.asarray(v) for v in (both.i, both.j, both.similarity))
    w, keep = weighting.apply(torch.as_tensor(s, dtype=torch.float32))
    keep = np.asarray(keep, dtype=bool)
    return BoundPairs(i[keep], j[keep], s[keep].astype(np.float32), np.asarray(w, dtype=np.float32)[keep])


QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def _quantiles(x: np.ndarray) -> dict[str, float]:
    return {f"q{int(q * 100)}": float(v) for q, v in zip(QUANTILES, np.quantile(x, QUANTILES))} if len(x) else {}


def _accuracy(hit: np.ndarray) -> float:
    return float(hit.mean()) if len(hit) else float("nan")


def bound_pair_report(
    pairs: BoundPairs,
    labels_a: np.ndarray,
    labels_b: np.ndarray,
    n_classes: int,
    shared_a: np.ndarray | torch.Tensor | None = None,
    shared_b: np.ndarray | torch.Tensor | None = None,
) -> dict:
    """What an experimenter (who knows the labels) can say about sensor-bound pairs.

    Pair accuracy overall and per class of the query window, the confusion of
    bound classes (rows: A's class, columns: B's), quantiles of similarity and
    weight, and whether the signals a weight could use say anything: accuracy
    of the more and the less similar half of the pairs and, given the shared
    features, of A's top-1 matches with a wide against a narrow margin over
    their second-best match, and of mutual against one-way nearest neighbours.
    """
    ya, yb = np.asarray(labels_a)[pairs.i], np.asarray(labels_b)[pairs.j]
    hit = ya == yb
    out: dict = {
        "pairs": len(pairs),
        "pair_accuracy": _accuracy(hit),
        "per_class_accuracy": [_accuracy(hit[ya == c]) for c in range(n_classes)],
        "confusion": np.bincount(ya * n_classes + yb, minlength=n_classes * n_classes).reshape(n_classes, n_classes).tolist() if len(pairs) else [],
        "similarity": _quantiles(pairs.similarity),
        "weight": _quantiles(pairs.weight),
    }
    if len(pairs):
        high = pairs.similarity >= np.median(pairs.similarity)
        out["accuracy_by_similarity"] = {"upper_half": _accuracy(hit[high]), "lower_half": _accuracy(hit[~high])}
    if shared_a is not None and shared_b is not None:
        a, b = (torch.as_tensor(x, dtype=torch.float32) for x in (shared_a, shared_b))
        ab, ba = bind(a, b, k=min(2, len(b))), bind(b, a, k=1)
        j = ab.index[:, 0].numpy()
        top1 = np.asarray(labels_a) == np.asarray(labels_b)[j]
        mutual = ba.index[j, 0].numpy() == np.arange(len(a))
        out["top1"] = {"accuracy": _accuracy(top1), "mutual_share": float(mutual.mean()), "accuracy_mutual": _accuracy(top1[mutual]), "accuracy_one_way": _accuracy(top1[~mutual])}
        if ab.similarity.shape[1] == 2:
            margin = (ab.similarity[:, 0] - ab.similarity[:, 1]).numpy()
            wide = margin >= np.median(margin)
            out["top1"]["accuracy_by_margin"] = {"wide_half": _accuracy(top1[wide]), "narrow_half": _accuracy(top1[~wide])}
    return out


def label_pseudo_pairs(labels_a: np.ndarray, labels_b: np.ndarray, max_pairs_per_sample: int, seed: int) -> BoundPairs:
    """Label binding: each labelled A-window with up to ``max_pairs_per_sample`` same-class B-windows."""
    ia, jb = label_bind(labels_a, labels_b, max_pairs_per_sample=max_pairs_per_sample, rng=np.random.default_rng(seed))
    ones = np.ones(len(ia), dtype=np.float32)
    return BoundPairs(np.asarray(ia), np.asarray(jb), ones, ones)


def pseudo_pair_samples(side_a: dict[str, np.ndarray], side_b: dict[str, np.ndarray], pairs: BoundPairs, keep_shared: str | None = None) -> SampleSet:
    """Samples (A_i, B_j[, S_i]) from matched rows of two parties, weighted by the pair weights.

    Modalities present on both sides are taken from side A (the query side)
    only when named as ``keep_shared``; others must be distinct.
    """
    sources, index = {}, {}
    for m, x in side_a.items():
        if m in side_b and m != keep_shared:
            continue
        sources[m], index[m] = x, pairs.i
    for m, x in side_b.items():
        if m in sources:
            continue
        sources[m], index[m] = x, pairs.j
    return SampleSet(sources=sources, index=index, weight=pairs.weight, label=np.full(len(pairs), -1, dtype=np.int64), kind=np.ones(len(pairs), dtype=np.int8))


@dataclass
class AlignConfig(ContrastiveConfig):
    """MMBind's alignment stage: the contrastive settings, which adapters train, logging."""

    train_modalities: list[str] | None = None  # adapters that train; None = all present
    pseudo_share: float = 0.0  # pseudo-pairs' views at most this many per natural sample's view (a seeded draw); 0 = every pair
    log_every: int = 0
    history: list = field(default_factory=list)


def cap_pseudo_pairs(samples: SampleSet, share: float, seed: int = 0) -> SampleSet:
    """Pseudo-pairs (``kind`` 1) holding at most ``share`` views per view of the natural samples, drawn without
    replacement (seeded); 0 = no cap.

    Sensor binding makes a pair for every window of both unlabelled groups, so
    pseudo-pairs can outnumber the natural samples several to one and, at about
    0.7 pair accuracy, drown the real pairs. Views are counted, not samples: a
    pseudo-pair of three streams weighs in the contrastive loss as three views
    against a natural pair's two. The natural samples are all kept, in their
    order; the kept pairs keep theirs.
    """
    if share < 0 or not np.isfinite(share):
        raise ValueError(f"pseudo-pair share must be a finite number >= 0 (0: no cap), got {share}")
    views = np.stack([idx >= 0 for idx in samples.index.values()]).sum(0) if samples.index else np.zeros(len(samples), int)
    pseudo = np.flatnonzero(samples.kind == 1)
    budget = share * float(views[samples.kind == 0].sum())
    if share == 0 or views[pseudo].sum() <= budget:
        return samples
    drawn = np.random.default_rng([seed, 0x5EED]).permutation(pseudo)
    keep = np.sort(drawn[np.cumsum(views[drawn]) <= budget])
    return samples.take(np.sort(np.concatenate([np.flatnonzero(samples.kind != 1), keep])))


def align(model: AlignedModel, samples: SampleSet, cfg: AlignConfig, device: torch.device, seed: int = 0) -> list[dict]:
    """Weighted multi-view contrastive training of adapters + prototype on features.

    Natural samples weigh 1, pseudo-pairs their pair weight (at most
    ``cfg.pseudo_share`` of their views per natural view); a sample's absent
    modalities take no part. Minibatches keep the samples that hold one window
    apart (``SampleSet.spread_order``). Returns the per-epoch loss history.
    """
    if len(samples) == 0:
        raise ValueError("align: no samples")
    samples = cap_pseudo_pairs(samples, cfg.pseudo_share, seed)
    unknown = [m for m in samples.modalities if m not in model.adapters]
    if unknown:
        raise KeyError(f"align: the model has no tower for {unknown}")
    model.to(device)
    trainable_mods = cfg.train_modalities or samples.modalities
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.prototype.parameters())
    for m in trainable_mods:
        params += list(model.adapters[m].parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = MultiViewContrastive(cfg.temperature)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        total, steps = 0.0, 0
        for b in samples.batches(cfg.batch_size, device, rng, drop_last=True):
            emb = model.embed_features(b.inputs)
            full = {m: scatter(z, b.masks[m]) for m, z in emb.items()}
            terms = loss_fn(full, b.masks, b.weight, b.keys)
            opt.zero_grad(set_to_none=True)
            objective(terms).backward()
            opt.step()
            total += float(terms["contrastive_loss"].detach())
            steps += 1
        history.append({"epoch": epoch, "contrastive_loss": total / max(steps, 1)})
        if cfg.log_every and (epoch + 1) % cfg.log_every == 0:
            log.info("    align epoch %d/%d contrastive %.3f", epoch + 1, cfg.epochs, total / max(steps, 1))
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return history

