"""Readers that map each supported source onto the input contract (all strings).

- `contract`: a folder holding products.* and events.* (CSV, gzipped CSV or Parquet).
- `online_retail`: the UCI Online Retail transactions CSV (optionally gzipped).
- `amazon_reviews`: a folder with `*item.json[.gz]` ({item_id: {title, description,
  brand, categories}}) and `*inter.json[.gz]` ({user_id: [item_id, ...]} in review
  order), as in the McAuley Amazon 5-core sets; reviews count as purchases.

Rows a source holds but the contract cannot use (a cancellation, a guest checkout,
a postage line) are returned in `skipped` with a reason, so nothing vanishes.
"""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recs import io
from recs.contract import (
    EVENT_COLUMNS,
    PRODUCT_COLUMNS,
    QUARANTINE_SCHEMA,
    RAW_EVENTS_SCHEMA,
    RAW_PRODUCTS_SCHEMA,
    as_strings,
    quarantined,
    with_record,
)

log = logging.getLogger(__name__)


@dataclass
class Source:
    products: DataFrame
    events: DataFrame
    skipped: DataFrame
    # False when `ts` only orders each user's events (the evaluation then leaves the
    # last purchase out instead of splitting on time).
    timestamps: bool = True
    # The raw input's columns as read (before any cleaning): part of the input fingerprint
    # the publish gate compares runs by, so a file whose columns changed is new data.
    schema: str = ""


def read_source(spark: SparkSession, input_path: str, input_format: str) -> Source:
    if input_format == "contract":
        return read_contract(spark, input_path)
    if input_format == "online_retail":
        raw, malformed = read_csv(spark, input_path, "online_retail")
        source = import_online_retail(raw)
        source.skipped = malformed.unionByName(source.skipped)
        source.schema = f"csv {', '.join(raw.columns)}"
        return source
    if input_format == "amazon_reviews":
        return import_amazon_reviews(spark, input_path)
    raise ValueError(f"unknown input format {input_format!r}")


CORRUPT = "_corrupt_record"
MALFORMED_ROW = "malformed CSV row (unbalanced quote or wrong number of fields)"


def read_csv(spark: SparkSession, path: str, source: str) -> tuple[DataFrame, DataFrame]:
    """A CSV file with a header, every column a string (validation happens in preprocess,
    with reasons) -> (well-formed rows, malformed rows as quarantine rows of `source`).

    Read line by line unless the file needs `multiLine` (a quoted field holding a line
    break): in multiLine mode one stray quote swallows every row up to the next quote. So
    multiLine is used only when the line-by-line read finds malformed rows and the
    multiLine read finds none; otherwise the damage stays on the lines it is on.
    """
    columns = _header(spark, path)
    schema = T.StructType([T.StructField(c, T.StringType()) for c in (*columns, CORRUPT)])

    def read(multi_line: bool) -> DataFrame:
        # Cached: a row is checked against the header only when all its columns are parsed,
        # and a query that needs fewer (column pruning) would let a short row through.
        return (
            spark.read.schema(schema)
            .option("header", True)
            .option("multiLine", multi_line)
            .option("escape", '"')
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT)
            .option("enforceSchema", True)
            .csv(path)
            .cache()
        )

    rows = read(multi_line=False)
    if _malformed_count(rows):
        multi = read(multi_line=True)
        if _malformed_count(multi):
            multi.unpersist()
        else:
            log.info("%s holds quoted line breaks: read with multiLine", path)
            rows.unpersist()
            rows = multi
    _check_utf8(rows, columns, path)
    malformed = rows.where(F.col(CORRUPT).isNotNull()).select(
        F.lit(source).alias("source"), F.lit(MALFORMED_ROW).alias("reason"), F.col(CORRUPT).alias("record")
    )
    return rows.where(F.col(CORRUPT).isNull()).drop(CORRUPT), malformed


def _header(spark: SparkSession, path: str) -> list[str]:
    columns = spark.read.option("header", True).option("escape", '"').csv(path).columns
    if not columns:
        raise ValueError(f"{path} is empty: expected a header line, then one row per line")
    # A UTF-8 byte order mark or blanks around a name are not part of it.
    return [column.replace("\ufeff", "").strip() for column in columns]


