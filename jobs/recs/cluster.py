"""Step 4: K-means on the PCA coordinates, k chosen by silhouette unless fixed."""

from __future__ import annotations

import logging

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.clustering import KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recs import io
from recs.concurrency import concurrently
from recs.config import RecsConfig
from recs.io import RunPaths, write_table
from recs.ordering import fixed_order

log = logging.getLogger(__name__)

# Silhouette is computed on a sample: it is quadratic-ish in cost and a few thousand
# points estimate it well.
SILHOUETTE_SAMPLE = 20_000
MAX_CANDIDATES = 10


def candidate_ks(k_min: int, k_max: int, products: int) -> list[int]:
    """At most MAX_CANDIDATES values spread over [k_min, k_max], each < products."""
    k_max = min(k_max, products - 1)
    k_min = min(k_min, k_max)
    if k_max < 2:
        raise ValueError(f"need at least 3 products to cluster, got {products}")
    span = k_max - k_min
    step = max(1, -(-span // (MAX_CANDIDATES - 1)))
    ks = list(range(k_min, k_max + 1, step))
    return ks if ks[-1] == k_max else [*ks, k_max]


def kmeans_pipeline(k: int, seed: int) -> Pipeline:
    return Pipeline(
        stages=[
            VectorAssembler(inputCols=["pca_vector"], outputCol="features"),
            KMeans(k=k, seed=seed, featuresCol="features", predictionCol="cluster", maxIter=40),
        ]
    )


def silhouette(model: PipelineModel, points: DataFrame) -> float:
    evaluator = ClusteringEvaluator(featuresCol="features", predictionCol="cluster", metricName="silhouette")
    return float(evaluator.evaluate(model.transform(points)))


def choose_k(points: DataFrame, ks: list[int], seed: int) -> tuple[PipelineModel, dict[int, float]]:
    """Fit each candidate k and keep the model with the best silhouette (ties: smaller k).
    The fits are seeded and independent: a few run at once (recs/concurrency.py), filling
    the gaps between K-means' many short iterations (Online Retail, 8 candidates: the step
    took 61 s instead of 69 s)."""

    def fit(k: int) -> tuple[PipelineModel, float]:
        model = kmeans_pipeline(k, seed).fit(points)
        return model, silhouette(model, points)

    fits = dict(zip(ks, concurrently(fit, ks), strict=True))
    best = max(fits, key=lambda k: (fits[k][1], -k))
    return fits[best][0], {k: score for k, (_, score) in fits.items()}


def assign_clusters(model: PipelineModel, points: DataFrame) -> DataFrame:
    """(product_id, pca, pca_vector) -> (product_id, cluster, pca)."""
    return model.transform(points).select("product_id", F.col("cluster").cast("int"), "pca")


def run(spark: SparkSession, config: RecsConfig, paths: RunPaths) -> dict:
    points = fixed_order(
        io.read_table(spark, paths.table("pca")).withColumn("pca_vector", array_to_vector("pca")),
        ["product_id"], config.runtime.shuffle_partitions,
    ).cache()
    products = points.count()
    if config.clustering.k:
        k, curve = min(config.clustering.k, products - 1), {}
        log.info("k fixed at %d", k)
        model = kmeans_pipeline(k, config.runtime.seed).fit(points)
    else:
        ks = candidate_ks(config.clustering.k_min, config.clustering.k_max, products)
        fraction = min(1.0, SILHOUETTE_SAMPLE / products)
        sample = points.sample(fraction=fraction, seed=config.runtime.seed).cache() if fraction < 1 else points
        model, curve = choose_k(sample, ks, config.runtime.seed)
        k = model.stages[-1].getK()
        log.info("silhouette by k: %s; chose k=%d", {k: round(s, 4) for k, s in curve.items()}, k)
        if sample is not points:  # the chosen model saw only the sample
            model = kmeans_pipeline(k, config.runtime.seed).fit(points)
    model.write().overwrite().save(paths.model("kmeans"))
    clusters = assign_clusters(model, points)
    write_table(clusters, paths.table("product_clusters"))
    sizes = {
        int(row["cluster"]): int(row["count"])
        for row in spark.read.parquet(paths.table("product_clusters")).groupBy("cluster").count().collect()
    }
    return {
        "k": k,
        "k_fixed": bool(config.clustering.k),
        "silhouette_by_k": {str(key): value for key, value in curve.items()},
        "silhouette": curve[k] if k in curve else silhouette(model, points),
        "cluster_sizes": {str(key): sizes[key] for key in sorted(sizes)},
    }
