"""The SQL plumbing and input checks both stores share: the node's store and the coordinator's.

``node_agent/store.py`` and ``coordinator/store.py`` build on it: arrays as
(dtype, shape, bytes), an engine for a URL or a file path (SQLite in WAL mode
with ``BEGIN IMMEDIATE`` for writes, or PostgreSQL through psycopg 3), tables
created under a lock, idempotent inserts, the read/write transaction plumbing
of a store, and the checks that turn bad input into a ``ValueError`` naming what
was wrong. It lives with the node agent, whose store is the one every device runs;
the coordinator's store imports it from here (the only ``node_agent`` module the
coordinator imports), and ``common`` never does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from sqlalchemy import BigInteger, Engine, Integer, Table, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import StaticPool

from common.files import private_file

__all__ = ["ARRAY_DTYPES", "SqlStore", "pack_array", "unpack_array"]

ARRAY_DTYPES = frozenset({"float16", "float32", "float64", "int8", "int32", "int64"})
_MAX_NAME = 256
_MAX_INT64 = 2**63 - 1
_MAX_INT32 = 2**31 - 1
_SHA256_HEX = frozenset("0123456789abcdef")
# SQLite only aliases the rowid for INTEGER PRIMARY KEY, so big ids need a variant.
_ID = BigInteger().with_variant(Integer(), "sqlite")


# --- arrays as (dtype, shape, bytes) -------------------------------------------


def pack_array(a: np.ndarray) -> tuple[str, str, bytes]:
    """``a`` as (dtype name, shape as JSON, little-endian C-order bytes): round-trips exactly."""
    a = np.asarray(a)
    if a.dtype.name not in ARRAY_DTYPES:
        raise ValueError(f"array dtype {a.dtype} cannot be stored; expected one of {sorted(ARRAY_DTYPES)}")
    little = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return a.dtype.name, json.dumps(list(a.shape)), little.tobytes()


def unpack_array(dtype: str, shape: str, data: bytes) -> np.ndarray:
    """The writable array that ``pack_array`` turned into (dtype, shape, data)."""
    wire = np.dtype(dtype).newbyteorder("<")
    return np.frombuffer(data, dtype=wire).reshape(json.loads(shape)).astype(np.dtype(dtype))


# --- engine --------------------------------------------------------------------


def _engine_for(url: str | Path) -> tuple[Engine, bool]:
    """An engine for a SQLAlchemy URL or a file path, and whether it is SQLite in memory.

    SQLite files get WAL, foreign keys and a busy timeout on every connection, and
    write transactions start with ``BEGIN IMMEDIATE`` so that concurrent writers
    queue on the busy timeout instead of failing when they upgrade a read lock.
    ``postgresql://`` means psycopg 3.
    """
    if isinstance(url, Path) or "://" not in url:
        if not str(url).strip():
            raise ValueError("store url: empty")
        path = Path(url).expanduser().resolve()
        sa_url: URL = URL.create("sqlite", database=str(path))
    else:
        sa_url = make_url(url)
        if sa_url.drivername in ("postgres", "postgresql"):
            sa_url = sa_url.set(drivername="postgresql+psycopg")
    if sa_url.get_backend_name() != "sqlite":
        return create_engine(sa_url, pool_pre_ping=True), False
    memory = sa_url.database in (None, "", ":memory:")
    if not memory:
        private_file(Path(sa_url.database).expanduser())  # 0600 in 0700 folders: embeddings and windows are the owner's alone
    if memory:
        engine = create_engine(sa_url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        engine = create_engine(sa_url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("edgebind_write") else "BEGIN")

    return engine, memory


def _create_tables(engine: Engine, base: type[DeclarativeBase], lock_key: int) -> None:
    """``create_all`` under a lock, so two processes opening a new database do not race."""
    with engine.execution_options(edgebind_write=True).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
        base.metadata.create_all(conn)


def _insert_ignore(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> int:
    """Insert ``rows``, skipping those that hit a unique constraint; return how many went in."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    pk = next(iter(table.primary_key.columns))
    if dialect in ("sqlite", "postgresql"):
        insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
        stmt = insert(table).on_conflict_do_nothing().returning(pk)
        return len(session.execute(stmt, list(rows)).all())
    added = 0
    for row in rows:
        try:
            with session.begin_nested():
                session.execute(table.insert(), row)
            added += 1
        except IntegrityError:
            pass
    return added


class SqlStore:
    """What a store does with its engine: tables created on open, read and write transactions, close.

    A subclass names its tables' ``_BASE`` and the ``_LOCK_KEY`` that serialises
    their creation on PostgreSQL.
    """

    _BASE: ClassVar[type[DeclarativeBase]]
    _LOCK_KEY: ClassVar[int]

    def __init__(self, engine: Engine, memory: bool = False) -> None:
        self.engine = engine
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write = sessionmaker(engine.execution_options(edgebind_write=True), expire_on_commit=False)
        # One shared in-memory connection: transactions from different threads must not interleave.
        self._lock: AbstractContextManager[Any] = threading.RLock() if memory else nullcontext()
        _create_tables(engine, self._BASE, lock_key=self._LOCK_KEY)

    @classmethod
    def open(cls, url: str | Path) -> Self:
        """Open (creating tables if needed) the store at ``url``.

        ``url`` is a SQLAlchemy URL (``sqlite://`` for memory, ``sqlite:///file``,
        ``postgresql+psycopg://...``) or a file path, which means a SQLite file.
        """
        engine, memory = _engine_for(url)
        return cls(engine, memory=memory)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[Session]:
        with self._lock, (self._write if write else self._read).begin() as session:
            yield session


# --- input checks ----------------------------------------------------------------


def _name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > _MAX_NAME:
        raise ValueError(f"{what} is longer than {_MAX_NAME} characters")
    return value


def _int(what: str, value: object, lo: int = 0, hi: int = _MAX_INT64) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{what} must be in [{lo}, {hi}], got {value}")
    return int(value)


def _per_row(what: str, value: object, n: int, lo: int = -1, *, int32: bool = False) -> np.ndarray | None:
    """An optional (n,) int64 array with every value >= ``lo``.

    With ``int32`` (a column stored as INTEGER, ``lo`` meaning none: labels,
    subjects) every value is also at most 2**31-1.
    """
    if value is None:
        return None
    a = np.asarray(value)
    if a.ndim != 1 or len(a) != n:
        raise ValueError(f"{what}: expected {n} values in one dimension, got shape {a.shape}")
    if len(a) and a.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integers, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if int32 and len(a) and (a.min() < lo or a.max() > _MAX_INT32):
        raise ValueError(f"{what} must be in [{lo}, 2**31-1] ({lo} means none)")
    if len(a) and a.min() < lo:
        raise ValueError(f"{what} must be >= {lo}, got {int(a.min())}")
    return a


def _sha256(value: object) -> str:
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _SHA256_HEX:
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {value!r}")
    return value


def _chunks(items: list[str], size: int = 5000) -> Iterator[list[str]]:
    """``items`` in slices small enough for one IN (...) on every backend."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
