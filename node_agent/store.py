"""The node's own store: sensor frames, windows, the upload ledger and adapter versions.

SQLAlchemy 2 over SQLite (a file in WAL mode, or ``sqlite://`` in memory) or
PostgreSQL, with the same code. Every write is idempotent where the network can
repeat it (a QoS-1 frame, a window cut twice, an upload acknowledged twice), and
every method checks its input first and raises ``ValueError`` naming what was
wrong, so bad input never changes what is already stored.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Container, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import BigInteger, Engine, event, Double, Index, Integer, LargeBinary, String, Text, UniqueConstraint, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from node_agent.sqlbase import (
    _ID,
    SqlStore,
    _chunks,
    _insert_ignore,
    _int,
    _name,
    _per_row,
    _sha256,
    pack_array,
    unpack_array,
)

__all__ = ["Frame", "NodeStore", "Windows", "open_store", "pack_array", "unpack_array"]

CUT_BLOCK = 256  # frames read, and windows written, at a time when cutting
SQLITE_CACHE_KIB = 256  # SQLite's page cache per connection (its default is 2 MiB); a node's budget is 300 MB


# --- input checks ----------------------------------------------------------------


def _numeric(what: str, value: object, ndim: int) -> np.ndarray:
    """``value`` as a finite float32 array with ``ndim`` dimensions."""
    a = np.asarray(value)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{what} must be a real numeric array, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {a.shape}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contains {int(np.isnan(a).sum())} NaN and {int(np.isinf(a).sum())} Inf values")
    return a


def _small_page_cache(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")


# --- tables ----------------------------------------------------------------------


class _Base(DeclarativeBase):
    pass


class _FrameRow(_Base):
    __tablename__ = "frames"
    __table_args__ = (
        UniqueConstraint("sensor_id", "modality", "seq", name="uq_frames_sensor_modality_seq"),
        Index("ix_frames_modality_seq", "modality", "seq"),
    )
    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    sensor_id: Mapped[str] = mapped_column(String)
    modality: Mapped[str] = mapped_column(String)
    seq: Mapped[int] = mapped_column(BigInteger)
    timestamp_ns: Mapped[int] = mapped_column(BigInteger)
    rate_hz: Mapped[float] = mapped_column(Double)
    dtype: Mapped[str] = mapped_column(String(16))
    shape: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class _WindowRow(_Base):
    __tablename__ = "windows"
    __table_args__ = (UniqueConstraint("modality", "window_id", name="uq_windows_modality_window"),)
    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    modality: Mapped[str] = mapped_column(String)
    window_id: Mapped[str] = mapped_column(String)
    start_ns: Mapped[int] = mapped_column(BigInteger)
    label: Mapped[int | None] = mapped_column(Integer)
    subject: Mapped[int | None] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))
    shape: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class _CursorRow(_Base):
    """Where ``cut_windows`` stopped in one sensor's stream, so a restart resumes there."""

    __tablename__ = "cut_cursors"
    modality: Mapped[str] = mapped_column(String, primary_key=True)
    sensor_id: Mapped[str] = mapped_column(String, primary_key=True)
    window: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    run_first_seq: Mapped[int] = mapped_column(BigInteger)  # first frame of the current contiguous run
    next_offset: Mapped[int] = mapped_column(BigInteger)  # run sample offset where the next window starts
    keep_seq: Mapped[int] = mapped_column(BigInteger)  # first frame still needed
    keep_offset: Mapped[int] = mapped_column(BigInteger)  # run sample offset of keep_seq's first sample


class _UploadRow(_Base):
    __tablename__ = "uploads"
    __table_args__ = (UniqueConstraint("campaign_id", "batch_id", name="uq_uploads_campaign_batch"),)
    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String)
    batch_id: Mapped[str] = mapped_column(String)
    modality: Mapped[str] = mapped_column(String)
    n_windows: Mapped[int] = mapped_column(Integer)
    recorded_ns: Mapped[int] = mapped_column(BigInteger)


class _AdapterRow(_Base):
    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("modality", "version", name="uq_adapters_modality_version"),)
    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    modality: Mapped[str] = mapped_column(String)
    version: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String)
    sha256: Mapped[str] = mapped_column(String(64))
    recorded_ns: Mapped[int] = mapped_column(BigInteger)


