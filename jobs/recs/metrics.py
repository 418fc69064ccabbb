"""Ranking metrics on full-catalog top-K lists (numpy; the lists are small).

`top` is a users x K array of product positions (best first, -1 for an empty slot);
`relevant` a users x products sparse 0/1 matrix of what each user went on to buy.
Relevance is binary. Users without any relevant product are not passed in.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse


def hits(top: np.ndarray, relevant: sparse.csr_matrix) -> np.ndarray:
    """users x K booleans: is the product at that rank relevant?"""
    rows = np.repeat(np.arange(top.shape[0]), top.shape[1])
    valid = top.ravel() >= 0
    found = np.zeros(top.size, dtype=bool)
    found[valid] = np.asarray(relevant[rows[valid], top.ravel()[valid]]).ravel() > 0
    return found.reshape(top.shape)


def ranking_metrics(top: np.ndarray, relevant: sparse.csr_matrix) -> dict[str, float]:
    """Mean HitRate, NDCG (and its 95% interval), Recall and MAP at K = top.shape[1] over the users."""
    k = top.shape[1]
    found = hits(top, relevant)
    relevant_counts = np.asarray(relevant.sum(axis=1)).ravel().astype(np.int64)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (found * discounts).sum(axis=1)
    ideal = np.cumsum(discounts)[np.minimum(relevant_counts, k) - 1]
    precision_at = np.cumsum(found, axis=1) / np.arange(1, k + 1)
    average_precision = (precision_at * found).sum(axis=1) / np.minimum(relevant_counts, k)
    ndcg = dcg / ideal
    return {
        "hit": float(found.any(axis=1).mean()),
        "ndcg": float(ndcg.mean()),
        # Half-width of NDCG's 95% interval over these users (a sample of the window's).
        "ndcg_ci95": float(1.96 * ndcg.std(ddof=1) / np.sqrt(len(ndcg))) if len(ndcg) > 1 else 0.0,
        "recall": float((found.sum(axis=1) / relevant_counts).mean()),
        "map": float(average_precision.mean()),
    }


def coverage(top: np.ndarray, catalog_size: int) -> float:
    """Share of the catalog recommended to at least one user."""
    return float(len(np.unique(top[top >= 0])) / catalog_size)


def intra_list_diversity(top: np.ndarray, cluster_of: np.ndarray) -> float:
    """Mean number of distinct clusters in a user's top K."""
    clusters = np.where(top >= 0, cluster_of[np.maximum(top, 0)], -1)
    return float(np.mean([len(set(row[row >= 0])) for row in clusters]))


def novelty(top: np.ndarray, buyers: np.ndarray, users: int) -> float:
    """Mean self-information -log2(share of users who bought it) of recommended products."""
    share = np.maximum(buyers, 1) / max(users, 1)
    chosen = top[top >= 0]
    return float(np.mean(-np.log2(share[chosen]))) if len(chosen) else 0.0


def metrics_at_k(
    top: np.ndarray, relevant: sparse.csr_matrix, cluster_of: np.ndarray, buyers: np.ndarray, train_users: int
) -> dict[str, float]:
    """Everything the run_metrics table holds for one method on one segment."""
    return {
        **ranking_metrics(top, relevant),
        "coverage": coverage(top, relevant.shape[1]),
        "diversity": intra_list_diversity(top, cluster_of),
        "novelty": novelty(top, buyers, train_users),
        "users": float(top.shape[0]),
    }


# The run's own lists and its ablations; every other method in run_metrics is a baseline.
OUR_METHODS = ("published", "without_text", "without_time")


def best_baseline(metrics, metric: str = "ndcg") -> tuple[str | None, float | None]:
    """The baseline with the best `metric` over all users in a run_metrics table, and its value."""
    overall = metrics[(metrics["segment"] == "all") & (metrics["metric"] == metric)].set_index("method")["value"]
    baselines = overall.drop(labels=list(OUR_METHODS), errors="ignore")
    if baselines.empty:
        return None, None
    best = baselines.idxmax()
    return str(best), float(baselines[best])
