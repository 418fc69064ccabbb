"""importers: the UCI Online Retail mapping and the contract folder reader."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from recs.contract import EVENT_COLUMNS, PRODUCT_COLUMNS, as_strings
from recs.importers import ONLINE_RETAIL_COLUMNS, import_online_retail, read_contract


def line(invoice, code, description, quantity, minute, price, customer, country="United Kingdom"):
    """One raw line as the UCI CSV holds it (InvoiceDate as in the real file)."""
    return (invoice, code, description, quantity, f"2010-12-01 08:{minute:02d}:00", price, customer, country)


SKIP_CODE, GUEST, NON_POSITIVE = "non-product stock code", "guest checkout (no CustomerID)", "non-positive quantity"
# (raw line, expected skip reason or None for a purchase event)
UCI_ROWS = [
    (line("536365", "85123A", "WHITE HANGING HEART", "6", 26, "2.55", "17850.0"), None),
    (line("536366", "85123A", "WHITE HANGING HEART", "2", 28, "2.55", "17850"), None),
    (line("536367", "85123A", "HANGING HEART WHITE", "1", 34, "2.75", "13047"), None),
    (line("C536379", "85123A", "WHITE HANGING HEART", "-1", 41, "2.55", "17850"), "cancellation"),
    (line("536368", "85099b", "JUMBO BAG RED", "10", 40, "1.95", "13047.0"), None),
    (line("536369", "22423", "B CAKESTAND", "1", 45, "12.75", "12583", "France"), None),
    (line("536370", "22423", "A CAKESTAND", "1", 46, "12.75", "12583", "France"), None),
    (line("536371", "22423", "A CAKESTAND", "2", 47, "12.75", ""), GUEST),
    (line("536372", "22423", "B CAKESTAND", "2", 48, "12.75", None), GUEST),
    (line("536373", "POST", "POSTAGE", "1", 50, "18.00", "12583", "France"), SKIP_CODE),
    (line("536374", "DOT", "DOTCOM POSTAGE", "1", 51, "569.77", "14096"), SKIP_CODE),
    (line("536375", "M", "Manual", "1", 52, "2.55", "14096"), SKIP_CODE),
    (line("536376", "BANK CHARGES", "Bank Charges", "1", 53, "15.00", "14096"), SKIP_CODE),
    (line("536377", "AMAZONFEE", "AMAZON FEE", "1", 54, "1.00", "14096"), SKIP_CODE),
    (line("536378", "21730", "GLASS STAR LANTERN", "0", 55, "4.25", "17850"), NON_POSITIVE),
    (line("536380", "21730", "GLASS STAR LANTERN", "-3", 56, "4.25", "17850"), NON_POSITIVE),
    (line("536381", "21730", "GLASS STAR LANTERN", "many", 57, "4.25", "17850"), NON_POSITIVE),
]


@pytest.fixture(scope="module")
def online_retail(spark):
    schema = ", ".join(f"{c} string" for c in ONLINE_RETAIL_COLUMNS)
    raw = spark.createDataFrame([row for row, _ in UCI_ROWS], schema)
    source = import_online_retail(raw)
    return (
        [r.asDict() for r in source.events.collect()],
        [r.asDict() for r in source.skipped.collect()],
        {r["product_id"]: r.asDict() for r in source.products.collect()},
        source.products.columns,
        source.events.columns,
    )


def test_events_are_the_valid_purchases(online_retail):
    events, _, _, _, columns = online_retail
    assert columns == list(EVENT_COLUMNS)
    got = sorted((e["user_id"], e["product_id"], e["event_type"], e["quantity"], e["ts"]) for e in events)
    assert got == sorted(
        [
            ("17850", "85123A", "purchase", "6", "2010-12-01 08:26:00"),  # "17850.0" -> "17850"
            ("17850", "85123A", "purchase", "2", "2010-12-01 08:28:00"),
            ("13047", "85123A", "purchase", "1", "2010-12-01 08:34:00"),
            ("13047", "85099B", "purchase", "10", "2010-12-01 08:40:00"),  # stock code upper-cased
            ("12583", "22423", "purchase", "1", "2010-12-01 08:45:00"),
            ("12583", "22423", "purchase", "1", "2010-12-01 08:46:00"),
        ]
    )


def test_skipped_rows_have_reasons_and_raw_records(online_retail):
    _, skipped, _, _, _ = online_retail
    assert {s["source"] for s in skipped} == {"online_retail"}
    got = Counter((json.loads(s["record"])["InvoiceNo"], s["reason"]) for s in skipped)
    expected = Counter((row[0], reason) for row, reason in UCI_ROWS if reason)
    assert got == expected
    cancellation = next(s for s in skipped if s["reason"] == "cancellation")
    assert json.loads(cancellation["record"]) == dict(zip(ONLINE_RETAIL_COLUMNS, UCI_ROWS[3][0], strict=True))


def test_nothing_is_lost(online_retail):
    events, skipped, _, _, _ = online_retail
    assert len(events) + len(skipped) == len(UCI_ROWS)


def test_canonical_products(online_retail):
    _, _, products, columns, _ = online_retail
    assert columns == list(PRODUCT_COLUMNS)
    # Every product stock code seen, fees and adjustments excluded.
    assert sorted(products) == ["21730", "22423", "85099B", "85123A"]
    # 85123A: "WHITE HANGING HEART" on 3 lines (the cancellation counts), the variant on 1.
    assert products["85123A"]["title"] == "WHITE HANGING HEART"
    # 22423: "A CAKESTAND" and "B CAKESTAND" twice each: the tie goes to the first alphabetically.
    assert products["22423"]["title"] == "A CAKESTAND"
    assert products["85099B"]["title"] == "JUMBO BAG RED"
    assert float(products["22423"]["price"]) == 12.75
    assert float(products["85099B"]["price"]) == 1.95
    assert all(p["description"] is None and p["category"] is None for p in products.values())


def test_imported_purchases_pass_preprocess(spark):
    """What the importer emits is valid contract input: every purchase survives cleaning
    (its quantity and InvoiceDate parse), so none of them is quarantined."""
    from pyspark.sql import functions as F

    from recs.preprocess import clean_events

    schema = ", ".join(f"{c} string" for c in ONLINE_RETAIL_COLUMNS)
    source = import_online_retail(spark.createDataFrame([row for row, _ in UCI_ROWS], schema))
    known = spark.createDataFrame([(p,) for p in ("85123A", "85099B", "22423")], "product_id string")
    events, _ = clean_events(source.events, known)
    columns = ("user_id", "product_id", "quantity", F.col("ts").cast("string"))
    got = sorted(tuple(r) for r in events.select(*columns).collect())
    # All six purchases (test_events_are_the_valid_purchases) come out valid and parsed.
    assert got == sorted(
        (row[6].removesuffix(".0"), row[1].upper(), int(row[3]), row[4]) for row, reason in UCI_ROWS if reason is None
    )


def test_online_retail_missing_column(spark):
    raw = spark.createDataFrame([("1", "2")], "InvoiceNo string, StockCode string")
    with pytest.raises(ValueError, match="online_retail: missing column"):
        import_online_retail(raw)


# --- contract folder ----------------------------------------------------------

PRODUCTS_CSV = (
    "product_id,title,description,category,price\n"
    'P1,Mug,"A ceramic mug.\nHolds 300 ml, ""dishwasher safe"".",Kitchen,4.50\n'
    "P2,Lamp,,Office,12\n"
)
EVENTS_CSV = (
    "user_id,product_id,event_type,quantity,ts\n"
    "U1,P1,view,,2026-01-01T00:00:00Z\n"
    "U1,P2,purchase,2,1767225600\n"
)


def test_read_contract_csv_folder(spark, tmp_path):
    (tmp_path / "products.csv").write_text(PRODUCTS_CSV, encoding="utf-8")
    (tmp_path / "events.csv").write_text(EVENTS_CSV, encoding="utf-8")
    source = read_contract(spark, str(tmp_path))
    products = sorted(source.products.collect())
    assert [tuple(p) for p in products] == [
        ("P1", "Mug", 'A ceramic mug.\nHolds 300 ml, "dishwasher safe".', "Kitchen", "4.50"),
        ("P2", "Lamp", None, "Office", "12"),
    ]
    assert [tuple(e) for e in sorted(source.events.collect())] == [
        ("U1", "P1", "view", None, "2026-01-01T00:00:00Z"),
        ("U1", "P2", "purchase", "2", "1767225600"),
    ]
    assert source.skipped.collect() == []


def test_read_contract_optional_columns_may_be_missing(spark, tmp_path):
    (tmp_path / "products.csv").write_text("product_id,title\nP1,Mug\n", encoding="utf-8")
    (tmp_path / "events.csv").write_text("user_id,product_id,event_type,ts\nU1,P1,view,2026\n", encoding="utf-8")
    source = read_contract(spark, str(tmp_path))
    assert source.products.columns == list(PRODUCT_COLUMNS)
    assert [tuple(e) for e in source.events.collect()] == [("U1", "P1", "view", None, "2026")]


def test_read_contract_missing_events_table(spark, tmp_path):
    (tmp_path / "products.csv").write_text(PRODUCTS_CSV, encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"no events table in .*events\.csv"):
        read_contract(spark, str(tmp_path))


def test_as_strings_missing_required_column(spark):
    df = spark.createDataFrame([("U1", "view", "2026")], "user_id string, event_type string, ts string")
    with pytest.raises(ValueError, match=r"events: missing required column\(s\) \['product_id'\]"):
        as_strings(df, EVENT_COLUMNS, "events")


def test_as_strings_casts_to_string(spark):
    df = spark.createDataFrame([("P1", 3, 2.5)], "product_id string, title int, price double")
    out = as_strings(df, PRODUCT_COLUMNS, "products")
    assert out.dtypes == [(c, "string") for c in PRODUCT_COLUMNS]
