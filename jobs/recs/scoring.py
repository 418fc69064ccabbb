"""Scoring: the numpy half of the recommender, importable without pyspark.

The Spark half (`recs/model.py`) counts over the whole event log and hands over
compact products x products matrices (top K per product) and per-product vectors:
a `Model`. Everything here works on those and on the histories of a block of users,
the same code on the driver (tuning, evaluation) and in the Spark tasks that score
every customer (`recs/recommend.py` broadcasts the `Model`). Executors therefore
need numpy, pandas and scipy, never a SparkSession.

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

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.linalg import lapack

from recs.concurrency import concurrently
from recs.metrics import ranking_metrics

EDGE_SIGNALS = ("covisit", "ease", "next", "content")
SIGNALS = (*EDGE_SIGNALS, "neighbours", "cluster", "trend")
# Signals that use time: switched off together for the "without time" ablation.
TIME_SIGNALS = ("next", "neighbours", "trend")
TEXT_SIGNALS = ("content", "cluster")
# reason_event of a pick that similar customers bought recently, with no product of the
# user's own history behind it.
SIMILAR_CUSTOMERS = "similar_customers"
SIMILARITY_BLOCK = 1000  # users whose similarity to every customer is computed at once
# What scoring reads per user: one row per (user, product) of their history.
HISTORY_COLUMNS = ("user_id", "product_id", "weight", "purchased", "strongest_event", "recency")
# Users a Spark task scores at once: its memory grows with users x candidates (a few
# hundred each), and each block also pays for per-catalog work (the cluster order), so
# fewer, larger blocks are cheaper than many small ones.
USERS_PER_BLOCK = 2000


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
    if keep < 1 or source.nnz == 0:
        return sparse.csr_matrix(source.shape, dtype=np.float32)
    entries, _ = top_entries(source.indptr, source.data, keep)  # rows of all lengths at once
    rows, slots = np.nonzero(entries >= 0)
    chosen = entries[rows, slots]
    return sparse.csr_matrix((source.data[chosen], (rows, source.indices[chosen])), shape=source.shape)


def ease_weights(counts: sparse.csr_matrix, regularisation: float, max_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(popular, weights): EASE^R's B = I - P diag(1/diag(P)), P = (G + lambda I)^-1, as a
    dense float32 matrix over the `max_items` most popular products (their positions
    `popular`; memory grows with its square), its diagonal 0.

    G + lambda I is positive definite, so P comes from a Cholesky factor: half the work
    of a general inverse, which at 8,000 products is most of an evaluation's time. In
    single precision: half the time and memory of double; with lambda 50 or more the
    weights differ from double's by about a millionth of the largest (3,000 products of
    long-tailed baskets, the same top 20 per row), and M's NDCG did not change."""
    popular = np.argsort(-counts.diagonal(), kind="stable")[: min(max_items, counts.shape[0])]
    gram = counts[popular][:, popular].toarray().astype(np.float32)
    gram[np.diag_indices_from(gram)] += regularisation
    # (gram.T: the same symmetric matrix in Fortran order, which LAPACK factors in place.)
    factor, failed = lapack.spotrf(gram.T, lower=False, overwrite_a=True)
    inverse, failed_too = lapack.spotri(factor, lower=False, overwrite_c=True) if not failed else (None, 1)
    if failed or failed_too:
        raise ValueError(f"EASE: the Gram matrix plus {regularisation} I is not positive definite")
    inverse = np.triu(inverse) + np.triu(inverse, 1).T  # spotri fills the upper triangle only
    weights = inverse / -np.diag(inverse)
    np.fill_diagonal(weights, 0)
    return popular, weights


def ease_edges(popular: np.ndarray, weights: np.ndarray, size: int, keep: int) -> sparse.csr_matrix:
    """Each popular product's `keep` largest positive EASE weights (`ease_weights`), as a
    `size` x `size` sparse matrix (cut on the dense rows: no products x products sparse copy)."""
    keep = min(keep, weights.shape[1])
    if keep == 0:
        return sparse.csr_matrix((size, size), dtype=np.float32)
    best = np.argpartition(-weights, keep - 1, axis=1)[:, :keep]
    values = np.take_along_axis(weights, best, axis=1)
    rows = np.repeat(popular, keep)
    positive = values.ravel() > 0
    return sparse.csr_matrix(
        (values.ravel()[positive].astype(np.float32), (rows[positive], popular[best.ravel()[positive]])),
        shape=(size, size),
    )


