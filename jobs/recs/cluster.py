"""Step 4: K-means on the PCA coordinates, k chosen by silhouette on a sample unless fixed."""

from __future__ import annotations

import logging

import numpy as np
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.clustering import KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from sklearn.cluster import KMeans as SkKMeans

from recs import io
from recs.config import RecsConfig
from recs.io import RunPaths, write_table
from recs.ordering import fixed_order, seeded_sample

log = logging.getLogger(__name__)

# k is chosen on a sample of the products: a few thousand points estimate the silhouette
# well, and the search stays bounded whatever the catalog.
K_SAMPLE = 10_000
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


def choose_k(sample: np.ndarray, ks: list[int], seed: int) -> tuple[int, dict[int, float]]:
    """(the k with the best silhouette, ties to the smaller; the silhouette of each k) of
    seeded K-means fits on `sample` (rows of points), by scikit-learn on the driver.

    The search only compares k, on a bounded sample; the model the run keeps is Spark's,
    fitted on every product (`run`). Spark's K-means runs a job per iteration: on
    Online Retail (3,822 products) the search of 8 values took 47 s in Spark fits."""
    curve = {k: squared_silhouette(sample, SkKMeans(n_clusters=k, random_state=seed, n_init=3).fit_predict(sample))
             for k in ks}
    return max(curve, key=lambda k: (curve[k], -k)), curve


def squared_silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    """The mean silhouette with squared Euclidean distances: Spark's `ClusteringEvaluator`'s
    and scikit-learn's `silhouette_score(metric="sqeuclidean")`, exactly, from each
    cluster's size, sum and sum of squared norms (as Spark computes it): O(points x
    clusters), where scikit-learn's pairwise distances cost points squared (a minute and
    a half for 8 values of k on 10,000 points)."""
    _, labels = np.unique(labels, return_inverse=True)
    sizes = np.bincount(labels).astype(float)
    if len(sizes) < 2:
        return 0.0
    sums = np.zeros((len(sizes), points.shape[1]))
    np.add.at(sums, labels, points)
    norms = np.einsum("ij,ij->i", points, points)
    # Each point's summed squared distance to every cluster's points.
    totals = norms[:, None] * sizes - 2 * points @ sums.T + np.bincount(labels, weights=norms)
    own = (np.arange(len(points)), labels)
    within = totals[own] / np.maximum(sizes[labels] - 1, 1)
    means = totals / sizes
    means[own] = np.inf
    nearest = means.min(axis=1)
    larger = np.maximum(within, nearest)
    scores = np.divide(nearest - within, larger, out=np.zeros_like(larger), where=larger > 0)
    return float(np.where(sizes[labels] > 1, scores, 0.0).mean())


def sample_points(points: DataFrame, size: int, seed: int) -> np.ndarray:
    """At most `size` of `points`' PCA coordinates, in product id order: the products with
    the smallest seeded hash of their id (`recs.ordering.seeded_sample`, as the evaluation draws customers),
    so the same sample whatever order and partitions the table arrives in."""
    rows = seeded_sample(points.select("product_id", "pca"), "product_id", size, seed).toPandas()
    rows = rows.sort_values("product_id", kind="stable")
    return np.stack(rows["pca"].to_numpy()) if len(rows) else np.zeros((0, 0))


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
    else:
        ks = candidate_ks(config.clustering.k_min, config.clustering.k_max, products)
        sample = sample_points(points, K_SAMPLE, config.runtime.seed)
        k, curve = choose_k(sample, ks, config.runtime.seed)
        log.info("silhouette by k (a sample of %d products): %s; chose k=%d", len(sample),
                 {k: round(s, 4) for k, s in curve.items()}, k)
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
        "silhouette": silhouette(model, points),
        "cluster_sizes": {str(key): sizes[key] for key in sorted(sizes)},
    }
