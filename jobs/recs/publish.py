"""Step 6: check the run's tables, then publish them as one new version.

Readers follow `published/CURRENT`, a one-line file naming the version folder. The
new version is written completely first; only then is CURRENT replaced, atomically.
A reader therefore sees the previous complete version or the new one, never a mix.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recs import io
from recs.config import RecsConfig
from recs.io import CURRENT_POINTER, RunPaths

log = logging.getLogger(__name__)

RUN_TABLES = ("user_recommendations", "similar_products", "product_clusters", "popular_products")
STEPS = ("preprocess", "embed", "pca", "cluster", "recommend")
MANIFEST = "_MANIFEST.json"


class PublishCheckFailed(RuntimeError):
    pass


def check_tables(tables: dict[str, DataFrame], events: DataFrame, top_n: int) -> list[str]:
    """What a storefront relies on; each broken promise is one message."""
    problems = []
    for name, table in tables.items():
        if table.isEmpty():
            problems.append(f"{name} is empty")
    recommendations, similar = tables["user_recommendations"], tables["similar_products"]
    if not similar.where(F.col("product_id") == F.col("similar_product_id")).isEmpty():
        problems.append("similar_products lists a product as similar to itself")
    bought = events.where(F.col("event_type") == "purchase").select("user_id", "product_id").distinct()
    if not recommendations.join(bought, ["user_id", "product_id"]).isEmpty():
        problems.append("user_recommendations recommends products the user already bought")
    duplicates = recommendations.groupBy("user_id", "product_id").count().where(F.col("count") > 1)
    if not duplicates.isEmpty():
        problems.append("user_recommendations lists a product twice for one user")
    if not recommendations.where((F.col("rank") < 1) | (F.col("rank") > top_n)).isEmpty():
        problems.append(f"user_recommendations has a rank outside 1..{top_n}")
    return problems


def run_summary(spark: SparkSession, run_id: str, version: str, stats: dict, config: RecsConfig) -> DataFrame:
    """One row that says what this version is and how it was made."""
    row = {
        "run_id": run_id,
        "version": version,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "products": stats["preprocess"]["products_out"],
        "events": stats["preprocess"]["events_out"],
        "users": stats["recommend"]["users"],
        "quarantined_rows": sum(stats["preprocess"]["quarantine"].values()),
        "embedding_backend": stats["embed"]["backend"],
        "embedding_space": stats["embed"]["space"],
        "texts_embedded": stats["embed"]["texts_embedded"],
        "embedding_cache_hits": stats["embed"]["cache_hits"],
        "pca_dimensions": stats["pca"]["dimensions"],
        "pca_explained_variance": stats["pca"]["explained_variance_total"],
        "k": stats["cluster"]["k"],
        "silhouette": stats["cluster"]["silhouette"],
        "catalog_coverage": stats["recommend"]["catalog_coverage"],
        "config_json": config.to_json(),
        "stats_json": json.dumps(stats, sort_keys=True, default=str),
    }
    return spark.createDataFrame([row])


def new_version_name(spark: SparkSession, paths: RunPaths) -> str:
    """The run id, or a fresh suffix when this run was published before (a retry):
    a version folder is never rewritten, since a reader may be using it."""
    versions = set(io.list_dir(spark, f"{paths.published}/versions"))
    if paths.run_id not in versions:
        return paths.run_id
    return f"{paths.run_id}.{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}"


def prune_versions(spark: SparkSession, paths: RunPaths, keep: int, current: str) -> list[str]:
    """Delete the oldest versions beyond `keep` (plus the current one, always kept)."""
    folder = f"{paths.published}/versions"
    dated = []
    for name in io.list_dir(spark, folder):
        manifest = f"{folder}/{name}/{MANIFEST}"
        if io.exists(spark, manifest):
            dated.append((io.read_json(spark, manifest)["published_at"], name))
    older = [name for _, name in sorted(dated, reverse=True) if name != current][keep:]
    for name in older:
        io.delete(spark, f"{folder}/{name}")
    return older


def run(spark: SparkSession, config: RecsConfig, paths: RunPaths) -> dict:
    # Extract
    tables = {name: io.read_table(spark, paths.table(name)) for name in RUN_TABLES}
    events = io.read_table(spark, paths.table("events"))
    products = io.read_table(spark, paths.table("products"))
    # Titles beside the clusters, so a reader can show and explain them without the catalog.
    tables["product_clusters"] = tables["product_clusters"].join(
        products.select("product_id", "title", "category"), "product_id", "left"
    )
    stats = {step: io.read_json(spark, paths.stats(step)) for step in STEPS}
    # Check
    problems = check_tables(tables, events, config.top_n)
    if problems:
        raise PublishCheckFailed("refusing to publish run " + paths.run_id + ": " + "; ".join(problems))
    # Load: every table of the version, then its manifest, then the pointer.
    version = new_version_name(spark, paths)
    target = paths.published_version(version)
    tables["run_summary"] = run_summary(spark, paths.run_id, version, stats, config)
    counts = {}
    for name, table in tables.items():
        io.write_table(table, f"{target}/{name}")
        counts[name] = spark.read.parquet(f"{target}/{name}").count()
    published_at = datetime.now(UTC).isoformat(timespec="microseconds")
    io.write_json(spark, f"{target}/{MANIFEST}", {"run_id": paths.run_id, "published_at": published_at, "rows": counts})
    previous = io.current_published_run(spark, paths.published)
    io.write_text(spark, f"{paths.published}/{CURRENT_POINTER}", version + "\n")
    pruned = prune_versions(spark, paths, config.keep_versions, version)
    log.info("published version %s at %s (previous: %s); rows %s", version, target, previous, counts)
    return {"version": version, "path": target, "previous_version": previous, "rows": counts, "pruned": pruned}
