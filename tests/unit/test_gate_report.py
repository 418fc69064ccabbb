"""The publish gate's decisions and the run report's content."""

from __future__ import annotations

import pandas as pd

from recs import report
from recs.config import EvaluationSettings, RecsConfig
from recs.publish import gate_decision, input_fingerprint, run_input_fingerprint

TOLERANT = RecsConfig(evaluation=EvaluationSettings(gate_tolerance=0.1))


def metrics(published: float, popular: float = 0.05) -> pd.DataFrame:
    rows = []
    for method, ndcg in (("published", published), ("most_popular", popular), ("ease", 0.09)):
        for segment in ("all", "users_few_purchases"):
            rows += [{"method": method, "segment": segment, "metric": "ndcg", "value": ndcg},
                     {"method": method, "segment": segment, "metric": "hit", "value": ndcg * 2}]
    return pd.DataFrame(rows)


def last(ndcg: float | None) -> dict | None:
    """The last published run of the same input, as publish finds it."""
    return {"version": "run-1", "ndcg": ndcg} if ndcg is not None else None


def test_gate_passes_a_good_run_and_says_what_it_compared_with():
    decision = gate_decision(metrics(0.12), last(0.11), config=RecsConfig())
    assert decision["passed"] and not decision["overridden"]
    assert "run-1, the last published run of the same input" in decision["message"]
    first = gate_decision(metrics(0.12), None, config=RecsConfig())
    assert first["passed"] and "no earlier published run of the same input" in first["message"]


def test_gate_blocks_a_shuffled_run_below_most_popular_and_names_the_numbers():
    decision = gate_decision(metrics(0.01), None, config=RecsConfig())
    assert not decision["passed"] and not decision["overridden"]
    assert "0.0100" in decision["message"] and "most_popular" in decision["message"] and "0.0500" in decision["message"]


def test_gate_blocks_a_run_far_below_the_best_baseline():
    # ease (0.09) is the best baseline: 0.08 is more than 10% below it, 0.085 is not.
    decision = gate_decision(metrics(0.08), None, config=TOLERANT)
    assert not decision["passed"]
    assert "best baseline's (ease) 0.0900 (threshold 0.0810)" in decision["message"]
    assert gate_decision(metrics(0.085), None, config=TOLERANT)["passed"]


def test_gate_blocks_a_drop_beyond_the_tolerance_from_the_last_published_run_of_the_same_input():
    decision = gate_decision(metrics(0.10), last(0.12), config=TOLERANT)
    assert not decision["passed"]
    assert "below the last published run of the same input (run-1: 0.1200, threshold 0.1080)" in decision["message"]
    assert gate_decision(metrics(0.11), last(0.12), config=TOLERANT)["passed"]


def test_override_lets_one_run_through_on_the_record():
    config = RecsConfig(evaluation=EvaluationSettings(gate_override=True, gate_override_reason="catalog migration"))
    decision = gate_decision(metrics(0.01), None, config=config)
    assert not decision["passed"] and decision["overridden"]
    assert "OVERRIDDEN" in decision["message"] and "catalog migration" in decision["message"]


def test_no_metrics_blocks_publishing():
    decision = gate_decision(None, None, config=RecsConfig())
    assert not decision["passed"] and "run_metrics" in decision["message"]


def test_the_input_fingerprint_tells_inputs_apart():
    base = input_fingerprint("contract", "/data/shop", "products a; events b")
    assert base == input_fingerprint("contract", "/data/shop/", "products a; events b")
    assert base != input_fingerprint("online_retail", "/data/shop", "products a; events b")
    assert base != input_fingerprint("contract", "/data/other", "products a; events b")
    assert base != input_fingerprint("contract", "/data/shop", "products a, c; events b")


def test_a_run_is_fingerprinted_by_the_columns_of_its_raw_input():
    def stats(schema: str) -> dict:
        return {"preprocess": {"input": {"format": "contract", "path": "/data/shop"}, "input_schema": schema}}

    # The cleaned tables always have the contract's columns: only the raw file's tell inputs apart.
    same = run_input_fingerprint(RecsConfig(), stats("events csv user_id, ts"), None, None)
    assert same == run_input_fingerprint(RecsConfig(), stats("events csv user_id, ts"), None, None)
    assert same != run_input_fingerprint(RecsConfig(), stats("events csv user_id, ts, store"), None, None)


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
