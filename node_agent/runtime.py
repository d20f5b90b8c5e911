"""The node's edge runtime: frozen encoders plus the current adapters, local inference, hot swap.

The runtime reads the same directory the ClientApp writes (``node_agent.tasks``'
state directory: ``state.json`` naming ``encoders/<m>-<version>.pt`` and
``adapters/<m>-v<version>.pb``, each written to a temporary file, fsynced and
renamed, ``state.json`` last). Before any adapter reaches the model in memory,
its file's sha256 must match ``state.json`` and its signature must verify; if
either fails the runtime keeps the adapters it has and counts the rejection.
The in-memory model is replaced in one assignment, so an inference runs wholly
on the old adapters or wholly on the new.

``install`` takes bundles from anywhere (the Registry service after a reboot,
``fetch_latest``; a file), refusing replayed, unsigned, tampered or ill-fitting
ones; ``infer`` turns windows of any subset of the node's modalities into
aligned embeddings, their fusion and a prediction, and can publish them on
``edgebind/<node>/events``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from common.codec import MAX_FIRST_VERSION, BundleRejected, CodecError, bundle_to_states, key_from_hex, key_id_of, parse_message, verify_bundle
from common.modalities import ModalitySpec
from common.rotation import KeyTrust, follow_rotations
from common.towers import AlignedModel, ConceptAdapter, FusionHead, PrototypeNet, TowerConfig, head_for_state, head_inputs
from node_agent.ingest import events_topic
from node_agent.publish import Publisher
from node_agent.state_dir import StateDir
from proto import edgebind_pb2 as pb

if TYPE_CHECKING:
    import grpc

__all__ = ["Inference", "NodeRuntime", "admit_bundles", "install_bundles", "load_keys", "load_serving", "read_encoder_dir"]

log = logging.getLogger(__name__)

MAX_BUNDLE_BYTES = 64 * 1024 * 1024
# gRPC caps replies at 4 MiB by default; a reply with a bundle per modality can be larger.
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]


def load_keys(path: str | Path | None = None, hexkey: str = "", key_id: str = "") -> dict[str, bytes]:
    """The coordinator's public keys (key id -> 32-byte Ed25519 public key) from a JSON file ``{"key-id": "hex"}`` and/or one hex key.

    The coordinator signs bundles with its Ed25519 private key; a deployed node
    trusts only the public keys it was provisioned with here, never one sent in-band.
    """
    keys: dict[str, bytes] = {}
    if path:
        raw = json.loads(Path(path).read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object of key id -> hex public key")
        keys.update({str(k): key_from_hex(str(v), f"{path}: key {k!r}") for k, v in raw.items()})
    if hexkey:
        key = key_from_hex(hexkey, "signing public key")
        keys[key_id or key_id_of(key)] = key
    return keys


def read_encoder_dir(path: str | Path, modalities: Sequence[str] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Encoder state dicts saved as ``<dir>/<modality>.pt`` (``torch.save`` of a state dict)."""
    root = Path(path)
    files = {p.stem: p for p in sorted(root.glob("*.pt"))}
    wanted = list(files) if modalities is None else list(modalities)
    missing = [m for m in wanted if m not in files]
    if missing:
        raise FileNotFoundError(f"no encoder {missing[0]}.pt in {root} (found: {sorted(files)})")
    return {m: torch.load(files[m], weights_only=True, map_location="cpu") for m in wanted}


