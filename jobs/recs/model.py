"""The recommender: item-item signals walked from each user's history, plus trending
products, blended with weights tuned on a validation split.

Spark counts what needs the whole event log (user-product weights, co-occurrences,
"bought next" transitions, product popularity) and cuts each item-item signal to its
top `neighbours_per_product` per product there, so the driver receives O(products x K)
rows, never all pairs (EASE, a dense inverse, only sees its `ease_max_items` most
popular products). The driver turns those rows into compact sparse item x item
matrices, which are broadcast, and each Spark task scores its block of users on their
candidates only (`signal_scores`): never a users x catalog array, so the cost of
scoring grows with the histories, not with users x products.

Signals, each normalised per user to [0, 1] before blending:
- covisit: item-kNN, cosine of two products' user sets;
- ease:    EASE^R, the closed-form linear item model (most popular products only);
- next:    P(b is bought after a), walked from the user's most recent products;
- content: cosine of the product text embeddings;
- neighbours: what the user's most similar customers (cosine of their product sets)
           bought recently, their purchases halved every `neighbour_half_life_days`;
- cluster: the user's share of interest in the product's K-means cluster x popularity;
- trend:   popularity with an exponential time decay (not personal).
A user's history weights each event by type (view < cart < purchase) and halves it
every `recency_half_life_days`, so recent intent counts most. The last
`discovery_share` of each list goes to the best products of the user's own item-item
signals that are not yet in it: the time signals favour what everybody buys now, and
those slots keep every list personal (and the catalog covered).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from scipy import sparse

from recs.config import RecommenderSettings
from recs.metrics import ranking_metrics

log = logging.getLogger(__name__)

EDGE_SIGNALS = ("covisit", "ease", "next", "content")
SIGNALS = (*EDGE_SIGNALS, "neighbours", "cluster", "trend")
# Signals that use time: switched off together for the "without time" ablation.
TIME_SIGNALS = ("next", "neighbours", "trend")
TEXT_SIGNALS = ("content", "cluster")
# reason_event of a pick that similar customers bought recently, with no product of the
# user's own history behind it.
SIMILAR_CUSTOMERS = "similar_customers"
SIMILARITY_BLOCK = 1000  # users whose similarity to every customer is computed at once


def default_weights(settings: RecommenderSettings) -> dict[str, float]:
    return {name: getattr(settings, f"weight_{name}") for name in SIGNALS}


# --- Spark side: counts over the whole event log --------------------------------


def _with_age(events: DataFrame, settings: RecommenderSettings) -> tuple[DataFrame, F.Column]:
    """`events` with `age_days` (from the newest event in the data, so old logs replay
    the same), and the events' type weight."""
    type_weight = F.coalesce(
        *[F.when(F.col("event_type") == name, F.lit(w)) for name, w in settings.event_weights.items()]
    )
    newest = events.agg(F.max("ts").alias("newest"))
    age_days = (F.col("newest").cast("long") - F.col("ts").cast("long")) / 86400.0
    return events.crossJoin(F.broadcast(newest)).withColumn("age_days", age_days), type_weight


def user_item_weights(
    events: DataFrame, settings: RecommenderSettings, half_life_days: float | None = None
) -> DataFrame:
    """(user_id, product_id, weight, purchased, last_ts, strongest_event) per pair.

    weight = sum over the pair's events of type weight x 0.5 ** (age / half-life).
    """
    half_life = half_life_days or settings.recency_half_life_days
    aged, type_weight = _with_age(events, settings)
    decayed = aged.withColumn("event_weight", type_weight * F.pow(F.lit(0.5), F.col("age_days") / F.lit(half_life)))
    return decayed.groupBy("user_id", "product_id").agg(
        F.sum("event_weight").alias("weight"),
        F.max((F.col("event_type") == "purchase").cast("int")).cast("boolean").alias("purchased"),
        F.max("ts").alias("last_ts"),
        F.max_by("event_type", type_weight).alias("strongest_event"),
    )


def recent_history(user_items: DataFrame, limit: int) -> DataFrame:
    """Each user's `limit` most recent products: bounds the work per heavy user."""
    order = Window.partitionBy("user_id").orderBy(F.col("last_ts").desc(), F.col("product_id"))
    ranked = user_items.withColumn("_recency", F.row_number().over(order))
    return ranked.where(F.col("_recency") <= limit).drop("_recency")


def top_per_product(pairs: DataFrame, keep: int, value: str = "score") -> DataFrame:
    """Each product's `keep` best neighbours by `value`, with their `rank`; ties go to
    the smaller neighbour id, so a run is reproducible."""
    order = Window.partitionBy("product_id").orderBy(F.col(value).desc(), F.col("neighbour_id"))
    return pairs.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= keep)


