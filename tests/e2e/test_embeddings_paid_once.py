"""Every text is paid for once: the embed job through a real spark-submit, its OpenAI
backend going through the real client to the fake server. (The whole DAG with OpenAI
embeddings, and where the key must never appear, is tests/e2e/test_online_retail.py.)

Each spark-submit costs ~20 s of JVM start, so the scenarios share applications: faults then
a re-run then a change of 10 products (3), a kill then a resume (2), a missing then a
rejected key (2).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from openai_fake_server import ENCODING, FakeOpenAIServer, Fault, fake_embedding
from spark_jobs import submit_command

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
KEY = f"sk-e2e-{uuid.uuid4().hex}"
DIMENSIONS = 16
NATIVE = 1536
SPACE_FOLDER = f"openai_text-embedding-3-small_{DIMENSIONS}"


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(api_key=KEY) as running:
        yield running


@pytest.fixture
def fake(server):
    server.reset()
    yield server
    server.reset()


@pytest.fixture(scope="module")
def package_zip(tmp_path_factory) -> Path:
    from recs_airflow.spark_tasks import build_package_zip

    return build_package_zip(REPO / "jobs" / "recs", tmp_path_factory.mktemp("build"))


def catalog(count: int) -> pd.DataFrame:
    kinds = ["stapler", "desk lamp", "gel pen", "binder", "label maker", "paper shredder", "sticky notes"]
    rows = []
    for i in range(count):
        title = f"{kinds[i % len(kinds)].title()} model {i:03d}"
        description = f"A {kinds[i % len(kinds)]} for the office, item {i}, in {['black', 'white', 'blue'][i % 3]}."
        rows.append({"product_id": f"P{i:03d}", "title": title, "description": description, "category": "Office",
                     "price": 1.5 + i, "text": f"{title}. Office. {description}"})
    return pd.DataFrame(rows)


def write_products(data_root: Path, run_id: str, products: pd.DataFrame) -> None:
    folder = data_root / "runs" / run_id / "products"
    folder.mkdir(parents=True)
    products.to_parquet(folder / "part-00000.parquet", index=False)


def job_env(data_root: Path, server: FakeOpenAIServer, **settings: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "RECS_DATA_ROOT": str(data_root),
            "RECS_EMBEDDING_BACKEND": "openai",
            "RECS_EMBEDDING_DIMENSIONS": str(DIMENSIONS),
            "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": server.url,
            "RECS_OPENAI_TIMEOUT_SECONDS": "3",
            "RECS_OPENAI_MAX_RETRIES": "6",
            "HF_HUB_OFFLINE": "1",
        }
    )
    env.update(settings)
    return env


def submit_embed(package_zip: Path, run_id: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """jobs/embed.py through spark-submit, as the DAG's task runs it (local[2]); output to `log`."""
    command = submit_command("embed", ["--run-id", run_id, "--params-json", "{}"], master="local[2]",
                             name="recs-embed-test", package_zip=package_zip)
    with open(log, "w") as output:
        # Its own process group: a kill takes the JVM and its Python workers with it.
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)


def run_embed(package_zip: Path, data_root: Path, run_id: str, env: dict[str, str]) -> tuple[int, str]:
    log = data_root.parent / f"{run_id}.log"
    process = submit_embed(package_zip, run_id, env, log)
    try:
        returncode = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return returncode, log.read_text()


def stats_of(data_root: Path, run_id: str) -> dict:
    return json.loads((data_root / "runs" / run_id / "stats" / "embed.json").read_text())


def vectors_of(data_root: Path, run_id: str) -> dict[str, np.ndarray]:
    table = pd.read_parquet(data_root / "runs" / run_id / "embeddings")
    return {row.product_id: np.asarray(row.embedding, dtype=np.float32) for row in table.itertuples()}


