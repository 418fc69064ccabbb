"""Publishing to the real PostgreSQL on 127.0.0.1:5432 (database `test`), one schema per test.

Tiny tables and the session's SparkSession (with the JDBC driver jar on its classpath).
The server trusts local connections, so the URL's password is never checked: it is a
marker that must never show in logs or output.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid

import pandas as pd
import pytest

from recs import postgres, reader
from recs.config import RecsConfig
from recs.io import RunPaths
from resources import require_postgres

PASSWORD = f"pw-{uuid.uuid4().hex[:12]}"
URL = f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/test"
TABLES = ("popular_products", "product_clusters", "run_summary", "similar_products", "user_recommendations")


@pytest.fixture(autouse=True, scope="module")
def _postgres_up():
    require_postgres(URL)


@pytest.fixture
def database(spark):
    if "postgresql" not in spark.conf.get("spark.jars", ""):
        pytest.fail("the test SparkSession lacks the PostgreSQL JDBC driver: `make setup` installs it")
    return postgres.Database.from_url(URL)


@pytest.fixture
def schema(database):
    name = f"recs_test_{uuid.uuid4().hex[:10]}"
    yield name
    connection = database.connect()
    with connection, connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    connection.close()


def sql(database, statement, params=()):
    connection = database.connect()
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else None
    finally:
        connection.close()


def version_tables(spark, n: int, version: str) -> dict:
    """One version's tables; their sizes grow with n, so a half-loaded or mixed read shows."""
    users, products = [f"U{i}" for i in range(n)], [f"P{i}" for i in range(n + 2)]
    recs = [(u, r, products[(i + r) % len(products)], 1.0 / r, f"because {version}", None)
            for i, u in enumerate(users) for r in (1, 2)]
    return {
        "user_recommendations": spark.createDataFrame(
            recs, "user_id string, rank int, product_id string, score double, reason string, reason_product_id string"
        ),
        "similar_products": spark.createDataFrame(
            [(p, 1, products[(i + 1) % len(products)], 0.5) for i, p in enumerate(products)],
            "product_id string, rank int, similar_product_id string, score double",
        ),
        "product_clusters": spark.createDataFrame(
            [(p, i % 2, [float(i), -0.25 * i], f"title {p}", "cat") for i, p in enumerate(products)],
            "product_id string, cluster int, pca array<double>, title string, category string",
        ),
        "popular_products": spark.createDataFrame(
            [(1, products[0], 3.0), (2, products[1], 2.0)], "rank int, product_id string, score double"
        ),
        "run_summary": spark.createDataFrame(
            [(f"run-{version}", version, n, "{}", "{}")],
            "run_id string, version string, k int, config_json string, stats_json string",
        ),
    }


def expected_counts(n: int) -> dict[str, int]:
    return {"user_recommendations": 2 * n, "similar_products": n + 2, "product_clusters": n + 2,
            "popular_products": 2, "run_summary": 1}


def publish(spark, database, schema, n, version, keep=5):
    return postgres.publish_tables(spark, database, schema, version_tables(spark, n, version), version,
                                   f"run-{version}", keep, expected_counts(n))


def rows_of(frame: pd.DataFrame, columns: list[str]) -> list[tuple]:
    """Sorted rows, arrays (numpy from Parquet, lists from psycopg2) as lists."""
    return sorted(
        tuple(list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v for v in row)
        for row in frame[columns].itertuples(index=False)
    )


def live_state(database, schema) -> tuple:
    """What one statement (one snapshot) shows: the current version, then per table its
    row count and its versions. Tables in name order, as the swap locks them."""
    parts = [f'(SELECT version FROM "{schema}".published_versions WHERE is_current)']
    for table in TABLES:
        parts += [f'(SELECT count(*) FROM "{schema}".{table})',
                  f'(SELECT min(version) FROM "{schema}".{table})', f'(SELECT max(version) FROM "{schema}".{table})']
    return sql(database, "SELECT " + ", ".join(parts))[0]