def ease_top_k(popular: np.ndarray, weights: np.ndarray, history: sparse.csr_matrix, excluded: sparse.csr_matrix,
               k: int, block_cells: int) -> np.ndarray:
    """EASE^R's top k per user (positions, -1 when short): history x B (`ease_weights`) on
    the popular products, a dense block of at most `block_cells` scores at a time; users
    whose history holds none of them get no list (as the sparse product would give none)."""
    users = history.shape[0]
    top = np.full((users, k), -1, dtype=np.int64)
    if len(popular) == 0:
        return top
    # (float32 like the weights: a float64 history would copy them to float64 for every block)
    history = sparse.csr_matrix(history, dtype=np.float32)[:, popular]
    excluded = sparse.csr_matrix(excluded)[:, popular]
    block = max(1, block_cells // len(popular))
    for start in range(0, users, block):
        rows = slice(start, start + block)
        scores = np.asarray(history[rows] @ weights)
        positions, best = top_k_dense(scores, excluded[rows], k)
        found = np.isfinite(best) & (np.diff(history[rows].indptr) > 0)[:, None]
        top[rows, : positions.shape[1]] = np.where(found, popular[positions], -1)
    return top


def row_normalised(matrix: sparse.csr_matrix) -> sparse.csr_matrix:
    totals = np.asarray(matrix.sum(axis=1)).ravel()
    return (sparse.diags(1.0 / np.where(totals == 0, 1, totals)) @ matrix).tocsr()


@dataclass
class Customers:
    """Every customer's recent products, for the "neighbours" signal."""

    index: ItemIndex  # customer ids
    profiles: sparse.csr_matrix  # customers x products, 0/1 rows scaled to unit length
    # profiles' entries through which a customer can be found: only a product's most
    # recent customers (`finder`, chosen in Spark), so a best-seller's thousands of
    # customers are not all compared with one another
    finders: sparse.csr_matrix
    recent: sparse.csr_matrix  # customers x products, event weights halved with age
    neighbours: int  # similar customers consulted per user
    products_kept: int | None = None  # each user's best products of theirs kept (None: all)

    @functools.cached_property
    def finders_by_product(self) -> sparse.csr_matrix:
        """products x customers: `finders` transposed once per worker, not once per block of users."""
        return self.finders.T.tocsr()


@dataclass(frozen=True)
class CustomerFile:
    """Where a Spark task finds the customers: the Parquet files of (user_id, position,
    finder, weight columns) rows that Spark wrote and shipped to every executor with
    `addFile` (`recs.model.ship_customers`). They grow with the customers, so neither
    the driver nor a broadcast ever holds them; each Python worker reads them once."""

    parts: tuple[str, ...]  # the files' names for SparkFiles.get
    weight: str  # the column of the chosen half-life
    neighbours: int
    products_kept: int | None = None


@dataclass
class ClusterLayout:
    """Each cluster's products, most popular first, for the "cluster" signal."""

    clusters: int
    membership: sparse.csr_matrix  # products x clusters, 0/1
    order: np.ndarray  # product positions by cluster, then by popularity (clustered ones first)
    sizes: np.ndarray  # products per cluster
    starts: np.ndarray  # where each cluster's products start in `order`
    best_trend: np.ndarray  # the popularity of each cluster's most popular product


def cluster_layout(cluster_of: np.ndarray, trend: np.ndarray) -> ClusterLayout:
    clustered = cluster_of >= 0
    clusters = int(cluster_of.max()) + 1 if clustered.any() else 0
    membership = sparse.csr_matrix(
        (np.ones(int(clustered.sum())), (np.flatnonzero(clustered), cluster_of[clustered])),
        shape=(len(cluster_of), clusters),
    )
    order = np.lexsort((-trend, np.where(clustered, cluster_of, clusters)))
    sizes = np.bincount(cluster_of[clustered], minlength=clusters)
    best_trend = np.zeros(clusters)
    np.maximum.at(best_trend, cluster_of[clustered], trend[clustered])
    return ClusterLayout(clusters, membership, order, sizes, np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(
        np.int64), best_trend)


@dataclass
class Model:
    """Everything scoring needs, small enough to broadcast."""

    index: ItemIndex
    edges: dict[str, sparse.csr_matrix]
    cluster_of: np.ndarray  # cluster per product position (-1: none)
    trend: np.ndarray  # popularity per product position, max 1
    weights: dict[str, float]
    recent_items_for_next: int = 5
    customers: Customers | None = None  # in memory, or ...
    customer_file: CustomerFile | None = None  # ... read in the task (`with_customers`)
    discovery_share: float = 0.0
    titles: dict[str, str] = field(default_factory=dict)

    @functools.cached_property
    def trend_order(self) -> np.ndarray:
        """Product positions, most popular first; sorted once per worker."""
        return np.argsort(-self.trend, kind="stable")

    @functools.cached_property
    def cluster_layout(self) -> ClusterLayout:
        """The clusters' products by popularity, built once per worker (O(products log products))."""
        return cluster_layout(self.cluster_of, self.trend)


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
    product sets, found through the products where they are among the `finders`), the
    user left out; a row of zeros for a user who is not a customer."""
    rows = customers.index.positions(users)
    known = np.flatnonzero(rows >= 0)
    parts = []
    # A block of users at a time: a user who bought a best-seller shares it with a large
    # share of all customers, so a similarity row is long until cut to the nearest.
    for start in range(0, len(known), SIMILARITY_BLOCK):
        block = rows[known[start:start + SIMILARITY_BLOCK]]
        similarity = (customers.profiles[block] @ customers.finders_by_product).tocsr()
        own_row = np.repeat(block, np.diff(similarity.indptr))
        similarity.data[own_row == similarity.indices] = 0  # a user is not their own neighbour
        parts.append(top_per_row(similarity, neighbours, drop_diagonal=False))
    placed = sparse.csr_matrix(
        (np.ones(len(known)), (known, np.arange(len(known)))), shape=(len(users), len(known))
    )
    nearest = sparse.vstack(parts).tocsr() if parts else sparse.csr_matrix((0, len(customers.index)))
    return (placed @ nearest).tocsr()


def neighbour_scores(customers: Customers | None, users: list[str], products: int,
                     nearest: sparse.csr_matrix | None = None) -> sparse.csr_matrix:
    """users x products: the recent purchases of each user's most similar customers,
    each weighted by its cosine similarity to the user (`nearest`, when already known),
    the user's best `customers.products_kept` of them."""
    if customers is None:
        return sparse.csr_matrix((len(users), products))
    if nearest is None:
        nearest = nearest_customers(customers, users, customers.neighbours)
    scores = (nearest @ customers.recent).tocsr()
    return (scores if customers.products_kept is None
            else top_per_row(scores, customers.products_kept, drop_diagonal=False))


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


