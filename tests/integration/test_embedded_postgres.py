"""The embedded PostgreSQL cluster starts, serves asyncpg and leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import asyncpg
import pytest

from streams.embedded.postgres import (
    DATABASE_URL_ENV,
    EmbeddedPostgres,
    EmbeddedPostgresError,
    database_url,
    open_database,
    process_alive,
)

from .conftest import run


async def _round_trip(dsn: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE gpu_hours (id bigint PRIMARY KEY, region text NOT NULL)")
        await conn.executemany(
            "INSERT INTO gpu_hours (id, region) VALUES ($1, $2)", [(1, "eu-west"), (2, "us-east")]
        )
        rows = await conn.fetch("SELECT id, region FROM gpu_hours ORDER BY id")
        return [(row["id"], row["region"]) for row in rows]
    finally:
        await conn.close()


@pytest.mark.timeout(60)
def test_start_serves_asyncpg_and_stop_leaves_no_server_or_directory() -> None:
    pg = EmbeddedPostgres(database="gx_test").start()
    try:
        assert pg.dsn == f"postgresql://postgres@127.0.0.1:{pg.port}/gx_test"
        pid, data_dir = pg.pid, pg.data_dir
        assert pid is not None and process_alive(pid)
        assert data_dir is not None and data_dir.exists()
        assert run(_round_trip(pg.dsn)) == [(1, "eu-west"), (2, "us-east")]
    finally:
        pg.stop()
    assert not process_alive(pid)
    assert not data_dir.exists()
    assert pg.pid is None
    with pytest.raises(EmbeddedPostgresError, match="start"):
        _ = pg.dsn
    pg.stop()  # idempotent


@pytest.mark.timeout(60)
def test_context_manager_stops_server_when_the_body_fails() -> None:
    pid = None
    with pytest.raises(RuntimeError, match="boom"):
        with EmbeddedPostgres() as pg:
            pid = pg.pid
            raise RuntimeError("boom")
    assert pid is not None and not process_alive(pid)


@pytest.mark.timeout(60)
def test_two_clusters_run_side_by_side_on_different_ports() -> None:
    with EmbeddedPostgres(database="a") as first, EmbeddedPostgres(database="b") as second:
        assert first.port != second.port

        async def names() -> tuple[str, str]:
            a = await asyncpg.connect(first.dsn)
            b = await asyncpg.connect(second.dsn)
            try:
                return (
                    await a.fetchval("SELECT current_database()"),
                    await b.fetchval("SELECT current_database()"),
                )
            finally:
                await a.close()
                await b.close()

        assert run(names()) == ("a", "b")


@pytest.mark.timeout(60)
def test_given_data_dir_keeps_rows_across_restarts() -> None:
    # Not tmp_path: as root the server runs as `postgres`, which cannot enter pytest's 0700 dirs.
    parent = Path(tempfile.mkdtemp(prefix="gx-pg-test-"))
    try:
        parent.chmod(0o711)
        data_dir = parent / "pgdata"
        with EmbeddedPostgres(data_dir=data_dir, fsync=True) as pg:
            assert run(_round_trip(pg.dsn)) == [(1, "eu-west"), (2, "us-east")]
        assert (data_dir / "PG_VERSION").exists()

        async def count(dsn: str) -> int:
            conn = await asyncpg.connect(dsn)
            try:
                return int(await conn.fetchval("SELECT count(*) FROM gpu_hours"))
            finally:
                await conn.close()

        with EmbeddedPostgres(data_dir=data_dir) as pg:
            assert run(count(pg.dsn)) == 2
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    assert not os.path.exists(parent)


@pytest.mark.timeout(60)
def test_open_database_prefers_gx_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://someone@db.invalid:5432/prod"
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    assert database_url() == url
    with open_database() as dsn:
        assert dsn == url


@pytest.mark.timeout(60)
def test_open_database_starts_embedded_cluster_without_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    assert database_url() is None
    with open_database(database="gx_open") as dsn:
        assert dsn.startswith("postgresql://postgres@127.0.0.1:")
        assert dsn.endswith("/gx_open")
        assert run(_round_trip(dsn)) == [(1, "eu-west"), (2, "us-east")]
