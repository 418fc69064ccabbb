"""The recommender's parts: item-item matrices, scoring, tuning, and no leakage."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tracemalloc
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark import SparkFiles
from scipy import sparse

from recs import evaluate, model, scoring, tuning
from recs.config import RecsConfig
from recs.splits import eval_set, sampled_history, scoring_histories, time_split


def test_scoring_imports_without_pyspark():
    """Executors score with numpy alone: recs.scoring must not pull in pyspark (nor recs.model)."""
    jobs = Path(__file__).resolve().parents[2] / "jobs"
    code = ("import sys; sys.modules['pyspark'] = None; import recs.scoring, recs.metrics; "
            "print(sorted(m for m in sys.modules if m.startswith('recs')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=jobs, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "recs.model" not in done.stdout


def test_top_per_row_keeps_the_largest_positive_off_diagonal_entries():
    matrix = np.array([[9, 1, 3, 2], [4, 9, -5, 1], [0, 0, 9, 0], [1, 2, 3, 9]], dtype=float)
    kept = scoring.top_per_row(matrix, 2).toarray()
    np.testing.assert_array_equal(kept, [[0, 0, 3, 2], [4, 0, 0, 1], [0, 0, 0, 0], [0, 2, 3, 0]])


def test_ease_matches_the_closed_form():
    gram = np.array([[3.0, 2.0, 0.0], [2.0, 4.0, 1.0], [0.0, 1.0, 2.0]])
    popular, weights = scoring.ease_weights(sparse.csr_matrix(gram), 1.0, 10)
    weights = weights[np.argsort(popular)][:, np.argsort(popular)]
    inverse = np.linalg.inv(gram + np.eye(3))
    expected = -inverse / np.diag(inverse)
    np.fill_diagonal(expected, 0)
    np.testing.assert_allclose(weights, expected, atol=1e-6)


def full_ease(gram: sparse.csr_matrix, regularisation: float, max_items: int) -> sparse.csr_matrix:
    """EASE's whole weight matrix, products x products: the reference the cut paths must match."""
    popular, weights = scoring.ease_weights(gram, regularisation, max_items)
    full = np.zeros(gram.shape)
    full[np.ix_(popular, popular)] = weights
    return sparse.csr_matrix(full)


def random_counts(products: int, users: int, seed: int) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """(Gram matrix of co-occurrence counts, 0/1 histories) of random baskets."""
    rng = np.random.default_rng(seed)
    history = sparse.csr_matrix((rng.random((users, products)) < 0.08).astype(np.float64))
    return (history.T @ history).tocsr(), history


def test_ease_edges_are_the_top_k_of_the_full_weights():
    gram, _ = random_counts(60, 200, seed=1)
    full = full_ease(gram, 5.0, 40)
    expected = scoring.top_per_row(full, 7).toarray()
    got = scoring.ease_edges(*scoring.ease_weights(gram, 5.0, 40), 60, 7)
    np.testing.assert_allclose(got.toarray(), expected, rtol=1e-6)


def test_ease_top_k_in_dense_blocks_equals_the_sparse_product():
    gram, history = random_counts(60, 200, seed=2)
    history = history[:50].tolil()
    history[3] = 0  # a user with no history: no list
    history = history.tocsr()
    excluded = history.copy()
    excluded.data[::2] = 0  # some bought products, not all
    excluded.eliminate_zeros()
    expected = scoring.top_k((history @ full_ease(gram, 5.0, 40)).tocsr(), excluded, 10)[0]
    got = scoring.ease_top_k(*scoring.ease_weights(gram, 5.0, 40), history, excluded, 10, block_cells=40 * 7)
    np.testing.assert_array_equal(got, expected)
    assert (got[3] == -1).all() and (got[0] >= 0).all()


def test_counts_reuse_their_last_ease_weights_only_for_the_same_settings():
    gram, _ = random_counts(60, 200, seed=3)
    empty = sparse.csr_matrix(gram.shape)
    counts = scoring.Counts(covisit=empty, transitions=empty, ease=gram)
    first = counts.ease_weights(5.0, 40)
    assert counts.ease_weights(5.0, 40)[1] is first[1]  # no second inverse
    other = counts.ease_weights(50.0, 40)
    assert other[1] is not first[1]
    np.testing.assert_allclose(other[1], scoring.ease_weights(gram, 50.0, 40)[1])
    assert counts.ease_weights(5.0, 30)[1].shape == (30, 30)
    np.testing.assert_allclose(counts.ease_weights(5.0, 40)[1], first[1])  # recomputed, the same


def tiny_model(weights: dict[str, float]) -> scoring.Model:
    index = scoring.ItemIndex(np.array(["a", "b", "c", "d"]))
    covisit = sparse.csr_matrix(np.array([[0, 1.0, 0.5, 0], [1.0, 0, 0, 0], [0.5, 0, 0, 0], [0, 0, 0, 0]]))
    empty = sparse.csr_matrix((4, 4))
    return scoring.Model(
        index=index, edges={"covisit": covisit, "ease": empty, "next": empty, "content": empty},
        cluster_of=np.array([0, 0, 1, 1]), trend=np.array([1.0, 0.2, 0.1, 0.5]), weights=weights,
    )


