"""Few-label heads and metrics.

The head (and, when fine-tuning, the towers) is trained on the few labelled
windows, then self-trained on the unlabelled windows it labels surely; the
stage and step are chosen on validation subjects only; the test figures are
those of that chosen model. The test set never takes part in any choice.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.samples import SampleSet, scatter
from common.towers import AlignedModel, FusionHead


@dataclass
class HeadConfig:
    """The few-label step: a linear probe first, then (``finetune``) the towers too, at lower rates.

    Each stage keeps its best validation check; fine-tuning only replaces the
    probe where it does better on validation. Modality dropout trains every
    subset of a sample's modalities, so a head fit on (A, B) also serves A alone.
    """

    mode: str = "finetune"  # "linear": frozen towers; "finetune": adapters and prototype (and encoders on raw windows) train too
    steps: int = 400  # linear-probe steps
    finetune_steps: int = 300
    eval_every: int = 20  # validation checks; the best one is kept
    batch_size: int = 64
    lr: float = 1e-2  # head, while probing
    head_finetune_lr: float = 1e-3
    tower_lr: float = 3e-4  # adapters and prototype
    encoder_lr: float = 3e-4  # encoders, when the step sees raw windows
    weight_decay: float = 1e-3
    hidden: int = 0
    modality_dropout: float = 0.3  # chance that a multi-modal sample trains on a random subset of its modalities
    augment: bool = True  # augment raw windows while fine-tuning (see common.pretrain.augment)
    finetune_lr_scales: tuple[float, ...] = (1.0,)  # fine-tuning runs once per scale of the tower/encoder rates; validation keeps the best
    self_train_steps: int = 300  # then, on unlabelled samples the chosen model labels surely, this many steps more (0: off)
    self_train_threshold: float = 0.8  # a pseudo-label's least confidence (top class probability; chosen on sensor-bind's validation)
    self_train_rounds: int = 3  # each round relabels the pool with the best model so far (1, 2, 3 compared on sensor-bind's validation)
    soup: int = 0  # > 1: a greedy soup of the ``soup`` checkpoints best on validation (0: off; see ``fit_head``)

    def __post_init__(self) -> None:
        if self.mode not in ("linear", "finetune"):
            raise ValueError(f"head mode must be 'linear' or 'finetune', got {self.mode!r}")
        if self.steps < 1 or self.finetune_steps < 0 or self.eval_every < 1:
            raise ValueError(f"head steps must be >= 1 (fine-tune steps >= 0), got {self.steps}, {self.finetune_steps}")
        if not 0 <= self.modality_dropout <= 1:
            raise ValueError(f"modality_dropout must be in [0, 1], got {self.modality_dropout}")
        if self.self_train_steps < 0 or self.self_train_rounds < 1 or not 0 < self.self_train_threshold <= 1:
            raise ValueError(f"self-training needs steps >= 0 and a threshold in (0, 1], got {self.self_train_steps}, {self.self_train_threshold}")
        if self.soup < 0:
            raise ValueError(f"soup must be >= 0 (0: off), got {self.soup}")


def confusion_metrics(confusion: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 from a (true x predicted) confusion matrix; macro-F1 averages the classes that occur as truth or prediction, as sklearn does."""
    c = np.asarray(confusion, dtype=np.float64)
    n = c.sum()
    if n == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan")}
    tp = np.diag(c)
    denom = c.sum(0) + c.sum(1)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"accuracy": float(tp.sum() / n), "macro_f1": float(f1[denom > 0].mean())}


def metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 of predictions (class indices)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if len(y_true) == 0:
        return confusion_metrics(np.zeros((1, 1)))
    k = int(max(y_true.max(), y_pred.max())) + 1
    return confusion_metrics(np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k))


def embed_batch(model: AlignedModel, batch, features: bool = False) -> dict[str, torch.Tensor]:
    """Head inputs of a batch (encoder features beside aligned embeddings), laid out per sample with the batch's masks.

    With ``features`` the batch holds encoder features (what nodes upload),
    not raw windows, and only the adapters and prototype run.
    """
    out = model.head_inputs(batch.inputs, features=features)
    return {m: scatter(z, batch.masks[m]) for m, z in out.items()}