def unordered_pair_counts(history: DataFrame) -> DataFrame:
    """(product_id, neighbour_id, both) for product_id < neighbour_id: users who
    interacted with both of two distinct products, each unordered pair once (half the
    shuffle of a plain self-join). Products may be any ordered key: `count_pairs` uses
    their catalog positions, whose 4-byte keys join and aggregate three times faster
    than ids."""
    pairs = history.select("user_id", "product_id")
    other = pairs.withColumnRenamed("product_id", "neighbour_id")
    return (
        pairs.join(other, "user_id")
        .where(F.col("product_id") < F.col("neighbour_id"))
        .groupBy("product_id", "neighbour_id")
        .agg(F.count("*").alias("both"))
    )


def mirrored(pairs: DataFrame) -> DataFrame:
    """Unordered pairs in both orders."""
    swapped = pairs.select(F.col("neighbour_id").alias("product_id"), F.col("product_id").alias("neighbour_id"),
                           *[c for c in pairs.columns if c not in ("product_id", "neighbour_id")])
    return pairs.unionByName(swapped)


def pair_counts(history: DataFrame) -> DataFrame:
    """(product_id, neighbour_id, both) for every ordered pair of distinct products."""
    return mirrored(unordered_pair_counts(history))


def product_users(history: DataFrame) -> DataFrame:
    """(product_id, users): the diagonal of the co-occurrence counts."""
    return history.groupBy("product_id").agg(F.count("*").alias("users"))


def covisit_edges(history: DataFrame, keep: int, pairs: DataFrame | None = None,
                  users: DataFrame | None = None) -> DataFrame:
    """(product_id, neighbour_id, score): cosine of two products' user sets, the `keep`
    best per product, computed and cut in Spark (`pairs` and `users`: the history's
    `unordered_pair_counts` and `product_users`, when already counted)."""
    users = users if users is not None else product_users(history)
    pairs = pairs if pairs is not None else unordered_pair_counts(history)
    theirs = users.select(F.col("product_id").alias("neighbour_id"), F.col("users").alias("their_users"))
    cosine = (
        pairs.join(users, "product_id").join(theirs, "neighbour_id")
        .select("product_id", "neighbour_id",
                (F.col("both") / F.sqrt(F.col("users") * F.col("their_users"))).alias("score"))
    )
    return top_per_product(mirrored(cosine), keep).select("product_id", "neighbour_id", "score")


def ease_counts(history: DataFrame, max_items: int, pairs: DataFrame | None = None,
                users: DataFrame | None = None) -> DataFrame:
    """(product_id, neighbour_id, both), diagonal included, among the `max_items`
    products with the most users (ties: the smaller id): all EASE^R needs, bounded by
    max_items squared whatever the catalog. The same pair counts as the co-visitation's."""
    users = users if users is not None else product_users(history)
    pairs = pairs if pairs is not None else unordered_pair_counts(history)
    order = Window.orderBy(F.col("users").desc(), F.col("product_id"))
    popular = users.withColumn("_rank", F.row_number().over(order)).where(F.col("_rank") <= max_items)
    mine = popular.select("product_id")
    theirs = popular.select(F.col("product_id").alias("neighbour_id"))
    among = pairs.join(F.broadcast(mine), "product_id").join(F.broadcast(theirs), "neighbour_id")
    diagonal = popular.select("product_id", F.col("product_id").alias("neighbour_id"), F.col("users").alias("both"))
    return mirrored(among.select("product_id", "neighbour_id", "both")).unionByName(diagonal)


def transition_counts(events: DataFrame, window: int) -> DataFrame:
    """(product_id, neighbour_id, count): b was among the next `window` distinct
    products a user interacted with after a (in time order). `lead` over each user's
    sequence: linear in events, where a self-join of the sequence is quadratic per user."""
    firsts = events.groupBy("user_id", "product_id").agg(F.min("ts").alias("first_ts"))
    order = Window.partitionBy("user_id").orderBy("first_ts", "product_id")
    following = F.array(*[F.lead("product_id", step).over(order) for step in range(1, window + 1)])
    return (
        firsts.select("product_id", following.alias("following"))
        .select("product_id", F.explode("following").alias("neighbour_id"))
        .where(F.col("neighbour_id").isNotNull())
        .groupBy("product_id", "neighbour_id")
        .agg(F.count("*").alias("count"))
    )


def popularity(events: DataFrame, half_lives: list[float], settings: RecommenderSettings) -> DataFrame:
    """(product_id, popularity_0, popularity_1, ...): event-type weighted interest, halved
    every half-life, one column per half-life: one pass over the events for them all."""
    aged, type_weight = _with_age(events, settings)
    return aged.groupBy("product_id").agg(*[
        F.sum(type_weight * F.pow(F.lit(0.5), F.col("age_days") / F.lit(float(half_life)))).alias(f"popularity_{i}")
        for i, half_life in enumerate(half_lives)])


