"""One job's `spark-submit` command as the DAG's task builds it on `local[*]` for a small
run (plugins/recs_airflow/spark_tasks.py): the task's Spark settings and the small run's
driver JVM options. For the tests that submit one step on a prepared run folder instead
of running the whole DAG before it.

The small run's options matter here beyond fidelity: the tests run a few dozen short
driver JVMs on two cores, and on the quick JIT tier each costs less CPU to start.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def submit_command(job: str | Path, args: list[str], *, master: str = "local[1]", name: str | None = None,
                   conf: dict[str, str] | None = None, package_zip: Path | None = None,
                   jars: str | None = None) -> list[str]:
    """`spark-submit` of `jobs/<job>.py` (or a script's path) with `args`; `conf` adds to
    and overrides the task's settings. The caller's environment gets the task's BLAS
    settings (`spark_tasks.BLAS_ENVIRONMENT`) for the job to inherit."""
    from recs_airflow.spark_tasks import SPARK_CONF, export_blas_environment, local_driver_java_options

    export_blas_environment()  # as the task does: the job's OpenBLAS runs one thread per call

    script = Path(job) if isinstance(job, Path) else REPO / "jobs" / f"{job}.py"
    settings = {**SPARK_CONF, "spark.driver.extraJavaOptions": local_driver_java_options(small_run=True),
                **(conf or {})}
    return [
        str(Path(sys.executable).parent / "spark-submit"), "--master", master, "--name", name or f"recs-{script.stem}",
        *[arg for key, value in settings.items() for arg in ("--conf", f"{key}={value}")],
        *(["--jars", jars] if jars else []), *(["--py-files", str(package_zip)] if package_zip else []),
        str(script), *args,
    ]