@dataclass
class Inference:
    """What the runtime made of a set of windows (rows line up across every array)."""

    window_ids: list[str]
    modalities: list[str]
    embeddings: dict[str, np.ndarray]  # modality -> (N, d), unit length
    fused: np.ndarray  # (N, d): mean of the modalities' embeddings
    logits: np.ndarray | None  # (N, classes), when the bundles carry a head
    predictions: np.ndarray | None  # (N,) class index
    classes: list[str]
    adapter_versions: dict[str, int]

    def labels(self) -> list[str]:
        """Predicted class names (indices as text where the bundle names no classes)."""
        if self.predictions is None:
            return []
        return [self.classes[p] if p < len(self.classes) else str(int(p)) for p in self.predictions]

    def events(self, node_id: str, with_embedding: bool = False) -> list[dict[str, Any]]:
        """One JSON-able event per window, as published on ``edgebind/<node>/events``."""
        now = time.time_ns()
        names = self.labels()
        out = []
        for i, wid in enumerate(self.window_ids):
            e: dict[str, Any] = {
                "node_id": node_id, "window_id": wid, "modalities": self.modalities,
                "adapter_versions": self.adapter_versions, "time_ns": now,
            }  # fmt: skip
            if self.predictions is not None and self.logits is not None:
                p = torch.softmax(torch.from_numpy(self.logits[i]), -1)
                e.update(prediction=int(self.predictions[i]), label=names[i], confidence=round(float(p.max()), 4))
            if with_embedding:
                e["embedding"] = [round(float(v), 5) for v in self.fused[i]]
            out.append(e)
        return out


@dataclass
class _Loaded:
    """An immutable snapshot of what inference runs on."""

    key: str  # what state.json said when this was built
    model: AlignedModel
    heads: dict[str, tuple[FusionHead, list[str]]]  # modality -> the head its bundle carried
    versions: dict[str, int]

    def head_for(self, modalities: Sequence[str]) -> tuple[FusionHead, list[str]] | None:
        """The head of the newest bundle among ``modalities`` that carries one."""
        newest = max((m for m in modalities if m in self.heads), key=lambda m: self.versions[m], default=None)
        return None if newest is None else self.heads[newest]


# --- the one bundle gate ------------------------------------------------------------------------


def admit_bundles(
    bundles: Sequence[bytes | pb.AdapterBundle], state: Mapping[str, Any], keys: Mapping[str, bytes], node_id: str = ""
) -> tuple[dict[str, pb.AdapterBundle], dict[str, str]]:
    """Every check a bundle passes before it may be written to a node: (admitted by modality, refused name -> reason).

    ``state`` is the node's ``state.json``; ``keys`` the coordinator keys the
    node was provisioned with. Names are ``<modality> v<version>``.
    Reasons: ``malformed``, ``unsigned``, ``unknown-key``, ``bad-signature``,
    ``expired``, ``replay`` (not newer than the version held or admitted in this
    call), ``version-jump`` (more than ``codec.MAX_VERSION_JUMP`` past it, or
    a first version above ``codec.MAX_FIRST_VERSION``),
    ``unknown-modality`` (no encoder here), ``encoder-mismatch``, ``bad-shape``.
    A bundle's key rotations are followed first (``common.rotation``; refused
    ones are named ``rotation <old> -> <new>``): see ``admit``.
    """
    accepted, rejected, _ = admit(bundles, state, keys, node_id)
    return accepted, rejected


def admit(
    bundles: Sequence[bytes | pb.AdapterBundle], state: Mapping[str, Any], keys: Mapping[str, bytes], node_id: str = ""
) -> tuple[dict[str, pb.AdapterBundle], dict[str, str], KeyTrust]:
    """``admit_bundles`` and the key trust after the rotations the bundles carried (to be kept with them)."""
    current = {m: int(a["version"]) for m, a in state["adapters"].items()}
    encoders = {m: e["version"] for m, e in state["encoders"].items()}
    tower = TowerConfig.from_dict(state.get("tower"))
    trust = KeyTrust.from_state(state)
    accepted: dict[str, pb.AdapterBundle] = {}
    rejected: dict[str, str] = {}
    for i, raw in enumerate(bundles):
        name = f"bundle-{i}"
        try:
            b = raw if isinstance(raw, pb.AdapterBundle) else _parse_bundle(raw)
            name = f"{b.modality or name} v{b.version}"
            if b.rotations:  # a new coordinator key, vouched for by one trusted now: taken before the bundle it signed is checked
                before = trust.signing_keys(keys)
                trust, refused = follow_rotations(list(b.rotations), keys, trust)
                rejected.update(refused)
                for r, reason in refused.items():
                    log.warning("node %s refused key %s: %s", node_id, r, reason)
                if trust.signing_keys(keys) != before:
                    log.warning("node %s: the coordinator's signing key rotated; now trusting %s", node_id, sorted(trust.rotated))
            held = max(current.get(b.modality, 0), accepted[b.modality].version if b.modality in accepted else 0)
            verify_bundle(b, trust.signing_keys(keys), min_version=held or None)
            if not held and b.version > MAX_FIRST_VERSION:
                raise _Refused("version-jump", f"a first version above {MAX_FIRST_VERSION} would refuse every later bundle as a replay")
            if b.modality not in encoders:
                raise _Refused("unknown-modality", f"no encoder for {b.modality!r} on this node (has {sorted(encoders)})")
            if b.encoder_version and b.encoder_version != encoders[b.modality]:
                raise _Refused("encoder-mismatch", f"aligned on encoder {b.encoder_version}, node runs {encoders[b.modality]}")
            _check_fits(b, tower)
            accepted[b.modality] = b
        except (BundleRejected, _Refused) as e:
            rejected[name] = e.reason
            log.warning("node %s refused adapter bundle %s: %s", node_id, name, e)
    return accepted, rejected, trust


