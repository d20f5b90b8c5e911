"""The work a node does in a campaign, as plain functions (no Flower here).

``local_pretrain`` runs the self-supervised encoder objective on the node's
windows (one FedAvg round); ``encode_and_pack`` turns every window into
encoder features in EmbeddingBatches; ``apply_bundles`` checks signed adapter
bundles and swaps them in; ``evaluate_local`` scores the node's labelled
windows with every subset of its modalities. The node's frozen encoders and
current bundles live in a ``NodeRuntime`` directory, written so that a
half-written file is never loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.codec import BundleRejected, CodecError, bundle_to_states, encode_embeddings, parse_message, state_version, verify_bundle
from common.evaluate import LocalFinetuneConfig, finetune_local, metrics, predict, subsets
from common.modalities import ModalitySpec
from common.pretrain import PretrainConfig, embed_windows, make_pretrain_head, pretrain_encoder, pretrain_jointly
from common.samples import SampleSet
from common.towers import SHARED_BLOCK, AlignedModel, ConceptAdapter, FusionHead, PrototypeNet, TowerConfig, block_of, build_encoder, flat_state, head_for_state, model_from_flat
from node_agent.data import NodeData
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
    _load(encoder, encoder_state, f"{modality!r} encoder")
    _load(head, head_state, f"{modality!r} {cfg.objective} head")
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
        _load(encoders[m], states[m][0], f"{m!r} encoder")
        _load(heads[m], states[m][1], f"{m!r} {cfg.objective} head")
    terms = pretrain_jointly(encoders, [windows], cfg, device or torch.device("cpu"), seed=seed, heads=heads)
    out = {m: {"encoder": _cpu_state(encoders[m]), "head": _cpu_state(heads[m])} for m in mods}
    return out, len(labels), terms


def _load(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(dict(state), strict=True)
    except (RuntimeError, KeyError) as e:
        raise ValueError(f"{what}: the state does not fit this node's model ({str(e).splitlines()[0]})") from e


def _cpu_state(module: nn.Module) -> State:
    return {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}


# --- collect -----------------------------------------------------------------------------


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
        feats = embed_windows(encoders[m], x, device)
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


# --- the node's runtime state ----------------------------------------------------------------


class NodeRuntime:
    """Frozen encoders and current adapter bundles of one node, in a directory.

    Files are written under new names and ``state.json`` is replaced last, in
    one rename, so a reader sees either the old set or the new one, never half.
    ``store`` (a NodeStore) additionally records each adapter version applied.
    """

    def __init__(self, root: str | Path, store=None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = store

    # state.json --------------------------------------------------------------
    def state(self) -> dict:
        path = self.root / "state.json"
        return json.loads(path.read_text()) if path.exists() else {"encoders": {}, "adapters": {}}

    def _write_state(self, state: dict) -> None:
        _atomic_write(self.root / "state.json", json.dumps(state, indent=1, sort_keys=True).encode())

    # encoders ----------------------------------------------------------------
    def install_encoders(self, states: Mapping[str, Mapping[str, torch.Tensor]], specs: Mapping[str, ModalitySpec], tower: TowerConfig) -> dict[str, str]:
        """Keep these frozen encoders; return modality -> encoder version."""
        state = self.state()
        versions = {}
        for m, sd in states.items():
            enc = build_encoder(specs[m], tower)
            _load(enc, sd, f"{m!r} encoder")
            v = state_version(sd)
            buf = io.BytesIO()
            torch.save({k: t.detach().cpu() for k, t in sd.items()}, buf)
            name = f"encoders/{m}-{v}.pt"
            _atomic_write(self.root / name, buf.getvalue())
            state["encoders"][m] = {"version": v, "file": name, "spec": asdict(specs[m])}
            versions[m] = v
        state["tower"] = tower.to_dict()
        self._write_state(state)
        return versions

    def remember_key(self, key_id: str, hexkey: str) -> None:
        """Keep a signing key the coordinator sent in-band (when the node has none configured)."""
        bytes.fromhex(hexkey)
        state = self.state()
        state.setdefault("in_band_keys", {})[key_id] = hexkey
        self._write_state(state)

    def encoder_versions(self) -> dict[str, str]:
        return {m: e["version"] for m, e in self.state()["encoders"].items()}

    def encoders(self) -> dict[str, nn.Module]:
        state = self.state()
        tower = TowerConfig.from_dict(state.get("tower"))
        out = {}
        for m, e in state["encoders"].items():
            enc = build_encoder(ModalitySpec(**e["spec"]), tower)
            enc.load_state_dict(torch.load(self.root / e["file"], weights_only=True))
            out[m] = enc.eval()
        return out

    # adapters ----------------------------------------------------------------
    def adapter_versions(self) -> dict[str, int]:
        return {m: int(a["version"]) for m, a in self.state()["adapters"].items()}

    def bundles(self) -> dict[str, pb.AdapterBundle]:
        return {m: parse_message((self.root / a["file"]).read_bytes(), pb.AdapterBundle) for m, a in self.state()["adapters"].items()}

    def swap_in(self, bundles: Mapping[str, pb.AdapterBundle]) -> None:
        """Make ``bundles`` the current adapters, all at once."""
        state = self.state()
        for m, b in bundles.items():
            blob = b.SerializeToString(deterministic=True)
            name = f"adapters/{m}-v{b.version}.pb"
            _atomic_write(self.root / name, blob)
            state["adapters"][m] = {"version": int(b.version), "file": name, "sha256": hashlib.sha256(blob).hexdigest()}
        self._write_state(state)
        if self.store is not None:
            for m, b in bundles.items():
                a = state["adapters"][m]
                self.store.record_adapter(m, int(b.version), str(self.root / a["file"]), a["sha256"])


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- push ----------------------------------------------------------------------------------


def apply_bundles(bundles: Sequence[bytes | pb.AdapterBundle], keys: Mapping[str, bytes], runtime_state: NodeRuntime) -> dict[str, dict]:
    """Verify signed bundles and swap in those that pass, together.

    A bundle is refused (and named in ``rejected`` with the reason) when it
    does not parse, is unsigned or signed by an unknown key, is not newer than
    the version in use, is for a modality this node has no encoder for, was
    aligned on another encoder version, or does not fit the towers.
    """
    accepted: dict[str, pb.AdapterBundle] = {}
    rejected: dict[str, str] = {}
    current = runtime_state.adapter_versions()
    encoder_versions = runtime_state.encoder_versions()
    tower = TowerConfig.from_dict(runtime_state.state().get("tower"))
    for i, raw in enumerate(bundles):
        name = f"bundle-{i}"
        try:
            b = raw if isinstance(raw, pb.AdapterBundle) else parse_message(bytes(raw), pb.AdapterBundle)
            name = b.modality or name
            verify_bundle(b, keys, min_version=current.get(b.modality))
            if b.modality not in encoder_versions:
                raise ValueError(f"no encoder for modality {b.modality!r} on this node")
            if b.encoder_version and b.encoder_version != encoder_versions[b.modality]:
                raise ValueError(f"aligned on encoder {b.encoder_version}, this node runs {encoder_versions[b.modality]}")
            _check_fits(b, tower)
            accepted[b.modality] = b
        except (BundleRejected, CodecError, ValueError) as e:
            rejected[name] = str(e)
    if accepted:
        runtime_state.swap_in(accepted)
    return {"applied": {m: int(b.version) for m, b in accepted.items()}, "rejected": rejected}


def _check_fits(bundle: pb.AdapterBundle, tower: TowerConfig) -> None:
    st = bundle_to_states(bundle)
    _load(ConceptAdapter(tower.feature_dim, tower.adapter_hidden, tower.embed_dim), st.adapter, f"{bundle.modality!r} adapter")
    _load(PrototypeNet(tower.embed_dim, tower.prototype_hidden), st.prototype, "prototype")
    if st.head is not None:
        _load(head_for_state(st.head), st.head, "head")


# --- evaluate ------------------------------------------------------------------------------


def runtime_model(runtime_state: NodeRuntime, modalities: Sequence[str]) -> tuple[AlignedModel, FusionHead, list[str]]:
    """The aligned towers and head a node runs: its encoders with the current bundles."""
    state = runtime_state.state()
    tower = TowerConfig.from_dict(state.get("tower"))
    bundles = runtime_state.bundles()
    mods = sorted(m for m in modalities if m in bundles and m in state["encoders"])
    if not mods:
        raise ValueError(f"no modality of {list(modalities)} has both an encoder and an adapter bundle on this node")
    specs = {m: ModalitySpec(**state["encoders"][m]["spec"]) for m in mods}
    model = AlignedModel(specs, tower)
    encoders = runtime_state.encoders()
    newest = max(mods, key=lambda m: bundles[m].version)
    for m in mods:
        st = bundle_to_states(bundles[m])
        model.encoders[m].load_state_dict(encoders[m].state_dict())
        model.adapters[m].load_state_dict(st.adapter)
    top = bundle_to_states(bundles[newest])
    model.prototype.load_state_dict(top.prototype)
    if top.head is None:
        raise ValueError(f"bundle {newest!r} v{bundles[newest].version} carries no head")
    head = head_for_state(top.head)
    head.load_state_dict(top.head)
    return model.eval(), head.eval(), list(top.head_classes)


def evaluate_local(data: NodeData, runtime_state: NodeRuntime, device: torch.device | None = None) -> dict[str, dict]:
    """Accuracy, macro-F1, count and confusion matrix on the node's labelled windows, per modality subset."""
    device = device or torch.device("cpu")
    model, head, classes = runtime_model(runtime_state, data.modalities())
    mods = model.modalities
    windows, labels = shared_windows(data, mods)
    feats = {m: embed_windows(model.encoders[m], x, device).numpy() for m, x in windows.items()}
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