def test_publish_from_parquet_reads_back_equal(spark, database, schema, tmp_path, monkeypatch, caplog):
    data_root = tmp_path / "data"
    paths = RunPaths(str(data_root), "run-1")
    version_dir = paths.published_version("v1")
    for name, table in version_tables(spark, 3, "v1").items():
        table.write.parquet(f"{version_dir}/{name}")
    # The manifest's row counts, as the publish step writes them, are what the load must match.
    with open(f"{version_dir}/_MANIFEST.json", "w") as manifest:
        json.dump({"run_id": "run-1", "published_at": "2026-01-01T00:00:00", "rows": expected_counts(3)}, manifest)
    # An extra run table that an optional step left in the run folder goes along.
    spark.createDataFrame([("precision_at_10", 0.25)], "metric string, value double").write.parquet(
        paths.table("run_metrics")
    )
    monkeypatch.setenv("RECS_DATABASE_URL", URL)
    config = RecsConfig.load(overrides={"database_schema": schema, "data_root": str(data_root)}, environ={})
    with caplog.at_level(logging.INFO):
        result = postgres.publish_if_configured(spark, config, paths, "v1", version_dir)

    assert result["rows"] == {**expected_counts(3), "run_metrics": 1}
    assert PASSWORD not in caplog.text and PASSWORD not in str(result)
    assert "postgres:***@127.0.0.1" in caplog.text
    for name in TABLES + ("run_metrics",):
        location = f"{version_dir}/{name}" if name != "run_metrics" else paths.table(name)
        expected = pd.read_parquet(location)
        rows = sql(database, f'SELECT * FROM "{schema}".{name}')
        columns = [c for c in expected.columns if c != "version"]
        got = pd.DataFrame(rows, columns=["version", *columns])
        assert (got["version"] == "v1").all()
        assert rows_of(got, columns) == rows_of(expected, columns), name
    assert sql(database, f'SELECT version, is_current, tables FROM "{schema}".published_versions') == [
        ("v1", True, [*TABLES_IN_PUBLISH_ORDER, "run_metrics"])
    ]
    indexes = {row[0] for row in sql(database, "SELECT indexdef FROM pg_indexes WHERE schemaname = %s", (schema,))}
    assert any("(user_id, rank)" in index for index in indexes)
    assert any("UNIQUE" in index and "(product_id)" in index for index in indexes)
    # `make recs` / `make similar` read it back through the reader.
    mine = postgres.recommendations_for(database, schema, "U1")
    assert list(mine["rank"]) == [1, 2] and mine["title"].str.startswith("title P").all()
    with pytest.raises(KeyError, match="unknown customer 'nobody'"):  # a typo is said, not hidden by popular
        postgres.recommendations_for(database, schema, "nobody")
    with pytest.raises(KeyError, match="unknown product 'P999'"):
        postgres.similar_to(database, schema, "P999")


TABLES_IN_PUBLISH_ORDER = ("user_recommendations", "similar_products", "product_clusters", "popular_products",
                           "run_summary")


def test_not_configured_means_parquet_only(spark, monkeypatch, tmp_path):
    monkeypatch.delenv("RECS_DATABASE_URL", raising=False)
    config = RecsConfig.load(environ={})
    assert postgres.publish_if_configured(spark, config, RunPaths(str(tmp_path), "r"), "v", str(tmp_path)) is None


