"""recommend and the recommender model: weights, neighbours and the final ranking on
catalogs small enough to work out by hand."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from pyspark import SparkFiles
from scipy import sparse

import recs.model
from recs.config import RecommenderSettings
from recs.model import (
    content_edges,
    count_pairs,
    covisit_edges,
    ease_counts,
    pair_counts,
    recent_history,
    scoring_history,
    ship_customers,
    transition_counts,
    user_item_weights,
)
from recs.recommend import content_neighbours, explain, popular_products, score_users, similar_products
from recs.scoring import (
    EDGE_SIGNALS,
    SIGNALS,
    SIMILAR_CUSTOMERS,
    ItemIndex,
    Model,
    customers_from_pairs,
    from_upper_triangle,
    nearest_customers,
    read_customers,
    reason_items,
    recommend_block,
    top_k,
    top_per_row,
)

NOW = datetime(2026, 10, 31, 12, 0, tzinfo=UTC)
EVENTS_SCHEMA = "user_id string, product_id string, event_type string, quantity int, ts timestamp"


def pairs_to_matrix(pairs: pd.DataFrame, index: ItemIndex, value: str) -> sparse.csr_matrix:
    """(product_id, neighbour_id, value) rows by id as a products x products matrix, unknown ids left out."""
    rows, cols = index.positions(pairs["product_id"]), index.positions(pairs["neighbour_id"])
    known = (rows >= 0) & (cols >= 0)
    values = pairs[value].to_numpy(dtype=np.float64)[known]
    return sparse.csr_matrix((values, (rows[known], cols[known])), shape=(len(index), len(index)))


def test_user_item_weights_type_weights_and_half_life(spark):
    from pyspark.sql import functions as F

    settings = RecommenderSettings(view_weight=1.0, cart_weight=3.0, purchase_weight=5.0, recency_half_life_days=10.0)
    events = spark.createDataFrame(
        [
            ("U1", "P1", "purchase", 1, NOW),  # the newest event: age 0
            ("U1", "P1", "view", 1, NOW - timedelta(days=10)),  # one half-life old: counts half
            ("U1", "P2", "add_to_cart", 1, NOW - timedelta(days=20)),  # two half-lives: a quarter
            ("U2", "P2", "view", 1, NOW - timedelta(days=5)),
        ],
        EVENTS_SCHEMA,
    )
    rows = {
        (r["user_id"], r["product_id"]): r
        for r in user_item_weights(events, settings).withColumn("last_epoch", F.col("last_ts").cast("double")).collect()
    }
    assert sorted(rows) == [("U1", "P1"), ("U1", "P2"), ("U2", "P2")]
    assert rows["U1", "P1"]["weight"] == pytest.approx(5.0 + 1.0 * 0.5)
    assert rows["U1", "P2"]["weight"] == pytest.approx(3.0 * 0.25)
    assert rows["U2", "P2"]["weight"] == pytest.approx(1.0 * 0.5**0.5)
    assert [rows[k]["purchased"] for k in sorted(rows)] == [True, False, False]
    assert [rows[k]["strongest_event"] for k in sorted(rows)] == ["purchase", "add_to_cart", "view"]
    assert rows["U1", "P1"]["last_epoch"] == NOW.timestamp()
    assert rows["U2", "P2"]["last_epoch"] == (NOW - timedelta(days=5)).timestamp()

    # An explicit half-life wins over the configured one: 20 days makes 10 days old count 0.5 ** 0.5.
    slower = {(r["user_id"], r["product_id"]): r["weight"] for r in user_item_weights(events, settings, 20.0).collect()}
    assert slower["U1", "P1"] == pytest.approx(5.0 + 0.5**0.5)
    assert slower["U1", "P2"] == pytest.approx(3.0 * 0.5)


def test_recent_history_and_scoring_history(spark):
    user_items = spark.createDataFrame(
        [
            ("U1", "P1", NOW - timedelta(days=3), 1.0, False, "view"),
            ("U1", "P2", NOW - timedelta(days=1), 2.0, True, "purchase"),
            ("U1", "P3", NOW - timedelta(days=2), 3.0, False, "add_to_cart"),
            ("U2", "P9", NOW, 1.0, False, "view"),  # ties on time: product id decides
            ("U2", "P8", NOW, 1.0, False, "view"),
            ("U3", "P1", NOW, 1.0, False, "view"),
        ],
        "user_id string, product_id string, last_ts timestamp, weight double, purchased boolean,"
        " strongest_event string",
    ).cache()
    kept = sorted((r["user_id"], r["product_id"]) for r in recent_history(user_items, 2).collect())
    assert kept == [("U1", "P2"), ("U1", "P3"), ("U2", "P8"), ("U2", "P9"), ("U3", "P1")]

    history = scoring_history(user_items)
    assert history.columns == ["user_id", "product_id", "weight", "purchased", "strongest_event", "recency"]
    recency = {(r["user_id"], r["product_id"]): r["recency"] for r in history.collect()}
    assert recency == {
        ("U1", "P2"): 1, ("U1", "P3"): 2, ("U1", "P1"): 3, ("U2", "P8"): 1, ("U2", "P9"): 2, ("U3", "P1"): 1
    }
    user_items.unpersist()


def test_cooccurrence_cosine(spark):
    # U1: A B; U2: A B C; U3: A C  ->  users: A 3, B 2, C 2; together: AB 2, AC 2, BC 1.
    pairs = spark.createDataFrame(
        [("U1", "A"), ("U1", "B"), ("U2", "A"), ("U2", "B"), ("U2", "C"), ("U3", "A"), ("U3", "C")],
        "user_id string, product_id string",
    )
    index = ItemIndex(np.array(["A", "B", "C"]))
    matrix = pairs_to_matrix(pair_counts(pairs).toPandas(), index, "both").toarray()
    assert matrix.tolist() == [[0, 2, 2], [2, 0, 1], [2, 1, 0]]

    cosine = pairs_to_matrix(covisit_edges(pairs, 5).toPandas(), index, "score").toarray()
    ab, ac, bc = 2 / math.sqrt(3 * 2), 2 / math.sqrt(3 * 2), 1 / math.sqrt(2 * 2)
    assert cosine == pytest.approx(np.array([[0, ab, ac], [ab, 0, bc], [ac, bc, 0]]), abs=1e-6)


def random_interactions(seed: int, users: int = 40, products: int = 12) -> list[tuple[str, str, int]]:
    """(user, product, minute) rows: each user meets a few products, popular ones more."""
    rng = np.random.default_rng(seed)
    rows, appeal = [], np.linspace(2, 1, products)
    for user in range(users):
        chosen = rng.choice(products, size=rng.integers(1, 7), replace=False, p=appeal / appeal.sum())
        rows += [(f"U{user:02d}", f"P{item:02d}", int(rng.integers(0, 50))) for item in chosen]
    return rows


def driver_cosine(rows, index: ItemIndex) -> np.ndarray:
    """What the driver computed before: the users x products 0/1 matrix's Gram
    (the co-occurrence self-join), scaled by each product's users, diagonal dropped."""
    users = sorted({u for u, _, _ in rows})
    binary = np.zeros((len(users), len(index)))
    for user, product, _ in rows:
        binary[users.index(user), index.positions([product])[0]] = 1
    gram = binary.T @ binary
    scale = 1 / np.sqrt(np.maximum(np.diag(gram), 1))
    cosine = gram * scale[:, None] * scale[None, :]
    np.fill_diagonal(cosine, 0)
    return cosine


