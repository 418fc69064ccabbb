"""Splits: what a model may learn from and what it is measured on.

Protocols:
- time split (data with timestamps): train on events before a cutoff (the last
  `eval_days` are the test window); test users had history before the cutoff and
  bought, in the window, something they had not bought before;
- leave last out (event order only): each user's last purchase is the test item.
Validation is carved from a train part the same way (`make_split` on it), by the
evaluate step and by the recommend step's tuning alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from scipy import sparse

from recs import io, scoring
from recs import model as recommender
from recs.config import RecommenderSettings, RecsConfig
from recs.io import RunPaths
from recs.ordering import seeded_sample
from recs.scoring import ItemIndex

TIME_SPLIT, LEAVE_LAST_OUT = "time_split", "leave_last_out"
# The train part of the evaluation split (`make_split` of all events): the recommend
# step validates on it and the evaluate step tests on it, both count its pairs; the
# counts are kept under this name (`RunPaths.counts`, `recs.model.count_pairs`).
EVALUATION_TRAIN = "evaluation_train"


@dataclass
class Split:
    train: DataFrame
    relevant: DataFrame  # user_id, product_id: every test user's, so never collected whole
    protocol: str


def time_split(events: DataFrame, days: int) -> Split:
    # The window starts at midnight (UTC), `days` before the day of the newest event.
    newest_day = events.agg(F.date_trunc("day", F.max("ts"))).first()[0]
    cutoff = F.lit(newest_day) - F.expr(f"INTERVAL {int(days)} DAYS")
    train = events.where(F.col("ts") < cutoff)
    window = events.where((F.col("ts") >= cutoff) & (F.col("event_type") == "purchase"))
    bought_before = train.where(F.col("event_type") == "purchase").select("user_id", "product_id").distinct()
    relevant = (
        window.select("user_id", "product_id")
        .distinct()
        .join(train.select("user_id").distinct(), "user_id")
        .join(bought_before, ["user_id", "product_id"], "left_anti")
    )
    return Split(train, relevant, TIME_SPLIT)


def leave_last_out(events: DataFrame) -> Split:
    purchases = events.where(F.col("event_type") == "purchase")
    order = Window.partitionBy("user_id").orderBy(F.col("ts").desc(), F.col("product_id").desc())
    ranked = purchases.withColumn("_from_end", F.row_number().over(order))
    last = ranked.where(F.col("_from_end") == 1).select("user_id", "product_id", F.col("ts").alias("_last_ts"))
    # Train on everything before the held-out purchase; users need something left.
    train = events.join(last.select("user_id", "_last_ts"), "user_id", "left").where(
        F.col("_last_ts").isNull() | (F.col("ts") < F.col("_last_ts"))
    ).drop("_last_ts")
    train_pairs = train.where(F.col("event_type") == "purchase").select("user_id", "product_id").distinct()
    relevant = (
        last.select("user_id", "product_id")
        .join(train.select("user_id").distinct(), "user_id")
        .join(train_pairs, ["user_id", "product_id"], "left_anti")
    )
    return Split(train, relevant, LEAVE_LAST_OUT)


def make_split(events: DataFrame, protocol: str, days: int) -> Split:
    return time_split(events, days) if protocol == TIME_SPLIT else leave_last_out(events)


@dataclass
class EvalSet:
    """A split as numpy: its test users' histories, what to exclude, what is relevant."""

    users: list[str]  # those with a relevant product, or a seeded sample of them (`sampled_users`), sorted
    history: pd.DataFrame  # `recs.model.scoring_history`'s columns and UNDECAYED_WEIGHT
    excluded: sparse.csr_matrix
    relevant: sparse.csr_matrix
    buyers: np.ndarray  # users who bought each product in the train part
    train_users: int
    purchases_per_user: np.ndarray
    window_users: int  # users with a relevant product, before sampling

    def undecayed_history(self) -> pd.DataFrame:
        """`history` weighed without the recency decay: what a model without time scores."""
        return self.history.assign(weight=self.history[recommender.UNDECAYED_WEIGHT])


