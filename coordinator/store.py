"""The coordinator's store: nodes, campaigns, embeddings, pairs, stages, adapter versions, metrics.

SQLAlchemy 2 over SQLite (a file in WAL mode, or ``sqlite://`` in memory) or
PostgreSQL, with the same code. Embedding metadata lives in a table and each
batch's array in one compact blob. Uploads are idempotent: (node, campaign,
batch id) is stored once, and a repeat changes nothing. Every method checks its
input first and raises ``ValueError`` naming what was wrong, so bad input never
changes what is already stored.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, defer

from node_agent.sqlbase import (
    SqlStore,
    _engine_for,  # noqa: F401  (tests reach it here)
    _insert_ignore,
    _int,
    _name,
    _per_row,
    _sha256,
    pack_array,
    unpack_array,
)
from coordinator.store_schema import (
    EMBEDDING_DTYPES,
    CampaignRecord,
    EmbeddingBatchRecord,
    Embeddings,
    MetricRow,
    NodeRecord,
    NodeStatus,
    StoredPairs,
    StageStatus,
    _AdapterCounterRow,
    _AdapterRow,
    _Base,
    _BatchRow,
    _CampaignRow,
    _floats,
    _ids,
    _int64_blob,
    _int64_from,
    _json,
    _MetricRow,
    _NodeRow,
    _PairRow,
    _ReportRow,
    _StageRow,
    _str_array,
    _text,
)
from coordinator.store_trust import TrustRecords

__all__ = [
    "CampaignRecord",
    "CoordinatorStore",
    "EmbeddingBatchRecord",
    "Embeddings",
    "MetricRow",
    "NodeRecord",
    "NodeStatus",
    "StoredPairs",
    "StageStatus",
    "open_store",
    "pack_array",
    "unpack_array",
]

# --- the store ------------------------------------------------------------------------


class CoordinatorStore(TrustRecords, SqlStore):
    """Everything the coordinator keeps between phases and across restarts."""

    _BASE = _Base
    _LOCK_KEY = 0x65646763

    @staticmethod
    def _require_campaign(s: Session, campaign_id: str) -> _CampaignRow:
        row = s.get(_CampaignRow, campaign_id)
        if row is None:
            raise ValueError(f"unknown campaign {campaign_id!r}")
        return row

    # --- nodes ------------------------------------------------------------------------

    def upsert_node(
        self,
        node_id: str,
        modalities: Mapping[str, Mapping[str, Any]],
        hardware: str = "",
        last_seen_ns: int | None = None,
    ) -> None:
        """Register a node or replace what it holds (modality name -> spec dict, e.g. from its manifest)."""
        _name("node_id", node_id)
        if not isinstance(modalities, Mapping):
            raise ValueError(f"modalities must be a dict of name -> dict, got {type(modalities).__name__}")
        for name, spec in modalities.items():
            _name("modality name", name)
            if not isinstance(spec, Mapping):
                raise ValueError(f"modality {name!r}: spec must be a dict, got {type(spec).__name__}")
        mods = _json("modalities", modalities)
        _text("hardware", hardware)
        now = time.time_ns() if last_seen_ns is None else _int("last_seen_ns", last_seen_ns)
        new = dict(node_id=node_id, modalities=mods, hardware=hardware, first_seen_ns=now, last_seen_ns=now,
                   state="", adapter_versions="{}")  # fmt: skip
        with self._tx(write=True) as s:
            if _insert_ignore(s, _NodeRow.__table__, [new]) == 0:
                row = s.get(_NodeRow, node_id, with_for_update=True)
                assert row is not None
                row.modalities, row.hardware, row.last_seen_ns = mods, hardware, max(row.last_seen_ns, now)

    def touch_node(self, node_id: str, last_seen_ns: int | None = None) -> None:
        """Note that a known node was heard from (never moves last_seen backwards)."""
        _name("node_id", node_id)
        now = time.time_ns() if last_seen_ns is None else _int("last_seen_ns", last_seen_ns)
        with self._tx(write=True) as s:
            row = s.get(_NodeRow, node_id, with_for_update=True)
            if row is None:
                raise ValueError(f"unknown node {node_id!r}")
            row.last_seen_ns = max(row.last_seen_ns, now)

    def nodes(self) -> list[NodeRecord]:
        """Every registered node, by id."""
        with self._tx() as s:
            rows = s.scalars(select(_NodeRow).order_by(_NodeRow.node_id)).all()
        return [
            NodeRecord(r.node_id, json.loads(r.modalities), r.hardware, r.first_seen_ns, r.last_seen_ns) for r in rows
        ]

    def report_node_status(
        self, node_id: str, state: str, adapter_versions: Mapping[str, int], last_seen_ns: int | None = None
    ) -> None:
        """Store what a known node reports: its state and the adapter version in use per modality."""
        _name("node_id", node_id)
        _text("state", state)
        if not isinstance(adapter_versions, Mapping):
            raise ValueError("adapter_versions must be a dict of modality -> version")
        versions = {_name("modality", m): _int(f"adapter version of {m!r}", v) for m, v in adapter_versions.items()}
        now = time.time_ns() if last_seen_ns is None else _int("last_seen_ns", last_seen_ns)
        with self._tx(write=True) as s:
            row = s.get(_NodeRow, node_id, with_for_update=True)
            if row is None:
                raise ValueError(f"unknown node {node_id!r}")
            row.state, row.adapter_versions = state, json.dumps(versions, sort_keys=True)
            row.last_seen_ns = max(row.last_seen_ns, now)

    def node_status(self, node_id: str) -> NodeStatus | None:
        """A node's status for the Registry service, or None for a node never registered."""
        _name("node_id", node_id)
        with self._tx() as s:
            row = s.get(_NodeRow, node_id)
            if row is None:
                return None
            uploaded = s.scalar(select(func.sum(_BatchRow.n_rows)).where(_BatchRow.node_id == node_id))
        return NodeStatus(
            node_id=row.node_id,
            last_seen_ns=row.last_seen_ns,
            adapter_versions=json.loads(row.adapter_versions),
            windows_uploaded=int(uploaded or 0),
            state=row.state,
            modalities=sorted(json.loads(row.modalities)),
            hardware=row.hardware,
        )

    # --- campaigns ----------------------------------------------------------------------

    def create_campaign(self, campaign_id: str, config: Mapping[str, Any]) -> None:
        """Create a campaign in state ``created``; again with the same config is a no-op, with another an error."""
        _name("campaign_id", campaign_id)
        cfg = _json("config", config)
        now = time.time_ns()
        with self._tx(write=True) as s:
            row = dict(campaign_id=campaign_id, config=cfg, state="created", detail="", created_ns=now, updated_ns=now)
            if _insert_ignore(s, _CampaignRow.__table__, [row]) == 0:
                stored = self._require_campaign(s, campaign_id).config
                if stored != cfg:
                    raise ValueError(f"campaign {campaign_id!r} already exists with a different config")

    def set_campaign_state(self, campaign_id: str, state: str, detail: str = "") -> None:
        """Move a campaign to ``state`` (a phase name, ``done``, ``failed``...) with an optional detail."""
        _name("campaign_id", campaign_id)
        _name("state", state)
        _text("detail", detail)
        with self._tx(write=True) as s:
            row = self._require_campaign(s, campaign_id)
            row.state, row.detail, row.updated_ns = state, detail, time.time_ns()

    def campaign(self, campaign_id: str) -> CampaignRecord | None:
        """A campaign, or None if it was never created."""
        _name("campaign_id", campaign_id)
        with self._tx() as s:
            r = s.get(_CampaignRow, campaign_id)
        if r is None:
            return None
        return CampaignRecord(r.campaign_id, json.loads(r.config), r.state, r.detail, r.created_ns, r.updated_ns)

    def campaigns(self) -> list[CampaignRecord]:
        """Every campaign, newest first."""
        with self._tx() as s:
            rows = s.scalars(select(_CampaignRow).order_by(_CampaignRow.created_ns.desc(), _CampaignRow.campaign_id)).all()
        return [CampaignRecord(r.campaign_id, json.loads(r.config), r.state, r.detail, r.created_ns, r.updated_ns) for r in rows]

    def save_report(self, campaign_id: str, report: Mapping[str, Any]) -> None:
        """Replace a campaign's report (what ``edgebind-coordinator status`` shows of it)."""
        _name("campaign_id", campaign_id)
        text = _json("report", report)
        now = time.time_ns()
        with self._tx(write=True) as s:
            self._require_campaign(s, campaign_id)
            if _insert_ignore(s, _ReportRow.__table__, [dict(campaign_id=campaign_id, report=text, updated_ns=now)]) == 0:
                row = s.get(_ReportRow, campaign_id, with_for_update=True)
                assert row is not None
                row.report, row.updated_ns = text, now

    def report(self, campaign_id: str) -> dict[str, Any] | None:
        """A campaign's last saved report, or None."""
        _name("campaign_id", campaign_id)
        with self._tx() as s:
            row = s.get(_ReportRow, campaign_id)
        return None if row is None else json.loads(row.report)

    # --- embeddings -----------------------------------------------------------------------

    def add_embedding_batch(
        self,
        node_id: str,
        campaign_id: str,
        batch_id: str,
        modality: str,
        window_ids: Sequence[str],
        embeddings: np.ndarray,
        labels: np.ndarray | Sequence[int] | None = None,
        subjects: np.ndarray | Sequence[int] | None = None,
        encoder_version: str = "",
        scales: np.ndarray | Sequence[float] | None = None,
        timestamps_ns: np.ndarray | Sequence[int] | None = None,
        group: str = "",
    ) -> bool:
        """Store a node's (N, d) embeddings once; False (and nothing changed) if the batch is already stored.

        ``embeddings`` is float16, float32 or int8; int8 needs ``scales``, one per
        column (value = q * scale). ``labels`` are -1 for unlabelled. Every batch
        of a (campaign, modality) has the same d. The campaign must exist; the
        node need not be registered. ``group`` is the scenario group of the
        windows when the node holds several ("" = the node's own).
        """
        for what, v in (("node_id", node_id), ("campaign_id", campaign_id), ("batch_id", batch_id)):
            _name(what, v)
        _name("modality", modality)
        _text("encoder_version", encoder_version)
        if _text("group", group):
            _name("group", group)  # bounded like every other name
        x = np.asarray(embeddings)
        where = f"embedding batch {batch_id!r} of {node_id!r}"
        if x.dtype.name not in EMBEDDING_DTYPES:
            raise ValueError(f"{where}: dtype {x.dtype}; expected one of {sorted(EMBEDDING_DTYPES)}")
        if x.ndim != 2:
            raise ValueError(f"{where}: embeddings must be (rows, dim), got shape {x.shape}")
        n, d = x.shape
        if d == 0:
            raise ValueError(f"{where}: embedding dim is 0")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ValueError(f"{where}: {int(np.isnan(x).sum())} NaN and {int(np.isinf(x).sum())} Inf values")
        ids = _ids("window_ids", window_ids)
        if len(ids) != n:
            raise ValueError(f"{where}: {len(ids)} window ids for {n} rows")
        if len(set(ids)) != n:
            raise ValueError(f"{where}: duplicate window ids")
        scale_blob = None
        if x.dtype.name == "int8":
            if scales is None:
                raise ValueError(f"{where}: int8 embeddings need scales, one per column")
            sc = np.asarray(scales, dtype=np.float32)
            if sc.shape != (d,):
                raise ValueError(f"{where}: int8 needs {d} scales (one per column), got shape {sc.shape}")
            if not (np.isfinite(sc) & (sc >= 0)).all():
                raise ValueError(f"{where}: scales must be finite and non-negative")
            scale_blob = sc.astype("<f4").tobytes()
        elif scales is not None:
            raise ValueError(f"{where}: scales given for {x.dtype} embeddings, which take none")
        y = _per_row(f"{where}: labels", labels, n, lo=-1)
        subj = _per_row(f"{where}: subjects", subjects, n, lo=-1)
        ts = _per_row(f"{where}: timestamps_ns", timestamps_ns, n, lo=0)
        dtype, shape, blob = pack_array(x)
        row = dict(
            node_id=node_id, campaign_id=campaign_id, batch_id=batch_id, modality=modality, group_name=group, n_rows=n, dim=d,
            encoder_version=encoder_version, window_ids=json.dumps(ids), dtype=dtype, shape=shape, data=blob,
            scales=scale_blob, labels=_int64_blob(y), subjects=_int64_blob(subj), timestamps_ns=_int64_blob(ts),
            received_ns=time.time_ns(),
        )  # fmt: skip
        with self._tx(write=True) as s:
            self._require_campaign(s, campaign_id)
            known = s.scalars(
                select(_BatchRow.dim)
                .where(_BatchRow.campaign_id == campaign_id, _BatchRow.modality == modality)
                .limit(1)
            ).first()
            if known is not None and known != d:
                raise ValueError(f"{where}: dim {d}, but {modality!r} embeddings in {campaign_id!r} have dim {known}")
            return _insert_ignore(s, _BatchRow.__table__, [row]) == 1

    def embedding_batch(self, node_id: str, campaign_id: str, batch_id: str) -> EmbeddingBatchRecord | None:
        """One batch exactly as stored, or None."""
        for what, v in (("node_id", node_id), ("campaign_id", campaign_id), ("batch_id", batch_id)):
            _name(what, v)
        with self._tx() as s:
            r = s.scalars(
                select(_BatchRow).where(
                    _BatchRow.node_id == node_id, _BatchRow.campaign_id == campaign_id, _BatchRow.batch_id == batch_id
                )
            ).first()
        return None if r is None else self._record(r)

    def stored_rows(self, campaign_id: str, node_id: str) -> dict[tuple[str, str], int]:
        """How many windows a node has stored in a campaign, by (group, modality); group "" is the node's own."""
        for what, v in (("node_id", node_id), ("campaign_id", campaign_id)):
            _name(what, v)
        with self._tx() as s:
            rows = s.execute(
                select(_BatchRow.group_name, _BatchRow.modality, func.sum(_BatchRow.n_rows))
                .where(_BatchRow.node_id == node_id, _BatchRow.campaign_id == campaign_id)
                .group_by(_BatchRow.group_name, _BatchRow.modality)
            ).all()
        return {(g or "", m): int(n) for g, m, n in rows}

    @staticmethod
    def _record(r: _BatchRow) -> EmbeddingBatchRecord:
        return EmbeddingBatchRecord(
            node_id=r.node_id,
            campaign_id=r.campaign_id,
            batch_id=r.batch_id,
            modality=r.modality,
            window_ids=json.loads(r.window_ids),
            embeddings=unpack_array(r.dtype, r.shape, r.data),
            scales=None if r.scales is None else np.frombuffer(r.scales, "<f4").astype(np.float32),
            labels=_int64_from(r.labels, r.n_rows),
            subjects=None if r.subjects is None else _int64_from(r.subjects, r.n_rows),
            timestamps_ns=None if r.timestamps_ns is None else _int64_from(r.timestamps_ns, r.n_rows),
            encoder_version=r.encoder_version,
            group=r.group_name or "",
        )

    def embeddings(self, campaign_id: str, modality: str, node_ids: Sequence[str] | None = None) -> Embeddings:
        """All stored embeddings of ``modality`` in a campaign (optionally from ``node_ids`` only), concatenated."""
        blocks = list(self.embedding_blocks(campaign_id, modality, node_ids))
        if not blocks:
            empty = np.zeros(0, np.int64)
            return Embeddings(_str_array([]), _str_array([]), _str_array([]), np.zeros((0, 0), np.float32), empty, empty, empty)
        return Embeddings(*(np.concatenate([getattr(b, f) for b in blocks]) for f in Embeddings.__dataclass_fields__))

    def embedding_blocks(self, campaign_id: str, modality: str, node_ids: Sequence[str] | None = None, vectors: bool = True) -> Iterator[Embeddings]:
        """``embeddings`` one stored batch at a time, in the same order, read from the database as they go.

        Without ``vectors`` the embeddings themselves are not read at all (``x`` is (n, 0)):
        what a caller needs to choose rows before it reads them.
        """
        _name("campaign_id", campaign_id)
        _name("modality", modality)
        q = select(_BatchRow.id).where(_BatchRow.campaign_id == campaign_id, _BatchRow.modality == modality)
        if node_ids is not None:
            q = q.where(_BatchRow.node_id.in_(_ids("node_ids", node_ids)))
        one = select(_BatchRow) if vectors else select(_BatchRow).options(defer(_BatchRow.data), defer(_BatchRow.scales))
        with self._tx() as s:
            for row_id in s.scalars(q.order_by(_BatchRow.node_id, _BatchRow.batch_id)).all():
                r = s.scalars(one.where(_BatchRow.id == row_id)).one()  # one batch in memory at a time
                s.expunge(r)
                n = r.n_rows
                labels = _int64_from(r.labels, n)
                subjects = _or_unknown(None if r.subjects is None else _int64_from(r.subjects, n), n)
                stamps = _or_unknown(None if r.timestamps_ns is None else _int64_from(r.timestamps_ns, n), n)
                x = self._record(r).dequantised() if vectors else np.zeros((n, 0), np.float32)
                yield Embeddings(_str_array([r.node_id] * n), _str_array([r.group_name or ""] * n), _str_array(json.loads(r.window_ids)),
                                 x, labels, subjects, stamps)  # fmt: skip

    # --- pairs --------------------------------------------------------------------------

    def add_pairs(
        self,
        campaign_id: str,
        stage_name: str,
        src_node_ids: Sequence[str] | np.ndarray,
        src_window_ids: Sequence[str] | np.ndarray,
        dst_node_ids: Sequence[str] | np.ndarray,
        dst_window_ids: Sequence[str] | np.ndarray,
        similarity: Sequence[float] | np.ndarray,
        weight: Sequence[float] | np.ndarray,
    ) -> int:
        """Store bound pairs (src node, src window) -> (dst node, dst window); return how many were new.

        A pair already stored for this stage keeps its stored similarity and weight.
        Weights are finite and non-negative.
        """
        _name("campaign_id", campaign_id)
        _name("stage_name", stage_name)
        src_n = _ids("src_node_ids", src_node_ids)
        n = len(src_n)
        src_w = _ids("src_window_ids", src_window_ids, n)
        dst_n = _ids("dst_node_ids", dst_node_ids, n)
        dst_w = _ids("dst_window_ids", dst_window_ids, n)
        sim = _floats("similarity", similarity, n)
        w = _floats("weight", weight, n)
        if n and w.min() < 0:
            raise ValueError(f"weight must be non-negative, got {w.min()}")
        keys = list(zip(src_n, src_w, dst_n, dst_w, strict=True))
        if len(set(keys)) != n:
            raise ValueError("the same pair appears twice in one call")
        rows = [
            dict(campaign_id=campaign_id, stage_name=stage_name, src_node=a, src_window=b, dst_node=c, dst_window=e,
                 similarity=float(sim[i]), weight=float(w[i]))  # fmt: skip
            for i, (a, b, c, e) in enumerate(keys)
        ]
        with self._tx(write=True) as s:
            self._require_campaign(s, campaign_id)
            return _insert_ignore(s, _PairRow.__table__, rows)

    def pairs(self, campaign_id: str, stage_name: str) -> StoredPairs:
        """The pairs stored for a stage, in the order they were first added."""
        _name("campaign_id", campaign_id)
        _name("stage_name", stage_name)
        cols = (_PairRow.src_node, _PairRow.src_window, _PairRow.dst_node, _PairRow.dst_window)
        with self._tx() as s:
            rows = s.execute(
                select(*cols, _PairRow.similarity, _PairRow.weight)
                .where(_PairRow.campaign_id == campaign_id, _PairRow.stage_name == stage_name)
                .order_by(_PairRow.id)
            ).all()
        cols_out = list(zip(*rows, strict=True)) if rows else [()] * 6
        return StoredPairs(
            *(_str_array(list(c)) for c in cols_out[:4]),
            similarity=np.array(cols_out[4], dtype=np.float64),
            weight=np.array(cols_out[5], dtype=np.float64),
        )

    # --- stages ---------------------------------------------------------------------------

    def record_stage(
        self,
        campaign_id: str,
        index: int,
        name: str,
        status: str,
        metrics: Mapping[str, Any] | None = None,
        checkpoint_path: str | Path = "",
    ) -> None:
        """Record (or update) stage ``index`` of a campaign's growth plan; its name cannot change."""
        _name("campaign_id", campaign_id)
        index = _int("index", index, hi=2**31 - 1)
        _name("stage name", name)
        _name("status", status)
        m = _json("metrics", {} if metrics is None else metrics)
        path = _text("checkpoint_path", str(checkpoint_path) if isinstance(checkpoint_path, Path) else checkpoint_path)
        now = time.time_ns()
        new = dict(campaign_id=campaign_id, stage_index=index, name=name, status=status, metrics=m,
                   checkpoint_path=path, updated_ns=now)  # fmt: skip
        with self._tx(write=True) as s:
            self._require_campaign(s, campaign_id)
            if _insert_ignore(s, _StageRow.__table__, [new]) == 1:
                return
            row = s.get(_StageRow, (campaign_id, index), with_for_update=True)
            assert row is not None
            if row.name != name:
                raise ValueError(f"stage {index} of {campaign_id!r} is {row.name!r}, not {name!r}")
            row.status, row.metrics, row.checkpoint_path, row.updated_ns = status, m, path, now

    def stages(self, campaign_id: str) -> list[StageStatus]:
        """A campaign's recorded stages, by index."""
        _name("campaign_id", campaign_id)
        with self._tx() as s:
            rows = s.scalars(
                select(_StageRow).where(_StageRow.campaign_id == campaign_id).order_by(_StageRow.stage_index)
            ).all()
        return [
            StageStatus(r.stage_index, r.name, r.status, json.loads(r.metrics), r.checkpoint_path, r.updated_ns)
            for r in rows
        ]

    # --- adapter versions ---------------------------------------------------------------------

    @staticmethod
    def _lock_counter(s: Session, modality: str) -> _AdapterCounterRow:
        """The modality's version counter, created if new and locked until the transaction ends."""
        _insert_ignore(s, _AdapterCounterRow.__table__, [dict(modality=modality, last_version=0)])
        return s.scalars(
            select(_AdapterCounterRow).where(_AdapterCounterRow.modality == modality).with_for_update()
        ).one()

    def next_adapter_version(self, modality: str) -> int:
        """A new adapter version for ``modality``: above every version handed out or recorded."""
        _name("modality", modality)
        with self._tx(write=True) as s:
            self._lock_counter(s, modality)
            return s.execute(
                update(_AdapterCounterRow)
                .where(_AdapterCounterRow.modality == modality)
                .values(last_version=_AdapterCounterRow.last_version + 1)
                .returning(_AdapterCounterRow.last_version)
            ).scalar_one()

    def record_adapter_version(self, modality: str, version: int, campaign_id: str, blob: bytes, sha256: str) -> None:
        """Store a serialised signed AdapterBundle; ``sha256`` is that of ``blob``.

        A version not above the newest recorded for ``modality`` is refused
        ("replayed or stale adapter").
        """
        _name("modality", modality)
        version = _int("version", version, lo=1)
        _name("campaign_id", campaign_id)
        if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) == 0:
            raise ValueError("adapter blob must be non-empty bytes")
        blob = bytes(blob)
        if hashlib.sha256(blob).hexdigest() != _sha256(sha256):
            raise ValueError(f"sha256 {sha256} does not match the adapter blob")
        with self._tx(write=True) as s:
            self._require_campaign(s, campaign_id)
            counter = self._lock_counter(s, modality)
            newest = s.scalar(select(func.max(_AdapterRow.version)).where(_AdapterRow.modality == modality))
            if newest is not None and version <= newest:
                raise ValueError(f"replayed or stale adapter: {modality!r} v{version} is not newer than v{newest}")
            s.add(_AdapterRow(modality=modality, version=version, campaign_id=campaign_id, blob=blob, sha256=sha256,
                              created_ns=time.time_ns()))  # fmt: skip
            counter.last_version = max(counter.last_version, version)

    def latest_adapter(self, modality: str) -> tuple[int, bytes] | None:
        """(version, serialised bundle) of the newest adapter for ``modality``, or None."""
        _name("modality", modality)
        with self._tx() as s:
            row = s.execute(
                select(_AdapterRow.version, _AdapterRow.blob)
                .where(_AdapterRow.modality == modality)
                .order_by(_AdapterRow.version.desc())
                .limit(1)
            ).first()
        return None if row is None else (int(row[0]), bytes(row[1]))

    # --- metrics --------------------------------------------------------------------------------

    def record_metric(self, campaign_id: str, node_id: str, name: str, value: float, subset: str = "") -> None:
        """Record a finite metric a node (or, with node_id "", the coordinator) reports; a repeat replaces it."""
        _name("campaign_id", campaign_id)
        _text("node_id", node_id)
        _name("metric name", name)
        _text("subset", subset)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"metric {name!r} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"metric {name!r} must be finite, got {value}")
        now = time.time_ns()
        with self._tx(write=True) as s:
            self._require_campaign(s, campaign_id)
            row = dict(campaign_id=campaign_id, node_id=node_id, name=name, subset=subset, value=float(value),
                       recorded_ns=now)  # fmt: skip
            if _insert_ignore(s, _MetricRow.__table__, [row]) == 0:
                s.execute(
                    update(_MetricRow)
                    .where(
                        _MetricRow.campaign_id == campaign_id,
                        _MetricRow.node_id == node_id,
                        _MetricRow.name == name,
                        _MetricRow.subset == subset,
                    )
                    .values(value=float(value), recorded_ns=now)
                )

    def metrics(self, campaign_id: str) -> list[MetricRow]:
        """A campaign's metrics, by (node, name, subset)."""
        _name("campaign_id", campaign_id)
        with self._tx() as s:
            rows = s.scalars(
                select(_MetricRow)
                .where(_MetricRow.campaign_id == campaign_id)
                .order_by(_MetricRow.node_id, _MetricRow.name, _MetricRow.subset)
            ).all()
        return [MetricRow(r.node_id, r.name, r.subset, r.value, r.recorded_ns) for r in rows]


def _or_unknown(a: np.ndarray | None, n: int) -> np.ndarray:
    return np.full(n, -1, np.int64) if a is None else a


def open_store(url: str | Path) -> CoordinatorStore:
    """Open (creating tables if needed) a coordinator store at ``url``, as ``SqlStore.open`` says."""
    return CoordinatorStore.open(url)
