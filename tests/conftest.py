"""Shared fixtures: one local SparkSession for the whole test session.

Spark starts once (a JVM plus Python workers take seconds), so every test shares it
and builds its own tiny DataFrames.
"""

from __future__ import annotations

import logging
import os
import sys

import pytest

# The PostgreSQL JDBC driver for tests/unit/test_postgres.py: RECS_JDBC_JARS, else Debian's
# libpostgresql-jdbc-java, which `make setup` installs (as plugins/recs_airflow/spark_tasks.py
# finds it for spark-submit).
JDBC_JAR = "/usr/share/java/postgresql.jar"

# The two whole-DAG runs take about ten minutes each: they start first, one per pytest
# worker (`make test` hands out files in this order: `--dist loadfile --no-loadscope-reorder`;
# xdist would otherwise put the files with the most tests first, and these two last), and
# the other files fill in around them instead of leaving one worker alone at the end.
LONGEST_FIRST = ("tests/e2e/test_online_retail.py", "tests/e2e/test_standalone_cluster.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


def jdbc_jars() -> str:
    return os.environ.get("RECS_JDBC_JARS") or (JDBC_JAR if os.path.exists(JDBC_JAR) else "")


@pytest.fixture(scope="session")
def spark():
    # py4j logs at INFO while closing connections at interpreter exit, after pytest has
    # closed the streams its handlers write to: keep that noise out.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    # Python workers must run the interpreter that runs the tests (the venv's).
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    from recs_airflow.spark_tasks import SMALL_RUN_JAVA_OPTIONS, export_blas_environment, native_blas_options

    # The DAG's native BLAS, one thread per call: the system's default may be the serial
    # OpenBLAS, unsafe under two tasks (tests/e2e/test_native_blas.py).
    export_blas_environment()

    session = (
        SparkSession.builder.master("local[2]")
        .appName("recs-unit-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.log.level", "WARN")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.jars", jdbc_jars())
        # A small run's JVM options, as the DAG's tasks give one: a quarter less CPU for
        # the unit tests' many tiny jobs (192 and 212 CPU-s against 261 and 282 for three
        # of their files, alternating), and the suite is bound by the two cores.
        .config("spark.driver.extraJavaOptions", " ".join([*SMALL_RUN_JAVA_OPTIONS, *native_blas_options()]))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("WARN")
    yield session
    session.stop()