def test_recommend_block_never_returns_bought_products_and_explains_personal_ones():
    history = pd.DataFrame({
        "user_id": ["u1", "u2"], "product_id": ["a", "d"], "weight": [1.0, 1.0], "purchased": [True, False],
        "strongest_event": ["purchase", "view"], "recency": [1, 1],
    })
    weights = {"covisit": 1.0, "ease": 0.0, "next": 0.0, "content": 0.0, "cluster": 0.0, "trend": 0.1}
    result = scoring.recommend_block(tiny_model(weights), history, k=3)
    u1 = result[result["user_id"] == "u1"]
    assert "a" not in set(u1["product_id"])  # bought
    assert list(u1["product_id"]) == ["b", "c", "d"]  # covisit 1.0, 0.5, then trend only
    assert list(u1["reason_product_id"][:2]) == ["a", "a"] and u1["reason_event"].iloc[0] == "purchase"
    assert u1["reason_product_id"].iloc[2] is None
    u2 = result[result["user_id"] == "u2"]
    assert list(u2["product_id"])[0] == "a"  # viewed, not bought: trend leads, "d" itself can come back
    assert len(u2) == 3


def dense_scores(signals: dict[str, np.ndarray], excluded: sparse.csr_matrix) -> scoring.Scores:
    """`Scores` with every product a candidate, from users x products arrays."""
    users, products = next(iter(signals.values())).shape
    candidates = sparse.csr_matrix(np.ones((users, products), dtype=np.int8))
    values = {name: np.asarray(array, dtype=np.float32).ravel() for name, array in signals.items()}
    return scoring.Scores(candidates, values, excluded.toarray().ravel() > 0)


def test_tune_weights_finds_the_informative_signal():
    rng = np.random.default_rng(0)
    relevant = sparse.csr_matrix((np.ones(50), (np.arange(50), rng.integers(0, 30, 50))), shape=(50, 30))
    signal = relevant.toarray() + 0.01 * rng.random((50, 30))
    noise = rng.random((50, 30))
    signals = {name: noise.copy() for name in scoring.SIGNALS}
    signals["ease"] = signal
    start = dict.fromkeys(scoring.SIGNALS, 1.0)
    weights, best = scoring.tune_weights(dense_scores(signals, sparse.csr_matrix((50, 30))), relevant, 5, start)
    assert best == pytest.approx(1.0)
    assert weights["ease"] > 0


def sequential_ascent(scores, relevant, k, start, fixed, rounds=2):
    """Coordinate ascent one candidate after the other: what `tune_weights` must equal."""
    weights = {**start, **fixed}
    buckets = scoring.row_buckets(scores.candidates.indptr)

    def quality(candidate):
        return scoring.ndcg(scoring.ranked(scores, candidate, k, 0.0, buckets)[0], relevant)

    best = quality(weights)
    for _ in range(rounds):
        improved = False
        for name in [s for s in scoring.SIGNALS if s not in fixed]:
            for value in scoring.WEIGHT_GRID:
                candidate = {**weights, name: value}
                if value == weights[name] or not any(candidate.values()):
                    continue
                score = quality(candidate)
                if score > best + 1e-9:
                    weights, best, improved = candidate, score, True
        if not improved:
            break
    return weights, best


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tune_weights_ranks_a_coordinate_at_once_and_chooses_as_one_after_the_other(seed):
    rng = np.random.default_rng(seed)
    users, products = 80, 40
    relevant = (sparse.random(users, products, density=0.05, random_state=seed, format="csr")
                + sparse.csr_matrix((np.ones(users), (np.arange(users), rng.integers(0, products, users))),
                                    shape=(users, products)))
    relevant.data[:] = 1.0  # every user has something relevant
    # Signals of mixed use, coarse enough to tie now and then.
    signals = {name: np.round(rng.random((users, products)) + w * relevant.toarray(), 1)
               for name, w in zip(scoring.SIGNALS, (0.0, 0.3, 0.1, 0.0, 0.6, 0.0, 0.2), strict=True)}
    excluded = sparse.random(users, products, density=0.05, random_state=seed + 10, format="csr")
    scores = dense_scores(signals, excluded)
    start = dict.fromkeys(scoring.SIGNALS, 0.5)
    fixed = {"content": 0.0}
    assert scoring.tune_weights(scores, relevant, 5, start, fixed) == sequential_ascent(scores, relevant, 5, start,
                                                                                         fixed)


def events_frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "product_id", "event_type", "quantity", "ts"])


