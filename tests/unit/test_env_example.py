"""Every setting the code reads is documented in .env.example, and nothing else is."""

from __future__ import annotations

import re
from pathlib import Path

from recs.config import env_names

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_SIDE = {"RECS_SPARK_CONN_ID", "RECS_JOBS_DIR", "RECS_BUILD_DIR", "RECS_JDBC_JARS", "RECS_JDBC_PACKAGES",
                "RECS_CLASS_ARCHIVE_DIR"}
SECRETS_AND_CLIENT = {"OPENAI_API_KEY", "OPENAI_BASE_URL", "RECS_DATABASE_URL", "RECS_ALERT_WEBHOOK_URL"}


def documented() -> set[str]:
    text = (REPO / ".env.example").read_text()
    return set(re.findall(r"^([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))


def test_env_example_lists_every_setting():
    expected = set(env_names().values()) | AIRFLOW_SIDE | SECRETS_AND_CLIENT
    assert documented() == expected


def test_airflow_side_settings_are_read_by_the_plugin():
    plugin = "".join(path.read_text() for path in (REPO / "plugins" / "recs_airflow").glob("*.py"))
    for name in AIRFLOW_SIDE:
        assert f'"{name}"' in plugin