# The candidate table: Scores as rows, for Spark to carry between tasks and the driver.
# A user is their row number in the list the driver scores (4 bytes, not their id).
CANDIDATE_SCHEMA = "row int, position int, excluded boolean, " + ", ".join(f"{s} float" for s in SIGNALS)


def candidate_table(scores: Scores, rows: np.ndarray) -> pd.DataFrame:
    """`scores` as (row, position, excluded, one column per signal) rows, `rows` being
    the row number of each of the scored users."""
    return pd.DataFrame({
        "row": np.repeat(np.asarray(rows, dtype=np.int32), np.diff(scores.candidates.indptr)),
        "position": scores.positions.astype(np.int32),
        "excluded": scores.excluded, **{name: scores[name] for name in SIGNALS},
    })


def scores_from_table(table: Mapping[str, np.ndarray], users: int, products: int) -> Scores:
    """`Scores` of `users` users from `candidate_table` columns (a mapping of column to
    array). Rows already in (row, position) order, as Spark delivers them, are used as
    they are, without a copy; others are sorted first."""
    rows = np.asarray(table["row"])
    cols = np.asarray(table["position"])
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=users))])
    order = None if _row_major(rows, cols) else np.lexsort((cols, rows))

    def column(name: str, dtype) -> np.ndarray:
        values = np.asarray(table[name], dtype=dtype)
        return values if order is None else values[order]

    candidates = sparse.csr_matrix((np.ones(len(rows), dtype=np.int8), column("position", np.int32), indptr),
                                   shape=(users, products))
    return Scores(candidates, {name: column(name, np.float32) for name in SIGNALS}, column("excluded", bool))