def test_no_leakage_from_the_test_window(spark, tmp_path):
    """Everybody buys X in the test window only: nothing trained before the cutoff may know X."""
    start = datetime(2026, 1, 1)
    rows = []
    for u in range(30):
        for day, product in enumerate(["p1", "p2", "p3", f"p{4 + u % 3}"]):
            rows.append((f"u{u}", product, "purchase", 1, start + timedelta(days=day * 10 + u % 5)))
        rows.append((f"u{u}", "X", "purchase", 1, start + timedelta(days=100)))
    rows.append(("u0", "p7", "purchase", 1, start + timedelta(days=101)))
    events = spark.createDataFrame(events_frame(rows))
    config = RecsConfig.from_settings(dict(eval_days=30, k_min=2, neighbours_per_product=5, top_n=3, eval_k=3))
    split = time_split(events, config.evaluation.eval_days)
    assert split.train.where("product_id = 'X'").count() == 0
    assert {row["product_id"] for row in split.relevant.collect()} == {"X", "p7"}

    index = scoring.ItemIndex(np.array(["X", "p1", "p2", "p3", "p4", "p5", "p6", "p7"]))
    content = model.content_edges(
        spark.createDataFrame(pd.DataFrame({"product_id": ["p1"], "neighbour_id": ["X"], "score": [0.9]})), index)
    clusters = pd.DataFrame({"product_id": index.ids, "cluster": [0, 0, 0, 0, 1, 1, 1, 1]})
    fitted = model.fit_model(split.train, index, content, clusters, config.recommender, str(tmp_path))
    x = index.positions(["X"])[0]
    assert fitted.trend[x] == 0
    for name in ("covisit", "ease", "next"):
        edges = fitted.edges[name]
        assert edges[:, x].nnz == 0 and edges[x].nnz == 0, name
    test = eval_set(split, index, config)
    assert test.buyers[x] == 0
    # Only text (known before the cutoff) may point at X; behaviour and popularity may not.
    scores = model.candidate_scores(fitted, test.history, test.users, config.evaluation.eval_k, spark)
    for name in ("covisit", "ease", "next", "neighbours", "trend"):
        assert not scores[name][scores.positions == x].any(), name
    customers = scoring.read_customers(tuple(map(SparkFiles.get, fitted.customer_file.parts)), len(index))
    assert customers[fitted.customer_file.weight].recent[:, x].nnz == 0


def hand_customers(neighbours: int) -> scoring.Customers:
    recent = pd.DataFrame(
        [("u1", "a", 1.0), ("u1", "b", 1.0), ("u2", "a", 1.0), ("u2", "b", 1.0), ("u2", "c", 2.0), ("u3", "d", 1.0)],
        columns=["user_id", "product_id", "weight"],
    )
    return scoring.customers_from_pairs(recent, scoring.ItemIndex(np.array(["a", "b", "c", "d"])), neighbours)


def test_in_user_blocks_keeps_users_whole_and_spreads_a_small_table_over_the_cores(spark):
    from pyspark import TaskContext

    rows = pd.DataFrame({"user_id": np.repeat([f"U{i}" for i in range(300)], 3), "n": np.arange(900)})

    def seen(block: pd.DataFrame) -> pd.DataFrame:
        users = block["user_id"].unique()
        return pd.DataFrame({"task": TaskContext.get().partitionId(), "users": len(users), "rows": len(block),
                             "user_id": users})

    schema = "task int, users int, rows int, user_id string"
    # Fewer users than a block holds: still one task per core (a grouping would be one task).
    few = model.in_user_blocks(spark.createDataFrame(rows), 300, seen, schema, users_per_block=1000).toPandas()
    assert few["task"].nunique() == spark.sparkContext.defaultParallelism == 2
    blocks = model.in_user_blocks(spark.createDataFrame(rows), 300, seen, schema, users_per_block=40).toPandas()
    for got in (few, blocks):
        assert sorted(got["user_id"]) == sorted(set(rows["user_id"]))  # every user in one block
        assert (got["rows"] == 3 * got["users"]).all()  # with all their rows
    assert blocks["users"].max() <= 40 and blocks["task"].nunique() == 8  # 300 users / 40 a block
    # Numbered users come back in their order, for the driver not to sort what it collects.
    numbered = spark.createDataFrame(rows.assign(row=rows["user_id"].str[1:].astype(np.int32)))
    in_order = model.in_user_blocks(numbered, 300, lambda block: block[["row"]], "row int", users_per_block=40,
                                    in_order_of="row").toPandas()
    assert in_order["row"].is_monotonic_increasing and in_order["row"].nunique() == 300


def test_top_entries_of_a_row_do_not_depend_on_the_rows_it_is_padded_with():
    # Rows of a few hundred values with many ties (as cosines of small sets have): which
    # tied entries a row keeps depended, through argpartition, on the longest row of its
    # group, so a user's candidates changed with the users scored beside them.
    rng = np.random.default_rng(0)
    lengths = rng.integers(300, 511, 20)
    indptr = np.r_[0, np.cumsum(lengths)]
    values = (rng.integers(0, 5, indptr[-1]) / 7).astype(np.float32)
    together = scoring.top_entries(indptr, values, 119)[0]
    for row, (start, end) in enumerate(zip(indptr[:-1], indptr[1:], strict=True)):
        alone = scoring.top_entries(np.array([0, end - start]), values[start:end], 119)[0][0]
        assert (alone + start).tolist() == together[row].tolist()
    # The k largest, best first; of equal values the earlier entry.
    values = np.array([0.2, 0.9, 0.5, 0.9, 0.1, 0.7, 0.5, 0.5])
    assert scoring.top_entries(np.array([0, 8]), values, 4)[0].tolist() == [[1, 3, 5, 2]]


