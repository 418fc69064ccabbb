"""The whole DAG on a synthetic shop, run on a real Spark standalone cluster (a master
and one worker started from the installed pyspark on 127.0.0.1), publishing to
PostgreSQL as well as Parquet.

One DAG run (each costs minutes of spark-submits) checks: the jobs run on the cluster's
executors (the shared code reaches them through py_files), the default offline
embedding model works there, the planted bad rows are quarantined with their reasons,
the evaluation and its report cover every method, the publish gate lets a sound run
through, the published tables are sound and equal in both stores, and the database
password shows neither in the task log nor on the spark-submit command line. The same
published root then serves the recommendation service's tests (tests/serving_checks.py),
after the publish step is submitted once more for a second version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest

import serving_checks
from published_checks import check_published
from recs import postgres
from recs.config import safe_run_id
from recs.reader import current_version_dir
from recs.synthetic import ShopSize, write_shop
from recs_airflow import local_run
from recs_airflow.spark_tasks import SMALL_RUN_JAVA_OPTIONS
from resources import require_postgres
from serving_checks import free_port, stop

pytestmark = pytest.mark.e2e
TOP_N = 5
STEPS = ("preprocess", "embed", "pca", "cluster", "recommend", "publish")  # and any steps added since
PASSWORD = f"pw-{uuid.uuid4().hex[:12]}"  # the test server trusts local connections: only a marker
DATABASE_URL = f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/test"


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
        except (OSError, ValueError):
            # Not listening yet, or (seen once, from a fresh clone) the master's web UI
            # answering /json/ with its HTML page in the moment after it started.
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {seconds}s")


def small_cluster_conf(folder: Path) -> Path:
    """A SPARK_CONF_DIR whose spark-defaults.conf gives the drivers and the executors a
    small run's JVM options, as an operator would for a cluster of small jobs: each of
    this test's short-lived JVMs then costs a quarter less CPU on the two cores."""
    folder.mkdir()
    options = " ".join(SMALL_RUN_JAVA_OPTIONS)
    (folder / "spark-defaults.conf").write_text(
        f"spark.driver.extraJavaOptions {options}\nspark.executor.extraJavaOptions {options}\n")
    return folder


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    """A master and one worker (2 cores, 2 GiB) on 127.0.0.1, with its spark-defaults.conf;
    stopped whatever happens."""
    tmp_path = tmp_path_factory.mktemp("cluster")
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
        yield {"port": port, "webui": webui, "work_dir": work_dir, "conf_dir": small_cluster_conf(tmp_path / "conf")}
    finally:
        for process in reversed(processes):
            stop(process)


@pytest.fixture(scope="module")
def pg_schema():
    import psycopg2

    require_postgres()
    name = f"recs_e2e_{uuid.uuid4().hex[:10]}"
    yield name
    connection = psycopg2.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres")
    with connection, connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    connection.close()


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory, airflow_home, input_roots, standalone_cluster, pg_schema):
    """The one DAG run of this file: a synthetic shop, published to Parquet and PostgreSQL."""
    tmp_path = tmp_path_factory.mktemp("cluster_run")
    shop = tmp_path / "shop"
    write_shop(str(shop), ShopSize(products=360, users=240, days=120), seed=3)
    serving_checks.title_to_escape(shop)
    data_root = tmp_path / "data"
    # The default backend (`auto` without a key): the offline MiniLM model.
    conf = {"input_path": str(shop), "input_format": "contract", "top_n": TOP_N, "k_min": 4, "k_max": 14,
            "pca_dimensions": 16}
    spark_connection = {"conn_type": "spark", "host": "spark://127.0.0.1", "port": standalone_cluster["port"]}
    env = local_run.airflow_env(airflow_home, {
        "RECS_DATA_ROOT": str(data_root),
        "RECS_INPUT_ROOTS": input_roots,
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps(spark_connection),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_CONF_DIR": str(standalone_cluster["conf_dir"]),
        "OPENAI_API_KEY": "",
        "RECS_DATABASE_URL": DATABASE_URL,
        "RECS_DATABASE_SCHEMA": pg_schema,
    })
    run_id, state = local_run.dags_test(conf, env, log_path=airflow_home / "last_run.log")
    log_text = (airflow_home / "last_run.log").read_text(errors="replace")
    return {"run_id": run_id, "state": state, "log_text": log_text, "data_root": data_root, "conf": conf,
            "env": env, "tmp_path": tmp_path}


def test_dag_on_a_standalone_cluster_publishes_a_synthetic_shop_to_parquet_and_postgres(
    cluster_run, airflow_home, standalone_cluster, pg_schema
):
    run_id, state, log_text, data_root = (cluster_run[key] for key in ("run_id", "state", "log_text", "data_root"))
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


# --- the recommendation service on this run's published root (tests/serving_checks.py) ------


@pytest.fixture(scope="module")
def published(cluster_run, pg_schema):
    """This run published twice (the publish step submitted once more): two versions in both stores."""
    assert cluster_run["state"] == "success", "the DAG run failed: see the first test"
    env = {**cluster_run["env"], "AIRFLOW_CONN_SPARK_DEFAULT": local_run.LOCAL_SPARK}
    versions = serving_checks.republish(cluster_run["data_root"], cluster_run["run_id"], cluster_run["conf"], env,
                                        cluster_run["tmp_path"])
    return {"data_root": cluster_run["data_root"], "schema": pg_schema, "run_id": safe_run_id(cluster_run["run_id"]),
            "versions": versions, "env": env, "database_url": DATABASE_URL}


@pytest.fixture(scope="module")
def servers(published, tmp_path_factory):
    with serving_checks.serving(published, tmp_path_factory.mktemp("serving-logs")) as urls:
        yield urls


@pytest.mark.parametrize("source", ["postgres", "parquet"])
def test_api_answers_equal_the_published_tables(published, servers, source):
    serving_checks.check_api(published, servers, source)


def test_pages_in_a_browser(published, servers):
    serving_checks.check_pages(published, servers)


def test_unknown_ids_say_so_in_one_line(published):
    serving_checks.check_unknown_ids(published)


def test_plugin_in_the_airflow_api_server(published, tmp_path):
    serving_checks.check_plugin(published, tmp_path)


def test_servers_follow_a_rollback(published, servers):
    serving_checks.check_rollback(published, servers)
