"""Pieces both experiments share: encoder pretraining, features, seeds, summaries, output."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.data.dataset import WindowDataset
from common.pretrain import PretrainConfig, embed_windows, pretrain_encoder, pretrain_jointly
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
    parties: list[tuple[list[str], np.ndarray]] | None = None,
) -> Encoders:
    """One encoder per modality, trained by the configured self-supervised objective on unlabelled rows.

    With the ``cross-modal`` objective, ``parties`` (modalities held together,
    and their rows: one per node group) train the encoders jointly, each pair
    of streams a party holds being a free positive pair; a modality no party
    holds is trained on its own rows from ``rows_by_modality``.
    """
    modules = {}
    for k, (m, rows) in enumerate(sorted(rows_by_modality.items())):
        if len(rows) == 0:
            raise ValueError(f"no windows of {m!r} to pretrain its encoder on")
        torch.manual_seed(seed * 1000 + k)
        modules[m] = build_encoder(ds.spec(m), tower)
    if cfg.objective == "cross-modal" and parties:
        held = {m for mods, _ in parties for m in mods}
        groups = [{m: ds.X[m][rows] for m in mods} for mods, rows in parties]
        groups += [{m: ds.X[m][rows]} for m, rows in sorted(rows_by_modality.items()) if m not in held]
        t0 = time.time()
        terms = pretrain_jointly(modules, groups, cfg, device, seed=seed * 1000, progress="cross-modal pretraining")
        loss = ", ".join(f"{k} {v:.3f}" for k, v in terms.items())
        log.info("  encoders %s pretrained jointly on %d parties in %4.1fs (%s)", "+".join(sorted(modules)), len(groups), time.time() - t0, loss)
    else:
        for k, (m, rows) in enumerate(sorted(rows_by_modality.items())):
            t0 = time.time()
            terms = pretrain_encoder(modules[m], ds.X[m][rows], cfg, device, seed=seed * 1000 + k, progress=f"pretraining {m}")
            loss = ", ".join(f"{k} {v:.3f}" for k, v in terms.items())
            log.info("  encoder %-8s pretrained on %5d windows in %4.1fs (%s)", m, len(rows), time.time() - t0, loss)
    for enc in modules.values():
        for p in enc.parameters():
            p.requires_grad_(False)
        enc.eval()
    return Encoders(modules)


def mean_std(values: list[float]) -> dict[str, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    arr = np.array(vals, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": len(arr)}


def mean_ci(values: list[float], level: float = 0.95) -> dict[str, float]:
    """Mean, sample std and the ``level`` Student-t interval of the mean (for paired per-seed differences)."""
    from scipy import stats

    out = mean_std(values)
    n = out["n"]
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * out["std"] / math.sqrt(n)) if n > 1 else float("nan")
    return {**out, "ci_low": out["mean"] - half, "ci_high": out["mean"] + half, "level": level}


def commit_of(path: Path | None = None) -> str:
    """The git commit of this checkout (with ``-dirty`` when files differ from it), or ``unknown``."""
    import subprocess

    where = str(path or Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def fingerprint(ds: WindowDataset) -> str:
    """sha256 of a dataset's arrays (windows per modality, labels, subjects): which data a figure came from."""
    import hashlib

    h = hashlib.sha256()
    for m in sorted(ds.X):
        h.update(m.encode())
        h.update(np.ascontiguousarray(ds.X[m]).tobytes())
    h.update(np.ascontiguousarray(ds.y).tobytes())
    h.update(np.ascontiguousarray(ds.subject).tobytes())
    return h.hexdigest()


def fmt(ms: dict[str, float]) -> str:
    return f"{ms['mean']:.3f} ± {ms['std']:.3f}"