def sampled_users(relevant: DataFrame, limit: int, seed: int) -> list[str]:
    """All users of `relevant` (sorted) when there are at most `limit`, else a seeded
    sample of `limit` of them, drawn in Spark (the users with the smallest seeded hash):
    the same users for the same input and seed, and only `limit` ids reach the driver."""
    chosen = seeded_sample(relevant.select("user_id").distinct(), "user_id", limit, seed).toPandas()["user_id"]
    return sorted(chosen)


def _users_frame(spark: SparkSession, users: list[str]) -> DataFrame:
    """`users` as a broadcast Spark table to join with (a bounded list: a sample at most)."""
    return F.broadcast(spark.createDataFrame(pd.DataFrame({"user_id": users}, dtype=object), schema="user_id string"))


def scoring_histories(train: DataFrame, users: list[str], settings: RecommenderSettings,
                      half_life_days: float | None = None, undecayed: bool = False) -> pd.DataFrame:
    """What scoring reads of `users` in `train` (`recs.model.scoring_history`), their
    interest halved every `half_life_days` (the configured recency half-life when None);
    `undecayed`: with the weights without decay beside (`recs.model.UNDECAYED_WEIGHT`)."""
    return sampled_history(train, users, settings, half_life_days, undecayed).toPandas()


def sampled_history(train: DataFrame, users: list[str], settings: RecommenderSettings,
                    half_life_days: float | None = None, undecayed: bool = False) -> DataFrame:
    """`scoring_histories` as a Spark table. The users are a semi-join, which Spark moves
    below the aggregation (an inner join stays above it): only the sample's events are
    aggregated, their ages still counted from the newest event of all of `train`."""
    user_items = recommender.user_item_weights(train, settings, half_life_days, undecayed)
    return recommender.scoring_history(user_items).join(_users_frame(train.sparkSession, users), "user_id",
                                                        "left_semi")


def eval_set(split: Split, index: ItemIndex, config: RecsConfig) -> EvalSet:
    spark = split.train.sparkSession
    catalog = F.broadcast(recommender.catalog_positions(spark, index).select("product_id"))
    window = split.relevant.join(catalog, "product_id").persist()
    window_users = window.select("user_id").distinct().count()
    users = sampled_users(window, config.evaluation.eval_users, config.runtime.seed)
    relevant = window.join(_users_frame(spark, users), "user_id").select("user_id", "product_id").toPandas()
    window.unpersist()
    # Both weights in one pass: the evaluation's "without time" scores the undecayed ones.
    history = scoring_histories(split.train, users, config.recommender, undecayed=True)
    bought = history[history["purchased"]].assign(one=1.0)
    buyers = (
        split.train.where(F.col("event_type") == "purchase").groupBy("product_id")
        .agg(F.countDistinct("user_id").alias("buyers")).toPandas()
    )
    buyer_counts = np.zeros(len(index))
    positions = index.positions(buyers["product_id"])
    buyer_counts[positions[positions >= 0]] = buyers["buyers"].to_numpy()[positions >= 0]
    excluded = scoring.history_matrix(bought, users, index, "one")
    return EvalSet(
        users=users,
        history=history,
        excluded=excluded,
        relevant=scoring.history_matrix(relevant.assign(one=1.0), users, index, "one"),
        buyers=buyer_counts,
        train_users=split.train.select("user_id").distinct().count(),
        purchases_per_user=np.asarray(excluded.sum(axis=1)).ravel(),
        window_users=window_users,
    )


def binary_history(evaluation: EvalSet, index: ItemIndex) -> sparse.csr_matrix:
    return scoring.history_matrix(evaluation.history.assign(one=1.0), evaluation.users, index, "one")


def protocol_for(spark: SparkSession, paths: RunPaths) -> str:
    """Time split when the source has real timestamps (the preprocess step says)."""
    stats = io.read_json(spark, paths.stats("preprocess"))
    return TIME_SPLIT if stats.get("timestamps", True) else LEAVE_LAST_OUT
