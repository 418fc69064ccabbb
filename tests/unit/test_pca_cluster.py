"""pca and cluster on a handful of points whose answer is known in advance."""

from __future__ import annotations

import numpy as np
import pytest

from recs.cluster import (
    MAX_CANDIDATES,
    assign_clusters,
    candidate_ks,
    choose_k,
    kmeans_pipeline,
    sample_points,
    silhouette,
    squared_silhouette,
)
from recs.pca import effective_dimensions, explained_variance, fit_pca, project


@pytest.mark.parametrize(
    ("requested", "embedding_size", "products", "expected"),
    [
        (32, 256, 1000, 32),  # nothing limits it
        (32, 16, 1000, 16),  # no more components than dimensions
        (32, 256, 10, 9),  # no more than rows - 1
        (32, 256, 2, 1),
        (32, 256, 1, 1),  # never below one
        (32, 256, 0, 1),
    ],
)
def test_effective_dimensions(requested, embedding_size, products, expected):
    assert effective_dimensions(requested, embedding_size, products) == expected


def line_points() -> np.ndarray:
    """Ten 3-d points spread along (1, 1, 0) with a little noise off that axis."""
    t = np.arange(-4.5, 5.0, 1.0)
    wobble = np.array([0.1, -0.1] * 5)
    return np.column_stack([t + wobble, t - wobble, 0.05 * wobble[::-1]]) + np.array([10.0, -3.0, 7.0])


def test_pca_finds_the_main_axis(spark):
    points = line_points()
    embeddings = spark.createDataFrame(
        [(f"P{i}", [float(x) for x in p]) for i, p in enumerate(points)], "product_id string, embedding array<double>"
    )
    model = fit_pca(embeddings, 2)
    projected = {row["product_id"]: row["pca"] for row in project(model, embeddings).collect()}

    centred = points - points.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    share = singular**2 / np.sum(singular**2)
    variance = explained_variance(model)
    assert len(variance) == 2
    assert variance == pytest.approx(share[:2].tolist(), abs=1e-9)
    assert variance[0] > 0.99

    # The first axis is (1, 1, 0) / sqrt(2), up to sign.
    assert np.abs(axes[0]) == pytest.approx([2**-0.5, 2**-0.5, 0], abs=0.02)
    expected = centred @ axes[:2].T
    got = np.array([projected[f"P{i}"] for i in range(len(points))])
    assert got.shape == (len(points), 2)
    # Components have an arbitrary sign: compare each column up to it.
    for column in range(2):
        sign = np.sign(got[0, column] * expected[0, column])
        assert got[:, column] == pytest.approx(sign * expected[:, column], abs=1e-6)
    # Centred: the projections average zero.
    assert got.mean(axis=0) == pytest.approx([0, 0], abs=1e-9)


# --- cluster ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k_min", "k_max", "products", "expected"),
    [
        (2, 5, 100, [2, 3, 4, 5]),
        (4, 24, 1000, [4, 7, 10, 13, 16, 19, 22, 24]),  # step ceil(20 / 9) = 3, k_max always tried
        (2, 100, 1000, [2, 13, 24, 35, 46, 57, 68, 79, 90, 100]),  # step ceil(98 / 9) = 11
        (4, 24, 5, [4]),  # k < products
        (4, 24, 3, [2]),  # k_min pulled down with k_max
        (6, 6, 100, [6]),
    ],
)
def test_candidate_ks(k_min, k_max, products, expected):
    assert candidate_ks(k_min, k_max, products) == expected


def test_candidate_ks_bounds_hold_everywhere():
    for k_min in range(2, 15):
        for k_max in range(k_min, 60):
            for products in (3, 5, 20, 1000):
                ks = candidate_ks(k_min, k_max, products)
                assert 1 <= len(ks) <= MAX_CANDIDATES
                assert ks == sorted(set(ks))
                assert ks[-1] == min(k_max, products - 1)
                assert all(2 <= k < products for k in ks)


@pytest.mark.parametrize("products", [0, 1, 2])
def test_candidate_ks_too_few_products(products):
    with pytest.raises(ValueError, match="at least 3 products"):
        candidate_ks(2, 10, products)


BLOBS = {"a": (0.0, 0.0), "b": (10.0, 0.0), "c": (0.0, 10.0)}
OFFSETS = [(0.0, 0.0), (0.3, 0.1), (-0.2, 0.3), (0.1, -0.3), (-0.3, -0.2)]


@pytest.fixture(scope="module")
def blob_points(spark):
    from pyspark.ml.functions import array_to_vector

    rows = [
        (f"{name}{i}", [cx + dx, cy + dy])
        for name, (cx, cy) in BLOBS.items()
        for i, (dx, dy) in enumerate(OFFSETS)
    ]
    points = spark.createDataFrame(rows, "product_id string, pca array<double>")
    return points.withColumn("pca_vector", array_to_vector("pca")).cache()


def test_choose_k_finds_three_blobs(blob_points):
    points = sample_points(blob_points, 1000, seed=42)
    k, curve = choose_k(points, [2, 3, 4], seed=42)
    assert k == 3
    assert sorted(curve) == [2, 3, 4]
    assert curve[3] > 0.9  # tight, far apart blobs
    assert curve[3] > max(curve[2], curve[4])
    # The silhouette the search compares is the one Spark reports for the kept model.
    assert curve[3] == pytest.approx(silhouette(kmeans_pipeline(3, seed=42).fit(blob_points), blob_points), abs=1e-9)


@pytest.mark.parametrize("clusters", [2, 5, 12])
def test_the_silhouette_from_cluster_sums_is_the_pairwise_one(clusters):
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(clusters)
    points = rng.normal(size=(300, 4))
    labels = rng.integers(0, clusters, size=300)
    labels[0] = clusters  # a cluster of one point scores 0
    expected = silhouette_score(points, labels, metric="sqeuclidean")
    assert squared_silhouette(points, labels) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert squared_silhouette(points, np.zeros(300, dtype=int)) == 0.0  # one cluster: no silhouette


def test_k_is_chosen_on_a_bounded_sample_in_id_order(blob_points):
    every = sample_points(blob_points, 1000, seed=42)
    assert every.shape == (15, 2)
    assert every[0].tolist() == [0.0, 0.0] and every[5].tolist() == [10.0, 0.0]  # a0 ... a4, b0 ...
    some = sample_points(blob_points, 6, seed=42)
    assert some.shape == (6, 2)
    assert np.array_equal(some, sample_points(blob_points.repartition(3), 6, seed=42))


def test_assign_clusters(blob_points):
    model = kmeans_pipeline(3, seed=42).fit(blob_points)
    clusters = assign_clusters(model, blob_points)
    assert clusters.dtypes == [("product_id", "string"), ("cluster", "int"), ("pca", "array<double>")]
    rows = clusters.collect()
    assert len(rows) == len(BLOBS) * len(OFFSETS)
    by_blob = {}
    for row in rows:
        by_blob.setdefault(row["product_id"][0], set()).add(row["cluster"])
    # Each blob is one cluster, and the three clusters differ.
    assert all(len(ids) == 1 for ids in by_blob.values())
    assert len(set.union(*by_blob.values())) == 3
