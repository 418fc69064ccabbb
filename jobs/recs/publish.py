"""Step 6: check the run's tables, then publish them as one new version.

Readers follow the published pointer (`published/CURRENT`, recs/io.py), which names a
version folder. The order makes every crash point safe:

1. under the data root's publish lock (recs/lock.py), clean what an interrupted publish
   left (version folders without a manifest, temporary pointer files; staging tables in
   PostgreSQL);
2. write the new version's Parquet tables completely, then its manifest;
3. swap PostgreSQL to it (recs/postgres.py), one transaction;
4. switch the pointer, atomically;
5. prune old versions, never the one the pointer names nor the one the database serves.

A failure before 3 leaves both stores on the previous version. A failure after 3 (a kill,
a lost COMMIT acknowledgement) deletes nothing: the retry finds that the database serves
this run's version and only finishes 4 and 5, so both stores converge on one version.
A complete version's name is never reused (a reader or the database may know it): a
retry that writes again gets a suffixed name; a half-written folder that no store ever
named is removed, and its name is free again.

Every run writes `runs/<run id>/report.html`, published or refused by the gate.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recs import io, lock, postgres, report
from recs.config import RecsConfig
from recs.errors import FinalError, one_line
from recs.faults import fault_point
from recs.io import RunPaths
from recs.metrics import best_baseline

log = logging.getLogger(__name__)

RUN_TABLES = ("user_recommendations", "similar_products", "product_clusters", "popular_products")
STEPS = ("preprocess", "embed", "pca", "cluster", "recommend", "evaluate")
MANIFEST = "_MANIFEST.json"


class PublishCheckFailed(FinalError):
    pass


class PublishGateFailed(FinalError):
    pass


def published_ndcg(metrics: pd.DataFrame | None) -> float | None:
    if metrics is None or metrics.empty:
        return None
    row = metrics[(metrics["method"] == "published") & (metrics["segment"] == "all") & (metrics["metric"] == "ndcg")]
    return float(row["value"].iloc[0]) if len(row) else None


def gate_decision(metrics: pd.DataFrame | None, previous: dict | None, config: RecsConfig) -> dict:
    """Publish only a run at least as good as most-popular, not much worse than the best
    baseline, and not much worse than the last published run OF THE SAME INPUT (`previous`:
    its version and NDCG; None when there is none). An operator's override lets one run
    through, on the record."""
    k, tolerance = config.evaluation.eval_k, config.evaluation.gate_tolerance
    ndcg = published_ndcg(metrics)
    previous_ndcg = previous["ndcg"] if previous else None
    problems = []
    if ndcg is None:
        problems.append(f"no NDCG@{k} for this run: the evaluate step wrote no run_metrics")
    else:
        overall = metrics[(metrics["segment"] == "all") & (metrics["metric"] == "ndcg")].set_index("method")["value"]
        popular = overall.get("most_popular")
        if popular is not None and ndcg < popular:
            problems.append(f"NDCG@{k} = {ndcg:.4f} is below the most_popular baseline's {popular:.4f}")
        best, best_ndcg = best_baseline(metrics)
        if best_ndcg is not None and ndcg < best_ndcg * (1 - tolerance):
            problems.append(
                f"NDCG@{k} = {ndcg:.4f} is more than {tolerance:.0%} below the best baseline's "
                f"({best}) {best_ndcg:.4f} (threshold {best_ndcg * (1 - tolerance):.4f})"
            )
        if previous_ndcg is not None and ndcg < previous_ndcg * (1 - tolerance):
            problems.append(
                f"NDCG@{k} = {ndcg:.4f} is more than {tolerance:.0%} below the last published run of the same "
                f"input ({previous['version']}: {previous_ndcg:.4f}, threshold {previous_ndcg * (1 - tolerance):.4f})"
            )
    compared = (f"compared with {previous['version']}, the last published run of the same input" if previous
                else "no earlier published run of the same input to compare with")
    if not problems:
        message = f"passed (NDCG@{k} = {ndcg:.4f}; {compared})"
    elif config.evaluation.gate_override:
        reason = config.evaluation.gate_override_reason or "no reason given"
        message = f"OVERRIDDEN by an operator ({reason}): " + "; ".join(problems)
    else:
        named = previous is not None and any(previous["version"] in problem for problem in problems)
        message = "; ".join(problems) + ("" if named else f" ({compared})")
    return {"passed": not problems, "overridden": bool(problems) and config.evaluation.gate_override,
            "message": message,
            "ndcg": ndcg, "previous_ndcg": previous_ndcg, "compared_with": previous["version"] if previous else None}


def input_fingerprint(input_format: str, input_path: str, schema: str) -> str:
    """What makes two runs comparable: the same source (format and location) with the same
    columns. A gate comparing a run on other data would refuse or pass it for no reason."""
    payload = json.dumps({"format": input_format, "path": input_path.rstrip("/"), "schema": schema}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def run_input(config: RecsConfig, stats: dict) -> dict:
    """The input the run's preprocess step read (its stats say; runtime.run_step records it),
    else this job's settings."""
    return stats.get("preprocess", {}).get("input") or {"format": config.input.format, "path": config.input.path}