@torch.no_grad()
def predict_proba(model: AlignedModel, head: FusionHead, samples: SampleSet, device: torch.device, batch_size: int = 512, features: bool = False) -> np.ndarray:
    """Class probabilities, one row per sample."""
    model.eval()
    head.eval()
    probs = [torch.softmax(head(embed_batch(model, b, features), b.masks), -1).cpu().numpy() for b in samples.batches(batch_size, device)]
    return np.concatenate(probs) if probs else np.empty((0, head.n_classes), dtype=np.float32)


def predict(model: AlignedModel, head: FusionHead, samples: SampleSet, device: torch.device, batch_size: int = 512, features: bool = False) -> np.ndarray:
    return predict_proba(model, head, samples, device, batch_size, features).argmax(-1)


def drop_modalities(masks: dict[str, torch.Tensor], p: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """With probability ``p``, a sample holding several modalities keeps a random non-empty subset of them (each kept with chance 1/2)."""
    mods = sorted(masks)
    if p <= 0 or len(mods) < 2:
        return masks
    present = torch.stack([masks[m] for m in mods]).cpu()  # (M, B)
    keep = torch.rand(present.shape, generator=generator) < 0.5
    dropped = present & keep
    empty = ~dropped.any(0)
    pick = torch.multinomial(present.T.float(), 1, generator=generator).squeeze(1)  # one present modality
    dropped[:, empty] = torch.nn.functional.one_hot(pick[empty], len(mods)).T.bool() & present[:, empty]
    use = (torch.rand(present.shape[1], generator=generator) < p) & (present.sum(0) > 1)
    out = torch.where(use[None, :], dropped, present).to(next(iter(masks.values())).device)
    return {m: out[k] for k, m in enumerate(mods)}


def batch_loss(model: AlignedModel, head: FusionHead, b, generator: torch.Generator, modality_dropout: float, augment: bool, features: bool = False) -> torch.Tensor:
    """Cross-entropy of one labelled batch: raw windows augmented (when asked), a random subset of each sample's modalities."""
    inputs = b.inputs
    if augment:
        from common.pretrain import augment as view

        inputs = {m: view(x, generator) for m, x in inputs.items()}
    x = model.head_inputs(inputs, features=features)
    logits = head({m: scatter(z, b.masks[m]) for m, z in x.items()}, drop_modalities(b.masks, modality_dropout, generator))
    return F.cross_entropy(logits, b.label)


@torch.no_grad()
def _fit_scalers(model: AlignedModel, head: FusionHead, train: SampleSet, device: torch.device, features: bool) -> None:
    model.eval()
    rows: dict[str, list[torch.Tensor]] = {}
    for b in train.batches(512, device):
        for m, x in model.head_inputs(b.inputs, features=features).items():
            rows.setdefault(m, []).append(x)
    for m, xs in rows.items():
        head.scalers[m].fit(torch.cat(xs))


def fit_head(
    model: AlignedModel,
    train: SampleSet,
    val: SampleSet,
    n_classes: int,
    cfg: HeadConfig,
    device: torch.device,
    seed: int = 0,
    features: bool = False,
    unlabelled: SampleSet | None = None,
    judge: Callable[[SampleSet], dict] | None = None,
) -> tuple[AlignedModel, FusionHead, dict]:
    """Train a fusion head on ``train`` (labelled rows only); every choice is made by validation macro-F1.

    A linear probe on the frozen towers comes first; with ``cfg.mode ==
    "finetune"`` the towers then train too (adapters and prototype; encoders
    as well when the samples are raw windows), starting from the best probe.
    With ``cfg.self_train_steps`` and ``unlabelled`` samples, the model chosen
    so far labels those samples, and from it the same rates train on the
    labelled samples and the surely labelled ones (top class probability at
    least ``cfg.self_train_threshold``), half of each batch from each; each
    of ``cfg.self_train_rounds`` rounds relabels with the best model so far.
    Like every stage, it replaces the model only where it does better on
    validation. With ``cfg.soup`` > 1, the ``soup`` checkpoints best on
    validation, whatever their stage, are averaged greedily (Wortsman et al.'s
    greedy soup: best first, each next one kept if the average does at least as
    well on validation). Returns copies of the chosen model and head, and a
    record of the choice.

    ``judge`` is for simulations, which know the labels the learner does not:
    given each round's surely labelled samples (their pseudo-labels in
    ``label``), it returns figures recorded with the round (how many are
    right); nothing reads them to choose.
    """
    labelled = train.take(np.flatnonzero(train.label >= 0))
    if len(labelled) == 0:
        raise ValueError("fit_head: no labelled training samples")
    if (val.label < 0).any():
        raise ValueError("fit_head: validation samples must all be labelled")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(model).to(device)
    mods = sorted(set(labelled.modalities) | set(val.modalities))
    head = FusionHead({m: model.head_dim for m in mods}, n_classes, cfg.hidden).to(device)
    _fit_scalers(model, head, train, device, features)  # every training window, labelled or not: steadier statistics
    for p in model.parameters():
        p.requires_grad_(False)
    best = {"stage": "probe", "step": 0, "val_macro_f1": -1.0, "val_accuracy": 0.0}
    best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(head.state_dict()))
    history = []
    kept: list[tuple[float, int, tuple[dict, dict]]] = []  # the soup's candidates: (validation macro-F1, order, states)
    batch = min(cfg.batch_size, len(labelled))

    def run(stage: str, steps: int, opt: torch.optim.Optimizer, tune_towers: bool, extra: SampleSet | None = None) -> None:
        nonlocal best, best_state
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
        for step in range(1, steps + 1):
            model.train(tune_towers)
            head.train()
            b = labelled.batch(rng.choice(len(labelled), size=batch, replace=False), device)
            loss = batch_loss(model, head, b, gen, cfg.modality_dropout, augment=tune_towers and cfg.augment and not features, features=features)
            if extra is not None:  # self-training: as many pseudo-labelled samples again
                e = extra.batch(rng.choice(len(extra), size=min(batch, len(extra)), replace=False), device)
                loss = (loss + batch_loss(model, head, e, gen, cfg.modality_dropout, augment=cfg.augment and not features, features=features)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % cfg.eval_every and step != steps:
                continue
            m = metrics(val.label, predict(model, head, val, device, features=features))
            history.append({"stage": stage, "step": step, "val_macro_f1": m["macro_f1"]})
            if cfg.soup > 1 and (len(kept) < cfg.soup or m["macro_f1"] > kept[-1][0]):
                kept.append((m["macro_f1"], len(history), (copy.deepcopy(model.state_dict()), copy.deepcopy(head.state_dict()))))
                kept.sort(key=lambda k: (-k[0], k[1]))
                del kept[cfg.soup :]
            if m["macro_f1"] > best["val_macro_f1"]:
                best = {"stage": stage, "step": step, "val_macro_f1": m["macro_f1"], "val_accuracy": m["accuracy"]}
                best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(head.state_dict()))

    def tuning(scale: float) -> torch.optim.Optimizer:
        groups = [{"params": list(head.parameters()), "lr": cfg.head_finetune_lr}]
        groups.append({"params": [p for n, p in model.named_parameters() if not n.startswith("encoders.")], "lr": cfg.tower_lr * scale})
        if not features:
            groups.append({"params": [p for n, p in model.named_parameters() if n.startswith("encoders.")], "lr": cfg.encoder_lr * scale})
        for g in groups[1:]:
            for p in g["params"]:
                p.requires_grad_(True)
        return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)

    run("probe", cfg.steps, torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay), False)
    probe = best_state
    tuned = cfg.mode == "finetune" and cfg.finetune_steps
    scales = {f"finetune x{scale:g}": scale for scale in cfg.finetune_lr_scales}
    for stage, scale in scales.items() if tuned else ():
        model.load_state_dict(probe[0])  # every fine-tuning run starts from the best probe
        head.load_state_dict(probe[1])
        run(stage, cfg.finetune_steps, tuning(scale), True)
    self_train = None
    pool = _unlabelled_pool(unlabelled, mods) if cfg.self_train_steps else None
    rate = cfg.finetune_lr_scales[0]
    teacher = None  # the ``best`` record the pseudo-labels came from: a round that beat nothing leaves them as they are
    for r in range(cfg.self_train_rounds if pool is not None else 0):
        model.load_state_dict(best_state[0])  # the teacher: the best model so far
        head.load_state_dict(best_state[1])
        if best is not teacher:
            teacher = best
            prob = predict_proba(model, head, pool, device, features=features)
            sure = np.flatnonzero(prob.max(1) >= cfg.self_train_threshold)
            pseudo = pool.take(sure)
            pseudo.label = prob[sure].argmax(1).astype(np.int64)
        self_train = self_train or {"pool": len(pool), "rounds": []}
        self_train["rounds"].append({"pseudo_labelled": len(pseudo), "teacher": best["stage"], **(judge(pseudo) if judge and len(pseudo) else {})})
        if not len(pseudo):
            break
        stage = "self-train" if cfg.self_train_rounds == 1 else f"self-train {r + 1}"
        if not best["stage"].startswith("self-train"):  # else the rates of the round that taught it
            rate = scales.get(best["stage"], cfg.finetune_lr_scales[0])
        if tuned:  # at the rates of the chosen fine-tuning run (the first scale's after a probe)
            run(stage, cfg.self_train_steps, tuning(rate), True, extra=pseudo)
        else:
            run(stage, cfg.self_train_steps, torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay), False, extra=pseudo)
    if len(kept) > 1 and (souped := _greedy_soup(model, head, kept, val, device, features)):
        best_state, m, n = souped
        best = {"stage": f"soup of {n}", "step": best["step"], "val_macro_f1": m["macro_f1"], "val_accuracy": m["accuracy"], "soup_of": best["stage"]}
    model.load_state_dict(best_state[0])
    head.load_state_dict(best_state[1])
    for p in model.parameters():
        p.requires_grad_(False)
    best["val_history"] = history
    if self_train is not None:
        best["self_train"] = self_train
    return model.eval(), head.eval(), best


