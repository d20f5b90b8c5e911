"""The work a node does in a campaign, as plain functions (no Flower here).

``local_pretrain`` runs the self-supervised encoder objective on the node's
windows (one FedAvg round); ``encode_and_pack`` turns every window into
encoder features in EmbeddingBatches; ``evaluate_local`` scores the model the
node serves on its labelled windows with every subset of its modalities;
``local_finetune`` and ``local_validate`` are one node's part of federated
fine-tuning. ``pretrain_round``, ``upload_batches`` and ``finetune_round`` are
what the Flower handlers call: they pick the round's seed (``round_seed``),
report the objective and keep the upload ledger, so a handler only unpacks and
packs. Bundles reach the node's state directory
(``node_agent.state_dir``) only through the gate in ``node_agent.runtime``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from common.codec import encode_embeddings, encode_manifest
from common.evaluate import LocalFinetuneConfig, finetune_local, metrics, predict, subsets
from common.pretrain import PretrainConfig, embed_windows, make_pretrain_head, pretrain_encoder, pretrain_jointly
from common.samples import SampleSet
from common.towers import SHARED_BLOCK, AlignedModel, FusionHead, TowerConfig, block_of, build_encoder, flat_state, load_strict, model_from_flat
from node_agent.data import NodeData
from node_agent.runtime import NodeRuntime
from node_agent.state_dir import StateDir
from proto import edgebind_pb2 as pb

State = dict[str, torch.Tensor]


# --- pretraining -------------------------------------------------------------------------


def local_pretrain(
    modality: str,
    encoder_state: Mapping[str, torch.Tensor],
    head_state: Mapping[str, torch.Tensor],
    data: NodeData,
    cfg: PretrainConfig,
    device: torch.device | None = None,
    seed: int = 0,
    tower: TowerConfig | None = None,
) -> tuple[dict[str, State], int, dict[str, float]]:
    """One local round of the self-supervised objective (``cfg.objective``) from the global states.

    ``head_state`` is the objective's throw-away head (projection or decoder),
    FedAvg'd with the encoder. Returns the updated ``{"encoder": ..., "head":
    ...}`` states, the number of windows trained on (the FedAvg weight) and
    the last epoch's loss terms.
    """
    spec = data.spec(modality)
    _, x, _ = data.windows(modality)
    if len(x) == 0:
        raise ValueError(f"node {data.node_id!r} has no {modality!r} windows to pretrain on")
    spec.check_window(x.shape, where=f"node {data.node_id!r}")
    encoder = build_encoder(spec, tower or TowerConfig())
    head = make_pretrain_head(encoder, spec.window, spec.channels, cfg)
    load_strict(encoder, encoder_state, f"{modality!r} encoder")
    load_strict(head, head_state, f"{modality!r} {cfg.objective} head")
    terms = pretrain_encoder(encoder, x, cfg, device or torch.device("cpu"), seed=seed, head=head)
    states = {"encoder": _cpu_state(encoder), "head": _cpu_state(head)}
    return states, len(x), terms


def shared_windows(data: NodeData, modalities: Sequence[str], labelled: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The node's windows present in every one of ``modalities`` (the same time spans), in window-id order, and their labels.

    With ``labelled`` only windows labelled in every stream are kept.
    """
    per = {m: data.windows(m) for m in modalities}
    common: set | None = None
    for ids, _, y in per.values():
        held = {w for w, lab in zip(ids, y) if lab >= 0} if labelled else set(ids)
        common = held if common is None else common & held
    order = sorted(common or [])
    X, labels = {}, np.empty(0, dtype=np.int64)
    for k, (m, (ids, x, y)) in enumerate(per.items()):
        data.spec(m).check_window(x.shape, where=f"node {data.node_id!r}")
        pos = {w: i for i, w in enumerate(ids)}
        sel = np.array([pos[w] for w in order], dtype=np.int64)
        X[m] = np.ascontiguousarray(x[sel], dtype=np.float32)
        if k == 0:
            labels = y[sel]
    return X, labels


