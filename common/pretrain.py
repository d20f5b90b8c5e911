"""Self-supervised encoder objectives: contrastive views (default) or masked reconstruction.

``pretrain_encoder`` trains one encoder on one party's unlabelled windows; the
federated runtime runs it on every node that holds the modality and FedAvgs
the resulting state dicts.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.losses import objective
from common.progress import Progress

log = logging.getLogger(__name__)


OBJECTIVES = ("contrastive", "masked", "cross-modal")


@dataclass
class AugmentConfig:
    """Per-window augmentations for inertial data (CL-HAR's best pairs: permutation, rotation, warp with jitter and scaling)."""

    scale: float = 0.2  # each channel's deviation from its mean scaled by 1 +- this
    jitter: float = 0.1  # Gaussian noise, relative to each window's own per-channel std
    rotate_deg: float = 15.0  # largest angle of a random 3-D rotation of each triaxial stream
    warp: float = 0.2  # local speed varies by +- this (smooth time-warp)
    segments: int = 4  # windows cut into this many segments and shuffled
    p: float = 0.5  # probability of each of rotation, warp and shuffle


@dataclass
class PretrainConfig:
    """``contrastive``: two augmented views of a window must find each other
    (SimCLR form); ``masked``: spans of the sequence hidden and rebuilt per
    time step from the rest (LIMU-BERT form); ``cross-modal``: the views of
    each stream, and also the streams a party holds together, find each other
    (CMC / CLIP: two streams of one window are a free positive pair; see
    ``pretrain_jointly``). The learning rate follows a cosine from ``lr`` down
    to ``lr * min_lr_ratio`` over the call's steps."""

    objective: str = "contrastive"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    min_lr_ratio: float = 0.05
    warmup: float = 0.05  # share of the steps with a linear warm-up
    mask_ratio: float = 0.15
    span: int = 10  # masked spans are 1..span samples long
    temperature: float = 0.2
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"pretraining objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.epochs < 0 or self.batch_size < 2 or not self.lr > 0:
            raise ValueError(f"pretraining needs epochs >= 0, batch_size >= 2 and lr > 0, got {self.epochs}, {self.batch_size}, {self.lr}")


class SequenceDecoder(nn.Module):
    """Rebuilds each time step of a window from the encoder's feature sequence (LIMU-BERT's per-step decoder)."""

    def __init__(self, feature_dim: int, window: int, channels: int, hidden: int = 128):
        super().__init__()
        self.window, self.channels = window, channels
        self.net = nn.Sequential(nn.Conv1d(feature_dim, hidden, 3, padding=1), nn.GELU(), nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU(), nn.Conv1d(hidden, channels, 1))

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(batch, features, steps) -> (batch, window, channels), upsampled to the window's length."""
        up = F.interpolate(seq, size=self.window, mode="linear", align_corners=False)
        return self.net(up).transpose(1, 2)


def span_mask(batch: int, window: int, ratio: float, span: int, generator: torch.Generator, device) -> torch.Tensor:
    """Bool (batch, window): True where the input is hidden, in spans of 1..``span`` samples covering about ``ratio``."""
    mask = torch.zeros(batch, window, dtype=torch.bool)
    target = max(1, int(round(ratio * window)))
    lengths = torch.randint(1, span + 1, (batch, window), generator=generator)
    starts = torch.randint(0, window, (batch, window), generator=generator)
    pos = torch.arange(window)
    for k in range(window):  # add spans until each row has about ``target`` hidden samples
        need = mask.sum(1) < target
        if not need.any():
            break
        s, n = starts[:, k : k + 1], lengths[:, k : k + 1]
        mask |= need[:, None] & (pos[None, :] >= s) & (pos[None, :] < s + n)
    return mask.to(device)


class ProjectionHead(nn.Module):
    """The SimCLR projection used only by the contrastive objective."""

    def __init__(self, feature_dim: int, hidden: int = 256, out_dim: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def random_rotations(n: int, max_deg: float, generator: torch.Generator) -> torch.Tensor:
    """(n, 3, 3) rotations about random axes by angles up to ``max_deg`` (Rodrigues' formula)."""
    axis = F.normalize(torch.randn(n, 3, generator=generator), dim=-1)
    angle = torch.deg2rad(max_deg * (2 * torch.rand(n, generator=generator) - 1))
    k = torch.zeros(n, 3, 3)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(1, 2)
    s, c = angle.sin()[:, None, None], angle.cos()[:, None, None]
    return torch.eye(3).expand(n, 3, 3) + s * k + (1 - c) * (k @ k)


def time_warp(x: torch.Tensor, strength: float, generator: torch.Generator, knots: int = 4) -> torch.Tensor:
    """Resample each window along a smooth random time axis (local speed 1 +- ``strength``)."""
    b, t, c = x.shape
    speed = 1.0 + strength * (2 * torch.rand(b, 1, knots, generator=generator) - 1)
    speed = F.interpolate(speed, size=t, mode="linear", align_corners=True)[:, 0].to(x.device)
    pos = torch.cumsum(speed, dim=1)
    pos = (pos - pos[:, :1]) / (pos[:, -1:] - pos[:, :1]).clamp_min(1e-6) * (t - 1)
    lo = pos.floor().long().clamp(0, t - 1)
    hi = (lo + 1).clamp(max=t - 1)
    frac = (pos - lo).unsqueeze(-1)
    take = lambda i: torch.gather(x, 1, i.unsqueeze(-1).expand(b, t, c))  # noqa: E731
    return take(lo) * (1 - frac) + take(hi) * frac


def permute_segments(x: torch.Tensor, segments: int, generator: torch.Generator) -> torch.Tensor:
    """Cut each window into ``segments`` equal parts and shuffle them (one order per window)."""
    b, t, c = x.shape
    seg = t // segments
    if seg == 0:
        return x
    order = torch.argsort(torch.rand(b, segments, generator=generator), dim=1)
    idx = (order[:, :, None] * seg + torch.arange(seg)[None, None, :]).reshape(b, -1)
    idx = torch.cat([idx, torch.arange(segments * seg, t).expand(b, -1)], dim=1).to(x.device)
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(b, t, c))


def augment(x: torch.Tensor, generator: torch.Generator, cfg: AugmentConfig | None = None) -> torch.Tensor:
    """A random view of inertial windows (batch, time, channels), drawn per window.

    Scaling and jitter are relative to each window's own signal, so a static
    window is not drowned in the batch's noise; a smooth time-warp, a shuffle of
    a few segments and a small 3-D rotation (triaxial streams) each apply with
    probability ``cfg.p``. Nothing is zero-filled: a stream with a DC offset
    (gravity) gets no artificial step.
    """
    cfg = cfg or AugmentConfig()
    b, t, c = x.shape
    dev = x.device
    draw = lambda *shape: torch.rand(*shape, generator=generator).to(dev)  # noqa: E731
    out = x
    if cfg.rotate_deg > 0 and c % 3 == 0:
        rot = random_rotations(b, cfg.rotate_deg, generator).to(dev)
        use = draw(b) < cfg.p
        rotated = torch.cat([out[..., k : k + 3] @ rot.transpose(1, 2) for k in range(0, c, 3)], dim=-1)
        out = torch.where(use[:, None, None], rotated, out)
    if cfg.warp > 0:
        use = draw(b) < cfg.p
        out = torch.where(use[:, None, None], time_warp(out, cfg.warp, generator), out)
    if cfg.segments > 1:
        use = draw(b) < cfg.p
        out = torch.where(use[:, None, None], permute_segments(out, cfg.segments, generator), out)
    scale = 1.0 + cfg.scale * (2 * draw(b, 1, c) - 1)
    centre = out.mean(dim=1, keepdim=True)
    spread = out.std(dim=1, keepdim=True).clamp_min(1e-3)
    noise = cfg.jitter * spread * torch.randn(b, t, c, generator=generator).to(dev)
    return centre + (out - centre) * scale + noise


def contrastive_view_loss(encoder: nn.Module, head: ProjectionHead, x: torch.Tensor, generator: torch.Generator, temperature: float, aug: AugmentConfig | None = None) -> dict[str, torch.Tensor]:
    za = F.normalize(head(encoder(augment(x, generator, aug))), dim=-1)
    zb = F.normalize(head(encoder(augment(x, generator, aug))), dim=-1)
    logits = za @ zb.T / temperature
    target = torch.arange(len(x), device=x.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    return {"contrastive_loss": loss, "view_accuracy": (logits.argmax(1) == target).float().mean()}


def cross_modal_loss(
    encoders: dict[str, nn.Module], heads: dict[str, ProjectionHead], x: dict[str, torch.Tensor], generator: torch.Generator, temperature: float, aug: AugmentConfig | None = None
) -> dict[str, torch.Tensor]:
    """Each stream's two views find each other, and every two streams of one window find each other.

    ``x`` holds the same windows (rows) in every modality. The terms are the
    mean view loss over streams and the mean symmetric InfoNCE over pairs of streams;
    the objective is their sum (``common.losses.objective``).
    """
    mods = sorted(x)
    z = {m: [F.normalize(heads[m](encoders[m](augment(x[m], generator, aug))), dim=-1) for _ in range(2)] for m in mods}
    target = torch.arange(len(next(iter(x.values()))), device=next(iter(x.values())).device)

    def nce(a, b):
        logits = a @ b.T / temperature
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2, (logits.argmax(1) == target).float().mean()

    views = [nce(*z[m]) for m in mods]
    pairs = [nce(z[a][0], z[b][1]) for i, a in enumerate(mods) for b in mods[i + 1 :]]
    out = {"view_loss": torch.stack([v[0] for v in views]).mean(), "view_accuracy": torch.stack([v[1] for v in views]).mean()}
    if pairs:
        out["cross_loss"] = torch.stack([p[0] for p in pairs]).mean()
        out["cross_accuracy"] = torch.stack([p[1] for p in pairs]).mean()
    return out


def pretrain_jointly(
    encoders: dict[str, nn.Module],
    parties: list[dict[str, np.ndarray]],
    cfg: PretrainConfig | None = None,
    device: torch.device | None = None,
    seed: int = 0,
    heads: dict[str, nn.Module] | None = None,
    progress: str = "",
) -> dict[str, float]:
    """Cross-modal pretraining of several encoders (in place) on parties that each hold some streams together.

    A party is ``{modality: windows}`` with the same rows in every modality (a
    node's own recordings). Steps draw a batch from one party at a time, in a
    shuffled order over all parties, and train that party's streams: their
    views, and each pair of them (``cross_modal_loss``). With one party this is
    what a node runs in a federated round; the coordinator FedAvgs each
    encoder over the nodes that hold it. Returns the last epoch's mean terms.
    ``progress`` names the step in a progress display (none when empty).
    """
    cfg = cfg or PretrainConfig(objective="cross-modal")
    device = device or torch.device("cpu")
    parties = [p for p in parties if p and len(next(iter(p.values())))]
    if not parties:
        raise ValueError("pretrain_jointly needs at least one party with windows")
    for k, p in enumerate(parties):
        unknown = sorted(set(p) - set(encoders))
        if unknown:
            raise KeyError(f"party {k} holds {unknown[0]!r}, which has no encoder here")
        sizes = {m: len(x) for m, x in p.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"party {k}: its streams must hold the same windows, got {sizes}")
        for m, x in p.items():
            if x.ndim != 3 or not np.isfinite(x).all():
                raise ValueError(f"party {k}: windows of {m!r} must be finite (N, time, channels), got shape {x.shape}")
    heads = heads if heads is not None else {}
    for m, enc in encoders.items():
        heads.setdefault(m, ProjectionHead(enc.out_dim))
        enc.to(device).train()
        heads[m].to(device).train()
    used = sorted({m for p in parties for m in p})
    params = [q for m in used for q in list(encoders[m].parameters()) + list(heads[m].parameters())]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    data = [{m: torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for m, x in p.items()} for p in parties]
    sizes = [len(next(iter(p.values()))) for p in data]
    steps_per_epoch = sum(math.ceil(n / cfg.batch_size) for n in sizes)
    sched = cosine_schedule(opt, cfg.epochs * steps_per_epoch, cfg.warmup, cfg.min_lr_ratio)
    gen = torch.Generator().manual_seed(seed)
    last: dict[str, float] = {}
    shown = Progress(cfg.epochs, progress, unit="epoch") if progress else None
    for epoch in range(cfg.epochs):
        plan = [(k, order[i : i + cfg.batch_size]) for k, n in enumerate(sizes) for order in [torch.randperm(n, generator=gen)] for i in range(0, n, cfg.batch_size)]
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for j in torch.randperm(len(plan), generator=gen).tolist():
            k, rows = plan[j]
            if len(rows) < 2:
                continue  # one window has no negatives
            terms = cross_modal_loss(encoders, heads, {m: x[rows].to(device) for m, x in data[k].items()}, gen, cfg.temperature, cfg.augment)
            loss = objective(terms)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for name, v in {**terms, "total": loss}.items():
                sums[name] = sums.get(name, 0.0) + float(v.detach())
                counts[name] = counts.get(name, 0) + 1
        last = {name: v / counts[name] for name, v in sums.items()}
        log.debug("joint pretrain epoch %d/%d %s", epoch + 1, cfg.epochs, last)
        if shown:
            shown.update(loss=last.get("total", 0.0))
    if shown:
        shown.close()
    for enc in encoders.values():
        enc.eval()
    return last


def make_pretrain_head(encoder: nn.Module, window: int, channels: int, cfg: PretrainConfig) -> nn.Module:
    """The objective's throw-away head (projection or decoder); FedAvg'd with the encoder."""
    if cfg.objective in ("contrastive", "cross-modal"):
        return ProjectionHead(encoder.out_dim)
    return SequenceDecoder(encoder.out_dim, window, channels)


def masked_reconstruction_loss(encoder: nn.Module, head: SequenceDecoder, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Hide spans (filled with the window's own mean, so a stream with a DC offset gets no step) and rebuild them per time step."""
    scale = x.std(dim=(0, 1), keepdim=True).clamp_min(1e-3)
    fill = x.mean(dim=1, keepdim=True).expand_as(x)
    x_in = torch.where(mask.unsqueeze(-1), fill, x)
    recon = head(encoder.sequence(x_in))
    err = ((recon - x) / scale) ** 2
    hidden = mask.unsqueeze(-1).expand_as(err)
    loss = err[hidden].mean() if hidden.any() else err.mean()
    return {"reconstruction_loss": loss, "visible_error": err[~hidden].mean().detach() if (~hidden).any() else loss.detach()}


def cosine_schedule(opt: torch.optim.Optimizer, total_steps: int, warmup: float, min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then a cosine down to ``min_ratio`` of the base learning rate."""
    warm = max(1, int(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def pretrain_encoder(
    encoder: nn.Module,
    windows: np.ndarray,
    cfg: PretrainConfig | None = None,
    device: torch.device | None = None,
    seed: int = 0,
    head: nn.Module | None = None,
    progress: str = "",
) -> dict[str, float]:
    """Train ``encoder`` (in place) on unlabelled ``windows`` (N, T, C) with the configured objective.

    Returns the last epoch's mean loss terms. ``head`` lets a caller keep the
    objective's head across federated rounds; by default a new one is made.
    ``progress`` names the step in a progress display (none when empty: a node's rounds show none).
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
    sched = cosine_schedule(opt, cfg.epochs * math.ceil(n / cfg.batch_size), cfg.warmup, cfg.min_lr_ratio)
    gen = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
    last: dict[str, float] = {}
    shown = Progress(cfg.epochs, progress, unit="epoch") if progress else None
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        sums: dict[str, float] = {}
        steps = 0
        for i in range(0, n, cfg.batch_size):
            x = data[order[i : i + cfg.batch_size]].to(device)
            if cfg.objective in ("contrastive", "cross-modal"):  # one stream alone: cross-modal is its view loss
                if len(x) < 2:
                    continue  # one window has no negatives
                terms = contrastive_view_loss(encoder, head, x, gen, cfg.temperature, cfg.augment)
            else:
                terms = masked_reconstruction_loss(encoder, head, x, span_mask(len(x), t, cfg.mask_ratio, cfg.span, gen, device))
            loss = objective(terms)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for k, v in {**terms, "total": loss}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            steps += 1
        last = {k: v / max(steps, 1) for k, v in sums.items()}
        log.debug("pretrain epoch %d/%d %s", epoch + 1, cfg.epochs, last)
        if shown:
            shown.update(loss=next(iter(last.values()), 0.0))
    if shown:
        shown.close()
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