def test_spark_top_k_cosine_equals_the_driver_side_result(spark):
    rows = random_interactions(seed=3)
    history = spark.createDataFrame([(u, p) for u, p, _ in rows], "user_id string, product_id string").cache()
    index = ItemIndex(np.array([f"P{i:02d}" for i in range(12)]))
    expected = driver_cosine(rows, index)
    # Every neighbour kept: the whole cosine matrix, value for value.
    whole = pairs_to_matrix(covisit_edges(history, 20).toPandas(), index, "score").toarray()
    np.testing.assert_allclose(whole, expected, atol=1e-12)
    # The best 3 per product: the driver's top 3 of each row, ties to the smaller id.
    kept = covisit_edges(history, 3).toPandas()
    assert kept.groupby("product_id").size().max() == 3
    for row, product in enumerate(index.ids):
        order = sorted((-value, col) for col, value in enumerate(expected[row]) if value > 0)[:3]
        mine = kept[kept["product_id"] == product].sort_values(["score", "neighbour_id"], ascending=[False, True])
        assert list(mine["neighbour_id"]) == [index.ids[col] for _, col in order]
        np.testing.assert_allclose(mine["score"], [-value for value, _ in order], atol=1e-12)
    history.unpersist()


def test_ease_counts_cover_only_the_most_popular_products(spark):
    rows = random_interactions(seed=5)
    history = spark.createDataFrame([(u, p) for u, p, _ in rows], "user_id string, product_id string")
    index = ItemIndex(np.array([f"P{i:02d}" for i in range(12)]))
    users = sorted({u for u, _, _ in rows})
    binary = np.zeros((len(users), len(index)))
    for user, product, _ in rows:
        binary[users.index(user), index.positions([product])[0]] = 1
    gram = binary.T @ binary
    popular = sorted(range(len(index)), key=lambda i: (-gram[i, i], index.ids[i]))[:4]
    got = pairs_to_matrix(ease_counts(history, 4).toPandas(), index, "both").toarray()
    expected = np.zeros_like(gram)
    expected[np.ix_(popular, popular)] = gram[np.ix_(popular, popular)]
    # One triangle and the diagonal cross to the driver, which mirrors them.
    np.testing.assert_array_equal(got, np.triu(expected))
    np.testing.assert_array_equal(from_upper_triangle(sparse.csr_matrix(got)).toarray(), expected)


