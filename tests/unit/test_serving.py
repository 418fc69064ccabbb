"""The service's Parquet store and app on a small published root written here in the
published layout (fast; the end-to-end checks on a real DAG run's versions are in
tests/serving_checks.py): one version per answer, the switch when CURRENT moves,
unknown ids, limits, escaped titles, versions read defensively."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from recs import serving
from recs.reader import ParquetStore, version_info

TITLE = 'Mug <script>alert("x")</script> & co'


def write_version(root: Path, name: str, tag: str, published_at: str, old_summary: bool = False) -> None:
    folder = root / "published" / "versions" / name
    tables = {
        "user_recommendations": pd.DataFrame({
            "user_id": ["U1", "U1", "U2"], "rank": [2, 1, 1], "product_id": ["P2", "P3", "P1"],
            "score": [0.5, 0.9, 0.7], "reason": [f"because you bought: {TITLE}", f"{tag} reason", "popular right now"],
            "reason_product_id": ["P1", None, None]}),
        "similar_products": pd.DataFrame({"product_id": ["P1", "P1"], "rank": [1, 2],
                                          "similar_product_id": ["P2", "P3"], "score": [0.8, 0.6]}),
        "product_clusters": pd.DataFrame({"product_id": ["P1", "P2", "P3"], "cluster": [0, 1, 1],
                                          "pca": [[0.0, 1.0]] * 3, "title": [TITLE, f"{tag} two", f"{tag} three"],
                                          "category": ["Kitchen"] * 3}),
        "popular_products": pd.DataFrame({"rank": [1, 2], "product_id": ["P3", "P2"], "score": [10.0, 5.0]}),
        "run_metrics": pd.DataFrame({"method": ["published", "most_popular", "item_knn", "without_text"],
                                     "segment": ["all"] * 4, "metric": ["ndcg"] * 4,
                                     "value": [0.3, 0.1, 0.2, 0.35]}),
    }
    summary = {"run_id": "run1", "version": name, "catalog_coverage": 0.5}
    if not old_summary:  # an older version's run_summary lacks the gate's columns
        summary.update({"ndcg_at_10": 0.3, "gate_passed": False, "gate_overridden": True,
                        "gate_message": "OVERRIDDEN by an operator (holiday data): ...",
                        "config_json": json.dumps({"gate_override_reason": "holiday data"})})
    tables["run_summary"] = pd.DataFrame([summary])
    for table, frame in tables.items():
        (folder / table).mkdir(parents=True)
        frame.to_parquet(folder / table / "part-0.parquet")
    (folder / "report.html").write_text(f"<html>report {tag}</html>")
    (folder / "_MANIFEST.json").write_text(json.dumps({"run_id": "run1", "published_at": published_at}))


def point(root: Path, name: str) -> None:
    (root / "published" / "CURRENT").write_text(name + "\n")


@pytest.fixture
def root(tmp_path):
    write_version(tmp_path, "v1", "one", "2026-11-30T10:00:00+00:00", old_summary=True)
    write_version(tmp_path, "v2", "two", "2026-12-01T10:00:00+00:00")
    point(tmp_path, "v2")
    return tmp_path


@pytest.fixture
def client(root):
    return TestClient(serving.create_app(serving.ParquetSource(str(root))))


def test_api(client):
    answer = client.get("/v1/users/U1/recommendations").json()
    assert answer == {"version": "v2", "user_id": "U1", "fallback": None, "items": [
        {"rank": 1, "product_id": "P3", "title": "two three", "score": 0.9, "reason": "two reason"},
        {"rank": 2, "product_id": "P2", "title": "two two", "score": 0.5, "reason": f"because you bought: {TITLE}"}]}
    assert len(client.get("/v1/users/U1/recommendations?limit=1").json()["items"]) == 1
    unknown = client.get("/v1/users/NEW/recommendations").json()
    assert unknown["fallback"] == "popular" and [i["product_id"] for i in unknown["items"]] == ["P3", "P2"]
    similar = client.get("/v1/products/P1/similar").json()
    assert (similar["title"], similar["cluster"], [i["product_id"] for i in similar["items"]]) == (
        TITLE, 0, ["P2", "P3"])
    missing = client.get("/v1/products/P9/similar")
    assert missing.status_code == 404 and missing.json()["detail"].startswith("unknown product 'P9'")
    assert client.get("/v1/popular?limit=0").status_code == 422
    assert client.get("/v1/popular?limit=101").status_code == 422
    health = client.get("/healthz").json()
    assert (health["version"], health["source"]) == ("v2", "parquet") and health["age_seconds"] > 0


def test_versions_are_read_defensively(client):
    versions = client.get("/v1/versions").json()["versions"]
    assert [(v["version"], v["current"]) for v in versions] == [("v2", True), ("v1", False)]
    new, old = versions
    assert (new["ndcg"], new["best_baseline"], new["best_baseline_ndcg"]) == (0.3, "item_knn", 0.2)
    assert (new["gate_passed"], new["gate_overridden"], new["override_reason"]) == (False, True, "holiday data")
    assert (old["ndcg"], old["metric"], old["gate_passed"], old["catalog_coverage"]) == (None, None, None, 0.5)
    assert version_info("v", "r", None, None, None, False)["best_baseline"] is None


def test_pages_escape_titles(client):
    page = client.get("/customers/U1").text
    assert TITLE not in page and "Mug &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; co" in page
    assert "<script>" not in page
    product = client.get("/products/P1").text
    assert "<script>" not in product and 'id="cluster">0<' in product
    assert client.get("/products/P9").status_code == 404
    runs = client.get("/runs").text
    assert runs.count('<circle class="ours"') == 1 and 'class="run current"' in runs and "holiday data" in runs
    assert client.get("/report").text == "<html>report two</html>"
    assert client.get("/report/v1").text == "<html>report one</html>"
    assert client.get("/report/..%2F..%2Fetc").status_code == 404


def test_the_store_follows_current_without_mixing(root):
    store = ParquetStore(str(root), recheck_seconds=0.0)
    before = store.version()
    point(root, "v1")
    deadline = time.monotonic() + 10
    while store.version().name != "v1":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # The object a request took answers from its own version to the end.
    assert before.name == "v2" and before.recommendations("U1")[0][0]["title"] == "two three"
    assert store.version().recommendations("U1")[0][0]["title"] == "one three"


def test_an_answer_naming_two_versions_is_refused():
    assert serving._one_version([{"version": "a", "title_version": "a"}]) == "a"
    with pytest.raises(serving.MixedVersions):
        serving._one_version([{"version": "a", "title_version": "b"}])
    with pytest.raises(serving.MixedVersions):
        serving._one_version([{"version": "a"}, {"version": "b"}])


def test_the_override_reason_is_read_from_the_sections_and_from_older_flat_configs():
    from recs.config import EvaluationSettings, RecsConfig
    from recs.reader import override_reason

    config = RecsConfig(evaluation=EvaluationSettings(gate_override=True, gate_override_reason="holiday data"))
    assert override_reason(json.loads(config.to_json())) == "holiday data"
    assert override_reason({"gate_override_reason": "published before the sections"}) == "published before the sections"
    assert override_reason(json.loads(RecsConfig().to_json())) is None
