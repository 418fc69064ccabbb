"""Evaluation: the recommender against strong baselines on a split the model never saw.

The protocols (time split, leave last out) are `recs/splits.py`'s. Validation is
carved from the train part the same way, and every hyper-parameter (ours, through
`recs/tuning.py` as in the recommend step, and the baselines') is chosen there, never
on the test window. The whole catalog is ranked (no sampled negatives), without what
the user bought before. The ALS baseline runs beside everything else, its grid's fits
at once (`recs/concurrency.py`): alone, each leaves the cores idle between its short
stages. What collects large results to the driver (the edges, the candidate tables)
runs one at a time.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from scipy import sparse

from recs import io, scoring
from recs import model as recommender
from recs.concurrency import concurrently, in_background
from recs.config import RecsConfig, RuntimeSettings
from recs.io import RunPaths, write_table
from recs.metrics import best_baseline, metrics_at_k
from recs.ordering import fixed_order
from recs.scoring import ItemIndex, Model
from recs.splits import EVALUATION_TRAIN, EvalSet, binary_history, eval_set, make_split, protocol_for
from recs.tuning import tune, tune_time_settings

log = logging.getLogger(__name__)

EASE_LAMBDAS = (50.0, 100.0, 200.0, 500.0, 1000.0)
ALS_GRID = ({"regParam": 0.1, "alpha": 1.0}, {"regParam": 1.0, "alpha": 1.0}, {"regParam": 0.1, "alpha": 10.0})
ALS_RANK = 64
FEW_PURCHASES = 2  # users with at most this many past purchases form the "few" segment
FEW_BUYERS = 5  # products with at most this many buyers before the cutoff form the "tail"
DENSE_BLOCK_CELLS = 20_000_000  # users x products scored at once by ALS (80 MB of float32)


# --- Baselines ------------------------------------------------------------------------


def cosine_scores(counts: scoring.Counts, history: sparse.csr_matrix) -> sparse.csr_matrix:
    """Item-kNN: sum of cosine similarities to the user's products, each product's
    `neighbours_per_product` nearest (what Spark keeps)."""
    return (history @ counts.covisit).tocsr()


def ease_top(counts: scoring.Counts, history: sparse.csr_matrix, excluded: sparse.csr_matrix, regularisation: float,
             max_items: int, k: int) -> np.ndarray:
    """EASE^R's top k per user (positions): its full weights, not cut to the top K per product."""
    return scoring.ease_top_k(*counts.ease_weights(regularisation, max_items), history, excluded, k,
                              DENSE_BLOCK_CELLS)


def factor_matrix(factors: DataFrame, size: int) -> np.ndarray:
    """ALS factors (id, features) as a dense size x rank float32 matrix, zeros where an id
    has none. Through Arrow: a pandas row per product held a million small arrays at L."""
    table = factors.select("id", "features").toArrow()
    matrix = np.zeros((size, ALS_RANK), dtype=np.float32)
    if table.num_rows:
        features = table.column("features").combine_chunks()
        matrix[table.column("id").to_numpy()] = features.flatten().to_numpy().reshape(len(features), ALS_RANK)
    return matrix


@dataclasses.dataclass
class AlsRatings:
    """What ALS fits on: a count per (user, product) as (user, item, rating) numbers, in a
    fixed order (`recs/ordering.py`), and the users' numbers (`user_id`, `user`). Persisted
    (numbers only: at L, millions of rows): the grid's fits share them."""

    ratings: DataFrame
    user_numbers: DataFrame

    def unpersist(self) -> None:
        self.ratings.unpersist()
        self.user_numbers.unpersist()


def als_ratings(train: DataFrame, index: ItemIndex) -> AlsRatings:
    spark = train.sparkSession
    ids = spark.createDataFrame(pd.DataFrame({"product_id": index.ids, "item": np.arange(len(index))}))
    user_numbers = train.select("user_id").distinct().withColumn(
        "user", F.row_number().over(Window.orderBy("user_id")) - 1
    ).persist()
    ratings = (
        train.groupBy("user_id", "product_id").agg(F.count("*").cast("float").alias("rating"))
        .join(ids, "product_id").join(user_numbers, "user_id").select("user", "item", "rating")
    )
    ratings = fixed_order(ratings, ["user", "item"], int(spark.conf.get("spark.sql.shuffle.partitions"))).persist()
    ratings.count()  # before fits that may start at once: each would compute it
    return AlsRatings(ratings, user_numbers)


