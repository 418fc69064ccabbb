"""The publish gate end to end: a run on worse data after a better one of the same input is
refused through the DAG (finally, no retry, its report written and named), a run of another
input is not compared with them, and the operator's override publishes the refused run
without computing it again (a DAG run with `publish_run_id`: every other task skips).

The run folders are prepared directly (tests/publish_runs.py): what is under test is the
publish job and the DAG's handling of it, not the steps before."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from publish_runs import build_zip, prepare_run, run_publish
from recs.reader import current_version_dir

pytestmark = pytest.mark.e2e
SHOP_A, SHOP_B = "/shops/a", "/shops/b"


def summary_of(data_root: Path) -> pd.Series:
    return pd.read_parquet(Path(current_version_dir(str(data_root))) / "run_summary").iloc[0]


def test_the_gate_refuses_a_worse_run_of_the_same_input_and_the_override_publishes_it(tmp_path, run_dag,
                                                                                       airflow_home):
    data_root = tmp_path / "data"
    prepare_run(data_root, "good", users=12, ndcg=0.30, input_path=SHOP_A)
    # Worse by a third, yet above every baseline: only the comparison with "good" refuses it.
    prepare_run(data_root, "worse", users=13, ndcg=0.20, input_path=SHOP_A)
    # Another input, as worse: not comparable with either.
    prepare_run(data_root, "other", users=14, ndcg=0.20, input_path=SHOP_B)
    package = build_zip(tmp_path / "build")
    env = {"RECS_DATA_ROOT": str(data_root)}
    assert run_publish(package, "good", env, tmp_path / "good.log") == 0, (tmp_path / "good.log").read_text()[-3000:]
    assert summary_of(data_root)["run_id"] == "good"

    # Through the DAG: the refusal fails the publish task once, with no retry, naming the report.
    run_id, state = run_dag(data_root, {"publish_run_id": "worse"})
    log = (airflow_home / "last_run.log").read_text(errors="replace")
    assert state == "failed", log[-3000:]
    report = data_root / "runs" / "worse" / "report.html"
    refusal = (f"refusing to publish run worse: NDCG@10 = 0.2000 is more than 10% below the last published run of "
               f"the same input (good: 0.3000, threshold 0.2700); report: {report}")
    assert f"AirflowFailException: {refusal}" in log, log[-3000:]
    assert "up_for_retry" not in log and "UP_FOR_RETRY" not in log
    assert json.loads((data_root / "runs" / "worse" / "errors" / "publish.json").read_text()) == {
        "step": "publish", "error": refusal, "final": True}
    assert report.is_file() and "0.2000" in report.read_text() and "more than 10% below" in report.read_text()
    assert summary_of(data_root)["run_id"] == "good"
    assert not (data_root / "runs" / run_id.replace(":", "_").replace("+", "_")).exists()  # nothing recomputed

    # Another input is not compared with the shop A runs: it publishes.
    assert run_publish(package, "other", env, tmp_path / "other.log") == 0, (tmp_path / "other.log").read_text()
    other = summary_of(data_root)
    assert other["run_id"] == "other" and other["gate_passed"] and other["gate_compared_with"] == ""
    assert "no earlier published run of the same input" in other["gate_message"]

    # The override publishes the refused run as it is: only the publish task runs.
    conf = {"publish_run_id": "worse", "gate_override": True, "gate_override_reason": "new catalog, checked by hand"}
    _, state = run_dag(data_root, conf)
    log = (airflow_home / "last_run.log").read_text(errors="replace")
    assert state == "success", log[-3000:]
    summary = summary_of(data_root)
    assert summary["run_id"] == "worse" and summary["gate_overridden"] and not summary["gate_passed"]
    assert summary["gate_compared_with"] == "good" and "new catalog, checked by hand" in summary["gate_message"]
    assert summary["input_path"] == SHOP_A
    assert not (data_root / "runs" / "worse" / "errors" / "publish.json").exists()
    assert log.count("this DAG run only publishes the earlier run worse") >= 1
    assert log.count("Spark-Submit cmd") == 1  # publish only: nothing computed again