def _row_major(rows: np.ndarray, cols: np.ndarray) -> bool:
    """Whether (rows, cols) pairs are in strictly increasing row-major order."""
    same_row = rows[1:] == rows[:-1]
    return bool(np.all(rows[1:] >= rows[:-1]) and np.all(cols[1:][same_row] > cols[:-1][same_row]))


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


def values_at_keys(keys: np.ndarray, matrix: sparse.coo_matrix, width: int) -> np.ndarray:
    """The matrix's values (float32) at entries given by sorted `keys` (row x `width` +
    column), 0 where it holds none: each of its entries is looked up among the keys, so
    the cost grows with its entries, however many keys there are (a user's candidates
    are the union of every signal's entries, most of them from one signal)."""
    values = np.zeros(len(keys), dtype=np.float32)
    if len(keys) == 0 or matrix.nnz == 0:
        return values
    own = matrix.row.astype(np.int64) * width + matrix.col
    found = np.minimum(np.searchsorted(keys, own), len(keys) - 1)
    hit = keys[found] == own
    values[found[hit]] = matrix.data[hit]
    return values


def leading(order: np.ndarray, starts: np.ndarray, lengths: np.ndarray, rows: np.ndarray):
    """(rows, products): for each i, the first lengths[i] products of `order` from
    starts[i] on, on row rows[i]."""
    lengths = np.maximum(lengths, 0)
    total = int(lengths.sum())
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
    return np.repeat(rows, lengths), order[offsets]


def popular_candidates(popularity: np.ndarray, excluded: sparse.csr_matrix, k: int, order: np.ndarray | None = None):
    """(rows, products): per user, the k most popular products they have not bought
    (taken as the first k + bought of the popularity `order`, when already sorted)."""
    order = np.argsort(-popularity, kind="stable") if order is None else order
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
    personal = {name: _per_user_normalised(matrix).tocoo() for name, matrix in personal.items()}
    picks = [(part.row, part.col) for part in personal.values()]
    picks.append(popular_candidates(model.trend, excluded, k, model.trend_order))
    # Interest per cluster, spread over that cluster's products by their popularity:
    # each cluster's k + (bought there) most popular products are its candidates.
    layout = model.cluster_layout
    interest = np.zeros((len(users), layout.clusters))
    if layout.clusters:
        interest = np.asarray((shares @ layout.membership).todense())
        bought_there = np.asarray((excluded @ layout.membership).todense())
        rows, cluster = np.nonzero(interest > 0)
        lengths = np.minimum(k + bought_there[rows, cluster].astype(np.int64), layout.sizes[cluster])
        picks.append(leading(layout.order, layout.starts[cluster], lengths, rows))
    rows = np.concatenate([r for r, _ in picks]).astype(np.int64)
    cols = np.concatenate([c for _, c in picks]).astype(np.int64)
    candidates = sparse.csr_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(len(users), products))
    candidates.sum_duplicates()
    candidates.sort_indices()
    rows = np.repeat(np.arange(len(users)), np.diff(candidates.indptr))
    cols = candidates.indices
    keys = rows.astype(np.int64) * products + cols
    values = {name: values_at_keys(keys, matrix, products) for name, matrix in personal.items()}
    if layout.clusters:
        top = (interest * layout.best_trend[None, :]).max(axis=1)
        own = model.cluster_of[cols]
        affinity = np.where(own >= 0, interest[rows, np.maximum(own, 0)], 0.0) * model.trend[cols]
        values["cluster"] = np.divide(affinity, top[rows], out=np.zeros_like(affinity),
                                      where=top[rows] > 0).astype(np.float32)
    else:
        values["cluster"] = np.zeros(len(cols), dtype=np.float32)
    values["trend"] = model.trend[cols].astype(np.float32)
    return Scores(candidates, values, values_at_keys(keys, excluded.tocoo(), products) > 0)


