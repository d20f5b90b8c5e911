"""Shared fixtures: a real PostgreSQL server for the store suites.

``pg_server_url`` is ``$EDGEBIND_TEST_PG_URL`` when set (CI sets it with
``eval "$(.ci/pg.sh)"``); otherwise, when ``initdb`` is on PATH, a throwaway
cluster started by ``.ci/pg.sh`` in a temp dir for this session and removed at
its end. Without either the PostgreSQL tests skip, except in CI (``CI=true``),
where they fail. The session gets a database of its own on that server, and
``pg_url`` gives each test a fresh schema in it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# One torch thread per test process: the suite also runs Ray workers, brokers and
# servers beside it, and oversubscribed BLAS threads spin rather than work.
torch.set_num_threads(int(os.environ.get("EDGEBIND_TEST_THREADS", "1")))

PG_SH = Path(__file__).resolve().parents[1] / ".ci" / "pg.sh"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostgreSQL is required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server whose role may create databases."""
    url = os.environ.get("EDGEBIND_TEST_PG_URL")
    if url:
        yield url
        return
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        _unavailable("no PostgreSQL: set EDGEBIND_TEST_PG_URL, or put initdb and pg_ctl on PATH")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("initdb cannot run as root and there is no `postgres` user (`useradd -m postgres`)")
    started = subprocess.run(
        ["bash", str(PG_SH), "start"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    if started.returncode != 0:
        _unavailable(f"could not start a throwaway PostgreSQL: {started.stderr.strip()[-2000:]}")
    env = dict(
        line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines() if line.startswith("export ")
    )
    try:
        yield env["EDGEBIND_TEST_PG_URL"]
    finally:
        subprocess.run(["bash", str(PG_SH), "stop", env["EDGEBIND_PG_DIR"]], capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def pg_database_url(pg_server_url: str) -> Iterator[str]:
    """A database of its own for this test session (the server's own one if we may not create databases)."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    server = make_url(pg_server_url)
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"edgebind_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.InsufficientPrivilege:
        yield pg_server_url
        return
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def pg_url(pg_database_url: str) -> Iterator[str]:
    """A fresh, empty schema for one test (dropped afterwards): a SQLAlchemy URL whose search_path is it.

    A schema per test isolates tests like a database per test, at a fraction of
    the cost of CREATE DATABASE.
    """
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    url = make_url(pg_database_url)
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield url.set(
            drivername="postgresql+psycopg", query={**url.query, "options": f"-csearch_path={schema}"}
        ).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
