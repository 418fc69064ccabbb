"""Fault drills of the publish job, with a reader polling both published stores (Parquet and
PostgreSQL) the whole time: it must never see a missing, empty or mixed version once one
is published, and after every fault the next try publishes and both stores agree.

Each try is the publish job through spark-submit on a prepared run folder
(tests/publish_runs.py); the job stops at a named point through its test hook
(recs/faults.py: RECS_TEST_FAULT=<point>:pause|fail) and is killed there with SIGKILL,
or fails there. The database is a PostgreSQL server of the test's own (tests/resources.py:
PrivatePostgres), so that it can be stopped during a load without touching the server other
tests share. The tries are chained, each starting from what the one before left, so that
every spark-submit (~30 s) counts:

    r1: kill -9 during staging; PostgreSQL stopped (immediate shutdown) during the load; a
        failure injected right after the swap commits (the try finishes: the database serves
        its version).
    r2: kill -9 during the Parquet write; kill -9 right after the swap; kill -9 at the pointer
        switch of the retry; the next retry finishes the pointer, while a publish of another
        run on the same data root fails on the lock, naming r2.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from publish_runs import build_zip, kill, prepare_run, run_publish, submit_publish
from recs import postgres
from recs.reader import current_version_dir
from resources import PrivatePostgres

pytestmark = pytest.mark.e2e
TABLES = ("user_recommendations", "similar_products", "product_clusters", "popular_products", "run_summary",
          "run_metrics")


@pytest.fixture
def server():
    database = PrivatePostgres()
    yield database
    database.close()


def query(url: str, statement: str, params=()):
    import psycopg2

    connection = psycopg2.connect(url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else None
    finally:
        connection.close()


class Reader(threading.Thread):
    """Reads both stores as a storefront would, over and over, and notes every broken promise."""

    def __init__(self, data_root: Path, url: str, schema: str) -> None:
        super().__init__(daemon=True)
        self.data_root, self.url, self.schema = data_root, url, schema
        self.problems: list[str] = []
        self.parquet_seen: list[str] = []
        self.database_seen: list[str] = []
        self.polls = 0
        self.outages = 0  # polls that found the server down: it is, not a broken promise
        self.stop = threading.Event()

    def run(self) -> None:
        connection = None
        try:
            while not self.stop.is_set():
                self.read_parquet()
                connection = self.read_database(connection)
                self.polls += 1
                time.sleep(0.05)
        finally:
            if connection is not None:
                connection.close()

    def note(self, seen: list[str], version: str) -> None:
        if not seen or seen[-1] != version:
            seen.append(version)

    def read_parquet(self) -> None:
        try:
            folder = Path(current_version_dir(str(self.data_root)))
        except FileNotFoundError:
            if self.parquet_seen:
                self.problems.append("parquet: no pointer after a version was published")
            return
        try:
            rows = json.loads((folder / "_MANIFEST.json").read_text())["rows"]
            for table in TABLES:
                frame = pd.read_parquet(folder / table)
                if len(frame) == 0 or len(frame) != rows[table]:
                    self.problems.append(f"parquet {folder.name}: {table} has {len(frame)} rows of {rows[table]}")
            if pd.read_parquet(folder / "run_summary")["version"].iloc[0] != folder.name:
                self.problems.append(f"parquet {folder.name}: run_summary of another version")
        except Exception as err:  # noqa: BLE001 - a missing folder or table is what must not happen
            self.problems.append(f"parquet {folder.name}: {type(err).__name__}: {err}"[:300])
            return
        self.note(self.parquet_seen, folder.name)

    def read_database(self, connection):
        """One read of the current version and every table; the connection to use next."""
        import psycopg2

        parts = [f'(SELECT version FROM "{self.schema}".published_versions WHERE is_current)',
                 f'(SELECT row_counts FROM "{self.schema}".published_versions WHERE is_current)']
        for table in TABLES:
            parts += [f'(SELECT count(*) FROM "{self.schema}".{table})',
                      f'(SELECT min(version) FROM "{self.schema}".{table})',
                      f'(SELECT max(version) FROM "{self.schema}".{table})']
        try:
            if connection is None:
                connection = psycopg2.connect(self.url, application_name="recs-fault-reader", connect_timeout=2)
                connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("SELECT " + ", ".join(parts))
                state = cursor.fetchone()
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            self.outages += 1
            if connection is not None:
                connection.close()
            return None
        except Exception as err:  # noqa: BLE001 - before the first publish the tables do not exist
            if self.database_seen:
                self.problems.append(f"database: {type(err).__name__}: {err}"[:300])
            return connection
        current, counts = state[0], state[1]
        for i, table in enumerate(TABLES):
            count, low, high = state[2 + 3 * i: 5 + 3 * i]
            if count == 0 or count != counts[table] or not low == high == current:
                self.problems.append(f"database: {table} has {count} rows of {low}..{high}, {current} is current")
        self.note(self.database_seen, current)
        return connection

    def __enter__(self) -> Reader:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.join(timeout=30)


def parquet_version(data_root: Path) -> str | None:
    try:
        return Path(current_version_dir(str(data_root))).name
    except FileNotFoundError:
        return None


def database_version(url: str, schema: str) -> str | None:
    try:
        rows = query(url, f'SELECT version FROM "{schema}".published_versions WHERE is_current')
    except Exception:  # noqa: BLE001 - not created yet
        return None
    return rows[0][0] if rows else None


def staging_tables(url: str, schema: str) -> list[str]:
    return [name for (name,) in query(url, "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
            if "__v_" in name and not any(name.endswith(key) for key in kept_keys(url, schema))]


def kept_keys(url: str, schema: str) -> list[str]:
    try:
        return [key for (key,) in query(url, f'SELECT table_key FROM "{schema}".published_versions '
                                        "WHERE dropped_at IS NULL")]
    except Exception:  # noqa: BLE001
        return []


def test_publish_survives_kills_and_failures_at_every_point(tmp_path, server):
    url, schema = server.url, f"recs_faults_{uuid.uuid4().hex[:10]}"
    data_root, faults = tmp_path / "data", tmp_path / "faults"
    faults.mkdir()
    prepare_run(data_root, "r1", users=10, ndcg=0.30, input_path="/shops/a")
    prepare_run(data_root, "r2", users=11, ndcg=0.30, input_path="/shops/a")
    package = build_zip(tmp_path / "build")
    env = {"RECS_DATA_ROOT": str(data_root), "RECS_DATABASE_URL": url, "RECS_DATABASE_SCHEMA": schema,
           "RECS_TEST_FAULT_DIR": str(faults), "RECS_LOCK_WAIT_SECONDS": "120"}
    tries = iter(range(100))

    def paused(run_id: str, point: str):
        """Start a try that pauses at `point`; return it once it is there."""
        log = tmp_path / f"{run_id}-{next(tries)}-{point}.log"
        process = submit_publish(package, run_id, {**env, "RECS_TEST_FAULT": f"{point}:pause"}, log)
        deadline = time.monotonic() + 300
        while not (faults / point).exists():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        (faults / point).unlink()
        return process, log

    def finished(run_id: str, fault: str = "", **more: str) -> tuple[int, str]:
        log = tmp_path / f"{run_id}-{next(tries)}-{fault or 'clean'}.log"
        code = run_publish(package, run_id, {**env, "RECS_TEST_FAULT": fault, **more}, log)
        return code, log.read_text()

    with Reader(data_root, url, schema) as reader:
        # r1, kill -9 during staging: some tables staged, nothing served yet.
        process, _ = paused("r1", "staging")
        kill(process)
        assert staging_tables(url, schema)
        assert database_version(url, schema) is None and parquet_version(data_root) is None

        # PostgreSQL stops during the load (an immediate shutdown: every connection cut): the
        # try fails; nothing is served yet, in either store.
        process, log = paused("r1", "staging")
        server.stop("immediate")
        outages = reader.outages
        (faults / "staging.continue").touch()
        assert process.wait(timeout=300) != 0, log.read_text()[-3000:]
        (faults / "staging.continue").unlink()
        assert reader.outages > outages  # the reader saw the server down meanwhile
        server.start()
        assert database_version(url, schema) is None and parquet_version(data_root) is None

        # A failure injected right after the swap commits (as a lost COMMIT acknowledgement
        # would raise): the job sees that the database serves its version, deletes nothing
        # and finishes; what the two interrupted loads left was dropped first.
        code, log = finished("r1", "after_swap:fail")
        assert code == 0, log[-3000:]
        assert "injected failure at after_swap" in log and "committed though the client saw an error" in log
        r1 = database_version(url, schema)
        assert r1.startswith("r1.") and parquet_version(data_root) == r1
        assert not staging_tables(url, schema)

        # r2, kill -9 during the Parquet write: a version folder without a manifest.
        process, _ = paused("r2", "parquet_write")
        kill(process)
        assert [p.name for p in (data_root / "published" / "versions").glob("r2*")] == ["r2"]
        assert not (data_root / "published" / "versions" / "r2" / "_MANIFEST.json").exists()

        # kill -9 right after the swap. The half-written r2 folder was removed first (no reader
        # ever saw it, no store knew it: its name is free again).
        process, log = paused("r2", "after_swap")
        kill(process)
        assert "removed what interrupted publishes left: ['r2']" in log.read_text()
        r2 = database_version(url, schema)
        assert r2 == "r2" and parquet_version(data_root) == r1
        assert (data_root / "published" / "versions" / "r2" / "_MANIFEST.json").is_file()

        # The retry only finishes the pointer, and is killed at the switch.
        process, _ = paused("r2", "pointer")
        kill(process)
        assert parquet_version(data_root) == r1 and database_version(url, schema) == r2

        # The next retry finishes; meanwhile another run's publish on the same root fails on
        # the lock, naming the holder.
        process, log = paused("r2", "pointer")
        code, other = finished("r3", RECS_LOCK_WAIT_SECONDS="3")
        assert code != 0
        assert "the publish lock of data root" in other and "is held by publish of run r2" in other, other[-3000:]
        record = json.loads((data_root / "runs" / "r3" / "errors" / "publish.json").read_text())
        assert "is held by publish of run r2" in record["error"] and not record["final"]
        (faults / "pointer.continue").touch()
        assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
        assert "already serves" in log.read_text()
        assert not list((data_root / "published").glob(".CURRENT.*.tmp"))
        time.sleep(0.5)

    assert reader.problems == [], reader.problems[:10]
    assert reader.polls > 50
    assert reader.parquet_seen == [r1, r2] and reader.database_seen == [r1, r2]
    assert parquet_version(data_root) == database_version(url, schema) == r2
    assert not staging_tables(url, schema)
    versions = data_root / "published" / "versions"
    assert all((folder / "_MANIFEST.json").is_file() for folder in versions.iterdir())
    for table in TABLES:
        parquet_rows = len(pd.read_parquet(versions / r2 / table))
        assert query(url, f'SELECT count(*) FROM "{schema}".{table}')[0][0] == parquet_rows, table
    assert postgres.Database.from_url(url).redacted_url.startswith("postgresql://postgres@")
