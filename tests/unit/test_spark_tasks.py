"""Local runs size the driver on spark-submit's command line; cluster runs are left alone."""

from __future__ import annotations

import json
import os
import time

import pytest

from recs.config import RecsConfig, RuntimeSettings
from recs_airflow import class_archive, spark_tasks

GIB = 2**30


def test_driver_memory_is_a_capped_two_fifths_of_the_machine():
    assert spark_tasks.local_driver_memory(RecsConfig(), 24 * GIB) == ("9830m", "4915m")
    assert spark_tasks.local_driver_memory(RecsConfig(), 2 * GIB) == ("1024m", "512m")
    assert spark_tasks.local_driver_memory(RecsConfig(), 256 * GIB) == ("16384m", "8192m")


def test_settings_override_the_derived_sizes():
    config = RecsConfig(runtime=RuntimeSettings(driver_memory="3g", driver_max_result_size="256m"))
    assert spark_tasks.local_driver_memory(config, 24 * GIB) == ("3g", "256m")
    only_heap = RecsConfig(runtime=RuntimeSettings(driver_memory="2g"))
    assert spark_tasks.local_driver_memory(only_heap, 24 * GIB) == ("2g", "1024m")
    with pytest.raises(ValueError, match="driver_memory"):
        RuntimeSettings(driver_memory="lots")


def submit_command(monkeypatch, connection: dict, **env) -> list[str]:
    monkeypatch.setenv("AIRFLOW_CONN_RECS_TEST_SPARK", json.dumps(connection))
    monkeypatch.setenv("RECS_SPARK_CONN_ID", "recs_test_spark")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    operator = spark_tasks.spark_step("preprocess")
    operator.size_local_driver()
    return operator._get_hook()._build_spark_submit_command(operator.application)


def test_local_runs_get_the_heap_on_the_spark_submit_command(monkeypatch):
    command = submit_command(monkeypatch, {"conn_type": "spark", "host": "local[*]"}, RECS_DRIVER_MEMORY="5g",
                             RECS_DRIVER_MAX_RESULT_SIZE="")
    assert command[command.index("--driver-memory") + 1] == "5g"
    assert "spark.driver.maxResultSize=2560m" in command
    # Tasks share the driver's heap with what it collects: Spark's pages get less of it.
    assert "spark.memory.fraction=0.4" in command
    # An out-of-memory driver ends the step instead of leaving it waiting for results.
    java_options = next(arg for arg in command if arg.startswith("spark.driver.extraJavaOptions="))
    assert "-XX:+ExitOnOutOfMemoryError" in java_options.split("=", 1)[1].split()


def test_local_runs_point_spark_at_openblas_on_one_thread_when_installed(monkeypatch, tmp_path):
    for architecture in ("x86_64-linux-gnu", "aarch64-linux-gnu"):
        (tmp_path / architecture / "openblas-pthread").mkdir(parents=True)
    monkeypatch.setattr(spark_tasks, "OPENBLAS", str(tmp_path / "*-linux-gnu" / "openblas-pthread"))
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    command = submit_command(monkeypatch, {"conn_type": "spark", "host": "local[*]"})
    java_options = next(arg for arg in command if arg.startswith("spark.driver.extraJavaOptions=")).split()
    folder = tmp_path / "aarch64-linux-gnu" / "openblas-pthread"  # one of them, the same every time
    assert f"-Ddev.ludovic.netlib.blas.nativeLibPath={folder}/libblas.so.3" in java_options
    assert f"-Ddev.ludovic.netlib.lapack.nativeLibPath={folder}/liblapack.so.3" in java_options
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"  # spark-submit inherits it
    assert spark_tasks.native_blas_options(str(tmp_path / "none" / "openblas-pthread")) == []


def test_cluster_runs_keep_the_cluster_settings(monkeypatch):
    command = submit_command(monkeypatch, {"conn_type": "spark", "host": "spark://127.0.0.1", "port": 7077},
                             RECS_DRIVER_MEMORY="5g")
    assert "--driver-memory" not in command
    assert not any("maxResultSize" in arg or "extraJavaOptions" in arg or "memory.fraction" in arg for arg in command)
    # Its executors' native BLAS (whichever the cluster gives them) runs one thread per call.
    assert "spark.executorEnv.OPENBLAS_NUM_THREADS=1" in command


def test_local_runs_map_the_class_archive_when_built(monkeypatch, tmp_path):
    monkeypatch.setenv("RECS_CLASS_ARCHIVE_DIR", str(tmp_path))
    local = {"conn_type": "spark", "host": "local[*]"}

    def java_options() -> list[str]:
        command = submit_command(monkeypatch, local)
        return next(arg for arg in command if arg.startswith("spark.driver.extraJavaOptions=")).split()

    assert not any(option.startswith("-XX:SharedArchiveFile") for option in java_options())
    archive = class_archive.archive_path()
    assert archive.parent == tmp_path and archive.name.startswith("spark-driver-")
    archive.write_bytes(b"built")
    assert f"-XX:SharedArchiveFile={archive}" in java_options()


def test_the_class_archive_is_moved_into_place_only_once_a_jvm_loads_from_it(tmp_path):
    """Real spark-submits (a JVM given a truncated archive crashes): a warm-up that fails
    leaves nothing behind; one that runs gives an archive the next JVM loads classes
    from; a second build finds it and runs nothing."""
    failing = tmp_path / "failing.py"
    failing.write_text("import sys\nsys.exit(3)\n")
    assert class_archive.build(str(tmp_path / "failed"), failing) is None
    assert list((tmp_path / "failed").iterdir()) == []

    trivial = tmp_path / "trivial.py"
    trivial.write_text("from pyspark.sql import SparkSession\n"
                       "SparkSession.builder.config('spark.ui.enabled', 'false').getOrCreate().range(3).count()\n")
    built = class_archive.build(str(tmp_path / "built"), trivial)
    assert built == class_archive.archive_path(str(tmp_path / "built")) and built.stat().st_size > 2**20
    assert [path.name for path in built.parent.iterdir()] == [built.name]  # no scratch left
    started = time.monotonic()
    assert class_archive.build(str(tmp_path / "built"), failing) == built
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("events", "quick"), [(391_138, True), (spark_tasks.SMALL_RUN_EVENTS, True),
                                               (1_046_782, False), (None, False)])
def test_a_small_runs_later_steps_get_the_quick_jit_tier_and_the_throughput_collector(monkeypatch, tmp_path,
                                                                                      events, quick):
    """By the events the run's preprocess step kept; none before it has run."""
    if events is not None:
        stats = tmp_path / "runs" / "r1" / "stats" / "preprocess.json"
        stats.parent.mkdir(parents=True)
        stats.write_text(json.dumps({"events_out": events}))
    monkeypatch.setenv("AIRFLOW_CONN_RECS_TEST_SPARK", json.dumps({"conn_type": "spark", "host": "local[*]"}))
    monkeypatch.setenv("RECS_SPARK_CONN_ID", "recs_test_spark")
    monkeypatch.setenv("RECS_DATA_ROOT", str(tmp_path))
    operator = spark_tasks.spark_step("recommend")
    operator.application_args = ["--run-id", "r1", "--params-json", "{}"]  # as rendered for the run
    operator.size_local_driver()
    command = operator._get_hook()._build_spark_submit_command(operator.application)
    java_options = next(arg for arg in command if arg.startswith("spark.driver.extraJavaOptions=")).split()
    assert all((option in java_options) == quick for option in spark_tasks.SMALL_RUN_JAVA_OPTIONS)
    assert "-XX:+ExitOnOutOfMemoryError" in java_options[0]
