"""The recommender's Spark half: what needs the whole event log, and fitting a `Model`.

Spark counts user-product weights, co-occurrences, "bought next" transitions and
product popularity, and cuts each item-item signal to its top `neighbours_per_product`
per product there, so the driver receives O(products x K) rows, never all pairs (EASE,
a dense inverse, only sees its `ease_max_items` most popular products). `fit_model`
turns them into the compact sparse item x item matrices of a `recs.scoring.Model`,
which is broadcast; scoring users on their candidates is `recs/scoring.py`'s (numpy,
no pyspark), so its cost grows with the histories, never with users x products.
"""
from __future__ import annotations

import hashlib
import logging
import math
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
from pyspark import SparkFiles
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from scipy import sparse

from recs import io, scoring
from recs.config import RecommenderSettings
from recs.scoring import (
    SIGNALS,
    Counts,
    CustomerFile,
    ItemIndex,
    Model,
    Scores,
    cluster_positions,
    ease_edges,
    from_upper_triangle,
    positions_to_matrix,
    row_normalised,
)

log = logging.getLogger(__name__)


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


# The same pair's weight without the recency decay (a half-life of infinity: every event
# counts its type weight), for what scores a history without time.
UNDECAYED_WEIGHT = "undecayed_weight"


def user_item_weights(
    events: DataFrame, settings: RecommenderSettings, half_life_days: float | None = None, undecayed: bool = False
) -> DataFrame:
    """(user_id, product_id, weight, purchased, last_ts, strongest_event) per pair, and
    `UNDECAYED_WEIGHT` when `undecayed` (the same pass over the events).

    weight = sum over the pair's events of type weight x 0.5 ** (age / half-life).
    """
    half_lives = [half_life_days or settings.recency_half_life_days, *([math.inf] if undecayed else [])]
    weights = user_item_weights_by_half_life(events, settings, half_lives).withColumnRenamed("weight_0", "weight")
    return weights.withColumnRenamed("weight_1", UNDECAYED_WEIGHT) if undecayed else weights