def install_bundles(state_dir: StateDir, bundles: Sequence[bytes | pb.AdapterBundle], keys: Mapping[str, bytes], node_id: str = "") -> dict[str, Any]:
    """Admit bundles through the gate and swap in those that pass, together; the only way bundles reach a node's files.

    Returns ``{"applied": {modality: version}, "rejected": {name: reason}}``
    (see ``admit_bundles``; ``write-failed`` when the files could not be written,
    in which case the node keeps its old adapters). A key rotation the gate
    took is pinned in ``state.json`` in the same write as the adapters.
    """
    state = state_dir.state()
    accepted, rejected, trust = admit(bundles, state, keys, node_id)
    rotated = trust != KeyTrust.from_state(state)
    if accepted or rotated:
        try:
            state_dir.swap_in(accepted, key_trust=trust.to_state() if rotated else None)
        except OSError as e:  # nothing was renamed into place: the old adapters stay
            log.error("node %s could not write adapters %s: %s", node_id, sorted(accepted), e)
            return {"applied": {}, "rejected": {**rejected, **{f"{m} v{b.version}": "write-failed" for m, b in accepted.items()}}}
        except ValueError as e:  # the store already holds a newer version
            log.error("node %s: adapters written but the store refused them: %s", node_id, e)
    return {"applied": {m: int(b.version) for m, b in accepted.items()}, "rejected": rejected}


# --- the one serving-model builder --------------------------------------------------------------


def load_serving(root: Path, state: Mapping[str, Any], keys: Mapping[str, bytes], device: torch.device, key: str = "") -> _Loaded | None:
    """The model a node serves, from what ``state`` names, or None when no modality has both an encoder and an adapter.

    Each adapter file must match its sha256 in ``state`` and its signature must
    verify under ``keys``; otherwise ``_Refused`` (``corrupt`` or the
    signature's reason) and nothing is built.
    """
    mods = sorted(set(state["encoders"]) & set(state["adapters"]))
    if not mods:
        return None
    tower = TowerConfig.from_dict(state.get("tower"))
    specs = {m: ModalitySpec(**state["encoders"][m]["spec"]) for m in mods}
    bundles = {}
    for m in mods:
        a = state["adapters"][m]
        path = root / a["file"]
        try:
            blob = path.read_bytes()
        except OSError as e:
            raise _Refused("corrupt", f"{m!r} adapter file {path}: {e}") from e
        if hashlib.sha256(blob).hexdigest() != a["sha256"]:
            raise _Refused("corrupt", f"{m!r} adapter file {path} does not match its sha256 (truncated or altered)")
        try:
            b = parse_message(blob, pb.AdapterBundle, MAX_BUNDLE_BYTES)
            verify_bundle(b, keys)
        except CodecError as e:
            raise _Refused("corrupt", f"{m!r} adapter file {path}: {e}") from e
        except BundleRejected as e:
            raise _Refused(e.reason, f"{m!r} adapter file {path}: {e}") from e
        if b.modality != m or int(b.version) != int(a["version"]):
            raise _Refused("corrupt", f"{path} holds {b.modality!r} v{b.version}, state.json says {m!r} v{a['version']}")
        bundles[m] = b
    model = AlignedModel(specs, tower)
    newest = max(mods, key=lambda m: bundles[m].version)
    heads = {}
    try:
        for m in mods:
            enc = state["encoders"][m]
            model.encoders[m].load_state_dict(torch.load(root / enc["file"], weights_only=True, map_location="cpu"))
            st = bundle_to_states(bundles[m])
            model.adapters[m].load_state_dict(st.adapter)
            if st.head is not None:
                head = head_for_state(st.head)
                head.load_state_dict(st.head)
                heads[m] = (head.eval().to(device), list(st.head_classes))
        model.prototype.load_state_dict(bundle_to_states(bundles[newest]).prototype)
    except (OSError, RuntimeError, CodecError, ValueError) as e:
        raise _Refused("corrupt", f"cannot load the node's towers: {e}") from e
    versions = {m: int(bundles[m].version) for m in mods}
    return _Loaded(key, model.eval().to(device), heads, versions)


