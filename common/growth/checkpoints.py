"""Per-stage checkpoints of a growth plan: written atomically, read back to resume or to use the grown model."""

from __future__ import annotations

import hashlib
import io
import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from common.files import atomic_write
from common.growth.plan import GrowthConfig, GrowthPlan, StageRecord
from common.towers import AlignedModel, ModelCard

log = logging.getLogger("edgebind")


CHECKPOINT_FORMAT = 1


# --------------------------------------------------------------------------- checkpoints


def encoder_digest(module: nn.Module) -> str:
    """A short sha256 of a module's state, to tell which encoder made a set of features."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(path: str | Path, model: AlignedModel, plan: GrowthPlan, stage: int, cfg: GrowthConfig, records: Sequence[StageRecord]) -> Path:
    """Everything needed to resume or to serve: plan, stage reached, towers, settings, history (atomic write)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    aligned = plan.trunk_before(stage)
    state = {
        "format": CHECKPOINT_FORMAT,
        "plan": plan.to_dict(),
        "stage": int(stage),
        "stages_total": len(plan.stages),
        "aligned": aligned,
        "model_card": asdict(ModelCard.of(model)),
        "adapters": {m: _cpu_state(model.adapters[m]) for m in model.adapters},
        "prototype": _cpu_state(model.prototype),
        "encoders": {m: {"digest": encoder_digest(e), "family": model.specs[m].family, "state": _cpu_state(e)} for m, e in model.encoders.items()},
        "config": cfg.to_dict(),
        "records": [r.to_dict() for r in records],
        "weight_history": {str(r.index + 1): r.weights for r in records},
        "metrics": {str(r.index + 1): r.metrics for r in records},
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write(path, buf.getvalue())


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = []
    for p in Path(directory).glob("stage-*.pt"):
        m = re.fullmatch(r"stage-(\d+)\.pt", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def load_checkpoint(path: str | Path, model: AlignedModel | None = None, device: torch.device | str = "cpu") -> tuple[AlignedModel, dict]:
    """The model a checkpoint describes (built from its card, or loaded into ``model``) and its state dict.

    The state holds ``plan`` (a GrowthPlan), ``stage`` (stages done),
    ``aligned``, ``config`` (a GrowthConfig), ``records`` (StageRecords) and
    ``weight_history``.
    """
    state = read_checkpoint(Path(path))
    if model is None:
        model = ModelCard(**state["model_card"]).build()
        for m, e in state["encoders"].items():
            model.encoders[m].load_state_dict(e["state"])
    restore_state(model, state)
    model.to(device)
    out = dict(state)
    out["plan"] = GrowthPlan.from_dict(state["plan"])
    out["config"] = GrowthConfig.from_dict(state["config"])
    out["records"] = [StageRecord(**r) for r in state["records"]]
    return model, out


def read_checkpoint(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a growth checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def check_resumable(state: dict, plan: GrowthPlan, cfg: GrowthConfig, path: Path) -> None:
    if state["plan"] != plan.to_dict():
        raise ValueError(f"{path} is a checkpoint of plan {state['plan'].get('name')!r} with other stages; use another checkpoint_dir or resume=False")
    if state["config"] != cfg.to_dict():
        diff = sorted(k for k, v in cfg.to_dict().items() if state["config"].get(k) != v)
        raise ValueError(f"{path} was written with other growth settings ({', '.join(diff)}); resuming would not reproduce the run")


def restore_state(model: AlignedModel, state: dict) -> None:
    for m, sd in state["adapters"].items():
        if m not in model.adapters:
            raise KeyError(f"checkpoint has an adapter for {m!r}, which the model lacks")
        model.adapters[m].load_state_dict(sd)
    model.prototype.load_state_dict(state["prototype"])
    for m, e in state["encoders"].items():
        if m in model.encoders and encoder_digest(model.encoders[m]) != e["digest"]:
            log.warning("encoder %r differs from the one the checkpoint was grown with (digest %s)", m, e["digest"])


def jsonable(obj):
    """Python scalars, lists and dicts only, so a checkpoint loads with weights_only."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.generic, torch.Tensor)):
        return obj.item()
    return obj


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
