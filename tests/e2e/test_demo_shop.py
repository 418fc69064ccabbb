"""The whole DAG on a small synthetic shop: Airflow, six spark-submits, real Parquet."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from published_checks import check_published
from recs.config import safe_run_id
from recs.reader import current_version_dir
from recs.synthetic import ShopSize, write_shop

pytestmark = pytest.mark.e2e
TOP_N = 5


def test_dag_publishes_sound_tables_for_a_synthetic_shop(tmp_path, run_dag):
    shop = tmp_path / "shop"
    write_shop(str(shop), ShopSize(products=360, users=240, days=120), seed=3)
    data_root = tmp_path / "data"
    # The default backend (`auto` without a key): the offline MiniLM model.
    conf = {"input_path": str(shop), "input_format": "contract", "top_n": TOP_N, "k_min": 4, "k_max": 14,
            "pca_dimensions": 16}
    run_id, state = run_dag(data_root, conf, {"OPENAI_API_KEY": ""})
    assert state == "success"

    run_dir = data_root / "runs" / safe_run_id(run_id)
    figures = check_published(str(data_root), str(run_dir), TOP_N)
    assert figures["users"] == 240

    stats = {step: json.loads((run_dir / "stats" / f"{step}.json").read_text())
             for step in ("preprocess", "embed", "cluster")}
    # The bad rows the generator plants are quarantined with their reasons, none lost.
    quarantine = stats["preprocess"]["quarantine"]
    for reason in ("products: missing product_id", "events: bad timestamp", "events: unknown product_id"):
        assert quarantine.get(reason) == 1, quarantine
    assert stats["embed"]["backend"] == "local"
    assert stats["embed"]["texts_embedded"] == stats["preprocess"]["products_out"]
    assert 4 <= stats["cluster"]["k"] <= 14
    assert len(stats["cluster"]["silhouette_by_k"]) >= 3
    assert os.path.exists(data_root / "published" / "CURRENT")

    # The evaluation ran on the same split for every method, and the report shows it.
    version = current_version_dir(str(data_root))
    metrics = pd.read_parquet(os.path.join(version, "run_metrics"))
    methods = set(metrics["method"])
    assert {"published", "most_popular", "trending", "item_knn", "als", "ease", "cluster_only"} <= methods
    assert {"without_time", "without_text"} <= methods
    report = Path(version, "report.html").read_text(encoding="utf-8")
    assert report.count("<svg") == 4 and "most_popular" in report and "ndcg@10" in report
