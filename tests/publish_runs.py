"""Run folders for the publish job's end-to-end tests, written directly (pandas), so that a
test pays for publish spark-submits only, not for a whole DAG run before each.

`prepare_run` writes what the steps before publish leave under `runs/<run id>/`: the
tables publish reads, run_metrics with the NDCG asked for, and every step's stats (with the
input the run read). Table sizes grow with `users`, so a reader can tell versions apart
by their row counts; the tables keep every promise `publish.check_tables` checks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd

from spark_jobs import submit_command

REPO = Path(__file__).resolve().parents[1]
TOP_N = 3
BASELINES = ("most_popular", "trending", "item_knn", "ease", "als", "cluster_only")


def prepare_run(data_root: Path, run_id: str, *, users: int, ndcg: float, input_path: str,
                best_baseline: float = 0.05) -> Path:
    run = data_root / "runs" / run_id
    products = [f"P{i:03d}" for i in range(users + TOP_N + 2)]
    events = pd.DataFrame([{"user_id": f"U{u:03d}", "product_id": products[u], "event_type": "purchase",
                            "quantity": 1} for u in range(users)])
    tables = {
        "products": pd.DataFrame({"product_id": products, "title": [f"Product {p}" for p in products],
                                  "category": "Things", "description": "", "text": [f"Product {p}" for p in products]}),
        "events": events,
        "user_recommendations": pd.DataFrame([
            {"user_id": f"U{u:03d}", "rank": r, "product_id": products[u + r], "score": 1.0 / r,
             "reason": f"because you bought: Product {products[u]}", "reason_product_id": products[u]}
            for u in range(users) for r in range(1, TOP_N + 1)]),
        "similar_products": pd.DataFrame([
            {"product_id": p, "rank": r, "similar_product_id": products[(i + r) % len(products)], "score": 0.5}
            for i, p in enumerate(products) for r in range(1, TOP_N + 1)]),
        "product_clusters": pd.DataFrame({"product_id": products, "cluster": [i % 2 for i in range(len(products))],
                                          "pca": [[float(i), float(-i)] for i in range(len(products))]}),
        "popular_products": pd.DataFrame({"rank": [1, 2], "product_id": products[:2], "score": [2.0, 1.0]}),
        "run_metrics": pd.DataFrame(
            [{"run_id": run_id, "method": "published", "segment": "all", "metric": "ndcg", "value": ndcg, "k": 10}]
            + [{"run_id": run_id, "method": method, "segment": "all", "metric": "ndcg",
                "value": best_baseline * (1 - 0.1 * i), "k": 10} for i, method in enumerate(BASELINES)]),
    }
    for name, frame in tables.items():
        (run / name).mkdir(parents=True)
        frame.to_parquet(run / name / "part-00000.parquet", index=False)
    stats = {
        "preprocess": {"products_out": len(products), "events_out": users, "quarantine": {},
                       "input": {"format": "contract", "path": input_path}},
        "embed": {"backend": "hashing", "space": "hashing:256", "texts_embedded": 0, "cache_hits": len(products)},
        "pca": {"dimensions": 2, "explained_variance_total": 0.9, "explained_variance": [0.6, 0.3]},
        "cluster": {"k": 2, "silhouette": 0.4, "silhouette_by_k": {"2": 0.4}, "cluster_sizes": {"0": 1, "1": 1}},
        "recommend": {"users": users, "catalog_coverage": 0.5},
        "evaluate": {"protocol": "time_split"},
    }
    (run / "stats").mkdir()
    for step, values in stats.items():
        (run / "stats" / f"{step}.json").write_text(json.dumps(values))
    return run


def build_zip(target: Path) -> Path:
    from recs_airflow.spark_tasks import build_package_zip

    return build_package_zip(REPO / "jobs" / "recs", target)


def submit_publish(package_zip: Path, run_id: str, env: dict[str, str], log: Path,
                   params: dict | None = None) -> subprocess.Popen:
    """jobs/publish.py through spark-submit as the DAG's task runs it, in its own process group."""
    from recs_airflow.spark_tasks import jdbc_jars

    command = submit_command("publish", ["--run-id", run_id, "--params-json", json.dumps(params or {})],
                             name="recs-publish-test", conf={"spark.sql.shuffle.partitions": "2"},
                             package_zip=package_zip, jars=jdbc_jars())
    full_env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
                "RECS_TOP_N": str(TOP_N), **env}
    with open(log, "w") as output:
        return subprocess.Popen(command, env=full_env, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)


def run_publish(package_zip: Path, run_id: str, env: dict[str, str], log: Path, timeout: float = 300) -> int:
    process = submit_publish(package_zip, run_id, env, log)
    try:
        return process.wait(timeout=timeout)
    finally:
        kill(process)


def kill(process: subprocess.Popen) -> None:
    """kill -9 of the job's whole process group (the JVM, its Python workers)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