def _average_states(states: list[dict]) -> dict:
    """The mean of state dicts of one architecture (floating tensors; any other entry is the first's)."""
    return {k: torch.stack([s[k] for s in states]).mean(0) if states[0][k].is_floating_point() else states[0][k] for k in states[0]}


def _greedy_soup(model, head, kept, val, device, features) -> tuple[tuple[dict, dict], dict, int] | None:
    """Greedy soup over ``kept`` (best first, so the first is the chosen model): each checkpoint joins if the average
    with it scores at least as well on validation. Returns the soup's states, its validation metrics and its size, or
    None when no checkpoint joined the first."""
    soup, score, souped = [kept[0][2]], kept[0][0], None
    for _, _, states in kept[1:]:
        trial = tuple(_average_states([s[i] for s in [*soup, states]]) for i in (0, 1))
        model.load_state_dict(trial[0])
        head.load_state_dict(trial[1])
        m = metrics(val.label, predict(model, head, val, device, features=features))
        if m["macro_f1"] >= score:
            soup.append(states)
            score, souped = m["macro_f1"], (trial, m)
    return None if souped is None else (*souped, len(soup))


def _unlabelled_pool(unlabelled: SampleSet | None, modalities: list[str]) -> SampleSet | None:
    """The unlabelled samples in the head's modalities (None when there are none)."""
    if unlabelled is None or not set(unlabelled.modalities) & set(modalities):
        return None
    pool = unlabelled.restrict(modalities)
    pool = pool.take(np.flatnonzero(pool.label < 0))
    return pool if len(pool) else None


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


