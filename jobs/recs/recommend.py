"""Step 5: similar products and per-user recommendations.

The model is an item-item graph walked from each user's history:
- behaviour neighbours: item-kNN on co-occurrence (cosine over the users who
  interacted with both products);
- content neighbours: cosine between the product text embeddings, computed by
  multiplying blocks of the catalog against the broadcast catalog matrix (never an
  all-pairs cross join of rows);
- a user's history is weighted by event type (view < cart < purchase) and decays
  with age (half-life), so recent intent counts most;
- users who run out of candidates get products popular in their favourite cluster,
  then products popular right now; products already bought are never recommended.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recs import io
from recs.config import RecsConfig
from recs.embeddings.base import normalise_rows
from recs.io import RunPaths, write_table

log = logging.getLogger(__name__)

NEIGHBOUR_SCHEMA = "product_id string, neighbour_id string, score double"
EVENT_VERBS = {"purchase": "bought", "add_to_cart": "added to your cart", "view": "viewed"}


def user_item_weights(events: DataFrame, config: RecsConfig) -> DataFrame:
    """(user_id, product_id, weight, purchased, last_ts, strongest_event) per pair.

    weight = sum over the pair's events of type weight x 0.5 ** (age / half-life),
    age measured from the newest event in the data, so old logs replay the same.
    """
    type_weight = F.coalesce(
        *[F.when(F.col("event_type") == name, F.lit(w)) for name, w in config.event_weights.items()]
    )
    newest = events.agg(F.max("ts").alias("newest"))
    age_days = (F.col("newest").cast("long") - F.col("ts").cast("long")) / 86400.0
    decayed = events.crossJoin(F.broadcast(newest)).withColumn(
        "event_weight", type_weight * F.pow(F.lit(0.5), age_days / F.lit(config.recency_half_life_days))
    )
    return decayed.groupBy("user_id", "product_id").agg(
        F.sum("event_weight").alias("weight"),
        F.max((F.col("event_type") == "purchase").cast("int")).cast("boolean").alias("purchased"),
        F.max("ts").alias("last_ts"),
        F.max_by("event_type", type_weight).alias("strongest_event"),
    )


def recent_history(user_items: DataFrame, limit: int) -> DataFrame:
    """Each user's `limit` most recent products: bounds the work per heavy user."""
    order = Window.partitionBy("user_id").orderBy(F.col("last_ts").desc(), F.col("product_id"))
    return user_items.withColumn("_recency", F.row_number().over(order)).where(F.col("_recency") <= limit).drop(
        "_recency"
    )


def top_per_product(pairs: DataFrame, top_m: int) -> DataFrame:
    order = Window.partitionBy("product_id").orderBy(F.col("score").desc(), F.col("neighbour_id"))
    return pairs.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= top_m)


def cooccurrence_neighbours(history: DataFrame, top_m: int) -> DataFrame:
    """Item-kNN: cosine of two products' user sets, top_m neighbours per product."""
    pairs_of = history.select("user_id", "product_id")
    users_per_product = pairs_of.groupBy("product_id").agg(F.count("*").alias("users"))
    left, right = pairs_of.alias("a"), pairs_of.alias("b")
    together = (
        left.join(right, (F.col("a.user_id") == F.col("b.user_id")) & (F.col("a.product_id") != F.col("b.product_id")))
        .groupBy(F.col("a.product_id").alias("product_id"), F.col("b.product_id").alias("neighbour_id"))
        .agg(F.count("*").alias("both"))
    )
    scored = (
        together.join(users_per_product.alias("na"), "product_id")
        .join(users_per_product.withColumnRenamed("product_id", "neighbour_id").alias("nb"), "neighbour_id")
        .select(
            "product_id",
            "neighbour_id",
            (F.col("both") / F.sqrt(F.col("na.users") * F.col("nb.users"))).alias("score"),
        )
    )
    return top_per_product(scored, top_m).drop("rank")


