"""The same input gives the same PCA and clusters whatever the physical layout of the rows:
a cold embedding cache writes the table in chunks, a warm one reads it back, `local[*]`
has as many partitions as cores, a cluster splits files its own way. The steps run
in-process on one table written in two layouts (one sorted file; shuffled rows in seven).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recs import cluster, pca
from recs.config import RecsConfig
from recs.io import RunPaths

PRODUCTS = 240


def layouts(spark, frame: pd.DataFrame, data_root, table: str) -> list[RunPaths]:
    """The same rows as `table` of two runs: sorted in one file, and shuffled over seven."""
    runs = []
    for run_id, (order, files) in {"sorted": (frame.index, 1), "shuffled": (None, 7)}.items():
        rows = frame.loc[order] if order is not None else frame.sample(frac=1.0, random_state=3)
        paths = RunPaths(str(data_root), run_id)
        spark.createDataFrame(rows).repartition(files).write.parquet(paths.table(table))
        runs.append(paths)
    return runs


@pytest.fixture(scope="module")
def embeddings() -> pd.DataFrame:
    """Products around six centres in 24 dimensions, close enough for K-means to have choices."""
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(6, 24))
    vectors = centres[rng.integers(0, 6, PRODUCTS)] + rng.normal(scale=0.9, size=(PRODUCTS, 24))
    return pd.DataFrame({"product_id": [f"P{i:04d}" for i in range(PRODUCTS)],
                         "embedding": [v.astype(np.float32).tolist() for v in vectors]})


def config(data_root) -> RecsConfig:
    return RecsConfig.load(environ={"RECS_DATA_ROOT": str(data_root), "RECS_K_MIN": "3", "RECS_K_MAX": "6",
                                    "RECS_PCA_DIMENSIONS": "6", "RECS_SHUFFLE_PARTITIONS": "4"})


def read(paths: RunPaths, table: str) -> pd.DataFrame:
    return pd.read_parquet(paths.table(table)).sort_values("product_id").reset_index(drop=True)


def test_pca_and_clusters_do_not_depend_on_the_row_layout(spark, tmp_path, embeddings):
    settings = config(tmp_path)
    runs = layouts(spark, embeddings, tmp_path, "embeddings")
    stats = []
    for paths in runs:
        pca.run(spark, settings, paths)
        stats.append(cluster.run(spark, settings, paths))
    first, second = (read(paths, "product_clusters") for paths in runs)
    # The same clusters, k and cluster sizes; projections and silhouettes equal up to the last
    # bits of a sum merged in task completion order (without the fixed layout the silhouettes
    # differ by 0.05 to 0.3, and the clusters with them).
    np.testing.assert_allclose(np.stack(first["pca"]), np.stack(second["pca"]), rtol=0, atol=1e-12)
    assert first["cluster"].tolist() == second["cluster"].tolist()
    assert (stats[0]["k"], stats[0]["cluster_sizes"]) == (stats[1]["k"], stats[1]["cluster_sizes"])
    assert stats[0]["silhouette_by_k"].keys() == stats[1]["silhouette_by_k"].keys()
    for k, value in stats[0]["silhouette_by_k"].items():
        assert value == pytest.approx(stats[1]["silhouette_by_k"][k], rel=1e-9, abs=1e-12), k