@dataclass
class LocalFinetuneConfig:
    """One node's share of federated fine-tuning: encoder, adapters and prototype (and the head, if its rate is not 0), end to end on its labelled windows.

    The same step as the few-label head's fine-tuning stage (AdamW, augmented
    windows, modality dropout), counted in steps; a warm-up lets Adam's moments
    settle before it moves the towers (a cold Adam step moves every weight by
    about its rate, whatever the gradient). Few steps and a fixed head by
    default: a fleet's node often holds one or two activities (a contiguous
    span of one person's day), and many local steps, or a head free to move,
    pull the model towards them; the averaged rounds then swing.
    """

    steps: int = 10
    batch_size: int = 64
    head_lr: float = 0.0  # 0 = the head stays fixed (FedBABU): the towers learn to serve it
    tower_lr: float = 3e-4
    encoder_lr: float = 3e-4
    weight_decay: float = 1e-3
    warmup: float = 0.3  # share of the steps with a linear warm-up
    modality_dropout: float = 0.3
    augment: bool = True
    proximal_mu: float = 0.0  # FedProx: mu/2 * ||w - w_global||^2 keeps a node near the global model

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"local fine-tuning needs steps >= 1 and batch_size >= 1, got {self.steps}, {self.batch_size}")
        if not (self.head_lr >= 0 and self.tower_lr > 0 and self.encoder_lr > 0):
            raise ValueError(f"local fine-tuning needs head_lr >= 0 (0 = head fixed) and positive tower and encoder rates, got {self.head_lr}, {self.tower_lr}, {self.encoder_lr}")
        if self.proximal_mu < 0 or not np.isfinite(self.proximal_mu):
            raise ValueError(f"proximal_mu must be a finite number >= 0, got {self.proximal_mu}")

    WIRE = ("steps", "batch_size", "head_lr", "tower_lr", "encoder_lr", "proximal_mu")  # what the coordinator sets per campaign

    def to_wire(self) -> dict[str, int | float]:
        """The settings a ``train.finetune`` message carries (dashed keys); the rest keep their defaults on the node."""
        return {k.replace("_", "-"): getattr(self, k) for k in self.WIRE}

    @classmethod
    def from_wire(cls, cfg: Mapping[str, Any]) -> LocalFinetuneConfig:
        """The inverse of ``to_wire``; a key the message lacks takes its default."""
        args = {}
        for k in cls.WIRE:
            if k.replace("_", "-") in cfg:
                kind = type(getattr(cls, k))
                args[k] = kind(cfg[k.replace("_", "-")])
        return cls(**args)