# --- Driver side: compact item x item matrices ---------------------------------


@dataclass
class ItemIndex:
    ids: np.ndarray

    def __post_init__(self) -> None:
        self.position = pd.Index(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, ids) -> np.ndarray:
        return self.position.get_indexer(ids)


def top_per_row(matrix, keep: int, drop_diagonal: bool = True) -> sparse.csr_matrix:
    """Keep each row's `keep` largest positive entries, the diagonal dropped (sparse
    throughout: the catalog may be far larger than what fits as a dense square)."""
    source = sparse.csr_matrix(matrix, dtype=np.float32)
    if drop_diagonal:
        source.setdiag(0)
    source.data[source.data < 0] = 0
    source.eliminate_zeros()
    rows, cols, values = [], [], []
    for row in range(source.shape[0]):
        start, end = source.indptr[row], source.indptr[row + 1]
        chosen = np.arange(start, end)
        if end - start > keep:
            chosen = start + np.argpartition(-source.data[start:end], keep - 1)[:keep]
        rows.append(np.full(len(chosen), row))
        cols.append(source.indices[chosen])
        values.append(source.data[chosen])
    if not rows:
        return sparse.csr_matrix(source.shape, dtype=np.float32)
    return sparse.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=source.shape
    )


def pairs_to_matrix(pairs: pd.DataFrame, index: ItemIndex, value: str) -> sparse.csr_matrix:
    rows, cols = index.positions(pairs["product_id"]), index.positions(pairs["neighbour_id"])
    known = (rows >= 0) & (cols >= 0)
    values = pairs[value].to_numpy(dtype=np.float64)[known]
    return sparse.csr_matrix((values, (rows[known], cols[known])), shape=(len(index), len(index)))


def ease_from_counts(counts: sparse.csr_matrix, regularisation: float, max_items: int) -> sparse.csr_matrix:
    """EASE^R: B = I - P diag(1/diag(P)), P = (G + lambda I)^-1, on the `max_items`
    most popular products (a dense inverse: memory grows with its square)."""
    size = counts.shape[0]
    popular = np.argsort(-counts.diagonal())[: min(max_items, size)]
    gram = counts[popular][:, popular].toarray()
    gram[np.diag_indices_from(gram)] += regularisation
    inverse = np.linalg.inv(gram)
    dense_weights = -inverse / np.diag(inverse)
    np.fill_diagonal(dense_weights, 0)
    weights = sparse.coo_matrix(dense_weights)
    return sparse.csr_matrix(
        (weights.data, (popular[weights.row], popular[weights.col])), shape=(size, size), dtype=np.float32
    )


def row_normalised(matrix: sparse.csr_matrix) -> sparse.csr_matrix:
    totals = np.asarray(matrix.sum(axis=1)).ravel()
    return (sparse.diags(1.0 / np.where(totals == 0, 1, totals)) @ matrix).tocsr()


@dataclass
class Customers:
    """Every customer's recent products, for the "neighbours" signal."""

    index: ItemIndex  # customer ids
    profiles: sparse.csr_matrix  # customers x products, 0/1 rows scaled to unit length
    recent: sparse.csr_matrix  # customers x products, event weights halved with age
    neighbours: int  # similar customers consulted per user


@dataclass
class Model:
    """Everything scoring needs, small enough to broadcast."""

    index: ItemIndex
    edges: dict[str, sparse.csr_matrix]
    cluster_of: np.ndarray  # cluster per product position (-1: none)
    trend: np.ndarray  # popularity per product position, max 1
    weights: dict[str, float]
    recent_items_for_next: int = 5
    customers: Customers | None = None
    discovery_share: float = 0.0
    titles: dict[str, str] = field(default_factory=dict)


def build_edges(
    index: ItemIndex,
    counts: Counts,
    content: pd.DataFrame,
    settings: RecommenderSettings,
    ease_regularisation: float | None = None,
) -> dict[str, sparse.csr_matrix]:
    """The item x item matrices from what Spark counted (already top K per product)."""
    keep = settings.neighbours_per_product
    return {
        "covisit": counts.covisit.astype(np.float32),
        "ease": top_per_row(
            ease_from_counts(counts.ease, ease_regularisation or settings.ease_lambda, settings.ease_max_items), keep
        ),
        "next": row_normalised(counts.transitions.astype(np.float32)),
        "content": top_per_row(pairs_to_matrix(content, index, "score"), keep),
    }


# --- Scoring: the same function on the driver (evaluation) and in Spark tasks ------


def history_matrix(history: pd.DataFrame, users: list[str], index: ItemIndex, value: str = "weight"):
    """users x products sparse matrix of `value` from (user_id, product_id, value) rows."""
    rows = pd.Index(users).get_indexer(history["user_id"])
    cols = index.positions(history["product_id"])
    known = (rows >= 0) & (cols >= 0)
    return sparse.csr_matrix(
        (history[value].to_numpy(dtype=np.float64)[known], (rows[known], cols[known])),
        shape=(len(users), len(index)),
    )


