"""What the coordinator's store holds: its tables, the records its methods return, and the checks on their input.

``coordinator.store.CoordinatorStore`` is the one way in; this module is its
schema, kept apart so each file holds one idea.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import BigInteger, Double, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from node_agent.sqlbase import _ID, _name

EMBEDDING_DTYPES = frozenset({"float16", "float32", "int8"})


# --- input checks ----------------------------------------------------------------


def _text(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {value!r}")
    return value


def _json(what: str, value: object) -> str:
    """Canonical JSON of a dict (sorted keys, no NaN), so equal configs compare equal."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a dict, got {type(value).__name__}")
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON-serialisable without NaN/Inf: {e}") from None


def _ids(what: str, values: object, n: int | None = None) -> list[str]:
    """A one-dimensional sequence of non-empty strings (``n`` of them, when given)."""
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{what} must be a sequence of strings, not one string")
    arr = np.asarray(values, dtype=object)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    out = [str(_name(f"an entry of {what}", v)) for v in arr]
    if n is not None and len(out) != n:
        raise ValueError(f"{what}: expected {n} entries, got {len(out)}")
    return out


def _floats(what: str, value: object, n: int) -> np.ndarray:
    a = np.asarray(value)
    if a.ndim != 1 or len(a) != n:
        raise ValueError(f"{what}: expected {n} values in one dimension, got shape {a.shape}")
    if len(a) and a.dtype.kind not in "fiu":
        raise ValueError(f"{what} must be numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contains NaN or Inf")
    return a


def _int64_blob(a: np.ndarray | None) -> bytes | None:
    return None if a is None else a.astype("<i8").tobytes()


def _int64_from(blob: bytes | None, n: int) -> np.ndarray:
    """A stored (n,) int64 column, or all -1 when none was given."""
    return np.full(n, -1, np.int64) if blob is None else np.frombuffer(blob, "<i8").astype(np.int64)


# --- tables ----------------------------------------------------------------------


class _Base(DeclarativeBase):
    pass


class _NodeRow(_Base):
    __tablename__ = "nodes"
    node_id: Mapped[str] = mapped_column(String, primary_key=True)
    modalities: Mapped[str] = mapped_column(Text)  # JSON: name -> spec dict
    hardware: Mapped[str] = mapped_column(String)
    first_seen_ns: Mapped[int] = mapped_column(BigInteger)
    last_seen_ns: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String, default="")
    adapter_versions: Mapped[str] = mapped_column(Text, default="{}")  # JSON: modality -> version in use


class _CampaignRow(_Base):
    __tablename__ = "campaigns"
    campaign_id: Mapped[str] = mapped_column(String, primary_key=True)
    config: Mapped[str] = mapped_column(Text)  # canonical JSON
    state: Mapped[str] = mapped_column(String)
    detail: Mapped[str] = mapped_column(Text)
    created_ns: Mapped[int] = mapped_column(BigInteger)
    updated_ns: Mapped[int] = mapped_column(BigInteger)


_CAMPAIGN_FK = "campaigns.campaign_id"


class _BatchRow(_Base):
    __tablename__ = "embedding_batches"
    __table_args__ = (
        UniqueConstraint("node_id", "campaign_id", "batch_id", name="uq_batches_node_campaign_batch"),
        Index("ix_batches_campaign_modality", "campaign_id", "modality"),
    )
    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    node_id: Mapped[str] = mapped_column(String)
    campaign_id: Mapped[str] = mapped_column(String, ForeignKey(_CAMPAIGN_FK))
    batch_id: Mapped[str] = mapped_column(String)
    modality: Mapped[str] = mapped_column(String)
    group_name: Mapped[str] = mapped_column(String, default="")  # "" = the node's announced group
    n_rows: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    encoder_version: Mapped[str] = mapped_column(String)
    window_ids: Mapped[str] = mapped_column(Text)  # JSON list
    dtype: Mapped[str] = mapped_column(String(16))
    shape: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    scales: Mapped[bytes | None] = mapped_column(LargeBinary)  # int8 only: (dim,) float32
    labels: Mapped[bytes | None] = mapped_column(LargeBinary)  # (n,) int64, -1 = unlabelled
    subjects: Mapped[bytes | None] = mapped_column(LargeBinary)  # (n,) int64
    timestamps_ns: Mapped[bytes | None] = mapped_column(LargeBinary)  # (n,) int64
    received_ns: Mapped[int] = mapped_column(BigInteger)


class _PairRow(_Base):
    __tablename__ = "pairs"
    __table_args__ = (
        UniqueConstraint(
            "campaign_id", "stage_name", "src_node", "src_window", "dst_node", "dst_window", name="uq_pairs_key"
        ),
    )
    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String, ForeignKey(_CAMPAIGN_FK))
    stage_name: Mapped[str] = mapped_column(String)
    src_node: Mapped[str] = mapped_column(String)
    src_window: Mapped[str] = mapped_column(String)
    dst_node: Mapped[str] = mapped_column(String)
    dst_window: Mapped[str] = mapped_column(String)
    similarity: Mapped[float] = mapped_column(Double)
    weight: Mapped[float] = mapped_column(Double)


