"""Where things live under the data root, and file operations that work on any
Hadoop file system (local folders, hdfs://, s3a://) through Spark's own JVM.

Layout of the data root:
    runs/<run_id>/<table>/          Parquet written by the steps of one DAG run
    runs/<run_id>/stats/<step>.json what each step measured (counts, k, variance, ...)
    runs/<run_id>/errors/<step>.json why a step failed, one line (recs/errors.py)
    runs/<run_id>/report.html       the run report, published or refused
    runs/<run_id>/work/<step>/      what a step writes for its own Spark tasks to read (the
                                    customers, `recs.model.ship_customers`); gone when it ends
    runs/<run_id>/counts/<events>/  pair counts a later step reads instead of counting the
                                    same events again (`recs.model.count_pairs`)
    embedding_cache/<space>/        content-addressed embeddings shared by all runs
    published/versions/<run_id>/    complete published versions, one per run
    published/CURRENT               the version readers should use (local data roots) ...
    published/pointers/<sequence>   ... or, where no atomic rename exists (s3a://), the
                                    newest of these pointer objects names it
    locks/<name>.lease              who holds a data-root lock, without a database (recs/lock.py)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

PUBLISHED_TABLES = ("user_recommendations", "similar_products", "product_clusters", "popular_products", "run_summary")
CURRENT_POINTER = "CURRENT"
POINTER_OBJECTS = "pointers"
# Pointer objects kept besides the newest: a reader that listed them a moment ago still
# finds the one it chose.
KEEP_POINTER_OBJECTS = 10


@dataclass(frozen=True)
class RunPaths:
    data_root: str
    run_id: str

    @property
    def run_dir(self) -> str:
        return f"{self.data_root}/runs/{self.run_id}"

    def table(self, name: str) -> str:
        return f"{self.run_dir}/{name}"

    def stats(self, step: str) -> str:
        return f"{self.run_dir}/stats/{step}.json"

    def error(self, step: str) -> str:
        return f"{self.run_dir}/errors/{step}.json"

    @property
    def report(self) -> str:
        return f"{self.run_dir}/report.html"

    def work(self, step: str) -> str:
        return f"{self.run_dir}/work/{step}"

    def counts(self, events: str) -> str:
        return f"{self.run_dir}/counts/{events}"

    def model(self, name: str) -> str:
        return f"{self.run_dir}/models/{name}"

    @property
    def embedding_cache(self) -> str:
        return f"{self.data_root}/embedding_cache"

    @property
    def published(self) -> str:
        return f"{self.data_root}/published"

    def published_version(self, run_id: str | None = None) -> str:
        return f"{self.published}/versions/{run_id or self.run_id}"


def read_table(spark: SparkSession, path: str) -> DataFrame:
    if not exists(spark, path):
        raise FileNotFoundError(f"expected table at {path}: did the step before this one run for this run id?")
    return spark.read.parquet(path)


def write_table(df: DataFrame, path: str) -> None:
    df.write.mode("overwrite").parquet(path)


@contextlib.contextmanager
def work_folder(spark: SparkSession, paths: RunPaths, step: str) -> Iterator[str]:
    """The step's work folder, empty (a crashed try may have left one) and removed after."""
    folder = paths.work(step)
    delete(spark, folder)
    try:
        yield folder
    finally:
        delete(spark, folder)


# --- Hadoop file system helpers ---------------------------------------------


