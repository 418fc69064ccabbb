from __future__ import annotations

from pathlib import Path

import pytest

from recs_airflow import local_run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory):
    """One migrated SQLite metadata DB for the whole end-to-end session."""
    home = tmp_path_factory.mktemp("airflow_home")
    local_run.migrate(local_run.airflow_env(home))
    return home


@pytest.fixture(scope="session")
def input_roots(tmp_path_factory) -> str:
    """RECS_INPUT_ROOTS for the tests' DAG runs: the usual roots plus pytest's temporary
    folders, where tests write their shops. Set in the environment, as an operator would:
    a run's conf can name an input there, never widen the roots."""
    roots = [REPO / "data", REPO.parent / "shared" / "data", tmp_path_factory.getbasetemp()]
    return ",".join(str(root) for root in roots)


@pytest.fixture
def run_dag(airflow_home, input_roots):
    """Run the DAG through `airflow dags test` with a data root and params; return the run's state."""

    def run(data_root, conf: dict, extra_env: dict | None = None) -> tuple[str, str]:
        env = local_run.airflow_env(
            airflow_home, {"RECS_DATA_ROOT": str(data_root), "RECS_INPUT_ROOTS": input_roots, **(extra_env or {})}
        )
        return local_run.dags_test(conf, env, log_path=airflow_home / "last_run.log")

    return run