def test_ranking_works_through_a_bounded_block_of_candidates_at_a_time(monkeypatch):
    # Tuning ranks tens of millions of candidates, a few grid values at once: ranking a
    # whole bucket of rows at once held ~30 bytes per padded cell, several GB at 1M products.
    monkeypatch.setattr(scoring, "TOP_BLOCK_CELLS", 1 << 14)
    rng = np.random.default_rng(0)
    indptr = np.r_[0, np.cumsum(rng.integers(200, 256, 8000))]
    values = rng.random(indptr[-1]).astype(np.float32)
    buckets = scoring.row_buckets(indptr)
    tracemalloc.start()
    try:
        entries, best = scoring.top_entries(indptr, values, 10, buckets)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < values.nbytes
    for row in rng.choice(8000, 200, replace=False):
        start, end = indptr[row], indptr[row + 1]
        assert entries[row].tolist() == (start + np.argsort(-values[start:end], kind="stable")[:10]).tolist()
        assert best[row].tolist() == pytest.approx(np.sort(values[start:end])[::-1][:10].tolist())


def test_blending_holds_no_second_copy_of_the_candidates(monkeypatch):
    # Tuning blends a few copies of tens of millions of candidates at once: the weighted
    # signal of all entries, a temporary as large as the blend, was 320 MB each at L.
    monkeypatch.setattr(scoring, "BLEND_BLOCK", 1 << 16)
    rng = np.random.default_rng(0)
    entries = 1 << 21
    candidates = sparse.csr_matrix((np.ones(entries, np.int8), rng.integers(0, 1000, entries),
                                    np.array([0, entries])), shape=(1, 1000))
    scores = scoring.Scores(candidates, {s: rng.random(entries, dtype=np.float32) for s in scoring.SIGNALS},
                            np.zeros(entries, dtype=bool))
    weights = dict(zip(scoring.SIGNALS, (0.5, 1.0, 0.0, 2.0, 0.25, 4.0, 0.1), strict=True))
    tracemalloc.start()
    try:
        blended = scoring.blend(scores, weights)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * blended.nbytes
    expected = np.zeros(entries, dtype=np.float32)
    for name, weight in weights.items():
        if weight:
            expected += np.float32(weight) * scores[name]
    assert np.array_equal(blended, expected)


def test_als_factors_placed_by_id_through_arrow(spark):
    factors = spark.createDataFrame(
        [(2, [float(v) for v in range(evaluate.ALS_RANK)]), (0, [1.0] * evaluate.ALS_RANK)],
        "id int, features array<float>")
    matrix = evaluate.factor_matrix(factors, 4)
    assert matrix.dtype == np.float32 and matrix.shape == (4, evaluate.ALS_RANK)
    assert matrix[2].tolist() == list(range(evaluate.ALS_RANK))
    assert matrix[0].tolist() == [1.0] * evaluate.ALS_RANK
    assert not matrix[[1, 3]].any()


def test_neighbour_scores_by_hand():
    # u1 {a, b} and u2 {a, b, c}: cosine 2 / sqrt(2 * 3); u3 {d} shares nothing.
    similarity = 2 / np.sqrt(6)
    scores = scoring.neighbour_scores(hand_customers(neighbours=1), ["u1", "u2", "u3", "new"], 4).toarray()
    np.testing.assert_allclose(scores[0], similarity * np.array([1.0, 1.0, 2.0, 0.0]))  # u2's, never u1's own
    np.testing.assert_allclose(scores[1], similarity * np.array([1.0, 1.0, 0.0, 0.0]))
    np.testing.assert_array_equal(scores[2:], 0)  # no similar customer; unknown user


def test_neighbour_scores_keep_only_the_nearest_customers():
    recent = pd.DataFrame(
        [("me", "a", 1.0), ("me", "b", 1.0), ("close", "a", 1.0), ("close", "b", 1.0), ("close", "c", 1.0),
         ("far", "a", 1.0), ("far", "d", 1.0), ("far", "e", 1.0), ("far", "f", 1.0)],
        columns=["user_id", "product_id", "weight"],
    )
    index = scoring.ItemIndex(np.array(list("abcdef")))
    one = scoring.neighbour_scores(scoring.customers_from_pairs(recent, index, 1), ["me"], 6).toarray()[0]
    two = scoring.neighbour_scores(scoring.customers_from_pairs(recent, index, 2), ["me"], 6).toarray()[0]
    assert one[2] > 0 and not one[3:].any()  # only "close" counts
    assert two[3:].all()  # "far" too


def test_neighbour_scores_keep_each_users_best_products():
    # 800 similar customers brought ~8,000 candidates per user at a million products.
    rng = np.random.default_rng(4)
    recent = pd.DataFrame({"user_id": [f"c{rng.integers(40)}" for _ in range(600)],
                           "product_id": [f"p{rng.integers(200):03d}" for _ in range(600)], "weight": 1.0})
    recent = recent.drop_duplicates(["user_id", "product_id"])
    index = scoring.ItemIndex(np.array(sorted(recent["product_id"].unique())))
    users = [f"c{i}" for i in range(40)]
    every = scoring.neighbour_scores(scoring.customers_from_pairs(recent, index, 10), users, len(index)).toarray()
    kept = scoring.neighbour_scores(scoring.customers_from_pairs(recent, index, 10, products_kept=5), users,
                                    len(index)).toarray()
    assert ((every > 0).sum(axis=1) > 5).all()
    assert ((kept > 0).sum(axis=1) == 5).all()
    for user in range(len(users)):  # the best five, with their scores
        chosen = kept[user] > 0
        np.testing.assert_allclose(kept[user][chosen], every[user][chosen], rtol=1e-6)
        assert every[user][~chosen].max() <= every[user][chosen].min()