def _fs_and_path(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    return hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hadoop_path


def exists(spark: SparkSession, path: str) -> bool:
    fs, hadoop_path = _fs_and_path(spark, path)
    return bool(fs.exists(hadoop_path))


def delete(spark: SparkSession, path: str) -> None:
    fs, hadoop_path = _fs_and_path(spark, path)
    fs.delete(hadoop_path, True)


def list_dir(spark: SparkSession, path: str) -> list[str]:
    fs, hadoop_path = _fs_and_path(spark, path)
    if not fs.exists(hadoop_path):
        return []
    return sorted(status.getPath().getName() for status in fs.listStatus(hadoop_path))


def read_text(spark: SparkSession, path: str) -> str:
    fs, hadoop_path = _fs_and_path(spark, path)
    jvm = spark.sparkContext._jvm
    stream = fs.open(hadoop_path)
    try:
        return jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


def write_text(spark: SparkSession, path: str, text: str) -> None:
    """Write a small file (stats, manifests, reports) so that readers never see a part of it.

    The text goes to a temporary file beside the target, then is renamed over it with
    OVERWRITE, which on local disk and S3A deletes the target first: a reader may briefly
    find no file. The published pointer therefore never goes through here (`switch_pointer`).
    """
    jvm = spark.sparkContext._jvm
    fs, target = _fs_and_path(spark, path)
    temporary = jvm.org.apache.hadoop.fs.Path(target.getParent(), f".{target.getName()}.{uuid.uuid4().hex}.tmp")
    stream = fs.create(temporary, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()
    context = jvm.org.apache.hadoop.fs.FileContext.getFileContext(
        target.toUri(), spark.sparkContext._jsc.hadoopConfiguration()
    )
    gateway = spark.sparkContext._gateway
    options = gateway.new_array(jvm.org.apache.hadoop.fs.Options.Rename, 1)
    options[0] = jvm.org.apache.hadoop.fs.Options.Rename.OVERWRITE
    context.rename(temporary, target, options)


def write_json(spark: SparkSession, path: str, payload: dict[str, Any]) -> None:
    write_text(spark, path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def read_json(spark: SparkSession, path: str) -> dict[str, Any]:
    return json.loads(read_text(spark, path))


# --- published versions -------------------------------------------------------


def is_local(location: str) -> bool:
    return "://" not in location or location.startswith("file://")


def resolve_pointer(list_names, read, published_root: str) -> str | None:
    """The version readers should use: the newest pointer object if there is any, else
    CURRENT. Takes the file system's `list_names(folder)` and `read(path)` (or None when
    missing), so that Spark jobs (below) and the Spark-free reader (recs/reader.py) read
    the pointer the same way."""
    objects = [name for name in list_names(f"{published_root}/{POINTER_OBJECTS}") if name.isdigit()]
    for name in sorted(objects, reverse=True):
        text = read(f"{published_root}/{POINTER_OBJECTS}/{name}")
        if text and text.strip():
            return text.strip()
    text = read(f"{published_root}/{CURRENT_POINTER}")
    return text.strip() if text and text.strip() else None


def current_published_run(spark: SparkSession, published_root: str) -> str | None:
    return resolve_pointer(
        lambda folder: list_dir(spark, folder),
        lambda path: read_text(spark, path) if exists(spark, path) else None,
        published_root,
    )


def switch_pointer(spark: SparkSession, published_root: str, version: str) -> str:
    """Point readers at `version`; a reader sees the old pointer or the new, never none.

    A local data root: a temporary file renamed over CURRENT (`os.replace`, atomic).
    Elsewhere (s3a://, whose rename is a copy and a delete, and hdfs://): a new pointer
    object `pointers/<sequence>`, written whole by one PUT; the newest wins, the older
    ones are pruned but for a few. The publish lock (recs/lock.py) keeps sequences unique."""
    if is_local(published_root):
        write_local_pointer(published_root.removeprefix("file://"), version)
        return f"{published_root}/{CURRENT_POINTER}"
    folder = f"{published_root}/{POINTER_OBJECTS}"
    numbers = sorted(int(name) for name in list_dir(spark, folder) if name.isdigit())
    target = f"{folder}/{(numbers[-1] + 1) if numbers else 1:020d}"
    fs, path = _fs_and_path(spark, target)
    stream = fs.create(path, False)
    try:
        stream.write(bytearray((version + "\n").encode("utf-8")))
    finally:
        stream.close()
    for old in numbers[:-KEEP_POINTER_OBJECTS]:
        delete(spark, f"{folder}/{old:020d}")
    return target


def write_local_pointer(published_dir: str, version: str) -> None:
    write_local_file(os.path.join(published_dir, CURRENT_POINTER), version + "\n", fault_at="pointer")


def write_local_file(path: str, text: str, fault_at: str | None = None) -> None:
    """A temporary file beside `path`, synced, then `os.replace`d over it: atomic."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    if fault_at:
        from recs.faults import fault_point

        fault_point(fault_at)
    os.replace(temporary, path)


def read_published(spark: SparkSession, published_root: str, table: str) -> DataFrame:
    """What a storefront job reads: the table of the version CURRENT points to."""
    run_id = current_published_run(spark, published_root)
    if run_id is None:
        raise FileNotFoundError(f"nothing published yet under {published_root}")
    return spark.read.parquet(f"{published_root}/versions/{run_id}/{table}")