def finetune_local(model: AlignedModel, head: FusionHead, samples: SampleSet, cfg: LocalFinetuneConfig, device: torch.device, seed: int = 0) -> dict[str, float]:
    """Train ``model`` and ``head`` (in place) end to end on labelled raw windows for ``cfg.steps``; returns the mean loss terms."""
    from common.pretrain import cosine_schedule

    labelled = samples.take(np.flatnonzero(samples.label >= 0))
    if len(labelled) == 0:
        raise ValueError("finetune_local: no labelled windows")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device)
    head.to(device)
    train_head = cfg.head_lr > 0  # 0 keeps the head fixed (FedBABU): a node holding one or two activities cannot pull it towards them
    params = list(model.parameters()) + (list(head.heads.parameters()) if train_head else [])
    anchor = [p.detach().clone() for p in params] if cfg.proximal_mu > 0 else None
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.startswith("encoders.")], "lr": cfg.tower_lr},
        {"params": [p for n, p in model.named_parameters() if n.startswith("encoders.")], "lr": cfg.encoder_lr},
    ] + ([{"params": list(head.heads.parameters()), "lr": cfg.head_lr}] if train_head else [])
    for p in head.heads.parameters():
        p.requires_grad_(train_head)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    sched = cosine_schedule(opt, cfg.steps, cfg.warmup, 0.1)
    sums = {"cross_entropy_loss": 0.0, "proximal_loss": 0.0}
    batch = min(cfg.batch_size, len(labelled))
    model.train()
    head.train()
    for _ in range(cfg.steps):
        b = labelled.batch(rng.choice(len(labelled), size=batch, replace=False), device)
        ce = batch_loss(model, head, b, gen, cfg.modality_dropout, augment=cfg.augment)
        prox = torch.zeros((), device=device)
        if anchor is not None:
            prox = 0.5 * cfg.proximal_mu * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
        opt.zero_grad(set_to_none=True)
        (ce + prox).backward()
        opt.step()
        sched.step()
        sums["cross_entropy_loss"] += float(ce.detach())
        sums["proximal_loss"] += float(prox.detach())
    for p in params:
        p.requires_grad_(False)
    model.eval()
    head.eval()
    return {k: v / cfg.steps for k, v in sums.items()}


