"""What an alert says, which notifiers the DAG's tasks get, and `make run`'s step timings.
(tests/e2e/test_alerts.py sends real alerts through a DAG run to SMTP and webhook servers.)"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from recs.config import RecsConfig
from recs_airflow.alerts import RecsEmailNotifier, WebhookNotifier, alert_notifiers, describe
from recs_airflow.local_run import StepClock


def context(message: str, task_id: str = "publish") -> dict:
    ti = SimpleNamespace(dag_id="product_recommendations", task_id=task_id, log_url="http://airflow/log")
    return {"ti": ti, "run_id": "scheduled__2026-12-01", "exception": RuntimeError(message)}


def test_a_refusal_names_the_metric_value_and_threshold():
    alert = describe(context(
        "refusing to publish run r1: NDCG@10 = 0.1000 is more than 10% below the last published run's 0.1500 "
        "(threshold 0.1350); report: /data/runs/r1/report.html\nTraceback ..."))
    assert (alert.refused, alert.step, alert.run_id) == (True, "publish", "scheduled__2026-12-01")
    assert (alert.metric, alert.value, alert.threshold) == ("NDCG@10", 0.1, 0.135)
    assert alert.report == "/data/runs/r1/report.html" and "Traceback" not in alert.error
    assert alert.subject == "[recs] product_recommendations: refused to publish (run scheduled__2026-12-01)"
    below_popular = describe(context("refusing to publish run r1: NDCG@10 = 0.0500 is below the most_popular "
                                     "baseline's 0.0800"))
    assert (below_popular.value, below_popular.threshold) == (0.05, 0.08)


def test_a_failed_task_says_its_step_and_first_line():
    alert = describe(context("input folder /x has no products table\nmore", task_id="preprocess"))
    assert (alert.refused, alert.step, alert.error, alert.metric) == (
        False, "preprocess", "input folder /x has no products table", None)
    assert "step preprocess failed" in alert.subject and "<td>preprocess</td>" in alert.html
    assert "&lt;b&gt;" in describe(context("bad title <b>")).html


def test_notifiers_only_when_configured():
    assert alert_notifiers(RecsConfig.load(environ={}), environ={}) == []
    config = RecsConfig.load(environ={"RECS_ALERT_EMAIL_TO": "a@x.example, b@x.example",
                                      "RECS_ALERT_SMTP_CONN_ID": "mail"})
    [email] = alert_notifiers(config, environ={})
    assert isinstance(email, RecsEmailNotifier) and email.to == ["a@x.example", "b@x.example"]
    assert email.smtp_conn_id == "mail"
    kinds = [type(n) for n in alert_notifiers(config, environ={"RECS_ALERT_WEBHOOK_URL": "http://hook"})]
    assert kinds == [RecsEmailNotifier, WebhookNotifier]


def test_every_task_of_the_dag_alerts(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("RECS_ALERT_EMAIL_TO", "team@shop.example")
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags"))
    assert bag.import_errors == {}
    for task in bag.dags["product_recommendations"].tasks:
        callbacks = task.on_failure_callback
        assert [type(c) for c in callbacks] == [RecsEmailNotifier], task.task_id
        assert callbacks[0].to == ["team@shop.example"]


@pytest.mark.parametrize("seconds, shown", [(42.4, "42s"), (125, "2m05s")])
def test_step_clock(seconds, shown):
    now = [100.0]
    clock = StepClock(lambda: now[0])
    assert clock.see("... [DAG TEST] starting task_id=embed map_index=-1 ...") is None
    now[0] += seconds
    assert clock.see("... [DAG TEST] end task task_id=embed map_index=-1 ...") == (
        f"==> embed finished after {shown} ({shown} since the run started)")