def _check_utf8(rows: DataFrame, columns: list[str], path: str) -> None:
    """Spark decodes CSV as UTF-8 and turns any other byte into U+FFFD: a Latin-1 or
    Windows-1252 export would go on with mangled titles and ids. Name the file and column."""
    flags = rows.select(
        *[F.max(F.col(f"`{c}`").contains(REPLACEMENT)).alias(str(i)) for i, c in enumerate(columns)]
    ).first()
    for i, column in enumerate(columns):
        if flags[str(i)]:
            sample = rows.where(F.col(f"`{column}`").contains(REPLACEMENT)).select(f"`{column}`").first()[0]
            raise ValueError(
                f"{path}: column {column} holds bytes that are not UTF-8 (e.g. {sample[:60]!r}); "
                "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
            )


REPLACEMENT = "\ufffd"


def _malformed_count(rows: DataFrame) -> int:
    return rows.where(F.col(CORRUPT).isNotNull()).count()


def _find_table(spark: SparkSession, folder: str, name: str) -> tuple[DataFrame, DataFrame, str]:
    """The contract table `name` in `folder` -> (rows, malformed rows as quarantine rows,
    the raw schema it was read with)."""
    for candidate in (f"{name}.parquet", name, f"{name}.csv", f"{name}.csv.gz"):
        path = f"{folder}/{candidate}"
        if io.exists(spark, path):
            is_parquet = candidate.endswith(".parquet") or (candidate == name and _holds_parquet(spark, path))
            if is_parquet:
                raw = spark.read.parquet(path)
                return as_strings(raw, _COLUMNS[name], path), _no_rows(spark), f"{name} {raw.schema.simpleString()}"
            rows, malformed = read_csv(spark, path, name)
            return as_strings(rows, _COLUMNS[name], path), malformed, f"{name} csv {', '.join(rows.columns)}"
    raise FileNotFoundError(
        f"no {name} table in {folder}: expected {name}.csv, {name}.csv.gz, {name}.parquet or a {name}/ folder"
    )


_COLUMNS = {"products": PRODUCT_COLUMNS, "events": EVENT_COLUMNS}


