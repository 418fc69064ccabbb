"""preprocess.clean_products / clean_events on tiny hand-written inputs.

Each input is cleaned once per module (fixtures) and collected to Python, so the
many assertions below cost no further Spark jobs.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import pytest

from recs.contract import RAW_EVENTS_SCHEMA, RAW_PRODUCTS_SCHEMA
from recs.preprocess import clean_events, clean_products

# (product_id, title, description, category, price), all strings as a reader delivers them.
RAW_PRODUCTS = [
    ("P1", "AT&amp;T <b>Phone</b>", "  A   phone\n with\ttabs ", "Electronics", "9.99"),
    ("", "Mystery item without an id", "x", "Misc", "1.00"),
    ("   ", "Blank id", "y", "Misc", "1.00"),
    ("P2", "", "   ", "Kitchen", "5.00"),
    ("P3", "Salt &amp; pepper mill", "<p>Two<br/>mills</p>", "Kitchen", "abc"),
    ("P4", "Refund voucher", None, None, "-1"),
    ("P5", "Mug", None, "Kitchen", "3.50"),
    ("P5", "Mug", None, "Kitchen", "3.50"),  # exact duplicate: dropped, not quarantined
    ("P6", "Lamp", "Short", "Office", "10"),
    ("P6", "Lamp", "A much longer description", "Office", "10"),  # same id, more text: kept
    ("P7", None, "Only a description", None, None),
    ("P8", "5 < 6 and <i>x</i>", "fish &amp; chips &lt;3", "Food", " 2 "),
    ("P9", "Priceless", None, None, "NaN"),  # a double cast accepts it, the contract does not
    ("P10", "Endless", None, None, "Infinity"),
]
EXACT_PRODUCT_DUPLICATES = 1


def raw_dict(row: tuple, columns: tuple[str, ...]) -> dict:
    """The raw row as `record` should hold it (to_json leaves null fields out)."""
    return {c: v for c, v in zip(columns, row, strict=True) if v is not None}


PRODUCT_FIELDS = ("product_id", "title", "description", "category", "price")
EVENT_FIELDS = ("user_id", "product_id", "event_type", "quantity", "ts")


@pytest.fixture(scope="module")
def cleaned_products(spark):
    raw = spark.createDataFrame(RAW_PRODUCTS, RAW_PRODUCTS_SCHEMA)
    products, quarantine = clean_products(raw)
    rows = {row["product_id"]: row.asDict() for row in products.collect()}
    assert len(rows) == products.count()  # one row per product_id
    return rows, [row.asDict() for row in quarantine.collect()], products.columns, quarantine.columns


def test_products_columns(cleaned_products):
    _, _, product_columns, quarantine_columns = cleaned_products
    assert product_columns == ["product_id", "title", "description", "category", "price", "text"]
    assert quarantine_columns == ["source", "reason", "record"]


def test_html_entities_unescaped_tags_removed_whitespace_collapsed(cleaned_products):
    products, _, _, _ = cleaned_products
    p1 = products["P1"]
    assert p1["title"] == "AT&T Phone"
    assert p1["description"] == "A phone with tabs"
    assert p1["category"] == "Electronics"
    assert p1["price"] == pytest.approx(9.99)
    assert p1["text"] == "AT&T Phone. Electronics. A phone with tabs"
    # A lone '<' is not a tag; '&lt;' becomes '<' and stays (it is text, not markup).
    p8 = products["P8"]
    assert p8["title"] == "5 < 6 and x"
    assert p8["description"] == "fish & chips <3"
    assert p8["price"] == 2.0  # surrounding blanks are trimmed before the cast


def test_text_skips_missing_parts(cleaned_products):
    products, _, _, _ = cleaned_products
    assert products["P5"]["text"] == "Mug. Kitchen"
    assert products["P5"]["description"] is None
    assert products["P7"]["title"] is None
    assert products["P7"]["price"] is None  # no price is allowed, unlike a bad one
    assert products["P7"]["text"] == "Only a description"


def test_valid_products_are_exactly_the_good_ids(cleaned_products):
    products, _, _, _ = cleaned_products
    assert sorted(products) == ["P1", "P10", "P3", "P4", "P5", "P6", "P7", "P8", "P9"]


def test_a_bad_price_is_nulled_and_the_product_kept(cleaned_products):
    """Nothing downstream uses the price: dropping the product (and then its events as
    "unknown product_id") for it lost data. preprocess.run counts the nulled prices."""
    products, _, _, _ = cleaned_products
    for product_id in ("P3", "P4", "P9", "P10"):  # "abc", "-1", "NaN", "Infinity"
        assert products[product_id]["price"] is None, product_id
    assert products["P3"]["text"] == "Salt & pepper mill. Kitchen. Two mills"


def test_quarantine_reasons(cleaned_products):
    _, quarantine, _, _ = cleaned_products
    assert {row["source"] for row in quarantine} == {"products"}
    by_reason = Counter(row["reason"] for row in quarantine)
    assert by_reason == {
        "missing product_id": 2,
        "no title and no description": 1,
        "duplicate product_id": 1,
    }
    reasons = {json.loads(row["record"])["product_id"]: row["reason"] for row in quarantine}
    assert reasons["P2"] == "no title and no description"
    assert reasons["P6"] == "duplicate product_id"


def test_quarantine_record_is_the_raw_row(cleaned_products):
    _, quarantine, _, _ = cleaned_products
    records = [json.loads(row["record"]) for row in quarantine]
    # Raw, not cleaned: the entity and tags are still there, blanks kept.
    assert raw_dict(RAW_PRODUCTS[1], PRODUCT_FIELDS) in records
    assert raw_dict(RAW_PRODUCTS[2], PRODUCT_FIELDS) in records
    assert raw_dict(RAW_PRODUCTS[3], PRODUCT_FIELDS) in records


def test_duplicate_id_keeps_longest_text(cleaned_products):
    products, quarantine, _, _ = cleaned_products
    assert products["P6"]["description"] == "A much longer description"
    duplicate = [json.loads(r["record"]) for r in quarantine if r["reason"] == "duplicate product_id"]
    assert duplicate == [raw_dict(RAW_PRODUCTS[8], PRODUCT_FIELDS)]


def test_product_row_accounting(cleaned_products):
    products, quarantine, _, _ = cleaned_products
    assert len(products) + len(quarantine) + EXACT_PRODUCT_DUPLICATES == len(RAW_PRODUCTS)


# --- events ------------------------------------------------------------------

KNOWN_PRODUCTS = ["P1", "P2"]
ISO = "2026-01-01T00:00:00Z"
# (user_id, product_id, event_type, quantity, ts) -> expected reason (None: valid)
RAW_EVENTS = [
    (("U1", "P1", "view", "", ISO), None),
    (("U1", "P1", "view", "", ISO), "exact duplicate"),
    (("U1", "P1", "purchase", "2", "1767225600"), None),
    (("U1", "P2", "Add_To_Cart", " 3 ", "2026-01-02 03:04:05"), None),
    (("U2", "P2", "view", None, "2026-01-02T03:04:05+02:00"), None),
    (("U2", "P2", "view", "1", "1767225600.5"), None),
    (("", "P1", "view", "1", ISO), "missing user_id"),
    ((None, "P1", "view", "1", ISO), "missing user_id"),
    (("U3", " ", "view", "1", ISO), "missing product_id"),
    (("U3", "P1", "click", "1", ISO), "unknown event_type"),
    (("U3", "P1", "purchase", "0", ISO), "quantity is not a positive whole number"),
    (("U3", "P1", "purchase", "-1", ISO), "quantity is not a positive whole number"),
    (("U3", "P1", "purchase", "1.5", ISO), "quantity is not a positive whole number"),
    (("U3", "P1", "purchase", "x", ISO), "quantity is not a positive whole number"),
    (("U3", "P1", "purchase", "99999999999", ISO), "quantity is too large"),  # must not overflow the int cast
    (("U3", "P1", "view", "1", "yesterday-ish"), "bad timestamp"),
    (("U3", "P1", "view", "1", ""), "bad timestamp"),
    (("U3", "P-NOT-IN-CATALOG", "view", "1", ISO), "unknown product_id"),
    (("U4", "P1", "view", "1", "1767225600000"), None),  # epoch milliseconds
    (("U4", "P1", "purchase", "1", "1767225600123"), None),
    (("U4", "P2", "VIEW", "1", ISO), None),
    (("U4", "P1", "view", "1", "2099-01-01"), "implausible timestamp"),  # would zero every other recency
    (("U4", "P1", "view", "1", "1994-12-31T23:59:59Z"), "implausible timestamp"),
    (("U4", "P1", "view", "1", "2024"), "bad timestamp"),  # not the year 2024
    (("U4", "P1", "view", "1", "123456"), "bad timestamp"),  # not the year 123456
    (("U4", "P1", "view", "1", "20260101"), "bad timestamp"),
    (("U4", "P1", "view", "1", "99999999999"), "bad timestamp"),  # 11 digits: neither seconds nor ms
]


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture(scope="module")
def cleaned_events(spark):
    from pyspark.sql import functions as F

    raw = spark.createDataFrame([row for row, _ in RAW_EVENTS], RAW_EVENTS_SCHEMA)
    products = spark.createDataFrame([(p,) for p in KNOWN_PRODUCTS], "product_id string")
    events, quarantine = clean_events(raw, products)
    # Epoch seconds are compared in the JVM: no dependence on the Python process's time zone.
    valid = [
        row.asDict()
        for row in events.withColumn("epoch", F.col("ts").cast("double")).drop("ts").collect()
    ]
    return valid, [row.asDict() for row in quarantine.collect()], events.dtypes


def test_events_schema(cleaned_events):
    _, _, dtypes = cleaned_events
    assert dtypes == [
        ("user_id", "string"),
        ("product_id", "string"),
        ("event_type", "string"),
        ("quantity", "int"),
        ("ts", "timestamp"),
    ]


def test_valid_events_parsed(cleaned_events):
    valid, _, _ = cleaned_events
    got = sorted((r["user_id"], r["product_id"], r["event_type"], r["quantity"], r["epoch"]) for r in valid)
    assert got == sorted(
        [
            ("U1", "P1", "view", 1, utc(2026, 1, 1).timestamp()),  # empty quantity counts once
            ("U1", "P1", "purchase", 2, utc(2026, 1, 1).timestamp()),  # epoch seconds
            ("U1", "P2", "add_to_cart", 3, utc(2026, 1, 2, 3, 4, 5).timestamp()),  # no zone: session zone (UTC)
            ("U2", "P2", "view", 1, utc(2026, 1, 2, 1, 4, 5).timestamp()),  # +02:00 offset
            ("U2", "P2", "view", 1, utc(2026, 1, 1).timestamp() + 0.5),  # fractional epoch
            ("U4", "P1", "view", 1, utc(2026, 1, 1).timestamp()),  # epoch milliseconds
            ("U4", "P1", "purchase", 1, utc(2026, 1, 1).timestamp() + 0.123),
            ("U4", "P2", "view", 1, utc(2026, 1, 1).timestamp()),  # event type in capitals
        ]
    )


def test_event_quarantine_reasons(cleaned_events):
    _, quarantine, _ = cleaned_events
    assert {row["source"] for row in quarantine} == {"events"}
    got = Counter((json.dumps(json.loads(r["record"]), sort_keys=True), r["reason"]) for r in quarantine)
    expected = Counter(
        (json.dumps(raw_dict(row, EVENT_FIELDS), sort_keys=True), reason)
        for row, reason in RAW_EVENTS
        if reason not in (None, "exact duplicate")
    )
    assert got == expected


def test_event_row_accounting(cleaned_events):
    valid, quarantine, _ = cleaned_events
    duplicates = sum(1 for _, reason in RAW_EVENTS if reason == "exact duplicate")
    assert len(valid) + len(quarantine) + duplicates == len(RAW_EVENTS)
    assert len(valid) == sum(1 for _, reason in RAW_EVENTS if reason is None)


def test_event_without_event_type_is_quarantined(spark):
    raw = spark.createDataFrame([("U1", "P1", None, "1", ISO), ("U1", "P1", " ", "1", ISO)], RAW_EVENTS_SCHEMA)
    products = spark.createDataFrame([("P1",)], "product_id string")
    events, quarantine = clean_events(raw, products)
    assert events.collect() == []
    assert [r["reason"] for r in quarantine.collect()] == ["unknown event_type"] * 2


def test_synthetic_shop_bad_rows_end_in_quarantine(spark, tmp_path):
    from recs.importers import read_contract
    from recs.synthetic import ShopSize, write_shop

    size = ShopSize(products=24, users=6, days=10, sessions_per_user=2.0)
    products_in, events_in = write_shop(str(tmp_path), size, seed=11)
    source = read_contract(spark, str(tmp_path))
    products, product_quarantine = clean_products(source.products)
    events, event_quarantine = clean_events(source.events, products)
    quarantine = product_quarantine.unionByName(event_quarantine).collect()
    assert Counter((r["source"], r["reason"]) for r in quarantine) == {
        ("products", "missing product_id"): 1,
        ("products", "no title and no description"): 1,
        ("events", "unknown product_id"): 1,
        ("events", "bad timestamp"): 1,
        ("events", "unknown event_type"): 1,
        ("events", "quantity is not a positive whole number"): 1,
        ("events", "missing user_id"): 1,
    }
    # Each table also holds one exact duplicate, dropped without a trace.
    # The product with the price "abc" is kept (its price nulled).
    assert products.count() == products_in - 2 - 1 == size.products + 1
    assert events.count() == events_in - 5 - 1