def _registry_stub(channel):
    from proto import edgebind_pb2_grpc as pb_grpc

    return pb_grpc.RegistryStub(channel)


def registry_channel(address: str, tls: dict[str, str] | None = None, options: list | None = None) -> grpc.Channel:
    """A channel to the Registry: mutual TLS with ``tls`` (``ca`` and the caller's ``cert`` and ``key``), else plain."""
    import grpc  # here, not at the top: a node without a Registry never loads gRPC (8 MiB of its 300 MB budget)

    if tls is None:
        return grpc.insecure_channel(address, options=options)
    read = lambda k: Path(tls[k]).read_bytes()  # noqa: E731
    creds = grpc.ssl_channel_credentials(root_certificates=read("ca"), private_key=read("key"), certificate_chain=read("cert"))
    return grpc.secure_channel(address, creds, options=options)


class NodeRuntime:
    """Inference with a node's frozen encoders and current adapters, kept in ``root``.

    ``keys`` are the coordinator's public keys (key id -> Ed25519 public key)
    bundles must be signed with. ``store`` (a NodeStore) records adapter versions.
    ``publisher`` (an ``ingest.Publisher``) makes ``infer`` publish events.
    ``registry_tls`` (``ca``, ``cert``, ``key`` files) reaches the Registry over mutual TLS.
    """

    def __init__(
        self,
        root: str | Path,
        node_id: str,
        keys: Mapping[str, bytes] | None = None,
        store: Any = None,
        publisher: Publisher | None = None,
        device: str = "cpu",
        registry_tls: dict[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.node_id = node_id
        self.registry_tls = registry_tls  # ca, cert, key: the Registry is reached over mutual TLS with this node's certificate
        self.state_dir = StateDir(self.root, store=store)
        self.store = store
        self.publisher = publisher
        self.device = torch.device(device)
        self._keys = dict(keys or {})
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self._refused: tuple[str, tuple[str, ...]] | None = None
        self._refusal = ""  # why the last refresh refused what state.json names
        self.rejected: Counter[str] = Counter()
        self.swaps = 0
        self.refresh()

    # --- what the node runs -----------------------------------------------------------

    def keys(self) -> dict[str, bytes]:
        """The public keys bundles must be signed with: those this runtime was given, and nothing from messages."""
        return dict(self._keys)

    @property
    def adapter_versions(self) -> dict[str, int]:
        """Modality -> adapter version in memory (what ``infer`` uses)."""
        loaded = self._loaded
        return dict(loaded.versions) if loaded else {}

    @property
    def modalities(self) -> list[str]:
        """Modalities with both an encoder and an adapter in memory."""
        loaded = self._loaded
        return loaded.model.modalities if loaded else []

    def encoder_specs(self) -> dict[str, ModalitySpec]:
        return self.state_dir.encoder_specs()

    def install_encoders(
        self, states: Mapping[str, Mapping[str, torch.Tensor]], specs: Mapping[str, ModalitySpec], tower: TowerConfig
    ) -> dict[str, str]:
        """Keep these frozen encoders (e.g. a user's pretrained ones); modality -> encoder version."""
        versions = self.state_dir.install_encoders(states, specs, tower)
        self.refresh()
        return versions

    def serving(self, modalities: Sequence[str]) -> tuple[AlignedModel, FusionHead, list[str]]:
        """The loaded towers of ``modalities`` (those the node serves) and the head ``infer`` would use for them all."""
        self.refresh()
        loaded = self._loaded
        if loaded is None:
            why = f" ({self._refusal})" if self._refusal else ""
            raise ValueError(f"node {self.node_id} has no encoder with an adapter to serve{why}")
        mods = [m for m in modalities if m in loaded.model.modalities]
        if not mods:
            raise ValueError(f"no modality of {list(modalities)} has both an encoder and an adapter bundle on node {self.node_id}")
        chosen = loaded.head_for(loaded.model.modalities)
        if chosen is None:
            raise ValueError(f"no adapter bundle on node {self.node_id} carries a head")
        return loaded.model, chosen[0], chosen[1]

    # --- loading, with every check before the swap ----------------------------------------

    def refresh(self) -> bool:
        """Load what ``state.json`` names if it changed; True when the model in memory changed.

        A file whose sha256 or signature does not check out is refused (counted
        as ``corrupt`` or by the signature's reason) and the current model kept.
        """
        with self._lock:
            try:
                state = self.state_dir.state()
            except (OSError, ValueError) as e:
                self.rejected["corrupt"] += 1
                log.error("node %s cannot read %s: %s; keeping its current adapters", self.node_id, self.root / "state.json", e)
                return False
            key = json.dumps({k: state.get(k) for k in ("encoders", "adapters", "tower")}, sort_keys=True)
            if self._loaded is not None and self._loaded.key == key:
                return False
            keys = KeyTrust.from_state(state).serving_keys(self.keys())  # adapters signed by a key since rotated were admitted while it was trusted
            attempt = (key, tuple(sorted(keys)))
            if attempt == self._refused:  # refused already: count it once, not on every inference
                return False
            try:
                loaded = load_serving(self.root, state, keys, self.device, key)
            except _Refused as e:
                self._refused, self._refusal = attempt, str(e)
                self.rejected[e.reason] += 1
                log.error("node %s keeps its current adapters: %s", self.node_id, e)
                return False
            if loaded is None:
                return False
            old = self._loaded.versions if self._loaded else {}
            self._loaded, self._refusal = loaded, ""
            self.swaps += 1
        if loaded.versions != old:
            log.info("node %s swapped in adapters %s (was %s)", self.node_id, loaded.versions, old)
        return True

    # --- new bundles --------------------------------------------------------------------

    def install(self, bundles: Sequence[bytes | pb.AdapterBundle]) -> dict[str, Any]:
        """Verify bundles and swap in those that pass, together; the rest are refused and counted (see ``install_bundles``)."""
        result = install_bundles(self.state_dir, bundles, self.keys(), self.node_id)
        self.rejected.update(result["rejected"].values())
        if result["applied"]:
            self.refresh()
        return result

    def fetch_latest(self, registry: str, timeout: float = 10.0) -> dict[str, Any]:
        """Ask the Registry service at ``host:port`` for bundles newer than ours, and install them."""
        mods = sorted(self.state_dir.state()["encoders"])
        req = pb.LatestAdaptersRequest(
            node_id=self.node_id, modalities=mods, known_versions=self.state_dir.adapter_versions()
        )
        with registry_channel(registry, self.registry_tls, options=_CHANNEL_OPTIONS) as channel:
            reply = _registry_stub(channel).LatestAdapters(req, timeout=timeout)
        result = self.install(list(reply.bundles))
        log.info("node %s fetched %d bundles from %s: %s", self.node_id, len(reply.bundles), registry, result)
        return result

    def report_status(self, registry: str, state: str = "running", timeout: float = 10.0) -> pb.Ack:
        """Tell the Registry service which adapter versions this node runs."""
        uploaded = int(self.store.stats()["uploaded_windows"]) if self.store is not None else 0
        msg = pb.NodeStatusReply(
            node_id=self.node_id, last_seen_ns=time.time_ns(), adapter_versions=self.adapter_versions,
            windows_uploaded=uploaded, state=state,
        )  # fmt: skip
        with registry_channel(registry, self.registry_tls) as channel:
            return _registry_stub(channel).ReportStatus(msg, timeout=timeout)

    # --- inference ------------------------------------------------------------------------

    @torch.no_grad()
    def infer(
        self, windows: Mapping[str, np.ndarray], window_ids: Sequence[str] | None = None, publish: bool = True
    ) -> Inference:
        """Aligned embeddings and a prediction for (N, T, C) windows of any subset of the node's modalities."""
        self.refresh()
        loaded = self._loaded
        if loaded is None:
            raise RuntimeError(f"node {self.node_id} has no encoder with an adapter yet")
        if not windows:
            raise ValueError("infer needs windows of at least one modality")
        unknown = sorted(set(windows) - set(loaded.model.modalities))
        if unknown:
            raise ValueError(f"no adapter for {unknown[0]!r} on node {self.node_id} (it runs {loaded.model.modalities})")
        mods = sorted(windows)
        n = {len(windows[m]) for m in mods}
        if len(n) != 1:
            raise ValueError(f"every modality needs the same number of windows, got {({m: len(windows[m]) for m in mods})}")
        inputs = {}
        for m in mods:
            x = np.asarray(windows[m], dtype=np.float32)
            loaded.model.specs[m].check_window(x.shape, "infer")
            if not np.isfinite(x).all():
                raise ValueError(f"windows of {m!r} hold NaN or Inf")
            inputs[m] = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        ids = list(window_ids) if window_ids is not None else [str(i) for i in range(n.pop())]
        feats = loaded.model.features(inputs)
        z = loaded.model.embed_features(feats)
        fused = F.normalize(torch.stack([z[m] for m in mods]).mean(0), dim=-1)
        chosen = loaded.head_for(mods)
        logits = preds = None
        classes: list[str] = []
        if chosen is not None:
            head, classes = chosen
            logits_t = head({m: x for m, x in head_inputs(feats, z).items() if m in head.heads})
            logits, preds = logits_t.cpu().numpy(), logits_t.argmax(-1).cpu().numpy()
        out = Inference(
            window_ids=ids, modalities=mods, embeddings={m: z[m].cpu().numpy() for m in mods}, fused=fused.cpu().numpy(),
            logits=logits, predictions=preds, classes=classes, adapter_versions={m: loaded.versions[m] for m in mods},
        )  # fmt: skip
        if publish and self.publisher is not None:
            self.publish(out)
        return out

    def publish(self, result: Inference, with_embedding: bool = False) -> int:
        """Publish one JSON event per window on ``edgebind/<node>/events`` (QoS 1); returns how many."""
        if self.publisher is None:
            raise RuntimeError("this runtime has no publisher")
        events = result.events(self.node_id, with_embedding)
        for e in events:
            self.publisher.publish(events_topic(self.node_id), json.dumps(e).encode())
        return len(events)


class _Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _parse_bundle(raw: bytes) -> pb.AdapterBundle:
    try:
        return parse_message(bytes(raw), pb.AdapterBundle, MAX_BUNDLE_BYTES)
    except CodecError as e:
        raise _Refused("malformed", str(e)) from e


def _check_fits(bundle: pb.AdapterBundle, tower: TowerConfig) -> None:
    """Refuse (``bad-shape``) a bundle whose tensors do not fit this node's towers."""
    try:
        st = bundle_to_states(bundle, MAX_BUNDLE_BYTES)
        ConceptAdapter(tower.feature_dim, tower.adapter_hidden, tower.embed_dim).load_state_dict(st.adapter)
        PrototypeNet(tower.embed_dim, tower.prototype_hidden).load_state_dict(st.prototype)
        if st.head is not None:
            head_for_state(st.head).load_state_dict(st.head)
    except (CodecError, ValueError, RuntimeError) as e:
        raise _Refused("bad-shape", f"bundle {bundle.modality!r} v{bundle.version} does not fit: {e}") from e
