"""Step 1: read the raw catalog and behaviour, clean and validate them, and set every
row that cannot be used aside in `quarantine` with its reason."""

from __future__ import annotations

import html
import logging

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recs import importers
from recs.config import EVENT_TYPES, RecsConfig
from recs.contract import EVENT_COLUMNS, PRODUCT_COLUMNS, quarantined, with_record
from recs.io import RunPaths, write_table

log = logging.getLogger(__name__)

TEXT_SEPARATOR = ". "


@F.pandas_udf(T.StringType())
def _html_unescape(texts: pd.Series) -> pd.Series:
    return texts.map(lambda text: html.unescape(text) if isinstance(text, str) else text)


def normalise_text(column: F.Column) -> F.Column:
    """Unescape HTML entities, drop tags, collapse white space, trim; empty becomes null."""
    # Only rows that hold an entity pay for the Python round trip.
    unescaped = F.when(column.contains("&"), _html_unescape(column)).otherwise(column)
    without_tags = F.regexp_replace(unescaped, r"</?[A-Za-z][^>]*>", " ")
    collapsed = F.trim(F.regexp_replace(without_tags, r"\s+", " "))
    return F.when(collapsed == "", None).otherwise(collapsed)


def _blank_to_null(column: F.Column) -> F.Column:
    trimmed = F.trim(column)
    return F.when(trimmed == "", None).otherwise(trimmed)


