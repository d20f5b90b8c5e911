"""Self-supervised encoder objective: masked reconstruction.

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


@dataclass
class PretrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    mask_ratio: float = 0.5
    span: int = 16  # masked spans are this many samples long


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
    head: ReconstructionHead | None = None,
) -> dict[str, float]:
    """Train ``encoder`` (in place) by masked reconstruction of ``windows`` (N, T, C).

    Returns the last epoch's mean loss terms. ``head`` lets a caller keep the
    decoder across federated rounds; by default a new one is made.
    """
    cfg = cfg or PretrainConfig()
    device = device or torch.device("cpu")
    if windows.ndim != 3 or len(windows) == 0:
        raise ValueError(f"pretrain_encoder needs windows (N, time, channels) with N > 0, got shape {windows.shape}")
    if not np.isfinite(windows).all():
        raise ValueError("pretrain_encoder: windows contain NaN or Inf")
    n, t, c = windows.shape
    head = head or ReconstructionHead(encoder.out_dim, t, c)
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
            mask = span_mask(len(x), t, cfg.mask_ratio, cfg.span, gen, device)
            terms = masked_reconstruction_loss(encoder, head, x, mask)
            opt.zero_grad(set_to_none=True)
            terms["reconstruction_loss"].backward()
            opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            steps += 1
        last = {k: v / steps for k, v in sums.items()}
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
