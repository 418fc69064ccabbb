"""Personalised product recommendations: seven Spark jobs, from raw catalog and
behaviour to evaluated, published recommendation tables. This file only wires the tasks; the
work is in jobs/recs/, the task factory and the Params in plugins/recs_airflow/."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, chain

from recs.config import RecsConfig
from recs_airflow.alerts import alert_notifiers
from recs_airflow.params import dag_params
from recs_airflow.spark_tasks import published_asset, spark_step

config = RecsConfig.load()

with DAG(
    dag_id="product_recommendations",
    description="Catalog + behaviour -> embeddings -> PCA -> K-means -> recommendations -> evaluation -> published",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params=dag_params(config),
    tags=["recommendations", "spark"],
    dagrun_timeout=pendulum.duration(minutes=config.runtime.dag_run_timeout_minutes),
    default_args={
        "retries": 1,
        "retry_delay": pendulum.duration(minutes=2),
        "execution_timeout": pendulum.duration(minutes=config.runtime.task_timeout_minutes),
        # E-mail and/or webhook when a task fails for good or publishing is refused (none when not configured).
        "on_failure_callback": alert_notifiers(config),
    },
    doc_md=__doc__,
):
    chain(
        spark_step("preprocess"),
        spark_step("embed"),
        spark_step("pca"),
        spark_step("cluster"),
        spark_step("recommend"),
        spark_step("evaluate"),
        # none_failed: a run with `publish_run_id` skips the steps before and publishes an earlier run.
        spark_step("publish", outlets=[published_asset(config)], trigger_rule="none_failed"),
    )