# --- retrieval across modalities (after alignment or growth) -------------------------------------


@torch.no_grad()
def embed(model: AlignedModel, features: Mapping[str, np.ndarray | torch.Tensor], batch_size: int = 4096, device: torch.device | str | None = None) -> dict[str, np.ndarray]:
    """L2-normalised aligned embeddings of each modality's encoder features, in batches."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    out = {}
    for m, x in features.items():
        x = x.detach().float().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float32))
        chunks = [model.embed_features({m: x[i : i + batch_size].to(device)})[m].cpu() for i in range(0, len(x), batch_size)]
        out[m] = torch.cat(chunks).numpy() if chunks else np.empty((0, model.cfg.embed_dim), np.float32)
    return out


@torch.no_grad()
def recall_at_k(za: np.ndarray | torch.Tensor, zb: np.ndarray | torch.Tensor, ks: Sequence[int] = (1, 5), block: int = 1024) -> dict[str, float]:
    """Share of rows of ``za`` whose own row of ``zb`` ranks within the top k by dot product.

    Row i of each is a true pair. Ties count against the query (rank = number
    of gallery rows scoring strictly higher). Computed in query x gallery
    blocks, so memory stays bounded.
    """
    za, zb = torch.as_tensor(za, dtype=torch.float32), torch.as_tensor(zb, dtype=torch.float32)
    if za.shape != zb.shape:
        raise ValueError(f"recall_at_k needs paired rows of equal shape, got {tuple(za.shape)} and {tuple(zb.shape)}")
    n = len(za)
    if n == 0:
        return {f"R@{k}": float("nan") for k in ks}
    higher = torch.zeros(n, dtype=torch.long)
    for i in range(0, n, block):
        q = za[i : i + block]
        own = q @ zb[i : i + block].T  # the true pair's score comes from the same product as the others'
        t = own.diagonal()
        for j in range(0, n, block):
            s = own if j == i else q @ zb[j : j + block].T
            higher[i : i + block] += (s > t[:, None]).sum(1)
    return {f"R@{k}": float((higher < k).float().mean()) for k in ks}


def retrieval_recall(
    model: AlignedModel,
    feats_a: Mapping[str, np.ndarray],
    feats_b: Mapping[str, np.ndarray],
    ks: Sequence[int] = (1, 5),
    block: int = 1024,
    labels: np.ndarray | None = None,
) -> dict:
    """Cross-modal retrieval between two aligned towers; each argument is ``{modality: features}`` of paired rows.

    Returns recall@k in each direction and their mean (``R@k``). With
    ``labels`` (one per row) also ``label@1``: how often the top match has the
    query's label, the semantic counterpart of recall@1.
    """
    if len(feats_a) != 1 or len(feats_b) != 1:
        raise ValueError("retrieval_recall takes one {modality: features} mapping per side")
    (a, fa), (b, fb) = next(iter(feats_a.items())), next(iter(feats_b.items()))
    if a == b:
        raise ValueError(f"retrieval_recall needs two different towers, got {a!r} twice")
    z = embed(model, {a: fa, b: fb})
    ab = recall_at_k(z[a], z[b], ks, block)
    ba = recall_at_k(z[b], z[a], ks, block)
    out: dict = {f"R@{k}": (ab[f"R@{k}"] + ba[f"R@{k}"]) / 2 for k in ks}
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels))
        hits = [float((y[_top1(z[q], z[g], block)] == y).float().mean()) for q, g in ((a, b), (b, a))]
        out["label@1"] = sum(hits) / 2
        ab["label@1"], ba["label@1"] = hits
    out[f"{a}_to_{b}"] = ab
    out[f"{b}_to_{a}"] = ba
    return out


@torch.no_grad()
def _top1(za: np.ndarray, zb: np.ndarray, block: int) -> torch.Tensor:
    za, zb = torch.as_tensor(za), torch.as_tensor(zb)
    return torch.cat([(za[i : i + block] @ zb.T).argmax(1) for i in range(0, len(za), block)])


def pairs(modalities: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of towers, sorted."""
    return list(itertools.combinations(sorted(modalities), 2))
