"""Ranking metrics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import sparse

from recs.metrics import coverage, intra_list_diversity, novelty, ranking_metrics


def relevant_matrix(rows: list[list[int]], products: int = 10) -> sparse.csr_matrix:
    data = [(u, p) for u, items in enumerate(rows) for p in items]
    users, items = zip(*data, strict=True)
    return sparse.csr_matrix((np.ones(len(data)), (users, items)), shape=(len(rows), products))


def test_single_hit_at_rank_two():
    top = np.array([[5, 3, 7]])
    result = ranking_metrics(top, relevant_matrix([[3]]))
    assert result["hit"] == 1.0
    assert result["ndcg"] == pytest.approx(1 / math.log2(3))  # one relevant: ideal DCG is 1
    assert result["recall"] == 1.0
    assert result["map"] == pytest.approx(1 / 2)  # precision at the hit's rank, over min(|rel|, K) = 1


def test_fewer_relevant_than_k_and_two_hits():
    # Relevant {1, 2}; ranked 1 at rank 1, 9 at rank 2, 2 at rank 3.
    top = np.array([[1, 9, 2]])
    result = ranking_metrics(top, relevant_matrix([[1, 2]]))
    dcg = 1 + 1 / math.log2(4)
    ideal = 1 + 1 / math.log2(3)
    assert result["ndcg"] == pytest.approx(dcg / ideal)
    assert result["recall"] == 1.0
    assert result["map"] == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_more_relevant_than_k_caps_the_ideal():
    top = np.array([[0, 1]])
    result = ranking_metrics(top, relevant_matrix([[0, 1, 2, 3]]))
    assert result["ndcg"] == pytest.approx(1.0)  # both slots hit: as good as possible at K=2
    assert result["recall"] == pytest.approx(0.5)
    assert result["map"] == pytest.approx(1.0)


def test_user_without_hits_counts_as_zero_in_the_mean():
    top = np.array([[4, 5], [0, 1]])
    result = ranking_metrics(top, relevant_matrix([[4], [7]]))
    assert result["hit"] == pytest.approx(0.5)
    assert result["ndcg"] == pytest.approx(0.5)
    assert result["recall"] == pytest.approx(0.5)


def test_ties_in_scores_do_not_matter_once_ranked_and_empty_slots_are_misses():
    top = np.array([[2, -1, -1]])
    result = ranking_metrics(top, relevant_matrix([[2, 3]]))
    assert result["hit"] == 1.0
    assert result["ndcg"] == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_coverage_diversity_novelty():
    top = np.array([[0, 1], [1, 2]])
    assert coverage(top, 10) == pytest.approx(0.3)
    cluster_of = np.array([0, 0, 1] + [2] * 7)
    assert intra_list_diversity(top, cluster_of) == pytest.approx((1 + 2) / 2)
    buyers = np.array([4, 2, 1] + [0] * 7)
    expected = np.mean([-math.log2(4 / 8), -math.log2(2 / 8), -math.log2(2 / 8), -math.log2(1 / 8)])
    assert novelty(top, buyers, users=8) == pytest.approx(expected)
