"""Bad input through the preprocess step (`preprocess.run`, in-process on the shared
SparkSession, files in tmp_path): each case ends as a quarantine row with its reason, a
nulled and counted price, or a one-line error naming the file and column or the cause;
and every row read is accounted for: rows in = rows out + quarantined.

One dirty shop holds the row-level cases (one preprocess run); the file-level cases and
the inputs later steps could not learn from each get the cheapest call that decides them.
"""

from __future__ import annotations

import pandas as pd
import pytest

from recs import importers, preprocess
from recs.config import RecsConfig
from recs.io import RunPaths

BIG = 10 * 1024 * 1024
ISO = "2026-01-0{}T10:00:00Z"
# A UTF-8 byte order mark and upper-case names in the header.
PRODUCTS_HEADER = "\ufeffPRODUCT_ID,Title,DESCRIPTION,category,PRICE"
PRODUCTS = {  # product_id -> raw CSV line, or None when the line is built below
    "P1": "P1,Mug,A ceramic mug,Kitchen,3.50",
    "P2": None,  # a 10 MB description
    "P3": "P3,Pen,,Office,NaN",
    "P4": "P4,Pencil,,Office,-1",
    "P5": "P5,Stapler,,Office,$1",
    "P6": 'P6,Ruler,,Office,"1,99"',
    "P7": "P7,Glue,Short,Office,2",
    "P7b": "P7,Glue stick,A much longer description of the glue,Office,2",  # same id, more text: kept
    "P8": "P8,Scissors,,Office,4",
}
# (raw events line, expected reason; None: a valid event)
EVENTS = [
    ("U1,P1,VIEW,,2026-01-01T10:00:00Z", None),  # event types in any case
    ("U1,P1,Purchase,1,2026-01-02 10:00:00", None),
    ("U1,P2,add_to_cart,1,1767225600000", None),  # epoch milliseconds
    ("U1,P3,purchase,2,1767225600", None),  # epoch seconds
    ("U2,P3,view,1,2099-01-01", "implausible timestamp"),
    ("U2,P3,view,1,2024", "bad timestamp"),
    ("U2,P3,view,1,123456", "bad timestamp"),
    ("U2,P404,view,1,2026-01-01T10:00:00Z", "unknown product_id"),
    ('U2,"P5 and a stray quote,view,1,2026-01-03T10:00:00Z', importers.MALFORMED_ROW),
    ("U3,P5,purchase,1,2026-01-03T10:00:00Z", None),  # not swallowed by the stray quote above
    ("U3,P6,purchase,1,2026-01-04T10:00:00Z", None),  # bad prices do not drop products or events
    ("U3,P4,view,1,2026-01-04T11:00:00Z", None),
] + [(f"U{4 + i % 5},P{1 + i % 8},{('view', 'purchase')[i % 2]},1,2025-{1 + i % 12:02d}-15T08:00:00Z", None)
     for i in range(30)]


def write(folder, name: str, text: str, encoding: str = "utf-8") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.csv").write_bytes(text.encode(encoding))


def settings(data_root, shop, **environ) -> RecsConfig:
    return RecsConfig.load(environ={"RECS_DATA_ROOT": str(data_root), "RECS_INPUT": str(shop),
                                    "RECS_EVAL_DAYS": "30", **environ})


