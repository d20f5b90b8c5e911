"""Tensors, embeddings and adapter bundles to and from protobuf; quantisation; signing.

Everything that arrives from another process goes through a function here that
checks it and raises ``CodecError`` naming what was wrong, so the node agent
and the coordinator never index into a malformed payload.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from google.protobuf.message import DecodeError, Message

from common.modalities import ModalitySpec
from proto import edgebind_pb2 as pb

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_SAMPLES = 1 << 20
DEFAULT_BUNDLE_TTL_S = 30 * 24 * 3600.0  # a bundle is valid for 30 days after it is signed
MAX_VERSION_JUMP = 1000  # a bundle more versions ahead of the node's is refused (a stolen old key cannot pin v2^63)
MAX_FIRST_VERSION = 2**31 - 1  # a node holding no adapter for a modality refuses a first bundle above this (nor can that pin v2^63)

_DTYPES = {"float32": pb.Tensor.FLOAT32, "float16": pb.Tensor.FLOAT16, "int8": pb.Tensor.INT8}
_WIRE = {pb.Tensor.FLOAT32: np.dtype("<f4"), pb.Tensor.FLOAT16: np.dtype("<f2"), pb.Tensor.INT8: np.dtype("i1")}
_NAMES = {v: k for k, v in _DTYPES.items()}

M = TypeVar("M", bound=Message)


class CodecError(ValueError):
    """A payload or an array that cannot be encoded or trusted as decoded."""


class BundleRejected(ValueError):
    """An adapter bundle that must not be loaded.

    ``reason`` is one of ``unsigned``, ``unknown-key``, ``bad-signature``,
    ``expired``, ``replay``, ``version-jump``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# --- tensors -----------------------------------------------------------------