def content_neighbours(spark: SparkSession, embeddings: DataFrame, top_m: int) -> DataFrame:
    """Top-m cosine neighbours of every product from its text embedding.

    The catalog matrix (products x dimensions, float32: 150 MB for 100k products of
    384 dimensions) is broadcast once; each task multiplies its block of products
    against it and keeps the best m, so memory stays O(catalog) per executor.
    """
    catalog = embeddings.select("product_id", "embedding").toPandas()
    ids = catalog["product_id"].to_numpy()
    matrix = normalise_rows(np.stack(catalog["embedding"].to_numpy())) if len(catalog) else np.zeros((0, 1))
    shared = spark.sparkContext.broadcast((ids, matrix))
    keep = min(top_m, max(len(ids) - 1, 0))

    def neighbours(blocks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        all_ids, all_vectors = shared.value
        position = pd.Index(all_ids)
        for block in blocks:
            if block.empty or keep == 0:
                continue
            scores = normalise_rows(np.stack(block["embedding"].to_numpy())) @ all_vectors.T
            scores[np.arange(len(block)), position.get_indexer(block["product_id"])] = -np.inf
            best = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
            best_scores = np.take_along_axis(scores, best, axis=1)
            yield pd.DataFrame(
                {
                    "product_id": np.repeat(block["product_id"].to_numpy(), keep),
                    "neighbour_id": all_ids[best].ravel(),
                    "score": best_scores.ravel().astype("float64"),
                }
            )

    return embeddings.select("product_id", "embedding").mapInPandas(neighbours, NEIGHBOUR_SCHEMA)


def similar_products(content: DataFrame, top_n: int) -> DataFrame:
    """(product_id, rank, similar_product_id, score): the published table."""
    ranked = top_per_product(content, top_n)
    return ranked.select("product_id", "rank", F.col("neighbour_id").alias("similar_product_id"), "score")


def item_graph(behaviour: DataFrame, content: DataFrame, content_weight: float) -> DataFrame:
    """Edges product -> neighbour scored by behaviour plus weighted text similarity."""
    weighted_content = content.withColumn("score", F.col("score") * F.lit(content_weight))
    return behaviour.unionByName(weighted_content).groupBy("product_id", "neighbour_id").agg(
        F.sum("score").alias("score")
    )


def score_candidates(history: DataFrame, graph: DataFrame) -> DataFrame:
    """(user_id, product_id, score, reason_product_id, reason_event): not yet bought.

    A candidate's score is the sum over the user's history of (normalised history
    weight x edge score); the history item that contributed most is its reason.
    """
    normalised = history.withColumn(
        "share", F.col("weight") / F.sum("weight").over(Window.partitionBy("user_id"))
    )
    contributions = normalised.join(graph, "product_id").select(
        "user_id",
        F.col("neighbour_id").alias("candidate_id"),
        (F.col("share") * F.col("score")).alias("contribution"),
        F.col("product_id").alias("source_id"),
        F.col("strongest_event").alias("source_event"),
    )
    scored = contributions.groupBy("user_id", "candidate_id").agg(
        F.sum("contribution").alias("score"),
        F.max_by(F.struct("source_id", "source_event"), "contribution").alias("reason"),
    )
    return scored.select(
        "user_id",
        F.col("candidate_id").alias("product_id"),
        "score",
        F.col("reason.source_id").alias("reason_product_id"),
        F.col("reason.source_event").alias("reason_event"),
    )


def popularity(user_items: DataFrame) -> DataFrame:
    """(product_id, popularity): the decayed interest of all users, so trending wins."""
    return user_items.groupBy("product_id").agg(F.sum("weight").alias("popularity"))


def favourite_clusters(user_items: DataFrame, clusters: DataFrame) -> DataFrame:
    """(user_id, cluster): the cluster holding most of each user's weight."""
    by_cluster = user_items.join(clusters, "product_id").groupBy("user_id", "cluster").agg(F.sum("weight").alias("w"))
    order = Window.partitionBy("user_id").orderBy(F.col("w").desc(), F.col("cluster"))
    return by_cluster.withColumn("_r", F.row_number().over(order)).where(F.col("_r") == 1).select("user_id", "cluster")


def fallback_candidates(
    users: DataFrame, popular: DataFrame, clusters: DataFrame, favourites: DataFrame, depth: int
) -> DataFrame:
    """For `users`: the `depth` most popular products of their favourite cluster, then
    overall; `tier` orders them after personal candidates."""
    ranked_in_cluster = popular.join(clusters, "product_id").withColumn(
        "_r", F.row_number().over(Window.partitionBy("cluster").orderBy(F.col("popularity").desc(), "product_id"))
    )
    in_cluster = (
        users.join(favourites, "user_id")
        .join(ranked_in_cluster.where(F.col("_r") <= depth), "cluster")
        .select("user_id", "product_id", F.col("popularity").alias("score"), F.lit(1).alias("tier"))
    )
    overall = users.crossJoin(
        F.broadcast(popular.orderBy(F.col("popularity").desc(), "product_id").limit(depth))
    ).select("user_id", "product_id", F.col("popularity").alias("score"), F.lit(2).alias("tier"))
    return in_cluster.unionByName(overall)


def rank_recommendations(candidates: DataFrame, bought: DataFrame, top_n: int) -> DataFrame:
    """Drop bought products and duplicates, keep each user's best top_n by (tier, score)."""
    fresh = candidates.join(bought, ["user_id", "product_id"], "left_anti")
    best_per_product = Window.partitionBy("user_id", "product_id").orderBy("tier", F.col("score").desc())
    unique = fresh.withColumn("_r", F.row_number().over(best_per_product)).where(F.col("_r") == 1).drop("_r")
    order = Window.partitionBy("user_id").orderBy("tier", F.col("score").desc(), "product_id")
    return unique.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= top_n)