class _DeadLetterRow(_Base):
    """A frame the store failed to write again and again: kept with the reason, out of the broker's queue."""

    __tablename__ = "dead_letters"
    __table_args__ = (UniqueConstraint("topic", "digest", name="uq_dead_letters_payload"),)
    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    topic: Mapped[str] = mapped_column(String)
    digest: Mapped[str] = mapped_column(String(64))  # sha256 of the payload: the same frame again is recorded once
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    reason: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    recorded_ns: Mapped[int] = mapped_column(BigInteger)


# --- public records ----------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One stored sensor frame: ``samples`` is (time, channels) float32."""

    sensor_id: str
    modality: str
    seq: int
    timestamp_ns: int
    rate_hz: float
    samples: np.ndarray


class Windows(NamedTuple):
    """Windows of one modality: ``data`` is (N, T, C) float32, ``labels`` (N,) int64, -1 = unlabelled."""

    ids: list[str]
    data: np.ndarray
    labels: np.ndarray


@dataclass
class _Piece:
    """A frame held while cutting: where its samples start in the run."""

    seq: int
    offset: int
    timestamp_ns: int
    rate_hz: float
    samples: np.ndarray


# --- the store ------------------------------------------------------------------------


class NodeStore(SqlStore):
    """Frames, windows, the upload ledger and adapter versions of one node."""

    _BASE = _Base
    _LOCK_KEY = 0x6564676E

    def __init__(self, engine: Engine, memory: bool = False) -> None:
        if engine.dialect.name == "sqlite":  # before the first connection: every connection gets it
            event.listen(engine, "connect", _small_page_cache)
        super().__init__(engine, memory=memory)

    # --- frames ---------------------------------------------------------------------

    def add_frame(
        self,
        sensor_id: str,
        modality: str,
        seq: int,
        timestamp_ns: int,
        samples: np.ndarray,
        rate_hz: float = 0.0,
    ) -> bool:
        """Store one (time, channels) frame; False if (sensor, modality, seq) is already stored.

        ``rate_hz`` (0 = unknown) dates windows that start inside the frame. A
        frame's channel count must match the earlier frames of its stream.
        """
        _name("sensor_id", sensor_id)
        _name("modality", modality)
        seq = _int("seq", seq)
        timestamp_ns = _int("timestamp_ns", timestamp_ns)
        x = _numeric(f"samples of frame {seq}", samples, ndim=2)
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"samples of frame {seq} must be non-empty (time, channels), got shape {x.shape}")
        if isinstance(rate_hz, bool) or not isinstance(rate_hz, (int, float, np.integer, np.floating)):
            raise ValueError(f"rate_hz must be a number, got {rate_hz!r}")
        if not (math.isfinite(rate_hz) and rate_hz >= 0):
            raise ValueError(f"rate_hz must be finite and >= 0, got {rate_hz}")
        dtype, shape, data = pack_array(x)
        with self._tx(write=True) as s:
            earlier = s.scalars(
                select(_FrameRow.shape)
                .where(_FrameRow.sensor_id == sensor_id, _FrameRow.modality == modality)
                .limit(1)
            ).first()
            if earlier is not None and json.loads(earlier)[1] != x.shape[1]:
                raise ValueError(
                    f"frame {seq} of {sensor_id!r}/{modality!r} has {x.shape[1]} channels, "
                    f"earlier frames have {json.loads(earlier)[1]}"
                )
            row = dict(
                sensor_id=sensor_id, modality=modality, seq=seq, timestamp_ns=timestamp_ns,
                rate_hz=float(rate_hz), dtype=dtype, shape=shape, data=data,
            )  # fmt: skip
            return _insert_ignore(s, _FrameRow.__table__, [row]) == 1

    def frames(self, modality: str, since_seq: int | None = None) -> list[Frame]:
        """Stored frames of ``modality`` with seq > ``since_seq``, by (seq, sensor)."""
        _name("modality", modality)
        q = select(_FrameRow).where(_FrameRow.modality == modality)
        if since_seq is not None:
            q = q.where(_FrameRow.seq > _int("since_seq", since_seq, lo=-1))
        with self._tx() as s:
            rows = s.scalars(q.order_by(_FrameRow.seq, _FrameRow.sensor_id)).all()
        return [
            Frame(r.sensor_id, r.modality, r.seq, r.timestamp_ns, r.rate_hz, unpack_array(r.dtype, r.shape, r.data))
            for r in rows
        ]

    def max_seq(self, sensor_id: str, modality: str) -> int | None:
        """The highest seq stored for one sensor's stream, or None before its first frame."""
        with self._tx() as s:
            return s.scalar(select(func.max(_FrameRow.seq)).where(_FrameRow.sensor_id == _name("sensor_id", sensor_id), _FrameRow.modality == _name("modality", modality)))

    def count_frames(self, modality: str) -> int:
        """How many frames of ``modality`` are stored."""
        _name("modality", modality)
        with self._tx() as s:
            return s.scalar(select(func.count()).select_from(_FrameRow).where(_FrameRow.modality == modality)) or 0

    # --- windows ------------------------------------------------------------------------

    def add_windows(
        self,
        modality: str,
        window_ids: Sequence[str],
        start_ns: Sequence[int] | np.ndarray,
        data: np.ndarray,
        labels: np.ndarray | Sequence[int] | None = None,
        subjects: np.ndarray | Sequence[int] | None = None,
    ) -> int:
        """Store (N, T, C) windows whose ids are new; return how many were added.

        A window id already stored keeps its stored data. ``labels`` and
        ``subjects`` are one per window, -1 meaning none. Every window of a
        modality has the same (T, C).
        """
        _name("modality", modality)
        ids = [_name("window id", w) for w in window_ids]
        x = _numeric("window data", data, ndim=3)
        n = len(ids)
        if x.shape[0] != n:
            raise ValueError(f"{n} window ids for {x.shape[0]} windows of data")
        if len(set(ids)) != n:
            raise ValueError("duplicate window ids in one call")
        if n and (x.shape[1] == 0 or x.shape[2] == 0):
            raise ValueError(f"windows must be non-empty (N, T, C), got shape {x.shape}")
        starts = np.asarray(start_ns)
        if starts.ndim != 1 or len(starts) != n:
            raise ValueError(f"start_ns: expected {n} values in one dimension, got shape {starts.shape}")
        starts_list = [_int("start_ns", v) for v in starts]
        y = _per_row("labels", labels, n, int32=True)
        subj = _per_row("subjects", subjects, n, int32=True)
        if n == 0:
            return 0
        with self._tx(write=True) as s:
            self._check_window_shape(s, modality, x.shape[1:])
            rows = []
            for i, wid in enumerate(ids):
                dtype, shape, blob = pack_array(x[i])
                rows.append(
                    dict(
                        modality=modality, window_id=wid, start_ns=starts_list[i],
                        label=None if y is None or y[i] < 0 else int(y[i]),
                        subject=None if subj is None or subj[i] < 0 else int(subj[i]),
                        dtype=dtype, shape=shape, data=blob,
                    )  # fmt: skip
                )
            return _insert_ignore(s, _WindowRow.__table__, rows)

    @staticmethod
    def _check_window_shape(s: Session, modality: str, shape: tuple[int, ...]) -> None:
        stored = s.scalars(select(_WindowRow.shape).where(_WindowRow.modality == modality).limit(1)).first()
        if stored is not None and tuple(json.loads(stored)) != tuple(shape):
            raise ValueError(
                f"windows of {modality!r} are stored as (T, C) = {tuple(json.loads(stored))}, got {tuple(shape)}"
            )

    def windows(self, modality: str, ids: Sequence[str] | None = None, limit: int | None = None) -> Windows:
        """Windows of ``modality``: the ``ids`` asked for, in that order, or the first ``limit`` stored.

        Raises ValueError for an id that is not stored.
        """
        _name("modality", modality)
        if ids is not None and limit is not None:
            raise ValueError("give ids or limit, not both")
        limit = None if limit is None else _int("limit", limit)
        wanted = None if ids is None else [_name("window id", w) for w in ids]
        # Plain columns unpacked into one array as they stream in: no blobs or row objects pile up.
        q = select(_WindowRow.window_id, _WindowRow.dtype, _WindowRow.shape, _WindowRow.data, _WindowRow.label)
        q = q.where(_WindowRow.modality == modality)
        with self._tx() as s:
            if wanted is None:
                n = s.scalar(select(func.count()).select_from(_WindowRow).where(_WindowRow.modality == modality)) or 0
                n = n if limit is None else min(n, limit)
                found = s.execute(q.order_by(_WindowRow.id).limit(limit).execution_options(yield_per=CUT_BLOCK))
            else:
                n = len(wanted)
                found = (r for chunk in _chunks(sorted(set(wanted))) for r in s.execute(q.where(_WindowRow.window_id.in_(chunk))))
            ids, labels, x = [], [], None
            for i, r in enumerate(found):
                a = unpack_array(r.dtype, r.shape, r.data)
                if x is None:
                    x = np.empty((n, *a.shape), a.dtype)
                x[i] = a
                ids.append(r.window_id)
                labels.append(-1 if r.label is None else r.label)
        if x is None:
            _check_found(modality, wanted or [], {})
            return Windows([], np.zeros((0, 0, 0), np.float32), np.zeros(0, np.int64))
        if wanted is not None:
            at = {w: i for i, w in enumerate(ids)}
            _check_found(modality, wanted, at)
            order = [at[w] for w in wanted]
            return Windows(list(wanted), x[: len(ids)][order], np.array(labels, dtype=np.int64)[order])
        return Windows(ids, x[: len(ids)], np.array(labels, dtype=np.int64))

    def window_subjects(self, modality: str, ids: Sequence[str]) -> np.ndarray:
        """The subject of each window in ``ids`` (-1 = unknown), in that order, for evaluation splits."""
        return self._window_column(modality, ids, _WindowRow.subject)

    def window_starts(self, modality: str, ids: Sequence[str]) -> np.ndarray:
        """The start time (ns) of each window in ``ids``, in that order."""
        return self._window_column(modality, ids, _WindowRow.start_ns)

    def _window_column(self, modality: str, ids: Sequence[str], column: Any) -> np.ndarray:
        _name("modality", modality)
        wanted = [_name("window id", w) for w in ids]
        q = select(_WindowRow.window_id, column).where(_WindowRow.modality == modality)
        with self._tx() as s:
            found = {w: v for chunk in _chunks(wanted) for w, v in s.execute(q.where(_WindowRow.window_id.in_(chunk)))}
        _check_found(modality, wanted, found)
        return np.array([-1 if found[w] is None else found[w] for w in wanted], dtype=np.int64)

    def count_windows(self, modality: str) -> int:
        """How many windows of ``modality`` are stored."""
        _name("modality", modality)
        with self._tx() as s:
            return s.scalar(select(func.count()).select_from(_WindowRow).where(_WindowRow.modality == modality)) or 0

    def modalities(self) -> list[str]:
        """Every modality with a stored frame or window, sorted."""
        with self._tx() as s:
            names = set(s.scalars(select(_FrameRow.modality).distinct()))
            names |= set(s.scalars(select(_WindowRow.modality).distinct()))
        return sorted(names)

    def cut_windows(self, modality: str, window: int = 128, step: int = 64) -> int:
        """Cut stored frames of ``modality`` into windows not cut before; return how many.

        Each sensor's frames are taken in seq order; a missing seq ends a run, and
        windows never span runs. A window's id is
        ``f"{modality}:{sensor_id}:{first_seq}:{offset}"`` (first frame of its run,
        sample offset in the run), so re-running, or running after a restart, adds
        nothing twice. A frame that arrives after the cut has moved past its seq is
        not used. The cursor remembers ``window`` and ``step``; changing them for a
        stream already cut is refused.
        """
        _name("modality", modality)
        window = _int("window", window, lo=1, hi=1 << 20)
        step = _int("step", step, lo=1, hi=1 << 20)
        added = 0
        with self._tx(write=True) as s:
            sensors = s.scalars(
                select(_FrameRow.sensor_id)
                .where(_FrameRow.modality == modality)
                .distinct()
                .order_by(_FrameRow.sensor_id)
            ).all()
            cursors = {c.sensor_id: c for c in s.scalars(select(_CursorRow).where(_CursorRow.modality == modality))}
            for c in cursors.values():
                if (c.window, c.step) != (window, step):
                    raise ValueError(
                        f"{modality!r}/{c.sensor_id!r} was cut with window={c.window}, step={c.step}; "
                        f"got window={window}, step={step}"
                    )
            for sensor in sensors:
                added += self._cut_stream(s, modality, sensor, cursors.get(sensor), window, step)
        return added

    def _cut_stream(
        self, s: Session, modality: str, sensor: str, cursor: _CursorRow | None, window: int, step: int
    ) -> int:
        q = select(_FrameRow).where(_FrameRow.sensor_id == sensor, _FrameRow.modality == modality)
        if cursor is not None:
            q = q.where(_FrameRow.seq >= cursor.keep_seq)
            run_first, next_off = cursor.run_first_seq, cursor.next_offset
            run_end, prev = cursor.keep_offset, cursor.keep_seq - 1
        else:
            run_first, next_off, run_end, prev = -1, 0, 0, -2  # -2: the first frame always starts a run
        seen = False
        held: list[_Piece] = []
        rows: list[dict[str, Any]] = []
        added, checked = 0, False
        # Frames are read as plain columns in blocks and windows written in blocks, so a
        # node that cuts a long backlog holds one block, not the backlog, in memory.
        cols = q.with_only_columns(_FrameRow.seq, _FrameRow.timestamp_ns, _FrameRow.rate_hz, _FrameRow.dtype, _FrameRow.shape, _FrameRow.data)
        for f in s.execute(cols.order_by(_FrameRow.seq).execution_options(yield_per=CUT_BLOCK)):
            if f.seq != prev + 1:  # a gap: a new run starts here
                run_first, next_off, run_end, held = f.seq, 0, 0, []
            samples = unpack_array(f.dtype, f.shape, f.data)
            held.append(_Piece(f.seq, run_end, f.timestamp_ns, f.rate_hz, samples))
            run_end += len(samples)
            prev, seen = f.seq, True
            while next_off + window <= run_end:
                rows.append(self._window_row(modality, sensor, run_first, next_off, window, held))
                next_off += step
            while held and held[0].offset + len(held[0].samples) <= next_off:
                held.pop(0)
            if len(rows) >= CUT_BLOCK:
                if not checked:
                    self._check_window_shape(s, modality, tuple(json.loads(rows[0]["shape"])))
                    checked = True
                added += _insert_ignore(s, _WindowRow.__table__, rows)
                rows = []
        if not seen:
            return 0
        keep_seq, keep_offset = (held[0].seq, held[0].offset) if held else (prev + 1, run_end)
        state = dict(run_first_seq=run_first, next_offset=next_off, keep_seq=keep_seq, keep_offset=keep_offset)
        if cursor is None:
            s.add(_CursorRow(modality=modality, sensor_id=sensor, window=window, step=step, **state))
        else:
            for k, v in state.items():
                setattr(cursor, k, v)
        if rows and not checked:
            self._check_window_shape(s, modality, tuple(json.loads(rows[0]["shape"])))
        return added + _insert_ignore(s, _WindowRow.__table__, rows)

    @staticmethod
    def _window_row(
        modality: str, sensor: str, run_first: int, start: int, window: int, held: list[_Piece]
    ) -> dict[str, Any]:
        """The window of ``held``'s samples at run offset ``start``, dated from the frame it starts in."""
        pieces = [p for p in held if p.offset < start + window and start < p.offset + len(p.samples)]
        parts = [p.samples[max(start - p.offset, 0) : start + window - p.offset] for p in pieces]
        first = pieces[0]
        into = start - first.offset
        start_ns = first.timestamp_ns + (round(into * 1e9 / first.rate_hz) if first.rate_hz > 0 else 0)
        dtype, shape, blob = pack_array(np.concatenate(parts))
        return dict(
            modality=modality, window_id=f"{modality}:{sensor}:{run_first}:{start}", start_ns=start_ns,
            label=None, subject=None, dtype=dtype, shape=shape, data=blob,
        )  # fmt: skip

    # --- upload ledger ----------------------------------------------------------------------

    def record_upload(self, campaign_id: str, batch_id: str, modality: str, n_windows: int) -> bool:
        """Note that ``batch_id`` was delivered for ``campaign_id``; False if already noted."""
        row = dict(
            campaign_id=_name("campaign_id", campaign_id), batch_id=_name("batch_id", batch_id),
            modality=_name("modality", modality), n_windows=_int("n_windows", n_windows, hi=2**31 - 1),
            recorded_ns=time.time_ns(),
        )  # fmt: skip
        with self._tx(write=True) as s:
            return _insert_ignore(s, _UploadRow.__table__, [row]) == 1

    def uploaded(self, campaign_id: str) -> set[str]:
        """The batch ids already delivered for ``campaign_id``."""
        _name("campaign_id", campaign_id)
        with self._tx() as s:
            return set(s.scalars(select(_UploadRow.batch_id).where(_UploadRow.campaign_id == campaign_id)))

    # --- adapter versions -----------------------------------------------------------------------

    def record_adapter(self, modality: str, version: int, path: str | Path, sha256: str) -> None:
        """Record the adapter now in use for ``modality``; a version not above the current is refused."""
        _name("modality", modality)
        version = _int("version", version, lo=1)
        path = _name("path", str(path) if isinstance(path, Path) else path)
        _sha256(sha256)
        with self._tx(write=True) as s:
            current = s.scalar(select(func.max(_AdapterRow.version)).where(_AdapterRow.modality == modality))
            if current is not None and version <= current:
                raise ValueError(f"replayed or stale adapter: {modality!r} v{version} is not newer than v{current}")
            row = dict(modality=modality, version=version, path=path, sha256=sha256, recorded_ns=time.time_ns())
            if _insert_ignore(s, _AdapterRow.__table__, [row]) != 1:
                raise ValueError(f"replayed or stale adapter: {modality!r} v{version} was recorded concurrently")

    def current_adapter(self, modality: str) -> tuple[int, str, str] | None:
        """(version, path, sha256) of the newest adapter for ``modality``, or None."""
        _name("modality", modality)
        with self._tx() as s:
            row = s.scalars(
                select(_AdapterRow)
                .where(_AdapterRow.modality == modality)
                .order_by(_AdapterRow.version.desc())
                .limit(1)
            ).first()
        return None if row is None else (row.version, row.path, row.sha256)

    # --- dead letters -----------------------------------------------------------------------------

    def add_dead_letter(self, topic: str, payload: bytes, reason: str, attempts: int) -> bool:
        """Keep a frame that could not be stored, with why; False if this exact payload is already kept."""
        _name("topic", topic)
        if not isinstance(payload, (bytes, bytearray)):
            raise ValueError(f"payload must be bytes, got {type(payload).__name__}")
        attempts = _int("attempts", attempts, lo=1)
        row = dict(topic=topic, digest=hashlib.sha256(payload).hexdigest(), payload=bytes(payload), reason=str(reason)[:2000],
                   attempts=attempts, recorded_ns=time.time_ns())  # fmt: skip
        with self._tx(write=True) as s:
            return _insert_ignore(s, _DeadLetterRow.__table__, [row]) == 1

    def dead_letters(self) -> list[dict[str, Any]]:
        """Every kept frame, oldest first: topic, payload, reason, attempts, when."""
        with self._tx() as s:
            rows = s.scalars(select(_DeadLetterRow).order_by(_DeadLetterRow.id)).all()
        return [{"topic": r.topic, "payload": bytes(r.payload), "reason": r.reason, "attempts": r.attempts, "recorded_ns": r.recorded_ns} for r in rows]

    # --- summary ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts for a manifest or a status page.

        Keys: ``frames``, ``windows`` and ``labelled_windows`` (modality -> count),
        ``uploads`` (batches) and ``uploaded_windows``, ``adapters`` (modality -> version),
        ``dead_letters`` (frames kept aside because the store could not write them).
        """
        with self._tx() as s:
            frames = dict(s.execute(select(_FrameRow.modality, func.count()).group_by(_FrameRow.modality)).all())
            windows = dict(s.execute(select(_WindowRow.modality, func.count()).group_by(_WindowRow.modality)).all())
            labelled = dict(
                s.execute(
                    select(_WindowRow.modality, func.count())
                    .where(_WindowRow.label.is_not(None))
                    .group_by(_WindowRow.modality)
                ).all()
            )
            n_up, n_up_windows = s.execute(select(func.count(), func.sum(_UploadRow.n_windows))).one()
            newest = select(_AdapterRow.modality, func.max(_AdapterRow.version)).group_by(_AdapterRow.modality)
            adapters = dict(s.execute(newest).all())
            dead = s.scalar(select(func.count()).select_from(_DeadLetterRow))
        return {
            "frames": frames,
            "windows": windows,
            "labelled_windows": {m: labelled.get(m, 0) for m in windows},
            "uploads": int(n_up),
            "uploaded_windows": int(n_up_windows or 0),
            "adapters": adapters,
            "dead_letters": int(dead or 0),
        }


def _check_found(modality: str, wanted: list[str], found: Container[str]) -> None:
    missing = [w for w in wanted if w not in found]
    if missing:
        raise ValueError(f"{len(missing)} window ids of {modality!r} not stored, e.g. {missing[:3]}")


def open_store(url: str | Path) -> NodeStore:
    """Open (creating tables if needed) a node store at ``url``, as ``SqlStore.open`` says."""
    return NodeStore.open(url)