def nearest_customers(customers: Customers, users: list[str], neighbours: int) -> sparse.csr_matrix:
    """users x customers: each user's `neighbours` most similar customers (cosine of their
    product sets), the user left out; a row of zeros for a user who is not a customer."""
    rows = customers.index.positions(users)
    known = np.flatnonzero(rows >= 0)
    parts = []
    # A block of users at a time: a user who bought a best-seller shares it with a large
    # share of all customers, so a similarity row is long until cut to the nearest.
    for start in range(0, len(known), SIMILARITY_BLOCK):
        block = rows[known[start:start + SIMILARITY_BLOCK]]
        similarity = (customers.profiles[block] @ customers.profiles.T).tocoo()
        similarity.data[block[similarity.row] == similarity.col] = 0  # a user is not their own neighbour
        parts.append(top_per_row(similarity, neighbours, drop_diagonal=False))
    placed = sparse.csr_matrix(
        (np.ones(len(known)), (known, np.arange(len(known)))), shape=(len(users), len(known))
    )
    nearest = sparse.vstack(parts).tocsr() if parts else sparse.csr_matrix((0, len(customers.index)))
    return (placed @ nearest).tocsr()


def neighbour_scores(customers: Customers | None, users: list[str], products: int,
                     nearest: sparse.csr_matrix | None = None) -> sparse.csr_matrix:
    """users x products: the recent purchases of each user's most similar customers,
    each weighted by its cosine similarity to the user (`nearest`, when already known)."""
    if customers is None:
        return sparse.csr_matrix((len(users), products))
    if nearest is None:
        nearest = nearest_customers(customers, users, customers.neighbours)
    return (nearest @ customers.recent).tocsr()


# A user is scored on candidates only, never on the whole catalog: the products an
# item-item signal or a similar customer reaches from their history, plus, for the
# trend and cluster signals (which rank every product), just enough of the most popular
# products overall and in each cluster the user cares for. Every signal is >= 0, so a
# product left out is beaten on every signal by k candidates of its own cluster the
# user has not bought: the blend's top k over the candidates is its top k over the
# catalog, for any weights. Memory is O(users x candidates), linear in the histories.


@dataclass
class Scores:
    """Each user's candidate products and every signal's score for them.

    `candidates` is users x products (CSR, sorted indices; its structure is what counts):
    one entry per (user, candidate). `values[signal]` and `excluded` are aligned with its
    entries: the signal normalised per user to [0, 1], and whether the user bought it.
    """

    candidates: sparse.csr_matrix
    values: dict[str, np.ndarray]
    excluded: np.ndarray

    def __getitem__(self, signal: str) -> np.ndarray:
        return self.values[signal]

    @property
    def positions(self) -> np.ndarray:
        return self.candidates.indices


