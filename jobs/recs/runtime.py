"""What every job entry point shares: arguments, configuration, the SparkSession,
logging, and turning any failure into a non-zero exit with a message that names it,
also written to `runs/<run id>/errors/<step>.json` for the Airflow task (recs/errors.py)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable

from pyspark.sql import SparkSession

from recs import errors
from recs.config import RecsConfig, absolute_location, check_input_path, safe_run_id, settings_from_params
from recs.io import RunPaths, delete, exists, write_json

log = logging.getLogger("recs")

Step = Callable[[SparkSession, RecsConfig, RunPaths], dict]


def build_spark(app_name: str, config: RecsConfig) -> SparkSession:
    """The master and deploy mode come from spark-submit; only job-level settings here."""
    return (
        SparkSession.builder.appName(app_name)
        .config("spark.sql.shuffle.partitions", str(config.runtime.shuffle_partitions))
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
    # py4j logs at INFO from its connections' finalizers, at interpreter exit too, where a
    # log call can wait for a handler lock that no thread will release: an evaluate step
    # once hung there after "done" (seen with a profiler attached).
    logging.getLogger("py4j").setLevel(logging.WARNING)
    args = parse_args(argv)
    try:
        config = load_config(json.loads(args.params_json))
    except (ValueError, TypeError) as err:
        record = errors.error_record(step_name, ValueError(f"bad configuration: {err}"), final=True)
        log.error("%s", record["error"])
        _write_error_without_spark(args.run_id, record)
        sys.exit(2)
    paths = RunPaths(config.input.data_root, safe_run_id(args.run_id))
    spark = build_spark(f"recs-{step_name}", config)
    spark.sparkContext.setLogLevel("WARN")
    started = time.monotonic()
    log.info("%s: run %s, data root %s", step_name, paths.run_id, config.input.data_root)
    try:
        stats = step(spark, config, paths) or {}
        stats["seconds"] = round(time.monotonic() - started, 1)
        # Which input the run read: publish compares runs of the same input (recs/publish.py),
        # also when it publishes an earlier run whose params it does not have.
        stats.setdefault("input", {"format": config.input.format, "path": config.input.path})
        write_json(spark, paths.stats(step_name), stats)
        if exists(spark, paths.error(step_name)):  # a failed earlier try of this step
            delete(spark, paths.error(step_name))
        log.info("%s: done in %.1fs: %s", step_name, stats["seconds"], json.dumps(stats, default=str)[:2000])
    except Exception as err:  # noqa: BLE001 - any failure must end the task with its cause
        record = errors.error_record(step_name, err)
        log.error("%s failed: %s", step_name, record["error"], exc_info=not record["final"])
        try:
            write_json(spark, paths.error(step_name), record)
        except Exception as unwritten:  # noqa: BLE001 - the exit code still fails the task
            log.warning("could not write %s: %s", paths.error(step_name), errors.one_line(str(unwritten)))
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


def _write_error_without_spark(run_id: str, record: dict) -> None:
    """The configuration failed, so there is no SparkSession: a local data root from the
    environment gets the record; elsewhere the exit code and the log line say it."""
    root = absolute_location(os.environ.get("RECS_DATA_ROOT") or "data")
    if "://" in root and not root.startswith("file://"):
        return
    try:
        path = RunPaths(root.removeprefix("file://"), safe_run_id(run_id)).error(record["step"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
    except (OSError, ValueError) as err:
        log.warning("could not write the error record: %s", err)

