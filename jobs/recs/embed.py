"""Step 2: one vector per product text, each text paid for once.

Vectors live in a content-addressed cache shared by all runs:
`embedding_cache/<space>/`, keyed by sha256(space + text). A run embeds only the
texts whose key is missing, and commits them to the cache chunk by chunk, so a job
killed half way keeps what it already paid for and the retry resumes.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recs import io
from recs.config import RecsConfig
from recs.embeddings import create_backend, resolve_backend_name
from recs.io import RunPaths, write_table

log = logging.getLogger(__name__)

CACHE_SCHEMA = T.StructType(
    [T.StructField("key", T.StringType(), False), T.StructField("embedding", T.ArrayType(T.FloatType()), False)]
)


def cache_folder(paths: RunPaths, space: str) -> str:
    return f"{paths.embedding_cache}/{re.sub(r'[^A-Za-z0-9_.-]+', '_', space)}"


def with_text_keys(products: DataFrame, space: str) -> DataFrame:
    """Add `key`: the cache key of the product's text in this embedding space."""
    return products.withColumn("key", F.sha2(F.concat_ws("\u241f", F.lit(space), F.col("text")), 256))


def missing_texts(keyed_products: DataFrame, cache: DataFrame) -> DataFrame:
    """Distinct (key, text) pairs the cache does not hold yet."""
    return keyed_products.select("key", "text").dropDuplicates(["key"]).join(cache, "key", "left_anti")


def attach_vectors(keyed_products: DataFrame, cache: DataFrame) -> DataFrame:
    return keyed_products.join(cache, "key", "inner").select("product_id", "embedding")


def _embed_partitions(backend_name: str, config_json: str):
    """A mapInPandas function; the backend is created once per Python worker."""

    def embed_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        backend = _worker_backend(backend_name, config_json)
        for batch in batches:
            if batch.empty:
                continue
            vectors = backend.embed(batch["text"].tolist())
            yield pd.DataFrame({"key": batch["key"], "embedding": list(vectors)})

    return embed_batches


_BACKENDS: dict[tuple[str, str], object] = {}


def _worker_backend(backend_name: str, config_json: str):
    key = (backend_name, config_json)
    if key not in _BACKENDS:
        _BACKENDS[key] = create_backend(backend_name, RecsConfig(**json.loads(config_json)))
    return _BACKENDS[key]


def read_cache(spark: SparkSession, folder: str) -> DataFrame:
    if not io.exists(spark, folder) or not io.list_dir(spark, folder):
        return spark.createDataFrame([], CACHE_SCHEMA)
    # Two runs racing may both have added a key; the vectors are equal, keep one.
    return spark.read.schema(CACHE_SCHEMA).parquet(folder).dropDuplicates(["key"])


def run(spark: SparkSession, config: RecsConfig, paths: RunPaths) -> dict:
    backend_name, why = resolve_backend_name(config)
    backend = create_backend(backend_name, config)
    log.info("embedding backend %s (%s), space %s", backend_name, why, backend.space)
    folder = cache_folder(paths, backend.space)

    products = with_text_keys(io.read_table(spark, paths.table("products")).select("product_id", "text"), backend.space)
    products = products.cache()
    missing = missing_texts(products, read_cache(spark, folder)).cache()
    to_embed = missing.count()
    texts_total = products.select("key").distinct().count()
    log.info("%d distinct texts, %d already in the cache, %d to embed", texts_total, texts_total - to_embed, to_embed)

    embed_batches = _embed_partitions(backend_name, config.to_json())
    chunks = max(1, math.ceil(to_embed / config.embedding_chunk_size))
    parallelism = spark.sparkContext.defaultParallelism
    for chunk in range(chunks if to_embed else 0):
        texts = missing.where(F.pmod(F.xxhash64("key"), F.lit(chunks)) == chunk)
        vectors = texts.repartition(parallelism).mapInPandas(embed_batches, CACHE_SCHEMA)
        # Each append is one committed Spark job: the unit of work a kill can lose.
        vectors.write.mode("append").parquet(folder)
        log.info("committed chunk %d/%d to the cache", chunk + 1, chunks)

    embeddings = attach_vectors(products, read_cache(spark, folder))
    write_table(embeddings, paths.table("embeddings"))
    written = spark.read.parquet(paths.table("embeddings")).count()
    product_count = products.count()
    if written != product_count:
        raise RuntimeError(f"embedded {written} of {product_count} products; the cache at {folder} is incomplete")
    return {
        "backend": backend_name,
        "backend_reason": why,
        "space": backend.space,
        "dimensions": backend.dimensions,
        "texts_total": texts_total,
        "cache_hits": texts_total - to_embed,
        "texts_embedded": to_embed,
        "chunks": chunks if to_embed else 0,
    }