def values_at(matrix: sparse.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The matrix's value at each (row, col), 0 where it holds no entry (a binary search
    over row-major keys: no dense row is ever built)."""
    matrix = sparse.csr_matrix(matrix)
    matrix.sort_indices()
    width = np.int64(matrix.shape[1])
    keys = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr)) * width + matrix.indices
    wanted = rows.astype(np.int64) * width + cols
    if len(keys) == 0:
        return np.zeros(len(wanted))
    found = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[found] == wanted, matrix.data[found], 0.0)


def leading(order: np.ndarray, starts: np.ndarray, lengths: np.ndarray, rows: np.ndarray):
    """(rows, products): for each i, the first lengths[i] products of `order` from
    starts[i] on, on row rows[i]."""
    lengths = np.maximum(lengths, 0)
    total = int(lengths.sum())
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
    return np.repeat(rows, lengths), order[offsets]


def popular_candidates(popularity: np.ndarray, excluded: sparse.csr_matrix, k: int):
    """(rows, products): per user, the k most popular products they have not bought
    (taken as the first k + bought of the popularity order)."""
    order = np.argsort(-popularity, kind="stable")
    bought = np.diff(excluded.indptr)
    lengths = np.minimum(k + bought, len(order))
    return leading(order, np.zeros(len(bought), dtype=np.int64), lengths, np.arange(len(bought)))


def _per_user_normalised(matrix: sparse.csr_matrix) -> sparse.csr_matrix:
    matrix = sparse.csr_matrix(matrix, dtype=np.float32)
    top = np.asarray(matrix.max(axis=1).todense()).ravel() if matrix.shape[1] else np.zeros(matrix.shape[0])
    return (sparse.diags(np.divide(1.0, top, out=np.zeros_like(top, dtype=np.float64), where=top > 0))
            @ matrix).tocsr()


def signal_scores(model: Model, history: pd.DataFrame, users: list[str], k: int) -> Scores:
    """Every signal of `model` for `users` on their candidates, enough for a top k."""
    products = len(model.index)
    weights = history_matrix(history, users, model.index)
    excluded = history_matrix(history[history["purchased"]].assign(one=1.0), users, model.index, "one")
    shares = sparse.diags(1.0 / np.maximum(np.asarray(weights.sum(axis=1)).ravel(), 1e-12)) @ weights
    recent = history_matrix(
        history[history["recency"] <= model.recent_items_for_next], users, model.index
    ) if "recency" in history else weights
    personal = {
        "covisit": shares @ model.edges["covisit"],
        "ease": shares @ model.edges["ease"],
        "next": recent @ model.edges["next"],
        "content": shares @ model.edges["content"],
        "neighbours": neighbour_scores(model.customers, users, products),
    }
    personal = {name: _per_user_normalised(matrix) for name, matrix in personal.items()}
    parts = [matrix.tocoo() for matrix in personal.values()]
    picks = [(part.row, part.col) for part in parts] + [popular_candidates(model.trend, excluded, k)]
    # Interest per cluster, spread over that cluster's products by their popularity:
    # each cluster's k + (bought there) most popular products are its candidates.
    clustered = model.cluster_of >= 0
    clusters = int(model.cluster_of.max()) + 1 if clustered.any() else 0
    interest = np.zeros((len(users), clusters))
    if clusters:
        membership = sparse.csr_matrix(
            (np.ones(int(clustered.sum())), (np.flatnonzero(clustered), model.cluster_of[clustered])),
            shape=(products, clusters),
        )
        interest = np.asarray((shares @ membership).todense())
        order = np.lexsort((-model.trend, np.where(clustered, model.cluster_of, clusters)))
        sizes = np.bincount(model.cluster_of[clustered], minlength=clusters)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        bought_there = np.asarray((excluded @ membership).todense())
        rows, cluster = np.nonzero(interest > 0)
        lengths = np.minimum(k + bought_there[rows, cluster].astype(np.int64), sizes[cluster])
        picks.append(leading(order, starts[cluster], lengths, rows))
    rows = np.concatenate([r for r, _ in picks]).astype(np.int64)
    cols = np.concatenate([c for _, c in picks]).astype(np.int64)
    candidates = sparse.csr_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(len(users), products))
    candidates.sum_duplicates()
    candidates.sort_indices()
    rows = np.repeat(np.arange(len(users)), np.diff(candidates.indptr))
    cols = candidates.indices
    values = {name: values_at(matrix, rows, cols).astype(np.float32) for name, matrix in personal.items()}
    if clusters:
        best_per_cluster = np.zeros(clusters)
        np.maximum.at(best_per_cluster, model.cluster_of[clustered], model.trend[clustered])
        top = (interest * best_per_cluster[None, :]).max(axis=1)
        own = model.cluster_of[cols]
        affinity = np.where(own >= 0, interest[rows, np.maximum(own, 0)], 0.0) * model.trend[cols]
        values["cluster"] = np.divide(affinity, top[rows], out=np.zeros_like(affinity),
                                      where=top[rows] > 0).astype(np.float32)
    else:
        values["cluster"] = np.zeros(len(cols), dtype=np.float32)
    values["trend"] = model.trend[cols].astype(np.float32)
    return Scores(candidates, values, values_at(excluded, rows, cols) > 0)


def blend(scores: Scores, weights: dict[str, float]) -> np.ndarray:
    """The weighted sum of the signals, per candidate entry."""
    total = np.zeros(len(scores.positions), dtype=np.float32)
    for name, weight in weights.items():
        if weight:
            total += np.float32(weight) * scores[name]
    return total


def top_entries(indptr: np.ndarray, values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a CSR layout, its k largest finite `values`: (entry indices, values),
    users x k, best first; -1 and -inf where a row has fewer. Rows are padded to their
    size bucket (powers of two), so the work is O(entries), whatever the catalog."""
    users = len(indptr) - 1
    entries = np.full((users, k), -1, dtype=np.int64)
    best = np.full((users, k), -np.inf, dtype=np.float64)
    lengths = np.diff(indptr)
    buckets = np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64)
    for bucket in np.unique(buckets[lengths > 0]):
        rows = np.flatnonzero((buckets == bucket) & (lengths > 0))
        width = int(lengths[rows].max())
        offsets = indptr[rows][:, None] + np.arange(width)[None, :]
        inside = np.arange(width)[None, :] < lengths[rows][:, None]
        offsets = np.where(inside, offsets, 0)
        padded = np.where(inside, values[offsets], -np.inf)
        keep = min(k, width)
        chosen = np.argpartition(-padded, keep - 1, axis=1)[:, :keep] if keep < width else np.broadcast_to(
            np.arange(width), (len(rows), width))
        chosen_values = np.take_along_axis(padded, chosen, axis=1)
        order = np.argsort(-chosen_values, axis=1, kind="stable")
        chosen, chosen_values = np.take_along_axis(chosen, order, axis=1), np.take_along_axis(chosen_values, order, 1)
        found = np.isfinite(chosen_values)
        entries[rows, :keep] = np.where(found, np.take_along_axis(offsets, chosen, axis=1), -1)
        best[rows, :keep] = chosen_values
    return entries, best


