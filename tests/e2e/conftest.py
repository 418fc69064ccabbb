from __future__ import annotations

import pytest

from recs_airflow import local_run


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory):
    """One migrated SQLite metadata DB for the whole end-to-end session."""
    home = tmp_path_factory.mktemp("airflow_home")
    local_run.migrate(local_run.airflow_env(home))
    return home


@pytest.fixture
def run_dag(airflow_home):
    """Run the DAG through `airflow dags test` with a data root and params; return the run's state."""

    def run(data_root, conf: dict, extra_env: dict | None = None) -> tuple[str, str]:
        env = local_run.airflow_env(airflow_home, {"RECS_DATA_ROOT": str(data_root), **(extra_env or {})})
        return local_run.dags_test(conf, env, log_path=airflow_home / "last_run.log")

    return run
