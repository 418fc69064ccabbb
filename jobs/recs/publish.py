"""Step 6: check the run's tables, then publish them as one new version.

Readers follow `published/CURRENT`, a one-line file naming the version folder. The
new version is written completely first; only then is CURRENT replaced, atomically.
A reader therefore sees the previous complete version or the new one, never a mix.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recs import io, postgres, report
from recs.config import RecsConfig
from recs.io import CURRENT_POINTER, RunPaths

log = logging.getLogger(__name__)

RUN_TABLES = ("user_recommendations", "similar_products", "product_clusters", "popular_products")
STEPS = ("preprocess", "embed", "pca", "cluster", "recommend", "evaluate")
MANIFEST = "_MANIFEST.json"


class PublishCheckFailed(RuntimeError):
    pass


class PublishGateFailed(RuntimeError):
    pass


def published_ndcg(metrics: pd.DataFrame | None) -> float | None:
    if metrics is None or metrics.empty:
        return None
    row = metrics[(metrics["method"] == "published") & (metrics["segment"] == "all") & (metrics["metric"] == "ndcg")]
    return float(row["value"].iloc[0]) if len(row) else None


def gate_decision(metrics: pd.DataFrame | None, previous_ndcg: float | None, config: RecsConfig) -> dict:
    """Publish only a run at least as good as most-popular and not much worse than the
    last published one; an operator's override lets one run through, on the record."""
    k = config.eval_k
    ndcg = published_ndcg(metrics)
    problems = []
    if ndcg is None:
        problems.append(f"no NDCG@{k} for this run: the evaluate step wrote no run_metrics")
    else:
        overall = metrics[(metrics["segment"] == "all") & (metrics["metric"] == "ndcg")].set_index("method")["value"]
        popular = overall.get("most_popular")
        if popular is not None and ndcg < popular:
            problems.append(f"NDCG@{k} = {ndcg:.4f} is below the most_popular baseline's {popular:.4f}")
        if previous_ndcg is not None and ndcg < previous_ndcg * (1 - config.gate_tolerance):
            threshold = previous_ndcg * (1 - config.gate_tolerance)
            problems.append(
                f"NDCG@{k} = {ndcg:.4f} is more than {config.gate_tolerance:.0%} below the last published run's "
                f"{previous_ndcg:.4f} (threshold {threshold:.4f})"
            )
    if not problems:
        message = f"passed (NDCG@{k} = {ndcg:.4f})"
    elif config.gate_override:
        message = f"OVERRIDDEN by an operator ({config.gate_override_reason or 'no reason given'}): " + "; ".join(
            problems
        )
    else:
        message = "; ".join(problems)
    return {"passed": not problems, "overridden": bool(problems) and config.gate_override, "message": message,
            "ndcg": ndcg, "previous_ndcg": previous_ndcg}


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


def run_summary(
    spark: SparkSession, run_id: str, version: str, stats: dict, config: RecsConfig, gate: dict
) -> DataFrame:
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
        f"ndcg_at_{config.eval_k}": gate["ndcg"],
        "gate_passed": gate["passed"],
        "gate_overridden": gate["overridden"],
        "gate_message": gate["message"],
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
    stats = {step: io.read_json(spark, paths.stats(step)) for step in STEPS if io.exists(spark, paths.stats(step))}
    metrics = read_optional(spark, paths.table("run_metrics"))
    previous = io.current_published_run(spark, paths.published)
    previous_metrics = read_optional(spark, f"{paths.published_version(previous)}/run_metrics") if previous else None
    # Check: the tables' promises, then the quality gate.
    problems = check_tables(tables, events, config.top_n)
    if problems:
        raise PublishCheckFailed("refusing to publish run " + paths.run_id + ": " + "; ".join(problems))
    gate = gate_decision(metrics, published_ndcg(previous_metrics), config)
    log.info("publish gate: %s", gate["message"])
    if not gate["passed"] and not gate["overridden"]:
        raise PublishGateFailed(f"refusing to publish run {paths.run_id}: {gate['message']}")
    if metrics is not None:
        tables["run_metrics"] = spark.createDataFrame(metrics)
    # Load: every table of the version, then its manifest, then the pointer.
    version = new_version_name(spark, paths)
    target = paths.published_version(version)
    tables["run_summary"] = run_summary(spark, paths.run_id, version, stats, config, gate)
    counts = {}
    for name, table in tables.items():
        io.write_table(table, f"{target}/{name}")
        counts[name] = spark.read.parquet(f"{target}/{name}").count()
    report_path = f"{target}/report.html"
    io.write_text(spark, report_path, build_report(stats, metrics, tables, gate, paths.run_id, config))
    log.info("run report: %s", report_path)
    published_at = datetime.now(UTC).isoformat(timespec="microseconds")
    io.write_json(spark, f"{target}/{MANIFEST}", {"run_id": paths.run_id, "published_at": published_at, "rows": counts})
    # PostgreSQL, when configured, swaps to the version before CURRENT flips: the database
    # is the store that may fail, and then both stay on the previous version (recs/postgres.py).
    try:
        database = postgres.publish_if_configured(spark, config, paths, version, target)
    except Exception:
        io.delete(spark, target)  # CURRENT never named it: no reader can be using it
        raise
    io.write_text(spark, f"{paths.published}/{CURRENT_POINTER}", version + "\n")
    pruned = prune_versions(spark, paths, config.keep_versions, version)
    log.info("published version %s at %s (previous: %s); rows %s", version, target, previous, counts)
    return {"version": version, "path": target, "previous_version": previous, "rows": counts, "pruned": pruned,
            "database": database, "gate": gate, "report": report_path}


def read_optional(spark: SparkSession, path: str) -> pd.DataFrame | None:
    return spark.read.parquet(path).toPandas() if io.exists(spark, path) else None


# The 2-D map of the report draws at most this many products.
REPORT_MAP_POINTS = 3000


def build_report(
    stats: dict, metrics: pd.DataFrame | None, tables: dict[str, DataFrame], gate: dict, run_id: str,
    config: RecsConfig,
) -> str:
    clusters = tables["product_clusters"]
    total = clusters.count()
    sample = clusters if total <= REPORT_MAP_POINTS else clusters.sample(REPORT_MAP_POINTS / total, seed=config.seed)
    products = sample.select(
        "product_id", "cluster", "title", F.col("pca")[0].alias("x"), F.col("pca")[1].alias("y")
    ).toPandas()
    embed = stats["embed"]
    spend_keys = ("backend", "space", "texts_total", "cache_hits", "texts_embedded", "requests", "tokens_sent",
                  "retries", "estimated_cost_usd", "seconds")
    summary = {
        "run_id": run_id, "products": stats["preprocess"]["products_out"], "users": stats["recommend"]["users"],
        "events": stats["preprocess"]["events_out"],
        "quarantined_rows": sum(stats["preprocess"]["quarantine"].values()),
        "k": stats["cluster"]["k"], "eval_k": config.eval_k,
        "protocol": stats.get("evaluate", {}).get("protocol", "no evaluation"),
    }
    return report.render(
        summary=summary,
        metrics=metrics,
        silhouette_by_k=stats["cluster"]["silhouette_by_k"],
        explained_variance=stats["pca"]["explained_variance"],
        cluster_points=products,
        cluster_examples=report.cluster_examples(products),
        cluster_sizes=stats["cluster"]["cluster_sizes"],
        embedding={key: embed[key] for key in spend_keys if key in embed},
        gate=gate,
    )
