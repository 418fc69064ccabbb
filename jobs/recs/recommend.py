"""Step 5: similar products and per-user recommendations.

Similar products are the nearest text embeddings: up to `exact_neighbours_max` products
exactly, by multiplying blocks of the catalog against the broadcast catalog matrix
(never an all-pairs cross join of rows); above it from an approximate index built once
on the driver and shipped to the tasks as a file (`recs/neighbours.py`), since exact
costs products^2 x dimensions: hours for a million products. User recommendations come
from the blended recommender of `recs/scoring.py`, its weights tuned on a validation
split of the data (`recs/tuning.py`); each Spark task scores a block of whole users
against the broadcast model and the customers it reads from the file Spark wrote for it
(`recs.model.ship_customers`).
Products a user already bought are never recommended.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recs import io, neighbours
from recs.config import RecommenderSettings, RecsConfig, RuntimeSettings
from recs.embeddings.base import normalise_rows
from recs.io import RunPaths, write_table
from recs.model import catalog_index, content_edges, in_user_blocks, scoring_history, top_per_product, user_item_weights
from recs.scoring import SIMILAR_CUSTOMERS, USERS_PER_BLOCK, Model, recommend_block, with_customers
from recs.splits import EVALUATION_TRAIN, protocol_for
from recs.tuning import tuned_model

log = logging.getLogger(__name__)

# Content neighbours: scores computed at once per block (float32: 100 MB).
SCORES_PER_BLOCK = 25_000_000
# Approximate neighbours: queries per index search (x 51 results: small frames).
QUERIES_PER_SEARCH = 4096
NEIGHBOUR_SCHEMA = "product_id string, neighbour_id string, score double"
RECOMMENDATION_SCHEMA = (
    "user_id string, rank int, product_id string, score double, reason_product_id string, reason_event string"
)
EVENT_VERBS = {"purchase": "bought", "add_to_cart": "added to your cart", "view": "viewed"}


def content_neighbours(
    spark: SparkSession,
    embeddings: DataFrame,
    top_m: int,
    scores_per_block: int = SCORES_PER_BLOCK,
    exact_max: int = RecommenderSettings.exact_neighbours_max,
    seed: int = RuntimeSettings.seed,
) -> DataFrame:
    """Top-m cosine neighbours of every product from its text embedding: exact up to
    `exact_max` products, from the approximate index above (`approximate_neighbours`)."""
    if embeddings.count() > exact_max:
        return approximate_neighbours(spark, embeddings, top_m, seed)
    return exact_neighbours(spark, embeddings, top_m, scores_per_block)


def exact_neighbours(
    spark: SparkSession, embeddings: DataFrame, top_m: int, scores_per_block: int = SCORES_PER_BLOCK
) -> DataFrame:
    """Top-m cosine neighbours of every product, exactly.

    The catalog matrix (products x dimensions, float32: 150 MB for 100k products of
    384 dimensions) is broadcast once; each task multiplies its block of products
    against it and keeps the best m, so memory stays O(catalog) per executor. A block
    holds at most `scores_per_block` scores: an Arrow batch of 10,000 products against
    a catalog of 100k would be a 4 GB matrix, and its sort a second one.
    """
    # In id order: products with the same text tie, and which of them a product keeps must
    # not depend on the order the table's files arrive in.
    catalog = embeddings.select("product_id", "embedding").orderBy("product_id").toPandas()
    ids = catalog["product_id"].to_numpy()
    matrix = normalise_rows(np.stack(catalog["embedding"].to_numpy())) if len(catalog) else np.zeros((0, 1))
    shared = spark.sparkContext.broadcast((ids, matrix))
    keep = min(top_m, max(len(ids) - 1, 0))

    def neighbours(blocks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        all_ids, all_vectors = shared.value
        position = pd.Index(all_ids)
        rows_per_block = max(1, scores_per_block // max(len(all_ids), 1))
        for batch in blocks:
            for start in range(0, len(batch) if keep else 0, rows_per_block):
                block = batch.iloc[start:start + rows_per_block]
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


def approximate_neighbours(spark: SparkSession, embeddings: DataFrame, top_m: int,
                           seed: int = RuntimeSettings.seed) -> DataFrame:
    """Top-m cosine neighbours of every product from an approximate index.

    The driver reads the catalog in id order through Arrow (the same matrix, so the same
    index, whatever order the table's files arrive in), builds the index
    (`recs/neighbours.py`: O(products x dimensions), 1 GB for a million products of 256
    dimensions) and writes it to a file that `addFile` ships to every executor: on a
    standalone cluster they do not share the driver's disk. Each Python worker reads it
    once and queries its tasks' products in blocks; scores are the exact cosines of the
    candidates found. Same schema and rows (products x m) as `exact_neighbours`.
    Reproducible as far as faiss allows: a seeded index built with a fixed number of
    threads, answers independent of the partitioning (`recs/neighbours.py` says which
    bits may still differ between machines).
    """
    table = embeddings.select("product_id", "embedding").orderBy("product_id").toArrow()
    ids = table.column("product_id").to_numpy(zero_copy_only=False)
    keep = min(top_m, max(len(ids) - 1, 0))
    lists, probes = neighbours.index_shape(len(ids))
    index = neighbours.build_index(normalise_rows(neighbours.arrow_matrix(table.column("embedding"))), lists, seed)
    del table
    path = os.path.join(_scratch_folder(), f"content-{uuid.uuid4().hex}.faiss")
    neighbours.write_index(index, path)
    log.info("content neighbours: approximate, %d products, %d lists, %d probed, index %.0f MB",
             len(ids), lists, probes, os.path.getsize(path) / 2**20)
    del index
    spark.sparkContext.addFile(path)
    name = os.path.basename(path)
    shared_ids = spark.sparkContext.broadcast(ids)

    def query(blocks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from pyspark import SparkFiles

        index = neighbours.read_index(SparkFiles.get(name))
        all_ids = shared_ids.value
        position = pd.Index(all_ids)
        for batch in blocks:
            for start in range(0, len(batch) if keep else 0, QUERIES_PER_SEARCH):
                block = batch.iloc[start:start + QUERIES_PER_SEARCH]
                vectors = normalise_rows(np.stack(block["embedding"].to_numpy()))
                rows, scores = neighbours.search(
                    index, vectors, position.get_indexer(block["product_id"]), keep, probes)
                yield pd.DataFrame(
                    {
                        "product_id": np.repeat(block["product_id"].to_numpy(), keep),
                        "neighbour_id": all_ids[rows].ravel(),
                        "score": scores.ravel().astype("float64"),
                    }
                )

    return embeddings.select("product_id", "embedding").mapInPandas(query, NEIGHBOUR_SCHEMA)


def _scratch_folder() -> str:
    """A folder of this driver process for the index files, removed when it exits (the
    tasks that read an index run before: `addFile` serves the file from here)."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = tempfile.mkdtemp(prefix="recs-neighbours-")
        atexit.register(shutil.rmtree, _SCRATCH, True)
    return _SCRATCH


_SCRATCH: str | None = None


def similar_products(content: DataFrame, top_n: int) -> DataFrame:
    """(product_id, rank, similar_product_id, score): the published table."""
    ranked = top_per_product(content, top_n)
    return ranked.select("product_id", "rank", F.col("neighbour_id").alias("similar_product_id"), "score")


def score_users(spark: SparkSession, model: Model, history: DataFrame, top_n: int,
                users_per_block: int = USERS_PER_BLOCK) -> DataFrame:
    """Top-n per user, each Spark task scoring blocks of whole users against the broadcast
    model (and the customers it reads from the model's `CustomerFile`)."""
    shared = spark.sparkContext.broadcast(model)
    users = history.select("user_id").distinct().count()

    def score(block: pd.DataFrame) -> pd.DataFrame:
        from pyspark import SparkFiles

        return recommend_block(with_customers(shared.value, SparkFiles.get), block, top_n)

    return in_user_blocks(history, users, score, RECOMMENDATION_SCHEMA, users_per_block)


def explain(recommendations: DataFrame, products: DataFrame) -> DataFrame:
    """Add a human-readable `reason`, as a storefront would show it."""
    titles = products.select(F.col("product_id").alias("reason_product_id"), F.col("title").alias("_title"))
    verb = F.coalesce(*[F.when(F.col("reason_event") == e, F.lit(v)) for e, v in EVENT_VERBS.items()])
    reason = F.when(
        F.col("reason_product_id").isNotNull(),
        F.concat(F.lit("because you "), verb, F.lit(": "), F.coalesce("_title", "reason_product_id")),
    ).when(F.col("reason_event") == SIMILAR_CUSTOMERS, F.lit("popular with customers like you")).otherwise(
        F.lit("popular right now"))
    return recommendations.join(F.broadcast(titles), "reason_product_id", "left").select(
        "user_id", "rank", "product_id", "score", reason.alias("reason"), "reason_product_id"
    )


def popular_products(model: Model, top_n: int) -> pd.DataFrame:
    """(rank, product_id, score): trending products, for users with no history."""
    best = np.argsort(-model.trend, kind="stable")[:top_n]
    return pd.DataFrame({"rank": np.arange(1, len(best) + 1), "product_id": model.index.ids[best],
                         "score": model.trend[best].astype(float)})


def run(spark: SparkSession, config: RecsConfig, paths: RunPaths) -> dict:
    # Extract
    events = io.read_table(spark, paths.table("events")).cache()
    products = io.read_table(spark, paths.table("products"))
    embeddings = io.read_table(spark, paths.table("embeddings"))
    clusters = io.read_table(spark, paths.table("product_clusters")).select("product_id", "cluster").toPandas()
    settings = config.recommender
    # Transform: the content neighbours are kept for the evaluation step too.
    write_table(
        content_neighbours(spark, embeddings, settings.neighbours_per_product,
                           exact_max=settings.exact_neighbours_max, seed=config.runtime.seed),
        paths.table("content_neighbours"),
    )
    content = spark.read.parquet(paths.table("content_neighbours"))
    index = catalog_index(products)
    with io.work_folder(spark, paths, "recommend") as work:
        model, tuning = tuned_model(events, index, content_edges(content, index),
                                    clusters, config, protocol_for(spark, paths), work, paths.counts(EVALUATION_TRAIN))
        # Read three times (user count, scoring, stats): aggregate the event log once.
        history = scoring_history(user_item_weights(events, settings)).cache()
        recommendations = explain(score_users(spark, model, history, settings.top_n), products)
        # Load
        write_table(similar_products(content, settings.top_n), paths.table("similar_products"))
        write_table(recommendations, paths.table("user_recommendations"))
        write_table(spark.createDataFrame(popular_products(model, settings.top_n)), paths.table("popular_products"))

    written = spark.read.parquet(paths.table("user_recommendations"))
    personal = written.where(F.col("reason_product_id").isNotNull()).count()
    total = written.count()
    return {
        "users": history.select("user_id").distinct().count(),
        "user_recommendations": total,
        "personal_share": personal / max(total, 1),
        "catalog_coverage": written.select("product_id").distinct().count() / max(len(index), 1),
        "model": {name: int(matrix.nnz) for name, matrix in model.edges.items()},
        "tuning": tuning,
    }