def top_k(matrix: sparse.csr_matrix, excluded: sparse.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, scores) of each row's best k entries of a users x products sparse
    matrix (its entries are the candidates), excluded ones never; -1 / -inf when short."""
    matrix = sparse.csr_matrix(matrix, dtype=np.float64)
    matrix.sort_indices()
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    values = np.where(values_at(excluded, rows, matrix.indices) > 0, -np.inf, matrix.data)
    entries, best = top_entries(matrix.indptr, values, k)
    return np.where(entries >= 0, matrix.indices[np.maximum(entries, 0)], -1), best


def top_k_popular(popularity: np.ndarray, excluded: sparse.csr_matrix, k: int) -> np.ndarray:
    """Positions of the k most popular products each user has not bought (not personal)."""
    rows, cols = popular_candidates(popularity, excluded, k)
    ranked_list = sparse.csr_matrix((popularity[cols] + 1.0, (rows, cols)), shape=excluded.shape)
    return top_k(ranked_list, excluded, k)[0]


def top_k_dense(scores: np.ndarray, excluded: sparse.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, scores) of each row's best k products of a dense users x products block."""
    masked = scores.astype(np.float64, copy=True)
    masked[excluded.nonzero()] = -np.inf
    k = min(k, masked.shape[1])
    best = np.argpartition(-masked, k - 1, axis=1)[:, :k]
    best_scores = np.take_along_axis(masked, best, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best, order, axis=1), np.take_along_axis(best_scores, order, axis=1)


def discovery_slots(k: int, share: float) -> int:
    return min(int(round(k * share)), k - 1) if k > 1 else 0