def explain(ranked: DataFrame, products: DataFrame) -> DataFrame:
    """Add a human-readable `reason`, as a storefront would show it."""
    titles = products.select(F.col("product_id").alias("reason_product_id"), F.col("title").alias("_title"))
    verb = F.coalesce(*[F.when(F.col("reason_event") == e, F.lit(v)) for e, v in EVENT_VERBS.items()])
    reason = (
        F.when(
            F.col("tier") == 0,
            F.concat(F.lit("because you "), verb, F.lit(": "), F.coalesce("_title", "reason_product_id")),
        )
        .when(F.col("tier") == 1, F.lit("popular in a category you like"))
        .otherwise(F.lit("popular right now"))
    )
    return ranked.join(F.broadcast(titles), "reason_product_id", "left").select(
        "user_id", "rank", "product_id", "score", reason.alias("reason"),
        F.when(F.col("tier") == 0, F.col("reason_product_id")).alias("reason_product_id"),
    )


def recommend_for_users(
    user_items: DataFrame, graph: DataFrame, clusters: DataFrame, products: DataFrame, config: RecsConfig
) -> DataFrame:
    history = recent_history(user_items, config.max_history_for_pairs)
    personal = score_candidates(history, graph).withColumn("tier", F.lit(0))
    bought = user_items.where("purchased").select("user_id", "product_id")
    ranked = rank_recommendations(personal, bought, config.top_n)

    # Only users still short of top_n need fallbacks; they may have bought many
    # popular products, so look deeper than top_n.
    complete = ranked.groupBy("user_id").count().where(F.col("count") >= config.top_n).select("user_id")
    needs_fill = user_items.select("user_id").distinct().join(complete, "user_id", "left_anti")
    bought_counts = bought.groupBy("user_id").count()
    depth = config.top_n + (bought_counts.agg(F.max("count")).first()[0] or 0)
    fill = fallback_candidates(
        needs_fill, popularity(user_items), clusters, favourite_clusters(user_items, clusters), depth
    ).withColumns({"reason_product_id": F.lit(None).cast("string"), "reason_event": F.lit(None).cast("string")})
    combined = ranked.drop("rank").unionByName(fill)
    return explain(rank_recommendations(combined, bought, config.top_n), products)


def popular_products(user_items: DataFrame, top_n: int) -> DataFrame:
    """(rank, product_id, score): what to show users with no history."""
    order = Window.orderBy(F.col("popularity").desc(), "product_id")
    return (
        popularity(user_items)
        .orderBy(F.col("popularity").desc(), "product_id")
        .limit(top_n)
        .withColumn("rank", F.row_number().over(order))
        .select("rank", "product_id", F.col("popularity").alias("score"))
    )


def run(spark: SparkSession, config: RecsConfig, paths: RunPaths) -> dict:
    # Extract
    events = io.read_table(spark, paths.table("events"))
    products = io.read_table(spark, paths.table("products"))
    embeddings = io.read_table(spark, paths.table("embeddings"))
    clusters = io.read_table(spark, paths.table("product_clusters")).select("product_id", "cluster")
    # Transform
    user_items = user_item_weights(events, config).cache()
    content = content_neighbours(spark, embeddings, config.neighbours_per_product).cache()
    behaviour = cooccurrence_neighbours(
        recent_history(user_items, config.max_history_for_pairs), config.neighbours_per_product
    )
    graph = item_graph(behaviour, content, config.content_weight).cache()
    recommendations = recommend_for_users(user_items, graph, clusters, products, config)
    # Load
    write_table(similar_products(content, config.top_n), paths.table("similar_products"))
    write_table(recommendations, paths.table("user_recommendations"))
    write_table(popular_products(user_items, config.top_n), paths.table("popular_products"))

    written = spark.read.parquet(paths.table("user_recommendations"))
    by_reason = {row["kind"]: row["count"] for row in written.groupBy(
        F.when(F.col("reason_product_id").isNotNull(), "personal").otherwise(F.col("reason")).alias("kind")
    ).count().collect()}
    return {
        "users": user_items.select("user_id").distinct().count(),
        "user_recommendations": written.count(),
        "recommendations_by_reason": by_reason,
        "graph_edges": graph.count(),
        "catalog_coverage": written.select("product_id").distinct().count() / max(products.count(), 1),
    }