def local_pretrain_joint(
    states: Mapping[str, tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]],
    data: NodeData,
    cfg: PretrainConfig,
    device: torch.device | None = None,
    seed: int = 0,
    tower: TowerConfig | None = None,
) -> tuple[dict[str, dict[str, State]], int, dict[str, float]]:
    """One local round of cross-modal pretraining: the streams this node holds together train each other.

    ``states`` maps each modality to its global (encoder, projection head)
    states. Only windows present in every one of those streams are used (the
    same time spans). Returns per-modality updated states, the windows trained
    on and the last epoch's loss terms.
    """
    mods = sorted(states)
    windows, labels = shared_windows(data, mods)
    if len(labels) == 0:
        raise ValueError(f"node {data.node_id!r} holds no window in all of {mods} to pretrain them together")
    encoders, heads = {}, {}
    for m in mods:
        spec = data.spec(m)
        encoders[m] = build_encoder(spec, tower or TowerConfig())
        heads[m] = make_pretrain_head(encoders[m], spec.window, spec.channels, cfg)
        load_strict(encoders[m], states[m][0], f"{m!r} encoder")
        load_strict(heads[m], states[m][1], f"{m!r} {cfg.objective} head")
    terms = pretrain_jointly(encoders, [windows], cfg, device or torch.device("cpu"), seed=seed, heads=heads)
    out = {m: {"encoder": _cpu_state(encoders[m]), "head": _cpu_state(heads[m])} for m in mods}
    return out, len(labels), terms


def _cpu_state(module: nn.Module) -> State:
    return {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}



# --- one round, as a handler asks for it ----------------------------------------------------


def round_seed(seed: int, rnd: int, who: str) -> int:
    """The seed of one node's work in one round: the campaign's seed, the round, and who trains (stable across processes)."""
    return int(seed) + 7919 * int(rnd) + 104729 * (zlib.crc32(who.encode()) % 10007)


def pretrain_round(
    given: Mapping[str, tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]],
    data: NodeData,
    cfg: PretrainConfig,
    node_id: str,
    seed: int,
    rnd: int,
    device: torch.device | None = None,
    tower: TowerConfig | None = None,
) -> tuple[dict[str, dict[str, State]], dict[str, float]]:
    """One pretraining round on the node's training windows, from the global (encoder, head) states ``given`` per modality.

    With the cross-modal objective, streams held together train each other;
    otherwise each trains alone. Returns the trained states per modality and
    the metrics the coordinator reads: ``n.<m>`` (windows, the FedAvg weight)
    and ``loss.<m>`` (the objective: the last epoch's ``total``, the sum of its ``*_loss`` terms).
    """
    mods = list(given)
    if cfg.objective == "cross-modal" and len(mods) > 1:
        states, n, terms = local_pretrain_joint(given, data, cfg, device, round_seed(seed, rnd, node_id + "+".join(mods)), tower)
        trained = {m: (states[m], n, terms) for m in mods}
    else:
        trained = {m: local_pretrain(m, *given[m], data, cfg, device, round_seed(seed, rnd, node_id + m), tower) for m in mods}
    metrics: dict[str, float] = {}
    for m, (_, n, terms) in trained.items():
        metrics[f"n.{m}"] = n
        metrics[f"loss.{m}"] = float(terms["total"])
    return {m: states for m, (states, _, _) in trained.items()}, metrics


