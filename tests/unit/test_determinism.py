"""The same input gives the same PCA and clusters whatever the physical layout of the rows:
a cold embedding cache writes the table in chunks, a warm one reads it back, `local[*]`
has as many partitions as cores, a cluster splits files its own way. The steps run
in-process on one table written in two layouts (one sorted file; shuffled rows in seven),
then on a shop twice, with a cold and a warm embedding cache.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recs import cluster, embed, pca, preprocess, recommend
from recs.config import RecsConfig
from recs.io import RunPaths, write_json
from recs.synthetic import ShopSize, write_shop

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


def test_a_cold_and_a_warm_embedding_cache_give_the_same_tables(spark, tmp_path):
    """The first run on a data root computes every embedding and fills the cache; the
    second reads them all back. Everything a publish serves must come out the same."""
    shop = tmp_path / "shop"
    write_shop(str(shop), ShopSize(products=160, users=120, days=90), seed=5)
    data_root = tmp_path / "data"
    settings = RecsConfig.load(environ={
        "RECS_DATA_ROOT": str(data_root), "RECS_INPUT": str(shop), "RECS_INPUT_FORMAT": "contract",
        "RECS_EMBEDDING_BACKEND": "hashing", "RECS_K_MIN": "3", "RECS_K_MAX": "7", "RECS_PCA_DIMENSIONS": "8",
        # The weights' tuning (minutes of small Spark jobs) reads no embedding but through the
        # content signal, which is compared below.
        "RECS_TUNE_WEIGHTS": "false"})
    stats = {}
    for run_id in ("cold", "warm"):
        paths = RunPaths(str(data_root), run_id)
        stats[run_id] = {}
        for step in (preprocess, embed, pca, cluster, recommend):
            stats[run_id][step.__name__] = step.run(spark, settings, paths)
            # What runtime.run_step keeps, and later steps read (the evaluation protocol).
            write_json(spark, paths.stats(step.__name__.split(".")[-1]), stats[run_id][step.__name__])
    cold, warm = (stats[run]["recs.embed"] for run in ("cold", "warm"))
    assert cold["texts_embedded"] == cold["texts_total"] > 100 and cold["cache_hits"] == 0
    assert warm["texts_embedded"] == 0 and warm["cache_hits"] == warm["texts_total"] == cold["texts_total"]
    assert stats["cold"]["recs.cluster"]["k"] == stats["warm"]["recs.cluster"]["k"]
    for table, key in (("product_clusters", ["product_id"]), ("similar_products", ["product_id", "rank"]),
                       ("user_recommendations", ["user_id", "rank"]), ("popular_products", ["rank"])):
        first, second = (pd.read_parquet(RunPaths(str(data_root), run).table(table)).sort_values(key)
                         .reset_index(drop=True) for run in ("cold", "warm"))
        pd.testing.assert_frame_equal(first, second, check_exact=False, rtol=1e-9, obj=table)