def test_readers_never_see_a_missing_empty_or_mixed_table(spark, database, schema, monkeypatch):
    sizes = {"v0": 3, "v1": 4, "v2": 5, "v3": 6}
    publish(spark, database, schema, sizes["v0"], "v0", keep=1)
    seen, problems, polls, stop = [], [], [0], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                state = live_state(database, schema)
            except Exception as err:  # noqa: BLE001 - a missing table is exactly what must not happen
                problems.append(f"query failed: {err}")
                continue
            polls[0] += 1
            current, rest = state[0], state[1:]
            for i, table in enumerate(TABLES):
                count, low, high = rest[3 * i: 3 * i + 3]
                if not (low == high == current) or count != expected_counts(sizes[current])[table]:
                    problems.append(f"{table}: {count} rows of {low}..{high} while {current} is current")
            if not seen or seen[-1] != current:
                seen.append(current)

    reader_thread = threading.Thread(target=poll, daemon=True)
    reader_thread.start()
    try:
        publish(spark, database, schema, sizes["v1"], "v1", keep=1)

        real_swap = postgres.swap_in

        def fail_half_way(connection, schema_, version, *args):
            staged = sql(database, "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s",
                         (schema, f"%__v_{postgres.version_key(version)}"))[0][0]
            raise RuntimeError(f"injected failure after {staged} staging tables were loaded")

        monkeypatch.setattr(postgres, "swap_in", fail_half_way)
        with pytest.raises(RuntimeError, match="after 5 staging tables were loaded"):
            publish(spark, database, schema, sizes["v2"], "v2", keep=1)
        monkeypatch.setattr(postgres, "swap_in", real_swap)

        publish(spark, database, schema, sizes["v3"], "v3", keep=1)
        time.sleep(0.2)
    finally:
        stop.set()
        reader_thread.join(timeout=30)

    assert problems == [], problems[:5]
    assert seen[0] == "v0" and seen[-1] == "v3" and set(seen) <= {"v0", "v1", "v3"}
    assert seen == sorted(seen), seen  # never back to an older version
    assert polls[0] > 20
    # The failed version left nothing behind; keep=1 kept v1 beside the current v3, dropped v0.
    tables = {row[0] for row in sql(database, "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))}
    assert not any(postgres.version_key("v2") in name for name in tables)
    assert not any(postgres.version_key("v0") in name for name in tables)
    assert {postgres.versioned_name(t, postgres.version_key("v1")) for t in TABLES} <= tables
    assert set(TABLES) <= tables
    states = sql(database, f'SELECT version, is_current, dropped_at IS NOT NULL FROM "{schema}".published_versions '
                           "ORDER BY published_at")
    assert states == [("v0", False, True), ("v1", False, False), ("v3", True, False)]


def test_rollback_restores_the_previous_version(spark, database, schema, tmp_path, monkeypatch, capsys):
    data_root = tmp_path / "data"
    for version in ("v1", "v2", "v3"):
        (data_root / "published" / "versions" / version).mkdir(parents=True)
    (data_root / "published" / "CURRENT").write_text("v2\n")
    publish(spark, database, schema, 3, "v1")
    publish(spark, database, schema, 4, "v2")
    monkeypatch.setenv("RECS_DATABASE_URL", URL)
    monkeypatch.setenv("RECS_DATABASE_SCHEMA", schema)
    monkeypatch.setenv("RECS_DATA_ROOT", str(data_root))

    assert postgres.main(["rollback"]) == 0
    out = capsys.readouterr().out
    assert "rolled back from v2 to v1" in out and PASSWORD not in out
    assert (data_root / "published" / "CURRENT").read_text() == "v1\n"
    state = live_state(database, schema)
    assert state[0] == "v1" and set(state[2::3]) == {"v1"} and state[1] == expected_counts(3)["popular_products"]
    assert sql(database, f'SELECT count(*) FROM "{schema}".user_recommendations')[0][0] == 6

    # Nothing older than v1: a clear message, and nothing changes.
    assert postgres.main(["rollback"]) == 1
    assert "cannot roll back" in capsys.readouterr().err
    assert live_state(database, schema)[0] == "v1"

    # A publish after a rollback, then a rollback: back to v1, not to the rolled-back v2.
    publish(spark, database, schema, 5, "v3")
    assert postgres.rollback(database, schema) == ("v3", "v1")
    assert postgres.rollback(database, schema, to_version="v3") == ("v1", "v3")
    assert live_state(database, schema)[0] == "v3"
    with pytest.raises(postgres.DatabaseError, match="never reused"):
        publish(spark, database, schema, 3, "v1")
    # A load that does not match the Parquet row counts never goes live.
    wrong = {**expected_counts(2), "user_recommendations": 99}
    with pytest.raises(postgres.DatabaseError, match="loaded 4 rows, expected 99"):
        postgres.publish_tables(spark, database, schema, version_tables(spark, 2, "v4"), "v4", "run-v4", 5, wrong)
    assert live_state(database, schema)[0] == "v3"
    assert not sql(database, "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s",
                   (schema, f"%{postgres.version_key('v4')}"))

    # The reader CLI reads the database when the URL is set; unknown ids get one line.
    assert reader.main(["similar", "P999"]) == 1
    assert "unknown product 'P999'" in capsys.readouterr().err
    assert reader.main(["user", "U2"]) == 0
    assert "because v3" in capsys.readouterr().out


def test_url_handling_keeps_the_password_out():
    database = postgres.Database.from_url("postgresql://shop:s%40cret@db.example:6543/recs?sslmode=require")
    assert (database.user, database.password, database.port, database.dbname) == ("shop", "s@cret", 6543, "recs")
    assert "s@cret" not in repr(database) and "cret" not in database.redacted_url
    assert "cret" not in database.jdbc_url and "sslmode=require" in database.jdbc_url
    assert database.jdbc_options()["password"] == "s@cret"
    with pytest.raises(postgres.DatabaseError, match="must start with postgresql://"):
        postgres.Database.from_url("mysql://x@y/z")
    assert len(postgres.versioned_name("user_recommendations", postgres.version_key("manual__" + "x" * 80))) <= 63


def test_airflow_side_exports_the_url_from_the_connection_and_masks_it(monkeypatch):
    from types import SimpleNamespace

    from recs_airflow import spark_tasks

    connection = SimpleNamespace(login="shop", password="p@ss word", host="db", port=5433, schema="recs",
                                 extra_dejson={"sslmode": "require"})
    masked = []
    monkeypatch.setenv("RECS_DATABASE_URL", "")  # unset, and restored after the test
    monkeypatch.setattr(spark_tasks.BaseHook, "get_connection", staticmethod(lambda conn_id: connection))
    monkeypatch.setattr(spark_tasks, "mask_secret", masked.append)
    spark_tasks.export_database_url()
    url = spark_tasks.os.environ["RECS_DATABASE_URL"]
    assert url == "postgresql://shop:p%40ss%20word@db:5433/recs?sslmode=require"
    assert postgres.Database.from_url(url).password == "p@ss word"
    assert {url, "p@ss word", "p%40ss%20word"} <= set(masked)


def test_the_serving_pool_keeps_its_connections(spark, database, schema):
    """Every answer of the HTTP service borrows a pooled connection; returning it must not
    close it (psycopg2's pool closes those beyond `minconn`), or each request would pay a
    new PostgreSQL backend: the bench measured 300 against 1,500 requests/s."""
    publish(spark, database, schema, 3, "v1")
    serving = postgres.Reader(database, schema, max_connections=4)
    try:
        def backends() -> set[int]:
            seen, barrier = set(), threading.Barrier(4)

            def ask():
                barrier.wait()
                for _ in range(5):
                    assert serving.run("current")
                    seen.update(conn.info.backend_pid for conn in serving._pool._pool)

            workers = [threading.Thread(target=ask) for _ in range(4)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            return {conn.info.backend_pid for conn in serving._pool._pool} | seen

        first = backends()
        assert len(first) <= 4 and backends() == first
    finally:
        serving.close()