def _no_rows(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame([], QUARANTINE_SCHEMA)


def _holds_parquet(spark: SparkSession, folder: str) -> bool:
    return any(name.endswith(".parquet") for name in io.list_dir(spark, folder))


def read_contract(spark: SparkSession, folder: str) -> Source:
    products, malformed_products, products_schema = _find_table(spark, folder, "products")
    events, malformed_events, events_schema = _find_table(spark, folder, "events")
    return Source(products, events, malformed_products.unionByName(malformed_events),
                  schema=f"{products_schema}; {events_schema}")


ONLINE_RETAIL_COLUMNS = (
    "InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country",
)
# Products have numeric stock codes (85123A, 22423); POST, DOT, M, BANK CHARGES,
# AMAZONFEE, gift_0001_10 and the like are fees and adjustments.
PRODUCT_STOCK_CODE = r"^[0-9]"


def import_online_retail(raw: DataFrame) -> Source:
    missing = [c for c in ONLINE_RETAIL_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"online_retail: missing column(s) {missing}; found {raw.columns}")
    rows = with_record(raw.select(*ONLINE_RETAIL_COLUMNS)).select(
        F.trim("InvoiceNo").alias("invoice"),
        F.upper(F.trim("StockCode")).alias("product_id"),
        F.trim("Description").alias("title"),
        F.col("Quantity").try_cast("int").alias("quantity"),
        F.trim("InvoiceDate").alias("ts"),
        F.col("UnitPrice").try_cast("double").alias("unit_price"),
        # Some exports write the id as a float ("17850.0").
        F.regexp_replace(F.trim("CustomerID"), r"\.0+$", "").alias("user_id"),
        "record",
    )
    reason = (
        F.when(F.col("product_id").isNull() | ~F.col("product_id").rlike(PRODUCT_STOCK_CODE), "non-product stock code")
        .when(F.col("invoice").startswith("C"), "cancellation")
        .when(F.col("user_id").isNull() | (F.col("user_id") == ""), "guest checkout (no CustomerID)")
        .when(F.col("quantity").isNull() | (F.col("quantity") <= 0), "non-positive quantity")
    )
    checked = rows.withColumn("reason", reason)
    skipped = quarantined(checked.where(F.col("reason").isNotNull()), "online_retail")
    purchases = checked.where(F.col("reason").isNull())

    events = purchases.select(
        "user_id",
        "product_id",
        F.lit("purchase").alias("event_type"),
        F.col("quantity").cast("string").alias("quantity"),
        "ts",
    )
    products = canonical_products(checked.where(F.col("product_id").rlike(PRODUCT_STOCK_CODE)))
    return Source(products, events, skipped)


def canonical_products(lines: DataFrame) -> DataFrame:
    """One row per stock code: its most frequent description as the title, preferring
    descriptions of priced lines (zero-price lines carry notes like "damaged"; ties: the
    first alphabetically), and the median unit price of its priced lines."""
    titled = lines.where(F.col("title").isNotNull() & (F.col("title") != ""))
    title_counts = titled.groupBy("product_id", "title").agg(
        F.count("*").alias("count"), F.max(F.col("unit_price") > 0).alias("priced")
    )
    order = Window.partitionBy("product_id").orderBy(F.col("priced").desc(), F.col("count").desc(), F.col("title"))
    ranked = title_counts.withColumn("_rank", F.row_number().over(order))
    best_title = ranked.where(F.col("_rank") == 1).select("product_id", "title")
    prices = (
        titled.where(F.col("unit_price") > 0)
        .groupBy("product_id")
        .agg(F.percentile_approx("unit_price", 0.5).alias("price"))
    )
    codes = lines.select("product_id").distinct()
    return (
        codes.join(best_title, "product_id", "left")
        .join(prices, "product_id", "left")
        .select(
            "product_id",
            "title",
            F.lit(None).cast("string").alias("description"),
            F.lit(None).cast("string").alias("category"),
            F.col("price").cast("string").alias("price"),
        )
    )


def _read_json_file(spark: SparkSession, folder: str, pattern: str) -> dict:
    """One JSON document matching `pattern` in `folder`, read through Spark's file
    system layer (any Hadoop URI); these research files are a few MB."""
    files = spark.read.format("binaryFile").option("pathGlobFilter", pattern).load(folder).select("path", "content")
    found = files.collect()
    if len(found) != 1:
        raise FileNotFoundError(f"expected one file matching {pattern} in {folder}, found {len(found)}")
    raw = bytes(found[0]["content"])
    return json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


# Reviews carry no time: each user's reviews are spaced a day apart in their order, so
# `ts` orders a user's events and nothing more (Source.timestamps is False).
_ORDER_ONLY_EPOCH = datetime(2000, 1, 1)


def import_amazon_reviews(spark: SparkSession, folder: str) -> Source:
    items = _read_json_file(spark, folder, "*item.json*")
    interactions = _read_json_file(spark, folder, "*inter.json*")
    products = pd.DataFrame(
        [
            {
                "product_id": str(item_id),
                "title": item.get("title"),
                "description": ". ".join(part for part in (item.get("brand"), item.get("description")) if part),
                "category": item.get("categories"),
                "price": None,
            }
            for item_id, item in items.items()
        ],
        columns=list(PRODUCT_COLUMNS),
    )
    events = pd.DataFrame(
        [
            (str(user_id), str(item_id), "purchase", "1",
             (_ORDER_ONLY_EPOCH + timedelta(days=position)).strftime("%Y-%m-%dT%H:%M:%SZ"))
            for user_id, item_ids in interactions.items()
            for position, item_id in enumerate(item_ids)
        ],
        columns=list(EVENT_COLUMNS),
    )
    return Source(
        spark.createDataFrame(products.astype(object).where(products.notna(), None), schema=RAW_PRODUCTS_SCHEMA),
        spark.createDataFrame(events, schema=RAW_EVENTS_SCHEMA),
        spark.createDataFrame([], QUARANTINE_SCHEMA),
        timestamps=False,
        schema="json items; interactions",
    )
