"""Few-label heads and metrics.

The head (and, when fine-tuning, the towers) is trained on the few labelled
windows; the epoch is chosen on validation subjects only; the test figures are
those of that chosen model. The test set never takes part in any choice.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from common.samples import SampleSet, scatter
from common.towers import AlignedModel, FusionHead


@dataclass
class HeadConfig:
    mode: str = "finetune"  # "linear": frozen towers; "finetune": towers train too
    steps: int = 400
    eval_every: int = 20  # validation checks; the best one is kept
    batch_size: int = 64
    lr: float = 1e-2
    tower_lr: float = 3e-4
    weight_decay: float = 1e-4
    hidden: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("linear", "finetune"):
            raise ValueError(f"head mode must be 'linear' or 'finetune', got {self.mode!r}")


def metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else float("nan"),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)) if len(y_true) else float("nan"),
    }


def embed_batch(model: AlignedModel, batch, features: bool = False) -> dict[str, torch.Tensor]:
    """Aligned embeddings of a batch, laid out per sample with the batch's masks.

    With ``features`` the batch holds encoder features (what nodes upload),
    not raw windows, and only the adapters and prototype run.
    """
    out = model.embed_features(batch.inputs) if features else model(batch.inputs)
    return {m: scatter(z, batch.masks[m]) for m, z in out.items()}


@torch.no_grad()
def predict(model: AlignedModel, head: FusionHead, samples: SampleSet, device: torch.device, batch_size: int = 512, features: bool = False) -> np.ndarray:
    model.eval()
    head.eval()
    preds = []
    for b in samples.batches(batch_size, device):
        preds.append(head(embed_batch(model, b, features), b.masks).argmax(-1).cpu().numpy())
    return np.concatenate(preds) if preds else np.empty(0, dtype=np.int64)


def fit_head(
    model: AlignedModel,
    train: SampleSet,
    val: SampleSet,
    n_classes: int,
    cfg: HeadConfig,
    device: torch.device,
    seed: int = 0,
    features: bool = False,
) -> tuple[AlignedModel, FusionHead, dict]:
    """Train a fusion head on ``train`` (labelled rows only); choose the epoch by validation macro-F1.

    Returns copies of the chosen model and head, and a record of the choice.
    """
    labelled = train.take(np.flatnonzero(train.label >= 0))
    if len(labelled) == 0:
        raise ValueError("fit_head: no labelled training samples")
    if (val.label < 0).any():
        raise ValueError("fit_head: validation samples must all be labelled")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = copy.deepcopy(model).to(device)
    head = FusionHead(model.cfg.embed_dim, n_classes, cfg.hidden).to(device)
    groups = [{"params": head.parameters(), "lr": cfg.lr}]
    if cfg.mode == "finetune":
        tuned = [p for n, p in model.named_parameters() if not (features and n.startswith("encoders."))]
        groups.append({"params": tuned, "lr": cfg.tower_lr})
        for p in tuned:
            p.requires_grad_(True)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    best = {"epoch": -1, "val_macro_f1": -1.0}
    best_state = None
    history = []
    batch = min(cfg.batch_size, len(labelled))
    for step in range(1, cfg.steps + 1):
        model.train(cfg.mode == "finetune")
        head.train()
        b = labelled.batch(rng.choice(len(labelled), size=batch, replace=False), device)
        logits = head(embed_batch(model, b, features), b.masks)
        loss = F.cross_entropy(logits, b.label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.eval_every and step != cfg.steps:
            continue
        m = metrics(val.label, predict(model, head, val, device, features=features))
        history.append(m["macro_f1"])
        if m["macro_f1"] > best["val_macro_f1"]:
            # "epoch" counts validation checks: the model kept is the one after step epoch*eval_every
            best = {"epoch": step // cfg.eval_every, "step": step, "val_macro_f1": m["macro_f1"], "val_accuracy": m["accuracy"]}
            best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(head.state_dict()))
    model.load_state_dict(best_state[0])
    head.load_state_dict(best_state[1])
    best["val_history"] = history
    return model, head, best


def subsets(modalities: list[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, singles first."""
    mods = sorted(modalities)
    return [c for r in range(1, len(mods) + 1) for c in itertools.combinations(mods, r)]


def evaluate_subsets(model: AlignedModel, head: FusionHead, test: SampleSet, device: torch.device, features: bool = False) -> dict[str, dict[str, float]]:
    """Accuracy and macro-F1 on ``test`` using each subset of its modalities alone."""
    out = {}
    for sub in subsets(test.modalities):
        part = test.restrict(list(sub))
        out["+".join(sub)] = metrics(part.label, predict(model, head, part, device, features=features))
    return out