def upload_batches(
    state_dir: StateDir,
    parts: Sequence[tuple[str, NodeData]],
    node_id: str,
    campaign_id: str,
    dtype: str,
    encoder_versions: Mapping[str, str],
) -> list[bytes]:
    """Every window of the given (group, data) parts, encoded with the installed encoders, as serialised EmbeddingBatches.

    Each batch names its part's group; each one handed over is written to the
    node's upload ledger (when the state directory has a store).
    """
    encoders = state_dir.encoders() if parts else {}
    out = []
    for group, data in parts:
        packed = encode_and_pack(data, encoders, node_id, campaign_id, dtype, encoder_versions=encoder_versions, group=group)
        out += [b.SerializeToString() for b in packed]
        if state_dir.store is not None:
            for b in packed:
                state_dir.store.record_upload(b.campaign_id, b.batch_id, b.modality, len(b.window_ids))
    return out


def finetune_round(
    flat: Mapping[str, torch.Tensor],
    data: NodeData,
    cfg: LocalFinetuneConfig,
    node_id: str,
    seed: int,
    rnd: int,
    device: torch.device | None = None,
    tower: TowerConfig | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One round of federated fine-tuning (``local_finetune``) with this node's seed for the round; the metrics as Flower's strategies read them."""
    states, n, terms = local_finetune(flat, data, cfg, device, round_seed(seed, rnd, node_id), tower)
    return states, {"num-examples": n, **terms}

# --- manifest ----------------------------------------------------------------------------


def manifest(node_id: str, group: str, role: str, data: NodeData, parts: Sequence[tuple[str, str, NodeData]]) -> pb.NodeManifest:
    """What the node holds, per modality and per part (its own group first, then held-out subjects), as the coordinator reads it."""
    mods = data.modalities()

    def counts(d: NodeData, m: str) -> tuple[int, int]:
        y = d.windows(m)[2]
        return len(y), int((y >= 0).sum())

    per_part = []
    for g, r, d in parts:
        c = [counts(d, m) for m in mods]
        per_part.append((g, r, max((w for w, _ in c), default=0), max((n for _, n in c), default=0)))
    return encode_manifest(node_id, group, role, {m: data.spec(m) for m in mods}, {m: counts(data, m) for m in mods}, data.classes(), per_part)


# --- collect -----------------------------------------------------------------------------

ENCODE_BATCH = 64  # windows a node encodes at once: activations of 512 take about 15 MiB more at peak on a small device


def encode_and_pack(
    data: NodeData,
    encoders: Mapping[str, nn.Module],
    node_id: str,
    campaign_id: str,
    dtype: str = "float16",
    batch_rows: int = 1024,
    encoder_versions: Mapping[str, str] | None = None,
    with_subjects: bool = False,
    device: torch.device | None = None,
    group: str = "",
) -> list[pb.EmbeddingBatch]:
    """Encoder features of every window of every modality held, as EmbeddingBatches.

    Batch ids are ``<modality>-<index>`` (``<group>.<modality>-<index>`` when
    the batches name their ``group``): the same data gives the same ids, so a
    repeated upload is stored once. Labels go with the rows (-1 where none).
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    out = []
    for m in data.modalities():
        if m not in encoders:
            raise KeyError(f"node {node_id!r} holds {m!r} but was given no encoder for it (given: {sorted(encoders)})")
        ids, x, labels = data.windows(m)
        feats = embed_windows(encoders[m], x, device, batch_size=ENCODE_BATCH)
        subj = data.subjects(m) if with_subjects else None
        for b, i in enumerate(range(0, len(ids), batch_rows)):
            sl = slice(i, i + batch_rows)
            out.append(
                encode_embeddings(
                    node_id=node_id,
                    campaign_id=campaign_id,
                    batch_id=f"{group}.{m}-{b:05d}" if group else f"{m}-{b:05d}",
                    modality=m,
                    window_ids=ids[sl],
                    embeddings=feats[sl],
                    labels=labels[sl] if (labels[sl] >= 0).any() else None,  # an unlabelled batch sends no label column
                    subjects=None if subj is None else subj[sl],
                    dtype=dtype,
                    encoder_version=(encoder_versions or {}).get(m, ""),
                    group=group,
                )
            )
    return out


# --- evaluate ------------------------------------------------------------------------------


def evaluate_local(data: NodeData, runtime: NodeRuntime, device: torch.device | None = None) -> dict[str, dict]:
    """Accuracy, macro-F1, count and confusion matrix on the node's labelled windows, per modality subset.

    Scores the model the node serves (``runtime``'s, loaded through its checks),
    with the head ``infer`` uses for all its modalities.
    """
    device = device or torch.device("cpu")
    model, head, _ = runtime.serving(data.modalities())
    mods = model.modalities
    windows, labels = shared_windows(data, mods)
    feats = {m: embed_windows(model.encoders[m], x, device, batch_size=ENCODE_BATCH).numpy() for m, x in windows.items()}
    if not (labels >= 0).any():
        raise ValueError(f"node {data.node_id!r} has no labelled windows to evaluate on")
    keep = np.flatnonzero(labels >= 0)
    test = SampleSet.natural({m: f[keep] for m, f in feats.items()}, labels[keep])
    n_classes = head.n_classes
    out = {}
    for sub in subsets(test.modalities):
        part = test.restrict(list(sub))
        pred = predict(model, head, part, device, features=True)
        conf = np.bincount(part.label * n_classes + pred, minlength=n_classes * n_classes)
        out["+".join(sub)] = {**metrics(part.label, pred), "n": int(len(part)), "confusion": conf.tolist()}
    return out


# --- federated fine-tuning ---------------------------------------------------------------------


def labelled_windows(data: NodeData, modalities: Sequence[str]) -> SampleSet:
    """The node's labelled raw windows present in every one of ``modalities`` (the same time spans), as samples."""
    X, labels = shared_windows(data, modalities, labelled=True)
    if len(labels) == 0:
        raise ValueError(f"node {data.node_id!r} holds no labelled window in all of {list(modalities)}")
    return SampleSet.natural(X, labels)


def _flat_model(flat: Mapping[str, torch.Tensor], data: NodeData, tower: TowerConfig | None) -> tuple[AlignedModel, FusionHead]:
    held = set(data.modalities())
    mods = sorted({block_of(k) for k in flat} - {SHARED_BLOCK})
    unknown = [m for m in mods if m not in held]
    if unknown:
        raise ValueError(f"node {data.node_id!r} holds no {unknown[0]!r} (it holds {sorted(held)})")
    return model_from_flat(dict(flat), {m: data.spec(m) for m in mods}, tower or TowerConfig())


def local_finetune(
    flat: Mapping[str, torch.Tensor], data: NodeData, cfg: LocalFinetuneConfig, device: torch.device | None = None, seed: int = 0, tower: TowerConfig | None = None
) -> tuple[dict[str, torch.Tensor], int, dict[str, float]]:
    """One node's round of federated fine-tuning: the model it was sent, trained end to end on its own labelled windows.

    Returns the updated flat state (the same keys), the labelled windows trained on and the loss terms.
    """
    model, head = _flat_model(flat, data, tower)
    samples = labelled_windows(data, model.modalities)
    terms = finetune_local(model, head, samples, cfg, device or torch.device("cpu"), seed=seed)
    return flat_state(model, head), len(samples), terms


def local_validate(flat: Mapping[str, torch.Tensor], data: NodeData, device: torch.device | None = None, tower: TowerConfig | None = None) -> dict[str, float]:
    """Accuracy, macro-F1 and the confusion matrix (flat) of a candidate model, not installed, on the node's labelled windows (all its modalities together)."""
    device = device or torch.device("cpu")
    model, head = _flat_model(flat, data, tower)
    samples = labelled_windows(data, model.modalities)
    pred = predict(model, head, samples, device)
    k = head.n_classes
    confusion = np.bincount(samples.label * k + pred, minlength=k * k)
    return {**metrics(samples.label, pred), "n": float(len(samples)), "confusion": confusion.tolist()}
