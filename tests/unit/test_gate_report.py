"""The publish gate's decisions and the run report's content."""

from __future__ import annotations

import pandas as pd

from recs import report
from recs.config import RecsConfig
from recs.publish import gate_decision


def metrics(published: float, popular: float = 0.05) -> pd.DataFrame:
    rows = []
    for method, ndcg in (("published", published), ("most_popular", popular), ("ease", 0.09)):
        for segment in ("all", "users_few_purchases"):
            rows += [{"method": method, "segment": segment, "metric": "ndcg", "value": ndcg},
                     {"method": method, "segment": segment, "metric": "hit", "value": ndcg * 2}]
    return pd.DataFrame(rows)


def test_gate_passes_a_good_run():
    decision = gate_decision(metrics(0.12), previous_ndcg=0.11, config=RecsConfig())
    assert decision["passed"] and not decision["overridden"]


def test_gate_blocks_a_shuffled_run_below_most_popular_and_names_the_numbers():
    decision = gate_decision(metrics(0.01), previous_ndcg=None, config=RecsConfig())
    assert not decision["passed"] and not decision["overridden"]
    assert "0.0100" in decision["message"] and "most_popular" in decision["message"] and "0.0500" in decision["message"]


def test_gate_blocks_a_drop_beyond_the_tolerance_from_the_last_published_run():
    decision = gate_decision(metrics(0.08), previous_ndcg=0.10, config=RecsConfig(gate_tolerance=0.1))
    assert not decision["passed"]
    assert "0.0900" in decision["message"]  # the threshold: 10% below 0.10
    assert gate_decision(metrics(0.095), previous_ndcg=0.10, config=RecsConfig(gate_tolerance=0.1))["passed"]


def test_override_lets_one_run_through_on_the_record():
    config = RecsConfig(gate_override=True, gate_override_reason="catalog migration")
    decision = gate_decision(metrics(0.01), previous_ndcg=None, config=config)
    assert not decision["passed"] and decision["overridden"]
    assert "OVERRIDDEN" in decision["message"] and "catalog migration" in decision["message"]


def test_no_metrics_blocks_publishing():
    decision = gate_decision(None, previous_ndcg=None, config=RecsConfig())
    assert not decision["passed"] and "run_metrics" in decision["message"]


def test_report_holds_the_charts_and_the_table():
    points = pd.DataFrame({"x": [0.0, 1.0, 2.0], "y": [1.0, 0.0, 2.0], "cluster": [0, 1, 1],
                           "title": ["Red <mug>", "Blue pan", "Tent"]})
    page = report.render(
        summary={"run_id": "r1", "k": 2, "eval_k": 10, "protocol": "time_split"},
        metrics=metrics(0.12),
        silhouette_by_k={"2": 0.4, "3": 0.35},
        explained_variance=[0.5, 0.2, 0.1],
        cluster_points=points,
        cluster_examples=report.cluster_examples(points),
        cluster_sizes={"0": 1, "1": 2},
        embedding={"backend": "local", "texts_embedded": 3},
        gate={"message": "passed"},
    )
    assert page.count("<svg") == 4  # silhouette, variance, sizes, map
    assert "published" in page and "0.1200" in page and "most_popular" in page
    assert "Red &lt;mug&gt;" in page  # titles are escaped
    assert "http" not in page.replace("http-equiv", "")  # self-contained