@pytest.fixture(scope="module")
def dirty_shop(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("dirty")
    shop = root / "shop"
    big = "word " * (BIG // 5)
    lines = [line if line else f"P2,Lamp,{big},Office,12" for line in PRODUCTS.values()]
    write(shop, "products", "\n".join([PRODUCTS_HEADER, *lines]) + "\n")
    write(shop, "events", "\n".join(["user_id,product_id,event_type,quantity,ts", *[e for e, _ in EVENTS]]) + "\n")
    paths = RunPaths(str(root / "data"), "dirty")
    stats = preprocess.run(spark, settings(root / "data", shop), paths)
    tables = {name: pd.read_parquet(paths.table(name)) for name in ("products", "events", "quarantine")}
    return stats, tables


def test_row_level_cases_end_with_their_reason(dirty_shop):
    _, tables = dirty_shop
    quarantine = tables["quarantine"]
    got = sorted(zip(quarantine["source"], quarantine["reason"], strict=True))
    expected = sorted([("products", "duplicate product_id")] +
                      [("events", reason) for _, reason in EVENTS if reason])
    assert got == expected
    # The raw line stays readable in the quarantine, the stray quote included.
    malformed = quarantine[quarantine["reason"] == importers.MALFORMED_ROW]["record"].tolist()
    assert malformed == ['U2,"P5 and a stray quote,view,1,2026-01-03T10:00:00Z']


def test_bom_upper_case_headers_bad_prices_big_text_and_duplicates(dirty_shop):
    stats, tables = dirty_shop
    products = tables["products"].set_index("product_id")
    assert sorted(products.index) == [f"P{i}" for i in range(1, 9)]
    assert products.loc["P1", "title"] == "Mug" and products.loc["P1", "price"] == 3.5
    for product_id in ("P3", "P4", "P5", "P6"):  # NaN, -1, $1, 1,99: nulled, product kept
        assert pd.isna(products.loc[product_id, "price"]), product_id
    assert stats["prices_nulled"] == {"price is not a number": 3, "negative price": 1}
    assert products.loc["P7", "title"] == "Glue stick"  # the duplicate with more text
    assert len(products.loc["P2", "description"]) == len("word " * (BIG // 5)) - 1  # trimmed, kept whole
    # The raw columns as read (BOM stripped, case kept): the gate's input fingerprint holds them.
    assert stats["input_schema"] == ("products csv PRODUCT_ID, Title, DESCRIPTION, category, PRICE; "
                                     "events csv user_id, product_id, event_type, quantity, ts")


def test_events_parsed_and_every_row_accounted_for(dirty_shop):
    stats, tables = dirty_shop
    events = tables["events"]
    valid = sum(1 for _, reason in EVENTS if reason is None)
    assert len(events) == stats["events_out"] == valid
    assert set(events["event_type"]) == {"view", "add_to_cart", "purchase"}
    first = events[(events["user_id"] == "U1") & (events["product_id"] == "P2")]["ts"].iloc[0]
    assert pd.Timestamp(first).tz_localize(None) == pd.Timestamp("2026-01-01 00:00:00")  # from epoch ms
    quarantined = sum(stats["quarantine"].values())
    # In: the data lines of both files. Out: products, events and quarantine rows; nothing else.
    assert len(PRODUCTS) + len(EVENTS) == stats["products_out"] + stats["events_out"] + quarantined
    assert stats["exact_duplicates_dropped"] == 0
    assert stats["events_quarantined_share"] == pytest.approx(5 / len(EVENTS), abs=1e-4)


# --- Files the reader refuses, with a one-line error naming the file --------------------------


@pytest.mark.parametrize(
    ("products", "encoding", "message"),
    [
        ("", "utf-8", r"products\.csv is empty: expected a header line"),
        ("product_id;title;price\nP1;Mug;3\n", "utf-8",
         r"products\.csv: missing required column\(s\) \['product_id', 'title'\]; "
         r"found \['product_id;title;price'\] "
         r"\(the header is one column: the contract's CSV files are comma-separated\)"),
        ("product_id,title\nP1,Café crème\n", "latin-1",
         r"products\.csv: column title holds bytes that are not UTF-8 \(e\.g\. 'Caf\ufffd cr\ufffdme'\)"),
    ],
    ids=["empty file", "semicolons", "latin-1"],
)
def test_unreadable_files_are_named(spark, tmp_path, products, encoding, message):
    write(tmp_path, "products", products, encoding)
    write(tmp_path, "events", "user_id,product_id,event_type,quantity,ts\n")
    with pytest.raises(ValueError, match=message) as error:
        importers.read_contract(spark, str(tmp_path))
    assert "\n" not in str(error.value)


# --- Inputs later steps could not learn from: preprocess fails, naming the cause ------------------

HEADER = "user_id,product_id,event_type,quantity,ts"
CATALOG = "product_id,title\nP1,Mug\nP2,Lamp\nP3,Pen\n"


@pytest.mark.parametrize(
    ("products", "events", "message"),
    [
        ("product_id,title\n", f"{HEADER}\nU1,P1,purchase,1,2026-01-01\n", "no valid products in"),
        (CATALOG, f"{HEADER}\n", "no valid events in"),
        ("product_id,title\nP1,Mug\n", f"{HEADER}\nU1,P1,purchase,1,2026-01-01\nU1,P1,view,1,2026-06-01\n",
         r"only 1 valid product\(s\) in .*: the pipeline needs at least 3"),
        ("product_id,title\nP1,Mug\nP2,Lamp\n", f"{HEADER}\nU1,P1,purchase,1,2026-01-01\nU1,P2,view,1,2026-06-01\n",
         r"only 2 valid product\(s\)"),
        (CATALOG, f"{HEADER}\nU1,P1,view,1,2026-01-01\nU2,P2,add_to_cart,1,2026-06-01\n",
         "no purchases among the 2 valid events of .*: the evaluation and the publish gate measure purchases"),
        (CATALOG, f"{HEADER}\nU1,P1,purchase,1,2026-01-01\nU2,P2,purchase,1,2026-01-20\n",
         "span 19 days, not more than RECS_EVAL_DAYS=30"),
        (CATALOG, f"{HEADER}\nU1,P1,purchase,1,2026-01-01\nU2,P2,purchase,1,2026\nU2,P2,view,1,2099-01-01\n",
         r"2 of 3 events in .* quarantined \(67%\), more than RECS_MAX_QUARANTINE_SHARE=0.2 "
         r"\(bad timestamp: 1, implausible timestamp: 1\)"),
    ],
    ids=["header only", "0 events", "1 product", "2 products", "views only", "span < eval_days", "quarantine > 20%"],
)
def test_input_nothing_can_be_learnt_from_fails_preprocess(spark, tmp_path, products, events, message):
    shop = tmp_path / "shop"
    write(shop, "products", products)
    write(shop, "events", events)
    with pytest.raises(ValueError, match=message) as error:
        preprocess.run(spark, settings(tmp_path / "data", shop), RunPaths(str(tmp_path / "data"), "small"))
    assert "\n" not in str(error.value)
