"""Pieces both experiments share: encoder pretraining, features, seeds, summaries, output."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.data.dataset import WindowDataset
from common.pretrain import PretrainConfig, embed_windows, pretrain_encoder
from common.towers import TowerConfig, build_encoder

log = logging.getLogger("edgebind")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Encoders:
    """Frozen, self-supervised encoders per modality and the features they give."""

    modules: dict[str, torch.nn.Module]

    def features(self, ds: WindowDataset, rows: np.ndarray, modalities: list[str], device: torch.device) -> dict[str, np.ndarray]:
        return {m: embed_windows(self.modules[m], ds.X[m][rows], device).numpy() for m in modalities}


def pretrain_encoders(
    ds: WindowDataset,
    rows_by_modality: dict[str, np.ndarray],
    tower: TowerConfig,
    cfg: PretrainConfig,
    device: torch.device,
    seed: int,
) -> Encoders:
    """One encoder per modality, trained by masked reconstruction on the given (unlabelled) rows."""
    modules = {}
    for k, (m, rows) in enumerate(sorted(rows_by_modality.items())):
        if len(rows) == 0:
            raise ValueError(f"no windows of {m!r} to pretrain its encoder on")
        torch.manual_seed(seed * 1000 + k)
        enc = build_encoder(ds.spec(m), tower)
        t0 = time.time()
        terms = pretrain_encoder(enc, ds.X[m][rows], cfg, device, seed=seed * 1000 + k)
        loss = ", ".join(f"{k} {v:.3f}" for k, v in terms.items())
        log.info("  encoder %-8s pretrained on %5d windows in %4.1fs (%s)", m, len(rows), time.time() - t0, loss)
        for p in enc.parameters():
            p.requires_grad_(False)
        modules[m] = enc.eval()
    return Encoders(modules)


def mean_std(values: list[float]) -> dict[str, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    arr = np.array(vals, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": len(arr)}


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default))
    tmp.replace(path)
    return path


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def fmt(ms: dict[str, float]) -> str:
    return f"{ms['mean']:.3f} ± {ms['std']:.3f}"
