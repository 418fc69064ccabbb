"""The whole DAG on the real UCI Online Retail data from ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from published_checks import check_published
from recs.config import safe_run_id

pytestmark = pytest.mark.e2e
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
ONLINE_RETAIL = SHARED_DATA / "online_retail" / "online_retail.csv.gz"
TOP_N = 10


@pytest.mark.skipif(not ONLINE_RETAIL.exists(), reason=f"{ONLINE_RETAIL} is not there")
def test_dag_publishes_sound_tables_for_online_retail(tmp_path, run_dag):
    data_root = tmp_path / "data"
    conf = {"input_path": str(ONLINE_RETAIL), "input_format": "online_retail", "top_n": TOP_N}
    run_id, state = run_dag(data_root, conf, {"OPENAI_API_KEY": ""})
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
    assert 3600 <= preprocess["products_out"] <= 3900