def self_join_transitions(events, window: int):
    """The old procedure: each user's sequence joined with itself on positions."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    firsts = events.groupBy("user_id", "product_id").agg(F.min("ts").alias("first_ts"))
    order = Window.partitionBy("user_id").orderBy("first_ts", "product_id")
    sequenced = firsts.withColumn("position", F.row_number().over(order))
    later = sequenced.select(
        "user_id", F.col("product_id").alias("neighbour_id"), F.col("position").alias("later_position"))
    return (
        sequenced.join(later, "user_id")
        .where((F.col("later_position") > F.col("position")) & (F.col("later_position") <= F.col("position") + window))
        .groupBy("product_id", "neighbour_id").agg(F.count("*").alias("count"))
    )


def test_window_transitions_equal_the_self_join(spark):
    rows = random_interactions(seed=11)
    events = spark.createDataFrame(
        [(u, p, "view", 1, NOW + timedelta(minutes=m)) for u, p, m in rows], EVENTS_SCHEMA)
    for window in (1, 3):
        got = {(r["product_id"], r["neighbour_id"]): r["count"] for r in transition_counts(events, window).collect()}
        expected = {(r["product_id"], r["neighbour_id"]): r["count"]
                    for r in self_join_transitions(events, window).collect()}
        assert got == expected and len(got) > 10


def test_the_driver_receives_at_most_k_neighbours_per_product(spark):
    rows = random_interactions(seed=13, users=60)
    events = spark.createDataFrame(
        [(u, p, "purchase", 1, NOW + timedelta(minutes=m)) for u, p, m in rows], EVENTS_SCHEMA)
    index = ItemIndex(np.array(sorted({p for _, p, _ in rows})))
    settings = RecommenderSettings(neighbours_per_product=2, next_window=3, ease_max_items=5)
    counts = count_pairs(events, index, settings)
    for matrix in (counts.covisit, counts.transitions):
        assert np.diff(matrix.indptr).max() == 2
    assert len(set(counts.ease.nonzero()[0])) == 5 and len(set(counts.ease.nonzero()[1])) == 5
    # Counted by catalog position, the same as by id: the Spark functions on the ids.
    history = recent_history(user_item_weights(events, settings), settings.max_history_for_pairs)
    by_id = pairs_to_matrix(covisit_edges(history, 2).toPandas(), index, "score").toarray()
    np.testing.assert_allclose(counts.covisit.toarray(), by_id, atol=1e-12)
    by_id = pairs_to_matrix(ease_counts(history, 5).toPandas(), index, "both")
    np.testing.assert_array_equal(counts.ease.toarray(), from_upper_triangle(by_id).toarray())
    np.testing.assert_array_equal(counts.ease.toarray(), counts.ease.T.toarray())


def test_counts_kept_for_a_later_step_are_read_back_only_for_the_same_events_catalog_and_settings(spark, tmp_path):
    from pyspark.sql import functions as F

    rows = random_interactions(seed=13, users=60)
    events = spark.createDataFrame(
        [(u, p, "purchase", 1, NOW + timedelta(minutes=m)) for u, p, m in rows], EVENTS_SCHEMA)
    index = ItemIndex(np.array(sorted({p for _, p, _ in rows})))
    settings = RecommenderSettings(neighbours_per_product=2, next_window=3, ease_max_items=5)
    kept = str(tmp_path / "counts")

    def count_and_mark() -> None:
        """Count into `kept`, then mark what was kept: a count that reads it returns 7s."""
        count_pairs(events, index, settings, kept)
        marked = spark.read.parquet(f"{kept}/covisit").withColumn("value", F.lit(7.0)).toPandas()
        spark.createDataFrame(marked).write.mode("overwrite").parquet(f"{kept}/covisit")

    counted, fresh = count_pairs(events, index, settings, kept), count_pairs(events, index, settings)
    for name in ("covisit", "transitions", "ease"):
        assert (getattr(counted, name) != getattr(fresh, name)).nnz == 0
    count_and_mark()
    assert set(count_pairs(events, index, settings, kept).covisit.data) == {7.0}  # read, not counted
    # Other events (one fewer), other settings or another catalog: counted again.
    count_and_mark()
    assert 7.0 not in set(count_pairs(events.limit(len(rows) - 1), index, settings, kept).covisit.data)
    count_and_mark()
    wider = RecommenderSettings(neighbours_per_product=3, next_window=3, ease_max_items=5)
    assert 7.0 not in set(count_pairs(events, index, wider, kept).covisit.data)
    count_and_mark()  # another catalog: other positions
    assert 7.0 not in set(count_pairs(events, ItemIndex(np.r_[["A0"], index.ids]), settings, kept).covisit.data)


def test_transition_counts(spark):
    minute = timedelta(minutes=1)
    events = spark.createDataFrame(
        [
            # U1 meets A, B, (A again), C, D: distinct products in order A B C D.
            ("U1", "A", "view", 1, NOW),
            ("U1", "B", "view", 1, NOW + minute),
            ("U1", "A", "purchase", 1, NOW + 2 * minute),
            ("U1", "C", "view", 1, NOW + 3 * minute),
            ("U1", "D", "view", 1, NOW + 4 * minute),
            ("U2", "D", "view", 1, NOW),
            ("U2", "A", "view", 1, NOW + minute),
            ("U3", "A", "view", 1, NOW),
            ("U3", "B", "view", 1, NOW + minute),
        ],
        EVENTS_SCHEMA,
    )
    got = {(r["product_id"], r["neighbour_id"]): r["count"] for r in transition_counts(events, 2).collect()}
    # Window 2: each product is followed by the next two distinct products.
    assert got == {("A", "B"): 2, ("A", "C"): 1, ("B", "C"): 1, ("B", "D"): 1, ("C", "D"): 1, ("D", "A"): 1}


def test_top_per_row():
    matrix = np.array(
        [
            [5.0, 3.0, 1.0, -2.0, 2.0],  # the diagonal and the negative go; the best two stay
            [0.0, 9.0, 0.0, 0.0, 0.0],  # only the diagonal: nothing is left
            [0.5, 0.0, 0.0, 0.0, 0.0],
            [1.0, 2.0, 3.0, 4.0, 5.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    kept = top_per_row(sparse.csr_matrix(matrix), 2).toarray()
    assert kept.tolist() == [
        [0, 3, 0, 0, 2],
        [0, 0, 0, 0, 0],
        [0.5, 0, 0, 0, 0],
        [0, 0, 3, 0, 5],
        [0, 0, 0, 0, 0],
    ]


def test_content_edges_are_the_positive_neighbours_by_catalog_position(spark):
    """What the recommender reads of the content neighbours table: the same matrix as the
    rows by id, with a product itself, non-positive scores and ids outside the catalog
    left out."""
    index = ItemIndex(np.array(["A", "B", "C", "D"]))
    rows = pd.DataFrame({
        "product_id": ["A", "A", "A", "B", "B", "C", "X", "D"],
        "neighbour_id": ["B", "D", "A", "A", "X", "D", "A", "C"],
        "score": [0.9, 0.7, 1.0, 0.9, 0.8, -0.1, 0.6, 0.3],
    })
    edges = content_edges(spark.createDataFrame(rows).repartition(3), index)
    assert edges.dtype == np.float32
    np.testing.assert_allclose(edges.toarray(), top_per_row(pairs_to_matrix(rows, index, "score"), 2).toarray())
    np.testing.assert_allclose(edges.toarray(), [
        [0, 0.9, 0, 0.7],  # A: not itself
        [0.9, 0, 0, 0],  # B: X is not in the catalog
        [0, 0, 0, 0],  # C: a negative cosine adds nothing
        [0, 0, 0.3, 0],
    ], rtol=1e-6)


def test_top_k_never_returns_excluded():
    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    excluded = sparse.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 0, 1]]))
    positions, best = top_k(scores, excluded, 2)
    assert positions.tolist() == [[1, 2], [2, 1]]
    assert best == pytest.approx(np.array([[0.8, 0.7], [0.3, 0.2]]))


def brute_force_neighbours(ids: list[str], vectors: np.ndarray) -> dict[str, list[tuple[float, str]]]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = unit @ unit.T
    return {
        ids[i]: sorted(((float(cosine[i, j]), ids[j]) for j in range(len(ids)) if j != i), reverse=True)
        for i in range(len(ids))
    }


@pytest.mark.parametrize("scores_per_block", [25_000_000, 30])
def test_content_neighbours_match_brute_force(spark, scores_per_block):
    # 30 scores per block: two products at a time against the 12 of the catalog.
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(12, 5)).astype(np.float32)
    ids = [f"P{i:02d}" for i in range(len(vectors))]
    frame = spark.createDataFrame(
        [(pid, [float(x) for x in v]) for pid, v in zip(ids, vectors, strict=True)],
        "product_id string, embedding array<float>",
    ).repartition(3)  # several blocks, each against the whole broadcast catalog
    content = content_neighbours(spark, frame, 3, scores_per_block).cache()
    expected = brute_force_neighbours(ids, vectors)
    got: dict[str, list[tuple[float, str]]] = {}
    for r in content.collect():
        got.setdefault(r["product_id"], []).append((r["score"], r["neighbour_id"]))
    assert sorted(got) == ids
    for pid in ids:
        assert pid not in [n for _, n in got[pid]]
        ranked = sorted(got[pid], reverse=True)
        assert [n for _, n in ranked] == [n for _, n in expected[pid][:3]]
        assert [s for s, _ in ranked] == pytest.approx([s for s, _ in expected[pid][:3]], abs=1e-5)

    similar = similar_products(content, 2).collect()
    assert {(r["product_id"], r["rank"]) for r in similar} == {(pid, rank) for pid in ids for rank in (1, 2)}
    for r in similar:
        assert r["similar_product_id"] == expected[r["product_id"]][r["rank"] - 1][1]
    content.unpersist()


def test_content_neighbours_small_catalog_never_returns_self(spark):
    frame = spark.createDataFrame(
        [("A", [1.0, 0.0]), ("B", [1.0, 0.0]), ("C", [0.0, 1.0])], "product_id string, embedding array<float>"
    )
    got = sorted((r["product_id"], r["neighbour_id"]) for r in content_neighbours(spark, frame, 10).collect())
    # Only n - 1 = 2 neighbours exist; A and B are identical vectors but never their own neighbour.
    assert got == [("A", "B"), ("A", "C"), ("B", "A"), ("B", "C"), ("C", "A"), ("C", "B")]


def clustered_catalog(products: int, dimensions: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Products in 40 tight groups, as text embeddings fall: no ties, a real top-m."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dimensions))
    vectors = centres[rng.integers(0, 40, products)] + 0.35 * rng.normal(size=(products, dimensions))
    return [f"P{i:05d}" for i in range(products)], vectors.astype(np.float32)


def test_content_neighbours_approximate_path_agrees_with_exact(spark, monkeypatch):
    from recs import neighbours

    builds = []

    def counted_build(*args, **kwargs):
        builds.append(args[0].shape)
        return build(*args, **kwargs)

    build = neighbours.build_index
    monkeypatch.setattr(neighbours, "build_index", counted_build)
    ids, vectors = clustered_catalog(3000, 32, seed=5)
    frame = spark.createDataFrame(
        [(pid, [float(x) for x in v]) for pid, v in zip(ids, vectors, strict=True)],
        "product_id string, embedding array<float>",
    ).repartition(3)
    top_m = 10
    exact = content_neighbours(spark, frame, top_m)
    assert builds == []  # under the threshold: exact, no index
    approximate = content_neighbours(spark, frame, top_m, exact_max=1000)
    assert builds == [(3000, 32)]  # over it: one index, built once on the driver
    assert approximate.schema == exact.schema

    rows = approximate.collect()
    assert len(rows) == len(ids) * top_m
    got: dict[str, list[tuple[float, str]]] = {}
    for r in rows:
        got.setdefault(r["product_id"], []).append((r["score"], r["neighbour_id"]))
    truth: dict[str, set[str]] = {}
    for r in exact.collect():
        truth.setdefault(r["product_id"], set()).add(r["neighbour_id"])
    assert sorted(got) == ids
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    found = 0
    for pid, pairs in got.items():
        assert pid not in [n for _, n in pairs]
        assert len({n for _, n in pairs}) == top_m
        found += len({n for _, n in pairs} & truth[pid])
        # Scores are the exact cosines of the neighbours found.
        cosines = [float(unit[int(pid[1:])] @ unit[int(n[1:])]) for _, n in pairs]
        assert [s for s, _ in pairs] == pytest.approx(cosines, abs=1e-5)
    assert found / (len(ids) * top_m) >= 0.95

    # Reproducible: another partitioning (so other blocks) and a second index give the same rows.
    again = content_neighbours(spark, frame.repartition(2), top_m, exact_max=1000).collect()
    assert len(builds) == 2
    assert sorted((r["product_id"], r["neighbour_id"], r["score"]) for r in again) == sorted(
        (r["product_id"], r["neighbour_id"], r["score"]) for r in rows)


def test_neighbours_search_drops_self_and_falls_back_to_every_list():
    from recs import neighbours

    ids, vectors = clustered_catalog(400, 16, seed=9)
    vectors[1] = vectors[0]  # identical twins: each must get the other, never itself
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    lists, _ = neighbours.index_shape(len(ids))
    assert lists == 10  # at least 39 training vectors per list
    index = neighbours.build_index(unit, lists, seed=1)
    own = np.arange(len(ids))
    # Asking for every other product forces the search over every list.
    rows, scores = neighbours.search(index, unit, own, len(ids) - 1, 1)
    assert rows.shape == scores.shape == (len(ids), len(ids) - 1)
    assert not (rows == own[:, None]).any()
    assert all(len(set(r)) == len(ids) - 1 for r in rows)
    assert rows[0, 0] == 1 and rows[1, 0] == 0
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    expected = np.sort(unit @ unit.T - 10 * np.eye(len(ids)), axis=1)[:, ::-1][:, :-1]
    assert scores == pytest.approx(expected, abs=1e-5)


def test_similar_products_ranks(spark):
    content = spark.createDataFrame(
        [("A", "B", 0.9), ("A", "C", 0.5), ("A", "D", 0.5), ("A", "E", 0.1), ("B", "A", 0.9)],
        "product_id string, neighbour_id string, score double",
    )
    got = sorted(tuple(r) for r in similar_products(content, 3).collect())
    assert got == [("A", 1, "B", 0.9), ("A", 2, "C", 0.5), ("A", 3, "D", 0.5), ("B", 1, "A", 0.9)]


# --- scoring users against a model built by hand ---------------------------------

IDS = ["P1", "P2", "P3", "P4", "P5"]
TITLES = {"P1": "Red mug", "P2": "Blue mug", "P3": "Teapot", "P4": "Yoga mat", "P5": "Dumbbell"}
TREND = [1.0, 0.2, 0.1, 0.3, 0.9]
# (user_id, product_id, weight, purchased, strongest_event, recency)
HISTORY = [
    ("U1", "P1", 5.0, True, "purchase", 1),
    ("U1", "P2", 1.0, False, "view", 2),
    ("U2", "P4", 1.0, False, "view", 1),
    ("U3", "P5", 5.0, True, "purchase", 1),  # P5 has no neighbours: U3 has no personal candidates
]
HISTORY_COLUMNS = ["user_id", "product_id", "weight", "purchased", "strongest_event", "recency"]


def hand_model() -> Model:
    index = ItemIndex(np.array(IDS))
    position = {pid: i for i, pid in enumerate(IDS)}
    covisit = np.zeros((5, 5))
    for a, b, score in [("P1", "P2", 0.9), ("P1", "P3", 0.5), ("P2", "P3", 0.7), ("P2", "P1", 0.9), ("P4", "P5", 0.8)]:
        covisit[position[a], position[b]] = score
    empty = sparse.csr_matrix((5, 5))
    edges = {name: empty for name in EDGE_SIGNALS} | {"covisit": sparse.csr_matrix(covisit)}
    weights = {name: 0.0 for name in SIGNALS} | {"covisit": 1.0, "trend": 0.1}
    return Model(index=index, edges=edges, cluster_of=np.full(5, -1), trend=np.array(TREND), weights=weights)


# Worked by hand. U1's shares are 5/6 (P1) and 1/6 (P2); covisit scores P1 0.9/6,
# P2 0.9 * 5/6, P3 (0.5 * 5 + 0.7) / 6, normalised by the best (P2), plus 0.1 x trend.
# P1 is bought, so U1 gets P2 then P3, both mostly thanks to P1. U2 gets P5 (via P4),
# then P1 on trend alone; U3 only trend: P1, then P4.
EXPECTED = [
    ("U1", 1, "P2", 1.0 + 0.1 * 0.2, "P1", "purchase"),
    ("U1", 2, "P3", (0.5 * 5 + 0.7) / (0.9 * 5) + 0.1 * 0.1, "P1", "purchase"),
    ("U2", 1, "P5", 1.0 + 0.1 * 0.9, "P4", "view"),
    ("U2", 2, "P1", 0.1 * 1.0, None, None),
    ("U3", 1, "P1", 0.1 * 1.0, None, None),
    ("U3", 2, "P4", 0.1 * 0.3, None, None),
]


def test_recommend_block_by_hand():
    result = recommend_block(hand_model(), pd.DataFrame(HISTORY, columns=HISTORY_COLUMNS), 2)
    assert list(result.columns) == ["user_id", "rank", "product_id", "score", "reason_product_id", "reason_event"]
    got = [
        (r.user_id, r.rank, r.product_id, pytest.approx(r.score, rel=1e-5), r.reason_product_id, r.reason_event)
        for r in result.itertuples()
    ]
    assert sorted(got, key=lambda row: row[:2]) == EXPECTED


def test_reasons_are_the_history_products_that_add_most_to_each_pick():
    rng = np.random.default_rng(5)
    products, users, k = 40, 30, 5
    dense = {name: (rng.random((products, products)) - 0.2) * (rng.random((products, products)) < 0.2)
             for name in EDGE_SIGNALS}
    for matrix in dense.values():
        matrix[2] = matrix[1]  # products 1 and 2 reach every product alike: ties
    weights = {"covisit": 1.0, "ease": 0.5, "next": 0.0, "content": 0.25, "trend": 1.0}
    model = Model(index=ItemIndex(np.array([f"P{i}" for i in range(products)], dtype=object)),
                  edges={name: sparse.csr_matrix(matrix, dtype=np.float32) for name, matrix in dense.items()},
                  cluster_of=np.zeros(products, dtype=np.int64), trend=np.ones(products), weights=weights)
    history = rng.random((users, products)) * (rng.random((users, products)) < 0.15)
    history[0, :] = 0
    history[0, [1, 2]] = 0.5
    chosen = rng.integers(-1, products, size=(users, k))
    chosen[0] = np.arange(k)
    # Dense reference: per pick, the history product with the largest positive
    # weight x (weighted item-item edges to the pick), the earlier one of equals.
    total = sum(np.float32(weights[name]) * dense[name].astype(np.float32) for name in EDGE_SIGNALS if weights[name])
    expected = np.full((users, k), -1)
    for user in range(users):
        for slot, pick in enumerate(chosen[user]):
            added = history[user] * total[:, pick]
            if pick >= 0 and (added > 0).any():
                expected[user, slot] = int(np.argmax(np.where(added > 0, added, -np.inf)))
    assert (expected[0][expected[0] >= 0] == 1).all() and (expected >= 0).sum() > users
    assert (reason_items(model, sparse.csr_matrix(history), chosen) == expected).all()


def test_recommend_block_stops_when_the_catalog_runs_out():
    # U9 bought four of the five products: one product is left to recommend.
    history = pd.DataFrame(
        [("U9", pid, 1.0, True, "purchase", i + 1) for i, pid in enumerate(IDS[:4])], columns=HISTORY_COLUMNS
    )
    result = recommend_block(hand_model(), history, 3)
    assert result["product_id"].tolist() == ["P5"]
    assert result["rank"].tolist() == [1]


def test_score_users_and_explain(spark):
    history = spark.createDataFrame(HISTORY, "user_id string, product_id string, weight double, purchased boolean,"
                                             " strongest_event string, recency int")
    products = spark.createDataFrame(list(TITLES.items()), "product_id string, title string")
    # Two users per block: the three users are scored in more than one block.
    scored = explain(score_users(spark, hand_model(), history, 2, users_per_block=2), products)
    assert scored.columns == ["user_id", "rank", "product_id", "score", "reason", "reason_product_id"]
    got = sorted(
        (r["user_id"], r["rank"], r["product_id"], r["reason"], r["reason_product_id"]) for r in scored.collect()
    )
    verbs = {"purchase": "bought", "view": "viewed"}
    assert got == [
        (user, rank, pid, f"because you {verbs[event]}: {TITLES[why]}" if why else "popular right now", why)
        for user, rank, pid, _, why, event in EXPECTED
    ]
    # Every user gets exactly top_n, none of them already bought.
    bought = {(user, pid) for user, pid, _, purchased, _, _ in HISTORY if purchased}
    assert not bought & {(user, pid) for user, _, pid, _, _ in got}
    assert {user: sum(1 for row in got if row[0] == user) for user in ("U1", "U2", "U3")} == {"U1": 2, "U2": 2, "U3": 2}


def test_popular_products():
    popular = popular_products(hand_model(), 3)
    assert popular.to_dict("list") == {"rank": [1, 2, 3], "product_id": ["P1", "P5", "P4"], "score": [1.0, 0.9, 0.3]}


def test_customers_from_events_reach_the_tasks(spark, tmp_path, monkeypatch):
    monkeypatch.setattr(recs.model, "FINDERS_PER_PRODUCT", 1)  # a product's most recent customer only
    settings = RecommenderSettings(purchase_weight=5.0, view_weight=1.0, neighbour_half_life_days=7.0,
                                   neighbour_users=3, max_history_for_pairs=2)
    events = spark.createDataFrame(
        [
            ("U1", "P1", "purchase", 1, NOW),
            ("U1", "P2", "purchase", 1, NOW - timedelta(days=7)),  # one half-life: counts half
            ("U1", "P3", "view", 1, NOW - timedelta(days=30)),  # beyond U1's 2 most recent products
            ("U2", "P3", "view", 1, NOW - timedelta(days=14)),
            ("U3", "P3", "view", 1, NOW),  # P3's most recent customer
        ],
        EVENTS_SCHEMA,
    )
    files = ship_customers(events, ItemIndex(np.array(IDS)), settings, [7.0, 14.0], str(tmp_path))
    assert {(f.weight, f.neighbours) for f in files.values()} == {("weight_0", 3), ("weight_1", 3)}
    assert len({f.parts for f in files.values()}) == 1
    # What a task reads: SparkFiles holds the files that addFile shipped.
    customers = read_customers(tuple(map(SparkFiles.get, files[7.0].parts)), len(IDS))
    week, fortnight = customers["weight_0"], customers["weight_1"]
    assert list(week.index.ids) == ["U1", "U2", "U3"]
    np.testing.assert_allclose(week.recent.toarray(), [[5.0, 2.5, 0, 0, 0], [0, 0, 0.25, 0, 0], [0, 0, 1.0, 0, 0]])
    np.testing.assert_allclose(fortnight.recent.toarray()[1], [0, 0, 0.5, 0, 0])
    half = 0.5**0.5
    np.testing.assert_allclose(week.profiles.toarray(), [[half, half, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0]])
    # U2 is not among P3's most recent customers: nobody finds U2 through it.
    np.testing.assert_allclose(week.finders.toarray(), [[half, half, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0]])
    nearest = nearest_customers(dataclasses.replace(week, neighbours=2), ["U2", "U3"], 2).toarray()
    np.testing.assert_allclose(nearest, [[0, 0, 1.0], [0, 0, 0]])  # U2 finds U3; U3 cannot find U2


def test_picks_of_similar_customers_say_so(spark):
    # U1 and U2 both viewed P2; U2 recently bought P3 and P4, which nothing else relates to U1.
    recent = pd.DataFrame([("U1", "P2", 1.0), ("U2", "P2", 1.0), ("U2", "P3", 6.0), ("U2", "P4", 5.0)],
                          columns=["user_id", "product_id", "weight"])
    index = ItemIndex(np.array(IDS))
    empty = sparse.csr_matrix((5, 5))
    weights = {name: 0.0 for name in SIGNALS} | {"neighbours": 1.0, "trend": 0.1}
    hand = Model(index=index, edges=dict.fromkeys(EDGE_SIGNALS, empty), cluster_of=np.full(5, -1),
                 trend=np.array(TREND), weights=weights, customers=customers_from_pairs(recent, index, 5))
    history = pd.DataFrame([("U1", "P2", 1.0, True, "purchase", 1)], columns=HISTORY_COLUMNS)
    result = recommend_block(hand, history, 3)
    assert result["product_id"].tolist() == ["P3", "P4", "P1"]
    assert result["reason_event"].tolist() == [SIMILAR_CUSTOMERS, SIMILAR_CUSTOMERS, None]
    products = spark.createDataFrame(list(TITLES.items()), "product_id string, title string")
    explained = explain(spark.createDataFrame(result), products).orderBy("rank").collect()
    assert [r["reason"] for r in explained] == [
        "popular with customers like you", "popular with customers like you", "popular right now"]