def test_scores_from_a_table_in_row_order_use_its_columns_without_a_copy():
    rng = np.random.default_rng(8)
    rows = np.repeat(np.arange(50), rng.integers(0, 30, 50))
    positions = np.concatenate([np.sort(rng.choice(100, n, replace=False)) for n in np.bincount(rows, minlength=50)])
    table = {"row": rows.astype(np.int32), "position": positions.astype(np.int32),
             "excluded": rng.random(len(rows)) < 0.1,
             **{name: rng.random(len(rows)).astype(np.float32) for name in scoring.SIGNALS}}
    in_order = scoring.scores_from_table(table, 50, 100)
    for name in scoring.SIGNALS:
        assert np.shares_memory(in_order[name], table[name])  # no copy of tens of millions of entries
    shuffled = rng.permutation(len(rows))
    anyhow = scoring.scores_from_table({name: values[shuffled] for name, values in table.items()}, 50, 100)
    np.testing.assert_array_equal(anyhow.candidates.indptr, in_order.candidates.indptr)
    np.testing.assert_array_equal(anyhow.positions, positions)
    for name in scoring.SIGNALS:
        np.testing.assert_array_equal(anyhow[name], table[name])
    np.testing.assert_array_equal(anyhow.excluded, table["excluded"])


def test_nearest_customers_through_the_finders_equal_the_exact_cosine_when_all_are_finders():
    rng = np.random.default_rng(5)
    rows = pd.DataFrame({"user_id": [f"c{rng.integers(300):03d}" for _ in range(2000)],
                         "position": rng.zipf(1.5, 2000) % 60, "weight": 1.0}).drop_duplicates(["user_id", "position"])
    users = sorted(rows["user_id"].unique())[:50]
    every = scoring.customers_by_weight(rows.assign(finder=True), 60, ["weight"], 10)["weight"]
    exact = (every.profiles @ every.profiles.T).toarray()
    np.fill_diagonal(exact, 0)
    nearest = scoring.nearest_customers(every, users, 10).toarray()
    for row, user in enumerate(users):
        mine = exact[every.index.positions([user])[0]]
        chosen = np.flatnonzero(nearest[row])
        assert len(chosen) == min(10, np.count_nonzero(mine))
        np.testing.assert_allclose(nearest[row, chosen], mine[chosen])
        assert mine[chosen].min() >= np.sort(mine)[-10] - 1e-12  # the 10 most similar (ties either way)
    # Without the popular products' older customers as finders, a user finds fewer of them.
    recent_only = rows.assign(finder=rows.groupby("position").cumcount() < 5)
    capped = scoring.customers_by_weight(recent_only, 60, ["weight"], 10)["weight"]
    found = scoring.nearest_customers(capped, users, 300)
    assert found.nnz < scoring.nearest_customers(every, users, 300).nnz


def test_discovery_slots():
    assert [scoring.discovery_slots(k, 0.3) for k in (1, 2, 5, 10, 20)] == [0, 1, 2, 3, 6]
    assert scoring.discovery_slots(10, 0.0) == 0
    assert scoring.discovery_slots(3, 0.9) == 2  # the blend always keeps the first place


def test_ranked_gives_the_last_slots_to_the_users_own_signals():
    # Trend prefers products 0 > 1 > 2 > 3; the user's covisit signal 5 > 4 > 3.
    trend = np.array([[1.0, 0.9, 0.8, 0.7, 0.0, 0.0]] * 2)
    covisit = np.array([[0.0, 0.0, 0.0, 0.5, 0.8, 1.0]] * 2)
    signals = {"trend": trend, "covisit": covisit}
    weights = {"trend": 1.0, "covisit": 0.1}
    nothing = dense_scores(signals, sparse.csr_matrix((2, 6)))
    plain, _ = scoring.ranked(nothing, weights, 4, 0.0)
    np.testing.assert_array_equal(plain, [[0, 1, 2, 3]] * 2)
    positions, blended = scoring.ranked(nothing, weights, 4, 0.5)
    np.testing.assert_array_equal(positions, [[0, 1, 5, 4]] * 2)
    np.testing.assert_allclose(blended[0], [1.0, 0.9, 0.1, 0.08])  # the blend's score, for every slot
    # Bought products are never shown, in either part; shown ones never twice.
    bought = sparse.csr_matrix(np.array([[1, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]]))
    positions, _ = scoring.ranked(dense_scores(signals, bought), weights, 4, 0.5)
    np.testing.assert_array_equal(positions, [[1, 2, 4, 3], [0, 1, 5, 4]])
    # With fewer products of the user's own signals than slots, the blend's next best fill them.
    few = dense_scores({"trend": trend, "covisit": np.array([[0.0, 0.0, 0.0, 0.0, 0.0, 1.0]] * 2)},
                       sparse.csr_matrix((2, 6)))
    positions, _ = scoring.ranked(few, weights, 4, 0.5)
    np.testing.assert_array_equal(positions, [[0, 1, 5, 2]] * 2)


