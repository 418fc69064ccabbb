"""The whole DAG on the real UCI Online Retail data from ../shared/data, with OpenAI
embeddings: the real `openai` client against the fake OpenAI-compatible server.

One DAG run (each costs minutes) checks: every input row is accounted for, the
published tables are sound, each product text is paid for once, and the API key shows
on no command line, in no log, in the metadata DB or in any table.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from openai_fake_server import FakeOpenAIServer
from published_checks import check_published
from recs.config import safe_run_id
from resources import require
from secret_checks import CommandLineWatch, files_holding

pytestmark = pytest.mark.e2e
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
ONLINE_RETAIL = SHARED_DATA / "online_retail" / "online_retail.csv.gz"
TOP_N = 10
KEY = f"sk-e2e-{uuid.uuid4().hex}"
DIMENSIONS = 64


def test_dag_publishes_online_retail_with_openai_embeddings_and_keeps_the_key_secret(tmp_path, run_dag,
                                                                                     airflow_home):
    require(ONLINE_RETAIL.exists(), f"{ONLINE_RETAIL} is not there")
    data_root = tmp_path / "data"
    # k fixed: the silhouette search (tests/unit/test_pca_cluster.py, and the other DAG
    # runs) would add a minute of K-means fits that nothing here looks at.
    conf = {"input_path": str(ONLINE_RETAIL), "input_format": "online_retail", "top_n": TOP_N,
            "embedding_backend": "openai", "k": 16}
    with FakeOpenAIServer(api_key=KEY) as fake, CommandLineWatch(KEY) as watch:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.url, "RECS_EMBEDDING_DIMENSIONS": str(DIMENSIONS)}
        run_id, state = run_dag(data_root, conf, env)
    assert state == "success"

    run_dir = data_root / "runs" / safe_run_id(run_id)
    figures = check_published(str(data_root), str(run_dir), TOP_N)
    preprocess = json.loads((run_dir / "stats" / "preprocess.json").read_text())
    # The usual cleaning (known customer, no cancellation, quantity > 0) keeps 396,370
    # lines of products (stock codes starting with a digit) from 4,335 customers; the
    # other 4 of the 4,339 bought only postage and fees.
    assert figures["users"] == 4335
    assert preprocess["events_in"] == 396_370
    # Every one of the 541,909 rows is an event or set aside with its reason (the first
    # reason that applies: a cancelled postage line counts as a non-product).
    skipped = {reason: n for reason, n in preprocess["quarantine"].items() if reason.startswith("online_retail")}
    assert skipped == {
        "online_retail: cancellation": 8_704,
        "online_retail: guest checkout (no CustomerID)": 133_840,
        "online_retail: non-product stock code": 2_995,
    }
    assert preprocess["events_in"] + sum(skipped.values()) == 541_909
    products = preprocess["products_out"]
    assert 3600 <= products <= 3900

    # Each distinct product text (3,822 products have 3,787: some share one) went to the API
    # once, and the job counted what it sent.
    embed = json.loads((run_dir / "stats" / "embed.json").read_text())
    assert embed["backend"] == "openai" and embed["space"] == f"openai:text-embedding-3-small:{DIMENSIONS}"
    assert embed["texts_embedded"] == embed["texts_total"] == len(set(fake.delivered)) <= products
    assert embed["requests"] == len(fake.requests) >= 1 and embed["tokens_sent"] == fake.tokens_delivered
    paid_twice = [text for text, times in Counter(fake.delivered).items() if times > 1]
    assert not paid_twice, paid_twice[:3]
    summary = pd.read_parquet(data_root / "published" / "versions" / safe_run_id(run_id) / "run_summary")
    assert summary["texts_embedded"].iloc[0] == embed["texts_total"]

    # Never on a command line, in a log, the metadata DB (rendered templates, XCom), or a table.
    assert watch.samples > 10 and watch.seen == []
    assert files_holding(airflow_home, KEY) == []
    assert files_holding(data_root, KEY) == []
