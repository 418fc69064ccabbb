"""Step 3: centre the product embeddings and project them on their principal components."""

from __future__ import annotations

import logging

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import PCA, StandardScaler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recs import io
from recs.config import RecsConfig
from recs.io import RunPaths, write_table
from recs.ordering import fixed_order

log = logging.getLogger(__name__)


def effective_dimensions(requested: int, embedding_size: int, products: int) -> int:
    """PCA cannot have more components than dimensions or (usefully) than rows."""
    return max(1, min(requested, embedding_size, products - 1))


def fit_pca(embeddings: DataFrame, dimensions: int) -> PipelineModel:
    """Centred (not scaled: all embedding axes share one unit) PCA."""
    vectors = embeddings.withColumn("embedding_vector", array_to_vector("embedding"))
    pipeline = Pipeline(
        stages=[
            StandardScaler(inputCol="embedding_vector", outputCol="centred", withMean=True, withStd=False),
            PCA(k=dimensions, inputCol="centred", outputCol="pca_vector"),
        ]
    )
    return pipeline.fit(vectors)


def project(model: PipelineModel, embeddings: DataFrame) -> DataFrame:
    """(product_id, embedding) -> (product_id, pca: array<double>)."""
    vectors = embeddings.withColumn("embedding_vector", array_to_vector("embedding"))
    return model.transform(vectors).select("product_id", vector_to_array("pca_vector").alias("pca"))


def explained_variance(model: PipelineModel) -> list[float]:
    return [float(v) for v in model.stages[-1].explainedVariance]


def run(spark: SparkSession, config: RecsConfig, paths: RunPaths) -> dict:
    embeddings = fixed_order(io.read_table(spark, paths.table("embeddings")), ["product_id"],
                             config.runtime.shuffle_partitions)
    embeddings = embeddings.cache()
    products = embeddings.count()
    embedding_size = len(embeddings.select(F.col("embedding")).first()["embedding"])
    dimensions = effective_dimensions(config.clustering.pca_dimensions, embedding_size, products)
    if dimensions != config.clustering.pca_dimensions:
        log.warning("pca_dimensions %d reduced to %d (embedding size %d, %d products)",
                    config.clustering.pca_dimensions, dimensions, embedding_size, products)
    model = fit_pca(embeddings, dimensions)
    model.write().overwrite().save(paths.model("pca"))
    write_table(project(model, embeddings), paths.table("pca"))
    variance = explained_variance(model)
    log.info("PCA to %d dimensions keeps %.1f%% of the variance", dimensions, 100 * sum(variance))
    return {
        "products": products,
        "embedding_size": embedding_size,
        "dimensions": dimensions,
        "explained_variance": variance,
        "explained_variance_total": sum(variance),
    }