class _StageRow(_Base):
    __tablename__ = "stages"
    campaign_id: Mapped[str] = mapped_column(String, ForeignKey(_CAMPAIGN_FK), primary_key=True)
    stage_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String)
    metrics: Mapped[str] = mapped_column(Text)  # canonical JSON
    checkpoint_path: Mapped[str] = mapped_column(String)
    updated_ns: Mapped[int] = mapped_column(BigInteger)


class _AdapterCounterRow(_Base):
    """The last adapter version handed out per modality; its row is the lock for that modality."""

    __tablename__ = "adapter_counters"
    modality: Mapped[str] = mapped_column(String, primary_key=True)
    last_version: Mapped[int] = mapped_column(BigInteger)


class _AdapterRow(_Base):
    __tablename__ = "adapter_versions"
    modality: Mapped[str] = mapped_column(String, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String, ForeignKey(_CAMPAIGN_FK))
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    created_ns: Mapped[int] = mapped_column(BigInteger)


class _NodeKeyRow(_Base):
    """A node's SuperNode public key (PEM, as the SuperLink holds it), recorded by ``register-node``: who the node is."""

    __tablename__ = "node_keys"
    node_id: Mapped[str] = mapped_column(String, primary_key=True)
    public_key: Mapped[str] = mapped_column(Text, unique=True)
    flower_node_id: Mapped[str] = mapped_column(String)  # the SuperLink's id for this key, decimal (a uint64; "0": not known)
    registered_ns: Mapped[int] = mapped_column(BigInteger)


class _MetricRow(_Base):
    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("campaign_id", "node_id", "name", "subset", name="uq_metrics_key"),)
    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String, ForeignKey(_CAMPAIGN_FK))
    node_id: Mapped[str] = mapped_column(String)
    name: Mapped[str] = mapped_column(String)
    subset: Mapped[str] = mapped_column(String)
    value: Mapped[float] = mapped_column(Double)
    recorded_ns: Mapped[int] = mapped_column(BigInteger)


class _ReportRow(_Base):
    """A campaign's report as it goes: phases and their times, its nodes, who was missing or refused, accuracy (JSON)."""

    __tablename__ = "campaign_reports"
    campaign_id: Mapped[str] = mapped_column(String, ForeignKey(_CAMPAIGN_FK), primary_key=True)
    report: Mapped[str] = mapped_column(Text)  # canonical JSON
    updated_ns: Mapped[int] = mapped_column(BigInteger)


# --- public records ----------------------------------------------------------------


@dataclass(frozen=True)
class NodeRecord:
    """A registered node: what it holds (modality -> spec dict) and when it was seen."""

    node_id: str
    modalities: dict[str, dict[str, Any]]
    hardware: str
    first_seen_ns: int
    last_seen_ns: int


@dataclass(frozen=True)
class NodeStatus:
    """What the Registry's NodeStatus reply says about a node."""

    node_id: str
    last_seen_ns: int
    adapter_versions: dict[str, int]  # modality -> version the node reports in use
    windows_uploaded: int
    state: str
    modalities: list[str]
    hardware: str


@dataclass(frozen=True)
class CampaignRecord:
    """A campaign: its config as created and the state it is in."""

    campaign_id: str
    config: dict[str, Any]
    state: str
    detail: str
    created_ns: int
    updated_ns: int


@dataclass
class Embeddings:
    """One modality's embeddings in a campaign, one row per window, ordered by (node, batch id, row).

    ``x`` is (N, d) float32 (int8 batches dequantised); ``labels``, ``subjects``
    and ``timestamps_ns`` are (N,) int64 with -1 where a batch gave none;
    ``groups`` is the scenario group each batch named ("" where none).
    """

    node_ids: np.ndarray
    groups: np.ndarray
    window_ids: np.ndarray
    x: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    timestamps_ns: np.ndarray

    def __len__(self) -> int:
        return len(self.window_ids)


@dataclass
class EmbeddingBatchRecord:
    """One stored batch as uploaded: ``embeddings`` keeps its wire dtype; ``scales`` is set for int8."""

    node_id: str
    campaign_id: str
    batch_id: str
    modality: str
    window_ids: list[str]
    embeddings: np.ndarray
    scales: np.ndarray | None
    labels: np.ndarray  # (N,) int64, -1 = unlabelled
    subjects: np.ndarray | None
    timestamps_ns: np.ndarray | None
    encoder_version: str
    group: str = ""

    def dequantised(self) -> np.ndarray:
        """The embeddings as float32 (int8 times its per-column scales)."""
        x = self.embeddings.astype(np.float32)
        return x * self.scales if self.scales is not None else x


@dataclass
class StoredPairs:
    """The rows of the pairs table for one stage: each pair by its two windows' node and window ids, in the order they were added."""

    src_node_ids: np.ndarray
    src_window_ids: np.ndarray
    dst_node_ids: np.ndarray
    dst_window_ids: np.ndarray
    similarity: np.ndarray  # float64
    weight: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.src_window_ids)


@dataclass(frozen=True)
class StageStatus:
    """A campaign stage's status as last recorded in the store (the training record of a stage is ``common.growth.StageRecord``)."""

    index: int
    name: str
    status: str
    metrics: dict[str, Any]
    checkpoint_path: str
    updated_ns: int


@dataclass(frozen=True)
class MetricRow:
    """One reported metric (node_id "" for the coordinator's own)."""

    node_id: str
    name: str
    subset: str
    value: float
    recorded_ns: int


def _str_array(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=str) if values else np.zeros(0, dtype=str)