def committed_rows(cache: Path) -> int:
    """Rows in the cache's committed files (a job's uncommitted output is under _temporary)."""
    return sum(pq.read_metadata(path).num_rows for path in cache.glob("part-*.parquet")) if cache.is_dir() else 0


def assert_paid_once(delivered: list[str]) -> None:
    twice = [text for text, times in Counter(delivered).items() if times > 1]
    assert not twice, f"paid for twice: {twice[:3]}"


def test_faults_reruns_and_changes_pay_for_each_text_once(tmp_path, fake, package_zip):
    data_root = tmp_path / "data"
    products = catalog(40)
    # One input the server refuses as too long (it allows 2,000 tokens here): the backend
    # isolates it and sends it again cut to half its tokens.
    long_text = "Archive boxes. Office. " + " ".join(f"carton{i} holds files" for i in range(700))
    products.loc[7, "text"] = long_text
    assert 2000 < len(ENCODING.encode_ordinary(long_text)) < 8191
    write_products(data_root, "run1", products)
    fake.add_faults(Fault.rate_limit(retry_after=1), Fault.status(500), Fault.status(503), Fault.stall(6),
                    Fault.truncated_body(), Fault.invalid_json())
    fake.reject_inputs(lambda text: len(ENCODING.encode_ordinary(text)) > 2000)

    returncode, log = run_embed(package_zip, data_root, "run1", job_env(data_root, fake))

    assert returncode == 0, log[-3000:]
    (cut,) = [text for text in fake.delivered if long_text.startswith(text) and text != long_text]
    expected = {row.product_id: fake_embedding(cut if row.text == long_text else row.text, NATIVE, DIMENSIONS)
                for row in products.itertuples()}
    vectors = vectors_of(data_root, "run1")
    assert vectors.keys() == expected.keys()
    for product_id, vector in vectors.items():
        np.testing.assert_allclose(vector, expected[product_id], atol=1e-6, err_msg=product_id)
    assert_paid_once(fake.delivered)
    assert len(fake.delivered) == 40
    stats = stats_of(data_root, "run1")
    assert (stats["texts_total"], stats["cache_hits"], stats["texts_embedded"]) == (40, 0, 40)
    # What the workers and the driver spent reaches the summary: every request the server saw.
    assert stats["requests"] == len(fake.requests)
    assert stats["retries"] == 6  # one per injected fault; the refused input's splits are not retries
    assert stats["tokens_sent"] == fake.tokens_delivered
    assert stats["estimated_cost_usd"] == pytest.approx(fake.tokens_delivered * 0.02 / 1e6, abs=1e-6)

    # The same catalog again: everything from the cache, not one request.
    fake.reset()
    write_products(data_root, "run2", products)
    returncode, log = run_embed(package_zip, data_root, "run2", job_env(data_root, fake))
    assert returncode == 0, log[-3000:]
    assert fake.requests == [] and fake.unauthorized == 0
    stats = stats_of(data_root, "run2")
    assert (stats["cache_hits"], stats["texts_embedded"], stats["requests"], stats["tokens_sent"]) == (40, 0, 0, 0)
    assert stats["estimated_cost_usd"] == 0
    for product_id, vector in vectors_of(data_root, "run2").items():
        np.testing.assert_array_equal(vector, vectors[product_id])

    # Ten products change their text: exactly those ten are embedded.
    fake.reset()
    changed = products.copy()
    changed.loc[10:19, "text"] = [f"{text} Now in a recycled edition." for text in changed.loc[10:19, "text"]]
    write_products(data_root, "run3", changed)
    returncode, log = run_embed(package_zip, data_root, "run3", job_env(data_root, fake))
    assert returncode == 0, log[-3000:]
    assert sorted(fake.delivered) == sorted(changed.loc[10:19, "text"])
    stats = stats_of(data_root, "run3")
    assert (stats["cache_hits"], stats["texts_embedded"]) == (30, 10)
    assert stats["requests"] == len(fake.requests) and stats["retries"] == 0
    run3 = vectors_of(data_root, "run3")
    for row in changed.itertuples():
        want = fake_embedding(row.text, NATIVE, DIMENSIONS) if 10 <= row.Index < 20 else expected[row.product_id]
        np.testing.assert_allclose(run3[row.product_id], want, atol=1e-6, err_msg=row.product_id)


