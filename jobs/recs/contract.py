"""The input contract every source is mapped onto, and the quarantine table's shape."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

PRODUCT_COLUMNS = ("product_id", "title", "description", "category", "price")
EVENT_COLUMNS = ("user_id", "product_id", "event_type", "quantity", "ts")

# Raw inputs are read as strings: the preprocess step decides what is valid and
# keeps what is not, with a reason, instead of letting a reader turn it into null.
RAW_PRODUCTS_SCHEMA = T.StructType([T.StructField(c, T.StringType()) for c in PRODUCT_COLUMNS])
RAW_EVENTS_SCHEMA = T.StructType([T.StructField(c, T.StringType()) for c in EVENT_COLUMNS])

QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField("source", T.StringType(), False),
        T.StructField("reason", T.StringType(), False),
        T.StructField("record", T.StringType(), True),
    ]
)


def with_record(df: DataFrame) -> DataFrame:
    """Keep each raw row as JSON beside it, so a quarantined row can be shown as it came."""
    return df.withColumn("record", F.to_json(F.struct(*[F.col(c) for c in df.columns])))


def quarantined(rows: DataFrame, source: str) -> DataFrame:
    """Rows set aside: where they came from, why (`reason`), and the raw row (`record`)."""
    return rows.select(F.lit(source).alias("source"), F.col("reason"), F.col("record"))


def as_strings(df: DataFrame, columns: tuple[str, ...], source: str) -> DataFrame:
    """Select the contract's columns as strings; a missing required column is a clear error.

    Header names match whatever their case and surrounding blanks (`PRODUCT_ID`)."""
    by_name = {}
    for found in df.columns:
        by_name.setdefault(found.strip().lower(), found)
    missing = [c for c in columns if c not in by_name]
    optional = {"description", "category", "price", "quantity"}
    required_missing = [c for c in missing if c not in optional]
    if required_missing:
        hint = ""
        if len(df.columns) == 1 and any(sep in df.columns[0] for sep in ";\t|"):
            hint = " (the header is one column: the contract's CSV files are comma-separated)"
        raise ValueError(f"{source}: missing required column(s) {required_missing}; found {df.columns}{hint}")
    return df.select(
        *[
            (F.col(f"`{by_name[c]}`").cast("string") if c in by_name else F.lit(None).cast("string")).alias(c)
            for c in columns
        ]
    )