def run_input_fingerprint(config: RecsConfig, stats: dict, products: DataFrame, events: DataFrame) -> str:
    """The schema is the raw input's when the preprocess step records it (`input_schema`),
    else that of the tables it made from the input."""
    schema = stats.get("preprocess", {}).get("input_schema") or (
        f"products {products.schema.simpleString()}; events {events.schema.simpleString()}"
    )
    source = run_input(config, stats)
    return input_fingerprint(source["format"], source["path"], str(schema))


def previous_of_same_input(spark: SparkSession, paths: RunPaths, fingerprint: str) -> dict | None:
    """The newest complete published version of another run made from the same input, with its NDCG."""
    folder = f"{paths.published}/versions"
    for name, _ in sorted(manifests(spark, paths).items(), key=lambda item: item[1], reverse=True):
        summary = f"{folder}/{name}/run_summary"
        if not io.exists(spark, summary):
            continue
        first = spark.read.parquet(summary).first()
        row = first.asDict() if first else {}
        if row.get("input_fingerprint") != fingerprint or row.get("run_id") == paths.run_id:
            continue
        return {"version": name, "ndcg": published_ndcg(read_optional(spark, f"{folder}/{name}/run_metrics"))}
    return None


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
    spark: SparkSession, run_id: str, version: str, stats: dict, config: RecsConfig, gate: dict, fingerprint: str
) -> DataFrame:
    """One row that says what this version is and how it was made."""
    row = {
        "run_id": run_id,
        "version": version,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "input_format": run_input(config, stats)["format"],
        "input_path": run_input(config, stats)["path"],
        "input_fingerprint": fingerprint,
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
        f"ndcg_at_{config.evaluation.eval_k}": gate["ndcg"],
        "gate_passed": gate["passed"],
        "gate_overridden": gate["overridden"],
        "gate_message": gate["message"],
        "gate_compared_with": gate["compared_with"] or "",
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


def manifests(spark: SparkSession, paths: RunPaths) -> dict[str, str]:
    """Complete versions (those with a manifest) and when each was written."""
    folder = f"{paths.published}/versions"
    found = {}
    for name in io.list_dir(spark, folder):
        manifest = f"{folder}/{name}/{MANIFEST}"
        if io.exists(spark, manifest):
            found[name] = io.read_json(spark, manifest)["published_at"]
    return found


def clean_leftovers(spark: SparkSession, config: RecsConfig, paths: RunPaths, keep: set[str]) -> list[str]:
    """What an interrupted publish left: version folders without a manifest (a kill during
    the Parquet write), with a database also complete ones it never heard of since it was
    first used (a kill before the swap), and temporary pointer files. Runs under the
    publish lock, so no other publish is writing one; never touches `keep` (served ones)."""
    folder = f"{paths.published}/versions"
    complete = manifests(spark, paths)
    removed = [name for name in io.list_dir(spark, folder) if name not in complete and name not in keep]
    database = postgres.configured_database()
    if database is not None:
        known, first = postgres.known_versions(database, config.publish.database_schema)
        removed += [name for name, at in complete.items() if name not in known and name not in keep
                    and first is not None and datetime.fromisoformat(at) > first]
    for name in removed:
        io.delete(spark, f"{folder}/{name}")
    for name in io.list_dir(spark, paths.published):
        if name.startswith(f".{io.CURRENT_POINTER}.") and name.endswith(".tmp"):
            io.delete(spark, f"{paths.published}/{name}")
            removed.append(name)
    if removed:
        log.info("removed what interrupted publishes left: %s", removed)
    return removed


def prune_versions(spark: SparkSession, paths: RunPaths, keep: int, served: set[str]) -> list[str]:
    """Delete the oldest complete versions beyond `keep`, never one in `served` (what the
    pointer names and what the database serves, which differ only until a retry converges)."""
    folder = f"{paths.published}/versions"
    dated = sorted(((at, name) for name, at in manifests(spark, paths).items()), reverse=True)
    older = [name for _, name in dated if name not in served][max(keep, 0):]
    for name in older:
        io.delete(spark, f"{folder}/{name}")
    return older


def served_by_database(config: RecsConfig) -> tuple[str, str] | None:
    database = postgres.configured_database()
    return postgres.serving(database, config.publish.database_schema) if database else None


def run(spark: SparkSession, config: RecsConfig, paths: RunPaths) -> dict:
    with lock.data_root_lock(spark, config, "publish", f"publish of run {paths.run_id}") as held:
        return publish(spark, config, paths, held)


def publish(spark: SparkSession, config: RecsConfig, paths: RunPaths, held) -> dict:
    previous = io.current_published_run(spark, paths.published)
    served = served_by_database(config)
    cleaned = clean_leftovers(spark, config, paths, {previous, served and served[0]} - {None})
    if served and served[1] == paths.run_id and served[0] != previous and served[0] in manifests(spark, paths):
        # An earlier try of this run swapped the database, then died: finish its pointer.
        log.info("the database already serves %s of this run: switching the pointer to it", served[0])
        return finish(spark, config, paths, held, served[0], previous,
                      {"resumed": True, "database": {"serving": served[0]}, "cleaned": cleaned})

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
    fingerprint = run_input_fingerprint(config, stats, products, events)
    compared = previous_of_same_input(spark, paths, fingerprint)
    # Check: the tables' promises, then the quality gate; the report is written either way.
    problems = check_tables(tables, events, config.recommender.top_n)
    gate = gate_decision(metrics, compared, config)
    log.info("publish gate: %s", gate["message"])
    page = build_report(stats, metrics, tables, gate, paths.run_id, config)
    io.write_text(spark, paths.report, page)
    if problems:
        raise PublishCheckFailed(f"refusing to publish run {paths.run_id}: {'; '.join(problems)}; "
                                 f"report: {paths.report}")
    if not gate["passed"] and not gate["overridden"]:
        raise PublishGateFailed(f"refusing to publish run {paths.run_id}: {gate['message']}; report: {paths.report}")
    if metrics is not None:
        tables["run_metrics"] = spark.createDataFrame(metrics)
    # Load: every table of the version, then its manifest; the database; then the pointer.
    version = new_version_name(spark, paths)
    target = paths.published_version(version)
    tables["run_summary"] = run_summary(spark, paths.run_id, version, stats, config, gate, fingerprint)
    counts = {}
    for name, table in tables.items():
        io.write_table(table, f"{target}/{name}")
        counts[name] = spark.read.parquet(f"{target}/{name}").count()
        fault_point("parquet_write")
    io.write_text(spark, f"{target}/report.html", page)
    published_at = datetime.now(UTC).isoformat(timespec="microseconds")
    io.write_json(spark, f"{target}/{MANIFEST}", {"run_id": paths.run_id, "published_at": published_at, "rows": counts})
    database = None
    if postgres.configured_database() is not None:
        held.check()
        try:
            database = postgres.publish_if_configured(spark, config, paths, version, target)
        except Exception as err:
            # A lost COMMIT acknowledgement raises too: if the swap did commit, this version
            # is served and must be finished, not deleted. Else leave the folder to the
            # next publish's clean-up (no reader can be using it).
            try:
                committed = (served_by_database(config) or (None,))[0] == version
            except Exception:  # noqa: BLE001 - the database is gone: the original error says why
                committed = False
            if not committed:
                raise
            log.warning("the database swap to %s committed though the client saw an error (%s); going on",
                        version, one_line(str(err)))
            database = {"serving": version}
    log.info("publish gate: %s; run report: %s", gate["message"], paths.report)
    return finish(spark, config, paths, held, version, previous,
                  {"rows": counts, "database": database, "gate": gate, "report": f"{target}/report.html",
                   "input_fingerprint": fingerprint, "cleaned": cleaned})


def finish(spark: SparkSession, config: RecsConfig, paths: RunPaths, held, version: str, previous: str | None,
           result: dict) -> dict:
    """Switch the pointer to `version` (the database already serves it), then prune."""
    held.check()
    pointer = io.switch_pointer(spark, paths.published, version)
    pruned = prune_versions(spark, paths, config.publish.keep_versions, {version})
    log.info("published version %s (pointer %s; previous: %s); pruned %s", version, pointer, previous, pruned)
    return {"version": version, "path": paths.published_version(version), "previous_version": previous,
            "pruned": pruned, **result}


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
    sample = (clusters if total <= REPORT_MAP_POINTS
              else clusters.sample(REPORT_MAP_POINTS / total, seed=config.runtime.seed))
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
        "k": stats["cluster"]["k"], "eval_k": config.evaluation.eval_k,
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