def user_item_weights_by_half_life(
    events: DataFrame, settings: RecommenderSettings, half_lives: list[float]
) -> DataFrame:
    """`user_item_weights` with one column weight_i per half-life: one pass over the events for them all."""
    aged, type_weight = _with_age(events, settings)
    return aged.groupBy("user_id", "product_id").agg(
        *[F.sum(type_weight * F.pow(F.lit(0.5), F.col("age_days") / F.lit(float(half_life)))).alias(f"weight_{i}")
          for i, half_life in enumerate(half_lives)],
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
    """(product_id, neighbour_id, both) for product_id <= neighbour_id, among the
    `max_items` products with the most users (ties: the smaller id): all EASE^R needs,
    bounded by max_items squared whatever the catalog. The same pair counts as the
    co-visitation's, one triangle of the symmetric matrix and its diagonal: half the rows
    of both orders to collect (Online Retail: 2.1M instead of 4.1M), the driver mirrors them
    (`recs.scoring.from_upper_triangle`)."""
    users = users if users is not None else product_users(history)
    pairs = pairs if pairs is not None else unordered_pair_counts(history)
    order = Window.orderBy(F.col("users").desc(), F.col("product_id"))
    popular = users.withColumn("_rank", F.row_number().over(order)).where(F.col("_rank") <= max_items)
    mine = popular.select("product_id")
    theirs = popular.select(F.col("product_id").alias("neighbour_id"))
    among = pairs.join(F.broadcast(mine), "product_id").join(F.broadcast(theirs), "neighbour_id")
    diagonal = popular.select("product_id", F.col("product_id").alias("neighbour_id"), F.col("users").alias("both"))
    return among.select("product_id", "neighbour_id", "both").unionByName(diagonal)


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


def content_edges(content: DataFrame, index: ItemIndex) -> sparse.csr_matrix:
    """The text signal's item x item matrix from the content neighbours table
    (product_id, neighbour_id, score; each product's best `neighbours_per_product`
    already, `recs.recommend.content_neighbours`): positive scores between two products
    of the catalog. Ids become catalog positions in Spark, so only numbers reach the
    driver, through Arrow: a million products' 50 neighbours each, as ids in pandas,
    would take gigabytes of Python strings."""
    positions = F.broadcast(catalog_positions(content.sparkSession, index))
    theirs = positions.select(F.col("product_id").alias("neighbour_id"), F.col("position").alias("neighbour"))
    pairs = (
        content.where(F.col("score") > 0).join(positions, "product_id").join(theirs, "neighbour_id")
        .where(F.col("position") != F.col("neighbour"))
        .select("position", "neighbour", F.col("score").cast("float"))
        .toArrow()
    )
    return sparse.csr_matrix(
        (pairs.column("score").to_numpy(), (pairs.column("position").to_numpy(), pairs.column("neighbour").to_numpy())),
        shape=(len(index), len(index)), dtype=np.float32)


def build_edges(
    index: ItemIndex,
    counts: Counts,
    content: sparse.csr_matrix,
    settings: RecommenderSettings,
    ease_regularisation: float | None = None,
) -> dict[str, sparse.csr_matrix]:
    """The item x item matrices from what Spark counted and the content edges
    (`content_edges`), all already top K per product."""
    keep = settings.neighbours_per_product
    return {
        "covisit": counts.covisit.astype(np.float32),
        "ease": ease_edges(*counts.ease_weights(ease_regularisation or settings.ease_lambda, settings.ease_max_items),
                           len(index), keep),
        "next": row_normalised(counts.transitions.astype(np.float32)),
        "content": content,
    }


# --- Fitting a Model ---------------------------------------------------------------


def scoring_history(user_items: DataFrame) -> DataFrame:
    """What scoring reads per user: weights, purchases, and recency rank (1 = newest);
    `UNDECAYED_WEIGHT` too when `user_items` has it."""
    order = Window.partitionBy("user_id").orderBy(F.col("last_ts").desc(), F.col("product_id"))
    undecayed = [UNDECAYED_WEIGHT] if UNDECAYED_WEIGHT in user_items.columns else []
    return user_items.withColumn("recency", F.row_number().over(order)).select(
        "user_id", "product_id", "weight", *undecayed, "purchased", "strongest_event", "recency"
    )


def catalog_index(products: DataFrame) -> ItemIndex:
    ids = products.select("product_id").orderBy("product_id").toPandas()["product_id"].to_numpy()
    return ItemIndex(ids)


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


def catalog_positions(spark, index: ItemIndex) -> DataFrame:
    """(product_id, position): the catalog's order, for joining ids to positions in Spark."""
    return spark.createDataFrame(pd.DataFrame({"product_id": index.ids.astype(str),
                                               "position": np.arange(len(index), dtype=np.int32)}))


def count_pairs(events: DataFrame, index: ItemIndex, settings: RecommenderSettings, kept: str | None = None
                ) -> Counts:
    """Count co-occurrences (each user's `max_history_for_pairs` most recent products)
    and transitions in Spark, each cut to its top `neighbours_per_product` per product
    there. Products are counted by catalog position; the pairs are counted once, for
    the co-visitation cosine and for EASE.

    `kept`: a folder of the run where the counts stay for a later step. The recommend
    step's validation model and the evaluate step's test model count the same events
    (all before the evaluation window); the second reads what the first wrote, when the
    events (by content), the catalog and the settings match."""
    spark = events.sparkSession
    if kept is not None:
        key = _counts_key(events, index, settings)
        if io.exists(spark, f"{kept}/{COUNTS_KEY}") and io.read_json(spark, f"{kept}/{COUNTS_KEY}") == key:
            log.info("pair counts read from %s", kept)
            return _collect_counts({name: spark.read.parquet(f"{kept}/{name}") for name in COUNTS}, len(index))
    keep = settings.neighbours_per_product
    positions = F.broadcast(catalog_positions(spark, index))

    def by_position(df: DataFrame) -> DataFrame:
        return df.join(positions, "product_id").drop("product_id").withColumnRenamed("position", "product_id")

    history = by_position(recent_history(user_item_weights(events, settings), settings.max_history_for_pairs)
                          .select("user_id", "product_id")).persist()
    pairs = unordered_pair_counts(history).persist()
    users = product_users(history).persist()
    tables = {
        "covisit": covisit_edges(history, keep, pairs, users).withColumnRenamed("score", "value"),
        "transitions": top_per_product(transition_counts(by_position(events), settings.next_window), keep, "count")
        .select("product_id", "neighbour_id", F.col("count").alias("value")),
        "ease": ease_counts(history, settings.ease_max_items, pairs, users).withColumnRenamed("both", "value"),
    }
    if kept is not None:
        io.delete(spark, kept)
        for name, table in tables.items():
            table.write.parquet(f"{kept}/{name}")
        io.write_json(spark, f"{kept}/{COUNTS_KEY}", key)  # last: the tables are whole once it is there
        tables = {name: spark.read.parquet(f"{kept}/{name}") for name in COUNTS}
    counts = _collect_counts(tables, len(index))
    for table in (history, pairs, users):
        table.unpersist()
    return counts


COUNTS = ("covisit", "transitions", "ease")
COUNTS_KEY = "_key.json"


def _counts_key(events: DataFrame, index: ItemIndex, settings: RecommenderSettings) -> dict:
    """What kept counts must have been counted from: the events' number and a sum of
    their rows' hashes (one pass), the catalog (its positions) and the settings that count."""
    row_hash = F.xxhash64("user_id", "product_id", "event_type", "ts").cast("decimal(38,0)")
    rows, hashes = events.agg(F.count("*"), F.sum(row_hash)).first()
    catalog = hashlib.sha256("\n".join(map(str, index.ids)).encode()).hexdigest()
    return {"events": int(rows), "events_hash": str(hashes), "catalog": catalog, "ease": "upper triangle",
            **{name: getattr(settings, name) for name in
               ("neighbours_per_product", "max_history_for_pairs", "next_window", "ease_max_items")}}


def _collect_counts(tables: dict[str, DataFrame], size: int) -> Counts:
    counts = {name: positions_to_matrix(tables[name].toPandas(), size, "value") for name in COUNTS}
    return Counts(**{**counts, "ease": from_upper_triangle(counts["ease"])})


# --- Similar customers: counted in Spark, read by the tasks ----------------------

# Through a product, a user finds only its most recent customers: a best-seller's
# customers are many and say little about one another, and comparing them all costs
# their number squared (hours at a million customers).
FINDERS_PER_PRODUCT = 100


def customer_histories(events: DataFrame, index: ItemIndex, settings: RecommenderSettings,
                       half_lives: list[float]) -> DataFrame:
    """(user_id, position, finder, weight_0, ...): each customer's `max_history_for_pairs`
    most recent products by catalog position, one weight per half-life, and `finder` on
    each product's `FINDERS_PER_PRODUCT` most recent customers."""
    positions = F.broadcast(catalog_positions(events.sparkSession, index))
    user_items = user_item_weights_by_half_life(events, settings, half_lives)
    recent = recent_history(user_items, settings.max_history_for_pairs)
    order = Window.partitionBy("product_id").orderBy(F.col("last_ts").desc(), F.col("user_id"))
    return (
        recent.withColumn("finder", F.row_number().over(order) <= FINDERS_PER_PRODUCT)
        .join(positions, "product_id")
        .select("user_id", "position", "finder", *[f"weight_{i}" for i in range(len(half_lives))])
    )


def ship_customers(events: DataFrame, index: ItemIndex, settings: RecommenderSettings, half_lives: list[float],
                   work: str) -> dict[float, CustomerFile]:
    """Write `customer_histories` under the `work` folder and ship its files to every
    executor (`addFile`); a `CustomerFile` per half-life. The driver never reads it: it grows
    with the customers."""
    path = f"{work}/customers-{uuid.uuid4().hex}"
    customer_histories(events, index, settings, half_lives).write.parquet(path)
    # File by file: Spark ships a local folder only on a local master, files anywhere.
    # (Each part file's name holds the write's unique id.)
    names = tuple(name for name in io.list_dir(events.sparkSession, path) if name.endswith(".parquet"))
    for name in names:
        events.sparkSession.sparkContext.addFile(f"{path}/{name}")
    return {half_life: CustomerFile(names, f"weight_{i}", settings.neighbour_users, settings.neighbour_products)
            for i, half_life in enumerate(half_lives)}


def candidate_scores(model: Model, history: pd.DataFrame, users: list[str], k: int, spark: SparkSession) -> Scores:
    """`scoring.signal_scores` of `users` (their rows of `history`), computed by Spark
    tasks, which read the model's customers from its `CustomerFile`, and collected as the
    candidate table: a row per (user, candidate) with a column per signal. It grows with
    users x candidates: tuning and evaluation pass a bounded sample of users."""
    if model.customer_file is None or not users:
        return scoring.signal_scores(model, history, users, k)
    shared = spark.sparkContext.broadcast(model)

    def score(block: pd.DataFrame) -> pd.DataFrame:
        fitted = scoring.with_customers(shared.value, SparkFiles.get)
        rows = block.drop_duplicates("user_id")
        scores = scoring.signal_scores(fitted, block, list(rows["user_id"]), k)
        return scoring.candidate_table(scores, rows["row"].to_numpy())

    table = in_user_blocks(_sample_frame(spark, history, users), len(users), score, scoring.CANDIDATE_SCHEMA,
                           in_order_of="row")
    columns = collected_columns(table)
    shared.destroy()  # the driver's copy too (a model of a million products: gigabytes of the JVM's heap)
    return scoring.scores_from_table(columns, len(users), len(model.index))


def collected_columns(frame: DataFrame) -> dict[str, np.ndarray]:
    """`frame` on the driver as a numpy array per column, through Arrow without pandas:
    about twice the table at the peak, where `toPandas` and the copies a sort made held
    more than three times it (~90 bytes per row of the candidate table, 8.5 GB at L)."""
    table = frame.toArrow()
    return {name: table.column(name).to_numpy() for name in table.column_names}


def neighbour_grid(spark: SparkSession, index: ItemIndex, files: dict[float, CustomerFile], history: pd.DataFrame,
                   users: list[str], sizes: list[int], k: int) -> dict[tuple[float, int], np.ndarray]:
    """`scoring.neighbour_tops` of `users` (their rows of `history`), computed by Spark
    tasks that read the customers of every half-life from `files` (one write)."""
    parts = {file.parts for file in files.values()}
    if len(parts) != 1:
        raise ValueError("the half-lives' customers must come from one write")
    names, columns = parts.pop(), {half_life: file.weight for half_life, file in files.items()}
    shared = spark.sparkContext.broadcast(index)

    def tops(block: pd.DataFrame) -> pd.DataFrame:
        catalog = shared.value
        by_weight = scoring.read_customers(tuple(SparkFiles.get(name) for name in names), len(catalog))
        rows = block.drop_duplicates("user_id")
        block_users = list(rows["user_id"])
        bought = scoring.history_matrix(block[block["purchased"]].assign(one=1.0), block_users, catalog, "one")
        found = scoring.neighbour_tops({h: by_weight[c] for h, c in columns.items()}, block_users, bought, sizes, k)
        return pd.concat([
            pd.DataFrame({"row": np.repeat(rows["row"].to_numpy(), top.shape[1]),
                          "half_life": half_life, "size": size,
                          "slot": np.tile(np.arange(top.shape[1], dtype=np.int32), len(top)),
                          "position": top.ravel().astype(np.int32)})
            for (half_life, size), top in found.items()])

    table = in_user_blocks(_sample_frame(spark, history, users), len(users), tops,
                           "row int, half_life double, size int, slot int, position int").toPandas()
    shared.destroy()
    result = {}
    for (half_life, size), part in table.groupby(["half_life", "size"]):
        top = np.full((len(users), k), -1, dtype=np.int64)
        top[part["row"].to_numpy(), part["slot"].to_numpy()] = part["position"].to_numpy()
        result[half_life, int(size)] = top
    return result


def in_user_blocks(frame: DataFrame, users: int, function: Callable[[pd.DataFrame], pd.DataFrame], schema: str,
                   users_per_block: int = scoring.USERS_PER_BLOCK, in_order_of: str | None = None) -> DataFrame:
    """`function` applied to blocks of whole users of `frame` (pandas, all of a user's rows,
    at most `users_per_block` users), the `users` spread over at least as many tasks as
    Spark has cores. A grouping by a bucket column would not be: adaptive execution
    merges a small table's shuffle partitions into one task, and a sample of 1,300 users
    was scored on one of two cores; an explicit number of partitions is kept.
    `in_order_of`: a column numbering the users; then the blocks, and the rows a
    collection returns, come in its order (ranges of it per task, each sorted), so the
    driver need not sort what it collects."""
    tasks = max(frame.sparkSession.sparkContext.defaultParallelism, -(-users // users_per_block))
    if in_order_of is None:
        frame = frame.repartition(tasks, "user_id")
    else:
        frame = frame.repartitionByRange(tasks, in_order_of).sortWithinPartitions(in_order_of)

    def blocks(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        batches = [batch for batch in batches if len(batch)]
        if not batches:  # a partition no user was hashed to
            return
        part = pd.concat(batches, ignore_index=True)
        block_of = pd.factorize(part["user_id"])[0] // users_per_block
        for _, block in part.groupby(block_of, sort=False):
            yield function(block.reset_index(drop=True))

    return frame.mapInPandas(blocks, schema)


def _sample_frame(spark: SparkSession, history: pd.DataFrame, users: list[str]) -> DataFrame:
    """The rows of `users` in `history` (pandas), with each user's `row` number in
    `users`, as a Spark table."""
    rows = pd.Index(users).get_indexer(history["user_id"])
    return spark.createDataFrame(history[list(scoring.HISTORY_COLUMNS)].assign(row=rows.astype(np.int32))[rows >= 0])


def fit_model(
    events: DataFrame,
    index: ItemIndex,
    content: sparse.csr_matrix,
    clusters: pd.DataFrame,
    settings: RecommenderSettings,
    work: str,
    weights: dict[str, float] | None = None,
    trend_half_life_days: float | None = None,
    counts: Counts | None = None,
    customers: CustomerFile | None = None,
) -> Model:
    """Count over `events` in Spark (unless `counts` and `customers` already hold the
    counts), then build the item x item signals on the driver. The customers are
    written to the `work` folder for the tasks (`ship_customers`)."""
    counts = counts or count_pairs(events, index, settings)
    half_life = settings.neighbour_half_life_days
    customers = customers or ship_customers(events, index, settings, [half_life], work)[half_life]
    return Model(
        index=index,
        edges=build_edges(index, counts, content, settings),
        cluster_of=cluster_positions(index, clusters),
        trend=trend_vector(events, index, trend_half_life_days or settings.trend_half_life_days, settings),
        weights=weights or default_weights(settings),
        recent_items_for_next=settings.recent_items_for_next,
        customer_file=customers,
        discovery_share=settings.discovery_share,
    )


