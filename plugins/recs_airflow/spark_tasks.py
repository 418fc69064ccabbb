"""A factory for the pipeline's Spark tasks: one `spark-submit` per step.

Every task submits `jobs/<step>.py` with the shared `recs` package zipped into
`py_files`, so executors on any cluster import the same code as the driver. The
zip is built when the task runs, from the code the worker sees, so it is never stale.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import time
import zipfile
from pathlib import Path
from urllib.parse import quote, urlencode

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset, BaseHook
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowNotFoundException,
    AirflowSkipException,
)
from airflow.sdk.log import mask_secret

from recs import errors
from recs.config import RecsConfig, safe_run_id
from recs.io import RunPaths, is_local
from recs_airflow import class_archive

REPO = Path(__file__).resolve().parents[2]


def jobs_dir() -> Path:
    """Where the job files are, as the Airflow worker sees them (read when needed, after `.env`)."""
    return Path(os.environ.get("RECS_JOBS_DIR") or REPO / "jobs")


def build_dir() -> Path:
    return Path(os.environ.get("RECS_BUILD_DIR") or REPO / "dist")

# A native BLAS runs one thread per call: Spark already runs a task per core (see `OPENBLAS`).
BLAS_ENVIRONMENT = {"OPENBLAS_NUM_THREADS": "1"}

# Job-level Spark settings that do not depend on the cluster. Resource sizing
# (executor memory, cores) belongs to the `spark_default` connection's extras or
# the cluster's spark-defaults.conf; on `local[*]` see `local_driver_memory`.
SPARK_CONF = {
    "spark.ui.enabled": "false",
    "spark.log.level": "WARN",
    "spark.sql.adaptive.enabled": "true",
    "spark.python.worker.reuse": "true",
    # A cluster's executors too (on `local[*]` they are the driver, which inherits
    # `export_blas_environment`'s): which BLAS they load is the cluster's choice.
    **{f"spark.executorEnv.{name}": value for name, value in BLAS_ENVIRONMENT.items()},
}

MIB = 2**20
# Share of a local driver's heap for Spark's own pages (execution and cache; 0.6 by
# default). There the tasks run in the driver JVM beside what it collects and
# broadcasts: at a million products the recommend step died of heap space twice with
# 0.6 (its pages up to 6 GB of a 9.4 GB heap, beside millions of rows it materialised),
# and completed with 0.4 (22.4 minutes, JVM at 10.1 GB resident); Spark spills sooner.
LOCAL_MEMORY_FRACTION = "0.4"
EXIT_ON_OUT_OF_MEMORY = "-XX:+ExitOnOutOfMemoryError"
# Debian's OpenBLAS built with threads (`make native-blas`), one folder per architecture,
# run on one thread each call (`BLAS_ENVIRONMENT`). Not its serial build: that one is not
# safe to call from two threads at once, and Spark's tasks share the JVM. Under two tasks
# it gave wrong rows: 52 to 58 of 20,000 PCA projections (tests/e2e/test_native_blas.py),
# and Online Retail's PCA table in two of six runs (one product given another's vector).
OPENBLAS = "/usr/lib/*-linux-gnu/openblas-pthread"


def local_driver_memory(config: RecsConfig, total_bytes: int | None = None) -> tuple[str, str]:
    """(--driver-memory, spark.driver.maxResultSize) for a `local[*]` run.

    There the driver JVM holds every executor, and Spark's default heap (1g) is what
    a real shop's counts die in. It must be given to spark-submit: once the JVM runs,
    a session builder cannot grow its heap. Unless set (RECS_DRIVER_MEMORY,
    RECS_DRIVER_MAX_RESULT_SIZE): two fifths of the machine's RAM, between 1g and 16g
    (the Python workers and the driver's numpy live beside it), and half of it for
    results collected to the driver. A quarter was too little for a million products:
    L's recommend step died in 6 GB (24 GiB machine) while writing, with about 4.3 GB
    live after a full collection; with 10 GB it completed.
    """
    if total_bytes is None:
        import psutil

        total_bytes = psutil.virtual_memory().total
    heap = config.runtime.driver_memory or f"{min(16 * 1024, max(1024, total_bytes * 2 // 5 // MIB))}m"
    return heap, config.runtime.driver_max_result_size or f"{max(1, _mebibytes(heap) // 2)}m"


def native_blas_options(pattern: str | None = None) -> list[str]:
    """JVM options pointing Spark MLlib's netlib at Debian's OpenBLAS, when installed, to
    run one thread per call (`export_blas_environment`). Spark runs a task per core
    already; with OpenBLAS's own threads as well, two ALS tasks at once spent a fifth of
    the CPU time in the kernel: one fit at M took 57-64 s that way, 39 s on one thread."""
    folder = next(iter(sorted(glob.glob(pattern or OPENBLAS))), None)
    if folder is None:
        return []
    return [f"-Ddev.ludovic.netlib.{name}.nativeLibPath={folder}/lib{name}.so.3" for name in ("blas", "lapack")]


def export_blas_environment() -> None:
    """Put `BLAS_ENVIRONMENT` where spark-submit inherits it (unless already set): OpenBLAS
    reads it when the JVM loads the library."""
    for name, value in BLAS_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


# A small run's driver JVM lives a minute or two, and on a machine of few cores the
# optimising JIT compiler (C2) competes with the work for them. The quick tier alone (C1)
# and the throughput collector took Online Retail's whole DAG (391k events, cache warm)
# from 293 s and 300 s to 274 s and 255 s (2026-12-07, two pairs of runs, alternating),
# the evaluate step from 109-113 s to 94-99 s. With the quick tier ALS's solver needs a
# larger thread stack: it overflowed the default. At M (1.05M events) they did not help:
# the quick tier alone made the recommend step slower (208 s against 184 s), both
# together left the whole DAG's time where it was (662.7 s against 653.5 s) and its
# largest process 13% larger. So only a run whose preprocess step kept at most
# SMALL_RUN_EVENTS events gets them, in the steps after it.
SMALL_RUN_EVENTS = 500_000
SMALL_RUN_JAVA_OPTIONS = ("-XX:+UseParallelGC", "-XX:TieredStopAtLevel=1", "-Xss32m")


def local_driver_java_options(small_run: bool = False) -> str:
    """The driver JVM's options on `local[*]`: exit when the heap runs out (see
    `size_local_driver`), OpenBLAS on one thread per call and the class archive
    (`class_archive.py`), each when installed; a small run's JIT and collector
    (`SMALL_RUN_JAVA_OPTIONS`)."""
    return " ".join([EXIT_ON_OUT_OF_MEMORY, *native_blas_options(), *class_archive.java_options(),
                     *(SMALL_RUN_JAVA_OPTIONS if small_run else ())])


def _mebibytes(size: str) -> int:
    units = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
    size = size.lower()
    return int(float(size[:-1]) * units[size[-1]]) if size[-1] in units else int(size) // MIB


def is_local_master(conn_id: str) -> bool:
    """Does the Spark connection run the job inside the driver (`local`, `local[*]`, `local[4]`)?"""
    try:
        host = BaseHook.get_connection(conn_id).host or ""
    except AirflowNotFoundException:
        return False
    return host.startswith("local")


def build_package_zip(source: Path | None = None, target_dir: Path | None = None) -> Path:
    """Zip the `recs` package, named by its content hash; concurrent builds agree."""
    source = source or jobs_dir() / "recs"
    target_dir = target_dir or build_dir()
    files = sorted(p for p in source.rglob("*.py") if "__pycache__" not in p.parts)
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            info = zipfile.ZipInfo(str(path.relative_to(source.parent)), date_time=(2020, 1, 1, 0, 0, 0))
            archive.writestr(info, path.read_bytes())
    digest = hashlib.sha256(payload.getvalue()).hexdigest()[:16]
    target = target_dir / f"recs-{digest}.zip"
    if not target.exists():
        target_dir.mkdir(parents=True, exist_ok=True)
        temporary = target.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_bytes(payload.getvalue())
        os.replace(temporary, target)
    return target


OPENAI_CONNECTION = "openai_default"


def export_openai_key() -> None:
    """Put the OpenAI key where spark-submit inherits it: this process's environment.

    Taken from the environment or `.env` if set there, else from the Airflow
    connection `openai_default` (its password). Never through `env_vars` or the
    command line, which Airflow renders and logs; masked in task logs either way.
    """
    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        try:
            key = BaseHook.get_connection(OPENAI_CONNECTION).password
        except AirflowNotFoundException:
            return
        if key:
            os.environ["OPENAI_API_KEY"] = key
    if key:
        mask_secret(key)


DATABASE_CONNECTION = "recs_db"
# Debian's libpostgresql-jdbc-java, which `make setup` installs; RECS_JDBC_JARS or
# RECS_JDBC_PACKAGES (Maven coordinates, for --packages) name the driver elsewhere.
DEBIAN_JDBC_JAR = "/usr/share/java/postgresql.jar"


def connection_url(connection) -> str:
    """postgresql://login:password@host:port/schema?extras from an Airflow Postgres connection."""
    login, password = quote(connection.login or "", safe=""), quote(connection.password or "", safe="")
    auth = f"{login}:{password}@" if password else (f"{login}@" if login else "")
    extras = {k: v for k, v in (connection.extra_dejson or {}).items() if isinstance(v, str | int)}
    query = f"?{urlencode(extras)}" if extras else ""
    where = f"{connection.host or 'localhost'}:{connection.port or 5432}/{connection.schema or 'postgres'}"
    return f"postgresql://{auth}{where}{query}"


