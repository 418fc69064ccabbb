"""The embed step's first call on the driver: a model of unknown size learns it before the
cache space is chosen, records it, and a re-run makes no request at all."""

from __future__ import annotations

import json

import numpy as np
import pytest

from openai_fake_server import FakeOpenAIServer, fake_embedding
from recs import embed
from recs.config import RecsConfig
from recs.io import RunPaths

KEY = "sk-unit-probe-key"
MODEL = "acme-embed-1"


@pytest.fixture
def fake(monkeypatch):
    with FakeOpenAIServer(api_key=KEY, model_dimensions={MODEL: 48}) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        yield server


def test_unknown_model_size_is_learnt_once_and_its_text_cached(spark, tmp_path, fake):
    # Two products sharing one text: the driver's one call embeds all there is, no Spark task needed.
    config = RecsConfig.from_settings(dict(data_root=str(tmp_path), embedding_backend="openai", embedding_model=MODEL))
    rows = [("P1", "Brass desk lamp"), ("P2", "Brass desk lamp")]
    products = spark.createDataFrame(rows, "product_id string, text string")
    first = RunPaths(str(tmp_path), "r1")
    products.write.parquet(first.table("products"))

    stats = embed.run(spark, config, first)

    assert stats["space"] == f"openai:{MODEL}:48" and stats["dimensions"] == 48
    assert (stats["texts_total"], stats["texts_embedded"], stats["requests"]) == (1, 1, 1)
    assert stats["tokens_sent"] == fake.tokens_delivered > 0
    assert fake.delivered == ["Brass desk lamp"]
    record = json.loads((tmp_path / "embedding_cache" / "_dimensions" / f"openai_{MODEL}.json").read_text())
    assert record["dimensions"] == 48
    vectors = {r["product_id"]: r["embedding"] for r in spark.read.parquet(first.table("embeddings")).collect()}
    np.testing.assert_allclose(vectors["P1"], fake_embedding("Brass desk lamp", 48), atol=1e-6)

    fake.reset()
    second = RunPaths(str(tmp_path), "r2")
    products.write.parquet(second.table("products"))
    stats = embed.run(spark, config, second)

    assert stats["space"] == f"openai:{MODEL}:48"
    assert (stats["cache_hits"], stats["texts_embedded"], stats["requests"]) == (1, 0, 0)
    assert fake.requests == []
