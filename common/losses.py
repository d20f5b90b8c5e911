"""Contrastive losses. Each returns a dict of named ``*_loss`` terms (and
diagnostics) so a trainer can log every term and a new loss never touches the
training loop.

The convention is open_clip's: a key ends in ``_loss`` only if it is a term of
the objective, so the objective is always the sum of the ``*_loss`` terms
(``objective``); a diagnostic (one direction of a symmetric loss, an unweighted
distance, a running total) is named without the suffix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def objective(terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """What a trainer backpropagates: the sum of the ``*_loss`` terms, in their order."""
    parts = [v for k, v in terms.items() if k.endswith("_loss")]
    if not parts:
        raise ValueError(f"objective: no *_loss term among {sorted(terms)}")
    return sum(parts[1:], parts[0])


def symmetric_info_nce(a, b, temperature: float = 0.07, weights=None) -> dict[str, torch.Tensor]:
    """The symmetric InfoNCE (``contrastive_loss``) and its two directions (``a_from_b``, ``b_from_a``: diagnostics, not summed)."""
    l_ab = info_nce(a, b, temperature, weights)
    l_ba = info_nce(b, a, temperature, weights)
    return {"a_from_b": l_ab, "b_from_a": l_ba, "contrastive_loss": (l_ab + l_ba) / 2}


class MultiViewContrastive(nn.Module):
    """Mask-aware, weighted multi-view InfoNCE (SupCon form) over incomplete samples.

    Every sample carries some modalities; its present modalities are positives
    of each other, all views of other samples in the batch are negatives, and
    absent modalities take no part at all (they are neither zero-filled nor
    counted). Each sample's loss is multiplied by its pair weight.

    Positives are by window, not by row, when ``keys`` (modality -> an id per
    present window, ``Batch.keys``) are given: a window that several samples of
    the batch hold (one gallery window bound to several queries, or a window in
    both a natural sample and a pseudo-pair) is a positive of every view of
    those samples, never a negative, and an anchor's own copies take no part.
    """

    def __init__(self, temperature: float = 0.07):
        super().__init__()
        self.temperature = temperature

    def forward(
        self,
        embeddings: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        weights: torch.Tensor | None = None,
        keys: dict[str, torch.Tensor] | None = None,
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
        pos = own[:, None] == own[None, :]
        if keys:
            # (modality, window key) of each present view, in z's order; a modality without keys: all distinct
            mod = torch.cat([torch.full((int(masks[m].sum()),), i, device=device) for i, m in enumerate(mods)])
            key = torch.cat([keys[m].to(device).long() if m in keys else -1 - torch.arange(int(masks[m].sum()), device=device) for m in mods])
            same = (mod[:, None] == mod[None, :]) & (key[:, None] == key[None, :])  # one window, held by one or several samples
            holds = torch.zeros(batch, n, dtype=torch.bool, device=device)
            holds[own[:, None].expand(n, n)[same], torch.arange(n, device=device)[None, :].expand(n, n)[same]] = True
            pos = holds[own]  # j's window is one that i's sample holds (a copy held by another row included)
            eye = same  # the anchor and its own copies take no part
        logits = logits.masked_fill(eye, float("-inf"))
        pos = pos & ~eye
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


# --- Babel's adaptive weights ---------------------------------------------------------------


def adaptive_weights(
    l_ab: torch.Tensor,
    l_ba: torch.Tensor,
    params: Sequence[torch.Tensor],
    extra_params: Sequence[torch.Tensor] = (),
    retain_graph: bool = False,
    eps: float = 1e-12,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Babel's per-batch direction weights, w = 1/||dL/d(adapter params)||, normalised to sum to 1.

    Each direction is differentiated once, with ``torch.autograd.grad`` (no
    ``.grad`` is touched), with respect to ``params`` (the two towers'
    adapters: the norm set) and ``extra_params`` (e.g. the prototype). The
    returned gradients, in the order params + extra_params, are what the
    update is formed from (``combine``), so no further backward pass is needed.
    A direction whose gradient norm is zero or non-finite gives equal weights.
    """
    params, extra = list(params), list(extra_params)
    both = params + extra
    g_ab = grads_of(l_ab, both, retain_graph=True)
    g_ba = grads_of(l_ba, both, retain_graph=retain_graph)
    n_ab = _norm(g_ab[: len(params)])
    n_ba = _norm(g_ba[: len(params)])
    ok = torch.isfinite(n_ab) & torch.isfinite(n_ba) & (n_ab > eps) & (n_ba > eps)
    # 1/n_ab / (1/n_ab + 1/n_ba) = n_ba / (n_ab + n_ba)
    w_ab = torch.where(ok, n_ba / (n_ab + n_ba).clamp_min(eps), torch.full_like(n_ab, 0.5))
    return w_ab, 1.0 - w_ab, g_ab, g_ba


def combine(w_ab: torch.Tensor, w_ba: torch.Tensor, g_ab: Sequence[torch.Tensor], g_ba: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The gradient of L = (w_ab L_a<-b + w_ba L_b<-a) / 2 from the two directions' gradients."""
    return [(w_ab * a + w_ba * b) / 2 for a, b in zip(g_ab, g_ba)]


def grads_of(loss: torch.Tensor, params: list[torch.Tensor], retain_graph: bool) -> tuple[torch.Tensor, ...]:
    gs = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, gs))


def _norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    if not grads:
        raise ValueError("adaptive_weights: the norm set (adapter parameters) is empty")
    return torch.sqrt(sum((g.detach().float() ** 2).sum() for g in grads))


# --- EMA and distillation (Babel) ---------------------------------------------------------------


@torch.no_grad()
def ema_update(ema: nn.Module, online: nn.Module, momentum: float) -> None:
    """ema <- momentum * ema + (1 - momentum) * online, parameter by parameter."""
    for e, o in zip(ema.parameters(), online.parameters()):
        e.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
    for e, o in zip(ema.buffers(), online.buffers()):
        e.copy_(o)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance between the current and the frozen previous-stage embeddings."""
    return (1.0 - F.cosine_similarity(student, teacher.detach(), dim=-1)).mean()