# Candidate entries blended at once: the weighted signal of a slice is a temporary, so
# tuning (a few blends of tens of millions of entries at once) holds no second copy.
BLEND_BLOCK = 1 << 20


def blend(scores: Scores, weights: dict[str, float]) -> np.ndarray:
    """The weighted sum of the signals, per candidate entry."""
    total = np.zeros(len(scores.positions), dtype=np.float32)
    for name, weight in weights.items():
        if weight:
            values = scores[name]
            for start in range(0, len(total), BLEND_BLOCK):
                total[start:start + BLEND_BLOCK] += np.float32(weight) * values[start:start + BLEND_BLOCK]
    return total


# Cells (rows x their padded width) `top_entries` ranks at once: its working set is a few
# times this many int64/float32 values (~60 MB), however many candidates there are
# (tuning ranks tens of millions, a few grid values at once).
TOP_BLOCK_CELLS = 1 << 21


@dataclass(frozen=True)
class RowBuckets:
    """The rows of a CSR layout grouped by length (powers of two), each group padded to
    its longest row: (rows, that width). Built once, it serves every `top_entries` over
    the same candidates (tuning ranks them ~100 times)."""

    rows: int
    groups: tuple[tuple[np.ndarray, int], ...]


def row_buckets(indptr: np.ndarray) -> RowBuckets:
    lengths = np.diff(indptr)
    sizes = np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64)
    groups = []
    for size in np.unique(sizes[lengths > 0]):
        rows = np.flatnonzero((sizes == size) & (lengths > 0))
        groups.append((rows, int(lengths[rows].max())))
    return RowBuckets(len(indptr) - 1, tuple(groups))


def _first_largest(values: np.ndarray, keep: int) -> np.ndarray:
    """Per row, the columns of its `keep` largest values, ties at the boundary going to
    the earlier columns. argpartition's pick among ties depends on the row's width, so
    rows where it had a choice are picked again by column order."""
    chosen = np.sort(np.argpartition(-values, keep - 1, axis=1)[:, :keep], axis=1)
    chosen_values = np.take_along_axis(values, chosen, axis=1)
    boundary = chosen_values.min(axis=1, keepdims=True)
    choice = (values == boundary).sum(axis=1) > (chosen_values == boundary).sum(axis=1)
    if choice.any():
        rows = values[choice]
        above = rows > boundary[choice]
        tied = rows == boundary[choice]
        room = keep - above.sum(axis=1, keepdims=True)
        chosen[choice] = np.nonzero(above | (tied & (np.cumsum(tied, axis=1) <= room)))[1].reshape(len(rows), keep)
    return chosen


