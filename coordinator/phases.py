"""The coordinator's side of a campaign, as plain functions the ServerApp calls.

Each phase takes and returns plain data (state dicts, decoded batches, sample
sets, bundles), so every one is tested without Flower. The learning calls are
exactly those of the central experiments (``common.mmbind``,
``common.evaluate``), on the features the nodes uploaded, so a federated
campaign and a central run on the same scenario and seed agree.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from common.binding import BoundPairs, PairWeighting
from common.codec import (
    CodecError,
    bundle_from_modules,
    decode_embeddings,
    decode_manifest,
    key_from_file,
    key_from_hex,
    key_id_of,
    manifest_specs,
    new_signing_key,
    parse_embedding_batch,
    public_key_of,
    sign_bundle,
)
from common.evaluate import HeadConfig, confusion_metrics
from common.evaluate import fit_head as _fit_head
from common.mmbind import AlignConfig, align, label_pseudo_pairs, pseudo_pair_samples, sensor_pseudo_pairs
from common.modalities import ModalitySpec
from common.pretrain import PretrainConfig, make_pretrain_head
from common.samples import SampleSet
from common.towers import AlignedModel, FusionHead, TowerConfig, build_encoder
from proto import edgebind_pb2 as pb

if TYPE_CHECKING:
    from coordinator.store_schema import Embeddings

log = logging.getLogger("edgebind.campaign")

State = dict[str, torch.Tensor]


# --- pretrain (aggregation of the nodes' updates: ``coordinator.aggregation``) ---------------------


def initial_encoders(specs: Mapping[str, ModalitySpec], tower: TowerConfig, seed: int, cfg: PretrainConfig) -> dict[str, dict[str, State]]:
    """Global encoder and objective-head states before round 1, seeded like the central experiments."""
    out = {}
    for k, m in enumerate(sorted(specs)):
        torch.manual_seed(seed * 1000 + k)
        enc = build_encoder(specs[m], tower)
        head = make_pretrain_head(enc, specs[m].window, specs[m].channels, cfg)
        out[m] = {"encoder": enc.state_dict(), "head": head.state_dict()}
    return out


# --- collect ---------------------------------------------------------------------------------


@dataclass
class CollectReport:
    stored: int = 0
    duplicates: int = 0
    rejected: list[str] = field(default_factory=list)
    windows: dict[str, int] = field(default_factory=dict)  # modality -> windows newly stored
    bytes: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def add(self, other: CollectReport) -> CollectReport:
        """This report and ``other`` (a later wave's) together."""
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        for m, n in other.windows.items():
            self.windows[m] = self.windows.get(m, 0) + n
        self.bytes += other.bytes
        return self


def collect(
    store,
    campaign_id: str,
    uploads: Iterable[tuple[str, bytes]],
    known_modalities: Sequence[str],
    expected_dim: int | None = None,
    groups: Mapping[str, Container[str]] | None = None,
    quotas: Mapping[str, Mapping[str, int]] | None = None,
) -> CollectReport:
    """Check and store uploaded EmbeddingBatches, given as (sender node id, serialised batch).

    A batch stored before (same node, campaign and batch id) is counted as a
    duplicate and changes nothing; a batch that does not decode, names another
    node or campaign, has an unknown modality or the wrong dimension, or (with
    ``groups``: node id -> the groups it may upload) names a group its node
    did not announce, or (with ``quotas``: node id -> group -> the windows its
    manifest announced) names no group or would take a node's stored windows
    of a group and modality beyond what it announced, counting what earlier
    waves and runs stored, is rejected with its reason and nothing is stored
    for it.
    """
    rep = CollectReport()
    used: dict[str, dict[tuple[str, str], int]] = {}  # sender -> (group, modality) -> windows stored so far
    for sender, blob in uploads:
        rep.bytes += len(blob)
        try:
            msg = parse_embedding_batch(blob)
            d = decode_embeddings(msg, expected_dim=expected_dim, known_modalities=set(known_modalities))
            if d.node_id != sender:
                raise CodecError(f"batch {d.batch_id!r} from {sender!r} claims node {d.node_id!r}")
            if d.campaign_id != campaign_id:
                raise CodecError(f"batch {d.batch_id!r} from {sender!r} is for campaign {d.campaign_id!r}, not {campaign_id!r}")
            if groups is not None and d.group and d.group not in groups.get(sender, ()):
                raise CodecError(f"batch {d.batch_id!r} from {sender!r} is for group {d.group!r}, which that node did not announce")
            key = (d.group, d.modality)
            if quotas is not None:
                if not d.group:  # a node's quota is per group it announced: a batch must say which
                    raise CodecError(f"batch {d.batch_id!r} from {sender!r} names no group, so no quota of its node covers it")
                if sender not in used:  # what earlier waves, rejoins and runs of this campaign stored for it
                    used[sender] = store.stored_rows(campaign_id, sender)
                held, quota = used[sender].get(key, 0), quotas.get(sender, {}).get(d.group, 0)
                # over the quota unless it is a batch stored before (a duplicate, which changes nothing)
                if held + len(d) > quota and store.embedding_batch(sender, campaign_id, d.batch_id) is None:
                    raise CodecError(f"batch {d.batch_id!r} from {sender!r} holds {len(d)} {d.modality} windows of group {d.group!r}: "
                                     f"with the {held} stored, more than the {quota} its manifest announced")  # fmt: skip
            new = store.add_embedding_batch(  # stored as sent: float16 stays float16, int8 keeps its scales
                node_id=d.node_id, campaign_id=campaign_id, batch_id=d.batch_id, modality=d.modality,
                window_ids=d.window_ids, embeddings=d.wire, labels=d.labels, subjects=d.subjects,
                encoder_version=d.encoder_version, scales=d.scales, timestamps_ns=d.timestamps_ns, group=d.group,
            )  # fmt: skip
        except (CodecError, ValueError) as e:
            rep.rejected.append(f"{sender}: {e}")
            log.warning("collect: rejected a batch from %s: %s", sender, e)
            continue
        if new:
            rep.stored += 1
            rep.windows[d.modality] = rep.windows.get(d.modality, 0) + len(d)
            if sender in used:
                used[sender][key] = used[sender].get(key, 0) + len(d)
        else:
            rep.duplicates += 1
    return rep


# --- node groups -------------------------------------------------------------------------------


@dataclass
class NodePart:
    """Windows of one scenario group on a node, as its manifest announced them."""

    group: str
    role: str
    windows: int = 0
    labelled: int = 0


@dataclass
class NodeInfo:
    """What a node said about itself in its manifest.

    ``group`` and ``role`` are the node's own; ``parts`` lists every group it
    holds windows of (a node may also hold held-out validation or test
    subjects), its own first. Left empty, it is just the node's own group.
    """

    node_id: str
    group: str
    role: str
    modalities: list[str]
    windows: int = 0
    labelled: int = 0
    flower_id: int = 0
    parts: list[NodePart] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.parts:
            self.parts = [NodePart(self.group, self.role, self.windows, self.labelled)]
        roles = [p.role for p in self.parts]
        if len(set(roles)) != len(roles):
            raise ValueError(f"node {self.node_id!r}: more than one part with the same role ({roles})")

    @property
    def roles(self) -> list[str]:
        return [p.role for p in self.parts]

    def part(self, role: str) -> NodePart | None:
        return next((p for p in self.parts if p.role == role), None)

    def group_of(self, batch_group: str) -> str:
        """The group a batch belongs to: the one it names, else the node's own."""
        return batch_group or self.group


def read_manifest(
    blob: bytes, flower_id: int, known: Mapping[str, ModalitySpec] | None = None, taken: Container[str] = ()
) -> tuple[NodeInfo, dict[str, ModalitySpec], list[str]]:
    """A node's manifest (``NodeManifest`` bytes) as (NodeInfo, its specs, its class names), or ValueError naming what is wrong.

    Refused besides what ``decode_manifest`` refuses: a node id another node
    already announced, and a modality whose spec differs from the one the
    campaign already holds for it.
    """
    m = decode_manifest(blob)
    if m.node_id in taken:
        raise ValueError(f"node id {m.node_id!r} is already held by another node in this campaign")
    specs = manifest_specs(m)
    for mod, spec in specs.items():
        if known and mod in known and known[mod] != spec:
            raise ValueError(f"modality {mod!r} announced as {spec}, but the campaign holds it as {known[mod]}")
    parts = [NodePart(p.group, p.role, int(p.n_windows), int(p.n_labelled)) for p in m.parts]
    windows = max(int(mi.n_windows) for mi in m.modalities)
    labelled = max(int(mi.n_labelled) for mi in m.modalities)
    info = NodeInfo(m.node_id, m.group, m.role, sorted(specs), windows, labelled, flower_id, parts)
    return info, specs, list(m.classes)


@dataclass
class GroupData:
    """The natural samples of one node group, rebuilt from its uploads.

    Row r is window ``window_ids[r]`` of node ``node_ids[r]``, present in every
    modality of the group; ``labels`` are -1 where the node had none.
    """

    name: str
    role: str
    modalities: list[str]
    node_ids: np.ndarray
    window_ids: np.ndarray
    features: dict[str, np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.window_ids)

    def samples(self, modalities: Sequence[str] | None = None) -> SampleSet:
        mods = list(modalities or self.modalities)
        return SampleSet.natural({m: self.features[m] for m in mods}, self.labels)


def group_data(store, campaign_id: str, nodes: Sequence[NodeInfo], roles: Sequence[str] = ("train", "validation")) -> dict[str, GroupData]:
    """Each group's natural samples, windows in the order the nodes uploaded them.

    A node contributes to every group it holds a part of whose role is in
    ``roles``; each uploaded window goes to the group its batch named.
    """
    groups: dict[str, list[NodeInfo]] = {}
    role_of: dict[str, str] = {}
    for n in nodes:
        for p in n.parts:
            if p.role in roles:
                groups.setdefault(p.group, []).append(n)
                if role_of.setdefault(p.group, p.role) != p.role:
                    raise ValueError(f"group {p.group!r} is announced with roles {role_of[p.group]!r} and {p.role!r}")
    out = {}
    for base, everyone in groups.items():
        held: dict[tuple[str, ...], list[NodeInfo]] = {}
        for n in everyone:
            held.setdefault(tuple(sorted(n.modalities)), []).append(n)
        for mods_key, members in sorted(held.items()):
            # nodes of one scenario group that lost modalities (``missing_modality``) form a group per set of modalities:
            # their windows are natural samples of what they hold, and binding can complete them through a shared one
            name = base if len(held) == 1 else f"{base}[{'+'.join(mods_key)}]"
            data = _natural_group(store, campaign_id, base, name, role_of[base], list(mods_key), members)
            if data is not None:
                out[name] = data
    return out


def _natural_group(store, campaign_id: str, base: str, name: str, role: str, mods: list[str], members: list[NodeInfo]) -> GroupData | None:
    """The windows that ``members`` uploaded for scenario group ``base`` in every one of ``mods``, as one group called ``name``.

    The store is read twice per modality, one batch at a time: first without the
    vectors, to choose the windows, then for the chosen rows, which go to a
    file-backed array (``spill_features``). What is held in memory is one
    stored batch and the group's ids and labels, whatever the fleet uploaded.
    """
    ids = [n.node_id for n in members]
    by_id = {n.node_id: n for n in members}
    index = {m: list(store.embedding_blocks(campaign_id, m, node_ids=ids, vectors=False)) for m in mods}
    pos, labels_of = {}, {}
    for m, blocks in index.items():
        rows = ((nid, g, w) for b in blocks for nid, g, w in zip(b.node_ids.tolist(), b.groups.tolist(), b.window_ids.tolist()))
        pos[m] = {(nid, w): i for i, (nid, g, w) in enumerate(rows) if by_id[nid].group_of(g) == base}
        labels_of[m] = np.concatenate([b.labels for b in blocks]) if blocks else np.zeros(0, np.int64)
    del index
    first = pos[mods[0]]
    common = [key for key in first if all(key in pos[m] for m in mods[1:])]
    if not common:
        log.warning("group %s: no window uploaded in all of %s", name, mods)
        return None
    feats, labels = {}, None
    for m in mods:
        sel = np.fromiter((pos[m][key] for key in common), dtype=np.int64, count=len(common))
        feats[m] = read_rows(store.embedding_blocks(campaign_id, m, node_ids=ids), sel)
        labels = labels_of[m][sel] if labels is None else np.maximum(labels, labels_of[m][sel])
    node_ids = np.array([k[0] for k in common])
    window_ids = np.array([k[1] for k in common])
    return GroupData(name, role, mods, node_ids, window_ids, feats, labels)


def spill_features(rows: int, dim: int) -> np.ndarray:
    """A (rows, dim) float32 array backed by an unnamed temporary file (``$TMPDIR``), not by memory.

    The kernel pages it in and out as binding and growth read their blocks;
    the file goes with the last reference to the array.
    """
    with tempfile.TemporaryFile(prefix="edgebind-features-") as f:
        return np.memmap(f, dtype=np.float32, mode="w+", shape=(rows, dim))


def read_rows(blocks: Iterable[Embeddings], sel: np.ndarray) -> np.ndarray:
    """Rows ``sel`` (positions in the blocks' concatenated order) of blocks read one at a time, into ``spill_features``."""
    order = np.argsort(sel, kind="stable")
    wanted = sel[order]
    out, start = None, 0
    for b in blocks:
        n = len(b.window_ids)
        lo, hi = np.searchsorted(wanted, [start, start + n])
        if hi > lo:
            if out is None:
                out = spill_features(len(sel), b.x.shape[1])
            out[order[lo:hi]] = b.x[wanted[lo:hi] - start]
        start += n
    if out is None or (len(wanted) and wanted[-1] >= start):
        raise ValueError(f"read_rows: rows up to {int(wanted[-1]) if len(wanted) else -1} asked of {start} stored")
    return out


# --- bind ----------------------------------------------------------------------------------------


@dataclass
class BindSettings:
    binding: str = "sensor"  # "sensor" (through ``shared``) or "label"
    shared: str | None = None
    weighting: PairWeighting = field(default_factory=PairWeighting)
    k: int = 1
    label_pairs_per_sample: int = 4


@dataclass
class BoundSamples:
    """The training samples built from every two groups' ``BoundPairs``, and a summary of each two groups' pairs."""

    samples: SampleSet | None
    info: list[dict]

    @property
    def n_pairs(self) -> int:
        return sum(i["pairs"] for i in self.info)


def bind(
    groups: Mapping[str, GroupData],
    settings: BindSettings,
    seed: int,
    device: torch.device | None = None,
    store=None,
    campaign_id: str | None = None,
) -> BoundSamples:
    """MMBind across every two training groups that hold different modalities.

    Sensor binding pairs windows through the shared modality both groups hold
    (groups without it are not bound); label binding pairs labelled windows of
    the same class. Pairs are stored per group pair when a store is given.
    """
    train = [g for g in groups.values() if g.role == "train"]
    sets, info = [], []
    for ga, gb in combinations(train, 2):
        if set(ga.modalities) == set(gb.modalities):
            continue
        a = {m: ga.features[m] for m in ga.modalities}
        b = {m: gb.features[m] for m in gb.modalities}
        if settings.binding == "sensor":
            s = settings.shared
            if s not in ga.modalities or s not in gb.modalities:
                continue
            pairs = sensor_pseudo_pairs(a[s], b[s], settings.weighting, k=settings.k, device=device)
            samples = pseudo_pair_samples(a, b, pairs, keep_shared=s)
        elif settings.binding == "label":
            ia, ib = np.flatnonzero(ga.labels >= 0), np.flatnonzero(gb.labels >= 0)
            lp = label_pseudo_pairs(ga.labels[ia], gb.labels[ib], settings.label_pairs_per_sample, seed)
            pairs = BoundPairs(ia[lp.i], ib[lp.j], lp.similarity, lp.weight)
            samples = pseudo_pair_samples(a, b, pairs)
            samples.label = ga.labels[pairs.i]  # label-bound windows share a known class
        else:
            raise ValueError(f"binding must be 'sensor' or 'label', got {settings.binding!r}")
        stage = f"bind:{ga.name}~{gb.name}"
        if store is not None and campaign_id is not None and len(pairs):
            store.add_pairs(
                campaign_id, stage, ga.node_ids[pairs.i], ga.window_ids[pairs.i], gb.node_ids[pairs.j],
                gb.window_ids[pairs.j], pairs.similarity.astype(np.float64), pairs.weight.astype(np.float64),
            )  # fmt: skip
        info.append({
            "groups": [ga.name, gb.name],
            "stage": stage,
            "pairs": len(pairs),
            "mean_similarity": float(pairs.similarity.mean()) if len(pairs) else float("nan"),
            "mean_weight": float(pairs.weight.mean()) if len(pairs) else float("nan"),
        })  # fmt: skip
        if len(pairs):
            sets.append(samples)
    return BoundSamples(SampleSet.concat(sets) if sets else None, info)


# --- grow and fit the head ---------------------------------------------------------------------


def new_model(specs: Mapping[str, ModalitySpec], tower: TowerConfig, seed: int, encoders: Mapping[str, Mapping[str, torch.Tensor]]) -> AlignedModel:
    """The towers to align, initialised as the central experiments do, with the federated encoders."""
    torch.manual_seed(seed)
    model = AlignedModel(dict(specs), tower)
    for m, sd in encoders.items():
        if m in model.encoders:
            model.encoders[m].load_state_dict(dict(sd))
    return model


def align_mmbind(
    model: AlignedModel,
    natural: SampleSet,
    pseudo: SampleSet | None,
    cfg: AlignConfig,
    device: torch.device,
    seed: int,
    store=None,
    campaign_id: str | None = None,
    index: int = 0,
) -> dict:
    """MMBind's stage: align adapters and prototype on the natural incomplete samples plus the pseudo-pairs.

    ``index`` is the stage's place in the campaign (after a Babel plan's stages).
    """
    train = natural if pseudo is None else SampleSet.concat([natural, pseudo])
    t0 = time.time()
    if store is not None and campaign_id is not None:
        store.record_stage(campaign_id, index, "mmbind", "running")
    history = align(model, train, cfg, device, seed)
    out = {
        "stage": "mmbind",
        "samples": len(train),
        "natural": len(natural),
        "pseudo": 0 if pseudo is None else len(pseudo),
        "epochs": cfg.epochs,
        "final_contrastive_loss": history[-1]["contrastive_loss"] if history else float("nan"),
        "seconds": time.time() - t0,
    }
    if store is not None and campaign_id is not None:
        store.record_stage(campaign_id, index, "mmbind", "done", metrics=out)
    return out


def grow_babel(
    model: AlignedModel,
    plan: str,
    groups: Mapping[str, GroupData],
    cfg: AlignConfig,
    device: torch.device,
    seed: int,
    store=None,
    campaign_id: str | None = None,
    checkpoint_dir=None,
    resume: bool = False,
) -> dict:
    """Babel: grow the aligned space along a GrowthPlan (``common.growth``), one binary stage per plan stage.

    Each stage's source names a node group whose uploads pair its two
    modalities (natural pairs); its towers must be in ``model``. With
    ``resume``, stages whose checkpoints are in ``checkpoint_dir`` are loaded, not trained again.
    """
    from common.growth import GrowthConfig, GrowthPlan, PairData
    from common.growth import grow as grow_stages

    gp = GrowthPlan.from_toml(plan)
    sources = sorted({st.source for st in gp.stages})
    absent = [s for s in sources if s not in groups]
    if absent:
        raise ValueError(f"plan {gp.name!r} grows on group {absent[0]!r}, which uploaded nothing (groups: {sorted(groups)})")
    data = {s: PairData({m: groups[s].features[m] for m in groups[s].modalities if m in gp.modalities}) for s in sources}
    gcfg = GrowthConfig(**cfg.contrastive(), seed=seed)  # every alignment setting, the temperature too
    t0 = time.time()
    result = grow_stages(model, gp, data, gcfg, device, checkpoint_dir=checkpoint_dir, resume=resume)
    stages = []
    for rec in result.records:
        w = np.array(rec.weights) if rec.weights else np.full((1, 2), np.nan)
        row = {"stage": rec.stage, "steps": rec.steps, "seconds": rec.seconds, "last_losses": rec.losses[-1] if rec.losses else {},
               "mean_weights": [float(np.nanmean(w[:, 0])), float(np.nanmean(w[:, 1]))]}  # fmt: skip
        stages.append(row)
        if store is not None and campaign_id is not None:
            st = gp.stages[rec.index]
            ck = f"{checkpoint_dir}/stage-{rec.index + 1}.pt" if checkpoint_dir is not None else ""
            store.record_stage(campaign_id, rec.index, f"{st.connecting}<->{st.branch}@{st.source}", "done", metrics=row, checkpoint_path=ck)
    return {"plan": gp.name, "stages": stages, "pairs": {s: len(d) for s, d in data.items()}, "seconds": time.time() - t0}


def fit_head(model: AlignedModel, train: SampleSet, val: SampleSet, n_classes: int, cfg: HeadConfig, device: torch.device, seed: int,
             unlabelled: SampleSet | None = None) -> tuple[AlignedModel, FusionHead, dict]:
    """The few-label head on uploaded features (self-trained on ``unlabelled`` ones too); its step is chosen on the validation nodes' windows only."""
    model, head, choice = _fit_head(model, train, val, n_classes, cfg, device, seed=seed, features=True, unlabelled=unlabelled)
    choice = {k: v for k, v in choice.items() if k != "val_history"}
    return model.cpu(), head.cpu(), choice


# --- push ----------------------------------------------------------------------------------------


def signing_key(config_key: str, config_key_id: str, env: Mapping[str, str], config_key_file: str = "") -> tuple[bytes, str, str]:
    """(Ed25519 private key, key id, source) for signing bundles.

    In order: the run config's ``signing-key-file``, then ``EDGEBIND_SIGNING_KEY_FILE``
    (a 0600 file of hex, as ``edgebind-coordinator keygen`` writes it: the key
    itself never travels on a command line or in an environment), then the run
    config's ``signing-key`` and ``EDGEBIND_SIGNING_KEY`` (hex, for simulations),
    else a new key. Nodes verify with the public key alone, provisioned on each
    deployed node (``edgebind-node up --signing-public-key``); a key made for one
    campaign can be trusted by simulated nodes only (they take its public key
    in-band), never by a deployed node. The id defaults to ``key_id_of`` the public key.
    """
    files = (("run-config file", config_key_file, config_key_id), ("env file", env.get("EDGEBIND_SIGNING_KEY_FILE", ""), env.get("EDGEBIND_SIGNING_KEY_ID", "")))
    for source, path, key_id in files:
        if path:
            key = key_from_file(path, "private")
            return key, key_id or key_id_of(public_key_of(key)), source
    for source, hexkey, key_id in (("run-config", config_key, config_key_id), ("env", env.get("EDGEBIND_SIGNING_KEY", ""), env.get("EDGEBIND_SIGNING_KEY_ID", ""))):
        if hexkey:
            key = key_from_hex(hexkey, f"signing key from {source}", "private")
            return key, key_id or key_id_of(public_key_of(key)), source
    key = new_signing_key()
    return key, key_id_of(public_key_of(key)), "generated"


def make_bundles(
    model: AlignedModel,
    head: FusionHead,
    modalities: Sequence[str],
    store,
    campaign_id: str,
    key: bytes,
    key_id: str,
    head_classes: Sequence[str] = (),
    encoder_versions: Mapping[str, str] | None = None,
    rotations: Sequence[pb.KeyRotation] = (),
) -> list[pb.AdapterBundle]:
    """One signed AdapterBundle per modality (adapter, shared prototype and head), versioned by the store; each carries
    the key's ``rotations`` (``coordinator.keys``)."""
    out = []
    for m in sorted(modalities):
        version = store.next_adapter_version(m)
        b = bundle_from_modules(
            m, version, model.adapters[m], model.prototype, head, head_classes=head_classes,
            campaign_id=campaign_id, encoder_version=(encoder_versions or {}).get(m, ""),
        )  # fmt: skip
        sign_bundle(b, key, key_id, rotations=rotations)
        blob = b.SerializeToString(deterministic=True)
        store.record_adapter_version(m, version, campaign_id, blob, hashlib.sha256(blob).hexdigest())
        out.append(b)
    return out


# --- evaluate --------------------------------------------------------------------------------------


def summarise(evaluations: Mapping[str, Mapping[str, Mapping[str, Any]]], n_classes: int) -> dict[str, dict]:
    """Pool the nodes' per-subset confusion matrices into one figure per modality subset."""
    pooled: dict[str, np.ndarray] = {}
    nodes: dict[str, list[str]] = {}
    for node, per_subset in evaluations.items():
        for subset, m in per_subset.items():
            conf = np.asarray(m["confusion"], dtype=np.int64)
            if conf.size != n_classes * n_classes:
                raise ValueError(f"node {node!r}, subset {subset!r}: confusion of {conf.size} cells, expected {n_classes}x{n_classes}")
            pooled[subset] = pooled.get(subset, 0) + conf.reshape(n_classes, n_classes)
            nodes.setdefault(subset, []).append(node)
    order = sorted(pooled, key=lambda s: (s.count("+"), s))
    return {s: {**confusion_metrics(pooled[s]), "n": int(pooled[s].sum()), "nodes": sorted(nodes[s])} for s in order}
