"""What every job entry point shares: arguments, configuration, the SparkSession,
logging, and turning any failure into a non-zero exit with a message that names it."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable

from pyspark.sql import SparkSession

from recs.config import RecsConfig, check_input_path, safe_run_id, settings_from_params
from recs.io import RunPaths, write_json

log = logging.getLogger("recs")

Step = Callable[[SparkSession, RecsConfig, RunPaths], dict]


def build_spark(app_name: str, config: RecsConfig) -> SparkSession:
    """The master and deploy mode come from spark-submit; only job-level settings here."""
    return (
        SparkSession.builder.appName(app_name)
        .config("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.compression.codec", "zstd")
        .getOrCreate()
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A step of the product recommendation pipeline.")
    parser.add_argument("--run-id", required=True, help="the Airflow run id; names the run folder")
    parser.add_argument(
        "--params-json", default="{}", help="DAG params as JSON, overriding environment settings"
    )
    return parser.parse_args(argv)


def run_step(step_name: str, step: Step, argv: list[str] | None = None) -> None:
    """Run one pipeline step as a Spark application; exit 1 with the cause on failure."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        config = load_config(json.loads(args.params_json))
    except (ValueError, TypeError) as err:
        log.error("%s: bad configuration: %s", step_name, err)
        sys.exit(2)
    paths = RunPaths(config.data_root, safe_run_id(args.run_id))
    spark = build_spark(f"recs-{step_name}", config)
    spark.sparkContext.setLogLevel("WARN")
    started = time.monotonic()
    log.info("%s: run %s, data root %s", step_name, paths.run_id, config.data_root)
    try:
        stats = step(spark, config, paths) or {}
        stats["seconds"] = round(time.monotonic() - started, 1)
        write_json(spark, paths.stats(step_name), stats)
        log.info("%s: done in %.1fs: %s", step_name, stats["seconds"], json.dumps(stats, default=str)[:2000])
    except Exception as err:  # noqa: BLE001 - any failure must end the task with its cause
        log.exception("%s failed: %s", step_name, err)
        spark.stop()
        sys.exit(1)
    spark.stop()


def load_config(params: dict) -> RecsConfig:
    """The step's configuration from a DAG run's params: only the form's params are taken
    (anything else in the run's conf is refused), and an input_path they name must lie
    under the input roots. The environment's own RECS_INPUT is the operator's choice."""
    if not isinstance(params, dict):
        raise TypeError(f"--params-json must hold a JSON object, got {type(params).__name__}")
    config = RecsConfig.load(overrides=settings_from_params(params))
    if "input_path" in params:
        check_input_path(config)
    return config