def als_top(prepared: AlsRatings, index: ItemIndex, users: list[str], excluded: sparse.csr_matrix, k: int,
            params: dict, seed: int, blocks: int) -> np.ndarray:
    """Spark MLlib ALS with implicit feedback (fitted on `prepared`, `als_ratings`): each
    user's top k (positions), the factors multiplied on the driver a block of users at a
    time (a bounded dense block)."""
    spark = prepared.ratings.sparkSession
    als = ALS(rank=ALS_RANK, maxIter=10, implicitPrefs=True, userCol="user", itemCol="item", ratingCol="rating",
              coldStartStrategy="drop", seed=seed, numUserBlocks=blocks, numItemBlocks=blocks, **params)
    fitted = als.fit(prepared.ratings)
    item_factors = factor_matrix(fitted.itemFactors, len(index))
    wanted = spark.createDataFrame(pd.DataFrame({"user_id": users}, dtype=object), schema="user_id string")
    user_factors = fitted.userFactors.join(
        prepared.user_numbers.join(F.broadcast(wanted), "user_id"), F.col("id") == F.col("user")
    ).select("user_id", "features").toPandas().set_index("user_id")["features"]
    factors = np.stack([np.asarray(user_factors.get(u, np.zeros(ALS_RANK)), dtype=np.float32) for u in users])
    block = max(1, DENSE_BLOCK_CELLS // max(len(index), 1))
    return np.vstack([
        scoring.top_k_dense(factors[start:start + block] @ item_factors.T, excluded[start:start + block], k)[0]
        for start in range(0, len(users), block)
    ]) if users else np.zeros((0, k), dtype=np.int64)


def als_baseline(validation_train: DataFrame, train: DataFrame, index: ItemIndex, validation: EvalSet,
                 test: EvalSet, k: int, runtime: RuntimeSettings) -> tuple[np.ndarray, dict]:
    """ALS's top k for the test users, and its parameters: those of `ALS_GRID` that rank
    best on validation (the grid's fits run at once, `recs/concurrency.py`); the first
    without validation users."""
    best = 0
    if validation.users:
        prepared = als_ratings(validation_train, index)
        tops = concurrently(
            lambda params: als_top(prepared, index, validation.users, validation.excluded, k, params,
                                   runtime.seed, runtime.als_blocks), ALS_GRID)
        prepared.unpersist()
        quality = [scoring.ndcg(top, validation.relevant) for top in tops]
        best = quality.index(max(quality))
    prepared = als_ratings(train, index)
    top = als_top(prepared, index, test.users, test.excluded, k, ALS_GRID[best], runtime.seed, runtime.als_blocks)
    prepared.unpersist()
    return top, ALS_GRID[best]


# --- Evaluation run ------------------------------------------------------------------


def without_customers(model: Model) -> Model:
    """`model` without its similar customers, for a method that weighs them 0."""
    return dataclasses.replace(model, customers=None, customer_file=None)


def segments(evaluation: EvalSet) -> dict[str, tuple[np.ndarray, sparse.csr_matrix]]:
    """(rows of users, relevant matrix) per segment."""
    few = evaluation.purchases_per_user <= FEW_PURCHASES
    tail_columns = sparse.diags((evaluation.buyers <= FEW_BUYERS).astype(float))
    tail = (evaluation.relevant @ tail_columns).tocsr()
    head = (evaluation.relevant - tail).tocsr()
    tail.eliminate_zeros()
    head.eliminate_zeros()
    every = np.arange(len(evaluation.users))
    with_tail = np.asarray(tail.sum(axis=1)).ravel() > 0
    with_head = np.asarray(head.sum(axis=1)).ravel() > 0
    return {
        "all": (every, evaluation.relevant),
        "users_few_purchases": (every[few], evaluation.relevant),
        "users_many_purchases": (every[~few], evaluation.relevant),
        "products_few_buyers": (every[with_tail], tail),
        "products_many_buyers": (every[with_head], head),
    }


def metric_rows(method: str, top: np.ndarray, evaluation: EvalSet, cluster_of: np.ndarray) -> list[dict]:
    rows = []
    for segment, (users, relevant) in segments(evaluation).items():
        if len(users) == 0:
            continue
        values = metrics_at_k(top[users], relevant[users], cluster_of, evaluation.buyers, evaluation.train_users)
        rows += [{"method": method, "segment": segment, "metric": name, "value": value}
                 for name, value in values.items()]
    return rows


def evaluate_methods(
    events: DataFrame, index: ItemIndex, content: sparse.csr_matrix, clusters: pd.DataFrame, config: RecsConfig,
    protocol: str, work: str, kept_counts: str | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Every method on the same split: run_metrics rows and what was tuned (`content`:
    `recommender.content_edges`; `work`: a folder for what the Spark tasks read;
    `kept_counts`: where the recommend step kept the train part's pair counts,
    `recommender.count_pairs`)."""
    k = config.evaluation.eval_k
    split = make_split(events, protocol, config.evaluation.eval_days)
    test = eval_set(split, index, config)
    if not test.users:
        raise ValueError(
            f"no test users for {protocol}: does the data span more than {config.evaluation.eval_days} days?")
    inner = make_split(split.train, protocol, config.evaluation.eval_days)
    validation = eval_set(inner, index, config)
    log.info("%s: %d test users, %d validation users", protocol, len(test.users), len(validation.users))
    # ALS (Spark fits, a few at once) runs beside everything else: nothing here needs it before the end.
    als = in_background(als_baseline, inner.train, split.train, index, validation, test, k, config.runtime)
    # One at a time: each collects its edges (EASE's up to ease_max_items squared) to the driver.
    train_counts = recommender.count_pairs(split.train, index, config.recommender, kept_counts)
    inner_counts = recommender.count_pairs(inner.train, index, config.recommender)
    cluster_of = scoring.cluster_positions(index, clusters)
    tops: dict[str, np.ndarray] = {}
    # Too short a history for a validation window: every method keeps its defaults.
    can_tune = len(validation.users) > 0
    if not can_tune:
        log.warning("no validation users before the test window: hyper-parameters stay at their defaults")

    def best_on_validation(candidates: dict, validation_top) -> object:
        if not can_tune:
            return next(iter(candidates))
        return max(candidates, key=lambda c: scoring.ndcg(validation_top(c), validation.relevant))

    # Ours: the same procedure as the recommend step, on the train part only.
    settings = tune_time_settings(inner.train, index, validation, config.recommender, k, work)
    ours, half_life, validation_customers = settings.settings, settings.trend_half_life_days, settings.customers
    # Without time: no recency decay in histories (their undecayed weights), no "bought
    # next", no similar customers' recent buys, no trending.
    # Ours and its two ablations, each tuned on validation ("published" and "without_text"
    # on the same candidates). One fitted model and one candidate table at a time: a table
    # is users x candidates (at 10,000 users of a 1M-product shop with 800 similar
    # customers, gigabytes), passes through the driver JVM's heap on its way, and tuning
    # ranks a few copies of it at once; four at once were killed for memory at 1M products.
    variants = {
        "published": {},
        "without_text": dict.fromkeys(scoring.TEXT_SIGNALS, 0.0),
        "without_time": dict.fromkeys(scoring.TIME_SIGNALS, 0.0),
    }
    with_time = ("published", "without_text")
    start = recommender.default_weights(config.recommender)
    tuned = {}
    fitted = recommender.fit_model(inner.train, index, content, clusters, ours, work, trend_half_life_days=half_life,
                                   counts=inner_counts, customers=validation_customers)
    for history, names in [(validation.history, with_time), (validation.undecayed_history(), ("without_time",))]:
        scores = recommender.candidate_scores(fitted, history, validation.users, k, events.sparkSession)
        for name in names:
            tuned[name] = tune(scores, validation, start, k, variants[name])[0]
        del scores
    del fitted
    test_model = recommender.fit_model(split.train, index, content, clusters, ours, work,
                                       trend_half_life_days=half_life, counts=train_counts)
    for history, names in [(test.history, with_time), (test.undecayed_history(), ("without_time",))]:
        scores = recommender.candidate_scores(test_model, history, test.users, k, events.sparkSession)
        for name in names:
            tops[name] = scoring.ranked(scores, tuned[name], k, config.recommender.discovery_share)[0]
        del scores

    # Baselines, each tuned on validation the same way.
    tops["most_popular"] = scoring.top_k_popular(test.buyers, test.excluded, k)
    trending = recommender.trend_vector(split.train, index, half_life, config.recommender)
    tops["trending"] = scoring.top_k_popular(trending, test.excluded, k)
    tops["item_knn"] = scoring.top_k(cosine_scores(train_counts, binary_history(test, index)), test.excluded, k)[0]
    validation_history = binary_history(validation, index)
    ease_lambda = best_on_validation(
        {config.recommender.ease_lambda: None, **dict.fromkeys(EASE_LAMBDAS)},
        lambda lam: ease_top(inner_counts, validation_history, validation.excluded, lam,
                             config.recommender.ease_max_items, k),
    )
    tops["ease"] = ease_top(train_counts, binary_history(test, index), test.excluded, ease_lambda,
                            config.recommender.ease_max_items, k)
    tops["als"], als_params = als.result()
    # Cluster-only: plain (undecayed) popularity inside the user's favourite clusters.
    # (Scored without the similar customers, on the driver: a signal weighed 0 adds no
    # product to a top k without discovery slots, so they would cost a Spark pass for nothing.)
    popular_model = dataclasses.replace(without_customers(test_model), trend=test.buyers / max(test.buyers.max(), 1))
    cluster_only = recommender.candidate_scores(popular_model, test.history, test.users, k, events.sparkSession)
    tops["cluster_only"] = scoring.ranked(cluster_only, {"cluster": 1.0}, k, 0.0)[0]

    rows = [row for method, top in tops.items() for row in metric_rows(method, top, test, cluster_of)]
    tuning = {
        "protocol": protocol, "k": k, "test_users": len(test.users), "validation_users": len(validation.users),
        "test_window_users": test.window_users, "validation_window_users": validation.window_users,
        "tuned": can_tune,
        "weights": tuned, "trend_half_life_days": half_life, "ease_lambda": ease_lambda,
        "neighbour_half_life_days": ours.neighbour_half_life_days, "neighbour_users": ours.neighbour_users,
        "als": {"rank": ALS_RANK, **als_params},
    }
    return pd.DataFrame(rows), tuning


def headline(metrics: pd.DataFrame, k: int) -> dict:
    """NDCG@k of every method on all users, and the best baseline."""
    overall = metrics[(metrics["segment"] == "all") & (metrics["metric"] == "ndcg")].set_index("method")["value"]
    best, best_ndcg = best_baseline(metrics)
    return {
        f"ndcg@{k}": overall.to_dict(),
        "best_baseline": best,
        "lift_over_best_baseline": float(overall["published"] / best_ndcg) if best_ndcg else None,
    }


def run(spark: SparkSession, config: RecsConfig, paths: RunPaths) -> dict:
    # Extract
    events = io.read_table(spark, paths.table("events")).cache()
    products = io.read_table(spark, paths.table("products"))
    content = io.read_table(spark, paths.table("content_neighbours"))
    clusters = io.read_table(spark, paths.table("product_clusters")).select("product_id", "cluster").toPandas()
    protocol = protocol_for(spark, paths)
    # Transform
    index = recommender.catalog_index(products)
    content_edges = recommender.content_edges(content, index)
    with io.work_folder(spark, paths, "evaluate") as work:
        metrics, tuning = evaluate_methods(events, index, content_edges, clusters, config, protocol, work,
                                           paths.counts(EVALUATION_TRAIN))
    metrics.insert(0, "run_id", paths.run_id)
    metrics["k"] = config.evaluation.eval_k
    # Load
    write_table(spark.createDataFrame(metrics), paths.table("run_metrics"))
    k = config.evaluation.eval_k
    summary = headline(metrics, k)
    log.info("NDCG@%d: %s", k, {m: round(v, 4) for m, v in summary[f"ndcg@{k}"].items()})
    return {**tuning, **summary}
