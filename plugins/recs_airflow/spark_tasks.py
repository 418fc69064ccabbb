"""A factory for the pipeline's Spark tasks: one `spark-submit` per step.

Every task submits `jobs/<step>.py` with the shared `recs` package zipped into
`py_files`, so executors on any cluster import the same code as the driver. The
zip is built when the task runs, from the code the worker sees, so it is never stale.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset

from recs.config import RecsConfig

REPO = Path(__file__).resolve().parents[2]
JOBS_DIR = Path(os.environ.get("RECS_JOBS_DIR", REPO / "jobs"))
BUILD_DIR = Path(os.environ.get("RECS_BUILD_DIR", REPO / "dist"))

# Job-level Spark settings that do not depend on the cluster. Resource sizing
# (executor memory, cores) belongs to the `spark_default` connection's extras or
# the cluster's spark-defaults.conf.
SPARK_CONF = {
    "spark.ui.enabled": "false",
    "spark.log.level": "WARN",
    "spark.sql.adaptive.enabled": "true",
    "spark.python.worker.reuse": "true",
}


def build_package_zip(source: Path = JOBS_DIR / "recs", build_dir: Path = BUILD_DIR) -> Path:
    """Zip the `recs` package, named by its content hash; concurrent builds agree."""
    files = sorted(p for p in source.rglob("*.py") if "__pycache__" not in p.parts)
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            info = zipfile.ZipInfo(str(path.relative_to(source.parent)), date_time=(2020, 1, 1, 0, 0, 0))
            archive.writestr(info, path.read_bytes())
    digest = hashlib.sha256(payload.getvalue()).hexdigest()[:16]
    target = build_dir / f"recs-{digest}.zip"
    if not target.exists():
        build_dir.mkdir(parents=True, exist_ok=True)
        temporary = target.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_bytes(payload.getvalue())
        os.replace(temporary, target)
    return target


class RecsSparkSubmitOperator(SparkSubmitOperator):
    """SparkSubmitOperator that ships the current `recs` package with the job."""

    def execute(self, context):
        self.py_files = str(build_package_zip())
        return super().execute(context)


def spark_step(step: str, **kwargs) -> RecsSparkSubmitOperator:
    """The task running `jobs/<step>.py` for this DAG run with the run's params."""
    return RecsSparkSubmitOperator(
        task_id=step,
        application=str(JOBS_DIR / f"{step}.py"),
        name=f"recs-{step}",
        conn_id=os.environ.get("RECS_SPARK_CONN_ID", "spark_default"),
        conf=dict(SPARK_CONF),
        application_args=["--run-id", "{{ run_id }}", "--params-json", "{{ params | tojson }}"],
        **kwargs,
    )


def published_asset(config: RecsConfig) -> Asset:
    """The Asset the publish task updates: the `published/` folder of the data root."""
    root = config.data_root.rstrip("/")
    uri = f"{root}/published" if "://" in root else f"file://{root}/published"
    return Asset(name="recs_published", uri=uri)
