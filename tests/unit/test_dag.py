"""The DAG file imports cleanly, wires its Spark jobs in order and validates its params."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk.definitions.param import ParamValidationError

STEPS = ["preprocess", "embed", "pca", "cluster", "recommend", "evaluate", "publish"]


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags"))
    assert bag.import_errors == {}
    return bag.dags["product_recommendations"]


def test_spark_submit_tasks_in_order(dag):
    assert [task.task_id for task in dag.topological_sort()] == STEPS
    for upstream, downstream in zip(STEPS, STEPS[1:], strict=False):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    for task in dag.tasks:
        assert isinstance(task, SparkSubmitOperator)
        assert task.application.endswith(f"jobs/{task.task_id}.py")
        run_id = task.application_args[task.application_args.index("--run-id") + 1]
        assert run_id == ("{{ params.publish_run_id or run_id }}" if task.task_id == "publish" else "{{ run_id }}")
    # A run that only publishes an earlier run skips the steps before publish.
    assert dag.get_task("publish").trigger_rule == "none_failed"


def test_daily_schedule_and_publish_updates_an_asset(dag):
    assert dag.schedule == "@daily"
    [asset] = dag.get_task("publish").outlets
    assert asset.uri.endswith("/published") and asset.name == asset.uri


def with_conf(dag, conf: dict):
    """The params a manual trigger with `conf` would run with, validated as Airflow does."""
    params = copy.deepcopy(dag.params)
    params.update(conf)
    return params.validate()


def test_params_validate(dag):
    assert with_conf(dag, {})["input_format"] == "contract"
    good = with_conf(dag, {"input_format": "online_retail", "k": 0, "top_n": 20, "pca_dimensions": 8})
    assert good["top_n"] == 20 and good["input_format"] == "online_retail"
    for bad in ({"input_format": "xml"}, {"top_n": 0}, {"pca_dimensions": 1}, {"embedding_backend": "magic"}):
        with pytest.raises(ParamValidationError):
            with_conf(dag, bad)


def test_secrets_stay_out_of_the_command_line(dag):
    task = dag.get_task("embed")
    assert not task.env_vars
    assert all("OPENAI" not in str(arg) for arg in task.application_args)


def test_pyspark_imports_from_the_venv():
    # pyspark and pyspark-client ship the same package; mismatched versions break imports.
    import pyspark
    from pyspark.ml.clustering import KMeans  # noqa: F401
    from pyspark.sql import SparkSession  # noqa: F401

    assert pyspark.__version__ == "4.2.0"


def test_every_task_and_the_run_have_timeouts(dag):
    from datetime import timedelta

    from recs.config import RecsConfig

    config = RecsConfig.load()
    assert dag.dagrun_timeout == timedelta(minutes=config.runtime.dag_run_timeout_minutes)
    for task in dag.tasks:
        assert task.execution_timeout == timedelta(minutes=config.runtime.task_timeout_minutes), task.task_id


def test_the_form_holds_exactly_what_a_run_may_set(dag):
    from recs.config import DAG_PARAMS

    assert list(dag.params) == list(DAG_PARAMS)
    assert "data_root" not in dag.params and "keep_versions" not in dag.params
    schema = dag.params.get_param("k_min").schema
    assert (schema["type"], schema["minimum"], schema["title"]) == ("integer", 2, "Smallest k to try")
    assert dag.params.get_param("input_format").schema["enum"] == ["contract", "online_retail", "amazon_reviews"]