def tensor_to_proto(t: torch.Tensor | np.ndarray, name: str = "", dtype: str = "float32") -> pb.Tensor:
    """Encode an array as ``dtype`` (``float32``, ``float16`` or ``int8``).

    ``int8`` is symmetric per column of the last dimension:
    ``scale[j] = max|x[..., j]| / 127`` (0 for an all-zero column).
    """
    if dtype not in _DTYPES:
        raise CodecError(f"tensor {name!r}: unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    if isinstance(t, torch.Tensor):
        t = t.detach().to("cpu", torch.float32).numpy()
    x = np.asarray(t, dtype=np.float32)
    _check_finite(x, f"tensor {name!r}")
    msg = pb.Tensor(name=name, dtype=_DTYPES[dtype], shape=x.shape)
    if dtype == "int8":
        cols = x.reshape(math.prod(x.shape[:-1]), x.shape[-1] if x.ndim else 1)
        scale = (np.abs(cols).max(axis=0, initial=0.0) / 127).astype(np.float32)
        q = np.rint(cols / np.where(scale > 0, scale, 1)).clip(-127, 127)
        msg.data = q.astype(np.int8).tobytes()
        msg.scale.extend(scale.tolist())
    else:
        with np.errstate(over="ignore"):
            wire = x.astype(_WIRE[msg.dtype])
        if not np.isfinite(wire).all():
            raise CodecError(f"tensor {name!r}: values beyond the float16 range (|x| > 65504)")
        msg.data = wire.tobytes()
    return msg


def tensor_from_proto(msg: pb.Tensor, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Decode a Tensor message to a float32 array, checking size, shape and values."""
    return dequantize(*tensor_wire(msg, max_bytes), what=f"tensor {msg.name!r}")


def tensor_wire(msg: pb.Tensor, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[np.ndarray, np.ndarray | None]:
    """A Tensor message as it crossed the wire: (the array in its wire dtype, the int8 scales or None), size and shape checked."""
    what = f"tensor {msg.name!r}"
    if msg.dtype not in _WIRE:
        raise CodecError(f"{what}: unknown dtype {msg.dtype}; expected one of {sorted(_DTYPES)}")
    if len(msg.data) > max_bytes:
        raise CodecError(f"{what}: payload of {len(msg.data)} bytes exceeds max_bytes={max_bytes}")
    shape = tuple(msg.shape)
    if any(d < 0 for d in shape):
        raise CodecError(f"{what}: negative dimension in shape {shape}")
    wire = _WIRE[msg.dtype]
    expected = math.prod(shape) * wire.itemsize
    if expected != len(msg.data):
        raise CodecError(
            f"{what}: shape {shape} as {_NAMES[msg.dtype]} needs {expected} bytes, data has {len(msg.data)}"
        )
    x = np.frombuffer(msg.data, dtype=wire).reshape(shape)
    if msg.dtype == pb.Tensor.INT8:
        width = shape[-1] if shape else 1
        if len(msg.scale) != width:
            raise CodecError(f"{what}: int8 needs {width} scales (one per last-dim column), got {len(msg.scale)}")
        scale = np.asarray(msg.scale, dtype=np.float32)
        if not (np.isfinite(scale) & (scale >= 0)).all():
            raise CodecError(f"{what}: int8 scales must be finite and non-negative")
        return x, scale
    if len(msg.scale):
        raise CodecError(f"{what}: scales given for {_NAMES[msg.dtype]}, which takes none")
    return x, None


def dequantize(wire: np.ndarray, scales: np.ndarray | None, what: str = "tensor") -> np.ndarray:
    """The float32 values of a wire array (int8 times its per-column scales), refusing NaN and Inf."""
    x = wire.astype(np.float32)
    if scales is not None:
        width = wire.shape[-1] if wire.ndim else 1
        x = (x.reshape(math.prod(wire.shape[:-1]), width) * scales).reshape(wire.shape)
    _check_finite(x, what)
    return x


def state_dict_to_tensors(sd: Mapping[str, torch.Tensor]) -> list[pb.Tensor]:
    """A state dict as float32 Tensor messages, one per entry, named by key."""
    return [tensor_to_proto(v, name=k, dtype="float32") for k, v in sd.items()]


def tensors_to_state_dict(tensors: Sequence[pb.Tensor], max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, torch.Tensor]:
    """Tensor messages back to a state dict of float32 torch tensors."""
    sd: dict[str, torch.Tensor] = {}
    for msg in tensors:
        if not msg.name:
            raise CodecError("state dict tensor without a name")
        if msg.name in sd:
            raise CodecError(f"state dict tensor {msg.name!r} appears twice")
        sd[msg.name] = torch.from_numpy(tensor_from_proto(msg, max_bytes))
    return sd


def _check_finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        raise CodecError(f"{what}: {n_nan} NaN and {n_inf} Inf values")


# --- parsing -----------------------------------------------------------------


def parse_message(data: bytes, message_type: type[M], max_bytes: int = DEFAULT_MAX_BYTES) -> M:
    """Parse wire bytes into ``message_type``, refusing oversized or malformed input."""
    name = message_type.DESCRIPTOR.name
    if len(data) > max_bytes:
        raise CodecError(f"{name}: payload of {len(data)} bytes exceeds max_bytes={max_bytes}")
    msg = message_type()
    try:
        msg.ParseFromString(data)
    except DecodeError as e:
        raise CodecError(f"{name}: malformed bytes ({e})") from e
    return msg


def parse_embedding_batch(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> pb.EmbeddingBatch:
    return parse_message(data, pb.EmbeddingBatch, max_bytes)


# --- manifests ---------------------------------------------------------------

MAX_MANIFEST_BYTES = 1 << 20
MAX_NAME = 128  # node ids, modality, group and class names
MAX_CHANNELS = 1024
MAX_WINDOW = 1 << 16  # samples per window
MAX_RATE_HZ = 1e5
ROLES = ("train", "validation", "test")


def encode_manifest(
    node_id: str,
    group: str,
    role: str,
    specs: Mapping[str, ModalitySpec],
    counts: Mapping[str, tuple[int, int]],
    classes: Sequence[str],
    parts: Sequence[tuple[str, str, int, int]],
) -> pb.NodeManifest:
    """What a node holds: ``counts`` maps modality -> (windows, labelled); ``parts`` are (group, role, windows, labelled), its own first."""
    return pb.NodeManifest(
        node_id=node_id, group=group, role=role, classes=list(classes),
        modalities=[pb.ModalityInfo(name=m, channels=s.channels, rate_hz=s.rate_hz, window=s.window, n_windows=counts[m][0], n_labelled=counts[m][1])
                    for m, s in sorted(specs.items())],
        parts=[pb.NodePartInfo(group=g, role=r, n_windows=w, n_labelled=n) for g, r, w, n in parts],
    )  # fmt: skip


def decode_manifest(data: bytes) -> pb.NodeManifest:
    """A node's manifest from wire bytes, every field checked: names non-empty and short, specs within bounds, no duplicates.

    Raises CodecError naming the field that is wrong.
    """
    m = parse_message(bytes(data), pb.NodeManifest, MAX_MANIFEST_BYTES)
    who = f"manifest of {m.node_id[:MAX_NAME]!r}"
    _manifest_name("node_id", m.node_id, "manifest")
    _manifest_name("group", m.group, who)
    if m.role not in ROLES:
        raise CodecError(f"{who}: role {m.role[:MAX_NAME]!r} is not one of {', '.join(ROLES)}")
    if not m.modalities:
        raise CodecError(f"{who}: announces no modality")
    names = [mi.name for mi in m.modalities]
    if len(set(names)) != len(names):
        raise CodecError(f"{who}: a modality is announced twice ({sorted(names)})")
    for mi in m.modalities:
        _manifest_name("modality name", mi.name, who)
        if not 1 <= mi.channels <= MAX_CHANNELS:
            raise CodecError(f"{who}: modality {mi.name!r} has {mi.channels} channels (allowed 1..{MAX_CHANNELS})")
        if not 1 <= mi.window <= MAX_WINDOW:
            raise CodecError(f"{who}: modality {mi.name!r} has windows of {mi.window} samples (allowed 1..{MAX_WINDOW})")
        if not (math.isfinite(mi.rate_hz) and 0 < mi.rate_hz <= MAX_RATE_HZ):
            raise CodecError(f"{who}: modality {mi.name!r} has rate {mi.rate_hz} Hz (allowed (0, {MAX_RATE_HZ:g}])")
        if mi.n_labelled > mi.n_windows:
            raise CodecError(f"{who}: modality {mi.name!r} has more labelled windows ({mi.n_labelled}) than windows ({mi.n_windows})")
    for c in m.classes:
        _manifest_name("class name", c, who)
    roles = [p.role for p in m.parts]
    if len(set(roles)) != len(roles):
        raise CodecError(f"{who}: more than one part with the same role ({roles})")
    for p in m.parts:
        _manifest_name("part group", p.group, who)
        if p.role not in ROLES or p.n_labelled > p.n_windows:
            raise CodecError(f"{who}: part {p.group!r} has role {p.role[:MAX_NAME]!r} and {p.n_labelled} labelled of {p.n_windows} windows")
    if m.parts and (m.parts[0].group, m.parts[0].role) != (m.group, m.role):
        raise CodecError(f"{who}: its first part must be its own group {m.group!r} ({m.role}), not {m.parts[0].group!r} ({m.parts[0].role})")
    return m


def manifest_specs(m: pb.NodeManifest) -> dict[str, ModalitySpec]:
    return {mi.name: ModalitySpec(mi.name, channels=int(mi.channels), rate_hz=float(mi.rate_hz), window=int(mi.window)) for mi in m.modalities}


def _manifest_name(what: str, value: str, who: str) -> None:
    if not value or len(value) > MAX_NAME or not value.isprintable() or value != value.strip():
        raise CodecError(f"{who}: {what} {value[:MAX_NAME]!r} must be 1..{MAX_NAME} printable characters without surrounding space")


# --- embeddings --------------------------------------------------------------


@dataclass
class DecodedBatch:
    """An EmbeddingBatch as arrays. ``labels`` is always one per row (-1 = unlabelled)."""

    node_id: str
    campaign_id: str
    batch_id: str
    modality: str
    window_ids: list[str]
    embeddings: np.ndarray  # (N, d) float32
    labels: np.ndarray  # (N,) int64
    wire: np.ndarray  # (N, d) the embeddings as sent: float16, float32 or int8 (what the coordinator stores)
    scales: np.ndarray | None  # int8's per-column scales (embeddings = wire * scales), else None
    timestamps_ns: np.ndarray | None  # (N,) int64
    subjects: np.ndarray | None  # (N,) int64
    dtype: str  # wire dtype of the embeddings
    encoder_version: str
    group: str = ""  # the scenario group of the windows; "" = the node's announced group

    def __len__(self) -> int:
        return len(self.window_ids)


def encode_embeddings(
    node_id: str,
    campaign_id: str,
    batch_id: str,
    modality: str,
    window_ids: Sequence[str],
    embeddings: torch.Tensor | np.ndarray,
    labels: Sequence[int] | np.ndarray | None = None,
    timestamps_ns: Sequence[int] | np.ndarray | None = None,
    subjects: Sequence[int] | np.ndarray | None = None,
    dtype: str = "float16",
    encoder_version: str = "",
    group: str = "",
) -> pb.EmbeddingBatch:
    """Pack (N, d) embeddings and their per-window metadata into an EmbeddingBatch."""
    msg = pb.EmbeddingBatch(
        node_id=node_id,
        campaign_id=campaign_id,
        batch_id=batch_id,
        modality=modality,
        window_ids=list(window_ids),
        labels=_ints(labels),
        timestamps_ns=_ints(timestamps_ns),
        subjects=_ints(subjects),
        embeddings=tensor_to_proto(embeddings, name=modality, dtype=dtype),
        encoder_version=encoder_version,
        group=group,
    )
    _check_batch(msg, tuple(msg.embeddings.shape))
    return msg


def decode_embeddings(
    msg: pb.EmbeddingBatch,
    expected_dim: int | None = None,
    known_modalities: Container[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DecodedBatch:
    """Check an EmbeddingBatch and turn it into arrays."""
    if not msg.HasField("embeddings"):
        raise CodecError(f"embedding batch {msg.batch_id!r}: no embeddings tensor")
    _check_batch(msg, tuple(msg.embeddings.shape))
    if known_modalities is not None and msg.modality not in known_modalities:
        raise CodecError(f"embedding batch {msg.batch_id!r}: unknown modality {msg.modality!r}")
    wire, scales = tensor_wire(msg.embeddings, max_bytes)
    emb = dequantize(wire, scales, f"embedding batch {msg.batch_id!r}")
    if expected_dim is not None and emb.shape[1] != expected_dim:
        raise CodecError(f"embedding batch {msg.batch_id!r}: dim {emb.shape[1]}, expected {expected_dim}")
    n = emb.shape[0]
    return DecodedBatch(
        node_id=msg.node_id,
        campaign_id=msg.campaign_id,
        batch_id=msg.batch_id,
        modality=msg.modality,
        window_ids=list(msg.window_ids),
        embeddings=emb,
        labels=np.asarray(msg.labels, dtype=np.int64) if len(msg.labels) else np.full(n, -1, dtype=np.int64),
        wire=wire,
        scales=scales,
        timestamps_ns=np.asarray(msg.timestamps_ns, dtype=np.int64) if len(msg.timestamps_ns) else None,
        subjects=np.asarray(msg.subjects, dtype=np.int64) if len(msg.subjects) else None,
        dtype=_NAMES[msg.embeddings.dtype],
        encoder_version=msg.encoder_version,
        group=msg.group,
    )


def _check_batch(msg: pb.EmbeddingBatch, shape: tuple[int, ...]) -> None:
    """The checks shared by encoding and decoding: ids, declared shape, per-row lengths."""
    what = f"embedding batch {msg.batch_id!r}"
    if not msg.node_id:
        raise CodecError(f"{what}: empty node id")
    if not msg.modality:
        raise CodecError(f"{what}: empty modality")
    if len(shape) != 2:
        raise CodecError(f"{what}: embeddings must be (rows, dim), got shape {shape}")
    rows = shape[0]
    if len(msg.window_ids) != rows:
        raise CodecError(f"{what}: {len(msg.window_ids)} window ids for {rows} rows")
    if len(set(msg.window_ids)) != rows:
        raise CodecError(f"{what}: duplicate window ids")
    for field in ("labels", "timestamps_ns", "subjects"):
        k = len(getattr(msg, field))
        if k not in (0, rows):
            raise CodecError(f"{what}: {k} {field} for {rows} rows (expected 0 or {rows})")
    if len(msg.labels) and np.asarray(msg.labels).min() < -1:
        raise CodecError(f"{what}: labels below -1 (-1 means unlabelled)")


def _ints(values: Sequence[int] | np.ndarray | None) -> list[int]:
    return [] if values is None else [int(v) for v in np.asarray(values).reshape(-1)]


# --- sensor frames -----------------------------------------------------------


def validate_sensor_frame(
    frame: pb.SensorFrame,
    known_modalities: Mapping[str, int],
    max_samples: int = DEFAULT_MAX_SAMPLES,
) -> np.ndarray:
    """Check a SensorFrame against the known modalities (name -> channels).

    Returns the samples as a (time, channels) float32 array.
    """
    what = f"sensor frame {frame.node_id!r}/{frame.sensor_id!r}"
    if not frame.node_id:
        raise CodecError(f"{what}: empty node id")
    if not frame.sensor_id:
        raise CodecError(f"{what}: empty sensor id")
    if not frame.modality:
        raise CodecError(f"{what}: empty modality")
    if frame.modality not in known_modalities:
        raise CodecError(f"{what}: unknown modality {frame.modality!r}; known: {sorted(known_modalities)}")
    if not frame.HasField("seq"):
        raise CodecError(f"{what}: seq missing")
    if frame.timestamp_ns <= 0:
        raise CodecError(f"{what}: timestamp_ns missing or not positive ({frame.timestamp_ns})")
    if not (math.isfinite(frame.rate_hz) and frame.rate_hz > 0):
        raise CodecError(f"{what}: rate_hz must be positive, got {frame.rate_hz}")
    want = known_modalities[frame.modality]
    if frame.channels != want:
        raise CodecError(f"{what}: {frame.channels} channels, modality {frame.modality!r} has {want}")
    n = len(frame.samples)
    if n == 0:
        raise CodecError(f"{what}: no samples")
    if n > max_samples:
        raise CodecError(f"{what}: {n} samples exceed max_samples={max_samples}")
    if n % frame.channels:
        raise CodecError(f"{what}: {n} samples is not a multiple of {frame.channels} channels")
    x = np.asarray(frame.samples, dtype=np.float32).reshape(-1, frame.channels)
    _check_finite(x, what)
    return x


# --- adapter bundles ---------------------------------------------------------


@dataclass
class BundleStates:
    """The state dicts an AdapterBundle carries."""

    modality: str
    version: int
    adapter: dict[str, torch.Tensor]
    prototype: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] | None
    head_classes: list[str]


def bundle_from_modules(
    modality: str,
    version: int,
    adapter_state: Mapping[str, torch.Tensor] | torch.nn.Module,
    prototype_state: Mapping[str, torch.Tensor] | torch.nn.Module,
    head: Mapping[str, torch.Tensor] | torch.nn.Module | None = None,
    head_classes: Sequence[str] = (),
    campaign_id: str = "",
    encoder_version: str = "",
    created_ns: int | None = None,
) -> pb.AdapterBundle:
    """An unsigned AdapterBundle from modules or their state dicts (float32)."""
    if not modality:
        raise CodecError("adapter bundle: empty modality")
    if version < 1:
        raise CodecError(f"adapter bundle for {modality!r}: version must be >= 1, got {version}")
    return pb.AdapterBundle(
        modality=modality,
        version=version,
        campaign_id=campaign_id,
        encoder_version=encoder_version,
        tensors=state_dict_to_tensors(_state(adapter_state)),
        prototype=state_dict_to_tensors(_state(prototype_state)),
        head_tensors=state_dict_to_tensors(_state(head)) if head is not None else [],
        head_classes=list(head_classes),
        created_ns=time.time_ns() if created_ns is None else created_ns,
    )


def bundle_to_states(bundle: pb.AdapterBundle, max_bytes: int = DEFAULT_MAX_BYTES) -> BundleStates:
    """The state dicts in a bundle. Verify the bundle first (``verify_bundle``)."""
    if not bundle.modality:
        raise CodecError("adapter bundle: empty modality")
    return BundleStates(
        modality=bundle.modality,
        version=bundle.version,
        adapter=tensors_to_state_dict(bundle.tensors, max_bytes),
        prototype=tensors_to_state_dict(bundle.prototype, max_bytes),
        head=tensors_to_state_dict(bundle.head_tensors, max_bytes) if len(bundle.head_tensors) else None,
        head_classes=list(bundle.head_classes),
    )


def _state(x: Mapping[str, torch.Tensor] | torch.nn.Module) -> Mapping[str, torch.Tensor]:
    return x.state_dict() if isinstance(x, torch.nn.Module) else x


def key_from_hex(hexkey: str, what: str, kind: str = "public") -> bytes:
    """A 32-byte Ed25519 key (``kind`` private or public) from hex, or ValueError naming ``what``."""
    try:
        key = bytes.fromhex(hexkey)
    except ValueError:
        raise ValueError(f"{what} is not hex") from None
    if len(key) != 32:
        raise ValueError(f"{what} is {len(key)} bytes; an Ed25519 {kind} key is 32")
    return key


def key_from_file(path: str | Path, kind: str = "private") -> bytes:
    """A 32-byte Ed25519 key read from a file of hex (as ``edgebind-coordinator keygen`` writes them).

    A private key file must be the owner's alone (no group or other
    permission bits, as ssh insists), so a key never has to travel on a command
    line or in an environment that child processes inherit.
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
        text = p.read_text().strip()
    except OSError as e:
        raise ValueError(f"signing {kind} key file {p}: {e.strerror or e}") from None
    if kind == "private" and mode & 0o077:
        raise ValueError(f"signing private key file {p} is readable by others (mode {mode & 0o777:o}): chmod 600 {p}")
    return key_from_hex(text, f"signing {kind} key file {p}", kind)


def new_signing_key() -> bytes:
    """A fresh Ed25519 private key (its 32-byte seed): the coordinator's, never sent anywhere."""
    return Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_key_of(private_key: bytes) -> bytes:
    """The 32-byte Ed25519 public key of a private key (seed): what a node is provisioned with."""
    return _private(private_key).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id_of(public_key: bytes) -> str:
    """The id of a coordinator key, from its public key: the coordinator signs under it and nodes look it up by it."""
    return "k-" + hashlib.sha256(b"edgebind-key-id" + public_key).hexdigest()[:12]


def sign_bundle(
    bundle: pb.AdapterBundle, private_key: bytes, key_id: str, ttl_s: float = DEFAULT_BUNDLE_TTL_S, rotations: Sequence[pb.KeyRotation] = ()
) -> pb.AdapterBundle:
    """Set ``key_id``, an issue time, an expiry and an Ed25519 ``signature`` over every other field (in place); return it.

    A node verifies it with the coordinator's public key alone: no node holds
    anything that could sign a bundle. ``rotations`` (``common.rotation``) lead a
    node that trusts an earlier key of the coordinator's to this one.
    """
    if not key_id:
        raise ValueError("sign_bundle: empty key id")
    key = _private(private_key)
    bundle.key_id = key_id
    del bundle.rotations[:]
    bundle.rotations.extend(rotations)
    if not bundle.created_ns:
        bundle.created_ns = time.time_ns()
    bundle.expires_ns = bundle.created_ns + int(ttl_s * 1e9)
    bundle.signature = key.sign(_signed_bytes(bundle))
    return bundle


def verify_bundle(bundle: pb.AdapterBundle, keys: Mapping[str, bytes], min_version: int | None = None, now_ns: int | None = None) -> None:
    """Raise ``BundleRejected`` unless ``bundle`` is signed by one of ``keys`` (key id -> Ed25519 public key),
    not expired, and, when ``min_version`` is given, strictly newer than it but not more than ``MAX_VERSION_JUMP`` ahead."""
    what = f"bundle {bundle.modality!r} v{bundle.version}"
    if not bundle.signature:
        raise BundleRejected("unsigned", what)
    key = keys.get(bundle.key_id)
    if key is None:
        raise BundleRejected("unknown-key", f"{what}: key id {bundle.key_id!r}")
    try:
        Ed25519PublicKey.from_public_bytes(bytes(key)).verify(bytes(bundle.signature), _signed_bytes(bundle))
    except (InvalidSignature, ValueError) as e:
        raise BundleRejected("bad-signature", f"{what}: {type(e).__name__}") from None
    now = time.time_ns() if now_ns is None else now_ns
    if bundle.expires_ns and now > bundle.expires_ns:
        raise BundleRejected("expired", f"{what} expired {(now - bundle.expires_ns) / 1e9:.0f} s ago")
    if min_version is not None and bundle.version <= min_version:
        raise BundleRejected("replay", f"{what} is not newer than v{min_version}")
    if min_version is not None and bundle.version > min_version + MAX_VERSION_JUMP:
        raise BundleRejected("version-jump", f"{what} is more than {MAX_VERSION_JUMP} versions past v{min_version}")


def _signed_bytes(bundle: pb.AdapterBundle) -> bytes:
    unsigned = pb.AdapterBundle()
    unsigned.CopyFrom(bundle)
    unsigned.ClearField("signature")
    return unsigned.SerializeToString(deterministic=True)


def _private(private_key: bytes) -> Ed25519PrivateKey:
    if len(private_key) != 32:
        raise ValueError(f"an Ed25519 private key is 32 bytes, got {len(private_key)}")
    return Ed25519PrivateKey.from_private_bytes(bytes(private_key))


def state_version(state: Mapping[str, torch.Tensor]) -> str:
    """A short content hash of a state dict: the encoder version bundles refer to (the same on node and coordinator)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
