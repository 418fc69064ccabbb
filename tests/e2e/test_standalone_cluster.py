"""The whole DAG on a synthetic shop, run on a real Spark standalone cluster (a master
and one worker started from the installed pyspark on 127.0.0.1), publishing to
PostgreSQL as well as Parquet.

One DAG run (each costs minutes of spark-submits) checks: the jobs run on the cluster's
executors (the shared code reaches them through py_files), the default offline
embedding model works there, the planted bad rows are quarantined with their reasons,
the evaluation and its report cover every method, the publish gate lets a sound run
through, the published tables are sound and equal in both stores, and the database
password shows neither in the task log nor on the spark-submit command line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest

from published_checks import check_published
from recs import postgres
from recs.config import safe_run_id
from recs.reader import current_version_dir
from recs.synthetic import ShopSize, write_shop
from resources import require

pytestmark = pytest.mark.e2e
TOP_N = 5
STEPS = ("preprocess", "embed", "pca", "cluster", "recommend", "publish")  # and any steps added since
PASSWORD = f"pw-{uuid.uuid4().hex[:12]}"  # the test server trusts local connections: only a marker
DATABASE_URL = f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def master_json(webui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{webui_port}/json/", timeout=5) as response:
        return json.load(response)


def wait_for(what: str, check, seconds: float = 90):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {seconds}s")


def stop(process: subprocess.Popen) -> None:
    """The whole process group: spark-class execs java, which may have children."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture
def standalone_cluster(tmp_path):
    """A master and one worker (2 cores, 2 GiB) on 127.0.0.1; stopped whatever happens."""
    spark_class = str(Path(sys.executable).parent / "spark-class")
    port, webui, worker_webui = free_port(), free_port(), free_port()
    work_dir = tmp_path / "spark-worker"
    work_dir.mkdir()
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_WORKER_DIR": str(work_dir),
           "PYSPARK_PYTHON": sys.executable}
    logs = tmp_path / "spark-logs"
    logs.mkdir()
    processes = []
    try:
        for name, command in (
            ("master", [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                        "--port", str(port), "--webui-port", str(webui)]),
            ("worker", [spark_class, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}",
                        "--host", "127.0.0.1", "--cores", "2", "--memory", "2g", "--webui-port", str(worker_webui),
                        "--work-dir", str(work_dir)]),
        ):
            with open(logs / f"{name}.log", "w") as log:
                processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                  start_new_session=True))
            if name == "master":
                wait_for("the Spark master", lambda: master_json(webui)["status"] == "ALIVE")
        wait_for("the Spark worker", lambda: master_json(webui)["aliveworkers"] >= 1)
        yield {"port": port, "webui": webui, "work_dir": work_dir}
    finally:
        for process in reversed(processes):
            stop(process)


@pytest.fixture
def pg_schema():
    import psycopg2

    try:
        psycopg2.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres", connect_timeout=5).close()
        up = True
    except psycopg2.OperationalError:
        up = False
    require(up, "no PostgreSQL on 127.0.0.1:5432 (database test)")
    name = f"recs_e2e_{uuid.uuid4().hex[:10]}"
    yield name
    connection = psycopg2.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres")
    with connection, connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    connection.close()


def test_dag_on_a_standalone_cluster_publishes_a_synthetic_shop_to_parquet_and_postgres(
    tmp_path, run_dag, airflow_home, standalone_cluster, pg_schema
):
    shop = tmp_path / "shop"
    write_shop(str(shop), ShopSize(products=360, users=240, days=120), seed=3)
    data_root = tmp_path / "data"
    # The default backend (`auto` without a key): the offline MiniLM model.
    conf = {"input_path": str(shop), "input_format": "contract", "top_n": TOP_N, "k_min": 4, "k_max": 14,
            "pca_dimensions": 16}
    spark_connection = {"conn_type": "spark", "host": "spark://127.0.0.1", "port": standalone_cluster["port"]}
    run_id, state = run_dag(data_root, conf, {
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps(spark_connection),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "OPENAI_API_KEY": "",
        "RECS_DATABASE_URL": DATABASE_URL,
        "RECS_DATABASE_SCHEMA": pg_schema,
    })
    log_text = (airflow_home / "last_run.log").read_text(errors="replace")
    assert state == "success", log_text[-3000:]

    # Sound tables under published/.
    run_dir = data_root / "runs" / safe_run_id(run_id)
    figures = check_published(str(data_root), str(run_dir), TOP_N)
    assert figures["users"] == 240
    stats = {step: json.loads((run_dir / "stats" / f"{step}.json").read_text())
             for step in ("preprocess", "embed", "cluster", "publish")}
    # The bad rows the generator plants are quarantined with their reasons, none lost.
    quarantine = stats["preprocess"]["quarantine"]
    for reason in ("products: missing product_id", "events: bad timestamp", "events: unknown product_id"):
        assert quarantine.get(reason) == 1, quarantine
    assert stats["embed"]["backend"] == "local"
    assert stats["embed"]["texts_embedded"] == stats["preprocess"]["products_out"]
    assert 4 <= stats["cluster"]["k"] <= 14
    assert len(stats["cluster"]["silhouette_by_k"]) >= 3
    assert stats["publish"]["gate"]["passed"] and not stats["publish"]["gate"]["overridden"]

    # The evaluation ran on the same split for every method, and the report shows it.
    version_dir = Path(current_version_dir(str(data_root)))
    metrics = pd.read_parquet(version_dir / "run_metrics")
    assert {"published", "most_popular", "trending", "item_knn", "als", "ease", "cluster_only", "without_time",
            "without_text"} <= set(metrics["method"])
    report = (version_dir / "report.html").read_text(encoding="utf-8")
    assert report.count("<svg") == 4 and "most_popular" in report and "ndcg@10" in report

    # Every step ran as an application of the cluster, with executors on its worker.
    completed = {app["name"] for app in master_json(standalone_cluster["webui"])["completedapps"]}
    assert {f"recs-{step}" for step in STEPS} <= completed, completed
    executor_dirs = list(standalone_cluster["work_dir"].glob("app-*/*"))
    assert len({path.parent for path in executor_dirs}) >= len(STEPS)

    # PostgreSQL holds the same version, row for row in number.
    version = version_dir.name
    tables = [name for name in postgres.TABLES + postgres.EXTRA_RUN_TABLES if (version_dir / name).is_dir()]
    assert "run_metrics" in tables  # the evaluate step's table goes along
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres")
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(f'SELECT version FROM "{pg_schema}".published_versions WHERE is_current')
            assert cursor.fetchone() == (version,)
            for table in tables:
                cursor.execute(f'SELECT count(*), min(version), max(version) FROM "{pg_schema}".{table}')
                count, low, high = cursor.fetchone()
                parquet_rows = len(pd.read_parquet(version_dir / table))
                assert (count, low, high) == (parquet_rows, version, version), table
    finally:
        connection.close()

    # The password is in no log and on no command line; the submit commands were logged.
    logs = [log_text] + [path.read_text(errors="replace") for path in airflow_home.rglob("*.log")]
    assert not any(PASSWORD in text for text in logs)
    commands = [line for line in log_text.splitlines() if "Spark-Submit cmd" in line]
    assert len(commands) >= len(STEPS) and all("spark://127.0.0.1" in line for line in commands)
    assert not any("RECS_DATABASE_URL" in line or "postgresql://" in line for line in commands)
    assert all("postgresql.jar" in line for line in commands)
