"""Rows in a fixed order and partitioning before every seeded fit or sample.

Spark's seeded algorithms are only reproducible on the same rows in the same places:
K-means|| initialisation and `DataFrame.sample` draw per partition (seed + partition
index), ALS and the PCA covariance sum partition by partition. How rows arrive depends
on things that are not the input: how a table's files were written (a cold embedding
cache writes in chunks, a warm one reads back), how many cores `local[*]` has, how a
cluster splits the files. Hash-partitioning on a key into a number set by the
configuration, then sorting each partition by the key, fixes both order and layout.
A sample drawn by a seeded hash of a key (`seeded_sample`) depends on neither.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def fixed_order(df: DataFrame, keys: list[str], partitions: int) -> DataFrame:
    """`df` hash-partitioned on `keys` into `partitions` (adaptive execution leaves an
    explicit count alone) and sorted by `keys` inside each partition."""
    return df.repartition(partitions, *keys).sortWithinPartitions(*keys)


def seeded_sample(df: DataFrame, key: str, size: int, seed: int) -> DataFrame:
    """The `size` rows of `df` with the smallest seeded hash of `key` (all of them when
    there are fewer): the same rows for the same input and seed whatever its order and
    partitions, where `DataFrame.sample` draws per partition."""
    return df.orderBy(F.xxhash64(key, F.lit(int(seed))), key).limit(int(size))
