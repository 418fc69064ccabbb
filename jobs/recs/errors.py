"""What a failed step leaves behind for the operator and the alerts: one line, no secret.

`runtime.run_step` writes `runs/<run id>/errors/<step>.json` = {"step", "error", "final"}
when a step fails; the Airflow task (plugins/recs_airflow/spark_tasks.py) raises that line,
as `AirflowFailException` when `final` (retrying cannot help: a gate refusal, a bad
configuration, bad input), else as `AirflowException` (the retry may succeed).
"""

from __future__ import annotations

import os
import re
from urllib.parse import quote, unquote

# Where a secret may be in the environment of a job (the task exports them, recs/postgres.py
# and the OpenAI backend read them).
SECRET_VARIABLES = ("RECS_DATABASE_URL", "OPENAI_API_KEY")
# Fragments shorter than this are not masked on their own: masking "a" would mask every "a".
MIN_FRAGMENT = 4


class FinalError(RuntimeError):
    """A failure that a retry of the same task cannot fix."""


def error_record(step: str, err: BaseException, final: bool = False, environ: dict[str, str] | None = None) -> dict:
    # The message as it is (a gate refusal starts with "refusing to publish", which alerts
    # match on); the step is in its own field and in the task's name.
    return {"step": step, "error": one_line(str(err) or type(err).__name__, environ),
            "final": final or isinstance(err, FinalError)}


def one_line(message: str, environ: dict[str, str] | None = None, limit: int = 2000) -> str:
    """The first line of `message`, every secret fragment masked, at most `limit` characters."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()] or [""]
    line = lines[0]
    if line.startswith("An error occurred while calling") and len(lines) > 1:
        line += " " + lines[1].lstrip(": ")  # py4j: the Java exception is on the next line
    return redact(line, environ)[:limit]


def redact(text: str, environ: dict[str, str] | None = None) -> str:
    for fragment in sorted(secret_fragments(environ), key=len, reverse=True):
        text = text.replace(fragment, "***")
    return text


def secret_fragments(environ: dict[str, str] | None = None) -> set[str]:
    """Every piece of a secret that could reach a message: the whole value, its
    %-encoded forms, and every run of the pieces a URL parser would cut a password into
    at an unencoded `/`, `#`, `?`, `@` or `:` (pieces shorter than MIN_FRAGMENT excepted)."""
    environ = os.environ if environ is None else environ
    fragments: set[str] = set()
    for name in SECRET_VARIABLES:
        value = environ.get(name, "")
        if not value:
            continue
        fragments.add(value)
        secrets = [value] if name != "RECS_DATABASE_URL" else url_secrets(value)
        for secret in secrets:
            fragments |= {secret, quote(secret, safe=""), quote(secret)}
            pieces = re.split(r"([/#?@:])", secret)
            ends = range(1, len(pieces) + 1, 2)
            fragments |= {"".join(pieces[i:j]) for i in range(0, len(pieces), 2) for j in ends if j > i}
    return {fragment for fragment in fragments if len(fragment) >= MIN_FRAGMENT}


def url_secrets(url: str) -> list[str]:
    """The password of a postgresql:// URL (however malformed) and secret query values."""
    from recs.postgres import Database, split_url

    userinfo, _, query = split_url(url)
    password = userinfo.partition(":")[2]
    found = [password, unquote(password)] if password else []
    found += [value for key, value in query if not Database.shows_param(key)]
    return [secret for secret in found if secret]
