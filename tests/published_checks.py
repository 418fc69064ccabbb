"""What every published version must satisfy, read the way a storefront reads it."""

from __future__ import annotations

import os

import pandas as pd

from recs.reader import current_version_dir, published_table


def check_published(data_root: str, run_dir: str, top_n: int) -> dict:
    """Assert the promises of the published tables; return a few figures for the test log."""
    version_dir = current_version_dir(data_root)
    for table in ("user_recommendations", "similar_products", "product_clusters", "popular_products", "run_summary"):
        assert os.path.isdir(os.path.join(version_dir, table)), f"{table} missing in {version_dir}"

    events = pd.read_parquet(os.path.join(run_dir, "events"))
    recommendations = published_table(data_root, "user_recommendations")
    similar = published_table(data_root, "similar_products")
    clusters = published_table(data_root, "product_clusters")
    summary = published_table(data_root, "run_summary").iloc[0]

    # Every user with history gets exactly top_n recommendations, ranked 1..top_n.
    users = set(events["user_id"])
    per_user = recommendations.groupby("user_id")["rank"].agg(["count", "min", "max"])
    assert set(per_user.index) == users
    assert (per_user["count"] == top_n).all(), per_user[per_user["count"] != top_n].head()
    assert (per_user["min"] == 1).all() and (per_user["max"] == top_n).all()

    # None of them already bought by that user.
    bought = events[events["event_type"] == "purchase"][["user_id", "product_id"]].drop_duplicates()
    overlap = recommendations.merge(bought, on=["user_id", "product_id"])
    assert overlap.empty, overlap.head()

    # Similar products never include the product itself, and come top_n per product.
    assert not (similar["product_id"] == similar["similar_product_id"]).any()
    assert similar.groupby("product_id").size().max() == top_n

    # As many clusters as the chosen k, and every product has one.
    assert clusters["cluster"].nunique() == summary["k"]
    assert clusters["product_id"].is_unique
    assert len(clusters) == summary["products"]
    assert recommendations["reason"].str.len().min() > 0
    return {
        "users": len(users),
        "k": int(summary["k"]),
        "personal_share": float(recommendations["reason_product_id"].notna().mean()),
        "coverage": float(summary["catalog_coverage"]),
    }