def test_tune_neighbours_returns_the_customers_of_the_chosen_settings(spark, tmp_path):
    # Pairs of customers who buy alike; in the window each buys what their twin bought last.
    start = datetime(2026, 1, 1)
    rows = []
    for pair in range(10):
        shared, twin_a, twin_b = f"s{pair}", f"a{pair}", f"b{pair}"
        for user, own, later in ((f"u{pair}a", twin_a, twin_b), (f"u{pair}b", twin_b, twin_a)):
            rows.append((user, shared, "purchase", 1, start + timedelta(days=pair)))
            rows.append((user, own, "purchase", 1, start + timedelta(days=40 + pair)))
            rows.append((user, later, "purchase", 1, start + timedelta(days=100)))
    events = spark.createDataFrame(events_frame(rows))
    config = RecsConfig.from_settings(dict(eval_days=30, eval_k=3, neighbour_users=50, neighbour_half_life_days=5.0))
    split = time_split(events, config.evaluation.eval_days)
    index = scoring.ItemIndex(np.array(sorted({row[1] for row in rows})))
    evaluation = eval_set(split, index, config)
    tuned, file = tuning.tune_neighbours(split.train, index, evaluation, config.recommender, 3, str(tmp_path))
    assert tuned.neighbour_half_life_days in {5.0, *tuning.NEIGHBOUR_HALF_LIVES}
    assert tuned.neighbour_users in {50, *tuning.NEIGHBOUR_USERS}
    assert file.neighbours == tuned.neighbour_users
    # The customers are those of the chosen half-life: the same as counting afresh with it.
    customers = scoring.read_customers(tuple(map(SparkFiles.get, file.parts)), len(index))[file.weight]
    fresh = model.ship_customers(split.train, index, tuned, [tuned.neighbour_half_life_days], str(tmp_path))
    fresh = fresh[tuned.neighbour_half_life_days]
    fresh_customers = scoring.read_customers(tuple(map(SparkFiles.get, fresh.parts)), len(index))[fresh.weight]
    np.testing.assert_allclose(customers.recent.toarray(), fresh_customers.recent.toarray())
    # Each user's twin is their nearest customer: the signal finds every window purchase.
    scores = scoring.neighbour_scores(dataclasses.replace(customers, neighbours=file.neighbours), evaluation.users,
                                      len(index))
    top = scoring.top_k(scores, evaluation.excluded, 3)[0]
    assert scoring.ndcg(top, evaluation.relevant) == pytest.approx(1.0)


def random_shop(seed: int, products: int = 80, users: int = 40, clusters: int = 5):
    """A model with random item-item edges, clusters, trend and similar customers, and
    histories of `users` (some heavy, some who bought most of a cluster)."""
    rng = np.random.default_rng(seed)
    index = scoring.ItemIndex(np.array([f"p{i:03d}" for i in range(products)]))

    def edges(density: float) -> sparse.csr_matrix:
        matrix = sparse.random(products, products, density=density, random_state=rng, dtype=np.float64)
        matrix.setdiag(0)
        return scoring.top_per_row(matrix, 8)

    trend = rng.random(products)
    rows = []
    for u in range(users):
        # Every tenth user bought the 15 most popular products: their best are further down.
        heavy = u % 10 == 0
        chosen = np.argsort(-trend)[:15] if heavy else rng.choice(products, size=int(rng.integers(1, 6)), replace=False)
        for rank, p in enumerate(chosen, 1):
            bought = heavy or bool(rng.random() < 0.6)
            rows.append((f"u{u}", index.ids[p], float(rng.random() + 0.1), bought, "view", rank))
    history = pd.DataFrame(rows, columns=["user_id", "product_id", "weight", "purchased", "strongest_event", "recency"])
    cluster_of = rng.integers(0, clusters, products)
    cluster_of[np.argsort(-trend)[15:18]] = -1  # popular products without a cluster: only trend reaches them
    fitted = scoring.Model(
        index=index, edges={name: edges(0.05) for name in scoring.EDGE_SIGNALS}, cluster_of=cluster_of,
        trend=rng.random(products), weights={},
        customers=scoring.customers_from_pairs(history[["user_id", "product_id", "weight"]], index, 3),
    )
    return fitted, history, sorted(history["user_id"].unique())