def clean_products(raw_products: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Raw contract products (strings) -> (products with `text`, quarantined rows)."""
    rows = with_record(raw_products)
    cleaned = rows.select(
        _blank_to_null(F.col("product_id")).alias("product_id"),
        normalise_text(F.col("title")).alias("title"),
        normalise_text(F.col("description")).alias("description"),
        normalise_text(F.col("category")).alias("category"),
        F.when(price_problem(F.col("price")).isNull(), parse_price(F.col("price"))).alias("price"),
        "record",
    )
    reason = (
        F.when(F.col("product_id").isNull(), "missing product_id")
        .when(F.col("title").isNull() & F.col("description").isNull(), "no title and no description")
    )
    checked = cleaned.withColumn("reason", reason)
    rejected = checked.where(F.col("reason").isNotNull())

    valid = checked.where(F.col("reason").isNull()).dropDuplicates(list(PRODUCT_COLUMNS))
    # Two different rows for one id: keep the one with the most text, set the others aside.
    text = F.concat_ws(TEXT_SEPARATOR, "title", "category", "description")
    ranked = valid.withColumn("text", text).withColumn(
        "_rank",
        F.row_number().over(
            Window.partitionBy("product_id").orderBy(F.length("text").desc(), F.col("record"))
        ),
    )
    duplicates = ranked.where(F.col("_rank") > 1).withColumn("reason", F.lit("duplicate product_id"))
    products = ranked.where(F.col("_rank") == 1).select(*PRODUCT_COLUMNS, "text")
    quarantine = quarantined(rejected, "products").unionByName(quarantined(duplicates, "products"))
    return products, quarantine


def parse_price(raw: F.Column) -> F.Column:
    return _blank_to_null(raw).try_cast("double")


def price_problem(raw: F.Column) -> F.Column:
    """Why a raw price cannot be used (null when it can, or when there is none). Nothing
    downstream needs a price, so such a price is nulled and counted, the product kept;
    "$1" and "1,99" are not guessed at."""
    price = parse_price(raw)
    return (
        F.when(
            _blank_to_null(raw).isNotNull() & (price.isNull() | F.isnan(price) | (F.abs(price) == float("inf"))),
            "price is not a number",
        )
        .when(price < 0, "negative price")
    )


# Events before this, or after a day from now, are quarantined: one far-future row would
# zero every other event's recency weight and move the evaluation window into the future.
EARLIEST_EVENT = "1995-01-01"


def parse_timestamp(column: F.Column) -> F.Column:
    """ISO-8601 text (with or without 'T' and zone), or epoch seconds (9-10 digits) or
    milliseconds (12-13 digits). Any other bare number (2024, 123456, 20240115) is no
    timestamp, though Spark would read it as a year."""
    seconds = F.when(column.rlike(r"^\d{9,10}(\.\d+)?$"), column.try_cast("double"))
    milliseconds = F.when(column.rlike(r"^\d{12,13}(\.\d+)?$"), column.try_cast("double") / 1000)
    as_epoch = F.timestamp_seconds(F.coalesce(seconds, milliseconds))
    as_text = F.when(~column.rlike(r"^[+-]?\d+(\.\d*)?$"), column.try_cast("timestamp"))
    return F.coalesce(as_epoch, as_text)


def implausible(ts: F.Column) -> F.Column:
    return (ts < F.lit(EARLIEST_EVENT).cast("timestamp")) | (ts > F.current_timestamp() + F.expr("INTERVAL 1 DAY"))


def clean_events(raw_events: DataFrame, products: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Raw contract events (strings) -> (valid events of known products, quarantined rows)."""
    rows = with_record(raw_events)
    quantity_text = _blank_to_null(F.col("quantity"))
    cleaned = rows.select(
        _blank_to_null(F.col("user_id")).alias("user_id"),
        _blank_to_null(F.col("product_id")).alias("product_id"),
        F.lower(_blank_to_null(F.col("event_type"))).alias("event_type"),
        # A view or a cart without a quantity counts once.
        F.coalesce(quantity_text.try_cast("double"), F.when(quantity_text.isNull(), F.lit(1.0))).alias("quantity"),
        parse_timestamp(_blank_to_null(F.col("ts"))).alias("ts"),
        "record",
    )
    reason = (
        F.when(F.col("user_id").isNull(), "missing user_id")
        .when(F.col("product_id").isNull(), "missing product_id")
        .when(F.col("event_type").isNull() | ~F.col("event_type").isin(*EVENT_TYPES), "unknown event_type")
        .when(
            F.col("quantity").isNull() | (F.col("quantity") <= 0) | (F.col("quantity") != F.floor("quantity")),
            "quantity is not a positive whole number",
        )
        .when(F.col("quantity") > 2147483647, "quantity is too large")
        .when(F.col("ts").isNull(), "bad timestamp")
        .when(implausible(F.col("ts")), "implausible timestamp")
    )
    checked = cleaned.withColumn("reason", reason)
    rejected = checked.where(F.col("reason").isNotNull())
    valid = checked.where(F.col("reason").isNull()).withColumn("quantity", F.col("quantity").cast("int"))

    known = products.select("product_id", F.lit(True).alias("_known"))
    matched = valid.join(known, "product_id", "left")
    unknown = matched.where(F.col("_known").isNull()).withColumn("reason", F.lit("unknown product_id"))
    events = matched.where(F.col("_known")).select(*EVENT_COLUMNS).dropDuplicates(list(EVENT_COLUMNS))
    quarantine = quarantined(rejected, "events").unionByName(quarantined(unknown, "events"))
    return events, quarantine


def check_quarantine_share(stats: dict, limit: float, input_path: str, quarantine_path: str) -> None:
    """Fail when more than `limit` of the events read were quarantined: past some share the
    input itself is broken (a wrong column, format or clock), and a model trained on the
    rest would be published as if nothing happened. The figure goes into the stats too."""
    reasons = {key.removeprefix("events: "): n for key, n in stats["quarantine"].items() if key.startswith("events: ")}
    quarantined = sum(reasons.values())
    read = stats["events_in"] + reasons.get(importers.MALFORMED_ROW, 0)
    share = quarantined / read if read else 0.0
    stats["events_quarantined_share"] = round(share, 4)
    if share > limit:
        worst = ", ".join(f"{reason}: {n}" for reason, n in sorted(reasons.items(), key=lambda r: (-r[1], r[0]))[:3])
        raise ValueError(
            f"{quarantined} of {read} events in {input_path} quarantined ({share:.0%}), more than "
            f"RECS_MAX_QUARANTINE_SHARE={limit:g} ({worst}); see {quarantine_path}"
        )


# K-means needs at least two clusters of distinct products (cluster.candidate_ks).
MIN_PRODUCTS = 3


def check_enough_to_learn(events: DataFrame, stats: dict, config: RecsConfig) -> None:
    """Fail here, naming the cause, on input the later steps cannot learn or measure
    anything from, instead of in the middle of a K-means or an evaluation."""
    where = config.input.path
    if stats["products_out"] < MIN_PRODUCTS:
        raise ValueError(
            f"only {stats['products_out']} valid product(s) in {where}: the pipeline needs at least {MIN_PRODUCTS}"
        )
    purchases, first, last = events.agg(
        F.sum((F.col("event_type") == "purchase").cast("int")), F.min("ts"), F.max("ts")
    ).first()
    if not purchases:
        raise ValueError(
            f"no purchases among the {stats['events_out']} valid events of {where}: "
            "the evaluation and the publish gate measure purchases"
        )
    stats["days_spanned"] = round((last - first).total_seconds() / 86400, 2)
    if stats["timestamps"] and stats["days_spanned"] <= config.evaluation.eval_days:
        raise ValueError(
            f"the events of {where} span {stats['days_spanned']:g} days, not more than RECS_EVAL_DAYS="
            f"{config.evaluation.eval_days}: the evaluation window would leave no history to learn from"
        )


def run(spark: SparkSession, config: RecsConfig, paths: RunPaths) -> dict:
    # Extract
    source = importers.read_source(spark, config.input.path, config.input.format)
    # Read four times (cleaned, quarantined, counted, prices checked), and a source's
    # products may be an aggregation of its lines (Online Retail's): computed once.
    source.products = source.products.cache()
    # Transform
    products, product_quarantine = clean_products(source.products)
    products = products.cache()
    events, event_quarantine = clean_events(source.events, products)
    quarantine = source.skipped.unionByName(product_quarantine).unionByName(event_quarantine)
    # Load
    write_table(products, paths.table("products"))
    write_table(events, paths.table("events"))
    write_table(quarantine, paths.table("quarantine"))

    written_products = spark.read.parquet(paths.table("products")).count()
    written_events = spark.read.parquet(paths.table("events"))
    stats = {
        "input_path": config.input.path,
        "input_format": config.input.format,
        "input_schema": source.schema,
        "timestamps": source.timestamps,
        "products_in": source.products.count(),
        "events_in": source.events.count(),
        "products_out": written_products,
        "events_out": written_events.count(),
        "users": written_events.select("user_id").distinct().count(),
        "quarantine": {
            f"{row['source']}: {row['reason']}": row["count"]
            for row in spark.read.parquet(paths.table("quarantine")).groupBy("source", "reason").count().collect()
        },
    }
    stats["prices_nulled"] = {
        row["reason"]: row["count"]
        for row in source.products.select(price_problem(F.col("price")).alias("reason"))
        .where(F.col("reason").isNotNull()).groupBy("reason").count().collect()
    }
    if stats["products_out"] == 0:
        raise ValueError(f"no valid products in {config.input.path}; see {paths.table('quarantine')}")
    check_quarantine_share(stats, config.input.max_quarantine_share, config.input.path, paths.table("quarantine"))
    if stats["events_out"] == 0:
        raise ValueError(f"no valid events in {config.input.path}; see {paths.table('quarantine')}")
    check_enough_to_learn(written_events, stats, config)
    stats["exact_duplicates_dropped"] = (
        stats["products_in"] + stats["events_in"] + source.skipped.count()
        - stats["products_out"] - stats["events_out"] - sum(stats["quarantine"].values())
    )
    log.info(
        "products %d in -> %d out; events %d in -> %d out; quarantined %s",
        stats["products_in"], stats["products_out"], stats["events_in"], stats["events_out"], stats["quarantine"],
    )
    return stats
