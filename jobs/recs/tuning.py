"""Tuning on validation: the one procedure the recommend step (before it fits on
everything) and the evaluate step (for the published model and both ablations) use.

The time signals' settings are chosen first, each by how well its signal alone ranks
(the trending half-life; the number of similar customers and their half-life), then
the blend weights by coordinate ascent on NDCG@k, some of them held fixed (the
ablations switch signals off that way).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from scipy import sparse

from recs import model as recommender
from recs import scoring
from recs.config import RecommenderSettings, RecsConfig
from recs.scoring import CustomerFile, ItemIndex, Model, Scores
from recs.splits import EvalSet, eval_set, make_split

log = logging.getLogger(__name__)

TREND_HALF_LIVES = (1.0, 3.0, 7.0, 14.0, 30.0, 90.0)
NEIGHBOUR_HALF_LIVES = (3.0, 7.0, 14.0, 30.0)
NEIGHBOUR_USERS = (100, 200, 400, 800)


def tune_trend_half_life(
    events: DataFrame, index: ItemIndex, evaluation: EvalSet, settings: RecommenderSettings, k: int
) -> tuple[float, dict[float, np.ndarray]]:
    """The half-life whose trending list ranks best at `k` on `evaluation` (the trending baseline)."""
    trends = recommender.trend_vectors(events, index, TREND_HALF_LIVES, settings)
    scores = {
        h: scoring.ndcg(scoring.top_k_popular(t, evaluation.excluded, k), evaluation.relevant)
        for h, t in trends.items()
    }
    return max(scores, key=scores.get), trends


def tune_neighbours(
    events: DataFrame, index: ItemIndex, evaluation: EvalSet, settings: RecommenderSettings, k: int, work: str
) -> tuple[RecommenderSettings, CustomerFile]:
    """`settings` with the half-life and the number of similar customers whose
    "neighbours" signal alone ranks best at `k` on `evaluation`, and those customers
    (counted on `events`, shipped to the tasks from the `work` folder)."""
    half_lives = sorted({settings.neighbour_half_life_days, *NEIGHBOUR_HALF_LIVES})
    sizes = sorted({settings.neighbour_users, *NEIGHBOUR_USERS})
    files = recommender.ship_customers(events, index, settings, half_lives, work)
    tops = recommender.neighbour_grid(events.sparkSession, index, files, evaluation.history, evaluation.users, sizes, k)
    results = {key: scoring.ndcg(top, evaluation.relevant) for key, top in tops.items()}
    half_life, users = max(results, key=lambda key: (results[key], -key[0], -key[1]))
    tuned = dataclasses.replace(settings, neighbour_half_life_days=half_life, neighbour_users=users)
    return tuned, dataclasses.replace(files[half_life], neighbours=users)


@dataclass
class TimeSettings:
    """What validation chose for the time signals (the configured values when it could not)."""

    settings: RecommenderSettings  # with the chosen neighbour_users and neighbour_half_life_days
    trend_half_life_days: float
    customers: CustomerFile | None  # the chosen similar customers, counted on the validation train part


def tune_time_settings(
    train: DataFrame, index: ItemIndex, validation: EvalSet, settings: RecommenderSettings, k: int, work: str
) -> TimeSettings:
    """The trending half-life and the similar customers, chosen at `k` on `validation`
    (whose history is `train`); the configured ones without validation users."""
    if not validation.users:
        return TimeSettings(settings, settings.trend_half_life_days, None)
    half_life, _ = tune_trend_half_life(train, index, validation, settings, k)
    tuned, customers = tune_neighbours(train, index, validation, settings, k, work)
    return TimeSettings(tuned, half_life, customers)


def tune(
    scores: Scores, validation: EvalSet, start: dict[str, float], k: int,
    fixed: dict[str, float] | None = None,
) -> tuple[dict[str, float], float | None]:
    """Blend weights by coordinate ascent on validation NDCG@k, `fixed` ones held;
    (weights, NDCG@k). Without validation users: `start` with `fixed`, and no NDCG."""
    if not validation.users:
        return {**start, **(fixed or {})}, None
    return scoring.tune_weights(scores, validation.relevant, k, start, fixed)


def tuned_model(
    events: DataFrame, index: ItemIndex, content: sparse.csr_matrix, clusters: pd.DataFrame, config: RecsConfig,
    protocol: str, work: str, kept_counts: str | None = None,
) -> tuple[Model, dict]:
    """Choose the blend weights, the trend half-life and the similar customers on a
    validation split carved from `events`, then fit on all of `events` with them
    (`content`: `recommender.content_edges`; `work`: a folder for what the Spark tasks
    read, `recommender.ship_customers`;
    `kept_counts`: where the validation train part's pair counts stay for a later step).

    Takes the whole configuration, unlike the functions above: the split and its
    evaluation set come from the evaluation settings (and the seed); the model gets
    the recommender's settings only."""
    settings, k = config.recommender, config.evaluation.eval_k
    if not settings.tune_weights:
        return recommender.fit_model(events, index, content, clusters, settings, work), {"tuned": False}
    validation = make_split(events, protocol, config.evaluation.eval_days)
    validation_set = eval_set(validation, index, config)
    if not validation_set.users:
        log.warning("no validation users: using the configured weights")
        return recommender.fit_model(events, index, content, clusters, settings, work), {"tuned": False}
    chosen = tune_time_settings(validation.train, index, validation_set, settings, k, work)
    settings, half_life = chosen.settings, chosen.trend_half_life_days
    validation_model = recommender.fit_model(
        validation.train, index, content, clusters, settings, work, trend_half_life_days=half_life,
        counts=recommender.count_pairs(validation.train, index, settings, kept_counts), customers=chosen.customers,
    )
    scores = recommender.candidate_scores(validation_model, validation_set.history, validation_set.users, k,
                                          events.sparkSession)
    weights, validation_ndcg = tune(scores, validation_set, recommender.default_weights(settings), k)
    log.info("tuned on %d validation users: weights %s, trend half-life %s days, %d similar customers with a "
             "half-life of %s days, NDCG@%d %.4f", len(validation_set.users), weights, half_life,
             settings.neighbour_users, settings.neighbour_half_life_days, k, validation_ndcg)
    model = recommender.fit_model(events, index, content, clusters, settings, work, weights, half_life)
    return model, {
        "tuned": True, "weights": weights, "trend_half_life_days": half_life,
        "neighbour_half_life_days": settings.neighbour_half_life_days, "neighbour_users": settings.neighbour_users,
        "validation_ndcg": validation_ndcg, "validation_users": len(validation_set.users),
    }
