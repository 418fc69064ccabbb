"""The native BLAS the Spark tasks are pointed at gives right answers when two tasks call
it at once.

Spark runs its tasks as threads of one JVM, and MLlib calls the native library from
each (PCA's projection is a `dgemv` per row). Debian's serial OpenBLAS is not safe for
that: under two tasks, 52 to 58 of 20,000 projections came back wrong, one row given
another's result, and Online Retail's PCA table did so in two of six DAG runs. The
job runs with the driver's options and environment of a DAG task on `local[2]` and
compares every projection with numpy's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recs_airflow.spark_tasks import native_blas_options
from spark_jobs import submit_command

PROJECT = """
import sys
import numpy as np
from pyspark.ml.feature import PCA
from pyspark.ml.linalg import Vectors
from pyspark.sql import SparkSession

spark = SparkSession.builder.getOrCreate()
rows = np.random.default_rng(0).normal(size=(20_000, 384))
vectors = spark.createDataFrame([(i, Vectors.dense(row)) for i, row in enumerate(rows)], ["id", "v"])
vectors = vectors.repartition(8).cache()
model = PCA(k=32, inputCol="v", outputCol="p").fit(vectors)
projected = model.transform(vectors).select("id", "p").toPandas().sort_values("id")
found = np.stack([p.toArray() for p in projected["p"]])
wrong = int((np.abs(found - rows @ model.pc.toArray()).max(axis=1) > 1e-9).sum())
print(f"wrong rows: {wrong}")
sys.exit(1 if wrong else 0)
"""

pytestmark = pytest.mark.e2e


def test_two_tasks_calling_the_native_blas_at_once_get_their_own_answers(tmp_path):
    assert native_blas_options(), "no native OpenBLAS installed (make native-blas): nothing to check"
    script = tmp_path / "project.py"
    script.write_text(PROJECT)
    # The command first: building it puts the task's BLAS environment in ours, as the task does.
    command = submit_command(script, [], master="local[2]", conf={"spark.driver.memory": "2g"})
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable,
           "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "jobs")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "wrong rows: 0" in done.stdout