def export_database_url() -> None:
    """Put the PostgreSQL URL where spark-submit inherits it, like the OpenAI key.

    From the environment or `.env` (RECS_DATABASE_URL), else the Airflow connection
    `recs_db`; masked in task logs (the URL and its password), never in `env_vars`
    or the command line. Without either, the publish step writes Parquet only.
    """
    url = os.environ.get("RECS_DATABASE_URL")
    if not url:
        try:
            url = connection_url(BaseHook.get_connection(DATABASE_CONNECTION))
        except AirflowNotFoundException:
            return
        os.environ["RECS_DATABASE_URL"] = url
    # The URL, its password however malformed (an unencoded / # ? cuts it into pieces that
    # a parser's error could quote), and its secret query values.
    mask_secret(url)
    for fragment in errors.secret_fragments({"RECS_DATABASE_URL": url}):
        mask_secret(fragment)


def jdbc_jars() -> str | None:
    """The PostgreSQL JDBC driver for `--jars`: RECS_JDBC_JARS, else Debian's jar when present."""
    return os.environ.get("RECS_JDBC_JARS") or (DEBIAN_JDBC_JAR if os.path.exists(DEBIAN_JDBC_JAR) else None)


class RecsSparkSubmitOperator(SparkSubmitOperator):
    """SparkSubmitOperator that ships the current `recs` package with the job, and fails
    with the job's own one-line cause (recs/errors.py): `AirflowFailException`, no retry,
    when retrying cannot help (a gate refusal, a bad configuration, bad input)."""

    def execute(self, context):
        earlier = (context["params"].get("publish_run_id") or "").strip()
        if earlier and self.task_id != "publish":
            raise AirflowSkipException(f"this DAG run only publishes the earlier run {earlier}")
        self.py_files = str(build_package_zip())
        self.size_local_driver()
        export_openai_key()
        export_database_url()
        started = time.time()
        try:
            return super().execute(context)
        except AirflowException as err:
            record = self.error_record(started)
            if record is None:
                raise
            failure = AirflowFailException if record["final"] else AirflowException
            raise failure(record["error"]) from err

    def local_run_paths(self) -> RunPaths | None:
        """The folder of the run this task works on, when the data root is local (the
        worker reads it); None elsewhere or on a bad setting (the job's own exit says it)."""
        try:
            root = RecsConfig.load().input.data_root
            args = [str(arg) for arg in self.application_args]
            run_id = safe_run_id(args[args.index("--run-id") + 1])
        except ValueError:
            return None
        return RunPaths(root.removeprefix("file://"), run_id) if is_local(root) else None

    def error_record(self, since: float) -> dict | None:
        """The record the job wrote for this try (local data roots; elsewhere the log says it)."""
        paths = self.local_run_paths()
        if paths is None:
            return None
        path = paths.error(self.task_id)
        try:
            if os.path.getmtime(path) < since - 1:
                return None  # an earlier try's
            with open(path, encoding="utf-8") as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            return None
        return {"error": errors.one_line(record.get("error", "")), "final": bool(record.get("final"))}

    def size_local_driver(self) -> None:
        """On `local[*]`, give the driver its heap, result limit and share of the heap for
        Spark's pages (`LOCAL_MEMORY_FRACTION`), a small run's JIT and collector
        (`SMALL_RUN_JAVA_OPTIONS`), and make it exit
        when that heap runs out (a cluster's connection and spark-defaults.conf decide
        there; nothing is changed). Without the exit, an OutOfMemoryError in one of
        Spark's own threads (the one that receives task results) leaves the job waiting
        for a result that never comes: the step hung until the task timeout."""
        if is_local_master(self._conn_id):
            memory, max_result = local_driver_memory(RecsConfig.load())
            self._driver_memory = self._driver_memory or memory
            export_blas_environment()
            events = self.events_kept()
            small_run = events is not None and events <= SMALL_RUN_EVENTS
            if small_run:
                self.log.info("a small run (%d events): the driver JVM gets %s", events,
                              " ".join(SMALL_RUN_JAVA_OPTIONS))
            self.conf = {"spark.driver.maxResultSize": max_result, "spark.memory.fraction": LOCAL_MEMORY_FRACTION,
                         "spark.driver.extraJavaOptions": local_driver_java_options(small_run), **(self.conf or {})}

    def events_kept(self) -> int | None:
        """How many events the run's preprocess step kept (its stats), when it has run and
        the data root is local."""
        paths = self.local_run_paths()
        if paths is None:
            return None
        try:
            with open(paths.stats("preprocess"), encoding="utf-8") as handle:
                return int(json.load(handle)["events_out"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def spark_step(step: str, **kwargs) -> RecsSparkSubmitOperator:
    """The task running `jobs/<step>.py` for this DAG run with the run's params."""
    return RecsSparkSubmitOperator(
        task_id=step,
        application=str(jobs_dir() / f"{step}.py"),
        name=f"recs-{step}",
        conn_id=os.environ.get("RECS_SPARK_CONN_ID", "spark_default"),
        conf=dict(SPARK_CONF),
        # The publish task of a run triggered with `publish_run_id` publishes that earlier
        # run's folder (e.g. a refused run, with the gate override): no re-computation.
        application_args=["--run-id", "{{ params.publish_run_id or run_id }}" if step == "publish" else "{{ run_id }}",
                          "--params-json", "{{ params | tojson }}"],
        jars=jdbc_jars(),
        packages=os.environ.get("RECS_JDBC_PACKAGES") or None,
        **kwargs,
    )


def published_asset(config: RecsConfig) -> Asset:
    """The Asset the publish task updates: the `published/` folder of the data root."""
    root = config.input.data_root.rstrip("/")
    uri = f"{root}/published" if "://" in root else f"file://{root}/published"
    # Named by its URI: Airflow refuses one asset name for two URIs, and each data root
    # (a shop, a test) publishes its own tables.
    return Asset(uri=uri)
