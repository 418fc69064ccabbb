"""The seeded synthetic shop: reproducible, and carrying the bad rows it promises."""

from __future__ import annotations

import csv

import pytest

from recs.synthetic import ShopSize, write_shop

SMALL = ShopSize(products=24, users=12, days=10, sessions_per_user=2.0)


def read_rows(folder, name):
    with open(folder / f"{name}.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def shops(tmp_path_factory):
    folders = {}
    for label, seed in (("a", 7), ("b", 7), ("c", 8)):
        folders[label] = tmp_path_factory.mktemp(f"shop_{label}")
        folders[label, "counts"] = write_shop(str(folders[label]), SMALL, seed=seed)
    return folders


def test_same_seed_same_files(shops):
    for name in ("products.csv", "events.csv"):
        assert (shops["a"] / name).read_bytes() == (shops["b"] / name).read_bytes()


def test_other_seed_other_files(shops):
    assert (shops["a"] / "events.csv").read_bytes() != (shops["c"] / "events.csv").read_bytes()
    assert (shops["a"] / "products.csv").read_bytes() != (shops["c"] / "products.csv").read_bytes()


def test_counts_returned_match_files(shops):
    products, events = read_rows(shops["a"], "products"), read_rows(shops["a"], "events")
    assert shops["a", "counts"] == (len(products), len(events))
    assert len(products) == SMALL.products + 4  # 3 bad rows and 1 exact duplicate


def test_bad_rows_are_present(shops):
    products, events = read_rows(shops["a"], "products"), read_rows(shops["a"], "events")
    assert any(p["product_id"] == "" for p in products)
    assert any(p["product_id"] == "P99990" and p["title"] == "" and not p["description"].strip() for p in products)
    assert any(p["product_id"] == "P99991" and p["price"] == "abc" and "&amp;" in p["title"] for p in products)
    assert products[-1] == products[0]  # the exact duplicate
    assert any(e["product_id"] == "P-NOT-IN-CATALOG" for e in events)
    assert any(e["ts"] == "yesterday-ish" for e in events)
    assert any(e["event_type"] == "click" for e in events)
    assert any(e["quantity"] == "-2" for e in events)
    assert any(e["user_id"] == "" for e in events)
    assert events[-1] == events[0]


def test_no_bad_rows_when_asked(tmp_path):
    write_shop(str(tmp_path), SMALL, seed=7, bad_rows=False)
    products, events = read_rows(tmp_path, "products"), read_rows(tmp_path, "events")
    assert len(products) == SMALL.products
    assert all(p["product_id"].startswith("P") and p["price"] != "abc" for p in products)
    assert {e["event_type"] for e in events} <= {"view", "add_to_cart", "purchase"}
    assert all(e["user_id"] and e["quantity"] in {"1", "2", "3"} for e in events)


def test_scale_shop_has_a_real_stores_shape(tmp_path):
    import pandas as pd

    from recs.contract import EVENT_COLUMNS, PRODUCT_COLUMNS
    from recs.synthetic import ScaleShop, write_scale_shop

    shape = ScaleShop(products=2000, customers=3000)
    counts = write_scale_shop(str(tmp_path / "a"), shape, seed=3, files=2)
    assert counts == write_scale_shop(str(tmp_path / "b"), shape, seed=3, files=2)  # seeded
    products = pd.read_parquet(tmp_path / "a" / "products.parquet")
    events = pd.read_parquet(tmp_path / "a" / "events.parquet")
    assert tuple(products.columns) == PRODUCT_COLUMNS and tuple(events.columns) == EVENT_COLUMNS
    assert counts == (2000, events["user_id"].nunique(), len(events))
    assert 9 <= len(events) / shape.customers <= 11  # about 10 events per customer
    assert set(events["event_type"]) == {"view", "add_to_cart", "purchase"}
    assert set(events["product_id"].astype(str)) <= set(products["product_id"])
    assert pd.to_datetime(events["ts"]).notna().all()
    per_customer = events.groupby("user_id", observed=True).size()
    assert per_customer.max() > 20 * per_customer.median()  # a few heavy customers
    popularity = events.groupby("product_id", observed=True).size().sort_values(ascending=False)
    assert popularity.head(len(popularity) // 100).sum() > 0.15 * len(events)  # the top 1% (Zipf)
    purchases = events[events["event_type"] == "purchase"]
    assert purchases.duplicated(["user_id", "product_id"]).sum() > 0.05 * len(purchases)  # repeat purchases
