"""Step 2: one vector per product text, each text paid for once.

Vectors live in a content-addressed cache shared by all runs:
`embedding_cache/<space>/`, keyed by sha256(space + text). A run embeds only the
texts whose key is missing, and commits them to the cache chunk by chunk, so a job
killed half way keeps what it already paid for and the retry resumes.

What the backend spends (requests, tokens, retries, cost; model calls for the local
model) happens in Spark's Python workers: each batch adds its share to an accumulator,
which Spark merges on the driver for every task that succeeds.

A backend that needs a key (OpenAI) makes its first call on the driver, before any Spark
job: a missing or rejected key then fails the step once, instead of once per task attempt,
and a model whose size is unknown learns it (recorded beside the cache) before the cache
space, which names the size, is chosen.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Iterator

import pandas as pd
from pyspark.accumulators import Accumulator, AccumulatorParam
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recs import io, lock
from recs.config import EmbeddingSettings, RecsConfig
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


class SumDict(AccumulatorParam):
    """Adds dicts of numbers key by key: what the backends spent, summed over tasks."""

    def zero(self, value: dict) -> dict:
        return {}

    def addInPlace(self, total: dict, more: dict) -> dict:  # noqa: N802 - PySpark's name
        for name, value in more.items():
            total[name] = total.get(name, 0) + value
        return total


def spent_between(before: dict, after: dict) -> dict:
    return {name: value - before.get(name, 0) for name, value in after.items() if isinstance(value, int | float)}


def _embed_partitions(backend_name: str, settings_json: str, space: str, spent: Accumulator):
    """A mapInPandas function; the backend is created once per Python worker."""

    def embed_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        backend = _worker_backend(backend_name, settings_json)
        for batch in batches:
            if batch.empty:
                continue
            before = backend.stats()
            vectors = backend.embed(batch["text"].tolist())
            spent.add(spent_between(before, backend.stats()))
            if backend.space != space:
                raise RuntimeError(f"a worker embeds in space {backend.space}, the driver chose {space}")
            yield pd.DataFrame({"key": batch["key"], "embedding": list(vectors)})

    return embed_batches


_BACKENDS: dict[tuple[str, str], object] = {}


def _worker_backend(backend_name: str, settings_json: str):
    key = (backend_name, settings_json)
    if key not in _BACKENDS:
        _BACKENDS[key] = create_backend(backend_name, EmbeddingSettings(**json.loads(settings_json)))
    return _BACKENDS[key]


def read_cache(spark: SparkSession, folder: str) -> DataFrame:
    if not io.exists(spark, folder) or not io.list_dir(spark, folder):
        return spark.createDataFrame([], CACHE_SCHEMA)
    # Two runs racing may both have added a key; the vectors are equal, keep one.
    return spark.read.schema(CACHE_SCHEMA).parquet(folder).dropDuplicates(["key"])


def dimensions_record(paths: RunPaths, backend) -> str:
    """Where the learnt size of a model whose size the backend does not know is kept."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{backend.name}:{backend.model}")
    return f"{paths.embedding_cache}/_dimensions/{name}.json"


def add_to_cache(spark: SparkSession, folder: str, space: str, text: str, vector) -> None:
    """Commit one vector embedded on the driver (keyed exactly as `with_text_keys` does)."""
    row = spark.createDataFrame([(text, [float(x) for x in vector])], "text string, embedding array<float>")
    with_text_keys(row, space).select("key", "embedding").coalesce(1).write.mode("append").parquet(folder)


def _learn_dimensions(spark: SparkSession, paths: RunPaths, backend, products: DataFrame) -> tuple[str, object] | None:
    """Set the size of a model the backend does not know: from the record of an earlier run,
    else from one call with a product's text (returned with its vector, for the cache)."""
    record = dimensions_record(paths, backend)
    if io.exists(spark, record):
        backend.dimensions = int(io.read_json(spark, record)["dimensions"])
        return None
    sample = products.where(F.length("text") > 0).select("text").first()
    if sample is None:
        return None
    vector = backend.embed([sample.text])[0]
    io.write_json(spark, record, {"backend": backend.name, "model": backend.model, "dimensions": backend.dimensions})
    log.info("%s gives %d dimensions (recorded in %s)", backend.model, backend.dimensions, record)
    return sample.text, vector


def run(spark: SparkSession, config: RecsConfig, paths: RunPaths) -> dict:
    # One cache writer per data root (recs/lock.py): a second run waits, then finds the
    # texts the first one paid for in the cache, instead of paying for them again.
    with lock.data_root_lock(spark, config, "embedding_cache", f"embed of run {paths.run_id}"):
        return embed_products(spark, config, paths)


def embed_products(spark: SparkSession, config: RecsConfig, paths: RunPaths) -> dict:
    backend_name, why = resolve_backend_name(config.embedding)
    backend = create_backend(backend_name, config.embedding)
    driver_stats_before = backend.stats()
    texts_in = io.read_table(spark, paths.table("products")).select("product_id", "text").cache()
    probed = _learn_dimensions(spark, paths, backend, texts_in) if not backend.dimensions else None
    log.info("embedding backend %s (%s), space %s", backend_name, why, backend.space)
    folder = cache_folder(paths, backend.space)
    if probed is not None:
        add_to_cache(spark, folder, backend.space, *probed)

    products = with_text_keys(texts_in, backend.space).cache()
    missing = missing_texts(products, read_cache(spark, folder)).cache()
    to_embed = missing.count() + (probed is not None)
    texts_total = products.select("key").distinct().count()
    log.info("%d distinct texts, %d already in the cache, %d to embed", texts_total, texts_total - to_embed, to_embed)
    if to_embed and backend.probe_on_driver and probed is None:
        # One text first, here: a missing or rejected key fails now, with no task retries.
        first = missing.first()
        add_to_cache(spark, folder, backend.space, first.text, backend.embed([first.text])[0])
        missing.unpersist()
        missing = missing_texts(products, read_cache(spark, folder)).cache()
    remaining = missing.count() if to_embed else 0

    spent = spark.sparkContext.accumulator({}, SumDict())
    # Workers build the backend the driver built (e.g. the local runtime it chose).
    worker_settings = dataclasses.replace(config.embedding, **backend.worker_settings())
    embed_batches = _embed_partitions(backend_name, json.dumps(dataclasses.asdict(worker_settings), sort_keys=True),
                                      backend.space, spent)
    chunks = max(1, math.ceil(remaining / config.embedding.chunk_size)) if remaining else 0
    parallelism = spark.sparkContext.defaultParallelism
    for chunk in range(chunks):
        texts = missing.where(F.pmod(F.xxhash64("key"), F.lit(chunks)) == chunk)
        vectors = texts.repartition(parallelism).mapInPandas(embed_batches, CACHE_SCHEMA)
        # Each append is one committed Spark job: the unit of work a kill can lose.
        vectors.write.mode("append").parquet(folder)
        log.info("committed chunk %d/%d to the cache", chunk + 1, chunks)
    totals = SumDict().addInPlace(dict(spent.value), spent_between(driver_stats_before, backend.stats()))

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
        "chunks": chunks,
        "requests": int(totals.get("requests", 0)),
        "tokens_sent": int(totals.get("tokens_sent", 0)),
        "retries": int(totals.get("retries", 0)),
        "estimated_cost_usd": round(float(totals.get("estimated_cost_usd", 0.0)), 6),
        "model_batches": int(totals.get("model_batches", 0)),
        "backend_stats": totals,
    }