def top_entries(indptr: np.ndarray, values: np.ndarray, k: int, buckets: RowBuckets | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a CSR layout, its k largest finite `values`: (entry indices, values),
    users x k, best first; -1 and -inf where a row has fewer. Rows are padded to their
    size bucket (`row_buckets`, when not given), so the work is O(entries), whatever the
    catalog. Of equal values the earlier entry wins: a row's answer is its own, not that
    of the rows it is padded with (argpartition's pick among ties depends on the width),
    so users score the same however they are put in blocks."""
    buckets = buckets or row_buckets(indptr)
    entries = np.full((buckets.rows, k), -1, dtype=np.int64)
    best = np.full((buckets.rows, k), -np.inf, dtype=np.float64)
    for group, width in buckets.groups:
        keep = min(k, width)
        step = max(1, TOP_BLOCK_CELLS // width)
        for start in range(0, len(group), step):
            rows = group[start:start + step]
            entries[rows, :keep], best[rows, :keep] = _top_of_rows(indptr, values, rows, width, keep)
    return entries, best


def _top_of_rows(indptr: np.ndarray, values: np.ndarray, rows: np.ndarray, width: int, keep: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """`top_entries` of `rows`, each padded to `width` (rows x keep)."""
    offsets = indptr[rows][:, None] + np.arange(width)[None, :]
    inside = offsets < indptr[rows + 1][:, None]
    padded = np.where(inside, values[np.where(inside, offsets, 0)], -np.inf)
    chosen = _first_largest(padded, keep) if keep < width else np.broadcast_to(np.arange(width), (len(rows), width))
    chosen_values = np.take_along_axis(padded, chosen, axis=1)
    order = np.argsort(-chosen_values, axis=1, kind="stable")
    chosen, chosen_values = np.take_along_axis(chosen, order, axis=1), np.take_along_axis(chosen_values, order, 1)
    return np.where(np.isfinite(chosen_values), np.take_along_axis(offsets, chosen, axis=1), -1), chosen_values


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


def ranked_entries(scores: Scores, weights: dict[str, float], k: int, share: float,
                   buckets: RowBuckets | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(entries, blended scores) of each user's k products: the blend's best first, then
    `discovery_slots` for the best of the user's own item-item signals not yet shown
    (the blend's next best when those run out). `buckets`: the candidates' `row_buckets`."""
    blended = blend(scores, weights)
    blended[scores.excluded] = -np.inf
    indptr = scores.candidates.indptr
    buckets = buckets or row_buckets(indptr)
    entries, best = top_entries(indptr, blended, k, buckets)
    slots = discovery_slots(k, share)
    if slots == 0:
        return entries, best
    lead = k - slots
    personal = {name: w for name, w in weights.items() if name in EDGE_SIGNALS and w} or {"ease": 1.0}
    own = blend(scores, personal)
    own[scores.excluded | (own <= 0)] = -np.inf
    shown = entries[:, :lead]
    own[shown[shown >= 0]] = -np.inf
    extra, _ = top_entries(indptr, own, slots, buckets)
    rest = entries[:, lead:]
    rest = np.where((rest[:, :, None] == extra[:, None, :]).any(axis=2), -1, rest)
    combined = np.hstack([shown, extra, rest])
    combined = np.take_along_axis(combined, np.argsort(combined < 0, axis=1, kind="stable"), axis=1)[:, :k]
    return combined, np.where(combined >= 0, blended[np.maximum(combined, 0)], -np.inf)


def ranked(scores: Scores, weights: dict[str, float], k: int, share: float, buckets: RowBuckets | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """(positions, blended scores) of each user's k products (see `ranked_entries`)."""
    entries, best = ranked_entries(scores, weights, k, share, buckets)
    return np.where(entries >= 0, scores.positions[np.maximum(entries, 0)], -1), best


def recommend_block(model: Model, history: pd.DataFrame, k: int) -> pd.DataFrame:
    """(user_id, rank, product_id, score, reason_product_id, reason_event) for the users
    of `history` (user_id, product_id, weight, purchased, strongest_event, recency)."""
    users = list(dict.fromkeys(history["user_id"]))
    scores = signal_scores(model, history, users, k)
    entries, best_scores = ranked_entries(scores, model.weights, k, model.discovery_share)
    chosen = np.where(entries >= 0, scores.positions[np.maximum(entries, 0)], -1)
    reasons = reason_items(model, history_matrix(history, users, model.index), chosen)
    # Without a product of their own behind it, a pick is either what similar customers
    # buy now or what everybody buys now, whichever weighs more in its score.
    from_customers = model.weights.get("neighbours", 0) * scores["neighbours"] > model.weights.get(
        "trend", 0) * scores["trend"]
    row, slot = np.nonzero(entries >= 0)  # fewer products left than k: fewer rows
    picked = entries[row, slot]
    result = pd.DataFrame({
        "user_id": np.asarray(users, dtype=object)[row], "rank": slot + 1,
        "product_id": model.index.ids[chosen[row, slot]], "score": best_scores[row, slot].astype(float),
    })
    reason = reasons[row, slot]
    result["reason_product_id"] = np.where(reason >= 0, model.index.ids[np.maximum(reason, 0)], None)
    strongest = history.drop_duplicates(["user_id", "product_id"]).set_index(["user_id", "product_id"])
    reason_event = strongest["strongest_event"].reindex(
        pd.MultiIndex.from_arrays([result["user_id"], result["reason_product_id"]])).to_numpy(dtype=object)
    result["reason_event"] = np.where(reason >= 0, reason_event,
                                      np.where(from_customers[picked], SIMILAR_CUSTOMERS, None))
    return result


def reason_items(model: Model, weights: sparse.csr_matrix, chosen: np.ndarray) -> np.ndarray:
    """users x k: per recommended position (`chosen`, -1 for none), the product of the
    user's history (`weights`, users x products) that adds most to its personal score,
    the earlier position of equals; -1 when none does (e.g. a trending product).

    A history product h adds weights[u, h] x (the blend's item-item signals from h to the
    recommended product), read from h's own rows of the edges: the cost grows with
    history x k. (The other way round, from the recommended product back to every product
    that points at it, a best-seller's column holds a large share of the catalog.)"""
    history = sparse.csr_matrix(weights)
    history.sort_indices()
    reasons = np.full(chosen.shape, -1, dtype=np.int64)
    if history.nnz == 0 or chosen.size == 0:
        return reasons
    user = np.repeat(np.arange(history.shape[0]), np.diff(history.indptr))
    sources, source_row = np.unique(history.indices, return_inverse=True)
    targets = chosen[user]  # history entries x k
    rows, cols = np.repeat(source_row, chosen.shape[1]), np.maximum(targets, 0).ravel()
    edges = np.zeros(targets.size, dtype=np.float32)  # summed in float32, as the edges are
    for name in EDGE_SIGNALS:
        if model.weights.get(name):
            edges += np.float32(model.weights[name]) * values_at(model.edges[name][sources], rows, cols)
    contribution = edges.reshape(targets.shape) * history.data[:, None]
    contribution[(targets < 0) | ~(contribution > 0)] = -np.inf
    for slot in range(chosen.shape[1]):
        best, _ = top_entries(history.indptr, contribution[:, slot], 1)
        found = best[:, 0] >= 0
        reasons[found, slot] = history.indices[best[found, 0]]
    return reasons


def cluster_positions(index: ItemIndex, clusters: pd.DataFrame) -> np.ndarray:
    cluster_of = np.full(len(index), -1, dtype=np.int64)
    positions = index.positions(clusters["product_id"])
    known = positions >= 0
    cluster_of[positions[known]] = clusters["cluster"].to_numpy()[known]
    return cluster_of


@dataclass
class Counts:
    """What Spark counted over an event log, as products x products sparse matrices in
    catalog order: O(products x K) entries, plus EASE's counts among at most
    `ease_max_items` products."""

    covisit: sparse.csr_matrix  # cosine of user sets, top K per product
    transitions: sparse.csr_matrix  # "b after a" counts, top K per product
    ease: sparse.csr_matrix  # co-occurrence counts (diagonal: users) among the most popular
    # The last `ease_weights` of `ease`, by (regularisation, max_items): one only, as each
    # is max_items squared floats (256 MB at 8,000 products).
    _last_ease: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def ease_weights(self, regularisation: float, max_items: int) -> tuple[np.ndarray, np.ndarray]:
        """`ease_weights` of these counts, the last ones reused: the evaluate step asks for
        the configured regularisation's twice per split (its model's edges, then the first
        value of the EASE baseline's grid), and each is a Cholesky inverse of max_items
        squared (seconds at 8,000 products)."""
        key = (float(regularisation), int(max_items))
        if self._last_ease is None or self._last_ease[0] != key:
            self._last_ease = None  # the old weights go before the new ones are built
            self._last_ease = (key, ease_weights(self.ease, regularisation, max_items))
        return self._last_ease[1]


def positions_to_matrix(pairs: pd.DataFrame, size: int, value: str) -> sparse.csr_matrix:
    """A square matrix from (product_id, neighbour_id, value) rows holding positions."""
    return sparse.csr_matrix(
        (pairs[value].to_numpy(dtype=np.float64),
         (pairs["product_id"].to_numpy(dtype=np.int64), pairs["neighbour_id"].to_numpy(dtype=np.int64))),
        shape=(size, size))


def from_upper_triangle(upper: sparse.csr_matrix) -> sparse.csr_matrix:
    """The symmetric matrix whose upper triangle and diagonal `upper` holds."""
    return (upper + sparse.triu(upper, 1).T).tocsr()


def customers_by_weight(rows: pd.DataFrame, products: int, weights: list[str], neighbours: int
                        ) -> dict[str, Customers]:
    """`Customers` for each weight column of (user_id, position, finder, *weights) rows
    (a customer's recent products by catalog position), sharing one index and profiles."""
    codes, ids = pd.factorize(rows["user_id"], sort=True)
    cols = rows["position"].to_numpy(dtype=np.int64)
    shape = (len(ids), products)
    unit = (1.0 / np.sqrt(np.maximum(np.bincount(codes, minlength=len(ids)), 1)))[codes]
    finder = rows["finder"].to_numpy(dtype=bool)
    base = Customers(
        index=ItemIndex(np.asarray(ids, dtype=object)),
        profiles=sparse.csr_matrix((unit, (codes, cols)), shape=shape),
        finders=sparse.csr_matrix((unit[finder], (codes[finder], cols[finder])), shape=shape),
        recent=sparse.csr_matrix(shape), neighbours=neighbours,
    )
    return {weight: dataclasses.replace(base, recent=sparse.csr_matrix(
        (rows[weight].to_numpy(dtype=np.float64), (codes, cols)), shape=shape)) for weight in weights}


def customers_from_pairs(recent: pd.DataFrame, index: ItemIndex, neighbours: int, products_kept: int | None = None
                         ) -> Customers:
    """`Customers` from (user_id, product_id, weight) rows, every customer findable."""
    rows = recent.assign(position=index.positions(recent["product_id"]), finder=True)
    customers = customers_by_weight(rows[rows["position"] >= 0], len(index), ["weight"], neighbours)["weight"]
    return dataclasses.replace(customers, products_kept=products_kept)


@functools.lru_cache(maxsize=2)
def read_customers(paths: tuple[str, ...], products: int) -> dict[str, Customers]:
    """Every weight column's `Customers` of a `CustomerFile`'s files, once per process
    (`neighbours` left 0 for the caller to set)."""
    rows = pd.concat([pd.read_parquet(path) for path in paths], ignore_index=True)
    weights = [c for c in rows.columns if c.startswith("weight")]
    return customers_by_weight(rows, products, weights, 0)


def with_customers(model: Model, locate) -> Model:
    """`model`, its customers read from its `customer_file` (each file found at
    `locate(name)`: SparkFiles.get in a task) unless already there. Sets them on `model`
    itself: a task's model is its worker's copy of the broadcast, kept for the next tasks."""
    if model.customers is None and model.customer_file is not None:
        file = model.customer_file
        customers = read_customers(tuple(locate(name) for name in file.parts), len(model.index))[file.weight]
        model.customers = dataclasses.replace(customers, neighbours=file.neighbours, products_kept=file.products_kept)
    return model


def neighbour_tops(customers: dict[float, Customers], users: list[str], excluded: sparse.csr_matrix,
                   sizes: list[int], k: int) -> dict[tuple[float, int], np.ndarray]:
    """users x k top lists of the "neighbours" signal alone, for each (half-life, number
    of similar customers). Who is similar to whom does not depend on the half-life (it
    only weighs what they bought): the nearest are found once, for the largest number,
    and each smaller number keeps its nearest of those."""
    products = excluded.shape[1]
    nearest_of_all = nearest_customers(next(iter(customers.values())), users, max(sizes))
    tops = {}
    for size in sizes:
        nearest = top_per_row(nearest_of_all, size, drop_diagonal=False)
        for half_life, by_half_life in customers.items():
            scores = neighbour_scores(by_half_life, users, products, nearest)
            tops[half_life, size] = top_k(scores, excluded, k)[0]
    return tops


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
    """Coordinate ascent on validation NDCG@k over the blend weights; `fixed` ones stay.

    A coordinate's grid values are ranked at once (numpy's partitions release the GIL,
    so they share the cores), then taken in grid order as if one after the other: the
    same weights."""
    fixed = fixed or {}
    weights = {**start, **fixed}
    buckets = row_buckets(scores.candidates.indptr)

    def quality(candidate: dict[str, float]) -> float:
        return ndcg(ranked(scores, candidate, k, 0.0, buckets)[0], relevant)

    best = quality(weights)
    for _ in range(rounds):
        improved = False
        for name in [s for s in SIGNALS if s not in fixed]:
            others = ({**weights, name: value} for value in WEIGHT_GRID if value != weights[name])
            candidates = [candidate for candidate in others if any(candidate.values())]
            for candidate, score in zip(candidates, concurrently(quality, candidates), strict=True):
                if score > best + 1e-9:
                    weights, best, improved = candidate, score, True
        if not improved:
            break
    return weights, best