def dense_top_k(fitted: scoring.Model, history: pd.DataFrame, users: list[str], weights: dict, k: int):
    """The blend over the whole catalog, as a users x products array (the reference)."""
    def normalised(array):
        top = array.max(axis=1, keepdims=True)
        return np.divide(array, top, out=np.zeros_like(array), where=top > 0)

    weighted = scoring.history_matrix(history, users, fitted.index)
    shares = sparse.diags(1.0 / np.asarray(weighted.sum(axis=1)).ravel()) @ weighted
    recent = scoring.history_matrix(history[history["recency"] <= fitted.recent_items_for_next], users, fitted.index)
    signals = {name: normalised((shares @ fitted.edges[name]).toarray()) for name in ("covisit", "ease", "content")}
    signals["next"] = normalised((recent @ fitted.edges["next"]).toarray())
    signals["neighbours"] = normalised(scoring.neighbour_scores(fitted.customers, users, len(fitted.index)).toarray())
    membership = np.zeros((len(fitted.index), fitted.cluster_of.max() + 1))
    clustered = fitted.cluster_of >= 0
    membership[np.flatnonzero(clustered), fitted.cluster_of[clustered]] = 1
    interest = shares @ membership
    signals["cluster"] = normalised(interest[:, np.maximum(fitted.cluster_of, 0)] * clustered * fitted.trend)
    signals["trend"] = np.tile(fitted.trend, (len(users), 1))
    blended = sum(weight * signals[name] for name, weight in weights.items())
    bought = scoring.history_matrix(history[history["purchased"]].assign(one=1.0), users, fitted.index, "one")
    return scoring.top_k_dense(blended, bought, k)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("weights", [
    dict.fromkeys(scoring.SIGNALS, 1.0),
    {"trend": 1.0, "cluster": 0.5},  # only the two signals that rank every product
    {"covisit": 0.25, "neighbours": 2.0, "cluster": 4.0, "trend": 0.1, "next": 0.5},
])
def test_the_blend_over_candidates_equals_the_blend_over_the_whole_catalog(seed, weights):
    fitted, history, users = random_shop(seed)
    k = 10
    scores = scoring.signal_scores(fitted, history, users, k)
    # Far fewer entries than users x catalog, yet the same top k.
    assert scores.candidates.nnz < 0.8 * len(users) * len(fitted.index)
    positions, best = scoring.ranked(scores, {**dict.fromkeys(scoring.SIGNALS, 0.0), **weights}, k, 0.0)
    expected_positions, expected_best = dense_top_k(fitted, history, users, weights, k)
    np.testing.assert_allclose(best, expected_best, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(positions, expected_positions)


def test_candidate_scores_from_the_tasks_equal_the_driver_scores(spark, tmp_path):
    """Tuning and evaluation score their users in Spark tasks, which read the customers
    from the shipped file: the candidate table they send back is what scoring on the
    driver with those customers in memory gives."""
    rng = np.random.default_rng(3)
    start = datetime(2026, 1, 1)
    rows = [(f"u{rng.integers(60)}", f"p{rng.integers(40):02d}", str(rng.choice(["view", "purchase"])), 1,
             start + timedelta(days=int(rng.integers(90)))) for _ in range(900)]
    events = spark.createDataFrame(events_frame(rows))
    settings = RecsConfig.from_settings(dict(neighbour_users=5, neighbour_products=4, k_min=2)).recommender
    index = scoring.ItemIndex(np.array(sorted({row[1] for row in rows})))
    clusters = pd.DataFrame({"product_id": index.ids, "cluster": np.arange(len(index)) % 4})
    content = sparse.csr_matrix((len(index), len(index)), dtype=np.float32)
    fitted = model.fit_model(events, index, content, clusters, settings, str(tmp_path))
    history = model.scoring_history(model.user_item_weights(events, settings)).toPandas()
    users = sorted(history["user_id"].unique())
    from_tasks = model.candidate_scores(fitted, history, users, 5, spark)
    assert fitted.customers is None  # the driver's model never loaded them
    in_memory = scoring.with_customers(dataclasses.replace(fitted), SparkFiles.get)
    local = scoring.signal_scores(in_memory, history, users, 5)
    np.testing.assert_array_equal(from_tasks.candidates.indptr, local.candidates.indptr)
    np.testing.assert_array_equal(from_tasks.candidates.indices, local.candidates.indices)
    for name in scoring.SIGNALS:
        np.testing.assert_allclose(from_tasks[name], local[name], rtol=1e-6, err_msg=name)
    np.testing.assert_array_equal(from_tasks.excluded, local.excluded)
    assert from_tasks["neighbours"].any()
    # The tasks keep each user's four best products of the similar customers'.
    chosen = from_tasks.candidates.copy()
    chosen.data = (from_tasks["neighbours"] > 0).astype(np.int8)
    assert chosen.sum(axis=1).max() == 4


def test_candidate_scores_leave_no_copy_of_the_model_in_the_driver(spark, tmp_path, monkeypatch):
    """A broadcast only unpersisted keeps its driver copy in the JVM heap: at a million
    products each model is gigabytes, and the evaluate step broadcasts five of them."""
    created = []
    broadcast = spark.sparkContext.broadcast
    monkeypatch.setattr(spark.sparkContext, "broadcast", lambda value: created.append(broadcast(value)) or created[-1])
    rows = [(f"u{u}", f"p{(u * 7 + i) % 30:02d}", "purchase", 1, datetime(2026, 1, 1) + timedelta(days=i))
            for u in range(40) for i in range(4)]
    events = spark.createDataFrame(events_frame(rows))
    settings = RecsConfig.from_settings(dict(neighbour_users=5, k_min=2)).recommender
    index = scoring.ItemIndex(np.array(sorted({row[1] for row in rows})))
    clusters = pd.DataFrame({"product_id": index.ids, "cluster": np.arange(len(index)) % 3})
    fitted = model.fit_model(events, index, sparse.csr_matrix((len(index), len(index)), dtype=np.float32),
                             clusters, settings, str(tmp_path))
    history = model.scoring_history(model.user_item_weights(events, settings)).toPandas()
    users = sorted(history["user_id"].unique())
    model.candidate_scores(fitted, history, users, 5, spark)
    model.neighbour_grid(spark, index, {7.0: fitted.customer_file}, history, users, [2, 5], 5)
    assert len(created) == 2
    assert not any(shared._jbroadcast.isValid() for shared in created)


def test_eval_set_draws_its_sample_of_users_in_spark(spark):
    start = datetime(2026, 1, 1)
    rows = []
    for u in range(300):
        rows.append((f"u{u:03d}", f"p{u % 7}", "purchase", 1, start))
        rows.append((f"u{u:03d}", f"p{(u + 1) % 7}", "purchase", 1, start + timedelta(days=60)))
    events = spark.createDataFrame(events_frame(rows))
    index = scoring.ItemIndex(np.array([f"p{i}" for i in range(7)]))
    split = time_split(events, 30)

    def sample(seed: int):
        return eval_set(split, index, RecsConfig.from_settings(dict(eval_days=30, eval_users=100, seed=seed)))

    first, again, other = sample(7), sample(7), sample(8)
    assert first.window_users == 300 and len(first.users) == 100 and first.users == sorted(first.users)
    assert first.users == again.users and first.users != other.users  # seeded
    assert first.relevant.nnz == 100 and set(first.history["user_id"]) == set(first.users)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_signal_weighed_zero_can_be_left_out_of_the_candidates(seed):
    """The evaluate step scores cluster-only without the similar customers (their weight
    is 0 there, and it has no discovery slots): the lists must be the same as with them."""
    fitted, history, users = random_shop(seed)
    fitted.weights = dict.fromkeys(scoring.SIGNALS, 1.0) | {"neighbours": 0.0}
    with_them = scoring.signal_scores(fitted, history, users, 5)
    without = scoring.signal_scores(dataclasses.replace(fitted, customers=None), history, users, 5)
    assert with_them.candidates.nnz > without.candidates.nnz  # the customers did add candidates
    for weights, share in ((fitted.weights, 0.0), ({"cluster": 1.0}, 0.0)):
        # The same blended scores slot by slot (products tied on them may swap places).
        # (With discovery slots they can differ; cluster-only has none.)
        np.testing.assert_allclose(scoring.ranked(with_them, weights, 5, share)[1],
                                   scoring.ranked(without, weights, 5, share)[1], rtol=1e-6)


def test_sampled_histories_aggregate_only_the_samples_events_aged_from_the_newest_of_all(spark):
    start = datetime(2026, 1, 1)
    rows = [(f"u{u}", f"p{(u + d) % 5}", "purchase", 1, start + timedelta(days=d * 3 + u)) for u in range(8)
            for d in range(4)]
    events = spark.createDataFrame(events_frame(rows))
    settings = RecsConfig.from_settings({}).recommender
    chosen = ["u1", "u4"]  # u7 holds the newest event: the ages still count from it
    sampled = sampled_history(events, chosen, settings)
    whole = model.scoring_history(model.user_item_weights(events, settings)).toPandas()
    expected = whole[whole["user_id"].isin(chosen)].sort_values(["user_id", "product_id"]).reset_index(drop=True)
    got = sampled.toPandas().sort_values(["user_id", "product_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)
    # The sample is taken before the aggregation: the plan prints the semi-join below it.
    plan = sampled._jdf.queryExecution().optimizedPlan().toString()
    assert plan.index("Aggregate") < plan.index("LeftSemi"), plan


def test_an_evaluation_sets_undecayed_history_weighs_each_event_by_its_type_alone(spark):
    """The "without time" ablation scores the evaluation set's histories without the
    recency decay; they come from the same pass as the decayed ones."""
    start = datetime(2026, 1, 1)
    kinds = ["view", "add_to_cart", "purchase"]
    rows = [(f"u{u}", f"p{(u + d) % 4}", kinds[(u + d) % 3], 1, start + timedelta(days=d * 11 + u))
            for u in range(6) for d in range(5)]
    rows += [(f"u{u}", "p9", "purchase", 1, start + timedelta(days=80)) for u in range(6)]  # the test window
    events = spark.createDataFrame(events_frame(rows))
    index = scoring.ItemIndex(np.array([*(f"p{i}" for i in range(4)), "p9"]))
    config = RecsConfig.from_settings(dict(eval_days=10))
    split = time_split(events, 10)
    evaluation = eval_set(split, index, config)
    assert evaluation.users == [f"u{u}" for u in range(6)]
    train = events_frame(rows)[lambda df: df["ts"] < start + timedelta(days=70)]
    by_type = train.assign(weight=train["event_type"].map(config.recommender.event_weights))
    expected = by_type.groupby(["user_id", "product_id"])["weight"].sum()
    undecayed = evaluation.undecayed_history().set_index(["user_id", "product_id"])["weight"]
    pd.testing.assert_series_equal(undecayed.sort_index(), expected.sort_index(), check_dtype=False)
    # `history` itself keeps the decayed weights, as scoring them alone gives.
    decayed = scoring_histories(split.train, evaluation.users, config.recommender)
    pd.testing.assert_frame_equal(
        evaluation.history[decayed.columns].sort_values(["user_id", "product_id"]).reset_index(drop=True),
        decayed.sort_values(["user_id", "product_id"]).reset_index(drop=True))
    assert (evaluation.history["weight"] < evaluation.undecayed_history()["weight"]).all()
