"""The recommend step's driver receives only bounded results.

What may reach the driver is O(products x K) (the item-item edges, the content
neighbours) and the evaluation sample's candidates (at most `eval_users` users); what
grows with the customers (their histories, who is similar to whom) stays in Spark. A
shop of few products and many customers, where a per-customer table is many times
the size of everything bounded, runs the real recommend step through spark-submit
with a `spark.driver.maxResultSize` that only the bounded results fit in. The
control: collecting the customers' recent products under the same limit fails, as the
recommend step did when it collected them (with a weight per half-life it tunes) for
its similar customers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from recs import cluster, embed, io, pca, preprocess
from recs.config import RecsConfig
from recs.io import RunPaths
from recs.synthetic import ScaleShop, write_scale_shop
from spark_jobs import submit_command

REPO = Path(__file__).resolve().parents[2]
LIMIT = "2m"
RUN_ID = "bounded"
SETTINGS = {
    "RECS_INPUT_FORMAT": "contract", "RECS_EMBEDDING_BACKEND": "hashing", "RECS_HASHING_DIMENSIONS": "32",
    "RECS_EVAL_USERS": "100", "RECS_EASE_MAX_ITEMS": "100", "RECS_NEIGHBOURS": "10",
    "RECS_K": "8",  # the clusters only feed the recommend step here: no silhouette search
}
CONTROL = """
import sys
from pyspark.sql import SparkSession
from recs import io, model, tuning
from recs.config import RecsConfig
from recs.io import RunPaths

spark = SparkSession.builder.getOrCreate()
config = RecsConfig.load()
paths = RunPaths(config.input.data_root, sys.argv[1])
events = io.read_table(spark, paths.table("events"))
index = model.catalog_index(io.read_table(spark, paths.table("products")))
model.customer_histories(events, index, config.recommender, list(tuning.NEIGHBOUR_HALF_LIVES)).toPandas()
"""


def spark_submit(script: Path, args: list[str], env: dict) -> subprocess.CompletedProcess:
    command = submit_command(script, args, master="local[2]", conf={
        "spark.driver.maxResultSize": LIMIT, "spark.sql.shuffle.partitions": "4"})
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)


def test_recommend_step_fits_a_driver_result_limit_the_customers_do_not(spark, tmp_path, monkeypatch):
    shop = tmp_path / "shop"
    _, customers, events = write_scale_shop(str(shop), ScaleShop(products=300, customers=20_000), files=2)
    env = {**SETTINGS, "RECS_DATA_ROOT": str(tmp_path / "data"), "RECS_INPUT": str(shop)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = RecsConfig.load()
    paths = RunPaths(config.input.data_root, RUN_ID)
    for step in (preprocess, embed, pca, cluster):
        io.write_json(spark, paths.stats(step.__name__.rsplit(".", 1)[-1]), step.run(spark, config, paths))
    child_env = {**os.environ, **env, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": str(REPO / "jobs")}

    done = spark_submit(REPO / "jobs" / "recommend.py", ["--run-id", RUN_ID], child_env)
    assert done.returncode == 0, done.stderr[-3000:]
    recommended = spark.read.parquet(paths.table("user_recommendations"))
    assert recommended.select("user_id").distinct().count() == customers
    assert recommended.where("reason = 'popular with customers like you'").count() > 0  # the customers were read

    control = tmp_path / "collect_customers.py"
    control.write_text(CONTROL)
    refused = spark_submit(control, [RUN_ID], child_env)
    assert refused.returncode != 0 and "spark.driver.maxResultSize" in refused.stderr, refused.stderr[-3000:]
    assert events > 10 * customers * 0.8  # about ten events per customer: the customers' table is the big one