class HoldAfterFirstChunk:
    """A rule for the fake server: once more than one vector is committed to the cache (the
    driver's first text, then a chunk), hold every request until released, then refuse it.
    Nothing is delivered after the first chunk's commit: the kill loses nothing paid for."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.release = threading.Event()
        self.holding = threading.Event()
        self.held = 0
        self._lock = threading.Lock()

    def __call__(self, text: str) -> bool:
        if committed_rows(self.cache) < 2:
            return False
        with self._lock:
            self.held += 1
        self.holding.set()
        self.release.wait(120)
        with self._lock:
            self.held -= 1
        return True


def test_a_killed_job_resumes_from_the_cache(tmp_path, fake, package_zip):
    data_root = tmp_path / "data"
    products = catalog(60)
    write_products(data_root, "run1", products)
    write_products(data_root, "run2", products)
    env = job_env(data_root, fake, RECS_EMBEDDING_CHUNK_SIZE="10", RECS_OPENAI_TIMEOUT_SECONDS="20")
    hold = HoldAfterFirstChunk(data_root / "embedding_cache" / SPACE_FOLDER)
    fake.reject_inputs(hold)

    process = submit_embed(package_zip, "run1", env, tmp_path / "killed.log")
    try:
        deadline = time.monotonic() + 240
        while not hold.holding.is_set() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hold.holding.is_set(), (tmp_path / "killed.log").read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    first_run = fake.delivered
    committed = committed_rows(hold.cache)
    hold.release.set()
    for _ in range(100):  # let the held requests finish before the log is cleared
        if hold.held == 0:
            break
        time.sleep(0.05)
    fake.reset()

    assert 2 <= committed < 60
    # Everything paid for before the kill was committed: nothing to pay again.
    assert len(first_run) == committed
    env = job_env(data_root, fake, RECS_EMBEDDING_CHUNK_SIZE="10")
    returncode, log = run_embed(package_zip, data_root, "run2", env)
    assert returncode == 0, log[-3000:]
    stats = stats_of(data_root, "run2")
    assert (stats["cache_hits"], stats["texts_embedded"]) == (committed, 60 - committed)
    assert_paid_once(first_run + fake.delivered)
    assert set(first_run + fake.delivered) == set(products["text"])
    vectors = vectors_of(data_root, "run2")
    for row in products.itertuples():
        np.testing.assert_allclose(vectors[row.product_id], fake_embedding(row.text, NATIVE, DIMENSIONS), atol=1e-6)


def test_a_missing_or_rejected_key_fails_at_once(tmp_path, fake, package_zip):
    data_root = tmp_path / "data"
    write_products(data_root, "run1", catalog(20))
    write_products(data_root, "run2", catalog(20))

    returncode, log = run_embed(package_zip, data_root, "run1", job_env(data_root, fake, OPENAI_API_KEY=""))
    assert returncode != 0
    assert "OPENAI_API_KEY is not set" in log
    assert fake.unauthorized == 0 and fake.requests == []

    wrong = f"sk-wrong-{uuid.uuid4().hex}"
    returncode, log = run_embed(package_zip, data_root, "run2", job_env(data_root, fake, OPENAI_API_KEY=wrong))
    assert returncode != 0
    assert "rejected the key in OPENAI_API_KEY (HTTP 401" in log
    # One request, no retry by the client, by Spark or by Airflow's next attempt of the job.
    assert fake.unauthorized == 1 and fake.requests == []
    # The server echoes the key it refused; the job never repeats it.
    assert wrong not in log
