"""Two embed jobs on one data root at once (as two DAG runs of a backfill would start them):
the embedding-cache lock makes the second wait for the first, which then finds every text
in the cache: each text is paid for, and held in the cache, once. (Two publishes at once:
tests/e2e/test_publish_faults.py; the lock's own rules: tests/unit/test_lock.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from openai_fake_server import FakeOpenAIServer
from spark_jobs import submit_command

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
KEY = f"sk-lock-{uuid.uuid4().hex}"
TEXTS = 30


def embed(package: Path, data_root: Path, run_id: str, server: FakeOpenAIServer, log: Path) -> subprocess.Popen:
    products = pd.DataFrame({"product_id": [f"P{i:03d}" for i in range(TEXTS)],
                             "text": [f"Desk lamp model {i}, brass, for the office" for i in range(TEXTS)]})
    folder = data_root / "runs" / run_id / "products"
    folder.mkdir(parents=True)
    products.to_parquet(folder / "part-00000.parquet", index=False)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "RECS_DATA_ROOT": str(data_root), "RECS_EMBEDDING_BACKEND": "openai", "RECS_EMBEDDING_DIMENSIONS": "8",
           "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server.url, "RECS_DATABASE_URL": "",
           "RECS_LOCK_WAIT_SECONDS": "600"}
    command = submit_command("embed", ["--run-id", run_id], conf={"spark.sql.shuffle.partitions": "2"},
                             package_zip=package)
    with open(log, "w") as output:
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)


def test_two_embed_jobs_on_one_data_root_pay_for_each_text_once(tmp_path):
    from recs_airflow.spark_tasks import build_package_zip

    package = build_package_zip(REPO / "jobs" / "recs", tmp_path / "build")
    data_root = tmp_path / "data"
    with FakeOpenAIServer(api_key=KEY) as server:
        jobs = [embed(package, data_root, run_id, server, tmp_path / f"{run_id}.log") for run_id in ("e1", "e2")]
        try:
            codes = [job.wait(timeout=600) for job in jobs]
        finally:
            for job in jobs:
                if job.poll() is None:
                    os.killpg(job.pid, signal.SIGKILL)
        logs = [(tmp_path / f"{run_id}.log").read_text() for run_id in ("e1", "e2")]
        assert codes == [0, 0], [log[-2000:] for log in logs]
        delivered = server.delivered

    twice = [text for text, times in Counter(delivered).items() if times > 1]
    assert not twice and len(delivered) == TEXTS, twice[:3]
    stats = [json.loads((data_root / "runs" / run_id / "stats" / "embed.json").read_text()) for run_id in ("e1", "e2")]
    assert sorted((s["texts_embedded"], s["cache_hits"]) for s in stats) == [(0, TEXTS), (TEXTS, 0)]
    # One of them waited for the other, which it named.
    assert sum("waiting for the embedding_cache lock" in log for log in logs) == 1
    assert any("held by embed of run e" in log for log in logs)
    cache = next((data_root / "embedding_cache").glob("openai_*"))
    keys = pq.read_table(cache, columns=["key"]).column("key").to_pylist()
    assert len(keys) == len(set(keys)) == TEXTS
    assert not (data_root / "locks" / "embedding_cache.lease").exists()
