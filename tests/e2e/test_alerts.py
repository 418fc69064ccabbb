"""Alerts through Airflow's notifier mechanism, end to end: a DAG run (`airflow dags test`,
the real task runner and its failure callbacks) with the notifiers the pipeline's DAG
gets from `alert_notifiers`, an SMTP server (aiosmtpd) and a webhook receiver on loopback.

Two tasks fail: one with a plain error, one as the publish step does when it refuses a
run (its exception message is the job's one-line cause). Each sends one e-mail and one
webhook call with the run id, the step, the error line and, for the refusal, the metric,
value and threshold. With alerts not configured, nothing is sent.
"""

from __future__ import annotations

import email
import json
import socket
import threading
from email import policy
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from recs_airflow import local_run

pytestmark = pytest.mark.e2e
REFUSAL = ("refusing to publish run {run}: NDCG@10 = 0.1000 is more than 10% below the last published run's "
           "0.1500 (threshold 0.1350); report: /data/runs/{run}/report.html")
DAG_FILE = '''
import os
import pendulum
from airflow.sdk import DAG, task
from airflow.exceptions import AirflowFailException
from recs.config import RecsConfig
from recs_airflow.alerts import alert_notifiers

with DAG("alerts_check", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         default_args={"retries": 0, "on_failure_callback": alert_notifiers(RecsConfig.load())}):

    @task(task_id="preprocess")
    def preprocess():
        raise RuntimeError("input folder /nowhere has no products table\\nsecond line of the traceback")

    @task(task_id="publish")
    def publish(run_id=None):
        raise AirflowFailException(os.environ["REFUSAL"].format(run=run_id))

    preprocess()
    publish()
'''


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller

    class Inbox:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
            self.messages.append((envelope.rcpt_tos, email.message_from_bytes(envelope.content,
                                                                              policy=policy.default)))
            return "250 OK"

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, inbox.messages
    finally:
        controller.stop()


@pytest.fixture
def webhook():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/recs-token-123", received
    finally:
        server.shutdown()


def run_check_dag(airflow_home, tmp_path, overrides: dict) -> tuple[str, str]:
    dags = tmp_path / "dags"
    dags.mkdir(exist_ok=True)
    (dags / "alerts_check.py").write_text(DAG_FILE)
    env = local_run.airflow_env(airflow_home, {"AIRFLOW__CORE__DAGS_FOLDER": str(dags), "REFUSAL": REFUSAL,
                                               **overrides})
    local_run.DAG_ID, previous = "alerts_check", local_run.DAG_ID
    try:
        return local_run.dags_test({}, env, log_path=tmp_path / "alerts.log")
    finally:
        local_run.DAG_ID = previous


def body(message) -> str:
    return message.get_body(("html", "plain")).get_content()


def test_a_failed_task_and_a_refused_publish_each_send_one_alert(airflow_home, tmp_path, smtp_server, webhook):
    port, inbox = smtp_server
    url, posts = webhook
    connection = {"conn_type": "smtp", "host": "127.0.0.1", "port": port,
                  "extra": {"disable_ssl": True, "disable_tls": True, "retry_limit": 0, "timeout": 10}}
    run_id, state = run_check_dag(airflow_home, tmp_path, {
        "RECS_ALERT_EMAIL_TO": "team@shop.example, oncall@shop.example",
        "RECS_ALERT_EMAIL_FROM": "airflow@shop.example",
        "RECS_ALERT_SMTP_CONN_ID": "recs_alerts_smtp",
        "AIRFLOW_CONN_RECS_ALERTS_SMTP": json.dumps(connection),
        "RECS_ALERT_WEBHOOK_URL": url,
    })
    assert state == "failed"
    log = (tmp_path / "alerts.log").read_text()
    assert "recs-token-123" not in log  # the webhook's secret is in no log line

    assert len(inbox) == 2, log[-3000:]
    by_subject = {message["Subject"]: (recipients, message) for recipients, message in inbox}
    failed = by_subject[f"[recs] alerts_check: step preprocess failed (run {run_id})"]
    assert sorted(failed[0]) == ["oncall@shop.example", "team@shop.example"]
    assert failed[1]["From"] == "airflow@shop.example"
    text = body(failed[1])
    assert f"<td>{run_id}</td>" in text.replace("+", "+") and "<td>preprocess</td>" in text
    assert "<td>input folder /nowhere has no products table</td>" in text and "second line" not in text

    refused = by_subject[f"[recs] alerts_check: refused to publish (run {run_id})"][1]
    text = body(refused)
    for field, value in (("step", "publish"), ("metric", "NDCG@10"), ("value", "0.1"), ("threshold", "0.135"),
                         ("report", f"/data/runs/{run_id}/report.html")):
        assert f"<th align='left'>{field}</th><td>{value}</td>" in text, (field, text)
    assert "refusing to publish run" in text

    assert len(posts) == 2
    hooks = {post["step"]: post for post in posts}
    assert hooks["preprocess"]["refused"] is False and hooks["preprocess"]["run_id"] == run_id
    assert hooks["preprocess"]["error"] == "input folder /nowhere has no products table"
    assert (hooks["publish"]["refused"], hooks["publish"]["metric"], hooks["publish"]["value"],
            hooks["publish"]["threshold"]) == (True, "NDCG@10", 0.1, 0.135)
    assert hooks["publish"]["text"].startswith("[recs] alerts_check: refused to publish")


def test_nothing_is_sent_when_alerts_are_off(airflow_home, tmp_path, smtp_server, webhook):
    port, inbox = smtp_server
    _, posts = webhook
    connection = {"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": {"disable_ssl": True,
                                                                                     "disable_tls": True}}
    run_id, state = run_check_dag(airflow_home, tmp_path, {
        "RECS_ALERT_EMAIL_TO": "", "RECS_ALERT_WEBHOOK_URL": "",
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(connection),  # a server there, but alerts not configured
    })
    assert state == "failed"
    assert inbox == [] and posts == []
