"""Alerts when a task of the pipeline fails for good or the publish step refuses a run,
through Airflow's notifier mechanism (each task's `on_failure_callback`, which Airflow
calls once, after the last retry).

Two kinds, each on when configured, both off by default:
- e-mail: the SMTP provider's `SmtpNotifier`, to RECS_ALERT_EMAIL_TO, through the
  Airflow connection RECS_ALERT_SMTP_CONN_ID (default `smtp_default`, e.g.
  AIRFLOW_CONN_SMTP_DEFAULT='smtp://user:pass@mail.example.com:587');
- webhook: a JSON POST (Slack-compatible `text`, plus the fields) to
  RECS_ALERT_WEBHOOK_URL. The URL usually holds a token, so it is read from the
  environment when the alert is sent, never a setting, a DAG attribute or a log line.

What an alert says comes from the Airflow context: the DAG run id, the task (the
step), the first line of the exception's message (the job's one-line cause), the log
URL, and, for a refused publish (a message starting "refusing to publish"), the metric,
its value and the threshold it missed.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import urllib.request
from dataclasses import asdict, dataclass

from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.sdk import BaseNotifier

from recs.config import RecsConfig

log = logging.getLogger(__name__)
WEBHOOK_VARIABLE = "RECS_ALERT_WEBHOOK_URL"
REFUSAL = "refusing to publish"
WEBHOOK_TIMEOUT_SECONDS = 10
_METRIC = re.compile(r"(?P<metric>[A-Za-z]+@\d+) = (?P<value>-?[0-9.]+)")
_THRESHOLD = re.compile(r"threshold (?P<threshold>-?[0-9.]+)|baseline's (?P<baseline>-?[0-9.]+)")
_REPORT = re.compile(r"report: (?P<report>\S+)")


@dataclass(frozen=True)
class Alert:
    dag_id: str
    run_id: str
    step: str
    error: str
    refused: bool
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None
    report: str | None = None
    log_url: str | None = None

    @property
    def subject(self) -> str:
        what = "refused to publish" if self.refused else f"step {self.step} failed"
        return f"[recs] {self.dag_id}: {what} (run {self.run_id})"

    @property
    def text(self) -> str:
        lines = [self.subject, f"run: {self.run_id}", f"step: {self.step}", f"error: {self.error}"]
        if self.refused:
            lines += [f"metric: {self.metric}", f"value: {self.value}", f"threshold: {self.threshold}"]
            if self.report:
                lines.append(f"report: {self.report}")
        if self.log_url:
            lines.append(f"log: {self.log_url}")
        return "\n".join(lines)

    @property
    def html(self) -> str:
        rows = "".join(
            f"<tr><th align='left'>{html.escape(name)}</th><td>{html.escape(str(value))}</td></tr>"
            for name, value in (line.split(": ", 1) for line in self.text.splitlines()[1:])
        )
        return f"<p>{html.escape(self.subject)}</p><table>{rows}</table>"


def describe(context) -> Alert:
    """The alert for a failed task, from what Airflow passes the callback."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    exception = context.get("exception")
    message = str(exception).strip() if exception is not None else ""
    error = message.splitlines()[0] if message else f"{type(exception).__name__ if exception else 'the task'} failed"
    refused = error.lower().startswith(REFUSAL)
    found = _METRIC.search(error) if refused else None
    threshold = _THRESHOLD.search(error) if refused else None
    report = _REPORT.search(error) if refused else None
    return Alert(
        dag_id=getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", "") or "",
        run_id=context.get("run_id") or getattr(dag_run, "run_id", "") or "",
        step=getattr(ti, "task_id", "") or "",
        error=error,
        refused=refused,
        metric=found["metric"] if found else None,
        value=float(found["value"]) if found else None,
        threshold=float(threshold["threshold"] or threshold["baseline"]) if threshold else None,
        report=report["report"] if report else None,
        log_url=getattr(ti, "log_url", None),
    )


class RecsEmailNotifier(SmtpNotifier):
    """The SMTP provider's notifier, with the subject and body built from `describe`."""

    def notify(self, context) -> None:
        alert = describe(context)
        self.subject, self.html_content = alert.subject, alert.html
        super().notify(context)
        log.info("alert e-mailed to %s: %s", self.to, alert.subject)


class WebhookNotifier(BaseNotifier):
    """POST the alert as JSON to RECS_ALERT_WEBHOOK_URL (read when sending: it is a secret)."""

    def notify(self, context) -> None:
        url = os.environ.get(WEBHOOK_VARIABLE, "").strip()
        if not url:
            return
        alert = describe(context)
        body = json.dumps({"text": alert.text, **asdict(alert)}).encode("utf-8")
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:
            response.read()
        log.info("alert posted to the webhook: %s", alert.subject)


def alert_notifiers(config: RecsConfig | None = None, environ: dict[str, str] | None = None) -> list[BaseNotifier]:
    """The notifiers for the tasks' `on_failure_callback`: none when alerts are not configured."""
    config = config or RecsConfig.load()
    environ = os.environ if environ is None else environ
    notifiers: list[BaseNotifier] = []
    recipients = [address.strip() for address in config.serving.alert_email_to.split(",") if address.strip()]
    if recipients:
        notifiers.append(RecsEmailNotifier(to=recipients, from_email=config.serving.alert_email_from or None,
                                           smtp_conn_id=config.serving.alert_smtp_conn_id))
    if environ.get(WEBHOOK_VARIABLE, "").strip():
        notifiers.append(WebhookNotifier())
    return notifiers
