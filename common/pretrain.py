"""Self-supervised encoder objectives: contrastive views (default) or masked reconstruction.

``pretrain_encoder`` trains one encoder on one party's unlabelled windows; the
federated runtime runs it on every node that holds the modality and FedAvgs
the resulting state dicts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


OBJECTIVES = ("contrastive", "masked")


@dataclass
class PretrainConfig:
    """``contrastive``: two augmented views of a window must find each other
    (SimCLR form); ``masked``: reconstruct the window from a span-masked copy."""

    objective: str = "contrastive"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    mask_ratio: float = 0.5
    span: int = 16  # masked spans are this many samples long
    temperature: float = 0.2

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"pretraining objective must be one of {OBJECTIVES}, got {self.objective!r}")


class ReconstructionHead(nn.Module):
    """Decodes a pooled feature back into the whole (time x channels) window."""

    def __init__(self, feature_dim: int, window: int, channels: int, hidden: int = 256):
        super().__init__()
        self.window, self.channels = window, channels
        self.net = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(), nn.Linear(hidden, window * channels))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).view(-1, self.window, self.channels)


def span_mask(batch: int, window: int, ratio: float, span: int, generator: torch.Generator, device) -> torch.Tensor:
    """Bool (batch, window): True where the input is hidden, in spans of ``span`` samples."""
    n_spans = max(1, window // span)
    keep = torch.rand(batch, n_spans, generator=generator) >= ratio
    return (~keep).repeat_interleave(span, dim=1)[:, :window].to(device)


class ProjectionHead(nn.Module):
    """The SimCLR projection used only by the contrastive objective."""

    def __init__(self, feature_dim: int, hidden: int = 256, out_dim: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def augment(x: torch.Tensor, generator: torch.Generator, span: int = 16) -> torch.Tensor:
    """A random view of inertial windows: per-channel scaling, jitter, a time shift and one masked span.

    No rotation: the direction of gravity tells postures apart.
    """
    b, t, c = x.shape
    dev = x.device
    scale = (0.8 + 0.4 * torch.rand(b, 1, c, generator=generator)).to(dev)
    noise = (0.05 * torch.randn(b, t, c, generator=generator)).to(dev) * x.std(dim=(0, 1), keepdim=True)
    shift = int(torch.randint(-t // 8, t // 8 + 1, (1,), generator=generator))
    out = torch.roll(x * scale + noise, shifts=shift, dims=1)
    start = torch.randint(0, max(1, t - span), (b,), generator=generator).to(dev)
    pos = torch.arange(t, device=dev)[None, :]
    hidden = (pos >= start[:, None]) & (pos < start[:, None] + span)
    return out.masked_fill(hidden.unsqueeze(-1), 0.0)


def contrastive_view_loss(encoder: nn.Module, head: ProjectionHead, x: torch.Tensor, generator: torch.Generator, temperature: float) -> dict[str, torch.Tensor]:
    za = F.normalize(head(encoder(augment(x, generator))), dim=-1)
    zb = F.normalize(head(encoder(augment(x, generator))), dim=-1)
    logits = za @ zb.T / temperature
    target = torch.arange(len(x), device=x.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    return {"contrastive_loss": loss, "view_accuracy": (logits.argmax(1) == target).float().mean()}


def make_pretrain_head(encoder: nn.Module, window: int, channels: int, cfg: PretrainConfig) -> nn.Module:
    """The objective's throw-away head (projection or decoder); FedAvg'd with the encoder."""
    if cfg.objective == "contrastive":
        return ProjectionHead(encoder.out_dim)
    return ReconstructionHead(encoder.out_dim, window, channels)


def masked_reconstruction_loss(encoder: nn.Module, head: ReconstructionHead, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    scale = x.std(dim=(0, 1), keepdim=True).clamp_min(1e-3)
    x_in = x.masked_fill(mask.unsqueeze(-1), 0.0)
    recon = head(encoder(x_in))
    err = ((recon - x) / scale) ** 2
    hidden = mask.unsqueeze(-1).expand_as(err)
    loss = err[hidden].mean() if hidden.any() else err.mean()
    return {"reconstruction_loss": loss, "visible_loss": err[~hidden].mean() if (~hidden).any() else loss.detach()}


def pretrain_encoder(
    encoder: nn.Module,
    windows: np.ndarray,
    cfg: PretrainConfig | None = None,
    device: torch.device | None = None,
    seed: int = 0,
    head: nn.Module | None = None,
) -> dict[str, float]:
    """Train ``encoder`` (in place) on unlabelled ``windows`` (N, T, C) with the configured objective.

    Returns the last epoch's mean loss terms. ``head`` lets a caller keep the
    objective's head across federated rounds; by default a new one is made.
    """
    cfg = cfg or PretrainConfig()
    device = device or torch.device("cpu")
    if windows.ndim != 3 or len(windows) == 0:
        raise ValueError(f"pretrain_encoder needs windows (N, time, channels) with N > 0, got shape {windows.shape}")
    if not np.isfinite(windows).all():
        raise ValueError("pretrain_encoder: windows contain NaN or Inf")
    n, t, c = windows.shape
    head = head or make_pretrain_head(encoder, t, c, cfg)
    encoder.to(device).train()
    head.to(device).train()
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
    last: dict[str, float] = {}
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        sums: dict[str, float] = {}
        steps = 0
        for i in range(0, n, cfg.batch_size):
            x = data[order[i : i + cfg.batch_size]].to(device)
            if cfg.objective == "contrastive":
                if len(x) < 2:
                    continue  # one window has no negatives
                terms = contrastive_view_loss(encoder, head, x, gen, cfg.temperature)
            else:
                terms = masked_reconstruction_loss(encoder, head, x, span_mask(len(x), t, cfg.mask_ratio, cfg.span, gen, device))
            loss = terms["contrastive_loss" if cfg.objective == "contrastive" else "reconstruction_loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            steps += 1
        last = {k: v / max(steps, 1) for k, v in sums.items()}
        log.debug("pretrain epoch %d/%d %s", epoch + 1, cfg.epochs, last)
    encoder.eval()
    return last


@torch.no_grad()
def embed_windows(encoder: nn.Module, windows: np.ndarray, device: torch.device | None = None, batch_size: int = 512) -> torch.Tensor:
    """Encoder features for every window, computed in batches, returned on the CPU."""
    device = device or torch.device("cpu")
    encoder.to(device).eval()
    out = [encoder(torch.from_numpy(np.ascontiguousarray(windows[i : i + batch_size])).to(device)).cpu() for i in range(0, len(windows), batch_size)]
    return torch.cat(out) if out else torch.empty(0, encoder.out_dim)


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