def ranked_entries(scores: Scores, weights: dict[str, float], k: int, share: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(entries, blended scores) of each user's k products: the blend's best first, then
    `discovery_slots` for the best of the user's own item-item signals not yet shown
    (the blend's next best when those run out)."""
    blended = np.where(scores.excluded, -np.inf, blend(scores, weights))
    indptr = scores.candidates.indptr
    entries, best = top_entries(indptr, blended, k)
    slots = discovery_slots(k, share)
    if slots == 0:
        return entries, best
    lead = k - slots
    personal = {name: w for name, w in weights.items() if name in EDGE_SIGNALS and w} or {"ease": 1.0}
    own = blend(scores, personal)
    own[scores.excluded | (own <= 0)] = -np.inf
    shown = entries[:, :lead]
    own[shown[shown >= 0]] = -np.inf
    extra, _ = top_entries(indptr, own, slots)
    rest = entries[:, lead:]
    rest = np.where((rest[:, :, None] == extra[:, None, :]).any(axis=2), -1, rest)
    combined = np.hstack([shown, extra, rest])
    combined = np.take_along_axis(combined, np.argsort(combined < 0, axis=1, kind="stable"), axis=1)[:, :k]
    return combined, np.where(combined >= 0, blended[np.maximum(combined, 0)], -np.inf)


def ranked(scores: Scores, weights: dict[str, float], k: int, share: float) -> tuple[np.ndarray, np.ndarray]:
    """(positions, blended scores) of each user's k products (see `ranked_entries`)."""
    entries, best = ranked_entries(scores, weights, k, share)
    return np.where(entries >= 0, scores.positions[np.maximum(entries, 0)], -1), best


def recommend_block(model: Model, history: pd.DataFrame, k: int) -> pd.DataFrame:
    """(user_id, rank, product_id, score, reason_product_id, reason_event) for the users
    of `history` (user_id, product_id, weight, purchased, strongest_event, recency)."""
    users = list(dict.fromkeys(history["user_id"]))
    scores = signal_scores(model, history, users, k)
    entries, best_scores = ranked_entries(scores, model.weights, k, model.discovery_share)
    rows = []
    personal = {name: w for name, w in model.weights.items() if w and name in EDGE_SIGNALS}
    weights = history_matrix(history, users, model.index)
    # Without a product of their own behind it, a pick is either what similar customers
    # buy now or what everybody buys now, whichever weighs more in its score.
    from_customers = model.weights.get("neighbours", 0) * scores["neighbours"] > model.weights.get(
        "trend", 0) * scores["trend"]
    for row, user_id in enumerate(users):
        valid = entries[row] >= 0  # fewer products left than k
        chosen_entries, scores_of_chosen = entries[row][valid], best_scores[row][valid]
        chosen = scores.positions[chosen_entries]
        reasons = _reason_items(model, personal, weights[row], chosen)
        rows += [
            (user_id, rank, model.index.ids[position], float(score), reason, bool(from_customers[entry]))
            for rank, (position, entry, score, reason)
            in enumerate(zip(chosen, chosen_entries, scores_of_chosen, reasons, strict=True), 1)
        ]
    result = pd.DataFrame(
        rows, columns=["user_id", "rank", "product_id", "score", "reason_position", "from_customers"]
    )
    events = history.set_index(["user_id", "product_id"])["strongest_event"]
    reason_ids = [model.index.ids[p] if p >= 0 else None for p in result["reason_position"]]
    result["reason_product_id"] = reason_ids
    result["reason_event"] = [
        events.get((u, p)) if p is not None else (SIMILAR_CUSTOMERS if similar else None)
        for u, p, similar in zip(result["user_id"], reason_ids, result["from_customers"], strict=True)
    ]
    return result.drop(columns=["reason_position", "from_customers"])


def _reason_items(model: Model, personal: dict, user_row, chosen: np.ndarray) -> np.ndarray:
    """Per recommended position, the history product that contributed most to its
    personal score (-1 when none did, e.g. a trending product)."""
    owned = user_row.indices
    if not personal or len(owned) == 0 or len(chosen) == 0:
        return np.full(len(chosen), -1)
    contribution = np.zeros((len(owned), len(chosen)))
    for name, weight in personal.items():
        contribution += weight * model.edges[name][owned][:, chosen].toarray()
    contribution *= user_row.data[:, None]
    best = contribution.argmax(axis=0)
    return np.where(contribution[best, np.arange(len(chosen))] > 0, owned[best], -1)



# --- Fitting and tuning ------------------------------------------------------------


def scoring_history(user_items: DataFrame) -> DataFrame:
    """What scoring reads per user: weights, purchases, and recency rank (1 = newest)."""
    order = Window.partitionBy("user_id").orderBy(F.col("last_ts").desc(), F.col("product_id"))
    return user_items.withColumn("recency", F.row_number().over(order)).select(
        "user_id", "product_id", "weight", "purchased", "strongest_event", "recency"
    )


def catalog_index(products: DataFrame) -> ItemIndex:
    ids = products.select("product_id").orderBy("product_id").toPandas()["product_id"].to_numpy()
    return ItemIndex(ids)


def cluster_positions(index: ItemIndex, clusters: pd.DataFrame) -> np.ndarray:
    cluster_of = np.full(len(index), -1, dtype=np.int64)
    positions = index.positions(clusters["product_id"])
    known = positions >= 0
    cluster_of[positions[known]] = clusters["cluster"].to_numpy()[known]
    return cluster_of


def trend_vectors(
    events: DataFrame, index: ItemIndex, half_lives, settings: RecommenderSettings
) -> dict[float, np.ndarray]:
    """Popularity per product position for each half-life, each scaled to max 1."""
    half_lives = list(half_lives)
    popular = popularity(events, half_lives, settings).toPandas()
    positions = index.positions(popular["product_id"])
    known = positions >= 0
    vectors = {}
    for i, half_life in enumerate(half_lives):
        vector = np.zeros(len(index))
        vector[positions[known]] = popular[f"popularity_{i}"].to_numpy()[known]
        vectors[half_life] = vector / vector.max() if vector.max() > 0 else vector
    return vectors


def trend_vector(
    events: DataFrame, index: ItemIndex, half_life_days: float, settings: RecommenderSettings
) -> np.ndarray:
    return trend_vectors(events, index, [half_life_days], settings)[half_life_days]


@dataclass
class Counts:
    """What Spark counted over an event log, as products x products sparse matrices in
    catalog order: O(products x K) entries, plus EASE's counts among at most
    `ease_max_items` products."""

    covisit: sparse.csr_matrix  # cosine of user sets, top K per product
    transitions: sparse.csr_matrix  # "b after a" counts, top K per product
    ease: sparse.csr_matrix  # co-occurrence counts (diagonal: users) among the most popular


def catalog_positions(spark, index: ItemIndex) -> DataFrame:
    """(product_id, position): the catalog's order, for joining ids to positions in Spark."""
    return spark.createDataFrame(pd.DataFrame({"product_id": index.ids.astype(str),
                                               "position": np.arange(len(index), dtype=np.int32)}))


def positions_to_matrix(pairs: pd.DataFrame, size: int, value: str) -> sparse.csr_matrix:
    """A square matrix from (product_id, neighbour_id, value) rows holding positions."""
    return sparse.csr_matrix(
        (pairs[value].to_numpy(dtype=np.float64),
         (pairs["product_id"].to_numpy(dtype=np.int64), pairs["neighbour_id"].to_numpy(dtype=np.int64))),
        shape=(size, size))


def count_pairs(events: DataFrame, index: ItemIndex, settings: RecommenderSettings) -> Counts:
    """Count co-occurrences (each user's `max_history_for_pairs` most recent products)
    and transitions in Spark, each cut to its top `neighbours_per_product` per product
    there. Products are counted by catalog position; the pairs are counted once, for
    the co-visitation cosine and for EASE."""
    keep = settings.neighbours_per_product
    positions = F.broadcast(catalog_positions(events.sparkSession, index))

    def by_position(df: DataFrame) -> DataFrame:
        return df.join(positions, "product_id").drop("product_id").withColumnRenamed("position", "product_id")

    history = by_position(recent_history(user_item_weights(events, settings), settings.max_history_for_pairs)
                          .select("user_id", "product_id")).persist()
    pairs = unordered_pair_counts(history).persist()
    users = product_users(history).persist()
    transitions = top_per_product(transition_counts(by_position(events), settings.next_window), keep, "count")
    size = len(index)
    counts = Counts(
        covisit=positions_to_matrix(covisit_edges(history, keep, pairs, users).toPandas(), size, "score"),
        transitions=positions_to_matrix(
            transitions.select("product_id", "neighbour_id", "count").toPandas(), size, "count"),
        ease=positions_to_matrix(ease_counts(history, settings.ease_max_items, pairs, users).toPandas(), size, "both"),
    )
    for table in (history, pairs, users):
        table.unpersist()
    return counts


def customer_profiles(events: DataFrame, index: ItemIndex, settings: RecommenderSettings) -> Customers:
    """Each customer's most recent products, counted in Spark, as the matrices of
    `Customers` (weights halved every `neighbour_half_life_days`)."""
    user_items = user_item_weights(events, settings, settings.neighbour_half_life_days)
    recent = recent_history(user_items, settings.max_history_for_pairs).select("user_id", "product_id", "weight")
    return customers_from_pairs(recent.toPandas(), index, settings.neighbour_users)


def customers_from_pairs(recent: pd.DataFrame, index: ItemIndex, neighbours: int) -> Customers:
    """`Customers` from (user_id, product_id, weight) rows."""
    customers = ItemIndex(np.array(sorted(recent["user_id"].unique()), dtype=object))
    weights = history_matrix(recent, list(customers.ids), index)
    profiles = (weights > 0).astype(np.float64)
    lengths = np.sqrt(np.asarray(profiles.sum(axis=1)).ravel())
    profiles = sparse.diags(1.0 / np.maximum(lengths, 1.0)) @ profiles
    return Customers(index=customers, profiles=profiles.tocsr(), recent=weights, neighbours=neighbours)


def fit_model(
    events: DataFrame,
    index: ItemIndex,
    content: pd.DataFrame,
    clusters: pd.DataFrame,
    settings: RecommenderSettings,
    weights: dict[str, float] | None = None,
    trend_half_life_days: float | None = None,
    counts: Counts | None = None,
    customers: Customers | None = None,
) -> Model:
    """Count over `events` in Spark (unless `counts` and `customers` already hold the
    counts), then build the item x item signals on the driver."""
    counts = counts or count_pairs(events, index, settings)
    return Model(
        index=index,
        edges=build_edges(index, counts, content, settings),
        cluster_of=cluster_positions(index, clusters),
        trend=trend_vector(events, index, trend_half_life_days or settings.trend_half_life_days, settings),
        weights=weights or default_weights(settings),
        recent_items_for_next=settings.recent_items_for_next,
        customers=customers or customer_profiles(events, index, settings),
        discovery_share=settings.discovery_share,
    )


def ndcg(positions: np.ndarray, relevant: sparse.csr_matrix) -> float:
    """NDCG of users x k top lists (positions, -1 for an empty slot)."""
    return ranking_metrics(positions, relevant)["ndcg"]


WEIGHT_GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


def tune_weights(
    scores: Scores,
    relevant: sparse.csr_matrix,
    k: int,
    start: dict[str, float],
    fixed: dict[str, float] | None = None,
    rounds: int = 2,
) -> tuple[dict[str, float], float]:
    """Coordinate ascent on validation NDCG@k over the blend weights; `fixed` ones stay."""
    fixed = fixed or {}
    weights = {**start, **fixed}

    def quality(candidate: dict[str, float]) -> float:
        return ndcg(ranked(scores, candidate, k, 0.0)[0], relevant)

    best = quality(weights)
    for _ in range(rounds):
        improved = False
        for name in [s for s in SIGNALS if s not in fixed]:
            for value in WEIGHT_GRID:
                if value == weights[name]:
                    continue
                candidate = {**weights, name: value}
                if not any(candidate.values()):
                    continue
                score = quality(candidate)
                if score > best + 1e-9:
                    weights, best, improved = candidate, score, True
        if not improved:
            break
    return weights, best
