"""Contrastive losses. Each returns a dict of named ``*_loss`` terms (and
diagnostics) so a trainer can log every term and a new loss never touches the
training loop."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ContrastiveConfig:
    """What every contrastive training run over features takes: MMBind's alignment and each Babel growth stage alike."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1

    def contrastive(self) -> dict:
        """These settings alone, to build another kind of run on them (``GrowthConfig(**cfg.contrastive())``)."""
        return {f.name: getattr(self, f.name) for f in fields(ContrastiveConfig)}


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.07, weights: torch.Tensor | None = None) -> torch.Tensor:
    """L_{a<-b}: each row of ``a`` must pick its own row of ``b`` among all rows of ``b``.

    Inputs are L2-normalised embeddings of the same batch; ``weights`` (per
    row, in [0, 1]) scale each row's loss (pair weights from binding).
    """
    if a.shape != b.shape:
        raise ValueError(f"info_nce needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=a.device)
    per_row = F.cross_entropy(logits, target, reduction="none")
    if weights is None:
        return per_row.mean()
    return (per_row * weights).sum() / weights.sum().clamp_min(1e-8)


def symmetric_info_nce(a, b, temperature: float = 0.07, weights=None) -> dict[str, torch.Tensor]:
    l_ab = info_nce(a, b, temperature, weights)
    l_ba = info_nce(b, a, temperature, weights)
    return {"a_from_b_loss": l_ab, "b_from_a_loss": l_ba, "contrastive_loss": (l_ab + l_ba) / 2}


class MultiViewContrastive(nn.Module):
    """Mask-aware, weighted multi-view InfoNCE (SupCon form) over incomplete samples.

    Every sample carries some modalities; its present modalities are positives
    of each other, all views of other samples in the batch are negatives, and
    absent modalities take no part at all (they are neither zero-filled nor
    counted). Each sample's loss is multiplied by its pair weight.
    """

    def __init__(self, temperature: float = 0.07):
        super().__init__()
        self.temperature = temperature

    def forward(
        self,
        embeddings: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        weights: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        mods = sorted(embeddings)
        batch = next(iter(embeddings.values())).shape[0]
        device = next(iter(embeddings.values())).device
        z = torch.cat([embeddings[m] for m in mods])  # (M*B, d)
        present = torch.cat([masks[m].bool() for m in mods])  # (M*B,)
        owner = torch.arange(batch, device=device).repeat(len(mods))
        zi = z[present]
        own = owner[present]
        n = len(zi)
        logits = zi @ zi.T / self.temperature
        eye = torch.eye(n, dtype=torch.bool, device=device)
        logits = logits.masked_fill(eye, float("-inf"))
        pos = (own[:, None] == own[None, :]) & ~eye
        has_pos = pos.any(1)
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        mean_pos = (log_prob.masked_fill(~pos, 0.0)).sum(1) / pos.sum(1).clamp_min(1)
        view_loss = -mean_pos[has_pos]
        w = torch.ones(batch, device=device) if weights is None else weights.to(device)
        vw = w[own][has_pos]
        if vw.sum() <= 0:
            loss = z.sum() * 0.0
        else:
            loss = (view_loss * vw).sum() / vw.sum()
        return {"contrastive_loss": loss, "views": torch.tensor(float(has_pos.sum()), device=device)}
